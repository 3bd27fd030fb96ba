//! An event acknowledged to a client survives `kill -9` of the server.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{TestServer, enc};
use serde_json::json;

#[tokio::test]
async fn acknowledged_events_survive_kill_9() {
    let mut server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = server.create_room(&alice, json!({ "name": "durable" })).await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for worker in 0..8 {
        let (base, token, room, acked) = (server.base.clone(), alice.token.clone(), room.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let client = common::client();
            for n in 0.. {
                let url = format!("{base}/_matrix/client/v3/rooms/{}/send/m.room.message/w{worker}n{n}", enc(&room));
                let Ok(resp) = client
                    .put(url)
                    .bearer_auth(&token)
                    .json(&json!({ "msgtype": "m.text", "body": format!("{worker}/{n}") }))
                    .send()
                    .await
                else {
                    break;
                };
                if resp.status() != 200 {
                    break;
                }
                let Ok(body) = resp.json::<serde_json::Value>().await else { break };
                acked.lock().unwrap().push(body["event_id"].as_str().unwrap().to_owned());
            }
        }));
    }
    // Kill mid-load, once a good number of writes are acknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "only {} events acknowledged before the kill", acked.len());

    let dir = server.dir.clone();
    let restarted = TestServer::launch(&dir, &common::Options::default());
    let mut missing = Vec::new();
    for event_id in &acked {
        let (status, _) = restarted
            .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(event_id)), Some(&alice.token))
            .await;
        if status != 200 {
            missing.push(event_id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // The room still takes writes after the crash.
    restarted.send_text(&alice, &room, "after restart").await;
    drop(server);
}

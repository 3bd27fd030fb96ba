//! Attacks by an anonymous caller or another server, each tried against
//! the real server: porch must not connect where a caller says, must cut
//! off slow peers, must count requests per real client and per user, and
//! must take the largest legal federation transaction.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Options, TestServer, enc, in_process_server};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP port on loopback that counts who connects to it.
async fn tripwire() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

fn env(pairs: &[(&str, &str)]) -> Options {
    Options { env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

/// Whatever a refusal says, it tells nothing of what porch found there.
fn tells_nothing(body: &Value) {
    let text = body.to_string().to_lowercase();
    for detail in ["refused", "connection", "tcp", "tls", "error trying", "dns", "os error", "timed out"] {
        assert!(!text.contains(detail), "the answer gives away `{detail}`: {body}");
    }
}

#[tokio::test]
async fn link_redemption_never_makes_porch_connect_where_the_caller_says() {
    let s = TestServer::start_with(env(&[("PORCH_LISTEN__FEDERATION", "127.0.0.1:0")])).await;
    let alice = s.register("alice").await;
    let (room_id, token, _) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (port, hits) = tripwire().await;
    for user in [
        format!("@x:127.0.0.1:{port}"),
        format!("@x:localhost:{port}"),
        format!("@x:[::ffff:127.0.0.1]:{port}"),
        format!("@x:0x7f000001:{port}"),
    ] {
        let (status, body) =
            s.post(&format!("/_porch/client/v1/guest_links/{token}/join"), None, json!({ "user_id": user })).await;
        assert!(status == 502 || status == 400 || status == 403, "{user}: {status} {body}");
        assert!(body["errcode"].is_string(), "{body}");
        tells_nothing(&body);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "porch connected to an address the caller chose");
    let (_, links) = s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room_id)), Some(&alice.token)).await;
    assert_eq!(links["links"][0]["uses"], 0, "no use was counted: {links}");
}

#[tokio::test]
async fn the_key_notary_never_connects_where_the_caller_says_and_is_throttled() {
    let s = TestServer::start_with(env(&[
        ("PORCH_LISTEN__FEDERATION", "127.0.0.1:0"),
        ("PORCH_RATE_LIMITS__KEY_QUERIES_BURST", "8"),
        ("PORCH_RATE_LIMITS__KEY_QUERIES_PER_SECOND", "0.01"),
    ]))
    .await;
    let base = s.federation_base.clone().unwrap();
    let client = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let (port, hits) = tripwire().await;
    for server in [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] {
        let resp = client.get(format!("{base}/_matrix/key/v2/query/{server}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{server}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["server_keys"], json!([]), "nothing is vouched for {server}: {body}");
        tells_nothing(&body);
    }
    let batch = json!({ "server_keys": { format!("127.0.0.1:{port}"): {}, format!("10.0.0.1:{port}"): {} } });
    let resp = client.post(format!("{base}/_matrix/key/v2/query")).json(&batch).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["server_keys"], json!([]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the notary connected to an address the caller chose");
    // Three single queries and two servers in a batch took five of eight tokens.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = client.get(format!("{base}/_matrix/key/v2/query/10.1.2.3:8448")).send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "the notary is throttled per caller");
}

#[tokio::test]
async fn slow_clients_are_cut_off_on_both_listeners() {
    let mut s = TestServer::start_with(env(&[
        ("PORCH_LISTEN__FEDERATION", "127.0.0.1:0"),
        ("PORCH_LISTEN__HEADER_TIMEOUT", "1s"),
        ("PORCH_LISTEN__BODY_TIMEOUT", "1s"),
    ]))
    .await;
    // This server closes connections idle for 1 s: the test's own requests
    // each take a new one rather than race that close.
    s.hs.http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let client_addr = s.base.trim_start_matches("http://").to_owned();
    let federation_addr = s.federation_base.clone().unwrap().trim_start_matches("https://").to_owned();

    // Headers that never end (slow-loris): the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(&client_addr).await.unwrap();
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: porch\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a connection whose headers never end stays open");

    // A body that stops half-way: the request is refused, nothing is kept.
    let alice = s.register("alice").await;
    let mut slow = tokio::net::TcpStream::connect(&client_addr).await.unwrap();
    let head = format!(
        "POST /_matrix/client/v3/createRoom HTTP/1.1\r\nHost: porch\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        alice.token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await.expect("no answer").unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "a stalled body: {answer}");
    let (_, rooms) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(rooms["joined_rooms"], json!([]), "the stalled request made nothing");

    // The federation listener: a TLS handshake that never starts is dropped.
    let mut silent = tokio::net::TcpStream::connect(&federation_addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent peer keeps a federation connection open");

    // Normal requests still work.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, 200);
}

#[tokio::test]
async fn rate_limits_count_the_client_behind_a_trusted_proxy_only() {
    let login = |s: &TestServer, forwarded: &'static str| {
        let req = s
            .http
            .post(format!("{}/_matrix/client/v3/login", s.base))
            .header("X-Forwarded-For", forwarded)
            .json(&json!({ "type": "m.login.password", "user": "nobody", "password": "wrong password" }));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let limits = [("PORCH_RATE_LIMITS__LOGIN_BURST", "2"), ("PORCH_RATE_LIMITS__LOGIN_PER_SECOND", "0.001")];

    // Behind a trusted proxy, each forwarded client has its own allowance.
    let mut trusted = limits.to_vec();
    trusted.push(("PORCH_LISTEN__TRUSTED_PROXIES", r#"["127.0.0.1/32"]"#));
    let s = TestServer::start_with(env(&trusted)).await;
    assert_eq!([login(&s, "1.2.3.4").await, login(&s, "1.2.3.4").await, login(&s, "1.2.3.4").await], [403, 403, 429]);
    assert_eq!(login(&s, "5.6.7.8").await, 403, "another client behind the proxy is not limited");
    assert_eq!(login(&s, "9.9.9.9, 1.2.3.4").await, 429, "the nearest untrusted hop counts, not a claimed first one");
    assert_eq!(login(&s, "1.2.3.4:5678").await, 429, "a hop with a port is the same client");

    // Without trusted proxies the header is ignored: the socket counts.
    let s = TestServer::start_with(env(&limits)).await;
    assert_eq!([login(&s, "1.2.3.4").await, login(&s, "1.2.3.4").await], [403, 403]);
    assert_eq!(login(&s, "5.6.7.8").await, 429, "a forged X-Forwarded-For is no way around the limit");
}

#[tokio::test]
async fn each_user_is_limited_in_events_rooms_invites_and_uploads() {
    let s = TestServer::start_with(env(&[
        ("PORCH_RATE_LIMITS__EVENTS_BURST", "3"),
        ("PORCH_RATE_LIMITS__EVENTS_PER_SECOND", "0.001"),
        ("PORCH_RATE_LIMITS__ROOM_CREATIONS_BURST", "2"),
        ("PORCH_RATE_LIMITS__ROOM_CREATIONS_PER_SECOND", "0.001"),
        ("PORCH_RATE_LIMITS__INVITES_BURST", "1"),
        ("PORCH_RATE_LIMITS__INVITES_PER_SECOND", "0.001"),
        ("PORCH_RATE_LIMITS__UPLOADS_BURST", "1"),
        ("PORCH_RATE_LIMITS__UPLOADS_PER_SECOND", "0.001"),
    ]))
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let _second = s.create_room(&alice, json!({})).await;
    let (status, body) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "third room: {body}");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");

    let send = |user: &common::User, n: u32| {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{n}", enc(&room));
        let body = json!({ "msgtype": "m.text", "body": format!("message {n}") });
        let token = user.token.clone();
        let s = &s;
        async move { s.put(&path, Some(&token), body).await }
    };
    for n in 0..3 {
        assert_eq!(send(&alice, n).await.0, 200, "message {n}");
    }
    let (status, body) = send(&alice, 3).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "{body}");
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(send(&bob, 0).await.0, 200, "another user is not limited by alice's sending");

    let invite = |target: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
        let (s, token, body) = (&s, bob.token.clone(), json!({ "user_id": target }));
        async move { s.post(&path, Some(&token), body).await }
    };
    let _ = invite(&alice.user_id).await;
    let (status, body) = invite(&carol.user_id).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "second invite: {body}");

    // Invites sent with a new room count too; the refused room is not made.
    let (_, before) = s.get("/_matrix/client/v3/joined_rooms", Some(&carol.token)).await;
    let many = json!({ "invite": [alice.user_id, bob.user_id] });
    let (status, body) = s.post("/_matrix/client/v3/createRoom", Some(&carol.token), many).await;
    assert_eq!((status, body["errcode"].as_str()), (429, Some("M_LIMIT_EXCEEDED")), "two invites with a room: {body}");
    let (_, after) = s.get("/_matrix/client/v3/joined_rooms", Some(&carol.token)).await;
    assert_eq!(before, after, "no room was made");

    assert_eq!(s.upload(&carol, "text/plain", b"hello".to_vec()).await.0, 200);
    assert_eq!(s.upload(&carol, "text/plain", b"hello".to_vec()).await.0, 429, "second upload");
}

#[tokio::test]
async fn the_largest_legal_transaction_is_taken_and_oversized_pdus_refused() {
    use ruma::api::federation::transactions::send_transaction_message;
    let (x, x_name, _dir) = in_process_server().await;
    let (b, b_name) = common::federating_server().await;
    let bob = b.register("bob").await;
    let room_id = b.create_room(&bob, json!({ "preset": "public_chat" })).await;
    // 50 PDUs of just under 64 KiB each (not valid events: each is refused
    // on its own, the transaction is still taken) and one over the limit.
    let pdu = |fill: usize, n: usize| {
        serde_json::value::to_raw_value(&json!({
            "room_id": room_id, "type": "m.room.message", "sender": format!("@x:{x_name}"),
            "origin_server_ts": n, "depth": 1, "prev_events": [], "auth_events": [],
            "content": { "body": "x".repeat(fill) },
        }))
        .unwrap()
    };
    let mut pdus: Vec<_> = (0..49).map(|n| pdu(64_000, n)).collect();
    pdus.push(pdu(70_000, 99));
    let edus: Vec<_> = (0..100)
        .map(|n| {
            let edu = json!({ "edu_type": "m.typing", "content": { "room_id": room_id, "user_id": format!("@x{n}:{x_name}"), "typing": true, "pad": "y".repeat(60_000) } });
            ruma::serde::Raw::from_json(serde_json::value::to_raw_value(&edu).unwrap())
        })
        .collect();
    let origin = ruma::OwnedServerName::try_from(x_name.as_str()).unwrap();
    let mut request = send_transaction_message::v1::Request::new(
        ruma::OwnedTransactionId::from("big"),
        origin,
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = pdus;
    request.edus = edus;
    let destination = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();
    let answer = x.federation.send(&destination, request).await.expect("a legal transaction of ~9.5 MB is taken");
    let refusals: Vec<String> = answer.pdus.values().filter_map(|r| r.as_ref().err().cloned()).collect();
    assert_eq!(answer.pdus.len(), 50, "every PDU has an answer: {refusals:?}");
    assert_eq!(
        refusals.iter().filter(|why| why.contains("larger than 65536")).count(),
        1,
        "exactly the oversized PDU is refused for its size: {refusals:?}"
    );
}

/// A participant's server that stalls when asked for the events before
/// its latest one must not hold the room: another server's events keep
/// arriving meanwhile.
#[tokio::test]
async fn a_peer_that_stalls_when_asked_for_missing_events_does_not_hold_the_room() {
    use porch::service::{remote_join, rooms::NewEvent};
    use ruma::{CanonicalJsonValue, api::federation::transactions::send_transaction_message};
    use std::sync::atomic::AtomicBool;

    // `x` (in this process) is reached by the others through a proxy that
    // can be told to stall every new connection.
    let real_port = common::free_port();
    let name_port = Arc::new(std::sync::Mutex::new(0u16));
    let noted = name_port.clone();
    let (x, x_name, _dir) = common::in_process_server_with(move |c| {
        *noted.lock().unwrap() = c.server_name.rsplit(':').next().unwrap().parse().unwrap();
        c.listen.federation = format!("127.0.0.1:{real_port}");
    })
    .await;
    let stalled = Arc::new(AtomicBool::new(false));
    let proxy_port = *name_port.lock().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", proxy_port)).await.unwrap();
    let stall = stalled.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let stall = stall.clone();
            tokio::spawn(async move {
                let Ok(out) = tokio::net::TcpStream::connect(("127.0.0.1", real_port)).await else { return };
                let (mut from_peer, mut to_peer) = inbound.split();
                let (mut from_x, mut to_x) = out.into_split();
                let back = async { tokio::io::copy(&mut from_x, &mut to_peer).await };
                // Requests stop getting through once stalled, on connections
                // already open too; they are held, not closed.
                let forth = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = from_peer.read(&mut buf).await?;
                        while stall.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        if n == 0 {
                            return Ok::<_, std::io::Error>(());
                        }
                        to_x.write_all(&buf[..n]).await?;
                    }
                };
                let _ = tokio::join!(back, forth);
            });
        }
    });

    let (a, a_name) = common::federating_server().await;
    let (g, _) = common::federating_server().await;
    let alice = a.register("alice").await;
    let gina = g.register("gina").await;
    let room_id = a.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room_id), enc(&a_name));
    let (status, body) = g.post(&path, Some(&gina.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let xavier = ruma::OwnedUserId::try_from(format!("@xavier:{x_name}")).unwrap();
    x.users.create(&xavier, Some("password1"), porch::service::users::AccountKind::Member, false, None).unwrap();
    let room = ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let a_server = ruma::OwnedServerName::try_from(a_name.as_str()).unwrap();
    remote_join::join(&x, &xavier, &room, vec![a_server.clone()], None).await.expect("x joins");

    // An event after one `a` never saw: `a` must ask `x` for the gap.
    let (version, unseen) = x
        .rooms
        .prepare(&room, &xavier, NewEvent::message("m.room.message", json!({ "msgtype": "m.text", "body": "unseen" })))
        .unwrap();
    let mut after = unseen.canonical_object();
    for field in ["signatures", "hashes", "unsigned"] {
        after.remove(field);
    }
    after.insert("prev_events".into(), CanonicalJsonValue::Array(vec![unseen.event_id.to_string().into()]));
    after.insert("depth".into(), CanonicalJsonValue::Integer((u64::from(unseen.depth) + 1).try_into().unwrap()));
    after.insert(
        "content".into(),
        CanonicalJsonValue::Object(
            [("msgtype".to_owned(), "m.text".into()), ("body".to_owned(), "after a gap".into())].into(),
        ),
    );
    ruma::signatures::hash_and_sign_event(
        &x_name,
        &x.signing.key_pair,
        &mut after,
        &version.rules().unwrap().redaction,
    )
    .unwrap();
    let mut request = send_transaction_message::v1::Request::new(
        "gap".into(),
        ruma::OwnedServerName::try_from(x_name.as_str()).unwrap(),
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = vec![serde_json::value::to_raw_value(&after).unwrap()];
    let since = a.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    stalled.store(true, Ordering::SeqCst);
    let sender = x.clone();
    tokio::spawn(async move { sender.federation.send(&a_server, request).await });
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Meanwhile a good server's message reaches the room at once.
    g.send_text(&gina, &room_id, "from a good server").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut since = since;
    loop {
        let sync = a.sync(&alice, Some(&since), 2000).await;
        if common::timeline(&sync, &room_id).iter().any(|e| e["content"]["body"] == "from a good server") {
            break;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
        assert!(std::time::Instant::now() < deadline, "the stalling server held the room");
    }
}

/// A participant's server sends a long chain of its user's state changes,
/// then an event that forks from the chain's start: resolving the two
/// sides walks the whole chain. A recursive walk overflows its stack and
/// takes the server down; the server must answer and keep the room.
#[tokio::test]
async fn a_deep_fork_from_another_server_is_resolved_without_taking_the_server_down() {
    use porch::service::{remote_join, rooms::NewEvent};
    use ruma::{CanonicalJsonValue, api::federation::transactions::send_transaction_message};
    const CHAIN: usize = 50_000;

    let (x, x_name, _dir) = in_process_server().await;
    let port = common::free_port();
    let mut options = common::federating_options(port);
    options.env.push(("PORCH_RATE_LIMITS__FEDERATION_TRANSACTIONS_PER_SECOND".into(), "10000".into()));
    options.env.push(("PORCH_RATE_LIMITS__FEDERATION_TRANSACTIONS_BURST".into(), "10000".into()));
    // What is tested is the depth of the walk, not durability: 50,000 fsyncs
    // would make the test's time the disk's.
    options.env.push(("PORCH_DATABASE__SYNC_WRITES".into(), "false".into()));
    let mut b = TestServer::start_with(options).await;
    b.server_name = format!("localhost:{port}");
    let bob = b.register("bob").await;
    let room_id = b.create_room(&bob, json!({ "preset": "public_chat" })).await;
    let room = ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let xavier = ruma::OwnedUserId::try_from(format!("@xavier:{x_name}")).unwrap();
    x.users.create(&xavier, Some("password1"), porch::service::users::AccountKind::Member, false, None).unwrap();
    let b_server = ruma::OwnedServerName::try_from(b.server_name.as_str()).unwrap();
    remote_join::join(&x, &xavier, &room, vec![b_server.clone()], None).await.expect("x joins");

    // Each rename's auth events cite the one before: a chain CHAIN deep.
    let rename = |n: usize| {
        (
            xavier.clone(),
            NewEvent::state(
                "m.room.member",
                xavier.as_str(),
                json!({ "membership": "join", "displayname": format!("x{n}") }),
            ),
        )
    };
    let first = x.rooms.append(&room, &xavier, rename(0).1).unwrap();
    for start in (1..CHAIN).step_by(1000) {
        x.rooms.append_all(&room, (start..(start + 1000).min(CHAIN)).map(rename).collect()).unwrap();
    }
    let member = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room_id), enc(xavier.as_str()));
    let last_name = format!("x{}", CHAIN - 1);
    // Generous: a debug build on a slow 2-core machine takes its time over 50,000 events.
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    while b.get(&member, Some(&bob.token)).await.1["displayname"] != last_name.as_str() {
        assert!(std::time::Instant::now() < deadline, "the renames did not all reach the other server");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A message whose parents are the chain's first and last events.
    let (version, latest) = x
        .rooms
        .prepare(&room, &xavier, NewEvent::message("m.room.message", json!({ "msgtype": "m.text", "body": "fork" })))
        .unwrap();
    let mut fork = latest.canonical_object();
    for field in ["signatures", "hashes", "unsigned"] {
        fork.remove(field);
    }
    let parents = [first.event_id.to_string().into(), latest.prev_events[0].to_string().into()];
    fork.insert("prev_events".into(), CanonicalJsonValue::Array(parents.into()));
    ruma::signatures::hash_and_sign_event(&x_name, &x.signing.key_pair, &mut fork, &version.rules().unwrap().redaction)
        .unwrap();
    let mut request = send_transaction_message::v1::Request::new(
        "fork".into(),
        ruma::OwnedServerName::try_from(x_name.as_str()).unwrap(),
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = vec![serde_json::value::to_raw_value(&fork).unwrap()];
    // Resolving the fork may outlast one request's 30 s on a slow machine:
    // the same transaction is sent again, as a real server would.
    let mut attempts = 0;
    let answer = loop {
        attempts += 1;
        match x.federation.send(&b_server, request.clone()).await {
            Ok(answer) => break answer,
            Err(err) if attempts < 10 => eprintln!("transaction attempt {attempts}: {}", err.message),
            Err(err) => panic!("the server never answered the transaction: {err:?}"),
        }
    };
    assert!(answer.pdus.values().all(Result::is_ok), "the fork is accepted: {:?}", answer.pdus);

    let (status, _) = b.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200, "the server is still up");
    let (status, state) = b.get(&member, Some(&bob.token)).await;
    // Renames made in the same millisecond tie on time, so which one wins
    // is for the event ids to say; it is one of the chain's, still joined.
    assert_eq!((status, state["membership"].as_str()), (200, Some("join")), "{state}");
    assert!(state["displayname"].as_str().is_some_and(|name| name.starts_with('x')), "{state}");
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5", enc(&room_id));
    let (status, page) = b.get(&path, Some(&bob.token)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page["chunk"].as_array().unwrap().iter().any(|e| e["content"]["body"] == "fork"), "{page}");
}

//! End-to-end encryption plumbing: device keys, one-time and fallback keys,
//! cross-signing, key changes in sync, to-device messages.

mod common;

use common::TestServer;
use serde_json::json;

fn device_keys(user: &str, device: &str, tag: &str) -> serde_json::Value {
    json!({
        "user_id": user, "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): format!("curve-{tag}"), format!("ed25519:{device}"): format!("ed-{tag}") },
        "signatures": { user: { format!("ed25519:{device}"): "sig" } }
    })
}

#[tokio::test]
async fn keys_upload_query_claim_and_to_device() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let bob_since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({
                "device_keys": device_keys(&alice.user_id, &alice.device_id, "a"),
                "one_time_keys": { "signed_curve25519:AAAA": { "key": "otk1" }, "signed_curve25519:AAAB": { "key": "otk2" } },
                "fallback_keys": { "signed_curve25519:FFFF": { "key": "fallback", "fallback": true } }
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);
    // Keys for someone else's device are refused.
    let (status, _) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&bob.token),
            json!({ "device_keys": device_keys(&alice.user_id, &alice.device_id, "x") }),
        )
        .await;
    assert_eq!(status, 400);

    let bob_sync = s.sync(&bob, Some(&bob_since), 0).await;
    assert!(bob_sync["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == &alice.user_id), "{bob_sync}");

    let (status, body) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["device_keys"][&alice.user_id][&alice.device_id]["keys"][format!("curve25519:{}", alice.device_id)],
        "curve-a"
    );

    let claim = json!({ "one_time_keys": { alice.user_id.clone(): { alice.device_id.clone(): "signed_curve25519" } } });
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (status, body) = s.post("/_matrix/client/v3/keys/claim", Some(&bob.token), claim.clone()).await;
        assert_eq!(status, 200);
        let keys = body["one_time_keys"][&alice.user_id][&alice.device_id].as_object().unwrap().clone();
        claimed.push(keys.values().next().unwrap()["key"].as_str().unwrap().to_owned());
    }
    claimed.sort();
    assert_eq!(claimed, vec!["fallback", "otk1", "otk2"], "two one-time keys, then the fallback key");
    let alice_sync = s.sync(&alice, None, 0).await;
    assert!(alice_sync["device_one_time_keys_count"]["signed_curve25519"].as_u64().unwrap_or(0) == 0, "{alice_sync}");
    assert!(alice_sync["device_unused_fallback_key_types"].as_array().unwrap().is_empty(), "the fallback key was used");

    // To-device: delivered once, then gone after the next sync acknowledges it.
    let alice_since = alice_sync["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            Some(&bob.token),
            json!({ "messages": { alice.user_id.clone(): { "*": { "hello": "olm" } } } }),
        )
        .await;
    assert_eq!(status, 200);
    let got = s.sync(&alice, Some(&alice_since), 0).await;
    let events = got["to_device"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{got}");
    assert_eq!(
        (events[0]["sender"].as_str(), events[0]["content"]["hello"].as_str()),
        (Some(bob.user_id.as_str()), Some("olm"))
    );
    let next = got["next_batch"].as_str().unwrap().to_owned();
    let again = s.sync(&alice, Some(&next), 0).await;
    assert!(again["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{again}");
    // Same txn id again: not delivered twice.
    s.put(
        "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
        Some(&bob.token),
        json!({ "messages": { alice.user_id.clone(): { "*": { "hello": "olm" } } } }),
    )
    .await;
    let once = s.sync(&alice, Some(&next), 0).await;
    assert!(once["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()), "{once}");
}

#[tokio::test]
async fn cross_signing_keys_and_signatures() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    s.post(
        "/_matrix/client/v3/keys/upload",
        Some(&alice.token),
        json!({ "device_keys": device_keys(&alice.user_id, &alice.device_id, "a") }),
    )
    .await;
    let master = json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:MASTERPUB": "MASTERPUB" } });
    let self_signing =
        json!({ "user_id": alice.user_id, "usage": ["self_signing"], "keys": { "ed25519:SSPUB": "SSPUB" } });
    let (status, body) = s
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice.token),
            json!({ "master_key": master, "self_signing_key": self_signing }),
        )
        .await;
    assert_eq!(status, 200, "first upload needs no password: {body}");
    let other_master = json!({ "user_id": alice.user_id, "usage": ["master"], "keys": { "ed25519:OTHER": "OTHER" } });
    let (status, _) = s
        .post(
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice.token),
            json!({ "master_key": other_master }),
        )
        .await;
    assert_eq!(status, 401, "replacing the master key needs UIA");
    let (status, body) = s
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            Some(&alice.token),
            json!({ alice.user_id.clone(): { alice.device_id.clone(): { "signatures": { alice.user_id.clone(): { "ed25519:SSPUB": "devsig" } } } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(body["master_keys"][&alice.user_id]["keys"]["ed25519:MASTERPUB"], "MASTERPUB");
    assert_eq!(
        body["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id]["ed25519:SSPUB"],
        "devsig"
    );
    // Deleting a device deletes its keys.
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse battery" });
    let (status, _) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice.token),
            json!({ "devices": [alice.device_id], "auth": auth }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, login) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "alice", "password": "correct horse battery" }),
        )
        .await;
    let token = login["access_token"].as_str().unwrap();
    let (_, body) = s
        .post("/_matrix/client/v3/keys/query", Some(token), json!({ "device_keys": { alice.user_id.clone(): [] } }))
        .await;
    assert!(body["device_keys"][&alice.user_id].get(&alice.device_id).is_none(), "{body}");
}

/// Another server's user renames and deletes devices: our user's sync
/// names them as changed each time, and a key query shows the list as it is.
#[tokio::test]
async fn device_changes_on_another_server_reach_local_users() {
    let (a, _) = common::federating_server().await;
    let (b, b_name) = common::federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    // A second device for bob, to delete later.
    let second = b.login("bob", "SECOND").await;
    let room = b.create_room(&bob, json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/join/{}?server_name={}", common::enc(&room), common::enc(&b_name));
    let (status, body) = a.post(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    for (token, device) in [(bob.token.as_str(), bob.device_id.as_str()), (second.token.as_str(), "SECOND")] {
        let (status, _) = b
            .post(
                "/_matrix/client/v3/keys/upload",
                Some(token),
                json!({ "device_keys": device_keys(&bob.user_id, device, device) }),
            )
            .await;
        assert_eq!(status, 200);
    }
    let query = async || {
        let (_, body) = a
            .post(
                "/_matrix/client/v3/keys/query",
                Some(&alice.token),
                json!({ "device_keys": { bob.user_id.clone(): [] } }),
            )
            .await;
        body["device_keys"][&bob.user_id].as_object().cloned().unwrap_or_default()
    };
    let mut since = Some(a.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned());
    assert_eq!(query().await.len(), 2, "both devices");

    // A rename reaches alice's sync (the name itself stays on bob's server,
    // as Synapse keeps device names from other servers by default).
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/devices/{}", bob.device_id),
            Some(&bob.token),
            json!({ "display_name": "Bob's phone" }),
        )
        .await;
    assert_eq!(status, 200);
    let in_changed = |body: &serde_json::Value| {
        body["device_lists"]["changed"].as_array()?.iter().any(|u| u == bob.user_id.as_str()).then_some(())
    };
    common::sync_until(&a, &alice, &mut since, "bob's rename", in_changed).await;

    // Deleting the second device: announced, and gone from the query.
    let (status, _) = b.post("/_matrix/client/v3/logout", Some(&second.token), json!({})).await;
    assert_eq!(status, 200);
    common::sync_until(&a, &alice, &mut since, "bob's deleted device", in_changed).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let devices = query().await;
        if devices.len() == 1 && devices.contains_key(&bob.device_id) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the deleted device stayed: {devices:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A user leaves the only room they share with someone on another server,
/// who then adds a device; nobody tells the user's server (it shares no
/// room with them). When the user joins again, `/sync` and `/keys/changes`
/// from before the leave name that person as changed, and a key query
/// shows the new device, not what was held from before.
#[tokio::test]
async fn devices_added_while_a_user_was_away_show_when_they_rejoin() {
    let (a, _) = common::federating_server().await;
    let (b, b_name) = common::federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let upload = async |token: &str, device: &str| {
        let body = json!({ "device_keys": device_keys(&bob.user_id, device, device) });
        assert_eq!(b.post("/_matrix/client/v3/keys/upload", Some(token), body).await.0, 200);
    };
    upload(&bob.token, &bob.device_id).await;
    let room = b.create_room(&bob, json!({ "preset": "public_chat" })).await;
    let join = format!("/_matrix/client/v3/join/{}?server_name={}", common::enc(&room), common::enc(&b_name));
    let (status, body) = a.post(&join, Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let query = async || {
        let body = json!({ "device_keys": { bob.user_id.clone(): [] } });
        let (status, answer) = a.post("/_matrix/client/v3/keys/query", Some(&alice.token), body).await;
        assert_eq!(status, 200, "{answer}");
        let devices = answer["device_keys"][&bob.user_id].as_object().cloned().unwrap_or_default();
        devices.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(query().await, std::slice::from_ref(&bob.device_id), "bob's one device, now held by alice's server");
    let since = a.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    assert_eq!(leave(&a, &alice.token, &room).await, 200);
    let later = b.login("bob", "LATER").await;
    upload(&later.token, &later.device_id).await;

    // Alice's leave may still be on its way to bob's server: try until it lets her in again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = a.post(&join, Some(&alice.token), json!({})).await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice could not join again: {status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let after = a.sync(&alice, Some(&since), 0).await;
    let named = |list: &serde_json::Value| list.as_array().is_some_and(|l| l.iter().any(|u| u == bob.user_id.as_str()));
    assert!(named(&after["device_lists"]["changed"]), "sync: {}", after["device_lists"]);
    let path = format!("/_matrix/client/v3/keys/changes?from={since}&to={}", after["next_batch"].as_str().unwrap());
    let (status, changes) = a.get(&path, Some(&alice.token)).await;
    assert_eq!(status, 200, "{changes}");
    assert!(named(&changes["changed"]), "/keys/changes: {changes}");
    let mut devices = query().await;
    let mut expected = vec!["LATER".to_owned(), bob.device_id.clone()];
    devices.sort();
    expected.sort();
    assert_eq!(devices, expected, "the device added while alice was away");
}

/// `/sync` names in `device_lists.left` the people who no longer share a
/// room with the user: one who left a shared room, and the members of a
/// room the user left. Someone still met in another room stays.
#[tokio::test]
async fn sync_reports_people_who_no_longer_share_a_room_as_left() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let with_bob = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let with_carol = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let also_carol = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &with_bob).await.0, 200);
    assert_eq!(s.join(&carol, &with_carol).await.0, 200);
    let first = s.sync(&alice, None, 0).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    assert_eq!(leave(&s, &bob.token, &with_bob).await, 200);
    assert_eq!(leave(&s, &alice.token, &with_carol).await, 200);
    let after = s.sync(&alice, Some(&since), 0).await;
    let left: Vec<&str> =
        after["device_lists"]["left"].as_array().expect("left").iter().filter_map(|u| u.as_str()).collect();
    assert!(left.contains(&bob.user_id.as_str()), "bob left the only room he shared: {after}");
    assert!(left.contains(&carol.user_id.as_str()), "alice left the only room she shared with carol: {after}");
    let path = format!("/_matrix/client/v3/keys/changes?from={since}&to={}", after["next_batch"].as_str().unwrap());
    let (status, changes) = s.get(&path, Some(&alice.token)).await;
    assert_eq!(status, 200, "{changes}");
    let gone: Vec<&str> = changes["left"].as_array().expect("left").iter().filter_map(|u| u.as_str()).collect();
    assert!(gone.contains(&bob.user_id.as_str()) && gone.contains(&carol.user_id.as_str()), "{changes}");

    // Someone who still shares another room with alice is not gone.
    assert_eq!(s.join(&carol, &also_carol).await.0, 200);
    assert_eq!(s.join(&bob, &also_carol).await.0, 200);
    let since = after["next_batch"].as_str().unwrap().to_owned();
    let rejoined = s.sync(&alice, Some(&since), 0).await;
    let since = rejoined["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(leave(&s, &bob.token, &also_carol).await, 200);
    let path = format!("/_matrix/client/v3/rooms/{}/invite", common::enc(&with_bob));
    assert_eq!(s.post(&path, Some(&alice.token), json!({ "user_id": carol.user_id })).await.0, 200);
    assert_eq!(s.join(&carol, &with_bob).await.0, 200);
    assert_eq!(leave(&s, &carol.token, &also_carol).await, 200);
    let later = s.sync(&alice, Some(&since), 0).await;
    let left: Vec<&str> =
        later["device_lists"]["left"].as_array().expect("left").iter().filter_map(|u| u.as_str()).collect();
    assert!(left.contains(&bob.user_id.as_str()), "{later}");
    assert!(!left.contains(&carol.user_id.as_str()), "carol still shares a room with alice: {later}");
}

async fn leave(s: &TestServer, token: &str, room: &str) -> u16 {
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", common::enc(room)), Some(token), json!({})).await.0
}

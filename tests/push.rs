//! Pushers and push: porch delivers notifications over HTTP to a push
//! gateway (here one on loopback that records what it is sent and can be
//! told to fail or reject), survives a gateway outage and a restart, and
//! lists notifications on `/notifications`.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use common::{Homeserver, Options, TestServer, User, enc};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const OK: u8 = 0;
const FAIL: u8 = 1;
const REJECT: u8 = 2;

/// What the gateway's handler shares: how to answer, and where to report.
type GatewayState = (Arc<AtomicU8>, mpsc::UnboundedSender<(u8, Value)>);

struct Gateway {
    url: String,
    mode: Arc<AtomicU8>,
    received: mpsc::UnboundedReceiver<(u8, Value)>,
}

impl Gateway {
    async fn start() -> Self {
        let mode = Arc::new(AtomicU8::new(OK));
        let (tx, received) = mpsc::unbounded_channel();
        let state = (mode.clone(), tx);
        let app = Router::new().route(
            "/_matrix/push/v1/notify",
            post(|State((mode, tx)): State<GatewayState>, Json(body): Json<Value>| async move {
                let mode_now = mode.load(Ordering::SeqCst);
                let _ = tx.send((mode_now, body.clone()));
                match mode_now {
                    FAIL => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))),
                    REJECT => {
                        let key = body["notification"]["devices"][0]["pushkey"].clone();
                        (axum::http::StatusCode::OK, Json(json!({ "rejected": [key] })))
                    }
                    _ => (axum::http::StatusCode::OK, Json(json!({}))),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await.unwrap() });
        Self { url, mode, received }
    }

    /// The next request the gateway got that `pick` accepts (others are skipped); panics after 30 s.
    async fn next(&mut self, what: &str, pick: impl Fn(u8, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some((mode, body))) if pick(mode, &body) => return body,
                Ok(Some(_)) => continue,
                _ => panic!("the gateway did not get {what} within 30 s"),
            }
        }
    }
}

fn loopback_allowed() -> Options {
    Options { env: vec![("PORCH_OUTBOUND__IP_RANGE_ALLOWLIST".into(), r#"["127.0.0.0/8"]"#.into())] }
}

fn pusher(url: &str, pushkey: &str, extra: Value) -> Value {
    let mut data = json!({ "url": url, "default_payload": { "aps": { "mutable-content": 1 } } });
    if let Value::Object(extra) = extra {
        data.as_object_mut().unwrap().extend(extra);
    }
    json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": pushkey, "app_display_name": "Example",
        "device_display_name": "Phone", "profile_tag": "tag", "lang": "en", "data": data,
    })
}

async fn pushers(hs: &Homeserver, user: &User) -> Vec<Value> {
    let (status, body) = hs.get("/_matrix/client/v3/pushers", Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

async fn two_in_a_room(hs: &Homeserver) -> (User, User, String) {
    two_in_a_room_with_state(hs, json!([])).await
}

/// Alice's room, with `initial_state`, that bob has joined.
async fn two_in_a_room_with_state(hs: &Homeserver, initial_state: Value) -> (User, User, String) {
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let room = hs.create_room(&alice, json!({ "invite": [bob.user_id], "initial_state": initial_state })).await;
    assert_eq!(hs.join(&bob, &room).await.0, 200);
    (alice, bob, room)
}

async fn two_in_an_encrypted_room(hs: &Homeserver) -> (User, User, String) {
    let encryption =
        json!({ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } });
    two_in_a_room_with_state(hs, json!([encryption])).await
}

/// A megolm message from `sender` in `room` (its ciphertext is never read); its event id.
async fn send_encrypted(hs: &Homeserver, sender: &User, room: &str) -> String {
    let ciphertext = json!({
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEnB...", "device_id": "BOBDEVICE",
        "sender_key": "c2VuZGVyIGtleQ", "session_id": "c2Vzc2lvbg",
    });
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.encrypted/e1", enc(room));
    let (status, sent) = hs.put(&path, Some(&sender.token), ciphertext).await;
    assert_eq!(status, 200, "{sent}");
    sent["event_id"].as_str().unwrap().to_owned()
}

fn is_message(body: &Value, text: &str) -> bool {
    body["notification"]["content"]["body"] == text
}

#[tokio::test]
async fn refused_pushers_change_nothing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let set = |body: Value| {
        let token = alice.token.clone();
        let hs = &server.hs;
        async move { hs.post("/_matrix/client/v3/pushers/set", Some(&token), body).await }
    };
    let cases = [
        ("a gateway URL with another path", pusher("https://push.example.org/notify", "k1", json!({}))),
        ("a URL that is not one", pusher("not a url", "k1", json!({}))),
        (
            "a gateway on loopback (the address guard)",
            pusher("http://127.0.0.1:9/_matrix/push/v1/notify", "k1", json!({})),
        ),
        (
            "an email pusher",
            json!({
                "kind": "email", "app_id": "m.email", "pushkey": "a@example.org", "app_display_name": "Mail",
                "device_display_name": "Mail", "lang": "en", "data": {},
            }),
        ),
        ("an over-long app id", {
            let mut p = pusher("https://push.example.org/_matrix/push/v1/notify", "k1", json!({}));
            p["app_id"] = json!("x".repeat(65));
            p
        }),
    ];
    for (what, body) in cases {
        let (status, answer) = set(body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["errcode"], "M_INVALID_PARAM", "{what}: {answer}");
    }
    let (status, answer) = set(json!({ "kind": "http", "app_id": "a", "pushkey": "k" })).await;
    assert_eq!(status, 400, "an http pusher without data: {answer}");
    assert!(pushers(&server, &alice).await.is_empty(), "no refused pusher was kept");
}

#[tokio::test]
async fn messages_and_invites_reach_the_gateway_with_counts_and_badges() {
    let mut gateway = Gateway::start().await;
    let server = TestServer::start_with(loopback_allowed()).await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (status, body) = server
        .post("/_matrix/client/v3/pushers/set", Some(&alice.token), pusher(&gateway.url, "alice-key", json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    let listed = pushers(&server, &alice).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pushkey"], "alice-key");
    assert_eq!(listed[0]["data"]["url"], gateway.url.as_str());

    let event_id = server.send_text(&bob, &room, "hello alice").await;
    let body = gateway.next("the message", |_, b| is_message(b, "hello alice")).await;
    let n = &body["notification"];
    assert_eq!(n["event_id"], event_id.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], bob.user_id.as_str());
    assert_eq!(n["sender_display_name"], "bob");
    assert_eq!(n["counts"]["unread"], 1, "one room with unread messages: {n}");
    assert_eq!(n["prio"], "high", "a one-to-one message makes a sound: {n}");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["pushkey"], "alice-key");
    assert!(device["pushkey_ts"].as_u64().unwrap() > 1_600_000_000, "{device}");
    assert!(device["data"].get("url").is_none(), "the URL stays with the server: {device}");
    assert_eq!(device["data"]["default_payload"]["aps"]["mutable-content"], 1, "{device}");
    assert_eq!(device["tweaks"]["sound"], "default", "{device}");

    // Reading it clears the badge on the phone.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event_id)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let badge = gateway.next("the badge update", |_, b| b["notification"]["counts"]["unread"] == 0).await;
    assert_eq!(badge["notification"]["devices"][0]["pushkey"], "alice-key");

    // The room's name shows in the push once it has one.
    let (status, _) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&alice.token),
            json!({ "name": "Plans" }),
        )
        .await;
    assert_eq!(status, 200);
    server.send_text(&bob, &room, "named now").await;
    let body = gateway.next("the message in the named room", |_, b| is_message(b, "named now")).await;
    assert_eq!(body["notification"]["room_name"], "Plans");

    // An invite is pushed to the invitee.
    let carol = server.register("carol").await;
    let (status, _) = server
        .post("/_matrix/client/v3/pushers/set", Some(&carol.token), pusher(&gateway.url, "carol-key", json!({})))
        .await;
    assert_eq!(status, 200);
    let other = server.create_room(&bob, json!({})).await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
            Some(&bob.token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, 200);
    let invite = gateway
        .next("carol's invite", |_, b| {
            b["notification"]["type"] == "m.room.member" && b["notification"]["room_id"] == other.as_str()
        })
        .await;
    let n = &invite["notification"];
    assert_eq!(n["membership"], "invite");
    assert_eq!(n["user_is_target"], true);
    assert_eq!(n["devices"][0]["pushkey"], "carol-key");

    // An event-id-only pusher gets no content.
    let (status, _) = server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&alice.token),
            pusher(&gateway.url, "alice-private", json!({ "format": "event_id_only" })),
        )
        .await;
    assert_eq!(status, 200);
    let secret = server.send_text(&bob, &room, "secret").await;
    let body = gateway
        .next("the event-id-only push", |_, b| b["notification"]["devices"][0]["pushkey"] == "alice-private")
        .await;
    let n = &body["notification"];
    assert_eq!(n["event_id"], secret.as_str());
    assert_eq!(n["room_id"], room.as_str());
    assert!(n.get("content").is_none() && n.get("sender").is_none(), "nothing but ids: {n}");
}

#[tokio::test]
async fn delivery_survives_a_gateway_outage_and_a_restart_and_rejected_keys_go() {
    let mut gateway = Gateway::start().await;
    let mut server = TestServer::start_with(loopback_allowed()).await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (status, _) = server
        .post("/_matrix/client/v3/pushers/set", Some(&alice.token), pusher(&gateway.url, "alice-key", json!({})))
        .await;
    assert_eq!(status, 200);

    // The gateway fails: porch retries, and the message arrives once it is back.
    gateway.mode.store(FAIL, Ordering::SeqCst);
    server.send_text(&bob, &room, "during the outage").await;
    gateway.next("a first, failing attempt", |mode, b| mode == FAIL && is_message(b, "during the outage")).await;
    gateway.mode.store(OK, Ordering::SeqCst);
    gateway.next("the retried message", |mode, b| mode == OK && is_message(b, "during the outage")).await;

    // Down again, and porch restarts meanwhile: the notification is not lost.
    gateway.mode.store(FAIL, Ordering::SeqCst);
    server.send_text(&bob, &room, "across a restart").await;
    gateway
        .next("a failing attempt before the restart", |mode, b| mode == FAIL && is_message(b, "across a restart"))
        .await;
    server.kill();
    let restarted = TestServer::launch(&server.dir, &loopback_allowed());
    gateway.mode.store(OK, Ordering::SeqCst);
    gateway.next("the message after the restart", |mode, b| mode == OK && is_message(b, "across a restart")).await;

    // A pushkey the gateway rejects is removed.
    gateway.mode.store(REJECT, Ordering::SeqCst);
    restarted.send_text(&bob, &room, "rejected").await;
    gateway.next("the rejected push", |mode, b| mode == REJECT && is_message(b, "rejected")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pushers(&restarted, &alice).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the rejected pusher is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn notifications_are_listed_newest_first_with_read_state_and_pushers_go_with_their_device() {
    let server = TestServer::start().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let first = server.send_text(&bob, &room, "first").await;
    let second = server.send_text(&bob, &room, format!("second, {}", "alice").as_str()).await;
    let (status, body) = server.get("/_matrix/client/v3/notifications", Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    let list = body["notifications"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first: {body}");
    assert!(list.iter().all(|n| n["read"] == false && n["room_id"] == room.as_str()), "{body}");
    assert!(list[0]["actions"].as_array().is_some_and(|a| a.contains(&json!("notify"))), "{body}");

    // Pages: one at a time.
    let (_, page) = server.get("/_matrix/client/v3/notifications?limit=1", Some(&alice.token)).await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);
    let next = page["next_token"].as_str().expect("a next token").to_owned();
    let (_, page2) =
        server.get(&format!("/_matrix/client/v3/notifications?limit=1&from={next}"), Some(&alice.token)).await;
    assert_eq!(page2["notifications"][0]["event"]["event_id"], first.as_str(), "{page2}");
    let (status, bad) = server.get("/_matrix/client/v3/notifications?from=nonsense", Some(&alice.token)).await;
    assert_eq!(status, 400, "{bad}");

    // Mentioning alice highlights; `only=highlight` keeps those.
    let (status, sent) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention-1", enc(&room)),
            Some(&bob.token),
            json!({ "msgtype": "m.text", "body": "alice, look", "m.mentions": { "user_ids": [alice.user_id] } }),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let mention = sent["event_id"].as_str().unwrap().to_owned();
    let (_, only) = server.get("/_matrix/client/v3/notifications?only=highlight", Some(&alice.token)).await;
    let ids: Vec<&str> =
        only["notifications"].as_array().unwrap().iter().map(|n| n["event"]["event_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&mention.as_str()) && !ids.contains(&first.as_str()), "{only}");

    // A read receipt marks everything up to it read.
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&second)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, after) = server.get("/_matrix/client/v3/notifications", Some(&alice.token)).await;
    let read: Vec<(String, bool)> = after["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["event"]["event_id"].as_str().unwrap().to_owned(), n["read"].as_bool().unwrap()))
        .collect();
    assert_eq!(read, [(mention, false), (second, true), (first, true)], "{after}");

    // A pusher set from a device goes when that device logs out.
    let (status, login) = server
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse battery" }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let phone = login["access_token"].as_str().unwrap().to_owned();
    let (status, body) = server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&phone),
            pusher("https://push.example.org/_matrix/push/v1/notify", "phone-key", json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pushers(&server, &alice).await.len(), 1);
    let (status, _) = server.post("/_matrix/client/v3/logout", Some(&phone), json!({})).await;
    assert_eq!(status, 200);
    assert!(pushers(&server, &alice).await.is_empty(), "the phone's pusher left with it");

    // Deleting a pusher (kind null) works and is idempotent.
    let (status, _) = server
        .post(
            "/_matrix/client/v3/pushers/set",
            Some(&alice.token),
            pusher("https://push.example.org/_matrix/push/v1/notify", "desk-key", json!({})),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..2 {
        let (status, body) = server
            .post(
                "/_matrix/client/v3/pushers/set",
                Some(&alice.token),
                json!({ "kind": null, "app_id": "org.example.app", "pushkey": "desk-key" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(pushers(&server, &alice).await.is_empty());
}

/// The room's unread counts in a sync response: (notifications, highlights).
fn unread(sync: &Value, room: &str) -> Option<(u64, u64)> {
    let counts = &sync["rooms"]["join"][room]["unread_notifications"];
    Some((counts["notification_count"].as_u64()?, counts["highlight_count"].as_u64()?))
}

/// Counts are computed when a member reads them, not for every member when
/// an event is sent: each member's counts are still exact, counted once
/// however often they sync, only from their join on, and without what
/// ignored users send. A member away for more than one catch-up step
/// (2,000 events) gets them all.
#[tokio::test]
async fn counts_are_computed_when_read_and_are_exact_for_each_member() {
    let unlimited = Options {
        env: vec![
            ("PORCH_RATE_LIMITS__EVENTS_PER_SECOND".into(), "100000".into()),
            ("PORCH_RATE_LIMITS__EVENTS_BURST".into(), "100000".into()),
        ],
    };
    let server = TestServer::start_with(unlimited).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = server.create_room(&alice, json!({ "preset": "public_chat" })).await;
    for user in [&bob, &carol] {
        assert_eq!(server.join(user, &room).await.0, 200);
    }
    let first = server.sync(&carol, None, 0).await;
    assert_eq!(unread(&first, &room), Some((0, 0)), "{first}");
    let mut carol_since = first["next_batch"].as_str().map(str::to_owned);

    server.send_text(&alice, &room, "one").await;
    let after_one = server.sync(&carol, carol_since.as_deref(), 0).await;
    assert_eq!(unread(&after_one, &room), Some((1, 0)), "the sync that shows the event counts it: {after_one}");
    carol_since = after_one["next_batch"].as_str().map(str::to_owned);
    // Syncing again counts nothing twice.
    assert_eq!(unread(&server.sync(&carol, None, 0).await, &room), Some((1, 0)));

    // Dave joins now: what came before is not his to count.
    let dave = server.register("dave").await;
    assert_eq!(server.join(&dave, &room).await.0, 200);
    // Bob ignores alice; carol is mentioned.
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.ignored_user_list", enc(&bob.user_id)),
            Some(&bob.token),
            json!({ "ignored_users": { (alice.user_id.clone()): {} } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.send_text(&alice, &room, "two").await;
    let (status, body) = server
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention", enc(&room)),
            Some(&alice.token),
            json!({ "msgtype": "m.text", "body": "three, carol", "m.mentions": { "user_ids": [carol.user_id] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let carol_now = server.sync(&carol, carol_since.as_deref(), 0).await;
    assert_eq!(unread(&carol_now, &room), Some((3, 1)), "{carol_now}");
    assert_eq!(unread(&server.sync(&dave, None, 0).await, &room), Some((2, 0)), "dave counts from his join");
    // "one" came before bob ignored alice and counts; what followed does not.
    assert_eq!(unread(&server.sync(&bob, None, 0).await, &room), Some((1, 0)), "bob ignores alice");

    // A receipt clears carol's counts; what follows counts again.
    let last = server.send_text(&alice, &room, "four").await;
    let (status, _) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(unread(&server.sync(&carol, None, 0).await, &room), Some((0, 0)));
    server.send_text(&alice, &room, "five").await;
    assert_eq!(unread(&server.sync(&carol, None, 0).await, &room), Some((1, 0)));

    // Dave stays away for more than one catch-up step.
    let token = alice.token.clone();
    let base = server.hs.base.clone();
    let room_path = enc(&room);
    let client = server.hs.http.clone();
    for i in 0..2_050 {
        let response = client
            .put(format!("{base}/_matrix/client/v3/rooms/{room_path}/send/m.room.message/burst-{i}"))
            .bearer_auth(&token)
            .json(&json!({ "msgtype": "m.text", "body": format!("burst {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        unread(&server.sync(&dave, None, 0).await, &room),
        Some((4 + 2_050, 0)),
        "dave's four since his join, and the burst"
    );
}

/// An invite notifies the invitee even if they join before they ever
/// read their notifications (what came before a join is otherwise not
/// theirs to count).
#[tokio::test]
async fn an_invite_stays_a_notification_after_the_invitee_joins() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = server.create_room(&alice, json!({ "invite": [bob.user_id] })).await;
    assert_eq!(server.join(&bob, &room).await.0, 200);
    let (status, body) = server.get("/_matrix/client/v3/notifications", Some(&bob.token)).await;
    assert_eq!(status, 200, "{body}");
    let kinds: Vec<(&str, &str)> = body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["event"]["type"].as_str().unwrap(), n["event"]["content"]["membership"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(kinds, [("m.room.member", "invite")], "{body}");
}

/// Element X registers `event_id_only` pushers (iOS with an APNs
/// `default_payload`, Android without): an encrypted message reaches the
/// gateway as ids and counts, high priority, with the pusher's data as
/// registered and no tweaks, once per pusher.
#[tokio::test]
async fn element_x_pushers_get_event_id_only_pushes_with_their_default_payload() {
    let mut gateway = Gateway::start().await;
    let server = TestServer::start_with(loopback_allowed()).await;
    let (alice, bob, room) = two_in_an_encrypted_room(&server).await;

    let ios_payload = json!({ "aps": { "mutable-content": 1, "content-available": 1, "alert": { "loc-key": "Notification", "loc-args": [] } } });
    let registrations = [
        (
            "io.element.elementx.ios",
            "apns-token-1",
            json!({ "url": gateway.url, "format": "event_id_only", "default_payload": ios_payload }),
        ),
        ("io.element.android.x", "fcm-token-1", json!({ "url": gateway.url, "format": "event_id_only" })),
    ];
    for (app_id, pushkey, data) in &registrations {
        let body = json!({
            "kind": "http", "app_id": app_id, "pushkey": pushkey, "app_display_name": "Element X",
            "device_display_name": "Alice's phone", "lang": "en-US", "data": data, "append": true,
        });
        let (status, answer) = server.post("/_matrix/client/v3/pushers/set", Some(&alice.token), body).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(pushers(&server, &alice).await.len(), 2);

    let event_id = send_encrypted(&server, &bob, &room).await;

    // One push per pusher, in whichever order.
    let mut pushes = std::collections::BTreeMap::new();
    while pushes.len() < registrations.len() {
        let body = gateway.next("a push of the message", |_, b| b["notification"]["event_id"] == event_id).await;
        let pushkey = body["notification"]["devices"][0]["pushkey"].as_str().unwrap().to_owned();
        assert!(pushes.insert(pushkey, body).is_none(), "one push per pusher");
    }
    for (app_id, pushkey, data) in &registrations {
        let n = &pushes[*pushkey]["notification"];
        assert_eq!(n["room_id"], room.as_str());
        assert_eq!(n["prio"], "high", "an encrypted event may be anything: {n}");
        assert_eq!(n["counts"]["unread"], 1, "{n}");
        for absent in ["content", "type", "sender", "sender_display_name", "room_name"] {
            assert!(n.get(absent).is_none(), "{absent} is not sent: {n}");
        }
        let device = &n["devices"][0];
        assert_eq!(device["app_id"], *app_id);
        assert!(device["pushkey_ts"].as_u64().is_some(), "{device}");
        let mut expected = data.clone();
        expected.as_object_mut().unwrap().remove("url");
        assert_eq!(device["data"], expected, "the pusher's data as registered, less the url");
        assert_eq!(device["tweaks"], json!({}), "{device}");
    }
}

/// Element X on Android registers an FCM pusher (`io.element.android.x`,
/// the FCM registration token as pushkey, `event_id_only`) at a sygnal
/// gateway. A message in an encrypted room travels porch → sygnal → FCM and
/// arrives as sygnal's data message of ids, priority and count; a token FCM
/// no longer knows is rejected by sygnal, and porch drops that pusher.
#[tokio::test]
#[ignore = "needs sygnal, which the package index may lack: SYGNAL_SOURCE=<sygnal checkout> cargo test --test push -- --ignored"]
async fn element_x_android_pushes_reach_fcm_through_a_real_sygnal() {
    use common::sygnal::{FCM_API_KEY, Fcm, Sygnal};
    const APP_ID: &str = "io.element.android.x";
    let mut fcm = Fcm::start(&["fcm-token-gone"]).await;
    let sygnal = Sygnal::start(APP_ID, &fcm).await;
    let server = TestServer::start_with(loopback_allowed()).await;
    let (alice, bob, room) = two_in_an_encrypted_room(&server).await;
    for pushkey in ["fcm-token-1", "fcm-token-gone"] {
        let body = json!({
            "kind": "http", "app_id": APP_ID, "pushkey": pushkey, "app_display_name": "Element X",
            "device_display_name": "Pixel", "lang": "en", "append": true,
            "data": { "url": sygnal.notify_url, "format": "event_id_only" },
        });
        let (status, answer) = server.post("/_matrix/client/v3/pushers/set", Some(&alice.token), body).await;
        assert_eq!(status, 200, "{answer}");
    }

    let event_id = send_encrypted(&server, &bob, &room).await;

    let mut tokens = std::collections::BTreeSet::new();
    while tokens.len() < 2 {
        let request = fcm.next("a push of the message").await;
        assert_eq!(request.tunnel, "fcm.googleapis.com:443", "{request:?}");
        assert_eq!(request.path, "/fcm/send", "{request:?}");
        assert_eq!(request.authorization, format!("key={FCM_API_KEY}"));
        let body = &request.body;
        assert_eq!(body["priority"], "high", "{body}");
        assert_eq!(
            body["data"],
            json!({ "event_id": event_id, "room_id": room, "prio": "high", "unread": 1 }),
            "ids, priority and the unread count, nothing of the message: {body}"
        );
        tokens.insert(body["to"].as_str().unwrap().to_owned());
    }
    assert_eq!(tokens, ["fcm-token-1", "fcm-token-gone"].map(str::to_owned).into());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<Value> = pushers(&server, &alice).await.into_iter().map(|p| p["pushkey"].clone()).collect();
        if keys == [json!("fcm-token-1")] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "porch kept {keys:?}; sygnal:\n{}", sygnal.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

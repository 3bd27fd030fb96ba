//! Simplified sliding sync (MSC4186) over HTTP, as Element X's SDK uses it:
//! room lists in recency order, windows, incremental changes, long-polling,
//! required state, filters, subscriptions, extensions, positions, and the
//! guest policy.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn sliding(s: &TestServer, user: &User, pos: Option<&str>, timeout_ms: u64, body: Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    s.post(&path, Some(&user.token), body).await
}

async fn ok(s: &TestServer, user: &User, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let (status, response) = sliding(s, user, pos, timeout_ms, body.clone()).await;
    assert_eq!(status, 200, "sliding sync: {response}");
    response
}

fn pos(response: &Value) -> String {
    response["pos"].as_str().expect("pos").to_owned()
}

fn room_list(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": { "all_rooms": {
            "ranges": [[0, range_end]],
            "timeline_limit": timeline_limit,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"]],
        }},
        "extensions": { "receipts": { "enabled": true, "rooms": ["*"] }, "typing": { "enabled": true } },
    })
}

fn sent_rooms(response: &Value) -> Vec<String> {
    response["rooms"].as_object().map(|r| r.keys().cloned().collect()).unwrap_or_default()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

async fn named_room(s: &TestServer, user: &User, name: &str) -> String {
    s.create_room(user, json!({ "name": name, "preset": "private_chat" })).await
}

#[tokio::test]
async fn room_list_in_recency_order_with_incremental_changes_and_long_polling() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let a = named_room(&s, &alice, "A").await;
    let b = named_room(&s, &alice, "B").await;
    let c = named_room(&s, &alice, "C").await;
    s.send_text(&alice, &a, "a1").await;
    s.send_text(&alice, &c, "c1").await;
    s.send_text(&alice, &a, "a2").await;

    // The window holds the two most recent rooms: A, then C.
    let first = ok(&s, &alice, None, 0, &room_list(1, 1)).await;
    assert_eq!(first["lists"]["all_rooms"]["count"], 3, "{first}");
    let mut sent = sent_rooms(&first);
    sent.sort();
    let mut expected = vec![a.clone(), c.clone()];
    expected.sort();
    assert_eq!(sent, expected, "{first}");
    let room_a = &first["rooms"][&a];
    assert_eq!(room_a["initial"], true);
    assert_eq!(room_a["name"], "A");
    assert_eq!(bodies(room_a), ["a2"], "timeline_limit 1: {room_a}");
    assert_eq!(room_a["limited"], true);
    assert!(
        room_a["bump_stamp"].as_u64().unwrap() > first["rooms"][&c]["bump_stamp"].as_u64().unwrap(),
        "A is newer than C: {first}"
    );
    let states: Vec<&str> =
        room_a["required_state"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(states.contains(&"m.room.name") && states.contains(&"m.room.member"), "{room_a}");
    assert!(!states.contains(&"m.room.create"), "only what was asked for: {room_a}");

    // prev_batch pages back with /messages.
    let prev = room_a["prev_batch"].as_str().expect("prev_batch");
    let (status, page) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5&from={prev}", enc(&a)), Some(&alice.token))
        .await;
    assert_eq!(status, 200, "{page}");
    let older: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(older.first(), Some(&"a1"), "the page starts before the timeline: {page}");

    // Nothing changed: a request without timeout keeps the position.
    let pos1 = pos(&first);
    let same = ok(&s, &alice, Some(&pos1), 0, &room_list(1, 1)).await;
    assert_eq!(pos(&same), pos1);
    assert!(sent_rooms(&same).is_empty(), "{same}");

    // A message in B moves it into the window; only B is sent, whole.
    s.send_text(&alice, &b, "b1").await;
    let second = ok(&s, &alice, Some(&pos1), 0, &room_list(1, 1)).await;
    assert_eq!(sent_rooms(&second), [b.as_str()], "{second}");
    assert_eq!(second["rooms"][&b]["initial"], true);
    assert_eq!(bodies(&second["rooms"][&b]), ["b1"]);
    let pos2 = pos(&second);
    assert_ne!(pos2, pos1);

    // A message in A: A comes again with only what is new.
    s.send_text(&alice, &a, "a3").await;
    let third = ok(&s, &alice, Some(&pos2), 0, &room_list(1, 1)).await;
    assert_eq!(sent_rooms(&third), [a.as_str()], "{third}");
    let room_a = &third["rooms"][&a];
    assert!(room_a.get("initial").is_none(), "{room_a}");
    assert_eq!(bodies(room_a), ["a3"]);
    assert_eq!(room_a["num_live"], 1);
    assert!(room_a.get("limited").is_none_or(|l| l == false), "all that is new fits: {room_a}");
    assert!(room_a["bump_stamp"].as_u64().unwrap() > second["rooms"][&b]["bump_stamp"].as_u64().unwrap());

    // The client lost that answer and asks again with the old position: the same changes.
    let again = ok(&s, &alice, Some(&pos2), 0, &room_list(1, 1)).await;
    assert_eq!(sent_rooms(&again), [a.as_str()], "{again}");
    assert_eq!(bodies(&again["rooms"][&a]), ["a3"]);
    let pos3 = pos(&again);

    // Long-polling: the request waits, and a message answers it at once.
    let waiter = {
        let (s2, alice2, pos3) = (s.base.clone(), alice.clone(), pos3.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let http = common::client();
            let response: Value = http
                .post(format!("{s2}{PATH}?timeout=20000&pos={}", enc(&pos3)))
                .bearer_auth(&alice2.token)
                .json(&room_list(1, 1))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), response)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.send_text(&alice, &c, "c2").await;
    let (waited, woken) = waiter.await.unwrap();
    assert!(waited >= Duration::from_millis(600) && waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(bodies(&woken["rooms"][&c]), ["c2"], "{woken}");

    // A long-poll that sees nothing answers at its timeout with the same position.
    let pos4 = pos(&woken);
    let started = Instant::now();
    let idle = ok(&s, &alice, Some(&pos4), 1200, &room_list(1, 1)).await;
    assert!(started.elapsed() >= Duration::from_millis(1100));
    assert_eq!(pos(&idle), pos4);
    assert_eq!(idle["lists"]["all_rooms"]["count"], 3);

    // Positions the server does not know.
    for bad in [pos1.as_str(), "nonsense", "1_2"] {
        let (status, body) = sliding(&s, &alice, Some(bad), 0, room_list(1, 1)).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{bad}: {body}");
    }
}

#[tokio::test]
async fn invites_heroes_counts_filters_and_subscriptions() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
            Some(&bob.token),
            json!({ "displayname": "Bobby" }),
        )
        .await;
    assert_eq!(status, 200);
    let dm = s
        .create_room(&bob, json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [alice.user_id] }))
        .await;
    let encrypted = s
        .create_room(
            &alice,
            json!({ "name": "secret", "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        )
        .await;
    let space = s.create_room(&alice, json!({ "name": "space", "creation_content": { "type": "m.space" } })).await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(&space), enc(&encrypted)),
            Some(&alice.token),
            json!({ "via": ["localhost"] }),
        )
        .await;
    assert_eq!(status, 200);

    let lists = json!({
        "lists": {
            "invites": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_invite": true } },
            "encrypted": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_encrypted": true } },
            "no_spaces": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "not_room_types": ["m.space"] } },
            "spaces": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "room_types": ["m.space"] } },
            "in_space": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "spaces": [space] } },
            "dms": { "ranges": [[0, 9]], "timeline_limit": 0, "filters": { "is_dm": true } },
        }
    });
    let first = ok(&s, &alice, None, 0, &lists).await;
    let count = |list: &str| first["lists"][list]["count"].as_u64().unwrap();
    assert_eq!(
        (count("invites"), count("encrypted"), count("no_spaces"), count("spaces"), count("in_space"), count("dms")),
        (1, 1, 2, 1, 1, 1),
        "{first}"
    );
    let invite = &first["rooms"][&dm];
    assert_eq!(invite["is_dm"], true, "{invite}");
    let stripped: Vec<&str> =
        invite["invite_state"].as_array().expect("invite_state").iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(stripped.contains(&"m.room.create") && stripped.contains(&"m.room.member"), "{invite}");
    assert!(invite.get("timeline").is_none(), "an invite shows no timeline: {invite}");

    // Alice joins: the room comes whole, with Bob as hero and the counts.
    let pos1 = pos(&first);
    assert_eq!(s.join(&alice, &dm).await.0, 200);
    s.send_text(&bob, &dm, "hello alice").await;
    let joined = ok(&s, &alice, Some(&pos1), 0, &lists).await;
    assert_eq!(joined["lists"]["invites"]["count"], 0, "{joined}");
    let room = &joined["rooms"][&dm];
    assert_eq!(room["initial"], true, "{room}");
    assert!(room.get("invite_state").is_none());
    assert_eq!(room["joined_count"], 2);
    assert_eq!(room["heroes"][0]["user_id"], bob.user_id.as_str(), "{room}");
    assert_eq!(room["heroes"][0]["displayname"], "Bobby");
    // The counts are those `/sync` gives.
    let v3 = s.sync(&alice, None, 0).await;
    let counts = &v3["rooms"]["join"][&dm]["unread_notifications"];
    assert!(counts["notification_count"].as_u64().is_some_and(|n| n >= 1), "{v3}");
    assert_eq!(room["notification_count"], counts["notification_count"], "{room}");
    assert_eq!(room["highlight_count"], counts["highlight_count"], "{room}");

    // A subscription sends a room outside every window, with its own settings.
    let with_subscription = json!({
        "lists": { "dms": { "ranges": [[0, 0]], "timeline_limit": 1, "filters": { "is_dm": true } } },
        "room_subscriptions": { (encrypted.clone()): { "timeline_limit": 5, "required_state": [["*", "*"]] } },
    });
    let subscribed = ok(&s, &alice, None, 0, &with_subscription).await;
    let secret = &subscribed["rooms"][&encrypted];
    let kinds: Vec<&str> =
        secret["required_state"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    for kind in ["m.room.create", "m.room.encryption", "m.room.power_levels", "m.room.name"] {
        assert!(kinds.contains(&kind), "`*` sends all state, {kind} missing: {secret}");
    }
    assert!(!subscribed["rooms"].as_object().unwrap().contains_key(&space), "{subscribed}");
}

#[tokio::test]
async fn required_state_lazy_members_and_changes() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat", "name": "lazy" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    s.send_text(&bob, &room, "from bob").await;

    let body = json!({ "lists": { "l": {
        "ranges": [[0, 0]], "timeline_limit": 1,
        "required_state": [["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.topic", ""]],
    }}});
    let first = ok(&s, &alice, None, 0, &body).await;
    let members = |response: &Value| -> Vec<String> {
        let mut out: Vec<String> = response["rooms"][&room]["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    };
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(members(&first), expected, "the sender's and my member, not carol's: {first}");

    // Bob again: his member was sent already. Carol speaks: hers comes now.
    s.send_text(&bob, &room, "bob again").await;
    let second = ok(&s, &alice, Some(&pos(&first)), 0, &body).await;
    assert!(members(&second).is_empty(), "{second}");
    s.send_text(&carol, &room, "from carol").await;
    let third = ok(&s, &alice, Some(&pos(&second)), 0, &body).await;
    assert_eq!(members(&third), [carol.user_id.as_str()], "{third}");

    // A state change the client asked for comes in required_state.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
            Some(&alice.token),
            json!({ "topic": "new" }),
        )
        .await;
    assert_eq!(status, 200);
    let fourth = ok(&s, &alice, Some(&pos(&third)), 0, &body).await;
    let topic = fourth["rooms"][&room]["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.topic")
        .cloned()
        .unwrap_or_default();
    assert_eq!(topic["content"]["topic"], "new", "{fourth}");
}

#[tokio::test]
async fn extensions_carry_to_device_keys_account_data_receipts_and_typing() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat", "name": "ext" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let message = s.send_text(&bob, &room, "read me").await;
    let (status, _) = s
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&alice.token),
            json!({
                "one_time_keys": { "signed_curve25519:AAAA": { "key": "k1" }, "signed_curve25519:AAAB": { "key": "k2" } },
                "fallback_keys": { "signed_curve25519:FFFF": { "key": "f", "fallback": true } },
            }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.work", enc(&alice.user_id), enc(&room)),
            Some(&alice.token),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, 200);

    // The encryption connection: no lists, to-device and keys.
    let encryption = json!({ "conn_id": "encryption", "extensions": { "to_device": { "enabled": true }, "e2ee": { "enabled": true } } });
    let first = ok(&s, &alice, None, 0, &encryption).await;
    assert_eq!(first["extensions"]["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 2, "{first}");
    assert_eq!(first["extensions"]["e2ee"]["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
    let next_batch = first["extensions"]["to_device"]["next_batch"].as_str().expect("next_batch").to_owned();

    let (status, _) = s
        .put(
            "/_matrix/client/v3/sendToDevice/m.test/t1",
            Some(&bob.token),
            json!({ "messages": { (alice.user_id.clone()): { (alice.device_id.clone()): { "n": 1 } } } }),
        )
        .await;
    assert_eq!(status, 200);
    let with_since = |since: &str| json!({ "conn_id": "encryption", "extensions": { "to_device": { "enabled": true, "since": since }, "e2ee": { "enabled": true } } });
    let second = ok(&s, &alice, Some(&pos(&first)), 5000, &with_since(&next_batch)).await;
    let events = second["extensions"]["to_device"]["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{second}");
    assert_eq!(events[0]["content"]["n"], 1);
    assert_eq!(events[0]["sender"], bob.user_id.as_str());
    let next_batch = second["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let third = ok(&s, &alice, Some(&pos(&second)), 0, &with_since(&next_batch)).await;
    assert!(
        third["extensions"]["to_device"]["events"].as_array().is_none_or(|e| e.is_empty()),
        "delivered once: {third}"
    );

    // The room list connection: account data, receipts, typing.
    let room_list = json!({
        "conn_id": "room-list",
        "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    });
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.test.global", enc(&alice.user_id)),
            Some(&alice.token),
            json!({ "x": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    let list = ok(&s, &alice, None, 0, &room_list).await;
    let global = list["extensions"]["account_data"]["global"].as_array().expect("global");
    assert!(global.iter().any(|e| e["type"] == "m.test.global"), "{list}");
    let tags = &list["extensions"]["account_data"]["rooms"][&room];
    assert!(
        tags.as_array().unwrap().iter().any(|e| e["type"] == "m.tag" && e["content"]["tags"]["u.work"].is_object()),
        "{list}"
    );

    // Bob reads and types: Alice's long-poll sees each.
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&message)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let receipt = ok(&s, &alice, Some(&pos(&list)), 5000, &room_list).await;
    let read = &receipt["extensions"]["receipts"]["rooms"][&room]["content"][&message]["m.read"];
    assert!(read.get(&bob.user_id).is_some(), "{receipt}");
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
            Some(&bob.token),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(status, 200);
    let typing = ok(&s, &alice, Some(&pos(&receipt)), 5000, &room_list).await;
    assert_eq!(typing["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.user_id]), "{typing}");

    // An extension that names lists covers only the rooms of those lists' windows.
    let scoped = |lists: Value| {
        json!({
            "conn_id": "scoped",
            "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } },
            "extensions": { "typing": { "enabled": true, "lists": lists } },
        })
    };
    let other = ok(&s, &alice, None, 0, &scoped(json!(["another"]))).await;
    assert!(other["extensions"]["typing"]["rooms"].get(&room).is_none(), "{other}");
    let named = ok(&s, &alice, None, 0, &scoped(json!(["all"]))).await;
    assert_eq!(named["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.user_id]), "{named}");
}

#[tokio::test]
async fn guests_lists_hold_only_their_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let private = named_room(&s, &alice, "members only").await;
    let (guest_room, token, _) = s.guest_room(&alice, json!({ "name": "visitors" })).await;
    let (status, guest) = s.redeem_as_guest(&token, "Visitor").await;
    assert_eq!(status, 200, "{guest}");
    let guest = User {
        user_id: guest["user_id"].as_str().unwrap().to_owned(),
        token: guest["access_token"].as_str().unwrap().to_owned(),
        device_id: guest["device_id"].as_str().unwrap_or_default().to_owned(),
    };
    s.send_text(&alice, &private, "not for guests").await;

    let body = json!({
        "lists": { "all": { "ranges": [[0, 99]], "timeline_limit": 5, "required_state": [["*", "*"]] } },
        "room_subscriptions": { (private.clone()): { "timeline_limit": 5, "required_state": [["*", "*"]] } },
        "extensions": { "account_data": { "enabled": true }, "receipts": { "enabled": true, "rooms": [private.clone()] } },
    });
    let view = ok(&s, &guest, None, 0, &body).await;
    assert_eq!(view["lists"]["all"]["count"], 1, "{view}");
    assert_eq!(sent_rooms(&view), [guest_room.as_str()], "a subscription to another room sends nothing: {view}");
    assert!(!view.to_string().contains("not for guests"), "{view}");

    // Alice sees both; when the guest room ends it goes from every list.
    let alice_view = ok(&s, &alice, None, 0, &body).await;
    assert_eq!(alice_view["lists"]["all"]["count"], 2, "{alice_view}");
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&guest_room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    let after = ok(&s, &alice, Some(&pos(&alice_view)), 5000, &body).await;
    assert_eq!(after["lists"]["all"]["count"], 1, "{after}");
    let last = &after["rooms"][&guest_room];
    let leave = last["timeline"].as_array().into_iter().flatten().any(|e| {
        e["type"] == "m.room.member"
            && e["state_key"] == alice.user_id.as_str()
            && e["content"]["membership"] == "leave"
    });
    assert!(leave, "the ended room comes once more with the leave: {after}");
    let later = ok(&s, &alice, Some(&pos(&after)), 0, &body).await;
    assert!(!sent_rooms(&later).contains(&guest_room), "{later}");
    // The temporary guest's account ended with its only room.
    let (status, guest_after) = sliding(&s, &guest, None, 0, body.clone()).await;
    assert_eq!((status, guest_after["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{guest_after}");
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    named_room(&s, &alice, "one").await;
    let (status, body) = s.post(PATH, None, json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let many: serde_json::Map<String, Value> =
        (0..101).map(|n| (format!("l{n}"), json!({ "ranges": [[0, 1]], "timeline_limit": 1 }))).collect();
    for bad in [
        json!({ "lists": { "l": { "ranges": [[5, 1]], "timeline_limit": 1 } } }),
        json!({ "conn_id": "x".repeat(65) }),
        json!({ "lists": many }),
        json!({ "lists": { "l": { "ranges": [[0, 1]], "timeline_limit": 1, "filters": { "spaces": ["not a room"] } } } }),
        json!({ "extensions": { "to_device": { "enabled": true, "since": "yesterday" } } }),
    ] {
        let (status, body) = sliding(&s, &alice, None, 0, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["errcode"].as_str().is_some_and(|e| e.starts_with("M_")), "{body}");
    }
    // A huge window over few rooms and a huge timeline limit are bounded, not errors.
    let wide = ok(
        &s,
        &alice,
        None,
        0,
        &json!({ "lists": { "l": { "ranges": [[0, u32::MAX]], "timeline_limit": 1_000_000 } } }),
    )
    .await;
    assert_eq!(wide["lists"]["l"]["count"], 1);
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);
}

/// The room list a connection keeps up to date from the journal of recent
/// changes is, after each kind of change, what reading it whole gives.
#[tokio::test]
async fn the_room_list_kept_from_the_journal_matches_a_fresh_read() {
    use porch::service::sliding_sync::room_list::RoomList;
    let (services, _name, hs, _dir) = common::in_process_server_with_client(|_| {}).await;
    let alice = hs.register("alice").await;
    let bob = hs.register("bob").await;
    let alice_id = ruma::OwnedUserId::try_from(alice.user_id.as_str()).unwrap();
    let mut rooms = Vec::new();
    for n in 0..5 {
        rooms.push(hs.create_room(&alice, json!({ "name": format!("r{n}") })).await);
    }
    let snapshot = |list: &RoomList| -> Vec<(String, String, u64)> {
        list.in_order().iter().map(|c| (c.room_id.to_string(), c.record.membership.to_string(), c.bump)).collect()
    };
    let mut kept = RoomList::read(&services, &alice_id, services.db.safe_count()).unwrap();
    assert_eq!(kept.rooms.len(), 5);

    let bobs = hs.create_room(&bob, json!({ "name": "bob's" })).await;
    for step in 0..7 {
        match step {
            0 => {
                hs.send_text(&alice, &rooms[3], "a message moves r3 up").await;
            }
            1 => assert_eq!(
                hs.post(
                    &format!("/_matrix/client/v3/rooms/{}/invite", enc(&bobs)),
                    Some(&bob.token),
                    json!({ "user_id": alice.user_id })
                )
                .await
                .0,
                200
            ),
            2 => assert_eq!(
                hs.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&rooms[1])), Some(&alice.token), json!({}))
                    .await
                    .0,
                200
            ),
            3 => assert_eq!(hs.join(&alice, &bobs).await.0, 200),
            4 => {
                hs.send_text(&bob, &bobs, "bob writes").await;
            }
            5 => rooms.push(hs.create_room(&alice, json!({ "name": "r5" })).await),
            _ => {
                let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&rooms[0]));
                assert_eq!(
                    hs.put(&path, Some(&alice.token), json!({ "topic": "state does not move a room" })).await.0,
                    200
                );
            }
        }
        let upto = services.db.safe_count();
        assert!(kept.update(&services, &alice_id, upto).unwrap(), "the journal reaches back (step {step})");
        let fresh = RoomList::read(&services, &alice_id, upto).unwrap();
        assert_eq!(snapshot(&kept), snapshot(&fresh), "after step {step}");
    }
    let order: Vec<String> = snapshot(&kept).into_iter().map(|(room, _, _)| room).collect();
    assert_eq!(order.len(), 6, "five of alice's, less the one she left, with bob's and the new one");
    assert_eq!(order[0], rooms[5], "the newest room first");
    assert_eq!(order[1], bobs, "then the room bob wrote in");
    assert!(!order.contains(&rooms[1]), "the room alice left is gone");
}

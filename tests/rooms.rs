//! Rooms: creation, membership, events, history and their refusals.

mod common;

use common::{TestServer, enc, timeline};
use serde_json::json;

#[tokio::test]
async fn create_room_versions_and_refusals() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        let room = s.create_room(&alice, json!({ "room_version": version, "name": format!("v{version}") })).await;
        let (status, create) =
            s.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&room)), Some(&alice.token)).await;
        assert_eq!(status, 200, "{create}");
        assert_eq!(create["room_version"], version);
        // Messages go in and come back by id (v3's ids are standard base64: `/` and `+` included).
        let event_id = s.send_text(&alice, &room, &format!("hello v{version}")).await;
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id));
        let (status, event) = s.get(&path, Some(&alice.token)).await;
        assert_eq!((status, event["content"]["body"].as_str()), (200, Some(format!("hello v{version}").as_str())));
        if matches!(version, "1" | "2") {
            assert!(event_id.ends_with(":porch.test"), "v{version} event ids name their server: {event_id}");
            let (_, member) = s
                .get(
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&alice.user_id)),
                    Some(&alice.token),
                )
                .await;
            assert_eq!(member["membership"], "join", "{member}");
        } else {
            assert!(!event_id.contains(':'), "v{version} event ids are hashes: {event_id}");
        }
        if version == "12" {
            assert!(!room.contains(':'), "v12 room ids are the create event's hash: {room}");
            let (_, pl) = s
                .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels", enc(&room)), Some(&alice.token))
                .await;
            assert!(
                pl["users"].get("@alice:porch.test").is_none(),
                "v12 creators are not listed in power levels: {pl}"
            );
        } else {
            assert!(room.ends_with(":porch.test"));
        }
    }
    let default_room = s.create_room(&alice, json!({})).await;
    let (_, create) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create", enc(&default_room)), Some(&alice.token))
        .await;
    assert_eq!(create["room_version"], "12", "the default is the newest");
    let (status, body) =
        s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({ "room_version": "13" })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")), "{body}");
    let (status, body) =
        s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({ "room_version": "banana" })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")));
    // A bad initial_state event refuses the whole request; no room is left behind.
    let (_, before) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    let (status, body) = s
        .post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({ "initial_state": [{ "type": "m.room.power_levels", "state_key": "", "content": { "users": { "@alice:porch.test": "high" } } }] }))
        .await;
    assert!(status == 400 || status == 403, "{status} {body}");
    let (_, after) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert_eq!(before["joined_rooms"].as_array().unwrap().len(), after["joined_rooms"].as_array().unwrap().len());
}

#[tokio::test]
async fn create_room_with_everything() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({
                "preset": "public_chat", "visibility": "public", "room_alias_name": "lounge", "name": "Lounge", "topic": "Chat",
                "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } }],
                "power_level_content_override": { "events_default": 10 },
                "creation_content": { "m.federate": true },
                "invite": ["@bob:porch.test"], "is_direct": true,
                "room_version": "11"
            }),
        )
        .await;
    let (status, body) = s.get(&format!("/_matrix/client/v3/directory/room/{}", enc("#lounge:porch.test")), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["room_id"], room.as_str());
    let state = |t: &str| format!("/_matrix/client/v3/rooms/{}/state/{t}", enc(&room));
    assert_eq!(s.get(&state("m.room.name"), Some(&alice.token)).await.1["name"], "Lounge");
    assert_eq!(s.get(&state("m.room.topic"), Some(&alice.token)).await.1["topic"], "Chat");
    assert_eq!(s.get(&state("m.room.join_rules"), Some(&alice.token)).await.1["join_rule"], "public");
    assert_eq!(
        s.get(&state("m.room.history_visibility"), Some(&alice.token)).await.1["history_visibility"],
        "world_readable"
    );
    assert_eq!(s.get(&state("m.room.power_levels"), Some(&alice.token)).await.1["events_default"], 10);
    assert_eq!(s.get(&state("m.room.canonical_alias"), Some(&alice.token)).await.1["alias"], "#lounge:porch.test");
    let (_, member) = s.get(&state("m.room.member/@bob:porch.test"), Some(&alice.token)).await;
    assert_eq!((member["membership"].as_str(), member["is_direct"].as_bool()), (Some("invite"), Some(true)));
    // Alias taken.
    let (status, body) =
        s.post("/_matrix/client/v3/createRoom", Some(&bob.token), json!({ "room_alias_name": "lounge" })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_ROOM_IN_USE")));
    // Published.
    let (status, body) = s.get("/_matrix/client/v3/publicRooms", None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "signed-in users only by default");
    let (status, body) = s.get("/_matrix/client/v3/publicRooms", Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["chunk"][0]["room_id"], room.as_str());
    assert_eq!(body["chunk"][0]["name"], "Lounge");
    let (_, body) = s
        .post(
            "/_matrix/client/v3/publicRooms",
            Some(&bob.token),
            json!({ "filter": { "generic_search_term": "nothing-like-this" } }),
        )
        .await;
    assert_eq!(body["chunk"].as_array().unwrap().len(), 0);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&room)),
            Some(&alice.token),
            json!({ "visibility": "private" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get("/_matrix/client/v3/publicRooms", Some(&bob.token)).await;
    assert_eq!(body["chunk"].as_array().unwrap().len(), 0);
    // Room summary for a non-member of a public room.
    let carol = s.register("carol").await;
    let (status, body) =
        s.get(&format!("/_matrix/client/v1/room_summary/{}", enc("#lounge:porch.test")), Some(&carol.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["name"].as_str(), body["num_joined_members"].as_u64()), (Some("Lounge"), Some(1)));
}

#[tokio::test]
async fn membership_lifecycle_and_refusals() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "private_chat" })).await;
    let (status, _) = s.join(&bob, &room).await;
    assert_eq!(status, 403, "invite-only");
    let invite = |who: &str| json!({ "user_id": who });
    let (status, body) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), Some(&alice.token), invite("@bob:porch.test"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.token),
            invite("@nobody:porch.test"),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.join(&bob, &room).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), Some(&alice.token), invite("@bob:porch.test"))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "inviting a joined user");
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), Some(&bob.token)).await;
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    // Bob (power 0) cannot kick Alice.
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(&bob.token),
            json!({ "user_id": "@alice:porch.test" }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test", "reason": "bye" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.join(&bob, &room).await;
    assert_eq!(status, 403, "banned");
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/unban", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/unban", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test" }),
        )
        .await;
    assert_eq!(status, 403, "not banned any more");
    let (_, body) = s.get("/_matrix/client/v3/joined_rooms", Some(&bob.token)).await;
    assert_eq!(body["joined_rooms"].as_array().unwrap().len(), 0);
    // Leave and forget.
    let (status, body) =
        s.post(&format!("/_matrix/client/v3/rooms/{}/forget", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_STATE")), "still joined");
    let (status, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) =
        s.post(&format!("/_matrix/client/v3/rooms/{}/forget", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    let sync = s.sync(&alice, None, 0).await;
    assert!(sync["rooms"]["leave"].get(&room).is_none() && sync["rooms"]["join"].get(&room).is_none());
}

#[tokio::test]
async fn knock_and_restricted_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let restricted = s
        .create_room(
            &alice,
            json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }),
        )
        .await;
    let (status, body) = s.join(&bob, &restricted).await;
    assert_eq!(status, 403, "not in the allowed room yet: {body}");
    assert_eq!(s.join(&bob, &space).await.0, 200);
    let (status, body) = s.join(&bob, &restricted).await;
    assert_eq!(status, 200, "{body}");
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/@bob:porch.test", enc(&restricted)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(member["join_authorised_via_users_server"], "@alice:porch.test", "{member}");

    let knockable = s
        .create_room(&alice, json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] }))
        .await;
    let private = s.create_room(&alice, json!({})).await;
    let (status, _) = s.post(&format!("/_matrix/client/v3/knock/{}", enc(&private)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 403, "invite-only rooms refuse knocks");
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/knock/{}", enc(&knockable)),
            Some(&bob.token),
            json!({ "reason": "let me in" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sync = s.sync(&bob, None, 0).await;
    assert!(sync["rooms"]["knock"].get(&knockable).is_some(), "{sync}");
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&knockable)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.join(&bob, &knockable).await.0, 200);

    let knock_restricted = s
        .create_room(
            &alice,
            json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock_restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }),
        )
        .await;
    assert_eq!(s.join(&bob, &knock_restricted).await.0, 200, "members of the allowed room join directly");
}

#[tokio::test]
async fn send_state_redact_and_read() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    // Transaction ids are idempotent.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/same-txn", enc(&room));
    let (_, first) = s.put(&path, Some(&alice.token), json!({ "msgtype": "m.text", "body": "once" })).await;
    let (_, second) = s.put(&path, Some(&alice.token), json!({ "msgtype": "m.text", "body": "once" })).await;
    assert_eq!(first["event_id"], second["event_id"]);
    let event_id = first["event_id"].as_str().unwrap().to_owned();
    let (status, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id)), Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert_eq!(event["content"]["body"], "once");
    // Bad bodies.
    let resp = s
        .http
        .put(format!("{}/_matrix/client/v3/rooms/{}/send/m.room.message/t2", s.base, enc(&room)))
        .bearer_auth(&alice.token)
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big = "x".repeat(70_000);
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t3", enc(&room)),
            Some(&alice.token),
            json!({ "body": big }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    // Not a member: refused.
    let carol = s.register("carol").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t4", enc(&room)),
            Some(&carol.token),
            json!({ "body": "hi" }),
        )
        .await;
    assert_eq!(status, 403);
    // State: Bob (power 0) may not rename; Alice may.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&bob.token),
            json!({ "name": "Bob's" }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            Some(&alice.token),
            json!({ "name": "Alice's" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)), Some(&alice.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (_, all) = s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), Some(&bob.token)).await;
    assert!(all.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Alice's"));
    // Redaction: Bob may not redact Alice's event; Alice may.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&event_id)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r2", enc(&room), enc(&event_id)),
            Some(&alice.token),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id)), Some(&bob.token)).await;
    assert!(event["content"].as_object().unwrap().is_empty(), "{event}");
    assert_eq!(event["unsigned"]["redacted_because"]["content"]["reason"], "oops");
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc("$nope")), Some(&bob.token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn messages_paginate_both_ways_with_filters_and_context() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(s.send_text(&alice, &room, &format!("message {i}")).await);
    }
    let filter = enc(&json!({ "types": ["m.room.message"] }).to_string());
    let (status, page1) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={filter}", enc(&room)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200, "{page1}");
    let chunk = page1["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 10);
    assert_eq!(chunk[0]["content"]["body"], "message 24");
    let end = page1["end"].as_str().unwrap();
    let (_, page2) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&from={end}&filter={filter}", enc(&room)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(page2["chunk"][0]["content"]["body"], "message 14");
    let (_, forward) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=5&filter={filter}", enc(&room)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(forward["chunk"][0]["content"]["body"], "message 0");
    // From a sync's next_batch, going back starts at the newest event; a
    // timeline's prev_batch starts just before its first event.
    let sync = s.sync(&alice, None, 0).await;
    let next_batch = sync["next_batch"].as_str().unwrap();
    let (s, alice) = (&s, &alice);
    let back = |from: String| {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}&filter={filter}",
            enc(&room),
            enc(&from)
        );
        async move { s.get(&path, Some(&alice.token)).await.1 }
    };
    assert_eq!(back(next_batch.to_owned()).await["chunk"][0]["content"]["body"], "message 24");
    let timeline = common::timeline(&sync, &room);
    let first = timeline.first().unwrap()["content"]["body"].as_str().unwrap().to_owned();
    let n: usize = first.trim_start_matches("message ").parse().unwrap();
    let prev_batch = sync["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().unwrap().to_owned();
    assert_eq!(back(prev_batch).await["chunk"][0]["content"]["body"], format!("message {}", n - 1).as_str());
    let (_, after) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/messages?dir=f&from={}", enc(&room), enc(next_batch)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(after["chunk"].as_array().map(Vec::len), Some(0), "nothing after next_batch: {after}");
    let (status, body) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from=garbage", enc(&room)), Some(&alice.token))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (status, ctx) = s
        .get(&format!("/_matrix/client/v3/rooms/{}/context/{}?limit=4", enc(&room), enc(&ids[10])), Some(&alice.token))
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "message 10");
    assert_eq!(ctx["events_before"][0]["content"]["body"], "message 9");
    assert_eq!(ctx["events_after"][0]["content"]["body"], "message 11");
    let bob = s.register("bob").await;
    let (status, _) = s.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)), Some(&bob.token)).await;
    assert_eq!(status, 403, "non-members cannot read");
}

#[tokio::test]
async fn sync_initial_incremental_longpoll_and_sections() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "name": "Sync room" })).await;
    let initial = s.sync(&alice, None, 0).await;
    let events = timeline(&initial, &room);
    assert!(events.iter().any(|e| e["type"] == "m.room.create"), "{initial}");
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // Long-poll wakes when a message arrives.
    let waiter = {
        let base = s.base.clone();
        let token = alice.token.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body: serde_json::Value = common::client()
                .get(format!("{base}/_matrix/client/v3/sync?timeout=20000&since={since}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    s.send_text(&alice, &room, "wake up").await;
    let (elapsed, body) = waiter.await.unwrap();
    assert!(elapsed < std::time::Duration::from_secs(10), "long-poll returned after {elapsed:?}");
    let events = timeline(&body, &room);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["content"]["body"], "wake up");
    assert!(events[0]["unsigned"]["transaction_id"].is_string(), "own events carry the txn id");

    // Invite section for Bob, then join.
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": "@bob:porch.test" }),
        )
        .await;
    assert_eq!(status, 200);
    let bob_sync = s.sync(&bob, None, 0).await;
    let invite_state = bob_sync["rooms"]["invite"][&room]["invite_state"]["events"].as_array().unwrap();
    assert!(
        invite_state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Sync room"),
        "{bob_sync}"
    );
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let bob_since = bob_sync["next_batch"].as_str().unwrap().to_owned();
    let bob_sync2 = s.sync(&bob, Some(&bob_since), 0).await;
    assert!(bob_sync2["rooms"]["join"].get(&room).is_some(), "{bob_sync2}");

    // Limited timeline with prev_batch.
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        s.send_text(&bob, &room, &format!("burst {i}")).await;
    }
    let incremental = s.sync(&alice, Some(&since), 0).await;
    let joined = &incremental["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 10);
    assert!(joined["timeline"]["prev_batch"].is_string());
    assert_eq!(joined["unread_notifications"]["notification_count"], 15, "{joined}");

    // Leave section.
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), Some(&bob.token), json!({})).await;
    let bob_after = s.sync(&bob, bob_sync2["next_batch"].as_str(), 0).await;
    assert!(bob_after["rooms"]["leave"].get(&room).is_some(), "{bob_after}");

    // Timeout with nothing new returns an empty response with the same position.
    let quiet_since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let quiet = s.sync(&alice, Some(&quiet_since), 500).await;
    assert!(started.elapsed() >= std::time::Duration::from_millis(450));
    assert!(quiet["rooms"]["join"].as_object().is_none_or(|m| m.is_empty()), "{quiet}");
}

#[tokio::test]
async fn sync_filters_and_lazy_loading() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    s.send_text(&alice, &room, "from alice").await;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/user/@alice:porch.test/filter",
            Some(&alice.token),
            json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let filter_id = body["filter_id"].as_str().unwrap().to_owned();
    let (status, stored) =
        s.get(&format!("/_matrix/client/v3/user/@alice:porch.test/filter/{filter_id}"), Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(stored["room"]["timeline"]["limit"], 1);
    let (status, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={filter_id}"), Some(&alice.token)).await;
    assert_eq!(status, 200);
    let joined = &sync["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 1);
    let members: Vec<_> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, vec!["@alice:porch.test".to_owned()], "only the timeline's senders: {joined}");
    let inline = enc(&json!({ "room": { "timeline": { "limit": 2, "not_types": ["m.room.message"] } } }).to_string());
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={inline}"), Some(&alice.token)).await;
    assert!(
        sync["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.room.message")
    );
    let (status, body) = s.get("/_matrix/client/v3/sync?filter=nope", Some(&alice.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test]
async fn typing_receipts_account_data_tags_and_push_rules() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    let event = s.send_text(&alice, &room, "read me").await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/@alice:porch.test", enc(&room)),
            Some(&alice.token),
            json!({ "typing": true, "timeout": 10000 }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let sync = s.sync(&bob, Some(&since), 0).await;
    let ephemeral = sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap();
    assert!(
        ephemeral.iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"][0] == "@alice:porch.test"),
        "{sync}"
    );
    assert!(
        ephemeral
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"][&event]["m.read"]["@alice:porch.test"]["ts"].is_u64()),
        "{sync}"
    );
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/@bob:porch.test", enc(&room)),
            Some(&alice.token),
            json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_eq!(status, 403, "typing for someone else");

    // Unread counts reset by a receipt.
    let bob_event = s.send_text(&alice, &room, "again").await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2, "{sync}");
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
        Some(&bob.token),
        json!({ "m.fully_read": bob_event, "m.read": bob_event }),
    )
    .await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);
    assert!(
        sync["rooms"]["join"][&room]["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.fully_read")
    );

    // Account data and tags.
    let (status, _) = s
        .put(
            "/_matrix/client/v3/user/@bob:porch.test/account_data/org.example.settings",
            Some(&bob.token),
            json!({ "theme": "dark" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) =
        s.get("/_matrix/client/v3/user/@bob:porch.test/account_data/org.example.settings", Some(&bob.token)).await;
    assert_eq!(body["theme"], "dark");
    let (status, _) =
        s.get("/_matrix/client/v3/user/@bob:porch.test/account_data/org.example.settings", Some(&alice.token)).await;
    assert_eq!(status, 403);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/@bob:porch.test/rooms/{}/tags/m.favourite", enc(&room)),
            Some(&bob.token),
            json!({ "order": 0.5 }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, tags) =
        s.get(&format!("/_matrix/client/v3/user/@bob:porch.test/rooms/{}/tags", enc(&room)), Some(&bob.token)).await;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5);
    let sync = s.sync(&bob, None, 0).await;
    assert!(sync["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "org.example.settings"));
    assert!(
        sync["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.tag")
    );
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/user/@bob:porch.test/rooms/{}/tags/m.favourite", enc(&room)),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // Push rules: defaults, add a room rule that silences the room.
    let (status, rules) = s.get("/_matrix/client/v3/pushrules/", Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert!(rules["global"]["override"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.master"));
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            Some(&bob.token),
            json!({ "actions": [] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)), Some(&bob.token)).await;
    assert_eq!(status, 200);
    s.send_text(&alice, &room, "muted").await;
    let sync = s.sync(&bob, None, 0).await;
    assert_eq!(
        sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0,
        "muted room does not count"
    );
    let (status, _) = s
        .put(
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
            Some(&bob.token),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 403, "server-default rules cannot be removed");
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)), Some(&bob.token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn user_directory_search() {
    // As Synapse by default: people in public rooms, and people one shares a room with.
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let alfred = s.register("alfred").await;
    let alfonso = s.register("alfonso").await;
    s.register("alfie").await;
    let public = s.create_room(&alfred, json!({ "preset": "public_chat" })).await;
    let private = s.create_room(&alfonso, json!({ "invite": [alice.user_id] })).await;
    assert_eq!(s.join(&alice, &private).await.0, 200);
    let search = |term: &str| {
        let (hs, token, term) = (&s.hs, alice.token.clone(), term.to_owned());
        async move {
            let (status, body) = hs
                .post(
                    "/_matrix/client/v3/user_directory/search",
                    Some(&token),
                    json!({ "search_term": term, "limit": 10 }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let mut ids: Vec<String> =
                body["results"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(search("alf").await, ["@alfonso:porch.test", "@alfred:porch.test"], "alfie shares nothing with alice");
    // Alfred's room turning private takes him out.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&public)),
            Some(&alfred.token),
            json!({ "join_rule": "invite" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(search("alf").await, ["@alfonso:porch.test"]);
}

#[tokio::test]
async fn body_size_limit_and_join_with_via() {
    let s = TestServer::start_with(common::Options {
        env: vec![("PORCH_LIMITS__MAX_REQUEST_BYTES".into(), "70000".into())],
    })
    .await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "hall" })).await;
    let huge = json!({ "msgtype": "m.text", "body": "y".repeat(100_000) });
    let (status, body) = s
        .put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/big", enc(&room)), Some(&alice.token), huge)
        .await;
    assert_eq!((status, body["errcode"].as_str()), (413, Some("M_TOO_LARGE")));
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}?server_name=porch.test&via=porch.test", enc("#hall:porch.test")),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    let (status, body) =
        s.post(&format!("/_matrix/client/v3/join/{}", enc("#nowhere:porch.test")), Some(&bob.token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    // Alias removal: not by a stranger, yes by the creator.
    let carol = s.register("carol").await;
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/directory/room/{}", enc("#hall:porch.test")),
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (_, aliases) = s.get(&format!("/_matrix/client/v3/rooms/{}/aliases", enc(&room)), Some(&alice.token)).await;
    assert_eq!(aliases["aliases"][0], "#hall:porch.test");
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/directory/room/{}", enc("#hall:porch.test")),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.get(&format!("/_matrix/client/v3/directory/room/{}", enc("#hall:porch.test")), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn concurrent_v12_creates_get_distinct_rooms() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let alice = s.register("alice").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (s, alice) = (s.clone(), alice.clone());
        tasks.push(tokio::spawn(async move { s.create_room(&alice, json!({})).await }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 12);
}

/// Details clients and Matrix's test suite rely on: capabilities listed even
/// at their defaults, typing without a timeout, the same state twice makes
/// one event, and a removed alias leaves the canonical alias.
#[tokio::test]
async fn capabilities_typing_repeated_state_and_removed_aliases() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (status, caps) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(status, 200, "{caps}");
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], true, "{caps}");
    assert!(caps["capabilities"]["m.room_versions"]["default"].is_string(), "{caps}");
    let (status, _) = s.get("/_matrix/client/v3/capabilities", None).await;
    assert_eq!(status, 401, "not public");

    let room = s.create_room(&alice, json!({})).await;
    let typing = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let (status, body) = s.put(&typing, Some(&alice.token), json!({ "typing": true })).await;
    assert_eq!(status, 200, "{body}");

    // The deprecated forms without a transaction id: each call is one event.
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message", enc(&room));
    let (status, first) = s.post(&send, Some(&alice.token), json!({ "msgtype": "m.text", "body": "old form" })).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = s.post(&send, Some(&alice.token), json!({ "msgtype": "m.text", "body": "old form" })).await;
    assert_ne!(first["event_id"], second["event_id"], "two calls, two events");
    let first_id = first["event_id"].as_str().unwrap();
    let redact = format!("/_matrix/client/r0/rooms/{}/redact/{}", enc(&room), enc(first_id));
    let (status, body) = s.post(&redact, Some(&alice.token), json!({ "reason": "typo" })).await;
    assert_eq!(status, 200, "{body}");
    let (_, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(first_id)), Some(&alice.token)).await;
    assert_eq!(event["content"], json!({}), "redacted: {event}");
    let (status, body) = s.post(&send, None, json!({ "body": "x" })).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));

    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room));
    let (_, first) = s.put(&topic, Some(&alice.token), json!({ "topic": "same" })).await;
    let (_, second) = s.put(&topic, Some(&alice.token), json!({ "topic": "same" })).await;
    assert_eq!(first["event_id"], second["event_id"], "no second event for the same state");
    let (_, third) = s.put(&topic, Some(&alice.token), json!({ "topic": "changed" })).await;
    assert_ne!(first["event_id"], third["event_id"]);

    let alias = "#gone:porch.test";
    let path = format!("/_matrix/client/v3/directory/room/{}", enc(alias));
    let (status, _) = s.put(&path, Some(&alice.token), json!({ "room_id": room })).await;
    assert_eq!(status, 200);
    let canonical = format!("/_matrix/client/v3/rooms/{}/state/m.room.canonical_alias/", enc(&room));
    let (status, _) = s.put(&canonical, Some(&alice.token), json!({ "alias": alias, "alt_aliases": [alias] })).await;
    assert_eq!(status, 200);
    let (status, _) = s.request(reqwest::Method::DELETE, &path, Some(&alice.token), None).await;
    assert_eq!(status, 200);
    let (_, content) = s.get(&canonical, Some(&alice.token)).await;
    assert!(content.get("alias").is_none(), "{content}");
    assert_eq!(content["alt_aliases"], json!([]), "{content}");
}

/// A waiting `/sync` wakes for typing in its rooms, also when the typing
/// expires (both wake only the room's members now): each answer carries
/// the change, not the empty answer at the long poll's end.
#[tokio::test]
async fn a_long_poll_wakes_for_typing_and_its_expiry() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let typers = |sync: &serde_json::Value| -> Option<Vec<String>> {
        let events = sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array()?;
        let typing = events.iter().find(|e| e["type"] == "m.typing")?;
        Some(typing["content"]["user_ids"].as_array()?.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
    };
    let poll = s.sync(&bob, Some(&since), 20_000);
    let typing = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
        let (status, _) = s.put(&path, Some(&alice.token), json!({ "typing": true, "timeout": 1500 })).await;
        assert_eq!(status, 200);
    };
    let (woken, ()) = tokio::join!(poll, typing);
    assert_eq!(typers(&woken), Some(vec![alice.user_id.clone()]), "{woken}");
    let since = woken["next_batch"].as_str().unwrap().to_owned();
    let expired = s.sync(&bob, Some(&since), 20_000).await;
    assert_eq!(typers(&expired), Some(Vec::new()), "the expiry woke the poll: {expired}");
}

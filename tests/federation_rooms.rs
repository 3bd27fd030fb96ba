//! Rooms across two porch servers on loopback over TLS: joins in both
//! directions in v10, v11 and v12 rooms, messages, typing, presence and receipts,
//! restricted joins vouched for by the room's server, kicks and bans of
//! remote users, leaving, a restarted server catching up, and history
//! from before a join fetched by backfill.

mod common;

use common::{
    TestServer, User, enc, federating_options, federating_server, messages_back, sees_invite, sync_until, text_of,
    timeline,
};
use serde_json::{Value, json};

fn has_event(sync: &Value, room_id: &str, check: impl Fn(&Value) -> bool) -> bool {
    timeline(sync, room_id).into_iter().any(check)
}

/// `kicker` kicks the other server's `target` from the room; the target's
/// server then shows the room among the target's left rooms.
async fn kick_seen_on_other_server(
    server: &TestServer,
    kicker: &User,
    room_id: &str,
    (target_server, target, since): (&TestServer, &User, &mut Option<String>),
    what: &str,
) {
    // A token from before the kick: an initial sync taken after it would
    // not list the room under `leave`.
    if since.is_none() {
        *since = target_server.sync(target, None, 0).await["next_batch"].as_str().map(str::to_owned);
    }
    let (status, body) = server
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(room_id)),
            Some(&kicker.token),
            json!({ "user_id": target.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_until(target_server, target, since, what, |sync| sync["rooms"]["leave"].get(room_id).map(|_| ())).await;
}

async fn joined_members(server: &TestServer, user: &User, room_id: &str) -> Vec<String> {
    let (status, body) =
        server.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id)), Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    let mut members: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    members.sort();
    members
}

#[tokio::test]
async fn joins_messages_typing_and_receipts_between_two_porch_servers() {
    let (a, a_name) = federating_server().await;
    let (b, _b_name) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut alice_since = None;
    let mut bob_since = None;

    for version in ["10", "11", "12"] {
        // Bob (on B) joins Alice's room on A by its alias.
        let alias_name = format!("hall{version}");
        let room_id = a
            .create_room(
                &alice,
                json!({ "preset": "public_chat", "room_alias_name": alias_name, "room_version": version }),
            )
            .await;
        let (status, body) = b.join(&bob, &format!("#{alias_name}:{a_name}")).await;
        assert_eq!(status, 200, "v{version} join over federation: {body}");
        assert_eq!(body["room_id"], room_id.as_str());
        let expected = {
            let mut m = vec![alice.user_id.clone(), bob.user_id.clone()];
            m.sort();
            m
        };
        assert_eq!(joined_members(&b, &bob, &room_id).await, expected, "B holds the room's members");
        assert_eq!(joined_members(&a, &alice, &room_id).await, expected, "A took Bob's join");

        // Messages both ways.
        b.send_text(&bob, &room_id, &format!("hello from B in v{version}")).await;
        let wanted = format!("hello from B in v{version}");
        sync_until(&a, &alice, &mut alice_since, "B's message on A", |sync| {
            has_event(sync, &room_id, |e| text_of(e) == Some(wanted.as_str()) && e["sender"] == bob.user_id.as_str())
                .then_some(())
        })
        .await;
        a.send_text(&alice, &room_id, &format!("welcome in v{version}")).await;
        let wanted = format!("welcome in v{version}");
        sync_until(&b, &bob, &mut bob_since, "A's reply on B", |sync| {
            has_event(sync, &room_id, |e| text_of(e) == Some(wanted.as_str())).then_some(())
        })
        .await;
    }

    // Typing and read receipts travel as EDUs.
    let room_id = a.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}?via={a_name}", enc(&room_id)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "join by id with via: {body}");
    let (status, _) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room_id), enc(&bob.user_id)),
            Some(&bob.token),
            json!({ "typing": true, "timeout": 20000 }),
        )
        .await;
    assert_eq!(status, 200);
    sync_until(&a, &alice, &mut alice_since, "Bob typing on A", |sync| {
        let ephemeral = sync["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"].as_array()?;
        ephemeral
            .iter()
            .any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| u == bob.user_id.as_str()))
            })
            .then_some(())
    })
    .await;
    // Presence, as an EDU to the servers Alice shares a room with.
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.token),
            json!({ "presence": "unavailable", "status_msg": "in a meeting" }),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) =
            b.get(&format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)), Some(&bob.token)).await;
        if status == 200 && body["presence"] == "unavailable" {
            assert_eq!(body["status_msg"], "in a meeting");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "Alice's presence never reached B: {status} {body}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let event_id = a.send_text(&alice, &room_id, "read me").await;
    sync_until(&b, &bob, &mut bob_since, "the message to read on B", |sync| {
        has_event(sync, &room_id, |e| e["event_id"] == event_id.as_str()).then_some(())
    })
    .await;
    let (status, body) = b
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&event_id)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_until(&a, &alice, &mut alice_since, "Bob's receipt on A", |sync| {
        let ephemeral = sync["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"].as_array()?;
        ephemeral
            .iter()
            .any(|e| {
                e["type"] == "m.receipt" && !e["content"][event_id.as_str()]["m.read"][bob.user_id.as_str()].is_null()
            })
            .then_some(())
    })
    .await;

    // Leaving: A sees Bob go.
    let (status, _) =
        b.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200);
    sync_until(&a, &alice, &mut alice_since, "Bob's leave on A", |sync| {
        has_event(sync, &room_id, |e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "leave"
        })
        .then_some(())
    })
    .await;
    assert_eq!(joined_members(&a, &alice, &room_id).await, vec![alice.user_id.clone()]);
}

#[tokio::test]
async fn restricted_joins_kicks_bans_and_a_restarted_server_catching_up() {
    let (a, a_name) = federating_server().await;
    let b_port = common::free_port();
    let mut b = TestServer::start_with(federating_options(b_port)).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut bob_since = None;

    // A restricted room allowing members of a public "lobby": A vouches.
    let lobby = a.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({
                "preset": "private_chat",
                "initial_state": [{
                    "type": "m.room.join_rules", "state_key": "",
                    "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": lobby }] },
                }],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let inner = body["room_id"].as_str().unwrap().to_owned();
    let via = format!("?via={a_name}");
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&inner)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 403, "not yet in the lobby: {body}");
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&lobby)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&inner)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "restricted join through the lobby: {body}");
    let (status, member) = a
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&inner), enc(&bob.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id.as_str(), "A's member vouched");

    // A kick on A reaches B.
    kick_seen_on_other_server(&a, &alice, &inner, (&b, &bob, &mut bob_since), "the kick on B").await;

    // A ban on A reaches B, and B's next join is refused.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&lobby)),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sync_until(&b, &bob, &mut bob_since, "the ban on B", |sync| {
        let events = sync["rooms"]["leave"][lobby.as_str()]["timeline"]["events"].as_array()?;
        events.iter().any(|e| e["content"]["membership"] == "ban").then_some(())
    })
    .await;
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&lobby)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 403, "banned: {body}");

    // B goes down mid-conversation; what A sends meanwhile arrives after B restarts.
    let talk = a.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&talk)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    b.kill();
    for i in 0..3 {
        a.send_text(&alice, &talk, &format!("while you were away {i}")).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let dir = b.dir.clone();
    let mut b2 = TestServer::launch(&dir, &federating_options(b_port));
    b2.server_name = format!("localhost:{b_port}");
    let mut since = None;
    let seen = std::cell::RefCell::new(Vec::new());
    sync_until(&b2, &bob, &mut since, "the messages sent while B was down", |sync| {
        let mut seen = seen.borrow_mut();
        seen.extend(timeline(sync, &talk).into_iter().filter_map(text_of).map(str::to_owned));
        (seen.len() >= 3).then_some(())
    })
    .await;
    let expected: Vec<String> = (0..3).map(|i| format!("while you were away {i}")).collect();
    assert_eq!(seen.into_inner(), expected, "all of them, in order");
    drop(b);
}

#[tokio::test]
async fn invites_across_servers_accepted_and_rejected() {
    let (a, _a_name) = federating_server().await;
    let (b, _b_name) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (mut alice_since, mut bob_since) = (None, None);

    let room_id = a.create_room(&alice, json!({ "preset": "private_chat", "name": "Planning" })).await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 200, "invite a user of another server: {body}");
    let state = sees_invite(&b, &bob, &mut bob_since, &room_id).await;
    assert!(
        state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Planning"),
        "the invite carries the room's name: {state:?}"
    );
    // No server is named: the invite says where to join.
    let (status, body) = b.join(&bob, &room_id).await;
    assert_eq!(status, 200, "accept the invite: {body}");
    b.send_text(&bob, &room_id, "thanks for the invite").await;
    sync_until(&a, &alice, &mut alice_since, "Bob's message", |sync| {
        has_event(sync, &room_id, |e| text_of(e) == Some("thanks for the invite")).then_some(())
    })
    .await;

    // A second invite, rejected: A sees the rejection.
    let other = a.create_room(&alice, json!({ "preset": "private_chat" })).await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_invite(&b, &bob, &mut bob_since, &other).await;
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&other)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "reject the invite: {body}");
    sync_until(&a, &alice, &mut alice_since, "the rejection", |sync| {
        has_event(sync, &other, |e| e["state_key"] == bob.user_id.as_str() && e["content"]["membership"] == "leave")
            .then_some(())
    })
    .await;
    sync_until(&b, &bob, &mut bob_since, "the invite gone on B", |sync| {
        sync["rooms"]["leave"].get(other.as_str()).map(|_| ())
    })
    .await;

    // Inviting a user that does not exist there is refused by their server.
    let ghost = format!("@ghost:{}", b.server_name);
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
            Some(&alice.token),
            json!({ "user_id": ghost }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, members) =
        a.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&other)), Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert!(!members.to_string().contains("ghost"), "a refused invite leaves no member event: {members}");

    // createRoom's `invite` list (a direct chat) reaches the other server.
    let (status, body) = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "trusted_private_chat", "is_direct": true, "invite": [bob.user_id] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let direct = body["room_id"].as_str().unwrap().to_owned();
    let (_, create) =
        a.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&direct)), Some(&alice.token)).await;
    assert_eq!(
        create["additional_creators"],
        json!([bob.user_id]),
        "a trusted chat's invitee is a creator too: {create}"
    );
    let state = sees_invite(&b, &bob, &mut bob_since, &direct).await;
    let own = state.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str());
    assert_eq!(own.map(|e| &e["content"]["is_direct"]), Some(&json!(true)), "{state:?}");
    let (status, body) = b.join(&bob, &direct).await;
    assert_eq!(status, 200, "accept the direct chat: {body}");

    // So does an invite sent as an `m.room.member` state event.
    let by_state = a.create_room(&alice, json!({ "preset": "private_chat" })).await;
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&by_state), enc(&bob.user_id)),
            Some(&alice.token),
            json!({ "membership": "invite" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_invite(&b, &bob, &mut bob_since, &by_state).await;
    let (status, body) = b.join(&bob, &by_state).await;
    assert_eq!(status, 200, "accept the invite sent as state: {body}");
}

#[tokio::test]
async fn history_from_before_the_join_is_backfilled() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room_id = a
        .create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "archive", "name": "Archive" }))
        .await;
    // More than one backfill batch of history, with a state change inside.
    let mut redacted = String::new();
    for i in 0..40 {
        let event_id = a.send_text(&alice, &room_id, &format!("old {i}")).await;
        if i == 5 {
            redacted = event_id;
        }
    }
    let (status, _) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room_id)),
            Some(&alice.token),
            json!({ "topic": "older times" }),
        )
        .await;
    assert_eq!(status, 200);
    for i in 40..70 {
        a.send_text(&alice, &room_id, &format!("old {i}")).await;
    }
    // A redaction newer than the first batch back, of an event in the second
    // (A serves the event redacted; B keeps it so).
    let (status, body) = a
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room_id), enc(&redacted)),
            Some(&alice.token),
            json!({ "reason": "oops" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = b.join(&bob, &format!("#archive:{a_name}")).await;
    assert_eq!(status, 200, "{body}");
    let mut since = None;
    let prev_batch = sync_until(&b, &bob, &mut since, "the room on B", |sync| {
        sync["rooms"]["join"][room_id.as_str()]["timeline"]["prev_batch"].as_str().map(str::to_owned)
    })
    .await;

    let history = messages_back(&b, &bob, &room_id, &prev_batch).await;
    let texts: Vec<&str> = history.iter().filter_map(text_of).collect();
    let expected: Vec<String> = (0..70).rev().filter(|i| *i != 5).map(|i| format!("old {i}")).collect();
    assert_eq!(texts, expected, "every message from before the join, newest first, once each");
    let old_5 = history.iter().find(|e| e["event_id"] == redacted.as_str()).expect("the redacted event is there");
    assert_eq!(old_5["content"], json!({}), "backfilled history stays redacted: {old_5}");
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds.last(), Some(&"m.room.create"), "backfill reaches the room's start");
    assert!(kinds.contains(&"m.room.topic"), "the state change in between is there too");

    // The backfilled history is ordinary history: forward paging, /context.
    let old_10 = history.iter().find(|e| text_of(e) == Some("old 10")).unwrap();
    let (status, context) = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
                enc(&room_id),
                enc(old_10["event_id"].as_str().unwrap())
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(status, 200, "{context}");
    let before: Vec<&str> = context["events_before"].as_array().unwrap().iter().filter_map(text_of).collect();
    let after: Vec<&str> = context["events_after"].as_array().unwrap().iter().filter_map(text_of).collect();
    assert_eq!(before, ["old 9", "old 8"]);
    assert_eq!(after, ["old 11", "old 12"]);

    // Nothing backfilled shows up as new in an incremental sync.
    a.send_text(&alice, &room_id, "new").await;
    let texts = sync_until(&b, &bob, &mut since, "the new message on B", |sync| {
        let texts: Vec<String> = timeline(sync, &room_id).into_iter().filter_map(text_of).map(str::to_owned).collect();
        (!texts.is_empty()).then_some(texts)
    })
    .await;
    assert_eq!(texts, ["new"]);
}

/// The room's one link, as its creator's list shows it.
async fn link_of(server: &TestServer, user: &User, room_id: &str) -> Value {
    let (status, body) =
        server.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(room_id)), Some(&user.token)).await;
    assert_eq!(status, 200, "{body}");
    body["links"][0].clone()
}

async fn state_on(server: &TestServer, user: &User, room_id: &str, kind: &str) -> (u16, Value) {
    server.get(&format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room_id)), Some(&user.token)).await
}

#[tokio::test]
async fn guest_link_invites_a_user_of_another_server() {
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let admin = a.register_admin("boss").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (room_id, token, _) = a.guest_room(&alice, json!({ "name": "Visit" })).await;
    let redeem = |user_id: String| {
        let a = &a;
        let token = token.clone();
        async move {
            a.post(&format!("/_porch/client/v1/guest_links/{token}/join"), None, json!({ "user_id": user_id })).await
        }
    };

    // A server that cannot be reached: 502 naming it, no use counted.
    let closed = format!("localhost:{}", common::free_port());
    let (status, body) = redeem(format!("@ana:{closed}")).await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("DEV.PORCH.SERVER_UNREACHABLE")), "{body}");
    assert!(body["error"].as_str().unwrap().contains(&closed), "{body}");
    assert_eq!(link_of(&a, &alice, &room_id).await["uses"], 0);

    // Bob of B is invited from the link's creator and accepts on B.
    let (status, body) = redeem(bob.user_id.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["room_id"].as_str(), body["invited"].as_bool()), (Some(room_id.as_str()), Some(true)));
    let link = link_of(&a, &alice, &room_id).await;
    assert_eq!(link["uses"], 1);
    assert_eq!(link["joined"][0]["user_id"], bob.user_id.as_str());
    assert_eq!(link["joined"][0]["membership"], "invite", "invited, not yet in: {link}");
    let mut bob_since = None;
    let inviter = sync_until(&b, &bob, &mut bob_since, "the link's invite on B", |sync| {
        let events = sync["rooms"]["invite"][room_id.as_str()]["invite_state"]["events"].as_array()?;
        events
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
            .map(|e| e["sender"].as_str().unwrap().to_owned())
    })
    .await;
    assert_eq!(inviter, alice.user_id, "the invite comes from the link's creator");
    let (status, body) = b.join(&bob, &room_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(link_of(&a, &alice, &room_id).await["joined"][0]["membership"], "join");

    // Both servers show the same security level; the guest room's power
    // levels bind the remote member too.
    let (_, on_a) = state_on(&a, &alice, &room_id, "dev.porch.security_level").await;
    let (status, on_b) = state_on(&b, &bob, &room_id, "dev.porch.security_level").await;
    assert_eq!(status, 200, "{on_b}");
    assert_eq!(on_b, on_a);
    assert_eq!(on_b["level"], "internal");
    let (status, body) = b
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room_id)),
            Some(&bob.token),
            json!({ "name": "Mine now" }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    b.send_text(&bob, &room_id, "hello from B").await;
    let mut alice_since = None;
    sync_until(&a, &alice, &mut alice_since, "Bob's message on A", |sync| {
        has_event(sync, &room_id, |e| text_of(e) == Some("hello from B")).then_some(())
    })
    .await;

    // Ending the room removes the remote member as well.
    let (status, body) =
        a.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room_id)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    sync_until(&b, &bob, &mut bob_since, "Bob removed on B", |sync| {
        sync["rooms"]["leave"].get(room_id.as_str()).map(|_| ())
    })
    .await;
    let (status, _) =
        b.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room_id)), Some(&bob.token)).await;
    assert_eq!(status, 403, "Bob is no longer in the room on B");

    // A classified room's ACL keeps servers that are not cleared out.
    assert_eq!(common::set_security_level(&a, &admin, &alice.user_id, "confidential").await, 200);
    let (secret_room, secret_token, _) = a.guest_room(&alice, json!({ "name": "Secret" })).await;
    let (status, body) = a
        .post(&format!("/_porch/client/v1/guest_links/{secret_token}/join"), None, json!({ "user_id": bob.user_id }))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    assert_eq!(link_of(&a, &alice, &secret_room).await["uses"], 0);
}

#[tokio::test]
async fn knocks_across_servers_accepted_refused_and_withdrawn() {
    let (a, a_name) = federating_server().await;
    let (b, _) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (mut alice_since, mut bob_since) = (None, None);
    let knock_room = |name: &'static str| {
        let (a, alice) = (&a, &alice);
        async move {
            a.create_room(
                alice,
                json!({
                    "preset": "private_chat", "name": name,
                    "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
                }),
            )
            .await
        }
    };
    let knock = |room_id: String| {
        let (b, bob, a_name) = (&b, &bob, &a_name);
        async move {
            b.post(
                &format!("/_matrix/client/v3/knock/{}?via={a_name}", enc(&room_id)),
                Some(&bob.token),
                json!({ "reason": "let me in" }),
            )
            .await
        }
    };
    let sees_membership = |sync: &Value, room_id: &str, membership: &str| {
        has_event(sync, room_id, |e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == membership
        })
    };

    // A knock, accepted with an invite, then a join.
    let room_id = knock_room("Door").await;
    let (status, body) = knock(room_id.clone()).await;
    assert_eq!(status, 200, "knock over federation: {body}");
    let knock_state = sync_until(&b, &bob, &mut bob_since, "the knock on B", |sync| {
        sync["rooms"]["knock"][room_id.as_str()]["knock_state"]["events"].as_array().cloned()
    })
    .await;
    assert!(
        knock_state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Door"),
        "{knock_state:?}"
    );
    sync_until(&a, &alice, &mut alice_since, "the knock on A", |sync| {
        sees_membership(sync, &room_id, "knock").then_some(())
    })
    .await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room_id)),
            Some(&alice.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 200, "accept the knock: {body}");
    sync_until(&b, &bob, &mut bob_since, "the invite after the knock", |sync| {
        sync["rooms"]["invite"].get(room_id.as_str()).map(|_| ())
    })
    .await;
    let (status, body) = b.join(&bob, &room_id).await;
    assert_eq!(status, 200, "{body}");
    sync_until(&a, &alice, &mut alice_since, "Bob in the room", |sync| {
        sees_membership(sync, &room_id, "join").then_some(())
    })
    .await;

    // A knock refused: B learns of it although nobody there is in the room.
    let refused = knock_room("Closed door").await;
    assert_eq!(knock(refused.clone()).await.0, 200);
    sync_until(&a, &alice, &mut alice_since, "the second knock on A", |sync| {
        sees_membership(sync, &refused, "knock").then_some(())
    })
    .await;
    kick_seen_on_other_server(&a, &alice, &refused, (&b, &bob, &mut bob_since), "the refusal on B").await;

    // A knock withdrawn by leaving: A sees it go.
    let withdrawn = knock_room("Maybe").await;
    assert_eq!(knock(withdrawn.clone()).await.0, 200);
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&withdrawn)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "withdraw the knock: {body}");
    sync_until(&a, &alice, &mut alice_since, "the withdrawal on A", |sync| {
        sees_membership(sync, &withdrawn, "leave").then_some(())
    })
    .await;

    // Knocking where the join rule does not allow it is refused by A.
    let closed = a.create_room(&alice, json!({ "preset": "private_chat" })).await;
    let (status, body) = knock(closed).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
}

fn device_keys(user: &User, curve: &str) -> Value {
    json!({
        "user_id": user.user_id, "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", user.device_id): curve, format!("ed25519:{}", user.device_id): "ed" },
        "signatures": {},
    })
}

/// Bob's devices as Alice's server answers `/keys/query`, and its failures.
async fn bobs_devices(a: &TestServer, alice: &User, bob: &User) -> (Vec<String>, Value) {
    let (status, body) = a
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            json!({ "device_keys": { bob.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut devices: Vec<String> =
        body["device_keys"][bob.user_id.as_str()].as_object().map(|d| d.keys().cloned().collect()).unwrap_or_default();
    devices.sort();
    (devices, body["failures"].clone())
}

#[tokio::test]
async fn remote_device_lists_are_cached_until_their_server_says_they_changed() {
    let (a, _) = federating_server().await;
    let b_port = common::free_port();
    let mut b = TestServer::start_with(federating_options(b_port)).await;
    b.server_name = format!("localhost:{b_port}");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room_id = a.create_room(&alice, json!({ "preset": "public_chat" })).await;
    let via = format!("?via={}", a.server_name);
    let (status, body) =
        b.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&room_id)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mut alice_since = Some(a.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned());
    let (status, _) = b
        .post("/_matrix/client/v3/keys/upload", Some(&bob.token), json!({ "device_keys": device_keys(&bob, "c1") }))
        .await;
    assert_eq!(status, 200);
    let bob_changed = |sync: &Value| {
        sync["device_lists"]["changed"].as_array()?.iter().any(|u| u == bob.user_id.as_str()).then_some(())
    };
    sync_until(&a, &alice, &mut alice_since, "Bob's first keys on A", bob_changed).await;

    let (devices, _) = bobs_devices(&a, &alice, &bob).await;
    assert_eq!(devices, vec![bob.device_id.clone()]);

    // B is down: A still answers from what B said.
    b.kill();
    let (devices, failures) = bobs_devices(&a, &alice, &bob).await;
    assert_eq!(devices, vec![bob.device_id.clone()], "answered from the cache: {failures}");

    // B is back and Bob adds a device: B tells A, whose clients hear of the
    // change and then see the new device.
    let dir = b.dir.clone();
    let mut b2 = TestServer::launch(&dir, &federating_options(b_port));
    b2.server_name = format!("localhost:{b_port}");
    let (status, login) = b2
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "correct horse battery" }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let phone = User {
        user_id: bob.user_id.clone(),
        token: login["access_token"].as_str().unwrap().to_owned(),
        device_id: login["device_id"].as_str().unwrap().to_owned(),
    };
    let (status, _) = b2
        .post("/_matrix/client/v3/keys/upload", Some(&phone.token), json!({ "device_keys": device_keys(&phone, "c2") }))
        .await;
    assert_eq!(status, 200);
    sync_until(&a, &alice, &mut alice_since, "Bob's device change on A", bob_changed).await;
    let (devices, failures) = bobs_devices(&a, &alice, &bob).await;
    let mut expected = vec![bob.device_id.clone(), phone.device_id.clone()];
    expected.sort();
    assert_eq!(devices, expected, "{failures}");
    drop(b);
}

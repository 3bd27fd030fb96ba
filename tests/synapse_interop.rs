//! Interoperation with a real Synapse (PyPI `matrix-synapse`), on loopback
//! over TLS: joins both ways in v10, v11 and v12 rooms, messages, typing,
//! receipts, restricted joins porch authorises, kicks, bans and leaves,
//! history backfilled from Synapse, guest links, knocks both ways, older
//! room versions (6–9), and two porch servers with Synapse in one room.

mod common;

use common::{
    Homeserver, User, enc, federating_server, messages_back, sees_invite, synapse::Synapse, sync_until, text_of,
    timeline,
};
use serde_json::{Value, json};

/// Wait until `user` sees a message with `text` from `sender` in the room.
async fn sees_text(hs: &Homeserver, user: &User, since: &mut Option<String>, room_id: &str, sender: &str, text: &str) {
    sync_until(hs, user, since, &format!("`{text}` for {}", user.user_id), |sync| {
        timeline(sync, room_id).into_iter().any(|e| text_of(e) == Some(text) && e["sender"] == sender).then_some(())
    })
    .await;
}

async fn sees_ephemeral(
    hs: &Homeserver,
    user: &User,
    since: &mut Option<String>,
    room_id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    sync_until(hs, user, since, what, |sync| {
        let events = sync["rooms"]["join"][room_id]["ephemeral"]["events"].as_array()?;
        events.iter().any(&check).then_some(())
    })
    .await;
}

/// Wait until `user` sees `target`'s membership become `membership`.
async fn sees_membership(
    hs: &Homeserver,
    user: &User,
    since: &mut Option<String>,
    room_id: &str,
    target: &str,
    membership: &str,
) {
    sync_until(hs, user, since, &format!("{target} {membership} seen by {}", user.user_id), |sync| {
        ["join", "leave"].iter().find_map(|section| {
            let events = sync["rooms"][section][room_id]["timeline"]["events"].as_array()?;
            events
                .iter()
                .any(|e| {
                    e["type"] == "m.room.member" && e["state_key"] == target && e["content"]["membership"] == membership
                })
                .then_some(())
        })
    })
    .await;
}

#[tokio::test]
async fn joins_both_ways_with_messages_typing_and_receipts() {
    let (porch, porch_name) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);

    // Synapse's user joins porch rooms of each version by alias.
    for version in ["10", "11", "12"] {
        let alias = format!("porch{version}");
        let room_id = porch
            .create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": alias, "room_version": version }))
            .await;
        let (status, body) = synapse.join(&sam, &format!("#{alias}:{porch_name}")).await;
        assert_eq!(status, 200, "Synapse joins a v{version} porch room: {body}");
        assert_eq!(body["room_id"], room_id.as_str());
        let text = format!("sam says hi in v{version}");
        synapse.send_text(&sam, &room_id, &text).await;
        sees_text(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, &text).await;
        let text = format!("alice answers in v{version}");
        porch.send_text(&alice, &room_id, &text).await;
        sees_text(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, &text).await;
    }

    // porch's user joins a room Synapse made (version 12, Synapse's default).
    let room_id = synapse.create_room(&sam, json!({ "preset": "public_chat", "room_alias_name": "lounge" })).await;
    let (status, create) = synapse
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&room_id)), Some(&sam.token))
        .await;
    assert_eq!(status, 200, "{create}");
    assert_eq!(create["room_version"], "12", "Synapse makes v12 rooms");
    for i in 0..30 {
        synapse.send_text(&sam, &room_id, &format!("before porch {i}")).await;
    }
    let (status, body) = porch.join(&alice, &format!("#lounge:{}", synapse.server_name)).await;
    assert_eq!(status, 200, "porch joins Synapse's v12 room: {body}");
    // History from before the join comes by backfill from Synapse.
    let (status, page) = porch
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1", enc(&room_id)), Some(&alice.token))
        .await;
    assert_eq!(status, 200, "{page}");
    let history = messages_back(&porch, &alice, &room_id, page["start"].as_str().unwrap()).await;
    let texts: Vec<&str> = history.iter().filter_map(text_of).collect();
    let expected: Vec<String> = (0..30).rev().map(|i| format!("before porch {i}")).collect();
    assert_eq!(texts, expected, "Synapse's history before the join, newest first");
    assert_eq!(history.last().map(|e| &e["type"]), Some(&json!("m.room.create")));
    sees_membership(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, "join").await;
    porch.send_text(&alice, &room_id, "hello Synapse").await;
    sees_text(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, "hello Synapse").await;
    let sam_event = synapse.send_text(&sam, &room_id, "hello porch").await;
    sees_text(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, "hello porch").await;

    // Typing, both ways.
    let typing = |hs: &Homeserver, user: &User, room_id: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room_id), enc(&user.user_id));
        let token = user.token.clone();
        let hs_base = hs.base.clone();
        let http = hs.http.clone();
        async move {
            let resp = http
                .put(format!("{hs_base}{path}"))
                .bearer_auth(token)
                .json(&json!({ "typing": true, "timeout": 20000 }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    let is_typing = |who: &str| {
        let who = who.to_owned();
        move |e: &Value| {
            e["type"] == "m.typing" && e["content"]["user_ids"].as_array().is_some_and(|u| u.iter().any(|u| *u == who))
        }
    };
    typing(&porch, &alice, &room_id).await;
    sees_ephemeral(&synapse, &sam, &mut sam_since, &room_id, "alice typing on Synapse", is_typing(&alice.user_id))
        .await;
    typing(&synapse, &sam, &room_id).await;
    sees_ephemeral(&porch, &alice, &mut alice_since, &room_id, "sam typing on porch", is_typing(&sam.user_id)).await;

    // Read receipts, both ways.
    let receipt_of = |event_id: &str, who: &str| {
        let (event_id, who) = (event_id.to_owned(), who.to_owned());
        move |e: &Value| e["type"] == "m.receipt" && !e["content"][&event_id]["m.read"][&who].is_null()
    };
    let (status, body) = porch
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&sam_event)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_ephemeral(
        &synapse,
        &sam,
        &mut sam_since,
        &room_id,
        "alice's receipt on Synapse",
        receipt_of(&sam_event, &alice.user_id),
    )
    .await;
    let alice_event = porch.send_text(&alice, &room_id, "read this, sam").await;
    sees_text(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, "read this, sam").await;
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&alice_event)),
            Some(&sam.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_ephemeral(
        &porch,
        &alice,
        &mut alice_since,
        &room_id,
        "sam's receipt on porch",
        receipt_of(&alice_event, &sam.user_id),
    )
    .await;
}

#[tokio::test]
async fn restricted_joins_kicks_bans_and_leaves_across_porch_and_synapse() {
    let (porch, porch_name) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);

    // Synapse's user joins a restricted porch room through a lobby: porch vouches.
    let lobby = porch.create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "lobby" })).await;
    let (status, body) = porch
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
    let via = format!("?via={porch_name}");
    let (status, body) =
        synapse.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&inner)), Some(&sam.token), json!({})).await;
    assert_eq!(status, 403, "not in the lobby yet: {body}");
    let (status, body) = synapse.join(&sam, &format!("#lobby:{porch_name}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        synapse.post(&format!("/_matrix/client/v3/join/{}{via}", enc(&inner)), Some(&sam.token), json!({})).await;
    assert_eq!(status, 200, "restricted join authorised by porch: {body}");
    let (status, member) = porch
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&inner), enc(&sam.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id.as_str());

    // porch kicks and bans Synapse's user; Synapse sees both.
    let (status, body) = porch
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&inner)),
            Some(&alice.token),
            json!({ "user_id": sam.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&synapse, &sam, &mut sam_since, &inner, &sam.user_id, "leave").await;
    let (status, body) = porch
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&lobby)),
            Some(&alice.token),
            json!({ "user_id": sam.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&synapse, &sam, &mut sam_since, &lobby, &sam.user_id, "ban").await;
    let (status, body) = synapse.join(&sam, &format!("#lobby:{porch_name}")).await;
    assert_eq!(status, 403, "banned: {body}");

    // Synapse kicks and bans porch's user; porch sees both.
    let hall = synapse.create_room(&sam, json!({ "preset": "public_chat", "room_alias_name": "hall" })).await;
    let hall_alias = format!("#hall:{}", synapse.server_name);
    let (status, body) = porch.join(&alice, &hall_alias).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&hall)),
            Some(&sam.token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&porch, &alice, &mut alice_since, &hall, &alice.user_id, "leave").await;
    let (status, body) = porch.join(&alice, &hall_alias).await;
    assert_eq!(status, 200, "rejoin after a kick: {body}");
    let (status, body) =
        porch.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&hall)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&synapse, &sam, &mut sam_since, &hall, &alice.user_id, "leave").await;
    let (status, body) = porch.join(&alice, &hall_alias).await;
    assert_eq!(status, 200, "rejoin after leaving: {body}");
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&hall)),
            Some(&sam.token),
            json!({ "user_id": alice.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&porch, &alice, &mut alice_since, &hall, &alice.user_id, "ban").await;
    let (status, body) = porch.join(&alice, &hall_alias).await;
    assert_eq!(status, 403, "banned on Synapse: {body}");
}

async fn invite(hs: &Homeserver, inviter: &User, room_id: &str, target: &str) {
    let (status, body) = hs
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room_id)),
            Some(&inviter.token),
            json!({ "user_id": target }),
        )
        .await;
    assert_eq!(status, 200, "invite {target}: {body}");
}

#[tokio::test]
async fn invites_both_ways_accepted_and_rejected() {
    let (porch, _) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);

    // porch invites Synapse's user, who joins without naming a server.
    let room_id = porch.create_room(&alice, json!({ "preset": "private_chat", "name": "From porch" })).await;
    invite(&porch, &alice, &room_id, &sam.user_id).await;
    let state = sees_invite(&synapse, &sam, &mut sam_since, &room_id).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "From porch"), "{state:?}");
    let (status, body) = synapse.join(&sam, &room_id).await;
    assert_eq!(status, 200, "Synapse accepts porch's invite: {body}");
    synapse.send_text(&sam, &room_id, "joined by invite").await;
    sees_text(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, "joined by invite").await;

    // Synapse invites porch's user into a v12 room; accepted.
    let hall = synapse.create_room(&sam, json!({ "preset": "private_chat", "name": "From Synapse" })).await;
    invite(&synapse, &sam, &hall, &alice.user_id).await;
    let state = sees_invite(&porch, &alice, &mut alice_since, &hall).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "From Synapse"), "{state:?}");
    let (status, body) = porch.join(&alice, &hall).await;
    assert_eq!(status, 200, "porch accepts Synapse's invite: {body}");
    porch.send_text(&alice, &hall, "thanks, Synapse").await;
    sees_text(&synapse, &sam, &mut sam_since, &hall, &alice.user_id, "thanks, Synapse").await;

    // Rejections, both ways.
    let other = synapse.create_room(&sam, json!({ "preset": "private_chat" })).await;
    invite(&synapse, &sam, &other, &alice.user_id).await;
    sees_invite(&porch, &alice, &mut alice_since, &other).await;
    let (status, body) =
        porch.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&other)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "porch rejects: {body}");
    sees_membership(&synapse, &sam, &mut sam_since, &other, &alice.user_id, "leave").await;
    let mine = porch.create_room(&alice, json!({ "preset": "private_chat" })).await;
    invite(&porch, &alice, &mine, &sam.user_id).await;
    sees_invite(&synapse, &sam, &mut sam_since, &mine).await;
    let (status, body) =
        synapse.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&mine)), Some(&sam.token), json!({})).await;
    assert_eq!(status, 200, "Synapse rejects: {body}");
    sees_membership(&porch, &alice, &mut alice_since, &mine, &sam.user_id, "leave").await;
}

#[tokio::test]
async fn a_synapse_user_joins_a_guest_room_through_its_link() {
    let (porch, _) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);
    let (room_id, token, _) = porch.guest_room(&alice, json!({ "name": "Visit" })).await;

    // The link sends Synapse's user an invite from its creator.
    let (status, body) = porch
        .post(&format!("/_porch/client/v1/guest_links/{token}/join"), None, json!({ "user_id": sam.user_id }))
        .await;
    assert_eq!(status, 200, "{body}");
    let state = sees_invite(&synapse, &sam, &mut sam_since, &room_id).await;
    assert!(state.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Visit"), "{state:?}");
    let (status, body) = synapse.join(&sam, &room_id).await;
    assert_eq!(status, 200, "Synapse joins the guest room: {body}");
    sees_membership(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, "join").await;

    // Synapse's members read the same security level as porch's.
    let level_path = format!("/_matrix/client/v3/rooms/{}/state/dev.porch.security_level/", enc(&room_id));
    let (_, on_porch) = porch.get(&level_path, Some(&alice.token)).await;
    let (status, on_synapse) = synapse.get(&level_path, Some(&sam.token)).await;
    assert_eq!(status, 200, "{on_synapse}");
    assert_eq!(on_synapse, on_porch);
    assert_eq!(on_synapse["label"], "Internal");
    // The room's power levels bind Synapse's user: Synapse itself refuses.
    let (status, body) = synapse
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room_id)),
            Some(&sam.token),
            json!({ "name": "Mine now" }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    synapse.send_text(&sam, &room_id, "hello from Synapse").await;
    sees_text(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, "hello from Synapse").await;

    // Ending the room removes Synapse's user too.
    let (status, body) = porch
        .post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room_id)), Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&synapse, &sam, &mut sam_since, &room_id, &sam.user_id, "leave").await;
}

#[tokio::test]
async fn knocks_both_ways_between_porch_and_synapse() {
    let (porch, porch_name) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);
    let knock_rules = json!([{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }]);

    // Synapse's user knocks on a porch room; porch lets him in.
    let door = porch.create_room(&alice, json!({ "preset": "private_chat", "initial_state": knock_rules })).await;
    let (status, body) = synapse
        .post(&format!("/_matrix/client/v3/knock/{}?via={porch_name}", enc(&door)), Some(&sam.token), json!({}))
        .await;
    assert_eq!(status, 200, "Synapse knocks on porch's room: {body}");
    sees_membership(&porch, &alice, &mut alice_since, &door, &sam.user_id, "knock").await;
    invite(&porch, &alice, &door, &sam.user_id).await;
    sees_invite(&synapse, &sam, &mut sam_since, &door).await;
    let (status, body) = synapse.join(&sam, &door).await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&porch, &alice, &mut alice_since, &door, &sam.user_id, "join").await;

    // porch's user knocks on a Synapse room; Synapse lets her in.
    let hall = synapse.create_room(&sam, json!({ "preset": "private_chat", "initial_state": knock_rules })).await;
    let (status, body) = porch
        .post(
            &format!("/_matrix/client/v3/knock/{}?via={}", enc(&hall), synapse.server_name),
            Some(&alice.token),
            json!({ "reason": "hello" }),
        )
        .await;
    assert_eq!(status, 200, "porch knocks on Synapse's room: {body}");
    sees_membership(&synapse, &sam, &mut sam_since, &hall, &alice.user_id, "knock").await;
    invite(&synapse, &sam, &hall, &alice.user_id).await;
    sees_invite(&porch, &alice, &mut alice_since, &hall).await;
    let (status, body) = porch.join(&alice, &hall).await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&synapse, &sam, &mut sam_since, &hall, &alice.user_id, "join").await;
}

#[tokio::test]
async fn porch_joins_synapse_rooms_of_older_versions() {
    let (porch, _) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = porch.register("alice").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut sam_since) = (None, None);
    for version in ["6", "7", "8", "9"] {
        let alias = format!("old{version}");
        let room_id = synapse
            .create_room(&sam, json!({ "preset": "public_chat", "room_alias_name": alias, "room_version": version }))
            .await;
        let (status, body) = porch.join(&alice, &format!("#{alias}:{}", synapse.server_name)).await;
        assert_eq!(status, 200, "porch joins Synapse's v{version} room: {body}");
        let text = format!("hello from porch in v{version}");
        porch.send_text(&alice, &room_id, &text).await;
        sees_text(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, &text).await;
        let text = format!("hello from Synapse in v{version}");
        synapse.send_text(&sam, &room_id, &text).await;
        sees_text(&porch, &alice, &mut alice_since, &room_id, &sam.user_id, &text).await;
    }
}

#[tokio::test]
async fn two_porch_servers_and_synapse_in_one_room() {
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let synapse = Synapse::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let sam = synapse.register("sam").await;
    let (mut alice_since, mut bob_since, mut sam_since) = (None, None, None);

    // Synapse's room; each porch joins through Synapse and then hears the
    // other porch directly.
    let room_id = synapse.create_room(&sam, json!({ "preset": "public_chat", "room_alias_name": "trio" })).await;
    let alias = format!("#trio:{}", synapse.server_name);
    assert_eq!(a.join(&alice, &alias).await.0, 200);
    assert_eq!(b.join(&bob, &alias).await.0, 200);
    sees_membership(&a, &alice, &mut alice_since, &room_id, &bob.user_id, "join").await;

    a.send_text(&alice, &room_id, "alice to all").await;
    sees_text(&b, &bob, &mut bob_since, &room_id, &alice.user_id, "alice to all").await;
    sees_text(&synapse, &sam, &mut sam_since, &room_id, &alice.user_id, "alice to all").await;
    b.send_text(&bob, &room_id, "bob to all").await;
    sees_text(&a, &alice, &mut alice_since, &room_id, &bob.user_id, "bob to all").await;
    sees_text(&synapse, &sam, &mut sam_since, &room_id, &bob.user_id, "bob to all").await;
    synapse.send_text(&sam, &room_id, "sam to all").await;
    sees_text(&a, &alice, &mut alice_since, &room_id, &sam.user_id, "sam to all").await;
    sees_text(&b, &bob, &mut bob_since, &room_id, &sam.user_id, "sam to all").await;

    // Sam kicks Bob: both porch servers see it.
    let (status, body) = synapse
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room_id)),
            Some(&sam.token),
            json!({ "user_id": bob.user_id }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sees_membership(&a, &alice, &mut alice_since, &room_id, &bob.user_id, "leave").await;
    sees_membership(&b, &bob, &mut bob_since, &room_id, &bob.user_id, "leave").await;
}

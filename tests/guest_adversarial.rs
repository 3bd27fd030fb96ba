//! Guests try every way to reach beyond their rooms; every try is refused
//! and changes nothing. Run for a temporary (link) guest and a guest made
//! through `kind=guest` registration.

mod common;

use common::{TestServer, User, enc};
use serde_json::{Value, json};

struct World {
    s: TestServer,
    alice: User,
    outsider: User,
    guest_room: String,
    other_room: String,
    guest: User,
    link_token: String,
}

#[derive(Clone, Copy, PartialEq)]
enum GuestKind {
    /// Joined as a guest in the browser: no password, made by the link.
    Temporary,
    /// An account of kind `external` (as an email invitation makes), joining with its login.
    External,
}

async fn world(kind: GuestKind) -> World {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let outsider = s.register("outsider").await;
    let (guest_room, link_token, _) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let other_room = s
        .create_room(&alice, json!({ "preset": "public_chat", "visibility": "public", "room_alias_name": "lobby" }))
        .await;
    let guest = match kind {
        GuestKind::Temporary => {
            let (status, body) = s.redeem_as_guest(&link_token, "Eve").await;
            assert_eq!(status, 200, "{body}");
            User {
                user_id: body["user_id"].as_str().unwrap().to_owned(),
                token: body["access_token"].as_str().unwrap().to_owned(),
                device_id: body["device_id"].as_str().unwrap().to_owned(),
            }
        }
        GuestKind::External => {
            let admin = s.register_admin("boss").await;
            let new_user = json!({ "username": "eve", "password": "eve password", "kind": "external" });
            let (status, body) = s.post("/_porch/admin/v1/users", Some(&admin.token), new_user).await;
            assert_eq!((status, body["kind"].as_str()), (200, Some("external")), "{body}");
            let login = json!({ "type": "m.login.password", "user": "eve", "password": "eve password" });
            let (_, login) = s.post("/_matrix/client/v3/login", None, login).await;
            let user = User {
                user_id: login["user_id"].as_str().unwrap().to_owned(),
                token: login["access_token"].as_str().unwrap().to_owned(),
                device_id: login["device_id"].as_str().unwrap().to_owned(),
            };
            let path = format!("/_porch/client/v1/guest_links/{link_token}/join");
            let (status, body) = s.post(&path, Some(&user.token), json!({})).await;
            assert_eq!(status, 200, "{body}");
            let (_, who) = s.get("/_matrix/client/v3/account/whoami", Some(&user.token)).await;
            assert_eq!(who["is_guest"], true, "external accounts are guests");
            user
        }
    };
    World { s, alice, outsider, guest_room, other_room, guest, link_token }
}

async fn snapshot(w: &World) -> Value {
    let (_, a) = w.s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&w.guest_room)), Some(&w.alice.token)).await;
    let (_, b) = w.s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&w.other_room)), Some(&w.alice.token)).await;
    let (_, links) =
        w.s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&w.guest_room)), Some(&w.alice.token)).await;
    // Event ids name the state exactly (ages in `unsigned` move on).
    let sorted = |v: Value| {
        let mut events: Vec<Value> =
            v.as_array().into_iter().flatten().map(|e| json!([e["type"], e["state_key"], e["event_id"]])).collect();
        events.sort_by_key(|e| e.to_string());
        Value::Array(events)
    };
    json!({ "guest_room": sorted(a), "other_room": sorted(b), "links": links })
}

#[tokio::test]
async fn temporary_guests_cannot_reach_beyond_their_rooms() {
    reach_beyond(GuestKind::Temporary).await;
}

#[tokio::test]
async fn external_guests_cannot_reach_beyond_their_rooms() {
    reach_beyond(GuestKind::External).await;
}

async fn reach_beyond(kind: GuestKind) {
    let w = world(kind).await;
    let s = &w.s;
    let g = &w.guest;
    let before = snapshot(&w).await;
    let room = enc(&w.guest_room);
    let other = enc(&w.other_room);
    let forbidden = |label: &str, (status, body): (u16, Value)| {
        assert!(status == 403 || status == 401 || status == 404, "{label}: expected a refusal, got {status} {body}");
        assert!(body["errcode"].is_string(), "{label}: {body}");
    };

    forbidden("public directory", s.get("/_matrix/client/v3/publicRooms", Some(&g.token)).await);
    forbidden("public directory (POST)", s.post("/_matrix/client/v3/publicRooms", Some(&g.token), json!({})).await);
    forbidden(
        "profile of a stranger",
        s.get(&format!("/_matrix/client/v3/profile/{}", enc(&w.outsider.user_id)), Some(&g.token)).await,
    );
    forbidden(
        "profile without a token",
        s.get(&format!("/_matrix/client/v3/profile/{}", enc(&w.outsider.user_id)), None).await,
    );
    let (status, found) = s
        .post("/_matrix/client/v3/user_directory/search", Some(&g.token), json!({ "search_term": "o", "limit": 50 }))
        .await;
    assert_eq!(status, 200);
    assert!(
        found["results"].as_array().unwrap().iter().all(|u| u["user_id"] != w.outsider.user_id.as_str()),
        "search found a stranger: {found}"
    );
    let (_, co) = s
        .post(
            "/_matrix/client/v3/user_directory/search",
            Some(&g.token),
            json!({ "search_term": "alice", "limit": 50 }),
        )
        .await;
    assert_eq!(co["results"][0]["user_id"], w.alice.user_id.as_str(), "co-members are found");

    forbidden(
        "invite",
        s.post(
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&g.token),
            json!({ "user_id": w.outsider.user_id }),
        )
        .await,
    );
    forbidden(
        "invite via state",
        s.put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{}", enc(&w.outsider.user_id)),
            Some(&g.token),
            json!({ "membership": "invite" }),
        )
        .await,
    );
    forbidden(
        "kick",
        s.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), Some(&g.token), json!({ "user_id": w.alice.user_id }))
            .await,
    );
    forbidden(
        "ban",
        s.post(&format!("/_matrix/client/v3/rooms/{room}/ban"), Some(&g.token), json!({ "user_id": w.alice.user_id }))
            .await,
    );
    forbidden(
        "unban",
        s.post(
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            Some(&g.token),
            json!({ "user_id": w.alice.user_id }),
        )
        .await,
    );
    forbidden("join by id", s.post(&format!("/_matrix/client/v3/join/{other}"), Some(&g.token), json!({})).await);
    forbidden(
        "join by alias",
        s.post(&format!("/_matrix/client/v3/join/{}", enc("#lobby:porch.test")), Some(&g.token), json!({})).await,
    );
    forbidden(
        "join by id (rooms path)",
        s.post(&format!("/_matrix/client/v3/rooms/{other}/join"), Some(&g.token), json!({})).await,
    );
    forbidden(
        "join via state",
        s.put(
            &format!("/_matrix/client/v3/rooms/{other}/state/m.room.member/{}", enc(&g.user_id)),
            Some(&g.token),
            json!({ "membership": "join" }),
        )
        .await,
    );
    forbidden("knock", s.post(&format!("/_matrix/client/v3/knock/{other}"), Some(&g.token), json!({})).await);
    forbidden("create room", s.post("/_matrix/client/v3/createRoom", Some(&g.token), json!({ "name": "mine" })).await);
    forbidden(
        "DM with a stranger",
        s.post(
            "/_matrix/client/v3/createRoom",
            Some(&g.token),
            json!({ "is_direct": true, "invite": [w.outsider.user_id] }),
        )
        .await,
    );
    forbidden(
        "create guest room",
        s.post("/_porch/client/v1/guest_rooms", Some(&g.token), json!({ "name": "mine" })).await,
    );
    forbidden(
        "create link",
        s.post(&format!("/_porch/client/v1/guest_rooms/{room}/links"), Some(&g.token), json!({})).await,
    );
    forbidden("list links", s.get(&format!("/_porch/client/v1/guest_rooms/{room}/links"), Some(&g.token)).await);
    forbidden(
        "end room",
        s.post(&format!("/_porch/client/v1/guest_rooms/{room}/end"), Some(&g.token), json!({})).await,
    );
    forbidden(
        "alias",
        s.put(
            &format!("/_matrix/client/v3/directory/room/{}", enc("#mine:porch.test")),
            Some(&g.token),
            json!({ "room_id": w.guest_room }),
        )
        .await,
    );
    forbidden(
        "publish",
        s.put(
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&g.token),
            json!({ "visibility": "public" }),
        )
        .await,
    );
    for (kind, content) in [
        ("m.room.power_levels", json!({ "users": { g.user_id.clone(): 100 } })),
        ("m.room.name", json!({ "name": "Eve's room" })),
        ("m.room.topic", json!({ "topic": "hijacked" })),
        ("dev.porch.security_level", json!({ "level": "public", "label": "Public", "color": "#2e7d32" })),
        ("dev.porch.guest_room", json!({ "ended": true })),
        ("m.room.join_rules", json!({ "join_rule": "public" })),
    ] {
        forbidden(
            kind,
            s.put(&format!("/_matrix/client/v3/rooms/{room}/state/{kind}/"), Some(&g.token), content).await,
        );
    }
    forbidden("admin api", s.get("/_porch/admin/v1/stats", Some(&g.token)).await);
    // Another link in a new session: temporary accounts cannot hop rooms.
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_links/{}/join", w.link_token), Some(&g.token), json!({})).await;
    assert_eq!(status, 200, "the guest's own room is fine");
    // Temporary accounts belong to one visit; external people may use any link sent to them.
    if kind == GuestKind::Temporary {
        let (_, other_token, _) = s.guest_room(&w.alice, json!({ "name": "Second" })).await;
        let path = format!("/_porch/client/v1/guest_links/{other_token}/join");
        forbidden("redeem another link with a temporary account", s.post(&path, Some(&g.token), json!({})).await);
    }

    // What guests may do keeps working.
    s.send_text(g, &w.guest_room, "hi").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.pinned_events/"),
            Some(&g.token),
            json!({ "pinned": [] }),
        )
        .await;
    assert_eq!(status, 200, "guests may pin");
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{room}/tags/m.favourite", enc(&g.user_id)),
            Some(&g.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "tags");
    let (status, _) = s
        .put(&format!("/_matrix/client/v3/pushrules/global/room/{room}"), Some(&g.token), json!({ "actions": [] }))
        .await;
    assert_eq!(status, 200, "push rules");
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", enc(&g.user_id)),
            Some(&g.token),
            json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_eq!(status, 200, "typing");
    let (status, _) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&g.token),
            json!({ "is_direct": true, "invite": [w.alice.user_id] }),
        )
        .await;
    assert_eq!(status, 200, "a DM with a co-member");

    let after = snapshot(&w).await;
    assert_eq!(before["other_room"], after["other_room"], "the other room is untouched");
    assert_eq!(before["links"], after["links"], "links are untouched");
    let names = |v: &Value| {
        v["guest_room"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e[0] != "m.room.member" && e[0] != "m.room.pinned_events")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&before), names(&after), "the guest room's state is untouched");

    // Receipts, media and leaving work for guests too.
    let last = s.send_text(g, &w.guest_room, "bye").await;
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", enc(&last)), Some(&g.token), json!({}))
        .await;
    assert_eq!(status, 200, "receipts");
    assert_eq!(s.upload(g, "image/png", vec![1u8, 2, 3]).await.0, 200, "media upload");
    let (status, _) = s.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&g.token), json!({})).await;
    assert_eq!(status, 200, "leave");
}

#[tokio::test]
async fn tokens_cannot_be_guessed_or_reused() {
    let w = world(GuestKind::Temporary).await;
    let s = &w.s;
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_porch/client/v1/guest_rooms/{}/links/{}", enc(&w.guest_room), {
                let (_, links) = s
                    .get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&w.guest_room)), Some(&w.alice.token))
                    .await;
                links["links"][0]["id"].as_str().unwrap().to_owned()
            }),
            Some(&w.alice.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.redeem_as_guest(&w.link_token, "Again").await;
    assert_eq!(status, 404, "revoked token");
    // Guessing runs into the per-address limit long before it could succeed.
    let mut limited = false;
    for i in 0..40 {
        let (status, body) = s.get(&format!("/_porch/client/v1/guest_links/guess{i:04}"), None).await;
        if status == 429 {
            assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
            limited = true;
            break;
        }
        assert_eq!(status, 404);
    }
    assert!(limited, "guessing was never slowed down");
    assert!(w.link_token.len() >= 22, "at least 128 bits of token");
}

/// Every kind of state event a client can send, with content that would
/// matter if it were accepted.
fn every_state_event(w: &World) -> Vec<(&'static str, String, Value)> {
    let g = &w.guest.user_id;
    let o = &w.outsider.user_id;
    vec![
        ("m.room.join_rules", String::new(), json!({ "join_rule": "public" })),
        ("m.room.guest_access", String::new(), json!({ "guest_access": "can_join" })),
        ("m.room.history_visibility", String::new(), json!({ "history_visibility": "world_readable" })),
        ("m.room.power_levels", String::new(), json!({ "users": { g.clone(): 100, o.clone(): 100 } })),
        ("m.room.canonical_alias", String::new(), json!({ "alt_aliases": [] })),
        ("m.room.aliases", "porch.test".into(), json!({ "aliases": ["#taken:porch.test"] })),
        ("m.room.server_acl", String::new(), json!({ "allow": ["*"], "deny": [], "allow_ip_literals": true })),
        ("m.room.tombstone", String::new(), json!({ "body": "moved", "replacement_room": w.other_room })),
        (
            "m.room.third_party_invite",
            "sometoken".into(),
            json!({ "display_name": "x…@example.org", "key_validity_url": "https://example.org/v", "public_key": "AAAA" }),
        ),
        ("m.room.create", String::new(), json!({ "room_version": "12" })),
        ("m.space.child", w.other_room.clone(), json!({ "via": ["porch.test"] })),
        ("m.space.parent", w.other_room.clone(), json!({ "via": ["porch.test"], "canonical": true })),
        (
            "dev.porch.security_level",
            String::new(),
            json!({ "level": "public", "label": "Public", "color": "#2e7d32" }),
        ),
        ("dev.porch.guest_room", String::new(), json!({ "ended": true })),
        ("im.vector.modular.widgets", "w1".into(), json!({ "type": "m.custom", "url": "https://example.org" })),
        ("org.example.anything", String::new(), json!({ "any": "thing" })),
        ("m.room.name", String::new(), json!({ "name": "Eve's" })),
        ("m.room.topic", String::new(), json!({ "topic": "mine" })),
        ("m.room.avatar", String::new(), json!({ "url": "mxc://porch.test/abc" })),
        ("m.room.encryption", String::new(), json!({ "algorithm": "m.megolm.v1.aes-sha2" })),
        ("m.room.pinned_events", String::new(), json!({ "pinned": [] })),
    ]
}

/// What a guest may set in a direct chat they opened: what makes it theirs.
const DM_ALLOWED: &[&str] =
    &["m.room.name", "m.room.topic", "m.room.avatar", "m.room.encryption", "m.room.pinned_events"];

#[tokio::test]
async fn temporary_guests_cannot_open_their_direct_chats_or_hand_out_power() {
    direct_chat_stays_closed(GuestKind::Temporary).await;
}

#[tokio::test]
async fn external_guests_cannot_open_their_direct_chats_or_hand_out_power() {
    direct_chat_stays_closed(GuestKind::External).await;
}

async fn direct_chat_stays_closed(kind: GuestKind) {
    let w = world(kind).await;
    let s = &w.s;
    let g = &w.guest;
    let (status, body) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&g.token),
            json!({ "is_direct": true, "invite": [w.alice.user_id] }),
        )
        .await;
    assert_eq!(status, 200, "a DM with a co-member: {body}");
    let dm = body["room_id"].as_str().unwrap().to_owned();
    let alice_token = &w.guest.token;
    let state_of = |room: String| async move {
        let (_, state) = s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), Some(alice_token)).await;
        let mut ids: Vec<String> = state
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !DM_ALLOWED.contains(&e["type"].as_str().unwrap()))
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let dm_before = state_of(dm.clone()).await;
    let room_before = state_of(w.guest_room.clone()).await;

    for (kind, state_key, content) in every_state_event(&w) {
        let put = |room: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(&state_key));
        let (status, body) = s.put(&put(&dm), Some(&g.token), content.clone()).await;
        if DM_ALLOWED.contains(&kind) {
            assert_eq!(status, 200, "{kind} in the guest's own DM: {body}");
        } else {
            assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{kind} in the DM: {body}");
        }
        let (status, body) = s.put(&put(&w.guest_room), Some(&g.token), content).await;
        if kind == "m.room.pinned_events" {
            assert_eq!(status, 200, "guests may pin in their rooms: {body}");
        } else {
            assert_eq!(
                (status, body["errcode"].as_str()),
                (403, Some("M_FORBIDDEN")),
                "{kind} in the guest room: {body}"
            );
        }
    }
    assert_eq!(dm_before, state_of(dm.clone()).await, "the DM's state is what it was");
    assert_eq!(room_before, state_of(w.guest_room.clone()).await, "the guest room's state is what it was");

    // The attack itself: nobody who was not invited gets in.
    let (status, body) =
        s.post(&format!("/_matrix/client/v3/join/{}", enc(&dm)), Some(&w.outsider.token), json!({})).await;
    assert_eq!(status, 403, "an outsider joined the guest's DM: {body}");
    // Nor can the DM be published, aliased or upgraded.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/directory/list/room/{}", enc(&dm)),
            Some(&g.token),
            json!({ "visibility": "public" }),
        )
        .await;
    assert_eq!(status, 403, "publish the DM");
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/directory/room/{}", enc("#evedm:porch.test")),
            Some(&g.token),
            json!({ "room_id": dm }),
        )
        .await;
    assert_eq!(status, 403, "alias the DM");
    let (status, body) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&dm)), Some(&g.token), json!({ "new_version": "12" }))
        .await;
    assert!(status == 403 || status == 404, "upgrade the DM: {status} {body}");

    // A DM made open (or powerful) from the start is refused whole: no room is made.
    let (_, rooms_before) = s.get("/_matrix/client/v3/joined_rooms", Some(&g.token)).await;
    let alice = w.alice.user_id.clone();
    for (label, extra) in [
        ("public preset", json!({ "preset": "public_chat" })),
        ("public visibility", json!({ "visibility": "public" })),
        ("alias", json!({ "room_alias_name": "evesden" })),
        (
            "initial join rules",
            json!({ "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "public" } }] }),
        ),
        (
            "initial guest access",
            json!({ "initial_state": [{ "type": "m.room.guest_access", "content": { "guest_access": "can_join" } }] }),
        ),
        (
            "initial history",
            json!({ "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "world_readable" } }] }),
        ),
        (
            "initial server ACL",
            json!({ "initial_state": [{ "type": "m.room.server_acl", "content": { "allow": ["*"] } }] }),
        ),
        ("power override", json!({ "power_level_content_override": { "users": { w.outsider.user_id.clone(): 100 } } })),
        ("extra creators", json!({ "creation_content": { "additional_creators": [w.outsider.user_id] } })),
        ("a space", json!({ "creation_content": { "type": "m.space" } })),
        ("a fake predecessor", json!({ "creation_content": { "predecessor": { "room_id": w.other_room } } })),
    ] {
        let mut body = json!({ "is_direct": true, "invite": [alice] });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, answer) = s.post("/_matrix/client/v3/createRoom", Some(&g.token), body).await;
        assert_eq!((status, answer["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{label}: {answer}");
    }
    let (_, rooms_after) = s.get("/_matrix/client/v3/joined_rooms", Some(&g.token)).await;
    assert_eq!(rooms_before, rooms_after, "no refused createRoom made a room");
}

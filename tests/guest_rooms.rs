//! Guest rooms, links, redemption, ending and the admin API, held to the
//! guest-rooms contract.

mod common;

use common::{Options, TestServer, User, enc};
use serde_json::{Value, json};

async fn state(s: &TestServer, user: &User, room: &str, kind: &str) -> Value {
    let path = if kind.contains('/') { kind.to_owned() } else { format!("{kind}/") };
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/state/{path}", enc(room)), Some(&user.token)).await;
    assert_eq!(status, 200, "{kind}: {body}");
    body
}

fn guest_user(body: &Value) -> User {
    User {
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        device_id: body["device_id"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn guest_room_carries_the_contracts_state() {
    let s = TestServer::start().await;
    let admin = s.register_admin("boss").await;
    let alice = s.register("alice").await;
    let (room, token, _) =
        s.guest_room(&alice, json!({ "name": "Visit", "topic": "Plans", "link": { "max_uses": 5 } })).await;
    let join_rules = state(&s, &alice, &room, "m.room.join_rules").await;
    assert_eq!(join_rules["join_rule"], "restricted");
    assert_eq!(join_rules["allow"], json!([]));
    assert_eq!(state(&s, &alice, &room, "m.room.guest_access").await["guest_access"], "can_join");
    assert_eq!(state(&s, &alice, &room, "m.room.history_visibility").await["history_visibility"], "joined");
    let power = state(&s, &alice, &room, "m.room.power_levels").await;
    for key in ["invite", "kick", "ban", "redact", "state_default"] {
        assert_eq!(power[key], 50, "{key}: {power}");
    }
    assert_eq!(power["events_default"], 0);
    assert_eq!(power["events"]["m.room.pinned_events"], 0);
    for kind in ["dev.porch.security_level", "dev.porch.guest_room", "m.room.power_levels", "m.room.server_acl"] {
        assert_eq!(power["events"][kind], 100, "{kind}");
    }
    let guest_room = state(&s, &alice, &room, "dev.porch.guest_room").await;
    assert_eq!(guest_room["creator"], alice.user_id.as_str());
    assert!(guest_room["created_at"].is_u64());
    let level = state(&s, &alice, &room, "dev.porch.security_level").await;
    assert_eq!(
        (level["level"].as_str(), level["label"].as_str(), level["color"].as_str()),
        (Some("internal"), Some("Internal"), Some("#1565c0"))
    );
    assert_eq!(state(&s, &alice, &room, "m.room.name").await["name"], "Visit");
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", enc(&room)), Some(&alice.token)).await;
    assert_eq!(status, 404, "unclassified rooms carry no ACL");

    // A classified creator's room carries the level and an ACL.
    assert_eq!(common::set_security_level(&s, &admin, &alice.user_id, "confidential").await, 200);
    let (secret_room, _, _) = s.guest_room(&alice, json!({ "name": "Secret" })).await;
    assert_eq!(state(&s, &alice, &secret_room, "dev.porch.security_level").await["level"], "confidential");
    assert_eq!(state(&s, &alice, &secret_room, "m.room.server_acl").await["allow"], json!(["porch.test"]));

    // The preview shows what a visitor needs.
    let (status, preview) = s.get(&format!("/_porch/client/v1/guest_links/{token}"), None).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!((preview["name"].as_str(), preview["topic"].as_str()), (Some("Visit"), Some("Plans")));
    assert_eq!(preview["member_count"], 1);
    assert_eq!(preview["requires_password"], false);
    assert_eq!(preview["security_level"]["label"], "Internal");
    assert_eq!(preview["server_name"], "porch.test");
    let (status, body) = s.get("/_porch/client/v1/guest_links/doesnotexist", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
}

#[tokio::test]
async fn temporary_guest_joins_through_a_link_and_is_always_marked() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, token, link_id) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (status, body) = s.redeem_as_guest(&token, "Ana").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert!(body["expires_at"].is_u64());
    let guest = guest_user(&body);
    assert!(!guest.user_id.to_lowercase().contains("ana"), "id not guessable from the name: {}", guest.user_id);
    let (_, who) = s.get("/_matrix/client/v3/account/whoami", Some(&guest.token)).await;
    assert_eq!(who["is_guest"], true);
    let member = state(&s, &alice, &room, &format!("m.room.member/{}", guest.user_id)).await;
    assert_eq!(member["membership"], "join");
    assert_eq!(member["dev.porch.guest"], true);
    assert_eq!(member["displayname"], "Ana (guest)");
    assert_eq!(member["join_authorised_via_users_server"], alice.user_id.as_str());
    let (_, profile) = s.get(&format!("/_matrix/client/v3/profile/{}", enc(&guest.user_id)), Some(&alice.token)).await;
    assert_eq!(profile["dev.porch.guest"], true);
    // The suffix stays whatever the guest sets.
    s.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&guest.user_id)),
        Some(&guest.token),
        json!({ "displayname": "Ana Real" }),
    )
    .await;
    let (_, profile) = s.get(&format!("/_matrix/client/v3/profile/{}", enc(&guest.user_id)), Some(&guest.token)).await;
    assert_eq!(profile["displayname"], "Ana Real (guest)");
    // The guest talks; the member receives it.
    let event = s.send_text(&guest, &room, "hello from outside").await;
    let sync = s.sync(&alice, None, 0).await;
    assert!(common::timeline(&sync, &room).iter().any(|e| e["event_id"] == event.as_str()));
    // The link records who joined.
    let (_, links) = s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&alice.token)).await;
    let link = links["links"].as_array().unwrap().iter().find(|l| l["id"] == link_id.as_str()).unwrap().clone();
    assert_eq!(link["uses"], 1);
    assert_eq!(link["joined"][0]["user_id"], guest.user_id.as_str());
    assert!(link.get("password_hash").is_none());

    // A member of this server joins with their own account.
    let bob = s.register("bob").await;
    let (status, body) =
        s.post(&format!("/_porch/client/v1/guest_links/{token}/join"), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], bob.user_id.as_str());
    assert!(body.get("access_token").is_none());
    let (_, details) = s.get(&format!("/_porch/client/v1/guest_rooms/{}", enc(&room)), Some(&alice.token)).await;
    assert_eq!(details["links"][0]["uses"], 2);
    assert_eq!(details["guests"].as_array().unwrap().len(), 1, "bob is a member, not a guest: {details}");
}

async fn stats(s: &TestServer, admin: &User) -> Value {
    let (status, body) = s.get("/_porch/admin/v1/stats", Some(&admin.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn every_refusal_changes_nothing() {
    let s = TestServer::start().await;
    let admin = s.register_admin("boss").await;
    let alice = s.register("alice").await;
    let (room, _, _) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let make_link = |body: Value| {
        let (s, alice, room) = (&s, &alice, &room);
        async move {
            let (status, link) =
                s.post(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(room)), Some(&alice.token), body).await;
            assert_eq!(status, 200, "{link}");
            (link["token"].as_str().unwrap().to_owned(), link["id"].as_str().unwrap().to_owned())
        }
    };
    let before = stats(&s, &admin).await;

    let (expiring, _) = make_link(json!({ "expires_in_ms": 1 })).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (status, body) = s.redeem_as_guest(&expiring, "Late").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("DEV.PORCH.LINK_EXPIRED")));

    let (once, _) = make_link(json!({ "max_uses": 1 })).await;
    assert_eq!(s.redeem_as_guest(&once, "First").await.0, 200);
    let (status, body) = s.redeem_as_guest(&once, "Second").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("DEV.PORCH.LINK_USED_UP")));

    let (locked, _) = make_link(json!({ "password": "open sesame" })).await;
    let (_, preview) = s.get(&format!("/_porch/client/v1/guest_links/{locked}"), None).await;
    assert_eq!(preview["requires_password"], true);
    let (status, body) = s.redeem_as_guest(&locked, "Nopass").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("DEV.PORCH.PASSWORD_REQUIRED")));
    let (status, body) = s
        .post(
            &format!("/_porch/client/v1/guest_links/{locked}/join"),
            None,
            json!({ "display_name": "Wrong", "password": "not it at all" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, _) = s
        .post(
            &format!("/_porch/client/v1/guest_links/{locked}/join"),
            None,
            json!({ "display_name": "Right", "password": "open sesame" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s
        .post(
            &format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)),
            Some(&alice.token),
            json!({ "password": "short" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));

    let (revoked, revoked_id) = make_link(json!({})).await;
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_porch/client/v1/guest_rooms/{}/links/{revoked_id}", enc(&room)),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.redeem_as_guest(&revoked, "Revoked").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, _) = s.redeem_as_guest(&revoked, "").await;
    assert_eq!(status, 404);
    let (good, _) = make_link(json!({})).await;
    let (status, body) = s.redeem_as_guest(&good, "   ").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));

    let after = stats(&s, &admin).await;
    assert_eq!(
        after["users"]["temporary"].as_u64().unwrap(),
        before["users"]["temporary"].as_u64().unwrap() + 2,
        "only the two successful redemptions made accounts"
    );
    let (_, details) = s.get(&format!("/_porch/client/v1/guest_rooms/{}", enc(&room)), Some(&alice.token)).await;
    let uses: u64 = details["links"].as_array().unwrap().iter().map(|l| l["uses"].as_u64().unwrap()).sum();
    assert_eq!(uses, 2, "refused tries counted no use: {details}");

    // Ending refuses further joins with 410.
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = s.redeem_as_guest(&good, "After").await;
    assert!(
        matches!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")) | (410, Some("DEV.PORCH.ROOM_ENDED"))),
        "{status} {body}"
    );
}

#[tokio::test]
async fn guests_disabled_and_redemption_rate_limited() {
    let s = TestServer::start_with(Options {
        env: vec![
            ("PORCH_GUESTS__REDEEM_BURST".into(), "3".into()),
            ("PORCH_GUESTS__REDEEM_PER_SECOND".into(), "0.01".into()),
        ],
    })
    .await;
    let mut last = (0, Value::Null);
    for i in 0..4 {
        last = s.get(&format!("/_porch/client/v1/guest_links/guess{i}"), None).await;
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert_eq!(last.1["errcode"], "M_LIMIT_EXCEEDED");
    assert!(last.1["retry_after_ms"].as_u64().unwrap() > 0);

    let s = TestServer::start_with(Options { env: vec![("PORCH_GUESTS__ENABLED".into(), "false".into())] }).await;
    let alice = s.register("alice").await;
    let (status, body) = s.post("/_porch/client/v1/guest_rooms", Some(&alice.token), json!({ "name": "x" })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn link_management_is_for_moderators_who_are_not_guests() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, token, link_id) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (_, body) = s.redeem_as_guest(&token, "Gus").await;
    let guest = guest_user(&body);
    s.post(&format!("/_porch/client/v1/guest_links/{token}/join"), Some(&bob.token), json!({})).await;
    for user in [&guest, &bob] {
        let (status, _) =
            s.post(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&user.token), json!({})).await;
        assert_eq!(status, 403, "{}", user.user_id);
        let (status, _) =
            s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&user.token)).await;
        assert_eq!(status, 403);
        let (status, _) = s
            .request(
                reqwest::Method::DELETE,
                &format!("/_porch/client/v1/guest_rooms/{}/links/{link_id}", enc(&room)),
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 403);
        let (status, _) =
            s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room)), Some(&user.token), json!({})).await;
        assert_eq!(status, 403);
    }
    let (status, body) = s.post("/_porch/client/v1/guest_rooms", Some(&guest.token), json!({ "name": "Mine" })).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    // Give Bob moderator power: now he may manage links.
    let mut power = state(&s, &alice, &room, "m.room.power_levels").await;
    power["users"][&bob.user_id] = json!(50);
    let (status, _) = s
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)), Some(&alice.token), power)
        .await;
    assert_eq!(status, 200);
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200);
    let (_, rooms) = s.get("/_porch/client/v1/guest_rooms", Some(&bob.token)).await;
    assert_eq!(rooms["guest_rooms"][0]["room_id"], room.as_str());
}

#[tokio::test]
async fn ending_removes_everyone_and_runs_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, token, _) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (_, body) = s.redeem_as_guest(&token, "Gus").await;
    let guest = guest_user(&body);
    s.post(&format!("/_porch/client/v1/guest_links/{token}/join"), Some(&bob.token), json!({})).await;
    // Running clients: each holds a sync position from before the end.
    let mut positions = Vec::new();
    for user in [&alice, &bob] {
        let sync = s.sync(user, None, 0).await;
        assert!(sync["rooms"]["join"].get(&room).is_some(), "{sync}");
        positions.push(sync["next_batch"].as_str().unwrap().to_owned());
    }
    let guest_position = s.sync(&guest, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (status, body) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ended"], true);
    // Their next incremental sync reports the leave, once.
    for (user, since) in [&alice, &bob].into_iter().zip(&positions) {
        let sync = s.sync(user, Some(since), 0).await;
        assert!(sync["rooms"]["join"].get(&room).is_none(), "{}: never joined once ended: {sync}", user.user_id);
        let leave = &sync["rooms"]["leave"][&room];
        let events = leave["timeline"]["events"].as_array().cloned().unwrap_or_default();
        assert!(
            events.iter().any(|e| e["type"] == "m.room.member"
                && e["state_key"] == user.user_id.as_str()
                && e["content"]["membership"] == "leave"),
            "{}: the leave reaches a running client: {sync}",
            user.user_id
        );
        let next = sync["next_batch"].as_str().unwrap();
        let later = s.sync(user, Some(next), 0).await;
        assert!(
            later["rooms"]["leave"].get(&room).is_none() && later["rooms"]["join"].get(&room).is_none(),
            "{}: forgotten after that: {later}",
            user.user_id
        );
    }
    // The guest's client learns it was logged out.
    let (status, refused) =
        s.get(&format!("/_matrix/client/v3/sync?since={}&timeout=0", enc(&guest_position)), Some(&guest.token)).await;
    assert_eq!((status, refused["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")), "{refused}");
    let (status, again) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!((status, &again["ended_at"]), (200, &body["ended_at"]), "runs once");
    // Links revoked; the temporary guest is deactivated.
    let (status, _) = s.get(&format!("/_porch/client/v1/guest_links/{token}"), None).await;
    assert_eq!(status, 410);
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&guest.token)).await;
    assert_eq!(status, 401, "temporary guest logged out");
    // The room is gone from everyone's room list.
    for user in [&alice, &bob] {
        let sync = s.sync(user, None, 0).await;
        assert!(
            sync["rooms"]["join"].get(&room).is_none() && sync["rooms"]["leave"].get(&room).is_none(),
            "{}: {sync}",
            user.user_id
        );
        let (_, joined) = s.get("/_matrix/client/v3/joined_rooms", Some(&user.token)).await;
        assert!(!joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()));
    }
}

#[tokio::test]
async fn ends_at_is_kept_across_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice").await;
    let ends_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64 + 1500;
    let (room, token, _) = s.guest_room(&alice, json!({ "name": "Brief", "ends_at": ends_at })).await;
    s.kill();
    // The deadline passes while porch is down.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let dir = s.dir.clone();
    let restarted = TestServer::launch(&dir, &Options::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = restarted.get(&format!("/_porch/client/v1/guest_links/{token}"), None).await;
        if status == 410 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "room never ended: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let (_, joined) = restarted.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert!(!joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()));
    drop(s);
}

#[tokio::test]
async fn admin_api_users_rooms_links_and_figures() {
    let s = TestServer::start().await;
    let admin = s.register_admin("boss").await;
    let alice = s.register("alice").await;
    let (status, _) = s.get("/_porch/admin/v1/stats", Some(&alice.token)).await;
    assert_eq!(status, 403, "not an admin");
    let (status, _) = s.get("/_porch/admin/v1/stats", None).await;
    assert_eq!(status, 401);
    let (status, body) = s
        .post(
            "/_porch/admin/v1/users",
            Some(&admin.token),
            json!({ "username": "carol", "password": "carol password", "security_level": "public" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["kind"].as_str(), body["security_level"].as_str()), (Some("member"), Some("public")));
    let (status, body) = s
        .post(
            "/_porch/admin/v1/users",
            Some(&admin.token),
            json!({ "username": "carol", "password": "carol password" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    assert_eq!(common::set_security_level(&s, &admin, "@carol:porch.test", "nope").await, 400);
    let (_, token_body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "carol", "password": "carol password" }),
        )
        .await;
    assert!(token_body["access_token"].is_string());

    let (room, token, link_id) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    s.redeem_as_guest(&token, "Gus").await;
    let figures = stats(&s, &admin).await;
    assert_eq!(figures["users"], json!({ "member": 3, "external": 0, "temporary": 1 }));
    assert_eq!(figures["guest_rooms"], json!({ "active": 1, "ended": 0 }));
    assert_eq!(figures["links"]["active"], 1);
    assert_eq!(figures["invitations"]["pending"], 0);
    let (_, temporary) = s.get("/_porch/admin/v1/users?kind=temporary", Some(&admin.token)).await;
    assert_eq!(temporary["users"].as_array().unwrap().len(), 1);
    let (status, _) = s.get("/_porch/admin/v1/users?kind=alien", Some(&admin.token)).await;
    assert_eq!(status, 400);

    let (status, _) = s
        .put(
            &format!("/_porch/admin/v1/users/{}/admin", enc(&alice.user_id)),
            Some(&admin.token),
            json!({ "admin": true }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s.get("/_porch/admin/v1/stats", Some(&alice.token)).await;
    assert_eq!(status, 200, "alice is an admin now");

    let (_, rooms) = s.get("/_porch/admin/v1/guest_rooms", Some(&admin.token)).await;
    assert_eq!(rooms["guest_rooms"][0]["room_id"], room.as_str());
    let (status, link) = s
        .request(reqwest::Method::DELETE, &format!("/_porch/admin/v1/guest_links/{link_id}"), Some(&admin.token), None)
        .await;
    assert_eq!((status, link["revoked"].as_bool()), (200, Some(true)));
    let (status, _) =
        s.post(&format!("/_porch/admin/v1/guest_rooms/{}/end", enc(&room)), Some(&admin.token), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(stats(&s, &admin).await["guest_rooms"], json!({ "active": 0, "ended": 1 }));

    let (status, body) = s
        .post(&format!("/_porch/admin/v1/users/{}/deactivate", enc("@carol:porch.test")), Some(&admin.token), json!({}))
        .await;
    assert_eq!((status, body["deactivated"].as_bool()), (200, Some(true)));
    let (status, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "carol", "password": "carol password" }),
        )
        .await;
    assert_eq!(status, 403);
}

async fn notices(s: &TestServer, user: &User, room: &str) -> Vec<String> {
    let (_, page) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(room)), Some(&user.token)).await;
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["content"]["msgtype"] == "m.notice")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn room_commands_from_any_client() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (room, token, first_link) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (_, body) = s.redeem_as_guest(&token, "Gus").await;
    let guest = guest_user(&body);

    s.send_text(&alice, &room, "!guest link 3").await;
    let latest = notices(&s, &alice, &room).await;
    assert!(latest[0].starts_with("New guest link") && latest[0].contains("/guest/"), "{latest:?}");
    let (_, links) = s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&alice.token)).await;
    assert_eq!(links["links"].as_array().unwrap().len(), 2);
    assert_eq!(links["links"][1]["max_uses"], 3);

    s.send_text(&alice, &room, "!guest links").await;
    let latest = notices(&s, &alice, &room).await;
    assert!(latest[0].contains(&first_link) && latest[0].lines().count() == 2, "{latest:?}");

    s.send_text(&alice, &room, &format!("!guest revoke {first_link}")).await;
    assert_eq!(notices(&s, &alice, &room).await[0], format!("Link {first_link} revoked."));
    let (status, _) = s.get(&format!("/_porch/client/v1/guest_links/{token}"), None).await;
    assert_eq!(status, 404);

    s.send_text(&guest, &room, "!guest link").await;
    assert_eq!(notices(&s, &alice, &room).await[0], "Guests cannot manage this room.");
    let (_, links) = s.get(&format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)), Some(&alice.token)).await;
    assert_eq!(links["links"].as_array().unwrap().len(), 2, "the guest's command made no link");

    s.send_text(&alice, &room, "!guest nonsense").await;
    assert!(notices(&s, &alice, &room).await[0].starts_with("Commands:"));

    s.send_text(&alice, &room, "!guest end").await;
    let (_, details) = s.get("/_porch/client/v1/guest_rooms", Some(&alice.token)).await;
    assert!(details["guest_rooms"].as_array().unwrap().is_empty(), "ended rooms are no longer listed: {details}");
    let (_, joined) = s.get("/_matrix/client/v3/joined_rooms", Some(&alice.token)).await;
    assert!(!joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()));
}

#[tokio::test]
async fn ended_room_history_is_purged_after_the_retention() {
    let s =
        TestServer::start_with(Options { env: vec![("PORCH_GUESTS__HISTORY_RETENTION".into(), "1s".into())] }).await;
    let alice = s.register("alice").await;
    let (room, _, _) = s.guest_room(&alice, json!({ "name": "Brief" })).await;
    let event = s.send_text(&alice, &room, "soon gone").await;
    let admin = s.register_admin("boss").await;
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    // Alice left but may still read what she saw, until the purge.
    let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event));
    assert_eq!(s.get(&path, Some(&alice.token)).await.0, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.get(&path, Some(&alice.token)).await.0 == 200 {
        assert!(std::time::Instant::now() < deadline, "history never purged");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let (_, rooms) = s.get("/_porch/admin/v1/guest_rooms", Some(&admin.token)).await;
    assert_eq!(rooms["guest_rooms"][0]["ended"], true);
}

#[tokio::test]
async fn temporary_accounts_expire_and_disabled_guests_cannot_join() {
    let mut s =
        TestServer::start_with(Options { env: vec![("PORCH_GUESTS__TEMPORARY_TTL".into(), "2s".into())] }).await;
    let alice = s.register("alice").await;
    let (room, token, _) = s.guest_room(&alice, json!({ "name": "Visit" })).await;
    let (_, body) = s.redeem_as_guest(&token, "Brief").await;
    let guest = guest_user(&body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.get("/_matrix/client/v3/account/whoami", Some(&guest.token)).await.0 == 200 {
        assert!(std::time::Instant::now() < deadline, "the temporary account outlived its TTL");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), Some(&alice.token)).await;
    assert!(members["joined"].get(&guest.user_id).is_none(), "the expired guest left the room: {members}");

    // Guests switched off: links stop working, and nothing is made.
    s.kill();
    let dir = s.dir.clone();
    let off = TestServer::launch(&dir, &Options { env: vec![("PORCH_GUESTS__ENABLED".into(), "false".into())] });
    let (status, body) = off.redeem_as_guest(&token, "Late").await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    drop(s);
}

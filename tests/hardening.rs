//! Regression tests for refusals found in review: every path to the same
//! effect is held to the same rule.

mod common;

use common::{TestServer, enc, timeline};
use serde_json::json;

#[tokio::test]
async fn redactions_need_power_on_every_path() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    let victim = s.send_text(&alice, &room, "keep me").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/r1", enc(&room)),
            Some(&bob.token),
            json!({ "redacts": victim }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.redaction/", enc(&room)),
            Some(&bob.token),
            json!({ "redacts": victim }),
        )
        .await;
    assert_eq!(status, 403);
    let (_, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&victim)), Some(&bob.token)).await;
    assert_eq!(event["content"]["body"], "keep me");
    // Own events may be redacted through /send too.
    let own = s.send_text(&bob, &room, "mine").await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/r2", enc(&room)),
            Some(&bob.token),
            json!({ "redacts": own }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&own)), Some(&bob.token)).await;
    assert!(event["content"].get("body").is_none(), "{event}");
}

#[tokio::test]
async fn restricted_rooms_cannot_be_joined_through_the_state_api() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let mallory = s.register("mallory").await;
    let space = s.create_room(&alice, json!({})).await;
    let room = s
        .create_room(
            &alice,
            json!({ "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] } }] }),
        )
        .await;
    let (status, body) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&mallory.user_id)),
            Some(&mallory.token),
            json!({ "membership": "join", "join_authorised_via_users_server": alice.user_id }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), Some(&alice.token)).await;
    assert_eq!(status, 200);
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), Some(&alice.token)).await;
    assert!(members["joined"].get(&mallory.user_id).is_none());
}

#[tokio::test]
async fn history_visibility_holds_in_sync_members_and_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let stranger = s.register("stranger").await;
    let room = s
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }] }),
        )
        .await;
    s.send_text(&alice, &room, "before bob").await;
    s.join(&bob, &room).await;
    let sync = s.sync(&bob, None, 0).await;
    let bodies: Vec<_> = timeline(&sync, &room).iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert!(!bodies.contains(&"before bob"), "joined-only history leaked: {bodies:?}");

    // A ban of someone who was never in the room shows them nothing.
    let since = s.sync(&stranger, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": stranger.user_id }),
        )
        .await;
    assert_eq!(status, 200);
    let sync = s.sync(&stranger, Some(&since), 0).await;
    let left = &sync["rooms"]["leave"][&room];
    let events: Vec<_> = left["timeline"]["events"].as_array().unwrap().iter().collect();
    assert_eq!(events.len(), 1, "{left}");
    assert_eq!(events[0]["content"]["membership"], "ban");
    assert!(
        left["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "m.room.member" && e["state_key"] == stranger.user_id.as_str())
    );
    for path in ["members", "state", "state/m.room.name"] {
        let (status, _) =
            s.get(&format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room)), Some(&stranger.token)).await;
        assert_eq!(status, 403, "{path}");
    }
}

#[tokio::test]
async fn profile_changes_do_not_resend_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    for i in 0..12 {
        s.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
        Some(&alice.token),
        json!({ "displayname": "New" }),
    )
    .await;
    let sync = s.sync(&alice, Some(&since), 0).await;
    let joined = &sync["rooms"]["join"][&room];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "only the new member event: {joined}");
    assert!(!joined["timeline"]["limited"].as_bool().unwrap_or(false));
}

#[tokio::test]
async fn guests_cannot_publish_or_alias_rooms_and_profiles_need_a_token() {
    let s = TestServer::start_with(common::Options {
        env: vec![("PORCH_REGISTRATION__ALLOW_GUESTS".into(), "true".into())],
    })
    .await;
    let alice = s.register("alice").await;
    let (_, guest) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    let guest_token = guest["access_token"].as_str().unwrap().to_owned();
    let guest_id = guest["user_id"].as_str().unwrap().to_owned();
    let room = s.create_room(&alice, json!({ "invite": [guest_id] })).await;
    assert_eq!(s.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), Some(&guest_token), json!({})).await.0, 200);
    for extra in
        [json!({ "visibility": "public" }), json!({ "room_alias_name": "lobby" }), json!({ "preset": "public_chat" })]
    {
        let mut body = json!({ "is_direct": true, "invite": [alice.user_id] });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, resp) = s.post("/_matrix/client/v3/createRoom", Some(&guest_token), body.clone()).await;
        assert_eq!(status, 403, "{body} -> {resp}");
    }
    let (status, _) = s
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&guest_token),
            json!({ "is_direct": true, "invite": [alice.user_id] }),
        )
        .await;
    assert_eq!(status, 200, "a direct chat with a co-member is allowed");
    let (status, body) = s.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)), None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
}

#[tokio::test]
async fn bad_tags_content_is_refused() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/m.tag", enc(&alice.user_id), enc(&room)),
            Some(&alice.token),
            json!({ "tags": 1 }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.work", enc(&alice.user_id), enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn signatures_are_taken_only_from_their_signer() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    let keys = json!({ "user_id": alice.user_id, "device_id": alice.device_id, "algorithms": [], "keys": { format!("ed25519:{}", alice.device_id): "k" }, "signatures": { alice.user_id.clone(): { format!("ed25519:{}", alice.device_id): "real" } } });
    s.post("/_matrix/client/v3/keys/upload", Some(&alice.token), json!({ "device_keys": keys })).await;
    let forged = json!({ alice.user_id.clone(): { alice.device_id.clone(): { "signatures": { alice.user_id.clone(): { format!("ed25519:{}", alice.device_id): "forged" } } } } });
    s.post("/_matrix/client/v3/keys/signatures/upload", Some(&bob.token), forged).await;
    let (_, body) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.clone(): [] } }),
        )
        .await;
    assert_eq!(
        body["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id]
            [format!("ed25519:{}", alice.device_id)],
        "real"
    );
}

#[tokio::test]
async fn malformed_bodies_found_by_fuzzing_get_clear_errors() {
    let s = TestServer::start().await;
    for body in [json!({}), json!({ "user": "x" })] {
        let (status, resp) = s.post("/_matrix/client/v3/login", None, body.clone()).await;
        assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    }
    let alice = s.register("alice").await;
    let (status, resp) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.token),
            json!({ "presence": "bogus" }),
        )
        .await;
    assert_eq!((status, resp["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let upload = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let uri = upload.json::<serde_json::Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let media_id = uri.rsplit('/').next().unwrap();
    let (status, _) = s
        .get(
            &format!("/_matrix/client/v1/media/thumbnail/porch.test/{media_id}?width=10&height=10"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 404, "text has no thumbnail");
    let (status, resp) =
        s.get("/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled", Some(&alice.token)).await;
    assert_eq!((status, resp["enabled"].as_bool()), (200, Some(false)));
    let (status, resp) =
        s.get("/_matrix/client/v3/pushrules/global/underride/.m.rule.message/actions", Some(&alice.token)).await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp["actions"].as_array().is_some_and(|a| !a.is_empty()));
}

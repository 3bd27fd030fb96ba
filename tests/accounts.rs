//! Discovery, registration, login, devices, profiles, and their refusals.

mod common;

use common::{TestServer, enc};
use serde_json::json;

#[tokio::test]
async fn discovery_endpoints() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, 200);
    assert!(body["versions"].as_array().unwrap().iter().any(|v| v == "v1.11"), "{body}");
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, 200);
    assert!(body["m.homeserver"]["base_url"].as_str().unwrap().starts_with("http://"));
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["m.server"], "porch.test");
    let alice = s.register("alice").await;
    let (status, body) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["capabilities"]["m.room_versions"]["default"], "12");
    for v in ["10", "11", "12"] {
        assert_eq!(body["capabilities"]["m.room_versions"]["available"][v], "stable", "{body}");
    }
    let (status, body) = s.get("/_matrix/client/v3/capabilities", None).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
}

#[tokio::test]
async fn unknown_endpoints_and_methods_are_matrix_errors() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/v3/no_such_thing", None).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    let (status, body) = s.request(reqwest::Method::DELETE, "/_matrix/client/versions", None, None).await;
    assert_eq!((status, body["errcode"].as_str()), (405, Some("M_UNRECOGNIZED")));
}

#[tokio::test]
async fn register_dummy_first_call_and_uia_flow() {
    let s = TestServer::start().await;
    // No auth: 401 with the dummy flow and a session.
    let (status, body) =
        s.post("/_matrix/client/v3/register", None, json!({ "username": "bob", "password": "pw123456" })).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy");
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!({ "username": "bob", "password": "pw123456", "auth": { "type": "m.login.dummy", "session": session } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@bob:porch.test");
    assert!(body["access_token"].is_string());
    // Same name again: taken.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "bob", "password": "x", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "Bad Name!", "password": "x", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_USERNAME")));
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=bob", None).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")));
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=carol", None).await;
    assert_eq!((status, body["available"].as_bool()), (200, Some(true)));
    // Bad JSON is refused and changes nothing.
    let resp = s.http.post(format!("{}/_matrix/client/v3/register", s.base)).body("{not json").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
}

/// Element's sign-up page first posts a body with no password and no
/// `auth` (sometimes `"auth": {}`) and must get the flows (401), as from
/// Synapse; so must every UIA endpoint given an empty `auth`.
#[tokio::test]
async fn first_calls_without_auth_get_the_flows() {
    let s = TestServer::start().await;
    for body in [
        json!({}),
        json!({ "initial_device_display_name": "app.element.io" }),
        json!({ "username": "erin" }),
        json!({ "username": "erin", "password": "pw123456" }),
        json!({ "username": "erin", "auth": {} }),
        json!({ "auth": {}, "password": "pw123456" }),
    ] {
        let (status, answer) = s.post("/_matrix/client/v3/register", None, body.clone()).await;
        assert_eq!(status, 401, "{body} → {answer}");
        assert_eq!(answer["flows"][0]["stages"][0], "m.login.dummy", "{answer}");
        assert!(answer["session"].is_string(), "{answer}");
        assert!(answer.get("errcode").is_none(), "a first call is not an error: {answer}");
    }
    let (_, available) = s.get("/_matrix/client/v3/register/available?username=erin", None).await;
    assert_eq!(available["available"], true, "asking for the flows made no account");
    // Completing the stage without a password is refused and makes nothing.
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!({ "username": "erin", "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");
    let (_, available) = s.get("/_matrix/client/v3/register/available?username=erin", None).await;
    assert_eq!(available["available"], true);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "erin", "password": "pw123456", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    // UIA endpoints with `auth: {}` answer the password flow.
    for (path, body) in [
        ("/_matrix/client/v3/account/password", json!({ "new_password": "pw654321", "auth": {} })),
        ("/_matrix/client/v3/delete_devices", json!({ "devices": ["NOPE"], "auth": {} })),
        ("/_matrix/client/v3/account/deactivate", json!({ "auth": {} })),
    ] {
        let (status, answer) = s.post(path, Some(&token), body).await;
        assert_eq!(status, 401, "{path} → {answer}");
        assert_eq!(answer["flows"][0]["stages"][0], "m.login.password", "{path} → {answer}");
        assert!(answer.get("errcode").is_none(), "{path} → {answer}");
    }
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&token)).await;
    assert_eq!(status, 200, "the account is still there");
}

/// A registration's parameters are remembered by its UIA session (the
/// password as a hash), and the completed session retried gives the same
/// account, only to whoever knows its password; `Bob` registers `@bob`.
#[tokio::test]
async fn registration_sessions_remember_parameters_and_are_idempotent() {
    let s = TestServer::start().await;
    let first = json!({ "username": "Frank", "password": "pw123456", "device_id": "XYZZY", "initial_device_display_name": "phone" });
    let (status, body) = s.post("/_matrix/client/v3/register", None, first).await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let auth = json!({ "auth": { "type": "m.login.dummy", "session": session } });
    let (status, body) = s.post("/_matrix/client/v3/register", None, auth.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["user_id"].as_str(), body["device_id"].as_str()), (Some("@frank:porch.test"), Some("XYZZY")));
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = s.get("/_matrix/client/v3/devices/XYZZY", Some(token)).await;
    assert_eq!(device["display_name"], "phone");
    let (status, body) = s
        .post("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "frank" }, "password": "pw123456" }))
        .await;
    assert_eq!(status, 200, "the remembered password is the account's: {body}");

    // Retried: the same account, not a second one, and only with its password.
    let (status, body) = s.post("/_matrix/client/v3/register", None, auth.clone()).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")), "{body}");
    let mut wrong = auth.clone();
    wrong["password"] = json!("not the password");
    let (status, body) = s.post("/_matrix/client/v3/register", None, wrong).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let mut right = auth;
    right["password"] = json!("pw123456");
    let (status, body) = s.post("/_matrix/client/v3/register", None, right).await;
    assert_eq!((status, body["user_id"].as_str()), (200, Some("@frank:porch.test")), "{body}");

    // inhibit_login remembered too.
    let (_, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "gail", "password": "pw123456", "inhibit_login": true }),
        )
        .await;
    let auth = json!({ "auth": { "type": "m.login.dummy", "session": body["session"] } });
    let (status, body) = s.post("/_matrix/client/v3/register", None, auth).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
}

#[tokio::test]
async fn registration_tokens() {
    let s = TestServer::start_with(common::Options {
        env: vec![("PORCH_REGISTRATION__TOKENS".into(), "[\"letmein\"]".into())],
    })
    .await;
    let (status, body) =
        s.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=letmein", None).await;
    assert_eq!((status, body["valid"].as_bool()), (200, Some(true)));
    let (status, body) =
        s.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=nope", None).await;
    assert_eq!((status, body["valid"].as_bool()), (200, Some(false)));
    // Dummy is not enough when tokens are required.
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "dan", "password": "pw", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["flows"][0]["stages"][0], "m.login.registration_token");
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!({ "username": "dan", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "wrong" } }))
        .await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_FORBIDDEN")));
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=dan", None).await;
    assert_eq!((status, body["available"].as_bool()), (200, Some(true)), "a refused registration made no account");
    let (status, body) = s
        .post("/_matrix/client/v3/register", None, json!({ "username": "dan", "password": "pw", "auth": { "type": "m.login.registration_token", "token": "letmein" } }))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn guest_registration_is_off_by_default() {
    let s = TestServer::start().await;
    let (status, body) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_GUEST_ACCESS_FORBIDDEN")), "{body}");
    let (status, stats) = s.get("/_porch/admin/v1/stats", Some(&s.register_admin("boss").await.token)).await;
    assert_eq!((status, stats["users"]["temporary"].as_u64()), (200, Some(0)), "no account was made: {stats}");
}

#[tokio::test]
async fn guest_registration_makes_temporary_account() {
    let s = TestServer::start_with(common::Options {
        env: vec![("PORCH_REGISTRATION__ALLOW_GUESTS".into(), "true".into())],
    })
    .await;
    let (status, body) = s.post("/_matrix/client/v3/register?kind=guest", None, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (status, who) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(who["is_guest"], true);
    let (status, body) = s.get("/_matrix/client/v3/publicRooms", Some(token)).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = s.post("/_matrix/client/v3/createRoom", Some(token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn login_logout_and_whoami() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (status, who) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(who["user_id"], "@alice:porch.test");
    assert!(!who["is_guest"].as_bool().unwrap_or(false));
    let (status, body) = s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse battery" })).await;
    assert_eq!(status, 200, "{body}");
    let second = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "@alice:porch.test", "password": "correct horse battery" }),
        )
        .await;
    assert_eq!(status, 200, "legacy user field: {body}");
    let third = body["access_token"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "alice", "password": "wrong" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, _) = s.post("/_matrix/client/v3/logout", Some(&second), json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some(&second)).await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&third)).await;
    assert_eq!(status, 200);
    let (status, _) = s.post("/_matrix/client/v3/logout/all", Some(&third), json!({})).await;
    assert_eq!(status, 200);
    for token in [&alice.token, &third] {
        let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(token)).await;
        assert_eq!(status, 401);
    }
}

#[tokio::test]
async fn login_is_rate_limited() {
    let s = TestServer::start_with(common::Options {
        env: vec![
            ("PORCH_RATE_LIMITS__LOGIN_BURST".into(), "3".into()),
            ("PORCH_RATE_LIMITS__LOGIN_PER_SECOND".into(), "0.01".into()),
        ],
    })
    .await;
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..4 {
        last = s
            .post("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "user": "x", "password": "y" }))
            .await;
    }
    assert_eq!(last.0, 429, "{}", last.1);
    assert_eq!(last.1["errcode"], "M_LIMIT_EXCEEDED");
    assert!(last.1["retry_after_ms"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn password_change_and_devices_need_uia() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (status, body) = s
        .post("/_matrix/client/v3/account/password", Some(&alice.token), json!({ "new_password": "new password 1" }))
        .await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&alice.token),
            json!({ "new_password": "new password 1", "logout_devices": false, "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse battery", "session": session } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "alice", "password": "new password 1" }),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = s.get("/_matrix/client/v3/devices", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            Some(&alice.token),
            json!({ "display_name": "laptop" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get(&format!("/_matrix/client/v3/devices/{}", alice.device_id), Some(&alice.token)).await;
    assert_eq!(body["display_name"], "laptop");
    let (status, body) = s.get("/_matrix/client/v3/devices/NOPE", Some(&alice.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (status, body) = s
        .request(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", alice.device_id),
            Some(&alice.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    // A session started for one device cannot delete another; nor do
    // someone else's credentials confirm it (403 both, as on Synapse).
    let (_, listed) = s.get("/_matrix/client/v3/devices", Some(&alice.token)).await;
    let other = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] != alice.device_id.as_str())
        .unwrap()["device_id"]
        .clone();
    let alice_auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "new password 1", "session": session });
    let (status, body) = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&alice.token),
            json!({ "devices": [other], "auth": alice_auth }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    s.register("bob").await;
    let bob_auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": "correct horse battery", "session": session });
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    let (status, body) =
        s.request(reqwest::Method::DELETE, &path, Some(&alice.token), Some(json!({ "auth": bob_auth }))).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (_, listed) = s.get("/_matrix/client/v3/devices", Some(&alice.token)).await;
    assert_eq!(listed["devices"].as_array().unwrap().len(), 2, "nothing was deleted");
    let (status, body) =
        s.request(reqwest::Method::DELETE, &path, Some(&alice.token), Some(json!({ "auth": alice_auth }))).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, 401, "deleting a device logs it out");
}

#[tokio::test]
async fn deactivation_logs_out_and_blocks_login() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "correct horse battery" });
    let (status, body) =
        s.post("/_matrix/client/v3/account/deactivate", Some(&alice.token), json!({ "auth": auth })).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, 401);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({ "type": "m.login.password", "user": "alice", "password": "correct horse battery" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_USER_DEACTIVATED")));
    let (status, body) = s
        .post(
            "/_matrix/client/v3/register",
            None,
            json!({ "username": "alice", "password": "x", "auth": { "type": "m.login.dummy" } }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "ids are never reused");
    let bob = s.register("bob").await;
    let (status, _) = s.join(&bob, &room).await;
    assert_eq!(status, 403, "private room");
}

#[tokio::test]
async fn profile_changes_reach_member_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let (status, _) = s
        .put(
            "/_matrix/client/v3/profile/@alice:porch.test/displayname",
            Some(&alice.token),
            json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/_matrix/client/v3/profile/@alice:porch.test", Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["displayname"], "Alice A.");
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/@alice:porch.test", enc(&room)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["displayname"], "Alice A.");
    let (status, _) = s
        .put(
            "/_matrix/client/v3/profile/@alice:porch.test/avatar_url",
            Some(&alice.token),
            json!({ "avatar_url": "mxc://porch.test/abc" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = s.get("/_matrix/client/v3/profile/@alice:porch.test/avatar_url", Some(&alice.token)).await;
    assert_eq!(body["avatar_url"], "mxc://porch.test/abc");
    let bob = s.register("bob").await;
    let (status, body) = s
        .put(
            "/_matrix/client/v3/profile/@alice:porch.test/displayname",
            Some(&bob.token),
            json!({ "displayname": "pwned" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let (status, body) = s.get("/_matrix/client/v3/profile/@nobody:porch.test", Some(&bob.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
}

#[tokio::test]
async fn shared_secret_registration_like_synapse() {
    use hmac::{Hmac, Mac};
    let s = TestServer::start().await;
    let (status, body) = s.get("/_synapse/admin/v1/register", None).await;
    assert_eq!(status, 200);
    let nonce = body["nonce"].as_str().unwrap().to_owned();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test-secret").unwrap();
    mac.update(format!("{nonce}\0admin1\0pw-admin\0admin").as_bytes());
    let digest = hex::encode(mac.finalize().into_bytes());
    let (status, body) = s
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": nonce, "username": "admin1", "password": "pw-admin", "admin": true, "mac": digest }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@admin1:porch.test");
    // A nonce works once; a wrong MAC is refused.
    let (status, _) = s
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": nonce, "username": "admin2", "password": "pw", "admin": false, "mac": digest }),
        )
        .await;
    assert_eq!(status, 400);
    let (_, body) = s.get("/_synapse/admin/v1/register", None).await;
    let (status, body) = s
        .post(
            "/_synapse/admin/v1/register",
            None,
            json!({ "nonce": body["nonce"], "username": "admin2", "password": "pw", "admin": false, "mac": "00" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
}

#[tokio::test]
async fn client_startup_endpoints_answer_truthfully() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (status, _) = s
        .put(
            "/_matrix/client/v3/presence/@alice:porch.test/status",
            Some(&alice.token),
            json!({ "presence": "online", "status_msg": "here" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/_matrix/client/v3/presence/@alice:porch.test/status", Some(&bob.token)).await;
    assert_eq!(status, 200);
    assert_eq!((body["presence"].as_str(), body["status_msg"].as_str()), (Some("online"), Some("here")));
    let (status, _) = s
        .put("/_matrix/client/v3/presence/@alice:porch.test/status", Some(&bob.token), json!({ "presence": "offline" }))
        .await;
    assert_eq!(status, 403);
    let (status, body) = s.get("/_matrix/client/v3/pushers", Some(&alice.token)).await;
    assert_eq!((status, body["pushers"].as_array().map_or(0, Vec::len)), (200, 0), "{body}");
    let (status, body) = s.get("/_matrix/client/v3/thirdparty/protocols", Some(&alice.token)).await;
    assert_eq!((status, body.as_object().map(|o| o.len())), (200, Some(0)));
    let (status, body) = s.get("/_matrix/client/v3/account/3pid", Some(&alice.token)).await;
    assert_eq!((status, body["threepids"].as_array().map_or(0, Vec::len)), (200, 0), "{body}");
    let (status, body) = s.get("/_matrix/client/v3/room_keys/version", Some(&alice.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
}

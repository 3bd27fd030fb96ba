//! Email invitations end to end, through the real binary and a real SMTP
//! server on loopback (aiosmtpd, in a virtual environment made on first
//! use): from the admin's invitation to an external user talking in both
//! rooms; the pending marker members see; every refusal changing nothing;
//! the quota; revocation, expiry and resending; an address that already
//! has an account; and a mail that waits for the SMTP server across a
//! restart.

mod common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use common::{Options, TestServer, User, enc, free_port, sync_until, timeline};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A venv with aiosmtpd, made once per target directory.
fn smtp_python() -> PathBuf {
    common::python_venv("smtp-venv", "import aiosmtpd", &["aiosmtpd==1.4.6"], "")
}

/// A running SMTP server and the mails it received, as JSON.
struct SmtpSink {
    _child: tokio::process::Child,
    mails: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl SmtpSink {
    async fn start(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// `args`: the script's options (`--tls CERT KEY`, `--auth USER PASSWORD`).
    async fn start_with(port: u16, args: &[&str]) -> Self {
        let python = tokio::task::spawn_blocking(smtp_python).await.unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        assert!(matches!(first, Ok(Ok(Some(ref l))) if l == "listening"), "SMTP server did not start: {first:?}");
        let (tx, mails) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(serde_json::from_str(&line).expect("a JSON line"));
            }
        });
        Self { _child: child, mails }
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), self.mails.recv())
            .await
            .expect("no mail arrived within 30 s")
            .expect("the SMTP server stopped")
    }
}

fn mail_options(port: u16, extra: &[(&str, &str)]) -> Options {
    let mut env = vec![
        ("PORCH_EMAIL__SMTP_URL".to_owned(), format!("smtp://127.0.0.1:{port}")),
        ("PORCH_EMAIL__FROM".to_owned(), "Porch Test <chat@porch.test>".to_owned()),
        ("PORCH_EMAIL__MAX_RETRY_INTERVAL".to_owned(), "1s".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Options { env }
}

/// The link's token: the last path segment of `…/invite/{token}`.
fn token_of(link: &str) -> String {
    link.rsplit('/').next().unwrap().to_owned()
}

fn link_in(text: &str) -> String {
    text.split_whitespace().find(|w| w.contains("/invite/")).expect("a link in the mail").to_owned()
}

async fn private_room(s: &TestServer, admin: &User, name: &str) -> String {
    s.create_room(admin, json!({ "preset": "private_chat", "name": name })).await
}

/// The admin's two private rooms, "Plans" (which the member bob joined) and
/// "Budget"; bob and the rooms' ids.
async fn plans_with_bob_and_budget(s: &TestServer, admin: &User) -> (User, String, String) {
    let bob = s.register("bob").await;
    let plans = private_room(s, admin, "Plans").await;
    let budget = private_room(s, admin, "Budget").await;
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&plans)),
        Some(&admin.token),
        json!({ "user_id": bob.user_id }),
    )
    .await;
    assert_eq!(s.join(&bob, &plans).await.0, 200);
    (bob, plans, budget)
}

async fn invite(s: &TestServer, admin: &User, body: Value) -> (u16, Value) {
    s.post("/_porch/admin/v1/invitations", Some(&admin.token), body).await
}

async fn invitations(s: &TestServer, admin: &User) -> Vec<Value> {
    let (status, body) = s.get("/_porch/admin/v1/invitations", Some(&admin.token)).await;
    assert_eq!(status, 200, "{body}");
    body["invitations"].as_array().unwrap().clone()
}

async fn stats(s: &TestServer, admin: &User) -> Value {
    let (status, body) = s.get("/_porch/admin/v1/stats", Some(&admin.token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn marker(s: &TestServer, user: &User, room: &str, id: &str) -> (u16, Value) {
    s.get(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.third_party_invite/{}", enc(room), enc(id)),
        Some(&user.token),
    )
    .await
}

async fn accept(s: &TestServer, token: &str, username: &str, password: &str) -> (u16, Value) {
    s.post(
        &format!("/_porch/client/v1/invitations/{}/accept", enc(token)),
        None,
        json!({ "username": username, "password": password, "display_name": "Ana" }),
    )
    .await
}

#[tokio::test]
async fn from_the_invitation_mail_to_an_external_user_in_both_rooms() {
    let port = free_port();
    let mut sink = SmtpSink::start(port).await;
    let s = TestServer::start_with(mail_options(port, &[("PORCH_GUESTS__MAX_EXTERNAL_USERS", "5")])).await;
    let admin = s.register_admin("boss").await;
    let (bob, plans, budget) = plans_with_bob_and_budget(&s, &admin).await;
    let mut bob_since = Some(s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned());

    let (status, rooms) = s.get("/_porch/admin/v1/invitable_rooms", Some(&admin.token)).await;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 2, "{rooms}");

    let (status, created) = invite(
        &s,
        &admin,
        json!({ "email": " Ana@Example.ORG ", "rooms": [plans, budget], "message": "Welcome aboard <b>now</b>" }),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["email"], "Ana@example.org");
    assert!(created["expires_at"].as_u64().unwrap() > created["created_at"].as_u64().unwrap());

    // The mail, over real SMTP: both parts, the rooms, the inviter, the link.
    let mail = sink.next().await;
    assert_eq!(mail["rcpt_tos"], json!(["Ana@example.org"]), "{mail}");
    assert!(mail["subject"].as_str().unwrap().contains("boss"), "{mail}");
    let text = mail["text"].as_str().unwrap();
    for part in ["Plans", "Budget", "Welcome aboard", "/invite/"] {
        assert!(text.contains(part), "{part} in {text}");
    }
    let link = link_in(text);
    assert_eq!(link, created["link"].as_str().unwrap());
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&format!("href=\"{link}\"")), "{mail}");
    // What the inviter typed is text in the HTML part, never markup.
    assert!(html.contains("Welcome aboard &lt;b&gt;now&lt;/b&gt;") && !html.contains("<b>now"), "{html}");
    let token = token_of(&link);

    // Bob sees the pending invitation as Element would: a third-party invite.
    let pending = sync_until(&s, &bob, &mut bob_since, "the pending marker", |sync| {
        timeline(sync, &plans).into_iter().find(|e| e["type"] == "m.room.third_party_invite").cloned()
    })
    .await;
    assert_eq!(pending["content"]["display_name"], "A…@example.org", "{pending}");
    assert_eq!(pending["state_key"], id.as_str());
    let st = stats(&s, &admin).await;
    assert_eq!((st["invitations"]["pending"].as_u64(), st["users"]["external"].as_u64()), (Some(1), Some(0)), "{st}");

    // The page's preview.
    let (status, preview) = s.get(&format!("/_porch/client/v1/invitations/{}", enc(&token)), None).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["inviter"]["user_id"], admin.user_id.as_str());
    assert_eq!(preview["email"], "A…@example.org");
    let names: Vec<&str> = preview["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Plans", "Budget"]);

    // A weak password or a taken name: refused, nothing made.
    let (status, weak) = accept(&s, &token, "ana", "short").await;
    assert_eq!((status, weak["errcode"].as_str()), (400, Some("M_WEAK_PASSWORD")), "{weak}");
    let (status, taken) = accept(&s, &token, "bob", "a long enough password").await;
    assert_eq!((status, taken["errcode"].as_str()), (400, Some("M_USER_IN_USE")), "{taken}");
    assert_eq!(stats(&s, &admin).await["users"]["external"], 0);

    let (status, accepted) = accept(&s, &token, "ana", "a long enough password").await;
    assert_eq!(status, 200, "{accepted}");
    let ana = User {
        user_id: accepted["user_id"].as_str().unwrap().to_owned(),
        token: accepted["access_token"].as_str().unwrap().to_owned(),
        device_id: accepted["device_id"].as_str().unwrap().to_owned(),
    };
    assert_eq!(accepted["rooms"], json!([plans, budget]));
    let (_, whoami) = s.get("/_matrix/client/v3/account/whoami", Some(&ana.token)).await;
    assert_eq!(whoami["is_guest"], true, "external accounts are marked: {whoami}");
    // The membership replaces the marker: a third-party-signed invite, then the join.
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&plans), enc(&ana.user_id)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(member["membership"], "join", "{member}");
    let invite_event = sync_until(&s, &bob, &mut bob_since, "ana's invite", |sync| {
        timeline(sync, &plans)
            .into_iter()
            .find(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite")
            .cloned()
    })
    .await;
    assert_eq!(invite_event["content"]["third_party_invite"]["signed"]["token"], id.as_str(), "{invite_event}");
    assert_eq!(invite_event["sender"], admin.user_id.as_str());

    for room in [&plans, &budget] {
        assert_eq!(s.send_text_status(&ana, room, &format!("hello {room}")).await, 200);
    }
    sync_until(&s, &bob, &mut bob_since, "ana's message", |sync| {
        timeline(sync, &plans)
            .into_iter()
            .find(|e| e["sender"] == ana.user_id.as_str() && e["type"] == "m.room.message")
            .cloned()
    })
    .await;
    let st = stats(&s, &admin).await;
    assert_eq!((st["invitations"]["pending"].as_u64(), st["users"]["external"].as_u64()), (Some(0), Some(1)), "{st}");
    let listed = invitations(&s, &admin).await;
    assert_eq!(listed[0]["status"], "accepted");
    assert_eq!(listed[0]["accepted_by"], ana.user_id.as_str());
    assert_eq!(listed[0]["delivery"]["state"], "sent", "{}", listed[0]);

    // Twice: refused.
    let (status, again) = accept(&s, &token, "ana2", "a long enough password").await;
    assert_eq!((status, again["errcode"].as_str()), (403, Some("DEV.PORCH.INVITATION_USED")), "{again}");
    // External users' rights are the guest policy's.
    assert_eq!(s.get("/_matrix/client/v3/publicRooms", Some(&ana.token)).await.0, 403);

    // The admin manages the external user's rooms.
    let (_, users) = s.get("/_porch/admin/v1/users?kind=external", Some(&admin.token)).await;
    assert_eq!(users["users"][0]["email"], "Ana@example.org", "{users}");
    assert_eq!(users["users"][0]["rooms"].as_array().unwrap().len(), 2, "{users}");
    let path = format!("/_porch/admin/v1/users/{}/rooms/{}", enc(&ana.user_id), enc(&budget));
    assert_eq!(s.request(reqwest::Method::DELETE, &path, Some(&admin.token), None).await.0, 200);
    assert_eq!(s.send_text_status(&ana, &budget, "still here?").await, 403);
    let (status, added) = s
        .post(
            &format!("/_porch/admin/v1/users/{}/rooms", enc(&ana.user_id)),
            Some(&admin.token),
            json!({ "rooms": [budget] }),
        )
        .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(s.send_text_status(&ana, &budget, "back again").await, 200);

    // The same address again: ana's account is invited, no second account.
    let third = private_room(&s, &admin, "Third").await;
    let (status, direct) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [third] })).await;
    assert_eq!(status, 200, "{direct}");
    assert_eq!(direct["invited_user_id"], ana.user_id.as_str(), "{direct}");
    assert!(direct["link"].is_null());
    let mut ana_since = None;
    sync_until(&s, &ana, &mut ana_since, "the direct invite", |sync| sync["rooms"]["invite"].get(&third).cloned())
        .await;
    let notice = sink.next().await;
    assert!(notice["text"].as_str().unwrap().contains(&ana.user_id), "{notice}");
    assert_eq!(stats(&s, &admin).await["users"]["external"], 1);

    // Deactivation takes them out everywhere.
    let (status, _) = s
        .post(&format!("/_porch/admin/v1/users/{}/deactivate", enc(&ana.user_id)), Some(&admin.token), json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&plans), enc(&ana.user_id)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(member["membership"], "leave", "{member}");
    assert_eq!(stats(&s, &admin).await["users"]["external"], 0);
}

#[tokio::test]
async fn refusals_change_nothing_and_the_quota_holds() {
    // No SMTP server: mails go to the outbox.
    let s = TestServer::start_with(Options {
        env: vec![
            ("PORCH_GUESTS__MAX_EXTERNAL_USERS".into(), "1".into()),
            ("PORCH_GUESTS__ALLOWED_EMAIL_DOMAINS".into(), r#"["example.org"]"#.into()),
        ],
    })
    .await;
    let admin = s.register_admin("boss").await;
    let member = s.register("mel").await;
    let room = private_room(&s, &admin, "Plans").await;
    let not_mine = private_room(&s, &member, "Mel's").await;
    let outbox = |token: String| {
        let hs = &s.hs;
        async move {
            let (status, body) = hs.get("/_porch/admin/v1/outbox", Some(&token)).await;
            assert_eq!(status, 200, "{body}");
            body["mails"].as_array().unwrap().clone()
        }
    };
    let third_party_invites = |token: String, room: String| {
        let hs = &s.hs;
        async move {
            let (_, state) = hs.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), Some(&token)).await;
            state.as_array().unwrap().iter().filter(|e| e["type"] == "m.room.third_party_invite").count()
        }
    };

    let refusals: [(Value, u16, &str); 7] = [
        (json!({ "email": "not an address", "rooms": [room] }), 400, "M_INVALID_PARAM"),
        (json!({ "email": "ana@elsewhere.net", "rooms": [room] }), 403, "M_FORBIDDEN"),
        (json!({ "email": "ana@example.org", "rooms": [not_mine] }), 403, "M_FORBIDDEN"),
        (json!({ "email": "ana@example.org", "rooms": ["!nowhere:porch.test"] }), 404, "M_NOT_FOUND"),
        (json!({ "email": "ana@example.org", "rooms": [] }), 400, "M_INVALID_PARAM"),
        (json!({ "email": "ana@example.org", "rooms": [room], "message": "x".repeat(1001) }), 400, "M_INVALID_PARAM"),
        (json!({ "email": "ana@example.org", "rooms": [room], "expires_in_ms": 0 }), 400, "M_INVALID_PARAM"),
    ];
    for (body, status, errcode) in refusals {
        let (got, answer) = invite(&s, &admin, body.clone()).await;
        assert_eq!((got, answer["errcode"].as_str()), (status, Some(errcode)), "{body}: {answer}");
    }
    let (got, answer) = invite(&s, &member, json!({ "email": "ana@example.org", "rooms": [not_mine] })).await;
    assert_eq!((got, answer["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "not an admin: {answer}");
    assert!(invitations(&s, &admin).await.is_empty());
    assert!(outbox(admin.token.clone()).await.is_empty());
    assert_eq!(third_party_invites(admin.token.clone(), room.clone()).await, 0);

    // One fits the quota; its mail waits in the outbox with the link.
    let (status, first) = invite(&s, &admin, json!({ "email": "ana@sub.example.org", "rooms": [room] })).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["delivery"]["state"], "logged");
    let mails = outbox(admin.token.clone()).await;
    assert_eq!(mails.len(), 1);
    assert!(mails[0]["text"].as_str().unwrap().contains(first["link"].as_str().unwrap()));
    // A second would exceed it (the pending one counts): refused, nothing changed.
    let (status, over) = invite(&s, &admin, json!({ "email": "bo@example.org", "rooms": [room] })).await;
    assert_eq!((status, over["errcode"].as_str()), (403, Some("M_USER_LIMIT_EXCEEDED")), "{over}");
    assert_eq!(invitations(&s, &admin).await.len(), 1);
    assert_eq!(outbox(admin.token.clone()).await.len(), 1);
    assert_eq!(third_party_invites(admin.token.clone(), room.clone()).await, 1);

    // Resend: a new link; the old one stops working.
    let first_id = first["id"].as_str().unwrap().to_owned();
    let old_token = token_of(first["link"].as_str().unwrap());
    let (status, _) =
        s.post(&format!("/_porch/admin/v1/invitations/{first_id}/resend"), Some(&admin.token), json!({})).await;
    assert_eq!(status, 200);
    let mails = outbox(admin.token.clone()).await;
    assert_eq!(mails.len(), 2);
    let new_token = token_of(&link_in(mails[0]["text"].as_str().unwrap()));
    assert_ne!(new_token, old_token);
    assert_eq!(s.get(&format!("/_porch/client/v1/invitations/{old_token}"), None).await.0, 404);
    assert_eq!(s.get(&format!("/_porch/client/v1/invitations/{new_token}"), None).await.0, 200);

    // Revoke: the link is gone, the marker leaves, the quota frees up.
    let path = format!("/_porch/admin/v1/invitations/{first_id}");
    let (status, revoked) = s.request(reqwest::Method::DELETE, &path, Some(&admin.token), None).await;
    assert_eq!((status, revoked["status"].as_str()), (200, Some("revoked")), "{revoked}");
    let (status, gone) = s.get(&format!("/_porch/client/v1/invitations/{new_token}"), None).await;
    assert_eq!((status, gone["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    assert_eq!(accept(&s, &new_token, "ana", "a long enough password").await.0, 404);
    let (_, withdrawn) = marker(&s, &admin, &room, &first_id).await;
    assert_eq!(withdrawn, json!({}), "the marker is emptied");
    assert_eq!(stats(&s, &admin).await["invitations"]["pending"], 0);

    // An expired invitation is refused, and its marker leaves by itself.
    let (status, short) =
        invite(&s, &admin, json!({ "email": "cy@example.org", "rooms": [room], "expires_in_ms": 300 })).await;
    assert_eq!(status, 200, "{short}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let short_token = token_of(short["link"].as_str().unwrap());
    let (status, expired) = s.get(&format!("/_porch/client/v1/invitations/{short_token}"), None).await;
    assert_eq!((status, expired["errcode"].as_str()), (403, Some("DEV.PORCH.INVITATION_EXPIRED")), "{expired}");
    let (status, _) = accept(&s, &short_token, "cy", "a long enough password").await;
    assert_eq!(status, 403);
    let short_id = short["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while marker(&s, &admin, &room, short_id).await.1 != json!({}) {
        assert!(std::time::Instant::now() < deadline, "the expired marker stayed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(stats(&s, &admin).await["users"]["external"], 0, "nothing was made");
    let (status, _) = s.get("/_matrix/client/v3/profile/@cy:porch.test", Some(&admin.token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_mail_waits_for_the_smtp_server_across_a_restart() {
    let port = free_port();
    let options = mail_options(port, &[]);
    let mut s = TestServer::start_with(options.clone()).await;
    let admin = s.register_admin("boss").await;
    let room = private_room(&s, &admin, "Plans").await;
    let (status, created) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [room] })).await;
    assert_eq!(status, 200, "{created}");
    // Nothing listens yet: the delivery is failing, and retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let listed = invitations(&s, &admin).await;
        let delivery = &listed[0]["delivery"];
        if delivery["state"] == "failing" && delivery["attempts"].as_u64() >= Some(2) {
            assert!(delivery["last_error"].is_string(), "{delivery}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no failing delivery reported: {delivery}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.kill();
    let restarted = TestServer::launch(&s.dir, &options);
    let mut sink = SmtpSink::start(port).await;
    let mail = sink.next().await;
    assert_eq!(mail["rcpt_tos"], json!(["ana@example.org"]));
    assert_eq!(link_in(mail["text"].as_str().unwrap()), created["link"].as_str().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while invitations(&restarted, &admin).await[0]["delivery"]["state"] != "sent" {
        assert!(std::time::Instant::now() < deadline, "the delivery was not recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_invitation_page_in_headless_chromium() {
    let port = free_port();
    let mut sink = SmtpSink::start(port).await;
    let s = TestServer::start_with(mail_options(port, &[])).await;
    let admin = s.register_admin("boss").await;
    s.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&admin.user_id)),
        Some(&admin.token),
        json!({ "displayname": "Berta Boss" }),
    )
    .await;
    let (bob, plans, budget) = plans_with_bob_and_budget(&s, &admin).await;
    let bob_since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    let (status, created) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [plans, budget] })).await;
    assert_eq!(status, 200, "{created}");
    // The page is opened from the link in the mail, as the person would.
    let link = link_in(sink.next().await["text"].as_str().unwrap());

    let seen = common::browser_scenario(
        "invite_page.mjs",
        json!({
            "link": link, "base": s.base, "memberToken": bob.token, "firstRoom": plans,
            "inviterName": "Berta Boss", "roomNames": ["Plans", "Budget"], "shots": env!("CARGO_TARGET_TMPDIR"),
        }),
    )
    .await;
    assert_eq!(seen["roomList"].as_array().map(Vec::len), Some(2), "{seen}");

    // What the page did is what the server holds: an external account, in both rooms.
    let (_, users) = s.get("/_porch/admin/v1/users?kind=external", Some(&admin.token)).await;
    let ana = &users["users"][0];
    assert_eq!(
        (ana["email"].as_str(), ana["rooms"].as_array().map(Vec::len)),
        (Some("ana@example.org"), Some(2)),
        "{users}"
    );
    let ana_id = ana["user_id"].as_str().unwrap();
    let sync = s.sync(&bob, Some(&bob_since), 0).await;
    let from_ana: Vec<_> = timeline(&sync, &plans)
        .into_iter()
        .filter(|e| e["sender"] == ana_id && e["type"] == "m.room.message")
        .collect();
    assert_eq!(from_ana.len(), 1, "{sync}");
    assert_eq!(from_ana[0]["content"]["body"], "hello Plans from the browser");
    let st = stats(&s, &admin).await;
    assert_eq!((st["users"]["external"].as_u64(), st["invitations"]["pending"].as_u64()), (Some(1), Some(0)), "{st}");
}

#[tokio::test]
async fn the_admin_console_in_headless_chromium() {
    // No SMTP server: the mail goes to the outbox, and the console shows the link.
    let s =
        TestServer::start_with(Options { env: vec![("PORCH_GUESTS__MAX_EXTERNAL_USERS".into(), "100".into())] }).await;
    let admin = s.register_admin("boss").await;
    s.register("bob").await;
    let plans = private_room(&s, &admin, "Plans").await;
    let (visit, _, link_id) = s.guest_room(&admin, json!({ "name": "Visit" })).await;
    // One external user already, for the dashboard's "1 / 100".
    let (_, first) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [plans] })).await;
    let (status, ana) = accept(&s, &token_of(first["link"].as_str().unwrap()), "ana", "a long enough password").await;
    assert_eq!(status, 200, "{ana}");

    let seen = common::browser_scenario(
        "admin_console.mjs",
        json!({
            "base": s.base,
            "admin": { "user": "boss", "password": "admin password 1" },
            "member": { "user": "bob", "password": "correct horse battery" },
            "email": "carol@example.org", "roomName": "Plans", "guestRoomName": "Visit",
            "externalUser": ana["user_id"], "shots": env!("CARGO_TARGET_TMPDIR"),
        }),
    )
    .await;

    // The console acted through the admin API: the invitation was made, then revoked.
    let carol = invitations(&s, &admin).await.into_iter().find(|i| i["email"] == "carol@example.org").expect("listed");
    assert_eq!(carol["status"], "revoked", "{carol}");
    assert_eq!(carol["message"], "See you there");
    let lifetime = carol["expires_at"].as_u64().unwrap() - carol["created_at"].as_u64().unwrap();
    assert_eq!(lifetime, 30 * 24 * 3600 * 1000, "the chosen expiry");
    assert_eq!(marker(&s, &admin, &plans, carol["id"].as_str().unwrap()).await.1, json!({}), "marker withdrawn");
    let (status, _) =
        s.get(&format!("/_porch/client/v1/invitations/{}", enc(&token_of(seen["link"].as_str().unwrap()))), None).await;
    assert_eq!(status, 404, "the revoked link no longer works");
    let (_, outbox) = s.get("/_porch/admin/v1/outbox", Some(&admin.token)).await;
    assert!(outbox["mails"].as_array().unwrap().iter().any(|m| m["to"] == "carol@example.org"), "{outbox}");
    // The refusal made nothing: carol's is the only new invitation.
    assert_eq!(invitations(&s, &admin).await.len(), 2);

    let (_, rooms) = s.get("/_porch/admin/v1/guest_rooms", Some(&admin.token)).await;
    let room =
        rooms["guest_rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == visit.as_str()).unwrap().clone();
    assert_eq!(room["ended"], true, "{room}");
    let link = room["links"].as_array().unwrap().iter().find(|l| l["id"] == link_id.as_str()).unwrap().clone();
    assert_eq!(link["revoked"], true, "{link}");
}

/// A certificate for 127.0.0.1 that only `email.trusted_ca` vouches for:
/// the folder holding it, and the paths of the certificate and its key.
fn mail_server_certificate() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let certs = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (certs, cert, key)
}

#[tokio::test]
async fn starttls_and_a_login_to_the_mail_server() {
    // A mail server that insists on STARTTLS and AUTH.
    let (_certs, cert, key) = mail_server_certificate();
    let port = free_port();
    let mut sink = SmtpSink::start_with(
        port,
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap(), "--auth", "mailer", "s@cret pass"],
    )
    .await;
    let with_password = |password: &str| {
        let url = format!("smtp://mailer:{password}@127.0.0.1:{port}?tls=required");
        mail_options(
            port,
            &[("PORCH_EMAIL__SMTP_URL", url.as_str()), ("PORCH_EMAIL__TRUSTED_CA", cert.to_str().unwrap())],
        )
    };

    // A wrong password: the delivery fails and says why; nothing arrives.
    let mut s = TestServer::start_with(with_password("wrong")).await;
    let admin = s.register_admin("boss").await;
    let room = private_room(&s, &admin, "Plans").await;
    let (status, created) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [room] })).await;
    assert_eq!(status, 200, "{created}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let delivery = invitations(&s, &admin).await[0]["delivery"].clone();
        if delivery["state"] == "failing" {
            assert!(delivery["last_error"].is_string(), "{delivery}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no failing delivery reported: {delivery}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tokio::time::timeout(Duration::from_millis(500), sink.mails.recv()).await.is_err(), "a mail got through");

    // The right one (its @ escaped in the URL): the queued mail goes out over TLS.
    s.kill();
    let _restarted = TestServer::launch(&s.dir, &with_password("s%40cret%20pass"));
    let mail = sink.next().await;
    assert_eq!((mail["tls"].as_bool(), mail["login"].as_str()), (Some(true), Some("mailer")), "{mail}");
    assert_eq!(link_in(mail["text"].as_str().unwrap()), created["link"].as_str().unwrap());
}

#[tokio::test]
async fn smtps_speaks_tls_from_the_first_byte() {
    let (_certs, cert, key) = mail_server_certificate();
    let port = free_port();
    let mut sink = SmtpSink::start_with(port, &["--smtps", cert.to_str().unwrap(), key.to_str().unwrap()]).await;
    let url = format!("smtps://127.0.0.1:{port}");
    let s = TestServer::start_with(mail_options(
        port,
        &[("PORCH_EMAIL__SMTP_URL", url.as_str()), ("PORCH_EMAIL__TRUSTED_CA", cert.to_str().unwrap())],
    ))
    .await;
    let admin = s.register_admin("boss").await;
    let room = private_room(&s, &admin, "Plans").await;
    let (status, created) = invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [room] })).await;
    assert_eq!(status, 200, "{created}");
    let mail = sink.next().await;
    assert_eq!(mail["tls"], true, "{mail}");
    assert_eq!(link_in(mail["text"].as_str().unwrap()), created["link"].as_str().unwrap());
}

#[tokio::test]
async fn mails_speak_the_servers_language() {
    let s = TestServer::start_with(Options { env: vec![("PORCH_EMAIL__LANGUAGE".into(), "fr".into())] }).await;
    let admin = s.register_admin("boss").await;
    let room = private_room(&s, &admin, "Projets").await;
    let (status, created) =
        invite(&s, &admin, json!({ "email": "ana@example.org", "rooms": [room], "expires_in_ms": 86_400_000 })).await;
    assert_eq!(status, 200, "{created}");
    let (_, outbox) = s.get("/_porch/admin/v1/outbox", Some(&admin.token)).await;
    let mail = &outbox["mails"][0];
    assert_eq!(mail["subject"], "boss vous invite à discuter sur porch.test", "{mail}");
    let text = mail["text"].as_str().unwrap();
    assert!(text.contains("  - Projets") && text.contains("valable 1 jour."), "{text}");
    assert_eq!(link_in(text), created["link"].as_str().unwrap());
}

//! The guest's page in real headless Chromium (Debian's `chromium`, driven
//! by playwright-core from npm): open a link, see the banner, join as a
//! guest, send a message that a member receives through `/sync`, receive
//! the member's answer; the messages for expired, unknown,
//! password-protected links and ended rooms; signing in with an account
//! of this server to join; and a user of another porch asking for an
//! invitation (and an unreachable server named).

mod common;

use common::{enc, federating_server, sync_until, timeline};
use serde_json::json;

#[tokio::test]
async fn guest_page_in_headless_chromium() {
    let (s, _) = federating_server().await;
    let (other, _) = federating_server().await;
    let remy = other.register("remy").await;
    let alice = s.register("alice").await;
    let (room, token, _) = s.guest_room(&alice, json!({ "name": "Visit", "topic": "Planning" })).await;
    let (status, expired) = s
        .post(
            &format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)),
            Some(&alice.token),
            json!({ "expires_in_ms": 1 }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, locked) = s
        .post(
            &format!("/_porch/client/v1/guest_rooms/{}/links", enc(&room)),
            Some(&alice.token),
            json!({ "password": "open sesame" }),
        )
        .await;
    let (ended_room, ended_token, _) = s.guest_room(&alice, json!({ "name": "Over" })).await;
    let (status, _) =
        s.post(&format!("/_porch/client/v1/guest_rooms/{}/end", enc(&ended_room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, 200);
    s.register("bob").await;
    let since = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;

    let scenario = json!({
        "base": s.base, "token": token, "expiredToken": expired["token"], "passwordToken": locked["token"],
        "endedToken": ended_token, "memberToken": alice.token, "roomId": room,
        "login": { "user": "bob", "password": "correct horse battery" }, "shots": env!("CARGO_TARGET_TMPDIR"),
        "remoteUser": remy.user_id, "unreachableUser": format!("@nobody:localhost:{}", common::free_port()),
    });
    let seen = common::browser_scenario("guest_page.mjs", scenario).await;
    assert_eq!(seen["banner"], "Internal");
    assert_eq!((seen["passwordJoin"].as_bool(), seen["signedIn"].as_bool()), (Some(true), Some(true)), "{seen}");

    // The member received the guest's message through /sync, from a marked guest.
    let sync = s.sync(&alice, Some(&since), 0).await;
    let events = timeline(&sync, &room);
    let message = events.iter().find(|e| e["content"]["body"] == "hello from the browser").expect("message delivered");
    let sender = message["sender"].as_str().unwrap();
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(sender)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (member["dev.porch.guest"].as_bool(), member["displayname"].as_str()),
        (Some(true), Some("Gina (guest)"))
    );

    // The user of the other server got the invitation there.
    let mut since = None;
    sync_until(&other, &remy, &mut since, "the page's invitation on the other server", |sync| {
        sync["rooms"]["invite"].get(room.as_str()).map(|_| ())
    })
    .await;
}

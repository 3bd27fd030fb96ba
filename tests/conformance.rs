//! Client-server features clients rely on, through the real binary: key
//! backup, relations and threads, search, room upgrades, the deprecated
//! `/initialSync` and `/events`, presence in sync, and the shape of sync
//! answers.

mod common;

use common::{Homeserver, TestServer, User, enc, sync_until, timeline};
use serde_json::{Value, json};

async fn send(hs: &Homeserver, user: &User, room: &str, content: Value) -> String {
    let txn = common::uuid_like();
    let (status, body) = hs
        .put(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)), Some(&user.token), content)
        .await;
    assert_eq!(status, 200, "send: {body}");
    body["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn key_backup_keeps_the_best_key_per_session_in_the_current_version() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let token = Some(alice.token.as_str());
    let (status, body) = s.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "no backup yet: {body}");

    let algorithm =
        json!({ "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": { "public_key": "abc" } });
    let (status, created) = s.post("/_matrix/client/v3/room_keys/version", token, algorithm.clone()).await;
    assert_eq!(status, 200, "{created}");
    let v1 = created["version"].as_str().unwrap().to_owned();
    let (_, info) = s.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!((info["version"].as_str(), info["count"].as_u64()), (Some(v1.as_str()), Some(0)), "{info}");
    let etag0 = info["etag"].as_str().unwrap().to_owned();

    let key = |index: u64, verified: bool, data: &str| json!({ "first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": { "ciphertext": data } });
    let path = |room: &str, session: &str, version: &str| {
        format!("/_matrix/client/v3/room_keys/keys/{}/{session}?version={version}", enc(room))
    };
    let (status, put) = s.put(&path("!r:porch.test", "s1", &v1), token, key(5, false, "first")).await;
    assert_eq!((status, put["count"].as_u64()), (200, Some(1)), "{put}");
    assert_ne!(put["etag"].as_str(), Some(etag0.as_str()), "the etag moves with the keys");
    // A worse copy (later first index) is ignored, a better one replaces it.
    s.put(&path("!r:porch.test", "s1", &v1), token, key(9, false, "worse")).await;
    let (_, got) = s.get(&path("!r:porch.test", "s1", &v1), token).await;
    assert_eq!(got["session_data"]["ciphertext"], "first", "{got}");
    s.put(&path("!r:porch.test", "s1", &v1), token, key(9, true, "verified")).await;
    let (_, got) = s.get(&path("!r:porch.test", "s1", &v1), token).await;
    assert_eq!(got["session_data"]["ciphertext"], "verified", "a verified key beats an unverified one: {got}");
    // Bulk upload and read-back.
    let (status, bulk) = s
        .put(
            &format!("/_matrix/client/v3/room_keys/keys?version={v1}"),
            token,
            json!({ "rooms": { "!other:porch.test": { "sessions": { "s2": key(0, false, "two"), "s3": key(0, false, "three") } } } }),
        )
        .await;
    assert_eq!((status, bulk["count"].as_u64()), (200, Some(3)), "{bulk}");
    let (_, all) = s.get(&format!("/_matrix/client/v3/room_keys/keys?version={v1}"), token).await;
    assert_eq!(all["rooms"]["!other:porch.test"]["sessions"].as_object().unwrap().len(), 2, "{all}");
    let (status, _) = s.get(&path("!r:porch.test", "nope", &v1), token).await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/_matrix/client/v3/room_keys/keys?version=bogus", token).await;
    assert_eq!(status, 404);

    // A newer version: the old one takes no more keys.
    let (_, created) = s.post("/_matrix/client/v3/room_keys/version", token, algorithm.clone()).await;
    let v2 = created["version"].as_str().unwrap().to_owned();
    let (status, wrong) = s.put(&path("!r:porch.test", "s9", &v1), token, key(0, false, "late")).await;
    assert_eq!((status, wrong["errcode"].as_str()), (403, Some("M_WRONG_ROOM_KEYS_VERSION")), "{wrong}");
    assert_eq!(wrong["current_version"], v2.as_str());
    // Deleting the newest makes the previous one current again, keys intact.
    let (status, _) =
        s.request(reqwest::Method::DELETE, &format!("/_matrix/client/v3/room_keys/version/{v2}"), token, None).await;
    assert_eq!(status, 200);
    let (_, info) = s.get("/_matrix/client/v3/room_keys/version", token).await;
    assert_eq!((info["version"].as_str(), info["count"].as_u64()), (Some(v1.as_str()), Some(3)), "{info}");
    let (status, _) = s.get(&format!("/_matrix/client/v3/room_keys/version/{v2}"), token).await;
    assert_eq!(status, 404);
    // Someone else sees none of it.
    let bob = s.register("bob").await;
    let (status, _) = s.get(&format!("/_matrix/client/v3/room_keys/keys?version={v1}"), Some(&bob.token)).await;
    assert_eq!(status, 404, "versions are per account");
}

#[tokio::test]
async fn relations_threads_and_bundled_aggregations() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let root = s.send_text(&alice, &room, "root").await;
    let thread = |text: &str| json!({ "msgtype": "m.text", "body": text, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    let r1 = send(&s, &bob, &room, thread("reply one")).await;
    let r2 = send(&s, &alice, &room, thread("reply two")).await;
    let edit = send(
        &s,
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "* root (edited)", "m.new_content": { "msgtype": "m.text", "body": "root (edited)" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": root } }),
    )
    .await;
    // An edit by someone else is not an edit.
    send(
        &s,
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "* hijack", "m.new_content": { "msgtype": "m.text", "body": "hijack" },
                "m.relates_to": { "rel_type": "m.replace", "event_id": root } }),
    )
    .await;

    let base = format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&room), enc(&root));
    let (status, threads) = s.get(&format!("{base}/m.thread"), Some(&bob.token)).await;
    assert_eq!(status, 200, "{threads}");
    let ids: Vec<&str> = threads["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [r2.as_str(), r1.as_str()], "newest first: {threads}");
    let (_, page) = s.get(&format!("{base}/m.thread?limit=1"), Some(&bob.token)).await;
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let next = page["next_batch"].as_str().expect("a next page").to_owned();
    let (_, page2) = s.get(&format!("{base}/m.thread?limit=1&from={next}"), Some(&bob.token)).await;
    assert_eq!(page2["chunk"][0]["event_id"], r1.as_str(), "{page2}");
    let (_, forward) = s.get(&format!("{base}/m.thread?dir=f"), Some(&bob.token)).await;
    assert_eq!(forward["chunk"][0]["event_id"], r1.as_str(), "{forward}");
    let (_, all) = s.get(&base, Some(&bob.token)).await;
    assert_eq!(all["chunk"].as_array().unwrap().len(), 4, "threads and both replacements: {all}");
    let (_, typed) = s.get(&format!("{base}/m.replace/m.room.message"), Some(&bob.token)).await;
    assert_eq!(typed["chunk"].as_array().unwrap().len(), 2, "{typed}");

    // The root carries the thread summary and alice's edit, not bob's.
    let (_, event) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&root)), Some(&bob.token)).await;
    let relations = &event["unsigned"]["m.relations"];
    assert_eq!(relations["m.thread"]["count"], 2, "{event}");
    assert_eq!(relations["m.thread"]["latest_event"]["event_id"], r2.as_str());
    assert_eq!(relations["m.thread"]["current_user_participated"], true, "bob replied: {event}");
    assert_eq!(relations["m.replace"]["event_id"], edit.as_str(), "{event}");
    let carol = s.register("carol").await;
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let (_, seen_by_carol) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&root)), Some(&carol.token)).await;
    assert_eq!(seen_by_carol["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], false);

    // /threads: all, and the ones the user took part in.
    let (_, list) = s.get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)), Some(&carol.token)).await;
    assert_eq!(list["chunk"][0]["event_id"], root.as_str(), "{list}");
    let (_, mine) = s
        .get(&format!("/_matrix/client/v1/rooms/{}/threads?include=participated", enc(&room)), Some(&carol.token))
        .await;
    assert!(mine["chunk"].as_array().unwrap().is_empty(), "carol is in no thread: {mine}");

    // A redacted reply leaves the thread.
    let (status, redaction) = s
        .put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/t1", enc(&room), enc(&r2)), Some(&alice.token), json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, redacted) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&r2)), Some(&bob.token)).await;
    assert_eq!(redacted["unsigned"]["redacted_by"], redaction["event_id"], "{redacted}");
    let (_, after) = s.get(&format!("{base}/m.thread"), Some(&bob.token)).await;
    assert_eq!(after["chunk"].as_array().unwrap().len(), 1, "{after}");
    // Outsiders see nothing.
    let dave = s.register("dave").await;
    let (status, _) = s.get(&base, Some(&dave.token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn search_finds_words_in_rooms_the_user_reads_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let shared = s.create_room(&alice, json!({ "preset": "public_chat", "name": "Garden" })).await;
    assert_eq!(s.join(&bob, &shared).await.0, 200);
    let private = s.create_room(&alice, json!({})).await;
    let first = s.send_text(&alice, &shared, "The tomatoes are ripening").await;
    let second = s.send_text(&bob, &shared, "Tomatoes again, and basil").await;
    s.send_text(&alice, &private, "secret tomatoes").await;
    let search = |user: &User, body: Value| {
        let token = user.token.clone();
        let hs = &s.hs;
        async move { hs.post("/_matrix/client/v3/search", Some(&token), body).await }
    };
    let (status, found) =
        search(&bob, json!({ "search_categories": { "room_events": { "search_term": "tomato" } } })).await;
    assert_eq!(status, 200, "{found}");
    let results = &found["search_categories"]["room_events"];
    let ids: Vec<&str> =
        results["results"].as_array().unwrap().iter().map(|r| r["result"]["event_id"].as_str().unwrap()).collect();
    assert_eq!(results["count"], 2, "bob reads the shared room only: {found}");
    assert!(ids.contains(&first.as_str()) && ids.contains(&second.as_str()), "{found}");
    assert!(results["highlights"].as_array().unwrap().contains(&json!("tomatoes")), "{found}");

    // Every word must match; recent order; context; grouping; paging.
    let (_, both) =
        search(&bob, json!({ "search_categories": { "room_events": { "search_term": "tomatoes basil" } } })).await;
    assert_eq!(both["search_categories"]["room_events"]["count"], 1, "{both}");
    let (_, recent) = search(
        &bob,
        json!({ "search_categories": { "room_events": {
            "search_term": "tomatoes", "order_by": "recent",
            "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
            "groupings": { "group_by": [{ "key": "room_id" }] },
            "filter": { "limit": 1 }
        } } }),
    )
    .await;
    let events = &recent["search_categories"]["room_events"];
    assert_eq!(events["results"][0]["result"]["event_id"], second.as_str(), "newest first: {recent}");
    assert_eq!(events["results"][0]["context"]["events_before"][0]["event_id"], first.as_str(), "{recent}");
    assert!(events["results"][0]["context"]["profile_info"][&bob.user_id].is_object(), "{recent}");
    assert!(events["groups"]["room_id"][&shared].is_object(), "{recent}");
    let next = events["next_batch"].as_str().expect("a second page").to_owned();
    let (_, page2) = s
        .post(
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            Some(&bob.token),
            json!({ "search_categories": { "room_events": { "search_term": "tomatoes", "order_by": "recent", "filter": { "limit": 1 } } } }),
        )
        .await;
    assert_eq!(
        page2["search_categories"]["room_events"]["results"][0]["result"]["event_id"],
        first.as_str(),
        "{page2}"
    );
    // Room names are searched too (`content.name`), and a redaction removes a hit.
    let (_, named) = search(
        &bob,
        json!({ "search_categories": { "room_events": { "search_term": "garden", "keys": ["content.name"] } } }),
    )
    .await;
    assert_eq!(named["search_categories"]["room_events"]["count"], 1, "{named}");
    s.put(
        &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&shared), enc(&first)),
        Some(&alice.token),
        json!({}),
    )
    .await;
    let (_, after) =
        search(&bob, json!({ "search_categories": { "room_events": { "search_term": "ripening" } } })).await;
    assert_eq!(after["search_categories"]["room_events"]["count"], 0, "{after}");
    let (status, empty) =
        search(&bob, json!({ "search_categories": { "room_events": { "search_term": "  " } } })).await;
    assert_eq!(status, 400, "{empty}");
}

#[tokio::test]
async fn room_upgrade_replaces_the_room_and_moves_what_belongs_to_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s
        .create_room(&alice, json!({ "preset": "public_chat", "room_version": "10", "name": "Old", "room_alias_name": "club", "visibility": "public" }))
        .await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    assert_eq!(s.join(&carol, &room).await.0, 200);
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            Some(&alice.token),
            json!({ "user_id": carol.user_id }),
        )
        .await;
    assert_eq!(status, 200);
    s.put(
        &format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.work", enc(&alice.user_id), enc(&room)),
        Some(&alice.token),
        json!({ "order": 0.5 }),
    )
    .await;

    let upgrade = |user: &User, version: &str| {
        let token = user.token.clone();
        let path = format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room));
        let hs = &s.hs;
        let body = json!({ "new_version": version });
        async move { hs.post(&path, Some(&token), body).await }
    };
    let (status, refused) = upgrade(&bob, "11").await;
    assert_eq!((status, refused["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "bob may not: {refused}");
    let (status, refused) = upgrade(&alice, "banana").await;
    assert_eq!((status, refused["errcode"].as_str()), (400, Some("M_UNSUPPORTED_ROOM_VERSION")), "{refused}");
    let (status, body) = upgrade(&alice, "11").await;
    assert_eq!(status, 200, "{body}");
    let new_room = body["replacement_room"].as_str().unwrap().to_owned();

    let state = |room: &str, kind: &str, key: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key));
        let token = alice.token.clone();
        let hs = &s.hs;
        async move { hs.get(&path, Some(&token)).await }
    };
    let (_, create) = state(&new_room, "m.room.create", "").await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], room.as_str(), "{create}");
    assert_eq!(state(&new_room, "m.room.name", "").await.1["name"], "Old");
    assert_eq!(state(&new_room, "m.room.join_rules", "").await.1["join_rule"], "public");
    assert_eq!(state(&new_room, "m.room.member", &carol.user_id).await.1["membership"], "ban", "bans follow");
    let (_, tombstone) = state(&room, "m.room.tombstone", "").await;
    assert_eq!(tombstone["replacement_room"], new_room.as_str(), "{tombstone}");
    let (_, old_power) = state(&room, "m.room.power_levels", "").await;
    assert_eq!(
        (old_power["events_default"].as_i64(), old_power["invite"].as_i64()),
        (Some(50), Some(50)),
        "{old_power}"
    );
    // The alias, canonical alias, directory entry and tags move.
    let (_, alias) = s.get(&format!("/_matrix/client/v3/directory/room/{}", enc("#club:porch.test")), None).await;
    assert_eq!(alias["room_id"], new_room.as_str(), "{alias}");
    assert_eq!(state(&new_room, "m.room.canonical_alias", "").await.1["alias"], "#club:porch.test");
    assert!(state(&room, "m.room.canonical_alias", "").await.1.get("alias").is_none());
    let (_, public) = s.get("/_matrix/client/v3/publicRooms", Some(&alice.token)).await;
    let listed: Vec<&str> =
        public["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    assert!(listed.contains(&new_room.as_str()) && !listed.contains(&room.as_str()), "{public}");
    let (_, tags) = s
        .get(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&new_room)),
            Some(&alice.token),
        )
        .await;
    assert!(tags["tags"]["u.work"].is_object(), "{tags}");
    // Bob follows the tombstone.
    assert_eq!(s.join(&bob, &new_room).await.0, 200);
    // A tombstone naming its own room is refused.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.tombstone/", enc(&new_room)),
            Some(&alice.token),
            json!({ "body": "x", "replacement_room": new_room }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = s
        .post(
            "/_matrix/client/v3/rooms/!nowhere:porch.test/upgrade",
            Some(&alice.token),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
}

#[tokio::test]
async fn upgrading_a_private_room_invites_its_people_to_the_replacement() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let dave = s.register("dave").await;
    let room = s.create_room(&alice, json!({ "preset": "private_chat", "invite": [bob.user_id, carol.user_id] })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let since = s.sync(&bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            Some(&alice.token),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_room = body["replacement_room"].as_str().unwrap().to_owned();
    let membership = |user: &User| {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&new_room), enc(&user.user_id));
        let token = alice.token.clone();
        let hs = &s.hs;
        async move { hs.get(&path, Some(&token)).await.1["membership"].as_str().map(str::to_owned) }
    };
    // The member and the pending invitee are invited; an outsider is not.
    assert_eq!(membership(&bob).await.as_deref(), Some("invite"));
    assert_eq!(membership(&carol).await.as_deref(), Some("invite"));
    assert_eq!(membership(&dave).await, None);
    // Bob's running client sees the invite and can follow the tombstone.
    let sync = s.sync(&bob, Some(&since), 0).await;
    assert!(sync["rooms"]["invite"][new_room.as_str()].is_object(), "{sync}");
    assert_eq!(s.join(&bob, &new_room).await.0, 200);
    assert_eq!(s.join(&dave, &new_room).await.0, 403, "still private");

    // A public room's upgrade invites nobody: anyone may follow.
    let public = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&dave, &public).await.0, 200);
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&public)),
            Some(&alice.token),
            json!({ "new_version": "11" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let replacement = body["replacement_room"].as_str().unwrap();
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(replacement), enc(&dave.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(member["errcode"], "M_NOT_FOUND", "{member}");
}

#[tokio::test]
async fn deprecated_initial_sync_and_event_stream() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let hello = s.send_text(&alice, &room, "hello").await;

    let (status, initial) = s.get("/_matrix/client/v3/initialSync?limit=3", Some(&bob.token)).await;
    assert_eq!(status, 200, "{initial}");
    let view = initial["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room.as_str()).expect("the room");
    assert_eq!(view["membership"], "join");
    let chunk = view["messages"]["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 3, "{view}");
    assert_eq!(chunk.last().unwrap()["event_id"], hello.as_str(), "oldest first, the newest last");
    assert!(view["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    let end = initial["end"].as_str().unwrap().to_owned();

    let (status, room_view) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&room)), Some(&bob.token)).await;
    assert_eq!(status, 200, "{room_view}");
    assert_eq!(room_view["room_id"], room.as_str());
    let outsider = s.register("carol").await;
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&room)), Some(&outsider.token)).await;
    assert_eq!(status, 403, "not a member and not world-readable");

    // The stream from `end` long-polls until the next event.
    let poll = {
        let hs = Homeserver { base: s.base.clone(), http: common::client() };
        let token = bob.token.clone();
        tokio::spawn(async move {
            hs.get(&format!("/_matrix/client/v3/events?from={end}&timeout=10000"), Some(&token)).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = s.send_text(&alice, &room, "later").await;
    let (status, events) = poll.await.unwrap();
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["chunk"][0]["event_id"], later.as_str(), "{events}");
    assert_eq!(events["chunk"][0]["room_id"], room.as_str());
    assert_ne!(events["end"], events["start"]);
    let (status, nothing) = s
        .get(&format!("/_matrix/client/v3/events?from={}&timeout=0", events["end"].as_str().unwrap()), Some(&bob.token))
        .await;
    assert_eq!((status, nothing["chunk"].as_array().map(Vec::len)), (200, Some(0)), "{nothing}");
    let (status, bad) = s.get("/_matrix/client/v3/events?timeout=soon", Some(&bob.token)).await;
    assert_eq!(status, 400, "{bad}");
    let (status, one) = s.get(&format!("/_matrix/client/v3/events/{}", enc(&later)), Some(&bob.token)).await;
    assert_eq!((status, one["content"]["body"].as_str()), (200, Some("later")));
    let (status, _) = s.get(&format!("/_matrix/client/v3/events/{}", enc(&later)), Some(&outsider.token)).await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/_matrix/client/v3/initialSync", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn presence_and_the_full_shape_of_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let first = s.sync(&alice, None, 0).await;
    // Every section is there, even empty.
    let joined = &first["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    for key in ["state", "ephemeral", "account_data"] {
        assert!(joined[key]["events"].is_array(), "{key}: {joined}");
    }
    assert!(first["presence"]["events"].is_array() && first["rooms"]["leave"].is_object(), "{first}");
    let mut since = first["next_batch"].as_str().map(str::to_owned);

    // Bob's status reaches alice through her sync.
    let (status, _) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
            Some(&bob.token),
            json!({ "presence": "unavailable", "status_msg": "lunch" }),
        )
        .await;
    assert_eq!(status, 200);
    let seen = sync_until(&s, &alice, &mut since, "bob's presence", |body| {
        body["presence"]["events"].as_array()?.iter().find(|e| e["sender"] == bob.user_id.as_str()).cloned()
    })
    .await;
    assert_eq!(seen["content"]["presence"], "unavailable", "{seen}");
    assert_eq!(seen["content"]["status_msg"], "lunch");
    // A stranger's presence does not reach her.
    let stranger = s.register("stranger").await;
    s.put(
        &format!("/_matrix/client/v3/presence/{}/status", enc(&stranger.user_id)),
        Some(&stranger.token),
        json!({ "presence": "online" }),
    )
    .await;
    let later = s.sync(&alice, since.as_deref(), 500).await;
    let strangers: Vec<&Value> = later["presence"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["sender"] == stranger.user_id.as_str())
        .collect();
    assert!(strangers.is_empty(), "{later}");

    // A join with custom content keeps it; joined_members shows null avatars.
    let carol = s.register("carol").await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&carol.token),
            json!({ "foo": "bar", "displayname": "Caroline" }),
        )
        .await;
    assert_eq!(status, 200);
    let (_, member) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&carol.user_id)),
            Some(&carol.token),
        )
        .await;
    assert_eq!((member["foo"].as_str(), member["displayname"].as_str()), (Some("bar"), Some("Caroline")), "{member}");
    assert_eq!(member["membership"], "join");
    let (_, members) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)), Some(&carol.token)).await;
    let entry = &members["joined"][&carol.user_id];
    assert_eq!(entry["display_name"], "Caroline", "{members}");
    assert!(entry.get("avatar_url").is_some_and(Value::is_null), "{members}");
    // A sync filtered to one state type shows only that type.
    let filter = json!({ "room": { "state": { "types": ["m.room.name"] }, "timeline": { "limit": 1 } } });
    let (_, filtered) =
        s.get(&format!("/_matrix/client/v3/sync?filter={}", enc(&filter.to_string())), Some(&carol.token)).await;
    let state = filtered["rooms"]["join"][&room]["state"]["events"].as_array().unwrap();
    assert!(state.iter().all(|e| e["type"] == "m.room.name"), "{filtered}");
    let _ = timeline;
}

#[tokio::test]
async fn turn_credentials_from_the_shared_secret() {
    use base64::Engine;
    use hmac::Mac;
    let plain = TestServer::start().await;
    let alice = plain.register("alice").await;
    let (status, none) = plain.get("/_matrix/client/v3/voip/turnServer", Some(&alice.token)).await;
    assert_eq!((status, none.clone()), (200, json!({})), "no TURN server configured: {none}");

    let s = TestServer::start_with(common::Options {
        env: vec![
            ("PORCH_VOIP__TURN_URIS".into(), r#"["turn:turn.example.org:3478?transport=udp"]"#.into()),
            ("PORCH_VOIP__TURN_SHARED_SECRET".into(), "s3cret".into()),
        ],
    })
    .await;
    let bob = s.register("bob").await;
    let (status, turn) = s.get("/_matrix/client/v3/voip/turnServer", Some(&bob.token)).await;
    assert_eq!(status, 200, "{turn}");
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, bob.user_id, "{turn}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 3601, "valid for the default hour: {turn}");
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn["password"], expected.as_str(), "coturn's use-auth-secret check passes");
    assert_eq!(turn["uris"][0], "turn:turn.example.org:3478?transport=udp");
    assert_eq!(turn["ttl"], 3600);
    let (status, _) = s.get("/_matrix/client/v3/voip/turnServer", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn timestamp_to_event_finds_the_nearest_visible_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let first = s.send_text(&alice, &room, "first").await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let second = s.send_text(&alice, &room, "second").await;
    let path =
        |dir: &str, ts: u64| format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?dir={dir}&ts={ts}", enc(&room));
    let (status, back) = s.get(&path("b", between), Some(&alice.token)).await;
    assert_eq!((status, back["event_id"].as_str()), (200, Some(first.as_str())), "{back}");
    let (_, forward) = s.get(&path("f", between), Some(&alice.token)).await;
    assert_eq!(forward["event_id"], second.as_str(), "{forward}");
    let (status, none) = s.get(&path("f", between + 3_600_000), Some(&alice.token)).await;
    assert_eq!((status, none["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{none}");
    let bob = s.register("bob").await;
    let (status, _) = s.get(&path("b", between), Some(&bob.token)).await;
    assert_eq!(status, 403, "not a member");
}

#[tokio::test]
async fn reports_reach_the_admins_only() {
    let s = TestServer::start().await;
    let admin = s.register_admin("root").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(s.join(&bob, &room).await.0, 200);
    let rude = s.send_text(&bob, &room, "rude").await;
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/report/{}", enc(&room), enc(&rude)),
            Some(&alice.token),
            json!({ "reason": "spam" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/report", enc(&room)),
            Some(&alice.token),
            json!({ "reason": "noisy" }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/users/{}/report", enc(&bob.user_id)),
            Some(&alice.token),
            json!({ "reason": "troll" }),
        )
        .await;
    assert_eq!(status, 200);
    // Refusals file nothing.
    let carol = s.register("carol").await;
    let (status, _) = s
        .post(&format!("/_matrix/client/v3/rooms/{}/report/{}", enc(&room), enc(&rude)), Some(&carol.token), json!({}))
        .await;
    assert_eq!(status, 404, "carol cannot see the event");
    let (status, _) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/report", enc(&room)),
            Some(&alice.token),
            json!({ "reason": "x".repeat(5000) }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.get("/_porch/admin/v1/reports", Some(&alice.token)).await;
    assert_eq!(status, 403, "reports are for admins");
    let (status, list) = s.get("/_porch/admin/v1/reports", Some(&admin.token)).await;
    assert_eq!(status, 200, "{list}");
    let reports = list["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 3, "{list}");
    assert_eq!(reports[0]["user_id"], bob.user_id.as_str(), "newest first: {list}");
    assert_eq!(reports[2]["event_id"], rude.as_str());
    assert_eq!(reports[2]["reason"], "spam");
    assert_eq!(reports[2]["reporter"], alice.user_id.as_str());
}

/// Put `child` under `space` with the given `order` and `suggested` flag.
async fn add_child(hs: &Homeserver, user: &User, space: &str, child: &str, via: &str, order: &str, suggested: bool) {
    let (status, body) = hs
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(space), enc(child)),
            Some(&user.token),
            json!({ "via": [via], "order": order, "suggested": suggested }),
        )
        .await;
    assert_eq!(status, 200, "m.space.child: {body}");
}

fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn hierarchy_walks_a_space_in_order_as_the_user_may_see_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Team", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let public = s.create_room(&alice, json!({ "preset": "public_chat", "name": "Lobby", "topic": "hi" })).await;
    let private = s.create_room(&alice, json!({ "preset": "private_chat", "name": "Secret" })).await;
    let restricted = s
        .create_room(
            &alice,
            json!({ "preset": "private_chat", "name": "Members", "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": { "join_rule": "restricted", "allow": [{ "type": "m.room_membership", "room_id": space }] }
            }] }),
        )
        .await;
    let subspace = s
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Sub", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let deep = s.create_room(&alice, json!({ "preset": "public_chat", "name": "Deep" })).await;
    // `order` decides, whatever the order of creation.
    add_child(&s, &alice, &space, &subspace, "porch.test", "d", false).await;
    add_child(&s, &alice, &space, &private, "porch.test", "c", false).await;
    add_child(&s, &alice, &space, &restricted, "porch.test", "b", false).await;
    add_child(&s, &alice, &space, &public, "porch.test", "a", true).await;
    add_child(&s, &alice, &subspace, &deep, "porch.test", "a", false).await;
    let (status, _) = s.join(&bob, &space).await;
    assert_eq!(status, 200);

    let path = |query: &str| format!("/_matrix/client/v1/rooms/{}/hierarchy?{query}", enc(&space));
    let (status, page) = s.get(&path(""), Some(&bob.token)).await;
    assert_eq!(status, 200, "{page}");
    // The private room stays hidden from bob; the restricted one shows (he is in the space).
    assert_eq!(
        room_ids(&page),
        vec![space.clone(), public.clone(), restricted.clone(), subspace.clone(), deep.clone()]
    );
    assert!(page["next_batch"].is_null(), "{page}");
    let root = &page["rooms"][0];
    assert_eq!((root["room_type"].as_str(), root["name"].as_str()), (Some("m.space"), Some("Team")), "{root}");
    assert_eq!(root["children_state"].as_array().unwrap().len(), 4, "every child event is listed: {root}");
    assert_eq!(root["children_state"][0]["state_key"], public.as_str(), "children state in the spec's order");
    assert_eq!(page["rooms"][1]["topic"], "hi");
    assert_eq!(page["rooms"][2]["join_rule"], "restricted");
    assert_eq!(page["rooms"][2]["allowed_room_ids"], json!([space]));
    // Alice, in every room, sees the private one too.
    let (_, page) = s.get(&path(""), Some(&alice.token)).await;
    assert!(room_ids(&page).contains(&private), "{page}");

    // max_depth and suggested_only.
    let (_, page) = s.get(&path("max_depth=1"), Some(&bob.token)).await;
    assert_eq!(room_ids(&page), vec![space.clone(), public.clone(), restricted.clone(), subspace.clone()]);
    let (_, page) = s.get(&path("suggested_only=true"), Some(&bob.token)).await;
    assert_eq!(room_ids(&page), vec![space.clone(), public.clone()]);

    // Pages: the same rooms in the same order, and a token bound to its walk.
    let (_, first) = s.get(&path("limit=2"), Some(&bob.token)).await;
    assert_eq!(room_ids(&first), vec![space.clone(), public.clone()]);
    let token = first["next_batch"].as_str().expect("a next page").to_owned();
    let (_, second) = s.get(&path(&format!("limit=2&from={}", enc(&token))), Some(&bob.token)).await;
    assert_eq!(room_ids(&second), vec![restricted.clone(), subspace.clone()]);
    let token2 = second["next_batch"].as_str().expect("a third page").to_owned();
    let (_, third) = s.get(&path(&format!("limit=2&from={}", enc(&token2))), Some(&bob.token)).await;
    assert_eq!((room_ids(&third), third["next_batch"].is_null()), (vec![deep.clone()], true), "{third}");
    let (status, wrong) =
        s.get(&path(&format!("limit=2&suggested_only=true&from={}", enc(&token))), Some(&bob.token)).await;
    assert_eq!((status, wrong["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{wrong}");

    // A space bob may not see, and one that does not exist.
    let (status, body) =
        s.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&private)), Some(&bob.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
    let (status, _) = s.get("/_matrix/client/v1/rooms/!nope:porch.test/hierarchy", Some(&bob.token)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn hierarchy_asks_other_servers_for_their_rooms() {
    let (a, a_name) = common::federating_server().await;
    let (b, b_name) = common::federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    // A space on A with one child on each server; nobody on A is in B's rooms.
    let space = a
        .create_room(
            &alice,
            json!({ "preset": "public_chat", "name": "Team", "creation_content": { "type": "m.space" } }),
        )
        .await;
    let remote_public = b.create_room(&bob, json!({ "preset": "public_chat", "name": "Over there" })).await;
    let remote_private = b.create_room(&bob, json!({ "preset": "private_chat", "name": "Bob's secret" })).await;
    let local = a.create_room(&alice, json!({ "preset": "public_chat", "name": "Here" })).await;
    add_child(&a, &alice, &space, &remote_public, &b_name, "a", false).await;
    add_child(&a, &alice, &space, &remote_private, &b_name, "b", false).await;
    add_child(&a, &alice, &space, &local, &a_name, "c", false).await;

    let (status, page) =
        a.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&space)), Some(&alice.token)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(room_ids(&page), vec![space.clone(), remote_public.clone(), local.clone()], "{page}");
    assert_eq!(page["rooms"][1]["name"], "Over there", "the summary comes from B: {page}");
    assert_eq!(page["rooms"][1]["num_joined_members"], 1);

    // B answers other servers itself: its public room, not its private one.
    let (status, page) =
        b.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&remote_public)), Some(&bob.token)).await;
    assert_eq!((status, room_ids(&page)), (200, vec![remote_public.clone()]));
}

#[tokio::test]
async fn login_token_signs_in_another_device_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let (_, types) = s.get("/_matrix/client/v3/login", None).await;
    let token_type = types["flows"].as_array().unwrap().iter().find(|f| f["type"] == "m.login.token").cloned();
    assert_eq!(token_type.map(|f| f["get_login_token"].clone()), Some(json!(true)), "{types}");

    // The password again first (user-interactive auth).
    let (status, flows) = s.post("/_matrix/client/v1/login/get_token", Some(&alice.token), json!({})).await;
    assert_eq!(status, 401, "{flows}");
    let auth = |password: &str| {
        json!({ "auth": { "type": "m.login.password", "session": flows["session"],
            "identifier": { "type": "m.id.user", "user": alice.user_id }, "password": password } })
    };
    let (status, _) = s.post("/_matrix/client/v1/login/get_token", Some(&alice.token), auth("wrong")).await;
    assert_eq!(status, 401, "a wrong password gets no token");
    let (status, issued) =
        s.post("/_matrix/client/v1/login/get_token", Some(&alice.token), auth("correct horse battery")).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["expires_in_ms"], 120_000);
    let login_token = issued["login_token"].as_str().unwrap().to_owned();

    let login = json!({ "type": "m.login.token", "token": login_token });
    let (status, session) = s.post("/_matrix/client/v3/login", None, login.clone()).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user_id"], alice.user_id.as_str());
    assert_ne!(session["device_id"], alice.device_id.as_str(), "a new device");
    let (_, me) = s.get("/_matrix/client/v3/account/whoami", session["access_token"].as_str()).await;
    assert_eq!(me["user_id"], alice.user_id.as_str());
    let (status, again) = s.post("/_matrix/client/v3/login", None, login).await;
    assert_eq!((status, again["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "a token signs in once: {again}");
    let (status, _) =
        s.post("/_matrix/client/v3/login", None, json!({ "type": "m.login.token", "token": "made-up" })).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn unread_counts_per_thread_and_threaded_receipts() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    s.join(&bob, &room).await;
    let root = s.send_text(&bob, &room, "root").await;
    let thread = json!({ "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
        "m.in_reply_to": { "event_id": root } });
    send(&s, &bob, &room, json!({ "msgtype": "m.text", "body": "in thread 1", "m.relates_to": thread })).await;
    let last =
        send(&s, &bob, &room, json!({ "msgtype": "m.text", "body": "in thread 2", "m.relates_to": thread })).await;

    let threaded = enc(&json!({ "room": { "timeline": { "unread_thread_notifications": true } } }).to_string());
    let counts = |sync: &Value| {
        let room = &sync["rooms"]["join"][room.as_str()];
        (room["unread_notifications"]["notification_count"].as_u64(), room["unread_thread_notifications"].clone())
    };
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={threaded}"), Some(&alice.token)).await;
    let (main, threads) = counts(&sync);
    assert_eq!(main, Some(1), "the root is in the main timeline: {sync}");
    assert_eq!(threads[root.as_str()]["notification_count"], 2, "{threads}");
    // A client that does not ask for thread counts gets the sum.
    let plain = s.sync(&alice, None, 0).await;
    assert_eq!(counts(&plain).0, Some(3));
    assert!(counts(&plain).1.is_null(), "no thread counts unasked");

    // A receipt in the thread clears the thread only.
    let (status, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            Some(&alice.token),
            json!({ "thread_id": root }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, sync) = s.get(&format!("/_matrix/client/v3/sync?filter={threaded}"), Some(&alice.token)).await;
    let (main, threads) = counts(&sync);
    assert_eq!(main, Some(1));
    assert!(threads.get(root.as_str()).is_none(), "{threads}");
    // The main timeline's receipt clears the rest.
    s.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&root)),
        Some(&alice.token),
        json!({ "thread_id": "main" }),
    )
    .await;
    let plain = s.sync(&alice, None, 0).await;
    assert_eq!(counts(&plain).0.unwrap_or(0), 0, "{plain}");
}

#[tokio::test]
async fn reads_receipts_redactions_and_key_changes_as_clients_expect() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;

    // Registration with inhibit_login: no session, and no `device_id` key at all.
    let body = json!({ "username": "quiet", "password": "correct horse battery", "inhibit_login": true,
        "auth": { "type": "m.login.dummy" } });
    let (status, quiet) = s.post("/_matrix/client/v3/register", None, body).await;
    assert_eq!(status, 200, "{quiet}");
    assert!(quiet.get("device_id").is_none() && quiet.get("access_token").is_none(), "{quiet}");

    // A world-readable room is readable by someone not in it; a shared one is not.
    let open = s.create_room(&alice, json!({ "preset": "public_chat", "name": "Open" })).await;
    let hv = format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/", enc(&open));
    s.put(&hv, Some(&alice.token), json!({ "history_visibility": "world_readable" })).await;
    let (status, state) = s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&open)), Some(&bob.token)).await;
    assert_eq!(status, 200, "{state}");
    let closed = s.create_room(&alice, json!({ "preset": "private_chat" })).await;
    let secret = s.send_text(&alice, &closed, "secret").await;
    let (status, _) = s.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&closed)), Some(&bob.token)).await;
    assert_eq!(status, 403);
    // An event one may not see is not found, whatever the reason.
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&closed), enc(&secret)), Some(&bob.token)).await;
    assert_eq!(status, 404);

    // A redaction names an event of its own room.
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/t1", enc(&open), enc(&secret));
    let (status, body) = s.put(&path, Some(&alice.token), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");

    // Read receipts only move forward.
    s.join(&bob, &open).await;
    let first = s.send_text(&alice, &open, "one").await;
    let second = s.send_text(&alice, &open, "two").await;
    let receipt = |event: &str| format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&open), enc(event));
    s.post(&receipt(&second), Some(&bob.token), json!({})).await;
    let (status, _) = s.post(&receipt(&first), Some(&bob.token), json!({})).await;
    assert_eq!(status, 200, "an older receipt is taken and ignored");
    let sync = s.sync(&alice, None, 0).await;
    let receipts = sync["rooms"]["join"][&open]["ephemeral"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .cloned()
        .expect("receipts");
    assert!(receipts["content"][&second]["m.read"][&bob.user_id].is_object(), "{receipts}");
    assert!(receipts["content"].get(&first).is_none(), "the receipt did not go back: {receipts}");

    // A new member is a key change for the people they now share a room with.
    let from = s.sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    s.join(&carol, &open).await;
    let to = s.sync(&alice, Some(&from), 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, changes) = s.get(&format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"), Some(&alice.token)).await;
    assert!(changes["changed"].as_array().unwrap().iter().any(|u| u == carol.user_id.as_str()), "{changes}");
    // And one who leaves every shared room is `left`.
    let from = to;
    s.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&open)), Some(&carol.token), json!({})).await;
    let to = s.sync(&alice, Some(&from), 0).await["next_batch"].as_str().unwrap().to_owned();
    let (_, changes) = s.get(&format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"), Some(&alice.token)).await;
    assert!(changes["left"].as_array().unwrap().iter().any(|u| u == carol.user_id.as_str()), "{changes}");
}

#[tokio::test]
async fn sync_timelines_and_lazy_members_as_synapse_gives_them() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = s.create_room(&alice, json!({ "preset": "public_chat" })).await;
    // The public preset sets no guest access, as Synapse's.
    let (status, _) =
        s.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.guest_access/", enc(&room)), Some(&alice.token)).await;
    assert_eq!(status, 404);
    s.join(&bob, &room).await;
    s.join(&carol, &room).await;
    for i in 0..3 {
        s.send_text(&bob, &room, &format!("bob {i}")).await;
    }

    // A timeline limit of 0: state only; and a `prev_batch` even with no events.
    let zero = enc(&json!({ "room": { "timeline": { "limit": 0 } } }).to_string());
    let (_, body) = s.get(&format!("/_matrix/client/v3/sync?filter={zero}"), Some(&alice.token)).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["events"].as_array().map(Vec::len), Some(0), "{joined}");
    assert!(joined["timeline"]["prev_batch"].is_string(), "{joined}");
    assert!(!joined["state"]["events"].as_array().unwrap().is_empty());

    // Lazy-loaded members: senders only on the first view, then each new
    // sender's member once.
    let lazy =
        enc(&json!({ "room": { "state": { "lazy_load_members": true }, "timeline": { "limit": 3 } } }).to_string());
    let members = |body: &Value| -> Vec<String> {
        let mut members: Vec<String> = body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["type"] == "m.room.member")
                    .map(|e| e["state_key"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        members
    };
    let (_, first) = s.get(&format!("/_matrix/client/v3/sync?filter={lazy}"), Some(&alice.token)).await;
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    expected.sort();
    assert_eq!(members(&first), expected, "only the senders and oneself");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&carol, &room, "carol speaks").await;
    let (_, second) = s.get(&format!("/_matrix/client/v3/sync?filter={lazy}&since={since}"), Some(&alice.token)).await;
    assert_eq!(members(&second), vec![carol.user_id.clone()], "carol's member, new to this device");
    let since = second["next_batch"].as_str().unwrap().to_owned();
    s.send_text(&carol, &room, "carol again").await;
    let (_, third) = s.get(&format!("/_matrix/client/v3/sync?filter={lazy}&since={since}"), Some(&alice.token)).await;
    assert!(members(&third).is_empty(), "not sent twice: {third}");

    // Someone joining brings their presence, offline when unknown.
    let dave = s.register("dave").await;
    let since = third["next_batch"].as_str().unwrap().to_owned();
    s.join(&dave, &room).await;
    let (_, body) = s.get(&format!("/_matrix/client/v3/sync?since={since}"), Some(&alice.token)).await;
    let presence = body["presence"]["events"].as_array().unwrap();
    let dave_presence = presence.iter().find(|e| e["sender"] == dave.user_id.as_str()).expect("dave's presence");
    assert!(dave_presence["content"]["presence"].is_string(), "{dave_presence}");
}

//! The federation listener: TLS with a self-signed certificate made at first
//! start, the server's published keys (signed, verifiable), and its version.

mod common;

use std::collections::BTreeMap;

use common::{Options, TestServer, federating_server, free_port, in_process_server, in_process_server_with};
use ruma::{CanonicalJsonValue, serde::Base64, signatures::PublicKeyMap};
use serde_json::Value;

fn insecure_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The test server's certificate is self-signed.
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

#[tokio::test]
async fn server_keys_are_published_over_tls_and_verify() {
    let mut s =
        TestServer::start_with(Options { env: vec![("PORCH_LISTEN__FEDERATION".into(), "127.0.0.1:0".into())] }).await;
    let base = s.federation_base.clone().expect("federation listener");
    assert!(base.starts_with("https://"));
    let client = insecure_client();
    let keys: Value = client.get(format!("{base}/_matrix/key/v2/server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys["server_name"], "porch.test");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(keys["valid_until_ts"].as_u64().unwrap() > now);
    let verify_keys = keys["verify_keys"].as_object().unwrap();
    assert_eq!(verify_keys.len(), 1);
    let (key_id, key) = verify_keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"));

    // The object verifies with the key it publishes.
    let public = Base64::parse(key["key"].as_str().unwrap()).unwrap();
    let key_map: PublicKeyMap = BTreeMap::from([("porch.test".to_owned(), BTreeMap::from([(key_id.clone(), public)]))]);
    let object = match CanonicalJsonValue::try_from(keys.clone()).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        _ => panic!("not an object"),
    };
    ruma::signatures::verify_json(&key_map, &object).expect("self-signature verifies");
    let mut tampered = object.clone();
    tampered.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(1u32.into()));
    assert!(ruma::signatures::verify_json(&key_map, &tampered).is_err(), "a changed object does not verify");
    // The old `{keyId}` path (still asked by Synapse-era tools and sytest) gives the same keys.
    let by_id = format!("{base}/_matrix/key/v2/server/{}", common::enc(key_id));
    let old_form: Value = client.get(by_id).send().await.unwrap().json().await.unwrap();
    assert_eq!(old_form["verify_keys"], keys["verify_keys"]);
    let old_object = match CanonicalJsonValue::try_from(old_form).unwrap() {
        CanonicalJsonValue::Object(object) => object,
        _ => panic!("not an object"),
    };
    ruma::signatures::verify_json(&key_map, &old_object).expect("the old form is signed too");

    let version: Value =
        client.get(format!("{base}/_matrix/federation/v1/version")).send().await.unwrap().json().await.unwrap();
    assert_eq!(version["server"]["name"], "porch");
    let (status, body) = {
        let resp = client.get(format!("{base}/_matrix/federation/v1/nope")).send().await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));

    // The key and the certificate are kept across restarts.
    let cert = std::fs::read(s.dir.join("db/tls/self-signed.crt")).unwrap();
    s.kill();
    let dir = s.dir.clone();
    let again =
        TestServer::launch(&dir, &Options { env: vec![("PORCH_LISTEN__FEDERATION".into(), "127.0.0.1:0".into())] });
    let base = again.federation_base.clone().unwrap();
    let keys_again: Value =
        client.get(format!("{base}/_matrix/key/v2/server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(keys_again["verify_keys"], keys["verify_keys"]);
    assert_eq!(std::fs::read(dir.join("db/tls/self-signed.crt")).unwrap(), cert);
    drop(s);
}

#[tokio::test]
async fn signed_requests_between_two_servers_and_forgeries_refused() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bob_id = format!("@bob:{b_name}");
    assert_eq!(bob.user_id, bob_id);
    b.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", common::enc(&bob_id)),
        Some(&bob.token),
        serde_json::json!({ "displayname": "Bob of B" }),
    )
    .await;

    // A asks B over federation; B checks A's X-Matrix signature with A's keys.
    let (status, profile) =
        a.get(&format!("/_matrix/client/v3/profile/{}", common::enc(&bob_id)), Some(&alice.token)).await;
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["displayname"], "Bob of B");

    // Requests without a signature, or with a forged one, are refused.
    let client = insecure_client();
    let b_base = b.federation_base.clone().unwrap();
    let url = format!("{b_base}/_matrix/federation/v1/query/profile?user_id={}", common::enc(&bob_id));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_UNAUTHORIZED");
    let (_, a_keys) = {
        let resp =
            client.get(format!("{}/_matrix/key/v2/server", a.federation_base.clone().unwrap())).send().await.unwrap();
        ((), resp.json::<Value>().await.unwrap())
    };
    let key_id = a_keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    let forged =
        format!("X-Matrix origin=\"{a_name}\",destination=\"{b_name}\",key=\"{key_id}\",sig=\"{}\"", "A".repeat(86));
    let resp = client.get(&url).header("Authorization", forged).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a forged signature is refused");
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_UNAUTHORIZED");
    let spoofed =
        format!("X-Matrix origin=\"{b_name}\",destination=\"{b_name}\",key=\"{key_id}\",sig=\"{}\"", "A".repeat(86));
    let resp = client.get(&url).header("Authorization", spoofed).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "nobody may claim to be B itself");

    // Aliases and the public directory of the other server, over federation.
    let hall = b.create_room(&bob, serde_json::json!({ "preset": "public_chat", "visibility": "public", "room_alias_name": "hall", "name": "B's hall" })).await;
    let alias = format!("#hall:{b_name}");
    let (status, body) =
        a.get(&format!("/_matrix/client/v3/directory/room/{}", common::enc(&alias)), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["room_id"].as_str(), body["servers"][0].as_str()), (Some(hall.as_str()), Some(b_name.as_str())));
    let (status, body) = a
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", common::enc(&format!("#nope:{b_name}"))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        a.get(&format!("/_matrix/client/v3/publicRooms?server={}", common::enc(&b_name)), Some(&alice.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["chunk"][0]["room_id"].as_str(), body["chunk"][0]["name"].as_str()),
        (Some(hall.as_str()), Some("B's hall"))
    );
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/publicRooms?server={}", common::enc(&b_name)),
            Some(&alice.token),
            serde_json::json!({ "filter": { "generic_search_term": "nothing like it" } }),
        )
        .await;
    assert_eq!((status, body["chunk"].as_array().map(Vec::len)), (200, Some(0)), "{body}");

    // Device keys of a user on the other server, for end-to-end encryption.
    let device_keys = serde_json::json!({
        "user_id": bob_id, "device_id": bob.device_id, "algorithms": ["m.megolm.v1.aes-sha2"],
        "keys": { format!("ed25519:{}", bob.device_id): "bob-ed" }, "signatures": {}
    });
    let (status, _) = b
        .post("/_matrix/client/v3/keys/upload", Some(&bob.token), serde_json::json!({ "device_keys": device_keys }))
        .await;
    assert_eq!(status, 200);
    let (status, body) = a
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            serde_json::json!({ "device_keys": { bob_id.clone(): [] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["device_keys"][&bob_id][&bob.device_id]["keys"][format!("ed25519:{}", bob.device_id)],
        "bob-ed",
        "{body}"
    );
    let unreachable_user = format!("@x:localhost:{}", free_port());
    let (_, body) = a
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&alice.token),
            serde_json::json!({ "device_keys": { unreachable_user: [] } }),
        )
        .await;
    assert_eq!(
        body["failures"].as_object().map(|f| f.len()),
        Some(1),
        "an unreachable server is reported in failures: {body}"
    );

    // A server that cannot be reached is named in a 502.
    let closed = free_port();
    let (status, body) = a
        .get(
            &format!("/_matrix/client/v3/profile/{}", common::enc(&format!("@x:localhost:{closed}"))),
            Some(&alice.token),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("DEV.PORCH.SERVER_UNREACHABLE")), "{body}");
    assert!(body["error"].as_str().unwrap().contains(&format!("localhost:{closed}")));
}

/// A porch running inside the test, so the test can send signed requests
/// with its key, as a server would.
#[tokio::test]
async fn device_lists_of_users_on_another_server() {
    use ruma::api::federation::device::get_devices;
    let (a, _a_name, _dir) = in_process_server().await;
    let (b, b_name) = federating_server().await;
    let bob = b.register("bob").await;
    b.put(
        &format!("/_matrix/client/v3/devices/{}", bob.device_id),
        Some(&bob.token),
        serde_json::json!({ "display_name": "Bob's laptop" }),
    )
    .await;
    let device_keys = serde_json::json!({
        "user_id": bob.user_id, "device_id": bob.device_id, "algorithms": [],
        "keys": { format!("ed25519:{}", bob.device_id): "bob-ed" }, "signatures": {}
    });
    b.post("/_matrix/client/v3/keys/upload", Some(&bob.token), serde_json::json!({ "device_keys": device_keys })).await;
    let server = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();
    let bob_id = ruma::OwnedUserId::try_from(bob.user_id.as_str()).unwrap();
    let answer = a.federation.send(&server, get_devices::v1::Request::new(bob_id.clone())).await.unwrap();
    assert_eq!(answer.user_id, bob_id);
    assert_eq!(answer.devices.len(), 1);
    assert_eq!(answer.devices[0].device_display_name.as_deref(), Some("Bob's laptop"));
    assert!(u64::from(answer.stream_id) > 0, "the stream id moves with key changes");
    let nobody = ruma::OwnedUserId::try_from(format!("@nobody:{b_name}")).unwrap();
    let err = a.federation.send(&server, get_devices::v1::Request::new(nobody)).await.unwrap_err();
    assert_eq!((err.status.as_u16(), err.errcode.as_ref()), (404, "M_NOT_FOUND"));
}

/// Events sent to `/send` are verified: a broken signature is refused, a
/// changed content (hash mismatch) is kept redacted, a valid one is kept.
#[tokio::test]
async fn forged_and_tampered_events_in_a_transaction() {
    use porch::service::{remote_join, rooms::NewEvent};
    use ruma::{CanonicalJsonValue, api::federation::transactions::send_transaction_message};
    let (a, a_name, _dir) = in_process_server().await;
    let (b, b_name) = federating_server().await;
    let bob = b.register("bob").await;
    let room_id = b.create_room(&bob, serde_json::json!({ "preset": "public_chat" })).await;
    let alice = ruma::OwnedUserId::try_from(format!("@alice:{a_name}")).unwrap();
    a.users.create(&alice, Some("password1"), porch::service::users::AccountKind::Member, false, None).unwrap();
    let room = ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let server = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();
    remote_join::join(&a, &alice, &room, vec![server.clone()], None).await.expect("join B's room");

    let message = |body: &str| {
        let (_, pdu) = a
            .rooms
            .prepare(&room, &alice, NewEvent::message("m.room.message", serde_json::json!({ "body": body })))
            .unwrap();
        pdu
    };
    let (valid, tampered, forged) = (message("valid"), message("original"), message("forged"));
    let mut tampered_object = tampered.canonical_object();
    tampered_object
        .insert("content".into(), CanonicalJsonValue::Object([("body".to_owned(), "changed".into())].into()));
    let mut forged_object = forged.canonical_object();
    forged_object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(1u32.into()));
    let raw = |object: &ruma::CanonicalJsonObject| serde_json::value::to_raw_value(object).unwrap();
    let mut request = send_transaction_message::v1::Request::new(
        "forgery-test".into(),
        ruma::OwnedServerName::try_from(a_name.as_str()).unwrap(),
        ruma::MilliSecondsSinceUnixEpoch::now(),
    );
    request.pdus = vec![valid.json.clone(), raw(&tampered_object), raw(&forged_object)];
    let results = a.federation.send(&server, request).await.unwrap().pdus;
    assert!(results[&valid.event_id].is_ok(), "{results:?}");
    assert!(results[&tampered.event_id].is_ok(), "a hash mismatch is kept, redacted: {results:?}");
    let refused: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(refused.len(), 1, "the forged signature is refused: {results:?}");
    assert!(refused[0].1.as_ref().unwrap_err().contains("signature"), "{refused:?}");

    let event = |id: &ruma::OwnedEventId| {
        format!("/_matrix/client/v3/rooms/{}/event/{}", common::enc(&room_id), common::enc(id.as_str()))
    };
    let (status, body) = b.get(&event(&valid.event_id), Some(&bob.token)).await;
    assert_eq!((status, body["content"]["body"].as_str()), (200, Some("valid")), "{body}");
    let (status, body) = b.get(&event(&tampered.event_id), Some(&bob.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], serde_json::json!({}), "the tampered content is not shown");
    let (status, _) = b.get(&event(&forged.event_id), Some(&bob.token)).await;
    assert_eq!(status, 404, "the forged event was not stored");
}

/// Verify `object`'s signature by `server` with `server`'s published key.
fn verify_signed_by(object: &Value, server: &str, keys_of_server: &Value) {
    let mut key_set = BTreeMap::new();
    for (key_id, key) in keys_of_server["verify_keys"].as_object().unwrap() {
        key_set.insert(key_id.clone(), Base64::parse(key["key"].as_str().unwrap()).unwrap());
    }
    let key_map: PublicKeyMap = BTreeMap::from([(server.to_owned(), key_set)]);
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(object.clone()).unwrap() else {
        panic!("not an object")
    };
    // verify_json checks every signature present: keep only `server`'s.
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|name, _| name == server);
    }
    ruma::signatures::verify_json(&key_map, &object).unwrap_or_else(|e| panic!("{server}'s signature: {e}"));
}

#[tokio::test]
async fn key_notary_vouches_for_servers_it_reached() {
    let (a, a_name) = federating_server().await;
    let (b, b_name) = federating_server().await;
    let client = insecure_client();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (a_base, b_base) = (a.federation_base.clone().unwrap(), b.federation_base.clone().unwrap());
    let (_, a_keys) = get(format!("{a_base}/_matrix/key/v2/server")).await;
    let (_, b_keys) = get(format!("{b_base}/_matrix/key/v2/server")).await;

    // B fetches A's keys for the asker and signs them too.
    let (status, body) = get(format!("{b_base}/_matrix/key/v2/query/{}", common::enc(&a_name))).await;
    assert_eq!(status, 200, "{body}");
    let keys = &body["server_keys"][0];
    assert_eq!(keys["server_name"], a_name.as_str());
    assert_eq!(keys["verify_keys"], a_keys["verify_keys"]);
    verify_signed_by(keys, &a_name, &a_keys);
    verify_signed_by(keys, &b_name, &b_keys);

    // The batch form: B answers for A and for itself, and leaves out a
    // server nobody can reach.
    let unreachable = format!("localhost:{}", free_port());
    let resp = client
        .post(format!("{b_base}/_matrix/key/v2/query"))
        .json(
            &serde_json::json!({ "server_keys": { a_name.clone(): {}, b_name.clone(): {}, unreachable.clone(): {} } }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    let mut names: Vec<&str> =
        body["server_keys"].as_array().unwrap().iter().map(|k| k["server_name"].as_str().unwrap()).collect();
    names.sort();
    let mut expected = vec![a_name.as_str(), b_name.as_str()];
    expected.sort();
    assert_eq!(names, expected, "{body}");
    for keys in body["server_keys"].as_array().unwrap() {
        let name = keys["server_name"].as_str().unwrap();
        verify_signed_by(keys, name, if name == a_name { &a_keys } else { &b_keys });
        verify_signed_by(keys, &b_name, &b_keys);
    }
}

#[tokio::test]
async fn openid_tokens_prove_a_users_identity_to_third_parties() {
    let (a, _) = federating_server().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/user/{}/openid/request_token", common::enc(&alice.user_id)),
            Some(&alice.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["token_type"].as_str(), body["matrix_server_name"].as_str()),
        (Some("Bearer"), Some(a.server_name.as_str()))
    );
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let token = body["access_token"].as_str().unwrap();
    assert_ne!(token, alice.token, "not the account's access token");

    // The third party asks the server (as a federation client would).
    let client = insecure_client();
    let base = a.federation_base.clone().unwrap();
    let resp =
        client.get(format!("{base}/_matrix/federation/v1/openid/userinfo?access_token={token}")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["sub"], alice.user_id.as_str());
    let resp =
        client.get(format!("{base}/_matrix/federation/v1/openid/userinfo?access_token=nope")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_UNKNOWN_TOKEN");
    let resp = client
        .get(format!("{base}/_matrix/federation/v1/openid/userinfo?access_token={}", alice.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "an access token is no OpenID token");

    // Nobody gets a token in someone else's name.
    let (status, body) = a
        .post(
            &format!("/_matrix/client/v3/user/{}/openid/request_token", common::enc(&alice.user_id)),
            Some(&bob.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
}

/// A name server on loopback for the test: `_matrix-fed._tcp.<name>` has an
/// SRV record pointing at `localhost:<port>`; every other name but
/// `localhost` does not exist.
async fn srv_name_server(name: &'static str, port: u16) -> std::net::SocketAddr {
    use hickory_proto::{
        op::{Message, ResponseCode},
        rr::{Name, RData, Record, RecordType, rdata},
    };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.recursion_available = true;
            answer.metadata.authoritative = true;
            for q in &query.queries {
                answer.add_query(q.clone());
                let asked = q.name().to_utf8().to_lowercase();
                match q.query_type() {
                    RecordType::SRV if asked == format!("_matrix-fed._tcp.{name}.") => {
                        let target = Name::from_ascii("localhost.").unwrap();
                        answer.add_answer(Record::from_rdata(
                            q.name().clone(),
                            60,
                            RData::SRV(rdata::SRV::new(10, 5, port, target)),
                        ));
                    }
                    RecordType::A if asked == "localhost." => {
                        answer.add_answer(Record::from_rdata(
                            q.name().clone(),
                            60,
                            RData::A(rdata::A(std::net::Ipv4Addr::LOCALHOST)),
                        ));
                    }
                    _ if asked == "localhost." => {}
                    _ => answer.metadata.response_code = ResponseCode::NXDomain,
                }
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test]
async fn servers_found_through_srv_records() {
    // B is named `srv-target.test`, a name only our test DNS knows, whose
    // SRV record points at B's federation port.
    let b_port = free_port();
    let mut b_options = common::federating_options(b_port);
    b_options.env.retain(|(k, _)| k != "PORCH_SERVER_NAME");
    b_options.env.push(("PORCH_SERVER_NAME".into(), "srv-target.test".into()));
    let mut b = TestServer::start_with(b_options).await;
    b.server_name = "srv-target.test".into();
    let dns = srv_name_server("srv-target.test", b_port).await;
    let a_port = free_port();
    let mut a_options = common::federating_options(a_port);
    a_options.env.push(("PORCH_FEDERATION__DNS_SERVERS".into(), format!("[\"{dns}\"]")));
    let mut a = TestServer::start_with(a_options).await;
    a.server_name = format!("localhost:{a_port}");

    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    assert_eq!(bob.user_id, "@bob:srv-target.test");
    b.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", common::enc(&bob.user_id)),
        Some(&bob.token),
        serde_json::json!({ "displayname": "Bob behind SRV" }),
    )
    .await;
    let (status, profile) =
        a.get(&format!("/_matrix/client/v3/profile/{}", common::enc(&bob.user_id)), Some(&alice.token)).await;
    assert_eq!(status, 200, "A reaches srv-target.test through its SRV record: {profile}");
    assert_eq!(profile["displayname"], "Bob behind SRV");

    // A name with no SRV record and no address is reported unreachable.
    let (status, body) =
        a.get(&format!("/_matrix/client/v3/profile/{}", common::enc("@x:nowhere.test")), Some(&alice.token)).await;
    assert_eq!((status, body["errcode"].as_str()), (502, Some("DEV.PORCH.SERVER_UNREACHABLE")), "{body}");
}

#[tokio::test]
async fn transactions_are_rate_limited_per_server_and_retries_not_replayed() {
    use ruma::api::federation::transactions::send_transaction_message;
    let (a, a_name, _dir) = in_process_server().await;
    let b_port = free_port();
    let mut options = common::federating_options(b_port);
    options.env.push(("PORCH_RATE_LIMITS__FEDERATION_TRANSACTIONS_BURST".into(), "3".into()));
    options.env.push(("PORCH_RATE_LIMITS__FEDERATION_TRANSACTIONS_PER_SECOND".into(), "0.01".into()));
    let mut b = TestServer::start_with(options).await;
    b.server_name = format!("localhost:{b_port}");
    let bob = b.register("bob").await;
    let server = ruma::OwnedServerName::try_from(b.server_name.as_str()).unwrap();
    let origin = ruma::OwnedServerName::try_from(a_name.as_str()).unwrap();
    let transaction = |txn_id: &str| {
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.into(),
            origin.clone(),
            ruma::MilliSecondsSinceUnixEpoch::now(),
        );
        let edu = serde_json::json!({
            "edu_type": "m.direct_to_device",
            "content": {
                "sender": format!("@alice:{a_name}"), "type": "m.test", "message_id": txn_id,
                "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": txn_id } } },
            },
        });
        request.edus = vec![ruma::serde::Raw::from_json(serde_json::value::to_raw_value(&edu).unwrap())];
        request
    };

    // The same transaction sent twice (its answer lost): delivered once.
    a.federation.send(&server, transaction("t1")).await.unwrap();
    a.federation.send(&server, transaction("t1")).await.unwrap();
    a.federation.send(&server, transaction("t2")).await.unwrap();
    let sync = b.sync(&bob, None, 0).await;
    let received: Vec<&str> =
        sync["to_device"]["events"].as_array().unwrap().iter().filter_map(|e| e["content"]["n"].as_str()).collect();
    assert_eq!(received, ["t1", "t2"], "{sync}");

    // A fourth transaction within the burst's time is refused until later.
    // (porch passes another server's 429 on to its own callers as a 502.)
    let err = a.federation.send(&server, transaction("t3")).await.unwrap_err();
    assert!(err.message.contains("429 / M_LIMIT_EXCEEDED"), "{}", err.message);
}

#[tokio::test]
async fn backfill_hides_what_a_joined_visibility_room_said_before_the_server_joined() {
    use ruma::api::federation::backfill::get_backfill;
    let (x, x_name, _dir) = in_process_server().await;
    let (b, b_name) = federating_server().await;
    let bob = b.register("bob").await;
    let room_id = b
        .create_room(
            &bob,
            serde_json::json!({
                "preset": "public_chat",
                "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }],
            }),
        )
        .await;
    b.send_text(&bob, &room_id, "before X joined").await;
    let xavier = ruma::OwnedUserId::try_from(format!("@xavier:{x_name}")).unwrap();
    x.users.create(&xavier, Some("password1"), porch::service::users::AccountKind::Member, false, None).unwrap();
    let room = ruma::OwnedRoomId::try_from(room_id.as_str()).unwrap();
    let server = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();
    porch::service::remote_join::join(&x, &xavier, &room, vec![server.clone()], None).await.expect("join B's room");
    let after = b.send_text(&bob, &room_id, "after X joined").await;

    let latest = ruma::OwnedEventId::try_from(after.as_str()).unwrap();
    let answer = x
        .federation
        .send(&server, get_backfill::v1::Request::new(room.clone(), vec![latest], 50u32.into()))
        .await
        .unwrap();
    let events: Vec<Value> = answer.pdus.iter().map(|raw| serde_json::from_str(raw.get()).unwrap()).collect();
    let bodies: Vec<&str> = events.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, ["after X joined"], "only what X's users could see comes whole: {bodies:?}");
    let messages = events.iter().filter(|e| e["type"] == "m.room.message").count();
    assert_eq!(messages, 2, "the earlier message is there, redacted");
    assert!(
        events.iter().any(|e| e["type"] == "m.room.create" && !e["content"].as_object().unwrap().is_empty()),
        "what auth needs stays"
    );
}

#[tokio::test]
async fn housekeeping_forgets_expired_openid_and_login_tokens_and_auth_sessions() {
    let (s, _name, _dir) = in_process_server().await;
    let alice = ruma::OwnedUserId::try_from(format!("@alice:{}", s.settings.server_name)).unwrap();
    use porch::service::tokens::{self, TokenKind};
    let token = tokens::issue(&s, TokenKind::OpenId, &alice).unwrap();
    let login_token = tokens::issue(&s, TokenKind::Login, &alice).unwrap();
    // A UIA session opened by a first, unauthenticated step.
    let flows: &[&[&str]] = &[&["m.login.dummy"]];
    assert!(s.uiaa.authorize(&*s, None, flows, "test", None).is_err(), "a challenge opens a session");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;

    // Nothing is due yet.
    assert_eq!(tokens::prune_expired(&s, now).unwrap(), 0);
    assert_eq!(s.uiaa.prune_expired(now).unwrap(), 0);
    assert_eq!(tokens::openid_user(&s, &token).unwrap(), alice);

    // Two hours on, both are gone.
    porch::service::housekeeping::run(&s, now + 2 * 3600 * 1000).unwrap();
    assert_eq!(tokens::prune_expired(&s, now + 2 * 3600 * 1000).unwrap(), 0, "already pruned");
    assert_eq!(s.uiaa.prune_expired(now + 2 * 3600 * 1000).unwrap(), 0, "already pruned");
    let err = tokens::openid_user(&s, &token).unwrap_err();
    assert_eq!(err.errcode.as_ref(), "M_UNKNOWN_TOKEN");
    let err = tokens::redeem_login_token(&s, &login_token).unwrap_err();
    assert_eq!(err.errcode.as_ref(), "M_FORBIDDEN", "the login token went with them");
}

#[tokio::test]
async fn keys_of_an_unreachable_server_come_from_a_trusted_notary() {
    let (notary, notary_name) = federating_server().await;
    let (mut b, b_name) = federating_server().await;
    let client = insecure_client();
    let b_keys: Value = client
        .get(format!("{}/_matrix/key/v2/server", b.federation_base.clone().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The notary learns B's keys while B is up.
    let resp = client
        .get(format!("{}/_matrix/key/v2/query/{}", notary.federation_base.clone().unwrap(), common::enc(&b_name)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    b.kill();

    let trusting = notary_name.clone();
    let (x, _, _dir) = in_process_server_with(move |c| c.federation.trusted_key_servers = vec![trusting]).await;
    let (y, _, _dir_y) = in_process_server().await;
    let b_server = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();
    let keys = x.federation.verify_keys(&b_server, &[], None).await.expect("B's keys through the notary");
    let published: Vec<(String, String)> = b_keys["verify_keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, k)| (id.clone(), k["key"].as_str().unwrap().to_owned()))
        .collect();
    let got: Vec<(String, String)> = keys.iter().map(|(id, k)| (id.clone(), k.encode())).collect();
    assert_eq!(got, published, "the keys B published, vouched for by the notary");
    let err = y.federation.verify_keys(&b_server, &[], None).await.unwrap_err();
    assert_eq!(err.errcode.as_ref(), "DEV.PORCH.SERVER_UNREACHABLE", "without a notary: {}", err.message);
}

#[tokio::test]
async fn media_is_served_to_servers_through_authenticated_federation_media() {
    use ruma::api::federation::authenticated_media::{FileOrLocation, get_content, get_content_thumbnail};
    let (x, _, _dir) = in_process_server().await;
    let (b, b_name) = federating_server().await;
    let bob = b.register("bob").await;
    let png = b"\x89PNG\r\n\x1a\nbob's picture".to_vec();
    let (_, upload) = b.upload(&bob, "image/png", png.clone()).await;
    let media_id = upload["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let server = ruma::OwnedServerName::try_from(b_name.as_str()).unwrap();

    let answer = x.federation.send(&server, get_content::v1::Request::new(media_id.clone())).await.expect("download");
    let FileOrLocation::File(content) = answer.content else { panic!("a redirect instead of the file") };
    assert_eq!((content.file, content.content_type.as_deref()), (png.clone(), Some("image/png")));
    let thumbnail = get_content_thumbnail::v1::Request::new(media_id.clone(), 32u32.into(), 32u32.into());
    let answer = x.federation.send(&server, thumbnail).await.expect("thumbnail");
    assert!(matches!(answer.content, FileOrLocation::File(ref c) if c.file == png));
    let missing = x.federation.send(&server, get_content::v1::Request::new("nosuchmedia".into())).await;
    assert_eq!(missing.err().map(|e| e.errcode.to_string()).as_deref(), Some("M_NOT_FOUND"));

    // Unsigned, nobody gets it.
    let url = format!("{}/_matrix/federation/v1/media/download/{media_id}", b.federation_base.clone().unwrap());
    let resp = insecure_client().get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "federation media needs a server's signature");
}

/// A server that rotates its signing key: porch, which cached the first
/// key, fetches the keys again when a signature names one it does not know
/// (once per 30 s at most), and still verifies events signed with the old
/// key before it expired.
#[tokio::test]
async fn a_rotated_signing_key_is_fetched_again_and_old_keys_still_verify() {
    use ruma::{CanonicalJsonObject, RoomVersionId, signatures::Ed25519KeyPair};
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (porch, _, _dir) = in_process_server().await;

    // The other server, `x`: its key document is served as we change it.
    let port = free_port();
    let x_name = format!("localhost:{port}");
    let key = |version: &str| Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap();
    let (first, second, third) = (key("first"), key("second"), key("third"));
    let b64 = |k: &Ed25519KeyPair| Base64::<ruma::serde::base64::Standard>::new(k.public_key().to_vec()).encode();
    let published: Arc<Mutex<Value>> = Arc::new(Mutex::new(Value::Null));
    let fetches = Arc::new(AtomicUsize::new(0));
    let publish = |current: &Ed25519KeyPair, old: Option<(&Ed25519KeyPair, u64)>| {
        let mut doc = serde_json::json!({
            "server_name": x_name,
            "valid_until_ts": 4_000_000_000_000u64,
            "verify_keys": { format!("ed25519:{}", current.version()): { "key": b64(current) } },
            "old_verify_keys": {},
        });
        if let Some((old, expired)) = old {
            doc["old_verify_keys"][format!("ed25519:{}", old.version())] =
                serde_json::json!({ "key": b64(old), "expired_ts": expired });
        }
        let mut object: CanonicalJsonObject = serde_json::from_value(doc).unwrap();
        ruma::signatures::sign_json(&x_name, current, &mut object).unwrap();
        *published.lock().unwrap() = serde_json::to_value(&object).unwrap();
    };
    publish(&first, None);
    let app = {
        let (published, fetches) = (published.clone(), fetches.clone());
        axum::Router::new().route(
            "/_matrix/key/v2/server",
            axum::routing::get(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let doc = published.lock().unwrap().clone();
                async move { axum::Json(doc) }
            }),
        )
    };
    let _tls_dir = serve_tls(app, port).await;

    let room_version = RoomVersionId::V12;
    let rules = room_version.rules().unwrap();
    let event = |signer: &Ed25519KeyPair, ts: u64| {
        let mut object: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "room_id": "!room:elsewhere.example", "type": "m.room.message", "sender": format!("@x:{x_name}"),
            "origin_server_ts": ts, "depth": 5, "prev_events": ["$prev"], "auth_events": ["$auth"],
            "content": { "msgtype": "m.text", "body": format!("signed with {}", signer.version()) },
        }))
        .unwrap();
        ruma::signatures::hash_and_sign_event(&x_name, signer, &mut object, &rules.redaction).unwrap();
        object
    };
    let now = porch::util::now_ms();
    porch.federation.verify_pdu(&room_version, event(&first, now)).await.expect("signed with the first key");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // x rotates: the first key now only verifies what it signed before `now`.
    publish(&second, Some((&first, now)));
    porch.federation.verify_pdu(&room_version, event(&second, now + 1)).await.expect("the new key is fetched");
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "one fetch for the unknown key id");
    porch.federation.verify_pdu(&room_version, event(&first, now - 1000)).await.expect("old key, event from before");
    assert!(
        porch.federation.verify_pdu(&room_version, event(&first, now + 5000)).await.is_err(),
        "the old key does not verify events after it expired"
    );
    // A third key within 30 s is not fetched for: a forger cannot make porch hammer x.
    publish(&third, Some((&second, now + 2)));
    assert!(porch.federation.verify_pdu(&room_version, event(&third, now + 3)).await.is_err());
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "fetching again is rate-limited");
}

/// Serve `app` over TLS on `port` of loopback, as another server would
/// (self-signed; the returned folder holds its certificate).
async fn serve_tls(app: axum::Router, port: u16) -> tempfile::TempDir {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls_dir = tempfile::tempdir().unwrap();
    let mut config = porch::config::Config { server_name: format!("localhost:{port}"), ..Default::default() };
    config.database.path = tls_dir.path().to_path_buf();
    let acceptor = porch::tls::acceptor(&config.validate().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let timeouts = porch::listener::Timeouts {
        headers: std::time::Duration::from_secs(5),
        body: std::time::Duration::from_secs(5),
    };
    tokio::spawn(porch::listener::serve(app, listener, Some(acceptor), timeouts, std::future::pending()));
    tls_dir
}

/// Stock sytest's fake server answers a transaction with `{}`, not the
/// spec's `{"pdus": {}}`: a 200 is delivered all the same (resending would
/// replay the events), while per-PDU refusals are still read.
#[tokio::test]
async fn a_transaction_answered_200_without_pdus_is_delivered() {
    use ruma::api::federation::transactions::send_transaction_message;
    let (porch, porch_name, _dir) = in_process_server().await;
    let port = free_port();
    let answer = std::sync::Arc::new(std::sync::Mutex::new(serde_json::json!({})));
    let app = {
        let answer = answer.clone();
        axum::Router::new().route(
            "/_matrix/federation/v1/send/{txn}",
            axum::routing::put(move || {
                let body = answer.lock().unwrap().clone();
                async move { axum::Json(body) }
            }),
        )
    };
    let _tls = serve_tls(app, port).await;
    let peer = ruma::OwnedServerName::try_from(format!("localhost:{port}")).unwrap();
    let transaction = || {
        send_transaction_message::v1::Request::new(
            "t1".into(),
            ruma::OwnedServerName::try_from(porch_name.as_str()).unwrap(),
            ruma::MilliSecondsSinceUnixEpoch::now(),
        )
    };
    let results = porch.federation.send_transaction(&peer, transaction()).await.expect("`{}` is delivered");
    assert!(results.is_empty());
    *answer.lock().unwrap() = serde_json::json!({ "pdus": { "$refused": { "error": "no" } } });
    let results = porch.federation.send_transaction(&peer, transaction()).await.unwrap();
    let refused = ruma::OwnedEventId::try_from("$refused").unwrap();
    assert_eq!(results[&refused], Err("no".to_owned()), "{results:?}");
    *answer.lock().unwrap() = serde_json::json!([1, 2]);
    assert!(porch.federation.send_transaction(&peer, transaction()).await.is_err(), "not an object: not delivered");
}

//! The federation listener: TLS with a self-signed certificate made at first
//! start, the server's published keys (signed, verifiable), and its version.

mod common;

use std::collections::BTreeMap;

use common::{Options, TestServer};
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

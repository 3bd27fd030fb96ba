//! matrix-rust-sdk, the code Element X runs, drives porch over simplified
//! sliding sync: `tests/clients/rust-sdk` (its own workspace, built here
//! into the target directory) logs two users in, checks the room list's
//! order and that a new message moves a room to the top, paginates a
//! timeline back, and has one user decrypt the other's encrypted message.

mod common;

use std::{path::PathBuf, process::Command, time::Duration};

use common::{TestServer, enc};
use serde_json::json;

/// Build the scenario (once per target directory; later runs are no-ops).
fn scenario_binary() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/rust-sdk/Cargo.toml");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rust-sdk-target");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("cargo build of the rust-sdk scenario");
    assert!(status.success(), "the rust-sdk scenario did not build");
    target.join("debug/porch-rust-sdk-scenario")
}

#[tokio::test]
async fn matrix_rust_sdk_room_list_timeline_and_encryption() {
    let binary = tokio::task::spawn_blocking(scenario_binary).await.unwrap();
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;

    // Oldest activity first: the encrypted room, the room with history, then two more.
    let secret = s
        .create_room(
            &alice,
            json!({
                "name": "secret",
                "preset": "private_chat",
                "invite": [bob.user_id],
                "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
            }),
        )
        .await;
    assert_eq!(s.join(&bob, &secret).await.0, 200);
    let history = s.create_room(&alice, json!({ "name": "history", "preset": "private_chat" })).await;
    for n in 0..30 {
        s.send_text(&alice, &history, &format!("history {n}")).await;
    }
    let middle = s.create_room(&alice, json!({ "name": "middle", "preset": "private_chat" })).await;
    s.send_text(&alice, &middle, "in the middle").await;
    let newest = s.create_room(&alice, json!({ "name": "newest", "preset": "private_chat" })).await;
    s.send_text(&alice, &newest, "newest").await;

    let rooms = format!("newest={newest},middle={middle},history={history},secret={secret}");
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("rust-sdk-scenario");
    let (out, err) = (logs.with_extension("out"), logs.with_extension("err"));
    let mut child = tokio::process::Command::new(&binary)
        .env("PORCH_URL", &s.base)
        .env("PORCH_PASSWORD", "correct horse battery")
        .env("PORCH_ROOMS", rooms)
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run the scenario");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait()).await;
    let _ = child.kill().await;
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let tail: String =
        stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(
        status.is_ok_and(|s| s.is_ok_and(|s| s.success())),
        "rust-sdk scenario failed or took over 300 s:\n{stdout}\n{tail}"
    );
    for step in ["logged in", "newest activity first", "moved its room to the top", "paginated back", "decrypted"] {
        assert!(stdout.lines().any(|l| l.starts_with("ok:") && l.contains(step)), "step `{step}` missing:\n{stdout}");
    }

    // The server only ever held ciphertext.
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&secret));
    let (status, page) = s.get(&path, Some(&bob.token)).await;
    assert_eq!(status, 200, "{page}");
    let events = page["chunk"].as_array().unwrap();
    let sent: Vec<_> =
        events.iter().filter(|e| e["sender"] == alice.user_id.as_str() && e["state_key"].is_null()).collect();
    assert!(sent.iter().any(|e| e["type"] == "m.room.encrypted"), "{events:?}");
    assert!(!serde_json::to_string(&events).unwrap().contains("the cake is in the fridge"));
}

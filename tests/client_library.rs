//! A real Matrix client library drives porch: matrix-nio (Python, with
//! vodozemac for end-to-end encryption), in a virtual environment the test
//! makes on first use.

mod common;

use std::{path::PathBuf, process::Command};

use common::{TestServer, federating_server};

/// A venv with matrix-nio and its encryption extra, made once per target directory.
fn nio_python() -> PathBuf {
    common::python_venv("nio-venv", "import nio, vodozemac", &["matrix-nio[e2e]==0.26.0"], "")
}

#[tokio::test]
async fn matrix_nio_two_users_register_talk_paginate_leave() {
    let python = tokio::task::spawn_blocking(nio_python).await.unwrap();
    let server = TestServer::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/nio_scenario.py");
    let output =
        tokio::process::Command::new(python).arg(script).arg(&server.base).output().await.expect("run nio scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "nio scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("nio scenario: OK"), "{stdout}");
}

#[tokio::test]
async fn matrix_nio_encrypted_chat_across_two_servers() {
    let python = tokio::task::spawn_blocking(nio_python).await.unwrap();
    let (a, _) = federating_server().await;
    let (b, _) = federating_server().await;
    let store = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/nio_e2ee_federation.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&a.base)
        .arg(&b.base)
        .arg(store.path())
        .output()
        .await
        .expect("run nio e2ee scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "nio e2ee scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("nio e2ee federation: OK"), "{stdout}");
}

/// The js-sdk scenario's folder, with matrix-js-sdk installed from npm on first use.
fn js_sdk_harness() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/js-sdk");
    let lock = std::fs::File::create(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("js-sdk.lock")).unwrap();
    lock.lock().unwrap();
    if !dir.join("node_modules/matrix-js-sdk").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-package-lock"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(status.success(), "npm install of matrix-js-sdk failed in {}", dir.display());
    }
    dir
}

#[tokio::test]
async fn matrix_js_sdk_relations_threads_search_backup_push() {
    let harness = tokio::task::spawn_blocking(js_sdk_harness).await.unwrap();
    let server = TestServer::start().await;
    let output = tokio::process::Command::new("node")
        .arg(harness.join("scenario.mjs"))
        .arg(&server.base)
        .current_dir(&harness)
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "js-sdk scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("js-sdk scenario: OK"), "{stdout}");
}

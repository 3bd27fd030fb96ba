//! Start-up configuration: bad values stop porch with one sentence naming
//! the key and the fix; files and environment variables both work.

use std::process::Command;

fn run_porch(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_porch"));
    cmd.args(args).env("PORCH_DATABASE__PATH", dir.path().join("db")).env("PORCH_LISTEN__CLIENT", "127.0.0.1:0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A valid config would run forever; every case here must exit at once.
    let output = cmd.output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_values_name_the_key_and_the_fix() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PORCH_SERVER_NAME", "not a server name!")], "`server_name`"),
        (&[("PORCH_LISTEN__CLIENT", "nowhere")], "`listen.client`"),
        (&[("PORCH_ROOMS__DEFAULT_VERSION", "13")], "`rooms.default_version`"),
        (&[("PORCH_LIMITS__MAX_REQUEST_BYTES", "10")], "`limits.max_request_bytes`"),
        (&[("PORCH_REGISTRATION__ENABLED", "perhaps")], "`registration.enabled`"),
        (&[("PORCH_REGISTRATION__TOKENS", "[\"has space\"]")], "`registration.tokens`"),
        (&[("PORCH_OUTBOUND__IP_RANGE_ALLOWLIST", "[\"10.0.0.0/40\"]")], "`outbound.ip_range_allowlist`"),
        (&[("PORCH_LISTEN__TRUSTED_PROXIES", "[\"proxy\"]")], "`listen.trusted_proxies`"),
    ];
    for (env, key) in cases {
        let (code, stderr) = run_porch(env, &[]);
        assert_eq!(code, 2, "{env:?} should stop start-up: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one sentence: {stderr}");
        assert!(lines[0].contains(key), "names {key}: {stderr}");
    }
}

#[test]
fn unknown_keys_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("porch.toml");
    std::fs::write(&file, "server_name = \"example.org\"\n[listen]\nclinet = \"127.0.0.1:1\"\n").unwrap();
    let (code, stderr) = run_porch(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("clinet"), "{stderr}");
    let (code, stderr) = run_porch(&[], &["--config", "/nonexistent/porch.toml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let config = porch::config::Config::load(Some(std::path::Path::new(example))).expect("config.example.toml loads");
    config.validate().expect("config.example.toml is valid");
}

/// `PORCH_ROOMS__DEFAULT_VERSION=10` arrives as a number, `"10"` in a file
/// as a string: both mean room version 10.
#[test]
fn a_numeric_room_version_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("porch.toml");
    for text in ["[rooms]\ndefault_version = 11\n", "[rooms]\ndefault_version = \"11\"\n"] {
        std::fs::write(&file, text).unwrap();
        let config = porch::config::Config::load(Some(&file)).expect(text);
        assert_eq!(config.rooms.default_version, "11");
        config.validate().expect("version 11 is valid");
    }
    let (code, stderr) = run_porch(&[("PORCH_ROOMS__DEFAULT_VERSION", "10"), ("PORCH_SERVER_NAME", "not valid!")], &[]);
    assert!(code == 2 && stderr.contains("`server_name`"), "only the server name is refused: {stderr}");
}

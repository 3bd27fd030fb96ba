//! Test harness: runs the real `porch` binary on an ephemeral port with a
//! temporary RocksDB, and talks to it over HTTP.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::{Value, json};

/// A homeserver's client API, as tests call it (porch or a peer).
pub struct Homeserver {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct TestServer {
    pub child: Child,
    pub hs: Homeserver,
    /// `https://…` of the federation listener, when one was asked for.
    pub federation_base: Option<String>,
    pub server_name: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestServer {
    type Target = Homeserver;

    fn deref(&self) -> &Homeserver {
        &self.hs
    }
}

#[derive(Clone, Default)]
pub struct Options {
    pub env: Vec<(String, String)>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut server = Self::launch(&dir, &options);
        server._tmp = Some(tmp);
        server
    }

    /// Start (again) on an existing database folder.
    pub fn launch(dir: &Path, options: &Options) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_porch"));
        cmd.env_remove("PORCH_TEST_LOG")
            .env("PORCH_SERVER_NAME", "porch.test")
            .env("PORCH_LISTEN__CLIENT", "127.0.0.1:0")
            .env("PORCH_DATABASE__PATH", dir.join("db"))
            .env("PORCH_REGISTRATION__SHARED_SECRET", "test-secret")
            .env("PORCH_RATE_LIMITS__LOGIN_BURST", "1000")
            .env("PORCH_RATE_LIMITS__REGISTRATION_BURST", "1000")
            .env("PORCH_RATE_LIMITS__LOGIN_PER_SECOND", "1000")
            .env("PORCH_RATE_LIMITS__REGISTRATION_PER_SECOND", "1000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start porch");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("PORCH_TEST_LOG").is_some() {
                        eprintln!("[porch] {line}");
                    }
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut federation_base = None;
        let base = loop {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            let line =
                rx.recv_timeout(remaining).unwrap_or_else(|_| panic!("porch did not report readiness within 30s"));
            if let Some(rest) = line.split("federation API on ").nth(1) {
                federation_base = Some(rest.split_whitespace().next().expect("address").to_owned());
            }
            if let Some(rest) = line.split("client API on ").nth(1) {
                break rest.split_whitespace().next().expect("address").to_owned();
            }
        };
        // Keep draining output so the pipes never fill.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self {
            child,
            hs: Homeserver { base, http: client() },
            federation_base,
            server_name: "porch.test".into(),
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Homeserver {
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, token, Some(body)).await
    }

    /// Register `name` with the dummy flow; returns a signed-in user.
    pub async fn register(&self, name: &str) -> User {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({ "username": name, "password": "correct horse battery", "auth": { "type": "m.login.dummy" } }),
            )
            .await;
        assert_eq!(status, 200, "register {name}: {body}");
        User {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Sign `name` (registered by [`Self::register`]) in on a new device.
    pub async fn login(&self, name: &str, device_id: &str) -> User {
        let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": name },
            "password": "correct horse battery", "device_id": device_id });
        let (status, body) = self.post("/_matrix/client/v3/login", None, body).await;
        assert_eq!(status, 200, "login {name}: {body}");
        User {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Register a server admin through the shared-secret endpoint.
    pub async fn register_admin(&self, name: &str) -> User {
        use hmac::{Hmac, Mac};
        let (_, body) = self.get("/_synapse/admin/v1/register", None).await;
        let nonce = body["nonce"].as_str().expect("nonce").to_owned();
        let password = "admin password 1";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test-secret").expect("hmac");
        mac.update(format!("{nonce}\0{name}\0{password}\0admin").as_bytes());
        let mac = hex::encode(mac.finalize().into_bytes());
        let (status, body) = self
            .post(
                "/_synapse/admin/v1/register",
                None,
                json!({ "nonce": nonce, "username": name, "password": password, "admin": true, "mac": mac }),
            )
            .await;
        assert_eq!(status, 200, "admin registration: {body}");
        User {
            user_id: body["user_id"].as_str().unwrap().to_owned(),
            token: body["access_token"].as_str().unwrap().to_owned(),
            device_id: body["device_id"].as_str().unwrap().to_owned(),
        }
    }

    /// Create a guest room; returns (room id, link token, link id).
    pub async fn guest_room(&self, user: &User, body: Value) -> (String, String, String) {
        let (status, resp) = self.post("/_porch/client/v1/guest_rooms", Some(&user.token), body).await;
        assert_eq!(status, 200, "create guest room: {resp}");
        (
            resp["room_id"].as_str().unwrap().to_owned(),
            resp["link"]["token"].as_str().unwrap().to_owned(),
            resp["link"]["id"].as_str().unwrap().to_owned(),
        )
    }

    /// Join through a link as a new temporary guest.
    pub async fn redeem_as_guest(&self, token: &str, name: &str) -> (u16, Value) {
        self.post(&format!("/_porch/client/v1/guest_links/{token}/join"), None, json!({ "display_name": name })).await
    }

    /// Upload media as `user`; the status and the answer.
    pub async fn upload(&self, user: &User, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base))
            .bearer_auth(&user.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("upload");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_room(&self, user: &User, body: Value) -> String {
        let (status, resp) = self.post("/_matrix/client/v3/createRoom", Some(&user.token), body).await;
        assert_eq!(status, 200, "createRoom: {resp}");
        resp["room_id"].as_str().unwrap().to_owned()
    }

    pub async fn send_text(&self, user: &User, room_id: &str, text: &str) -> String {
        let (status, resp) = self.try_send_text(user, room_id, text).await;
        assert_eq!(status, 200, "send: {resp}");
        resp["event_id"].as_str().unwrap().to_owned()
    }

    /// Send a text message and return the answer, whatever it is.
    pub async fn try_send_text(&self, user: &User, room_id: &str, text: &str) -> (u16, Value) {
        let txn = uuid_like();
        self.put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room_id)),
            Some(&user.token),
            json!({ "msgtype": "m.text", "body": text }),
        )
        .await
    }

    pub async fn send_text_status(&self, user: &User, room_id: &str, text: &str) -> u16 {
        self.try_send_text(user, room_id, text).await.0
    }

    pub async fn join(&self, user: &User, room: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room)), Some(&user.token), json!({})).await
    }

    pub async fn sync(&self, user: &User, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={since}"));
        }
        let (status, body) = self.get(&path, Some(&user.token)).await;
        assert_eq!(status, 200, "sync: {body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client for tests (installs the TLS crypto provider once).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Connections idle longer than porch's header timeout (10 s) are closed
    // by porch; reusing one races that close, so they are dropped first.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

pub fn enc(s: &str) -> String {
    url_encode(s)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("txn{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Timeline events of a room in a sync response.
pub fn timeline<'a>(sync: &'a Value, room_id: &str) -> Vec<&'a Value> {
    sync["rooms"]["join"][room_id]["timeline"]["events"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

pub mod sygnal;
pub mod synapse;

/// The python of a virtual environment `name` under the target directory,
/// with `packages` pip-installed unless `check` (Python code) already runs
/// there: made once per target directory, a lock keeping parallel tests
/// from making it twice. `hint` follows the message if pip fails.
pub fn python_venv(name: &str, check: &str, packages: &[&str], hint: &str) -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join(name);
    let python = venv.join("bin/python");
    let lock = std::fs::File::create(tmp.join(format!("{name}.lock"))).unwrap();
    lock.lock().unwrap();
    let installed = Command::new(&python).args(["-c", check]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !installed {
        let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
        assert!(status.success(), "could not make a Python virtual environment (python3 -m venv)");
        let status =
            Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(packages).status().expect("pip");
        assert!(status.success(), "could not install {} into {}{hint}", packages.join(" "), venv.display());
    }
    python
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Settings of a porch whose server name is `localhost:PORT`, PORT being its
/// TLS federation listener, as the spec's discovery resolves it.
pub fn federating_options(port: u16) -> Options {
    Options {
        env: vec![
            ("PORCH_SERVER_NAME".into(), format!("localhost:{port}")),
            ("PORCH_LISTEN__FEDERATION".into(), format!("127.0.0.1:{port}")),
            // The servers use self-signed certificates: the labs-only switch.
            ("PORCH_FEDERATION__VERIFY_CERTIFICATES".into(), "false".into()),
            // The peers run on loopback, which porch refuses to reach by default.
            ("PORCH_OUTBOUND__IP_RANGE_ALLOWLIST".into(), r#"["127.0.0.0/8", "::1"]"#.into()),
            // A restarted peer is retried within seconds.
            ("PORCH_FEDERATION__MAX_RETRY_INTERVAL".into(), "2s".into()),
        ],
    }
}

pub async fn federating_server() -> (TestServer, String) {
    let port = free_port();
    let mut server = TestServer::start_with(federating_options(port)).await;
    server.server_name = format!("localhost:{port}");
    let name = server.server_name.clone();
    (server, name)
}

/// Sync (long-polling from `since`) until `found` picks something out of a
/// response; panics naming `what` after 30 s.
pub async fn sync_until<T>(
    server: &Homeserver,
    user: &User,
    since: &mut Option<String>,
    what: &str,
    found: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = server.sync(user, since.as_deref(), 2000).await;
        *since = body["next_batch"].as_str().map(str::to_owned);
        if let Some(hit) = found(&body) {
            return hit;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not arrive within 30 s");
    }
}

/// Every event `/messages` gives going back from `from` (newest first),
/// page by page until it reports no `end`.
pub async fn messages_back(server: &Homeserver, user: &User, room_id: &str, from: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = from.to_owned();
    for _ in 0..100 {
        let (status, page) = server
            .get(
                &format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20&from={}", enc(room_id), enc(&from)),
                Some(&user.token),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let chunk = page["chunk"].as_array().unwrap();
        events.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            // An empty page is the start of the room (its `end` is its `start`).
            Some(end) if !chunk.is_empty() => from = end.to_owned(),
            _ => return events,
        }
    }
    panic!("/messages never reached the start of {room_id}");
}

/// The body of an `m.room.message` event.
pub fn text_of(event: &Value) -> Option<&str> {
    (event["type"] == "m.room.message").then(|| event["content"]["body"].as_str()).flatten()
}

/// Wait for an invite to the room; its stripped state.
pub async fn sees_invite(hs: &Homeserver, user: &User, since: &mut Option<String>, room_id: &str) -> Vec<Value> {
    sync_until(hs, user, since, &format!("an invite for {}", user.user_id), |sync| {
        sync["rooms"]["invite"][room_id]["invite_state"]["events"].as_array().cloned()
    })
    .await
}

/// An admin sets a user's security level; the status.
pub async fn set_security_level(hs: &Homeserver, admin: &User, user_id: &str, level: &str) -> u16 {
    let path = format!("/_porch/admin/v1/users/{}/security_level", enc(user_id));
    hs.put(&path, Some(&admin.token), json!({ "level": level })).await.0
}

/// A porch in this process (its services at hand), federating on loopback.
pub async fn in_process_server() -> (std::sync::Arc<porch::service::Services>, String, tempfile::TempDir) {
    in_process_server_with(|_| {}).await
}

pub async fn in_process_server_with(
    adjust: impl FnOnce(&mut porch::config::Config),
) -> (std::sync::Arc<porch::service::Services>, String, tempfile::TempDir) {
    let (services, name, _client, dir) = in_process_server_with_client(adjust).await;
    (services, name, dir)
}

/// As [`in_process_server_with`], with the client API too.
pub async fn in_process_server_with_client(
    adjust: impl FnOnce(&mut porch::config::Config),
) -> (std::sync::Arc<porch::service::Services>, String, Homeserver, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut config = porch::config::Config { server_name: format!("localhost:{port}"), ..Default::default() };
    config.listen.client = "127.0.0.1:0".into();
    config.listen.federation = format!("127.0.0.1:{port}");
    config.database.path = dir.path().join("db");
    config.federation.verify_certificates = false;
    config.outbound.ip_range_allowlist = vec!["127.0.0.0/8".into(), "::1".into()];
    adjust(&mut config);
    let services = porch::service::Services::open(config.validate().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Homeserver { base: format!("http://{}", listener.local_addr().unwrap()), http: client() };
    tokio::spawn(porch::serve_on(services.clone(), listener, std::future::pending()));
    // The federation listener is up once its port answers.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (services, format!("localhost:{port}"), client, dir)
}

/// A folder with playwright-core and the drivers of `tests/browser`, made
/// once per target directory (the npm install) and refreshed per run.
pub fn browser_harness() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    if !dir.join("node_modules/playwright-core").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(status.success(), "npm install of playwright-core failed in {}", dir.display());
    }
    dir
}

/// Run `tests/browser/{script}` in headless Chromium with `scenario`; the
/// JSON line it printed, after checking that it reports success.
pub async fn browser_scenario(script: &str, scenario: Value) -> Value {
    assert!(
        Path::new("/usr/bin/chromium").exists() || std::env::var_os("CHROMIUM").is_some(),
        "install Debian's chromium (or set CHROMIUM)"
    );
    let harness = tokio::task::spawn_blocking(browser_harness).await.unwrap();
    let output = tokio::process::Command::new("node")
        .arg(harness.join(script))
        .arg(scenario.to_string())
        .output()
        .await
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser scenario {script} failed\nstdout: {stdout}\nstderr: {stderr}");
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("the scenario prints JSON");
    assert_eq!(seen["ok"], true, "{seen}");
    seen
}

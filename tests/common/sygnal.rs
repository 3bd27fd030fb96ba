//! A real sygnal, Matrix's reference push gateway, on loopback, in front of
//! a stand-in for Firebase Cloud Messaging: sygnal reaches
//! `https://fcm.googleapis.com` through an HTTP CONNECT proxy (its `proxy`
//! setting) that this module runs, which answers the tunnel itself with a
//! certificate for `fcm.googleapis.com` from a test CA that sygnal is told
//! to trust (`SSL_CERT_FILE`). So sygnal's own FCM code runs unchanged and
//! nothing leaves the machine.
//!
//! sygnal is not always on the package index: `SYGNAL_SOURCE` names
//! what pip installs it from (a source checkout, a wheel or a requirement);
//! without it, `matrix-sygnal==SYGNAL_VERSION` from the index.

use std::{
    collections::BTreeSet,
    net::TcpStream as StdTcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::free_port;

pub const SYGNAL_VERSION: &str = "0.17.0";

/// The versions sygnal's own lock file holds for its TLS, Twisted and push
/// libraries: with the newest releases, sygnal 0.17 fails (a newer pywebpush
/// breaks on its response handling; under Twisted 26 its request bodies were
/// never sent).
const PINS: [&str; 8] = [
    "twisted==24.7.0",
    "pyopenssl==24.1.0",
    "cryptography==42.0.7",
    "service-identity==24.1.0",
    "pywebpush==2.0.0",
    "py-vapid==1.9.1",
    "http-ece==1.2.0",
    "aioapns==3.2",
];

/// The API key sygnal's FCM app is configured with and the stand-in checks.
pub const FCM_API_KEY: &str = "porch-test-fcm-key";

/// One request that reached the FCM stand-in.
#[derive(Debug)]
pub struct FcmRequest {
    /// The host and port sygnal asked the proxy to tunnel to.
    pub tunnel: String,
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

/// The FCM stand-in behind its CONNECT proxy.
pub struct Fcm {
    pub proxy_url: String,
    ca_pem: String,
    pub requests: mpsc::UnboundedReceiver<FcmRequest>,
}

impl Fcm {
    /// Starts the proxy. Registration tokens in `unregistered` get FCM's
    /// `NotRegistered` error; all others are accepted.
    pub async fn start(unregistered: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "porch test CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["fcm.googleapis.com".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::unbounded_channel();
        let unregistered: Arc<BTreeSet<String>> = Arc::new(unregistered.iter().map(|t| t.to_string()).collect());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (acceptor, tx, unregistered) = (acceptor.clone(), tx.clone(), unregistered.clone());
                tokio::spawn(async move {
                    if let Err(e) = tunnel(stream, acceptor, tx, unregistered).await {
                        eprintln!("FCM stand-in: {e}");
                    }
                });
            }
        });
        Self { proxy_url, ca_pem: ca.pem(), requests }
    }

    /// The next request, or a panic after 30 s.
    pub async fn next(&mut self, what: &str) -> FcmRequest {
        match tokio::time::timeout(Duration::from_secs(30), self.requests.recv()).await {
            Ok(Some(request)) => request,
            _ => panic!("FCM did not get {what} within 30 s"),
        }
    }
}

/// One proxied connection: the CONNECT exchange, then TLS as
/// `fcm.googleapis.com`, then HTTP/1.1 requests answered as FCM's legacy
/// send API does.
async fn tunnel(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::UnboundedSender<FcmRequest>,
    unregistered: Arc<BTreeSet<String>>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header == "\r\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        anyhow::bail!("not a CONNECT: {request_line:?}");
    };
    let tunnel = target.to_owned();
    // The client waits for this answer before its TLS hello, so nothing is buffered.
    let mut stream = reader.into_inner();
    stream.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    let tls = acceptor.accept(stream).await?;
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (tx, unregistered, tunnel) = (tx.clone(), unregistered.clone(), tunnel.clone());
        async move {
            let path = request.uri().path().to_owned();
            let authorization =
                request.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let bytes = request.into_body().collect().await?.to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let tokens: Vec<String> = match (&body["to"], &body["registration_ids"]) {
                (Value::String(to), _) => vec![to.clone()],
                (_, Value::Array(ids)) => ids.iter().filter_map(|id| id.as_str().map(str::to_owned)).collect(),
                _ => vec![],
            };
            let results: Vec<Value> = tokens
                .iter()
                .enumerate()
                .map(|(i, token)| match unregistered.contains(token) {
                    true => json!({ "error": "NotRegistered" }),
                    false => json!({ "message_id": format!("0:{i}") }),
                })
                .collect();
            let failure = results.iter().filter(|r| r.get("error").is_some()).count();
            let _ = tx.send(FcmRequest { tunnel, path, authorization, body });
            let answer = json!({ "success": results.len() - failure, "failure": failure, "results": results });
            Ok::<_, hyper::Error>(
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(answer.to_string())))
                    .unwrap(),
            )
        }
    });
    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await?;
    Ok(())
}

/// The venv's python, with sygnal installed (made on first use).
fn sygnal_python() -> PathBuf {
    let source = std::env::var("SYGNAL_SOURCE").unwrap_or(format!("matrix-sygnal=={SYGNAL_VERSION}"));
    let packages: Vec<&str> = [source.as_str()].into_iter().chain(PINS).collect();
    let hint = "; if the package index lacks sygnal, set SYGNAL_SOURCE to a sygnal source checkout";
    super::python_venv("sygnal-venv", "import sygnal.sygnal, sygnal.gcmpushkin", &packages, hint)
}

/// A running sygnal with one FCM app, `app_id`.
pub struct Sygnal {
    child: Child,
    pub notify_url: String,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sygnal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sygnal {
    pub async fn start(app_id: &str, fcm: &Fcm) -> Self {
        let python = tokio::task::spawn_blocking(sygnal_python).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, &fcm.ca_pem).unwrap();
        let config = format!(
            r#"log:
  setup:
    version: 1
    formatters: {{normal: {{format: "%(asctime)s %(levelname)s %(name)s %(message)s"}}}}
    handlers: {{stderr: {{class: logging.StreamHandler, formatter: normal, stream: "ext://sys.stderr"}}}}
    root: {{handlers: [stderr], level: DEBUG}}
    disable_existing_loggers: false
  access: {{x_forwarded_for: false}}
http:
  bind_addresses: ['127.0.0.1']
  port: {port}
proxy: "{proxy}"
metrics:
  prometheus: {{enabled: false}}
  opentracing: {{enabled: false}}
  sentry: {{enabled: false}}
apps:
  {app_id}:
    type: gcm
    api_key: {FCM_API_KEY}
"#,
            proxy = fcm.proxy_url,
        );
        let config_path = dir.path().join("sygnal.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("sygnal.log");
        let child = Command::new(&python)
            .args(["-m", "sygnal.sygnal"])
            .env("SYGNAL_CONF", &config_path)
            .env("SSL_CERT_FILE", &ca)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start sygnal");
        let mut sygnal =
            Self { child, notify_url: format!("http://127.0.0.1:{port}/_matrix/push/v1/notify"), log, _dir: dir };
        sygnal.wait_listening(port).await;
        sygnal
    }

    async fn wait_listening(&mut self, port: u16) {
        for _ in 0..300 {
            if StdTcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sygnal exited ({status}):\n{}", tail(&self.log));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("sygnal did not listen on {port} within 30 s:\n{}", tail(&self.log));
    }

    /// The end of sygnal's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

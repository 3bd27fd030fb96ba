//! A real Synapse (PyPI `matrix-synapse`) as a federation peer: installed
//! into a venv once per target directory, run on loopback with TLS, its
//! server name `localhost:PORT` so discovery goes straight to its port.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{Homeserver, client, free_port};

pub const SYNAPSE_VERSION: &str = "1.163.2";

pub struct Synapse {
    child: Child,
    pub hs: Homeserver,
    pub server_name: String,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Synapse {
    type Target = Homeserver;

    fn deref(&self) -> &Homeserver {
        &self.hs
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's python, with Synapse installed (made on first use).
fn synapse_python() -> PathBuf {
    let check = format!("import synapse; assert synapse.__version__ == '{SYNAPSE_VERSION}'");
    super::python_venv("synapse-venv", &check, &[&format!("matrix-synapse=={SYNAPSE_VERSION}")], "")
}

impl Synapse {
    pub async fn start() -> Self {
        let python = tokio::task::spawn_blocking(synapse_python).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let federation_port = free_port();
        let client_port = free_port();
        let server_name = format!("localhost:{federation_port}");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(path.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(path.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
        let limit = "{per_second: 1000, burst_count: 1000}";
        let config = format!(
            r#"server_name: "{server_name}"
pid_file: {dir}/homeserver.pid
public_baseurl: http://127.0.0.1:{client_port}/
listeners:
  - port: {client_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources: [{{names: [client], compress: false}}]
  - port: {federation_port}
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    resources: [{{names: [federation], compress: false}}]
tls_certificate_path: {dir}/tls.crt
tls_private_key_path: {dir}/tls.key
database: {{name: sqlite3, args: {{database: {dir}/homeserver.db}}}}
media_store_path: {dir}/media
signing_key_path: {dir}/signing.key
report_stats: false
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "synapse-secret"
macaroon_secret_key: "macaroon-secret"
form_secret: "form-secret"
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
federation_verify_certificates: false
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
federation_ip_range_blacklist: []
room_list_publication_rules: [{{action: allow}}]
use_presence: false
federation:
  max_long_retry_delay: 2s
  destination_min_retry_interval: 1s
  destination_max_retry_interval: 10s
rc_message: {limit}
rc_registration: {limit}
rc_login: {{address: {limit}, account: {limit}, failed_attempts: {limit}}}
rc_joins: {{local: {limit}, remote: {limit}}}
rc_joins_per_room: {limit}
rc_invites: {{per_room: {limit}, per_user: {limit}, per_issuer: {limit}}}
rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 0, reject_limit: 1000, concurrent: 100}}
"#,
            dir = path.display()
        );
        std::fs::write(path.join("homeserver.yaml"), config).unwrap();
        let status = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(path.join("homeserver.yaml"))
            .arg("--generate-keys")
            .stdout(Stdio::null())
            .status()
            .expect("synapse --generate-keys");
        assert!(status.success(), "Synapse could not generate its keys");
        let mut child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--config-path"])
            .arg(path.join("homeserver.yaml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start synapse");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("PORCH_TEST_LOG").is_some() {
                        eprintln!("[synapse] {line}");
                    }
                }
            });
        }
        let hs = Homeserver { base: format!("http://127.0.0.1:{client_port}"), http: client() };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = hs.http.get(format!("{}/_matrix/client/versions", hs.base)).send().await
                && resp.status().is_success()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "Synapse did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self { child, hs, server_name, _dir: dir }
    }
}

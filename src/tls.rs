//! TLS for the federation listener: the configured certificate and key, or
//! a self-signed pair made at first start (for development).

use std::{path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};

use crate::config::Settings;

/// The server's TLS configuration, from `tls.cert`/`tls.key` or a
/// self-signed certificate kept under `<database.path>/tls/`.
pub fn acceptor(settings: &Settings) -> anyhow::Result<TlsAcceptor> {
    let (cert_path, key_path) = if settings.raw.tls.cert.is_empty() {
        self_signed(settings)?
    } else {
        (settings.raw.tls.cert.clone().into(), settings.raw.tls.key.clone().into())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate {} ({e}); check `tls.cert`", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| anyhow::anyhow!("cannot read the private key {} ({e}); check `tls.key`", key_path.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!("the TLS certificate and key do not fit together ({e}); check `tls.cert` and `tls.key`")
        })?;
    // HTTP/1.1 only, so every connection gets the listener's header timeout.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn self_signed(settings: &Settings) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let dir = settings.raw.database.path.join("tls");
    let (cert, key) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir)?;
    let host = settings.server_name.host().to_owned();
    let made = rcgen::generate_simple_self_signed(vec![host.clone()])?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem())?;
    tracing::warn!(
        "made a self-signed TLS certificate for {host} in {}; other servers will only accept it if told to; set `tls.cert` and `tls.key` for real use",
        dir.display()
    );
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

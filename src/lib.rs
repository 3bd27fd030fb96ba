//! porch: a Matrix homeserver built for guest rooms.
//!
//! Layers, top to bottom: `api` (HTTP handlers, ruma types in and out),
//! `service` (the logic), `storage` (the RocksDB seam). `policy` answers
//! what guests may do; `pdu` and `signing` are the event format and keys.

pub mod api;
pub mod cache;
pub mod config;
pub mod error;
pub mod listener;
pub mod password;
pub mod pdu;
pub mod policy;
pub mod service;
pub mod signing;
pub mod storage;
pub mod tls;
pub mod util;

use std::sync::Arc;

use crate::{config::Settings, service::Services};

/// Open the database and serve the client API until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = settings.client_addr;
    // Storage calls never run on the async workers (see `storage::Backend`).
    let services = tokio::task::spawn_blocking(move || Services::open(settings))
        .await
        .map_err(|e| anyhow::anyhow!("start-up failed: {e}"))??;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({e}); set `listen.client` to a free address"))?;
    serve_on(services, listener, shutdown).await
}

/// Serve on an already bound listener (tests bind port 0 and read it back).
pub async fn serve_on(
    services: Arc<Services>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let _ = services.settings.bound_client_addr.set(addr);
    api::client::sync::spawn_typing_expiry(services.clone());
    service::guests::spawn_scheduler(services.clone());
    service::housekeeping::spawn(services.clone());
    tokio::spawn(service::outbound::run(services.clone()));
    tokio::spawn(service::push::gateway::run(services.clone()));
    tokio::spawn(service::mail::run(services.clone()));
    let (stop_federation, mut federation_stopped) = tokio::sync::watch::channel(false);
    let listen = &services.settings.raw.listen;
    let timeouts = crate::listener::Timeouts { headers: listen.header_timeout, body: listen.body_timeout };
    let mut federation = None;
    if let Some(federation_addr) = services.settings.federation_addr {
        let acceptor = tls::acceptor(&services.settings)?;
        let listener = tokio::net::TcpListener::bind(federation_addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {federation_addr} ({e}); set `listen.federation` to a free address")
        })?;
        tracing::info!("federation API on https://{}", listener.local_addr()?);
        let stopped = async move {
            let _ = federation_stopped.changed().await;
        };
        let app = api::federation_router(services.clone());
        federation = Some(tokio::spawn(crate::listener::serve(app, listener, Some(acceptor), timeouts, stopped)));
    }
    tracing::info!(
        server_name = %services.settings.server_name,
        "porch is ready: client API on http://{addr} (database {})",
        services.settings.raw.database.path.display()
    );
    let app = api::router(services);
    crate::listener::serve(app, listener, None, timeouts, shutdown).await;
    // Both listeners drain their requests in flight before porch stops.
    let _ = stop_federation.send(true);
    if let Some(federation) = federation {
        let _ = federation.await;
    }
    tracing::info!("porch stopped");
    Ok(())
}

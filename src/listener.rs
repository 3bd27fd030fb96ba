//! Accepting connections for both listeners (plain HTTP for clients, TLS
//! for other servers) with the same guards: a TLS handshake, a request's
//! headers and its body must each arrive in bounded time, so a slow or
//! silent peer (slow-loris) is cut off instead of holding a connection.

use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From a connection's start (or the end of its last request) to the
    /// end of the next request's headers; also for a TLS handshake.
    pub headers: Duration,
    /// For a request's whole body (enforced where bodies are read: `read_body`).
    pub body: Duration,
}

/// Serve `app` on `listener` (through `tls` when given) until `shutdown`
/// resolves; requests in progress then finish.
pub async fn serve(
    app: Router,
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    timeouts: Timeouts,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only (TLS offers no h2): then every request, the first one
    // included, gets the header timeout; protocol detection would read
    // without one, and HTTP/2 has no header timeout at all.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.headers);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                request.map(axum::body::Body::new)
            },
        );
        let service = TowerToHyperService::new(app);
        match &tls {
            None => {
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, "connection ended: {err}");
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    // A peer that fails (or stalls) the handshake is dropped.
                    let Ok(Ok(stream)) = tokio::time::timeout(timeouts.headers, acceptor.accept(stream)).await else {
                        return;
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(%peer, "federation connection ended: {err}");
                    }
                });
            }
        }
    }
    drop(listener);
    // Requests in flight get a moment to finish.
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Read a request body of at most `limit` bytes within `listen.body_timeout`.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    settings: &crate::config::Settings,
) -> crate::error::Result<bytes::Bytes> {
    use crate::error::Error;
    match tokio::time::timeout(settings.raw.listen.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Error::new(
            http::StatusCode::REQUEST_TIMEOUT,
            "M_UNKNOWN",
            "The request body did not arrive in time; send it again.",
        )),
        Ok(Err(_)) => {
            Err(Error::too_large(format!("The request body is larger than the {limit} bytes this server accepts.")))
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

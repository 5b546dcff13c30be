//! The accept loop shared by the ingress and admin listeners: a connection
//! limit, a header-read timeout against slow clients, and a graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::live::Live;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub drain_timeout: Duration,
}

/// Serves `handler` on `listener` until `shutdown`, then stops accepting and
/// lets in-flight requests finish within `limits.drain_timeout`.
pub async fn run<H, F>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve(listener, limits, None, handler, shutdown).await
}

/// Like [`run`], over TLS. Each connection takes the config current when
/// it arrives, so a reload's new certificate applies to new connections.
pub async fn run_tls<H, F>(
    listener: TcpListener,
    limits: Limits,
    tls: Arc<Live<Arc<rustls::ServerConfig>>>,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve(listener, limits, Some(tls), handler, shutdown).await
}

async fn serve<H, F>(
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<Live<Arc<rustls::ServerConfig>>>>,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    // Owned permits: a connection gives its slot back when its task ends.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(|t| t.get());
        tokio::spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), peer, limits, handler, watcher).await,
                Some(config) => {
                    // The handshake counts against the header-read time.
                    let accept =
                        tokio_rustls::TlsAcceptor::from(Arc::clone(&*config)).accept(stream);
                    match tokio::time::timeout(limits.header_timeout, accept).await {
                        Ok(Ok(tls)) => {
                            connection(TokioIo::new(tls), peer, limits, handler, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "connections still open after the drain timeout");
        }
    }
}

/// Serves one HTTP/1 connection, watched for the graceful drain.
async fn connection<I, H, F>(
    io: I,
    peer: SocketAddr,
    limits: Limits,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let fut = handler(req, peer);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

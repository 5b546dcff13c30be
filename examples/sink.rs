//! A stand-in sink for benchmarks (not a test): answers every POST to
//! `/reject` with 422 (a permanent failure: the delivery dies at once)
//! and anything else with 200, counting what it answered. Runs until
//! killed; on SIGTERM prints "delivered N, rejected M".
//!
//!   cargo run --release --example sink -- PORT

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: sink PORT");
        std::process::exit(2);
    });
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("the sink's port is free");
    let counts: Arc<[AtomicU64; 2]> = Arc::default();
    let stop = CancellationToken::new();
    let limits = hookgate::ingress::listener::Limits {
        max_connections: 1024,
        header_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_millis(100),
    };
    let served = {
        let counts = counts.clone();
        tokio::spawn(hookgate::ingress::listener::run(
            listener,
            limits,
            move |req: http::Request<hyper::body::Incoming>, _| {
                let counts = counts.clone();
                async move {
                    let reject = req.uri().path() == "/reject";
                    counts[reject as usize].fetch_add(1, Ordering::Relaxed);
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(if reject {
                        b"rejected"
                    } else {
                        b""
                    })));
                    if reject {
                        *resp.status_mut() = http::StatusCode::UNPROCESSABLE_ENTITY;
                    }
                    resp
                }
            },
            stop.clone(),
        ))
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    term.recv().await;
    stop.cancel();
    let _ = served.await;
    println!(
        "delivered {}, rejected {}",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed)
    );
}

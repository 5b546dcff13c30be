//! `hookgate serve`: opens the queue, binds the listeners, runs until told
//! to stop, then drains: stop accepting, let in-flight requests finish (each
//! gets its 202 after fsync or no 2xx at all), close and flush the queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Proof};
use crate::dispatch::{Dispatcher, SinkRuntime, Sinks};
use crate::ingress::{listener, Gateway};
use crate::queue::{Queue, QueueError, SledQueue};

/// How long in-flight requests get to finish once shutdown starts. Shorter
/// than the unit's `TimeoutStopSec` (30 s).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How often expired dedupe keys are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the queue in {path}: {source}")]
    Queue {
        path: String,
        #[source]
        source: QueueError,
    },
    #[error("sink `{name}`: {reason}")]
    Sink { name: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the queue under `config.server.data_dir`.
pub fn open_queue(config: &Config) -> Result<SledQueue, DaemonError> {
    let dir = &config.server.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| DaemonError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    SledQueue::open(dir, config.server.group_commit).map_err(|source| DaemonError::Queue {
        path: dir.display().to_string(),
        source,
    })
}

/// Binds the configured addresses and serves until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let queue = Arc::new(open_queue(&config)?);
    let bind = |addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: addr.to_string(),
                source,
            })
    };
    let ingress = bind(config.server.listen).await?;
    let admin = bind(config.server.admin_listen).await?;
    serve(ingress, admin, config, queue, shutdown).await
}

/// Builds every configured sink.
pub fn build_sinks(config: &Config) -> Result<Sinks, DaemonError> {
    config
        .sinks
        .values()
        .map(|c| {
            let sink = crate::sink::build(c).map_err(|reason| DaemonError::Sink {
                name: c.name.clone(),
                reason,
            })?;
            Ok((c.name.clone(), SinkRuntime::new(c.clone(), sink)))
        })
        .collect()
}

/// Serves on already-bound listeners (tests bind port 0).
pub async fn serve(
    ingress: TcpListener,
    admin: TcpListener,
    config: Config,
    queue: Arc<SledQueue>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let sinks = Arc::new(build_sinks(&config)?);
    for source in config.sources.values() {
        if let Proof::Closed(reason) = &source.proof {
            tracing::error!(source = %source.name, reason = %reason, "source closed: it answers 503 until its secret is set");
        }
    }
    let limits = listener::Limits {
        max_connections: config.server.max_connections,
        header_timeout: config.server.header_timeout,
        drain_timeout: DRAIN_TIMEOUT,
    };
    let admin_limits = listener::Limits {
        max_connections: 64,
        ..limits
    };
    tracing::info!(
        listen = %ingress.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %config.server.data_dir.display(),
        sources = config.sources.len(),
        group_commit = config.server.group_commit,
        "hookgate listening"
    );
    let dyn_queue: Arc<dyn Queue> = queue.clone();
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let gateway = Arc::new(Gateway::new(
        config.server.clone(),
        config.sources.into_values(),
        dyn_queue.clone(),
        metrics.clone(),
    ));
    let ingress_task = listener::run(
        ingress,
        limits,
        move |req, peer| {
            let gw = gateway.clone();
            async move { gw.handle(req, peer).await }
        },
        shutdown.clone(),
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    let dispatcher = Dispatcher::new(queue.clone(), sinks.clone(), wake.clone(), metrics.clone());
    let admin_state = Arc::new(crate::admin::Admin {
        queue: queue.clone(),
        dispatcher: dispatcher.clone(),
        metrics,
    });
    let admin_task = listener::run(
        admin,
        admin_limits,
        move |req, _peer| {
            let a = admin_state.clone();
            async move { a.handle(&req) }
        },
        shutdown.clone(),
    );
    let prune_queue = queue.clone();
    let retention = config.server.retention;
    let prune_stop = shutdown.clone();
    let prune_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = prune_stop.cancelled() => return,
            }
            let q = prune_queue.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                let now = SystemTime::now();
                (q.prune_seen(now), q.prune_log(now, retention))
            })
            .await;
            if let Ok((keys, segments)) = pruned {
                match keys {
                    Ok(n) if n > 0 => tracing::info!(removed = n, "pruned expired dedupe keys"),
                    Err(e) => tracing::warn!(error = %e, "pruning dedupe keys failed"),
                    _ => {}
                }
                match segments {
                    Ok(n) if n > 0 => {
                        tracing::info!(removed = n, "deleted log segments past retention")
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning the log failed"),
                    _ => {}
                }
            }
        }
    });
    crate::notify::notify("READY=1");
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        crate::notify::notify("STOPPING=1");
    });
    // Routing and delivery stop after ingress: what was accepted during the
    // drain is routed at the next start (it is in the log).
    let routes = Arc::new(config.routes);
    let stages = CancellationToken::new();
    let (router_beat, dispatch_beat) = (Arc::default(), Arc::default());
    let router_task = tokio::spawn(crate::router::run(
        queue.clone(),
        routes,
        sinks.clone(),
        wake.clone(),
        Arc::clone(&router_beat),
        stages.clone(),
    ));
    let dispatch_task =
        tokio::spawn(dispatcher.run(Arc::clone(&dispatch_beat), stages.clone(), DRAIN_TIMEOUT));
    if let Some(interval) = crate::notify::watchdog_interval() {
        tracing::info!(?interval, "systemd watchdog on");
        tokio::spawn(crate::notify::watchdog(
            interval,
            vec![router_beat, dispatch_beat],
            stages.clone(),
        ));
    }
    tokio::join!(ingress_task, admin_task);
    stages.cancel();
    let _ = router_task.await;
    let _ = dispatch_task.await;
    let _ = prune_task.await;
    // Every accepted request has had its answer; nothing new can come in.
    queue.close();
    match queue.flush() {
        Ok(()) => tracing::info!("queue flushed; stopped"),
        Err(e) => tracing::error!(error = %e, "final flush failed"),
    }
    Ok(())
}

//! `hookgate serve`: opens the queue, binds the listeners, runs until told
//! to stop, then drains: stop accepting, let in-flight requests finish (each
//! gets its 202 after fsync or no 2xx at all), close and flush the queue.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, QueueConfig};
use crate::dispatch::{Dispatcher, SinkRuntime, Sinks};
use crate::ingress::{listener, Gateway};
use crate::live::Live;
use crate::queue::postgres::{Postgres, Schema};
use crate::queue::{Local, LocalStore, Queue, QueueError};

/// How long in-flight requests get to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long delivery attempts in flight then get to finish (those cut off
/// are due again at the next start). The two drains run one after the
/// other and, with the final flush, must end before the unit's
/// `TimeoutStopSec` (30 s) has systemd kill the daemon.
pub const DELIVERY_DRAIN: Duration = Duration::from_secs(8);

/// How often what is past retention (events, dead letters), and expired
/// dedupe keys, are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What SIGHUP handling hands the daemon: a config it loaded and checked,
/// or word that it refused one (for `/metrics`).
#[derive(Debug)]
pub enum Reload {
    Apply(Box<Config>),
    Refused,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create server.data_dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write in server.data_dir {path}: {reason} (make it writable for the user hookgate runs as, or set another server.data_dir)")]
    DataDirUnwritable { path: String, reason: String },
    #[error("another hookgate is using {path} (stop it, or set another server.data_dir)")]
    InUse { path: String },
    #[error("cannot open the queue in {path}: {source}")]
    Queue {
        path: String,
        #[source]
        source: QueueError,
    },
    #[error("queue.url: {0}")]
    DatabaseUrl(String),
    #[error("cannot use the PostgreSQL queue: {0}")]
    Database(String),
    #[error("server.data_dir {path} still holds the local backend's unfinished work ({inbox} events not yet routed, {deliveries} pending deliveries, {dead} dead letters): move it into PostgreSQL with `hookgate queue migrate` (with no daemon running on it), or remove the directory if that work is not wanted")]
    LocalWork {
        path: String,
        inbox: u64,
        deliveries: u64,
        dead: u64,
    },
    #[error("sink `{name}`: {reason}")]
    Sink { name: String, reason: String },
    #[error("no queue in {path}: is data_dir the daemon's? (under systemd it is $STATE_DIRECTORY, /var/lib/hookgate)")]
    NoQueue { path: String },
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("server.{key}: another program is listening on {addr} (stop it, or set another server.{key})")]
    InUseAddr { key: &'static str, addr: String },
    #[error("server.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the queue under `config.server.data_dir`.
pub fn open_queue(config: &Config) -> Result<LocalStore, DaemonError> {
    let group_commit = config.server.group_commit;
    let queue = open_dir(config, |dir| LocalStore::open(dir, group_commit))?;
    give_back_freed_memory();
    Ok(queue)
}

/// Opening a deep store reads its dedupe keys and listings back from the
/// log, into buffers that are freed once it is open (with sled, its
/// snapshot too: over 100 MB of a 295 MB peak at 760,000 events, measured
/// with heaptrack). glibc keeps freed heap for later use, so the
/// daemon would hold it for its whole life; `malloc_trim` gives the free
/// pages back to the system.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks glibc's own heaps and takes nothing of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens the storage the config names, for the daemon. On `postgres`,
/// refuses while `data_dir` still holds the local backend's unfinished
/// work (it would wait there unseen).
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Queue>, DaemonError> {
    match &config.queue {
        QueueConfig::Local => Ok(Arc::new(Local::new(open_queue(config)?))),
        QueueConfig::Postgres { .. } => {
            let (inbox, deliveries, dead) = local_work(config)?;
            if inbox + deliveries + dead > 0 {
                return Err(DaemonError::LocalWork {
                    path: config.server.data_dir.display().to_string(),
                    inbox,
                    deliveries,
                    dead,
                });
            }
            open_database(config).await
        }
    }
}

/// Connects to the PostgreSQL database `[queue]` names (migrating its
/// schema). An error when the config names the local backend.
pub async fn open_database(config: &Config) -> Result<Arc<dyn Queue>, DaemonError> {
    connect_database(config, Schema::Migrate).await
}

/// As [`open_database`], doing to the schema what `schema` says.
async fn connect_database(config: &Config, schema: Schema) -> Result<Arc<dyn Queue>, DaemonError> {
    let QueueConfig::Postgres { url, pool_size } = &config.queue else {
        return Err(DaemonError::Database(
            "the config's [queue] backend is local: set backend = \"postgres\" and its url".into(),
        ));
    };
    let url = url
        .as_ref()
        .map_err(|e| DaemonError::DatabaseUrl(e.clone()))?;
    let text = std::str::from_utf8(url.expose())
        .map_err(|_| DaemonError::DatabaseUrl("the connection string is not UTF-8 text".into()))?;
    match Postgres::open_as(text.trim(), *pool_size, schema).await {
        Ok(pg) => Ok(Arc::new(pg)),
        Err(QueueError::Storage(e)) => Err(DaemonError::Database(e.to_string())),
        Err(e) => Err(DaemonError::Database(e.to_string())),
    }
}

/// Opens the queue under `config.server.data_dir` for the CLI to look at
/// (and replay dead letters) while no daemon runs: nothing is prepared
/// for new events.
/// A data_dir without a queue is an error, not an empty queue: the CLI's
/// config may name another directory than the daemon's (under systemd the
/// daemon's is `$STATE_DIRECTORY`).
pub fn inspect_queue(config: &Config) -> Result<LocalStore, DaemonError> {
    let dir = &config.server.data_dir;
    if !holds_queue(dir) {
        return Err(DaemonError::NoQueue {
            path: dir.display().to_string(),
        });
    }
    open_dir(config, LocalStore::inspect)
}

/// What the local backend still holds under `data_dir` (nothing when it
/// holds no queue): events not yet routed, pending deliveries, dead letters.
pub fn local_work(config: &Config) -> Result<(u64, u64, u64), DaemonError> {
    if !holds_queue(&config.server.data_dir) {
        return Ok((0, 0, 0));
    }
    let q = inspect_queue(config)?;
    let stats = q.stats().map_err(|source| DaemonError::Queue {
        path: config.server.data_dir.display().to_string(),
        source,
    })?;
    Ok((stats.inbox, stats.deliveries, stats.dead))
}

/// Moves the local backend's unfinished work under `data_dir` into
/// `target` (PostgreSQL) in one transaction, then moves the local files
/// aside (`data_dir/migrated-SECONDS/`), so neither backend has it twice.
/// A second run after a crash between the two imports nothing again (the
/// database remembers the local store's id) and only moves the files.
pub async fn migrate(
    config: &Config,
    target: &dyn Queue,
) -> Result<crate::queue::Imported, DaemonError> {
    let dir = &config.server.data_dir;
    let queue_err = |source| DaemonError::Queue {
        path: dir.display().to_string(),
        source,
    };
    let carried = inspect_queue(config)?.export().map_err(queue_err)?;
    let imported = target.import(carried).await.map_err(queue_err)?;
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = dir.join(format!("migrated-{secs}"));
    let moved = std::fs::create_dir_all(&aside).and_then(|()| {
        for part in ["log", "state", "sled"] {
            if dir.join(part).exists() {
                std::fs::rename(dir.join(part), aside.join(part))?;
            }
        }
        Ok(())
    });
    moved.map_err(|source| DaemonError::DataDir {
        path: aside.display().to_string(),
        source,
    })?;
    Ok(imported)
}

/// The storage the config names, for the CLI while no daemon answers:
/// on the local backend, `inspect_queue`; on PostgreSQL, the database,
/// its schema as it is (a newer `hookgate` looking at a cluster does not
/// migrate it under the daemons).
pub async fn inspect_storage(config: &Config) -> Result<Arc<dyn Queue>, DaemonError> {
    match &config.queue {
        QueueConfig::Local => Ok(Arc::new(Local::new(inspect_queue(config)?))),
        QueueConfig::Postgres { .. } => connect_database(config, Schema::AsIs).await,
    }
}

/// Compacts the local backend's state file (`hookgate queue compact`,
/// the daemon stopped). Its size before and after, in bytes.
pub fn compact_state(config: &Config) -> Result<(u64, u64), DaemonError> {
    let dir = &config.server.data_dir;
    if !holds_queue(dir) {
        return Err(DaemonError::NoQueue {
            path: dir.display().to_string(),
        });
    }
    open_dir(config, LocalStore::compact_state)
}

fn open_dir<T>(
    config: &Config,
    open: impl FnOnce(&std::path::Path) -> Result<T, QueueError>,
) -> Result<T, DaemonError> {
    let dir = &config.server.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| DaemonError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    open(dir).map_err(|source| {
        let path = dir.display().to_string();
        use std::io::ErrorKind;
        match io_error(&source) {
            Some(e) if e.kind() == ErrorKind::WouldBlock => DaemonError::InUse { path },
            Some(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                DaemonError::DataDirUnwritable {
                    path,
                    reason: e.to_string(),
                }
            }
            _ => DaemonError::Queue { path, source },
        }
    })
}

/// The I/O error under a queue error.
fn io_error(e: &QueueError) -> Option<&std::io::Error> {
    match e {
        QueueError::Storage(io) => Some(io),
        _ => None,
    }
}

/// Whether `dir` holds the local backend's state (or an earlier version's
/// sled trees, converted when it opens).
fn holds_queue(dir: &std::path::Path) -> bool {
    dir.join(crate::queue::local::STATE_DIR).is_dir() || dir.join("sled").is_dir()
}

/// Binds the configured addresses (or takes the sockets systemd passed)
/// and serves until `shutdown`, applying the configs sent on `reloads`.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
) -> Result<(), DaemonError> {
    let passed = crate::activation::passed().map_err(DaemonError::Activation)?;
    let queue = open_storage(&config).await?;
    let listen = |key: &'static str,
                  passed: Option<std::net::TcpListener>,
                  addr: std::net::SocketAddr| async move {
        match passed {
            Some(socket) => {
                let local = socket
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if socket.local_addr().ok() != Some(addr) {
                    tracing::info!(key, config = %addr, socket = %local, "using the socket systemd passed, not server.{key}");
                }
                TcpListener::from_std(socket).map_err(|source| DaemonError::Bind {
                    key,
                    addr: local,
                    source,
                })
            }
            None => TcpListener::bind(addr).await.map_err(|source| {
                let addr = addr.to_string();
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    DaemonError::InUseAddr { key, addr }
                } else {
                    DaemonError::Bind { key, addr, source }
                }
            }),
        }
    };
    if let Some(admin) = &passed.admin {
        admin_reachable(admin.local_addr().ok(), config.server.admin_token.is_some())
            .map_err(DaemonError::Activation)?;
    }
    let ingress = listen("listen", passed.ingress, config.server.listen).await?;
    let admin = listen("admin_listen", passed.admin, config.server.admin_listen).await?;
    serve(ingress, admin, config, queue, shutdown, reloads).await
}

/// The check `server.admin_listen` gets, for an admin socket systemd
/// passed: off loopback, the admin API needs its token.
fn admin_reachable(addr: Option<std::net::SocketAddr>, token: bool) -> Result<(), String> {
    match addr {
        Some(a) if a.ip().to_canonical().is_loopback() || token => Ok(()),
        _ => Err(format!(
            "the admin socket systemd passed listens on {}, not loopback: set server.admin_token = {{ env = \"…\" }} or bind the socket to 127.0.0.1 / [::1]",
            addr.map_or("an unknown address".to_owned(), |a| a.to_string())
        )),
    }
}

/// What a reload swaps, and the running settings it compares a new file
/// against (those take effect at the next start only).
struct Swappable {
    running: crate::config::Server,
    queue: QueueConfig,
    tls: Option<Arc<Live<Arc<rustls::ServerConfig>>>>,
    gateway: Arc<Gateway>,
    routes: Arc<Live<crate::route::Routes>>,
    sinks: Arc<Live<Sinks>>,
    dispatcher: Arc<Dispatcher>,
}

/// Whether `[queue]` differs (its secret compared by value).
fn queue_changed(a: &QueueConfig, b: &QueueConfig) -> bool {
    let url =
        |u: &Result<crate::secret::Secret, String>| u.as_ref().ok().map(|s| s.expose().to_vec());
    match (a, b) {
        (QueueConfig::Local, QueueConfig::Local) => false,
        (
            QueueConfig::Postgres {
                url: u1,
                pool_size: p1,
            },
            QueueConfig::Postgres {
                url: u2,
                pool_size: p2,
            },
        ) => p1 != p2 || url(u1) != url(u2),
        _ => true,
    }
}

impl Swappable {
    /// Swaps in a new config's sources, sinks and routes, or keeps the old
    /// ones if a sink cannot be built.
    async fn apply(&self, new: Config) -> bool {
        let running = &self.running;
        let built = match build_sinks(&new) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the old config keeps serving");
                return false;
            }
        };
        let s = &new.server;
        for (key, changed) in [
            ("listen", s.listen != running.listen),
            ("admin_listen", s.admin_listen != running.admin_listen),
            ("data_dir", s.data_dir != running.data_dir),
            ("max_body_bytes", s.max_body_bytes != running.max_body_bytes),
            (
                "trusted_proxies",
                s.trusted_proxies != running.trusted_proxies,
            ),
            ("group_commit", s.group_commit != running.group_commit),
            ("header_timeout", s.header_timeout != running.header_timeout),
            (
                "request_timeout",
                s.request_timeout != running.request_timeout,
            ),
            (
                "max_connections",
                s.max_connections != running.max_connections,
            ),
            ("retention", s.retention != running.retention),
            (
                "dead_letter_retention",
                s.dead_letter_retention != running.dead_letter_retention,
            ),
            ("admin_hosts", s.admin_hosts != running.admin_hosts),
            (
                "admin_token",
                s.admin_token
                    .as_ref()
                    .map(|t| t.as_ref().ok().map(|t| t.expose().to_vec()))
                    != running
                        .admin_token
                        .as_ref()
                        .map(|t| t.as_ref().ok().map(|t| t.expose().to_vec())),
            ),
        ] {
            if changed {
                tracing::warn!(key = %format!("server.{key}"), "changed in the file; takes effect at the next restart");
            }
        }
        if queue_changed(&new.queue, &self.queue) {
            tracing::warn!(
                key = "queue",
                "changed in the file; takes effect at the next restart"
            );
        }
        match (self.tls.as_deref(), &new.server.tls) {
            // New certificates apply to new connections.
            (Some(live), Some(config)) => live.set(config.clone()),
            (None, None) => {}
            _ => tracing::warn!(
                key = "server.tls",
                "TLS turned on or off in the file; takes effect at the next restart"
            ),
        }
        {
            let old = self.sinks.get();
            for (name, sink) in &built {
                if let Some(o) = old.get(name) {
                    sink.inherit(o);
                }
            }
        }
        let (n_sources, n_sinks, n_routes) = (new.sources.len(), built.len(), new.routes.len());
        self.gateway.set_sources(new.sources.into_values());
        self.sinks.set(built);
        self.routes.set(new.routes);
        self.dispatcher.bury_orphans().await;
        tracing::info!(
            sources = n_sources,
            sinks = n_sinks,
            routes = n_routes,
            "config reloaded"
        );
        true
    }
}

/// Builds every configured sink (`hookgate serve` has said which are
/// disabled, with the rest of the config's missing secrets).
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
///
/// Each config received on `reloads` (already validated: SIGHUP handling
/// loads and checks the file) replaces the sources, sinks and routes
/// between two requests; queued and in-flight deliveries are not touched,
/// and deliveries to sinks that are gone go dead with that reason.
pub async fn serve(
    ingress: TcpListener,
    admin: TcpListener,
    config: Config,
    queue: Arc<dyn Queue>,
    shutdown: CancellationToken,
    reloads: tokio::sync::mpsc::Receiver<Reload>,
) -> Result<(), DaemonError> {
    let sinks = Arc::new(Live::new(build_sinks(&config)?));
    let running_server = config.server.clone();
    tracing::info!(
        listen = %ingress.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        data_dir = %config.server.data_dir.display(),
        sources = config.sources.len(),
        group_commit = config.server.group_commit,
        "hookgate listening"
    );
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let gateway = Arc::new(Gateway::new(
        config.server.clone(),
        config.sources.into_values(),
        queue.clone(),
        metrics.clone(),
    ));
    let tls = config.server.tls.clone().map(|c| Arc::new(Live::new(c)));
    let ingress_task = serve_ingress(
        ingress,
        &config.server,
        gateway.clone(),
        tls.clone(),
        shutdown.clone(),
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    let dispatcher = Dispatcher::new(queue.clone(), sinks.clone(), wake.clone(), metrics.clone());
    let routes = Arc::new(Live::new(config.routes));
    let admin_task = serve_admin(
        admin,
        &config.server,
        crate::admin::Admin {
            guard: crate::admin::Guard::new(
                config.server.admin_token.clone(),
                config.server.admin_hosts.clone(),
            ),
            queue: queue.clone(),
            dispatcher: dispatcher.clone(),
            metrics: metrics.clone(),
            routes: routes.clone(),
        },
        shutdown.clone(),
    );
    let prune_task = tokio::spawn(prune(
        queue.clone(),
        Retention {
            events: config.server.retention,
            dead_letters: config.server.dead_letter_retention,
        },
        metrics.clone(),
        shutdown.clone(),
    ));
    let heal_task = tokio::spawn(heal(queue.clone(), shutdown.clone()));
    crate::notify::notify("READY=1");
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        crate::notify::notify("STOPPING=1");
    });
    // Routing and delivery stop after ingress: what was accepted during the
    // drain is routed at the next start (it is in the log).
    let swappable = Swappable {
        running: running_server,
        queue: config.queue,
        tls,
        gateway,
        routes: routes.clone(),
        sinks: sinks.clone(),
        dispatcher: dispatcher.clone(),
    };
    tokio::spawn(reloading(
        reloads,
        swappable,
        metrics.clone(),
        shutdown.clone(),
    ));
    let stages = CancellationToken::new();
    let (router_beat, dispatch_beat) = (Arc::default(), Arc::default());
    let router_task = tokio::spawn(crate::router::run(
        queue.clone(),
        routes,
        sinks.clone(),
        wake.clone(),
        metrics.clone(),
        Arc::clone(&router_beat),
        stages.clone(),
    ));
    let dispatch_task =
        tokio::spawn(dispatcher.run(Arc::clone(&dispatch_beat), stages.clone(), DELIVERY_DRAIN));
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
    let _ = heal_task.await;
    // Every accepted request has had its answer; nothing new can come in.
    queue.close();
    match queue.flush().await {
        Ok(()) => tracing::info!("queue flushed; stopped"),
        Err(e) => tracing::error!(error = %e, "final flush failed"),
    }
    Ok(())
}

/// The ingress listener: webhooks, over TLS when configured.
async fn serve_ingress(
    listener: TcpListener,
    server: &crate::config::Server,
    gateway: Arc<Gateway>,
    tls: Option<Arc<Live<Arc<rustls::ServerConfig>>>>,
    stop: CancellationToken,
) {
    let limits = listener::Limits {
        max_connections: server.max_connections,
        header_timeout: server.header_timeout,
        drain_timeout: DRAIN_TIMEOUT,
    };
    let handler = move |req, peer| {
        let gw = gateway.clone();
        async move { gw.handle(req, peer).await }
    };
    match tls {
        Some(tls) => listener::run_tls(listener, limits, tls, handler, stop).await,
        None => listener::run(listener, limits, handler, stop).await,
    }
}

/// The admin listener (at most 64 connections).
async fn serve_admin(
    listener: TcpListener,
    server: &crate::config::Server,
    admin: crate::admin::Admin,
    stop: CancellationToken,
) {
    let limits = listener::Limits {
        max_connections: 64,
        header_timeout: server.header_timeout,
        drain_timeout: DRAIN_TIMEOUT,
    };
    let admin = Arc::new(admin);
    let handler = move |req: http::Request<hyper::body::Incoming>, _peer| {
        let a = admin.clone();
        async move { a.serve(req).await }
    };
    listener::run(listener, limits, handler, stop).await
}

/// Applies each config SIGHUP handling sends (or notes its refusal) until
/// `stop`.
async fn reloading(
    mut reloads: tokio::sync::mpsc::Receiver<Reload>,
    swap: Swappable,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            c = reloads.recv() => c,
            _ = stop.cancelled() => None,
        };
        let applied = match next {
            None => return,
            Some(Reload::Refused) => false,
            Some(Reload::Apply(new)) => swap.apply(*new).await,
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        metrics.reload(applied, now);
    }
}

/// How long what storage keeps is kept (`server.retention`,
/// `server.dead_letter_retention`).
#[derive(Debug, Clone, Copy)]
struct Retention {
    events: Duration,
    dead_letters: Duration,
}

/// Drops what is past its retention (and expired dedupe keys) every
/// `PRUNE_EVERY` until `stop`; counts the dead letters dropped by sink.
async fn prune(
    queue: Arc<dyn Queue>,
    retention: Retention,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let pruned = tokio::select! {
            r = queue.prune(SystemTime::now(), retention.events) => r,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "dropping what is past retention failed");
        }
        let expired = tokio::select! {
            r = queue.prune_dead(SystemTime::now(), retention.dead_letters) => r,
            _ = stop.cancelled() => return,
        };
        match expired {
            Ok(by_sink) if !by_sink.is_empty() => {
                for (sink, n) in &by_sink {
                    metrics.dead_expired(sink, *n);
                }
                tracing::info!(
                    expired = by_sink.values().sum::<u64>(),
                    by_sink = %per_sink(&by_sink),
                    retention = %humantime::format_duration(retention.dead_letters),
                    "deleted dead letters past server.dead_letter_retention"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "deleting dead letters past their retention failed")
            }
        }
    }
}

/// `sink=n` pairs, space-separated, for a log line.
fn per_sink(by_sink: &std::collections::BTreeMap<String, u64>) -> String {
    by_sink
        .iter()
        .map(|(sink, n)| format!("{sink}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How often storage is looked at for a failure to recover from.
const HEAL_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to reopen a failed state store.
const HEAL_BACKOFF_MAX: Duration = Duration::from_secs(16);

/// Recovers from storage failures without a restart (`Queue::heal`):
/// every second while all is well, backing off while storage still fails.
async fn heal(queue: Arc<dyn Queue>, shutdown: CancellationToken) {
    let mut wait = HEAL_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        wait = match queue.heal().await {
            crate::queue::Healed::Failing => {
                (wait * 2).min(queue.heal_backoff_max().unwrap_or(HEAL_BACKOFF_MAX))
            }
            _ => HEAL_EVERY,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_admin_socket_off_loopback_needs_the_token() {
        let at = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        assert!(admin_reachable(at("127.0.0.1:9090"), false).is_ok());
        assert!(admin_reachable(at("[::1]:9090"), false).is_ok());
        assert!(admin_reachable(at("[::ffff:127.0.0.1]:9090"), false).is_ok());
        assert!(admin_reachable(at("0.0.0.0:9090"), true).is_ok());
        let e = admin_reachable(at("0.0.0.0:9090"), false).unwrap_err();
        assert!(e.contains("admin_token"), "{e}");
        assert!(admin_reachable(at("[::]:9090"), false).is_err());
        assert!(admin_reachable(None, false).is_err());
    }
}

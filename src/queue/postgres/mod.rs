//! The PostgreSQL backend, [`Postgres`]: any number of daemons on one
//! database, each event routed once and each delivery attempted under a
//! lease, with sinks' limits held for the whole cluster.
//!
//! `connect.rs` reads the URL and makes the TLS config and the pool;
//! `schema.rs` migrates; `ingest.rs` group-commits appends; `routing.rs`
//! claims and records pages of the inbox; `deliveries.rs` claims and
//! settles deliveries; `dead.rs` lists, replays and expires dead letters;
//! `partitions.rs` makes and drops the event table's days; `recent.rs`
//! keeps the records this instance stored lately, for its router; `health.rs`
//! tells when the database cannot take writes. Nothing here lowers
//! `synchronous_commit`: an answer waits for the COMMIT of its event.

mod connect;
mod dead;
mod deliveries;
mod health;
mod import;
mod ingest;
mod lookups;
mod partitions;
mod recent;
mod routing;
mod schema;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Notify};

pub use connect::describe_url;
pub use schema::VERSION as SCHEMA_VERSION;

use self::health::{conn_err, pool_err, Health};
use super::{
    unix_millis, Added, Appended, BackendGauges, Carried, DeliveryFilter, DeliveryPage,
    DeliveryRecord, Disabled, Due, EventFilter, EventId, EventPage, EventRecord, Healed, Imported,
    InboxPage, Ingest, Lease, Limits, NewEvent, Queue, QueueError, RefuseReplay, Requeued, Routed,
    Settle, Stats,
};

/// What the backend's parts share.
pub(crate) struct Db {
    pool: Pool,
    health: Health,
    /// Woken after each commit of appends (this instance's only: others'
    /// are found by the router's periodic look).
    appended: Notify,
    /// Group commits of appends (how long each took), and the appends
    /// they answered: `/metrics` shows them as the log's syncs.
    commits: crate::metrics::AtomicHistogram,
    committed: std::sync::atomic::AtomicU64,
    /// The inbox page this instance's router holds.
    page: routing::HeldPage,
    /// Records this instance stored lately, for its router.
    recent: recent::Recent,
}

/// The PostgreSQL backend behind the storage port.
pub struct Postgres {
    db: Arc<Db>,
    install: u64,
    jobs: mpsc::Sender<ingest::Msg>,
    closed: AtomicBool,
    /// Where `release` spawns its update.
    runtime: tokio::runtime::Handle,
    /// The URL as an operator reads it (no password).
    target: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `e` and its causes, `: `-separated (deadpool's errors hide theirs).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What opening the database may do to its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Bring it to this build's version (the daemon, `queue migrate`).
    Migrate,
    /// Take it only as it is (a look from the command line).
    AsIs,
}

fn storage(msg: impl Into<String>) -> QueueError {
    QueueError::Storage(std::io::Error::other(msg.into()))
}

impl Postgres {
    /// Connects (`url`: a libpq connection string or URI), migrates the
    /// schema and starts the writer. `pool_size`: most connections open.
    pub async fn open(url: &str, pool_size: usize) -> Result<Postgres, QueueError> {
        Postgres::open_as(url, pool_size, Schema::Migrate).await
    }

    /// As [`Postgres::open`]; with [`Schema::AsIs`] (a look from the
    /// command line) the schema is taken only as this build would leave
    /// it (`schema::as_is`), and no day's partitions are made.
    pub async fn open_as(
        url: &str,
        pool_size: usize,
        schema: Schema,
    ) -> Result<Postgres, QueueError> {
        let target = connect::parse(url).map_err(|m| {
            QueueError::Storage(std::io::Error::new(std::io::ErrorKind::InvalidInput, m))
        })?;
        let described = format!("{target:?}");
        let pool = connect::pool(&target, pool_size).map_err(storage)?;
        let mut conn = pool.get().await.map_err(|e| {
            storage(format!(
                "cannot connect to {described}: {}",
                with_causes(&e)
            ))
        })?;
        let install = match schema {
            Schema::Migrate => {
                let install = schema::migrate_or_refuse(&mut conn).await?;
                let now_ms = unix_millis(SystemTime::now()) as i64;
                for table in [partitions::EVENTS, partitions::DELIVERED] {
                    partitions::ensure(&conn, table, &partitions::around(now_ms))
                        .await
                        .map_err(|e| storage(format!("making partitions: {e}")))?;
                }
                install
            }
            Schema::AsIs => schema::as_is(&conn).await.map_err(storage)?,
        };
        drop(conn);
        let db = Arc::new(Db {
            pool,
            health: Health::new(),
            appended: Notify::new(),
            commits: crate::metrics::AtomicHistogram::new(crate::metrics::SYNC_BUCKETS),
            committed: std::sync::atomic::AtomicU64::new(0),
            page: routing::HeldPage::default(),
            recent: recent::Recent::default(),
        });
        let (jobs, rx) = mpsc::channel(ingest::BATCH_MAX * ingest::IN_FLIGHT * 2);
        tokio::spawn(ingest::run(db.clone(), rx));
        tracing::info!(target = %described, schema = schema::VERSION, "storage: PostgreSQL");
        Ok(Postgres {
            db,
            install,
            jobs,
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            target: described,
        })
    }

    /// Whether the database takes writes: a primary, answering.
    async fn probe(&self) -> Result<(), QueueError> {
        let db = &self.db;
        let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let sql = "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'";
        match conn.query_one(sql, &[]).await {
            Ok(row) if !row.get::<_, bool>(0) => Ok(()),
            Ok(_) => {
                // A standby now: this connection and the idle ones go, so
                // the next follow `target_session_attrs` to the primary.
                let _ = deadpool_postgres::Object::take(conn);
                db.pool.retain(|_, _| false);
                let e = storage("the database is read-only (a standby, or in recovery)");
                db.health.down(&e);
                Err(e)
            }
            Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
        }
    }
}

#[async_trait::async_trait]
impl Ingest for Postgres {
    async fn append(&self, event: NewEvent, now: SystemTime) -> Result<Appended, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::ShuttingDown);
        }
        if !self.db.health.up() {
            return Err(storage("the database cannot take writes"));
        }
        let (reply, answer) = oneshot::channel();
        let job = ingest::Job::new(event, unix_millis(now), reply);
        self.jobs
            .send(ingest::Msg::Append(job))
            .await
            .map_err(|_| QueueError::ShuttingDown)?;
        answer
            .await
            .map_err(|_| storage("the writer stopped before the event was stored"))?
    }

    fn writable(&self) -> bool {
        self.db.health.up()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[async_trait::async_trait]
impl Queue for Postgres {
    async fn inbox(&self, n: usize) -> Result<InboxPage, QueueError> {
        routing::inbox(&self.db, n).await
    }

    async fn routed(
        &self,
        page: &InboxPage,
        routed: Vec<Routed>,
    ) -> Result<Vec<Routed>, QueueError> {
        routing::routed(&self.db, page, routed).await
    }

    async fn routing_idle(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn appended(&self) {
        self.db.appended.notified().await
    }

    fn install_id(&self) -> u64 {
        self.install
    }

    async fn claim(&self, sink: &str, limits: Limits, now_ms: u64) -> Result<Due, QueueError> {
        deliveries::claim(&self.db, sink, limits, now_ms).await
    }

    async fn settle(
        &self,
        lease: &Lease,
        rec: &DeliveryRecord,
        how: Settle,
    ) -> Result<(), QueueError> {
        deliveries::settle(&self.db, lease, rec, how).await
    }

    fn release(&self, lease: &Lease) {
        let (db, lease) = (self.db.clone(), lease.clone());
        self.runtime.spawn(async move {
            if let Err(e) = deliveries::release(&db, &lease).await {
                tracing::debug!(error = %e, delivery = lease.id, "cannot release a claim; it lapses with its lease");
            }
        });
    }

    async fn pause(&self, sink: &str, until_ms: u64) -> Result<(), QueueError> {
        deliveries::pause(&self.db, sink, until_ms).await
    }

    async fn next_due(&self, sink: &str) -> Result<Option<u64>, QueueError> {
        deliveries::next_due(&self.db, sink).await
    }

    fn limits_cluster_wide(&self) -> bool {
        true
    }

    async fn bury_orphans(&self, sinks: &[String], now_ms: u64) -> Result<usize, QueueError> {
        deliveries::bury_orphans(&self.db, sinks, now_ms).await
    }

    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, QueueError> {
        dead::page(&self.db, after, limit).await
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeliveryRecord>, QueueError> {
        dead::one(&self.db, id).await
    }

    async fn dead_by_sink(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        dead::by_sink(&self.db).await
    }

    async fn requeue(
        &self,
        id: Option<u64>,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
    ) -> Result<Requeued, QueueError> {
        dead::requeue(&self.db, id, now_ms, refuse).await
    }

    async fn requeue_where(
        &self,
        filter: &DeliveryFilter,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
        dry_run: bool,
    ) -> Result<Requeued, QueueError> {
        lookups::requeue_where(&self.db, filter, now_ms, refuse, dry_run).await
    }

    async fn add_missing(&self, deliveries: Vec<DeliveryRecord>) -> Result<Added, QueueError> {
        lookups::add_missing(&self.db, deliveries).await
    }

    async fn stats(&self, disabled: &[(String, String)]) -> Result<Stats, QueueError> {
        let db = &self.db;
        let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let names: Vec<&str> = disabled.iter().map(|(s, _)| s.as_str()).collect();
        let counted = async {
            let row = conn.query_one(STATS, &[]).await?;
            let held = conn
                .query(
                    "SELECT sink, count(*) FROM hookgate_deliveries
                     WHERE NOT dead AND sink = ANY($1) GROUP BY sink",
                    &[&names],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>((row, held))
        }
        .await;
        let (row, held) = match counted {
            Ok(c) => c,
            Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
        };
        let n = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        let held: BTreeMap<String, u64> = held
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect();
        let mut stats = Stats {
            inbox: n(0),
            seen: n(1),
            deliveries: n(2),
            dead: n(3),
            unmatched: n(4),
            disk_bytes: n(5),
            ..Stats::default()
        };
        for (sink, reason) in disabled {
            let h = held.get(sink).copied().unwrap_or(0);
            stats.held += h;
            stats.disabled.insert(
                sink.clone(),
                Disabled {
                    reason: reason.clone(),
                    held: h,
                },
            );
        }
        Ok(stats)
    }

    async fn event(&self, id: EventId) -> Result<Option<EventRecord>, QueueError> {
        let Ok(key) = i64::try_from(id.0) else {
            return Ok(None);
        };
        let db = &self.db;
        let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let row = match conn
            .query_opt("SELECT record FROM hookgate_events WHERE id = $1", &[&key])
            .await
        {
            Ok(row) => row,
            Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
        };
        row.map(|r| {
            EventRecord::decode(r.get::<_, &[u8]>(0)).map_err(|e| QueueError::Corrupt {
                key: id.to_string(),
                reason: e.to_string(),
            })
        })
        .transpose()
    }

    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, QueueError> {
        lookups::events(&self.db, filter, before, limit).await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeliveryPage, QueueError> {
        lookups::deliveries(&self.db, filter, before, limit).await
    }

    fn gauges(&self) -> BackendGauges {
        BackendGauges {
            db_commits: Some((
                self.db.commits.snapshot(),
                self.db.committed.load(Ordering::Relaxed),
            )),
            ..BackendGauges::default()
        }
    }

    fn state_writable(&self) -> bool {
        self.db.health.up()
    }

    async fn heal(&self) -> Healed {
        let mut result = self.probe().await;
        if result.is_err() {
            // Once more on a fresh connection: the failed one is gone.
            result = self.probe().await;
        }
        match result {
            Ok(()) if self.db.health.recovered() => Healed::Recovered { reopened: true },
            Ok(()) => Healed::Healthy,
            // No connection free, but the database is not down.
            Err(_) if self.db.health.up() => Healed::Healthy,
            Err(_) => Healed::Failing,
        }
    }

    /// Every second: a look is one connection attempt per host (bounded by
    /// `connect_timeout`), and a failover ends when the new primary takes
    /// writes, which is to be noticed then, not up to 16 s later.
    fn heal_backoff_max(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    async fn prune(&self, now: SystemTime, retention: Duration) -> Result<u64, QueueError> {
        let db = &self.db;
        let now_ms = unix_millis(now).min(i64::MAX as u64) as i64;
        let cutoff = now_ms.saturating_sub(retention.as_millis().min(i64::MAX as u128) as i64);
        let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let done = async {
            for table in [partitions::EVENTS, partitions::DELIVERED] {
                partitions::ensure(&conn, table, &partitions::around(now_ms)).await?;
            }
            let removed = partitions::drop_before(&conn, partitions::EVENTS, cutoff).await?;
            partitions::drop_before(&conn, partitions::DELIVERED, cutoff).await?;
            let keys = partitions::prune_seen(&conn, now_ms).await?;
            if keys > 0 {
                tracing::info!(removed = keys, "pruned expired dedupe keys");
            }
            Ok::<_, tokio_postgres::Error>(removed)
        }
        .await;
        done.map_err(|e| conn_err(&db.health, &db.pool, conn, e))
    }

    async fn prune_dead(
        &self,
        now: SystemTime,
        keep: Duration,
    ) -> Result<BTreeMap<String, u64>, QueueError> {
        let cutoff = unix_millis(now).saturating_sub(keep.as_millis().min(u64::MAX as u128) as u64);
        dead::prune(&self.db, cutoff).await
    }

    async fn flush(&self) -> Result<(), QueueError> {
        let (done, flushed) = oneshot::channel();
        if self.jobs.send(ingest::Msg::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        Ok(())
    }

    async fn import(&self, carried: Carried) -> Result<Imported, QueueError> {
        import::import(&self.db, carried, unix_millis(SystemTime::now())).await
    }
}

/// Counts for `stats`, in one round trip.
const STATS: &str = r"
SELECT
    (SELECT count(*) FROM hookgate_inbox),
    (SELECT count(*) FROM hookgate_seen),
    (SELECT count(*) FROM hookgate_deliveries WHERE NOT dead),
    (SELECT count(*) FROM hookgate_deliveries WHERE dead),
    (SELECT coalesce(sum(n), 0)::int8 FROM hookgate_unmatched),
    (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace
       AND c.relkind = 'r' AND c.relname LIKE 'hookgate\_%')";

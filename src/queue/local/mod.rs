//! The embedded backend, [`Local`]: the event log and the routing and
//! delivery state (redb) under `data_dir`, one daemon per directory.
//!
//! `store.rs` opens both and pages events from the router's cursor;
//! `log.rs`, `writer.rs` and `seen.rs` are the event log, its writer
//! and checkpoint threads, and the dedupe keys; `kv.rs` the state's
//! tables and `state.rs` keeps them reopenable (`from_sled.rs` converts
//! an earlier version's sled trees); `deliveries.rs` the routing results and delivery records.
//! This file puts them behind the storage port: claims are leases held in
//! memory (a crash makes claimed deliveries due again), and the order of
//! keyed deliveries is read from the `order` index.

mod beside;
mod deliveries;
mod from_sled;
mod kv;
mod listed;
mod log;
mod lookups;
mod seen;
mod state;
mod store;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The state's directory under `data_dir`.
pub use state::DIR as STATE_DIR;
pub use store::{LocalStore, Page};

use super::{
    delivery, unix_millis, Added, Appended, BackendGauges, Carried, CarriedEvent, Claimed,
    DeliveryFilter, DeliveryPage, DeliveryRecord, Disabled, Due, EventFilter, EventId, EventPage,
    EventRecord, Healed, Imported, InboxPage, Ingest, Lease, Limits, NewEvent, PageClaim,
    Preparing, Queue, QueueError, RefuseReplay, Refused, Requeued, Routed, Settle, Stats,
};

/// Most due records looked at per sink per claim.
const PAGE: usize = 256;

/// The local backend behind the storage port.
pub struct Local {
    q: Arc<LocalStore>,
    /// Deliveries claimed and not yet settled.
    leased: Mutex<HashSet<u64>>,
    /// (sink, order key) of the keyed deliveries claimed: a replayed dead
    /// letter can become its key's head while a later delivery of the key
    /// is out, and must wait for it.
    keys_out: Mutex<HashSet<(String, String)>>,
    /// Outcomes waiting to be written together.
    settling: Settling,
}

/// Where an outcome's writer tells whether it was written.
type Told = tokio::sync::oneshot::Sender<Result<(), Arc<QueueError>>>;

/// Group commit for outcomes: each settle adds its outcome to `waiting`,
/// then takes its `turn`; whoever has the turn lets the attempts that
/// finished alongside add theirs (one yield), then writes all waiting in
/// one transaction (`LocalStore::settle_all`, on the blocking pool) and
/// tells each its result.
#[derive(Default)]
struct Settling {
    waiting: Mutex<Vec<(deliveries::Outcome, Told)>>,
    turn: tokio::sync::Mutex<()>,
    /// Transactions written (tests).
    writes: std::sync::atomic::AtomicU64,
}

impl Local {
    pub fn new(q: LocalStore) -> Local {
        Local {
            q: Arc::new(q),
            leased: Mutex::new(HashSet::new()),
            keys_out: Mutex::new(HashSet::new()),
            settling: Settling::default(),
        }
    }

    /// Writes `outcome` with those waiting beside it (see [`Settling`]).
    async fn settle_together(&self, outcome: deliveries::Outcome) -> Result<(), QueueError> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiting = &self.settling.waiting;
        waiting.lock().expect("settling lock").push((outcome, tx));
        let _turn = self.settling.turn.lock().await;
        // Written already by a turn before this one, which took it.
        let written = match rx.try_recv() {
            Ok(written) => written,
            Err(_) => {
                tokio::task::yield_now().await;
                let batch = std::mem::take(&mut *waiting.lock().expect("settling lock"));
                let (outcomes, told): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                // On the blocking pool, as routing's transaction is: a
                // batch of outcomes takes a millisecond or more, which on
                // a tokio worker held every request queued behind it.
                let written = blocking(&self.q, move |q| q.settle_all(&outcomes))
                    .await
                    .map_err(Arc::new);
                self.settling
                    .writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for tell in told {
                    let _ = tell.send(written.clone());
                }
                rx.try_recv()
                    .expect("this turn took every waiting outcome, this one's too")
            }
        };
        written.map_err(|e| e.copy())
    }

    /// The event log and the state underneath (tests, migration, inspection).
    pub fn store(&self) -> &Arc<LocalStore> {
        &self.q
    }

    fn unlease(&self, lease: &Lease) {
        self.leased.lock().expect("lease lock").remove(&lease.id);
        if let Some(key) = &lease.order_key {
            self.keys_out
                .lock()
                .expect("keys lock")
                .remove(&(lease.sink.clone(), key.clone()));
        }
    }

    /// The claim itself (its reads are short: they run where they are
    /// called, as the dispatcher always did).
    fn claim_now(&self, sink: &str, max: usize, now_ms: u64) -> Result<Due, QueueError> {
        // Order keys looked at in this claim, each with the one delivery of
        // it that may start (its head; none when one is out or claimed):
        // the rest of each key is skipped without a look at the index.
        // Records skipped so do not count against the page, so a long
        // queue behind one blocked key cannot hide other keys' work.
        let mut heads: HashMap<String, Option<u64>> = HashMap::new();
        let mut claimed = Vec::new();
        let mut looked = 0;
        let mut after: Option<Vec<u8>> = None;
        // The due deliveries in flight come first in due order: read what
        // is asked for past them, not a whole page each time a slot frees
        // (a claim of one per finished attempt read 256 keys).
        let out = self.leased.lock().expect("lease lock").len();
        let per_page = (max + out + 8).min(PAGE);
        'pages: loop {
            let page = self.q.due_after(sink, now_ms, after.as_deref(), per_page)?;
            let more = page.len() == per_page;
            for (key, id) in page {
                after = Some(key.clone());
                looked += 1;
                if self.leased.lock().expect("lease lock").contains(&id) {
                    continue;
                }
                let Some(mut rec) = self.q.delivery(&key)? else {
                    continue;
                };
                if let Some(order) = &rec.order_key {
                    let head = match heads.get(order) {
                        Some(head) => {
                            looked -= 1;
                            *head
                        }
                        None => {
                            let out = self
                                .keys_out
                                .lock()
                                .expect("keys lock")
                                .contains(&(sink.to_owned(), order.clone()));
                            // Not filed at all (cannot happen but by
                            // damage): let it go rather than hold it forever.
                            let head = match out {
                                true => None,
                                false => Some(self.q.order_head(sink, order)?.unwrap_or(rec.id)),
                            };
                            heads.insert(order.clone(), head);
                            head
                        }
                    };
                    if head != Some(rec.id) {
                        continue;
                    }
                    // Nothing more of this key in this claim.
                    heads.insert(order.clone(), None);
                }
                // A body stored as a reference to the event is read back
                // for the attempt (only for what is claimed).
                self.q.read_body(&mut rec)?;
                if let Some(order) = &rec.order_key {
                    self.keys_out
                        .lock()
                        .expect("keys lock")
                        .insert((sink.to_owned(), order.clone()));
                }
                self.leased.lock().expect("lease lock").insert(rec.id);
                claimed.push(Claimed {
                    lease: Lease {
                        id: rec.id,
                        sink: sink.to_owned(),
                        order_key: rec.order_key.clone(),
                        key: key.to_vec(),
                        token: 0,
                    },
                    rec,
                });
                if claimed.len() >= max {
                    break 'pages;
                }
            }
            if !more || looked >= PAGE {
                break;
            }
        }
        Ok(Due {
            claimed,
            next_due: self.q.next_due(sink)?,
            held: None,
        })
    }
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

/// Runs `f` on the blocking pool (log reads and table scans that may take
/// a while).
async fn blocking<T: Send + 'static>(
    q: &Arc<LocalStore>,
    f: impl FnOnce(&LocalStore) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let q = q.clone();
    tokio::task::spawn_blocking(move || f(&q))
        .await
        .map_err(|e| QueueError::Storage(std::io::Error::other(e)))?
}

#[async_trait::async_trait]
impl Ingest for Local {
    async fn append(&self, event: NewEvent, now: SystemTime) -> Result<Appended, QueueError> {
        self.q.append(event, now).await
    }

    fn writable(&self) -> bool {
        self.q.writable()
    }

    fn close(&self) {
        self.q.close()
    }

    fn preparing(&self) -> Preparing {
        self.q.preparing()
    }
}

#[async_trait::async_trait]
impl Queue for Local {
    async fn inbox(&self, n: usize) -> Result<InboxPage, QueueError> {
        // Read on the router's task, not the blocking pool: the page is
        // the log's tail, just written and in the page cache (a hand-off
        // to the pool and back would cost more than the read), and an
        // empty inbox reads nothing.
        let page = self.q.inbox_page(n)?;
        Ok(InboxPage {
            events: page.events,
            claim: PageClaim {
                from: page.from.0,
                next: page.next.0,
            },
        })
    }

    /// On the blocking pool: a page's transaction takes a millisecond or
    /// more, which on
    /// a tokio worker held every request waiting on it.
    async fn routed(
        &self,
        page: &InboxPage,
        mut routed: Vec<Routed>,
    ) -> Result<Vec<Routed>, QueueError> {
        let (from, next) = (EventId(page.claim.from), EventId(page.claim.next));
        blocking(&self.q, move |q| {
            for r in &mut routed {
                for d in r.pending.iter_mut().chain(r.dead.iter_mut()) {
                    d.id = q.next_delivery_id()?;
                }
            }
            q.routed(&routed, from, next)?;
            Ok(routed)
        })
        .await
    }

    async fn routing_idle(&self) -> Result<(), QueueError> {
        blocking(&self.q, |q| q.save_cursor()).await
    }

    async fn appended(&self) {
        self.q.appended().await
    }

    fn install_id(&self) -> u64 {
        self.q.install_id()
    }

    async fn claim(&self, sink: &str, limits: Limits, now_ms: u64) -> Result<Due, QueueError> {
        self.claim_now(sink, limits.max, now_ms)
    }

    async fn settle(
        &self,
        lease: &Lease,
        rec: &DeliveryRecord,
        how: Settle,
    ) -> Result<(), QueueError> {
        self.settle_together(deliveries::Outcome::new(&lease.key, rec, how))
            .await?;
        self.unlease(lease);
        Ok(())
    }

    fn release(&self, lease: &Lease) {
        self.unlease(lease);
    }

    async fn pause(&self, _sink: &str, _until_ms: u64) -> Result<(), QueueError> {
        // One daemon: the dispatcher's own pause is the whole of it.
        Ok(())
    }

    async fn next_due(&self, sink: &str) -> Result<Option<u64>, QueueError> {
        self.q.next_due(sink)
    }

    fn limits_cluster_wide(&self) -> bool {
        false
    }

    async fn bury_orphans(&self, sinks: &[String], now_ms: u64) -> Result<usize, QueueError> {
        let names: Vec<&str> = sinks.iter().map(String::as_str).collect();
        let in_flight = self.leased.lock().expect("lease lock").clone();
        self.q.bury_orphans(&names, &in_flight, now_ms)
    }

    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, QueueError> {
        self.q.dead_page(after, limit)
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<DeliveryRecord>, QueueError> {
        self.q.dead_letter(id)
    }

    async fn dead_by_sink(&self) -> Result<BTreeMap<String, u64>, QueueError> {
        self.q.dead_by_sink()
    }

    async fn requeue(
        &self,
        id: Option<u64>,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
    ) -> Result<Requeued, QueueError> {
        self.q.requeue(id, now_ms, refuse)
    }

    async fn requeue_where(
        &self,
        filter: &DeliveryFilter,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
        dry_run: bool,
    ) -> Result<Requeued, QueueError> {
        // `refuse` is borrowed: it runs here, as `requeue` does.
        self.q.requeue_where(filter, now_ms, refuse, dry_run)
    }

    async fn add_missing(&self, deliveries: Vec<DeliveryRecord>) -> Result<Added, QueueError> {
        blocking(&self.q, move |q| q.add_missing(deliveries)).await
    }

    async fn stats(&self, disabled: &[(String, String)]) -> Result<Stats, QueueError> {
        let disabled = disabled.to_vec();
        blocking(&self.q, move |q| {
            q.stats_with(disabled.iter().map(|(s, r)| (s.as_str(), r.as_str())))
        })
        .await
    }

    async fn event(&self, id: EventId) -> Result<Option<EventRecord>, QueueError> {
        blocking(&self.q, move |q| q.event(id)).await
    }

    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, QueueError> {
        let filter = filter.clone();
        blocking(&self.q, move |q| q.events_page(&filter, before, limit)).await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeliveryPage, QueueError> {
        let filter = filter.clone();
        blocking(&self.q, move |q| q.deliveries_page(&filter, before, limit)).await
    }

    fn gauges(&self) -> BackendGauges {
        BackendGauges {
            log_syncs: Some(self.q.log_syncs()),
            damaged_frames: self.q.damaged_frames(),
            db_commits: None,
        }
    }

    fn state_writable(&self) -> bool {
        self.q.state_writable()
    }

    async fn heal(&self) -> Healed {
        blocking(&self.q, |q| Ok(q.heal()))
            .await
            .unwrap_or(Healed::Failing)
    }

    async fn prune(&self, now: SystemTime, retention: Duration) -> Result<u64, QueueError> {
        match self.q.prune_seen(now).await {
            Ok(n) if n > 0 => tracing::info!(removed = n, "pruned expired dedupe keys"),
            Err(e) => tracing::warn!(error = %e, "pruning dedupe keys failed"),
            _ => {}
        }
        // One segment at a time, paced: deleting many at once frees their
        // blocks in one journal commit, and on a filesystem mounted with
        // `discard` every log sync waits for that.
        let mut removed = 0;
        loop {
            match blocking(&self.q, move |q| q.prune_log(now, retention, 1)).await? {
                1 => removed += 1,
                _ => break,
            }
            tokio::time::sleep(PRUNE_PAUSE).await;
        }
        if removed > 0 {
            tracing::info!(removed, "deleted log segments past retention");
        }
        let cutoff =
            unix_millis(now).saturating_sub(retention.as_millis().min(u64::MAX as u128) as u64);
        let mut delivered = 0;
        loop {
            let (n, more) = blocking(&self.q, move |q| {
                q.prune_delivered(cutoff, DEAD_PRUNE_BATCH)
            })
            .await?;
            delivered += n;
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
        if delivered > 0 {
            tracing::info!(
                deliveries = delivered,
                "deleted delivered history past retention"
            );
        }
        Ok(removed)
    }

    async fn prune_dead(
        &self,
        now: SystemTime,
        keep: Duration,
    ) -> Result<BTreeMap<String, u64>, QueueError> {
        let cutoff = unix_millis(now).saturating_sub(keep.as_millis().min(u64::MAX as u128) as u64);
        let mut expired = BTreeMap::new();
        loop {
            let (by, more) =
                blocking(&self.q, move |q| q.prune_dead(cutoff, DEAD_PRUNE_BATCH)).await?;
            for (sink, n) in by {
                *expired.entry(sink).or_default() += n;
            }
            if !more {
                return Ok(expired);
            }
            tokio::task::yield_now().await;
        }
    }

    async fn flush(&self) -> Result<(), QueueError> {
        blocking(&self.q, |q| q.flush()).await
    }

    async fn import(&self, _carried: Carried) -> Result<Imported, QueueError> {
        Err(QueueError::Unsupported(
            "the local backend takes no imports: work moves from it into PostgreSQL, not back"
                .into(),
        ))
    }
}

/// Pause between two log segments deleted.
const PRUNE_PAUSE: Duration = Duration::from_millis(200);
/// Dead letters (and delivered history) deleted per transaction.
const DEAD_PRUNE_BATCH: usize = 1000;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// Outcomes that finish together are written in one transaction, each
    /// as its own kind says (one transaction per outcome held a drain to
    /// ~3,000 a second with sled).
    #[tokio::test]
    async fn outcomes_that_finish_together_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(Local::new(LocalStore::open(dir.path(), true).unwrap()));
        let pending = (1..=60)
            .map(|id| {
                let mut rec = delivery::tests::sample(id, 0);
                rec.sink = "a".into();
                rec
            })
            .collect();
        let page = local.inbox(10).await.unwrap();
        let routed = Routed {
            event: EventId(0),
            pending,
            dead: vec![],
        };
        local.routed(&page, vec![routed]).await.unwrap();
        let limits = Limits {
            max: 60,
            concurrency: 60,
            rate: None,
            lease: Duration::from_secs(60),
        };
        let due = local.claim("a", limits, 1_000).await.unwrap();
        assert_eq!(due.claimed.len(), 60);
        let settles: Vec<_> = due
            .claimed
            .into_iter()
            .map(|Claimed { mut rec, lease }| {
                let local = local.clone();
                tokio::spawn(async move {
                    let how = match rec.id % 3 {
                        0 => Settle::Done,
                        1 => {
                            rec.due_ms = 90_000;
                            Settle::Reschedule
                        }
                        _ => {
                            rec.reason = Some("gone".into());
                            rec.dead_ms = Some(1_000);
                            Settle::Bury
                        }
                    };
                    local.settle(&lease, &rec, how).await
                })
            })
            .collect();
        for settled in settles {
            settled.await.unwrap().unwrap();
        }
        let writes = local.settling.writes.load(Ordering::Relaxed);
        assert!(writes < 10, "{writes} transactions for 60 outcomes");
        let stats = local.stats(&[]).await.unwrap();
        assert_eq!((stats.deliveries, stats.dead), (20, 20));
        let now = local.claim("a", limits, 1_000).await.unwrap();
        assert_eq!(now.claimed.len(), 0);
        let later = local.claim("a", limits, 90_000).await.unwrap();
        assert_eq!(later.claimed.len(), 20);
        assert!(later.claimed.iter().all(|c| c.rec.id % 3 == 1));
        assert_eq!(
            local
                .dead_letter(2)
                .await
                .unwrap()
                .unwrap()
                .reason
                .as_deref(),
            Some("gone")
        );
        let delivered = local.store().state.get().unwrap().delivered.len().unwrap();
        assert_eq!(delivered, 20);
    }
}

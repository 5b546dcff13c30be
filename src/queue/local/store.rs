//! The event log and the routing and delivery state, under `data_dir`,
//! opened together.
//!
//! Layout under `data_dir`: `log/` (the events, `log.rs`, and their dedupe
//! keys, `seen.rs`) and `state/state.redb` (`state.rs`, `kv.rs`), with the
//! tables `meta` (the router's cursor into the log and the count of
//! unmatched events), `deliveries`, `order`, `dead` and `dead_at`
//! (`deliveries.rs`) and those lookups read (`lookups.rs`). Accepted events
//! go through the writer thread (`writer.rs`); the router reads them back
//! from the log in order, and one transaction records what it made of a
//! page of them and moves its cursor past them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::kv::{Db, Tree};
use super::listed::{self, EventFiles};
use super::log::{self, Log};
use super::seen::{self, KeyFiles};
use super::state::{self, StateStore};
use super::writer::{self, Append, Job, Shared};
use super::Healed;
use super::{unix_millis, Appended, EventId, EventRecord, NewEvent, QueueError, Stats};
use crate::queue::{BodyOfEvent, Dedupe, DeliveryRecord, Preparing};

/// Most appends one commit takes.
const BATCH_MAX: usize = 1024;
/// How long readers wait for the writer to file the keys of what was acknowledged.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// `meta` key: the log position (u64 BE) the router has routed everything before.
pub(super) const ROUTED_KEY: &[u8] = b"routed";
/// `meta` key: how many events no route matched (u64 BE).
pub(super) const UNMATCHED_KEY: &[u8] = b"unmatched";
/// `meta` key: this data_dir's random id (u64 BE), made when it is created.
const INSTALL_KEY: &[u8] = b"install";
/// `meta` key: the router's cursor (u64 BE) when the event index was
/// made: events from it on are in the index once routed.
const INDEXED_FROM_KEY: &[u8] = b"events_indexed_from";
/// `meta` key: until when (Unix ms, u64 BE) a dedupe key remembered
/// before unsigned ids were keyed on their own (session 14) may be live:
/// until then an unsigned id is also looked up by its whole key.
const WHOLE_KEYS_UNTIL_KEY: &[u8] = b"whole_keys_until";
/// Longest the router's cursor moves in memory only (`deliveries.rs`).
pub(super) const SAVE_CURSOR_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct LocalStore {
    /// The routing and delivery state, reopened in process after a
    /// storage failure (`state.rs`).
    pub(super) state: Arc<StateStore>,
    /// This data_dir's random id: log positions start again in a fresh
    /// one, so idempotency keys carry it.
    install: u64,
    /// The router's cursor: the log position every event before which is routed.
    pub(super) routed_upto: AtomicU64,
    /// Events no route matched, saved with the cursor.
    pub(super) unmatched: AtomicU64,
    /// When the cursor was last saved, and where it was.
    pub(super) cursor_saved: std::sync::Mutex<(std::time::Instant, u64)>,
    pub(super) shared: Arc<Shared>,
    pub(super) log_dir: std::path::PathBuf,
    reader: log::Reader,
    /// The log as lookups read it (events not filed yet): files of
    /// its own, and damage it meets is not counted again.
    pub(super) lookup_reader: log::Reader,
    /// The log read one event at a time ([`LocalStore::event`]: lookups
    /// of one event, bodies read back for the dispatcher).
    single_reader: log::Reader,
    /// Damaged log frames skipped so far (recovery and reading).
    damaged: Arc<AtomicU64>,
    jobs: mpsc::Sender<Job>,
    /// Until when (Unix ms) an unsigned id is also looked up by its whole
    /// key: keys of this store from before ids were keyed on their own.
    whole_keys_until_ms: u64,
    closed: AtomicBool,
    /// The writer and checkpoint threads, joined on drop.
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for LocalStore {
    /// Lets the writer finish what it was given and waits for it and the
    /// checkpointer: once the queue is dropped, its files no longer change and
    /// the data dir can be opened again.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Nothing else holds the queue: the next open need not count the
        // trees (a daemon saved them at its last flush already; this is for
        // the CLI, which inspects without a daemon, and tests).
        if let Err(e) = self.state.save_counts() {
            tracing::warn!(error = %e, "could not save the counts at close; the next start counts the trees");
        }
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").finish_non_exhaustive()
    }
}

/// Events read back from the log for routing.
#[derive(Debug)]
pub struct Page {
    /// Where the page starts: the router's cursor when it was read.
    pub from: EventId,
    /// Each event's id and stored record (`EventRecord::encode` bytes).
    pub events: Vec<(EventId, Vec<u8>)>,
    /// The position after the last of them: the cursor once they are routed.
    pub next: EventId,
}

impl LocalStore {
    /// Opens (or creates) the queue in `dir`: reads the dedupe keys back
    /// (completing them from the log), then starts the writer and
    /// checkpoint threads. `group_commit` off makes every append its own
    /// commit (to measure the difference).
    pub fn open(dir: &Path, group_commit: bool) -> Result<LocalStore, QueueError> {
        Self::open_as(dir, Some(group_commit))
    }

    /// Opens the queue in `dir` to look at it and change deliveries (the
    /// CLI without a daemon): no log segment is prepared and no writer runs,
    /// so appends fail with `ShuttingDown`.
    pub fn inspect(dir: &Path) -> Result<LocalStore, QueueError> {
        Self::open_as(dir, None)
    }

    /// Compacts the state file in `dir`, with no daemon running: what a
    /// drained backlog left free goes back to the filesystem. Its size
    /// before and after, in bytes.
    pub fn compact_state(dir: &Path) -> Result<(u64, u64), QueueError> {
        StateStore::compact(dir)
    }

    /// `group_commit`: `None` to inspect only.
    fn open_as(dir: &Path, group_commit: Option<bool>) -> Result<LocalStore, QueueError> {
        let state = Arc::new(StateStore::open(dir)?);
        let trees = state.get()?;
        let (db, meta) = (&trees.db, &trees.meta);
        let log_dir = dir.join("log");
        std::fs::create_dir_all(&log_dir).map_err(QueueError::Storage)?;
        let now_ms = unix_millis(SystemTime::now());
        let cursor = cursor_of(db, meta, &log_dir, now_ms)?;
        let unmatched = read_u64(meta, UNMATCHED_KEY)?.unwrap_or(0);
        let install = match read_u64(meta, INSTALL_KEY)? {
            Some(id) => id,
            // Made durable by the checkpoint below, before anything is
            // routed with it.
            None => {
                let id = rand::random::<u64>();
                meta.insert(INSTALL_KEY, id.to_be_bytes())?;
                id
            }
        };
        // Before listings were filed beside the log (`listed.rs`), the
        // router filed them in sled's trees from this point.
        meta.remove(INDEXED_FROM_KEY)?;
        let damaged = Arc::new(AtomicU64::new(0));
        let recovered =
            seen::recover(&log_dir, now_ms, cursor, &damaged).map_err(QueueError::Storage)?;
        if recovered.listed > 0 {
            tracing::info!(
                events = recovered.listed,
                "filed what listings show of events from the log"
            );
        }
        if recovered.reread > 0 {
            tracing::info!(
                events = recovered.reread,
                "read dedupe keys of acknowledged events back from the log"
            );
        }
        // Keys remembered before unsigned ids were keyed on their own are
        // whole keys: a retry of one of their deliveries must still find
        // it. Noted once, when this version first opens the store.
        let whole_keys_until_ms = match read_u64(meta, WHOLE_KEYS_UNTIL_KEY)? {
            Some(until) => until,
            None => {
                let until = recovered.seen.last_expiry();
                meta.insert(WHOLE_KEYS_UNTIL_KEY, until.to_be_bytes())?;
                until
            }
        };
        trees.db.checkpoint()?;
        drop(trees);
        // The directories just created must survive a power loss too.
        for d in [dir, dir.join(state::DIR).as_path(), log_dir.as_path()] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(QueueError::Storage)?;
        }
        let shared = Arc::new(Shared::new(
            recovered.end,
            recovered.from_cursor,
            recovered.seen.len(),
        ));
        let (jobs, rx) = mpsc::channel(BATCH_MAX * 4);
        let queue = |jobs, threads| LocalStore {
            state: state.clone(),
            routed_upto: AtomicU64::new(cursor.0),
            install,
            unmatched: AtomicU64::new(unmatched),
            cursor_saved: std::sync::Mutex::new((std::time::Instant::now(), cursor.0)),
            shared: shared.clone(),
            reader: log::Reader::new(&log_dir, damaged.clone()),
            lookup_reader: log::Reader::new(&log_dir, Arc::default()),
            single_reader: log::Reader::new(&log_dir, Arc::default()),
            damaged: damaged.clone(),
            log_dir: log_dir.clone(),
            jobs,
            whole_keys_until_ms,
            closed: AtomicBool::new(false),
            threads,
        };
        let Some(group_commit) = group_commit else {
            // No writer: appends find the channel closed.
            drop(rx);
            return Ok(queue(jobs, Vec::new()));
        };
        log::remove_unused(&log_dir, recovered.last_used).map_err(QueueError::Storage)?;
        let log = Log::resume(&log_dir, recovered.end).map_err(QueueError::Storage)?;
        // The checkpointer stops once the writer is done.
        let (writer_done, stop) = std::sync::mpsc::channel::<()>();
        let batch_max = if group_commit { BATCH_MAX } else { 1 };
        let writer = {
            let shared = shared.clone();
            let seen = recovered.seen;
            let files = KeyFiles::new(&log_dir);
            let events = EventFiles::new(&log_dir);
            let stored = log::Reader::new(&log_dir, damaged.clone());
            std::thread::Builder::new()
                .name("hookgate-writer".into())
                .spawn(move || {
                    let index = writer::Index { seen, stored };
                    writer::run_writer(log, index, files, events, shared, rx, batch_max);
                    drop(writer_done);
                })
                .map_err(QueueError::Storage)?
        };
        let checkpointer = {
            let state = state.clone();
            std::thread::Builder::new()
                .name("hookgate-checkpoint".into())
                .spawn(move || writer::run_checkpointer(state, stop))
                .map_err(QueueError::Storage)?
        };
        Ok(queue(jobs, vec![writer, checkpointer]))
    }

    /// Every event not yet routed, oldest first.
    pub fn inbox(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        self.inbox_page(usize::MAX)?
            .events
            .into_iter()
            .map(|(id, bytes)| Ok((id, decode(id, &bytes)?)))
            .collect()
    }

    /// The work not yet done, for `hookgate queue migrate`: events not yet
    /// routed (with their dedupe keys), pending deliveries and dead letters.
    pub fn export(&self) -> Result<super::Carried, QueueError> {
        let from = EventId(self.routed_upto.load(Ordering::Acquire));
        let (found, _) = self.reader.page(from, self.shared.acked(), usize::MAX)?;
        let mut events = Vec::with_capacity(found.len());
        for f in found {
            let log::LogEntry::V1 {
                seen_key,
                expiry_ms,
                record,
            } = f.entry;
            let record = decode(f.id, &record)?;
            events.push(super::CarriedEvent {
                dedupe_key: seen::dedupe_key_of(&seen_key, &record.body),
                record,
                expires_ms: expiry_ms,
            });
        }
        let mut deliveries = self.pending()?;
        for d in &mut deliveries {
            self.read_body(d)?;
        }
        deliveries.extend(self.dead_letters()?);
        Ok(super::Carried {
            from_install: self.install,
            events,
            deliveries,
        })
    }

    /// Reads back the body of `rec`'s request when it is stored as a
    /// reference to its event ([`BodyOfEvent::Unread`]). When the log no
    /// longer holds the event (damage, or a segment deleted by hand:
    /// [`LocalStore::prune_log`] keeps those the `refs` tree names), the
    /// body stays unread, and the dispatcher refuses to send it
    /// (`dispatch::unsendable`).
    pub fn read_body(&self, rec: &mut DeliveryRecord) -> Result<(), QueueError> {
        let Some(frozen) = rec
            .frozen
            .as_mut()
            .filter(|f| f.body_of_event == BodyOfEvent::Unread)
        else {
            return Ok(());
        };
        let id = EventId(rec.event_id);
        let Some(event) = self.event(id)? else {
            tracing::warn!(delivery = rec.id, event = %id, "the event this delivery's body is read from is not in the log");
            return Ok(());
        };
        frozen.body = serde_bytes::ByteBuf::from(event.body);
        frozen.body_of_event = BodyOfEvent::Held;
        Ok(())
    }

    /// One event, if the log still holds it: its frame alone
    /// ([`log::Reader::one`]), by a reader of its own.
    pub fn event(&self, id: EventId) -> Result<Option<EventRecord>, QueueError> {
        match self.single_reader.one(id, self.shared.acked())? {
            Some(f) => {
                let log::LogEntry::V1 { record, .. } = f.entry;
                Ok(Some(decode(id, &record)?))
            }
            None => Ok(None),
        }
    }

    /// Waits until events were acknowledged (or returns at once when some
    /// were since the last call).
    pub async fn appended(&self) {
        self.shared.appended.notified().await;
    }

    /// Every event the log holds, routed or not, oldest first (for
    /// inspection and tests; reads every segment).
    pub fn events(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        let mut out = Vec::new();
        for seq in log::segments(&self.log_dir).map_err(QueueError::Storage)? {
            for found in
                log::scan(&self.log_dir, seq, 0, &self.damaged).map_err(QueueError::Storage)?
            {
                let log::LogEntry::V1 { record, .. } = found.entry;
                out.push((found.id, decode(found.id, &record)?));
            }
        }
        Ok(out)
    }

    /// Up to `n` events from the router's cursor on, oldest first (those
    /// acknowledged so far; no waiting).
    pub fn inbox_page(&self, n: usize) -> Result<Page, QueueError> {
        let from = EventId(self.routed_upto.load(Ordering::Acquire));
        let (found, next) = self.reader.page(from, self.shared.acked(), n)?;
        let events = found
            .into_iter()
            .map(|f| {
                let log::LogEntry::V1 { record, .. } = f.entry;
                (f.id, record.into_vec())
            })
            .collect();
        Ok(Page { from, events, next })
    }

    /// Deletes log segments the router is past for good (its cursor, as
    /// saved and made durable here, is beyond them), whose dedupe keys are
    /// on file (and are synced here), and that were last written more than
    /// `retention` ago, and that hold no event a pending delivery refers to
    /// for its body (the `refs` tree; dead letters and the delivered
    /// history carry their own). Deletes at most `limit`; returns how many
    /// went.
    pub fn prune_log(
        &self,
        now: SystemTime,
        retention: std::time::Duration,
        limit: usize,
    ) -> Result<usize, QueueError> {
        // The cursor in memory may be ahead of what a crash would leave.
        let saved = read_u64(&self.state.get()?.meta, ROUTED_KEY)?.unwrap_or(0);
        // Pending deliveries whose body is their event's need the event
        // until they leave: the oldest of those events pins its segment.
        let referred_seq = match self.state.check(self.state.get()?.refs.first())? {
            Some((k, _)) => log::place_of(EventId(id_at_start(&k)?)).0,
            None => u64::MAX,
        };
        // Both were read from commits this makes durable: a crash cannot
        // bring back a reference (or a cursor) the deletion did not see.
        self.state.checkpoint()?;
        let (routed_seq, _) = log::place_of(EventId(saved));
        let (indexed_seq, _) = log::place_of(self.shared.indexed());
        // The newest segment holding events is never deleted: it tells the
        // next start where ids go on.
        let keep_from = routed_seq.min(indexed_seq).min(referred_seq);
        let mut removed = 0;
        for seq in log::segments(&self.log_dir).map_err(QueueError::Storage)? {
            if seq >= keep_from || removed == limit {
                break;
            }
            let age = log::modified(&self.log_dir, seq)
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < retention {
                continue;
            }
            seen::sync_keys(&self.log_dir, seq).map_err(QueueError::Storage)?;
            listed::remove(&self.log_dir, seq).map_err(QueueError::Storage)?;
            self.reader.forget(seq);
            self.lookup_reader.forget(seq);
            self.single_reader.forget(seq);
            log::remove(&self.log_dir, seq).map_err(QueueError::Storage)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Forgets dedupe keys whose window has passed, and deletes keys files
    /// left with none. Returns how many keys were forgotten.
    pub async fn prune_seen(&self, now: SystemTime) -> Result<usize, QueueError> {
        let now_ms = unix_millis(now);
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job::Prune { now_ms, reply })
            .await
            .map_err(|_| QueueError::ShuttingDown)?;
        let removed = answer.await.map_err(|_| QueueError::ShuttingDown)?;
        let dir = self.log_dir.clone();
        tokio::task::spawn_blocking(move || seen::prune_files(&dir, now_ms))
            .await
            .map_err(|e| QueueError::Storage(std::io::Error::other(e)))?
            .map_err(QueueError::Storage)?;
        Ok(removed)
    }

    /// Whether routing and delivery state can be written now: while it
    /// cannot, the router and the dispatcher wait and `/readyz` says so.
    pub fn state_writable(&self) -> bool {
        self.state.healthy()
    }

    /// Whether the daemon should take traffic (`/readyz`): events can be
    /// stored, and what they become can be recorded.
    pub fn ready(&self) -> bool {
        self.writable() && self.state_writable()
    }

    /// Recovers from storage failures without a restart; the daemon calls
    /// it every second or so. The writer is asked to try again what failed
    /// (starting a log segment, a write), so readiness returns without
    /// waiting for webhook traffic; the state store is probed and, if
    /// its error is sticky, reopened, after which the router's cursor is
    /// read back from what was durable (events after it are
    /// routed again, with the same idempotency keys).
    pub fn heal(&self) -> Healed {
        if self.shared.failing.load(Ordering::Acquire) {
            // Full: the next call asks again.
            let _ = self.jobs.try_send(Job::Probe);
        }
        let healed = self.state.heal(unix_millis(SystemTime::now()));
        if let Healed::Recovered { reopened } = healed {
            // Still marked failing: the router and the dispatcher wait
            // until the cursor is what the reopened state holds.
            if reopened {
                if let Err(e) = self.reload_cursor() {
                    tracing::error!(error = %e, "cannot read the router's place back after reopening the state store");
                    return Healed::Failing;
                }
            }
            self.state.recovered();
            tracing::warn!(
                reopened,
                "routing and delivery state can be written again: routing and dispatching resume"
            );
        }
        healed
    }

    /// After a reopen: the cursor and the unmatched count as last made
    /// durable; events past that cursor count as unrouted again.
    fn reload_cursor(&self) -> Result<(), QueueError> {
        let trees = self.state.get()?;
        let saved = read_u64(&trees.meta, ROUTED_KEY)?.unwrap_or(0);
        let unmatched = read_u64(&trees.meta, UNMATCHED_KEY)?.unwrap_or(0);
        let mut cursor = self.cursor_saved.lock().expect("cursor lock");
        let was = self.routed_upto.load(Ordering::Acquire);
        if saved < was {
            let (again, _) = self.reader.page(EventId(saved), EventId(was), usize::MAX)?;
            self.shared
                .unrouted
                .fetch_add(again.len() as u64, Ordering::AcqRel);
        }
        self.routed_upto.store(saved, Ordering::Release);
        self.unmatched.store(unmatched, Ordering::Release);
        *cursor = (std::time::Instant::now(), saved);
        Ok(())
    }

    /// [`Queue::stats`], with what each of the `disabled` sinks (name, why)
    /// holds.
    pub fn stats_with<'a>(
        &self,
        disabled: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Stats, QueueError> {
        let mut stats = self.stats()?;
        for (sink, reason) in disabled {
            let held = self.pending_count(sink)?;
            stats.held += held;
            stats.disabled.insert(
                sink.to_owned(),
                super::Disabled {
                    reason: reason.to_owned(),
                    held,
                },
            );
        }
        Ok(stats)
    }

    /// This data_dir's random id (made when the queue was first opened).
    pub fn install_id(&self) -> u64 {
        self.install
    }

    /// Damaged log frames skipped since the queue opened.
    pub fn damaged_frames(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    /// The event log's syncs so far, and the events they made durable.
    pub fn log_syncs(&self) -> (crate::metrics::Histogram, u64) {
        (
            self.shared.syncs.snapshot(),
            self.shared.synced_events.load(Ordering::Relaxed),
        )
    }

    /// Waits for every acknowledged event's key to be on file, saves the
    /// router's cursor and makes the state durable (used at shutdown).
    pub fn flush(&self) -> Result<(), QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        self.save_cursor()?;
        if self.closed.load(Ordering::Acquire) {
            // The daemon's last flush: the router and the dispatcher have
            // stopped. Should anything still write, the saved counts are
            // dropped again (`Trees::counts_mut`).
            self.state.save_counts()
        } else {
            self.state.checkpoint()
        }
    }
}

fn decode(id: EventId, bytes: &[u8]) -> Result<EventRecord, QueueError> {
    EventRecord::decode(bytes).map_err(|e| QueueError::Corrupt {
        key: id.to_string(),
        reason: e.to_string(),
    })
}

/// The event id a `refs` key starts with.
fn id_at_start(k: &[u8]) -> Result<u64, QueueError> {
    k.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| QueueError::Corrupt {
            key: hex::encode(k),
            reason: "refs key too short".into(),
        })
}

fn read_u64(tree: &Tree, key: &[u8]) -> Result<Option<u64>, QueueError> {
    tree.get(key)?
        .map(|v| {
            v.as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| QueueError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason: "not 8 bytes".into(),
                })
        })
        .transpose()
}

/// The router's cursor. A data directory from before the cursor kept an
/// `inbox` tree of pointers to unrouted events, a `log_indexed` position,
/// an `unmatched` tree and a `seen` tree: the cursor starts at the first
/// unrouted event (or where indexing stopped), the unmatched are counted,
/// unexpired dedupe keys go to `log/migrated.keys` (the others are read
/// back from the log), and the old trees go.
fn cursor_of(
    db: &Arc<Db>,
    meta: &Tree,
    log_dir: &Path,
    now_ms: u64,
) -> Result<EventId, QueueError> {
    if let Some(at) = read_u64(meta, ROUTED_KEY)? {
        return Ok(EventId(at));
    }
    let names = db.table_names()?;
    let old = |name: &str| names.iter().any(|n| n == name);
    let mut cursor = read_u64(meta, b"log_indexed")?.unwrap_or(0);
    if old("inbox") {
        if let Some((first, _)) = db.tree("inbox").first()? {
            if let Ok(bytes) = first.as_slice().try_into() {
                cursor = cursor.min(u64::from_be_bytes(bytes));
            }
        }
    }
    let unmatched = if old("unmatched") {
        db.tree("unmatched").len()?
    } else {
        0
    };
    meta.insert(UNMATCHED_KEY, unmatched.to_be_bytes())?;
    meta.insert(ROUTED_KEY, cursor.to_be_bytes())?;
    meta.remove(b"log_indexed")?;
    if old("seen") {
        // Keys whose segment is gone live only here (a dedupe window longer
        // than the retention): carried over until they expire.
        let mut keys = Vec::new();
        for kv in db.tree("seen").iter() {
            let (k, v) = kv?;
            let (Some(expiry), Some(id)) = (
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                v.get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
            ) else {
                continue;
            };
            if expiry > now_ms {
                keys.push(seen::migrated(&k, expiry, EventId(id)));
            }
        }
        seen::write_migrated(log_dir, &keys).map_err(QueueError::Storage)?;
    }
    for name in ["inbox", "unmatched", "seen"] {
        if old(name) {
            db.drop_table(name)?;
        }
    }
    Ok(EventId(cursor))
}

impl LocalStore {
    /// A request coming to [`LocalStore::append`]: the writer waits for it
    /// before committing a batch without it (`writer.rs`).
    pub fn preparing(&self) -> Preparing {
        Preparing::counted(&self.shared.preparing)
    }

    /// Stores `event` unless its dedupe key was seen; resolves once durable.
    pub async fn append(&self, event: NewEvent, now: SystemTime) -> Result<Appended, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::ShuttingDown);
        }
        // Encoding (and compressing) runs here, on the request's task,
        // so the writer thread only writes; the writer waits for it.
        let encoding = self.preparing();
        let now_ms = unix_millis(now);
        let (reply, answer) = oneshot::channel();
        let source = &event.record.source;
        let (seen_key, id_alone) = match &event.dedupe {
            Dedupe::Key(key) => (seen::seen_key(source, key), false),
            Dedupe::IdAndBody(id) => (seen::id_key(source, id), true),
        };
        let whole = if id_alone && now_ms < self.whole_keys_until_ms {
            seen::whole_key(&seen_key, &event.record.body).map(|k| (seen::hash(&k), k))
        } else {
            None
        };
        let job = Job::Append(Append {
            key: seen::hash(&seen_key),
            seen_key,
            id_alone,
            whole,
            expiry_ms: now_ms.saturating_add(event.dedupe_window.as_millis() as u64),
            now_ms,
            value: event.record.encode(),
            reply,
        });
        let sent = self.jobs.send(job).await;
        drop(encoding);
        sent.map_err(|_| QueueError::ShuttingDown)?;
        answer.await.map_err(|_| QueueError::ShuttingDown)?
    }

    /// Whether appends can succeed now.
    pub fn writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && !self.shared.failing.load(Ordering::Acquire)
            && !self.shared.sync_stuck(unix_millis(SystemTime::now()))
    }

    /// Counts by state.
    pub fn stats(&self) -> Result<Stats, QueueError> {
        let trees = self.state.get()?;
        let counts = trees.counts();
        let (deliveries, dead) = (counts.deliveries, counts.dead_total());
        Ok(Stats {
            inbox: self.shared.unrouted.load(Ordering::Acquire),
            deliveries,
            dead,
            unmatched: self.unmatched.load(Ordering::Acquire),
            seen: self.shared.seen.load(Ordering::Relaxed),
            disk_bytes: self.state.disk_bytes() + log::disk_bytes(&self.log_dir),
            held: 0,
            disabled: Default::default(),
        })
    }

    /// Refuses new appends; those in flight finish.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod unsigned;

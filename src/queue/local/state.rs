//! The routing and delivery state (redb, `kv.rs`), behind a handle that
//! survives its failures.
//!
//! After an I/O error (a full disk) redb refuses every later write until
//! the file is opened again. [`StateStore`] notes the first failure
//! (logged once), so the router and the dispatcher stop and `/readyz` says
//! not ready, and [`StateStore::heal`] probes and, when the error stays,
//! closes and reopens the file in process: a daemon outside systemd
//! recovers without a restart. What was committed after the last durable
//! checkpoint is gone after the reopen; what was durable is back, and the
//! queue re-reads its cursor from it (`LocalStore::heal`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::kv::{Batch, Db, Tree};
use super::{Healed, QueueError};
use crate::queue::DeliveryRecord;

/// How long a reopen waits for operations still holding the old handle.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How long an open waits for the file's lock (see [`StateStore::open`]).
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// The free space a failing state waits for before it is written again.
const ROOM_TO_GROW: u64 = 2 << 20;
/// `meta` key written by a health probe.
const PROBE_KEY: &[u8] = b"probe";
/// The state's directory under `data_dir`, and its file there.
pub const DIR: &str = "state";
const FILE: &str = "state.redb";
/// The tables (sled's trees before, by the same names).
const TABLES: [&str; 10] = [
    "meta",
    "deliveries",
    "dead",
    "dead_at",
    "order",
    "pending_ids",
    "by_event",
    "delivered",
    "delivered_at",
    "refs",
];

/// How many records `deliveries` and `dead` hold (by sink for the dead),
/// saved at a clean stop and read back at the next open (counted there
/// after any other stop), and kept by each transaction that changes them,
/// so stats and `/metrics` read no table (the dead letters by sink are
/// counted by reading every one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub deliveries: u64,
    pub dead: BTreeMap<String, u64>,
}

impl Counts {
    /// Counts the tables: `pending_ids` (one entry per pending delivery,
    /// written in the same transaction as `deliveries`; redb keeps its
    /// length) and every dead letter (by its sink). Only an open after a
    /// stop that did not save the counts pays for this.
    pub(crate) fn of(pending_ids: &Tree, dead: &Tree) -> Result<Counts, QueueError> {
        let mut counts = Counts {
            deliveries: pending_ids.len()?,
            dead: BTreeMap::new(),
        };
        for kv in dead.iter() {
            let (k, v) = kv?;
            let sink = DeliveryRecord::sink_of(&v).ok_or_else(|| QueueError::Corrupt {
                key: hex::encode(&k),
                reason: "not a delivery record".into(),
            })?;
            counts.dead_changed(sink, 1);
        }
        Ok(counts)
    }

    /// The bytes saved in `meta` at a clean stop: a format byte, then
    /// postcard.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![COUNTS_FORMAT];
        bytes.extend(postcard::to_stdvec(&(self.deliveries, &self.dead)).expect("counts encode"));
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Counts> {
        let (&format, rest) = bytes.split_first()?;
        if format != COUNTS_FORMAT {
            return None;
        }
        let (deliveries, dead) = postcard::from_bytes(rest).ok()?;
        Some(Counts { deliveries, dead })
    }

    pub fn dead_total(&self) -> u64 {
        self.dead.values().sum()
    }

    /// `by` more (or fewer) dead letters to `sink`.
    pub fn dead_changed(&mut self, sink: &str, by: i64) {
        match self.dead.get_mut(sink) {
            Some(n) => {
                *n = n.saturating_add_signed(by);
                if *n == 0 {
                    self.dead.remove(sink);
                }
            }
            None if by > 0 => {
                self.dead.insert(sink.to_owned(), by as u64);
            }
            None => {}
        }
    }

    /// `by` more (or fewer) pending deliveries.
    pub fn deliveries_changed(&mut self, by: i64) {
        self.deliveries = self.deliveries.saturating_add_signed(by);
    }
}

impl Trees {
    /// Adds what a transaction made (`made`) to the counts.
    pub fn counted(&self, made: &Counts) {
        let mut counts = self.counts_mut();
        counts.deliveries_changed(made.deliveries as i64);
        for (sink, n) in &made.dead {
            counts.dead_changed(sink, *n as i64);
        }
    }

    /// What `deliveries` and `dead` hold now.
    pub fn counts(&self) -> Counts {
        self.counts.lock().expect("counts lock").clone()
    }

    /// The counts, to change after a transaction changed the trees. Counts
    /// saved by [`Trees::save_counts`] no longer match: they are removed
    /// (the next open counts the trees), which only a write after the
    /// daemon stopped could cause. The removal is a commit after the
    /// write, so a crash between the two would still leave them trusted: the
    /// daemon stops its router, dispatcher and upkeep before it saves, and
    /// this is the guard against a mistake there, not a second path.
    pub fn counts_mut(&self) -> std::sync::MutexGuard<'_, Counts> {
        let counts = self.counts.lock().expect("counts lock");
        if self.counts_saved.swap(false, Ordering::AcqRel) {
            tracing::warn!("the state changed after its counts were saved at stop; the next start counts them again");
            if let Err(e) = self.meta.remove(COUNTS_KEY) {
                tracing::warn!(error = %e, "could not remove the saved counts");
            }
        }
        counts
    }

    /// Saves the counts in `meta` and makes everything durable: the next
    /// open reads them instead of counting the trees (reading every dead
    /// letter: seconds at a million). Called at a clean stop, once nothing
    /// else writes the trees.
    pub fn save_counts(&self) -> Result<(), QueueError> {
        let counts = self.counts.lock().expect("counts lock");
        // Empty tables cost nothing to count.
        if self.counts_saved.load(Ordering::Acquire) || *counts == Counts::default() {
            return Ok(());
        }
        self.meta.insert(COUNTS_KEY, counts.encode())?;
        self.db.checkpoint()?;
        self.counts_saved.store(true, Ordering::Release);
        Ok(())
    }
}

/// `meta` key: the counts as of a clean stop ([`Trees::save_counts`]),
/// trusted once by the next open, which removes them (durably) before
/// anything can change the trees: after a crash, or a stop that did not
/// save them, the trees are counted.
const COUNTS_KEY: &[u8] = b"counts_at_stop";
/// The format of the saved counts' bytes.
const COUNTS_FORMAT: u8 = 1;

/// The counts saved at the last stop, if it saved them: read, and removed
/// durably, so that they are trusted once.
fn take_saved_counts(meta: &Tree, db: &Db) -> Result<Option<Counts>, QueueError> {
    let Some(bytes) = meta.remove(COUNTS_KEY)? else {
        return Ok(None);
    };
    db.checkpoint()?;
    let counts = Counts::decode(&bytes);
    if counts.is_none() {
        tracing::warn!("the counts saved at the last stop do not decode; counting the trees");
    }
    Ok(counts)
}

/// The open state file and its tables.
pub struct Trees {
    /// What `deliveries` and `dead` hold ([`Trees::counts`],
    /// [`Trees::counts_mut`]).
    counts: std::sync::Mutex<Counts>,
    /// The counts are saved in `meta` and nothing changed since.
    counts_saved: AtomicBool,
    pub db: Arc<Db>,
    pub meta: Tree,
    /// Pending deliveries by due time (`delivery.rs`).
    pub deliveries: Tree,
    /// Dead deliveries by id.
    pub dead: Tree,
    /// The dead deliveries by when they died: `dead_at` ‖ id (big-endian)
    /// → nothing, written in the same transaction as `dead`
    /// (`DeliveryRecord::dead_at_key`), so expiring them reads only those
    /// past their retention.
    pub dead_at: Tree,
    /// Pending deliveries that have an order key, by sink, key and event
    /// order, each to its current `deliveries` key: the first entry of a
    /// key is the one that may go (`deliveries.rs`).
    pub order: Tree,
    /// Pending deliveries by id (big-endian), each to its current
    /// `deliveries` key, written in the same transaction as it: lookups
    /// list them by id and find one (`lookups.rs`).
    pub pending_ids: Tree,
    /// Every delivery (pending, delivered, dead) by event: event id ‖ id
    /// (big-endian) → nothing, written when it is made and removed when
    /// it leaves for good (its history or dead letter expired).
    pub by_event: Tree,
    /// Delivered deliveries by id: their final record, kept for
    /// `server.retention`.
    pub delivered: Tree,
    /// The delivered by when (`DeliveryRecord::delivered_at_key`), in the
    /// same transaction as `delivered`, so pruning reads only its front.
    pub delivered_at: Tree,
    /// Pending deliveries whose request's body is their event's, stored
    /// as a reference to it (`DeliveryRecord::encode_referring`): event id
    /// ‖ id (big-endian) → nothing, written and removed in the same
    /// transactions as their records. Its first key is the oldest event
    /// the log must keep for them (`LocalStore::prune_log`).
    pub refs: Tree,
}

impl Trees {
    /// Opens the state under `data_dir`: converted first from sled's
    /// trees when an earlier version left them (`from_sled.rs`).
    fn open(data_dir: &Path) -> Result<Trees, QueueError> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(QueueError::Storage)?;
        let path = dir.join(FILE);
        super::from_sled::convert(data_dir, &path)?;
        let db = Db::open(&path, &TABLES)?;
        let tree = |name| db.tree(name);
        let meta = tree("meta");
        let saved = take_saved_counts(&meta, &db)?;
        let trees = Trees {
            counts: Default::default(),
            counts_saved: AtomicBool::new(false),
            meta,
            deliveries: tree("deliveries"),
            dead: tree("dead"),
            dead_at: tree("dead_at"),
            order: tree("order"),
            pending_ids: tree("pending_ids"),
            by_event: tree("by_event"),
            delivered: tree("delivered"),
            delivered_at: tree("delivered_at"),
            refs: tree("refs"),
            db,
        };
        index_dead_letters(&trees)?;
        index_deliveries(&trees)?;
        let counts = match saved {
            Some(counts) => counts,
            None => {
                let started = Instant::now();
                let counts = Counts::of(&trees.pending_ids, &trees.dead)?;
                if counts.deliveries > 0 || !counts.dead.is_empty() {
                    tracing::info!(
                        deliveries = counts.deliveries,
                        dead_letters = counts.dead_total(),
                        took_ms = started.elapsed().as_millis() as u64,
                        "counted the pending deliveries and dead letters (the last stop did not save their counts)"
                    );
                }
                counts
            }
        };
        *trees.counts.lock().expect("counts lock") = counts;
        Ok(trees)
    }
}

/// `meta` key: the dead letters stored before the `dead_at` index existed
/// have been filed in it.
const DEAD_AT_INDEXED: &[u8] = b"dead_at_indexed";

/// Files every dead letter in `dead_at`, once per data directory: those
/// written before the index existed have no entry. Filing is idempotent
/// (the key is the record's), and the mark goes in only once the entries
/// are durable, so a crash in between files them again at the next open.
/// A record that does not decode cannot be dated: it is left out (kept)
/// and logged.
fn index_dead_letters(trees: &Trees) -> Result<(), QueueError> {
    if trees.meta.contains_key(DEAD_AT_INDEXED)? {
        return Ok(());
    }
    let (mut filed, mut batch) = (0u64, Batch::default());
    for kv in trees.dead.iter() {
        let (k, v) = kv?;
        match super::DeliveryRecord::decode(&v) {
            Ok(rec) => {
                batch.insert(&rec.dead_at_key()[..], &[][..]);
                filed += 1;
                if filed % 1024 == 0 {
                    trees.dead_at.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            Err(e) => {
                tracing::warn!(key = %hex::encode(&k), error = %e, "a dead letter that does not decode is kept: it has no date to expire by")
            }
        }
    }
    trees.dead_at.apply_batch(batch)?;
    trees.db.checkpoint()?;
    trees.meta.insert(DEAD_AT_INDEXED, [1])?;
    if filed > 0 {
        tracing::info!(
            dead_letters = filed,
            "filed the dead letters by the time they died, for their retention"
        );
    }
    Ok(())
}

/// `meta` key: the deliveries stored before lookups existed have been
/// filed in `pending_ids` and `by_event`.
const LOOKUPS_INDEXED: &[u8] = b"lookups_indexed";

/// Files every pending delivery in `pending_ids` and `by_event`, and
/// every dead letter in `by_event`, once per data directory, as
/// [`index_dead_letters`] does (idempotent; marked once durable).
fn index_deliveries(trees: &Trees) -> Result<(), QueueError> {
    if trees.meta.contains_key(LOOKUPS_INDEXED)? {
        return Ok(());
    }
    let (mut filed, mut ids, mut events) = (0u64, Batch::default(), Batch::default());
    for (tree, pending) in [(&trees.deliveries, true), (&trees.dead, false)] {
        for kv in tree.iter() {
            let (k, v) = kv?;
            let Some(head) = super::DeliveryRecord::head(&v) else {
                tracing::warn!(key = %hex::encode(&k), "a delivery that does not decode is not filed for lookups");
                continue;
            };
            if pending {
                ids.insert(&head.id.to_be_bytes()[..], &k[..]);
            }
            let mut by = [0; 16];
            by[..8].copy_from_slice(&head.event_id.to_be_bytes());
            by[8..].copy_from_slice(&head.id.to_be_bytes());
            events.insert(&by[..], &[][..]);
            filed += 1;
            if filed % 1024 == 0 {
                trees.pending_ids.apply_batch(std::mem::take(&mut ids))?;
                trees.by_event.apply_batch(std::mem::take(&mut events))?;
            }
        }
    }
    trees.pending_ids.apply_batch(ids)?;
    trees.by_event.apply_batch(events)?;
    trees.db.checkpoint()?;
    trees.meta.insert(LOOKUPS_INDEXED, [1])?;
    if filed > 0 {
        tracing::info!(
            deliveries = filed,
            "filed the pending and dead deliveries for lookups"
        );
    }
    Ok(())
}

/// The state, reopenable, with its health.
pub struct StateStore {
    /// `data_dir`.
    dir: PathBuf,
    /// `None` only while a reopen is under way (or failed).
    current: RwLock<Option<Arc<Trees>>>,
    /// Set by the first failed operation, cleared by [`StateStore::recovered`].
    failing: AtomicBool,
    /// The file was reopened since it last worked: whoever reads state back
    /// after a reopen must hear of it, even when the probe right after the
    /// reopen failed and a later one succeeds without reopening.
    reopened: AtomicBool,
}

impl StateStore {
    /// Compacts the state file under `data_dir` ([`Db::compact`]): no
    /// daemon may have it open. Its size before and after.
    pub fn compact(data_dir: &Path) -> Result<(u64, u64), QueueError> {
        Db::compact(&data_dir.join(DIR).join(FILE))
    }

    /// Opens the state under `data_dir`. The file's lock is let go only
    /// once the last handle is dropped: a queue closing in this process a
    /// moment before is waited for, up to [`LOCK_WAIT`].
    pub fn open(data_dir: &Path) -> Result<StateStore, QueueError> {
        let started = Instant::now();
        let trees = loop {
            match Trees::open(data_dir) {
                Err(e) if is_locked(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        Ok(StateStore {
            current: RwLock::new(Some(Arc::new(trees))),
            dir: data_dir.to_owned(),
            failing: AtomicBool::new(false),
            reopened: AtomicBool::new(false),
        })
    }

    /// The open database, or an error while none is (a reopen failed).
    pub fn get(&self) -> Result<Arc<Trees>, QueueError> {
        self.current
            .read()
            .expect("state lock")
            .clone()
            .ok_or_else(|| {
                QueueError::Storage(std::io::Error::other(
                    "the state store is closed after a storage failure; reopening",
                ))
            })
    }

    /// Whether the last look found it writable.
    pub fn healthy(&self) -> bool {
        !self.failing.load(Ordering::Acquire)
    }

    /// Notes the outcome of an operation: the first failure marks the store
    /// failing and is logged (once per failure, not per operation).
    pub fn check<T, E: Into<QueueError>>(&self, r: Result<T, E>) -> Result<T, QueueError> {
        r.map_err(|e| {
            let e = e.into();
            self.failed(&e);
            e
        })
    }

    /// Marks the store failing because of `e`.
    pub fn failed(&self, e: &QueueError) {
        if !matches!(e, QueueError::Storage(_)) {
            return;
        }
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "cannot write routing and delivery state: routing and dispatching pause until it can (no delivery is attempted whose outcome cannot be recorded)");
        }
    }

    /// At a clean stop, once nothing else writes: saves the counts for the
    /// next open (see [`Trees::save_counts`]) and makes everything durable.
    /// A failing store saves nothing: its counts may not match what is
    /// durable.
    pub fn save_counts(&self) -> Result<(), QueueError> {
        if !self.healthy() {
            return Ok(());
        }
        let trees = self.get()?;
        self.check(trees.save_counts())
    }

    /// The bytes the state file takes on disk (it is sparse where redb
    /// grew it and wrote nothing yet).
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.dir.join(DIR).join(FILE)).map_or(0, |m| m.blocks() * 512)
    }

    /// Makes every commit so far durable (see [`Db::checkpoint`]).
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        let trees = self.get()?;
        self.check(trees.db.checkpoint())
    }

    /// When failing: waits for room on the file system ([`ROOM_TO_GROW`]),
    /// then probes with a durable write, and when that fails (redb's I/O
    /// errors are sticky) closes and reopens the file and probes again.
    /// The room comes first: a write alone can succeed on a full disk, in
    /// pages the file already holds, and the next commit that grows the
    /// file fails again (found by the full-disk test: the store went
    /// failing and healthy every second, and each reopen lost the outcomes
    /// since the last checkpoint); and a reopen while there is no room
    /// only repeats one. It stays failing until the caller, having read
    /// back what a reopen changed, calls [`StateStore::recovered`]:
    /// nothing routes or dispatches on state read before the reopen.
    pub fn heal(&self, now_ms: u64) -> Healed {
        if self.healthy() {
            return Healed::Healthy;
        }
        let probed = self.room().and_then(|()| {
            self.probe(now_ms).or_else(|_| {
                self.reopen()?;
                self.reopened.store(true, Ordering::Release);
                self.probe(now_ms)
            })
        });
        match probed {
            Ok(()) => Healed::Recovered {
                reopened: self.reopened.load(Ordering::Acquire),
            },
            Err(e) => {
                tracing::debug!(error = %e, "the state store still cannot be written");
                Healed::Failing
            }
        }
    }

    /// The caller has read back what the reopen changed: writable again.
    pub fn recovered(&self) {
        self.reopened.store(false, Ordering::Release);
        self.failing.store(false, Ordering::Release);
    }

    /// Room on the state's file system for it to grow.
    fn room(&self) -> Result<(), QueueError> {
        let free = free_bytes(&self.dir.join(DIR)).map_err(QueueError::Storage)?;
        if free < ROOM_TO_GROW {
            return Err(QueueError::Storage(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{free} bytes free where the state is; waiting for {ROOM_TO_GROW}"),
            )));
        }
        Ok(())
    }

    /// A small durable write.
    fn probe(&self, now_ms: u64) -> Result<(), QueueError> {
        let trees = self.get()?;
        trees.meta.insert(PROBE_KEY, now_ms.to_be_bytes())?;
        trees.db.checkpoint()
    }

    /// Closes the file (once every operation holding it let go) and opens
    /// it again from what was durable.
    fn reopen(&self) -> Result<(), QueueError> {
        // Taken out first: operations meanwhile fail at once instead of
        // waiting on the lock.
        let taken = self.current.write().expect("state lock").take();
        if let Some(mut old) = taken {
            // Operations hold the handle for one call; the file's lock is
            // let go only once the last one is dropped.
            let started = Instant::now();
            loop {
                match Arc::try_unwrap(old) {
                    Ok(trees) => {
                        drop(trees);
                        break;
                    }
                    Err(still) if started.elapsed() < RELEASE_WAIT => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(still) => {
                        *self.current.write().expect("state lock") = Some(still);
                        return Err(QueueError::Storage(std::io::Error::other(
                            "the state store is still in use; will retry",
                        )));
                    }
                }
            }
        }
        let started = Instant::now();
        loop {
            match Trees::open(&self.dir) {
                Ok(trees) => {
                    *self.current.write().expect("state lock") = Some(Arc::new(trees));
                    return Ok(());
                }
                Err(e) if started.elapsed() < RELEASE_WAIT => {
                    tracing::debug!(error = %e, "reopening the state store");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Another handle holds the file (see `kv::storage`).
pub fn is_locked(e: &QueueError) -> bool {
    matches!(e, QueueError::Storage(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

/// The bytes an unprivileged process may still write on `dir`'s file
/// system.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut fs = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `fs` a buffer of the
    // size statvfs writes; it is read only when the call succeeded.
    let fs = unsafe {
        if libc::statvfs(path.as_ptr(), fs.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        fs.assume_init()
    };
    Ok(fs.f_bavail as u64 * fs.f_frsize as u64)
}

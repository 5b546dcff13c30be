//! The threads behind the queue.
//!
//! The **writer** takes every append waiting (a batch: group commit),
//! checks dedupe keys against the in-memory [`SeenIndex`] it owns (for an
//! unsigned id seen before, it reads that event back to compare bodies:
//! [`earlier`]), writes
//! the batch to the event log (`log.rs`), makes it durable with one
//! `fdatasync`, then answers those requests, wakes the router and appends
//! each event's dedupe key to its segment's keys file (`seen.rs`). Appends
//! arriving meanwhile wait in the channel and make the next batch: under
//! load one sync answers dozens of requests; alone, a request costs one
//! sync. While requests are on their way (proven, their appends
//! not yet sent: [`Shared::preparing`]), the writer first waits for them,
//! up to [`COMMIT_DELAY`], as PostgreSQL's `commit_delay` waits while
//! `commit_siblings` transactions are open: under load that halves the
//! syncs and wake-ups per request, for about 0.2 ms more latency at most
//! (its polls sleep a little longer than asked: the timer's slack), and a
//! request alone is written without waiting. Everything a batch needs
//! happens on this one thread, so a batch crosses threads twice (the
//! requests' tasks to the writer, the writer back to them); each hand-off
//! is a context switch, and on a busy core they cost more than the
//! writing. No sled call and no sync ever runs on a tokio worker, and no
//! sled call is made per event.
//!
//! The writer runs under `SCHED_BATCH` ([`yield_to_requests`]): handing
//! it an append does not preempt the tokio worker that handed it, which
//! goes on with the other requests ready; the writer runs when the worker
//! waits, and takes them all as one batch. On one busy core that made
//! batches of 4–7 events a sync into batches of 17–30 (bench/README.md,
//! session 15).
//!
//! The **checkpointer** makes the routing and delivery state (`kv.rs`)
//! durable every second, under `SCHED_BATCH` too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::listed::{EventFiles, Listed};
use super::log::{self, Log, LogEntryRef};
use super::seen::{self, KeyFiles, KeyHash, KeyRecord, SeenIndex};
use super::{Appended, EventId, QueueError};

/// How often the checkpointer makes the routing and delivery state durable.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

pub type Reply = oneshot::Sender<Result<Appended, QueueError>>;

/// What the writer is asked to do.
pub enum Job {
    Append(Append),
    /// After a failure: try again what failed (starting the next
    /// segment, a write), so readiness returns without waiting for traffic.
    Probe,
    /// Forget dedupe keys expired at `now_ms`; answers how many.
    Prune {
        now_ms: u64,
        reply: oneshot::Sender<usize>,
    },
}

/// One append waiting for the writer.
pub struct Append {
    /// `source ‖ 0 ‖ dedupe key` (or an unsigned id's [`seen::id_key`]),
    /// logged with the event unless the event is remembered by its whole
    /// key.
    pub seen_key: Vec<u8>,
    /// Its hash, what [`SeenIndex`] remembers.
    pub key: KeyHash,
    /// `seen_key` is an unsigned id on its own: a match is a duplicate
    /// only with the same body. (The body is read from `value` then: the
    /// raw one is not carried, so it is freed on the request's thread.)
    pub id_alone: bool,
    /// The whole key's hash and the key ([`seen::whole_key`]), made on the
    /// request's task while keys from before ids were keyed on their own
    /// may be live (they are looked up too); otherwise the writer makes
    /// it when two bodies share an id.
    pub whole: Option<(KeyHash, Vec<u8>)>,
    pub expiry_ms: u64,
    pub now_ms: u64,
    pub value: Vec<u8>,
    pub reply: Reply,
}

/// State the request side, the threads and the router share.
pub struct Shared {
    progress: Mutex<Progress>,
    caught_up: Condvar,
    /// Rung when events were acknowledged (the router waits on it).
    pub appended: tokio::sync::Notify,
    /// Requests whose append is coming ([`crate::queue::Preparing`]).
    pub preparing: Arc<AtomicUsize>,
    /// Events acknowledged and not yet routed.
    pub unrouted: AtomicU64,
    /// Dedupe keys remembered.
    pub seen: AtomicU64,
    /// Set by a failed commit, cleared by a good one (for `/readyz`).
    pub failing: AtomicBool,
    /// Set for good by a failed sync.
    poisoned: AtomicBool,
    /// How long each sync of the log took (for `/metrics`).
    pub syncs: crate::metrics::AtomicHistogram,
    /// Events those syncs made durable.
    pub synced_events: AtomicU64,
    /// When the sync under way began (Unix ms; 0: none is).
    pub sync_started_ms: AtomicU64,
}

/// Log positions: acknowledged up to, keys on file up to.
#[derive(Default, Clone, Copy)]
struct Progress {
    acked: u64,
    indexed: u64,
}

/// A sync running longer than this means the disk is hung: `/readyz` says
/// not writable (a load balancer sends webhooks elsewhere) until it ends.
pub const SYNC_STUCK: Duration = Duration::from_secs(5);

impl Shared {
    /// Whether a sync of the log has been running for over [`SYNC_STUCK`].
    pub fn sync_stuck(&self, now_ms: u64) -> bool {
        let started = self.sync_started_ms.load(Ordering::Acquire);
        started != 0 && now_ms.saturating_sub(started) > SYNC_STUCK.as_millis() as u64
    }

    /// State after recovery: the log holds events up to `end`.
    pub fn new(end: EventId, unrouted: u64, seen: usize) -> Shared {
        Shared {
            progress: Mutex::new(Progress {
                acked: end.0,
                indexed: end.0,
            }),
            caught_up: Condvar::new(),
            appended: tokio::sync::Notify::new(),
            preparing: Arc::default(),
            unrouted: AtomicU64::new(unrouted),
            seen: AtomicU64::new(seen as u64),
            failing: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            syncs: crate::metrics::AtomicHistogram::new(crate::metrics::SYNC_BUCKETS),
            synced_events: AtomicU64::new(0),
            sync_started_ms: AtomicU64::new(0),
        }
    }

    /// The log position everything before which is acknowledged (durable).
    pub fn acked(&self) -> EventId {
        EventId(self.progress.lock().expect("progress lock").acked)
    }

    /// The log position every event before which has its key on file.
    pub fn indexed(&self) -> EventId {
        EventId(self.progress.lock().expect("progress lock").indexed)
    }

    /// Waits (up to `limit`) until every acknowledged event's key is on file.
    pub fn settle(&self, limit: Duration) {
        let progress = self.progress.lock().expect("progress lock");
        let target = progress.acked;
        let _ = self
            .caught_up
            .wait_timeout_while(progress, limit, |p| p.indexed < target)
            .expect("progress lock");
    }
}

/// A batch written to the log, waiting for its sync.
struct Written {
    file: Arc<std::fs::File>,
    answers: Vec<(Reply, Appended)>,
    logged: Vec<KeyRecord>,
}

/// While requests are on their way to the writer (proven, their appends
/// not yet sent: [`Shared::preparing`]), the writer waits up to
/// this long for them before writing a batch without them: fewer syncs
/// and thread wake-ups per request. With none coming it writes at once.
const COMMIT_DELAY: Duration = Duration::from_micros(200);
/// How often the writer looks again while it waits.
const COMMIT_POLL: Duration = Duration::from_micros(25);

/// How often the writer forgets expired dedupe keys on its own.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The writer loop; runs until every sender is gone, then syncs the keys
/// files. `batch_max` 1 turns group commit off: each event is written and
/// synced on its own.
pub fn run_writer(
    mut log: Log,
    mut index: Index,
    files: KeyFiles,
    events: EventFiles,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
) {
    let mut keys = Filer {
        files,
        events,
        unfiled: Vec::new(),
        unlisted: Listed::default(),
        newest: None,
        failing_since: None,
    };
    yield_to_requests();
    let mut batch = Vec::with_capacity(batch_max);
    let mut last_prune = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        let mut delayed = false;
        loop {
            while let Some(job) = next.take() {
                match job {
                    Job::Append(a) => batch.push(a),
                    Job::Prune { now_ms, reply } => {
                        let _ = reply.send(prune(&mut index.seen, &shared, now_ms));
                    }
                    Job::Probe => probe(&mut log, &shared),
                }
                if batch.len() < batch_max {
                    next = rx.try_recv().ok();
                }
            }
            if delayed || batch.is_empty() || batch.len() >= batch_max {
                break;
            }
            delayed = true;
            wait_for_preparing(&shared, COMMIT_DELAY);
            next = rx.try_recv().ok();
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            prune(
                &mut index.seen,
                &shared,
                super::unix_millis(std::time::SystemTime::now()),
            );
            last_prune = Instant::now();
        }
        if batch.is_empty() {
            continue;
        }
        let jobs = std::mem::take(&mut batch);
        if shared.poisoned.load(Ordering::Acquire) {
            fail(jobs, "the event log could not be synced; restart hookgate");
            continue;
        }
        match commit(&mut log, &mut index, &jobs) {
            Ok(Committed {
                outcomes,
                logged,
                listed,
                file,
            }) => {
                shared
                    .seen
                    .store(index.seen.len() as u64, Ordering::Relaxed);
                // A small batch can still fit in the tail of a segment
                // when no next one could be made (a full disk): not
                // writable again until a segment is.
                shared.failing.store(log.starved(), Ordering::Release);
                let answers = jobs.into_iter().map(|j| j.reply).zip(outcomes).collect();
                let written = Written {
                    file,
                    answers,
                    logged,
                };
                if let Some(logged) = sync(&shared, written) {
                    keys.file(logged, listed, &shared);
                }
            }
            Err(e) => {
                shared.failing.store(true, Ordering::Release);
                tracing::error!(error = %e, events = jobs.len(), "cannot store a batch of events");
                fail(jobs, &e.to_string());
            }
        }
    }
    if let Err(e) = keys.files.sync() {
        tracing::error!(error = %e, "cannot sync the dedupe keys; the next start reads them from the log");
    }
}

/// The keys files and the events files (what listings show), and what is
/// not yet on file after a failed write.
struct Filer {
    files: KeyFiles,
    events: EventFiles,
    unfiled: Vec<KeyRecord>,
    unlisted: Listed,
    /// The end of the newest event handed to [`Filer::file`].
    newest: Option<EventId>,
    failing_since: Option<Instant>,
}

impl Filer {
    /// Appends the keys and listing records of a synced batch (and any a
    /// failed write left) to their files; never synced on their own (a
    /// start completes them from the log).
    fn file(&mut self, logged: Vec<KeyRecord>, listed: Listed, shared: &Shared) {
        if logged.is_empty() && self.unfiled.is_empty() && self.unlisted.is_empty() {
            return;
        }
        if let Some(last) = logged.last() {
            self.newest = Some(last.end());
        }
        self.unfiled.extend(logged);
        self.unlisted.extend(listed);
        // Nothing waiting appends nothing.
        let keys = self.files.append(&self.unfiled);
        if keys.is_ok() {
            self.unfiled.clear();
        }
        let events = self.events.append(&self.unlisted);
        if events.is_ok() {
            self.unlisted = Listed::default();
        }
        match keys.and(events) {
            Ok(()) => {
                self.failing_since = None;
                if let Some(newest) = self.newest {
                    shared.progress.lock().expect("progress lock").indexed = newest.0;
                    shared.caught_up.notify_all();
                }
            }
            // Kept and tried again with the next batch; meanwhile no
            // segment whose keys are not on file is deleted, listings
            // read the events not on file from the log, and a restart
            // reads them from the log.
            Err(e) => {
                if self.failing_since.is_none() {
                    self.failing_since = Some(Instant::now());
                    tracing::error!(error = %e, keys = self.unfiled.len(), "cannot write dedupe keys or listing records beside the log; the log keeps them, retrying");
                }
            }
        }
    }
}

/// Waits until no request is on its way to the writer, at most `limit`.
fn wait_for_preparing(shared: &Shared, limit: Duration) {
    let started = Instant::now();
    while shared.preparing.load(Ordering::Acquire) > 0 && started.elapsed() < limit {
        std::thread::sleep(COMMIT_POLL);
    }
}

/// Clears `failing` when what failed works again. A poisoned log (a
/// failed sync) stays so until a restart.
fn probe(log: &mut Log, shared: &Shared) {
    if !shared.failing.load(Ordering::Acquire) || shared.poisoned.load(Ordering::Acquire) {
        return;
    }
    match log.retry() {
        Ok(()) => {
            shared.failing.store(false, Ordering::Release);
            tracing::warn!("the event log can be written again");
        }
        Err(e) => tracing::debug!(error = %e, "the event log still cannot be written"),
    }
}

fn prune(seen: &mut SeenIndex, shared: &Shared, now_ms: u64) -> usize {
    let removed = seen.prune(now_ms);
    shared.seen.store(seen.len() as u64, Ordering::Relaxed);
    removed
}

fn fail(jobs: Vec<Append>, message: &str) {
    for job in jobs {
        let _ = job
            .reply
            .send(Err(QueueError::Storage(std::io::Error::other(
                message.to_owned(),
            ))));
    }
}

/// A written batch: each job's outcome, the keys to file, and
/// the file to sync.
struct Committed {
    outcomes: Vec<Appended>,
    logged: Vec<KeyRecord>,
    listed: Listed,
    file: Arc<std::fs::File>,
}

/// The writer's dedupe keys, and the log as it reads an event back to
/// compare bodies.
pub struct Index {
    pub seen: SeenIndex,
    pub stored: log::Reader,
}

/// What a job turned out to be before logging.
enum Plan {
    Duplicate(EventId),
    /// Same key as an earlier job of this batch (its index among the new).
    SameAs(usize),
    New(usize),
}

/// A job to log: what it is remembered by.
struct New<'a> {
    job: &'a Append,
    seen_key: Cow<'a, [u8]>,
    hash: KeyHash,
}

/// Dedupes and writes one batch. The keys of what was written are
/// remembered at once: later batches see them as duplicates even before
/// the sync, and their answers wait for a sync that covers the first copy.
fn commit(log: &mut Log, index: &mut Index, jobs: &[Append]) -> Result<Committed, QueueError> {
    let mut plans = Vec::with_capacity(jobs.len());
    let mut in_batch: HashMap<KeyHash, usize> = HashMap::new();
    let mut new: Vec<New<'_>> = Vec::new();
    let written = log.end();
    for job in jobs {
        let plan = match earlier(job, index, written, &in_batch, &new) {
            Ok(plan) => plan,
            Err((seen_key, hash)) => {
                in_batch.insert(hash, new.len());
                new.push(New {
                    job,
                    seen_key,
                    hash,
                });
                Plan::New(new.len() - 1)
            }
        };
        plans.push(plan);
    }
    let entries: Vec<LogEntryRef<'_>> = new
        .iter()
        .map(|n| LogEntryRef::V1 {
            seen_key: &n.seen_key,
            expiry_ms: n.job.expiry_ms,
            record: &n.job.value,
        })
        .collect();
    let log::Placed { placed, file } = log.write(&entries).map_err(QueueError::Storage)?;
    let logged: Vec<KeyRecord> = new
        .iter()
        .zip(&placed)
        .map(|(n, &(id, len))| KeyRecord {
            hash: n.hash,
            expiry_ms: n.job.expiry_ms,
            id,
            len,
        })
        .collect();
    let mut listed = Listed::default();
    for (r, n) in logged.iter().zip(&new) {
        index.seen.insert(r.hash, r.expiry_ms, r.id);
        listed.push(r.id, r.len, &n.job.value);
    }
    let outcomes = plans
        .into_iter()
        .map(|p| match p {
            Plan::Duplicate(id) => Appended::Duplicate(id),
            Plan::SameAs(n) => Appended::Duplicate(placed[n].0),
            Plan::New(n) => Appended::Queued(placed[n].0),
        })
        .collect();
    Ok(Committed {
        outcomes,
        logged,
        listed,
        file,
    })
}

/// The earlier event `job` duplicates, in the log (written before
/// `written`) or earlier in its batch (`new`, by hash in `in_batch`);
/// otherwise the key to log it under and its hash.
///
/// An unsigned id on its own (`job.id_alone`) matches only an event with
/// the same body, read back from the log: retries are rare, so this costs
/// less than hashing every body. When the bodies differ (someone sent a
/// captured body under that id first), the event is remembered by its
/// whole key (the id and its body's digest), as all were before: every
/// later request with that id then costs a read and a hash, never more.
fn earlier<'a>(
    job: &'a Append,
    index: &Index,
    written: EventId,
    in_batch: &HashMap<KeyHash, usize>,
    new: &[New<'_>],
) -> Result<Plan, (Cow<'a, [u8]>, KeyHash)> {
    let find = |hash: &KeyHash| match in_batch.get(hash) {
        Some(&n) => Some(Plan::SameAs(n)),
        None => index.seen.get(hash, job.now_ms).map(Plan::Duplicate),
    };
    let as_is = || (Cow::Borrowed(job.seen_key.as_slice()), job.key);
    if !job.id_alone {
        return find(&job.key).ok_or_else(as_is);
    }
    let Some(plan) = find(&job.key) else {
        // Never seen on its own: only a key from before ids were keyed
        // on their own can still match.
        let whole = job.whole.as_ref().map(|(hash, _)| hash);
        return whole.and_then(find).ok_or_else(as_is);
    };
    let body = body_of(&job.value);
    let earlier = match plan {
        Plan::SameAs(n) => body_of(&new[n].job.value),
        Plan::Duplicate(id) => stored_body(&index.stored, id, written),
        Plan::New(_) => unreachable!("find answers no new event"),
    };
    if body.is_some() && body == earlier {
        return Ok(plan);
    }
    let (hash, key) = match (&job.whole, body) {
        (Some((hash, key)), _) => (*hash, Cow::Borrowed(key.as_slice())),
        (None, Some(body)) => match seen::whole_key(&job.seen_key, &body) {
            Some(key) => (seen::hash(&key), Cow::Owned(key)),
            None => return Err(as_is()),
        },
        // Its own record unreadable (never: it was just encoded): kept
        // under its id, a delivery of its own.
        (None, None) => return Err(as_is()),
    };
    find(&hash).ok_or((key, hash))
}

/// The body in `record` (`EventRecord::encode` bytes).
fn body_of(record: &[u8]) -> Option<Vec<u8>> {
    crate::queue::EventRecord::decode(record)
        .ok()
        .map(|r| r.body)
}

/// The body of the event logged at `id`, when it can be read back.
fn stored_body(stored: &log::Reader, id: EventId, written: EventId) -> Option<Vec<u8>> {
    let found = match stored.one(id, written) {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(error = %e, event = %id, "cannot read an event back to compare bodies; the new one is kept as a different delivery");
            return None;
        }
    };
    let log::LogEntry::V1 { record, .. } = found.entry;
    body_of(&record)
}

/// Makes a written batch durable, then answers it; returns the keys to
/// file. A failed sync poisons the log: what the page cache holds after a
/// failed `fdatasync` is unknowable, so nothing more is acknowledged until
/// a restart reads back what really is on disk.
fn sync(shared: &Shared, written: Written) -> Option<Vec<KeyRecord>> {
    let started = Instant::now();
    shared.sync_started_ms.store(
        super::unix_millis(std::time::SystemTime::now()).max(1),
        Ordering::Release,
    );
    let synced = written.file.sync_data();
    shared.sync_started_ms.store(0, Ordering::Release);
    shared.syncs.observe(started.elapsed());
    if let Err(e) = synced.and_then(|()| {
        if shared.poisoned.load(Ordering::Acquire) {
            Err(std::io::Error::other("an earlier sync failed"))
        } else {
            Ok(())
        }
    }) {
        shared.poisoned.store(true, Ordering::Release);
        shared.failing.store(true, Ordering::Release);
        tracing::error!(error = %e, "cannot sync the event log; refusing events until restart");
        for (reply, _) in written.answers {
            let _ = reply.send(Err(QueueError::Storage(std::io::Error::other(format!(
                "sync failed: {e}"
            )))));
        }
        return None;
    }
    // Readable before anyone hears it is stored, and counted before the
    // router can see it, so the router's count never dips.
    let logged = written.logged;
    if let Some(last) = logged.last() {
        shared
            .unrouted
            .fetch_add(logged.len() as u64, Ordering::AcqRel);
        shared
            .synced_events
            .fetch_add(logged.len() as u64, Ordering::Relaxed);
        shared.progress.lock().expect("progress lock").acked = last.end().0;
    }
    for (reply, outcome) in written.answers {
        let _ = reply.send(Ok(outcome));
    }
    if !logged.is_empty() {
        shared.appended.notify_one();
    }
    Some(logged)
}

/// The checkpointer loop: makes the state durable every [`CHECKPOINT_EVERY`]
/// (the router and the dispatcher write to it) until `stop`'s sender is
/// gone, then once more.
pub fn run_checkpointer(state: Arc<super::state::StateStore>, stop: std_mpsc::Receiver<()>) {
    yield_to_requests();
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // A failure is noted by the state store (logged once); while it
        // lasts, the healer probes instead.
        if state.healthy() {
            let _ = state.checkpoint();
        }
    }
    if let Err(e) = state.checkpoint() {
        tracing::error!(error = %e, "the last checkpoint of the routing and delivery state failed");
    }
}

/// Puts the calling thread under `SCHED_BATCH`: the kernel no longer
/// lets it preempt the running thread when it wakes, so a request's task
/// that wakes it is not switched out before the requests behind it are
/// read. It still gets its fair share of the CPU, and an idle core at
/// once. Any thread may choose it for itself without privileges; should
/// the kernel refuse, the thread runs as before.
pub fn yield_to_requests() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` reads `param` only; pid 0 is this thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot run a queue thread under SCHED_BATCH");
    }
}

#[cfg(test)]
mod tests;

//! The delivery loop: for each sink, take its due deliveries, attempt them
//! within the sink's concurrency, rate limit and circuit breaker, and write
//! each outcome back (done, rescheduled, or dead with its history).
//!
//! In-flight records are leased in memory only: after a crash they are
//! simply due again (at least once). Each sink's deliveries are their own
//! range in sled, so a slow or broken sink never delays another.
//!
//! A delivery with an order key starts only when it is the head of its key
//! (`SledQueue::order_head`: the oldest pending one in event order) and no
//! other delivery of that key to its sink is out: one at a time, in order;
//! a head that is being retried holds back its key only.

pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bucket::Bucket;
use crate::config::SinkConfig;
use crate::live::Live;
use crate::queue::{unix_millis, Attempt, DeliveryRecord, SledQueue};
use crate::sink::{Sink, Verdict};
use policy::{Breaker, Next};

/// Most due records looked at per sink per pass.
const PAGE: usize = 256;
/// Longest sleep between passes; also the poll interval while a sink is
/// blocked (breaker open, all slots busy).
const IDLE: Duration = Duration::from_millis(200);
/// Attempt history kept on a record.
const HISTORY: usize = 30;
/// How often deliveries to sinks no longer configured are looked for.
const BURY_EVERY: Duration = Duration::from_secs(60);
/// How soon to look again when a sink's rate-limit bucket was empty.
const BUCKET_POLL: Duration = Duration::from_millis(100);

/// How long the loop may sleep for a sink: until its next due delivery, or,
/// when one is due already but could not start, until the block may lift
/// (`blocked`; else `IDLE`: finished attempts and new deliveries wake the
/// loop). Never zero for something that cannot start.
fn wake_after(next_due: Option<u64>, now: u64, blocked: Option<Duration>) -> Option<Duration> {
    next_due.map(|due| {
        if due > now {
            Duration::from_millis(due - now)
        } else {
            blocked.unwrap_or(IDLE)
        }
    })
}

/// An attempt in flight. Dropped when the attempt ends, however it ends:
/// the lease goes, the loop wakes, and an attempt that did not settle (a
/// panic in a sink) counts as a breaker failure so a probe cannot stay
/// outstanding; its record is due again.
struct Lease {
    dispatcher: Arc<Dispatcher>,
    sinks: Arc<Sinks>,
    sink: String,
    id: u64,
    /// The delivery's order key: in flight with it.
    order_key: Option<String>,
    settled: bool,
    /// The outcome could not be written: the lease stays until it is
    /// (`Dispatcher::settle_unrecorded`), so the delivery is not sent again.
    keep: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled {
            tracing::error!(sink = %self.sink, delivery = self.id, "an attempt ended without an outcome; the delivery is due again");
            if let Some(sink) = self.sinks.get(&self.sink) {
                if let Ok(mut breaker) = sink.breaker.lock() {
                    let _ = breaker.failure(unix_millis(SystemTime::now()));
                }
            }
        }
        if !self.keep {
            if let Ok(mut leased) = self.dispatcher.leased.lock() {
                leased.remove(&self.id);
            }
            if let Some(key) = self.order_key.take() {
                self.dispatcher.release_key(&self.sink, key);
            }
        }
        self.dispatcher.wake.notify_one();
    }
}

/// A configured sink at run time.
pub struct SinkRuntime {
    pub config: SinkConfig,
    pub sink: Box<dyn Sink>,
    slots: Arc<Semaphore>,
    bucket: Option<Bucket>,
    breaker: Mutex<Breaker>,
    /// Set by a "this webhook is gone" answer: new deliveries go dead.
    broken: Mutex<Option<String>>,
    /// The platform asked for a pause (its rate-limit budget is spent).
    paused_until: Mutex<u64>,
}

impl SinkRuntime {
    pub fn new(config: SinkConfig, sink: Box<dyn Sink>) -> SinkRuntime {
        SinkRuntime {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            bucket: config.rate_limit.map(Bucket::new),
            breaker: Mutex::new(Breaker::default()),
            broken: Mutex::new(None),
            paused_until: Mutex::new(0),
            config,
            sink,
        }
    }
}

impl SinkRuntime {
    /// Takes over what the platform asked of the sink it replaces (a
    /// reload): a rate-limit pause still holds.
    pub fn inherit(&self, old: &SinkRuntime) {
        let paused = *old.paused_until.lock().expect("pause lock");
        let mut p = self.paused_until.lock().expect("pause lock");
        *p = (*p).max(paused);
    }
}

/// The sinks by name, shared by the router (prepare) and the dispatcher.
pub type Sinks = HashMap<String, SinkRuntime>;

pub struct Dispatcher {
    metrics: Arc<crate::metrics::Metrics>,
    queue: Arc<SledQueue>,
    sinks: Arc<Live<Sinks>>,
    /// Rung by the router when it adds deliveries, and by finished attempts.
    wake: Arc<Notify>,
    leased: Mutex<HashSet<u64>>,
    /// (sink, order key) of the ordered deliveries in flight: a replayed
    /// dead letter can become the head while a later delivery of its key
    /// is out, and must wait for it.
    keys_out: Mutex<HashSet<(String, String)>>,
    /// Outcomes of attempts that could not be written (the state store
    /// failed): kept, with their leases, until they can be.
    unrecorded: Mutex<Vec<Unrecorded>>,
}

/// An attempt's outcome waiting to be written.
struct Unrecorded {
    /// The record's key before the attempt.
    old_key: Vec<u8>,
    rec: DeliveryRecord,
    write: Write,
}

/// What an outcome changes in the queue.
#[derive(Clone, Copy)]
enum Write {
    Done,
    Reschedule,
    Bury,
}

impl Dispatcher {
    pub fn new(
        queue: Arc<SledQueue>,
        sinks: Arc<Live<Sinks>>,
        wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            metrics,
            queue,
            sinks,
            wake,
            leased: Mutex::new(HashSet::new()),
            keys_out: Mutex::new(HashSet::new()),
            unrecorded: Mutex::new(Vec::new()),
        })
    }

    /// Runs until `shutdown`, then lets in-flight attempts settle (up to
    /// `drain`): their outcomes are written back before this returns.
    pub async fn run(
        self: Arc<Self>,
        heartbeat: Arc<crate::notify::Heartbeat>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        self.bury_orphans();
        let tracker = TaskTracker::new();
        let mut last_bury = Instant::now();
        loop {
            heartbeat.beat();
            // Nothing starts whose outcome could not be recorded: while the
            // state store fails, a delivery would be sent again and again.
            if !self.queue.state_writable() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(IDLE) => continue,
                }
            }
            self.settle_unrecorded();
            // A page routed with the old sinks just before a reload can
            // still add deliveries to a removed one.
            if last_bury.elapsed() >= BURY_EVERY {
                self.bury_orphans();
                last_bury = Instant::now();
            }
            let mut sleep = IDLE;
            let sinks = self.sinks.get();
            for (name, sink) in sinks.iter() {
                match self.pass(name, sink, &sinks, &tracker) {
                    Ok(Some(wait)) => sleep = sleep.min(wait),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(sink = %name, error = %e, "cannot read due deliveries")
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!("attempts still in flight at the drain deadline; they will be due again at the next start");
        }
    }

    /// The sinks as configured now.
    pub fn sinks(&self) -> Arc<Sinks> {
        self.sinks.get()
    }

    /// Pending deliveries to sinks the config no longer has go dead with
    /// that reason (at start and after a reload).
    pub fn bury_orphans(&self) {
        let sinks = self.sinks.get();
        let names: Vec<&str> = sinks.keys().map(String::as_str).collect();
        let in_flight = self.leased.lock().expect("lease lock").clone();
        match self
            .queue
            .bury_orphans(&names, &in_flight, unix_millis(SystemTime::now()))
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                deliveries = n,
                "deliveries to removed sinks are dead (reason: sink removed)"
            ),
            Err(e) => tracing::error!(error = %e, "cannot check for deliveries to removed sinks"),
        }
    }

    /// Starts what `sink` may start now. Returns how long until there may
    /// be more to start: the next due time, or, when something is due but
    /// cannot start (in flight, paused, breaker open, no slot or token),
    /// when that may change. Attempts that finish wake the loop anyway.
    fn pass(
        self: &Arc<Self>,
        name: &str,
        sink: &SinkRuntime,
        sinks: &Arc<Sinks>,
        tracker: &TaskTracker,
    ) -> Result<Option<Duration>, crate::queue::QueueError> {
        // Disabled (its secret is not set): its deliveries are held, not
        // looked at, until a reload brings the secret.
        if sink.config.kind.unconfigured().is_some() {
            return Ok(None);
        }
        let now = unix_millis(SystemTime::now());
        let mut blocked = None;
        // Order keys looked at in this pass, each with the one delivery of
        // it that may start (its head; none when one is out or started):
        // the rest of each key is skipped without a look at the index.
        // Records skipped so do not count against the page, so a long queue
        // behind one blocked key cannot hide other keys' work.
        let mut heads: HashMap<String, Option<u64>> = HashMap::new();
        let mut looked = 0;
        let mut after: Option<sled::IVec> = None;
        'pages: loop {
            let page = self.queue.due_after(name, now, after.as_deref(), PAGE)?;
            let more = page.len() == PAGE;
            for (key, id) in page {
                after = Some(key.clone());
                looked += 1;
                if self.leased.lock().expect("lease lock").contains(&id) {
                    continue;
                }
                let broken = sink.broken.lock().expect("broken lock").clone();
                // Held back: checked before the record is read and decoded.
                if broken.is_none() {
                    let paused = *sink.paused_until.lock().expect("pause lock");
                    if paused > now {
                        blocked = Some(Duration::from_millis(paused - now));
                        break 'pages;
                    }
                    if let Some(wait) = sink.breaker.lock().expect("breaker lock").held(now) {
                        blocked = Some(wait);
                        break 'pages;
                    }
                }
                let Some(rec) = self.queue.delivery(&key)? else {
                    continue;
                };
                if let Some(reason) = broken {
                    self.finish_dead(rec, format!("sink disabled: {reason}"));
                    continue;
                }
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
                                .contains(&(name.to_owned(), order.clone()));
                            // Not filed at all (cannot happen but by damage):
                            // let it go rather than hold it forever.
                            let head = match out {
                                true => None,
                                false => {
                                    Some(self.queue.order_head(name, order)?.unwrap_or(rec.id))
                                }
                            };
                            heads.insert(order.clone(), head);
                            head
                        }
                    };
                    if head != Some(rec.id) {
                        continue;
                    }
                    // Nothing more of this key in this pass, whatever happens.
                    heads.insert(order.clone(), None);
                }
                let Ok(permit) = sink.slots.clone().try_acquire_owned() else {
                    blocked = Some(IDLE);
                    break 'pages;
                };
                {
                    let mut breaker = sink.breaker.lock().expect("breaker lock");
                    if !breaker.allows(now) {
                        blocked = Some(breaker.held(now).unwrap_or(IDLE));
                        break 'pages;
                    }
                    if sink
                        .bucket
                        .as_ref()
                        .is_some_and(|b| !b.try_take(Instant::now()))
                    {
                        // No attempt after all: the probe slot is free again.
                        breaker.abandon_probe();
                        blocked = Some(BUCKET_POLL);
                        break 'pages;
                    }
                }
                self.leased.lock().expect("lease lock").insert(rec.id);
                if let Some(order) = &rec.order_key {
                    self.keys_out
                        .lock()
                        .expect("keys lock")
                        .insert((name.to_owned(), order.clone()));
                }
                let lease = Lease {
                    dispatcher: self.clone(),
                    sinks: sinks.clone(),
                    sink: name.to_owned(),
                    id: rec.id,
                    order_key: rec.order_key.clone(),
                    settled: false,
                    keep: false,
                };
                tracker.spawn(async move {
                    let mut lease = lease;
                    let unrecorded = lease
                        .dispatcher
                        .attempt(&lease.sinks, &lease.sink, rec)
                        .await;
                    lease.settled = true;
                    if let Some(u) = unrecorded {
                        lease.keep = true;
                        lease
                            .dispatcher
                            .unrecorded
                            .lock()
                            .expect("unrecorded lock")
                            .push(u);
                    }
                    drop(permit);
                });
            }
            if !more || looked >= PAGE {
                break;
            }
        }
        let next = self.queue.next_due(name)?;
        Ok(wake_after(next, now, blocked))
    }

    /// Writes the outcomes the state store could not take before, oldest
    /// first, releasing each one's lease; stops at the first that still
    /// fails.
    fn settle_unrecorded(&self) {
        let mut waiting = self.unrecorded.lock().expect("unrecorded lock");
        while let Some(u) = waiting.first() {
            if self.record(&u.old_key, &u.rec, u.write).is_err() {
                return;
            }
            let u = waiting.remove(0);
            self.leased.lock().expect("lease lock").remove(&u.rec.id);
            if let Some(key) = u.rec.order_key.clone() {
                self.release_key(&u.rec.sink, key);
            }
            tracing::info!(sink = %u.rec.sink, delivery = u.rec.id, "recorded an attempt's outcome that had to wait for storage");
        }
    }

    /// An ordered delivery's attempt is over and its outcome written: the
    /// next of its key may go.
    fn release_key(&self, sink: &str, key: String) {
        if let Ok(mut out) = self.keys_out.lock() {
            out.remove(&(sink.to_owned(), key));
        }
    }

    fn record(
        &self,
        old_key: &[u8],
        rec: &DeliveryRecord,
        write: Write,
    ) -> Result<(), crate::queue::QueueError> {
        match write {
            Write::Done => self.queue.update(old_key, rec, true),
            Write::Reschedule => self.queue.update(old_key, rec, false),
            Write::Bury => self.queue.bury(old_key, rec),
        }
    }

    /// One attempt, its outcome written back. Returns the outcome when it
    /// could not be written (the state store failed): the caller keeps the
    /// lease so the delivery is not attempted again meanwhile.
    async fn attempt(
        &self,
        sinks: &Sinks,
        name: &str,
        mut rec: DeliveryRecord,
    ) -> Option<Unrecorded> {
        let sink = &sinks[name];
        let old_key = rec.due_key();
        let started = Instant::now();
        // The sink has its own timeout; this one only guards against a sink
        // that ignores it.
        let limit = sink.config.timeout + Duration::from_secs(5);
        let answer = match tokio::time::timeout(limit, sink.sink.send(&rec)).await {
            Ok(a) => a,
            Err(_) => crate::sink::no_answer(Verdict::Retry {
                after: None,
                why: "timeout".into(),
            }),
        };
        // A 429 speaks for the whole webhook (Slack, Discord count them
        // against it), so the sink waits, not only this delivery.
        let pause = match &answer.verdict {
            Verdict::RateLimited { after } => Some(answer.pause.unwrap_or_default().max(*after)),
            _ => answer.pause,
        };
        if let Some(pause) = pause {
            let until = unix_millis(SystemTime::now())
                .saturating_add(pause.min(crate::sink::LONGEST_WAIT).as_millis() as u64);
            let mut p = sink.paused_until.lock().expect("pause lock");
            *p = (*p).max(until);
        }
        let now = unix_millis(SystemTime::now());
        rec.attempts.push(Attempt {
            at_ms: now,
            status: answer.status,
            latency_ms: started.elapsed().as_millis() as u64,
            outcome: outcome_label(&answer.verdict),
            response: answer.response.clone(),
        });
        if rec.attempts.len() > HISTORY {
            rec.attempts.remove(1); // keep the first and the latest
        }
        {
            let mut breaker = sink.breaker.lock().expect("breaker lock");
            match &answer.verdict {
                Verdict::Retry { .. } => {
                    if let Some(open) = breaker.failure(now) {
                        tracing::warn!(sink = %name, open_for_s = open.as_secs(), "circuit breaker open: attempts to this sink pause, then one probe goes");
                    }
                }
                // Any other answer means the sink is up (a 4xx or a 429
                // too): a probe that gets one closes the breaker.
                _ => {
                    if breaker.success() {
                        tracing::info!(sink = %name, "circuit breaker closed: the sink answers again");
                    }
                }
            }
        }
        if let Verdict::SinkGone(why) = &answer.verdict {
            tracing::error!(sink = %name, route = %rec.route, delivery_id = %rec.delivery_id, reason = %why, "sink disabled: the platform says this webhook is gone; replay its dead letters after fixing it");
            *sink.broken.lock().expect("broken lock") = Some(why.clone());
        }
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let next = policy::next(
            &answer.verdict,
            rec.failures,
            &sink.config.schedule,
            now,
            jitter,
        );
        // The sink was removed by a reload while this attempt was out: a
        // record that is not done goes dead like the sink's others.
        let next = match next {
            Next::At { .. } if !self.sinks.get().contains_key(name) => {
                Next::Dead(format!("sink `{name}` removed from the config"))
            }
            next => next,
        };
        let label = match &next {
            Next::Done => "delivered",
            Next::At { counted: true, .. } => "retry",
            Next::At { counted: false, .. } => "rate_limited",
            Next::Dead(_) => "dead",
        };
        self.metrics.attempt(name, label, started.elapsed());
        let write = match next {
            Next::Done => {
                tracing::debug!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, "delivered");
                Write::Done
            }
            Next::At { due_ms, counted } => {
                if counted {
                    rec.failures += 1;
                }
                rec.due_ms = due_ms;
                tracing::info!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, outcome = %outcome_label(&answer.verdict), retry_in_ms = due_ms.saturating_sub(now), "will retry");
                Write::Reschedule
            }
            Next::Dead(reason) => {
                tracing::warn!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, reason = %reason, "delivery is dead");
                rec.reason = Some(reason);
                rec.dead_ms = Some(now);
                Write::Bury
            }
        };
        match self.record(&old_key, &rec, write) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, error = %e, "cannot record a delivery's outcome yet; it is kept and written once storage recovers");
                Some(Unrecorded {
                    old_key,
                    rec,
                    write,
                })
            }
        }
    }

    /// What `/metrics` shows of the sinks: breaker states, and how long the
    /// most overdue delivery has waited.
    pub fn gauges(&self, now_ms: u64) -> (std::collections::BTreeMap<String, bool>, f64) {
        let mut oldest = 0u64;
        let mut breakers = std::collections::BTreeMap::new();
        for (name, sink) in self.sinks.get().iter() {
            breakers.insert(
                name.clone(),
                sink.breaker.lock().expect("breaker lock").is_open(now_ms),
            );
            if let Ok(Some(due)) = self.queue.next_due(name) {
                oldest = oldest.max(now_ms.saturating_sub(due));
            }
        }
        (breakers, oldest as f64 / 1000.0)
    }

    /// Replays dead deliveries (one, or all with `None`): they are due now
    /// with a fresh schedule, and the sinks they go to are re-enabled (a
    /// sink disabled by a "gone" answer, its breaker reset). A delivery to
    /// a sink no longer in the config stays dead, reported with the reason
    /// (it would wait for nothing); one to a sink that is disabled is held
    /// until its secret is set.
    pub fn replay(
        &self,
        id: Option<u64>,
    ) -> Result<crate::queue::Requeued, crate::queue::QueueError> {
        let live = self.sinks.get();
        let done = self
            .queue
            .requeue(id, unix_millis(SystemTime::now()), |rec| {
                refuse_replay(&live, &rec.sink)
            })?;
        for name in &done.sinks {
            if let Some(sink) = live.get(name) {
                if sink.broken.lock().expect("broken lock").take().is_some() {
                    tracing::info!(sink = %name, "sink re-enabled by a replay");
                }
                let _ = sink.breaker.lock().expect("breaker lock").success();
            }
        }
        self.wake.notify_one();
        Ok(done)
    }

    fn finish_dead(&self, mut rec: DeliveryRecord, reason: String) {
        let old = rec.due_key();
        rec.dead_ms = Some(unix_millis(SystemTime::now()));
        rec.reason = Some(reason);
        if let Err(e) = self.queue.bury(&old, &rec) {
            tracing::error!(delivery = rec.id, error = %e, "cannot move a delivery to dead");
        }
    }
}

/// Why a dead delivery to `sink` cannot be replayed under the `live` sinks.
pub fn refuse_replay(live: &Sinks, sink: &str) -> Option<String> {
    (!live.contains_key(sink)).then(|| {
        format!(
            "its sink `{sink}` is no longer in the config: add it back (and reload) to replay it"
        )
    })
}

fn outcome_label(v: &Verdict) -> String {
    match v {
        Verdict::Delivered => "delivered".into(),
        Verdict::Retry { why, .. } => format!("retry: {why}"),
        Verdict::RateLimited { after } => format!("rate limited for {}s", after.as_secs()),
        Verdict::Permanent(why) => format!("permanent: {why}"),
        Verdict::SinkGone(why) => format!("sink gone: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Something due that cannot start never makes the loop spin.
    #[test]
    fn the_loop_never_spins_on_what_cannot_start() {
        assert_eq!(wake_after(None, 1_000, None), None);
        assert_eq!(
            wake_after(Some(1_500), 1_000, None),
            Some(Duration::from_millis(500))
        );
        // Due, but in flight: wait for the attempt to wake the loop.
        assert_eq!(wake_after(Some(900), 1_000, None), Some(IDLE));
        assert_eq!(wake_after(Some(1_000), 1_000, None), Some(IDLE));
        // Due, but paused or held by the breaker: until that lifts.
        assert_eq!(
            wake_after(Some(900), 1_000, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
    }
}

//! The delivery loop: for each sink, claim its due deliveries from storage
//! within the sink's concurrency, rate limit and circuit breaker, attempt
//! them, and settle each outcome (done, rescheduled, or dead with its
//! history).
//!
//! Storage decides what may start ([`Queue::claim`]): due deliveries not
//! claimed already, and of each order key only its head (the oldest
//! pending one in event order) while no other of the key is out. A crash
//! leaves claims unsettled: the local backend's are in memory and simply
//! due again at the next start; PostgreSQL's lapse after their lease and
//! another instance takes them. Each sink is claimed on its own, so a slow
//! or broken sink never delays another.

pub mod health;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bucket::Bucket;
use crate::config::SinkConfig;
use crate::live::Live;
use crate::queue::{
    unix_millis, Attempt, BodyOfEvent, Claimed, DeliveryRecord, Lease, Limits, Queue, QueueError,
    Settle,
};
use crate::sink::{Sink, Verdict};
use policy::{Breaker, Next};

/// Most deliveries claimed per sink per pass.
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

/// The longest an attempt to a sink can take (`attempt` cuts a sink that
/// ignores its own timeout off 5 s after it).
fn attempt_limit(config: &SinkConfig) -> Duration {
    config.timeout + Duration::from_secs(5)
}

/// Why `rec` cannot be sent at all: its body is its event's, stored as a
/// reference, and the storage could not read the event back (the local
/// log keeps every event a pending delivery refers to, so only damage or
/// a segment deleted by hand does this). Sending it without the body would
/// deliver something the source never sent.
fn unsendable(rec: &DeliveryRecord) -> Option<String> {
    let frozen = rec.frozen.as_ref()?;
    (frozen.body_of_event == BodyOfEvent::Unread).then(|| {
        format!(
            "its body is its event's ({}), and the event log no longer holds that event (damaged, or its segment was deleted): nothing to send",
            crate::queue::EventId(rec.event_id)
        )
    })
}

/// How long a claim holds: an attempt's longest, plus time to settle it.
fn lease_for(config: &SinkConfig) -> Duration {
    attempt_limit(config) + Duration::from_secs(15)
}

/// An attempt in flight. Dropped when the attempt ends, however it ends:
/// the loop wakes, and an attempt that did not settle (a panic in a sink)
/// counts as a breaker failure so a probe cannot stay outstanding, and its
/// claim is released: the record is due again.
struct InFlight {
    dispatcher: Arc<Dispatcher>,
    sinks: Arc<Sinks>,
    lease: Lease,
    settled: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let sink = &self.lease.sink;
        if !self.settled {
            tracing::error!(sink = %sink, delivery = self.lease.id, "an attempt ended without an outcome; the delivery is due again");
            if let Some(sink) = self.sinks.get(sink) {
                if let Ok(mut breaker) = sink.breaker.lock() {
                    let _ = breaker.failure(unix_millis(SystemTime::now()));
                }
            }
            self.dispatcher.queue.release(&self.lease);
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
    /// What it did lately, for its health.
    recent: Mutex<health::Recent>,
}

impl SinkRuntime {
    pub fn new(config: SinkConfig, sink: Box<dyn Sink>) -> SinkRuntime {
        SinkRuntime {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            bucket: config.rate_limit.map(Bucket::new),
            breaker: Mutex::new(Breaker::default()),
            broken: Mutex::new(None),
            paused_until: Mutex::new(0),
            recent: Mutex::new(health::Recent::default()),
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
    queue: Arc<dyn Queue>,
    sinks: Arc<Live<Sinks>>,
    /// Rung by the router when it adds deliveries, and by finished attempts.
    wake: Arc<Notify>,
    /// Outcomes of attempts that could not be written (storage failed):
    /// kept, with their claims, until they can be.
    unrecorded: Mutex<Vec<Unrecorded>>,
}

/// An attempt's outcome waiting to be written.
struct Unrecorded {
    lease: Lease,
    rec: DeliveryRecord,
    how: Settle,
}

impl Dispatcher {
    pub fn new(
        queue: Arc<dyn Queue>,
        sinks: Arc<Live<Sinks>>,
        wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            metrics,
            queue,
            sinks,
            wake,
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
        self.bury_orphans().await;
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
            self.settle_unrecorded().await;
            // A page routed with the old sinks just before a reload can
            // still add deliveries to a removed one.
            if last_bury.elapsed() >= BURY_EVERY {
                self.bury_orphans().await;
                last_bury = Instant::now();
            }
            let mut sleep = IDLE;
            let sinks = self.sinks.get();
            for (name, sink) in sinks.iter() {
                match self.pass(name, sink, &sinks, &tracker).await {
                    Ok(Some(wait)) => sleep = sleep.min(wait),
                    Ok(None) => {}
                    // A storage failure is logged once by the backend.
                    Err(e @ QueueError::Storage(_)) => {
                        tracing::debug!(sink = %name, error = %e, "cannot claim due deliveries")
                    }
                    Err(e) => {
                        tracing::error!(sink = %name, error = %e, "cannot claim due deliveries")
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
    pub async fn bury_orphans(&self) {
        let names: Vec<String> = self.sinks.get().keys().cloned().collect();
        match self
            .queue
            .bury_orphans(&names, unix_millis(SystemTime::now()))
            .await
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
    /// cannot start (paused, breaker open, no slot or token, held by the
    /// cluster's limits), when that may change. Attempts that finish wake
    /// the loop anyway.
    async fn pass(
        self: &Arc<Self>,
        name: &str,
        sink: &SinkRuntime,
        sinks: &Arc<Sinks>,
        tracker: &TaskTracker,
    ) -> Result<Option<Duration>, QueueError> {
        // Disabled (its secret is not set): its deliveries are held, not
        // looked at, until a reload brings the secret.
        if sink.config.kind.unconfigured().is_some() {
            return Ok(None);
        }
        let now = unix_millis(SystemTime::now());
        // The platform said this webhook is gone: what comes due goes dead.
        let broken = sink.broken.lock().expect("broken lock").clone();
        if let Some(reason) = broken {
            let limits = Limits {
                max: PAGE,
                concurrency: usize::MAX,
                rate: None,
                lease: lease_for(&sink.config),
            };
            let due = self.queue.claim(name, limits, now).await?;
            for c in due.claimed {
                self.finish_dead(c, format!("sink disabled: {reason}"))
                    .await;
            }
            return Ok(wake_after(due.next_due, now, None));
        }
        match self.may_start(sink, now) {
            Err(blocked) => {
                let next = self.queue.next_due(name).await?;
                Ok(wake_after(next, now, Some(blocked)))
            }
            Ok(max) => {
                let limits = Limits {
                    max,
                    concurrency: sink.config.concurrency,
                    rate: sink.config.rate_limit,
                    lease: lease_for(&sink.config),
                };
                let claimed = self.queue.claim(name, limits, now).await;
                let mut breaker = sink.breaker.lock().expect("breaker lock");
                if claimed.as_ref().map_or(true, |d| d.claimed.is_empty()) && breaker.probing() {
                    // No attempt after all: the probe slot is free again
                    // (else a failed claim would hold the sink as long as
                    // the breaker may stay open).
                    breaker.abandon_probe();
                }
                drop(breaker);
                let due = claimed?;
                let started = due.claimed.len();
                for claimed in due.claimed {
                    if let Some(bucket) = sink
                        .bucket
                        .as_ref()
                        .filter(|_| !self.queue.limits_cluster_wide())
                    {
                        bucket.try_take(Instant::now());
                    }
                    let permit = sink
                        .slots
                        .clone()
                        .try_acquire_owned()
                        .expect("claimed no more than the free slots");
                    self.start(claimed, permit, sinks, tracker);
                }
                let blocked = match started == max {
                    true => Some(IDLE),
                    false => due.held,
                };
                Ok(wake_after(due.next_due, now, blocked))
            }
        }
    }

    /// How many of `sink`'s deliveries may start now (at least one), or
    /// how long until that may change. In this instance: its pause, breaker,
    /// free slots and, unless storage holds it for the cluster, its rate
    /// limit. A probe `allows` grants is one attempt.
    fn may_start(&self, sink: &SinkRuntime, now: u64) -> Result<usize, Duration> {
        let paused = *sink.paused_until.lock().expect("pause lock");
        if paused > now {
            return Err(Duration::from_millis(paused - now));
        }
        let free = sink.slots.available_permits().min(PAGE);
        if free == 0 {
            return Err(IDLE);
        }
        let mut max = free;
        if !self.queue.limits_cluster_wide() {
            if let Some(bucket) = &sink.bucket {
                match bucket.available(Instant::now()) as usize {
                    0 => return Err(BUCKET_POLL),
                    tokens => max = max.min(tokens),
                }
            }
        }
        let mut breaker = sink.breaker.lock().expect("breaker lock");
        if let Some(wait) = breaker.held(now) {
            return Err(wait);
        }
        if !breaker.allows(now) {
            return Err(breaker.held(now).unwrap_or(IDLE));
        }
        if breaker.probing() {
            max = 1;
        }
        Ok(max)
    }

    /// Runs one claimed delivery's attempt on the tracker.
    fn start(
        self: &Arc<Self>,
        claimed: Claimed,
        permit: OwnedSemaphorePermit,
        sinks: &Arc<Sinks>,
        tracker: &TaskTracker,
    ) {
        let Claimed { rec, lease } = claimed;
        let flight = InFlight {
            dispatcher: self.clone(),
            sinks: sinks.clone(),
            lease,
            settled: false,
        };
        tracker.spawn(async move {
            let mut flight = flight;
            let unrecorded = flight
                .dispatcher
                .attempt(&flight.sinks, &flight.lease, rec)
                .await;
            flight.settled = true;
            if let Some(u) = unrecorded {
                flight
                    .dispatcher
                    .unrecorded
                    .lock()
                    .expect("unrecorded lock")
                    .push(u);
            }
            drop(permit);
        });
    }

    /// Writes the outcomes storage could not take before, oldest first
    /// (each releases its claim); stops at the first that still fails.
    async fn settle_unrecorded(&self) {
        loop {
            let Some(u) = self
                .unrecorded
                .lock()
                .expect("unrecorded lock")
                .first()
                .map(|u| Unrecorded {
                    lease: u.lease.clone(),
                    rec: u.rec.clone(),
                    how: u.how,
                })
            else {
                return;
            };
            if self.queue.settle(&u.lease, &u.rec, u.how).await.is_err() {
                return;
            }
            self.unrecorded.lock().expect("unrecorded lock").remove(0);
            tracing::info!(sink = %u.rec.sink, delivery = u.rec.id, "recorded an attempt's outcome that had to wait for storage");
        }
    }

    /// One attempt, its outcome settled. Returns the outcome when it could
    /// not be written (storage failed): its claim is kept, so the delivery
    /// is not attempted again meanwhile, and it is written later.
    async fn attempt(
        &self,
        sinks: &Sinks,
        lease: &Lease,
        mut rec: DeliveryRecord,
    ) -> Option<Unrecorded> {
        let name = lease.sink.as_str();
        let sink = &sinks[name];
        let started = Instant::now();
        // The sink has its own timeout; this one only guards against a sink
        // that ignores it.
        let limit = attempt_limit(&sink.config);
        let answer = match unsendable(&rec) {
            Some(why) => crate::sink::no_answer(Verdict::Permanent(why)),
            None => match tokio::time::timeout(limit, sink.sink.send(&rec)).await {
                Ok(a) => a,
                Err(_) => crate::sink::no_answer(Verdict::Retry {
                    after: None,
                    why: "timeout".into(),
                }),
            },
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
            {
                let mut p = sink.paused_until.lock().expect("pause lock");
                *p = (*p).max(until);
            }
            if let Err(e) = self.queue.pause(name, until).await {
                tracing::warn!(sink = %name, error = %e, "cannot tell the other instances to pause this sink; this one pauses");
            }
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
        let failure = (!matches!(next, Next::Done)).then(|| health::RecentFailure {
            at: crate::admin::query::rfc3339(now),
            delivery: rec.id,
            event_id: rec.event_id,
            status: answer.status,
            outcome: outcome_label(&answer.verdict),
        });
        sink.recent
            .lock()
            .expect("recent lock")
            .record(now, failure);
        let how = match next {
            Next::Done => {
                tracing::debug!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, "delivered");
                // The history keeps what happened (the attempts and their
                // answers), not the request: nothing sends it again, and
                // draining a million deliveries would write every body a
                // second time.
                rec.frozen = None;
                Settle::Done
            }
            Next::At { due_ms, counted } => {
                if counted {
                    rec.failures += 1;
                }
                rec.due_ms = due_ms;
                tracing::info!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, outcome = %outcome_label(&answer.verdict), retry_in_ms = due_ms.saturating_sub(now), "will retry");
                Settle::Reschedule
            }
            Next::Dead(reason) => {
                tracing::warn!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, reason = %reason, "delivery is dead");
                rec.reason = Some(reason);
                rec.dead_ms = Some(now);
                Settle::Bury
            }
        };
        match self.queue.settle(lease, &rec, how).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(sink = %name, route = %rec.route, delivery = rec.id, delivery_id = %rec.delivery_id, error = %e, "cannot record a delivery's outcome yet; it is kept and written once storage recovers");
                Some(Unrecorded {
                    lease: lease.clone(),
                    rec,
                    how,
                })
            }
        }
    }

    /// What `/metrics` shows of the sinks: breaker states, and how long the
    /// most overdue delivery has waited.
    pub async fn gauges(&self, now_ms: u64) -> (std::collections::BTreeMap<String, bool>, f64) {
        let mut oldest = 0u64;
        let mut breakers = std::collections::BTreeMap::new();
        for (name, sink) in self.sinks.get().iter() {
            breakers.insert(
                name.clone(),
                sink.breaker.lock().expect("breaker lock").is_open(now_ms),
            );
            if let Ok(Some(due)) = self.queue.next_due(name).await {
                oldest = oldest.max(now_ms.saturating_sub(due));
            }
        }
        (breakers, oldest as f64 / 1000.0)
    }

    /// Each sink's health, by name.
    pub async fn health(&self, now_ms: u64) -> Result<Vec<health::SinkHealth>, QueueError> {
        let dead = self.queue.dead_by_sink().await?;
        let sinks = self.sinks.get();
        let mut names: Vec<&String> = sinks.keys().collect();
        names.sort();
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            let sink = &sinks[name];
            let disabled_reason = match sink.config.kind.unconfigured() {
                Some(why) => Some(why.to_owned()),
                None => sink
                    .broken
                    .lock()
                    .expect("broken lock")
                    .as_ref()
                    .map(|why| format!("the platform says this webhook is gone ({why}): fix it, then replay its dead letters")),
            };
            let (breaker, breaker_retry_in_s) = {
                let b = sink.breaker.lock().expect("breaker lock");
                match b.held(now_ms) {
                    None => ("closed", None),
                    Some(_) if b.probing() => ("probing", None),
                    Some(wait) => ("open", Some(wait.as_secs())),
                }
            };
            let paused = *sink.paused_until.lock().expect("pause lock");
            let (delivered_5m, failed_5m, recent_failures) = {
                let r = sink.recent.lock().expect("recent lock");
                let (d, f) = r.tally(now_ms);
                (d, f, r.failures())
            };
            let oldest_due_s = match self.queue.next_due(name).await? {
                Some(due) if due <= now_ms => Some((now_ms - due) / 1000),
                _ => None,
            };
            all.push(health::SinkHealth {
                name: name.clone(),
                kind: sink.config.kind.name().to_owned(),
                enabled: disabled_reason.is_none(),
                disabled_reason,
                breaker: breaker.to_owned(),
                breaker_retry_in_s,
                paused_until: (paused > now_ms).then(|| crate::admin::query::rfc3339(paused)),
                rate_limit: sink.config.rate_limit.as_ref().map(|r| r.per_second),
                concurrency: sink.config.concurrency,
                in_flight: sink
                    .config
                    .concurrency
                    .saturating_sub(sink.slots.available_permits()),
                delivered_5m,
                failed_5m,
                recent_failures,
                oldest_due_s,
                dead: dead.get(name.as_str()).copied().unwrap_or(0),
            });
        }
        Ok(all)
    }

    /// Why each sink that sends nothing now holds its pending
    /// deliveries, in a sentence: a secret not set, a pause the platform
    /// asked for, or its breaker open after failures (this instance's
    /// view). What the admin API and the console show beside a pending
    /// delivery to it; a sink sending as usual is not in it.
    pub fn holds(&self, now_ms: u64) -> HashMap<String, String> {
        let sinks = self.sinks.get();
        sinks
            .iter()
            .filter_map(|(name, sink)| {
                let paused = *sink.paused_until.lock().expect("pause lock");
                let why = if let Some(why) = sink.config.kind.unconfigured() {
                    format!("held: sink `{name}` is disabled until its secret is set ({why}); sent once it is set and the config reloaded")
                } else if paused > now_ms {
                    format!(
                        "held: the platform asked sink `{name}` to pause until {}",
                        crate::admin::query::rfc3339(paused)
                    )
                } else {
                    let b = sink.breaker.lock().expect("breaker lock");
                    match b.held(now_ms) {
                        Some(wait) if !b.probing() => format!(
                            "held: sink `{name}` failed too often in a row, so its breaker is open; the next attempt is a probe in {} s",
                            wait.as_secs()
                        ),
                        _ => return None,
                    }
                };
                Some((name.clone(), why))
            })
            .collect()
    }

    /// Replays dead deliveries (one, or all with `None`): they are due now
    /// with a fresh schedule, and the sinks they go to are re-enabled (a
    /// sink disabled by a "gone" answer, its breaker reset). A delivery to
    /// a sink no longer in the config stays dead, reported with the reason
    /// (it would wait for nothing); one to a sink that is disabled is held
    /// until its secret is set.
    pub async fn replay(&self, id: Option<u64>) -> Result<crate::queue::Requeued, QueueError> {
        let live = self.sinks.get();
        let refuse = |rec: &DeliveryRecord| refuse_replay(&live, &rec.sink);
        let done = self
            .queue
            .requeue(id, unix_millis(SystemTime::now()), &refuse)
            .await?;
        self.replayed(&done);
        Ok(done)
    }

    /// Replays the dead letters `filter` selects, as [`Dispatcher::replay`]
    /// does one; with `dry_run`, only counts what would go (and what would
    /// be refused, with why).
    pub async fn replay_where(
        &self,
        filter: &crate::queue::DeliveryFilter,
        dry_run: bool,
    ) -> Result<crate::queue::Requeued, QueueError> {
        let live = self.sinks.get();
        let refuse = |rec: &DeliveryRecord| refuse_replay(&live, &rec.sink);
        let done = self
            .queue
            .requeue_where(filter, unix_millis(SystemTime::now()), &refuse, dry_run)
            .await?;
        if !dry_run {
            self.replayed(&done);
        }
        Ok(done)
    }

    /// Wakes the delivery loop (deliveries were added outside routing).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// After a replay: the sinks replayed to are re-enabled, and the loop
    /// woken.
    fn replayed(&self, done: &crate::queue::Requeued) {
        let live = self.sinks.get();
        for name in &done.sinks {
            if let Some(sink) = live.get(name) {
                if sink.broken.lock().expect("broken lock").take().is_some() {
                    tracing::info!(sink = %name, "sink re-enabled by a replay");
                }
                let _ = sink.breaker.lock().expect("breaker lock").success();
            }
        }
        self.wake.notify_one();
    }

    async fn finish_dead(&self, claimed: Claimed, reason: String) {
        let Claimed { mut rec, lease } = claimed;
        rec.dead_ms = Some(unix_millis(SystemTime::now()));
        rec.reason = Some(reason);
        if let Err(e) = self.queue.settle(&lease, &rec, Settle::Bury).await {
            tracing::error!(delivery = rec.id, error = %e, "cannot move a delivery to dead");
            self.queue.release(&lease);
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

    /// A body that could not be read back is never sent (empty): the
    /// attempt fails for good, saying which event and why.
    #[test]
    fn a_body_not_read_back_is_not_sent() {
        let mut rec = crate::queue::delivery::tests::sample(1, 0);
        rec.event_id = 0x2a;
        assert_eq!(unsendable(&rec), None);
        let frozen = rec.frozen.as_mut().unwrap();
        frozen.body_of_event = BodyOfEvent::Held;
        assert_eq!(unsendable(&rec), None);
        rec.frozen.as_mut().unwrap().body_of_event = BodyOfEvent::Unread;
        let why = unsendable(&rec).unwrap();
        assert!(why.contains("evt_000000000000002a"), "{why}");
        assert!(why.contains("no longer holds that event"), "{why}");
    }

    /// Why a sink holds its pending deliveries: disabled (its secret not
    /// set), paused by the platform, or its breaker open; a sink sending
    /// as usual, or probing, holds nothing.
    #[tokio::test]
    async fn holds_say_why_each_sink_sends_nothing_now() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n\
             [sinks.audit]\nkind = \"log\"\n\
             [sinks.slack]\nkind = \"slack\"\nurl = { env = \"HOOKGATE_TEST_UNSET_SLACK\" }\n\
             [sinks.paused]\nkind = \"log\"\n\
             [sinks.failing]\nkind = \"log\"\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap()
        .config;
        let sinks = Arc::new(Live::new(crate::daemon::build_sinks(&config).unwrap()));
        let queue: Arc<dyn Queue> = Arc::new(crate::queue::Local::new(
            crate::queue::LocalStore::open(dir.path(), true).unwrap(),
        ));
        let dispatcher = Dispatcher::new(queue, sinks, Arc::new(Notify::new()), Arc::default());
        let now = 1_700_000_000_000;
        let all = dispatcher.sinks();
        *all["paused"].paused_until.lock().unwrap() = now + 30_000;
        {
            let mut b = all["failing"].breaker.lock().unwrap();
            while b.held(now).is_none() {
                b.failure(now);
            }
        }
        let holds = dispatcher.holds(now);
        assert!(!holds.contains_key("audit"), "{holds:?}");
        assert!(
            holds["slack"].contains("is disabled until its secret is set")
                && holds["slack"].contains("HOOKGATE_TEST_UNSET_SLACK"),
            "{holds:?}"
        );
        assert!(
            holds["paused"].contains("pause until 2023-11-14T22:13:50"),
            "{holds:?}"
        );
        assert!(
            holds["failing"].contains("breaker is open") && holds["failing"].contains("a probe in"),
            "{holds:?}"
        );
        // Once the pause is over it holds nothing.
        assert!(!dispatcher.holds(now + 30_000).contains_key("paused"));
    }

    /// A delivered delivery's history keeps its attempts and answers,
    /// not the request it sent.
    #[tokio::test]
    async fn the_delivered_history_keeps_no_request() {
        use crate::queue::{DeliveryFilter, DeliveryStatus, Local, LocalStore, Routed};
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n[sinks.audit]\nkind = \"log\"\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap()
        .config;
        let sinks = Arc::new(Live::new(crate::daemon::build_sinks(&config).unwrap()));
        let queue: Arc<dyn Queue> =
            Arc::new(Local::new(LocalStore::open(dir.path(), true).unwrap()));
        let mut rec = crate::queue::delivery::tests::sample(0, 0);
        rec.sink = "audit".into();
        assert!(rec.frozen.is_some());
        let page = queue.inbox(10).await.unwrap();
        queue
            .routed(
                &page,
                vec![Routed {
                    event: crate::queue::EventId(0),
                    pending: vec![rec],
                    dead: vec![],
                }],
            )
            .await
            .unwrap();
        let dispatcher = Dispatcher::new(
            queue.clone(),
            sinks,
            Arc::new(Notify::new()),
            Arc::default(),
        );
        let shutdown = CancellationToken::new();
        let running =
            tokio::spawn(dispatcher.run(Arc::default(), shutdown.clone(), Duration::from_secs(5)));
        let delivered = DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            ..Default::default()
        };
        let mut found = Vec::new();
        for _ in 0..100 {
            found = queue.deliveries(&delivered, None, 10).await.unwrap().items;
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        assert_eq!(found.len(), 1, "delivered");
        let history = &found[0].record;
        assert_eq!(history.attempts.len(), 1);
        assert_eq!(history.frozen, None);
    }

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

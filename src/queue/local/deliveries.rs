//! Routing results and delivery state (`kv.rs`): the router hands over a
//! page of events' deliveries and moves its cursor in one transaction; the
//! dispatcher moves records between `deliveries` (by due time) and `dead`.
//!
//! Records with an order key are also filed in `order` (sink, key, event
//! order → their current `deliveries` key), written in the same
//! transaction as `deliveries`: the first entry of a key is its head, the
//! only one of that key the dispatcher may start. Dead records are filed
//! in `dead_at` (when they died, id), in the same transaction as `dead`:
//! [`LocalStore::prune_dead`] reads only the front of it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::delivery::{dead_at_bound, order_prefix, sink_prefix};
use super::store::{ROUTED_KEY, SAVE_CURSOR_EVERY, UNMATCHED_KEY};

/// Deliveries to a removed sink buried per transaction.
pub(super) const BURY_PAGE: usize = 256;

/// Dead letters replayed per transaction.
pub(super) const REPLAY_BATCH: usize = 500;
use super::kv::Batch;
use super::state::Counts;
use super::{DeliveryRecord, EventId, LocalStore, QueueError, Refused, Requeued, Routed};
use crate::queue::Settle;
use redb::ReadableTable;

/// An attempt's outcome, ready for [`LocalStore::settle_all`]: the key the
/// record was claimed at, what it goes to, and the record as stored.
pub struct Outcome {
    old: Vec<u8>,
    how: Settle,
    id: [u8; 8],
    sink: String,
    value: Vec<u8>,
    /// Its new due key: rescheduled.
    key: Option<Vec<u8>>,
    ordered: Option<Vec<u8>>,
    /// `delivered_at` or `dead_at` key (done or buried).
    at: [u8; 16],
    /// Its `refs` key, removed when it leaves the pending deliveries.
    referred: [u8; 16],
}

impl Outcome {
    /// Encodes `rec` (on the caller's thread: outcomes written together
    /// were encoded apart). Rescheduled, its body stays a reference to the
    /// event when it was one; done or buried, it leaves with its whole
    /// request (a dead letter may outlive its event in the log).
    pub fn new(old: &[u8], rec: &DeliveryRecord, how: Settle) -> Outcome {
        Outcome {
            old: old.to_vec(),
            how,
            id: rec.id.to_be_bytes(),
            sink: rec.sink.clone(),
            value: match how {
                Settle::Reschedule => rec.encode_referring(),
                Settle::Done | Settle::Bury => rec.encode(),
            },
            referred: rec.ref_key(),
            key: (how == Settle::Reschedule).then(|| rec.due_key()),
            ordered: rec.order_index_key(),
            at: match how {
                Settle::Done => rec.delivered_at_key(),
                Settle::Bury => rec.dead_at_key(),
                Settle::Reschedule => [0; 16],
            },
        }
    }
}

pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<DeliveryRecord, QueueError> {
    DeliveryRecord::decode(bytes).map_err(|e| QueueError::Corrupt {
        key: hex::encode(key),
        reason: e.to_string(),
    })
}

impl LocalStore {
    /// A fresh delivery id.
    pub fn next_delivery_id(&self) -> Result<u64, QueueError> {
        let trees = self.state.get()?;
        self.state.check(trees.db.generate_id())
    }

    /// Records what routing made of a page of events, in one transaction:
    /// each event's pending deliveries, those born dead (their template
    /// failed), or, when it has neither, that no route matched; and the
    /// router's cursor moves from `from` (where the page was read) to
    /// `next`, past them. When the cursor is no longer at `from` (the state was
    /// reopened after a failure and went back to its last saved place),
    /// nothing is recorded: the page is read again from there.
    ///
    /// A page that made no deliveries only moves the cursor in memory,
    /// saved with the next page that does, within [`SAVE_CURSOR_EVERY`], or
    /// when the router has been idle a while: after a crash, events routed to nowhere
    /// are routed (to nowhere) again, and nothing else is.
    pub fn routed(&self, page: &[Routed], from: EventId, next: EventId) -> Result<(), QueueError> {
        let mut pending = Vec::new();
        let mut ordered = Vec::new();
        let mut dead = Vec::new();
        let mut dead_at = Vec::new();
        let mut by_event = Vec::new();
        let mut refs = Vec::new();
        let mut unmatched = 0u64;
        for r in page {
            pending.extend(
                r.pending
                    .iter()
                    .map(|d| (d.id, d.due_key(), d.encode_referring())),
            );
            refs.extend(
                r.pending
                    .iter()
                    .filter(|d| d.refers_to_event())
                    .map(DeliveryRecord::ref_key),
            );
            ordered.extend(
                r.pending
                    .iter()
                    .filter_map(|d| Some((d.order_index_key()?, d.due_key()))),
            );
            dead.extend(
                r.dead
                    .iter()
                    .map(|d| (d.sink.as_str(), d.id.to_be_bytes(), d.encode())),
            );
            dead_at.extend(r.dead.iter().map(DeliveryRecord::dead_at_key));
            by_event.extend(
                r.pending
                    .iter()
                    .chain(&r.dead)
                    .map(DeliveryRecord::by_event_key),
            );
            if r.pending.is_empty() && r.dead.is_empty() {
                unmatched += 1;
            }
        }
        let mut saved = self.cursor_saved.lock().expect("cursor lock");
        if self.routed_upto.load(Ordering::Acquire) != from.0 {
            return Err(QueueError::Moved);
        }
        let unmatched = self.unmatched.load(Ordering::Acquire) + unmatched;
        if !pending.is_empty() || !dead.is_empty() || saved.0.elapsed() >= SAVE_CURSOR_EVERY {
            let trees = self.state.get()?;
            let done = trees.db.write(|tx| {
                let mut deliveries = tx.open(&trees.deliveries)?;
                let mut ids = tx.open(&trees.pending_ids)?;
                let mut refs_tree = tx.open(&trees.refs)?;
                let mut events = tx.open(&trees.by_event)?;
                let mut order = tx.open(&trees.order)?;
                let mut dead_tree = tx.open(&trees.dead)?;
                let mut dead_at_tree = tx.open(&trees.dead_at)?;
                let mut meta = tx.open(&trees.meta)?;
                let mut made = Counts::default();
                for (id, k, v) in &pending {
                    if deliveries.insert(&k[..], v.as_slice())?.is_none() {
                        made.deliveries += 1;
                    }
                    ids.insert(&id.to_be_bytes()[..], &k[..])?;
                }
                for k in &refs {
                    refs_tree.insert(&k[..], &[][..])?;
                }
                for k in &by_event {
                    events.insert(&k[..], &[][..])?;
                }
                for (k, v) in &ordered {
                    order.insert(&k[..], &v[..])?;
                }
                for (sink, k, v) in &dead {
                    if dead_tree.insert(&k[..], v.as_slice())?.is_none() {
                        made.dead_changed(sink, 1);
                    }
                }
                for k in &dead_at {
                    dead_at_tree.insert(&k[..], &[][..])?;
                }
                meta.insert(UNMATCHED_KEY, &unmatched.to_be_bytes()[..])?;
                meta.insert(ROUTED_KEY, &next.0.to_be_bytes()[..])?;
                Ok(made)
            });
            trees.counted(&self.state.check(done)?);
            *saved = (std::time::Instant::now(), next.0);
        }
        self.unmatched.store(unmatched, Ordering::Release);
        self.routed_upto.store(next.0, Ordering::Release);
        self.shared
            .unrouted
            .fetch_sub(page.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Saves the router's cursor if it moved since it was last saved (when
    /// the router has been idle a while, and at shutdown).
    pub fn save_cursor(&self) -> Result<(), QueueError> {
        let mut saved = self.cursor_saved.lock().expect("cursor lock");
        let cursor = self.routed_upto.load(Ordering::Acquire);
        if saved.1 == cursor {
            return Ok(());
        }
        let unmatched = self.unmatched.load(Ordering::Acquire);
        let mut batch = Batch::default();
        batch.insert(UNMATCHED_KEY, &unmatched.to_be_bytes());
        batch.insert(ROUTED_KEY, &cursor.to_be_bytes());
        let trees = self.state.get()?;
        self.state.check(trees.meta.apply_batch(batch))?;
        *saved = (std::time::Instant::now(), cursor);
        Ok(())
    }

    /// `sink`'s deliveries due at `now_ms`, earliest first, at most `n`:
    /// their keys and ids only, so skipping those in flight costs nothing.
    pub fn due(
        &self,
        sink: &str,
        now_ms: u64,
        n: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, QueueError> {
        self.due_after(sink, now_ms, None, n)
    }

    /// As [`LocalStore::due`], after the key `after` (the last one a
    /// previous page ended with).
    pub fn due_after(
        &self,
        sink: &str,
        now_ms: u64,
        after: Option<&[u8]>,
        n: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, QueueError> {
        let start = sink_prefix(sink);
        let mut end = start.clone();
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let start = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Included(start),
        };
        let trees = self.state.get()?;
        let due = trees
            .deliveries
            .range::<Vec<u8>, _>((start, Bound::Excluded(end)))
            .keys()
            .take(n)
            .map(|k| {
                let k = k?;
                let id = k
                    .len()
                    .checked_sub(8)
                    .and_then(|at| k[at..].try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| QueueError::Corrupt {
                        key: hex::encode(&k),
                        reason: "delivery key too short".into(),
                    })?;
                Ok::<_, QueueError>((k, id))
            })
            .collect();
        self.state.check(due)
    }

    /// The pending delivery at `key`, if it is still there.
    pub fn delivery(&self, key: &[u8]) -> Result<Option<DeliveryRecord>, QueueError> {
        match self.state.check(self.state.get()?.deliveries.get(key))? {
            Some(v) => Ok(Some(decode(key, &v)?)),
            None => Ok(None),
        }
    }

    /// When `sink`'s earliest pending delivery is due.
    pub fn next_due(&self, sink: &str) -> Result<Option<u64>, QueueError> {
        let prefix = sink_prefix(sink);
        let trees = self.state.get()?;
        Ok(match trees.deliveries.scan_prefix(&prefix).next() {
            Some(kv) => {
                let (k, _) = self.state.check(kv)?;
                k.get(prefix.len()..prefix.len() + 8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            }
            None => None,
        })
    }

    /// Pending deliveries whose sink is not in `sinks` (removed from the
    /// config): they go dead with that reason rather than wait forever.
    pub fn bury_orphans(
        &self,
        sinks: &[&str],
        in_flight: &std::collections::HashSet<u64>,
        now_ms: u64,
    ) -> Result<usize, QueueError> {
        let mut buried = 0;
        let trees = self.state.get()?;
        // Keys start with their sink's name and a 0 byte: one look per
        // sink finds the next one, and a configured sink's deliveries
        // (a million waiting for a sink that is down) are skipped whole.
        let mut from = Vec::new();
        loop {
            let Some(kv) = trees.deliveries.range(from.as_slice()..).next() else {
                break;
            };
            let (first, _) = self.state.check(kv)?;
            let name_len = first.iter().position(|&b| b == 0).unwrap_or(first.len());
            let prefix = first[..(name_len + 1).min(first.len())].to_vec();
            from = first[..name_len].to_vec();
            from.push(1);
            let configured =
                std::str::from_utf8(&first[..name_len]).is_ok_and(|name| sinks.contains(&name));
            if configured {
                continue;
            }
            // A page at a time, each buried in one transaction, with no
            // read open meanwhile (an open read keeps redb from reusing
            // the pages the burials free).
            // From the prefix, then after the last key buried, up to
            // `from` (the first key after the prefix's).
            let mut start = Bound::Included(prefix);
            loop {
                let page = trees
                    .deliveries
                    .range((start, Bound::Excluded(from.clone())))
                    .take(BURY_PAGE)
                    .collect::<Result<Vec<_>, _>>();
                let page = self.state.check(page)?;
                let Some((last, _)) = page.last() else { break };
                start = Bound::Excluded(last.clone());
                let mut outcomes = Vec::with_capacity(page.len());
                for (k, v) in &page {
                    let mut rec = decode(k, v)?;
                    // An attempt in flight settles its record itself.
                    if in_flight.contains(&rec.id) {
                        continue;
                    }
                    rec.reason = Some(format!("sink `{}` removed from the config", rec.sink));
                    rec.dead_ms = Some(now_ms);
                    // A dead letter keeps its whole request.
                    self.read_body(&mut rec)?;
                    outcomes.push(Outcome::new(k, &rec, Settle::Bury));
                }
                self.settle_all(&outcomes)?;
                buried += outcomes.len();
            }
        }
        Ok(buried)
    }

    /// Replaces the record at `old` (its previous due key) with `rec`:
    /// rescheduled when `rec` is pending, moved to the delivered history
    /// when `done` (see [`LocalStore::settle_all`]).
    pub fn update(&self, old: &[u8], rec: &DeliveryRecord, done: bool) -> Result<(), QueueError> {
        let how = if done {
            Settle::Done
        } else {
            Settle::Reschedule
        };
        self.settle_all(&[Outcome::new(old, rec, how)])
    }

    /// Moves the record at `old` to `dead` (see [`LocalStore::settle_all`]).
    pub fn bury(&self, old: &[u8], rec: &DeliveryRecord) -> Result<(), QueueError> {
        self.settle_all(&[Outcome::new(old, rec, Settle::Bury)])
    }

    /// Writes attempts' outcomes in one transaction: each commit has a
    /// cost of its own (sled, before, sealed and wrote its log buffer around
    /// every one), so a drain writing each outcome alone spent most of its
    /// time there.
    /// Each record leaves `old` (its due key when claimed):
    /// - rescheduled: to its new due key (the same key when due in the
    ///   same millisecond: overwritten, not removed);
    /// - done: to the delivered history, filed by when in `delivered_at`;
    /// - buried: to `dead`, filed by when it died in `dead_at`.
    ///
    /// Its `order` entry follows it (to the new key, or gone) in the same
    /// transaction, so the next delivery of its key becomes the head only
    /// once this one's outcome is written, and a dead head lets it go.
    pub fn settle_all(&self, outcomes: &[Outcome]) -> Result<(), QueueError> {
        let trees = self.state.get()?;
        let written = trees.db.write(|tx| {
            let mut deliveries = tx.open(&trees.deliveries)?;
            let mut order = tx.open(&trees.order)?;
            let mut ids = tx.open(&trees.pending_ids)?;
            let mut delivered = tx.open(&trees.delivered)?;
            let mut delivered_at = tx.open(&trees.delivered_at)?;
            let mut dead = tx.open(&trees.dead)?;
            let mut dead_at = tx.open(&trees.dead_at)?;
            let mut refs = tx.open(&trees.refs)?;
            let mut change = Counts::default();
            let mut pending = 0i64;
            for o in outcomes {
                let (id, value, ordered, at) = (&o.id, &o.value, &o.ordered, &o.at);
                if let Some(key) = &o.key {
                    // Rescheduled.
                    if deliveries.insert(&key[..], value.as_slice())?.is_none() {
                        pending += 1;
                    }
                    if *key != o.old {
                        if deliveries.remove(&o.old[..])?.is_some() {
                            pending -= 1;
                        }
                        ids.insert(&id[..], &key[..])?;
                    }
                    if let Some(k) = ordered {
                        order.insert(&k[..], &key[..])?;
                    }
                    continue;
                }
                if deliveries.remove(&o.old[..])?.is_some() {
                    pending -= 1;
                }
                ids.remove(&id[..])?;
                if let Some(k) = ordered {
                    order.remove(&k[..])?;
                }
                // Whether or not it referred to its event (a done
                // record has dropped its request already).
                refs.remove(&o.referred[..])?;
                if o.how == Settle::Done {
                    delivered.insert(&id[..], value.as_slice())?;
                    delivered_at.insert(&at[..], &[][..])?;
                } else {
                    if dead.insert(&id[..], value.as_slice())?.is_none() {
                        change.dead_changed(&o.sink, 1);
                    }
                    dead_at.insert(&at[..], &[][..])?;
                }
            }
            Ok((pending, change))
        });
        let (pending, change) = self.state.check(written)?;
        let mut counts = trees.counts_mut();
        counts.deliveries_changed(pending);
        for (sink, n) in change.dead {
            counts.dead_changed(&sink, n as i64);
        }
        Ok(())
    }

    /// The id of the first pending delivery of order key `key` to `sink`
    /// in event order (the only one of that key that may go); `None` when
    /// none is filed. An `order` entry whose record is no longer in
    /// `deliveries` is stale: it is removed (unless it changed meanwhile)
    /// and the next one looked at.
    pub fn order_head(&self, sink: &str, key: &str) -> Result<Option<u64>, QueueError> {
        let prefix = order_prefix(sink, key);
        let trees = self.state.get()?;
        loop {
            let Some(kv) = trees.order.scan_prefix(&prefix).next() else {
                return Ok(None);
            };
            let (k, due_key) = self.state.check(kv)?;
            if self.state.check(trees.deliveries.contains_key(&due_key))? {
                let head = k
                    .len()
                    .checked_sub(8)
                    .and_then(|at| k[at..].try_into().ok())
                    .map(u64::from_be_bytes);
                return match head {
                    Some(id) => Ok(Some(id)),
                    None => Err(QueueError::Corrupt {
                        key: hex::encode(&k),
                        reason: "order entry too short".into(),
                    }),
                };
            }
            let cleared = trees.db.write(|tx| {
                let mut order = tx.open(&trees.order)?;
                let deliveries = tx.open(&trees.deliveries)?;
                let unchanged = order
                    .get(&k[..])?
                    .is_some_and(|v| v.value() == due_key.as_slice());
                if unchanged && deliveries.get(&due_key[..])?.is_none() {
                    order.remove(&k[..])?;
                }
                Ok(())
            });
            self.state.check(cleared)?;
            tracing::warn!(sink, order_key = %key, entry = %hex::encode(&k), "removed a stale entry of the order index");
        }
    }

    /// Every dead delivery, oldest id first.
    pub fn dead_letters(&self) -> Result<Vec<DeliveryRecord>, QueueError> {
        let trees = self.state.get()?;
        trees
            .dead
            .iter()
            .map(|kv| {
                let (k, v) = self.state.check(kv)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// One dead delivery.
    /// Every pending delivery, by sink and due time.
    pub fn pending(&self) -> Result<Vec<DeliveryRecord>, QueueError> {
        let trees = self.state.get()?;
        trees
            .deliveries
            .iter()
            .map(|kv| {
                let (k, v) = self.state.check(kv)?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Dead deliveries by id, after `after`, at most `limit`.
    pub fn dead_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, QueueError> {
        let trees = self.state.get()?;
        let from = after.map_or(0, |a| a.saturating_add(1));
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        trees
            .dead
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = self.state.check(kv)?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn dead_letter(&self, id: u64) -> Result<Option<DeliveryRecord>, QueueError> {
        match self
            .state
            .check(self.state.get()?.dead.get(id.to_be_bytes()))?
        {
            Some(v) => Ok(Some(decode(&id.to_be_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Dead deliveries by sink (each record's head only).
    pub fn dead_by_sink(&self) -> Result<std::collections::BTreeMap<String, u64>, QueueError> {
        let trees = self.state.get()?;
        Ok(trees.counts().dead)
    }

    /// How many deliveries to `sink` wait (keys only; for sinks that hold
    /// theirs, which are few).
    pub fn pending_count(&self, sink: &str) -> Result<u64, QueueError> {
        let trees = self.state.get()?;
        let mut n = 0;
        for k in trees.deliveries.scan_prefix(sink_prefix(sink)).keys() {
            self.state.check(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// Moves dead deliveries back to pending, due at `now_ms`, with a fresh
    /// schedule (their attempt history kept). `None` requeues all. A
    /// delivery `refuse` has a reason against (its sink was removed), or
    /// whose template failed (nothing to send), stays dead and is reported
    /// with the reason.
    pub fn requeue(
        &self,
        id: Option<u64>,
        now_ms: u64,
        refuse: impl Fn(&DeliveryRecord) -> Option<String>,
    ) -> Result<Requeued, QueueError> {
        let mut out = Requeued::default();
        if let Some(id) = id {
            let records = self.dead_letter(id)?.into_iter().collect();
            self.replay(records, now_ms, &refuse, false, &mut out)?;
            return Ok(out);
        }
        let mut after = None;
        loop {
            let records = self.dead_page(after, REPLAY_BATCH)?;
            let Some(last) = records.last() else {
                return Ok(out);
            };
            after = Some(last.id);
            let full = records.len() == REPLAY_BATCH;
            self.replay(records, now_ms, &refuse, false, &mut out)?;
            if !full {
                return Ok(out);
            }
        }
    }

    /// Replays `records` (dead letters as read) in one transaction, as
    /// [`LocalStore::requeue`] describes, adding to `out`: those refused
    /// stay; one no longer in `dead` (expired or replayed since it was
    /// read) is not brought back. With `dry_run`, only counts.
    pub(super) fn replay(
        &self,
        records: Vec<DeliveryRecord>,
        now_ms: u64,
        refuse: &dyn Fn(&DeliveryRecord) -> Option<String>,
        dry_run: bool,
        out: &mut Requeued,
    ) -> Result<(), QueueError> {
        // (the record pending again, its `dead_at` key, its new key).
        let mut moves = Vec::new();
        for mut rec in records {
            let reason = if rec.frozen.is_none() {
                Some(super::super::NOTHING_TO_SEND.to_owned())
            } else {
                refuse(&rec)
            };
            if let Some(reason) = reason {
                out.refused.push(Refused { id: rec.id, reason });
                continue;
            }
            if dry_run {
                out.replayed += 1;
                out.sinks.insert(rec.sink);
                continue;
            }
            // Its entry in `dead_at`, dated as it died.
            let died = rec.dead_at_key();
            rec.due_ms = now_ms;
            rec.failures = 0;
            rec.reason = None;
            rec.dead_ms = None;
            moves.push((rec.due_key(), rec.encode(), died, rec));
        }
        if moves.is_empty() {
            return Ok(());
        }
        let trees = self.state.get()?;
        let moved = trees.db.write(|tx| {
            let mut deliveries = tx.open(&trees.deliveries)?;
            let mut dead = tx.open(&trees.dead)?;
            let mut dead_at = tx.open(&trees.dead_at)?;
            let mut order = tx.open(&trees.order)?;
            let mut ids = tx.open(&trees.pending_ids)?;
            let mut moved = Vec::with_capacity(moves.len());
            for (key, value, died, rec) in &moves {
                let id = rec.id.to_be_bytes();
                // Expired (or replayed) since it was read: gone, not
                // brought back.
                if dead.remove(&id[..])?.is_none() {
                    moved.push(None);
                    continue;
                }
                dead_at.remove(&died[..])?;
                let new = deliveries.insert(&key[..], value.as_slice())?.is_none();
                ids.insert(&id[..], &key[..])?;
                // Back in its place in event order: the head of its
                // key again if it is the oldest.
                if let Some(o) = rec.order_index_key() {
                    order.insert(&o[..], &key[..])?;
                }
                moved.push(Some(new));
            }
            Ok(moved)
        });
        let moved = self.state.check(moved)?;
        let mut counts = trees.counts_mut();
        for (done, (_, _, _, rec)) in moved.into_iter().zip(moves) {
            if let Some(new) = done {
                counts.dead_changed(&rec.sink, -1);
                counts.deliveries_changed(i64::from(new));
                out.replayed += 1;
                out.sinks.insert(rec.sink);
            }
        }
        Ok(())
    }

    /// Deletes up to `limit` dead letters that died before `cutoff_ms`,
    /// oldest first, in one transaction: the front of `dead_at`, so none
    /// younger is read. Returns how many went, by sink, and whether more
    /// may be due. An entry whose record is gone, or dated otherwise (it
    /// was replayed and died again: its own entry is later), is stale and
    /// only removed.
    pub fn prune_dead(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<(BTreeMap<String, u64>, bool), QueueError> {
        let trees = self.state.get()?;
        let due: Vec<Vec<u8>> = self.state.check(
            trees
                .dead_at
                .range(..dead_at_bound(cutoff_ms))
                .keys()
                .take(limit)
                .collect::<Result<_, _>>(),
        )?;
        let removed = trees.db.write(|tx| {
            let mut dead = tx.open(&trees.dead)?;
            let mut dead_at = tx.open(&trees.dead_at)?;
            let mut by_event = tx.open(&trees.by_event)?;
            let mut sinks = Vec::new();
            for k in &due {
                dead_at.remove(&k[..])?;
                let Some(id) = k.get(8..16) else { continue };
                let Some(v) = dead.get(id)?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let dated = DeliveryRecord::decode(&v)
                    .ok()
                    .filter(|rec| rec.dead_at_key()[..] == k[..]);
                if let Some(rec) = dated {
                    dead.remove(id)?;
                    by_event.remove(&rec.by_event_key()[..])?;
                    // A record that decodes has a sink.
                    sinks.push(DeliveryRecord::sink_of(&v).unwrap_or_default().to_owned());
                }
            }
            Ok(sinks)
        });
        let mut by = BTreeMap::new();
        let mut counts = trees.counts_mut();
        for sink in self.state.check(removed)? {
            counts.dead_changed(&sink, -1);
            *by.entry(sink).or_default() += 1;
        }
        Ok((by, due.len() == limit))
    }
}

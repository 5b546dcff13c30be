//! Lookups in the local backend: events and deliveries listed, dead
//! letters replayed by filter, re-routing (`add_missing`), and the
//! indexes they read.
//!
//! Events: what a listing shows of each is filed beside the log by the
//! writer (`listed.rs`), a file per segment that goes with it; the few
//! events acknowledged and not on file yet are read from the log itself.
//!
//! Deliveries: pending ones by id (`pending_ids`, to their `deliveries`
//! key), dead ones in `dead`, delivered ones in `delivered`, all by id,
//! and every one by event (`by_event`). A listing merges the states asked
//! for, newest first.
//!
//! Where no index answers a filter, a call reads at most [`SCAN_BUDGET`]
//! entries and says where to go on (`next_before`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use super::deliveries::{decode, REPLAY_BATCH};
use super::delivery::{dead_at_bound, sink_prefix};
use super::state::{Counts, Trees};
use super::store::{ROUTED_KEY, UNMATCHED_KEY};
use super::{listed, log};
use super::{DeliveryRecord, EventId, EventRecord, LocalStore, QueueError, Requeued};
use crate::queue::lookup::{
    page_size, Added, DeliveryFilter, DeliveryPage, DeliveryStatus, DeliveryView, EventFilter,
    EventPage, EventSummary,
};

/// Most entries a listing reads per call where no index answers its
/// filter (about 10 ms of reads of the state).
pub const SCAN_BUDGET: usize = 10_000;
/// Most deliveries `add_missing` stores per transaction.
const ADD_BATCH: usize = 500;

/// The big-endian id at the end of an index key.
fn id_at_end(k: &[u8]) -> Option<u64> {
    let at = k.len().checked_sub(8)?;
    Some(u64::from_be_bytes(k[at..].try_into().ok()?))
}

/// An event listing under way, newest first.
struct Scan<'f> {
    filter: &'f EventFilter,
    limit: usize,
    /// Entries that may still be read where no index answers.
    budget: usize,
    items: Vec<EventSummary>,
    next_before: Option<u64>,
}

impl<'f> Scan<'f> {
    /// Looks at one event (each older than the last); whether to go on.
    /// `counted`: read by a scan (not found by its delivery id).
    fn look(&mut self, s: EventSummary, counted: bool) -> bool {
        let id = s.id;
        if self.filter.matches(&s) {
            self.items.push(s);
            if self.items.len() == self.limit {
                self.next_before = Some(id);
                return false;
            }
        }
        if counted {
            self.budget -= 1;
            if self.budget == 0 {
                self.next_before = Some(id);
                return false;
            }
        }
        true
    }

    /// The delivery id to look up by index, if any (an empty one is not
    /// filed).
    fn by_delivery_id(&self) -> Option<&'f str> {
        self.filter.delivery_id.as_deref().filter(|d| !d.is_empty())
    }
}

impl LocalStore {
    /// [`Queue::events`](super::Queue::events).
    pub fn events_page(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, QueueError> {
        let acked = self.shared.acked().0;
        let filed = self.shared.indexed().0.min(acked);
        let hi = before.map_or(acked, |b| b.min(acked));
        let mut scan = Scan {
            filter,
            limit: page_size(limit),
            budget: SCAN_BUDGET,
            items: Vec::new(),
            next_before: None,
        };
        // Newest first: not on file yet (the log), then filed.
        if self.log_stretch(filed, hi, &mut scan)? {
            self.filed_stretch(hi.min(filed), &mut scan)?;
        }
        Ok(EventPage {
            items: scan.items,
            next_before: scan.next_before,
        })
    }

    /// Looks at the filed events before `hi` (`listed.rs`), newest
    /// first, a segment at a time. By delivery id every segment is
    /// looked at (one that does not hold it is not decoded); otherwise
    /// each event read counts against the budget.
    fn filed_stretch(&self, hi: u64, scan: &mut Scan) -> Result<(), QueueError> {
        let by_id = scan.by_delivery_id();
        let segments = log::segments(&self.log_dir).map_err(QueueError::Storage)?;
        for &seq in segments.iter().rev() {
            if log::id_of(seq, 0).0 >= hi {
                continue;
            }
            let filed = listed::read(&self.log_dir, seq, by_id).map_err(QueueError::Storage)?;
            for s in filed.into_iter().rev().filter(|s| s.id < hi) {
                if !scan.look(s, by_id.is_none()) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Looks at the events of the log in [lo, hi) (`lo` where a frame
    /// starts), newest first, a segment at a time; whether to go on.
    /// Nothing past the acknowledged end is read.
    fn log_stretch(&self, lo: u64, hi: u64, scan: &mut Scan) -> Result<bool, QueueError> {
        if lo >= hi {
            return Ok(true);
        }
        let acked = self.shared.acked();
        let (acked_seq, _) = log::place_of(acked);
        let segments = log::segments(&self.log_dir).map_err(QueueError::Storage)?;
        for &seq in segments.iter().rev() {
            let (start, end) = (log::id_of(seq, 0).0, log::id_of(seq + 1, 0).0);
            if start >= hi || seq > acked_seq {
                continue;
            }
            if end <= lo {
                break;
            }
            let until = match seq == acked_seq {
                true => acked,
                false => EventId(end),
            };
            let (found, _) = self
                .lookup_reader
                .page(EventId(lo.max(start)), until, usize::MAX)?;
            for f in found.iter().rev().filter(|f| f.id.0 < hi) {
                let log::LogEntry::V1 { record, .. } = &f.entry;
                // Unreadable: the router passes it over too.
                let Ok(s) = EventRecord::summary(record.as_ref()) else {
                    continue;
                };
                let summary = EventSummary {
                    id: f.id.0,
                    received_ms: s.received_at_ms,
                    source: s.source.to_owned(),
                    provider: s.provider.to_owned(),
                    event: s.event.to_owned(),
                    delivery_id: s.delivery_id.to_owned(),
                };
                if !scan.look(summary, true) {
                    return Ok(false);
                }
            }
            // Readers keep no descriptor of a segment behind the router.
            if seq != acked_seq {
                self.lookup_reader.forget(seq);
            }
        }
        Ok(true)
    }

    /// [`Queue::deliveries`](super::Queue::deliveries).
    pub fn deliveries_page(
        &self,
        filter: &DeliveryFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeliveryPage, QueueError> {
        let limit = page_size(limit);
        let hi = before.unwrap_or(u64::MAX);
        let trees = self.state.get()?;
        let mut items = Vec::new();
        if let Some(event) = filter.event_id {
            for id in self.ids_of_event(&trees, event)?.into_iter().rev() {
                if id >= hi {
                    continue;
                }
                let Some(view) = self.find(&trees, id)? else {
                    continue;
                };
                if filter.matches(view.status, &view.record) {
                    items.push(view);
                    if items.len() == limit {
                        return Ok(DeliveryPage {
                            items,
                            next_before: Some(id),
                        });
                    }
                }
            }
            return Ok(DeliveryPage {
                items,
                next_before: None,
            });
        }
        let states = match filter.status {
            Some(s) => vec![s],
            None => vec![
                DeliveryStatus::Pending,
                DeliveryStatus::Delivered,
                DeliveryStatus::Dead,
            ],
        };
        type Entries = Box<dyn Iterator<Item = Result<super::kv::Entry, QueueError>>>;
        let mut sources: Vec<(DeliveryStatus, std::iter::Peekable<Entries>)> = states
            .into_iter()
            .map(|s| {
                let tree = match s {
                    DeliveryStatus::Pending => &trees.pending_ids,
                    DeliveryStatus::Delivered => &trees.delivered,
                    DeliveryStatus::Dead => &trees.dead,
                };
                let entries: Entries = Box::new(tree.range(..hi.to_be_bytes()).rev());
                (s, entries.peekable())
            })
            .collect();
        let sink = filter.sink.as_deref().map(sink_prefix);
        let mut budget = SCAN_BUDGET;
        loop {
            // The source whose next entry has the highest id (one that
            // failed first, to report it).
            let (mut best, mut failed) = (None::<(usize, u64)>, None);
            for (i, (_, entries)) in sources.iter_mut().enumerate() {
                match entries.peek() {
                    None => {}
                    Some(Err(_)) => failed = failed.or(Some(i)),
                    Some(Ok((k, _))) => {
                        let id = id_at_end(k).unwrap_or_default();
                        if best.is_none_or(|(_, b)| id > b) {
                            best = Some((i, id));
                        }
                    }
                }
            }
            let Some(i) = failed.or(best.map(|(i, _)| i)) else {
                return Ok(DeliveryPage {
                    items,
                    next_before: None,
                });
            };
            let status = sources[i].0;
            let (k, v) = self.state.check(sources[i].1.next().expect("peeked"))?;
            let id = id_at_end(&k).unwrap_or_default();
            let rec = match status {
                DeliveryStatus::Pending => {
                    // `v` is its key in `deliveries`, which starts with its sink.
                    match sink.as_ref().is_none_or(|p| v.starts_with(p)) {
                        true => self
                            .state
                            .check(trees.deliveries.get(&v))?
                            .map(|r| decode(&v, &r))
                            .transpose()?,
                        false => None,
                    }
                }
                _ => match DeliveryRecord::head(&v).is_none_or(|h| filter.may_match(&h)) {
                    true => Some(decode(&k, &v)?),
                    false => None,
                },
            };
            if let Some(record) = rec.filter(|r| filter.matches(status, r)) {
                items.push(DeliveryView { status, record });
                if items.len() == limit {
                    return Ok(DeliveryPage {
                        items,
                        next_before: Some(id),
                    });
                }
            }
            budget -= 1;
            if budget == 0 {
                return Ok(DeliveryPage {
                    items,
                    next_before: Some(id),
                });
            }
        }
    }

    /// The ids of every delivery of `event` (any state), ascending.
    fn ids_of_event(&self, trees: &Trees, event: u64) -> Result<Vec<u64>, QueueError> {
        let mut ids = Vec::new();
        for k in trees.by_event.scan_prefix(event.to_be_bytes()).keys() {
            ids.extend(id_at_end(&self.state.check(k)?));
        }
        Ok(ids)
    }

    /// Delivery `id` in whatever state it is. Looked for pending, then
    /// dead, then delivered (the order it moves in); once more when found
    /// nowhere (it moved back from dead meanwhile: a replay).
    fn find(&self, trees: &Trees, id: u64) -> Result<Option<DeliveryView>, QueueError> {
        let key = id.to_be_bytes();
        for _ in 0..2 {
            if let Some(due) = self.state.check(trees.pending_ids.get(key))? {
                if let Some(v) = self.state.check(trees.deliveries.get(&due))? {
                    return Ok(Some(DeliveryView {
                        status: DeliveryStatus::Pending,
                        record: decode(&due, &v)?,
                    }));
                }
            }
            for (tree, status) in [
                (&trees.dead, DeliveryStatus::Dead),
                (&trees.delivered, DeliveryStatus::Delivered),
            ] {
                if let Some(v) = self.state.check(tree.get(key))? {
                    return Ok(Some(DeliveryView {
                        status,
                        record: decode(&key, &v)?,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// [`Queue::requeue_where`](super::Queue::requeue_where): dead letters
    /// by id, a transaction per [`REPLAY_BATCH`] of those that match.
    pub fn requeue_where(
        &self,
        filter: &DeliveryFilter,
        now_ms: u64,
        refuse: &dyn Fn(&DeliveryRecord) -> Option<String>,
        dry_run: bool,
    ) -> Result<Requeued, QueueError> {
        let filter = filter.dead_only();
        let mut out = Requeued::default();
        let trees = self.state.get()?;
        if let Some(event) = filter.event_id {
            let mut records = Vec::new();
            for id in self.ids_of_event(&trees, event)? {
                let key = id.to_be_bytes();
                if let Some(v) = self.state.check(trees.dead.get(key))? {
                    let rec = decode(&key, &v)?;
                    if filter.matches(DeliveryStatus::Dead, &rec) {
                        records.push(rec);
                    }
                }
            }
            self.replay(records, now_ms, refuse, dry_run, &mut out)?;
            return Ok(out);
        }
        let mut from = 0u64;
        loop {
            let mut batch = Vec::new();
            let mut more = false;
            for kv in trees.dead.range(from.to_be_bytes()..) {
                let (k, v) = self.state.check(kv)?;
                let id = id_at_end(&k).unwrap_or_default();
                from = id.saturating_add(1);
                if DeliveryRecord::head(&v).is_some_and(|h| !filter.may_match(&h)) {
                    continue;
                }
                let rec = decode(&k, &v)?;
                if filter.matches(DeliveryStatus::Dead, &rec) {
                    batch.push(rec);
                    if batch.len() == REPLAY_BATCH {
                        more = id < u64::MAX;
                        break;
                    }
                }
            }
            self.replay(batch, now_ms, refuse, dry_run, &mut out)?;
            if !more {
                return Ok(out);
            }
        }
    }

    /// [`Queue::add_missing`](super::Queue::add_missing): the deliveries of
    /// whole events, a transaction per batch of up to [`ADD_BATCH`].
    pub fn add_missing(&self, deliveries: Vec<DeliveryRecord>) -> Result<Added, QueueError> {
        let mut by_event: BTreeMap<u64, Vec<DeliveryRecord>> = BTreeMap::new();
        for d in deliveries {
            by_event.entry(d.event_id).or_default().push(d);
        }
        let mut out = Added::default();
        let mut batch = Vec::new();
        let mut size = 0;
        for (event, ds) in by_event {
            if size > 0 && size + ds.len() > ADD_BATCH {
                self.add_batch(std::mem::take(&mut batch), &mut out)?;
                size = 0;
            }
            size += ds.len();
            batch.push((event, ds));
        }
        if size > 0 {
            self.add_batch(batch, &mut out)?;
        }
        Ok(out)
    }

    /// Stores what of `events`' deliveries is missing, in one transaction
    /// with the router's cursor (held meanwhile: an event before it is
    /// routed and stays so, and the cursor saved with them makes sure a
    /// restart does not route it again beside them).
    fn add_batch(
        &self,
        events: Vec<(u64, Vec<DeliveryRecord>)>,
        out: &mut Added,
    ) -> Result<(), QueueError> {
        let mut saved = self.cursor_saved.lock().expect("cursor lock");
        let cursor = self.routed_upto.load(Ordering::Acquire);
        let trees = self.state.get()?;
        let mut new = Vec::new();
        for (event, ds) in events {
            if event >= cursor {
                // Not routed yet: routing makes its deliveries.
                out.existing += ds.len() as u64;
                continue;
            }
            let mut have = HashSet::new();
            for id in self.ids_of_event(&trees, event)? {
                if let Some(view) = self.find(&trees, id)? {
                    let r = view.record;
                    have.insert((r.route, r.sink, r.item));
                }
            }
            for mut d in ds {
                if !have.insert((d.route.clone(), d.sink.clone(), d.item)) {
                    out.existing += 1;
                    continue;
                }
                d.id = self.next_delivery_id()?;
                new.push(d);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let unmatched = self.unmatched.load(Ordering::Acquire);
        let save = saved.1 != cursor;
        let written = trees.db.write(|tx| {
            let mut deliveries = tx.open(&trees.deliveries)?;
            let mut dead = tx.open(&trees.dead)?;
            let mut dead_at = tx.open(&trees.dead_at)?;
            let mut order = tx.open(&trees.order)?;
            let mut ids = tx.open(&trees.pending_ids)?;
            let mut by_event = tx.open(&trees.by_event)?;
            let mut meta = tx.open(&trees.meta)?;
            let mut made = Counts::default();
            for d in &new {
                let id = d.id.to_be_bytes();
                by_event.insert(&d.by_event_key()[..], &[][..])?;
                if d.dead_ms.is_some() {
                    if dead.insert(&id[..], d.encode().as_slice())?.is_none() {
                        made.dead_changed(&d.sink, 1);
                    }
                    dead_at.insert(&d.dead_at_key()[..], &[][..])?;
                    continue;
                }
                let key = d.due_key();
                // With its whole request: routed again, an event may be
                // older than what the log keeps (`refs` is the router's).
                if deliveries
                    .insert(&key[..], d.encode().as_slice())?
                    .is_none()
                {
                    made.deliveries += 1;
                }
                ids.insert(&id[..], &key[..])?;
                if let Some(o) = d.order_index_key() {
                    order.insert(&o[..], &key[..])?;
                }
            }
            if save {
                meta.insert(UNMATCHED_KEY, &unmatched.to_be_bytes()[..])?;
                meta.insert(ROUTED_KEY, &cursor.to_be_bytes()[..])?;
            }
            Ok(made)
        });
        trees.counted(&self.state.check(written)?);
        if save {
            *saved = (std::time::Instant::now(), cursor);
        }
        out.created += new.len() as u64;
        Ok(())
    }

    /// Deletes up to `limit` deliveries delivered before `cutoff_ms` from
    /// the history, oldest first, in one transaction (the front of
    /// `delivered_at`); returns how many went and whether more may be due.
    pub fn prune_delivered(&self, cutoff_ms: u64, limit: usize) -> Result<(u64, bool), QueueError> {
        let trees = self.state.get()?;
        let due: Vec<Vec<u8>> = self.state.check(
            trees
                .delivered_at
                .range(..dead_at_bound(cutoff_ms))
                .keys()
                .take(limit)
                .collect::<Result<_, _>>(),
        )?;
        let removed = trees.db.write(|tx| {
            let mut delivered = tx.open(&trees.delivered)?;
            let mut delivered_at = tx.open(&trees.delivered_at)?;
            let mut by_event = tx.open(&trees.by_event)?;
            let mut n = 0;
            for k in &due {
                delivered_at.remove(&k[..])?;
                let Some(id) = k.get(8..16) else { continue };
                let head = delivered
                    .remove(id)?
                    .map(|v| DeliveryRecord::head(v.value()).map(|h| h.event_id));
                if let Some(event) = head {
                    if let Some(event) = event {
                        let mut by = [0; 16];
                        by[..8].copy_from_slice(&event.to_be_bytes());
                        by[8..].copy_from_slice(id);
                        by_event.remove(&by[..])?;
                    }
                    n += 1;
                }
            }
            Ok(n)
        });
        Ok((self.state.check(removed)?, due.len() == limit))
    }
}

//! What operators look up (issue #11): the events received, routed or
//! not, and the deliveries in every state (pending, delivered and kept
//! for `server.retention`, dead), by filters both backends answer alike.
//!
//! Pages go newest first by id, below a `before` id. A backend reads a
//! bounded stretch per call for the filters it has no index for: a page
//! may then hold fewer than asked while more may match further down, and
//! its `next_before` says where to go on (`None`: nothing more).

use serde::{Deserialize, Serialize};

use super::DeliveryRecord;

/// Most items a page holds, whatever is asked.
pub const MAX_PAGE: usize = 1000;

/// Which events: every field given must match (strings exactly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    pub source: Option<String>,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    /// Received at or after (ms).
    pub since_ms: Option<u64>,
    /// Received before (ms).
    pub until_ms: Option<u64>,
}

/// An event as listed (its headers and body: `Queue::event`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: u64,
    pub received_ms: u64,
    pub source: String,
    pub provider: String,
    pub event: String,
    /// The provider's delivery id; empty when it sends none.
    pub delivery_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt, or being attempted.
    Pending,
    /// Delivered; kept for `server.retention`.
    Delivered,
    /// Failed for good; kept for `server.dead_letter_retention`.
    Dead,
}

/// Which deliveries: every field given must match (strings exactly).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFilter {
    pub event_id: Option<u64>,
    pub source: Option<String>,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    pub route: Option<String>,
    pub sink: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// The time range reads when a delivery reached its status: made
    /// (`created_ms`) if pending or when no status is given, delivered
    /// (its last attempt) if delivered, died (`dead_ms`) if dead. At or
    /// after `since_ms`, before `until_ms`.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

/// A delivery as listed: its state and its record as it now is.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub status: DeliveryStatus,
    pub record: DeliveryRecord,
}

/// What `Queue::add_missing` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Added {
    /// Deliveries stored.
    pub created: u64,
    /// Deliveries left out: their (event, route, sink, item) exists
    /// already, or their event is not routed yet (routing makes them).
    pub existing: u64,
}

/// A page of events, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventPage {
    pub items: Vec<EventSummary>,
    /// More may match below this id: ask again with it as `before`.
    /// `None`: nothing more matches.
    pub next_before: Option<u64>,
}

/// A page of deliveries, newest first by id.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    /// As [`EventPage::next_before`].
    pub next_before: Option<u64>,
}

impl EventFilter {
    pub fn matches(&self, e: &EventSummary) -> bool {
        same(&self.source, &e.source)
            && same(&self.event, &e.event)
            && same(&self.delivery_id, &e.delivery_id)
            && in_range(self.since_ms, self.until_ms, e.received_ms)
    }
}

impl DeliveryFilter {
    /// When `rec`, in `status`, reached what the time range reads (see
    /// [`DeliveryFilter::since_ms`]).
    pub fn time_of(&self, status: DeliveryStatus, rec: &DeliveryRecord) -> u64 {
        match (self.status, status) {
            (Some(DeliveryStatus::Delivered), _) => rec.delivered_ms(),
            (Some(DeliveryStatus::Dead), _) => rec.dead_at(),
            _ => rec.created_ms,
        }
    }

    /// Whether `rec`, in `status`, is one of those asked for.
    pub fn matches(&self, status: DeliveryStatus, rec: &DeliveryRecord) -> bool {
        self.status.is_none_or(|s| s == status)
            && self.event_id.is_none_or(|e| e == rec.event_id)
            && same(&self.source, &rec.source)
            && same(&self.event, &rec.event)
            && same(&self.delivery_id, &rec.delivery_id)
            && same(&self.route, &rec.route)
            && same(&self.sink, &rec.sink)
            && in_range(self.since_ms, self.until_ms, self.time_of(status, rec))
    }

    /// Whether a stored record whose head is `h` may match (everything
    /// but its state and time), before it is decoded whole.
    pub(crate) fn may_match(&self, h: &super::delivery::Head<'_>) -> bool {
        self.event_id.is_none_or(|e| e == h.event_id)
            && same(&self.source, h.source)
            && same(&self.event, h.event)
            && same(&self.delivery_id, h.delivery_id)
            && same(&self.route, h.route)
            && same(&self.sink, h.sink)
    }

    /// The same filter, of dead letters only (what a replay selects).
    pub(crate) fn dead_only(&self) -> DeliveryFilter {
        DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            ..self.clone()
        }
    }

    pub(crate) fn has_time(&self) -> bool {
        self.since_ms.is_some() || self.until_ms.is_some()
    }
}

fn same(want: &Option<String>, got: &str) -> bool {
    want.as_deref().is_none_or(|w| w == got)
}

fn in_range(since: Option<u64>, until: Option<u64>, t: u64) -> bool {
    since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u)
}

/// The page made of what matched among what a backend read, newest
/// first: `matched` holds (id, item) of what passed every filter; `cut`
/// is the lowest id read when not everything below `before` was read
/// (what lies below it was not looked at: the next page starts there).
pub(crate) fn page_of<T>(
    mut matched: Vec<(u64, T)>,
    cut: Option<u64>,
    limit: usize,
) -> (Vec<T>, Option<u64>) {
    matched.sort_by_key(|m| std::cmp::Reverse(m.0));
    if let Some(cut) = cut {
        matched.retain(|(id, _)| *id >= cut);
    }
    if matched.len() >= limit {
        matched.truncate(limit);
        let last = matched.last().map(|(id, _)| *id);
        return (matched.into_iter().map(|(_, t)| t).collect(), last);
    }
    (matched.into_iter().map(|(_, t)| t).collect(), cut)
}

/// A page size asked for, within 1 and [`MAX_PAGE`].
pub(crate) fn page_size(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_limit_or_where_reading_stopped() {
        let found = || vec![(9, 'a'), (3, 'c'), (7, 'b')];
        assert_eq!(page_of(found(), None, 10), (vec!['a', 'b', 'c'], None));
        assert_eq!(page_of(found(), None, 2), (vec!['a', 'b'], Some(7)));
        // Read down to 5 only: 3 is beyond what was read (a later page
        // finds it again).
        assert_eq!(page_of(found(), Some(5), 10), (vec!['a', 'b'], Some(5)));
        assert_eq!(page_of(found(), Some(5), 1), (vec!['a'], Some(9)));
        assert_eq!(page_of(Vec::<(u64, ())>::new(), None, 1), (vec![], None));
    }

    #[test]
    fn the_time_range_reads_the_time_of_the_status_asked_for() {
        let mut rec = crate::queue::delivery::tests::sample(1, 500);
        rec.created_ms = 100;
        rec.dead_ms = Some(900);
        let mut f = DeliveryFilter {
            since_ms: Some(100),
            until_ms: Some(101),
            ..Default::default()
        };
        assert!(f.matches(DeliveryStatus::Dead, &rec), "made at 100");
        f.status = Some(DeliveryStatus::Dead);
        assert!(!f.matches(DeliveryStatus::Dead, &rec), "died at 900");
        (f.since_ms, f.until_ms) = (Some(900), None);
        assert!(f.matches(DeliveryStatus::Dead, &rec));
        assert!(!f.matches(DeliveryStatus::Pending, &rec), "not dead");
    }
}

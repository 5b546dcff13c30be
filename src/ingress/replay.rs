//! The replay cache: verified signatures of timestamped schemes (Zendesk,
//! Standard Webhooks, signed GitLab, `hmac` with `timestamp_header`), each
//! kept until its signed timestamp leaves the `max_skew` window, after which
//! `verify` refuses the request as stale anyway. A signature seen again
//! within that time is a duplicate, whatever unsigned header (Zendesk's
//! invocation id) was changed around it: the queue's dedupe key cannot
//! catch that, since a genuine retry keeps the id but is signed anew.
//!
//! It lives in memory only: a restart inside the skew window forgets it
//! (the queue's dedupe keys still hold for everything keyed on a signed id
//! or on the body). It holds at most `capacity` signatures; beyond that the
//! ones closest to expiry are forgotten first, with a warning.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::queue::EventId;
use crate::verify::ReplayMark;

/// Signatures held at most: ~150 bytes each, so ~15 MB when full. Beyond
/// 100,000 timestamped requests inside one skew window (over 160/s for a
/// 5-minute window), the soonest to expire are dropped.
pub const CAPACITY: usize = 100_000;

/// Least time between two "cache full" warnings.
const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// The same keys, by expiry, to forget the expired (and, when full, the
    /// soonest to expire) first.
    by_expiry: BTreeSet<(SystemTime, [u8; 32])>,
    warned: Option<Instant>,
}

struct Entry {
    until: SystemTime,
    state: State,
}

#[derive(Clone, Copy)]
enum State {
    /// The first request with this signature is being stored now.
    InFlight,
    /// Stored as this event (or found to be a duplicate of it).
    Stored(EventId),
}

/// What the cache says about a signature.
pub enum Claim<'c> {
    /// Not seen: the request goes on, holding the claim until it is stored.
    Fresh(Ticket<'c>),
    /// Seen and stored as this event: a duplicate (200).
    Seen(EventId),
    /// The first request with this signature is still being stored: the
    /// caller answers "retry later" rather than a 200 that could hide the
    /// event if that first store fails.
    InFlight,
}

/// A claim on a signature. Dropped without [`Ticket::stored`] (the event was
/// not stored, or the request was abandoned) it frees the signature again,
/// so the provider's retry of the same request is not refused.
pub struct Ticket<'c> {
    cache: &'c ReplayCache,
    key: [u8; 32],
    done: bool,
}

impl ReplayCache {
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Looks `mark` up for `source` and claims it when new.
    pub fn claim(&self, source: &str, mark: &ReplayMark, now: SystemTime) -> Claim<'_> {
        let key = key(source, mark);
        let mut inner = self.inner.lock().expect("replay cache lock");
        inner.expire(now);
        if let Some(entry) = inner.entries.get(&key) {
            return match entry.state {
                State::InFlight => Claim::InFlight,
                State::Stored(id) => Claim::Seen(id),
            };
        }
        if inner.entries.len() >= self.capacity {
            inner.evict_soonest();
            let quiet = inner.warned.is_some_and(|t| t.elapsed() < WARN_EVERY);
            if !quiet {
                inner.warned = Some(Instant::now());
                tracing::warn!(
                    capacity = self.capacity,
                    "replay cache full: the signatures closest to expiry are forgotten early"
                );
            }
        }
        inner.entries.insert(
            key,
            Entry {
                until: mark.until,
                state: State::InFlight,
            },
        );
        inner.by_expiry.insert((mark.until, key));
        Claim::Fresh(Ticket {
            cache: self,
            key,
            done: false,
        })
    }

    /// Signatures held now (expired ones may still count until the next claim).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("replay cache lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now: SystemTime) {
        while let Some(&(until, key)) = self.by_expiry.first() {
            if until >= now {
                break;
            }
            self.by_expiry.pop_first();
            self.entries.remove(&key);
        }
    }

    fn evict_soonest(&mut self) {
        if let Some((_, key)) = self.by_expiry.pop_first() {
            self.entries.remove(&key);
        }
    }

    fn remove(&mut self, key: &[u8; 32]) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&(entry.until, *key));
        }
    }
}

impl Ticket<'_> {
    /// The request's event is stored (queued, or a duplicate of `id`): later
    /// copies of the signature answer as duplicates of `id`.
    pub fn stored(mut self, id: EventId) {
        self.done = true;
        let mut inner = self.cache.inner.lock().expect("replay cache lock");
        if let Some(entry) = inner.entries.get_mut(&self.key) {
            entry.state = State::Stored(id);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.cache.inner.lock().expect("replay cache lock");
        if inner
            .entries
            .get(&self.key)
            .is_some_and(|e| matches!(e.state, State::InFlight))
        {
            inner.remove(&self.key);
        }
    }
}

/// The cache key: the source and the signature's digest, hashed together so
/// two sources sharing a secret do not share signatures.
fn key(source: &str, mark: &ReplayMark) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((source.len() as u64).to_be_bytes());
    h.update(source.as_bytes());
    h.update(mark.digest);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(mac: &[u8], until: SystemTime) -> ReplayMark {
        ReplayMark::new(mac, until)
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_signature_is_fresh_once_then_in_flight_then_seen() {
        let cache = ReplayCache::new(10);
        let m = mark(b"sig", t(300));
        let Claim::Fresh(ticket) = cache.claim("z", &m, t(0)) else {
            panic!("first claim is fresh")
        };
        assert!(matches!(cache.claim("z", &m, t(1)), Claim::InFlight));
        // Another source with the same signature is its own.
        assert!(matches!(cache.claim("y", &m, t(1)), Claim::Fresh(_)));
        ticket.stored(EventId(7));
        assert!(matches!(
            cache.claim("z", &m, t(2)),
            Claim::Seen(EventId(7))
        ));
        // Past its window the signature is forgotten (verify refuses it).
        assert!(matches!(cache.claim("z", &m, t(301)), Claim::Fresh(_)));
    }

    #[test]
    fn an_unstored_claim_frees_the_signature() {
        let cache = ReplayCache::new(10);
        let m = mark(b"sig", t(300));
        let claim = cache.claim("z", &m, t(0));
        assert!(matches!(claim, Claim::Fresh(_)));
        drop(claim);
        assert!(cache.is_empty());
        assert!(matches!(cache.claim("z", &m, t(0)), Claim::Fresh(_)));
    }

    #[test]
    fn when_full_the_soonest_to_expire_goes_first() {
        let cache = ReplayCache::new(2);
        for (mac, until) in [(&b"a"[..], 100), (b"b", 50)] {
            let Claim::Fresh(ticket) = cache.claim("z", &mark(mac, t(until)), t(0)) else {
                panic!()
            };
            ticket.stored(EventId(until));
        }
        let Claim::Fresh(c) = cache.claim("z", &mark(b"c", t(200)), t(1)) else {
            panic!()
        };
        c.stored(EventId(200));
        assert_eq!(cache.len(), 2);
        assert!(matches!(
            cache.claim("z", &mark(b"a", t(100)), t(2)),
            Claim::Seen(EventId(100))
        ));
        assert!(matches!(
            cache.claim("z", &mark(b"b", t(50)), t(2)),
            Claim::Fresh(_)
        ));
    }
}

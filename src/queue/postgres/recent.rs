//! The records this instance committed lately, kept in memory so that
//! its router takes them from here instead of reading them back from the
//! database: an event is usually routed by the instance that stored it,
//! milliseconds after. A stored record never changes, so the copy here is
//! the row's. One routed by another instance, or older than what fits,
//! is read from the database as before.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Most record bytes kept; past it the oldest go.
const BYTES: usize = 8 << 20;

#[derive(Default)]
pub struct Recent(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    /// By event id: the oldest first.
    records: BTreeMap<i64, Vec<u8>>,
    bytes: usize,
}

impl Recent {
    /// Keeps `record`, stored (committed) under `id`.
    pub fn put(&self, id: i64, record: Vec<u8>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.bytes += record.len();
        if let Some(old) = kept.records.insert(id, record) {
            kept.bytes -= old.len();
        }
        while kept.bytes > BYTES {
            let Some((_, gone)) = kept.records.pop_first() else {
                break;
            };
            kept.bytes -= gone.len();
        }
    }

    /// The record of event `id`, if kept; it is kept no longer (an event
    /// is routed once).
    pub fn take(&self, id: i64) -> Option<Vec<u8>> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let record = kept.records.remove(&id)?;
        kept.bytes -= record.len();
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_its_bytes() {
        let recent = Recent::default();
        let big = BYTES / 4;
        for id in 1..=5 {
            recent.put(id, vec![id as u8; big]);
        }
        // Five quarters do not fit: the oldest went.
        assert_eq!(recent.take(1), None);
        assert_eq!(recent.take(2), Some(vec![2; big]));
        assert_eq!(recent.take(2), None, "taken once");
        recent.put(6, vec![6; big]);
        assert_eq!(recent.take(3), Some(vec![3; big]));
        assert_eq!(recent.take(6), Some(vec![6; big]));
        assert_eq!(recent.0.lock().unwrap().bytes, 2 * big);
    }
}

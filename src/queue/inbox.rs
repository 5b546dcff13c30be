//! How accepted events sit in the `inbox` tree.
//!
//! One commit's events form a stream of frames — event id (u64 BE), length
//! (u32 BE), encoded record — cut into parts of at most [`PART_BYTES`].
//! Part keys are the batch's first event id (u64 BE) then the part number
//! (u32 BE), so key order is arrival order and a batch's parts are
//! adjacent. All parts of a batch are written in one atomic sled batch.

use super::{EventId, QueueError};

/// Largest sled value the inbox writes. sled moves values above a quarter of
/// its segment size into blob files that it does not fsync; a leaf holds up
/// to 17 values, so 64 KiB parts keep every node far below that.
pub const PART_BYTES: usize = 64 << 10;

const FRAME_HEADER: usize = 12;

/// One commit's events, framed.
#[derive(Debug, Default)]
pub struct Stream {
    first: Option<EventId>,
    bytes: Vec<u8>,
}

impl Stream {
    pub fn push(&mut self, id: EventId, record: &[u8]) {
        self.first.get_or_insert(id);
        self.bytes.extend_from_slice(&id.0.to_be_bytes());
        self.bytes.extend_from_slice(
            &u32::try_from(record.len())
                .expect("records are far below 4 GiB")
                .to_be_bytes(),
        );
        self.bytes.extend_from_slice(record);
    }

    /// The (key, value) pairs to write; empty when no event was pushed.
    pub fn parts(&self) -> Vec<([u8; 12], &[u8])> {
        let Some(first) = self.first else {
            return Vec::new();
        };
        self.bytes
            .chunks(PART_BYTES)
            .enumerate()
            .map(|(n, part)| (part_key(first, n as u32), part))
            .collect()
    }
}

fn part_key(first: EventId, part: u32) -> [u8; 12] {
    let mut k = [0; 12];
    k[..8].copy_from_slice(&first.0.to_be_bytes());
    k[8..].copy_from_slice(&part.to_be_bytes());
    k
}

/// Reassembles batches from inbox entries in key order and yields each
/// event's id and encoded record.
pub fn read_events(
    entries: impl Iterator<Item = Result<(sled::IVec, sled::IVec), sled::Error>>,
    mut each: impl FnMut(EventId, &[u8]) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    let mut batch: Option<(u64, Vec<u8>)> = None;
    for entry in entries {
        let (key, value) = entry?;
        let first = key
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| corrupt(&key, "inbox key shorter than 8 bytes"))?;
        match &mut batch {
            Some((id, bytes)) if *id == first => bytes.extend_from_slice(&value),
            _ => {
                if let Some((_, bytes)) = batch.take() {
                    frames(&bytes, &mut each)?;
                }
                batch = Some((first, value.to_vec()));
            }
        }
    }
    if let Some((_, bytes)) = batch {
        frames(&bytes, &mut each)?;
    }
    Ok(())
}

fn frames(
    mut bytes: &[u8],
    each: &mut impl FnMut(EventId, &[u8]) -> Result<(), QueueError>,
) -> Result<(), QueueError> {
    while !bytes.is_empty() {
        if bytes.len() < FRAME_HEADER {
            return Err(corrupt(bytes, "truncated frame header"));
        }
        let id = EventId(u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")));
        let len = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let record = bytes
            .get(FRAME_HEADER..FRAME_HEADER + len)
            .ok_or_else(|| corrupt(&bytes[..8], "frame longer than its batch"))?;
        each(id, record)?;
        bytes = &bytes[FRAME_HEADER + len..];
    }
    Ok(())
}

fn corrupt(key: &[u8], reason: &str) -> QueueError {
    QueueError::Corrupt {
        key: hex::encode(key),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(tree_entries: Vec<([u8; 12], Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let iter = tree_entries
            .into_iter()
            .map(|(k, v)| Ok((sled::IVec::from(&k[..]), sled::IVec::from(v))));
        read_events(iter, |id, r| {
            out.push((id.0, r.to_vec()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_split_into_parts_and_reassemble() {
        let big = vec![7u8; PART_BYTES * 2 + 5];
        let mut a = Stream::default();
        a.push(EventId(10), b"first");
        a.push(EventId(11), &big);
        a.push(EventId(12), b"third");
        let mut b = Stream::default();
        b.push(EventId(13), b"next batch");
        let mut entries: Vec<([u8; 12], Vec<u8>)> = Vec::new();
        for s in [&a, &b] {
            for (k, v) in s.parts() {
                assert!(v.len() <= PART_BYTES);
                entries.push((k, v.to_vec()));
            }
        }
        assert_eq!(a.parts().len(), 3);
        let events = read_all(entries);
        let ids: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![10, 11, 12, 13]);
        assert_eq!(events[1].1, big);
        assert_eq!(events[3].1, b"next batch");
    }

    #[test]
    fn a_missing_part_is_corruption_not_a_panic() {
        let mut a = Stream::default();
        a.push(EventId(1), &vec![1u8; PART_BYTES + 100]);
        let parts: Vec<_> = a
            .parts()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .take(1)
            .collect();
        let iter = parts
            .into_iter()
            .map(|(k, v)| Ok((sled::IVec::from(&k[..]), sled::IVec::from(v))));
        assert!(read_events(iter, |_, _| Ok(())).is_err());
    }
}

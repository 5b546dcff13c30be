//! What a listing shows of each event, filed beside the log: segment
//! `{seq:016x}.seg` has `{seq:016x}.events`, one record per frame (its id
//! and length, and the event's time received, source, provider, event
//! type and delivery id, or that its record cannot be read), appended by
//! the writer with the dedupe keys once the events are durable, and never
//! synced on their own. As for the keys, the log is the truth: at start,
//! whatever a file lacks is read again from its segment (`seen::recover`),
//! so a data directory from before these files gets them at its first
//! start. A file goes with its segment.
//!
//! sled held this index before: two inserts per event, filed by the
//! router, which on one core cost about a third of an accepted request's
//! CPU and most of the memory that grew with the events received
//! (bench/README.md, session 12).
//!
//! A record: its payload's length and CRC-32 (4 bytes each, little
//! endian), then the payload ([`Filed`], postcard). Records chain from
//! the segment's start, as frames do; a torn or corrupt record ends what
//! can be trusted.

use std::fs::OpenOptions;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::beside;
use super::log::{self, LogEntry};
use super::{EventId, EventRecord};
use crate::queue::lookup::EventSummary;

const EXT: &str = "events";
const HEADER: usize = 8;

/// One frame's record. Add a variant for a new format; never change one.
#[derive(Debug, Serialize, Deserialize)]
enum Filed<'a> {
    V1 {
        id: u64,
        len: u32,
        received_ms: u64,
        #[serde(borrow)]
        source: &'a str,
        #[serde(borrow)]
        provider: &'a str,
        #[serde(borrow)]
        event: &'a str,
        #[serde(borrow)]
        delivery_id: &'a str,
    },
    /// A frame whose record does not read: listed nowhere, as the router
    /// passes it over.
    Unreadable { id: u64, len: u32 },
}

impl Filed<'_> {
    fn place(&self) -> (u64, u32) {
        match *self {
            Filed::V1 { id, len, .. } | Filed::Unreadable { id, len } => (id, len),
        }
    }

    fn summary(&self) -> Option<EventSummary> {
        match *self {
            Filed::V1 {
                id,
                received_ms,
                source,
                provider,
                event,
                delivery_id,
                ..
            } => Some(EventSummary {
                id,
                received_ms,
                source: source.to_owned(),
                provider: provider.to_owned(),
                event: event.to_owned(),
                delivery_id: delivery_id.to_owned(),
            }),
            Filed::Unreadable { .. } => None,
        }
    }
}

/// Appends the record of the frame at `id` (`len` bytes, holding
/// `record`) to `out`.
fn push(out: &mut Vec<u8>, id: EventId, len: u32, record: &[u8]) {
    let filed = match EventRecord::summary(record) {
        Ok(s) => Filed::V1 {
            id: id.0,
            len,
            received_ms: s.received_at_ms,
            source: s.source,
            provider: s.provider,
            event: s.event,
            delivery_id: s.delivery_id,
        },
        Err(_) => Filed::Unreadable { id: id.0, len },
    };
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    let mut buf =
        postcard::to_extend(&filed, std::mem::take(out)).expect("in-memory encoding cannot fail");
    let payload_len = (buf.len() - at - HEADER) as u32;
    let crc = crc32fast::hash(&buf[at + HEADER..]);
    buf[at..at + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[at + 4..at + HEADER].copy_from_slice(&crc.to_le_bytes());
    *out = buf;
}

/// The records at the front of segment `seq`'s file `bytes` that chain
/// from its start and check out, and the bytes they take.
fn parse(bytes: &[u8], seq: u64) -> (Vec<Filed<'_>>, usize) {
    let mut out = Vec::new();
    let (mut at, mut expected) = (0, log::id_of(seq, 0).0);
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(filed) = postcard::from_bytes::<Filed>(payload) else {
            break;
        };
        let (id, frame) = filed.place();
        // Out of place (a gap a failed write left): read again from here.
        if id != expected {
            break;
        }
        expected = id + u64::from(frame);
        out.push(filed);
        at += HEADER + len;
    }
    (out, at)
}

/// What the file of segment `seq` lists, oldest first: every readable
/// event it has filed. With `delivery_id`, a file that does not hold its
/// bytes is not decoded at all. Read-only: a record being appended is
/// not there yet.
pub fn read(dir: &Path, seq: u64, delivery_id: Option<&str>) -> std::io::Result<Vec<EventSummary>> {
    let bytes = match std::fs::read(beside::path(dir, seq, EXT)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if let Some(d) = delivery_id {
        if memchr::memmem::find(&bytes, d.as_bytes()).is_none() {
            return Ok(Vec::new());
        }
    }
    Ok(parse(&bytes, seq)
        .0
        .iter()
        .filter_map(Filed::summary)
        .collect())
}

/// At start, before the writer runs: cuts a torn or corrupt tail off
/// segment `seq`'s file, and returns the offset in the segment from which
/// frames are not filed yet.
pub fn tidy(dir: &Path, seq: u64) -> std::io::Result<u64> {
    let path = beside::path(dir, seq, EXT);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let (filed, good) = parse(&bytes, seq);
    if good < bytes.len() {
        OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(good as u64)?;
    }
    Ok(filed.last().map_or(0, |f| {
        let (id, len) = f.place();
        log::place_of(EventId(id + u64::from(len))).1
    }))
}

/// Files the frames `found` (read from the log at start, in order, from
/// where [`tidy`] said) in their segment's file.
pub fn file_found(dir: &Path, found: &[&log::Found]) -> std::io::Result<()> {
    let mut listed = Listed::default();
    for f in found {
        let LogEntry::V1 { record, .. } = &f.entry;
        listed.push(f.id, f.len, record);
    }
    EventFiles::new(dir).append(&listed)
}

/// Deletes segment `seq`'s file (before the segment goes).
pub fn remove(dir: &Path, seq: u64) -> std::io::Result<()> {
    match std::fs::remove_file(beside::path(dir, seq, EXT)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Records waiting to be filed: their bytes, and each one's event id and
/// end in them.
#[derive(Debug, Default)]
pub struct Listed {
    buf: Vec<u8>,
    ends: Vec<(EventId, usize)>,
}

impl Listed {
    pub fn push(&mut self, id: EventId, len: u32, record: &[u8]) {
        push(&mut self.buf, id, len, record);
        self.ends.push((id, self.buf.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// `other`'s records after these.
    pub fn extend(&mut self, other: Listed) {
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf);
        self.ends
            .extend(other.ends.into_iter().map(|(id, end)| (id, base + end)));
    }
}

/// The writer's events files.
#[derive(Debug)]
pub struct EventFiles(beside::Appender);

impl EventFiles {
    pub fn new(dir: &Path) -> EventFiles {
        EventFiles(beside::Appender::new(dir, EXT))
    }

    /// Appends `listed`, in log order, each record to its segment's file;
    /// on error nothing of the failed file's part is left in it.
    pub fn append(&mut self, listed: &Listed) -> std::io::Result<()> {
        self.0.append(&listed.buf, &listed.ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::tests::sample;

    fn listed(records: &[(u64, &[u8])]) -> Listed {
        let mut l = Listed::default();
        let mut offset = 0;
        for (len, record) in records {
            l.push(log::id_of(1, offset), *len as u32, record);
            offset += len;
        }
        l
    }

    /// Records chain from the segment's start; a torn tail is cut and
    /// what a file lists is every readable event, in order.
    #[test]
    fn a_file_lists_its_readable_events_and_loses_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let record = sample().encode();
        let mut files = EventFiles::new(dir.path());
        files
            .append(&listed(&[
                (100, &record),
                (50, b"not a record"),
                (70, &record),
            ]))
            .unwrap();
        let all = read(dir.path(), 1, None).unwrap();
        let ids: Vec<u64> = all.iter().map(|s| s.id).collect();
        assert_eq!(ids, [log::id_of(1, 0).0, log::id_of(1, 150).0]);
        assert_eq!(all[0].delivery_id, sample().delivery_id);
        assert_eq!(tidy(dir.path(), 1).unwrap(), 220);
        // Torn: half of the last record.
        let path = beside::path(dir.path(), 1, EXT);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        assert_eq!(read(dir.path(), 1, None).unwrap().len(), 1);
        assert_eq!(tidy(dir.path(), 1).unwrap(), 150);
        // A record out of place (not where the last one ended) is not trusted.
        let mut files = EventFiles::new(dir.path());
        files.append(&listed(&[(100, &record)])).unwrap();
        assert_eq!(tidy(dir.path(), 1).unwrap(), 150);
        // By delivery id: a file without it is not decoded.
        assert_eq!(read(dir.path(), 1, Some("no such id")).unwrap().len(), 0);
        assert_eq!(
            read(dir.path(), 1, Some(&sample().delivery_id))
                .unwrap()
                .len(),
            1
        );
        remove(dir.path(), 1).unwrap();
        remove(dir.path(), 1).unwrap();
        assert!(read(dir.path(), 1, None).unwrap().is_empty());
    }
}

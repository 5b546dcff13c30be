//! Dedupe keys: which deliveries were accepted, until their window passes.
//!
//! Held in memory, a hash map from the first 12 bytes of the SHA-256 of
//! `source ‖ 0 ‖ dedupe key` to the key's expiry and event id (25 bytes a
//! key), so the writer checks a delivery without touching the disk.
//! Persisted beside the log:
//! segment `{seq:016x}.seg` has `{seq:016x}.keys`, fixed-size records
//! (hash, expiry, event id, frame length, CRC-32) appended by the writer
//! once its events are durable, and never synced on their own. The log is
//! the truth: at start, whatever a keys file lacks (a torn tail, events
//! the writer had not filed) is read again from its segment.
//!
//! sled held these keys before; an insert there costs about 20 µs of CPU,
//! more than the whole rest of a request (bench/README.md).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::log::{self, LogEntry};
use super::EventId;
use super::{beside, listed};

pub type KeyHash = [u8; 16];

const RECORD_BYTES: usize = 16 + 8 + 8 + 4 + 4;

/// `source ‖ 0 ‖ key`: what a delivery with a whole key
/// ([`Dedupe::Key`](crate::queue::Dedupe), or an unsigned id with its
/// body's digest) is remembered by.
pub fn seen_key(source: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 1 + key.len());
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Ends an unsigned id keyed on its own. A whole key is UTF-8 text, in
/// which this byte never occurs, so the two kinds never meet.
const ID_ALONE: u8 = 0xFF;

/// `source ‖ 0 ‖ id ‖ 0xFF`: an unsigned id on its own
/// ([`Dedupe::IdAndBody`](crate::queue::Dedupe)). The writer takes a
/// match for a duplicate only when the bodies are the same; when they
/// differ, the event is remembered by its whole key ([`whole_key`]).
pub fn id_key(source: &str, id: &str) -> Vec<u8> {
    let mut k = seen_key(source, id);
    k.push(ID_ALONE);
    k
}

/// The whole key of an id keyed on its own: `source ‖ 0 ‖ id
/// sha256:<hex of body>`, as `Dedupe::key` makes it (and as every
/// unsigned id was remembered before, session 14). `None` for a key that
/// is whole already.
pub fn whole_key(id_key: &[u8], body: &[u8]) -> Option<Vec<u8>> {
    let id = id_key.strip_suffix(&[ID_ALONE])?;
    let mut k = id.to_vec();
    k.push(b' ');
    k.extend_from_slice(crate::queue::body_digest(body).as_bytes());
    Some(k)
}

/// The dedupe key (without its source) that `seen_key` stands for, as
/// PostgreSQL keeps it: what `hookgate queue migrate` carries over.
pub fn dedupe_key_of(seen_key: &[u8], body: &[u8]) -> String {
    let whole = whole_key(seen_key, body);
    let k = whole.as_deref().unwrap_or(seen_key);
    // `source ‖ 0 ‖ key`.
    let key = k.iter().position(|&b| b == 0).map_or(k, |at| &k[at + 1..]);
    String::from_utf8_lossy(key).into_owned()
}

/// The hash a dedupe key is remembered by.
pub fn hash(seen_key: &[u8]) -> KeyHash {
    let digest = Sha256::digest(seen_key);
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// One logged event's dedupe key, as a keys file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRecord {
    pub hash: KeyHash,
    pub expiry_ms: u64,
    pub id: EventId,
    /// Length of the event's log frame: where the next one starts.
    pub len: u32,
}

impl KeyRecord {
    /// The position in the log just after this event's frame.
    pub fn end(&self) -> EventId {
        EventId(self.id.0 + u64::from(self.len))
    }

    fn encode(&self) -> [u8; RECORD_BYTES] {
        let mut out = [0; RECORD_BYTES];
        out[..16].copy_from_slice(&self.hash);
        out[16..24].copy_from_slice(&self.expiry_ms.to_le_bytes());
        out[24..32].copy_from_slice(&self.id.0.to_le_bytes());
        out[32..36].copy_from_slice(&self.len.to_le_bytes());
        let crc = crc32fast::hash(&out[..36]);
        out[36..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<KeyRecord> {
        let bytes: &[u8; RECORD_BYTES] = bytes.try_into().ok()?;
        let (body, crc) = bytes.split_at(36);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Some(KeyRecord {
            hash: body[..16].try_into().expect("16 bytes"),
            expiry_ms: u64_at(16),
            id: EventId(u64_at(24)),
            len: u32::from_le_bytes(body[32..36].try_into().expect("4 bytes")),
        })
    }

    fn of(found: &log::Found) -> KeyRecord {
        let LogEntry::V1 {
            seen_key,
            expiry_ms,
            ..
        } = &found.entry;
        KeyRecord {
            hash: hash(seen_key),
            expiry_ms: *expiry_ms,
            id: found.id,
            len: found.len,
        }
    }
}

/// What [`SeenIndex`] tells dedupe keys apart by: the first 12 bytes of
/// their hash. With n keys remembered, a new key meets one of theirs
/// about n in 2^96 times: with millions remembered, once in 10^22
/// requests. (The keys files keep all 16.)
type Fingerprint = [u8; 12];

fn fingerprint(key: &KeyHash) -> Fingerprint {
    key[..12].try_into().expect("12 bytes")
}

/// A key's event id and expiry (in seconds, rounded up: a key is
/// remembered less than a second longer than its window), as bytes: with
/// its fingerprint a bucket is 24 bytes and a control byte, not the 33
/// of a 16-byte hash and two `u64`s. The dedupe window's keys are most of
/// the daemon's memory when it holds millions (bench/README.md).
#[derive(Debug, Clone, Copy)]
struct Remembered([u8; 12]);

impl Remembered {
    fn new(expiry_ms: u64, id: EventId) -> Remembered {
        // Past the year 2106: remembered until then.
        let secs = u32::try_from(expiry_ms.div_ceil(1000)).unwrap_or(u32::MAX);
        let mut out = [0; 12];
        out[..8].copy_from_slice(&id.0.to_le_bytes());
        out[8..].copy_from_slice(&secs.to_le_bytes());
        Remembered(out)
    }

    fn id(&self) -> EventId {
        EventId(u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")))
    }

    fn expiry_ms(&self) -> u64 {
        u64::from(u32::from_le_bytes(self.0[8..].try_into().expect("4 bytes"))) * 1000
    }
}

/// How many tables [`SeenIndex`] keeps. A table that grows is copied
/// into one twice its size, and both are held while it is: one table of
/// all the keys would need three times its size at that moment, one of
/// sixteen a sixteenth more.
const SHARDS: usize = 16;

/// The keys remembered now, in [`SHARDS`] tables by their first byte.
/// Owned by the writer thread, the only one that checks and adds keys, so
/// it needs no lock.
#[derive(Debug, Default)]
pub struct SeenIndex {
    shards: [HashMap<Fingerprint, Remembered>; SHARDS],
}

/// The table of [`SeenIndex`] that holds `key` (by its first byte, the
/// same in a [`KeyHash`] and its fingerprint).
fn shard_of(key: &[u8]) -> usize {
    usize::from(key[0]) % SHARDS
}

impl SeenIndex {
    /// The event stored under `key`, if its window has not passed at `now_ms`.
    pub fn get(&self, key: &KeyHash, now_ms: u64) -> Option<EventId> {
        let key = fingerprint(key);
        self.shards[shard_of(&key)]
            .get(&key)
            .and_then(|r| (r.expiry_ms() > now_ms).then(|| r.id()))
    }

    pub fn insert(&mut self, key: KeyHash, expiry_ms: u64, id: EventId) {
        let key = fingerprint(&key);
        self.shards[shard_of(&key)].insert(key, Remembered::new(expiry_ms, id));
    }

    /// Forgets keys whose window has passed at `now_ms`; returns how many.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let before = self.len();
        for keys in &mut self.shards {
            keys.retain(|_, r| r.expiry_ms() > now_ms);
            if keys.capacity() > 4 * keys.len().max(64) {
                keys.shrink_to_fit();
            }
        }
        before - self.len()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }

    /// When the last of the keys remembered now expires (0: none is).
    pub fn last_expiry(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(HashMap::values)
            .map(Remembered::expiry_ms)
            .max()
            .unwrap_or(0)
    }
}

const EXT: &str = "keys";

fn keys_path(dir: &Path, seq: u64) -> PathBuf {
    beside::path(dir, seq, EXT)
}

/// The keys files in `dir`, oldest first.
fn key_files(dir: &Path) -> std::io::Result<Vec<u64>> {
    beside::seqs(dir, EXT)
}

/// The intact records at the front of `seq`'s keys file. A torn or corrupt
/// record and everything after it is cut off the file, so appends go on
/// from the last good one.
fn load(dir: &Path, seq: u64) -> std::io::Result<Vec<KeyRecord>> {
    let path = keys_path(dir, seq);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::with_capacity(bytes.len() / RECORD_BYTES);
    for chunk in bytes.chunks(RECORD_BYTES) {
        // Frame after frame from the segment's start: a record out of
        // place (a gap left by a failed write) ends what can be trusted,
        // and the segment is read again from there.
        let expected = records
            .last()
            .map_or(log::id_of(seq, 0), |p: &KeyRecord| p.end());
        match KeyRecord::decode(chunk) {
            Some(r) if r.id == expected => records.push(r),
            _ => break,
        }
    }
    let good = (records.len() * RECORD_BYTES) as u64;
    if good < bytes.len() as u64 {
        OpenOptions::new().write(true).open(&path)?.set_len(good)?;
    }
    Ok(records)
}

/// The writer's keys files: appends records to the keys file of their segment.
#[derive(Debug)]
pub struct KeyFiles(beside::Appender);

impl KeyFiles {
    pub fn new(dir: &Path) -> KeyFiles {
        KeyFiles(beside::Appender::new(dir, EXT))
    }

    /// Appends `records`, which are in log order, each to its segment's
    /// file. On error the file is cut back to where it was, so a retry
    /// appends the same records in the same place.
    pub fn append(&mut self, records: &[KeyRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(records.len() * RECORD_BYTES);
        let ends: Vec<(EventId, usize)> = records
            .iter()
            .map(|r| {
                buf.extend_from_slice(&r.encode());
                (r.id, buf.len())
            })
            .collect();
        self.0.append(&buf, &ends)
    }

    /// Makes what was appended durable. Nothing else syncs a keys file
    /// until its segment is deleted (`sync_keys`); until then the segment
    /// can rebuild it.
    pub fn sync(&self) -> std::io::Result<()> {
        self.0.sync()
    }
}

/// What the log holds, read back at start.
#[derive(Debug)]
pub struct Recovered {
    pub seen: SeenIndex,
    /// The newest segment that holds events (0: none).
    pub last_used: u64,
    /// The position just after the last event (0: none).
    pub end: EventId,
    /// Events at or after the given position (the router's cursor).
    pub from_cursor: u64,
    /// Events read again from the log because their keys were not on file.
    pub reread: usize,
    /// Events whose listing record was filed again from the log
    /// (`listed.rs`): all of them, at the first start after an upgrade.
    pub listed: usize,
}

/// Loads every keys file, completes each from its segment, and returns
/// the unexpired keys and where the log ends.
pub fn recover(
    dir: &Path,
    now_ms: u64,
    cursor: EventId,
    damaged: &std::sync::atomic::AtomicU64,
) -> std::io::Result<Recovered> {
    let mut seqs = log::segments(dir)?;
    seqs.extend(key_files(dir)?);
    seqs.sort_unstable();
    seqs.dedup();
    let mut out = Recovered {
        seen: SeenIndex::default(),
        last_used: 0,
        end: EventId(0),
        from_cursor: 0,
        reread: 0,
        listed: 0,
    };
    let mut files = KeyFiles::new(dir);
    for seq in seqs {
        let mut records = load(dir, seq)?;
        let start = records.last().map_or(0, |r| log::place_of(r.end()).1);
        // What listings show is completed from the same read of the log.
        let listed_from = listed::tidy(dir, seq)?;
        let (present, missing): (bool, Vec<KeyRecord>) =
            match log::scan(dir, seq, start.min(listed_from), damaged) {
                Ok(found) => {
                    let unlisted: Vec<&log::Found> = found
                        .iter()
                        .filter(|f| log::place_of(f.id).1 >= listed_from)
                        .collect();
                    if !unlisted.is_empty() {
                        listed::file_found(dir, &unlisted)?;
                    }
                    out.listed += unlisted.len();
                    let missing = found
                        .iter()
                        .filter(|f| log::place_of(f.id).1 >= start)
                        .map(KeyRecord::of)
                        .collect();
                    (true, missing)
                }
                // Pruned: the keys outlive the events when the window is longer.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    listed::remove(dir, seq)?;
                    (false, Vec::new())
                }
                Err(e) => return Err(e),
            };
        if !missing.is_empty() {
            // Frames a crash left between write and sync may be in the page
            // cache only: made durable before anything relies on them.
            File::open(log::segment_path(dir, seq))?.sync_data()?;
            files.append(&missing)?;
            files.sync()?;
        }
        out.reread += missing.len();
        records.extend(missing);
        let Some(last) = records.last() else {
            continue;
        };
        out.last_used = seq;
        out.end = last.end();
        for r in &records {
            if present && r.id >= cursor {
                out.from_cursor += 1;
            }
            if r.expiry_ms > now_ms {
                out.seen.insert(r.hash, r.expiry_ms, r.id);
            }
        }
    }
    for r in load_migrated(dir)? {
        if r.expiry_ms > now_ms {
            out.seen.insert(r.hash, r.expiry_ms, r.id);
        }
    }
    Ok(out)
}

/// Keys carried over from an older layout's sled `seen` tree (see
/// `store::cursor_of`): not tied to a segment, kept until they expire.
const MIGRATED: &str = "migrated.keys";

/// Writes `records` as the migrated keys, durably.
pub fn write_migrated(dir: &Path, records: &[KeyRecord]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
    let tmp = dir.join("migrated.keys.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(MIGRATED))?;
    File::open(dir)?.sync_all()
}

fn load_migrated(dir: &Path) -> std::io::Result<Vec<KeyRecord>> {
    match std::fs::read(dir.join(MIGRATED)) {
        Ok(bytes) => Ok(bytes
            .chunks(RECORD_BYTES)
            .map_while(KeyRecord::decode)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A migrated key, from the old `seen` tree's key and value.
pub fn migrated(seen_key: &[u8], expiry_ms: u64, id: EventId) -> KeyRecord {
    KeyRecord {
        hash: hash(seen_key),
        expiry_ms,
        id,
        len: 0,
    }
}

/// Makes segment `seq`'s keys file durable, name and all (before the
/// segment goes).
pub fn sync_keys(dir: &Path, seq: u64) -> std::io::Result<()> {
    match File::open(keys_path(dir, seq)) {
        Ok(f) => f.sync_data()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    File::open(dir)?.sync_all()
}

/// Deletes keys files whose segment is gone and whose every key has
/// expired at `now_ms`. Returns how many.
pub fn prune_files(dir: &Path, now_ms: u64) -> std::io::Result<usize> {
    let segments = log::segments(dir)?;
    let mut removed = 0;
    for seq in key_files(dir)? {
        if segments.binary_search(&seq).is_ok() {
            continue;
        }
        if load(dir, seq)?.iter().all(|r| r.expiry_ms <= now_ms) {
            std::fs::remove_file(keys_path(dir, seq))?;
            removed += 1;
        }
    }
    let migrated = load_migrated(dir)?;
    if !migrated.is_empty() && migrated.iter().all(|r| r.expiry_ms <= now_ms) {
        std::fs::remove_file(dir.join(MIGRATED))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `n`th record of segment 1 (frames of 100 bytes, back to back).
    fn record(n: u64) -> KeyRecord {
        KeyRecord {
            hash: hash(&n.to_le_bytes()),
            expiry_ms: 1000 + n,
            id: log::id_of(1, n * 100),
            len: 100,
        }
    }

    #[test]
    fn a_gap_in_a_keys_file_ends_what_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = KeyFiles::new(dir.path());
        files.append(&[record(0), record(1), record(3)]).unwrap();
        assert_eq!(load(dir.path(), 1).unwrap(), vec![record(0), record(1)]);
        // A file that does not start at the segment's start is not trusted.
        let dir2 = tempfile::tempdir().unwrap();
        let mut other = KeyFiles::new(dir2.path());
        other.append(&[record(2), record(3)]).unwrap();
        assert!(load(dir2.path(), 1).unwrap().is_empty());
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let r = record(3);
        assert_eq!(KeyRecord::decode(&r.encode()), Some(r));
        let mut bad = r.encode();
        bad[20] ^= 1;
        assert_eq!(KeyRecord::decode(&bad), None);
        assert_eq!(KeyRecord::decode(&bad[..10]), None);
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on_from_the_last_good_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = KeyFiles::new(dir.path());
        files.append(&[record(0), record(1), record(2)]).unwrap();
        drop(files);
        let path = keys_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&record(3).encode()[..17]).unwrap();
        assert_eq!(load(dir.path(), 1).unwrap().len(), 3);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * RECORD_BYTES as u64
        );
        let mut files = KeyFiles::new(dir.path());
        files.append(&[record(3)]).unwrap();
        assert_eq!(
            load(dir.path(), 1).unwrap(),
            vec![record(0), record(1), record(2), record(3)]
        );
    }

    #[test]
    fn a_remembered_key_takes_24_bytes_and_a_control_byte() {
        assert_eq!(std::mem::size_of::<(Fingerprint, Remembered)>(), 24);
        assert_eq!(std::mem::align_of::<(Fingerprint, Remembered)>(), 1);
        let mut seen = SeenIndex::default();
        for id in [0, 1 << 40, u64::MAX] {
            seen.insert([9; 16], 5_000, EventId(id));
            assert_eq!(seen.get(&[9; 16], 4_999), Some(EventId(id)));
        }
        // Whole seconds, rounded up.
        seen.insert([9; 16], 4_001, EventId(3));
        assert_eq!(seen.last_expiry(), 5_000);
        assert_eq!(seen.get(&[9; 16], 4_999), Some(EventId(3)));
        assert_eq!(seen.get(&[9; 16], 5_000), None);
        // Past the year 2106: remembered until then.
        seen.insert([9; 16], u64::MAX, EventId(3));
        assert_eq!(seen.last_expiry(), u64::from(u32::MAX) * 1000);
    }

    #[test]
    fn keys_are_told_apart_by_their_first_twelve_bytes() {
        let mut seen = SeenIndex::default();
        let mut other = [1; 16];
        seen.insert([1; 16], 100_000, EventId(7));
        other[11] = 2;
        assert_eq!(seen.get(&other, 0), None);
        seen.insert(other, 100_000, EventId(8));
        assert_eq!(seen.get(&[1; 16], 0), Some(EventId(7)));
        assert_eq!(seen.get(&other, 0), Some(EventId(8)));
    }

    #[test]
    fn a_million_keys_take_their_tables_and_grow_a_table_at_a_time() {
        let mut seen = SeenIndex::default();
        let bucket = std::mem::size_of::<(Fingerprint, Remembered)>() + 1;
        let bytes = |seen: &SeenIndex| -> usize {
            seen.shards
                .iter()
                .map(|k| k.capacity() * 8 / 7 * bucket)
                .sum()
        };
        let mut most = 0;
        let mut peak = 0;
        for n in 0..1_200_000u64 {
            // Spread as hashes are (splitmix64).
            let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let mut key = [0; 16];
            key[..8].copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            key[8..].copy_from_slice(&n.to_le_bytes());
            let shard = shard_of(&key);
            // What a growing table holds while it is copied: the old
            // and the new.
            let growing = seen.shards[shard].capacity();
            seen.insert(key, u64::MAX, EventId(n));
            if seen.shards[shard].capacity() > growing {
                let now = bytes(&seen);
                most = most.max(now);
                peak = peak.max(now + growing * 8 / 7 * bucket);
            }
        }
        assert_eq!(seen.len(), 1_200_000);
        // 2^21 buckets of 25 bytes in all (one table of 33-byte buckets:
        // 69 MB, and 104 MB while it grew to them).
        assert!(most <= 53 << 20, "{most} bytes");
        assert!(
            peak <= most + most / 8,
            "{peak} bytes at most while growing, against {most}"
        );
    }

    #[test]
    fn expired_keys_are_not_found_and_prune_drops_them() {
        let mut seen = SeenIndex::default();
        seen.insert([1; 16], 100_000, EventId(7));
        seen.insert([2; 16], 300_000, EventId(8));
        assert_eq!(seen.get(&[1; 16], 99_999), Some(EventId(7)));
        assert_eq!(seen.get(&[1; 16], 100_000), None);
        assert_eq!(seen.prune(200_000), 1);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.get(&[2; 16], 200_000), Some(EventId(8)));
    }

    #[test]
    fn keys_files_without_segments_go_once_every_key_expired() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = KeyFiles::new(dir.path());
        files.append(&[record(0), record(1)]).unwrap();
        assert_eq!(prune_files(dir.path(), 1000).unwrap(), 0);
        assert_eq!(prune_files(dir.path(), 1001).unwrap(), 1);
        assert!(key_files(dir.path()).unwrap().is_empty());
    }
}

//! The event log: where accepted events are kept, and what makes a 202
//! durable at the cost of one `pwrite` and one `fdatasync` per commit.
//!
//! Segments `log/{seq:016x}.seg` are written front to back. Each event is a
//! frame — length (u32 LE), CRC-32 of the payload (u32 LE), postcard
//! [`LogEntry`] — and an event's id is its place: segment number in the
//! high 24 bits, byte offset in the low 40. sled holds only small pointers
//! and dedupe keys (`writer.rs`), so an event's bytes are written once.
//!
//! Segments are filled with zeros before use: overwriting allocated blocks
//! does not change the file's size or extents, so `fdatasync` has no
//! metadata to journal and costs about half as much. A zero header ends the
//! chain of frames. A frame that does not check out (length, CRC, entry)
//! with good frames after it is damage: it is skipped by its length when
//! that is intact, else to the next frame that checks out, and logged with
//! its segment and offset; with nothing good after it, it is a write a
//! crash left unfinished (never acknowledged) and ends the chain.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{EventId, QueueError};

/// Size of a segment. A commit never spans two; one larger than what is
/// left starts the next segment.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// Bytes a page read takes at a time.
const CHUNK: u64 = 256 << 10;
const FRAME_HEADER: u64 = 8;
const OFFSET_BITS: u32 = 40;

/// One accepted event as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    V1 {
        seen_key: ByteBuf,
        expiry_ms: u64,
        /// `EventRecord::encode` bytes.
        record: ByteBuf,
    },
}

/// A [`LogEntry`] borrowed from the requests being logged: the same bytes
/// on disk, without copying each record into the entry first.
#[derive(Debug, Serialize)]
pub enum LogEntryRef<'a> {
    V1 {
        #[serde(with = "serde_bytes")]
        seen_key: &'a [u8],
        expiry_ms: u64,
        #[serde(with = "serde_bytes")]
        record: &'a [u8],
    },
}

/// A frame found by a scan.
#[derive(Debug)]
pub struct Found {
    pub id: EventId,
    pub len: u32,
    pub entry: LogEntry,
}

pub fn id_of(seq: u64, offset: u64) -> EventId {
    EventId((seq << OFFSET_BITS) | offset)
}

pub fn place_of(id: EventId) -> (u64, u64) {
    (id.0 >> OFFSET_BITS, id.0 & ((1 << OFFSET_BITS) - 1))
}

/// Frames written by [`Log::write`]: each one's id and length, and the
/// segment file to sync before acknowledging them.
#[derive(Debug)]
pub struct Placed {
    pub placed: Vec<(EventId, u32)>,
    pub file: std::sync::Arc<File>,
}

/// The writer's end of the log.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    seq: u64,
    /// Handed out with each write, for the writer to sync.
    file: std::sync::Arc<File>,
    /// Where the next frame goes.
    len: u64,
    /// The next segment, zero-filled ahead of time by a helper thread.
    next: Option<Prep>,
    /// Where a batch's frames are encoded, kept between writes.
    buf: Vec<u8>,
    /// The last attempt to start the next segment failed (a full disk),
    /// and none has started since.
    starved: bool,
}

/// Room a segment must have left to be written on after a restart.
const RESUME_ROOM: u64 = 1 << 20;

/// Largest frame buffer kept for the next write.
const KEEP_BUFFER: usize = 1 << 20;

/// A helper thread preparing the next segment.
#[derive(Debug)]
struct Prep {
    thread: std::thread::JoinHandle<std::io::Result<File>>,
    /// Set to make the helper give up (and remove its unfinished file).
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Log {
    /// Stops and waits for the helper: once the log is gone, no segment
    /// appears in its directory behind the back of whoever opens it next.
    fn drop(&mut self) {
        if let Some(prep) = self.next.take() {
            prep.cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = prep.thread.join();
        }
    }
}

impl Log {
    /// Starts a fresh segment after `last_seq` in `dir`.
    pub fn create(dir: &Path, last_seq: u64) -> std::io::Result<Log> {
        std::fs::create_dir_all(dir)?;
        let seq = last_seq + 1;
        let file = prepare(dir, seq, &Default::default())?;
        let mut log = Log {
            dir: dir.to_owned(),
            seq,
            file: std::sync::Arc::new(file),
            len: 0,
            next: None,
            buf: Vec::new(),
            starved: false,
        };
        log.prepare_next();
        Ok(log)
    }

    /// Goes on writing where the log ends: at `end`, in its segment, when
    /// that segment has room left and nothing past its end (a clean stop,
    /// or a crash between writes); else in a fresh one after it (as
    /// [`Log::create`]). A restart no longer costs a segment.
    pub fn resume(dir: &Path, end: EventId) -> std::io::Result<Log> {
        let (seq, offset) = place_of(end);
        let path = segment_path(dir, seq);
        let usable = seq > 0
            && offset + RESUME_ROOM <= SEGMENT_BYTES
            && std::fs::metadata(&path).is_ok_and(|m| m.len() == SEGMENT_BYTES);
        if !usable {
            return Log::create(dir, seq);
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut tail = vec![0; (SEGMENT_BYTES - offset) as usize];
        let read = read_up_to(&file, &mut tail, offset)?;
        if tail[..read].iter().any(|&b| b != 0) {
            // Something past the end: a crash's unfinished write, or damage
            // to the last frame. Written over, a new event would take the
            // id (and idempotency keys) of one that may have been
            // acknowledged: a fresh segment it is.
            return Log::create(dir, seq);
        }
        let mut log = Log {
            dir: dir.to_owned(),
            seq,
            file: std::sync::Arc::new(file),
            len: offset,
            next: None,
            buf: Vec::new(),
            starved: false,
        };
        log.prepare_next();
        Ok(log)
    }

    fn prepare_next(&mut self) {
        let (dir, seq) = (self.dir.clone(), self.seq + 1);
        let cancel = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
        let stop = cancel.clone();
        self.next = std::thread::Builder::new()
            .name("hookgate-log-prep".into())
            .spawn(move || prepare(&dir, seq, &stop))
            .ok()
            .map(|thread| Prep { thread, cancel });
    }

    /// Writes `entries` and makes them durable: [`Log::write`], then sync.
    #[cfg(test)]
    pub fn append<E: Serialize>(&mut self, entries: &[E]) -> std::io::Result<Vec<(EventId, u32)>> {
        let written = self.write(entries)?;
        written.file.sync_data()?;
        Ok(written.placed)
    }

    /// Writes `entries` as consecutive frames, not yet durable: sync the
    /// returned file before acknowledging them. Returns each one's id and
    /// frame length. On error nothing was written where a later frame could
    /// follow it: the next write goes to the same place.
    pub fn write<E: Serialize>(&mut self, entries: &[E]) -> std::io::Result<Placed> {
        let mut buf = std::mem::take(&mut self.buf);
        let written = self.write_with(&mut buf, entries);
        buf.clear();
        // A huge batch's buffer is not worth keeping.
        if buf.capacity() <= KEEP_BUFFER {
            self.buf = buf;
        }
        written
    }

    fn write_with<E: Serialize>(
        &mut self,
        buf: &mut Vec<u8>,
        entries: &[E],
    ) -> std::io::Result<Placed> {
        let offsets = encode_frames(buf, entries)?;
        if buf.len() as u64 > SEGMENT_BYTES {
            return Err(std::io::Error::other("a commit larger than a log segment"));
        }
        if self.len + buf.len() as u64 > SEGMENT_BYTES {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all_at(buf, self.len) {
            // Some frames may have landed: a zero header ends the chain
            // before them, so neither a reader nor a restart takes them
            // for events (their senders were told to retry).
            let _ = self
                .file
                .write_all_at(&[0; FRAME_HEADER as usize], self.len);
            return Err(e);
        }
        let base = self.len;
        self.len += buf.len() as u64;
        let placed = offsets
            .into_iter()
            .map(|(o, len)| (id_of(self.seq, base + o), len))
            .collect();
        Ok(Placed {
            placed,
            file: self.file.clone(),
        })
    }

    /// Where the next frame goes: everything before it is written.
    pub fn end(&self) -> EventId {
        id_of(self.seq, self.len)
    }

    /// Whether the log could not start a new segment the last time it
    /// needed one: writes fit only in what is left of the current one.
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// After a failure: tries again what failed. Starved, it prepares the
    /// next segment now (the one a full disk refused); otherwise it
    /// rewrites the zero header that ends the chain where the next frame
    /// goes (what a failed write leaves there).
    pub fn retry(&mut self) -> std::io::Result<()> {
        if self.starved {
            // No helper runs while starved; were one running, it would be
            // preparing the same file.
            if let Some(prep) = self.next.take() {
                prep.cancel
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = prep.thread.join();
            }
            let file = prepare(&self.dir, self.seq + 1, &Default::default())?;
            self.starved = false;
            let cancel = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
            self.next = Some(Prep {
                thread: std::thread::Builder::new()
                    .name("hookgate-log-prep".into())
                    .spawn(move || Ok(file))?,
                cancel,
            });
            return Ok(());
        }
        if self.len + FRAME_HEADER <= SEGMENT_BYTES {
            self.file
                .write_all_at(&[0; FRAME_HEADER as usize], self.len)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let file = match self.next.take().map(|p| p.thread.join()) {
            Some(Ok(Ok(file))) => file,
            // The helper failed or could not start: prepare it here.
            _ => {
                let prepared = prepare(&self.dir, self.seq + 1, &Default::default());
                self.starved = prepared.is_err();
                prepared?
            }
        };
        self.seq += 1;
        self.file = std::sync::Arc::new(file);
        self.len = 0;
        self.prepare_next();
        Ok(())
    }
}

/// Appends each entry to `buf` as a frame (length, CRC, postcard bytes),
/// encoded in place; returns each frame's offset in `buf` and length.
fn encode_frames<E: Serialize>(
    buf: &mut Vec<u8>,
    entries: &[E],
) -> std::io::Result<Vec<(u64, u32)>> {
    let header = FRAME_HEADER as usize;
    let mut offsets = Vec::with_capacity(entries.len());
    for entry in entries {
        let start = buf.len();
        buf.extend_from_slice(&[0; FRAME_HEADER as usize]);
        *buf = postcard::to_extend(entry, std::mem::take(buf))
            .expect("in-memory encoding cannot fail");
        let payload = &buf[start + header..];
        let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
        let crc = crc32fast::hash(payload);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + header].copy_from_slice(&crc.to_le_bytes());
        offsets.push((start as u64, (buf.len() - start) as u32));
    }
    Ok(offsets)
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// Creates segment `seq` filled with zeros, durably (file and name),
/// unless `cancel` is set before it is done.
fn prepare(dir: &Path, seq: u64, cancel: &std::sync::atomic::AtomicBool) -> std::io::Result<File> {
    let path = segment_path(dir, seq);
    let tmp = path.with_extension("prep");
    let prepared = fill(&tmp, &path, dir, cancel);
    if prepared.is_err() {
        // A full disk or a cancel: give back what the attempt took.
        let _ = std::fs::remove_file(&tmp);
    }
    prepared
}

fn fill(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<File> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(tmp)?;
    let zeros = vec![0u8; FILL_CHUNK as usize];
    for chunk in 0..SEGMENT_BYTES / FILL_CHUNK {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        f.write_all(&zeros)?;
        write_out(&f, chunk * FILL_CHUNK, FILL_CHUNK)?;
    }
    f.sync_all()?;
    // Only a complete segment gets its real name.
    std::fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Zeros written (and written out) at a time while preparing a segment.
const FILL_CHUNK: u64 = 256 << 10;

/// Starts writing `len` bytes at `offset` to disk and waits for it. A
/// segment prepared in one go queues 8 MiB of zeros at the device, and
/// every log sync meanwhile waits behind them (p99 went from ~5 to ~20 ms
/// at 5,000 req/s); a chunk at a time, a sync waits for one chunk at most.
fn write_out(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open for the whole call; the call reads
    // no memory of ours.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The segments in `dir`, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    seqs.sort_unstable();
    Ok(seqs)
}

/// Removes segments after `last_used` (prepared, never written) and
/// half-prepared files.
pub fn remove_unused(dir: &Path, last_used: u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let unused = parse_segment_name(&name).is_some_and(|seq| seq > last_used);
        if unused || name.ends_with(".prep") {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Deletes segment `seq`.
pub fn remove(dir: &Path, seq: u64) -> std::io::Result<()> {
    std::fs::remove_file(segment_path(dir, seq))
}

/// When segment `seq` was last written.
pub fn modified(dir: &Path, seq: u64) -> std::io::Result<std::time::SystemTime> {
    std::fs::metadata(segment_path(dir, seq))?.modified()
}

/// Bytes the segments take on disk.
pub fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Every intact frame of segment `seq` from `from`, in order, until the
/// chain ends. A damaged frame with good frames after it is skipped (by
/// its length when that is intact, else to the next frame that checks
/// out), logged with its place and counted in `damaged`; a damaged frame
/// with nothing good after it is a write a crash left unfinished, and ends
/// the chain.
pub fn scan(dir: &Path, seq: u64, from: u64, damaged: &AtomicU64) -> std::io::Result<Vec<Found>> {
    let bytes = std::fs::read(segment_path(dir, seq))?;
    let mut out = Vec::new();
    let mut offset = from as usize;
    loop {
        match look(&bytes, offset) {
            Look::Frame(entry, frame_len) => {
                out.push(Found {
                    id: id_of(seq, offset as u64),
                    len: frame_len as u32,
                    entry,
                });
                offset += frame_len;
            }
            Look::End => break,
            Look::Damaged => match after_damage(&bytes[offset..]) {
                Some(skip) => {
                    report_damage(seq, offset as u64, skip as u64, damaged);
                    offset += skip;
                }
                None => {
                    report_unfinished(seq, offset as u64);
                    break;
                }
            },
        }
    }
    Ok(out)
}

/// What sits at an offset of a segment.
enum Look {
    Frame(LogEntry, usize),
    /// A zero header, or too few bytes for one: the chain ends.
    End,
    /// A header that is not zero, for a frame that does not check out.
    Damaged,
}

fn look(bytes: &[u8], offset: usize) -> Look {
    let Some(header) = bytes.get(offset..offset + FRAME_HEADER as usize) else {
        return Look::End;
    };
    if header[..4] == [0; 4] {
        return Look::End;
    }
    match frame_at(bytes, offset) {
        Some((entry, len)) => Look::Frame(entry, len),
        None => Look::Damaged,
    }
}

/// For `bytes` starting with a damaged frame: how far the next good frame
/// is. By the damaged frame's own length when that is intact (a good frame
/// follows it); else the first place further on where a frame checks out
/// (its entry parses to exactly its length, then its CRC matches). `None`
/// when nothing good follows: the unfinished tail of a write.
fn after_damage(bytes: &[u8]) -> Option<usize> {
    let header = FRAME_HEADER as usize;
    let declared = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize + header);
    if let Some(total) = declared.filter(|&t| t < bytes.len()) {
        if matches!(look(bytes, total), Look::Frame(..)) {
            return Some(total);
        }
    }
    (1..bytes.len().saturating_sub(header)).find(|&at| plausible(bytes, at))
}

/// Whether a frame checks out at `at`: cheap structure first, so a search
/// through damaged bytes costs little.
fn plausible(bytes: &[u8], at: usize) -> bool {
    /// An entry's shape without copying its bytes.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Peek<'a> {
        V1 {
            seen_key: &'a [u8],
            expiry_ms: u64,
            record: &'a [u8],
        },
    }
    let header = FRAME_HEADER as usize;
    let Some(head) = bytes.get(at..at + header) else {
        return false;
    };
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let Some(payload) = bytes.get(at + header..at + header + len) else {
        return false;
    };
    len > 0
        && matches!(postcard::take_from_bytes::<Peek>(payload), Ok((_, rest)) if rest.is_empty())
        && crc32fast::hash(payload) == u32::from_le_bytes(head[4..].try_into().expect("4 bytes"))
}

/// Logs and counts damaged bytes skipped at `offset` of segment `seq`.
fn report_damage(seq: u64, offset: u64, skipped: u64, damaged: &AtomicU64) {
    damaged.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        segment = %segment_name(seq),
        offset,
        bytes = skipped,
        "a damaged frame in the event log was skipped (its event is lost; the events after it are kept): check the disk"
    );
}

fn report_unfinished(seq: u64, offset: u64) {
    tracing::warn!(
        segment = %segment_name(seq),
        offset,
        "an unfinished write ends this log segment (a crash mid-write leaves one; it was never acknowledged), ignored"
    );
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.seg")
}

/// Decodes the frame at `offset`; `None` where the chain ends.
fn frame_at(bytes: &[u8], offset: usize) -> Option<(LogEntry, usize)> {
    let header = bytes.get(offset..offset + FRAME_HEADER as usize)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 {
        return None;
    }
    let start = offset + FRAME_HEADER as usize;
    let payload = bytes.get(start..start + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let entry = postcard::from_bytes(payload).ok()?;
    Some((entry, FRAME_HEADER as usize + len))
}

/// Reads events by id, keeping segment files open.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    files: Mutex<HashMap<u64, std::sync::Arc<File>>>,
    /// Damaged frames skipped (for `/metrics`).
    damaged: Arc<AtomicU64>,
}

impl Reader {
    pub fn new(dir: &Path, damaged: Arc<AtomicU64>) -> Reader {
        Reader {
            dir: dir.to_owned(),
            files: Mutex::new(HashMap::new()),
            damaged,
        }
    }

    /// Closes segment `seq` (it is being deleted).
    pub fn forget(&self, seq: u64) {
        self.files.lock().expect("reader lock").remove(&seq);
    }

    /// Segment `seq`, opened once; `None` when it is not there.
    fn file(&self, seq: u64) -> Result<Option<std::sync::Arc<File>>, QueueError> {
        let mut files = self.files.lock().expect("reader lock");
        if let Some(f) = files.get(&seq) {
            return Ok(Some(f.clone()));
        }
        match File::open(segment_path(&self.dir, seq)) {
            Ok(f) => {
                let f = std::sync::Arc::new(f);
                files.insert(seq, f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(QueueError::Storage(e)),
        }
    }

    /// Up to `n` events in log order from position `from` up to `until`
    /// (the acknowledged end: nothing past it is read), and the position
    /// after the last one returned. In a segment before `until`'s, the end
    /// of the chain of frames ends the segment; in `until`'s own, a chain
    /// that ends early is damage. A damaged frame is skipped as
    /// [`scan`] does (logged with its place, counted), so one bad byte
    /// costs one event, not the rest of its segment, and never stops the
    /// router.
    pub fn page(
        &self,
        from: EventId,
        until: EventId,
        n: usize,
    ) -> Result<(Vec<Found>, EventId), QueueError> {
        self.read(from, until, n, CHUNK)
    }

    /// The event at `id` alone, when the log holds it (before `until`):
    /// reads about its frame, not a page's worth. Keeps only `id`'s
    /// segment open: a reader of single events (bodies read back for the
    /// dispatcher) moves through the log roughly in order, and must not
    /// hold a descriptor for every segment it passed.
    pub fn one(&self, id: EventId, until: EventId) -> Result<Option<Found>, QueueError> {
        /// Most events fit: a larger frame is read again whole.
        const FIRST_READ: u64 = 16 << 10;
        let (found, _) = self.read(id, until, 1, FIRST_READ)?;
        let (seq, _) = place_of(id);
        self.files
            .lock()
            .expect("reader lock")
            .retain(|&s, _| s == seq);
        Ok(found.into_iter().next().filter(|f| f.id == id))
    }

    /// [`Reader::page`], its first read `first` bytes.
    fn read(
        &self,
        from: EventId,
        until: EventId,
        n: usize,
        first: u64,
    ) -> Result<(Vec<Found>, EventId), QueueError> {
        let (mut seq, mut offset) = place_of(from);
        let (last_seq, last_offset) = place_of(until);
        let mut out = Vec::new();
        let mut want = first;
        while out.len() < n && (seq, offset) < (last_seq, last_offset) {
            let limit = if seq == last_seq {
                last_offset
            } else {
                SEGMENT_BYTES
            };
            let file = match self.file(seq)? {
                Some(f) if offset < limit => f,
                // Past this segment's end, or no such segment (ids skip
                // segments a restart prepared and never used).
                _ => {
                    let next = segments(&self.dir)
                        .map_err(QueueError::Storage)?
                        .into_iter()
                        .find(|&s| s > seq);
                    match next {
                        Some(s) if s <= last_seq => {
                            // Done with it: readers keep no descriptor of
                            // a segment behind them.
                            self.forget(seq);
                            (seq, offset) = (s, 0);
                        }
                        _ => break,
                    }
                    continue;
                }
            };
            let requested = want.min(limit - offset) as usize;
            let mut bytes = vec![0; requested];
            let read = read_up_to(&file, &mut bytes, offset).map_err(QueueError::Storage)?;
            bytes.truncate(read);
            // The file ends before `limit`: nothing more will come.
            let short = read < requested;
            want = CHUNK;
            let mut at = 0;
            // The chain ends (a zero header), or a frame does not check out.
            let (mut ended, mut damaged) = (false, false);
            while out.len() < n && offset + (at as u64) < limit {
                let rest = &bytes[at..];
                let room = limit - offset - at as u64;
                if rest.len() < FRAME_HEADER as usize {
                    // Cut by the chunk (read again from here) or the end.
                    ended = short || room < FRAME_HEADER;
                    break;
                }
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let total = FRAME_HEADER as usize + len;
                if len == 0 {
                    ended = true;
                    break;
                }
                if total as u64 > room {
                    damaged = true;
                    break;
                }
                if total > rest.len() {
                    damaged = short;
                    want = total as u64;
                    break;
                }
                match frame_at(&bytes, at) {
                    Some((entry, _)) => {
                        out.push(Found {
                            id: id_of(seq, offset + at as u64),
                            len: total as u32,
                            entry,
                        });
                        at += total;
                    }
                    None => {
                        damaged = true;
                        break;
                    }
                }
            }
            offset += at as u64;
            // Before the acknowledged end, a chain that ends is damage too.
            if damaged || (ended && seq == last_seq) {
                let mut region = vec![0; (limit - offset) as usize];
                let read = read_up_to(&file, &mut region, offset).map_err(QueueError::Storage)?;
                region.truncate(read);
                match after_damage(&region) {
                    Some(skip) => {
                        report_damage(seq, offset, skip as u64, &self.damaged);
                        offset += skip as u64;
                    }
                    None if seq == last_seq => {
                        report_damage(seq, offset, limit - offset, &self.damaged);
                        offset = limit;
                    }
                    None => {
                        report_unfinished(seq, offset);
                        offset = SEGMENT_BYTES;
                    }
                }
            } else if ended {
                offset = SEGMENT_BYTES;
            }
        }
        Ok((out, id_of(seq, offset)))
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(k) => read += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> LogEntry {
        LogEntry::V1 {
            seen_key: ByteBuf::from(vec![n]),
            expiry_ms: u64::from(n),
            record: ByteBuf::from(vec![n; 100 + n as usize]),
        }
    }

    #[test]
    fn appended_frames_scan_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let a = log.append(&[entry(1), entry(2)]).unwrap();
        let b = log.append(&[entry(3)]).unwrap();
        assert!(a[0].0 < a[1].0 && a[1].0 < b[0].0);
        assert_eq!(place_of(a[0].0), (1, 0));
        let found = scan(dir.path(), 1, 0, &AtomicU64::new(0)).unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!((found[2].id, found[2].len), b[0]);
        let reader = Reader::new(dir.path(), Default::default());
        let end = id_of(1, place_of(b[0].0).1 + u64::from(b[0].1));
        let (page, next) = reader.page(found[1].id, end, 1).unwrap();
        assert_eq!(page[0].entry, entry(2));
        assert_eq!(next, found[2].id);
    }

    #[test]
    fn a_dropped_log_leaves_nothing_being_prepared() {
        let dir = tempfile::tempdir().unwrap();
        drop(Log::create(dir.path(), 0).unwrap());
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let after_drop = names();
        assert!(
            after_drop.iter().all(|n| n.ends_with(".seg")),
            "{after_drop:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(names(), after_drop);
    }

    #[test]
    fn pages_cross_segments_and_stop_at_the_acknowledged_end() {
        let dir = tempfile::tempdir().unwrap();
        // Segment 3 goes (pruned); 4 is prepared and never written; 5
        // comes after a restart.
        let mut log = Log::create(dir.path(), 1).unwrap();
        let big = LogEntry::V1 {
            seen_key: ByteBuf::from(vec![1]),
            expiry_ms: 0,
            // Larger than one read: the page reads such a frame whole.
            record: ByteBuf::from(vec![7; 5 << 20]),
        };
        let mut ids = log.append(&[entry(1), big.clone()]).unwrap();
        ids.extend(log.append(std::slice::from_ref(&big)).unwrap());
        drop(log);
        let mut log = Log::create(dir.path(), 4).unwrap();
        ids.extend(log.append(&[entry(4), entry(5)]).unwrap());
        let seqs: Vec<u64> = ids.iter().map(|(id, _)| place_of(*id).0).collect();
        assert_eq!(seqs, [2, 2, 3, 5, 5]);
        std::fs::remove_file(segment_path(dir.path(), 3)).unwrap();
        let ids: Vec<_> = ids
            .into_iter()
            .filter(|(id, _)| place_of(*id).0 != 3)
            .collect();
        let acked = ids[2].0;
        let reader = Reader::new(dir.path(), Default::default());
        let (page, next) = reader.page(EventId(0), acked, usize::MAX).unwrap();
        let got: Vec<_> = page.iter().map(|f| (f.id, f.len)).collect();
        assert_eq!(got, ids[..2]);
        assert_eq!(next, acked);
        // Two at a time, up to the end.
        let end = EventId(ids[3].0 .0 + u64::from(ids[3].1));
        let (page, next) = reader.page(EventId(0), end, 2).unwrap();
        assert_eq!(page.len(), 2);
        let (page, next) = reader.page(next, end, 2).unwrap();
        assert_eq!(
            page.iter().map(|f| f.id).collect::<Vec<_>>(),
            [ids[2].0, ids[3].0]
        );
        assert_eq!(next, end);
        assert!(reader.page(end, end, 2).unwrap().0.is_empty());
    }

    /// Flips one byte of `ids[k]`'s frame, `at` bytes into it.
    fn damage(dir: &Path, id: EventId, at: u64, byte: u8) {
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, place_of(id).0))
            .unwrap();
        f.write_all_at(&[byte], place_of(id).1 + at).unwrap();
    }

    fn keys(found: &[Found]) -> Vec<u8> {
        found
            .iter()
            .map(|f| {
                let LogEntry::V1 { seen_key, .. } = &f.entry;
                seen_key[0]
            })
            .collect()
    }

    /// Regression (#8.3): one flipped byte in a frame dropped every event
    /// after it in its segment, with an INFO line. The frame is skipped by
    /// its length, reported and counted; the rest are read.
    #[test]
    fn a_damaged_frame_is_skipped_by_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let ids = log.append(&[entry(1), entry(2), entry(3)]).unwrap();
        damage(dir.path(), ids[1].0, FRAME_HEADER + 2, 0xff);
        let damaged = AtomicU64::new(0);
        assert_eq!(keys(&scan(dir.path(), 1, 0, &damaged).unwrap()), [1, 3]);
        assert_eq!(damaged.load(Ordering::Relaxed), 1);
        let end = EventId(ids[2].0 .0 + u64::from(ids[2].1));
        let counted = Arc::new(AtomicU64::new(0));
        let reader = Reader::new(dir.path(), counted.clone());
        let (found, next) = reader.page(EventId(0), end, 10).unwrap();
        assert_eq!((keys(&found), next), (vec![1, 3], end));
        assert_eq!(counted.load(Ordering::Relaxed), 1);
    }

    /// A damaged length: the next frame that checks out is found further on.
    #[test]
    fn a_damaged_length_resyncs_at_the_next_good_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let ids = log
            .append(&[entry(1), entry(2), entry(3), entry(4)])
            .unwrap();
        damage(dir.path(), ids[1].0, 1, 0x40);
        let damaged = AtomicU64::new(0);
        assert_eq!(keys(&scan(dir.path(), 1, 0, &damaged).unwrap()), [1, 3, 4]);
        let end = EventId(ids[3].0 .0 + u64::from(ids[3].1));
        let reader = Reader::new(dir.path(), Default::default());
        let (found, next) = reader.page(EventId(0), end, 10).unwrap();
        assert_eq!((keys(&found), next), (vec![1, 3, 4], end));
    }

    /// Before the acknowledged end, even the last frame's damage never
    /// stops the reader: it is skipped up to that end.
    #[test]
    fn a_damaged_last_acknowledged_frame_is_skipped_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let ids = log.append(&[entry(1), entry(2)]).unwrap();
        damage(dir.path(), ids[1].0, FRAME_HEADER + 2, 0xff);
        let end = EventId(ids[1].0 .0 + u64::from(ids[1].1));
        let counted = Arc::new(AtomicU64::new(0));
        let (found, next) = Reader::new(dir.path(), counted.clone())
            .page(EventId(0), end, 10)
            .unwrap();
        assert_eq!((keys(&found), next), (vec![1], end));
        assert_eq!(counted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn borrowed_entries_encode_as_owned_ones() {
        let owned = entry(9);
        let LogEntry::V1 {
            seen_key,
            expiry_ms,
            record,
        } = &owned;
        let borrowed = LogEntryRef::V1 {
            seen_key,
            expiry_ms: *expiry_ms,
            record,
        };
        assert_eq!(
            postcard::to_stdvec(&borrowed).unwrap(),
            postcard::to_stdvec(&owned).unwrap()
        );
    }

    /// What a crash mid-write leaves (a frame never finished, nothing
    /// good after it) ends the chain quietly: it was never acknowledged.
    #[test]
    fn an_unfinished_write_ends_the_chain_without_counting_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let ids = log.append(&[entry(1), entry(2), entry(3)]).unwrap();
        drop(log);
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        // The third frame half written: its tail is still zeros.
        let (_, third) = place_of(ids[2].0);
        f.write_all_at(&vec![0; ids[2].1 as usize - 10], third + 10)
            .unwrap();
        let damaged = AtomicU64::new(0);
        let found = scan(dir.path(), 1, 0, &damaged).unwrap();
        assert_eq!(keys(&found), [1, 2]);
        assert_eq!(damaged.load(Ordering::Relaxed), 0);
    }

    /// Regression (#8.12): each start began a new 8 MiB segment. The log
    /// goes on in the last one when nothing lies past its end.
    #[test]
    fn a_restart_goes_on_in_the_last_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 0).unwrap();
        let ids = log.append(&[entry(1), entry(2)]).unwrap();
        drop(log);
        let end = EventId(ids[1].0 .0 + u64::from(ids[1].1));
        let mut log = Log::resume(dir.path(), end).unwrap();
        let more = log.append(&[entry(3)]).unwrap();
        assert_eq!(more[0].0, end, "written where the log ended");
        drop(log);
        let found = scan(dir.path(), 1, 0, &AtomicU64::new(0)).unwrap();
        assert_eq!(keys(&found), [1, 2, 3]);
        assert_eq!(segments(dir.path()).unwrap(), [1], "no segment started");
        // Debris past the end (a crash mid-write): a fresh segment, so no
        // id is given out twice.
        let end = EventId(more[0].0 .0 + u64::from(more[0].1));
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .unwrap();
        f.write_all_at(&[7; 100], place_of(end).1 + 20).unwrap();
        assert_eq!(Log::resume(dir.path(), end).unwrap().seq, 2);
        // A segment without room: the next one.
        let full = id_of(1, SEGMENT_BYTES - 100);
        assert_eq!(Log::resume(dir.path(), full).unwrap().seq, 2);
    }

    #[test]
    fn full_segment_rolls_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::create(dir.path(), 6).unwrap();
        let big = LogEntry::V1 {
            seen_key: ByteBuf::from(vec![1]),
            expiry_ms: 0,
            record: ByteBuf::from(vec![7; (SEGMENT_BYTES / 2) as usize]),
        };
        let first = log.append(std::slice::from_ref(&big)).unwrap();
        let second = log.append(std::slice::from_ref(&big)).unwrap();
        assert_eq!(place_of(first[0].0).0, 7);
        assert_eq!(place_of(second[0].0), (8, 0));
        assert_eq!(scan(dir.path(), 8, 0, &AtomicU64::new(0)).unwrap().len(), 1);
    }
}

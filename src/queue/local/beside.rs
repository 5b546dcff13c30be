//! Files beside each log segment, appended by the writer once a batch is
//! durable and never synced on their own (the segment can rebuild them):
//! `{seq:016x}.keys` (dedupe keys, `seen.rs`) and `{seq:016x}.events`
//! (what a listing shows of each event, `listed.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::log;
use super::EventId;

/// `dir/{seq:016x}.{ext}`.
pub fn path(dir: &Path, seq: u64, ext: &str) -> PathBuf {
    dir.join(format!("{seq:016x}.{ext}"))
}

/// The segments that have a `.{ext}` file in `dir`, oldest first.
pub fn seqs(dir: &Path, ext: &str) -> std::io::Result<Vec<u64>> {
    let suffix = format!(".{ext}");
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let hex = name.to_str()?.strip_suffix(suffix.as_str())?;
            (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Appends records to the `.{ext}` file of their segment, keeping the
/// last one open.
#[derive(Debug)]
pub struct Appender {
    dir: PathBuf,
    ext: &'static str,
    /// The file being appended to: its segment, and its length.
    open: Option<(u64, File, u64)>,
}

impl Appender {
    pub fn new(dir: &Path, ext: &'static str) -> Appender {
        Appender {
            dir: dir.to_owned(),
            ext,
            open: None,
        }
    }

    /// Appends `records` (in log order: each an event id and the end of
    /// its bytes in `buf`), each to its segment's file. On error the file
    /// is cut back to where it was, so a retry appends the same records in
    /// the same place.
    pub fn append(&mut self, buf: &[u8], records: &[(EventId, usize)]) -> std::io::Result<()> {
        let mut rest = records;
        let mut from = 0;
        while let Some(&(first, _)) = rest.first() {
            let (seq, _) = log::place_of(first);
            let n = rest
                .iter()
                .take_while(|(id, _)| log::place_of(*id).0 == seq)
                .count();
            let to = rest[n - 1].1;
            let (file, len) = self.file(seq)?;
            if let Err(e) = file.write_all(&buf[from..to]) {
                let _ = file.set_len(*len);
                return Err(e);
            }
            *len += (to - from) as u64;
            (rest, from) = (&rest[n..], to);
        }
        Ok(())
    }

    /// Segment `seq`'s file, opened for appending. Nothing here syncs (a
    /// sync would wait in line with the log's).
    fn file(&mut self, seq: u64) -> std::io::Result<(&mut File, &mut u64)> {
        if self.open.as_ref().is_none_or(|(s, _, _)| *s != seq) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path(&self.dir, seq, self.ext))?;
            let len = f.metadata()?.len();
            self.open = Some((seq, f, len));
        }
        let (_, file, len) = self.open.as_mut().expect("just opened");
        Ok((file, len))
    }

    /// Makes what was appended to the open file durable.
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.open {
            Some((_, f, _)) => f.sync_data(),
            None => Ok(()),
        }
    }
}

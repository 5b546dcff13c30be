//! A data directory from before the state moved to redb (session 18):
//! sled's trees under `data_dir/sled` are copied, each to the table of
//! its name, into a new state file, which takes its place only once it
//! is whole and durable; then the sled directory goes.
//!
//! A crash before the rename leaves sled as it was and a partial file,
//! which the next start removes and makes again; a crash after it leaves
//! a sled directory beside a whole state file, which the next start
//! removes. Tables the code no longer reads (what listings showed, filed
//! by the router before `listed.rs`) are not copied. Trees of the older
//! layouts (`inbox`, `seen`, `unmatched`) are, and are read and dropped
//! as before (`store::cursor_of`).

use std::path::Path;

use super::kv::Db;
use super::QueueError;

/// sled's own tree, and trees no version since reads.
const NOT_COPIED: [&[u8]; 3] = [b"__sled__default", b"event_index", b"event_delivery_ids"];
/// Entries copied per transaction.
const BATCH: usize = 4096;

/// Converts `data_dir/sled` into the state file at `path` when it is
/// there (see the module's text).
pub fn convert(data_dir: &Path, path: &Path) -> Result<(), QueueError> {
    let sled_dir = data_dir.join("sled");
    if !sled_dir.is_dir() {
        return Ok(());
    }
    if path.exists() {
        tracing::info!(path = %sled_dir.display(), "removing the sled directory already converted");
        return std::fs::remove_dir_all(&sled_dir).map_err(QueueError::Storage);
    }
    let started = std::time::Instant::now();
    let partial = path.with_extension("converting");
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(QueueError::Storage(e)),
        _ => {}
    }
    let copied = copy(&sled_dir, &partial)?;
    std::fs::rename(&partial, path).map_err(QueueError::Storage)?;
    // The new file's name, and its directory's, durable before sled goes.
    sync_dir(path.parent().unwrap_or(data_dir))?;
    sync_dir(data_dir)?;
    std::fs::remove_dir_all(&sled_dir).map_err(QueueError::Storage)?;
    sync_dir(data_dir)?;
    tracing::info!(
        entries = copied,
        took_ms = started.elapsed().as_millis() as u64,
        "converted the routing and delivery state from sled to its new file"
    );
    Ok(())
}

/// Copies every tree into a new file at `to`, made durable; returns the
/// entries copied.
fn copy(sled_dir: &Path, to: &Path) -> Result<u64, QueueError> {
    {
        // sled's own lock (a flock on `db`), held while its leftovers go:
        // an earlier version's daemon still running on it keeps them.
        let db = std::fs::File::open(sled_dir.join("db")).ok();
        if db.as_ref().is_some_and(|f| f.try_lock().is_err()) {
            return Err(QueueError::Storage(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "the sled directory is in use by another process",
            )));
        }
        remove_unfinished_snapshots(sled_dir).map_err(QueueError::Storage)?;
    }
    let old = sled::Config::new()
        .path(sled_dir)
        .cache_capacity(8 << 20)
        .open()
        .map_err(|e| match e {
            // An earlier version's daemon still runs on it: said as the
            // state's own lock is (`daemon::open_dir`).
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                QueueError::Storage(std::io::Error::new(std::io::ErrorKind::WouldBlock, io))
            }
            other => other.into(),
        })?;
    let names: Vec<String> = old
        .tree_names()
        .into_iter()
        .filter(|n| !NOT_COPIED.contains(&n.as_ref()))
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    let db = Db::open(to, &[])?;
    let mut copied = 0u64;
    for name in &names {
        let tree = old.open_tree(name)?;
        let mut entries = tree.iter();
        loop {
            let chunk = entries
                .by_ref()
                .take(BATCH)
                .collect::<Result<Vec<_>, _>>()?;
            if chunk.is_empty() {
                break;
            }
            copied += chunk.len() as u64;
            db.write(|tx| {
                let mut t = tx.open_name(name)?;
                for (k, v) in &chunk {
                    t.insert(k.as_ref(), v.as_ref())?;
                }
                Ok(())
            })?;
        }
    }
    // Ids go on after sled's.
    db.ids_from(old.generate_id()?)?;
    db.checkpoint()?;
    Ok(copied)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(QueueError::Storage)
}

/// Removes `snap.*.generating` files: sled 0.34 writes a snapshot at every
/// open under that name and renames it once synced, but takes a leftover
/// one (a write that failed on a full disk, or a crash) for the newest
/// snapshot and then refuses to open ("corrupted data"). One is never
/// valid. (Found by the fault-injection test.)
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing an unfinished sled snapshot");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

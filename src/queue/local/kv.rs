//! The routing and delivery state's tables: redb, one file, byte keys to
//! byte values, behind the few calls the queue makes.
//!
//! redb is a copy-on-write B-tree whose memory is its page cache
//! ([`CACHE_BYTES`]) and nothing per entry: sled 0.34, before it, kept
//! about 150 bytes of state in memory for every routed event whatever its
//! cache size, and cost four times the CPU a write (bench/README.md,
//! session 18). Each write transaction commits without a sync
//! ([`Durability::None`]); [`Db::checkpoint`], every second and at stop,
//! commits durably (with redb's quick repair, so an open after a crash
//! does not walk the file), and that makes every commit before it durable
//! too. A crash loses at most the last second of state, as it did with
//! sled: the router routes those events again from its saved cursor.

use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use super::QueueError;

/// redb's page cache; its default (1 GiB) would dwarf the daemon.
pub const CACHE_BYTES: usize = 16 << 20;
/// Ids handed out between two writes of the next unused one (`meta`).
const ID_BLOCK: u64 = 1 << 20;
/// `meta` key: no id at or above it has been handed out.
const NEXT_ID_KEY: &[u8] = b"next_id";

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// Where the next id is kept.
const META: Def = TableDefinition::new("meta");

/// A redb error as ours: its I/O error as it is (a full disk, permission
/// denied), a file another process holds as `WouldBlock`, the rest as
/// redb words them.
fn storage(e: impl Into<redb::Error>) -> QueueError {
    match e.into() {
        redb::Error::Io(io) => QueueError::Storage(io),
        redb::Error::DatabaseAlreadyOpen => QueueError::Storage(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the state file is open in another process",
        )),
        other => QueueError::Storage(std::io::Error::other(other)),
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> Self {
                storage(e)
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The state file.
pub struct Db {
    db: Database,
    /// A commit was made since the last durable one.
    dirty: AtomicBool,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
    /// The next id, and the first one not reserved in `meta`.
    ids: Mutex<(u64, u64)>,
}

impl Db {
    /// Opens (or creates) the file at `path` with `meta` and the tables
    /// `names`.
    pub fn open(path: &Path, names: &[&str]) -> Result<Arc<Db>, QueueError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let db = Db {
            db,
            dirty: AtomicBool::new(false),
            checkpointing: Mutex::new(()),
            ids: Mutex::new((0, 0)),
        };
        db.write(|tx| {
            tx.tx.open_table(META)?;
            for name in names {
                tx.tx.open_table(Tree::def(name))?;
            }
            Ok(())
        })?;
        let db = Arc::new(db);
        let next = db
            .tree("meta")
            .get(NEXT_ID_KEY)?
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        *db.ids.lock().expect("ids lock") = (next, next);
        Ok(db)
    }

    /// Compacts the file at `path`, which no other process may have
    /// open: live pages move down, and the free ones at its end go back
    /// to the filesystem (a drained backlog leaves most of a file free,
    /// and commits only give back free pages already at its end). Its
    /// size before and after, in bytes.
    pub fn compact(path: &Path) -> Result<(u64, u64), QueueError> {
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(QueueError::Storage)
        };
        let before = size(path)?;
        let mut db = Database::builder().set_cache_size(CACHE_BYTES).open(path)?;
        while db.compact().map_err(storage)? {}
        drop(db);
        Ok((before, size(path)?))
    }

    /// The table `name` (made by [`Db::open`]).
    pub fn tree(self: &Arc<Self>, name: &'static str) -> Tree {
        Tree {
            db: self.clone(),
            def: TableDefinition::new(name),
        }
    }

    /// Runs `f` in a write transaction and commits it (not durably: see
    /// [`Db::checkpoint`]). Nothing is written when `f` fails. Write
    /// transactions take turns: `f` must not start another.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        // Marked while this transaction is open, before its commit, which
        // others may read at once: a checkpoint that clears the mark then
        // begins its durable commit, which waits for this one (write
        // transactions take turns) and so covers it; one that found the
        // mark clear looked before anything here was readable.
        self.dirty.store(true, Ordering::Release);
        let out = f(&Tx { tx: &tx })?;
        tx.commit()?;
        Ok(out)
    }

    /// Makes every commit so far durable: one durable commit, skipped
    /// when nothing was committed since the last.
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        let _one = self.checkpointing.lock().expect("checkpoint lock");
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let durable = self.commit_durably(|_| Ok(()));
        if durable.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        durable
    }

    /// Runs `f` in a write transaction committed durably, with redb's
    /// quick repair (its allocator state saved, so an open after a crash
    /// does not walk the file); every commit before it is durable too.
    fn commit_durably(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        f(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// A fresh id: unique and increasing for the life of the file (an id
    /// handed out before a crash is never handed out again, though some
    /// are skipped).
    pub fn generate_id(&self) -> Result<u64, QueueError> {
        let mut ids = self.ids.lock().expect("ids lock");
        if ids.0 == ids.1 {
            let upto = ids.1 + ID_BLOCK;
            // Durable before any of them is handed out: ids live on in
            // memory across a reopen after a storage failure (leases,
            // outcomes waiting to be written), which goes back to the
            // last durable commit.
            self.commit_durably(|tx| {
                tx.open_table(META)?
                    .insert(NEXT_ID_KEY, &upto.to_be_bytes()[..])?;
                Ok(())
            })?;
            ids.1 = upto;
        }
        ids.0 += 1;
        Ok(ids.0 - 1)
    }

    /// Ids from `next` on are free (a store converted from sled).
    pub fn ids_from(&self, next: u64) -> Result<(), QueueError> {
        let mut ids = self.ids.lock().expect("ids lock");
        let next = next.max(ids.0);
        self.write(|tx| {
            tx.tx
                .open_table(META)?
                .insert(NEXT_ID_KEY, &next.to_be_bytes()[..])?;
            Ok(())
        })?;
        *ids = (next, next);
        Ok(())
    }

    /// The tables in the file.
    pub fn table_names(&self) -> Result<Vec<String>, QueueError> {
        let tx = self.db.begin_read()?;
        let names = tx.list_tables()?.map(|t| t.name().to_owned()).collect();
        Ok(names)
    }

    /// Deletes a table (one an earlier layout had); `false` if none.
    pub fn drop_table(&self, name: &str) -> Result<bool, QueueError> {
        self.write(|tx| Ok(tx.tx.delete_table(Tree::def(name))?))
    }
}

/// A write transaction (see [`Db::write`]).
pub struct Tx<'a> {
    tx: &'a redb::WriteTransaction,
}

impl Tx<'_> {
    /// `tree`'s table, to write. Each table once at a time.
    pub fn open(
        &self,
        tree: &Tree,
    ) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, QueueError> {
        Ok(self.tx.open_table(tree.def)?)
    }

    /// The table `name`, to write (made when it is not there).
    pub fn open_name(
        &self,
        name: &str,
    ) -> Result<redb::Table<'_, &'static [u8], &'static [u8]>, QueueError> {
        Ok(self.tx.open_table(Tree::def(name))?)
    }
}

/// One table of a [`Db`], by name. Reads see the last commit; a write
/// outside [`Db::write`] is a transaction of its own.
pub struct Tree {
    db: Arc<Db>,
    def: Def,
}

/// A key and its value, copied out of the file.
pub type Entry = (Vec<u8>, Vec<u8>);

impl Tree {
    fn def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
        TableDefinition::new(name)
    }

    fn read(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, QueueError> {
        Ok(self.db.db.begin_read()?.open_table(self.def)?)
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self.read()?.get(key.as_ref())?.map(|v| v.value().to_vec()))
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, QueueError> {
        Ok(self.read()?.get(key.as_ref())?.is_some())
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// How many entries (redb keeps the count: no read of the table).
    pub fn len(&self) -> Result<u64, QueueError> {
        Ok(self.read()?.len()?)
    }

    pub fn first(&self) -> Result<Option<Entry>, QueueError> {
        Ok(self
            .read()?
            .first()?
            .map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
    }

    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.db.write(|tx| {
            Ok(tx
                .open(self)?
                .insert(key, value)?
                .map(|v| v.value().to_vec()))
        })
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, QueueError> {
        let key = key.as_ref();
        self.db
            .write(|tx| Ok(tx.open(self)?.remove(key)?.map(|v| v.value().to_vec())))
    }

    /// Every entry, in key order (both ways).
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The entries in `range`, in key order (both ways), as of now.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let bound = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (lo, hi) = (bound(range.start_bound()), bound(range.end_bound()));
        fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
            match b {
                Bound::Included(k) => Bound::Included(k.as_slice()),
                Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        match self
            .read()
            .and_then(|t| Ok(t.range::<&[u8]>((as_ref(&lo), as_ref(&hi)))?))
        {
            Ok(range) => Iter::Range(range),
            Err(e) => Iter::Failed(Some(e)),
        }
    }

    /// The entries whose key starts with `prefix`.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        match successor(prefix) {
            Some(end) => self.range(prefix.to_vec()..end),
            None => self.range(prefix.to_vec()..),
        }
    }

    /// Applies `batch` in one transaction.
    pub fn apply_batch(&self, batch: Batch) -> Result<(), QueueError> {
        if batch.0.is_empty() {
            return Ok(());
        }
        self.db.write(|tx| {
            let mut t = tx.open(self)?;
            for (k, v) in &batch.0 {
                match v {
                    Some(v) => t.insert(k.as_slice(), v.as_slice())?,
                    None => t.remove(k.as_slice())?,
                };
            }
            Ok(())
        })
    }
}

/// The first key after every key starting with `prefix` (`None`: there is
/// none, the prefix is all 0xff).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Writes to one table, applied together ([`Tree::apply_batch`]).
#[derive(Default)]
pub struct Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Batch {
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.0.push((key.to_vec(), Some(value.to_vec())));
    }
}

/// Entries of a table, copied out one by one; an error ends it.
pub enum Iter {
    Range(redb::Range<'static, &'static [u8], &'static [u8]>),
    Failed(Option<QueueError>),
}

impl Iter {
    /// The keys only.
    pub fn keys(self) -> impl DoubleEndedIterator<Item = Result<Vec<u8>, QueueError>> {
        self.map(|kv| kv.map(|(k, _)| k))
    }
}

/// An entry as redb's range yields it.
type Guarded<'a> = (
    redb::AccessGuard<'a, &'static [u8]>,
    redb::AccessGuard<'a, &'static [u8]>,
);

fn copied(
    kv: Option<Result<Guarded<'_>, redb::StorageError>>,
) -> Option<Result<Entry, QueueError>> {
    kv.map(|kv| {
        kv.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
            .map_err(QueueError::from)
    })
}

impl Iterator for Iter {
    type Item = Result<Entry, QueueError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Range(r) => copied(r.next()),
            Iter::Failed(e) => e.take().map(Err),
        }
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Range(r) => copied(r.next_back()),
            Iter::Failed(e) => e.take().map(Err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_before_the_next_prefix() {
        assert_eq!(successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.redb"), &["t"]).unwrap();
        let t = db.tree("t");
        for k in [&b"a\xff"[..], b"a\xff\xff", b"a", b"b", b"\xff"] {
            t.insert(k, b"").unwrap();
        }
        let keys = |it: Iter| it.keys().map(Result::unwrap).collect::<Vec<_>>();
        assert_eq!(keys(t.scan_prefix(b"a\xff")), [&b"a\xff"[..], b"a\xff\xff"]);
        assert_eq!(keys(t.scan_prefix(b"\xff")), [&b"\xff"[..]]);
        assert_eq!(t.scan_prefix(b"a").rev().count(), 3);
        assert_eq!(t.len().unwrap(), 5);
    }

    #[test]
    fn ids_never_repeat_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let db = Db::open(&path, &["meta"]).unwrap();
            for _ in 0..3 {
                seen.push(db.generate_id().unwrap());
            }
            db.checkpoint().unwrap();
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(&seen[..3], [0, 1, 2]);
    }

    /// A process that dies (no drop: redb's own close would commit)
    /// leaves what its last checkpoint made durable, not the commits
    /// after it; and ids it handed out are not handed out again.
    #[test]
    fn a_crash_keeps_the_last_checkpoint_and_never_repeats_an_id() {
        const CHILD: &str = "HOOKGATE_KV_CRASH";
        if let Some(path) = std::env::var_os(CHILD) {
            let db = Db::open(Path::new(&path), &["t"]).unwrap();
            let t = db.tree("t");
            t.insert(b"durable", b"1").unwrap();
            db.checkpoint().unwrap();
            // The first ids reserve their block after the checkpoint.
            let (id, later) = (db.generate_id().unwrap(), db.generate_id().unwrap());
            t.insert(b"lost", b"2").unwrap();
            println!("ids {id} {later}");
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "queue::local::kv::tests::a_crash_keeps_the_last_checkpoint_and_never_repeats_an_id",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &path)
            .output()
            .unwrap();
        assert!(!child.status.success(), "the child aborts");
        let out = String::from_utf8_lossy(&child.stdout);
        let handed: Vec<u64> = out
            .lines()
            .find_map(|l| l.split_once("ids ").map(|(_, ids)| ids))
            .unwrap_or_else(|| {
                panic!(
                    "the child printed its ids: {out}\n{}",
                    String::from_utf8_lossy(&child.stderr)
                )
            })
            .split(' ')
            .map(|n| n.parse().unwrap())
            .collect();
        let db = Db::open(&path, &["t"]).unwrap();
        let t = db.tree("t");
        assert_eq!(t.get(b"durable").unwrap(), Some(b"1".to_vec()));
        assert_eq!(t.get(b"lost").unwrap(), None, "not checkpointed");
        let next = db.generate_id().unwrap();
        assert!(handed.iter().all(|&h| next > h), "{next} after {handed:?}");
    }
}

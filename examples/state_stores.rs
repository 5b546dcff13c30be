//! sled 0.34 and redb side by side on the local backend's write pattern
//! (not a test; the measurement behind moving the routing and delivery
//! state to redb, bench/README.md, session 18).
//!
//! Each event routed as in `bench/backlog.sh`: a pending delivery (a
//! 300-byte record by due time, its id, its `refs` and `by_event` keys)
//! and a dead letter (a 700-byte record, its `dead_at` and `by_event`
//! keys): seven entries, written a page of 100 events a transaction with
//! the router's cursor. Then the drain: 200 due deliveries read a
//! transaction, each moved to the delivered history. Both stores are made
//! durable once a second, as the daemon does (sled: its flush; redb: a
//! durable commit with quick repair, the others not synced).
//!
//!   cargo run --release --example state_stores -- sled|redb EVENTS DIR
//!
//! Prints CPU time an event (fill) and a delivery (drain), and peak RSS.

use std::time::{Duration, Instant};

const PAGE: u64 = 100;
const DRAIN_PAGE: usize = 200;
const TABLES: [&str; 9] = [
    "deliveries",
    "pending_ids",
    "refs",
    "by_event",
    "dead",
    "dead_at",
    "delivered",
    "delivered_at",
    "meta",
];

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// User and system CPU seconds of this process.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn key(prefix: &[u8], a: u64, b: u64) -> Vec<u8> {
    [prefix, &a.to_be_bytes(), &b.to_be_bytes()].concat()
}

/// `n` bytes that do not compress.
fn value(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The entries routing writes for event `e`: (table, key, value).
fn routed(e: u64) -> [(usize, Vec<u8>, Vec<u8>); 7] {
    let (id, dead) = (2 * e, 2 * e + 1);
    let due = key(b"chat", 1_000_000 + e, id);
    [
        (0, due.clone(), value(300, id)),
        (1, id.to_be_bytes().to_vec(), due),
        (2, key(b"", e / 20_000, id), vec![]),
        (3, key(b"", e, id), vec![]),
        (3, key(b"", e, dead), vec![]),
        (4, dead.to_be_bytes().to_vec(), value(700, dead)),
        (5, key(b"", 1_000_000 + e, dead), vec![]),
    ]
}

/// What settling a drained delivery does: (table, key, value or removal).
fn drained(k: &[u8], v: &[u8]) -> [(usize, Vec<u8>, Option<Vec<u8>>); 5] {
    let id = u64::from_be_bytes(k[12..20].try_into().expect("due key"));
    let e = id / 2;
    [
        (0, k.to_vec(), None),
        (1, id.to_be_bytes().to_vec(), None),
        (2, key(b"", e / 20_000, id), None),
        (6, id.to_be_bytes().to_vec(), Some(v.to_vec())),
        (7, key(b"", 2_000_000 + e, id), Some(vec![])),
    ]
}

/// A store under test: a transaction of writes, and the first due entries.
trait Store {
    fn write(&mut self, entries: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>);
    fn due(&self, n: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
    fn durable(&mut self);
}

struct Sled {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    last: Instant,
}

impl Store for Sled {
    fn write(&mut self, entries: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>) {
        use sled::Transactional;
        let t = &self.trees;
        let trees = [
            &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], &t[8],
        ];
        trees[..]
            .transaction(|tx| {
                for (table, k, v) in &entries {
                    match v {
                        Some(v) => tx[*table].insert(k.as_slice(), v.as_slice())?,
                        None => tx[*table].remove(k.as_slice())?,
                    };
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .expect("sled transaction");
        // Flushed once a second, as the redb store commits durably.
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.durable();
            self.last = Instant::now();
        }
    }

    fn due(&self, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.trees[0]
            .scan_prefix(b"chat")
            .take(n)
            .map(|kv| {
                let (k, v) = kv.expect("sled read");
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    fn durable(&mut self) {
        self.db.flush().expect("sled flush");
    }
}

struct Redb {
    db: redb::Database,
    last: Instant,
}

fn table(name: &str) -> redb::TableDefinition<'_, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(name)
}

impl Store for Redb {
    fn write(&mut self, entries: Vec<(usize, Vec<u8>, Option<Vec<u8>>)>) {
        let mut tx = self.db.begin_write().expect("redb write");
        // A durable commit a second, the others not synced.
        if self.last.elapsed() >= Duration::from_secs(1) {
            tx.set_quick_repair(true);
            self.last = Instant::now();
        } else {
            tx.set_durability(redb::Durability::None)
                .expect("durability");
        }
        {
            let mut tables: Vec<_> = TABLES
                .iter()
                .map(|n| tx.open_table(table(n)).expect("table"))
                .collect();
            for (t, k, v) in &entries {
                match v {
                    Some(v) => tables[*t].insert(k.as_slice(), v.as_slice()),
                    None => tables[*t].remove(k.as_slice()),
                }
                .expect("redb insert");
            }
        }
        tx.commit().expect("redb commit");
    }

    fn due(&self, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().expect("redb read");
        let t = tx.open_table(table("deliveries")).expect("table");
        let from: &[u8] = b"chat";
        let due = t
            .range(from..)
            .expect("range")
            .take(n)
            .map(|kv| {
                let (k, v) = kv.expect("redb read");
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        due
    }

    fn durable(&mut self) {
        let mut tx = self.db.begin_write().expect("redb write");
        tx.set_quick_repair(true);
        tx.commit().expect("redb commit");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, which, events, dir] = &args[..] else {
        eprintln!("usage: state_stores sled|redb EVENTS DIR");
        std::process::exit(2);
    };
    let n: u64 = events.parse().expect("EVENTS is a number");
    let dir = std::path::PathBuf::from(dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("DIR");
    let mut store: Box<dyn Store> = match which.as_str() {
        "sled" => {
            let db = sled::Config::new()
                .path(dir.join("sled"))
                .cache_capacity(8 << 20)
                .flush_every_ms(None)
                .open()
                .expect("sled");
            let trees = TABLES
                .iter()
                .map(|t| db.open_tree(t).expect("tree"))
                .collect();
            Box::new(Sled {
                db,
                trees,
                last: Instant::now(),
            })
        }
        "redb" => {
            let db = redb::Database::builder()
                .set_cache_size(16 << 20)
                .create(dir.join("state.redb"))
                .expect("redb");
            Box::new(Redb {
                db,
                last: Instant::now(),
            })
        }
        other => panic!("{other}: sled or redb"),
    };
    let (started, cpu) = (Instant::now(), cpu_secs());
    let mut peak = 0;
    let mut e = 0;
    while e < n {
        let mut page: Vec<_> = (e..(e + PAGE).min(n))
            .flat_map(routed)
            .map(|(t, k, v)| (t, k, Some(v)))
            .collect();
        page.push((8, b"routed".to_vec(), Some(e.to_be_bytes().to_vec())));
        store.write(page);
        e += PAGE;
        if e % 50_000 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    store.durable();
    let fill_cpu = cpu_secs() - cpu;
    println!(
        "{which} fill {n}: {:.1} s, {:.1} µs of CPU an event, peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        fill_cpu * 1e6 / n as f64,
        peak.max(rss_mib())
    );
    let (started, cpu, mut peak, mut done) = (Instant::now(), cpu_secs(), 0, 0u64);
    loop {
        let due = store.due(DRAIN_PAGE);
        if due.is_empty() {
            break;
        }
        done += due.len() as u64;
        store.write(due.iter().flat_map(|(k, v)| drained(k, v)).collect());
        if done % 50_000 == 0 {
            peak = peak.max(rss_mib());
        }
    }
    store.durable();
    println!(
        "{which} drain {done}: {:.1} s, {:.1} µs of CPU a delivery, peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        (cpu_secs() - cpu) * 1e6 / done.max(1) as f64,
        peak.max(rss_mib())
    );
}

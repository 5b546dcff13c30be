//! Recovery from a damaged event log: the input is the front of segment
//! `log/0000000000000001.seg` (the rest zeros, 8 MiB in all, as segments
//! are), in a fresh data dir with no sled state and no `.keys` files.
//! Opening it (`LocalStore::inspect`, which reads the dedupe keys back from
//! the log) and reading every event back must return, never panic or hang.
//! Only the public API is used, so the target holds while the frame
//! handling inside `queue/log.rs` changes.

#![no_main]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use hookgate::queue::LocalStore;

/// Size of a log segment (`queue/log.rs`).
const SEGMENT_BYTES: u64 = 8 << 20;

/// A data dir of its own per input: on tmpfs where there is one, since
/// sled syncs as it opens.
fn fresh_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    base.join(format!("hookgate-fuzz-{}-{n}", std::process::id()))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(SEGMENT_BYTES as usize)];
    let dir = fresh_dir();
    let log = dir.join("log");
    std::fs::create_dir_all(&log).expect("a data dir");
    let segment = log.join(format!("{:016x}.seg", 1));
    std::fs::write(&segment, data).expect("the segment");
    std::fs::File::options()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(SEGMENT_BYTES))
        .expect("the segment's zeros");
    if let Ok(queue) = LocalStore::inspect(&dir) {
        if let Ok(events) = queue.events() {
            assert!(
                events.windows(2).all(|w| w[0].0 < w[1].0),
                "events out of log order"
            );
        }
        let _ = queue.inbox();
        let _ = queue.stats();
    }
    let _ = std::fs::remove_dir_all(&dir);
});

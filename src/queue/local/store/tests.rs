use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

fn event(source: &str, key: &str) -> NewEvent {
    NewEvent {
        record: EventRecord {
            source: source.into(),
            provider: "github".into(),
            event: "push".into(),
            delivery_id: key.into(),
            received_at_ms: 0,
            client_ip: "127.0.0.1".into(),
            headers: vec![],
            body: format!("{{\"k\":\"{key}\"}}").into_bytes(),
        },
        dedupe: crate::queue::Dedupe::Key(key.into()),
        dedupe_window: Duration::from_secs(60),
    }
}

/// Opens a queue in `dir`, queues `n` events keyed `{prefix}{i}` at `now`,
/// flushes it and closes it (waiting for sled to let go of its lock).
async fn queue_and_close(
    dir: &std::path::Path,
    prefix: &str,
    n: usize,
    now: SystemTime,
) -> Vec<EventId> {
    let mut ids = Vec::new();
    {
        let q = LocalStore::open(dir, true).unwrap();
        for i in 0..n {
            let key = format!("{prefix}{i}");
            let Appended::Queued(id) = q.append(event("gh", &key), now).await.unwrap() else {
                panic!("{key} is new")
            };
            ids.push(id);
        }
        q.flush().unwrap();
    }
    ids
}

/// Routes every event in the inbox to nowhere (unmatched).
fn route_all(q: &LocalStore) -> usize {
    let page = q.inbox_page(usize::MAX).unwrap();
    let routed: Vec<super::super::Routed> = page
        .events
        .iter()
        .map(|(id, _)| super::super::Routed {
            event: *id,
            pending: vec![],
            dead: vec![],
        })
        .collect();
    q.routed(&routed, page.from, page.next).unwrap();
    routed.len()
}

#[tokio::test]
async fn duplicate_within_window_is_not_queued_again() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let now = SystemTime::now();
    let Appended::Queued(id) = q.append(event("gh", "a"), now).await.unwrap() else {
        panic!("first copy must be queued")
    };
    assert_eq!(
        q.append(event("gh", "a"), now).await.unwrap(),
        Appended::Duplicate(id)
    );
    // The same id from another source is another delivery.
    assert!(matches!(
        q.append(event("gl", "a"), now).await.unwrap(),
        Appended::Queued(_)
    ));
    assert_eq!(q.inbox().unwrap().len(), 2);
}

#[tokio::test]
async fn key_is_forgotten_after_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let t0 = SystemTime::now();
    q.append(event("gh", "a"), t0).await.unwrap();
    let later = t0 + Duration::from_secs(61);
    assert!(matches!(
        q.append(event("gh", "a"), later).await.unwrap(),
        Appended::Queued(_)
    ));
    assert_eq!(
        q.prune_seen(later + Duration::from_secs(61)).await.unwrap(),
        1
    );
    assert_eq!(q.stats().unwrap().seen, 0);
}

#[tokio::test]
async fn concurrent_copies_queue_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(LocalStore::open(dir.path(), true).unwrap());
    let now = SystemTime::now();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.append(event("gh", "same"), now).await.unwrap() })
        })
        .collect();
    let mut queued = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Appended::Queued(_)) {
            queued += 1;
        }
    }
    assert_eq!(queued, 1);
    assert_eq!(q.inbox().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_share_flushes_and_all_land() {
    for group_commit in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let q = Arc::new(LocalStore::open(dir.path(), group_commit).unwrap());
        let now = SystemTime::now();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(
                    async move { q.append(event("gh", &format!("d{i}")), now).await.unwrap() },
                )
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            let Appended::Queued(id) = t.await.unwrap() else {
                panic!("unique ids queue")
            };
            ids.insert(id);
        }
        assert_eq!(ids.len(), 200);
        let inbox = q.inbox().unwrap();
        assert_eq!(inbox.len(), 200);
        // Inbox order is id order.
        assert!(inbox.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

#[tokio::test]
async fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let id = {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let Appended::Queued(id) = q.append(event("gh", "a"), now).await.unwrap() else {
            panic!()
        };
        id
    };
    let q = LocalStore::open(dir.path(), true).unwrap();
    let inbox = q.inbox().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].0, id);
    assert_eq!(inbox[0].1.delivery_id, "a");
    assert_eq!(
        q.append(event("gh", "a"), now).await.unwrap(),
        Appended::Duplicate(id)
    );
}

#[tokio::test]
async fn closed_queue_refuses_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    q.close();
    assert!(!q.writable());
    assert!(matches!(
        q.append(event("gh", "a"), SystemTime::now()).await,
        Err(QueueError::ShuttingDown)
    ));
    assert_eq!(q.stats().unwrap().inbox, 0);
    assert_eq!(q.stats().unwrap().seen, 0);
}

#[tokio::test]
async fn the_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ids = queue_and_close(dir.path(), "k", 50, now).await;
    // Lose the state altogether (as if it never got past its first
    // checkpoint), and the dedupe keys filed beside the log.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    for entry in std::fs::read_dir(dir.path().join("log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "keys") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let q = LocalStore::open(dir.path(), true).unwrap();
    let inbox = q.inbox().unwrap();
    assert_eq!(inbox.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    assert_eq!(inbox[7].1.delivery_id, "k7");
    // Dedupe keys came back too.
    assert_eq!(
        q.append(event("gh", "k7"), now).await.unwrap(),
        Appended::Duplicate(ids[7])
    );
    // And new events get ids after the old ones.
    let Appended::Queued(next) = q.append(event("gh", "new"), now).await.unwrap() else {
        panic!()
    };
    assert!(next > ids[49]);
}

#[tokio::test]
async fn events_lists_everything_logged() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let now = SystemTime::now();
    for i in 0..8 {
        q.append(event("gh", &format!("e{i}")), now).await.unwrap();
        q.append(event("gh", &format!("e{i}")), now).await.unwrap();
    }
    assert_eq!(q.events().unwrap().len(), 8);
}

/// Appends ten events with incompressible 1 MiB bodies (more than one
/// segment's worth); their bodies.
/// Appends `n` events of 1 MiB of random bytes (LZ4 leaves them as
/// large): an 8 MiB segment holds 7 of them.
async fn append_big(q: &LocalStore, n: usize, now: SystemTime) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for i in 0..n {
        let mut e = event("gh", &format!("big{i}"));
        e.record.body = vec![0; 1 << 20];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut e.record.body);
        bodies.push(e.record.body.clone());
        q.append(e, now).await.unwrap();
    }
    bodies
}

/// The segments that hold events, oldest first. Not the directory's
/// listing: the next segment, prepared by a helper thread, appears there
/// whenever that thread is done.
fn holding(q: &LocalStore) -> Vec<u64> {
    let mut seqs: Vec<u64> = q
        .events()
        .unwrap()
        .iter()
        .map(|(id, _)| log::place_of(*id).0)
        .collect();
    seqs.dedup();
    seqs
}

#[tokio::test]
async fn routed_segments_past_retention_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let now = SystemTime::now();
    append_big(&q, 20, now).await;
    let before = holding(&q);
    assert!(before.len() >= 3, "{before:?}");
    let later = now + Duration::from_secs(3600);
    // Not routed yet: nothing goes.
    assert_eq!(
        q.prune_log(later, Duration::from_secs(60), usize::MAX)
            .unwrap(),
        0
    );
    // The cursor was last saved at open: were that SAVE_CURSOR_EVERY ago
    // (a slow machine appending), routing would save it at once. As if
    // saved just now, it is saved by `save_cursor` only.
    q.cursor_saved.lock().unwrap().0 = std::time::Instant::now() + Duration::from_secs(3600);
    assert_eq!(route_all(&q), 20);
    // Routed to nowhere, so the cursor moved in memory only: a crash would
    // take it back, and the segments are still needed.
    assert_eq!(
        q.prune_log(later, Duration::from_secs(60), usize::MAX)
            .unwrap(),
        0
    );
    q.save_cursor().unwrap();
    // Routed but younger than the retention: kept.
    assert_eq!(
        q.prune_log(now, Duration::from_secs(60), usize::MAX)
            .unwrap(),
        0
    );
    // One at a time when asked.
    assert_eq!(q.prune_log(later, Duration::from_secs(60), 1).unwrap(), 1);
    let removed = 1 + q
        .prune_log(later, Duration::from_secs(60), usize::MAX)
        .unwrap();
    // The oldest went, and their files with them; the newest stays.
    assert!(removed < before.len(), "{removed} of {before:?}");
    assert_eq!(holding(&q), before[removed..]);
    let files = log::segments(&dir.path().join("log")).unwrap();
    assert!(before[..removed].iter().all(|seq| !files.contains(seq)));
}

#[tokio::test]
async fn routing_moves_the_cursor_and_it_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let first = {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let mut first = None;
        for i in 0..5 {
            let appended = q.append(event("gh", &format!("r{i}")), now).await.unwrap();
            first.get_or_insert(appended);
        }
        assert_eq!(route_all(&q), 5);
        assert!(q.inbox().unwrap().is_empty());
        for i in 5..7 {
            q.append(event("gh", &format!("r{i}")), now).await.unwrap();
        }
        let stats = q.stats().unwrap();
        assert_eq!((stats.inbox, stats.unmatched, stats.seen), (2, 5, 7));
        q.flush().unwrap();
        first.unwrap()
    };
    let q = LocalStore::open(dir.path(), true).unwrap();
    let inbox = q.inbox().unwrap();
    let keys: Vec<_> = inbox.iter().map(|(_, r)| r.delivery_id.as_str()).collect();
    assert_eq!(keys, ["r5", "r6"]);
    let stats = q.stats().unwrap();
    assert_eq!((stats.inbox, stats.unmatched, stats.seen), (2, 5, 7));
    let Appended::Queued(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        q.append(event("gh", "r0"), now).await.unwrap(),
        Appended::Duplicate(id)
    );
}

#[tokio::test]
async fn a_data_dir_with_the_old_inbox_tree_keeps_its_unrouted_events() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ids = queue_and_close(dir.path(), "o", 3, now).await;
    {
        // Rewrite the state as the earlier layout had it (its sled trees,
        // converted): the first event routed (unmatched), the other two
        // pointed to by `inbox`.
        let db = state_of(dir.path());
        let meta = db.tree("meta");
        meta.remove(super::ROUTED_KEY).unwrap();
        meta.remove(super::UNMATCHED_KEY).unwrap();
        let end = ids[2].0 + 100;
        meta.insert(b"log_indexed", end.to_be_bytes()).unwrap();
        let inbox = db.tree("inbox");
        for id in &ids[1..] {
            inbox.insert(id.0.to_be_bytes(), [0, 0, 0, 1]).unwrap();
        }
        db.tree("unmatched")
            .insert(ids[0].0.to_be_bytes(), [])
            .unwrap();
        // A key whose segment is long gone, still in its window, and one
        // that expired.
        let seen = db.tree("seen");
        let value = |expiry: u64, id: u64| [expiry.to_be_bytes(), id.to_be_bytes()].concat();
        let future = super::unix_millis(now) + 60_000;
        seen.insert(b"gh\0old", value(future, 42)).unwrap();
        seen.insert(b"gh\0older", value(1, 43)).unwrap();
        db.checkpoint().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    let inbox: Vec<EventId> = q.inbox().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(inbox, ids[1..]);
    let stats = q.stats().unwrap();
    assert_eq!((stats.inbox, stats.unmatched), (2, 1));
    let names = q.state.get().unwrap().db.table_names().unwrap();
    for old in ["inbox", "unmatched", "seen"] {
        assert!(!names.iter().any(|n| n == old), "{old:?} kept");
    }
    assert_eq!(
        q.append(event("gh", "old"), now).await.unwrap(),
        Appended::Duplicate(EventId(42))
    );
    assert!(matches!(
        q.append(event("gh", "older"), now).await.unwrap(),
        Appended::Queued(_)
    ));
}

#[tokio::test]
async fn keys_lost_from_a_keys_file_are_read_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ids = queue_and_close(dir.path(), "g", 6, now).await;
    // Cut the fourth record out of the keys file: a gap, as a failed
    // write could leave.
    let (seq, _) = log::place_of(ids[0]);
    let path = dir.path().join("log").join(format!("{seq:016x}.keys"));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 6 * 40);
    std::fs::write(&path, [&bytes[..120], &bytes[160..]].concat()).unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            q.append(event("gh", &format!("g{i}")), now).await.unwrap(),
            Appended::Duplicate(*id),
            "g{i}"
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[tokio::test]
async fn inspecting_prepares_nothing_and_refuses_appends() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ids = queue_and_close(dir.path(), "i", 3, now).await;
    let before = log::segments(&dir.path().join("log")).unwrap();
    let q = LocalStore::inspect(dir.path()).unwrap();
    let stats = q.stats().unwrap();
    assert_eq!((stats.inbox, stats.seen), (3, 3));
    assert_eq!(
        q.inbox()
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        ids
    );
    assert!(matches!(
        q.append(event("gh", "new"), now).await,
        Err(QueueError::ShuttingDown)
    ));
    assert_eq!(log::segments(&dir.path().join("log")).unwrap(), before);
}

#[tokio::test]
async fn a_delivery_rescheduled_to_the_same_millisecond_stays() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let mut rec = super::super::delivery::tests::sample(1, 1_000);
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![rec.clone()],
        dead: vec![],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let key = rec.due_key();
    // An attempt answered `Retry-After: 0` within the millisecond.
    rec.failures = 1;
    q.update(&key, &rec, false).unwrap();
    let due = q.due("s", 1_000, 10).unwrap();
    assert_eq!(due.len(), 1, "still pending");
    assert_eq!(q.delivery(&due[0].0).unwrap().unwrap().failures, 1);
    // Moved later, the old key goes.
    rec.due_ms = 2_000;
    q.update(&key, &rec, false).unwrap();
    assert!(q.due("s", 1_999, 10).unwrap().is_empty());
    assert_eq!(q.due("s", 2_000, 10).unwrap().len(), 1);
}

/// A delivery frozen with a large body (stored in pages of its own) is
/// durable once the queue is flushed: a reopen reads it whole.
#[tokio::test]
async fn large_deliveries_are_durable_once_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = super::super::delivery::tests::sample(1, 1_000);
    // Bytes that do not compress (a compressible body is stored LZ4'd).
    let noise = super::super::delivery::tests::incompressible(300_000);
    rec.frozen.as_mut().unwrap().body = serde_bytes::ByteBuf::from(noise);
    {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let page = [crate::queue::Routed {
            event: EventId(0),
            pending: vec![rec.clone()],
            dead: vec![],
        }];
        q.routed(&page, EventId(0), EventId(0)).unwrap();
        q.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert_eq!(q.delivery(&rec.due_key()).unwrap(), Some(rec));
}

/// Idempotency keys carry the data_dir's id: the same after a reopen,
/// different in another (fresh or restored) data_dir.
#[tokio::test]
async fn each_data_dir_has_its_own_lasting_id() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = LocalStore::open(a.path(), true).unwrap().install_id();
    let again = LocalStore::open(a.path(), true).unwrap().install_id();
    let other = LocalStore::open(b.path(), true).unwrap().install_id();
    assert_eq!(first, again);
    assert_ne!(first, other);
}

/// A sync that does not end (a hung disk) makes the queue not writable,
/// so /readyz turns a load balancer away; it is writable again once the
/// sync ends.
#[tokio::test]
async fn a_stuck_sync_makes_the_queue_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert!(q.writable());
    let now = unix_millis(SystemTime::now());
    let stuck_since = now - super::writer::SYNC_STUCK.as_millis() as u64 - 1_000;
    q.shared
        .sync_started_ms
        .store(stuck_since, Ordering::Release);
    assert!(!q.writable());
    q.shared.sync_started_ms.store(now, Ordering::Release);
    assert!(q.writable(), "a sync that just began is not stuck");
    q.shared.sync_started_ms.store(0, Ordering::Release);
    assert!(q.writable());
}

/// A delivery of key `key` on event `event` (item none), id `id`.
fn ordered(id: u64, event: u64, key: &str, due_ms: u64) -> crate::queue::DeliveryRecord {
    let mut rec = super::super::delivery::tests::sample(id, due_ms);
    rec.event_id = event;
    rec.item = None;
    rec.order_key = Some(key.into());
    rec
}

/// The order index: the oldest pending delivery of a key is its head; a
/// reschedule keeps it the head, done or dead lets the next go, a replay
/// puts it back in its place; other keys never wait for it.
#[tokio::test]
async fn the_order_index_lets_only_the_head_of_each_key_go() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    // Routed out of id order: event order is what counts.
    let (a1, a2, a3, b1) = (
        ordered(7, 1, "A", 1_000),
        ordered(3, 2, "A", 1_000),
        ordered(5, 3, "A", 1_000),
        ordered(6, 2, "B", 1_000),
    );
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![a3.clone(), b1.clone(), a2.clone(), a1.clone()],
        dead: vec![],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let heads = |q: &LocalStore| {
        q.order_head("s", "A")
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(heads(&q), [7]);
    assert_eq!(
        q.order_head("s", "B").unwrap(),
        Some(6),
        "B waits for nothing"
    );
    assert_eq!(q.order_head("t", "A").unwrap(), None, "per sink");

    // Failed and rescheduled: still the head, the others wait.
    let mut failing = a1.clone();
    failing.failures = 1;
    failing.due_ms = 60_000;
    q.update(&a1.due_key(), &failing, false).unwrap();
    assert_eq!(heads(&q), [7]);
    // Delivered: the next in event order goes.
    q.update(&failing.due_key(), &failing, true).unwrap();
    assert_eq!(heads(&q), [3]);
    // Dead: the next goes; replayed, it is the head again (its event is
    // older than the pending one).
    let mut dead = a2.clone();
    dead.reason = Some("permanent".into());
    q.bury(&a2.due_key(), &dead).unwrap();
    assert_eq!(heads(&q), [5]);
    let replayed = q.requeue(Some(3), 2_000, |_| None).unwrap();
    assert_eq!(replayed.replayed, 1);
    assert_eq!(heads(&q), [3]);
    let trees = q.state.get().unwrap();
    assert_eq!(trees.order.len().unwrap(), 3, "A twice and B");
    // Removing the sink buries the rest and leaves no entry behind.
    drop(trees);
    assert_eq!(q.bury_orphans(&[], &Default::default(), 3_000).unwrap(), 3);
    assert!(q.state.get().unwrap().order.is_empty().unwrap());
}

/// An index entry whose record is gone (written by a version that lost
/// it) is stale: removed, and the next one is the head.
#[tokio::test]
async fn a_stale_head_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let (a1, a2) = (ordered(1, 1, "A", 1_000), ordered(2, 2, "A", 1_000));
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![a1.clone(), a2.clone()],
        dead: vec![],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let trees = q.state.get().unwrap();
    trees.deliveries.remove(a1.due_key()).unwrap();
    assert_eq!(q.order_head("s", "A").unwrap(), Some(2));
    assert_eq!(trees.order.len().unwrap(), 1);
}

/// A dead letter of `sink` that died at `dead_ms`, id `id`.
fn dead_at(id: u64, sink: &str, dead_ms: u64) -> crate::queue::DeliveryRecord {
    let mut rec = super::super::delivery::tests::sample(id, 0);
    rec.sink = sink.into();
    rec.reason = Some("gone".into());
    rec.dead_ms = Some(dead_ms);
    rec
}

/// A data directory whose dead letters were stored before the `dead_at`
/// index existed has them filed at open, once: they expire like new ones.
#[tokio::test]
async fn dead_letters_from_before_the_index_are_filed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let page = [crate::queue::Routed {
            event: EventId(0),
            pending: vec![],
            dead: vec![dead_at(1, "a", 1_000), dead_at(2, "b", 5_000)],
        }];
        q.routed(&page, EventId(0), EventId(0)).unwrap();
        q.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    {
        // As the earlier layout had it: no index, no mark.
        let db = state_of(dir.path());
        db.drop_table("dead_at").unwrap();
        db.tree("meta").remove(b"dead_at_indexed").unwrap();
        db.checkpoint().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert_eq!(q.state.get().unwrap().dead_at.len().unwrap(), 2);
    let (expired, more) = q.prune_dead(3_000, 100).unwrap();
    assert_eq!(expired, [("a".to_owned(), 1)].into());
    assert!(!more);
    assert_eq!(q.stats().unwrap().dead, 1);
    assert!(q.dead_letter(2).unwrap().is_some());
}

/// An index entry whose record is gone, or that dates it otherwise, is
/// removed and nothing else: the record goes by its own entry.
#[tokio::test]
async fn stale_dead_at_entries_delete_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![],
        dead: vec![dead_at(1, "a", 9_000)],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let trees = q.state.get().unwrap();
    trees
        .dead_at
        .insert(dead_at(1, "a", 1_000).dead_at_key(), [])
        .unwrap();
    trees
        .dead_at
        .insert(dead_at(7, "a", 1_000).dead_at_key(), [])
        .unwrap();
    let (expired, more) = q.prune_dead(5_000, 100).unwrap();
    assert!(expired.is_empty(), "{expired:?}");
    assert!(!more);
    assert_eq!(
        trees.dead_at.len().unwrap(),
        1,
        "only the record's own entry"
    );
    assert!(q.dead_letter(1).unwrap().is_some());
    // A batch that is full says more may be due.
    let (expired, more) = q.prune_dead(10_000, 1).unwrap();
    assert_eq!(expired, [("a".to_owned(), 1)].into());
    assert!(more);
    assert!(trees.dead_at.is_empty().unwrap() && trees.dead.is_empty().unwrap());
}

fn listed(q: &LocalStore, filter: &crate::queue::EventFilter) -> Vec<EventId> {
    let page = q.events_page(filter, None, 50).unwrap();
    assert_eq!(page.next_before, None);
    page.items.iter().map(|e| EventId(e.id)).collect()
}

fn events_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "events"))
        .collect();
    files.sort();
    files
}

/// A data directory from before the events files (what listings show
/// was filed in sled by the router), or one whose files a crash left
/// torn: at open they are filed again from the log, so every event is
/// listed and found by its delivery id, and the old trees are gone.
#[tokio::test]
async fn events_not_on_file_are_filed_from_the_log_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let old = queue_and_close(dir.path(), "old", 3, now).await;
    {
        let q = LocalStore::open(dir.path(), true).unwrap();
        route_all(&q);
        let trees = q.state.get().unwrap();
        trees.meta.insert(INDEXED_FROM_KEY, [0; 8]).unwrap();
        q.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let files = events_files(dir.path());
    assert_eq!(files.len(), 1);
    std::fs::remove_file(&files[0]).unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let trees = q.state.get().unwrap();
    assert_eq!(trees.meta.get(INDEXED_FROM_KEY).unwrap(), None);
    drop(trees);
    let mut new = Vec::new();
    for key in ["new0", "new1"] {
        let Appended::Queued(id) = q.append(event("gh", key), now).await.unwrap() else {
            panic!("{key} is new")
        };
        new.push(id);
    }
    q.shared.settle(Duration::from_secs(5));
    let all = crate::queue::EventFilter::default();
    let every = vec![new[1], new[0], old[2], old[1], old[0]];
    assert_eq!(listed(&q, &all), every);
    q.flush().unwrap();
    drop(q);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Torn by a crash: the last record cut in half.
    let file = &events_files(dir.path())[0];
    let len = std::fs::metadata(file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert_eq!(listed(&q, &all), every);
    assert_eq!(std::fs::metadata(file).unwrap().len(), len);
    for (key, id) in [("old1", old[1]), ("new0", new[0]), ("new1", new[1])] {
        let by = crate::queue::EventFilter {
            delivery_id: Some(key.into()),
            ..Default::default()
        };
        assert_eq!(listed(&q, &by), vec![id], "{key}");
    }
}

/// What listings show of a log segment's events goes with it.
#[tokio::test]
async fn the_events_file_goes_with_its_segment() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let now = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..10 {
        let mut e = event("gh", &format!("big{i}"));
        e.record.body = vec![0; 1 << 20];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut e.record.body);
        let Appended::Queued(id) = q.append(e, now).await.unwrap() else {
            panic!("new")
        };
        ids.push(id);
    }
    assert_eq!(route_all(&q), 10);
    q.shared.settle(Duration::from_secs(5));
    q.save_cursor().unwrap();
    let before = events_files(dir.path()).len();
    let later = now + Duration::from_secs(3600);
    let removed = q
        .prune_log(later, Duration::from_secs(60), usize::MAX)
        .unwrap();
    assert!(removed >= 1);
    assert_eq!(events_files(dir.path()).len(), before - removed);
    let left = q.events().unwrap();
    let all = crate::queue::EventFilter::default();
    let mut kept: Vec<EventId> = left.iter().map(|(id, _)| *id).collect();
    kept.reverse();
    assert_eq!(listed(&q, &all), kept);
    let first = crate::queue::EventFilter {
        delivery_id: Some("big0".into()),
        ..Default::default()
    };
    assert!(listed(&q, &first).is_empty(), "gone with its segment");
}

/// Pending and dead deliveries stored before lookups existed are filed
/// at open, once: found by their event.
#[tokio::test]
async fn deliveries_from_before_lookups_are_filed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let mut pending = super::super::delivery::tests::sample(1, 10);
        pending.event_id = 5;
        let mut dead = dead_at(2, "b", 1_000);
        dead.event_id = 5;
        let page = [crate::queue::Routed {
            event: EventId(5),
            pending: vec![pending],
            dead: vec![dead],
        }];
        q.routed(&page, EventId(0), EventId(0)).unwrap();
        q.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    {
        let db = state_of(dir.path());
        db.drop_table("pending_ids").unwrap();
        db.drop_table("by_event").unwrap();
        db.tree("meta").remove(b"lookups_indexed").unwrap();
        db.checkpoint().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    let of_event = crate::queue::DeliveryFilter {
        event_id: Some(5),
        ..Default::default()
    };
    let page = q.deliveries_page(&of_event, None, 50).unwrap();
    let found: Vec<(u64, crate::queue::DeliveryStatus)> =
        page.items.iter().map(|v| (v.record.id, v.status)).collect();
    assert_eq!(
        found,
        vec![
            (2, crate::queue::DeliveryStatus::Dead),
            (1, crate::queue::DeliveryStatus::Pending)
        ]
    );
    let pending = crate::queue::DeliveryFilter {
        status: Some(crate::queue::DeliveryStatus::Pending),
        ..Default::default()
    };
    assert_eq!(
        q.deliveries_page(&pending, None, 50).unwrap().items.len(),
        1
    );
}

/// The counts stats and `/metrics` read are kept by every change, equal to
/// counting the trees, and counted again when the trees open.
#[tokio::test]
async fn the_counts_follow_every_change_and_match_the_trees() {
    use super::super::state::Counts;
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let check = |q: &LocalStore, deliveries: u64, dead: &[(&str, u64)]| {
        let trees = q.state.get().unwrap();
        let kept = trees.counts();
        assert_eq!(kept, Counts::of(&trees.pending_ids, &trees.dead).unwrap());
        let dead: std::collections::BTreeMap<String, u64> =
            dead.iter().map(|(s, n)| (s.to_string(), *n)).collect();
        assert_eq!((kept.deliveries, &kept.dead), (deliveries, &dead));
        let stats = q.stats().unwrap();
        assert_eq!(
            (stats.deliveries, stats.dead),
            (deliveries, dead.values().sum())
        );
        assert_eq!(q.dead_by_sink().unwrap(), dead);
    };
    check(&q, 0, &[]);
    let mut p1 = super::super::delivery::tests::sample(1, 0);
    p1.sink = "a".into();
    let mut p2 = super::super::delivery::tests::sample(2, 0);
    p2.sink = "a".into();
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![p1.clone(), p2.clone()],
        dead: vec![dead_at(3, "b", 1_000)],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    check(&q, 2, &[("b", 1)]);
    // Rescheduled: still one; delivered: gone from the pending.
    let old = p1.due_key();
    p1.due_ms += 60_000;
    q.update(&old, &p1, false).unwrap();
    check(&q, 2, &[("b", 1)]);
    q.update(&p2.due_key(), &p2, true).unwrap();
    check(&q, 1, &[("b", 1)]);
    // Dead; replayed; expired.
    p1.dead_ms = Some(2_000);
    p1.reason = Some("gone".into());
    q.bury(&p1.due_key(), &p1).unwrap();
    check(&q, 0, &[("a", 1), ("b", 1)]);
    let done = q.requeue(Some(3), 5_000, |_| None).unwrap();
    assert_eq!(done.replayed, 1);
    check(&q, 1, &[("a", 1)]);
    let (expired, _) = q.prune_dead(3_000, 100).unwrap();
    assert_eq!(expired, [("a".to_owned(), 1)].into());
    check(&q, 1, &[]);
    // Counted again at open.
    q.flush().unwrap();
    drop(q);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    check(&q, 1, &[]);
}

/// A clean stop saves the counts, and the next open reads them instead of
/// counting the trees (reading every dead letter: seconds at a million),
/// once: they are removed at open, so a crash later makes
/// the open after it count again.
#[tokio::test]
async fn counts_saved_at_a_clean_stop_are_read_back_once() {
    use super::super::state::Counts;
    let dir = tempfile::tempdir().unwrap();
    let pending = |id| {
        let mut rec = super::super::delivery::tests::sample(id, 0);
        rec.sink = "a".into();
        rec
    };
    {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let page = [crate::queue::Routed {
            event: EventId(0),
            pending: vec![pending(1), pending(2)],
            dead: vec![dead_at(3, "b", 1_000)],
        }];
        q.routed(&page, EventId(0), EventId(0)).unwrap();
        q.close();
        q.flush().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let saved = {
        // What the stop saved, replaced by counts the trees do not have:
        // only an open that trusts them shows them.
        let db = state_of(dir.path());
        let meta = db.tree("meta");
        let saved = meta
            .get(b"counts_at_stop")
            .unwrap()
            .expect("counts saved at stop");
        let mut doctored = Counts::default();
        doctored.deliveries_changed(7);
        doctored.dead_changed("c", 5);
        meta.insert(b"counts_at_stop", doctored.encode()).unwrap();
        db.checkpoint().unwrap();
        saved
    };
    let mut kept = Counts::default();
    kept.deliveries_changed(2);
    kept.dead_changed("b", 1);
    assert_eq!(Counts::decode(&saved), Some(kept));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    let stats = q.stats().unwrap();
    assert_eq!((stats.deliveries, stats.dead), (7, 5));
    // Removed durably at open: a copy taken now, as a crash would leave
    // the files, has none.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir.path().join("state"), &copy.path().join("state"));
    let db = state_of(copy.path());
    assert_eq!(db.tree("meta").get(b"counts_at_stop").unwrap(), None);
    drop((db, q));
    tokio::time::sleep(Duration::from_millis(50)).await;
    {
        // As a crash leaves it: nothing saved.
        let db = state_of(dir.path());
        db.tree("meta").remove(b"counts_at_stop").unwrap();
        db.checkpoint().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    let stats = q.stats().unwrap();
    assert_eq!(
        (stats.deliveries, stats.dead),
        (2, 1),
        "counted from the trees"
    );
}

/// Saved counts that a later change made wrong are removed with that
/// change: only the daemon's last flush saves them, but should anything
/// write after it, the next open counts the trees.
#[tokio::test]
async fn a_change_after_the_counts_were_saved_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let dead = |id| {
        [crate::queue::Routed {
            event: EventId(0),
            pending: vec![],
            dead: vec![dead_at(id, "b", 1_000)],
        }]
    };
    q.routed(&dead(1), EventId(0), EventId(0)).unwrap();
    q.close();
    q.flush().unwrap();
    let trees = q.state.get().unwrap();
    assert!(trees.meta.get(b"counts_at_stop").unwrap().is_some());
    q.routed(&dead(2), EventId(0), EventId(0)).unwrap();
    assert_eq!(trees.meta.get(b"counts_at_stop").unwrap(), None);
    drop(trees);
    // Saved again, with the change, at close.
    drop(q);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert_eq!(q.stats().unwrap().dead, 2);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An http delivery forwarding its event's body stores a reference, not a
/// copy: the body is read back from the log byte for byte when the
/// delivery is claimed; the log keeps the event's segment past the
/// retention while the delivery waits; a dead letter takes its whole body
/// with it (it may outlive the event).
#[tokio::test]
async fn a_body_that_is_its_events_is_read_back_from_the_log_which_keeps_it() {
    use crate::queue::BodyOfEvent;
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let now = SystemTime::now();
    let bodies = append_big(&q, 10, now).await;
    let before = holding(&q);
    assert!(before.len() >= 2, "{before:?}");
    let page = q.inbox_page(usize::MAX).unwrap();
    let forwards = |n: usize, id: u64| {
        let mut rec = super::super::delivery::tests::sample(id, 1_000);
        rec.event_id = page.events[n].0 .0;
        let frozen = rec.frozen.as_mut().unwrap();
        frozen.body = serde_bytes::ByteBuf::from(bodies[n].clone());
        frozen.body_of_event = BodyOfEvent::Held;
        rec
    };
    // The first event's delivery and the last's.
    let (first, last) = (forwards(0, 1), forwards(9, 2));
    let routed: Vec<crate::queue::Routed> = page
        .events
        .iter()
        .enumerate()
        .map(|(n, (id, _))| crate::queue::Routed {
            event: *id,
            pending: match n {
                0 => vec![first.clone()],
                9 => vec![last.clone()],
                _ => vec![],
            },
            dead: vec![],
        })
        .collect();
    q.routed(&routed, page.from, page.next).unwrap();
    q.save_cursor().unwrap();

    let stored = q
        .state
        .get()
        .unwrap()
        .deliveries
        .get(first.due_key())
        .unwrap()
        .unwrap();
    assert!(
        stored.len() < 1_000,
        "a reference, not the body: {} bytes",
        stored.len()
    );
    let mut claimed = q.delivery(&first.due_key()).unwrap().unwrap();
    assert_eq!(
        claimed.frozen.as_ref().unwrap().body_of_event,
        BodyOfEvent::Unread
    );
    assert!(claimed.frozen.as_ref().unwrap().body.is_empty());
    q.read_body(&mut claimed).unwrap();
    assert_eq!(claimed, first, "read back byte for byte");

    // Past the retention, the first event's segment stays while its
    // delivery waits: so does every later one.
    let later = now + Duration::from_secs(3600);
    let retention = Duration::from_secs(60);
    assert_eq!(q.prune_log(later, retention, usize::MAX).unwrap(), 0);
    // Rescheduled, it still refers to its event.
    claimed.failures = 1;
    claimed.due_ms = 5_000;
    q.update(&first.due_key(), &claimed, false).unwrap();
    let stored = q
        .state
        .get()
        .unwrap()
        .deliveries
        .get(claimed.due_key())
        .unwrap()
        .unwrap();
    assert!(stored.len() < 1_000, "{} bytes", stored.len());
    assert_eq!(q.prune_log(later, retention, usize::MAX).unwrap(), 0);

    // Dead, it carries its body; the segments before the last event's go.
    claimed.reason = Some("gave up".into());
    claimed.dead_ms = Some(6_000);
    q.bury(&claimed.due_key(), &claimed).unwrap();
    let removed = q.prune_log(later, retention, usize::MAX).unwrap();
    assert!(
        removed >= 1 && removed < before.len(),
        "{removed} of {before:?}"
    );
    assert!(
        q.event(page.events[0].0).unwrap().is_none(),
        "its event is gone"
    );
    let dead = q.dead_letter(1).unwrap().unwrap();
    assert_eq!(
        dead.frozen.as_ref().unwrap().body.as_slice(),
        &bodies[0][..]
    );
    assert_eq!(
        q.state.get().unwrap().refs.len().unwrap(),
        1,
        "the last's only"
    );

    // The last event's delivery still reads its body.
    let mut waiting = q.delivery(&last.due_key()).unwrap().unwrap();
    q.read_body(&mut waiting).unwrap();
    assert_eq!(waiting, last);
    // Done, it lets go of its event.
    waiting.frozen = None;
    q.update(&last.due_key(), &waiting, true).unwrap();
    assert!(q.state.get().unwrap().refs.is_empty().unwrap());
}

/// A body stored as a reference whose event the log no longer holds is
/// left unread (never sent empty): the dispatcher buries it with why.
#[tokio::test]
async fn a_body_whose_event_is_gone_stays_unread() {
    use crate::queue::BodyOfEvent;
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let mut rec = super::super::delivery::tests::sample(1, 1_000);
    // An event id past anything logged.
    rec.event_id = 7 << 40;
    rec.frozen.as_mut().unwrap().body_of_event = BodyOfEvent::Held;
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending: vec![rec.clone()],
        dead: vec![],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let mut claimed = q.delivery(&rec.due_key()).unwrap().unwrap();
    q.read_body(&mut claimed).unwrap();
    let frozen = claimed.frozen.as_ref().unwrap();
    assert_eq!(frozen.body_of_event, BodyOfEvent::Unread);
    assert!(frozen.body.is_empty());
    // Buried so, it is still written as a reference, not an empty body.
    claimed.dead_ms = Some(2_000);
    q.bury(&rec.due_key(), &claimed).unwrap();
    let dead = q.dead_letter(1).unwrap().unwrap();
    assert_eq!(dead.frozen.unwrap().body_of_event, BodyOfEvent::Unread);
}

/// The scheduling policy (`/proc` stat field 41) of each of this
/// process's threads named `name`.
fn policies_of(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            after_name.split(' ').nth(41 - 3)?.parse().ok()
        })
        .collect()
}

#[test]
fn the_queue_threads_do_not_preempt_the_requests_that_wake_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    // Named in `open` (comm keeps 15 bytes); a thread names itself and
    // sets its policy once it runs.
    for name in ["hookgate-writer", "hookgate-checkp"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let batch = |policies: &[u32]| {
            !policies.is_empty() && policies.iter().all(|&p| p == libc::SCHED_BATCH as u32)
        };
        let mut policies = policies_of(name);
        while !batch(&policies) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            policies = policies_of(name);
        }
        assert!(!policies.is_empty(), "no thread named {name}");
        assert!(
            batch(&policies),
            "{name} runs under policies {policies:?}, not SCHED_BATCH"
        );
    }
    drop(q);
}

#[tokio::test]
async fn an_append_says_it_is_coming_only_until_the_writer_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let count = || q.shared.preparing.load(Ordering::Acquire);
    let coming = q.preparing();
    assert_eq!(count(), 1);
    drop(coming);
    assert_eq!(count(), 0);
    q.append(event("gh", "a"), SystemTime::now()).await.unwrap();
    assert_eq!(count(), 0);
    // Refused, too.
    q.close();
    assert!(q.append(event("gh", "b"), SystemTime::now()).await.is_err());
    assert_eq!(count(), 0);
}

/// The state file under `data_dir`, opened on its own (no queue holds it),
/// to change what a test needs as an earlier version left it.
pub(super) fn state_of(data_dir: &Path) -> Arc<super::super::kv::Db> {
    super::super::kv::Db::open(&data_dir.join("state/state.redb"), &[]).unwrap()
}

/// A data directory an earlier version left: its routing and delivery
/// state in sled's trees. The first open converts them (ids go on after
/// sled's, trees nothing reads any more are left behind) and removes sled's
/// directory; a conversion a crash cut short is made again.
#[tokio::test]
async fn sled_trees_of_an_earlier_version_are_converted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ids = queue_and_close(dir.path(), "c", 2, now).await;
    let rec = super::super::delivery::tests::sample(7, 1_000);
    let (install, cursor) = {
        let q = LocalStore::open(dir.path(), true).unwrap();
        let page = [crate::queue::Routed {
            event: ids[0],
            pending: vec![rec.clone()],
            dead: vec![dead_at(8, "b", 1_000)],
        }];
        q.routed(&page, EventId(0), ids[1]).unwrap();
        q.close();
        q.flush().unwrap();
        (q.install_id(), ids[1])
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The same state, as sled's trees.
    let sled_ids = {
        let state = state_of(dir.path());
        let old = sled::open(dir.path().join("sled")).unwrap();
        for name in state.table_names().unwrap() {
            let tree = old.open_tree(&name).unwrap();
            let table: &'static str = Box::leak(name.into_boxed_str());
            for kv in state.tree(table).iter() {
                let (k, v) = kv.unwrap();
                tree.insert(k, v).unwrap();
            }
        }
        old.open_tree("event_index")
            .unwrap()
            .insert(b"x", b"y")
            .unwrap();
        for _ in 0..1_000 {
            old.generate_id().unwrap();
        }
        old.flush().unwrap();
        old.generate_id().unwrap()
    };
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    // A conversion cut short left a partial file: made again.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/state.converting"), b"torn").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    assert!(
        !dir.path().join("sled").exists(),
        "sled's directory is gone"
    );
    assert!(!dir.path().join("state/state.converting").exists());
    assert_eq!(q.install_id(), install);
    assert_eq!(q.delivery(&rec.due_key()).unwrap(), Some(rec));
    assert!(q.dead_letter(8).unwrap().is_some());
    let stats = q.stats().unwrap();
    // The second event is past the cursor: not routed yet.
    assert_eq!((stats.deliveries, stats.dead, stats.inbox), (1, 1, 1));
    assert_eq!(q.routed_upto.load(Ordering::Acquire), cursor.0);
    let names = q.state.get().unwrap().db.table_names().unwrap();
    assert!(!names.iter().any(|n| n == "event_index"), "{names:?}");
    assert!(
        q.next_delivery_id().unwrap() > sled_ids,
        "ids go on after sled's"
    );
}

/// A removed sink's deliveries are buried a page at a time: every one of
/// them (more than a page), none of another sink's (named alike), none
/// in flight.
#[tokio::test]
async fn a_removed_sinks_deliveries_are_buried_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    let to = |id: u64, sink: &str| {
        let mut rec = super::super::delivery::tests::sample(id, 1_000 + id);
        rec.sink = sink.into();
        rec
    };
    let gone = 2 * super::super::deliveries::BURY_PAGE as u64 + 10;
    let mut pending: Vec<_> = (0..gone).map(|id| to(id, "gone")).collect();
    pending.extend((gone..gone + 5).map(|id| to(id, "gone2")));
    let page = [crate::queue::Routed {
        event: EventId(0),
        pending,
        dead: vec![],
    }];
    q.routed(&page, EventId(0), EventId(0)).unwrap();
    let in_flight = [3, 300, gone - 1].into_iter().collect();
    let buried = q.bury_orphans(&["gone2"], &in_flight, 9_000).unwrap();
    assert_eq!(buried as u64, gone - 3);
    let stats = q.stats().unwrap();
    assert_eq!((stats.deliveries, stats.dead), (8, gone - 3));
    for id in [3, 300, gone - 1, gone, gone + 4] {
        assert!(q.dead_letter(id).unwrap().is_none(), "{id} stays pending");
    }
    let dead = q.dead_letter(gone - 2).unwrap().unwrap();
    assert_eq!(
        dead.reason.as_deref(),
        Some("sink `gone` removed from the config")
    );
}

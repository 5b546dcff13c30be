use super::*;

fn append(id: &str, body: &str) -> Append {
    let (reply, _) = oneshot::channel();
    let seen_key = seen::id_key("gh", id);
    Append {
        key: seen::hash(&seen_key),
        seen_key,
        id_alone: true,
        whole: None,
        expiry_ms: 2_000,
        now_ms: 1_000,
        value: record(id, body).encode(),
        reply,
    }
}

/// A push stored under `id` with `body`.
fn record(id: &str, body: &str) -> crate::queue::EventRecord {
    let mut record = crate::queue::sample_record();
    record.delivery_id = id.into();
    record.body = body.as_bytes().to_vec();
    record
}

/// A fresh log in `dir` and an empty index reading it.
fn fresh(dir: &std::path::Path) -> (Log, Index) {
    let log = Log::create(dir, 0).unwrap();
    let index = Index {
        seen: SeenIndex::default(),
        stored: log::Reader::new(dir, Default::default()),
    };
    (log, index)
}

fn outcomes(log: &mut Log, index: &mut Index, jobs: &[(&str, &str)]) -> Vec<Appended> {
    let jobs: Vec<Append> = jobs.iter().map(|(id, body)| append(id, body)).collect();
    commit(log, index, &jobs).unwrap().outcomes
}

fn queued(a: &Appended) -> EventId {
    match a {
        Appended::Queued(id) => *id,
        other => panic!("{other:?} is not queued"),
    }
}

#[test]
fn an_unsigned_id_is_a_duplicate_only_with_the_same_body() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut index) = fresh(dir.path());
    // Within one batch: compared with the jobs before.
    let first = outcomes(
        &mut log,
        &mut index,
        &[
            ("d1", "B"),
            ("d1", "B"),
            ("d1", "C"),
            ("d1", "C"),
            ("d2", "B"),
        ],
    );
    let (b, c) = (queued(&first[0]), queued(&first[2]));
    assert_eq!(first[1], Appended::Duplicate(b));
    assert_eq!(first[3], Appended::Duplicate(c));
    assert_ne!(queued(&first[4]), b, "another id is another delivery");
    // Later: compared with the bodies read back from the log, whichever
    // of the two keys (the id alone, the whole key) remembers the event.
    let second = outcomes(
        &mut log,
        &mut index,
        &[("d1", "C"), ("d1", "B"), ("d1", "D"), ("d1", "D")],
    );
    assert_eq!(second[0], Appended::Duplicate(c));
    assert_eq!(second[1], Appended::Duplicate(b));
    let d = queued(&second[2]);
    assert_eq!(second[3], Appended::Duplicate(d));
    assert_eq!(
        index.seen.len(),
        4,
        "d1 alone, d1 with C, d1 with D, d2 alone"
    );
}

#[test]
fn an_event_that_cannot_be_read_back_is_not_taken_for_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, mut index) = fresh(dir.path());
    let first = outcomes(&mut log, &mut index, &[("d1", "B")]);
    queued(&first[0]);
    // Its key says it is past what the log holds (as if it had been lost).
    let key = seen::hash(&seen::id_key("gh", "d1"));
    index.seen.insert(key, 2_000, EventId(log.end().0 + 4096));
    let again = outcomes(&mut log, &mut index, &[("d1", "B"), ("d1", "B")]);
    let kept = queued(&again[0]);
    assert_eq!(again[1], Appended::Duplicate(kept));
}

#[test]
fn the_writer_waits_for_requests_on_their_way_then_goes() {
    let shared = Arc::new(Shared::new(EventId(0), 0, 0));
    // None coming: at once, however long it may wait.
    wait_for_preparing(&shared, Duration::from_secs(600));
    // One coming: until it has been handed over.
    let coming = crate::queue::Preparing::counted(&shared.preparing);
    let handed = Arc::new(AtomicBool::new(false));
    let handing = {
        let handed = handed.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            handed.store(true, Ordering::Release);
            drop(coming);
        })
    };
    wait_for_preparing(&shared, Duration::from_secs(600));
    assert!(
        handed.load(Ordering::Acquire),
        "went before the request came"
    );
    assert_eq!(shared.preparing.load(Ordering::Acquire), 0);
    handing.join().unwrap();
    // One that never comes: no longer than the limit.
    let _stuck = crate::queue::Preparing::counted(&shared.preparing);
    wait_for_preparing(&shared, Duration::from_millis(1));
}

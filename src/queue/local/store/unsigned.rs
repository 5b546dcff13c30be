//! Unsigned ids keyed on their own, a match a duplicate only with the
//! same body (`writer::earlier`), through opens and the move to
//! PostgreSQL.

use std::time::{Duration, SystemTime};

use super::*;

const BODY: &str = r#"{"n":1}"#;

fn delivery(id: &str, body: &str) -> NewEvent {
    let mut record = crate::queue::sample_record();
    record.delivery_id = id.into();
    record.body = body.as_bytes().to_vec();
    NewEvent {
        record,
        dedupe: Dedupe::IdAndBody(id.into()),
        dedupe_window: Duration::from_secs(60),
    }
}

async fn queued(q: &LocalStore, e: NewEvent, now: SystemTime) -> EventId {
    match q.append(e, now).await.unwrap() {
        Appended::Queued(id) => id,
        other => panic!("{other:?}: a new delivery was not queued"),
    }
}

async fn closed(q: LocalStore) {
    q.flush().unwrap();
    drop(q);
    // sled lets go of its lock a moment after.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_captured_body_under_a_real_id_blocks_nothing_and_retries_still_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let q = LocalStore::open(dir.path(), true).unwrap();
    // Someone sends a captured body under the id of a delivery to come.
    let captured = queued(&q, delivery("d1", r#"{"old":true}"#), now).await;
    let real = queued(&q, delivery("d1", BODY), now).await;
    assert_ne!(captured, real);
    assert_eq!(
        q.append(delivery("d1", BODY), now).await.unwrap(),
        Appended::Duplicate(real)
    );
    assert_eq!(
        q.append(delivery("d1", r#"{"old":true}"#), now)
            .await
            .unwrap(),
        Appended::Duplicate(captured)
    );
    // The same body under another id is another delivery.
    let other = queued(&q, delivery("d2", BODY), now).await;
    closed(q).await;
    let q = LocalStore::open(dir.path(), true).unwrap();
    for (body, id, event) in [
        (BODY, "d1", real),
        (r#"{"old":true}"#, "d1", captured),
        (BODY, "d2", other),
    ] {
        assert_eq!(
            q.append(delivery(id, body), now).await.unwrap(),
            Appended::Duplicate(event),
            "{id} {body} after a reopen"
        );
    }
    assert_eq!(q.inbox().unwrap().len(), 3);
}

#[tokio::test]
async fn keys_from_before_ids_were_keyed_alone_still_find_their_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let q = LocalStore::open(dir.path(), true).unwrap();
    // As versions before session 14 remembered an unsigned id: by its
    // whole key, the id and the body's digest.
    let mut old = delivery("d1", BODY);
    old.dedupe = Dedupe::Key(Dedupe::IdAndBody("d1".into()).key(BODY.as_bytes()));
    let old = queued(&q, old, now).await;
    closed(q).await;
    {
        // Those versions noted nothing about it.
        let db = super::tests::state_of(dir.path());
        db.tree("meta").remove(WHOLE_KEYS_UNTIL_KEY).unwrap();
        db.checkpoint().unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..2 {
        // Once upgraded, and opened again after.
        let q = LocalStore::open(dir.path(), true).unwrap();
        assert_eq!(
            q.append(delivery("d1", BODY), now).await.unwrap(),
            Appended::Duplicate(old)
        );
        closed(q).await;
    }
    let q = LocalStore::open(dir.path(), true).unwrap();
    queued(&q, delivery("d1", r#"{"n":2}"#), now).await;
    // Past the old key's window the id is new again.
    queued(&q, delivery("d1", BODY), now + Duration::from_secs(61)).await;
}

#[tokio::test]
async fn a_store_moved_to_postgres_carries_the_whole_key() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalStore::open(dir.path(), true).unwrap();
    queued(&q, delivery("d1", BODY), SystemTime::now()).await;
    let carried = q.export().unwrap();
    assert_eq!(
        carried.events[0].dedupe_key,
        format!("d1 {}", crate::queue::body_digest(BODY.as_bytes()))
    );
}

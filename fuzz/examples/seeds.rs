//! Writes the seeds of the `record` and `log_recovery` targets from real
//! encodings: events appended through `LocalStore::open` + `Queue::append`
//! (the segment's written front, and damaged copies of it), and the
//! records' own bytes. Run once after a format change, from `fuzz/`:
//!
//!     cargo +nightly run --example seeds

use std::path::Path;
use std::time::{Duration, SystemTime};

use hookgate::queue::{Attempt, DeliveryRecord, EventRecord, Frozen, LocalStore, NewEvent};
use hookgate::samples::SAMPLES;
use hookgate::verify::DeliveryId;

fn event(provider: &str, event: &str, body: &str, n: u32) -> EventRecord {
    EventRecord {
        source: provider.into(),
        provider: provider.into(),
        event: event.into(),
        delivery_id: format!("seed-{n}"),
        received_at_ms: 1_700_000_000_000 + u64::from(n),
        client_ip: "192.0.2.7".into(),
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("user-agent".into(), b"seed".to_vec()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

fn delivery() -> DeliveryRecord {
    DeliveryRecord {
        id: 7,
        event_id: 1 << 40,
        source: "github".into(),
        event: "pull_request".into(),
        delivery_id: "seed-1".into(),
        route: "merged-prs".into(),
        sink: "product-updates".into(),
        item: Some(2),
        idempotency_key: "1a2b3c4d-0000000001-merged-prs-product-updates-2".into(),
        created_ms: 1_700_000_000_000,
        due_ms: 1_700_000_030_000,
        failures: 1,
        attempts: vec![Attempt {
            at_ms: 1_700_000_000_100,
            status: Some(503),
            latency_ms: 41,
            outcome: "retry: 503".into(),
            response: "service unavailable".into(),
        }],
        reason: None,
        dead_ms: None,
        frozen: Some(Frozen {
            content_type: "application/json".into(),
            headers: vec![("Idempotency-Key".into(), "k".into())],
            body: serde_bytes::ByteBuf::from(br#"{"text":"PR merged"}"#.to_vec()),
            method: Some("PATCH".into()),
            path: Some("/features/FEAT-1".into()),
            body_of_event: Default::default(),
        }),
        order_key: None,
    }
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let picked: Vec<EventRecord> = [
        ("github", "push"),
        ("jira", "issue_updated"),
        ("zendesk", ""),
    ]
    .iter()
    .enumerate()
    .map(|(n, (provider, name))| {
        let (_, ev, body) = SAMPLES
            .iter()
            .find(|(p, e, _)| p == provider && (name.is_empty() || e == name))
            .expect("a bundled sample");
        event(provider, ev, body, n as u32 + 1)
    })
    .collect();

    let records = corpus.join("record");
    std::fs::create_dir_all(&records).unwrap();
    for r in &picked {
        std::fs::write(
            records.join(format!("seed-event-{}", r.provider)),
            r.encode(),
        )
        .unwrap();
    }
    let mut dead = delivery();
    dead.reason = Some("4 attempts failed: 503".into());
    dead.dead_ms = Some(1_700_000_100_000);
    dead.frozen = None;
    std::fs::write(records.join("seed-delivery"), delivery().encode()).unwrap();
    std::fs::write(records.join("seed-delivery-dead"), dead.encode()).unwrap();

    // The log: the events appended as the daemon appends them.
    let dir = std::env::temp_dir().join(format!("hookgate-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let queue = LocalStore::open(&dir, true).expect("a queue");
    let now = SystemTime::now();
    for r in &picked {
        let id = DeliveryId::Unsigned(r.delivery_id.clone());
        let event = NewEvent {
            dedupe: id.dedupe(&r.body),
            record: r.clone(),
            dedupe_window: Duration::from_secs(86_400),
        };
        rt.block_on(queue.append(event, now)).expect("appended");
    }
    assert_eq!(queue.events().unwrap().len(), picked.len());
    drop(queue);
    let segment = std::fs::read(dir.join("log").join(format!("{:016x}.seg", 1))).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // What follows the last frame is zeros, which the target adds back.
    let end = segment.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let front = &segment[..end];
    let frames = frames(front);
    assert_eq!(frames.len(), picked.len(), "one frame per event");

    let logs = corpus.join("log_recovery");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("seed-three-events"), front).unwrap();
    // A payload byte flipped in the middle frame: its length still holds.
    let mut flipped = front.to_vec();
    let (start, len) = frames[1];
    flipped[start + 8 + len / 2] ^= 0x40;
    std::fs::write(logs.join("seed-corrupt-payload"), &flipped).unwrap();
    // The middle frame's length garbled: nothing to skip by.
    let mut garbled = front.to_vec();
    garbled[start..start + 4].copy_from_slice(&0xfff0_0000u32.to_le_bytes());
    std::fs::write(logs.join("seed-corrupt-length"), &garbled).unwrap();
    // A crash mid-write of the last frame.
    let (start, len) = frames[2];
    std::fs::write(logs.join("seed-torn-tail"), &front[..start + 8 + len / 3]).unwrap();
    println!(
        "wrote the record and log_recovery seeds under {}",
        corpus.display()
    );
}

/// (offset, payload length) of each frame: u32 LE length, u32 LE CRC, payload.
fn frames(segment: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((at, len));
        at += 8 + len;
    }
    out
}

//! What routes see of a stored event: [`context`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::EventContext;
use crate::queue::EventRecord;

/// What routes see of an event.
pub fn context(event: &EventRecord) -> EventContext {
    let headers: BTreeMap<String, String> = event
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut map = http::HeaderMap::new();
    if let Some(ct) = headers.get("content-type").and_then(|v| v.parse().ok()) {
        map.insert(http::header::CONTENT_TYPE, ct);
    }
    // GitHub's form-encoded deliveries carry the JSON in `payload`.
    let json = crate::verify::github::payload_json(&map, &event.body)
        .map(|b| b.into_owned())
        .unwrap_or_else(|_| event.body.clone());
    let payload = serde_json::from_slice(&json).unwrap_or(serde_json::Value::Null);
    let received = SystemTime::UNIX_EPOCH + Duration::from_millis(event.received_at_ms);
    EventContext {
        source: event.source.clone(),
        event: event.event.clone(),
        delivery_id: event.delivery_id.clone(),
        received_at: humantime::format_rfc3339_millis(received).to_string(),
        headers,
        payload,
    }
}

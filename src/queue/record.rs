//! The event record as stored: a versioned enum in postcard, so a later
//! format can be read beside this one.

use serde::{Deserialize, Serialize};

/// What is kept of an accepted request. Headers are kept (minus credentials)
/// because routes may look at them; the body is kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub source: String,
    pub provider: String,
    pub event: String,
    /// The provider's delivery id, or empty when it sends none.
    pub delivery_id: String,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub client_ip: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The on-disk form. Add a variant for a new format; never change one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEvent {
    V1(EventRecord),
}

impl StoredEvent {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("in-memory encoding cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredEvent, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    pub fn into_record(self) -> EventRecord {
        match self {
            StoredEvent::V1(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventRecord {
        EventRecord {
            source: "github".into(),
            provider: "github".into(),
            event: "push".into(),
            delivery_id: "d-1".into(),
            received_at_ms: 1_700_000_000_000,
            client_ip: "127.0.0.1".into(),
            headers: vec![("x-github-event".into(), b"push".to_vec())],
            body: b"{\"a\":1}".to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        let s = StoredEvent::V1(sample());
        assert_eq!(StoredEvent::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn version_tag_is_the_first_byte() {
        // Variant index 0 = V1. A reader of a later version dispatches on it.
        assert_eq!(StoredEvent::V1(sample()).encode()[0], 0);
        assert!(StoredEvent::decode(&[7, 1, 2]).is_err());
    }
}

//! The event record as stored: a versioned enum in postcard, the body
//! LZ4-compressed (webhook JSON shrinks 3–5×, and sled's cost grows with
//! value size), so a later format can be read beside this one.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// What is kept of an accepted request. Headers are kept (minus credentials)
/// because routes may look at them; the body is kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Serialize, Deserialize)]
enum StoredEvent {
    V1(StoredV1),
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredV1 {
    source: String,
    provider: String,
    event: String,
    delivery_id: String,
    received_at_ms: u64,
    client_ip: String,
    headers: Vec<(String, ByteBuf)>,
    /// `lz4_flex::compress_prepend_size` of the body.
    body_lz4: ByteBuf,
}

/// [`StoredEvent`] borrowed from an [`EventRecord`]: the same bytes.
#[derive(Debug, Serialize)]
enum StoredEventRef<'a> {
    V1(StoredV1Ref<'a>),
}

#[derive(Debug, Serialize)]
struct StoredV1Ref<'a> {
    source: &'a str,
    provider: &'a str,
    event: &'a str,
    delivery_id: &'a str,
    received_at_ms: u64,
    client_ip: &'a str,
    headers: Vec<(&'a str, &'a serde_bytes::Bytes)>,
    body_lz4: &'a serde_bytes::Bytes,
}

/// The first fields of a stored record, read without copying or
/// decompressing anything (postcard reads fields in order and ignores what
/// follows).
#[derive(Debug, Deserialize)]
enum StoredHead<'a> {
    V1(#[serde(borrow)] Head<'a>),
}

/// Where an event came from and what it is: enough to tell whether any
/// route could want it.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Head<'a> {
    pub source: &'a str,
    pub provider: &'a str,
    pub event: &'a str,
}

/// The first fields of a stored record up to when it was received, as
/// [`StoredHead`] reads them: what a lookup lists.
#[derive(Debug, Deserialize)]
enum StoredSummary<'a> {
    V1(#[serde(borrow)] Summary<'a>),
}

/// What an event listing shows of a stored event (nothing decompressed).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Summary<'a> {
    pub source: &'a str,
    pub provider: &'a str,
    pub event: &'a str,
    pub delivery_id: &'a str,
    pub received_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a stored event: {0}")]
    Format(#[from] postcard::Error),
    #[error("body does not decompress: {0}")]
    Body(#[from] lz4_flex::block::DecompressError),
    #[error("body claims {claimed} bytes, more than {compressed} compressed bytes can hold")]
    BodySize { claimed: usize, compressed: usize },
}

/// An LZ4 block expands at most 255 times (a match-length byte of 255 adds
/// 255 bytes of output), so a stored size beyond that is corrupt.
const LZ4_MAX_RATIO: usize = 255;

/// `lz4_flex::decompress_size_prepended`, except that the stored size is
/// checked before it is allocated: four corrupt bytes must not ask for 4 GiB.
pub(crate) fn decompress_body(stored: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (claimed, block) = lz4_flex::block::uncompressed_size(stored)?;
    if claimed > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(DecodeError::BodySize {
            claimed,
            compressed: block.len(),
        });
    }
    Ok(lz4_flex::block::decompress(block, claimed)?)
}

impl EventRecord {
    /// The bytes stored for this record (current format), serialized from
    /// borrowed fields: only the compressed body is new.
    pub fn encode(&self) -> Vec<u8> {
        let body_lz4 = lz4_flex::compress_prepend_size(&self.body);
        let stored = StoredEventRef::V1(StoredV1Ref {
            source: &self.source,
            provider: &self.provider,
            event: &self.event,
            delivery_id: &self.delivery_id,
            received_at_ms: self.received_at_ms,
            client_ip: &self.client_ip,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), serde_bytes::Bytes::new(v)))
                .collect(),
            body_lz4: serde_bytes::Bytes::new(&body_lz4),
        });
        // Sized once: grown from empty, the buffer was reallocated (and
        // copied) a dozen times per event. A varint length is at most 10
        // bytes.
        let strings = [
            &self.source,
            &self.provider,
            &self.event,
            &self.delivery_id,
            &self.client_ip,
        ];
        let size = 1
            + 10
            + strings.iter().map(|s| s.len() + 10).sum::<usize>()
            + 10
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 20)
                .sum::<usize>()
            + body_lz4.len()
            + 10;
        postcard::to_extend(&stored, Vec::with_capacity(size))
            .expect("in-memory encoding cannot fail")
    }

    /// Reads the source, provider and event of any stored format.
    pub fn head(bytes: &[u8]) -> Result<Head<'_>, DecodeError> {
        match postcard::from_bytes::<StoredHead>(bytes)? {
            StoredHead::V1(head) => Ok(head),
        }
    }

    /// Reads the source, provider, event, delivery id and time received
    /// of any stored format.
    pub fn summary(bytes: &[u8]) -> Result<Summary<'_>, DecodeError> {
        match postcard::from_bytes::<StoredSummary>(bytes)? {
            StoredSummary::V1(s) => Ok(s),
        }
    }

    /// Reads any stored format.
    pub fn decode(bytes: &[u8]) -> Result<EventRecord, DecodeError> {
        match postcard::from_bytes::<StoredEvent>(bytes)? {
            StoredEvent::V1(v) => Ok(EventRecord {
                body: decompress_body(&v.body_lz4)?,
                source: v.source,
                provider: v.provider,
                event: v.event,
                delivery_id: v.delivery_id,
                received_at_ms: v.received_at_ms,
                client_ip: v.client_ip,
                headers: v
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, v.into_vec()))
                    .collect(),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A signed GitHub push as stored, for tests anywhere in the crate.
    pub(crate) fn sample() -> EventRecord {
        EventRecord {
            source: "github".into(),
            provider: "github".into(),
            event: "push".into(),
            delivery_id: "d-1".into(),
            received_at_ms: 1_700_000_000_000,
            client_ip: "127.0.0.1".into(),
            headers: vec![("x-github-event".into(), b"push".to_vec())],
            body: include_bytes!("../../samples/github/push.json").to_vec(),
        }
    }

    #[test]
    fn round_trips_and_compresses() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(EventRecord::decode(&bytes).unwrap(), r);
        assert!(
            bytes.len() < r.body.len() / 2,
            "{} stored for {}",
            bytes.len(),
            r.body.len()
        );
    }

    #[test]
    fn borrowed_encoding_matches_the_stored_format() {
        let r = sample();
        let owned = StoredEvent::V1(StoredV1 {
            source: r.source.clone(),
            provider: r.provider.clone(),
            event: r.event.clone(),
            delivery_id: r.delivery_id.clone(),
            received_at_ms: r.received_at_ms,
            client_ip: r.client_ip.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), ByteBuf::from(v.clone())))
                .collect(),
            body_lz4: ByteBuf::from(lz4_flex::compress_prepend_size(&r.body)),
        });
        assert_eq!(r.encode(), postcard::to_stdvec(&owned).unwrap());
    }

    #[test]
    fn head_reads_the_first_fields_alone() {
        let bytes = sample().encode();
        let head = EventRecord::head(&bytes).unwrap();
        assert_eq!(
            head,
            Head {
                source: "github",
                provider: "github",
                event: "push"
            }
        );
        assert!(EventRecord::head(&bytes[..3]).is_err());
        let summary = EventRecord::summary(&bytes).unwrap();
        assert_eq!(
            (summary.delivery_id, summary.received_at_ms),
            ("d-1", 1_700_000_000_000)
        );
    }

    #[test]
    fn version_tag_is_the_first_byte() {
        // Variant index 0 = V1. A reader of a later version dispatches on it.
        assert_eq!(sample().encode()[0], 0);
        assert!(EventRecord::decode(&[7, 1, 2]).is_err());
    }

    #[test]
    fn corrupt_body_is_an_error_not_a_panic() {
        let mut bytes = sample().encode();
        let n = bytes.len();
        bytes.truncate(n - 10);
        assert!(EventRecord::decode(&bytes).is_err());
    }

    /// Found by the `record` fuzz target: a body whose stored size was
    /// corrupt made `decode` allocate that size (up to 4 GiB) up front.
    #[test]
    fn huge_stored_body_size_is_refused_before_allocating() {
        let mut r = sample();
        r.body = b"{}".to_vec();
        let bytes = r.encode();
        // The body is last: its size prefix sits just before its block.
        let block_len = lz4_flex::compress(b"{}").len();
        let at = bytes.len() - block_len - 4;
        assert_eq!(bytes[at..at + 4], 2u32.to_le_bytes());
        let mut corrupt = bytes.clone();
        corrupt[at..at + 4].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        assert!(matches!(
            EventRecord::decode(&corrupt),
            Err(DecodeError::BodySize {
                claimed: 0x8000_0000,
                ..
            })
        ));
        // A body that compresses as well as LZ4 allows still decodes.
        let highly_compressible = vec![b'a'; 1 << 20];
        r.body = highly_compressible.clone();
        assert_eq!(
            EventRecord::decode(&r.encode()).unwrap().body,
            highly_compressible
        );
    }
}

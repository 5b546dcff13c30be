//! The event record as stored: a versioned enum in postcard, the body
//! LZ4-compressed (webhook JSON shrinks 3–5×, and the log's and
//! the page cache's cost grows with value size), so a later format can be read beside this one.

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

/// [`StoredEvent`] borrowed from an [`EventRecord`], without its last
/// field (the body): postcard writes fields in order with nothing around
/// them, so these bytes followed by the body as postcard writes a byte
/// string are the stored record ([`EventRecord::encode`]).
#[derive(Debug, Serialize)]
enum StoredEventPrefix<'a> {
    V1(StoredV1Prefix<'a>),
}

#[derive(Debug, Serialize)]
struct StoredV1Prefix<'a> {
    source: &'a str,
    provider: &'a str,
    event: &'a str,
    delivery_id: &'a str,
    received_at_ms: u64,
    client_ip: &'a str,
    headers: Vec<(&'a str, &'a serde_bytes::Bytes)>,
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

/// The widest varint postcard writes (a `u64`, or a length).
const MAX_VARINT: usize = 10;
/// The body's size, before its LZ4 block.
const STORED_SIZE: usize = 4;

thread_local! {
    /// This thread's LZ4 hash table and output buffer.
    /// `lz4_flex::compress_prepend_size` allocates and zeroes a fresh table
    /// for every body (`calloc`, about 13,000 instructions a request in
    /// callgrind), and returns a buffer of its own.
    static LZ4: std::cell::RefCell<Lz4> = std::cell::RefCell::new(Lz4 {
        table: lz4_flex::block::CompressTable::small(),
        block: Vec::new(),
    });
}

struct Lz4 {
    table: lz4_flex::block::CompressTable,
    /// Zeroed once as it grows, then reused: the compressor writes only
    /// into an initialised slice.
    block: Vec<u8>,
}

/// The largest output buffer a thread keeps between bodies (a 64 MiB
/// body's would otherwise stay allocated on every thread that stored one).
const KEPT_BLOCK: usize = 1 << 20;

/// Calls `f` with `lz4_flex::compress_prepend_size(body)`'s LZ4 block
/// (without the size before it), compressed with this thread's table into
/// this thread's buffer.
fn with_compressed<T>(body: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    LZ4.with_borrow_mut(|Lz4 { table, block }| {
        // lz4_flex picks the small table below 64 KiB and the large one
        // above (`compress_into_with_table` upgrades a small one itself, and
        // never goes back): a small body gets the small table again, so the
        // bytes are lz4_flex's own.
        if body.len() < usize::from(u16::MAX)
            && matches!(table, lz4_flex::block::CompressTable::Large(_))
        {
            *table = lz4_flex::block::CompressTable::small();
        }
        let max = lz4_flex::block::get_maximum_output_size(body.len());
        if block.len() < max {
            block.resize(max, 0);
        }
        let n = lz4_flex::block::compress_into_with_table(body, block, table)
            .expect("the buffer has the room get_maximum_output_size asks for");
        let answer = f(&block[..n]);
        if block.len() > KEPT_BLOCK {
            *block = Vec::new();
        }
        answer
    })
}

impl EventRecord {
    /// The bytes stored for this record (current format), serialized from
    /// borrowed fields into one buffer of the size they need: the body is
    /// compressed first ([`with_compressed`]), then copied in after them,
    /// as postcard writes the byte string `lz4_flex::compress_prepend_size`
    /// makes (its length as a varint, the body's size as a little-endian
    /// `u32`, the block).
    pub fn encode(&self) -> Vec<u8> {
        let prefix = StoredEventPrefix::V1(StoredV1Prefix {
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
        });
        let size = u32::try_from(self.body.len())
            .expect("a body is at most 64 MiB (server.max_body_bytes)");
        with_compressed(&self.body, |block| {
            let body_lz4 = STORED_SIZE + block.len();
            // Sized once: grown from empty, the buffer was reallocated (and
            // copied) a dozen times per event.
            let strings = [
                &self.source,
                &self.provider,
                &self.event,
                &self.delivery_id,
                &self.client_ip,
            ];
            let capacity = 1
                + MAX_VARINT
                + strings.iter().map(|s| s.len() + MAX_VARINT).sum::<usize>()
                + MAX_VARINT
                + self
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len() + 2 * MAX_VARINT)
                    .sum::<usize>()
                + MAX_VARINT
                + body_lz4;
            // The byte string's length is the varint postcard writes for
            // a `usize`, so it goes with the fields before it.
            let mut out = postcard::to_extend(&(prefix, body_lz4), Vec::with_capacity(capacity))
                .expect("in-memory encoding cannot fail");
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(block);
            out
        })
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

    /// The stored format as postcard writes it from the owned form, with
    /// the body compressed by `lz4_flex` on its own.
    fn reference_encoding(r: &EventRecord) -> Vec<u8> {
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
        postcard::to_stdvec(&owned).unwrap()
    }

    #[test]
    fn borrowed_encoding_matches_the_stored_format() {
        // Bodies of every length class, in an order that makes one thread's
        // table go small, large and small again: each encodes to exactly
        // the bytes of the owned form.
        let push = include_bytes!("../../samples/github/push.json");
        let mut noise = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..70_000)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                noise as u8
            })
            .collect();
        let bodies: Vec<Vec<u8>> = vec![
            push.to_vec(),
            Vec::new(),
            b"{}".to_vec(),
            // Around postcard's one- and two-byte lengths (127, 16,383).
            vec![b'x'; 100],
            random[..120].to_vec(),
            random[..16_000].to_vec(),
            push.repeat(10),
            // Past 64 KiB: lz4_flex's large table.
            random.clone(),
            push.repeat(40),
            push.to_vec(),
            random[..65_534].to_vec(),
            random[..65_535].to_vec(),
            vec![b'a'; 1 << 20],
            b"{}".to_vec(),
        ];
        let mut r = sample();
        for body in bodies {
            r.body = body;
            let bytes = r.encode();
            assert_eq!(bytes, reference_encoding(&r), "a body of {}", r.body.len());
            assert_eq!(EventRecord::decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn a_thread_keeps_the_buffer_of_a_small_body_only() {
        let mut r = sample();
        r.encode();
        let kept = LZ4.with_borrow(|lz4| lz4.block.len());
        assert!(kept >= r.body.len() && kept <= KEPT_BLOCK, "{kept}");
        r.body = vec![b'a'; 4 << 20];
        assert_eq!(EventRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(LZ4.with_borrow(|lz4| lz4.block.capacity()), 0);
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

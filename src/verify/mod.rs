//! Proof of origin and envelope reading, one file per provider.
//!
//! Every provider implements [`Provider`]: `verify` proves a request came from
//! the holder of the secret (constant time, over the raw body bytes),
//! `envelope` reads the event type and the dedupe key, and `sign` produces a
//! request exactly as the provider would send it (used by `hookgate send`
//! and by the tests). Nothing here does I/O or async: the clock is passed in.

pub mod figma;
pub mod github;
pub mod gitlab;
pub mod hmac;
pub mod intercom;
pub mod jira;
pub mod rotation;
pub mod standard;
pub mod zendesk;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::queue::{body_digest, Dedupe};

/// The parts of an inbound request that proofs and envelopes look at.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    /// The body exactly as received.
    pub body: &'a [u8],
    /// The time the request arrived; timestamped schemes compare against it.
    pub now: SystemTime,
}

/// Why a request failed its proof of origin. All of these answer 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("signature does not match")]
    Mismatch,
    #[error("timestamp outside the allowed window")]
    Stale,
}

impl VerifyError {
    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing(_) => "missing",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Mismatch => "mismatch",
            VerifyError::Stale => "stale",
        }
    }
}

/// Why a proven request still cannot be routed. All of these answer 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("form body has no `payload` field with JSON in it")]
    BadForm,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{0} is not text (visible ASCII)")]
    NotText(String),
    #[error("the {what} is {len} bytes: hookgate keeps at most {ENVELOPE_FIELD_MAX}")]
    TooLong { what: &'static str, len: usize },
}

/// Longest event type or delivery id kept, in bytes (providers send tens):
/// each is stored with the event, shown by lookups and part of keys.
pub const ENVELOPE_FIELD_MAX: usize = 1024;

/// What ingress (and `hookgate route --header`) reads of a proven request:
/// the provider's envelope, refused when a field is longer than
/// [`ENVELOPE_FIELD_MAX`].
pub fn read_envelope(p: &dyn Provider, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
    let e = p.envelope(req)?;
    let too_long =
        |what, len| (len > ENVELOPE_FIELD_MAX).then_some(ShapeError::TooLong { what, len });
    if let Some(e) = too_long("event type", e.event.len())
        .or_else(|| too_long("delivery id", e.id.as_str().map_or(0, str::len)))
    {
        return Err(e);
    }
    Ok(e)
}

/// What a route matches on and what dedupes a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The provider's event type (`push`, `jira:issue_updated`…); may be empty
    /// where the provider does not always send one.
    pub event: String,
    /// The provider's delivery id, stable across retries.
    pub id: DeliveryId,
}

/// A delivery id, and whether the proof of origin covers it: that decides
/// what the queue dedupes on (see [`DeliveryId::dedupe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryId {
    /// The provider sends none: dedupe on the body's digest.
    Absent,
    /// Covered by the proof (read from the verified body, or a signed
    /// header): nobody without the secret can attach it to other content,
    /// so it dedupes on its own, across retries that re-sign.
    Signed(String),
    /// In a header the proof does not cover (`X-GitHub-Delivery`): anyone
    /// holding a captured request can send it under another id, so it
    /// dedupes together with the body. A captured body sent with
    /// someone else's future id then cannot block that real delivery.
    Unsigned(String),
}

impl DeliveryId {
    /// The id as the provider sent it (for people, logs and templates).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            DeliveryId::Absent => None,
            DeliveryId::Signed(id) | DeliveryId::Unsigned(id) => Some(id),
        }
    }

    /// What the queue dedupes on within the source: a signed id alone, an
    /// unsigned one together with the body, else the body's digest.
    pub fn dedupe(&self, body: &[u8]) -> Dedupe {
        match self {
            DeliveryId::Absent => Dedupe::Key(body_digest(body)),
            DeliveryId::Signed(id) => Dedupe::Key(id.clone()),
            DeliveryId::Unsigned(id) => Dedupe::IdAndBody(id.clone()),
        }
    }

    /// `Signed` or `Unsigned` for an id that may be absent.
    fn from(id: Option<String>, signed: bool) -> DeliveryId {
        match id {
            None => DeliveryId::Absent,
            Some(id) if signed => DeliveryId::Signed(id),
            Some(id) => DeliveryId::Unsigned(id),
        }
    }
}

/// What a successful proof of origin tells the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Which of the source's secrets matched: its index in the `secret` list
    /// as written (0 for a single secret).
    pub secret: usize,
    /// For timestamped schemes: the signature, to be refused as a replay if
    /// seen again while its timestamp is still accepted.
    pub replay: Option<ReplayMark>,
}

impl Verified {
    /// A proof with no timestamp (GitHub, Jira, Intercom, Figma, GitLab's token).
    pub const UNTIMED: Verified = Verified {
        secret: 0,
        replay: None,
    };

    /// A timestamped proof whose signed content had MAC `mac`, accepted
    /// until `until` (the signed timestamp plus `max_skew`).
    pub fn timed(mac: &[u8], until: SystemTime) -> Verified {
        Verified {
            secret: 0,
            replay: Some(ReplayMark::new(mac, until)),
        }
    }
}

/// A verified signature, by digest, and until when its timestamp passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayMark {
    /// SHA-256 of the expected MAC (the MAC of exactly what was signed, not
    /// the header text, so decoy entries in a signature list change nothing).
    pub digest: [u8; 32],
    /// Past this instant `verify` answers `Stale`, so the mark can be forgotten.
    pub until: SystemTime,
}

impl ReplayMark {
    pub fn new(mac: &[u8], until: SystemTime) -> ReplayMark {
        use sha2::Digest;
        ReplayMark {
            digest: sha2::Sha256::digest(mac).into(),
            until,
        }
    }
}

/// What `sign` needs besides the body.
#[derive(Debug, Clone)]
pub struct SignInput<'a> {
    pub body: &'a [u8],
    /// The event type as `envelope` would read it (`push`, `merge_request`…).
    pub event: &'a str,
    /// A delivery id, put where the provider puts its own.
    pub delivery_id: &'a str,
    pub now: SystemTime,
}

/// A request as the provider would send it: headers (with content type) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One provider's scheme, built from a validated source config.
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError>;
    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError>;
    fn sign(&self, input: &SignInput<'_>) -> Signed;
    /// The body as it is kept once proven: byte for byte, except where the
    /// proof itself travels in the body (Figma's passcode), which is blanked
    /// so no secret reaches the disk or a sink.
    fn stored_body<'b>(&self, body: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        std::borrow::Cow::Borrowed(body)
    }
}

/// Where a configurable scheme finds a value: a header or a dotted body path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Header(http::HeaderName),
    Body(Vec<String>),
}

impl Locator {
    /// Parses `header:NAME` or `body:dotted.path`.
    pub fn parse(s: &str) -> Result<Locator, String> {
        if let Some(name) = s.strip_prefix("header:") {
            let name = http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("`{name}` is not a valid header name"))?;
            Ok(Locator::Header(name))
        } else if let Some(path) = s.strip_prefix("body:") {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(format!("`{path}` is not a dotted path like `data.id`"));
            }
            Ok(Locator::Body(parts))
        } else {
            Err(format!("`{s}` must start with `header:` or `body:`"))
        }
    }

    /// Whether the proof covers this value: any body path, or one of
    /// `signed_headers` (lower-case names).
    fn signed(&self, signed_headers: &[&str]) -> bool {
        match self {
            Locator::Header(name) => signed_headers.contains(&name.as_str()),
            Locator::Body(_) => true,
        }
    }

    /// Finds the value; numbers in the body are rendered as text.
    /// `body` is the checked JSON body when the caller has it. A header
    /// that is there but not text is an error, not taken for absent.
    pub fn find(
        &self,
        headers: &HeaderMap,
        body: Option<&JsonBody<'_>>,
    ) -> Result<Option<String>, ShapeError> {
        Ok(match self {
            Locator::Header(name) => {
                header_field(headers, name.as_str(), &format!("{name} header"))?.map(str::to_owned)
            }
            Locator::Body(path) => match body.and_then(|b| b.find(path)) {
                None => None,
                Some(b @ (b"true" | b"false")) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(v) => crate::json::text(v),
            },
        })
    }
}

/// A header's value as text, or `None` when absent or not visible ASCII.
pub fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// An envelope header's value, trimmed: `None` when absent or blank, an
/// error naming it (`what`) when present but not text, rather than taken
/// for absent.
pub fn header_field<'h>(
    headers: &'h HeaderMap,
    name: &str,
    what: &str,
) -> Result<Option<&'h str>, ShapeError> {
    match headers.get(name).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v.trim()).filter(|v| !v.is_empty())),
        Some(Err(_)) => Err(ShapeError::NotText(what.to_owned())),
    }
}

/// A body serde_json reads whole as values, checked but not built: its
/// fields are found by a scan ([`crate::json::find`]). On the 7.5 KB push
/// a tree and a lookup cost about 286,000 instructions, the check and a
/// scan about 91,000 (bench/README.md, session 13).
#[derive(Debug, Clone, Copy)]
pub struct JsonBody<'b>(&'b [u8]);

impl<'b> JsonBody<'b> {
    /// The value at a dotted path's keys, as written.
    fn find<K: AsRef<str>>(&self, path: &[K]) -> Option<&'b [u8]> {
        crate::json::find(self.0, path)
    }
}

/// Checks that the body is JSON as serde_json reads it into values (400
/// when it is not), as when it was parsed into a `serde_json::Value`.
pub fn json_body(body: &[u8]) -> Result<JsonBody<'_>, ShapeError> {
    if crate::json::reads(body) {
        Ok(JsonBody(body))
    } else {
        Err(ShapeError::NotJson)
    }
}

/// A string (or number, as text) at the top of a JSON object, or `None`.
pub fn json_str(v: &JsonBody<'_>, key: &str) -> Option<String> {
    crate::json::text(v.find(&[key])?)
}

/// HMAC-SHA256 of the concatenated parts.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use ::hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA1 of the concatenated parts.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    use ::hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA512 of the concatenated parts.
pub fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> [u8; 64] {
    use ::hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison of two byte strings (length is not hidden).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Decodes a hex signature, case-insensitive.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.trim()).ok()
}

/// Decodes standard base64 with padding.
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// Encodes standard base64 with padding.
pub fn encode_b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Whether `ts` lies within `max_skew` of `now`, in either direction.
pub fn within_skew(ts: SystemTime, now: SystemTime, max_skew: Duration) -> bool {
    match now.duration_since(ts) {
        Ok(age) => age <= max_skew,
        Err(ahead) => ahead.duration() <= max_skew,
    }
}

/// `secs` unix seconds plus `max_skew`: until when a timestamp is accepted.
pub fn accepted_until(secs: u64, max_skew: Duration) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .and_then(|t| t.checked_add(max_skew))
        .unwrap_or(UNIX_EPOCH)
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A required proof header as text: `Missing` when absent, `Malformed` when
/// present but not visible ASCII (so a garbled header is not reported as absent).
pub fn proof_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
    what: &'static str,
) -> Result<&'h str, VerifyError> {
    let value = headers.get(name).ok_or(VerifyError::Missing(what))?;
    value.to_str().map_err(|_| VerifyError::Malformed(what))
}

/// Parses `<prefix><hex>` (`sha256=…`) holding exactly `len` bytes, the
/// `X-Hub-Signature` family's format. A wrong prefix is `Malformed`: the
/// algorithm is chosen by the configured provider, never by the header.
pub fn prefixed_hex(
    value: &str,
    prefix: &str,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, VerifyError> {
    let hex = value
        .trim()
        .strip_prefix(prefix)
        .ok_or(VerifyError::Malformed(what))?;
    match decode_hex(hex) {
        Some(bytes) if bytes.len() == len => Ok(bytes),
        _ => Err(VerifyError::Malformed(what)),
    }
}

/// Reads an envelope through configured locators, parsing the body only when
/// one of them points into it (`NotJson` then if it is not JSON). An absent
/// event is empty; an absent id leaves dedupe to a body hash. An id read from
/// the (verified) body is signed; one read from a header is signed only when
/// the header is one of `signed_headers`.
pub fn locate_envelope(
    headers: &HeaderMap,
    body: &[u8],
    event_from: &Locator,
    id_from: Option<&Locator>,
    signed_headers: &[&str],
) -> Result<Envelope, ShapeError> {
    let needs_body =
        matches!(event_from, Locator::Body(_)) || matches!(id_from, Some(Locator::Body(_)));
    let parsed = if needs_body {
        Some(json_body(body)?)
    } else {
        None
    };
    Ok(Envelope {
        event: event_from
            .find(headers, parsed.as_ref())?
            .unwrap_or_default(),
        id: match id_from {
            None => DeliveryId::Absent,
            Some(l) => {
                DeliveryId::from(l.find(headers, parsed.as_ref())?, l.signed(signed_headers))
            }
        },
    })
}

/// Parses integer unix seconds: ASCII digits only (no sign, no fraction).
pub fn parse_unix_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether unix seconds `secs` lie within `max_skew` of `now` (false when
/// `secs` is too large to be a time at all).
pub fn fresh_unix_secs(secs: u64, now: SystemTime, max_skew: Duration) -> bool {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .is_some_and(|t| within_skew(t, now, max_skew))
}

/// Builds a header map from name/value pairs (test helper; panics on bad names).
#[cfg(test)]
pub(crate) fn header_map<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(k.as_ref().as_bytes()).unwrap(),
            http::HeaderValue::from_str(v.as_ref()).unwrap(),
        );
    }
    map
}

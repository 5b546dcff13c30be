//! Secret bytes that never print: `Debug` and `Display` show `[redacted]`.
//!
//! Every key, token, passcode and credential-bearing URL travels in this type,
//! so a stray `{:?}` in a log line cannot leak one.

use std::fmt;

/// Secret material. Compare with [`Secret::ct_eq`], never with `==`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// The raw bytes, for keying an HMAC or comparing in constant time.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, when it is valid UTF-8 (URLs, tokens).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Equality with `other` in time that depends on neither value nor
    /// length: the SHA-256 digests of both are compared in constant time
    /// (comparing the bytes themselves would stop early on a length
    /// mismatch, telling an attacker how long the secret is).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let (ours, theirs) = (Sha256::digest(&self.0), Sha256::digest(other));
        bool::from(ours.as_slice().ct_eq(theirs.as_slice()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_bytes() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(s.ct_eq(b"hunter2"));
        assert!(!s.ct_eq(b"hunter3"));
        assert!(!s.ct_eq(b"hunter"));
        assert!(!s.ct_eq(b"hunter22"));
        assert!(!s.ct_eq(b""));
        assert!(Secret::new("").ct_eq(b""));
    }
}

//! Generic HMAC scheme for providers without a dedicated module: the
//! signature header, algorithm, encoding and prefix are configured, and an
//! optional timestamp header (unix seconds) is prepended to the body in the
//! signed content and checked against `max_skew`. Event and delivery id come
//! from configured locators; without an `id_from` the caller hashes the body.
//! No header is signed here, so an id from `header:…` dedupes together with
//! the body's digest.

use std::time::Duration;

use http::HeaderName;

use super::{
    accepted_until, ct_eq, decode_b64, decode_hex, encode_b64, fresh_unix_secs, hmac_sha1,
    hmac_sha256, hmac_sha512, locate_envelope, parse_unix_secs, proof_header, unix_secs, Envelope,
    Inbound, Locator, Provider, ShapeError, SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// `sha1`, `sha256`, `sha512` (also `sha-256` etc.), any case.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.trim().to_ascii_lowercase().replace('-', "").as_str() {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Algorithm::Sha1 => hmac_sha1(key, parts).to_vec(),
            Algorithm::Sha256 => hmac_sha256(key, parts).to_vec(),
            Algorithm::Sha512 => hmac_sha512(key, parts).to_vec(),
        }
    }

    fn len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Hex, either case on input, lowercase on output.
    Hex,
    /// Standard base64 with padding.
    Base64,
}

impl Encoding {
    /// `hex` or `base64`, any case.
    pub fn parse(s: &str) -> Option<Encoding> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hex" => Some(Encoding::Hex),
            "base64" => Some(Encoding::Base64),
            _ => None,
        }
    }

    fn decode(self, s: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => decode_hex(s),
            Encoding::Base64 => decode_b64(s),
        }
    }

    fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => encode_b64(bytes),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hmac {
    pub secret: Secret,
    pub header: HeaderName,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the encoded signature (`sha256=`); may be empty.
    pub prefix: String,
    /// When set, its value (unix seconds) is signed in front of the body.
    pub timestamp_header: Option<HeaderName>,
    pub max_skew: Duration,
    pub event_from: Locator,
    pub id_from: Option<Locator>,
}

impl Provider for Hmac {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        const SIG: &str = "signature header";
        const TS: &str = "timestamp header";
        let value = proof_header(req.headers, self.header.as_str(), SIG)?;
        let sig = value
            .trim()
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| self.encoding.decode(s))
            .filter(|s| s.len() == self.algorithm.len())
            .ok_or(VerifyError::Malformed(SIG))?;
        let stamp = match &self.timestamp_header {
            Some(name) => {
                let ts = proof_header(req.headers, name.as_str(), TS)?.trim();
                Some((ts, parse_unix_secs(ts).ok_or(VerifyError::Malformed(TS))?))
            }
            None => None,
        };
        let signed_ts = stamp.map_or(&b""[..], |(ts, _)| ts.as_bytes());
        let expected = self
            .algorithm
            .mac(self.secret.expose(), &[signed_ts, req.body]);
        if !ct_eq(&sig, &expected) {
            return Err(VerifyError::Mismatch);
        }
        match stamp {
            Some((_, secs)) if !fresh_unix_secs(secs, req.now, self.max_skew) => {
                Err(VerifyError::Stale)
            }
            Some((_, secs)) => Ok(Verified::timed(
                &expected,
                accepted_until(secs, self.max_skew),
            )),
            None => Ok(Verified::UNTIMED),
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        locate_envelope(
            req.headers,
            req.body,
            &self.event_from,
            self.id_from.as_ref(),
            &[],
        )
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let ts = self
            .timestamp_header
            .as_ref()
            .map(|name| (name, unix_secs(input.now).to_string()));
        let signed_ts = ts.as_ref().map_or("", |(_, t)| t.as_str());
        let mac = self
            .algorithm
            .mac(self.secret.expose(), &[signed_ts.as_bytes(), input.body]);
        if let Some((name, t)) = &ts {
            headers.push((name.as_str().to_owned(), t.clone()));
        }
        headers.push((
            self.header.as_str().to_owned(),
            format!("{}{}", self.prefix, self.encoding.encode(&mac)),
        ));
        Signed {
            headers,
            body: input.body.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::verify::{header_map, DeliveryId};

    const DOCS_SECRET: &str = "It's a Secret to Everybody";
    const DOCS_SHA256_HEX: &str =
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn github_like() -> Hmac {
        Hmac {
            secret: Secret::new(DOCS_SECRET),
            header: HeaderName::from_static("x-signature"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".into(),
            timestamp_header: None,
            max_skew: Duration::from_secs(300),
            event_from: Locator::parse("body:type").unwrap(),
            id_from: Some(Locator::parse("header:x-id").unwrap()),
        }
    }

    fn timestamped() -> Hmac {
        Hmac {
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: String::new(),
            timestamp_header: Some(HeaderName::from_static("x-timestamp")),
            ..github_like()
        }
    }

    fn verify(
        p: &Hmac,
        headers: &[(&str, &str)],
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let headers = header_map(headers);
        p.verify(&Inbound {
            headers: &headers,
            body,
            now,
        })
        .map(drop)
    }

    #[test]
    fn parse_names() {
        assert_eq!(Algorithm::parse("SHA256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("sha-512"), Some(Algorithm::Sha512));
        assert_eq!(Algorithm::parse("sha1"), Some(Algorithm::Sha1));
        assert_eq!(Algorithm::parse("md5"), None);
        assert_eq!(Encoding::parse("Base64"), Some(Encoding::Base64));
        assert_eq!(Encoding::parse("hex"), Some(Encoding::Hex));
        assert_eq!(Encoding::parse("base32"), None);
    }

    #[test]
    fn github_vector_through_generic_scheme() {
        let sig = format!("sha256={DOCS_SHA256_HEX}");
        assert_eq!(
            verify(
                &github_like(),
                &[("x-signature", &sig)],
                b"Hello, World!",
                at(0)
            ),
            Ok(())
        );
        let sha1 = Hmac {
            algorithm: Algorithm::Sha1,
            prefix: "sha1=".into(),
            ..github_like()
        };
        let sig = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";
        assert_eq!(
            verify(&sha1, &[("x-signature", sig)], b"Hello, World!", at(0)),
            Ok(())
        );
        let b64 = Hmac {
            encoding: Encoding::Base64,
            prefix: String::new(),
            ..github_like()
        };
        let sig = encode_b64(&hex::decode(DOCS_SHA256_HEX).unwrap());
        assert_eq!(
            verify(&b64, &[("x-signature", &sig)], b"Hello, World!", at(0)),
            Ok(())
        );
    }

    #[test]
    fn tampered_body_and_wrong_secret() {
        let sig = format!("sha256={DOCS_SHA256_HEX}");
        let h = [("x-signature", sig.as_str())];
        assert_eq!(
            verify(&github_like(), &h, b"Hello, World?", at(0)),
            Err(VerifyError::Mismatch)
        );
        let other = Hmac {
            secret: Secret::new("x"),
            ..github_like()
        };
        assert_eq!(
            verify(&other, &h, b"Hello, World!", at(0)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let p = github_like();
        assert_eq!(
            verify(&p, &[], b"x", at(0)),
            Err(VerifyError::Missing("signature header"))
        );
        for bad in [
            DOCS_SHA256_HEX.to_owned(),
            format!("sha1={DOCS_SHA256_HEX}"),
            "sha256=abcd".to_owned(),
        ] {
            assert_eq!(
                verify(&p, &[("x-signature", &bad)], b"Hello, World!", at(0)),
                Err(VerifyError::Malformed("signature header")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn timestamped_round_trip_and_window() {
        let p = timestamped();
        let body = br#"{"type":"order.paid","id":"o1"}"#;
        let now = at(1_700_000_000);
        let signed = p.sign(&SignInput {
            body,
            event: "order.paid",
            delivery_id: "d",
            now,
        });
        let headers = header_map(&signed.headers);
        assert_eq!(headers["x-timestamp"], "1700000000");
        let check = |now| {
            p.verify(&Inbound {
                headers: &headers,
                body,
                now,
            })
        };
        // The signature is remembered until its timestamp leaves the window.
        assert_eq!(
            check(now).map(|v| v.replay.map(|m| m.until)),
            Ok(Some(at(1_700_000_000 + 300)))
        );
        assert_eq!(check(at(1_700_000_000 + 301)), Err(VerifyError::Stale));
        assert_eq!(check(at(1_700_000_000 - 301)), Err(VerifyError::Stale));
        // The timestamp is signed: moving it breaks the signature.
        let mut moved = headers.clone();
        moved.insert("x-timestamp", http::HeaderValue::from_static("1700000001"));
        assert_eq!(
            p.verify(&Inbound {
                headers: &moved,
                body,
                now
            }),
            Err(VerifyError::Mismatch)
        );
        let tampered = br#"{"type":"order.paid","id":"o2"}"#;
        assert_eq!(
            p.verify(&Inbound {
                headers: &headers,
                body: tampered,
                now
            }),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn timestamp_missing_or_malformed() {
        let p = timestamped();
        let sig = encode_b64(&[0u8; 64]);
        assert_eq!(
            verify(&p, &[("x-signature", &sig)], b"{}", at(0)),
            Err(VerifyError::Missing("timestamp header"))
        );
        for bad in ["2021-03-25T05:09:27Z", "1.5", "-3", ""] {
            assert_eq!(
                verify(
                    &p,
                    &[("x-signature", &sig), ("x-timestamp", bad)],
                    b"{}",
                    at(0)
                ),
                Err(VerifyError::Malformed("timestamp header")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sign_then_verify_untimestamped() {
        let p = github_like();
        let body = br#"{"type":"a.b"}"#;
        let signed = p.sign(&SignInput {
            body,
            event: "a.b",
            delivery_id: "d",
            now: at(0),
        });
        let mut headers = header_map(&signed.headers);
        assert!(headers["x-signature"]
            .to_str()
            .unwrap()
            .starts_with("sha256="));
        assert_eq!(
            p.verify(&Inbound {
                headers: &headers,
                body,
                now: at(0)
            }),
            Ok(Verified::UNTIMED)
        );
        headers.insert("x-id", http::HeaderValue::from_static("id-1"));
        assert_eq!(
            p.envelope(&Inbound {
                headers: &headers,
                body,
                now: at(0)
            }),
            Ok(Envelope {
                event: "a.b".into(),
                id: DeliveryId::Unsigned("id-1".into())
            })
        );
    }

    #[test]
    fn envelope_shapes() {
        let headers = header_map::<&str, &str>(&[]);
        let env = |p: &Hmac, body: &'static [u8]| {
            p.envelope(&Inbound {
                headers: &headers,
                body,
                now: at(0),
            })
        };
        assert_eq!(
            env(&github_like(), b"{}"),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(env(&github_like(), b"<xml/>"), Err(ShapeError::NotJson));
        let by_body = Hmac {
            id_from: Some(Locator::parse("body:data.id").unwrap()),
            ..github_like()
        };
        assert_eq!(
            env(&by_body, br#"{"type":"t","data":{"id":"x"}}"#),
            Ok(Envelope {
                event: "t".into(),
                id: DeliveryId::Signed("x".into())
            })
        );
        let none = Hmac {
            id_from: None,
            event_from: Locator::parse("header:x-e").unwrap(),
            ..github_like()
        };
        assert_eq!(
            env(&none, b"not json"),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Absent
            })
        );
    }
}

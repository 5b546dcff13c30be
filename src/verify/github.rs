//! GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`,
//! optionally the legacy `X-Hub-Signature: sha1=<hex>` when the sha256 header
//! is absent. The event is the `X-GitHub-Event` header, the delivery id
//! `X-GitHub-Delivery` (unchanged on redelivery, with the same body). The
//! signature does not cover that header, so the id dedupes together with the
//! body's digest. Hooks configured as
//! `application/x-www-form-urlencoded` carry the JSON in the form field
//! `payload`; the signature still covers the raw form body.

use std::borrow::Cow;

use http::HeaderMap;

use super::{
    ct_eq, header_field, header_str, hmac_sha1, hmac_sha256, prefixed_hex, proof_header,
    DeliveryId, Envelope, Inbound, Provider, ShapeError, SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Github {
    pub secret: Secret,
    /// Accept `X-Hub-Signature: sha1=…` when `X-Hub-Signature-256` is absent
    /// (old GHES). Off by default: SHA-1 is the weaker proof.
    pub legacy_sha1: bool,
}

const SHA256_HEADER: &str = "x-hub-signature-256";
const SHA1_HEADER: &str = "x-hub-signature";

impl Provider for Github {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        // A present sha256 header must match even when sha1 is allowed, so a
        // stripped or garbled sha256 header cannot downgrade the proof.
        if req.headers.contains_key(SHA256_HEADER) || !self.legacy_sha1 {
            let what = "X-Hub-Signature-256 header";
            let value = proof_header(req.headers, SHA256_HEADER, what)?;
            let sig = prefixed_hex(value, "sha256=", 32, what)?;
            let expected = hmac_sha256(self.secret.expose(), &[req.body]);
            return if ct_eq(&sig, &expected) {
                Ok(Verified::UNTIMED)
            } else {
                Err(VerifyError::Mismatch)
            };
        }
        if !req.headers.contains_key(SHA1_HEADER) {
            return Err(VerifyError::Missing("X-Hub-Signature-256 header"));
        }
        let value = proof_header(req.headers, SHA1_HEADER, "X-Hub-Signature header")?;
        let sig = prefixed_hex(value, "sha1=", 20, "X-Hub-Signature header")?;
        let expected = hmac_sha1(self.secret.expose(), &[req.body]);
        if ct_eq(&sig, &expected) {
            Ok(Verified::UNTIMED)
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let event = header_field(req.headers, "x-github-event", "X-GitHub-Event header")?
            .ok_or(ShapeError::Missing("X-GitHub-Event header"))?;
        let id = header_field(req.headers, "x-github-delivery", "X-GitHub-Delivery header")?;
        payload_json(req.headers, req.body)?;
        Ok(Envelope {
            event: event.to_owned(),
            id: id.map_or(DeliveryId::Absent, |d| DeliveryId::Unsigned(d.to_owned())),
        })
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let key = self.secret.expose();
        let sha256 = hex::encode(hmac_sha256(key, &[input.body]));
        let sha1 = hex::encode(hmac_sha1(key, &[input.body]));
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", "GitHub-Hookshot/hookgate".to_owned()),
            ("X-GitHub-Event", input.event.to_owned()),
            ("X-GitHub-Delivery", input.delivery_id.to_owned()),
            ("X-GitHub-Hook-ID", "1".to_owned()),
            ("X-Hub-Signature-256", format!("sha256={sha256}")),
            ("X-Hub-Signature", format!("sha1={sha1}")),
        ];
        Signed {
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            body: input.body.to_vec(),
        }
    }
}

/// The JSON payload of a GitHub delivery: the body itself, or the decoded
/// `payload` form field when the hook posts `application/x-www-form-urlencoded`.
/// The JSON is validated without building a tree (this runs on every request).
pub fn payload_json<'b>(headers: &HeaderMap, body: &'b [u8]) -> Result<Cow<'b, [u8]>, ShapeError> {
    if is_form(headers) {
        let payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned().into_bytes())
            .ok_or(ShapeError::BadForm)?;
        if !crate::json::skims(&payload) {
            return Err(ShapeError::BadForm);
        }
        Ok(Cow::Owned(payload))
    } else {
        if !crate::json::skims(body) {
            return Err(ShapeError::NotJson);
        }
        Ok(Cow::Borrowed(body))
    }
}

/// Whether the media type (parameters ignored) is a urlencoded form. Anything
/// else, including no `Content-Type`, is treated as JSON.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    header_str(headers, "content-type")
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mt| {
            mt.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::verify::header_map;

    const DOCS_SECRET: &str = "It's a Secret to Everybody";
    const DOCS_SHA256: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    const DOCS_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

    fn github(secret: &str, legacy_sha1: bool) -> Github {
        Github {
            secret: Secret::new(secret),
            legacy_sha1,
        }
    }

    fn verify(p: &Github, headers: &[(&str, &str)], body: &[u8]) -> Result<Verified, VerifyError> {
        let headers = header_map(headers);
        p.verify(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    fn envelope(headers: &[(&str, &str)], body: &[u8]) -> Result<Envelope, ShapeError> {
        let headers = header_map(headers);
        github("s", false).envelope(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn docs_vector() {
        let p = github(DOCS_SECRET, false);
        assert_eq!(
            verify(
                &p,
                &[("X-Hub-Signature-256", DOCS_SHA256)],
                b"Hello, World!"
            ),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn octokit_vector() {
        let sig = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        let p = github("mysecret", false);
        assert_eq!(
            verify(&p, &[("X-Hub-Signature-256", sig)], br#"{"foo":"bar"}"#),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn uppercase_hex_accepted() {
        let p = github(DOCS_SECRET, false);
        let upper = format!("sha256={}", DOCS_SHA256["sha256=".len()..].to_uppercase());
        assert_eq!(
            verify(&p, &[("X-Hub-Signature-256", &upper)], b"Hello, World!"),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn legacy_sha1_vector_only_when_enabled() {
        let h = [("X-Hub-Signature", DOCS_SHA1)];
        assert_eq!(
            verify(&github(DOCS_SECRET, true), &h, b"Hello, World!"),
            Ok(Verified::UNTIMED)
        );
        assert_eq!(
            verify(&github(DOCS_SECRET, false), &h, b"Hello, World!"),
            Err(VerifyError::Missing("X-Hub-Signature-256 header"))
        );
        assert_eq!(
            verify(&github(DOCS_SECRET, true), &h, b"Hello, World?"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn present_sha256_must_match_even_with_good_sha1() {
        let bad = "sha256=0000000000000000000000000000000000000000000000000000000000000000";
        let h = [("X-Hub-Signature-256", bad), ("X-Hub-Signature", DOCS_SHA1)];
        assert_eq!(
            verify(&github(DOCS_SECRET, true), &h, b"Hello, World!"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn tampered_body_and_wrong_secret_mismatch() {
        let h = [("X-Hub-Signature-256", DOCS_SHA256)];
        assert_eq!(
            verify(&github(DOCS_SECRET, false), &h, b"Hello, World?"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&github("other", false), &h, b"Hello, World!"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_header() {
        assert_eq!(
            verify(&github(DOCS_SECRET, true), &[], b"Hello, World!"),
            Err(VerifyError::Missing("X-Hub-Signature-256 header"))
        );
    }

    #[test]
    fn malformed_headers() {
        let p = github(DOCS_SECRET, true);
        let hex = &DOCS_SHA256["sha256=".len()..];
        for bad in [
            hex.to_owned(),                     // no prefix
            format!("sha1={hex}"),              // wrong prefix
            format!("sha256={}", &hex[..62]),   // short
            format!("sha256={hex}00"),          // long
            format!("sha256={}zz", &hex[..62]), // not hex
            String::new(),
        ] {
            assert_eq!(
                verify(&p, &[("X-Hub-Signature-256", &bad)], b"Hello, World!"),
                Err(VerifyError::Malformed("X-Hub-Signature-256 header")),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify(&p, &[("X-Hub-Signature", "sha256=00")], b"x"),
            Err(VerifyError::Malformed("X-Hub-Signature header"))
        );
    }

    #[test]
    fn sign_then_verify_both_headers() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let signed = github("k", false).sign(&SignInput {
            body,
            event: "ping",
            delivery_id: "d-1",
            now: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(signed.body, body);
        let headers = header_map(&signed.headers);
        let req = Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(github("k", false).verify(&req), Ok(Verified::UNTIMED));
        let mut sha1_only = headers.clone();
        sha1_only.remove(SHA256_HEADER);
        let req = Inbound {
            headers: &sha1_only,
            body,
            now: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(github("k", true).verify(&req), Ok(Verified::UNTIMED));
        let env = github("k", false).envelope(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(
            env,
            Ok(Envelope {
                event: "ping".into(),
                id: DeliveryId::Unsigned("d-1".into())
            })
        );
    }

    #[test]
    fn envelope_json() {
        let env = envelope(
            &[
                ("X-GitHub-Event", "pull_request"),
                ("Content-Type", "application/json"),
            ],
            br#"{"action":"opened"}"#,
        );
        assert_eq!(
            env,
            Ok(Envelope {
                event: "pull_request".into(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            envelope(&[("X-GitHub-Event", "push")], b"{not json"),
            Err(ShapeError::NotJson)
        );
    }

    #[test]
    fn envelope_missing_event() {
        assert_eq!(
            envelope(&[], b"{}"),
            Err(ShapeError::Missing("X-GitHub-Event header"))
        );
        assert_eq!(
            envelope(&[("X-GitHub-Event", "")], b"{}"),
            Err(ShapeError::Missing("X-GitHub-Event header"))
        );
    }

    #[test]
    fn form_encoded_payload() {
        let form = "application/x-www-form-urlencoded; charset=utf-8";
        let body = b"payload=%7B%22action%22%3A%22opened%22%2C%22n%22%3A1%7D";
        let h = [
            ("X-GitHub-Event", "issues"),
            ("Content-Type", form),
            ("X-GitHub-Delivery", "g-1"),
        ];
        assert_eq!(
            envelope(&h, body),
            Ok(Envelope {
                event: "issues".into(),
                id: DeliveryId::Unsigned("g-1".into())
            })
        );
        let headers = header_map(&h);
        assert_eq!(
            payload_json(&headers, body).unwrap().as_ref(),
            br#"{"action":"opened","n":1}"#
        );
        // The signature covers the raw form body, not the JSON inside.
        let signed = github("k", false).sign(&SignInput {
            body,
            event: "issues",
            delivery_id: "g-1",
            now: SystemTime::UNIX_EPOCH,
        });
        let mut headers = header_map(&signed.headers);
        headers.insert("content-type", http::HeaderValue::from_static(form));
        let req = Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(github("k", false).verify(&req), Ok(Verified::UNTIMED));
    }

    #[test]
    fn form_without_json_payload_is_bad_form() {
        let h = [
            ("X-GitHub-Event", "push"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        assert_eq!(envelope(&h, b"other=%7B%7D"), Err(ShapeError::BadForm));
        assert_eq!(envelope(&h, b"payload=not+json"), Err(ShapeError::BadForm));
        assert_eq!(
            envelope(&h, br#"{"action":"opened"}"#),
            Err(ShapeError::BadForm)
        );
    }
}

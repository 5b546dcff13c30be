//! Jira (Cloud admin webhooks and Data Center): `X-Hub-Signature:
//! sha256=<hex HMAC-SHA256(secret, raw body)>`. The header name is GitHub's
//! legacy SHA-1 one but the value is SHA-256, so a `sha1=` value is malformed
//! here. The event is the body's `webhookEvent`; the delivery id is
//! `X-Atlassian-Webhook-Identifier` (unchanged across retries; Data Center may
//! not send it, and the caller then hashes the body). The signature does not
//! cover that header, so the id dedupes together with the body's digest.

use super::{
    ct_eq, header_field, hmac_sha256, json_body, json_str, prefixed_hex, proof_header, DeliveryId,
    Envelope, Inbound, Provider, ShapeError, SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Jira {
    pub secret: Secret,
}

impl Provider for Jira {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        let what = "X-Hub-Signature header";
        let value = proof_header(req.headers, "x-hub-signature", what)?;
        let sig = prefixed_hex(value, "sha256=", 32, what)?;
        let expected = hmac_sha256(self.secret.expose(), &[req.body]);
        if ct_eq(&sig, &expected) {
            Ok(Verified::UNTIMED)
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let body = json_body(req.body)?;
        let event = json_str(&body, "webhookEvent")
            .filter(|e| !e.is_empty())
            .ok_or(ShapeError::Missing("webhookEvent"))?;
        Ok(Envelope {
            event,
            id: header_field(
                req.headers,
                "x-atlassian-webhook-identifier",
                "X-Atlassian-Webhook-Identifier header",
            )?
            .map_or(DeliveryId::Absent, |id| DeliveryId::Unsigned(id.to_owned())),
        })
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let sig = hex::encode(hmac_sha256(self.secret.expose(), &[input.body]));
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", "Atlassian Webhook HTTP Client".to_owned()),
            (
                "X-Atlassian-Webhook-Identifier",
                input.delivery_id.to_owned(),
            ),
            ("X-Atlassian-Webhook-Flow", "Primary".to_owned()),
            ("X-Hub-Signature", format!("sha256={sig}")),
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::verify::header_map;

    const DOCS_SECRET: &str = "It's a Secret to Everybody";
    const DOCS_SHA256: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    fn jira(secret: &str) -> Jira {
        Jira {
            secret: Secret::new(secret),
        }
    }

    fn verify(p: &Jira, headers: &[(&str, &str)], body: &[u8]) -> Result<Verified, VerifyError> {
        let headers = header_map(headers);
        p.verify(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    fn envelope(headers: &[(&str, &str)], body: &[u8]) -> Result<Envelope, ShapeError> {
        let headers = header_map(headers);
        jira("s").envelope(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn github_vectors_under_x_hub_signature() {
        assert_eq!(
            verify(
                &jira(DOCS_SECRET),
                &[("X-Hub-Signature", DOCS_SHA256)],
                b"Hello, World!"
            ),
            Ok(Verified::UNTIMED)
        );
        let sig = "sha256=4864d2759938a15468b5df9ade20bf161da9b4f737ea61794142f3484236bda3";
        assert_eq!(
            verify(
                &jira("mysecret"),
                &[("X-Hub-Signature", sig)],
                br#"{"foo":"bar"}"#
            ),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn tampered_body_and_wrong_secret() {
        let h = [("X-Hub-Signature", DOCS_SHA256)];
        assert_eq!(
            verify(&jira(DOCS_SECRET), &h, b"Hello, World?"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&jira("nope"), &h, b"Hello, World!"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let p = jira(DOCS_SECRET);
        assert_eq!(
            verify(&p, &[], b"x"),
            Err(VerifyError::Missing("X-Hub-Signature header"))
        );
        // Only the sha256 header under the wrong name: still missing.
        assert_eq!(
            verify(
                &p,
                &[("X-Hub-Signature-256", DOCS_SHA256)],
                b"Hello, World!"
            ),
            Err(VerifyError::Missing("X-Hub-Signature header"))
        );
        for bad in [
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
            "sha256=abc",
            "757107ea",
            "",
        ] {
            assert_eq!(
                verify(&p, &[("X-Hub-Signature", bad)], b"Hello, World!"),
                Err(VerifyError::Malformed("X-Hub-Signature header")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sign_then_verify() {
        let body = br#"{"webhookEvent":"jira:issue_updated","issue":{"key":"PRJ-42"}}"#;
        let p = jira("k");
        let signed = p.sign(&SignInput {
            body,
            event: "jira:issue_updated",
            delivery_id: "at-1",
            now: SystemTime::UNIX_EPOCH,
        });
        let headers = header_map(&signed.headers);
        let req = Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(p.verify(&req), Ok(Verified::UNTIMED));
        assert_eq!(
            p.envelope(&req),
            Ok(Envelope {
                event: "jira:issue_updated".into(),
                id: DeliveryId::Unsigned("at-1".into())
            })
        );
    }

    #[test]
    fn envelope_shapes() {
        assert_eq!(
            envelope(&[], br#"{"webhookEvent":"comment_created"}"#),
            Ok(Envelope {
                event: "comment_created".into(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            envelope(&[], br#"{"timestamp":1}"#),
            Err(ShapeError::Missing("webhookEvent"))
        );
        assert_eq!(envelope(&[], b"webhookEvent=x"), Err(ShapeError::NotJson));
    }
}

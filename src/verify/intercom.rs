//! Intercom: `X-Hub-Signature: sha1=<hex HMAC-SHA1(client_secret, raw body)>`.
//! Same header name as Jira's, different algorithm: a `sha256=` value is
//! malformed here. The event is the body's `topic`, the dedupe key its `id`
//! (`notif_…`). Intercom signs no timestamp, so dedupe is the only replay guard.

use super::{
    ct_eq, hmac_sha1, json_body, json_str, prefixed_hex, proof_header, DeliveryId, Envelope,
    Inbound, Provider, ShapeError, SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Intercom {
    /// The app's `client_secret` (or a legacy subscription's `hub_secret`).
    pub secret: Secret,
}

impl Provider for Intercom {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        let what = "X-Hub-Signature header";
        let value = proof_header(req.headers, "x-hub-signature", what)?;
        let sig = prefixed_hex(value, "sha1=", 20, what)?;
        let expected = hmac_sha1(self.secret.expose(), &[req.body]);
        if ct_eq(&sig, &expected) {
            Ok(Verified::UNTIMED)
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let body = json_body(req.body)?;
        let event = json_str(&body, "topic")
            .filter(|t| !t.is_empty())
            .ok_or(ShapeError::Missing("topic"))?;
        Ok(Envelope {
            event,
            id: json_str(&body, "id")
                .filter(|id| !id.is_empty())
                .map_or(DeliveryId::Absent, DeliveryId::Signed),
        })
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let sig = hex::encode(hmac_sha1(self.secret.expose(), &[input.body]));
        let headers = [
            ("Content-Type", "application/json".to_owned()),
            (
                "User-Agent",
                "intercom-parrot-service-client/1.0".to_owned(),
            ),
            ("X-Hub-Signature", format!("sha1={sig}")),
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
    /// Derived from the GitHub docs vector (providers.md §1).
    const DOCS_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

    fn intercom(secret: &str) -> Intercom {
        Intercom {
            secret: Secret::new(secret),
        }
    }

    fn verify(
        p: &Intercom,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let headers = header_map(headers);
        p.verify(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    fn envelope(body: &[u8]) -> Result<Envelope, ShapeError> {
        let headers = header_map::<&str, &str>(&[]);
        intercom("s").envelope(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn derived_sha1_vector() {
        assert_eq!(
            verify(
                &intercom(DOCS_SECRET),
                &[("X-Hub-Signature", DOCS_SHA1)],
                b"Hello, World!"
            ),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn tampered_body_and_wrong_secret() {
        let h = [("X-Hub-Signature", DOCS_SHA1)];
        assert_eq!(
            verify(&intercom(DOCS_SECRET), &h, b"Hello, World?"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&intercom("nope"), &h, b"Hello, World!"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let p = intercom(DOCS_SECRET);
        assert_eq!(
            verify(&p, &[], b"x"),
            Err(VerifyError::Missing("X-Hub-Signature header"))
        );
        for bad in [
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=01dc10d0",
            "01dc10d0c83e72ed246219cdd91669667fe2ca59",
            "sha1=zzdc10d0c83e72ed246219cdd91669667fe2ca59",
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
        let body = br#"{"type":"notification_event","id":"notif_1","topic":"contact.created"}"#;
        let p = intercom("client-secret");
        let signed = p.sign(&SignInput {
            body,
            event: "contact.created",
            delivery_id: "ignored",
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
                event: "contact.created".into(),
                id: DeliveryId::Signed("notif_1".into())
            })
        );
    }

    #[test]
    fn envelope_shapes() {
        assert_eq!(
            envelope(br#"{"topic":"ping"}"#),
            Ok(Envelope {
                event: "ping".into(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            envelope(br#"{"id":"notif_2"}"#),
            Err(ShapeError::Missing("topic"))
        );
        assert_eq!(envelope(b""), Err(ShapeError::NotJson));
    }
}

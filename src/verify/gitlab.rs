//! GitLab: the configured secret token arrives verbatim in `X-Gitlab-Token`
//! (compared in constant time). When a signing token is configured, a valid
//! Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) is required as well, so a captured request cannot be
//! replayed by stripping it. The event is the body's `object_kind` (more
//! precise than the header: work items arrive as `Issue Hook`), falling back to
//! the raw `X-Gitlab-Event` header for custom templates; the dedupe key is
//! `Idempotency-Key` (stable across retries, unlike `X-Gitlab-Webhook-UUID`),
//! unsigned, so it dedupes together with the body's digest. With a signing
//! token it is the signed `webhook-id` (GitLab sends the two equal; a
//! different `Idempotency-Key` is refused): an unsigned key would let a
//! captured request be replayed under a fresh one.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{
    header_field, header_str, json_body, json_str, standard, unix_secs, DeliveryId, Envelope,
    Inbound, Provider, ShapeError, SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Gitlab {
    pub token: Secret,
    /// The signing-token key, already decoded from `whsec_…` with
    /// [`standard::decode_whsec`]. When set, the signature is mandatory.
    pub signing_secret: Option<Secret>,
    /// Window for `webhook-timestamp` (only used with a signing secret).
    pub max_skew: Duration,
}

impl Provider for Gitlab {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        let token = req
            .headers
            .get("x-gitlab-token")
            .ok_or(VerifyError::Missing("X-Gitlab-Token header"))?;
        if !self.token.ct_eq(token.as_bytes()) {
            return Err(VerifyError::Mismatch);
        }
        let Some(key) = &self.signing_secret else {
            return Ok(Verified::UNTIMED);
        };
        let verified =
            standard::verify_headers(key.expose(), req.headers, req.body, req.now, self.max_skew)?;
        let signed_id = header_str(req.headers, "webhook-id").map(str::trim);
        match header_str(req.headers, "idempotency-key").map(str::trim) {
            Some(k) if Some(k) != signed_id => Err(VerifyError::Mismatch),
            _ => Ok(verified),
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let body = json_body(req.body)?;
        let event = match json_str(&body, "object_kind").filter(|k| !k.is_empty()) {
            Some(kind) => kind,
            None => header_field(req.headers, "x-gitlab-event", "X-Gitlab-Event header")?
                .ok_or(ShapeError::Missing("object_kind or X-Gitlab-Event"))?
                .to_owned(),
        };
        let (key_header, what, signed) = if self.signing_secret.is_some() {
            ("webhook-id", "webhook-id header", true)
        } else {
            ("idempotency-key", "Idempotency-Key header", false)
        };
        let id = header_field(req.headers, key_header, what)?.map(str::to_owned);
        Ok(Envelope {
            event,
            id: match id {
                None => DeliveryId::Absent,
                Some(id) if signed => DeliveryId::Signed(id),
                Some(id) => DeliveryId::Unsigned(id),
            },
        })
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let token = String::from_utf8_lossy(self.token.expose()).into_owned();
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            ("User-Agent".to_owned(), "GitLab/17.4.0".to_owned()),
            ("X-Gitlab-Event".to_owned(), event_header(input.event)),
            ("X-Gitlab-Token".to_owned(), token),
            ("Idempotency-Key".to_owned(), input.delivery_id.to_owned()),
            (
                "X-Gitlab-Event-UUID".to_owned(),
                uuid_like(&[b"event", input.delivery_id.as_bytes()]),
            ),
            (
                // Fresh per attempt, as GitLab's is: mixes in the send time.
                "X-Gitlab-Webhook-UUID".to_owned(),
                uuid_like(&[
                    b"webhook",
                    input.delivery_id.as_bytes(),
                    &unix_secs(input.now).to_be_bytes(),
                ]),
            ),
            (
                "X-Gitlab-Instance".to_owned(),
                "https://gitlab.example.com".to_owned(),
            ),
        ];
        if let Some(key) = &self.signing_secret {
            // GitLab uses the Idempotency-Key as the webhook-id.
            headers.extend(standard::sign_headers(
                key.expose(),
                input.delivery_id,
                input.now,
                input.body,
            ));
        }
        Signed {
            headers,
            body: input.body.to_vec(),
        }
    }
}

/// The `X-Gitlab-Event` value GitLab sends for an `object_kind`
/// (`merge_request` → `Merge Request Hook`).
pub fn event_header(object_kind: &str) -> String {
    let name = match object_kind {
        "push" => "Push",
        "tag_push" => "Tag Push",
        "merge_request" => "Merge Request",
        "pipeline" => "Pipeline",
        "issue" | "work_item" => "Issue",
        "note" => "Note",
        "build" => "Job",
        "deployment" => "Deployment",
        "wiki_page" => "Wiki Page",
        "release" => "Release",
        other => {
            let words: Vec<String> = other
                .split(['_', ' '])
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let mut chars = w.chars();
                    chars
                        .next()
                        .map(|c| c.to_uppercase().chain(chars).collect())
                        .unwrap_or_default()
                })
                .collect();
            return format!("{} Hook", words.join(" "));
        }
    };
    format!("{name} Hook")
}

/// A UUID-shaped value (8-4-4-4-12 hex) derived from `parts`.
fn uuid_like(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let x = hex::encode(&h.finalize()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::verify::header_map;

    const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn gitlab(signing: bool) -> Gitlab {
        Gitlab {
            token: Secret::new("glt-secret"),
            signing_secret: signing.then(|| Secret::new(standard::decode_whsec(KEY).unwrap())),
            max_skew: Duration::from_secs(300),
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verify(
        p: &Gitlab,
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

    fn envelope(headers: &[(&str, &str)], body: &[u8]) -> Result<Envelope, ShapeError> {
        let headers = header_map(headers);
        gitlab(false).envelope(&Inbound {
            headers: &headers,
            body,
            now: UNIX_EPOCH,
        })
    }

    #[test]
    fn token_only() {
        let p = gitlab(false);
        let body = br#"{"object_kind":"push"}"#;
        assert_eq!(
            verify(&p, &[("X-Gitlab-Token", "glt-secret")], body, UNIX_EPOCH),
            Ok(())
        );
        assert_eq!(
            verify(&p, &[("X-Gitlab-Token", "glt-secreT")], body, UNIX_EPOCH),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&p, &[("X-Gitlab-Token", "glt-secret2")], body, UNIX_EPOCH),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&p, &[("X-Gitlab-Token", "")], body, UNIX_EPOCH),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&p, &[], body, UNIX_EPOCH),
            Err(VerifyError::Missing("X-Gitlab-Token header"))
        );
    }

    /// The js/go Standard Webhooks vector, sent with a GitLab token.
    #[test]
    fn signing_token_vector() {
        let p = gitlab(true);
        let body = br#"{"test": 2432232314}"#;
        let mut h = vec![
            ("X-Gitlab-Token", "glt-secret"),
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ];
        assert_eq!(verify(&p, &h, body, at(1614265330)), Ok(()));
        assert_eq!(
            verify(&p, &h, br#"{"test": 2432232315}"#, at(1614265330)),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&p, &h, body, at(1614265330 + 600)),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&p, &h, body, at(1614265330 - 600)),
            Err(VerifyError::Stale)
        );
        // A wrong token fails even with a good signature.
        h[0].1 = "nope";
        assert_eq!(
            verify(&p, &h, body, at(1614265330)),
            Err(VerifyError::Mismatch)
        );
    }

    /// A captured signed request replayed under a fresh Idempotency-Key
    /// (or none) keeps the signed webhook-id as its dedupe key, or fails.
    #[test]
    fn with_signing_the_dedupe_key_is_the_signed_id() {
        let p = gitlab(true);
        let body = br#"{"object_kind":"push"}"#;
        let now = at(1_700_000_000);
        let signed = p.sign(&SignInput {
            body,
            event: "push",
            delivery_id: "idem-7",
            now,
        });
        type Edit = dyn Fn(&mut Vec<(String, String)>);
        let check = |edit: &Edit| {
            let mut h = signed.headers.clone();
            edit(&mut h);
            let headers = header_map(&h);
            let req = Inbound {
                headers: &headers,
                body,
                now,
            };
            p.verify(&req).map(|_| p.envelope(&req).expect("shape").id)
        };
        assert_eq!(check(&|_| {}), Ok(DeliveryId::Signed("idem-7".into())));
        assert_eq!(
            check(&|h| h.retain(|(k, _)| k != "Idempotency-Key")),
            Ok(DeliveryId::Signed("idem-7".into()))
        );
        assert_eq!(
            check(&|h| {
                for (k, v) in h.iter_mut() {
                    if k == "Idempotency-Key" {
                        *v = "fresh".into();
                    }
                }
            }),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn signing_required_when_configured() {
        let p = gitlab(true);
        let h = [("X-Gitlab-Token", "glt-secret")];
        assert_eq!(
            verify(&p, &h, b"{}", UNIX_EPOCH),
            Err(VerifyError::Missing("webhook-id header"))
        );
        let h = [
            ("X-Gitlab-Token", "glt-secret"),
            ("webhook-id", "a.b"),
            ("webhook-timestamp", "1"),
            ("webhook-signature", "v1,AAAA"),
        ];
        assert_eq!(
            verify(&p, &h, b"{}", UNIX_EPOCH),
            Err(VerifyError::Malformed("webhook-id header"))
        );
    }

    #[test]
    fn sign_then_verify() {
        let body = br#"{"object_kind":"merge_request","object_attributes":{"iid":7}}"#;
        let now = at(1_700_000_000);
        for signing in [false, true] {
            let p = gitlab(signing);
            let signed = p.sign(&SignInput {
                body,
                event: "merge_request",
                delivery_id: "idem-1",
                now,
            });
            let headers = header_map(&signed.headers);
            assert_eq!(headers["x-gitlab-event"], "Merge Request Hook");
            assert_eq!(headers.contains_key("webhook-signature"), signing);
            if signing {
                assert_eq!(headers["webhook-id"], "idem-1");
            }
            let req = Inbound {
                headers: &headers,
                body,
                now,
            };
            assert_eq!(p.verify(&req).map(drop), Ok(()));
            assert_eq!(
                p.envelope(&req),
                Ok(Envelope {
                    event: "merge_request".into(),
                    id: if signing {
                        DeliveryId::Signed("idem-1".into())
                    } else {
                        DeliveryId::Unsigned("idem-1".into())
                    }
                })
            );
        }
    }

    #[test]
    fn envelope_prefers_object_kind() {
        let h = [
            ("X-Gitlab-Event", "Issue Hook"),
            ("Idempotency-Key", "k1"),
            ("X-Gitlab-Webhook-UUID", "u"),
        ];
        assert_eq!(
            envelope(&h, br#"{"object_kind":"work_item"}"#),
            Ok(Envelope {
                event: "work_item".into(),
                id: DeliveryId::Unsigned("k1".into())
            })
        );
        // Custom template without object_kind: the raw header value.
        assert_eq!(
            envelope(&h[..1], br#"{"custom":true}"#),
            Ok(Envelope {
                event: "Issue Hook".into(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            envelope(&[], br#"{"custom":true}"#),
            Err(ShapeError::Missing("object_kind or X-Gitlab-Event"))
        );
        assert_eq!(envelope(&h, b"not json"), Err(ShapeError::NotJson));
    }

    #[test]
    fn event_headers() {
        assert_eq!(event_header("push"), "Push Hook");
        assert_eq!(event_header("tag_push"), "Tag Push Hook");
        assert_eq!(event_header("work_item"), "Issue Hook");
        assert_eq!(event_header("build"), "Job Hook");
        assert_eq!(event_header("feature_flag"), "Feature Flag Hook");
        assert_eq!(event_header("emoji"), "Emoji Hook");
    }

    #[test]
    fn uuids_look_fresh_per_attempt() {
        let a = uuid_like(&[b"webhook", b"d", &1u64.to_be_bytes()]);
        let b = uuid_like(&[b"webhook", b"d", &2u64.to_be_bytes()]);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}

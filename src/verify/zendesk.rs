//! Zendesk: `X-Zendesk-Webhook-Signature: base64(HMAC-SHA256(secret,
//! timestamp ‖ body))`, where the timestamp is the exact ISO-8601 string of
//! `X-Zendesk-Webhook-Signature-Timestamp` (`2021-03-25T05:09:27Z`), prepended
//! with no separator, and must lie within `max_skew` of now. The event is the
//! body's `type` (event subscriptions; trigger webhooks have a custom body and
//! may have none); the delivery id is the body's `id` for event subscriptions
//! (a `type` of `zen:event-type:…`; signed, as it is in the body), else the
//! invocation id: a trigger's body is the admin's template, where
//! `"id": "{{ticket.id}}"` is common and would make every later notification
//! about that ticket a duplicate. The invocation id is an unsigned header, so
//! it dedupes together with the body's digest (a retry resends the same body,
//! re-signed); a captured request sent again under a new invocation id is
//! caught by its signature (`Verified::replay`), not by the dedupe key.
//!
//! Only POST, PUT and PATCH are accepted (the ingress's method check): GET
//! and DELETE triggers carry their fields in the query string, which the
//! signature does not cover.

use std::time::Duration;

use super::{
    ct_eq, decode_b64, encode_b64, header_field, hmac_sha256, json_body, json_str, proof_header,
    within_skew, DeliveryId, Envelope, Inbound, Provider, ShapeError, SignInput, Signed, Verified,
    VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Zendesk {
    /// The webhook's signing secret, used as its literal UTF-8 bytes.
    pub secret: Secret,
    /// Zendesk publishes no tolerance; 5 minutes is the suggested default.
    pub max_skew: Duration,
}

/// The signature timestamp, exactly as Zendesk writes it:
/// `YYYY-MM-DDTHH:MM:SSZ`, optionally with fractional seconds. Anything
/// looser would let bytes move between the signed timestamp and the body
/// (they are signed back to back, with no separator).
fn timestamp(ts: &str) -> Option<std::time::SystemTime> {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[b.len() - 1] == b'Z'
        && (b.len() == 20 || (b[19] == b'.' && b.len() > 21 && digits(20..b.len() - 1)));
    shape.then(|| humantime::parse_rfc3339(ts).ok()).flatten()
}

impl Provider for Zendesk {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        const SIG: &str = "X-Zendesk-Webhook-Signature header";
        const TS: &str = "X-Zendesk-Webhook-Signature-Timestamp header";
        let sig = proof_header(req.headers, "x-zendesk-webhook-signature", SIG)?;
        let ts = proof_header(req.headers, "x-zendesk-webhook-signature-timestamp", TS)?;
        let sig = decode_b64(sig)
            .filter(|s| s.len() == 32)
            .ok_or(VerifyError::Malformed(SIG))?;
        let at = timestamp(ts).ok_or(VerifyError::Malformed(TS))?;
        let expected = hmac_sha256(self.secret.expose(), &[ts.as_bytes(), req.body]);
        if !ct_eq(&sig, &expected) {
            return Err(VerifyError::Mismatch);
        }
        if !within_skew(at, req.now, self.max_skew) {
            return Err(VerifyError::Stale);
        }
        Ok(Verified::timed(&expected, at + self.max_skew))
    }

    /// A trigger webhook may send an empty body: that reads as no event type
    /// and no body id rather than as malformed JSON.
    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let body = if req.body.trim_ascii().is_empty() {
            None
        } else {
            Some(json_body(req.body)?)
        };
        let field = |k| {
            body.as_ref()
                .and_then(|b| json_str(b, k))
                .filter(|v| !v.is_empty())
        };
        let invocation = || {
            header_field(
                req.headers,
                "x-zendesk-webhook-invocation-id",
                "X-Zendesk-Webhook-Invocation-Id header",
            )
            .map(|v| v.map(str::to_owned))
        };
        let event = field("type").unwrap_or_default();
        let subscription = event.starts_with("zen:event-type:");
        let id = match field("id").filter(|_| subscription) {
            Some(id) => DeliveryId::Signed(id),
            None => invocation()?.map_or(DeliveryId::Absent, DeliveryId::Unsigned),
        };
        Ok(Envelope { id, event })
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let ts = humantime::format_rfc3339_seconds(input.now).to_string();
        let sig = encode_b64(&hmac_sha256(
            self.secret.expose(),
            &[ts.as_bytes(), input.body],
        ));
        let headers = [
            ("Content-Type", "application/json; charset=utf-8".to_owned()),
            ("User-Agent", "Zendesk Webhook".to_owned()),
            ("X-Zendesk-Account-Id", "88888888".to_owned()),
            (
                "X-Zendesk-Webhook-Id",
                "01HXHOOKGATE00000000000000".to_owned(),
            ),
            (
                "X-Zendesk-Webhook-Invocation-Id",
                input.delivery_id.to_owned(),
            ),
            ("X-Zendesk-Webhook-Signature-Timestamp", ts),
            ("X-Zendesk-Webhook-Signature", sig),
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

    /// Zendesk's static test-webhook secret, used as literal text (not decoded).
    const TEST_SECRET: &str = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ==";
    const TS: &str = "2021-03-25T05:09:27Z";
    const BODY: &str = r#"{"type":"zen:event-type:ticket.created","account_id":88888888,"id":"01HNZ3Q8J3Y0B8E4X2Q7W5T9RK","time":"2021-03-25T05:09:20Z"}"#;
    /// Computed with python3 `hmac` (SHA-256, base64) over TS ‖ BODY.
    const SIG: &str = "lGjdCIMy18gj+lv1+RrgU5n0DvaLGl6B9dInUaeOK4c=";
    /// The same over TS alone (GET/DELETE webhooks have no body).
    const SIG_EMPTY: &str = "wCdBvXaHttn0wRVIYctzZ9O6O0bnqWakJMEKZ9VoRWw=";

    fn zendesk(secret: &str) -> Zendesk {
        Zendesk {
            secret: Secret::new(secret),
            max_skew: Duration::from_secs(300),
        }
    }

    fn ts_plus(secs: i64) -> SystemTime {
        let t = humantime::parse_rfc3339(TS).unwrap();
        if secs >= 0 {
            t + Duration::from_secs(secs as u64)
        } else {
            t - Duration::from_secs(secs.unsigned_abs())
        }
    }

    fn verify(
        p: &Zendesk,
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

    fn signed_headers<'a>(sig: &'a str, ts: &'a str) -> [(&'static str, &'a str); 2] {
        [
            ("X-Zendesk-Webhook-Signature", sig),
            ("X-Zendesk-Webhook-Signature-Timestamp", ts),
        ]
    }

    #[test]
    fn test_secret_vector() {
        let p = zendesk(TEST_SECRET);
        assert_eq!(
            verify(&p, &signed_headers(SIG, TS), BODY.as_bytes(), ts_plus(30)),
            Ok(())
        );
        assert_eq!(
            verify(&p, &signed_headers(SIG_EMPTY, TS), b"", ts_plus(-30)),
            Ok(())
        );
    }

    #[test]
    fn tampered_body_timestamp_or_secret() {
        let p = zendesk(TEST_SECRET);
        let h = signed_headers(SIG, TS);
        let tampered = BODY.replace("created", "deleted");
        assert_eq!(
            verify(&p, &h, tampered.as_bytes(), ts_plus(0)),
            Err(VerifyError::Mismatch)
        );
        let other_ts = signed_headers(SIG, "2021-03-25T05:09:28Z");
        assert_eq!(
            verify(&p, &other_ts, BODY.as_bytes(), ts_plus(0)),
            Err(VerifyError::Mismatch)
        );
        // The base64 text of the secret, decoded, is not the key.
        let decoded = zendesk("this_secret_is_for_testing_only");
        assert_eq!(
            verify(&decoded, &h, BODY.as_bytes(), ts_plus(0)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn stale_past_and_future() {
        let p = zendesk(TEST_SECRET);
        let h = signed_headers(SIG, TS);
        assert_eq!(
            verify(&p, &h, BODY.as_bytes(), ts_plus(301)),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(&p, &h, BODY.as_bytes(), ts_plus(-301)),
            Err(VerifyError::Stale)
        );
        // A forgery is reported as a mismatch, not as stale.
        let forged = signed_headers(SIG_EMPTY, TS);
        assert_eq!(
            verify(&p, &forged, BODY.as_bytes(), ts_plus(3600)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let p = zendesk(TEST_SECRET);
        let now = ts_plus(0);
        let body = BODY.as_bytes();
        assert_eq!(
            verify(
                &p,
                &[("X-Zendesk-Webhook-Signature-Timestamp", TS)],
                body,
                now
            ),
            Err(VerifyError::Missing("X-Zendesk-Webhook-Signature header"))
        );
        assert_eq!(
            verify(&p, &[("X-Zendesk-Webhook-Signature", SIG)], body, now),
            Err(VerifyError::Missing(
                "X-Zendesk-Webhook-Signature-Timestamp header"
            ))
        );
        for bad in ["not base64!", "AAAA", "", "94b8dd08832cb5f..."] {
            assert_eq!(
                verify(&p, &signed_headers(bad, TS), body, now),
                Err(VerifyError::Malformed("X-Zendesk-Webhook-Signature header")),
                "{bad:?}"
            );
        }
        for bad in ["1616648967", "yesterday", "2021-13-25T05:09:27Z", ""] {
            assert_eq!(
                verify(&p, &signed_headers(SIG, bad), body, now),
                Err(VerifyError::Malformed(
                    "X-Zendesk-Webhook-Signature-Timestamp header"
                )),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sign_then_verify() {
        let p = zendesk("real-secret");
        let now = ts_plus(0);
        let signed = p.sign(&SignInput {
            body: BODY.as_bytes(),
            event: "x",
            delivery_id: "inv-1",
            now,
        });
        let headers = header_map(&signed.headers);
        assert_eq!(headers["x-zendesk-webhook-signature-timestamp"], TS);
        let req = Inbound {
            headers: &headers,
            body: BODY.as_bytes(),
            now,
        };
        assert_eq!(p.verify(&req).map(drop), Ok(()));
        assert_eq!(
            p.envelope(&req),
            Ok(Envelope {
                event: "zen:event-type:ticket.created".into(),
                id: DeliveryId::Signed("01HNZ3Q8J3Y0B8E4X2Q7W5T9RK".into()),
            })
        );
    }

    #[test]
    fn envelope_shapes() {
        let p = zendesk("s");
        let env = |headers: &[(&str, &str)], body: &[u8]| {
            let headers = header_map(headers);
            p.envelope(&Inbound {
                headers: &headers,
                body,
                now: SystemTime::UNIX_EPOCH,
            })
        };
        let inv = [("X-Zendesk-Webhook-Invocation-Id", "inv-9")];
        // Trigger webhook: custom body without type or id.
        assert_eq!(
            env(&inv, br#"{"ticket":"35436"}"#),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Unsigned("inv-9".into())
            })
        );
        assert_eq!(
            env(&[], br#"{"ticket":"35436"}"#),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            env(&inv, b""),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Unsigned("inv-9".into())
            })
        );
        assert_eq!(env(&inv, b"ticket=1"), Err(ShapeError::NotJson));
        // A trigger body's `id` is the admin's (often the ticket's): every
        // notification about the ticket has it, so it is not the key.
        assert_eq!(
            env(&inv, br#"{"id":"35436","status":"solved"}"#),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Unsigned("inv-9".into())
            })
        );
        // An event subscription's `id` is the event's.
        assert_eq!(
            env(
                &inv,
                br#"{"type":"zen:event-type:ticket.created","id":"01HN"}"#
            ),
            Ok(Envelope {
                event: "zen:event-type:ticket.created".into(),
                id: DeliveryId::Signed("01HN".into())
            })
        );
    }

    #[test]
    fn timestamps_in_any_other_shape_are_malformed() {
        assert!(timestamp("2021-03-25T05:09:27Z").is_some());
        assert!(timestamp("2021-03-25T05:09:27.123Z").is_some());
        for bad in [
            "2021-03-25T05:09:27Z{\"a\"",
            "2021-03-25T05:09:27Zabcde",
            "2021-03-25 05:09:27Z",
            "2021-03-25T05:09:27",
            "2021-03-25T05:09:27+00:00",
            "2021-03-25T05:09:27.Z",
            " 2021-03-25T05:09:27Z",
            "2021-13-25T05:09:27Z",
            "",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }
}

//! Standard Webhooks (standardwebhooks.com, Svix, GitLab signing tokens):
//! `webhook-signature` is a space-separated list of `v1,<base64 HMAC-SHA256>`
//! over `{webhook-id}.{webhook-timestamp}.{body}`, keyed with the
//! base64-decoded `whsec_` secret; the timestamp (unix seconds) must lie
//! within `max_skew` of now. The signing and checking core is exposed as free
//! functions so GitLab can require the same proof next to its token.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::{
    accepted_until, ct_eq, decode_b64, encode_b64, fresh_unix_secs, hmac_sha256, locate_envelope,
    parse_unix_secs, proof_header, unix_secs, Envelope, Inbound, Locator, Provider, ShapeError,
    SignInput, Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Standard {
    /// The HMAC key, already decoded from `whsec_…` (see [`decode_whsec`]).
    pub key: Secret,
    pub max_skew: Duration,
    pub event_from: Locator,
    pub id_from: Locator,
}

impl Provider for Standard {
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        verify_headers(
            self.key.expose(),
            req.headers,
            req.body,
            req.now,
            self.max_skew,
        )
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        // `webhook-id` is part of the signed content; any other header is not.
        locate_envelope(
            req.headers,
            req.body,
            &self.event_from,
            Some(&self.id_from),
            &["webhook-id"],
        )
    }

    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(sign_headers(
            self.key.expose(),
            input.delivery_id,
            input.now,
            input.body,
        ));
        Signed {
            headers,
            body: input.body.to_vec(),
        }
    }
}

/// The key bytes of a `whsec_<base64>` secret (the prefix is optional).
/// `None` when the rest is not standard base64 or decodes to nothing.
pub fn decode_whsec(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
    decode_b64(b64).filter(|k| !k.is_empty())
}

/// One `v1,<base64>` signature entry for `{id}.{timestamp}.{body}`.
pub fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", encode_b64(&mac))
}

/// The three `webhook-*` headers for a delivery sent at `now`.
pub fn sign_headers(key: &[u8], id: &str, now: SystemTime, body: &[u8]) -> Vec<(String, String)> {
    let ts = unix_secs(now).to_string();
    let sig = signature(key, id, &ts, body);
    vec![
        ("webhook-id".to_owned(), id.to_owned()),
        ("webhook-timestamp".to_owned(), ts),
        ("webhook-signature".to_owned(), sig),
    ]
}

/// Checks the `webhook-*` headers: missing or malformed first, then the
/// signature (any `v1` entry may match; other versions such as `v1a` and `v2`
/// are skipped), then the timestamp window.
pub fn verify_headers(
    key: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    max_skew: Duration,
) -> Result<Verified, VerifyError> {
    const ID: &str = "webhook-id header";
    const TS: &str = "webhook-timestamp header";
    const SIG: &str = "webhook-signature header";
    let id = proof_header(headers, "webhook-id", ID)?;
    let ts = proof_header(headers, "webhook-timestamp", TS)?;
    let list = proof_header(headers, "webhook-signature", SIG)?;
    // A `.` would let the id/timestamp boundary shift inside the signed content.
    if id.is_empty() || id.contains('.') {
        return Err(VerifyError::Malformed(ID));
    }
    let secs = parse_unix_secs(ts).ok_or(VerifyError::Malformed(TS))?;

    let expected = hmac_sha256(
        key,
        &[id.as_bytes(), b".", ts.trim().as_bytes(), b".", body],
    );
    let mut well_formed = false;
    let mut matched = false;
    for entry in list.split_whitespace() {
        let Some((version, value)) = entry.split_once(',') else {
            continue;
        };
        well_formed = true;
        if version == "v1" {
            if let Some(sig) = decode_b64(value) {
                matched |= ct_eq(&sig, &expected);
            }
        }
    }
    if !well_formed {
        return Err(VerifyError::Malformed(SIG));
    }
    if !matched {
        return Err(VerifyError::Mismatch);
    }
    if !fresh_unix_secs(secs, now, max_skew) {
        return Err(VerifyError::Stale);
    }
    Ok(Verified::timed(&expected, accepted_until(secs, max_skew)))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::verify::{header_map, DeliveryId};

    const RUST_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const RUST_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const RUST_TS: u64 = 1649367553;
    const RUST_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const RUST_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    const JS_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const JS_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const JS_TS: u64 = 1614265330;
    const JS_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const JS_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const SKEW: Duration = Duration::from_secs(300);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn standard(secret: &str) -> Standard {
        Standard {
            key: Secret::new(decode_whsec(secret).unwrap()),
            max_skew: SKEW,
            event_from: Locator::parse("body:type").unwrap(),
            id_from: Locator::parse("header:webhook-id").unwrap(),
        }
    }

    fn check(
        secret: &str,
        id: &str,
        ts: &str,
        sig: &str,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let headers = header_map(&[
            ("webhook-id", id),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ]);
        standard(secret)
            .verify(&Inbound {
                headers: &headers,
                body,
                now,
            })
            .map(drop)
    }

    fn rust(sig: &str, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        check(RUST_SECRET, RUST_ID, &RUST_TS.to_string(), sig, body, now)
    }

    #[test]
    fn rust_vector() {
        assert_eq!(rust(RUST_SIG, RUST_BODY, at(RUST_TS + 10)), Ok(()));
        let key = decode_whsec(RUST_SECRET).unwrap();
        assert_eq!(
            signature(&key, RUST_ID, &RUST_TS.to_string(), RUST_BODY),
            RUST_SIG
        );
    }

    #[test]
    fn js_go_vector() {
        let ts = JS_TS.to_string();
        assert_eq!(
            check(JS_SECRET, JS_ID, &ts, JS_SIG, JS_BODY, at(JS_TS - 10)),
            Ok(())
        );
    }

    #[test]
    fn negative_vector_fails() {
        let bad = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
        assert_eq!(
            rust(bad, RUST_BODY, at(RUST_TS)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn any_v1_in_list_may_match() {
        let list = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {RUST_SIG}"
        );
        assert_eq!(rust(&list, RUST_BODY, at(RUST_TS)), Ok(()));
        let decoys = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,abc";
        assert_eq!(
            rust(decoys, RUST_BODY, at(RUST_TS)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn asymmetric_entries_are_skipped() {
        let v1a = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";
        let ts = JS_TS.to_string();
        let both = format!("{v1a} {JS_SIG}");
        assert_eq!(
            check(JS_SECRET, JS_ID, &ts, &both, JS_BODY, at(JS_TS)),
            Ok(())
        );
        assert_eq!(
            check(JS_SECRET, JS_ID, &ts, v1a, JS_BODY, at(JS_TS)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn tampered_body_and_wrong_key() {
        let body = br#"{"email":"test@example.com","username":"test_user2"}"#;
        assert_eq!(
            rust(RUST_SIG, body, at(RUST_TS)),
            Err(VerifyError::Mismatch)
        );
        let ts = RUST_TS.to_string();
        assert_eq!(
            check(JS_SECRET, RUST_ID, &ts, RUST_SIG, RUST_BODY, at(RUST_TS)),
            Err(VerifyError::Mismatch)
        );
        // The id and timestamp are signed too.
        assert_eq!(
            check(
                RUST_SECRET,
                "msg_other",
                &ts,
                RUST_SIG,
                RUST_BODY,
                at(RUST_TS)
            ),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn stale_past_and_future() {
        assert_eq!(
            rust(RUST_SIG, RUST_BODY, at(RUST_TS + 301)),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            rust(RUST_SIG, RUST_BODY, at(RUST_TS - 301)),
            Err(VerifyError::Stale)
        );
        assert_eq!(rust(RUST_SIG, RUST_BODY, at(RUST_TS + 299)), Ok(()));
        assert_eq!(rust(RUST_SIG, RUST_BODY, at(RUST_TS - 299)), Ok(()));
    }

    #[test]
    fn huge_timestamp_is_stale_not_a_panic() {
        let ts = u64::MAX.to_string();
        assert_eq!(
            check(RUST_SECRET, RUST_ID, &ts, RUST_SIG, RUST_BODY, at(RUST_TS)),
            Err(VerifyError::Mismatch)
        );
        let key = decode_whsec(RUST_SECRET).unwrap();
        let sig = signature(&key, RUST_ID, &ts, RUST_BODY);
        assert_eq!(
            check(RUST_SECRET, RUST_ID, &ts, &sig, RUST_BODY, at(RUST_TS)),
            Err(VerifyError::Stale)
        );
    }

    #[test]
    fn missing_headers() {
        let body = RUST_BODY;
        let now = at(RUST_TS);
        let ts = RUST_TS.to_string();
        let all = [
            ("webhook-id", RUST_ID),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", RUST_SIG),
        ];
        for (skip, what) in [
            (0, "webhook-id header"),
            (1, "webhook-timestamp header"),
            (2, "webhook-signature header"),
        ] {
            let pairs: Vec<_> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            let headers = header_map(&pairs);
            let req = Inbound {
                headers: &headers,
                body,
                now,
            };
            assert_eq!(
                standard(RUST_SECRET).verify(&req),
                Err(VerifyError::Missing(what))
            );
        }
    }

    #[test]
    fn malformed_headers() {
        let now = at(RUST_TS);
        let ts = RUST_TS.to_string();
        for bad_ts in ["abc", "1649367553.5", "-1649367553", "+1649367553", ""] {
            assert_eq!(
                check(RUST_SECRET, RUST_ID, bad_ts, RUST_SIG, RUST_BODY, now),
                Err(VerifyError::Malformed("webhook-timestamp header")),
                "{bad_ts:?}"
            );
        }
        assert_eq!(
            check(RUST_SECRET, "msg.1", &ts, RUST_SIG, RUST_BODY, now),
            Err(VerifyError::Malformed("webhook-id header"))
        );
        assert_eq!(
            check(
                RUST_SECRET,
                RUST_ID,
                &ts,
                "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                RUST_BODY,
                now
            ),
            Err(VerifyError::Malformed("webhook-signature header"))
        );
        // A v1 entry that is not base64 is simply not a match.
        assert_eq!(
            check(RUST_SECRET, RUST_ID, &ts, "v1,!!!", RUST_BODY, now),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn whsec_decoding() {
        let with = decode_whsec(RUST_SECRET).unwrap();
        assert_eq!(
            decode_whsec("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            Some(with.clone())
        );
        assert_eq!(with.len(), 24);
        assert_eq!(decode_whsec("whsec_not base64!"), None);
        assert_eq!(decode_whsec("whsec_"), None);
    }

    #[test]
    fn sign_then_verify() {
        let p = standard(RUST_SECRET);
        let body = br#"{"type":"invoice.paid","data":{}}"#;
        let now = at(1_700_000_000);
        let signed = p.sign(&SignInput {
            body,
            event: "invoice.paid",
            delivery_id: "msg_1",
            now,
        });
        let headers = header_map(&signed.headers);
        assert_eq!(headers["webhook-timestamp"], "1700000000");
        let req = Inbound {
            headers: &headers,
            body,
            now: now + Duration::from_secs(5),
        };
        assert_eq!(p.verify(&req).map(drop), Ok(()));
        assert_eq!(
            p.envelope(&req),
            Ok(Envelope {
                event: "invoice.paid".into(),
                id: DeliveryId::Signed("msg_1".into())
            })
        );
    }

    #[test]
    fn envelope_locators() {
        let headers = header_map(&[("webhook-id", "msg_9"), ("x-kind", "k")]);
        let p = standard(RUST_SECRET);
        let req = |body: &'static [u8]| Inbound {
            headers: &headers,
            body,
            now: UNIX_EPOCH,
        };
        assert_eq!(
            p.envelope(&req(b"{}")),
            Ok(Envelope {
                event: String::new(),
                id: DeliveryId::Signed("msg_9".into())
            })
        );
        assert_eq!(p.envelope(&req(b"<xml/>")), Err(ShapeError::NotJson));
        // Header-only locators never parse the body.
        let p = Standard {
            event_from: Locator::parse("header:x-kind").unwrap(),
            id_from: Locator::parse("header:x-missing").unwrap(),
            ..standard(RUST_SECRET)
        };
        assert_eq!(
            p.envelope(&req(b"<xml/>")),
            Ok(Envelope {
                event: "k".into(),
                id: DeliveryId::Absent
            })
        );
        // A located header that is there but not text is refused by name.
        let garbled = header_map(&[("x-kind", "\u{e9}")]);
        assert_eq!(
            p.envelope(&Inbound {
                headers: &garbled,
                body: b"{}",
                now: UNIX_EPOCH,
            }),
            Err(ShapeError::NotText("x-kind header".into()))
        );
        let p = Standard {
            id_from: Locator::parse("body:data.id").unwrap(),
            ..standard(RUST_SECRET)
        };
        assert_eq!(
            p.envelope(&req(br#"{"type":"a.b","data":{"id":42}}"#)),
            Ok(Envelope {
                event: "a.b".into(),
                id: DeliveryId::Signed("42".into())
            })
        );
    }
}

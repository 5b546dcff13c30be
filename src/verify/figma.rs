//! Figma (Webhooks V2): no signature header; the webhook's `passcode` is
//! echoed inside every JSON body and compared in constant time, so the body
//! must be parsed before the request is authenticated (the ingress caps its
//! size first). The event is the body's `event_type`. Figma sends no delivery
//! id, so the dedupe key is the tuple `webhook_id`, `event_type`, `timestamp`,
//! `file_key`, `comment_id`, `version_id`.

use std::ops::Range;

use serde_json::Value;

use super::{
    json_body, json_str, DeliveryId, Envelope, Inbound, JsonBody, Provider, ShapeError, SignInput,
    Signed, Verified, VerifyError,
};
use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct Figma {
    pub passcode: Secret,
}

impl Provider for Figma {
    /// A body that is not JSON or has no string `passcode` cannot be
    /// authenticated at all, so it is a proof failure (401), not a shape one.
    fn verify(&self, req: &Inbound<'_>) -> Result<Verified, VerifyError> {
        const WHAT: &str = "passcode in body";
        // Only the passcode is read: the rest of an unauthenticated body is
        // skipped, never built into a tree (a `serde_json::Value` of a
        // 1 MiB body of empty arrays takes ~20 MB).
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow)]
            passcode: Option<std::borrow::Cow<'a, str>>,
        }
        // A struct also reads from a JSON array (`["…"]`): objects only.
        if req.body.trim_ascii_start().first() != Some(&b'{') {
            return Err(VerifyError::Missing(WHAT));
        }
        let body: Body =
            serde_json::from_slice(req.body).map_err(|_| VerifyError::Missing(WHAT))?;
        let passcode = body.passcode.ok_or(VerifyError::Missing(WHAT))?;
        if self.passcode.ct_eq(passcode.as_bytes()) {
            Ok(Verified::UNTIMED)
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn envelope(&self, req: &Inbound<'_>) -> Result<Envelope, ShapeError> {
        let body = json_body(req.body)?;
        let event = json_str(&body, "event_type")
            .filter(|e| !e.is_empty())
            .ok_or(ShapeError::Missing("event_type"))?;
        Ok(Envelope {
            event,
            // Read from the body the passcode came in.
            id: dedupe_key(&body).map_or(DeliveryId::Absent, DeliveryId::Signed),
        })
    }

    /// Figma carries the passcode in the body, so signing rewrites the body's
    /// `passcode` member (inserting it first if absent), leaving every other
    /// byte as it was.
    fn sign(&self, input: &SignInput<'_>) -> Signed {
        let passcode = String::from_utf8_lossy(self.passcode.expose());
        Signed {
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: with_passcode(input.body, &passcode),
        }
    }

    fn stored_body<'b>(&self, body: &'b [u8]) -> std::borrow::Cow<'b, [u8]> {
        if member_values(body, "passcode").is_empty() {
            std::borrow::Cow::Borrowed(body)
        } else {
            std::borrow::Cow::Owned(with_passcode(body, ""))
        }
    }
}

/// The delivery tuple as a JSON array (so no value can forge a separator), or
/// `None` when `webhook_id` or `timestamp` is absent: the tuple would then
/// collide across distinct events, and a body hash is safer.
fn dedupe_key(body: &JsonBody<'_>) -> Option<String> {
    let field = |k| json_str(body, k);
    let tuple = [
        field("webhook_id"),
        field("event_type"),
        field("timestamp"),
        field("file_key"),
        field("comment_id"),
        field("version_id"),
    ];
    if tuple[0].is_none() || tuple[2].is_none() {
        return None;
    }
    serde_json::to_string(&tuple).ok()
}

/// `body` with its top-level `passcode` set; a body that is not a JSON object
/// is returned unchanged (and will then fail `verify`).
fn with_passcode(body: &[u8], passcode: &str) -> Vec<u8> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    let value = Value::String(passcode.to_owned()).to_string();
    let spans = member_values(body, "passcode");
    let mut out = body.to_vec();
    if spans.is_empty() {
        let Some(open) = body.iter().position(|&b| b == b'{') else {
            return out;
        };
        let sep = if map.is_empty() { "" } else { "," };
        let member = format!("\"passcode\":{value}{sep}");
        out.splice(open + 1..open + 1, member.into_bytes());
    } else {
        for span in spans.into_iter().rev() {
            out.splice(span, value.bytes());
        }
    }
    out
}

/// Byte ranges of the values of top-level members named `key` in a JSON
/// object already known to be valid.
fn member_values(body: &[u8], key: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return out;
    }
    i += 1;
    loop {
        i = skip_ws(body, i);
        if body.get(i) != Some(&b'"') {
            return out;
        }
        let Some(key_end) = string_end(body, i) else {
            return out;
        };
        let is_key = body
            .get(i..key_end)
            .and_then(|raw| serde_json::from_slice::<String>(raw).ok())
            .is_some_and(|k| k == key);
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return out;
        }
        let start = skip_ws(body, i + 1);
        let end = value_end(body, start);
        if is_key {
            out.push(start..end);
        }
        i = skip_ws(body, end);
        if body.get(i) != Some(&b',') {
            return out;
        }
        i += 1;
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while body
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// The index just past the string starting at `body[i] == '"'`.
fn string_end(body: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while let Some(&b) = body.get(j) {
        match b {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// The index just past the value starting at `start`.
fn value_end(body: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut j = start;
    while let Some(&b) = body.get(j) {
        match b {
            b'"' => match string_end(body, j) {
                Some(end) => {
                    j = end;
                    continue;
                }
                None => return body.len(),
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return j,
            b'}' | b']' => depth -= 1,
            b',' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => return j,
            _ => {}
        }
        j += 1;
    }
    body.len()
}

#[cfg(test)]
mod stored_tests {
    use super::*;

    #[test]
    fn the_passcode_never_reaches_the_disk() {
        let f = Figma {
            passcode: Secret::new("hunter2"),
        };
        let body = br#"{"event_type":"PING", "passcode" : "hunter2","webhook_id":"1"}"#;
        let kept = f.stored_body(body);
        assert_eq!(
            kept.as_ref(),
            br#"{"event_type":"PING", "passcode" : "","webhook_id":"1"}"#
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::verify::header_map;

    const COMMENT: &str = r#"{"event_type":"FILE_COMMENT","passcode":"secretpasscode","timestamp":"2020-02-23T20:27:16Z","webhook_id":"22","file_key":"CL06nJNn5eZLQKDoARMND5","file_name":"Design","comment_id":"32"}"#;

    fn figma(passcode: &str) -> Figma {
        Figma {
            passcode: Secret::new(passcode),
        }
    }

    fn req_with<R>(body: &[u8], f: impl FnOnce(&Inbound<'_>) -> R) -> R {
        let headers = header_map::<&str, &str>(&[]);
        f(&Inbound {
            headers: &headers,
            body,
            now: SystemTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn docs_sample_verifies() {
        assert_eq!(
            req_with(COMMENT.as_bytes(), |r| figma("secretpasscode").verify(r)),
            Ok(Verified::UNTIMED)
        );
    }

    #[test]
    fn wrong_or_tampered_passcode() {
        assert_eq!(
            req_with(COMMENT.as_bytes(), |r| figma("other").verify(r)),
            Err(VerifyError::Mismatch)
        );
        let tampered = COMMENT.replace("secretpasscode", "secretpasscodE");
        assert_eq!(
            req_with(tampered.as_bytes(), |r| figma("secretpasscode").verify(r)),
            Err(VerifyError::Mismatch)
        );
        let empty = COMMENT.replace("secretpasscode", "");
        assert_eq!(
            req_with(empty.as_bytes(), |r| figma("secretpasscode").verify(r)),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn missing_passcode() {
        let missing = Err(VerifyError::Missing("passcode in body"));
        for body in [
            r#"{"event_type":"PING"}"#,
            r#"{"event_type":"PING","passcode":22}"#,
            r#"{"event_type":"PING","passcode":null}"#,
            r#"["secretpasscode"]"#,
            // Two passcodes: which one counts would be a guess.
            r#"{"passcode":"secretpasscode","passcode":"secretpasscode"}"#,
            "passcode=secretpasscode",
            "",
        ] {
            assert_eq!(
                req_with(body.as_bytes(), |r| figma("secretpasscode").verify(r)),
                missing,
                "{body}"
            );
        }
    }

    #[test]
    fn envelope_and_dedupe_tuple() {
        let env = req_with(COMMENT.as_bytes(), |r| figma("x").envelope(r)).unwrap();
        assert_eq!(env.event, "FILE_COMMENT");
        assert_eq!(
            env.id.as_str(),
            Some(
                r#"["22","FILE_COMMENT","2020-02-23T20:27:16Z","CL06nJNn5eZLQKDoARMND5","32",null]"#
            )
        );
        // A numeric webhook_id reads the same as its string form.
        let numeric = COMMENT.replace(r#""webhook_id":"22""#, r#""webhook_id":22"#);
        assert_eq!(
            req_with(numeric.as_bytes(), |r| figma("x").envelope(r)),
            Ok(env)
        );
        let ping = r#"{"event_type":"PING","passcode":"p"}"#;
        assert_eq!(
            req_with(ping.as_bytes(), |r| figma("x").envelope(r)),
            Ok(Envelope {
                event: "PING".into(),
                id: DeliveryId::Absent
            })
        );
        assert_eq!(
            req_with(br#"{"passcode":"p"}"#, |r| figma("x").envelope(r)),
            Err(ShapeError::Missing("event_type"))
        );
        assert_eq!(
            req_with(b"nope", |r| figma("x").envelope(r)),
            Err(ShapeError::NotJson)
        );
    }

    #[test]
    fn separators_cannot_be_forged() {
        let a = r#"{"event_type":"E","webhook_id":"1\",\"2","timestamp":"t"}"#;
        let b = r#"{"event_type":"E","webhook_id":"1","file_key":"2","timestamp":"t"}"#;
        let ka = req_with(a.as_bytes(), |r| figma("x").envelope(r))
            .unwrap()
            .id;
        let kb = req_with(b.as_bytes(), |r| figma("x").envelope(r))
            .unwrap()
            .id;
        assert!(ka.as_str().is_some());
        assert_ne!(ka, kb);
    }

    fn sign(passcode: &str, body: &str) -> String {
        let signed = figma(passcode).sign(&SignInput {
            body: body.as_bytes(),
            event: "FILE_UPDATE",
            delivery_id: "d",
            now: SystemTime::UNIX_EPOCH,
        });
        assert_eq!(
            signed.headers,
            [("Content-Type".to_owned(), "application/json".to_owned())]
        );
        String::from_utf8(signed.body).unwrap()
    }

    #[test]
    fn sign_replaces_passcode_in_place() {
        let out = sign("new \"pass\"", COMMENT);
        assert_eq!(
            out,
            COMMENT.replace(r#""secretpasscode""#, r#""new \"pass\"""#)
        );
        assert_eq!(
            req_with(out.as_bytes(), |r| figma("new \"pass\"").verify(r)),
            Ok(Verified::UNTIMED)
        );
        // Nested `passcode` keys and look-alike strings are left alone.
        let nested =
            r#"{ "a" : {"passcode":"inner"}, "b":["passcode",1], "passcode" : "old" , "c":true}"#;
        assert_eq!(
            sign("p", nested),
            r#"{ "a" : {"passcode":"inner"}, "b":["passcode",1], "passcode" : "p" , "c":true}"#
        );
        let non_string = r#"{"passcode":{"x":[1,2]},"z":0}"#;
        assert_eq!(sign("p", non_string), r#"{"passcode":"p","z":0}"#);
    }

    #[test]
    fn sign_inserts_passcode_first() {
        let body =
            r#"{"event_type":"FILE_UPDATE","file_key":"k","timestamp":"t","webhook_id":"1"}"#;
        let out = sign("pc", body);
        assert_eq!(
            out,
            r#"{"passcode":"pc","event_type":"FILE_UPDATE","file_key":"k","timestamp":"t","webhook_id":"1"}"#
        );
        assert_eq!(
            req_with(out.as_bytes(), |r| figma("pc").verify(r)),
            Ok(Verified::UNTIMED)
        );
        assert_eq!(sign("pc", " {} "), r#" {"passcode":"pc"} "#);
        assert_eq!(sign("pc", "[1]"), "[1]");
    }
}

//! What routes see of a stored event: [`context`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use minijinja::Value;
use serde::Serialize;

use super::EventContext;
use crate::queue::EventRecord;

/// What routes see of an event.
pub fn context(event: &EventRecord) -> EventContext {
    let (mut ctx, json) = envelope(event);
    ctx.payload = serde_json::from_slice(&json).unwrap_or(serde_json::Value::Null);
    ctx
}

/// What routes see of an event but its payload (null), and the JSON the
/// payload is read from.
pub fn envelope(event: &EventRecord) -> (EventContext, Cow<'_, [u8]>) {
    let headers: BTreeMap<String, String> = event
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let mut map = http::HeaderMap::new();
    if let Some(ct) = headers.get("content-type").and_then(|v| v.parse().ok()) {
        map.insert(http::header::CONTENT_TYPE, ct);
    }
    // GitHub's form-encoded deliveries carry the JSON in `payload`. Any
    // other body is parsed as it is: once (validating it first, and
    // copying it, cost a seventh of routing an event).
    let form = crate::verify::github::is_form(&map)
        .then(|| crate::verify::github::payload_json(&map, &event.body).ok())
        .flatten();
    let json = form.map_or(Cow::Borrowed(&event.body[..]), |f| {
        Cow::Owned(f.into_owned())
    });
    let received = SystemTime::UNIX_EPOCH + Duration::from_millis(event.received_at_ms);
    let ctx = EventContext {
        source: event.source.clone(),
        event: event.event.clone(),
        delivery_id: event.delivery_id.clone(),
        received_at: humantime::format_rfc3339_millis(received).to_string(),
        headers,
        payload: serde_json::Value::Null,
    };
    (ctx, json)
}

/// `ctx` as templates see it: exactly what `Value::from_serialize(ctx)`
/// makes, with the payload converted directly (through serde it cost a
/// fifth of routing a 7.5 KB push).
pub fn template_value(ctx: &EventContext) -> Value {
    template_value_with(ctx, json(&ctx.payload))
}

/// `ctx` as templates see it, with `payload` for its payload.
pub fn template_value_with(ctx: &EventContext, payload: Value) -> Value {
    /// `EventContext`, field for field, with the payload converted.
    #[derive(Serialize)]
    struct Converted<'a> {
        source: &'a str,
        event: &'a str,
        delivery_id: &'a str,
        received_at: &'a str,
        headers: &'a BTreeMap<String, String>,
        // A Value serialized into a Value is passed through as it is.
        payload: Value,
    }
    Value::from_serialize(Converted {
        source: &ctx.source,
        event: &ctx.event,
        delivery_id: &ctx.delivery_id,
        received_at: &ctx.received_at,
        headers: &ctx.headers,
        payload,
    })
}

/// The payload JSON `bytes` as templates see it: what [`parse`] makes of
/// it, read only as far as templates look (`lazy.rs`).
pub fn template_payload(bytes: &[u8]) -> Value {
    super::lazy::payload(bytes)
}

/// The payload JSON `bytes` parsed straight into template values: what
/// [`json`] makes of serde_json's parse (null when it is not JSON),
/// without building the `serde_json::Value` first.
pub(super) fn parse(bytes: &[u8]) -> Value {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match Parse
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
    {
        Ok(v) => v,
        Err(_) => Value::from(()),
    }
}

/// Builds template values as serde_json reads them.
#[derive(Clone, Copy)]
struct Parse;

impl<'de> serde::de::DeserializeSeed<'de> for Parse {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Parse {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::from(()))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::from(b))
    }
    // serde_json::Value keeps a non-negative integer as u64 (`-0` too).
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(u64::try_from(i).map_or(Value::from(i), Value::from))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::from(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::from(s))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::from(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::from_object(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Sorted, the last of a repeated key kept: serde_json's map.
        let mut entries = BTreeMap::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            entries.insert(k, v);
        }
        Ok(entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect())
    }
}

/// What minijinja's serializer makes of `v`.
fn json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        // serde_json serializes a number as u64, else i64, else f64.
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Value::from(u),
            (None, Some(i), _) => Value::from(i),
            (None, None, f) => Value::from(f.unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => items.iter().map(json).collect(),
        J::Object(map) => map
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), json(v)))
            .collect(),
    }
}

/// Every provider's sample and the edges of JSON: numbers of each kind,
/// nulls, nesting, repeated keys, escapes, and what serde_json refuses.
#[cfg(test)]
pub(super) fn bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for provider in std::fs::read_dir("samples").unwrap() {
        for sample in std::fs::read_dir(provider.unwrap().path()).unwrap() {
            bodies.push(std::fs::read(sample.unwrap().path()).unwrap());
        }
    }
    assert!(bodies.len() >= 10);
    bodies.push(
        br#"{"u": 18446744073709551615, "i": -9223372036854775808, "f": 1.5e300, "z": -0.0,
           "n": null, "b": [true, false, [], {}], "s": "\u00e9\ud83d\ude00", "": {"a": {"b": [1, -1, 0.1]}}}"#
        .to_vec(),
    );
    bodies.push(b"[1, 2, 3]".to_vec());
    bodies.push(br#"{"a": 1, "a": 2, "-": -0, "e": 1e2}"#.to_vec());
    bodies.push(b"{} trailing".to_vec());
    bodies.push(format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes());
    bodies.push(format!("{}{}", "[".repeat(100), "]".repeat(100)).into_bytes());
    bodies.push(b"not json".to_vec());
    bodies.extend(
        [
            &br#"{"o": {"k": 1, "k": {"deep": [2]}}, "k": 0}"#[..],
            br#" { "a" : [ 1 , { "b" : 2 } , [ ] , { } ] , "s" : "x" } "#,
            br#"{"\u0061": 1, "a\"b": 2, "\n": {"\u00e9": "\u00e9"}}"#,
            br#"{"lone": "\ud800"}"#,
            b"{\"bad\": \"\xff\"}",
            br#"{"big": 1e400}"#,
            br#"{"a": [1,]}"#,
            br#""a string""#,
            b" 12 ",
            b"null",
            b"[]",
            b"{}",
        ]
        .map(<[u8]>::to_vec),
    );
    bodies.push(format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127)).into_bytes());
    bodies.push(format!("{{\"a\":{}1{}}}", "[".repeat(128), "]".repeat(128)).into_bytes());
    bodies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(content_type: &str, body: &[u8]) -> EventRecord {
        let mut event = crate::queue::sample_record();
        event.headers = vec![("content-type".into(), content_type.as_bytes().to_vec())];
        event.body = body.to_vec();
        event
    }

    /// The payload is the JSON body, or a GitHub form's `payload` field;
    /// anything else is null (routes see no payload, and still run).
    #[test]
    fn the_payload_is_the_json_body_or_the_forms_payload() {
        let json = with("application/json", br#"{"action":"opened"}"#);
        assert_eq!(context(&json).payload["action"], "opened");
        let form = with(
            "application/x-www-form-urlencoded",
            b"payload=%7B%22action%22%3A%22closed%22%7D",
        );
        assert_eq!(context(&form).payload["action"], "closed");
        // Labelled a form, sent as JSON: read as JSON.
        let mislabelled = with("application/x-www-form-urlencoded", br#"{"action":"x"}"#);
        assert_eq!(context(&mislabelled).payload["action"], "x");
        for body in [&b"not json"[..], b"payload=%7Bnope", b""] {
            let event = with("application/json", body);
            assert_eq!(context(&event).payload, serde_json::Value::Null);
            let event = with("application/x-www-form-urlencoded", body);
            assert_eq!(context(&event).payload, serde_json::Value::Null);
        }
    }

    /// The converted context is the one serde made, for every provider's
    /// sample and the edges of JSON (numbers of each kind, nulls, nesting).
    #[test]
    fn the_template_value_is_what_serde_made() {
        let bodies = bodies();
        for body in bodies {
            let ctx = context(&with("application/json", &body));
            let by_serde = Value::from_serialize(&ctx);
            let direct = template_value(&ctx);
            assert_eq!(direct, by_serde);
            let parsed = template_value_with(&ctx, template_payload(&body));
            assert_eq!(parsed, by_serde);
            // Equal values could still differ in kind or order: compare
            // what a template prints of them too.
            let env = minijinja::Environment::new();
            let print = |v: &Value| {
                env.render_str(
                    "{{ v | tojson }} {{ v.payload | pprint }}",
                    minijinja::context! { v => v },
                )
                .unwrap()
            };
            assert_eq!(print(&direct), print(&by_serde));
            assert_eq!(print(&parsed), print(&by_serde));
            // And with an `each` item beside it.
            #[derive(Serialize)]
            struct WithItem<'a> {
                #[serde(flatten)]
                ctx: &'a EventContext,
                item: Value,
            }
            let item = Value::from_iter([("n", 1)]);
            let by_serde = Value::from_serialize(WithItem {
                ctx: &ctx,
                item: item.clone(),
            });
            let direct = super::super::with_item(&direct, item);
            assert_eq!(direct, by_serde);
            assert_eq!(print(&direct), print(&by_serde));
        }
    }
}

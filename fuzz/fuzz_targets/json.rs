//! The JSON checks (`src/json.rs`) accept exactly what serde_json does:
//! `skims` what it reads into `IgnoredAny` (ingress), `reads` what it
//! reads into values (the providers' bodies, the router's lazy payload);
//! and in a document `reads` accepts, `find` and `text` find what
//! `serde_json::Value` finds (the providers' event types and ids).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|doc: &[u8]| {
    assert_eq!(hookgate::json::skims(doc), hookgate::json::serde_skims(doc));
    assert_eq!(hookgate::json::reads(doc), hookgate::json::serde_reads(doc));
    assert_eq!(
        hookgate::json::reads_noting_ends(doc).is_some(),
        hookgate::json::reads(doc)
    );
    let Ok(value) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    assert!(hookgate::json::reads(doc));
    for path in [&["a"][..], &["a", "b"], &["id"], &[""], &["a", "a", "a"]] {
        let mut v = Some(&value);
        for key in path {
            v = v.and_then(|v| v.get(key));
        }
        let expected = match v {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let found = hookgate::json::find(doc, path).and_then(hookgate::json::text);
        assert_eq!(found, expected, "{path:?}");
    }
});

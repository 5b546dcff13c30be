//! The JSON checks (`src/json.rs`) accept exactly what serde_json does:
//! `skims` what it reads into `IgnoredAny` (ingress), `reads` what it
//! reads into values (the router's lazy payload).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|doc: &[u8]| {
    assert_eq!(hookgate::json::skims(doc), hookgate::json::serde_skims(doc));
    assert_eq!(hookgate::json::reads(doc), hookgate::json::serde_reads(doc));
});

//! What the load examples share (not an example itself: cargo builds only
//! `examples/*.rs` and `examples/*/main.rs`).

use bytes::Bytes;

/// The bundled 7.5 KB GitHub push and the headers GitHub would send with
/// it under `secret`, less `X-GitHub-Delivery` (each request sets its
/// own). GitHub signs the body alone, so one signature serves every
/// request and the load generator spends its CPU on sending.
pub fn signed_push(secret: &str) -> (Bytes, Vec<(String, String)>) {
    use hookgate::verify::{Provider, SignInput};
    let body = Bytes::from_static(include_bytes!("../../samples/github/push.json"));
    let github = hookgate::verify::github::Github {
        secret: hookgate::secret::Secret::new(secret),
        legacy_sha1: false,
    };
    let signed = github.sign(&SignInput {
        body: &body,
        event: "push",
        delivery_id: "-",
        now: std::time::SystemTime::now(),
    });
    let headers = signed
        .headers
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("x-github-delivery"))
        .collect();
    (body, headers)
}

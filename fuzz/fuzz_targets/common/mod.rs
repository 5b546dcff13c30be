//! What every `verify_*` target does with its input. The input is a request
//! as text: `name: value` lines, a blank line, then the body (an input
//! without a blank line is all body). Two properties, per provider:
//!
//! - any request: `verify` and, when it passes, `envelope`, the dedupe key
//!   and `stored_body` return instead of panicking; a proof names secret 0
//!   (each source has one) and a replay mark is not already expired;
//! - the same body signed as the provider signs it (`Provider::sign`, what
//!   `hookgate send` uses) always verifies (for Figma: when the body is a
//!   JSON object, where the passcode goes), the same way twice, with a
//!   replay mark for the timestamped schemes, and its envelope returns.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookgate::config::{secrets::Resolver, Proof};
use hookgate::verify::{Inbound, Provider, SignInput, Verified};
use http::{HeaderMap, HeaderName, HeaderValue};

/// One source per scheme; the timestamped ones check against [`now`].
const CONFIG: &str = r#"
[server]
data_dir = "/nonexistent"

[sources.github]
provider = "github"
secret = { env = "FUZZ_SECRET" }
legacy_sha1 = true

[sources.gitlab]
provider = "gitlab"
secret = { env = "FUZZ_SECRET" }
signing_secret = { env = "FUZZ_WHSEC" }

[sources.jira]
provider = "jira"
secret = { env = "FUZZ_SECRET" }

[sources.figma]
provider = "figma"
secret = { env = "FUZZ_SECRET" }

[sources.zendesk]
provider = "zendesk"
secret = { env = "FUZZ_SECRET" }

[sources.intercom]
provider = "intercom"
secret = { env = "FUZZ_SECRET" }

[sources.standard]
provider = "standard"
secret = { env = "FUZZ_WHSEC" }

[sources.hmac]
provider = "hmac"
secret = { env = "FUZZ_SECRET" }
header = "X-Signature"
algorithm = "sha256"
encoding = "base64"
prefix = "v1="
timestamp_header = "X-Timestamp"
event_from = "body:type"
id_from = "header:X-Id"
"#;

fn providers() -> &'static HashMap<String, Arc<dyn Provider>> {
    static PROVIDERS: OnceLock<HashMap<String, Arc<dyn Provider>>> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        std::env::set_var("FUZZ_SECRET", "fuzz-secret");
        std::env::set_var("FUZZ_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let loaded = hookgate::config::parse(CONFIG, &Resolver::default())
            .unwrap_or_else(|p| panic!("the fuzz config is wrong: {p:#?}"));
        loaded
            .config
            .sources
            .into_values()
            .map(|s| match s.proof {
                Proof::Ready(p) => (s.name, p),
                Proof::Closed(why) => panic!("{}: {why}", s.name),
            })
            .collect()
    })
}

/// A fixed clock, so a seed's timestamps stay inside the window.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Splits `data` into headers (unreadable lines skipped) and the body.
pub fn request(data: &[u8]) -> (HeaderMap, &[u8]) {
    let Some(end) = data.windows(2).position(|w| w == b"\n\n") else {
        return (HeaderMap::new(), data);
    };
    let mut headers = HeaderMap::new();
    for line in data[..end].split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    (headers, &data[end + 2..])
}

pub fn exercise(name: &str, data: &[u8]) {
    let provider = &providers()[name];
    let (headers, body) = request(data);
    let inbound = Inbound {
        headers: &headers,
        body,
        now: now(),
    };
    if let Ok(verified) = provider.verify(&inbound) {
        proof_holds(name, &verified);
        accept(provider.as_ref(), &inbound);
    }

    // The event the signer names, from the input when it has one.
    let event = headers
        .get("x-fuzz-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("push");
    let signed = provider.sign(&SignInput {
        body,
        event,
        delivery_id: "fuzz-delivery",
        now: now(),
    });
    let mut headers = HeaderMap::new();
    for (k, v) in &signed.headers {
        let n = HeaderName::from_bytes(k.as_bytes()).expect("sign writes valid header names");
        let v = HeaderValue::from_str(v).expect("sign writes valid header values");
        headers.append(n, v);
    }
    let inbound = Inbound {
        headers: &headers,
        body: &signed.body,
        now: now(),
    };
    // Figma's passcode travels in a JSON object: a signer given any other
    // body sends it as it is, unprovable by design. So is an object naming
    // `passcode` twice (Figma never does): verify refuses the ambiguity.
    let provable = name != "figma"
        || (matches!(
            serde_json::from_slice::<serde_json::Value>(body),
            Ok(serde_json::Value::Object(_))
        ) && body.windows(10).filter(|w| w == b"\"passcode\"").count() <= 1);
    match provider.verify(&inbound) {
        Ok(verified) => {
            proof_holds(name, &verified);
            assert_eq!(
                provider.verify(&inbound).as_ref(),
                Ok(&verified),
                "{name}: the same request verified differently twice"
            );
            // Item 8 of issue 8: a timestamped proof is refused when replayed.
            if TIMESTAMPED.contains(&name) {
                assert!(
                    verified.replay.is_some(),
                    "{name}: a timestamped proof carries no replay mark"
                );
            }
        }
        Err(e) if provable => {
            panic!("{name}: a request signed as {name} signs did not verify: {e}")
        }
        Err(_) => {}
    }
    accept(provider.as_ref(), &inbound);
}

/// The schemes configured above whose signed requests carry a timestamp.
const TIMESTAMPED: &[&str] = &["zendesk", "standard", "hmac"];

/// What any accepted proof must say: each source here has one secret, and
/// a replay mark outlives the request it was made for.
fn proof_holds(name: &str, verified: &Verified) {
    assert_eq!(
        verified.secret, 0,
        "{name}: a secret that is not configured matched"
    );
    if let Some(mark) = verified.replay {
        assert!(
            mark.until >= now(),
            "{name}: a proof accepted now is marked as expired"
        );
    }
}

/// What ingress does with a proven request: the envelope, its dedupe key
/// (from the body as received) and the body as stored.
fn accept(provider: &dyn Provider, inbound: &Inbound<'_>) {
    if let Ok(envelope) = provider.envelope(inbound) {
        let key = envelope.id.dedupe(inbound.body).key(inbound.body);
        assert!(!key.is_empty(), "an empty dedupe key");
    }
    let _ = provider.stored_body(inbound.body);
}

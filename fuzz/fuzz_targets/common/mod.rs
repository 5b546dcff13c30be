//! What every `verify_*` target does with its input. The input is a request
//! as text: `name: value` lines, a blank line, then the body (an input
//! without a blank line is all body). Two properties, per provider:
//!
//! - any request: `verify` and, when it passes, `envelope` and
//!   `stored_body` return instead of panicking;
//! - the same body signed as the provider signs it (`Provider::sign`, what
//!   `hookgate send` uses) always verifies (for Figma: when the body is a
//!   JSON object, where the passcode goes), and its envelope returns.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookgate::config::{secrets::Resolver, Proof};
use hookgate::verify::{Inbound, Provider, SignInput};
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
    if provider.verify(&inbound).is_ok() {
        let _ = provider.envelope(&inbound);
        let _ = provider.stored_body(body);
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
    // body sends it as it is, unprovable by design.
    let provable = name != "figma"
        || matches!(
            serde_json::from_slice::<serde_json::Value>(body),
            Ok(serde_json::Value::Object(_))
        );
    if let (true, Err(e)) = (provable, provider.verify(&inbound)) {
        panic!("{name}: a request signed as {name} signs did not verify: {e}");
    }
    let _ = provider.envelope(&inbound);
    let _ = provider.stored_body(&signed.body);
}

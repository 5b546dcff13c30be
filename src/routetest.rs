//! `hookgate test`: route tests kept beside the config (Vector's `vector
//! test` is the model). Each test is a sample event and what routing must
//! make of it: which (route, sink) deliveries, with which rendered message
//! or fields, and which routes must not fire.
//!
//! ```toml
//! [[tests]]
//! name = "merged pull requests are announced"
//! source = "github"
//! event = "pull_request"
//! payload_file = "samples/github/pull_request.json"   # or payload = '''{…}'''
//!
//! [[tests.expect]]
//! route = "merged-prs"
//! sink = "stdout"
//! contains = "merged"            # or message = "exact text"
//! fields = { status = "COMPLETED" }  # actions: these fields, exactly
//!
//! [tests.reject]
//! routes = ["tickets-become-feedback"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Config;
use crate::queue::EventRecord;
use crate::route::{Outcome, Rendered};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    tests: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    source: String,
    /// The event type as the provider reports it (`pull_request`,
    /// `jira:issue_updated`, …).
    event: String,
    payload: Option<String>,
    /// Relative to the test file.
    payload_file: Option<PathBuf>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    expect: Vec<Expect>,
    #[serde(default)]
    reject: Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    route: String,
    sink: String,
    message: Option<String>,
    contains: Option<String>,
    fields: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reject {
    #[serde(default)]
    routes: Vec<String>,
}

/// Where the tests for `config` live: `routes.toml` → `routes.test.toml`.
pub fn tests_path(config: &Path) -> PathBuf {
    config.with_extension("test.toml")
}

/// One test's result.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    /// Empty when it passed.
    pub failures: Vec<String>,
}

/// Runs every test in `path` against `config`.
pub fn run(config: &Config, path: &Path) -> Result<Vec<Report>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: TestFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    file.tests
        .iter()
        .map(|t| run_one(config, base, t))
        .collect()
}

fn run_one(config: &Config, base: &Path, t: &TestCase) -> Result<Report, String> {
    let Some(source) = config.sources.get(&t.source) else {
        return Err(format!(
            "test `{}`: no source `{}` in the config",
            t.name, t.source
        ));
    };
    let body = match (&t.payload, &t.payload_file) {
        (Some(p), None) => p.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(base.join(f))
            .map_err(|e| format!("test `{}`: {}: {e}", t.name, f.display()))?,
        _ => {
            return Err(format!(
                "test `{}`: give one of `payload` or `payload_file`",
                t.name
            ))
        }
    };
    let event = EventRecord {
        source: t.source.clone(),
        provider: source.provider.name().to_owned(),
        event: t.event.clone(),
        delivery_id: format!("test-{}", t.name),
        received_at_ms: 0,
        client_ip: "127.0.0.1".into(),
        headers: t
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone().into_bytes()))
            .collect(),
        body,
    };
    // What ingress would refuse (400) never reaches a route: a test whose
    // payload is not JSON (or a GitHub form without a JSON `payload`)
    // would otherwise pass against `payload = none`.
    let mut content_type = http::HeaderMap::new();
    if let Some(ct) = event
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .and_then(|(_, v)| http::HeaderValue::from_bytes(v).ok())
    {
        content_type.insert(http::header::CONTENT_TYPE, ct);
    }
    if crate::verify::github::payload_json(&content_type, &event.body).is_err() {
        return Err(format!(
            "test `{}`: the payload is not JSON (hookgate would answer 400 to it)",
            t.name
        ));
    }
    let outcomes = config.routes.evaluate(&crate::router::context(&event));
    let mut failures = Vec::new();
    for want in &t.expect {
        let found = outcomes.iter().find(|o| match o {
            Outcome::Rendered { route, sink, .. } | Outcome::Failed { route, sink, .. } => {
                route == &want.route && sink == &want.sink
            }
        });
        match found {
            None => failures.push(format!(
                "expected a delivery by route `{}` to sink `{}`; got {}",
                want.route,
                want.sink,
                describe(&outcomes)
            )),
            Some(Outcome::Failed { error, .. }) => {
                failures.push(format!("route `{}` failed to render: {error}", want.route))
            }
            Some(Outcome::Rendered { content, .. }) => check_content(want, content, &mut failures),
        }
    }
    for route in &t.reject.routes {
        if outcomes.iter().any(|o| matches!(o, Outcome::Rendered { route: r, .. } | Outcome::Failed { route: r, .. } if r == route)) {
            failures.push(format!("route `{route}` must not fire, and did"));
        }
    }
    Ok(Report {
        name: t.name.clone(),
        failures,
    })
}

fn check_content(want: &Expect, content: &Rendered, failures: &mut Vec<String>) {
    let text = match content {
        Rendered::Text(t) | Rendered::Json(t) => Some(t.as_str()),
        _ => None,
    };
    if let Some(expected) = &want.message {
        match text {
            Some(got) if got == expected => {}
            Some(got) => failures.push(format!(
                "route `{}` rendered another message:\n{}",
                want.route,
                diff(expected, got)
            )),
            None => failures.push(format!("route `{}` has no message to compare", want.route)),
        }
    }
    if let Some(part) = &want.contains {
        if !text.is_some_and(|t| t.contains(part.as_str())) {
            failures.push(format!(
                "route `{}`: message does not contain {part:?}: {:?}",
                want.route,
                text.unwrap_or("")
            ));
        }
    }
    if let Some(expected) = &want.fields {
        match content {
            Rendered::Action { fields, .. } => {
                for (k, v) in expected {
                    match fields.get(k) {
                        Some(got) if got == v => {}
                        Some(got) => failures.push(format!(
                            "route `{}` field `{k}`:\n{}",
                            want.route,
                            diff(v, got)
                        )),
                        None => failures.push(format!("route `{}` has no field `{k}`", want.route)),
                    }
                }
            }
            _ => failures.push(format!(
                "route `{}` is not an action with fields",
                want.route
            )),
        }
    }
}

fn describe(outcomes: &[Outcome]) -> String {
    if outcomes.is_empty() {
        return "no delivery at all".into();
    }
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rendered { route, sink, .. } => format!("{route} → {sink}"),
            Outcome::Failed { route, sink, .. } => format!("{route} → {sink} (failed)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line diff: `-` expected, `+` got.
pub fn diff(expected: &str, got: &str) -> String {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(g.len()) {
        match (e.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => out.push_str(&format!("    {a}\n")),
            (a, b) => {
                if let Some(a) = a {
                    out.push_str(&format!("  - {a}\n"));
                }
                if let Some(b) = b {
                    out.push_str(&format!("  + {b}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload ingress would refuse fails its test instead of passing
    /// against an empty payload.
    #[test]
    fn a_payload_that_is_not_json_fails_the_test() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n[sinks.audit]\nkind = \"log\"\n[[routes]]\nname = \"r\"\nto = [\"audit\"]\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap()
        .config;
        let tests = dir.path().join("t.toml");
        std::fs::write(
            &tests,
            "[[tests]]\nname = \"broken\"\nsource = \"github\"\nevent = \"push\"\npayload = '{\"commits\": ['\n[tests.reject]\nroutes = [\"other\"]\n",
        )
        .unwrap();
        let e = run(&config, &tests).unwrap_err();
        assert!(e.contains("test `broken`: the payload is not JSON"), "{e}");
    }

    #[test]
    fn diff_marks_what_changed() {
        assert_eq!(diff("a\nb", "a\nc"), "    a\n  - b\n  + c\n");
    }
}

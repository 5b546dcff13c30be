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
use toml::Spanned;

use crate::config::{line_col, Config};
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
    source: Spanned<String>,
    /// The event type as the provider reports it (`pull_request`,
    /// `jira:issue_updated`, …).
    event: String,
    payload: Option<Spanned<String>>,
    /// Relative to the test file.
    payload_file: Option<Spanned<PathBuf>>,
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
    route: Spanned<String>,
    sink: Spanned<String>,
    message: Option<String>,
    contains: Option<String>,
    fields: Option<BTreeMap<String, String>>,
    /// The rendered `order_key`; `""` for none (unordered).
    order_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reject {
    #[serde(default)]
    routes: Vec<Spanned<String>>,
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
    // Read positionally, a list of reject tables gives a message about
    // something else ("invalid type: map, expected a sequence").
    if let Some(n) = text.lines().position(|l| {
        let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        l.starts_with("[[tests.reject]]")
    }) {
        return Err(format!(
            "{}:{}:1: `[[tests.reject]]` makes a list, and a test has one reject table: write `[tests.reject]` with every route in its `routes = [...]`",
            path.display(),
            n + 1
        ));
    }
    let file: TestFile = toml::from_str(&text).map_err(|e| {
        let place = crate::config::place_of(&text, &e);
        let message = crate::config::type_hint(&e.message().trim().replace('\n', " "));
        format!("{}{place}: {message}", path.display())
    })?;
    let problems = names_problems(config, &file, &text);
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .into_iter()
            .map(|(line, col, msg)| format!("{}:{line}:{col}: {msg}", path.display()))
            .collect();
        return Err(lines.join("\n"));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    // A test that cannot run says so at its payload (its `source` when it
    // has none); the others are still tried, so one run names every test
    // that cannot run.
    let mut reports = Vec::new();
    let mut cannot = Vec::new();
    for t in &file.tests {
        match run_one(config, base, t) {
            Ok(r) => reports.push(r),
            Err(e) => {
                let at = match (&t.payload, &t.payload_file) {
                    (Some(p), _) => p.span(),
                    (None, Some(f)) => f.span(),
                    (None, None) => t.source.span(),
                };
                let (line, col) = line_col(&text, at.start);
                cannot.push(format!("{}:{line}:{col}: {e}", path.display()));
            }
        }
    }
    match cannot.is_empty() {
        true => Ok(reports),
        false => Err(cannot.join("\n")),
    }
}

/// Sources, routes and sinks the tests name that the config lacks: a typo
/// there would make a test that can never fail (a `reject` of a route that
/// does not exist) or always fail for the wrong reason. Sorted by line.
fn names_problems(config: &Config, file: &TestFile, text: &str) -> Vec<(usize, usize, String)> {
    let mut problems = Vec::new();
    let mut say = |at: &Spanned<String>, message: String| {
        let (line, col) = line_col(text, at.span().start);
        problems.push((line, col, message));
    };
    let no_such = crate::suggest::not_in_config;
    let routes: Vec<&str> = config.routes.names().collect();
    for t in &file.tests {
        let test = &t.name;
        if !config.sources.contains_key(t.source.get_ref()) {
            let names = config.sources.keys().map(String::as_str).collect();
            say(
                &t.source,
                format!(
                    "test `{test}`: {}",
                    no_such("source", t.source.get_ref(), names)
                ),
            );
        }
        for want in &t.expect {
            let route = want.route.get_ref();
            let sink = want.sink.get_ref();
            match config.routes.targets(route) {
                None => say(
                    &want.route,
                    format!("test `{test}`: {}", no_such("route", route, routes.clone())),
                ),
                Some(to) if !to.contains(sink) => {
                    let message = if config.sinks.contains_key(sink) {
                        format!(
                            "route `{route}` does not send to sink `{sink}` (it sends to {})",
                            to.join(", ")
                        )
                    } else {
                        let names = config.sinks.keys().map(String::as_str).collect();
                        no_such("sink", sink, names)
                    };
                    say(&want.sink, format!("test `{test}`: {message}"));
                }
                Some(_) => {}
            }
        }
        for route in &t.reject.routes {
            if config.routes.targets(route.get_ref()).is_none() {
                say(
                    route,
                    format!(
                        "test `{test}`: [tests.reject] {}",
                        no_such("route", route.get_ref(), routes.clone())
                    ),
                );
            }
        }
    }
    problems.sort();
    problems
}

fn run_one(config: &Config, base: &Path, t: &TestCase) -> Result<Report, String> {
    let Some(source) = config.sources.get(t.source.get_ref()) else {
        return Err(format!(
            "test `{}`: no source `{}` in the config",
            t.name,
            t.source.get_ref()
        ));
    };
    let body = match (&t.payload, &t.payload_file) {
        (Some(p), None) => p.get_ref().clone().into_bytes(),
        (None, Some(f)) => std::fs::read(base.join(f.get_ref()))
            .map_err(|e| format!("test `{}`: {}: {e}", t.name, f.get_ref().display()))?,
        _ => {
            return Err(format!(
                "test `{}`: give one of `payload` or `payload_file`",
                t.name
            ))
        }
    };
    let event = EventRecord {
        source: t.source.get_ref().clone(),
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
    let outcomes = config.routes.evaluate_event(&event);
    let mut failures = Vec::new();
    for want in &t.expect {
        let found = outcomes.iter().find(|o| match o {
            Outcome::Rendered { route, sink, .. } | Outcome::Failed { route, sink, .. } => {
                route == want.route.get_ref() && sink == want.sink.get_ref()
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
            Some(Outcome::Rendered {
                content, order_key, ..
            }) => {
                check_content(want, content, &mut failures);
                let got = order_key.as_deref().unwrap_or("");
                if let Some(expected) = want.order_key.as_deref().filter(|e| *e != got) {
                    failures.push(format!(
                        "route `{}` to `{}`: order_key is `{got}`, expected `{expected}`",
                        want.route, want.sink
                    ));
                }
            }
        }
    }
    for route in &t.reject.routes {
        let route = route.get_ref();
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
            "[[tests]]\nname = \"broken\"\nsource = \"github\"\nevent = \"push\"\npayload = '{\"commits\": ['\n[tests.reject]\nroutes = [\"r\"]\n[[tests]]\nname = \"fine\"\nsource = \"github\"\nevent = \"push\"\npayload = '{}'\n[[tests]]\nname = \"also\"\nsource = \"github\"\nevent = \"push\"\npayload = 'x'\n",
        )
        .unwrap();
        // Each at its test's place, every one in one run.
        let e = run(&config, &tests).unwrap_err();
        let at = tests.display();
        assert_eq!(
            e,
            format!(
                "{at}:5:11: test `broken`: the payload is not JSON (hookgate would answer 400 to it)\n\
                 {at}:17:11: test `also`: the payload is not JSON (hookgate would answer 400 to it)"
            )
        );
    }

    /// Issue #8 item 11: a misspelt route in `reject` passed silently (it
    /// never fires); misspelt routes, sinks and sources fail, all at once.
    #[test]
    fn names_the_config_lacks_fail_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n[sinks.audit]\nkind = \"log\"\n[sinks.other]\nkind = \"log\"\n[[routes]]\nname = \"merged\"\nto = [\"audit\"]\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap()
        .config;
        let tests = dir.path().join("t.toml");
        std::fs::write(
            &tests,
            r#"[[tests]]
name = "one"
source = "githib"
event = "push"
payload = '{}'
[[tests.expect]]
route = "merge"
sink = "audit"
[[tests.expect]]
route = "merged"
sink = "audt"
[[tests.expect]]
route = "merged"
sink = "other"
[tests.reject]
routes = ["mergd"]
"#,
        )
        .unwrap();
        let e = run(&config, &tests).unwrap_err();
        let at =
            |line: usize, col: usize| format!("{}:{line}:{col}: test `one`: ", tests.display());
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            vec![
                format!(
                    "{}no source `githib` in the config: did you mean `github`?",
                    at(3, 10)
                ),
                format!(
                    "{}no route `merge` in the config: did you mean `merged`?",
                    at(7, 9)
                ),
                format!(
                    "{}no sink `audt` in the config: did you mean `audit`?",
                    at(11, 8)
                ),
                format!(
                    "{}route `merged` does not send to sink `other` (it sends to audit)",
                    at(14, 8)
                ),
                format!(
                    "{}[tests.reject] no route `mergd` in the config: did you mean `merged`?",
                    at(16, 11)
                ),
            ]
        );
    }

    /// A test can pin a route's rendered `order_key` (`""` for none).
    #[test]
    fn order_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n[sinks.audit]\nkind = \"log\"\n[[routes]]\nname = \"r\"\nto = [\"audit\"]\norder_key = \"{{ payload.key }}\"\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap()
        .config;
        let tests = dir.path().join("t.toml");
        let case = |payload: &str, want: &str| {
            format!("[[tests]]\nname = \"k\"\nsource = \"github\"\nevent = \"push\"\npayload = '{payload}'\n[[tests.expect]]\nroute = \"r\"\nsink = \"audit\"\norder_key = \"{want}\"\n")
        };
        std::fs::write(&tests, case(r#"{"key": "A"}"#, "A") + &case("{}", "")).unwrap();
        let reports = run(&config, &tests).unwrap();
        assert!(reports.iter().all(|r| r.failures.is_empty()), "{reports:?}");
        std::fs::write(&tests, case(r#"{"key": "B"}"#, "A")).unwrap();
        let reports = run(&config, &tests).unwrap();
        assert_eq!(
            reports[0].failures,
            ["route `r` to `audit`: order_key is `B`, expected `A`"]
        );
    }

    #[test]
    fn diff_marks_what_changed() {
        assert_eq!(diff("a\nb", "a\nc"), "    a\n  - b\n  + c\n");
    }
}

use super::*;

/// Secrets come from files, so tests never touch the process environment.
fn secret_file(value: &str) -> String {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("secret");
    std::fs::write(&path, value).unwrap();
    path.display().to_string()
}

/// Every problem of a config that must fail, as `key: message`.
fn problem_lines(text: &str) -> Vec<String> {
    parse(text, &Resolver::default())
        .unwrap_err()
        .iter()
        .map(|p| format!("{}: {}", p.key, p.message))
        .collect()
}

#[test]
fn valid_config_builds_every_provider() {
    let s = secret_file("topsecret");
    let wh = secret_file("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1/32", "::1"]

[sources.gh]
provider = "github"
secret = {{ file = "{s}" }}
allow_ips = ["192.30.252.0/22", "2a0a:a440::/29"]
legacy_sha1 = true
rate_limit = "100/s"

[sources.gl]
provider = "gitlab"
secret = {{ file = "{s}" }}
signing_secret = {{ file = "{wh}" }}

[sources.j]
provider = "jira"
secret = {{ file = "{s}" }}

[sources.f]
provider = "figma"
secret = {{ file = "{s}" }}

[sources.z]
provider = "zendesk"
secret = {{ file = "{s}" }}
max_skew = "2m"

[sources.i]
provider = "intercom"
secret = {{ file = "{s}" }}

[sources.sw]
provider = "standard"
secret = {{ file = "{wh}" }}

[sources.h]
provider = "hmac"
secret = {{ file = "{s}" }}
header = "X-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "v1="
timestamp_header = "X-Timestamp"
id_from = "header:X-Id"
"#
    );
    let loaded = parse(&text, &Resolver::default()).unwrap();
    assert!(
        loaded.secret_problems.is_empty(),
        "{:?}",
        loaded.secret_problems
    );
    let c = loaded.config;
    assert_eq!(c.sources.len(), 8);
    assert_eq!(c.server.trusted_proxies.len(), 2);
    let gh = &c.sources["gh"];
    assert_eq!(
        gh.rate_limit,
        Some(Rate {
            burst: 100,
            per_second: 100.0
        })
    );
    assert_eq!(gh.dedupe_window, Duration::from_secs(7 * 86400));
    assert!(matches!(gh.proof, Proof::Ready(_)));
    assert!(c
        .sources
        .values()
        .all(|s| matches!(s.proof, Proof::Ready(_))));
}

#[test]
fn three_mistakes_are_all_reported_with_lines() {
    let text = r#"[server]
listen = "127.0.0.1:8080"
max_body_byte = 10

[sources.gh]
provider = "githb"
secret = { env = "X" }

[sources.z]
provider = "zendesk"
secret = { env = "Y" }
allow_ips = ["10.0.0.0/8", "10.0.0/8"]
"#;
    let problems = parse(text, &Resolver::default()).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert_eq!(
        (problems[0].line, problems[0].key.as_str()),
        (3, "server.max_body_byte")
    );
    assert!(
        problems[0].message.contains("max_body_byte"),
        "{}",
        problems[0].message
    );
    assert_eq!(
        (problems[1].line, problems[1].key.as_str()),
        (6, "sources.gh.provider")
    );
    assert_eq!(
        problems[1].message,
        "unknown provider `githb`: did you mean `github`?"
    );
    assert_eq!((problems[2].line, problems[2].column), (12, 28));
    assert!(problems[2].message.contains("10.0.0/8"));
}

#[test]
fn toml_syntax_error_has_a_line() {
    let problems = parse("[server\nlisten = 1", &Resolver::default()).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, 1);
}

#[test]
fn missing_secret_closes_the_source_and_is_reported() {
    let text = r#"
[sources.gh]
provider = "github"
secret = { env = "HOOKGATE_TEST_NEVER_SET_1" }
"#;
    let loaded = parse(text, &Resolver::default()).unwrap();
    assert_eq!(loaded.secret_problems.len(), 1);
    assert_eq!(loaded.secret_problems[0].line, 4);
    assert!(loaded.secret_problems[0]
        .message
        .contains("HOOKGATE_TEST_NEVER_SET_1 is not set"));
    assert!(matches!(
        loaded.config.sources["gh"].proof,
        Proof::Closed(_)
    ));
}

#[test]
fn secret_needs_exactly_one_origin() {
    let text = r#"
[sources.gh]
provider = "github"
secret = { env = "A", file = "/b" }
"#;
    let problems = parse(text, &Resolver::default()).unwrap_err();
    assert!(
        problems[0].message.contains("exactly one of"),
        "{problems:?}"
    );
}

#[test]
fn keys_of_other_providers_are_refused() {
    let s = secret_file("x");
    let text = format!(
        r#"
[sources.gh]
provider = "github"
secret = {{ file = "{s}" }}
max_skew = "5m"
header = "X-Sig"
"#
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .all(|p| p.message.contains("does not apply to provider `github`")));
}

#[test]
fn bad_values_say_how_to_write_them() {
    let s = secret_file("x");
    let text = format!(
        r#"
[server]
listen = "localhost"
admin_listen = "0.0.0.0:9090"
header_timeout = "soon"

[sources."bad/name"]
provider = "hmac"
secret = {{ file = "{s}" }}
rate_limit = "fast"
event_from = "query:x"
"#
    );
    let all = problem_lines(&text);
    let has = |needle: &str| all.iter().any(|m| m.contains(needle));
    assert!(
        has("server.listen: `localhost` is not an address"),
        "{all:#?}"
    );
    assert!(has("server.admin_listen"), "{all:#?}");
    assert!(
        has("server.header_timeout: `soon` is not a duration"),
        "{all:#?}"
    );
    assert!(has("cannot be a URL path segment"), "{all:#?}");
    assert!(has("rate_limit: `fast` is not a rate"), "{all:#?}");
    assert!(has("needs `header`"), "{all:#?}");
    assert!(has("event_from: `query:x` must start with"), "{all:#?}");
}

/// Values that parse but would crash or misbehave later are refused with
/// their range.
#[test]
fn out_of_range_values_and_duplicate_sinks_are_refused() {
    let s = secret_file("x");
    let text = format!(
        r#"
[server]
max_connections = 4611686018427387904
request_timeout = "0s"

[sources.gh]
provider = "github"
secret = {{ file = "{s}" }}

[sinks.audit]
kind = "log"
concurrency = 4611686018427387904
timeout = "18446744073709551615s"
retry = ["100000d"]

[sinks.ok]
kind = "log"

[[routes]]
name = "twice"
to = ["ok", "ok"]

[[routes]]
name = "a.b"
to = ["ok"]
"#
    );
    let all = problem_lines(&text);
    let has = |needle: &str| all.iter().any(|m| m.contains(needle));
    assert!(
        has("server.max_connections: must be a number from 1 to 1000000"),
        "{all:#?}"
    );
    assert!(
        has("server.request_timeout: must be longer than zero"),
        "{all:#?}"
    );
    assert!(
        has("sinks.audit.concurrency: must be a number from 1 to 10000"),
        "{all:#?}"
    );
    assert!(
        has("sinks.audit.timeout: `18446744073709551615s` is too long"),
        "{all:#?}"
    );
    assert!(has("sinks.audit.retry: `100000d` is too long"), "{all:#?}");
    assert!(has("routes[0].to: sink `ok` is named twice"), "{all:#?}");
    assert!(has("routes[1].name: `a.b`: a route name"), "{all:#?}");
}

/// Dev mode makes up signing secrets, never a sink's URL: an http sink
/// whose URL is not set stays disabled instead of getting a random "URL".
#[test]
fn dev_mode_does_not_invent_an_http_sink_url() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = Resolver::default()
        .with_dev(dir.path().join("dev-secrets.toml"), true)
        .unwrap();
    let text = r#"
[sources.gh]
provider = "github"
secret = { env = "HOOKGATE_TEST_NEVER_SET_GH" }

[sinks.archive]
kind = "http"
url = { env = "HOOKGATE_TEST_NEVER_SET_URL" }

[[routes]]
name = "all"
to = ["archive"]
"#;
    let loaded = parse(text, &resolver).unwrap_or_else(|p| panic!("{p:#?}"));
    assert!(
        loaded
            .secret_problems
            .iter()
            .any(|p| p.key == "sinks.archive.url"),
        "{:?}",
        loaded.secret_problems
    );
    assert!(matches!(loaded.config.sources["gh"].proof, Proof::Ready(_)));
}

/// A network with host bits set would widen silently: refused. `/0` and
/// an empty allowlist are warned about.
#[test]
fn risky_networks_are_refused_or_warned_about() {
    let s = secret_file("x");
    let text = format!(
        "[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n[sources.gh]\nprovider = \"github\"\nsecret = {{ file = \"{s}\" }}\nallow_ips = [\"10.1.2.3/8\"]\n[sources.none]\nprovider = \"github\"\nsecret = {{ file = \"{s}\" }}\nallow_ips = []\n"
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "sources.gh.allow_ips"
            && p.message.contains("`10.0.0.0/8`")
            && p.message.contains("`10.1.2.3/32`")),
        "{problems:?}"
    );
    let text = text.replace("10.1.2.3/8", "10.0.0.0/8");
    let loaded = parse(&text, &Resolver::default()).unwrap_or_else(|p| panic!("{p:?}"));
    let warned = |key: &str| loaded.warnings.iter().any(|w| w.key == key);
    assert!(warned("server.trusted_proxies"), "{:?}", loaded.warnings);
    assert!(warned("sources.none.allow_ips"), "{:?}", loaded.warnings);
}

/// A log sink's file in a directory that does not exist is a config
/// error (check exits 2), not a daemon that fails to start.
#[test]
fn a_log_sink_in_a_missing_directory_is_refused() {
    let s = secret_file("x");
    let text = format!(
        "[sources.gh]\nprovider = \"github\"\nsecret = {{ file = \"{s}\" }}\n[sinks.audit]\nkind = \"log\"\npath = \"/nonexistent-hookgate-dir/x.jsonl\"\n"
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.key == "sinks.audit.path" && p.message.contains("does not exist")),
        "{problems:?}"
    );
}

/// A secret typed into the file is refused without being repeated.
#[test]
fn an_inline_secret_is_refused_and_never_echoed() {
    for text in [
        "[server]\nadmin_token = \"hunter2\"\n[sources.gh]\nprovider = \"github\"\nsecret = { env = \"X\" }\n",
        "[sources.gh]\nprovider = \"github\"\nsecret = \"hunter2\"\n",
        "[sources.gh]\nprovider = \"github\"\nsecret = 123456789\n",
    ] {
        let problems = parse(text, &Resolver::default()).unwrap_err();
        let all = format!("{problems:?}");
        assert!(all.contains("never written in the file"), "{all}");
        assert!(!all.contains("hunter2") && !all.contains("123456789"), "{all}");
    }
}

#[test]
fn unknown_section_is_an_error() {
    let problems = parse("[sink.x]\nkind = \"log\"\n", &Resolver::default()).unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "sink" && p.line == 1),
        "{problems:?}"
    );
}

#[test]
fn rates_parse() {
    assert_eq!(
        parse_rate("600/m"),
        Some(Rate {
            burst: 600,
            per_second: 10.0
        })
    );
    assert_eq!(parse_rate("0/s"), None);
    assert_eq!(parse_rate("5/d"), None);
}

const GITHUB: &str = r#"
[sources.github]
provider = "github"
secret = { env = "HOOKGATE_TEST_UNSET_GH" }
"#;

#[test]
fn sinks_and_routes_build() {
    let text = format!(
        r#"{GITHUB}
[sinks.audit]
kind = "log"

[sinks.hook]
kind = "http"
url = "https://example.com/in"
method = "put"
headers = {{ "X-Team" = "product" }}
concurrency = 2
rate_limit = "1/s"
retry = ["1s", "1m"]
timeout = "5s"

[[routes]]
name = "everything"
to = ["audit"]

[[routes]]
name = "merged"
source = ["github"]
event = "pull_request"
when = "payload.action == 'closed'"
to = ["hook", "audit"]
message = "{{{{ payload.pull_request.title }}}}"
"#
    );
    let c = parse(&text, &Resolver::default()).unwrap().config;
    assert_eq!(c.routes.len(), 2);
    let hook = &c.sinks["hook"];
    assert_eq!(hook.concurrency, 2);
    assert_eq!(
        hook.schedule,
        vec![Duration::from_secs(1), Duration::from_secs(60)]
    );
    assert!(
        matches!(&hook.kind, SinkKind::Http { method, headers, .. } if method == http::Method::PUT && headers.len() == 1)
    );
    assert_eq!(c.sinks["audit"].schedule.len(), 10, "the default schedule");
}

#[test]
fn route_mistakes_are_all_reported_with_lines() {
    let text = format!(
        r#"{GITHUB}
[sinks.audit]
kind = "smtp"

[sinks.ok]
kind = "log"

[[routes]]
name = "a"
source = "gitlab"
to = ["nowhere"]

[[routes]]
name = "a"
to = ["ok"]
when = "payload.action =="

[[routes]]
name = "b"
to = ["ok"]
message = """
line one
{{{{ payload.x
"""
"#
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    let all: Vec<String> = problems
        .iter()
        .map(|p| format!("{}:{}: {}", p.line, p.key, p.message))
        .collect();
    let has = |needle: &str| all.iter().any(|m| m.contains(needle));
    assert!(
        has("7:sinks.audit.kind: unknown sink kind `smtp`"),
        "{all:#?}"
    );
    assert!(has("14:routes[0].source: no source `gitlab`"), "{all:#?}");
    assert!(has("15:routes[0].to: no sink `nowhere`"), "{all:#?}");
    assert!(
        has("18:routes[1].name: a route named `a` exists already"),
        "{all:#?}"
    );
}

#[test]
fn template_errors_point_into_the_template() {
    let text = format!(
        r#"{GITHUB}
[sinks.ok]
kind = "log"

[[routes]]
name = "a"
to = ["ok"]
when = "payload.action =="

[[routes]]
name = "b"
to = ["ok"]
message = """
line one
{{{{ payload.x
"""

[[routes]]
name = "c"
to = ["ok"]
order_key = "{{{{ payload.issue.key | no_such_filter }}}}"
"#
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    let all: Vec<String> = problems
        .iter()
        .map(|p| format!("{}:{}", p.line, p.key))
        .collect();
    assert_eq!(
        all,
        // The unclosed `{{` runs to the end of the template: the `"""` line.
        vec![
            "12:routes.a.when",
            "19:routes.b.message",
            "25:routes.c.order_key"
        ],
        "{problems:#?}"
    );
}

/// An error in a template file names the file and its line, and points at
/// the `template =` line of routes.toml (not past the end of it).
#[test]
fn template_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.j2"), "one\ntwo\n{{ payload.x\n").unwrap();
    std::fs::write(dir.path().join("bad.json.j2"), "{{ payload.x\n").unwrap();
    let text = format!(
        r#"{GITHUB}
[sinks.ok]
kind = "log"

[[routes]]
name = "c"
to = ["ok"]
template = "bad.j2"

[[routes]]
name = "d"
to = ["ok"]
template = "bad.json.j2"
"#
    );
    let problems = parse_in(&text, dir.path(), &Resolver::default()).unwrap_err();
    let all: Vec<String> = problems
        .iter()
        .map(|p| format!("{}:{}: {}", p.line, p.key, p.message))
        .collect();
    assert!(
        all.iter()
            .any(|m| m.starts_with("12:routes.c.template: bad.j2:3:")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|m| m.starts_with("17:routes.d.template: bad.json.j2:1:")),
        "{all:#?}"
    );
}

#[test]
fn chat_sinks_warn_about_plain_and_retired_urls_and_actions_need_prodmatic() {
    let text = format!(
        r#"{GITHUB}
[sinks.teams]
kind = "teams"
url = "https://acme.webhook.office.com/webhookb2/x"

[sinks.pm]
kind = "prodmatic"
base_url = "https://api.prodmatic.test/v1"
token = {{ env = "HOOKGATE_TEST_UNSET_PM" }}
organization = "org123"
product = "prod456"

[[routes]]
name = "to-teams"
to = ["teams"]

[[routes]]
name = "features"
to = ["pm"]
action = "update_feature"
fields = {{ id = "{{{{ payload.x }}}}", status = "COMPLETED" }}
"#
    );
    let loaded = parse(&text, &Resolver::default()).unwrap();
    let warnings: Vec<&str> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("credential written in the file")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("retired Office 365 connector")),
        "{warnings:?}"
    );
    assert!(loaded
        .secret_problems
        .iter()
        .any(|p| p.key == "sinks.pm.token"));

    let wrong = text.replace("to = [\"pm\"]", "to = [\"teams\"]");
    let problems = parse(&wrong, &Resolver::default()).unwrap_err();
    assert!(
        problems.iter().any(|p| p
            .message
            .contains("an `action` goes to ProdMatic sinks only")),
        "{problems:?}"
    );
    let missing_action = text.replace("to = [\"teams\"]", "to = [\"pm\"]");
    let problems = parse(&missing_action, &Resolver::default()).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("needs an `action`")),
        "{problems:?}"
    );
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let s = secret_file("t0ken");
    let base = GITHUB;
    let open = format!("[server]\nadmin_listen = \"0.0.0.0:9090\"\n{base}");
    let problems = parse(&open, &Resolver::default()).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("needs `admin_token")),
        "{problems:?}"
    );
    let guarded = format!(
        "[server]\nadmin_listen = \"0.0.0.0:9090\"\nadmin_token = {{ file = \"{s}\" }}\n{base}"
    );
    let c = parse(&guarded, &Resolver::default()).unwrap().config;
    assert!(matches!(c.server.admin_token, Some(Ok(_))));
}

#[test]
fn tls_files_are_checked_when_the_config_loads() {
    let text = format!("[server]\ntls = {{ cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }}\n{GITHUB}");
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.key == "server.tls" && p.message.contains("/nonexistent/cert.pem")),
        "{problems:?}"
    );
}

/// A message written as JSON but not in a `*.json` template is sent as
/// text now: `check` says so, and how to send it as structure.
#[test]
fn json_looking_text_messages_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let card =
        r#"{"type": "AdaptiveCard", "body": [{"type": "TextBlock", "text": {{ payload.x }}}]}"#;
    std::fs::write(dir.path().join("card.j2"), card).unwrap();
    std::fs::write(dir.path().join("card.json"), card).unwrap();
    let text = format!(
        r#"{GITHUB}
[sinks.teams]
kind = "teams"
url = {{ env = "HOOKGATE_TEST_UNSET_TEAMS" }}

[[routes]]
name = "inline"
to = ["teams"]
message = '{{"type": "AdaptiveCard", "body": []}}'

[[routes]]
name = "text-file"
to = ["teams"]
template = "card.j2"

[[routes]]
name = "json-file"
to = ["teams"]
template = "card.json"

[[routes]]
name = "plain"
to = ["teams"]
message = "{{{{ payload.x }}}} merged"
"#
    );
    let loaded = parse_in(&text, dir.path(), &Resolver::default()).unwrap();
    let warned: Vec<(&str, &str)> = loaded
        .warnings
        .iter()
        .filter(|w| w.message.contains("looks like a JSON message"))
        .map(|w| (w.key.as_str(), w.message.as_str()))
        .collect();
    assert_eq!(warned.len(), 2, "{warned:#?}");
    assert_eq!(warned[0].0, "routes[0].message");
    assert!(warned[0].1.contains("named `*.json`"), "{warned:?}");
    assert_eq!(warned[1].0, "routes[1].template");
    assert!(
        warned[1].1.starts_with("card.j2 is sent as text"),
        "{warned:?}"
    );
}

#[test]
fn admin_hosts_are_names_as_clients_send_them() {
    let text = format!(
        "[server]\nadmin_hosts = [\"HookGate.internal\", \"admin.example:9443\", \"http://x.example\", \"x.example/api\", \"*\"]\n{GITHUB}"
    );
    let problems = parse(&text, &Resolver::default()).unwrap_err();
    let bad: Vec<&str> = problems
        .iter()
        .filter(|p| p.message.contains("is not a host name"))
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(bad.len(), 3, "{problems:#?}");
    let text = format!(
        "[server]\nadmin_hosts = [\"HookGate.internal\", \"admin.example:9443\"]\n{GITHUB}"
    );
    let c = parse(&text, &Resolver::default()).unwrap().config;
    assert_eq!(
        c.server.admin_hosts,
        ["hookgate.internal", "admin.example:9443"]
    );
}

#[test]
fn a_secret_list_stays_open_while_one_entry_is_set() {
    let s = secret_file("topsecret");
    let text = format!(
        r#"
[sources.gh]
provider = "github"
secret = [{{ env = "HOOKGATE_TEST_NEVER_SET_2" }}, {{ file = "{s}" }}]
"#
    );
    let loaded = parse(&text, &Resolver::default()).unwrap();
    // A rotation in progress: a warning, not a secret problem, so
    // `check --strict` and a reload accept it.
    assert!(
        loaded.secret_problems.is_empty(),
        "{:?}",
        loaded.secret_problems
    );
    let w = &loaded.warnings[0];
    assert_eq!((w.key.as_str(), w.line), ("sources.gh.secret[0]", 4));
    assert!(w.message.contains("HOOKGATE_TEST_NEVER_SET_2 is not set"));
    assert!(w.message.contains("other listed secret"));
    assert!(matches!(loaded.config.sources["gh"].proof, Proof::Ready(_)));
}

#[test]
fn a_secret_list_with_nothing_set_closes_the_source() {
    let text = r#"
[sources.gh]
provider = "github"
secret = [{ env = "HOOKGATE_TEST_NEVER_SET_3" }, { env = "HOOKGATE_TEST_NEVER_SET_4" }]
"#;
    let loaded = parse(text, &Resolver::default()).unwrap();
    let keys: Vec<&str> = loaded
        .secret_problems
        .iter()
        .map(|p| p.key.as_str())
        .collect();
    assert_eq!(keys, ["sources.gh.secret[0]", "sources.gh.secret[1]"]);
    assert!(matches!(
        loaded.config.sources["gh"].proof,
        Proof::Closed(_)
    ));
}

#[test]
fn a_secret_list_is_checked_entry_by_entry() {
    let lines = problem_lines(
        r#"
[sources.gh]
provider = "github"
secret = [{ env = "A" }, { env = "A", file = "/b" }]

[sources.none]
provider = "github"
secret = []
"#,
    );
    assert!(
        lines[0].starts_with("sources.gh.secret[1]: a secret is exactly one of"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("sources.none.secret: an empty list verifies nothing"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let inline = problem_lines("[sources.gh]\nprovider = \"github\"\nsecret = [\"hunter2\"]\n");
    assert!(
        inline[0].contains("never written in the file"),
        "{inline:?}"
    );
    assert!(!inline[0].contains("hunter2"), "{inline:?}");
}

#[test]
fn a_dedupe_window_shorter_than_a_replay_window_is_refused() {
    let s = secret_file("topsecret");
    let lines = problem_lines(&format!(
        r#"
[sources.z]
provider = "zendesk"
secret = {{ file = "{s}" }}
max_skew = "5m"
dedupe_window = "9m"

[sources.gh]
provider = "github"
secret = {{ file = "{s}" }}
dedupe_window = "1m"

[sources.gl]
provider = "gitlab"
secret = {{ file = "{s}" }}
dedupe_window = "1m"
"#
    ));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(
            "sources.z.dedupe_window: `dedupe_window` (9m) is shorter than twice `max_skew` (5m)"
        ),
        "{lines:?}"
    );
    assert!(lines[0].ends_with("at least 10m"), "{lines:?}");
}

/// Issue #8 item 11: one run reports everything, in file order: every
/// `[server]` type error, an unknown key beside an unknown sink beside a
/// template error, misspelt filters and tests, and no "no source" for a
/// source that exists with a mistake of its own.
#[test]
fn every_mistake_in_one_run_sorted_by_line_without_cascades() {
    let text = r#"[server]
listen = 8080
admin_listen = true
retention = "forever"

[sources.github]
provider = "github"
secret = { env = "HOOKGATE_TEST_UNSET" }
allow_ips = ["10.0.0.1/8"]
colour = "red"

[sources.gitlab]
provder = "gitlab"
secret = { env = "HOOKGATE_TEST_UNSET" }

[sinks.stdout]
kind = "log"

[sinks.chat]
kind = "slak"
url = { env = "SLACK_URL" }

[sinks.pm]
kind = "prodmatic"
base_url = "https://api.prodmatic.com/v1"
token = { env = "HOOKGATE_TEST_UNSET" }
organization = "o"
product = "p"

[[routes]]
name = "a"
source = "github"
to = ["stdot", "chat"]
message = "{{ payload.x | regex_captur('a') }}"

[[routes]]
name = "b"
source = ["gitlab", "githb"]
to = ["stdout"]
when = "payload.x is evn"
each = "payload.items | selectatr('x')"
tags = 1
message = "{{ payload.x | upper }"

[[routes]]
name = "c"
to = ["pm"]
action = "create_idea"
fields = { title = "{{ payload.t | truncat(10) }}" }

[sinkz.extra]
kind = "log"
"#;
    assert_eq!(
        problem_lines(text),
        vec![
            "server.listen: 8080 is a number: write text in quotes",
            "server.admin_listen: true is a boolean: write text in quotes",
            "server.retention: `forever` is not a duration: write it like \"30s\", \"5m\" or \"7d\"",
            "sources.github.allow_ips: `10.0.0.1/8` has bits set past its /8: write the network, `10.0.0.0/8`, or the host, `10.0.0.1/32`",
            "sources.github.colour: unknown key `colour`: the keys here are provider, secret, signing_secret, allow_ips, max_skew, dedupe_window, rate_limit, legacy_sha1, event_from, id_from, header, algorithm, encoding, prefix, timestamp_header",
            "sources.gitlab.provder: unknown key `provder`: did you mean `provider`?",
            "sinks.chat.kind: unknown sink kind `slak`: did you mean `slack`?",
            "routes[0].to: no sink `stdot`: did you mean `stdout`?",
            "routes.a.message: unknown filter `regex_captur`: did you mean `regex_capture`?",
            "routes[1].source: no source `githb`: did you mean `github`?",
            "routes.b.when: unknown test `evn`: did you mean `even`?",
            "routes.b.each: unknown filter `selectatr`: did you mean `selectattr`?",
            "routes[1].tags: unknown key `tags`: the keys here are name, source, event, when, each, to, message, template, action, fields, order_key",
            "routes.b.message: unexpected `}`, expected end of variable block",
            "routes.c.fields.title: unknown filter `truncat`: did you mean `truncate`?",
            "sinkz: unknown section `sinkz`: did you mean `sinks`?",
        ]
    );
}

#[test]
fn problems_carry_the_line_they_are_on() {
    let text = "[sinks.s]\nkind = \"log\"\n[[routes]]\nname = \"r\"\nto = [\"s\"]\nmessage = \"\"\"\nfirst\n{{ x | uper }}\n\"\"\"\n[server]\nlisten = 1\n";
    let problems = parse(text, &Resolver::default()).unwrap_err();
    let lines: Vec<(usize, &str)> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(lines, vec![(8, "routes.r.message"), (11, "server.listen")]);
}

/// Dead letters are kept 30 days unless `server.dead_letter_retention`
/// says, and a bad value is reported like any duration, with its line.
#[test]
fn dead_letter_retention_defaults_to_30_days_and_parses_like_a_duration() {
    let src = "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n";
    let loaded = parse(src, &Resolver::default()).unwrap();
    assert_eq!(
        loaded.config.server.dead_letter_retention,
        Duration::from_secs(30 * 86_400)
    );
    let text = format!("[server]\ndead_letter_retention = \"12h\"\n{src}");
    let loaded = parse(&text, &Resolver::default()).unwrap();
    assert_eq!(
        loaded.config.server.dead_letter_retention,
        Duration::from_secs(12 * 3600)
    );
    assert_eq!(
        loaded.config.server.retention,
        Duration::from_secs(7 * 86_400),
        "the events' retention is its own key"
    );
    for (value, message) in [
        (
            "\"a month\"",
            "server.dead_letter_retention: `a month` is not a duration: write it like \"30s\", \"5m\" or \"7d\"",
        ),
        ("\"0s\"", "server.dead_letter_retention: must be longer than zero"),
        (
            "\"4000d\"",
            "server.dead_letter_retention: `4000d` is too long: at most 3650 days",
        ),
        (
            "30",
            "server.dead_letter_retention: 30 is a number: write text in quotes",
        ),
    ] {
        let text = format!("[server]\nlisten = \"127.0.0.1:0\"\ndead_letter_retention = {value}\n{src}");
        let problems = parse(&text, &Resolver::default()).unwrap_err();
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        assert_eq!(lines, vec![message.to_owned()], "{value}");
        assert_eq!(problems[0].line, 3, "{value}: on its own line");
    }
}

#[test]
fn the_queue_section_picks_a_backend() {
    let src = "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n";
    let loaded = parse(src, &Resolver::default()).unwrap();
    assert!(matches!(loaded.config.queue, QueueConfig::Local));
    let url = secret_file("host=127.0.0.1 dbname=hookgate");
    let text = format!(
        "[queue]\nbackend = \"postgres\"\nurl = {{ file = \"{url}\" }}\npool_size = 4\n{src}"
    );
    match parse(&text, &Resolver::default()).unwrap().config.queue {
        QueueConfig::Postgres { url, pool_size } => {
            assert_eq!(url.unwrap().expose(), b"host=127.0.0.1 dbname=hookgate");
            assert_eq!(pool_size, 4);
        }
        other => panic!("{other:?}"),
    }
    // A missing secret is a secret problem (a warning for `check`), and
    // the daemon cannot start on it.
    let text = format!(
        "[queue]\nbackend = \"postgres\"\nurl = {{ env = \"HOOKGATE_TEST_UNSET_URL\" }}\n{src}"
    );
    let loaded = parse(&text, &Resolver::default()).unwrap();
    assert_eq!(loaded.secret_problems[0].key, "queue.url");
    assert!(matches!(
        loaded.config.queue,
        QueueConfig::Postgres { url: Err(_), .. }
    ));
}

#[test]
fn queue_mistakes_say_what_to_write() {
    let src = "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n";
    let lines = problem_lines(&format!("[queue]\nbackend = \"postgress\"\n{src}"));
    assert_eq!(
        lines,
        ["queue.backend: unknown backend `postgress`: did you mean `postgres`?"]
    );
    let lines = problem_lines(&format!("[queue]\nbackend = \"postgres\"\n{src}"));
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("queue.url: the postgres backend needs `url = "),
        "{lines:?}"
    );
    let lines = problem_lines(&format!(
        "[queue]\nurl = {{ env = \"X\" }}\npool_size = 0\n{src}"
    ));
    assert_eq!(
        lines,
        [
            "queue.url: only the postgres backend takes it: set `backend = \"postgres\"` or remove it",
            "queue.pool_size: only the postgres backend takes it: set `backend = \"postgres\"` or remove it",
        ]
    );
    let lines = problem_lines(&format!(
        "[queue]\nbackend = \"postgres\"\nurl = {{ env = \"X\" }}\npool_size = 0\n{src}"
    ));
    assert_eq!(lines, ["queue.pool_size: must be a number from 1 to 1024"]);
    let lines = problem_lines(&format!("[queue]\nbakend = \"local\"\n{src}"));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("did you mean `backend`"), "{lines:?}");
}

#[test]
fn a_queue_url_libpq_would_refuse_is_a_config_error() {
    let src = "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n";
    let url = secret_file("postgresql://hg:pw@db1:5432/hookgate?sslmod=require");
    let lines = problem_lines(&format!(
        "[queue]\nbackend = \"postgres\"\nurl = {{ file = \"{url}\" }}\n{src}"
    ));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("queue.url: unknown parameter `sslmod` (did you mean `sslmode`?)"),
        "{lines:?}"
    );
    assert!(
        !lines[0].contains("pw"),
        "the password is never echoed: {lines:?}"
    );
}

/// A value of the wrong type is said in the operator's words: what it
/// is, and what to write (not serde's "invalid type … expected i64").
#[test]
fn wrong_types_say_what_to_write() {
    let src = "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n";
    for (line, message) in [
        (
            "[server]\nmax_body_bytes = \"64k\"",
            "server.max_body_bytes: \"64k\" is text: write a whole number without quotes, like 65536",
        ),
        (
            "[server]\nmax_body_bytes = 1.5",
            "server.max_body_bytes: 1.5 is a number with a fraction: write a whole number without quotes, like 65536",
        ),
        (
            "[sources.gl]\nprovider = \"github\"\nsecret = { env = \"X\" }\nlegacy_sha1 = \"yes\"",
            "sources.gl.legacy_sha1: \"yes\" is text: write true or false, without quotes",
        ),
        (
            "[sources.gl]\nprovider = \"github\"\nsecret = { env = \"X\" }\nallow_ips = { a = 1 }",
            "sources.gl.allow_ips: this is a table: write a list in brackets, like [\"a\", \"b\"] (a list of tables is `[[name]]`, once per table)",
        ),
    ] {
        let text = format!("{src}{line}\n");
        let problems = parse(&text, &Resolver::default()).unwrap_err();
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.key, p.message))
            .collect();
        assert_eq!(lines, vec![message.to_owned()], "{line}");
    }
}

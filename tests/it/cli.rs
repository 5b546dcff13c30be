//! The real binary: `check`, and `serve --dev` + `send --dev` + `queue stats`
//! as the README's quick start uses them.

use std::path::Path;

use crate::support::*;

fn check(config: &Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn shipped_config_checks_clean() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml");
    let out = check(&shipped);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: 6 sources"), "{stdout}");
}

#[test]
fn check_reports_every_mistake_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[server]
listen = "127.0.0.1:8080"
trusted_proxies = ["10.0.0.0/33"]

[sources.github]
provider = "github"
secret = { env = "GITHUB_WEBHOOK_SECRET" }
dedupe_windw = "7d"

[sources.jira]
provider = "jira"
secret = { env = "JIRA_WEBHOOK_SECRET" }
max_skew = "5m"
"#,
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |line: u32| format!("{}:{line}:", config.display());
    assert!(
        stderr.contains(&at(3)) && stderr.contains("10.0.0.0/33"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&at(8)) && stderr.contains("dedupe_windw"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&at(13)) && stderr.contains("does not apply to provider `jira`"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn strict_check_fails_on_missing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_IT_UNSET_SECRET\" }\n",
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning:"));
    let strict = std::process::Command::new(binary())
        .args(["check", "--strict", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("HOOKGATE_IT_UNSET_SECRET is not set"));
}

/// `check` says what each missing secret would do; `--strict` fails on
/// all but a sink's (a sink is only disabled).
#[test]
fn check_tells_each_missing_secret_by_what_it_would_do() {
    let check = |strict: &[&str], config: &Path| {
        std::process::Command::new(binary())
            .arg("check")
            .args(strict)
            .arg("--config")
            .arg(config)
            .env("HOOKGATE_IT_SET_SECRET", "s3cret")
            .output()
            .unwrap()
    };
    let github =
        "[sources.gh]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_IT_SET_SECRET\" }\n";
    for (extra, code, says) in [
        (
            "[sinks.chat]\nkind = \"slack\"\nurl = { env = \"HOOKGATE_IT_UNSET_SLACK\" }\n",
            0,
            "1 of sinks (those would be disabled)",
        ),
        (
            "[server]\nadmin_token = { env = \"HOOKGATE_IT_UNSET_ADMIN\" }\n",
            2,
            "server.admin_token's (the admin API would answer 503)",
        ),
        (
            "[queue]\nbackend = \"postgres\"\nurl = { env = \"HOOKGATE_IT_UNSET_DB\" }\n",
            2,
            "queue.url's (the daemon would not start)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("routes.toml");
        std::fs::write(&config, format!("{extra}\n{github}")).unwrap();
        let out = check(&[], &config);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{extra}: {stdout}");
        assert!(stdout.contains(says), "{extra}: {stdout}");
        assert!(!stdout.contains("of sources"), "{extra}: {stdout}");
        let strict_out = check(&["--strict"], &config);
        let stderr = String::from_utf8_lossy(&strict_out.stderr);
        assert_eq!(strict_out.status.code(), Some(code), "{extra}: {stderr}");
        if code == 2 {
            assert!(stderr.contains(says), "{extra}: {stderr}");
        }
    }
}

#[tokio::test]
async fn dev_mode_serves_sends_and_counts_without_any_secret_set() {
    let dir = tempfile::tempdir().unwrap();
    let sources = r#"
[sources.github]
provider = "github"
secret = { env = "HOOKGATE_IT_DEV_GITHUB" }

[sources.zendesk]
provider = "zendesk"
secret = { env = "HOOKGATE_IT_DEV_ZENDESK" }
"#;
    let daemon = Daemon::start(dir.path(), sources, &["--dev"]).await;
    let dev_file = dir.path().join("hookgate-dev-secrets.toml");
    assert!(std::fs::read_to_string(&dev_file)
        .unwrap()
        .contains("env:HOOKGATE_IT_DEV_GITHUB"));

    let sent = daemon.cli(&["send", "github", "push", "--dev"]);
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(
        sent.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(stdout.contains("-> 202"), "{stdout}");
    let sent = daemon.cli(&["send", "zendesk", "ticket.created", "--dev"]);
    assert!(String::from_utf8_lossy(&sent.stdout).contains("-> 202"));
    // Same delivery id twice: the second is a duplicate.
    for expect in ["-> 202", "-> 200"] {
        let sent = daemon.cli(&[
            "send",
            "github",
            "issues",
            "--dev",
            "--delivery-id",
            "fixed",
        ]);
        assert!(String::from_utf8_lossy(&sent.stdout).contains(expect));
    }
    // Without --dev the CLI has no secret, and says so.
    let refused = daemon.cli(&["send", "github", "push"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HOOKGATE_IT_DEV_GITHUB"));

    // No routes in this config: the router records them as unmatched.
    let mut stats = hookgate::queue::Stats::default();
    for _ in 0..100 {
        let out = daemon.cli(&["queue", "stats", "--json"]);
        stats = serde_json::from_slice(&out.stdout).unwrap();
        if stats.unmatched == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((stats.inbox, stats.unmatched), (0, 3));

    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_listed_shown_and_replayed_with_the_cli() {
    use crate::support::receiver::{Receiver, Reply};
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply {
        body: "channel_not_found".into(),
        ..Reply::status(404)
    }]);
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"
[sources.github]
provider = "github"
secret = {{ file = "{{dir}}/github" }}

[sinks.chat]
kind = "slack"
url = "{}"

[[routes]]
name = "prs"
source = "github"
to = ["chat"]
"#,
        rx.url("/services/x")
    );
    let daemon = Daemon::start(dir.path(), &sources, &[]).await;
    let sent = daemon.cli(&["send", "github", "pull_request", "--delivery-id", "dl-1"]);
    assert!(String::from_utf8_lossy(&sent.stdout).contains("-> 202"));

    let mut list = serde_json::Value::Null;
    for _ in 0..100 {
        let out = daemon.cli(&["queue", "dead", "list", "--json"]);
        list = serde_json::from_slice(&out.stdout).unwrap();
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let d = &list[0];
    for key in [
        "id",
        "source",
        "event",
        "delivery_id",
        "route",
        "sink",
        "attempts",
        "last_status",
        "reason",
        "dead_at",
    ] {
        assert!(d.get(key).is_some(), "dead list --json lacks `{key}`: {d}");
    }
    assert_eq!(
        (d["delivery_id"].as_str(), d["last_status"].as_u64()),
        (Some("dl-1"), Some(404))
    );
    assert!(d["reason"].as_str().unwrap().contains("channel_not_found"));
    let id = d["id"].as_u64().unwrap().to_string();

    let show = daemon.cli(&["queue", "dead", "show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("channel_not_found") && text.contains("404"),
        "{text}"
    );

    // The channel is back: one command and it is delivered.
    let replay = daemon.cli(&["queue", "dead", "replay", &id]);
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains("replayed 1 dead delivery"),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let got = rx.wait_for(2, std::time::Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the same frozen message");
    let out = daemon.cli(&["queue", "dead", "list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    assert!(daemon.terminate().success());
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let sources =
        "\n[sources.github]\nprovider = \"github\"\nsecret = { file = \"{dir}/github\" }\n";
    let env = [
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let daemon = Daemon::start_env(dir.path(), sources, &[], &env).await;
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while !(heard.iter().any(|m| m == "READY=1")
        && heard.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = socket.recv(&mut buf).expect("systemd hears from hookgate");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(heard[0], "READY=1", "ready first: {heard:?}");
    assert!(daemon.terminate().success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

/// A reload that would leave a source without its secret is refused like
/// a broken file: the source keeps taking deliveries with the old secret.
#[tokio::test]
async fn sighup_refuses_a_config_whose_source_secret_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let sources =
        "\n[sources.github]\nprovider = \"github\"\nsecret = { file = \"{dir}/github\" }\n";
    let daemon = Daemon::start(dir.path(), sources, &[]).await;
    let good = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(&daemon.config, good.replace("/github\"", "/githb\"")).unwrap();
    let log = daemon
        .reload_until_logged("the old config keeps serving")
        .await;
    assert!(log.contains("a source would have no secret"), "{log}");
    // The refusal shows in /metrics (#8.13).
    let (_, text) = admin_get(daemon.admin, "/metrics").await;
    assert!(
        text.contains("hookgate_config_last_reload_successful 0\n"),
        "{text}"
    );
    assert!(text.contains("hookgate_config_last_reload_timestamp_seconds "));
    let github = providers_of(dir.path(), sources)["github"].clone();
    assert_eq!(
        post_push(&daemon.url("github"), &github, "after-refused-reload").await,
        http::StatusCode::ACCEPTED
    );
    assert!(daemon.terminate().success());
}

/// The admin token is read only at start: a reload that finds its file
/// gone still applies the rest (here a new route's sink), says that the
/// running admin API keeps its token and what a restart would do, and
/// does not blame a source.
#[tokio::test]
async fn sighup_with_the_admin_tokens_secret_gone_applies_and_says_what_a_restart_would_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin"), "adm1n-token").unwrap();
    let sources = "admin_token = { file = \"{dir}/admin\" }\n\n[sources.github]\nprovider = \"github\"\nsecret = { file = \"{dir}/github\" }\n";
    let daemon = Daemon::start(dir.path(), sources, &[]).await;
    let start_log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap();
    assert!(!start_log.contains("admin API closed"), "{start_log}");
    std::fs::remove_file(dir.path().join("admin")).unwrap();
    let mut text = std::fs::read_to_string(&daemon.config).unwrap();
    text.push_str("\n[sinks.added]\nkind = \"log\"\n");
    std::fs::write(&daemon.config, text).unwrap();
    let log = daemon.reload_until_logged("config reloaded").await;
    assert!(log.contains("config reloaded"), "{log}");
    assert!(!log.contains("reload refused"), "{log}");
    assert!(!log.contains("a source would have no secret"), "{log}");
    assert!(
        log.contains("server.admin_token") && log.contains("the running admin API keeps its token"),
        "{log}"
    );
    // It does: the old token still opens the API.
    let url = format!("http://{}/api/queue/stats", daemon.admin);
    let (status, _, _) = hookgate::client::request(
        http::Method::GET,
        &url,
        &[("authorization".to_owned(), "Bearer adm1n-token".to_owned())],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, http::StatusCode::OK);
    assert!(daemon.terminate().success());
}

/// At start, each missing secret is one line: where it is set and what
/// follows (a source closed, a sink disabled, the admin API closed).
#[tokio::test]
async fn each_missing_secret_is_logged_once_with_its_place_and_consequence() {
    let dir = tempfile::tempdir().unwrap();
    let sources = "admin_token = { env = \"HOOKGATE_IT_UNSET_ADMIN\" }\n\n[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_IT_UNSET_GITHUB\" }\n\n[sinks.chat]\nkind = \"slack\"\nurl = { env = \"HOOKGATE_IT_UNSET_SLACK\" }\n";
    let daemon = Daemon::start(dir.path(), sources, &[]).await;
    let log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap();
    for (var, consequence) in [
        ("HOOKGATE_IT_UNSET_ADMIN", "admin API closed"),
        ("HOOKGATE_IT_UNSET_GITHUB", "source closed"),
        ("HOOKGATE_IT_UNSET_SLACK", "sink disabled"),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(var)).collect();
        assert_eq!(lines.len(), 1, "{var}: {log}");
        assert!(lines[0].contains(consequence), "{var}: {}", lines[0]);
        assert!(
            lines[0].contains(&format!("{}:", daemon.config.display())),
            "{var} names the file and line: {}",
            lines[0]
        );
    }
    for consequence in ["source closed", "sink disabled", "admin API closed"] {
        assert_eq!(log.matches(consequence).count(), 1, "{consequence}: {log}");
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_broken_config_and_applies_a_good_one() {
    use crate::support::receiver::{Receiver, Reply};
    let rx = Receiver::start(Reply::status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"
[sources.github]
provider = "github"
secret = {{ file = "{{dir}}/github" }}

[sinks.target]
kind = "http"
url = "{}"

[[routes]]
name = "all"
to = ["target"]
"#,
        rx.url("/in")
    );
    let daemon = Daemon::start(dir.path(), &sources, &[]).await;
    // Break the file, then ask for a reload.
    let good = std::fs::read_to_string(&daemon.config).unwrap();
    let broken = good
        .replace("to = [\"target\"]", "to = [\"nowhere\"]")
        .replace("kind = \"http\"", "kind = \"http\"\nbogus = 1");
    std::fs::write(&daemon.config, broken).unwrap();
    let log = daemon
        .reload_until_logged("the old config keeps serving")
        .await;
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("bogus") && log.contains("nowhere"),
        "every problem, with its line: {log}"
    );
    // Still routing with the old config (signed here: `hookgate send`
    // would read the broken file).
    let github = providers_of(dir.path(), &sources)["github"].clone();
    assert_eq!(
        post_push(&daemon.url("github"), &github, "after-bad-reload").await,
        http::StatusCode::ACCEPTED
    );
    let got = rx.wait_for(1, std::time::Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["hookgate-delivery"], "after-bad-reload");

    // A good config: the next delivery goes where it now says.
    let rx2 = Receiver::start(Reply::status(200)).await;
    std::fs::write(
        &daemon.config,
        good.replace(&rx.url("/in"), &rx2.url("/v2")),
    )
    .unwrap();
    daemon.reload_until_logged("config reloaded").await;
    assert_eq!(
        post_push(&daemon.url("github"), &github, "after-good-reload").await,
        http::StatusCode::ACCEPTED
    );
    let got = rx2.wait_for(1, std::time::Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "routed by the reloaded config");
    assert_eq!(got[0].path, "/v2");
    assert_eq!(rx.received().len(), 1);
    assert!(daemon.terminate().success());
}

#[test]
fn route_tests_pass_on_the_shipped_config_and_fail_with_a_diff() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |tests: &Path| {
        std::process::Command::new(binary())
            .args(["test", "--config"])
            .arg(root.join("routes.toml"))
            .arg("--tests")
            .arg(tests)
            .output()
            .unwrap()
    };
    let shipped = run(&root.join("routes.test.toml"));
    let out = String::from_utf8_lossy(&shipped.stdout);
    assert_eq!(
        shipped.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    assert!(out.contains("0 failed"), "{out}");

    // One expectation changed: the message differs, and the diff shows how.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("routes.test.toml"))
        .unwrap()
        .replace(
            "payload_file = \"samples/",
            &format!("payload_file = \"{}/samples/", root.display()),
        )
        .replace(
            "merged into `acme/widgets` by lee-marsh",
            "merged into `acme/gadgets` by lee-marsh",
        );
    let broken = dir.path().join("broken.test.toml");
    std::fs::write(&broken, text).unwrap();
    let failed = run(&broken);
    let out = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL  a merged pull request is announced everywhere"),
        "{out}"
    );
    assert!(
        out.contains("- :rocket: *Add CSV export [FEAT-123]* merged into `acme/gadgets`"),
        "{out}"
    );
    assert!(
        out.contains("+ :rocket: *Add CSV export [FEAT-123]* merged into `acme/widgets`"),
        "{out}"
    );
    assert!(out.contains("1 failed"), "{out}");
}

/// Socket activation: webhooks arrive on the socket systemd passed (as
/// `hookgate.socket` does), and `server.listen` is left alone.
#[tokio::test]
async fn a_socket_passed_by_systemd_serves_the_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sources =
        "\n[sources.github]\nprovider = \"github\"\nsecret = { file = \"{dir}/github\" }\n";
    let (daemon, configured) = Daemon::start_activated(dir.path(), sources, socket).await;
    let github = providers_of(dir.path(), sources)["github"].clone();
    assert_eq!(
        post_push(&daemon.url("github"), &github, "activated-1").await,
        http::StatusCode::ACCEPTED
    );
    assert!(
        std::net::TcpStream::connect(configured).is_err(),
        "server.listen ({configured}) must not be bound when systemd passed a socket"
    );
    let log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap();
    assert!(log.contains("using the socket systemd passed"), "{log}");
    assert!(daemon.terminate().success());
}

/// A config whose admin listener nobody answers (the CLI opens `data`
/// itself), with one GitHub source.
fn offline_config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let config = dir.join("routes.toml");
    let admin = format!("127.0.0.1:{}", free_port());
    let text = with_secrets(
        dir,
        &format!(
            "[server]\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"\n[sources.github]\nprovider = \"github\"\nsecret = {{ file = \"{{dir}}/github\" }}\n",
            data.display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// With no daemon answering, the queue commands open data_dir themselves:
/// a data_dir holding no queue is an error (not an empty queue, and
/// nothing is created), and replaying an id that is not dead fails.
#[test]
fn offline_queue_commands_fail_on_a_missing_queue_or_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not-the-daemons");
    let config = offline_config(dir.path(), &data);
    let cli = |args: &[&str]| cli_on(&config, args);
    let out = cli(&["queue", "dead", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no queue in"), "{stderr}");
    assert!(!data.exists(), "nothing created");

    // A real (empty) queue: an id that is not dead is an error.
    drop(hookgate::queue::LocalStore::open(&data, true).unwrap());
    let out = cli(&["queue", "dead", "replay", "42"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no dead delivery 42"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cli(&["queue", "dead", "list"]).status.success());
    // A limit of 0 would print "no events" as if nothing matched.
    for args in [
        &["events", "list", "--limit", "0"][..],
        &["deliveries", "list", "--limit", "0"][..],
        &["queue", "dead", "list", "--limit", "0"][..],
    ] {
        let out = cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("0 lists nothing: give 1 or more"),
            "{stderr}"
        );
    }
}

/// `hookgate queue stats | head -1`: a reader that stops early ends the
/// command as it ends any Unix tool (SIGPIPE), not with a panic and a
/// backtrace on the write ("failed printing to stdout"). The pipe's read
/// end is closed before the command starts, so its first write fails.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = offline_config(dir.path(), &data);
    drop(hookgate::queue::LocalStore::open(&data, true).unwrap());
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["queue", "stats"])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// The local backend's queue in `data`, opened by the test itself (no
/// daemon runs).
fn local_queue(data: &Path) -> std::sync::Arc<dyn hookgate::queue::Queue> {
    std::sync::Arc::new(hookgate::queue::Local::new(
        hookgate::queue::LocalStore::open(data, true).unwrap(),
    ))
}

/// `queue dead list` shows a page (newest first), says how to get the
/// next, and `--before` gets it: a million dead letters are not read to
/// print a screenful.
#[tokio::test]
async fn the_dead_letter_list_is_paged() {
    use crate::storage::{append_n, dead, delivery, route_with};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let q = local_queue(&data);
        append_n(&q, 5, "d").await;
        route_with(&q, |id| {
            (
                vec![],
                vec![dead(delivery(id, "chat", 1), "permanent: 422")],
            )
        })
        .await;
        q.flush().await.unwrap();
    }
    let config = offline_config(dir.path(), &data);
    let list = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(["queue", "dead", "list", "--json"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids: Vec<u64> = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect();
        // No daemon runs: it says it reads storage, then what else it has.
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let (note, rest) = stderr.split_once('\n').unwrap_or_default();
        assert!(note.contains("read from storage"), "{stderr}");
        (ids, rest.to_owned())
    };
    let (all, said) = list(&[]);
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    assert_eq!(said, "", "nothing more to say");
    let (first, said) = list(&["--limit", "2"]);
    assert_eq!(first, all[..2]);
    assert!(
        said.contains(&format!("older ones: --before {}", all[1])),
        "{said}"
    );
    let (next, _) = list(&["--limit", "2", "--before", &all[1].to_string()]);
    assert_eq!(next, all[2..4]);
    let (last, said) = list(&["--limit", "2", "--before", &all[3].to_string()]);
    assert_eq!((last.as_slice(), said.as_str()), (&all[4..], ""));
}

/// After a backlog drained, `queue compact` gives the state file's free
/// pages back, keeps what is still there, and refuses while a daemon has
/// the file open.
#[tokio::test]
async fn queue_compact_gives_back_what_a_drained_backlog_left_free() {
    use crate::storage::{append_n, dead, delivery, route_with};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let q = local_queue(&data);
        // Bytes LZ4 cannot shrink.
        let x = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
        let noise = || -> Vec<u8> {
            (0..64 << 10)
                .map(|_| {
                    let mut v = x.get();
                    v ^= v << 13;
                    v ^= v >> 7;
                    v ^= v << 17;
                    x.set(v);
                    v as u8
                })
                .collect()
        };
        let big = |mut d: hookgate::queue::DeliveryRecord| {
            d.frozen.as_mut().unwrap().body = serde_bytes::ByteBuf::from(noise());
            d
        };
        // A backlog: 8 events with 40 dead letters of 64 KiB each; then 8
        // more whose one delivery each (64 KiB) is still pending, written
        // after them, at the file's end. The dead letters are pruned:
        // about 20 MiB freed before what is still used.
        append_n(&q, 8, "a").await;
        route_with(&q, |id| {
            let letters = (0..40)
                .map(|i| {
                    let mut d = big(dead(delivery(id, "chat", 1), "permanent: 422"));
                    d.item = Some(i);
                    d
                })
                .collect();
            (vec![], letters)
        })
        .await;
        append_n(&q, 8, "b").await;
        route_with(&q, |id| (vec![big(delivery(id, "chat", 1))], vec![])).await;
        let pruned = q
            .prune_dead(
                std::time::SystemTime::now(),
                std::time::Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(pruned.get("chat"), Some(&320), "{pruned:?}");
        q.close();
        q.flush().await.unwrap();
    }
    let config = offline_config(dir.path(), &data);
    let state = data.join("state").join("state.redb");
    let size = || std::fs::metadata(&state).unwrap().len();
    let before = size();
    assert!(before > 16 << 20, "{before}");
    let cli = |args: &[&str]| cli_on(&config, args);
    let out = cli(&["queue", "compact"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("given back"), "{stdout}");
    let after = size();
    assert!(after < before / 4, "{before} -> {after} bytes");
    // What is left is all there.
    let out = cli(&["queue", "stats", "--json"]);
    let stats: hookgate::queue::Stats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((stats.deliveries, stats.dead), (8, 0), "{stats:?}");
    // A running daemon holds the file: refused, saying what to do.
    let text = std::fs::read_to_string(&config).unwrap();
    let admin = text
        .split("admin_listen = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let (listen, _) = two_addrs();
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nlisten = \"{listen}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{admin}/readyz");
    for _ in 0..200 {
        if let Ok((http::StatusCode::OK, _, _)) =
            hookgate::client::request(http::Method::GET, &url, &[], vec![]).await
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = cli(&["queue", "compact"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("another hookgate is using"), "{stderr}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    daemon.wait().unwrap();
}

/// A config for the real binary: one GitHub source (secret `GH_IT`), the
/// given `[server]` lines.
fn serve_config(dir: &Path, server: &str) -> std::path::PathBuf {
    let config = dir.join("routes.toml");
    std::fs::write(
        &config,
        format!("[server]\n{server}\n[sources.github]\nprovider = \"github\"\nsecret = {{ env = \"GH_IT\" }}\n"),
    )
    .unwrap();
    config
}

/// Free loopback addresses for `listen` and `admin_listen`.
fn two_addrs() -> (String, String) {
    (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    )
}

/// Runs `hookgate ARGS` on `config` until it exits (a start-up error).
fn run_to_exit(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(binary())
        .env("GH_IT", "x")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_says_another_hookgate_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(
        dir.path(),
        "[sources.github]\nprovider = \"github\"\nsecret = { file = \"{dir}/github\" }\n",
        &[],
    )
    .await;
    let data = dir.path().join("data");
    let (listen, admin) = two_addrs();
    let other = tempfile::tempdir().unwrap();
    let config = serve_config(
        other.path(),
        &format!(
            "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"",
            data.display()
        ),
    );
    let (code, stderr) = run_to_exit(&config, &["serve"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "hookgate: another hookgate is using {} (stop it, or set another server.data_dir)",
            data.display()
        )
    );
    drop(first);
}

#[test]
fn a_busy_port_names_the_key_and_the_address_once() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (listen, admin) = two_addrs();
    for (key, server) in [
        (
            "listen",
            format!("listen = \"{busy_addr}\"\nadmin_listen = \"{admin}\""),
        ),
        (
            "admin_listen",
            format!("listen = \"{listen}\"\nadmin_listen = \"{busy_addr}\""),
        ),
    ] {
        let data = dir.path().join(format!("data-{key}"));
        let config = serve_config(
            dir.path(),
            &format!("{server}\ndata_dir = \"{}\"", data.display()),
        );
        let (code, stderr) = run_to_exit(&config, &["serve"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!("hookgate: server.{key}: another program is listening on {busy_addr} (stop it, or set another server.{key})")
        );
    }
}

#[test]
fn a_data_dir_that_cannot_be_made_or_written_is_named_with_its_key() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // Under a regular file: it cannot be created.
    std::fs::write(dir.path().join("file"), "").unwrap();
    let data = dir.path().join("file/data");
    let (listen, admin) = two_addrs();
    let addrs = format!("listen = \"{listen}\"\nadmin_listen = \"{admin}\"");
    let config = serve_config(
        dir.path(),
        &format!("{addrs}\ndata_dir = \"{}\"", data.display()),
    );
    let (code, stderr) = run_to_exit(&config, &["serve"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "hookgate: cannot create server.data_dir {}: Not a directory (os error 20)",
            data.display()
        )
    );

    // Read-only. Root may write anywhere: run as `nobody` then.
    let data = dir.path().join("ro");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = serve_config(
        dir.path(),
        &format!("{addrs}\ndata_dir = \"{}\"", data.display()),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = std::process::Command::new(binary());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65534).gid(65534);
    }
    let out = command
        .env("GH_IT", "x")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!("hookgate: cannot write in server.data_dir {}: Permission denied (os error 13) (make it writable for the user hookgate runs as, or set another server.data_dir)", data.display())
    );
}

#[test]
fn a_missing_config_is_named_by_its_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary())
        .current_dir(dir.path())
        .args(["check", "--config", "nothere.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let absolute = dir.path().join("nothere.toml");
    assert!(
        stderr.starts_with(&format!(
            "{}: cannot read the config file: No such file or directory (os error 2)",
            absolute.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(":0:0"), "{stderr}");
}

/// `hookgate --dev` (no subcommand) is `hookgate serve --dev`, as the
/// README's CLI block shows; text logs into a file carry no colours.
#[tokio::test]
async fn serve_flags_work_without_the_subcommand_and_text_logs_have_no_colours() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = two_addrs();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"\n[sources.github]\nprovider = \"github\"\nsecret = {{ env = \"HOOKGATE_IT_UNSET_SECRET\" }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .args(["--dev", "--log-format", "text"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://{admin}/readyz");
    let mut ready = false;
    for _ in 0..200 {
        if let Ok((http::StatusCode::OK, _, _)) =
            hookgate::client::request(http::Method::GET, &url, &[], vec![]).await
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(ready, "hookgate --dev did not start:\n{text}");
    assert!(text.contains("DEV MODE"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in a redirected log:\n{text}"
    );
}

/// Issue #8 item 11 through the binary: every mistake in one run, sorted
/// by line, with "did you mean", a misspelt filter included.
#[test]
fn check_reports_everything_at_once_in_file_order_with_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[sources.github]
provider = "github"
secret = { env = "HOOKGATE_IT_UNSET_SECRET" }
allow_ips = ["10.0.0.1/8"]

[sinks.stdout]
kind = "log"

[[routes]]
name = "merged"
source = "github"
to = ["stdot"]
tags = 1
message = "{{ payload.title | regex_captur('x') }}"

[server]
listen = 8080
max_body_bytes = "big"
"#,
    )
    .unwrap();
    let out = check(&config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |line: u32, col: u32| format!("{}:{line}:{col}: ", config.display());
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        vec![
            format!("{}sources.github.allow_ips: `10.0.0.1/8` has bits set past its /8: write the network, `10.0.0.0/8`, or the host, `10.0.0.1/32`", at(4, 14)),
            format!("{}routes[0].to: no sink `stdot`: did you mean `stdout`?", at(12, 7)),
            format!("{}routes[0].tags: unknown key `tags`: the keys here are name, source, event, when, each, to, message, template, action, fields, order_key", at(13, 1)),
            format!("{}routes.merged.message: unknown filter `regex_captur`: did you mean `regex_capture`?", at(14, 11)),
            format!("{}server.listen: 8080 is a number: write text in quotes", at(17, 10)),
            format!("{}server.max_body_bytes: \"big\" is text: write a whole number without quotes, like 65536", at(18, 18)),
            format!("{}: 6 problem(s); nothing was started", config.display()),
        ]
    );
}

/// A typo in `[tests.reject] routes` made a test that could never fail.
#[test]
fn route_tests_naming_a_route_the_config_lacks_fail() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_IT_UNSET_SECRET\" }\n[sinks.stdout]\nkind = \"log\"\n[[routes]]\nname = \"merged-prs\"\nto = [\"stdout\"]\nwhen = \"false\"\n",
    )
    .unwrap();
    let tests = dir.path().join("routes.test.toml");
    std::fs::write(
        &tests,
        "[[tests]]\nname = \"quiet\"\nsource = \"github\"\nevent = \"push\"\npayload = '{}'\n[tests.reject]\nroutes = [\"merged-pr\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("test")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "hookgate test: {}:7:11: test `quiet`: [tests.reject] no route `merged-pr` in the config: did you mean `merged-prs`?",
            tests.display()
        )
    );
}

/// A route test file of the wrong shape says where and what to write,
/// not serde's "invalid type: map, expected a sequence".
#[test]
fn route_test_files_of_the_wrong_shape_say_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        "[sources.github]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_IT_UNSET_SECRET\" }\n[sinks.stdout]\nkind = \"log\"\n[[routes]]\nname = \"all\"\nto = [\"stdout\"]\n",
    )
    .unwrap();
    let tests = dir.path().join("routes.test.toml");
    let head = "[[tests]]\nname = \"t\"\nsource = \"github\"\nevent = \"push\"\npayload = '{}'\n";
    for (tail, says) in [
        (
            "[[tests.reject]]\nroutes = [\"all\"]\n",
            "routes.test.toml:6:1: `[[tests.reject]]` makes a list, and a test has one reject table: write `[tests.reject]`",
        ),
        (
            "[tests.expect]\nroute = \"all\"\nsink = \"stdout\"\n",
            "routes.test.toml:6:1: this is a table: write a list in brackets, like [\"a\", \"b\"] (a list of tables is `[[name]]`, once per table)",
        ),
    ] {
        std::fs::write(&tests, format!("{head}{tail}")).unwrap();
        let out = cli_on(&config, &["test"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// The shipped config's secrets: `hookgate route` tests set the ones they
/// mean to and no other.
const SHIPPED_SECRETS: [&str; 10] = [
    "GITHUB_WEBHOOK_SECRET",
    "GITLAB_WEBHOOK_TOKEN",
    "JIRA_WEBHOOK_SECRET",
    "FIGMA_WEBHOOK_PASSCODE",
    "ZENDESK_WEBHOOK_SECRET",
    "INTERCOM_CLIENT_SECRET",
    "SLACK_WEBHOOK_URL",
    "TEAMS_WORKFLOW_URL",
    "DISCORD_WEBHOOK_URL",
    "PRODMATIC_API_TOKEN",
];

/// `hookgate --config CONFIG route ARGS` with `env` set (and the shipped
/// secrets unset otherwise), `stdin` piped in when given.
fn route(
    config: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(binary());
    for name in SHIPPED_SECRETS {
        cmd.env_remove(name);
    }
    cmd.env_remove("CREDENTIALS_DIRECTORY")
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .arg("route")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.toml")
}

fn sample_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples/github")
        .join(name)
        .display()
        .to_string()
}

/// What Slack gets for the bundled merged pull request from the shipped
/// `merged-prs-slack` route: the bytes `routes.test.toml` checks the text
/// of, as the Slack sink freezes them.
const MERGED_PR_SLACK_BODY: &str = r#"{"text":":rocket: *Add CSV export [FEAT-123]* merged into `acme/widgets` by lee-marsh <https://github.com/acme/widgets/pull/218|#218>"}"#;

/// Issue #11 item 5: the shipped config, a merged pull request: Slack's
/// request with its exact body bytes and its URL (the credential)
/// redacted; a sink whose secret is not set is still shown, and said to
/// be held. Nothing is sent: the Slack URL points nowhere reachable.
#[test]
fn route_shows_the_exact_slack_request_for_a_merged_pull_request() {
    let out = route(
        &shipped(),
        &[
            "--source",
            "github",
            "--event",
            "pull_request",
            "--payload",
            &sample_file("pull_request.json"),
        ],
        &[(
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0SECRET/B0SECRET/sekrit",
        )],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("github `pull_request` (delivery dry-run): 4 route(s) fire, 5 deliveries; nothing was sent or queued\n"),
        "{stdout}"
    );
    let slack = format!(
        "== merged-prs-slack -> product-updates (slack)\n\
         POST https://hooks.slack.com/[redacted]\n\
         Content-Type: application/json\n\
         Idempotency-Key: evt_0000000000000000-0000000000000000.merged-prs-slack.product-updates\n\
         User-Agent: hookgate/{}\n\
         body ({} bytes):\n{MERGED_PR_SLACK_BODY}\n",
        env!("CARGO_PKG_VERSION"),
        MERGED_PR_SLACK_BODY.len()
    );
    assert!(stdout.contains(&slack), "{stdout}");
    for secret in ["T0SECRET", "B0SECRET", "sekrit"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    assert!(
        stdout.contains("== merged-prs-teams -> teams-product (teams)\nPOST [secret not set]\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("secret missing: secret env:TEAMS_WORKFLOW_URL is unavailable"),
        "{stdout}"
    );
    // The source's own secret is not set either: said, and not in the way.
    assert!(
        stderr.contains("note: source `github` has no secret here"),
        "{stderr}"
    );
}

/// The body `hookgate route` shows is the body the Slack sink sends
/// (`sinks::slack_gets_a_default_message_and_no_service_disables_it`
/// receives the same text from the same config and sample), here with the
/// source's secret set.
#[test]
fn route_shows_the_slack_body_the_sink_sends() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    let text = with_secrets(
        dir.path(),
        r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }

[sinks.chat]
kind = "slack"
url = "https://hooks.slack.com/services/T1/B1/x"

[[routes]]
name = "prs"
source = "github"
event = "pull_request"
to = ["chat"]
"#,
    );
    std::fs::write(&config, text).unwrap();
    let out = route(
        &config,
        &[
            "--source",
            "github",
            "--event",
            "pull_request",
            "--payload",
            &sample_file("pull_request.json"),
            "--json",
        ],
        &[],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["notes"], serde_json::json!([]));
    let d = &v["routes"][0]["deliveries"][0];
    assert_eq!(d["url"], "https://hooks.slack.com/[redacted]");
    assert_eq!(
        d["body"].as_str().unwrap(),
        serde_json::json!({ "text": SLACK_DEFAULT_PR_TEXT }).to_string()
    );
}

/// A push on the shipped config: no chat route takes it; one ProdMatic
/// update per commit naming a feature, each body byte for byte, with the
/// token redacted (here: not set).
#[test]
fn route_shows_each_prodmatic_request_for_a_push() {
    let out = route(
        &shipped(),
        &[
            "--source",
            "github",
            "--event",
            "push",
            "--payload",
            &sample_file("push.json"),
        ],
        &[],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let first = r#"{"externalLinks":[{"title":"Add streaming CSV writer for report export [FEAT-123]","type":"commit","url":"https://github.com/acme/widgets/commit/2f22765d04931a078909145ca628d2264c852d7d"}]}"#;
    let second = r#"{"externalLinks":[{"title":"Wire CSV export into reports endpoint [FEAT-123] [CLOSES]","type":"commit","url":"https://github.com/acme/widgets/commit/6b1f53303a732ccc8c6aae6640399827c15250e3"}],"status":"COMPLETED"}"#;
    for (item, body) in [(0, first), (1, second)] {
        let expected = format!(
            "== commits-link-features -> prodmatic (prodmatic), item {item}, order key FEAT-123\n\
             PATCH https://api.prodmatic.com/v1/organizations/org123/products/prod456/features/FEAT-123\n\
             Authorization: Bearer [secret not set]\n\
             Content-Type: application/json\n\
             Idempotency-Key: evt_0000000000000000-0000000000000000.commits-link-features.prodmatic.{item}\n\
             User-Agent: hookgate/{}\n\
             secret missing: secret env:PRODMATIC_API_TOKEN is unavailable",
            env!("CARGO_PKG_VERSION"),
        );
        assert!(stdout.contains(&expected), "{stdout}");
        assert!(
            stdout.contains(&format!("body ({} bytes):\n{body}\n", body.len())),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("== log-everything -> stdout (log)\nwrites to stdout"),
        "{stdout}"
    );
    assert!(!stdout.contains("(slack)"), "{stdout}");
}

/// `--json`: one object of a stable shape, per delivery its sink, kind,
/// method, URL, headers, body and idempotency key.
#[test]
fn route_json_has_a_stable_shape() {
    let out = route(
        &shipped(),
        &[
            "--source",
            "github",
            "--event",
            "pull_request",
            "--payload",
            &sample_file("pull_request.json"),
            "--json",
        ],
        &[(
            "SLACK_WEBHOOK_URL",
            "https://hooks.slack.com/services/T0SECRET/B0SECRET/sekrit",
        )],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains("sekrit"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "delivery_id",
            "event",
            "fired",
            "not_fired",
            "notes",
            "provider",
            "routes",
            "source"
        ]
    );
    assert_eq!(
        (&v["source"], &v["event"], &v["delivery_id"], &v["fired"]),
        (
            &"github".into(),
            &"pull_request".into(),
            &"dry-run".into(),
            &true.into()
        )
    );
    let names: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "log-everything",
            "merged-prs-slack",
            "merged-prs-teams",
            "merged-prs-discord"
        ]
    );
    let slack = &v["routes"][1]["deliveries"][0];
    assert_eq!(
        keys(slack),
        [
            "body",
            "error",
            "headers",
            "idempotency_key",
            "item",
            "kind",
            "method",
            "missing_secrets",
            "order_key",
            "sink",
            "url",
            "writes_to"
        ]
    );
    assert_eq!(
        slack,
        &serde_json::json!({
            "sink": "product-updates",
            "kind": "slack",
            "item": null,
            "order_key": null,
            "idempotency_key": "evt_0000000000000000-0000000000000000.merged-prs-slack.product-updates",
            "error": null,
            "method": "POST",
            "url": "https://hooks.slack.com/[redacted]",
            "writes_to": null,
            "headers": [
                {"name": "Content-Type", "value": "application/json"},
                {"name": "Idempotency-Key", "value": "evt_0000000000000000-0000000000000000.merged-prs-slack.product-updates"},
                {"name": "User-Agent", "value": concat!("hookgate/", env!("CARGO_PKG_VERSION"))},
            ],
            "body": MERGED_PR_SLACK_BODY,
            "missing_secrets": [],
        })
    );
    let log = &v["routes"][1]["deliveries"][1];
    assert_eq!(
        (&log["kind"], &log["method"], &log["writes_to"]),
        (&"log".into(), &serde_json::Value::Null, &"stdout".into())
    );
    assert!(
        log["body"]
            .as_str()
            .unwrap()
            .ends_with("\"source\":\"github\"}\n"),
        "{log}"
    );
    let teams = &v["routes"][2]["deliveries"][0];
    assert_eq!(teams["url"], "[secret not set]");
    assert!(teams["missing_secrets"][0]
        .as_str()
        .unwrap()
        .contains("TEAMS_WORKFLOW_URL"));
    let zendesk = v["not_fired"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["route"] == "tickets-become-feedback")
        .unwrap();
    assert_eq!(zendesk["reason"], "source");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("has no secret here"),
        "{v}"
    );
}

/// When nothing fires, it says why in an operator's words: the route
/// whose `when` is false and the condition that is, or that no route
/// takes the event at all. Exit 0: that is an answer. Nothing is written:
/// no data_dir, no log sink file.
#[test]
fn route_says_why_nothing_fires_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
data_dir = "{d}/data"

[sources.github]
provider = "github"
secret = {{ env = "HOOKGATE_IT_UNSET_SECRET" }}

[sinks.audit]
kind = "log"
path = "{d}/audit.jsonl"

[[routes]]
name = "merged"
source = "github"
event = "pull_request"
when = "payload.pull_request.merged and payload.action == 'closed'"
to = ["audit"]

[[routes]]
name = "pushes"
source = "github"
event = "push"
to = ["audit"]
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let payload = dir.path().join("opened.json");
    std::fs::write(
        &payload,
        r#"{"action": "opened", "pull_request": {"merged": false}}"#,
    )
    .unwrap();
    let payload = payload.display().to_string();
    let run = |event: &str| {
        let out = route(
            &config,
            &[
                "--source",
                "github",
                "--event",
                event,
                "--payload",
                &payload,
            ],
            &[],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run("pull_request"),
        "github `pull_request` (delivery dry-run): nothing fires: 1 route(s) take `pull_request` events from source `github`, and none matched\n\
         \n\
         did not fire:\n  \
         merged: its when is false: `payload.pull_request.merged` is false (when = \"payload.pull_request.merged and payload.action == 'closed'\")\n  \
         pushes: its event = \"push\" does not match `pull_request`\n"
    );
    let issues = run("issues");
    assert!(
        issues.starts_with("github `issues` (delivery dry-run): nothing fires: no route takes `issues` events from source `github`\n"),
        "{issues}"
    );
    assert!(
        issues.contains("  merged: its event = \"pull_request\" does not match `issues`\n"),
        "{issues}"
    );
    // A route to the log sink fires: it is shown, not written.
    let pushed = run("push");
    assert!(
        pushed.contains(&format!(
            "== pushes -> audit (log)\nwrites to {}/audit.jsonl",
            dir.path().display()
        )),
        "{pushed}"
    );
    assert!(
        !dir.path().join("audit.jsonl").exists(),
        "the log sink's file was created"
    );
    assert!(!dir.path().join("data").exists(), "data_dir was created");
}

/// A source the config lacks: the closest one is suggested; exit 2.
#[test]
fn route_to_an_unknown_source_suggests_the_closest() {
    let out = route(
        &shipped(),
        &[
            "--source",
            "githb",
            "--event",
            "push",
            "--payload",
            &sample_file("push.json"),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "hookgate route: no source `githb` in the config: did you mean `github`?"
    );
    assert!(out.stdout.is_empty());
}

/// A payload file that is not there is named, with the reason; exit 1.
#[test]
fn route_with_a_missing_payload_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let out = route(
        &shipped(),
        &[
            "--source",
            "github",
            "--event",
            "push",
            "--payload",
            &missing.display().to_string(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "hookgate: cannot read the payload file {}: No such file or directory",
            missing.display()
        )),
        "{stderr}"
    );
}

/// `--payload -` reads the payload from stdin.
#[test]
fn route_reads_the_payload_from_stdin() {
    let body = std::fs::read(sample_file("push.json")).unwrap();
    let out = route(
        &shipped(),
        &[
            "--source",
            "github",
            "--event",
            "push",
            "--payload",
            "-",
            "--json",
        ],
        &[],
        Some(&body),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deliveries = &v["routes"][1]["deliveries"];
    assert_eq!(v["routes"][1]["name"], "commits-link-features");
    assert_eq!(deliveries.as_array().unwrap().len(), 2);
    assert_eq!(
        deliveries[1]["body"],
        r#"{"externalLinks":[{"title":"Wire CSV export into reports endpoint [FEAT-123] [CLOSES]","type":"commit","url":"https://github.com/acme/widgets/commit/6b1f53303a732ccc8c6aae6640399827c15250e3"}],"status":"COMPLETED"}"#
    );
    // The log line counts the payload's bytes: all of stdin arrived.
    let line: serde_json::Value =
        serde_json::from_str(v["routes"][0]["deliveries"][0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(line["bytes"], body.len());
}

/// A template that fails is shown with its file and line, the other
/// routes still render, and the exit code is 1.
#[test]
fn route_shows_a_template_error_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("templates/pr.slack.json"),
        "{\n  \"text\": {{ payload.pull_request.title }},\n  \"n\": {{ payload.number + 'x' }}\n}\n",
    )
    .unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        r#"[sources.github]
provider = "github"
secret = { env = "HOOKGATE_IT_UNSET_SECRET" }

[sinks.chat]
kind = "slack"
url = { env = "HOOKGATE_IT_UNSET_URL" }

[[routes]]
name = "card"
source = "github"
to = ["chat"]
template = "templates/pr.slack.json"

[[routes]]
name = "plain"
source = "github"
to = ["chat"]
"#,
    )
    .unwrap();
    let out = route(
        &config,
        &[
            "--source",
            "github",
            "--event",
            "pull_request",
            "--payload",
            &sample_file("pull_request.json"),
        ],
        &[],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("== card -> chat (slack)\nFAILED: template: message.json: invalid operation: tried to use + operator on unsupported types number and string (in templates/pr.slack.json:3)\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== plain -> chat (slack)\nPOST [secret not set]\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 delivery(ies) could not be made"),
        "{stdout}"
    );
}

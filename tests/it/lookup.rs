//! Operators' questions over the real admin listener: "what happened to
//! GitHub delivery X", "what is failing, and why", "send again what Slack
//! missed", and re-routing kept events after a route was added; the
//! OpenAPI document against the answers; the CLI over the API.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;

use crate::admin::{admin, with_a_dead_letter};
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// The answer read as JSON (or, when it is not, as a JSON string).
async fn ask(gw: &TestGateway, method: Method, path: &str) -> (StatusCode, Value) {
    let (status, body) = admin(gw, method, path, &[("X-Hookgate-CSRF", "1")]).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn get(gw: &TestGateway, path: &str) -> (StatusCode, Value) {
    ask(gw, Method::GET, path).await
}

async fn post(gw: &TestGateway, path: &str) -> (StatusCode, Value) {
    ask(gw, Method::POST, path).await
}

#[tokio::test]
async fn a_delivery_found_by_its_github_id_shows_the_failed_attempt_and_is_replayed_by_filter() {
    let (gw, rx, dead_id) = with_a_dead_letter("").await;
    // What happened to GitHub delivery csrf-1?
    let (status, page) = get(&gw, "/api/events?delivery_id=csrf-1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["source"], "github");
    assert_eq!(items[0]["event"], "ping");
    let event_id = items[0]["id"].as_u64().unwrap();
    let (status, event) = get(&gw, &format!("/api/events/{event_id}")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    // The form the 202 answer gives reads the same, as an event and as
    // its deliveries' filter.
    let (status, same) = get(&gw, &format!("/api/events/evt_{event_id:016x}")).await;
    assert_eq!((status, &same), (StatusCode::OK, &event));
    let (status, by_number) = get(&gw, &format!("/api/deliveries?event_id={event_id}")).await;
    assert_eq!(status, StatusCode::OK, "{by_number}");
    assert_eq!(
        by_number["items"].as_array().unwrap().len(),
        1,
        "{by_number}"
    );
    let (_, by_answer) = get(&gw, &format!("/api/deliveries?event_id=evt_{event_id:x}")).await;
    assert_eq!(by_answer, by_number);
    assert_eq!(event["delivery_id"], "csrf-1");
    assert!(
        event["payload"]["zen"].is_string(),
        "the ping's payload: {event}"
    );
    let headers = event["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-github-event" && h[1] == "ping"),
        "{event}"
    );
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{event}");
    let d = &deliveries[0];
    assert_eq!(
        (d["id"].as_u64(), &d["status"]),
        (Some(dead_id), &Value::from("dead"))
    );
    assert_eq!(d["sink"], "chat");
    assert_eq!(d["attempts"][0]["status"], 404);
    assert!(
        d["attempts"][0]["response"]
            .as_str()
            .unwrap()
            .contains("channel_not_found"),
        "{d}"
    );
    // What is failing right now?
    let (_, dead) = get(&gw, "/api/deliveries?status=dead&sink=chat").await;
    assert_eq!(dead["items"].as_array().unwrap().len(), 1, "{dead}");
    let (_, none) = get(&gw, "/api/deliveries?status=delivered").await;
    assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
    let (_, other) = get(&gw, "/api/dead?sink=teams").await;
    assert!(other["items"].as_array().unwrap().is_empty(), "{other}");
    // Send again everything Slack missed: first a dry run, which changes nothing.
    let (status, dry) = post(&gw, "/api/dead/replay?sink=chat&since=1h&dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["replayed"].as_u64()),
        (Some(true), Some(1))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1, "a dry run sends nothing");
    let (_, still) = get(&gw, "/api/dead").await;
    assert_eq!(still["items"].as_array().unwrap().len(), 1, "{still}");
    let (status, done) = post(&gw, "/api/dead/replay?sink=chat&since=1h").await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["replayed"], 1);
    let mut delivered = Value::Null;
    for _ in 0..100 {
        delivered = get(
            &gw,
            &format!("/api/deliveries?status=delivered&event_id={event_id}"),
        )
        .await
        .1;
        if !delivered["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = &delivered["items"][0];
    assert_eq!(d["id"].as_u64(), Some(dead_id), "{delivered}");
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[1]["status"], 200);
    assert!(d["delivered_at"].is_string(), "{d}");
    assert_eq!(rx.received().len(), 2);
}

#[tokio::test]
async fn a_bad_filter_is_refused_with_what_to_write() {
    let gw = TestGateway::all().await;
    for (path, says) in [
        ("/api/events?sourse=github", "did you mean `source`?"),
        ("/api/events?since=yesterday", "`yesterday` is not a time"),
        (
            "/api/deliveries?status=failed",
            "write pending, delivered or dead",
        ),
        ("/api/deliveries?limit=100000", "ask for 1 to 500"),
        ("/api/events?since=1m&until=2h", "swap them"),
        ("/api/dead?status=dead", "unknown parameter `status`"),
    ] {
        let (status, body) = get(&gw, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    let (status, body) = get(&gw, "/api/events/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for id in ["evt_12x", "99999999999999999999999", "-1"] {
        let (status, body) = get(&gw, &format!("/api/events/{id}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("`evt_` and 16 hex digits"),
            "{body}"
        );
    }
    let (status, body) = post(&gw, "/api/reroute").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("give `since`"),
        "{body}"
    );
}

#[tokio::test]
async fn events_page_newest_first_by_a_cursor() {
    let gw = TestGateway::all().await;
    for i in 0..7 {
        let signed = gw.sign(
            "github",
            "push",
            &sample("github", "push"),
            &format!("page-{i}"),
        );
        assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut path = "/api/events?source=github&limit=3".to_owned();
    for _ in 0..10 {
        let (status, page) = get(&gw, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|e| e["id"].as_u64().unwrap()));
        match page["next_before"].as_u64() {
            Some(b) => path = format!("/api/events?source=github&limit=3&before={b}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, once each: {seen:?}"
    );
    let (_, other) = get(&gw, "/api/events?source=gitlab").await;
    assert!(other["items"].as_array().unwrap().is_empty(), "{other}");
}

#[tokio::test]
async fn rerouting_after_adding_a_route_sends_what_is_missing_once() {
    let rx = Receiver::start(Reply::status(200)).await;
    let without = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;
    let gw = TestGateway::start("", without).await;
    let signed = gw.sign("github", "push", &sample("github", "push"), "late-1");
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    // Routed to nothing first (no route matched it)...
    for _ in 0..200 {
        if get(&gw, "/api/queue/stats").await.1["unmatched"].as_u64() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&gw, "/api/queue/stats").await.1["unmatched"], 1);
    // ... and the route comes later.
    let with = format!(
        r#"{without}
[sinks.hook]
kind = "http"
url = "{}"

[[routes]]
name = "pushes"
source = "github"
to = ["hook"]
"#,
        rx.url("/in")
    );
    gw.reload(&with).await;
    let (status, dry) = post(&gw, "/api/reroute?since=1h&dry_run=true").await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(
        (dry["events"].as_u64(), dry["created"].as_u64()),
        (Some(1), Some(1)),
        "{dry}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.received().is_empty(), "a dry run sends nothing");
    let (_, done) = post(&gw, "/api/reroute?since=1h").await;
    assert_eq!(
        (done["created"].as_u64(), done["existing"].as_u64()),
        (Some(1), Some(0)),
        "{done}"
    );
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let (_, again) = post(&gw, "/api/reroute?delivery_id=late-1").await;
    assert_eq!(
        (again["created"].as_u64(), again["existing"].as_u64()),
        (Some(0), Some(1)),
        "{again}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 1, "sent once");
}

#[tokio::test]
async fn the_openapi_document_describes_every_answer() {
    let (gw, _rx, _) = with_a_dead_letter("").await;
    let (status, doc) = get(&gw, "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    for (path, ops) in paths {
        let Some(op) = ops.get("get") else { continue };
        if path.contains('{') {
            continue;
        }
        let (status, body) = admin(&gw, Method::GET, path, &[]).await;
        assert!(
            op["responses"].get(status.as_str()).is_some(),
            "GET {path} answered {status}, which the document does not describe: {body}"
        );
    }
    // Every route the listener answers is in the document.
    for path in [
        "/api/events",
        "/api/events/{id}",
        "/api/deliveries",
        "/api/dead",
        "/api/dead/{id}",
        "/api/dead/{id}/replay",
        "/api/dead/replay",
        "/api/reroute",
        "/api/queue/stats",
        "/api/sinks",
        "/api/openapi.json",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
}

/// The CLI finds a failed delivery and replays it through the API while
/// routes.toml has a mistake; once the daemon is stopped, `events
/// list|show` and `deliveries list` read storage themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_and_replays_through_the_api_while_routes_toml_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply {
        body: "channel_not_found".into(),
        ..Reply::status(404)
    }]);
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
    let sent = daemon.cli(&["send", "github", "pull_request", "--delivery-id", "cli-1"]);
    assert!(String::from_utf8_lossy(&sent.stdout).contains("-> 202"));
    // The operator breaks routes.toml (the daemon would refuse the reload);
    // the CLI needs only the admin address and token from it.
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(
        &daemon.config,
        format!("{text}\n[[routes]]\nname = \"typo\"\nsorce = \"github\"\n"),
    )
    .unwrap();
    let mut dead = Value::Null;
    for _ in 0..100 {
        let out = daemon.cli(&[
            "deliveries",
            "list",
            "--status",
            "dead",
            "--delivery-id",
            "cli-1",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dead = serde_json::from_slice(&out.stdout).unwrap();
        if dead.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead[0]["sink"], "chat", "{dead}");
    let event_id = dead[0]["event_id"].as_u64().unwrap().to_string();
    let out = daemon.cli(&["events", "list", "--delivery-id", "cli-1", "--json"]);
    let events: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        events[0]["id"].as_u64().unwrap().to_string(),
        event_id,
        "{events}"
    );
    let out = daemon.cli(&["events", "show", &event_id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("channel_not_found") && shown.contains("\"action\""),
        "{shown}"
    );
    // The id the 202 answer gave (`send` prints the answer) finds the
    // same event, and the event says both forms.
    let answered: Value = {
        let said = String::from_utf8_lossy(&sent.stdout);
        serde_json::from_str(&said[said.find('{').unwrap()..]).unwrap()
    };
    let answer_id = answered["id"].as_str().unwrap();
    assert!(answer_id.starts_with("evt_"), "{answered}");
    let by_answer = daemon.cli(&["events", "show", answer_id]);
    assert_eq!(String::from_utf8_lossy(&by_answer.stdout), shown);
    assert!(
        shown.starts_with(&format!(
            "event {event_id} ({answer_id}): github/pull_request"
        )),
        "{shown}"
    );
    let out = daemon.cli(&["events", "show", "evt_nope"]);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && refused.contains("(`evt_` and 16 hex digits) or as lookups show it"),
        "{refused}"
    );
    // Broken worse, so the file is not TOML at all: the [server] table is
    // read alone, and the CLI says where the file is broken.
    let typo = std::fs::read_to_string(&daemon.config).unwrap();
    let line = typo.lines().count() + 1;
    std::fs::write(&daemon.config, format!("{typo}garbage [[[\n")).unwrap();
    let out = daemon.cli(&["events", "show", answer_id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), shown, "{said}");
    assert!(
        said.contains(&format!("routes.toml:{line}:9: ")) && said.contains("[server] table alone"),
        "{said}"
    );
    // A [server] table that is itself broken stops there, with its line.
    let server_broken = typo.replacen("[server]", "[server]\nadmin_listen = ", 1);
    std::fs::write(&daemon.config, format!("{server_broken}garbage [[[\n")).unwrap();
    let out = daemon.cli(&["events", "show", answer_id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("routes.toml:")
            && said.contains("cannot be read from it: fix the file"),
        "{said}"
    );
    std::fs::write(&daemon.config, &typo).unwrap();
    let out = daemon.cli(&[
        "queue",
        "dead",
        "replay",
        "--sink",
        "chat",
        "--since",
        "1h",
        "--dry-run",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("would replay 1 dead delivery"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon.cli(&["queue", "dead", "replay", "--sink", "chat", "--since", "1h"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1 dead delivery"));
    assert_eq!(rx.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    let out = daemon.cli(&["events", "list", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a time"));
    // The daemon stopped (or crashed): what happened is still there to
    // see, read from storage (the config fixed again: the CLI opens it).
    std::fs::write(&daemon.config, &text).unwrap();
    let config = daemon.config.clone();
    assert!(daemon.terminate().success());
    let cli = |args: &[&str]| {
        let out = cli_on(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("read from storage"), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events: Value = serde_json::from_str(&cli(&[
        "events",
        "list",
        "--delivery-id",
        "cli-1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        events[0]["id"].as_u64().unwrap().to_string(),
        event_id,
        "{events}"
    );
    let shown = cli(&["events", "show", &event_id]);
    assert!(
        shown.contains("channel_not_found") && shown.contains("\"action\""),
        "{shown}"
    );
    let delivered: Value = serde_json::from_str(&cli(&[
        "deliveries",
        "list",
        "--status",
        "delivered",
        "--json",
    ]))
    .unwrap();
    assert_eq!(delivered[0]["sink"], "chat", "{delivered}");
    // An id not stored says so; re-routing needs the daemon's routes and
    // says that.
    for (args, says) in [
        (
            &["events", "show", "999999999"][..],
            "no event with that id",
        ),
        (
            &["events", "reroute", "--since", "1h"][..],
            "no daemon answers",
        ),
    ] {
        let out = cli_on(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A fresh database on the shared cluster (its URL), or `None`: skipped.
async fn postgres_database() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        crate::support::postgres::Cluster::fresh_database().map(|(_, url)| url)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_the_api_and_the_console_find_a_failed_delivery_and_replay_it_by_filter() {
    use crate::console::{csrf_of, log_in, send_to, FORM, TOKEN, TOKEN_LINE};
    let Some(db) = postgres_database().await else {
        return;
    };
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply {
        body: "no such hook".into(),
        ..Reply::status(404)
    }]);
    let dir = tempfile::tempdir().unwrap();
    // The admin token's line joins the [server] table the helper writes.
    let sources = crate::support::postgres::pushes_to(&rx.url("/hook"), "");
    let text = format!("{TOKEN_LINE}\n{sources}");
    let d = crate::support::postgres::instance(dir.path(), &text, &db).await;
    let github = providers_of(dir.path(), &sources)["github"].clone();
    assert_eq!(
        post_push(&d.url("github"), &github, "pg-x").await,
        StatusCode::ACCEPTED
    );
    let auth = format!("Bearer {TOKEN}");
    let api = |path: String| {
        let auth = auth.clone();
        async move {
            let (status, _, body) =
                send_to(d.admin, Method::GET, &path, &[("Authorization", &auth)], "").await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            serde_json::from_str::<Value>(&body).unwrap()
        }
    };
    // The 404 makes the delivery dead at once (a permanent answer).
    let mut dead = Value::Null;
    for _ in 0..100 {
        dead = api("/api/dead?sink=capture".into()).await;
        if !dead["items"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letter = &dead["items"][0];
    assert_eq!(letter["delivery_id"], "pg-x", "{dead}");
    let dead_id = letter["id"].as_u64().unwrap();
    // What happened to delivery pg-x?
    let found = api("/api/events?delivery_id=pg-x".into()).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    let event_id = found["items"][0]["id"].as_u64().unwrap();
    let event = api(format!("/api/events/{event_id}")).await;
    assert_eq!(event["deliveries"][0]["status"], "dead", "{event}");
    assert_eq!(event["deliveries"][0]["attempts"][0]["status"], 404);
    assert!(event["payload"]["commits"].is_array(), "{event}");
    let sinks = api("/api/sinks".into()).await;
    assert_eq!(sinks[0]["dead"], 1, "{sinks}");
    // The console, on this backend: the dead letter listed, replayed by
    // filter after its count.
    let cookie = log_in(d.admin).await;
    let (status, _, page) = send_to(
        d.admin,
        Method::GET,
        "/dead?sink=capture",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!(r#"data-replay="{dead_id}""#)),
        "{page}"
    );
    let csrf = csrf_of(&page);
    let (status, _, page) = send_to(
        d.admin,
        Method::POST,
        "/dead/replay",
        &[("Cookie", &cookie), FORM],
        &format!("csrf={csrf}&sink=capture&since=10m"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Replay 1 dead delivery?"), "{page}");
    let since = crate::console::field_of(&page, "since");
    let (status, _, page) = send_to(
        d.admin,
        Method::POST,
        "/dead/replay",
        &[("Cookie", &cookie), FORM],
        &format!("csrf={csrf}&confirmed=1&sink=capture&since={since}"),
    )
    .await;
    assert!(
        page.contains("Replayed 1 dead delivery"),
        "{status}: {page}"
    );
    assert_eq!(rx.wait_for(2, Duration::from_secs(20)).await.len(), 2);
    for _ in 0..100 {
        let delivered = api("/api/deliveries?status=delivered&sink=capture".into()).await;
        if delivered["items"].as_array().unwrap().len() == 1 {
            assert_eq!(delivered["items"][0]["id"].as_u64(), Some(dead_id));
            let attempts = delivered["items"][0]["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 2, "{delivered}");
            // Re-routing the event makes nothing: its delivery exists.
            let (status, _, body) = send_to(
                d.admin,
                Method::POST,
                "/api/reroute?delivery_id=pg-x",
                &[("Authorization", &auth)],
                "",
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let done: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                (done["created"].as_u64(), done["existing"].as_u64()),
                (Some(0), Some(1)),
                "{done}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replayed delivery was not delivered");
}

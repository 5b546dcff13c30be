//! The console over the real admin listener: who gets in (the login, the
//! session cookie, `Host`), what a change needs (the session's CSRF
//! token), replay by filter counted before it runs, the sinks' health;
//! and the whole operator's path in a real headless Chromium
//! (`tests/console/flow.mjs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{header, HeaderMap, Method, StatusCode};
use serde_json::Value;

use crate::admin::with_a_dead_letter;
use crate::support::*;

pub const TOKEN_LINE: &str = r#"admin_token = { file = "{dir}/jira" }"#;
pub const TOKEN: &str = "jira-secret";
pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// One request to the admin listener at `admin`: status, headers, body
/// as text.
pub async fn send_to(
    admin: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let url = format!("http://{admin}{path}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (status, h, b) =
        hookgate::client::request(method, &url, &headers, body.as_bytes().to_vec())
            .await
            .unwrap();
    (status, h, String::from_utf8_lossy(&b).into_owned())
}

async fn send(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    send_to(gw.admin, method, path, headers, body).await
}

fn location(h: &HeaderMap) -> &str {
    h.get(header::LOCATION).map_or("", |v| v.to_str().unwrap())
}

/// Logs in; returns the `Cookie` header to send.
pub async fn log_in(admin: std::net::SocketAddr) -> String {
    let (status, h, body) = send_to(
        admin,
        Method::POST,
        "/login",
        &[FORM],
        &format!("token={TOKEN}&next=%2Fdead"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location(&h), "/dead");
    let set = h.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

/// The value of the first form field `name` in `page`.
pub fn field_of(page: &str, name: &str) -> String {
    let start = format!(r#"name="{name}" value=""#);
    let at = page
        .find(&start)
        .unwrap_or_else(|| panic!("no field {name}: {page}"));
    page[at + start.len()..]
        .split('"')
        .next()
        .unwrap()
        .to_owned()
}

/// The CSRF token a page's forms carry.
pub fn csrf_of(page: &str) -> String {
    field_of(page, "csrf")
}

async fn dead_count(gw: &TestGateway) -> usize {
    let auth = format!("Bearer {TOKEN}");
    let (_, _, body) = send(
        gw,
        Method::GET,
        "/api/dead",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    let page: Value = serde_json::from_str(&body).unwrap();
    page["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn the_console_needs_a_login_and_each_change_the_sessions_csrf_token() {
    let (gw, rx, id) = with_a_dead_letter(TOKEN_LINE).await;
    // Not in: every page sends to the login form, which comes back here.
    let (status, h, _) = send(&gw, Method::GET, "/dead?sink=chat", &[], "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&h), "/login?next=%2Fdead%3Fsink%3Dchat");
    let (status, h, body) = send(&gw, Method::GET, "/login?next=%2Fdead", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    // minijinja escapes `/` too.
    assert!(body.contains(r#"name="next" value="&#x2f;dead""#), "{body}");
    let csp = h
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    // A wrong token: refused, slowly, with what to do; no cookie.
    let started = std::time::Instant::now();
    let (status, h, body) = send(&gw, Method::POST, "/login", &[FORM], "token=guess").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("not the admin token"), "{body}");
    assert!(h.get(header::SET_COOKIE).is_none());
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A login form posted by another site's page.
    let (status, h, _) = send(
        &gw,
        Method::POST,
        "/login",
        &[FORM, ("Origin", "http://evil.example")],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(h.get(header::SET_COOKIE).is_none());
    // An open redirect is not: `next` stays on this listener.
    let (_, h, _) = send(
        &gw,
        Method::POST,
        "/login",
        &[FORM],
        &format!("token={TOKEN}&next=%2F%2Fevil.example%2F"),
    )
    .await;
    assert_eq!(location(&h), "/");

    let cookie = log_in(gw.admin).await;
    let with_cookie = [("Cookie", cookie.as_str())];
    let (status, _, page) = send(&gw, Method::GET, "/dead", &with_cookie, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&format!(r#"data-replay="{id}""#)), "{page}");
    let csrf = csrf_of(&page);
    // The cookie does not open the listener to another name (rebinding).
    let port = gw.admin.port();
    let evil = format!("evil.example:{port}");
    let (status, _, _) = send(
        &gw,
        Method::GET,
        "/dead",
        &[("Cookie", &cookie), ("Host", &evil)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    // A cookie this daemon did not sign is no login.
    let forged = hookgate::console::session::Sessions::new(Some(&hookgate::secret::Secret::new(
        "another-token",
    )))
    .issue(hookgate::console::session::now_s());
    let (status, _, _) = send(
        &gw,
        Method::GET,
        "/",
        &[("Cookie", &format!("hookgate_session={forged}"))],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    // Changes with the cookie but without its CSRF token: refused, and the
    // letter stays dead.
    let replay = format!("/dead/{id}/replay");
    for body in ["", "csrf=", "csrf=0123456789abcdef0123456789abcdef"] {
        let (status, _, page) = send(
            &gw,
            Method::POST,
            &replay,
            &[("Cookie", &cookie), FORM],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {page}");
        assert!(page.contains("reload the page"), "{page}");
    }
    let api = format!("/api/dead/{id}/replay");
    let (status, _, _) = send(
        &gw,
        Method::POST,
        &api,
        &[("Cookie", &cookie), (hookgate::admin::CSRF_HEADER, "1")],
        "",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the API's `1` is no session token"
    );
    assert_eq!(dead_count(&gw).await, 1);
    assert_eq!(rx.received().len(), 1);
    // With it: replayed, and delivered.
    let (status, _, page) = send(
        &gw,
        Method::POST,
        &replay,
        &[("Cookie", &cookie), FORM],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Replayed 1 dead delivery"), "{page}");
    assert_eq!(rx.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    // The same token in the header works for the API (the console's script).
    let (status, _, body) = send(
        &gw,
        Method::POST,
        &api,
        &[("Cookie", &cookie), (hookgate::admin::CSRF_HEADER, &csrf)],
        "",
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing dead any more: {body}"
    );
    // Logging out clears the cookie.
    let (status, h, _) = send(
        &gw,
        Method::POST,
        "/logout",
        &[("Cookie", &cookie), FORM],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!((status, location(&h)), (StatusCode::SEE_OTHER, "/login"));
    let cleared = h.get(header::SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

#[tokio::test]
async fn a_replay_by_filter_shows_the_count_then_replays_exactly_that() {
    let (gw, rx, _) = with_a_dead_letter(TOKEN_LINE).await;
    // The sink is disabled now ("gone"): the next event's delivery dies at once.
    let signed = gw.sign("github", "ping", &sample("github", "ping"), "csrf-2");
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    gw.wait_dead(2).await;
    let cookie = log_in(gw.admin).await;
    // An event's page opens by the id its 202 answer gave, and shows it.
    let auth = format!("Bearer {TOKEN}");
    let (_, _, dead) = send(
        &gw,
        Method::GET,
        "/api/dead",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    let event_id = serde_json::from_str::<Value>(&dead).unwrap()["items"][0]["event_id"]
        .as_u64()
        .unwrap();
    let answer_id = format!("evt_{event_id:016x}");
    let (status, _, page) = send(
        &gw,
        Method::GET,
        &format!("/events/{answer_id}"),
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!(
            "{event_id} <span class=\"muted\">({answer_id}, as the 202 answer gave it)"
        )),
        "{page}"
    );
    let (status, _, page) = send(
        &gw,
        Method::GET,
        "/events/evt_zz",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("16 hex digits"), "{page}");
    let (_, _, page) = send(
        &gw,
        Method::GET,
        "/dead?sink=chat",
        &[("Cookie", &cookie)],
        "",
    )
    .await;
    let csrf = csrf_of(&page);
    let (status, _, page) = send(
        &gw,
        Method::POST,
        "/dead/replay",
        &[("Cookie", &cookie), FORM],
        &format!("csrf={csrf}&sink=chat&since=1h"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Replay 2 dead deliveries?"), "{page}");
    // `1h` is fixed to the moment the count was made.
    let since = field_of(&page, "since");
    assert!(since.ends_with('Z') && since.contains('T'), "{since}");
    assert_eq!(dead_count(&gw).await, 2, "counting replays nothing");
    let confirmed = format!("csrf={csrf}&confirmed=1&sink=chat&since={since}");
    let (status, _, page) = send(
        &gw,
        Method::POST,
        "/dead/replay",
        &[("Cookie", &cookie), FORM],
        &confirmed,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Replayed 2 dead deliveries"), "{page}");
    assert_eq!(rx.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    assert_eq!(dead_count(&gw).await, 0);
}

#[tokio::test]
async fn the_sinks_health_says_what_is_failing_and_why() {
    let (gw, _rx, id) = with_a_dead_letter(TOKEN_LINE).await;
    let auth = format!("Bearer {TOKEN}");
    let health = || async {
        let (status, _, body) = send(
            &gw,
            Method::GET,
            "/api/sinks",
            &[("Authorization", &auth)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let all: Value = serde_json::from_str(&body).unwrap();
        all.as_array().unwrap()[0].clone()
    };
    let chat = health().await;
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["enabled"], false, "{chat}");
    let why = chat["disabled_reason"].as_str().unwrap();
    assert!(
        why.contains("channel_not_found") && why.contains("replay"),
        "{why}"
    );
    assert_eq!(chat["dead"], 1);
    assert_eq!(chat["failed_5m"], 1);
    assert_eq!(chat["recent_failures"][0]["delivery"], id);
    assert_eq!(chat["recent_failures"][0]["status"], 404);
    let (status, _, body) = send(
        &gw,
        Method::POST,
        &format!("/api/dead/{id}/replay"),
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for _ in 0..100 {
        let chat = health().await;
        if chat["delivered_5m"] == 1 {
            assert_eq!(chat["enabled"], true, "{chat}");
            assert_eq!(chat["dead"], 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the replayed delivery was not counted: {}", health().await);
}

/// What the browser test needs, or why it cannot run here.
fn browser_kit() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(
        std::env::var("HOOKGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !chromium.exists() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    if !dir.join("node_modules/playwright-core").exists() {
        return Err("playwright-core is not installed: run `npm ci` in tests/console".into());
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("no node on PATH".into());
    }
    Ok((chromium, dir))
}

#[tokio::test]
async fn an_operator_finds_a_failed_delivery_replays_it_and_sees_it_delivered_in_chromium() {
    let (chromium, dir) = match browser_kit() {
        Ok(kit) => kit,
        Err(why) if std::env::var("HOOKGATE_REQUIRE_BROWSER").as_deref() != Ok("1") => {
            eprintln!("skipped: {why} (HOOKGATE_REQUIRE_BROWSER=1 makes this a failure)");
            return;
        }
        Err(why) => panic!("{why}"),
    };
    let (gw, rx, id) = with_a_dead_letter(TOKEN_LINE).await;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let secret = SECRETS.iter().find(|(n, _)| *n == "github").unwrap().1;
    let log = shots.join("flow.log");
    let mut child = std::process::Command::new("node")
        .arg(dir.join("flow.mjs"))
        .env("HG_ADMIN", format!("http://{}", gw.admin))
        .env("HG_TOKEN", TOKEN)
        .env("HG_DELIVERY", "csrf-1")
        .env("HG_DEAD", id.to_string())
        .env("HG_INGRESS", gw.url("github"))
        .env("HG_SECRET", secret)
        .env("HG_SHOTS", &shots)
        .env("HG_CHROMIUM", &chromium)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    // The daemon runs on this test's runtime: wait without blocking it.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the browser flow took over 150 s: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    // What the browser did reached the platform: the replay was sent.
    assert!(rx.received().len() >= 2);
    for page in [
        "login",
        "events",
        "event",
        "sinks",
        "dead",
        "confirm",
        "replayed",
        "delivered",
        "tail",
    ] {
        let png = shots.join(format!("{page}.png"));
        let len = std::fs::metadata(&png).map_or(0, |m| m.len());
        assert!(len > 10_000, "{} is {len} bytes", png.display());
    }
}

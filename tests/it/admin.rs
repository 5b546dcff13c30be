//! The admin listener against a browser used as a weapon: DNS rebinding
//! (a foreign `Host`), cross-site changes (CSRF), and the bearer token's
//! scheme, over the real listener.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// A request to the admin listener with exactly these extra headers.
pub async fn admin(
    gw: &TestGateway,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let url = format!("http://{}{path}", gw.admin);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (status, _, body) = hookgate::client::request(method, &url, &headers, Vec::new())
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_rebound_name_cannot_read_the_admin_api() {
    let gw = TestGateway::start("admin_hosts = [\"hookgate.test\"]", ALL_SOURCES).await;
    let port = gw.admin.port();
    // The page at http://evil.example:PORT resolved its name to 127.0.0.1.
    for host in [format!("evil.example:{port}"), "evil.example".into()] {
        for path in ["/api/queue/stats", "/api/dead", "/metrics", "/healthz"] {
            let (status, body) = admin(&gw, Method::GET, path, &[("Host", &host)]).await;
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}{path}");
            assert!(body.contains("server.admin_hosts"), "{body}");
        }
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("hookgate.test:{port}"),
    ] {
        let (status, body) = admin(&gw, Method::GET, "/api/queue/stats", &[("Host", &host)]).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
}

/// A dead letter to aim at: a Slack sink that answers `channel_not_found`.
pub async fn with_a_dead_letter(server: &str) -> (TestGateway, Receiver, u64) {
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
name = "all"
source = "github"
to = ["chat"]
"#,
        rx.url("/services/x")
    );
    let gw = TestGateway::start(server, &sources).await;
    let signed = gw.sign("github", "ping", &sample("github", "ping"), "csrf-1");
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    let dead = gw.wait_dead(1).await;
    assert_eq!(dead.len(), 1, "the delivery went dead");
    let id = dead[0].id;
    (gw, rx, id)
}

#[tokio::test]
async fn a_web_page_cannot_replay_dead_letters() {
    let (gw, rx, id) = with_a_dead_letter("").await;
    let one = format!("/api/dead/{id}/replay");
    let host = format!("127.0.0.1:{}", gw.admin.port());
    // What a page can send without a preflight: a form POST, with or
    // without Origin, and a fetch() that says where it came from.
    let attacks: [&[(&str, &str)]; 5] = [
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
        ],
        &[("Origin", "null")],
        &[
            ("Sec-Fetch-Site", "cross-site"),
            (hookgate::admin::CSRF_HEADER, "1"),
        ],
        &[
            ("Origin", "http://localhost:3000"),
            (hookgate::admin::CSRF_HEADER, "1"),
        ],
    ];
    for headers in attacks {
        for path in [one.as_str(), "/api/dead/replay"] {
            let (status, body) = admin(&gw, Method::POST, path, headers).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {body}");
        }
    }
    // A rebound name with the header is still a foreign Host.
    let (status, _) = admin(
        &gw,
        Method::POST,
        &one,
        &[
            ("Host", "evil.example"),
            (hookgate::admin::CSRF_HEADER, "1"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    let (_, body) = admin(&gw, Method::POST, &one, &[]).await;
    assert!(body.contains("X-Hookgate-CSRF"), "{body}");
    assert_eq!(
        gw.queue.dead_letters().unwrap().len(),
        1,
        "nothing replayed"
    );

    // A tool (the CLI) declares itself; its own origin may too.
    let origin = format!("http://{host}");
    let (status, body) = admin(
        &gw,
        Method::POST,
        &one,
        &[(hookgate::admin::CSRF_HEADER, "1"), ("Origin", &origin)],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"replayed":1,"refused":[]}"#)
    );
    assert_eq!(rx.wait_for(2, Duration::from_secs(10)).await.len(), 2);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_proves_a_change() {
    let (gw, _rx, id) = with_a_dead_letter(r#"admin_token = { file = "{dir}/jira" }"#).await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} jira-secret");
        let (status, body) =
            admin(&gw, Method::GET, "/api/dead", &[("Authorization", &auth)]).await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }
    // A wrong token and none are told apart.
    for (auth, says, challenge) in [
        (
            Some("Bearer jira-secre"),
            "the bearer token is not server.admin_token",
            r#"Bearer error="invalid_token""#,
        ),
        (
            None,
            "this needs `Authorization: Bearer <server.admin_token>`",
            "Bearer",
        ),
    ] {
        let url = format!("http://{}/api/dead", gw.admin);
        let headers: Vec<(String, String)> = auth
            .map(|a| ("Authorization".to_owned(), a.to_owned()))
            .into_iter()
            .collect();
        let (status, h, body) = hookgate::client::request(Method::GET, &url, &headers, Vec::new())
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains(says), "{body}");
        assert_eq!(h.get(http::header::WWW_AUTHENTICATE).unwrap(), challenge);
    }
    // The token is what a page cannot have: it suffices for a change, but
    // a cross-site origin is refused even with it.
    let path = format!("/api/dead/{id}/replay");
    let auth = ("Authorization", "bearer jira-secret");
    let (status, _) = admin(
        &gw,
        Method::POST,
        &path,
        &[auth, ("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = admin(&gw, Method::POST, &path, &[auth]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"replayed":1,"refused":[]}"#)
    );
}

/// A path the API does not have is a 404 that says where the API's paths
/// are listed; a path it has, asked with another method, is a 405 that
/// says (and `Allow` says) which one it answers.
#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let gw = TestGateway::start("", ALL_SOURCES).await;
    let ask = |method: Method, path: &str| {
        let url = format!("http://{}{path}", gw.admin);
        let headers = vec![("X-Hookgate-CSRF".to_owned(), "1".to_owned())];
        async move {
            let (status, h, body) = hookgate::client::request(method, &url, &headers, Vec::new())
                .await
                .unwrap();
            let allow = h
                .get(http::header::ALLOW)
                .map(|v| v.to_str().unwrap().to_owned());
            (status, allow, String::from_utf8_lossy(&body).into_owned())
        }
    };
    for path in [
        "/api/nope",
        "/api",
        "/api/deadx",
        "/api/events/1/x",
        "/metrics/x",
        "/api/queue",
    ] {
        for method in [Method::GET, Method::POST] {
            let (status, allow, body) = ask(method.clone(), path).await;
            assert_eq!(
                (status, allow),
                (StatusCode::NOT_FOUND, None),
                "{method} {path}: {body}"
            );
            assert!(body.contains("/api/openapi.json lists"), "{body}");
        }
    }
    for (method, path, allowed) in [
        (Method::POST, "/api/events", "GET, HEAD"),
        (Method::DELETE, "/api/events/1", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
        (Method::GET, "/api/dead/replay", "POST"),
        (Method::HEAD, "/api/dead/7/replay", "POST"),
        (Method::GET, "/api/reroute", "POST"),
        (Method::PUT, "/api/dead/7", "GET, HEAD"),
    ] {
        let (status, allow, body) = ask(method.clone(), path).await;
        assert_eq!(
            (status, allow.as_deref()),
            (StatusCode::METHOD_NOT_ALLOWED, Some(allowed)),
            "{method} {path}: {body}"
        );
        if method != Method::HEAD {
            let only = allowed.split(',').next().unwrap();
            assert!(
                body.contains(&format!("{path} answers {only} only")),
                "{body}"
            );
        }
    }
    // HEAD is answered wherever GET is, with GET's status and no body.
    for path in ["/healthz", "/api/queue/stats", "/metrics", "/api/events"] {
        let (status, _, body) = ask(Method::HEAD, path).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""), "HEAD {path}");
    }
}

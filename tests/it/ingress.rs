//! Every answer of `POST /hooks/{source}`, for every provider, over real
//! sockets.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hookgate::config::{self, secrets::Resolver, Proof};
use hookgate::samples::with_delivery_id;
use hookgate::verify::{Provider, SignInput, Signed};

use crate::support::*;

/// (source, provider, event passed to the signer, body, expected event type).
fn deliveries(
    id: &str,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
)> {
    let s = |p: &str, e: &str| with_delivery_id(p, &sample(p, e), id);
    vec![
        ("github", "github", "push", s("github", "push"), "push"),
        ("gitlab", "gitlab", "push", s("gitlab", "push"), "push"),
        (
            "gitlab-signed",
            "gitlab",
            "pipeline",
            s("gitlab", "pipeline"),
            "pipeline",
        ),
        (
            "jira",
            "jira",
            "issue_updated",
            s("jira", "issue_updated"),
            "jira:issue_updated",
        ),
        (
            "figma",
            "figma",
            "FILE_COMMENT",
            s("figma", "FILE_COMMENT"),
            "FILE_COMMENT",
        ),
        (
            "zendesk",
            "zendesk",
            "ticket.created",
            s("zendesk", "ticket.created"),
            "zen:event-type:ticket.created",
        ),
        (
            "intercom",
            "intercom",
            "conversation.user.created",
            s("intercom", "conversation.user.created"),
            "conversation.user.created",
        ),
        (
            "standard",
            "standard",
            "invoice.paid",
            br#"{"type":"invoice.paid","timestamp":"2026-11-27T00:00:00Z","data":{"id":1}}"#
                .to_vec(),
            "invoice.paid",
        ),
    ]
}

#[tokio::test]
async fn every_provider_queues_once_and_answers_duplicates_with_200() {
    let gw = TestGateway::all().await;
    for (source, _, event, body, _) in deliveries("first") {
        let signed = gw.sign(source, event, &body, &format!("{source}-first"));
        let (status, answer) = gw.post(source, &signed).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{source}: {answer}");
        assert!(
            answer.contains(r#""status":"queued""#),
            "{source}: {answer}"
        );
        let (status, again) = gw.post(source, &signed).await;
        assert_eq!(status, StatusCode::OK, "{source} replay: {again}");
        assert!(again.contains(r#""status":"duplicate""#));
        // The duplicate names the event the first copy created.
        assert_eq!(
            answer.split('"').nth(3),
            again.split('"').nth(3),
            "{source}"
        );
    }
    let inbox = gw.events();
    assert_eq!(inbox.len(), 8);
    for ((source, provider, _, body, event_type), record) in
        deliveries("first").into_iter().zip(&inbox)
    {
        assert_eq!(record.source, source);
        assert_eq!(record.provider, provider);
        assert_eq!(record.event, event_type, "{source}");
        assert_eq!(record.client_ip, "127.0.0.1");
        // Byte for byte; for Figma, with the passcode the signer put in
        // blanked again: no secret is stored.
        assert_eq!(record.body, body, "{source}: body stored byte for byte");
        assert!(!record.delivery_id.is_empty(), "{source} has a delivery id");
    }
    let figma = inbox.iter().find(|r| r.source == "figma").unwrap();
    assert!(!String::from_utf8_lossy(&figma.body).contains("figma-passcode"));
    // GitLab's token never reaches the disk.
    let gitlab = inbox.iter().find(|r| r.source == "gitlab").unwrap();
    assert!(gitlab.headers.iter().all(|(k, _)| k != "x-gitlab-token"));
    gw.stop().await;
}

/// Providers built from the same config but other secrets.
fn impostors() -> std::collections::HashMap<String, std::sync::Arc<dyn Provider>> {
    let dir = tempfile::tempdir().unwrap();
    let text = with_secrets(dir.path(), ALL_SOURCES);
    for (name, _) in SECRETS {
        let wrong = if name.contains("signing") || *name == "standard" {
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        } else {
            "not-the-secret"
        };
        std::fs::write(dir.path().join(name), wrong).unwrap();
    }
    let c = config::parse(&text, &Resolver::default()).unwrap().config;
    c.sources
        .values()
        .map(|s| match &s.proof {
            Proof::Ready(p) => (s.name.clone(), p.clone()),
            Proof::Closed(r) => panic!("{r}"),
        })
        .collect()
}

#[tokio::test]
async fn wrong_secret_tampered_body_and_missing_proof_are_401() {
    let gw = TestGateway::all().await;
    let impostors = impostors();
    // The header that carries each provider's proof.
    let proof_header = |source: &str| match source {
        "github" => vec!["X-Hub-Signature-256", "X-Hub-Signature"],
        "gitlab" => vec!["X-Gitlab-Token"],
        "gitlab-signed" => vec!["webhook-signature"],
        "jira" | "intercom" => vec!["X-Hub-Signature"],
        "zendesk" => vec!["X-Zendesk-Webhook-Signature"],
        "standard" => vec!["webhook-signature"],
        _ => vec![],
    };
    for (source, _, event, body, _) in deliveries("bad") {
        let id = format!("{source}-bad");
        let forged = impostors[source].sign(&SignInput {
            body: &body,
            event,
            delivery_id: &id,
            now: SystemTime::now(),
        });
        let (status, _) = gw.post(source, &forged).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{source}: wrong secret");

        // GitLab's token and Figma's passcode prove the sender, not the
        // body: only signing schemes can catch tampering.
        if !matches!(source, "gitlab" | "figma") {
            let mut tampered = gw.sign(source, event, &body, &id);
            let at = tampered.body.len() / 2;
            tampered.body[at] ^= 0x01;
            let (status, _) = gw.post(source, &tampered).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{source}: tampered body");
        }

        let mut missing = gw.sign(source, event, &body, &id);
        if source == "figma" {
            missing.body = body.clone(); // the sample's passcode is empty
        }
        for h in proof_header(source) {
            remove_header(&mut missing, h);
        }
        let (status, _) = gw.post(source, &missing).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{source}: missing proof");
    }
    assert!(gw.events().is_empty(), "nothing unproven is stored");
}

#[tokio::test]
async fn timestamps_outside_the_window_are_401() {
    let gw = TestGateway::all().await;
    for (source, _, event, body, _) in deliveries("stale") {
        if !matches!(source, "zendesk" | "gitlab-signed" | "standard") {
            continue;
        }
        for offset in [-600i64, 600] {
            let at = if offset < 0 {
                SystemTime::now() - Duration::from_secs(600)
            } else {
                SystemTime::now() + Duration::from_secs(600)
            };
            let signed = gw.sign_at(source, event, &body, &format!("{source}{offset}"), at);
            let (status, _) = gw.post(source, &signed).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{source} at {offset:+}s");
        }
        // Within the window is fine.
        let signed = gw.sign_at(
            source,
            event,
            &body,
            &format!("{source}-ok"),
            SystemTime::now() - Duration::from_secs(60),
        );
        assert_eq!(
            gw.post(source, &signed).await.0,
            StatusCode::ACCEPTED,
            "{source}"
        );
    }
}

#[tokio::test]
async fn replay_with_a_bad_signature_is_401_never_200() {
    let gw = TestGateway::all().await;
    let body = sample("github", "push");
    let signed = gw.sign("github", "push", &body, "replayed");
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    let mut forged = signed.clone();
    forged.body.extend_from_slice(b" ");
    assert_eq!(gw.post("github", &forged).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bodies_the_provider_would_not_send_are_400() {
    let gw = TestGateway::all().await;
    for source in ["github", "gitlab", "jira", "zendesk", "intercom"] {
        let signed = gw.sign(source, "push", b"{not json", &format!("{source}-garbage"));
        let (status, answer) = gw.post(source, &signed).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{source}: {answer}");
    }
    // Valid JSON without the field that names the event.
    for source in ["jira", "intercom"] {
        let signed = gw.sign(source, "x", br#"{"id":"notif_1"}"#, "no-event");
        assert_eq!(
            gw.post(source, &signed).await.0,
            StatusCode::BAD_REQUEST,
            "{source}"
        );
    }
    let mut signed = gw.sign(
        "github",
        "push",
        &sample("github", "push"),
        "no-event-header",
    );
    remove_header(&mut signed, "X-GitHub-Event");
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::BAD_REQUEST);
    // Envelope headers that are not text are refused, not taken for
    // absent; fields longer than hookgate keeps are refused with their
    // length (1,024 bytes pass).
    let long = "d".repeat(1025);
    let event = "e".repeat(1025);
    for (header, value, says) in [
        (
            "X-GitHub-Event",
            "pi\u{e9}ng",
            "X-GitHub-Event header is not text",
        ),
        (
            "X-GitHub-Delivery",
            "\u{e9}t\u{e9}",
            "X-GitHub-Delivery header is not text",
        ),
        (
            "X-GitHub-Delivery",
            long.as_str(),
            "the delivery id is 1025 bytes: hookgate keeps at most 1024",
        ),
        (
            "X-GitHub-Event",
            event.as_str(),
            "the event type is 1025 bytes",
        ),
    ] {
        let mut signed = gw.sign("github", "push", &sample("github", "push"), "shape");
        set_header(&mut signed, header, value);
        let (status, answer) = gw.post("github", &signed).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}: {answer}");
        assert!(answer.contains(says), "{header}: {answer}");
    }
    // Figma's passcode is inside the body: unreadable body, unproven request.
    let figma = gw.sign("figma", "FILE_COMMENT", b"{not json", "f");
    assert_eq!(gw.post("figma", &figma).await.0, StatusCode::UNAUTHORIZED);
    // The other providers' id headers, when not text.
    for (source, event, header) in [
        ("gitlab", "push", "Idempotency-Key"),
        (
            "jira",
            "jira:issue_updated",
            "X-Atlassian-Webhook-Identifier",
        ),
        ("zendesk", "trigger", "X-Zendesk-Webhook-Invocation-Id"),
    ] {
        let body = hookgate::samples::find(source, event).map_or_else(
            || br#"{"type":"trigger"}"#.to_vec(),
            |s| s.as_bytes().to_vec(),
        );
        let mut signed = gw.sign(source, event, &body, "shape");
        set_header(&mut signed, header, "\u{e9}t\u{e9}");
        let (status, answer) = gw.post(source, &signed).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{source}: {answer}");
        assert!(
            answer.contains(&format!("{header} header is not text")),
            "{source}: {answer}"
        );
    }
    assert!(gw.events().is_empty());
    let mut signed = gw.sign(
        "github",
        "push",
        &sample("github", "push"),
        &"d".repeat(1024),
    );
    set_header(&mut signed, "X-GitHub-Event", &"e".repeat(1024));
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn github_form_encoded_delivery_is_accepted() {
    let gw = TestGateway::all().await;
    let json = sample("github", "issues");
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish();
    let mut signed = gw.sign("github", "issues", body.as_bytes(), "form-1");
    set_header(
        &mut signed,
        "Content-Type",
        "application/x-www-form-urlencoded",
    );
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    let inbox = gw.events();
    assert_eq!(inbox[0].event, "issues");
    assert_eq!(inbox[0].body, body.as_bytes(), "the raw form body is kept");
    // A form without `payload` is not what GitHub sends.
    let mut bad = gw.sign("github", "issues", b"other=1", "form-2");
    set_header(
        &mut bad,
        "Content-Type",
        "application/x-www-form-urlencoded",
    );
    assert_eq!(gw.post("github", &bad).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_source_is_404_and_other_methods_405() {
    let gw = TestGateway::all().await;
    assert_eq!(
        gw.request(Method::POST, "nope", &[], b"{}".to_vec())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gw.request(Method::GET, "nope", &[], vec![]).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _, _) = hookgate::client::request(
        Method::POST,
        &format!("http://{}/elsewhere", gw.addr),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) =
        hookgate::client::request(Method::GET, &gw.url("github"), &[], vec![])
            .await
            .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
}

#[tokio::test]
async fn oversize_body_is_413_declared_or_streamed() {
    let gw = TestGateway::start("max_body_bytes = 4096", ALL_SOURCES).await;
    let big = vec![b' '; 5000];
    let signed = gw.sign("github", "push", &big, "big");
    assert_eq!(
        gw.post("github", &signed).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Chunked, so no Content-Length warns us: the cap applies while streaming.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..5 {
        let _ = conn.write_all(b"400\r\n").await;
        let _ = conn.write_all(&[b' '; 0x400]).await;
        let _ = conn.write_all(b"\r\n").await;
    }
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    assert!(gw.events().is_empty());
}

#[tokio::test]
async fn allowlist_and_forwarded_for() {
    let sources = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
allow_ips = ["192.30.252.0/22", "2a0a:a440::/29"]
"#;
    let body = sample("github", "push");
    let xff = |signed: &Signed, ip: &str| {
        let mut s = signed.clone();
        set_header(&mut s, "X-Forwarded-For", ip);
        s
    };

    // No trusted proxy: the socket peer (127.0.0.1) is the client.
    let direct = TestGateway::start("", sources).await;
    let signed = direct.sign("github", "push", &body, "ip-1");
    assert_eq!(
        direct.post("github", &signed).await.0,
        StatusCode::FORBIDDEN
    );
    let spoofed = xff(&signed, "192.30.252.1");
    assert_eq!(
        direct.post("github", &spoofed).await.0,
        StatusCode::FORBIDDEN,
        "X-Forwarded-For from an untrusted peer is ignored"
    );

    // Behind a trusted proxy on loopback: the rightmost untrusted hop counts.
    let proxied = TestGateway::start(r#"trusted_proxies = ["127.0.0.1/32"]"#, sources).await;
    let signed = proxied.sign("github", "push", &body, "ip-2");
    assert_eq!(
        proxied.post("github", &signed).await.0,
        StatusCode::FORBIDDEN,
        "no header: the proxy itself"
    );
    assert_eq!(
        proxied.post("github", &xff(&signed, "8.8.8.8")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        proxied
            .post("github", &xff(&signed, "192.30.252.1, 8.8.8.8"))
            .await
            .0,
        StatusCode::FORBIDDEN,
        "a client-written first hop does not help"
    );
    assert_eq!(
        proxied
            .post("github", &xff(&signed, "2a0a:a440::1"))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let signed = proxied.sign("github", "push", &body, "ip-3");
    assert_eq!(
        proxied
            .post("github", &xff(&signed, "8.8.8.8, 192.30.252.1"))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let inbox = proxied.events();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0].client_ip, "2a0a:a440::1");
    assert_eq!(inbox[1].client_ip, "192.30.252.1");
}

#[tokio::test]
async fn source_without_its_secret_is_closed_503() {
    let sources = r#"
[sources.github]
provider = "github"
secret = { env = "HOOKGATE_IT_NEVER_SET" }
"#;
    let gw = TestGateway::start("", sources).await;
    let signed = Signed {
        headers: vec![
            ("X-GitHub-Event".into(), "push".into()),
            (
                "X-Hub-Signature-256".into(),
                format!("sha256={}", "0".repeat(64)),
            ),
        ],
        body: sample("github", "push"),
    };
    assert_eq!(
        gw.post("github", &signed).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(gw.events().is_empty());
}

/// GitHub with a budget of two deliveries a minute.
const RATE_LIMITED: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
rate_limit = "2/m"
"#;

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let gw = TestGateway::start("", RATE_LIMITED).await;
    let body = sample("github", "ping");
    for i in 0..2 {
        let s = gw.sign("github", "ping", &body, &format!("r{i}"));
        assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
    }
    let s = gw.sign("github", "ping", &body, "r3");
    let (status, headers, _) =
        hookgate::client::request(Method::POST, &gw.url("github"), &s.headers, s.body.clone())
            .await
            .unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
}

/// Unsigned requests answer 401 and leave the budget to the provider's own.
#[tokio::test]
async fn unproven_requests_do_not_spend_the_rate_limit() {
    let gw = TestGateway::start("", RATE_LIMITED).await;
    let body = sample("github", "ping");
    for i in 0..5 {
        let mut forged = gw.sign("github", "ping", &body, &format!("f{i}"));
        forged.body.push(b' ');
        assert_eq!(gw.post("github", &forged).await.0, StatusCode::UNAUTHORIZED);
    }
    for i in 0..2 {
        let s = gw.sign("github", "ping", &body, &format!("ok{i}"));
        assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
    }
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let gw = TestGateway::start(
        "header_timeout = \"1s\"\nrequest_timeout = \"1s\"",
        ALL_SOURCES,
    )
    .await;
    // Headers that never end (slowloris).
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the server must hang up on its own")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");

    // A body that trickles: headers complete, body never does.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the server must answer on its own")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn admin_reports_health_and_counts() {
    let gw = TestGateway::all().await;
    for i in 0..3 {
        let s = gw.sign(
            "github",
            "ping",
            &sample("github", "ping"),
            &format!("a{i}"),
        );
        assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
    }
    let get = |path: &str| {
        let url = format!("http://{}{path}", gw.admin);
        async move {
            hookgate::client::request(Method::GET, &url, &[], vec![])
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/healthz").await.0, StatusCode::OK);
    assert_eq!(get("/readyz").await.0, StatusCode::OK);
    // No routes: the router moves the events to `unmatched` promptly.
    let mut stats = hookgate::queue::Stats::default();
    for _ in 0..100 {
        let (status, _, body) = get("/api/queue/stats").await;
        assert_eq!(status, StatusCode::OK);
        stats = serde_json::from_slice(&body).unwrap();
        if stats.unmatched == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((stats.inbox, stats.unmatched, stats.seen), (0, 3, 3));
}

#[tokio::test]
async fn events_without_a_delivery_id_dedupe_on_the_body_hash() {
    let gw = TestGateway::all().await;
    let body = sample("jira", "issue_updated");
    let mut a = gw.sign("jira", "issue_updated", &body, "x");
    remove_header(&mut a, "X-Atlassian-Webhook-Identifier");
    assert_eq!(gw.post("jira", &a).await.0, StatusCode::ACCEPTED);
    assert_eq!(gw.post("jira", &a).await.0, StatusCode::OK);
    let mut other = body.clone();
    other.push(b'\n');
    let mut b = gw.sign("jira", "issue_updated", &other, "x");
    remove_header(&mut b, "X-Atlassian-Webhook-Identifier");
    assert_eq!(gw.post("jira", &b).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn connection_limit_holds_new_clients_until_a_slot_frees() {
    let gw = TestGateway::start("max_connections = 1\nheader_timeout = \"1s\"", ALL_SOURCES).await;
    // One client takes the only slot and sends nothing.
    let mut hog = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    hog.write_all(b"POST /hooks/github HTTP/1.1\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let signed = gw.sign("github", "ping", &sample("github", "ping"), "after-hog");
    let (status, _) = tokio::time::timeout(Duration::from_secs(10), gw.post("github", &signed))
        .await
        .expect("served once the slow client is cut off");
    assert_eq!(status, StatusCode::ACCEPTED);
    // It waited for the header timeout to free the slot, not longer.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn admin_api_wants_its_bearer_token_when_one_is_set() {
    let gw = TestGateway::start(r#"admin_token = { file = "{dir}/jira" }"#, ALL_SOURCES).await;
    let get = |path: &str, token: Option<&str>| {
        let url = format!("http://{}{path}", gw.admin);
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("Authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default();
        async move {
            hookgate::client::request(Method::GET, &url, &headers, vec![])
                .await
                .unwrap()
        }
    };
    assert_eq!(
        get("/healthz", None).await.0,
        StatusCode::OK,
        "probes need no token"
    );
    assert_eq!(get("/readyz", None).await.0, StatusCode::OK);
    let (status, headers, _) = get("/api/queue/stats", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(
        get("/metrics", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/api/queue/stats", Some("jira-secret")).await.0,
        StatusCode::OK
    );
    assert_eq!(get("/metrics", Some("jira-secret")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn tls_listener_accepts_signed_webhooks_over_https() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let server = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        fixtures.join("cert.pem").display(),
        fixtures.join("key.pem").display()
    );
    let gw = TestGateway::start(&server, ALL_SOURCES).await;
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(fixtures.join("cert.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap();
    let signed = gw.sign("github", "push", &sample("github", "push"), "tls-1");
    let mut req = client.post(format!("https://localhost:{}/hooks/github", gw.addr.port()));
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let resp = req.body(signed.body.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(gw.events().len(), 1);
    // Plain HTTP on the TLS port gets no answer.
    assert!(hookgate::client::request(
        Method::POST,
        &gw.url("github"),
        &signed.headers,
        signed.body.clone()
    )
    .await
    .is_err());
}

/// Issue #8 item 10: bodies that stall or trickle held a connection for the
/// whole `request_timeout`, so a few clients could stall the server.
#[tokio::test]
async fn a_stalled_or_trickling_body_is_cut_off_long_before_request_timeout() {
    let gw = TestGateway::start(
        "max_connections = 8\nrequest_timeout = \"30s\"",
        ALL_SOURCES,
    )
    .await;
    let headers = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n";
    let started = std::time::Instant::now();
    // Seven clients send headers and no body; an eighth trickles it.
    let mut stalled = Vec::new();
    for _ in 0..7 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        conn.write_all(headers).await.unwrap();
        stalled.push(conn);
    }
    let trickler = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut from, mut to) = trickler.into_split();
    to.write_all(headers).await.unwrap();
    let trickle = tokio::spawn(async move {
        // 20 bytes a second, until the server hangs up.
        while to.write_all(b"{{").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Every slot is taken; a normal client gets in once they are cut off.
    let signed = gw.sign("github", "ping", &sample("github", "ping"), "after-stall");
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), gw.post("github", &signed))
        .await
        .expect("served long before request_timeout");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut buf = vec![0; 256];
    for mut conn in stalled {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let n = tokio::time::timeout(Duration::from_secs(5), from.read(&mut buf))
        .await
        .expect("the trickler is answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    trickle.abort();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A body sent in pieces, with pauses a real sender makes, still gets in.
    let signed = gw.sign("github", "ping", &sample("github", "ping"), "in-pieces");
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut head = String::from("POST /hooks/github HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in &signed.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", signed.body.len()));
    conn.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = signed.body.split_at(signed.body.len() / 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    conn.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    conn.write_all(rest).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
}

/// Sources whose delivery id sits in a header the proof does not cover.
const REPLAY_SOURCES: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }

[sources.jira]
provider = "jira"
secret = { file = "{dir}/jira" }

[sources.zendesk]
provider = "zendesk"
secret = { file = "{dir}/zendesk" }

[sources.gitlab-signed]
provider = "gitlab"
secret = { file = "{dir}/gitlab" }
signing_secret = { file = "{dir}/gitlab_signing" }

[sources.standard-hdr]
provider = "standard"
secret = { file = "{dir}/standard" }
id_from = "header:x-msg-id"

[sources.hmac-ts]
provider = "hmac"
secret = { file = "{dir}/jira" }
header = "x-signature"
timestamp_header = "x-timestamp"
id_from = "header:x-id"
"#;

/// (source, event for the signer, the header carrying the unsigned id).
const TIMESTAMPED: [(&str, &str, &str); 4] = [
    ("zendesk", "", "X-Zendesk-Webhook-Invocation-Id"),
    ("standard-hdr", "t", "x-msg-id"),
    ("hmac-ts", "t", "x-id"),
    ("gitlab-signed", "push", "Idempotency-Key"),
];

/// A request of `source` signed at `at`, carrying delivery id `id`.
fn signed_with_id(
    gw: &TestGateway,
    (source, event, id_header): (&str, &str, &str),
    body: &[u8],
    id: &str,
    at: SystemTime,
) -> Signed {
    let mut s = gw.sign_at(source, event, body, id, at);
    set_header(&mut s, id_header, id);
    s
}

fn event_id(answer: &str) -> &str {
    answer.split('"').nth(3).unwrap_or(answer)
}

/// Issue #8 item 8: one captured Zendesk trigger request was accepted three
/// times by changing `X-Zendesk-Webhook-Invocation-Id`. A signature seen once
/// inside its window is a duplicate, whatever unsigned id comes with it,
/// while a genuine retry (same id and body, signed anew) still dedupes.
#[tokio::test]
async fn a_captured_signed_request_under_a_new_id_is_a_replay() {
    let gw = TestGateway::start("", REPLAY_SOURCES).await;
    let now = SystemTime::now();
    for scheme in TIMESTAMPED {
        let (source, _, id_header) = scheme;
        let body: &[u8] = match source {
            "gitlab-signed" => br#"{"object_kind":"push","ref":"refs/heads/main"}"#,
            _ => br#"{"type":"t","ticket":"35436","status":"solved"}"#,
        };
        let captured = signed_with_id(&gw, scheme, body, "id-1", now);
        let (status, first) = gw.post(source, &captured).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{source}: {first}");
        for n in 2..=3 {
            let mut replay = captured.clone();
            if source == "gitlab-signed" {
                // A different Idempotency-Key is refused outright (401);
                // without one, the signed webhook-id is the key.
                remove_header(&mut replay, id_header);
            } else {
                set_header(&mut replay, id_header, &format!("id-{n}"));
            }
            let (status, again) = gw.post(source, &replay).await;
            assert_eq!(status, StatusCode::OK, "{source} replay {n}: {again}");
            assert_eq!(event_id(&again), event_id(&first), "{source}");
        }
        // The provider's own retry: same id and body, a new timestamp.
        let retry = signed_with_id(&gw, scheme, body, "id-1", now + Duration::from_secs(2));
        assert_ne!(retry.headers, captured.headers, "{source}: re-signed");
        let (status, again) = gw.post(source, &retry).await;
        assert_eq!(status, StatusCode::OK, "{source} retry: {again}");
        assert_eq!(event_id(&again), event_id(&first), "{source}");
    }
    assert_eq!(gw.events().len(), TIMESTAMPED.len());
    gw.stop().await;
}

/// Issue #8 item 8: where the delivery id is not signed, a captured body
/// sent under someone else's future id must not block that real delivery;
/// a redelivery (same id, same body) is still a duplicate.
#[tokio::test]
async fn an_unsigned_id_cannot_be_claimed_for_another_body() {
    let gw = TestGateway::start("", REPLAY_SOURCES).await;
    let now = SystemTime::now();
    let schemes = [
        ("github", "push", "X-GitHub-Delivery"),
        ("jira", "issue_updated", "X-Atlassian-Webhook-Identifier"),
        TIMESTAMPED[0],
        TIMESTAMPED[2],
    ];
    for scheme in schemes {
        let source = scheme.0;
        let (body_a, body_b) = match source {
            "github" | "jira" => {
                let body = sample(source, scheme.1);
                let mut other = body.clone();
                other.push(b'\n');
                (body, other)
            }
            _ => (
                br#"{"type":"t","ticket":"1"}"#.to_vec(),
                br#"{"type":"t","ticket":"2"}"#.to_vec(),
            ),
        };
        let a = signed_with_id(&gw, scheme, &body_a, "a", now);
        assert_eq!(
            gw.post(source, &a).await.0,
            StatusCode::ACCEPTED,
            "{source}"
        );
        // The attacker claims the id "b" for the captured body A.
        let mut claim = a.clone();
        set_header(&mut claim, scheme.2, "b");
        gw.post(source, &claim).await;
        let b = signed_with_id(&gw, scheme, &body_b, "b", now);
        let (status, answer) = gw.post(source, &b).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{source}: real b: {answer}");
        assert_eq!(gw.post(source, &b).await.0, StatusCode::OK, "{source}");
        // A redelivery of A (GitHub's manual one sends the same body and id).
        let again = signed_with_id(&gw, scheme, &body_a, "a", now + Duration::from_secs(2));
        assert_eq!(gw.post(source, &again).await.0, StatusCode::OK, "{source}");
        let stored = gw.events();
        assert!(
            stored
                .iter()
                .any(|e| e.source == source && e.body == body_b),
            "{source}: the real b is stored"
        );
        assert!(stored
            .iter()
            .filter(|e| e.source == source)
            .all(|e| !e.delivery_id.contains("sha256")));
    }
    gw.stop().await;
}

/// Issue #8 item 16: Zendesk triggers may PUT or PATCH; other providers
/// only POST, and the 405 names what the source accepts.
#[tokio::test]
async fn zendesk_takes_put_and_patch_and_405_names_the_methods() {
    let gw = TestGateway::all().await;
    for (n, method) in [Method::PUT, Method::PATCH].into_iter().enumerate() {
        let body = format!(r#"{{"ticket":"3543{n}","status":"solved"}}"#);
        let s = gw.sign("zendesk", "", body.as_bytes(), &format!("inv-{n}"));
        let (status, answer) = gw
            .request(method.clone(), "zendesk", &s.headers, s.body.clone())
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{method}: {answer}");
    }
    for method in [Method::GET, Method::DELETE] {
        let (status, headers, _) =
            hookgate::client::request(method, &gw.url("zendesk"), &[], vec![])
                .await
                .unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "POST, PUT, PATCH");
    }
    let s = gw.sign("github", "push", &sample("github", "push"), "put");
    let (status, headers, _) =
        hookgate::client::request(Method::PUT, &gw.url("github"), &s.headers, s.body)
            .await
            .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert_eq!(gw.events().len(), 2);
    gw.stop().await;
}

/// Issue #8 item 14: while rotating, either listed secret verifies, a third
/// does not, and the metric says which one matched.
#[tokio::test]
async fn a_secret_list_accepts_each_listed_secret_and_counts_which() {
    // The github file holds the new secret, the jira file the old one.
    let sources = r#"
[sources.gh]
provider = "github"
secret = [{ file = "{dir}/github" }, { file = "{dir}/jira" }]
"#;
    let gw = TestGateway::start("", sources).await;
    let github = |secret: &str| hookgate::verify::github::Github {
        secret: hookgate::secret::Secret::new(secret),
        legacy_sha1: false,
    };
    let body = sample("github", "push");
    let send = |secret: &str, id: &str| {
        github(secret).sign(&SignInput {
            body: &body,
            event: "push",
            delivery_id: id,
            now: SystemTime::now(),
        })
    };
    let new = SECRETS.iter().find(|(n, _)| *n == "github").unwrap().1;
    let old = SECRETS.iter().find(|(n, _)| *n == "jira").unwrap().1;
    let third = SECRETS.iter().find(|(n, _)| *n == "intercom").unwrap().1;
    for (i, secret) in [new, old, old].into_iter().enumerate() {
        let (status, answer) = gw.post("gh", &send(secret, &format!("d{i}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    assert_eq!(
        gw.post("gh", &send(third, "d9")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, _, metrics) = hookgate::client::request(
        Method::GET,
        &format!("http://{}/metrics", gw.admin),
        &[],
        vec![],
    )
    .await
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"hookgate_secret_matches_total{source="gh",secret="0"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"hookgate_secret_matches_total{source="gh",secret="1"} 2"#),
        "{metrics}"
    );
    gw.stop().await;
}

/// A source whose secret is not set answers 503 (the provider retries)
/// and says what is missing, in words a provider's delivery log shows.
#[tokio::test]
async fn a_source_without_its_secret_answers_503_saying_so() {
    let gw = TestGateway::start(
        "",
        r#"
[sources.github]
provider = "github"
secret = { env = "HOOKGATE_TEST_NEVER_SET_SECRET" }
"#,
    )
    .await;
    let (status, answer) = gw
        .request(Method::POST, "github", &[], sample("github", "push"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(
        answer,
        r#"{"error":"this source's secret is not set on the gateway yet: deliveries are refused until it is"}"#
    );
    assert!(gw.events().is_empty());
}

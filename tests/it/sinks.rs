//! Each platform sink against a stand-in that behaves as the platform
//! documents: the exact request it receives, and what its answers do.

use std::time::Duration;

use http::StatusCode;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const GITHUB: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;

async fn post(gw: &TestGateway, event: &str, id: &str) {
    let s = gw.sign("github", event, &sample("github", event), id);
    assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
}

fn chat(kind: &str, url: &str) -> String {
    format!(
        r#"{GITHUB}
[sinks.chat]
kind = "{kind}"
url = "{url}"
rate_limit = "100/s"

[[routes]]
name = "prs"
source = "github"
event = "pull_request"
to = ["chat"]
"#
    )
}

#[tokio::test]
async fn slack_gets_a_default_message_and_no_service_disables_it() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply {
        body: "ok".into(),
        ..Reply::status(200)
    }]);
    let gw = TestGateway::start("", &chat("slack", &rx.url("/services/T1/B1/x"))).await;
    post(&gw, "pull_request", "slack-1").await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].path, "/services/T1/B1/x");
    assert_eq!(got[0].headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(v, serde_json::json!({ "text": SLACK_DEFAULT_PR_TEXT }));

    rx.script([Reply {
        body: "no_service".into(),
        ..Reply::status(404)
    }]);
    post(&gw, "pull_request", "slack-2").await;
    let dead = gw.wait_dead(1).await;
    assert!(
        dead[0].reason.as_deref().unwrap().contains("no_service"),
        "{:?}",
        dead[0].reason
    );
    post(&gw, "pull_request", "slack-3").await;
    let dead = gw.wait_dead(2).await;
    assert!(
        dead[1]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("sink disabled"),
        "{:?}",
        dead[1].reason
    );
    assert_eq!(
        rx.received().len(),
        2,
        "a revoked webhook is not called again"
    );
}

#[tokio::test]
async fn slack_429_waits_for_retry_after_and_keeps_its_place() {
    let rx = slack_stand_in().await;
    rx.script([Reply::status(429).header("Retry-After", "1")]);
    let gw = TestGateway::start("", &chat("slack", &rx.url("/s"))).await;
    post(&gw, "pull_request", "slack-429").await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "{:?}",
        got[1].at - got[0].at
    );
    assert_eq!(got[0].body, got[1].body);
}

#[tokio::test]
async fn discord_waits_honours_retry_after_json_and_404_10015_disables_it() {
    let rx = Receiver::start(Reply::status(204)).await;
    rx.script([
        Reply {
            body: r#"{"message":"You are being rate limited.","retry_after":0.6,"global":false}"#
                .into(),
            ..Reply::status(429)
        },
        Reply {
            body: r#"{"id":"1","channel_id":"2"}"#.into(),
            ..Reply::status(200)
        },
    ]);
    let gw = TestGateway::start("", &chat("discord", &rx.url("/api/webhooks/1/tok"))).await;
    post(&gw, "pull_request", "discord-1").await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/api/webhooks/1/tok?wait=true");
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(550),
        "{:?}",
        got[1].at - got[0].at
    );
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(v["allowed_mentions"], serde_json::json!({"parse": []}));
    assert_eq!(v["embeds"][0]["title"], "acme/widgets");
    assert_eq!(
        v["embeds"][0]["url"],
        "https://github.com/acme/widgets/pull/218"
    );

    rx.script([Reply {
        body: r#"{"message":"Unknown Webhook","code":10015}"#.into(),
        ..Reply::status(404)
    }]);
    post(&gw, "pull_request", "discord-2").await;
    let dead = gw.wait_dead(1).await;
    assert!(
        dead[0].reason.as_deref().unwrap().contains("10015"),
        "{:?}",
        dead[0].reason
    );
}

#[tokio::test]
async fn teams_gets_an_adaptive_card_and_202_is_success() {
    let rx = Receiver::start(Reply::status(202)).await;
    let gw = TestGateway::start(
        "",
        &chat(
            "teams",
            &rx.url("/workflows/x/triggers/manual/paths/invoke?sig=s"),
        ),
    )
    .await;
    post(&gw, "pull_request", "teams-1").await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(v["type"], "message");
    let att = &v["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["type"], "AdaptiveCard");
    assert_eq!(att["content"]["version"], "1.4");
    assert_eq!(att["content"]["actions"][0]["type"], "Action.OpenUrl");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.queue.dead_letters().unwrap().is_empty());
    assert_eq!(rx.received().len(), 1);
}

fn prodmatic(url: &str) -> String {
    format!(
        r#"{GITHUB}
[sinks.pm]
kind = "prodmatic"
base_url = "{url}"
token = {{ file = "{{dir}}/jira" }}
organization = "org123"
product = "prod456"
retry = ["100ms"]

[[routes]]
name = "link-commits"
source = "github"
event = "push"
each = "payload.commits"
when = "payload.commits | length > 0"
to = ["pm"]
action = "update_feature"
[routes.fields]
id = "{{{{ item.message | regex_capture('\\[(FEAT-\\d+)\\]') }}}}"
status = "{{% if '[CLOSES]' in item.message %}}COMPLETED{{% endif %}}"
externalLinks = '[{{"url": {{{{ item.url | tojson }}}}}}]'
"#
    )
}

#[tokio::test]
async fn prodmatic_updates_each_feature_with_token_and_keys() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(429).header("X-RateLimit-Reset", "1")]);
    let gw = TestGateway::start("", &prodmatic(&rx.url("/v1"))).await;
    post(&gw, "push", "pm-1").await;
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "one 429, then both commits");
    for r in &got {
        assert_eq!(r.method, http::Method::PATCH);
        assert_eq!(
            r.path,
            "/v1/organizations/org123/products/prod456/features/FEAT-123"
        );
        assert_eq!(r.headers["authorization"], "Bearer jira-secret");
    }
    let keys: std::collections::BTreeSet<_> = got
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2, "one key per item: {keys:?}");
    assert!(keys.iter().all(|k| k.contains(".link-commits.pm.")));
    let bodies: Vec<serde_json::Value> = got[1..]
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        bodies.iter().any(|b| b["status"] == "COMPLETED"),
        "{bodies:?}"
    );
    assert!(
        bodies.iter().any(|b| b.get("status").is_none()),
        "an empty field is left out: {bodies:?}"
    );
    assert!(bodies.iter().all(|b| b["externalLinks"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://github.com/")));
}

#[tokio::test]
async fn prodmatic_422_is_dead_at_once() {
    let rx = Receiver::start(Reply {
        body: r#"{"error":"status must be one of PLANNED, IN_PROGRESS, COMPLETED"}"#.into(),
        ..Reply::status(422)
    })
    .await;
    let gw = TestGateway::start("", &prodmatic(&rx.url("/v1"))).await;
    post(&gw, "push", "pm-422").await;
    let dead = gw.wait_dead(2).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(
        rx.received().len(),
        2,
        "no retries: {:?}",
        dead.iter().map(|d| d.reason.clone()).collect::<Vec<_>>()
    );
    assert_eq!(dead[0].last_status(), Some(422));
    assert!(dead[0].attempts[0]
        .response
        .contains("status must be one of"));
}

// --- Hostile payloads (issue #8, items 5 and 6) -------------------------

/// A pull request event whose title is `title`, posted and signed.
async fn post_titled(gw: &TestGateway, title: &str, id: &str) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&sample("github", "pull_request")).unwrap();
    v["pull_request"]["title"] = title.into();
    let s = gw.sign("github", "pull_request", v.to_string().as_bytes(), id);
    assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
}

/// A stand-in for Slack's incoming webhook: `200 ok` to every post.
async fn slack_stand_in() -> Receiver {
    Receiver::start(Reply {
        body: "ok".into(),
        ..Reply::status(200)
    })
    .await
}

/// One sink `chat` of `kind`, and a route to it whose content is `content`
/// (a `message = …` or `template = …` line).
fn chat_route(kind: &str, url: &str, content: &str) -> String {
    format!(
        r#"{GITHUB}
[sinks.chat]
kind = "{kind}"
url = "{url}"

[[routes]]
name = "prs"
source = "github"
event = "pull_request"
to = ["chat"]
{content}
"#
    )
}

/// The body the stand-in received, as text.
async fn one_body(rx: &Receiver) -> String {
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    String::from_utf8(got[0].body.to_vec()).unwrap()
}

/// The issue's attack: a title that is a whole Slack message, `<!channel>`
/// and blocks included, in a text template, is sent as that text.
#[tokio::test]
async fn a_slack_text_template_sends_a_json_title_as_text() {
    let rx = slack_stand_in().await;
    let route = chat_route(
        "slack",
        &rx.url("/s"),
        r#"message = "{{ payload.pull_request.title | slack_escape }}""#,
    );
    let gw = TestGateway::start("", &route).await;
    let title = r#"{"text":"<!channel> urgent","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"<!channel> <https://evil.example|log in>"}}]}"#;
    post_titled(&gw, title, "slack-json-title").await;
    assert_eq!(
        one_body(&rx).await,
        r#"{"text":"{\"text\":\"&lt;!channel&gt; urgent\",\"blocks\":[{\"type\":\"section\",\"text\":{\"type\":\"mrkdwn\",\"text\":\"&lt;!channel&gt; &lt;https://evil.example|log in&gt;\"}}]}"}"#
    );
}

/// The trial's attack: a text message that prints payload values without
/// `slack_escape` still sends them as text: no `<!channel>`, no mention,
/// no mailto link. The template's own `<!here>` and its `slack_link`
/// stay Slack's.
#[tokio::test]
async fn a_slack_text_message_escapes_payload_values_unasked() {
    let rx = slack_stand_in().await;
    let route = chat_route(
        "slack",
        &rx.url("/s"),
        r#"message = "<!here> {{ payload.pull_request.title }} by {{ payload.sender.login }} {{ payload.pull_request.html_url | slack_link('#' ~ payload.number) }}""#,
    );
    let gw = TestGateway::start("", &route).await;
    post_titled(
        &gw,
        "<mailto:ceo@corp.example|Payroll> & <@U024BE7LH> <!channel>",
        "slack-unasked",
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&sample("github", "pull_request")).unwrap();
    let (login, url, number) = (
        v["sender"]["login"].as_str().unwrap(),
        v["pull_request"]["html_url"].as_str().unwrap(),
        &v["number"],
    );
    assert_eq!(
        one_body(&rx).await,
        format!(
            r#"{{"text":"<!here> &lt;mailto:ceo@corp.example|Payroll&gt; &amp; &lt;@U024BE7LH&gt; &lt;!channel&gt; by {login} <{url}|#{number}>"}}"#
        )
    );
}

/// A title carrying `allowed_mentions` in a text template is `content`,
/// and mentions stay off.
#[tokio::test]
async fn a_discord_text_template_sends_a_json_title_as_content_with_mentions_off() {
    let rx = Receiver::start(Reply::status(204)).await;
    let route = chat_route(
        "discord",
        &rx.url("/api/webhooks/1/t"),
        r#"message = "{{ payload.pull_request.title }}""#,
    );
    let gw = TestGateway::start("", &route).await;
    let title = r#"{"content":"@everyone free nitro","allowed_mentions":{"parse":["everyone"]}}"#;
    post_titled(&gw, title, "discord-json-title").await;
    assert_eq!(
        one_body(&rx).await,
        r#"{"allowed_mentions":{"parse":[]},"content":"{\"content\":\"@everyone free nitro\",\"allowed_mentions\":{\"parse\":[\"everyone\"]}}"}"#
    );
}

/// A `*.json` template may shape the message, but `allowed_mentions` is the
/// sink's, and a payload string that tries to close its quotes stays one
/// string.
#[tokio::test]
async fn a_discord_json_template_keeps_payload_strings_strings_and_mentions_off() {
    let rx = Receiver::start(Reply::status(204)).await;
    let templates = tempfile::tempdir().unwrap();
    let file = templates.path().join("pr.discord.json");
    std::fs::write(
        &file,
        r#"{"content": {{ payload.pull_request.title }}, "allowed_mentions": {"parse": ["everyone"]}}"#,
    )
    .unwrap();
    let route = chat_route(
        "discord",
        &rx.url("/api/webhooks/1/t"),
        &format!("template = \"{}\"", file.display()),
    );
    let gw = TestGateway::start("", &route).await;
    let title = r#"@everyone", "allowed_mentions": {"parse": ["everyone"]}, "x": ""#;
    post_titled(&gw, title, "discord-json-template").await;
    assert_eq!(
        one_body(&rx).await,
        r#"{"allowed_mentions":{"parse":[]},"content":"@everyone\", \"allowed_mentions\": {\"parse\": [\"everyone\"]}, \"x\": \""}"#
    );
}

/// A title that is an Adaptive Card, in a text template, is the text of a
/// TextBlock, not the card sent.
#[tokio::test]
async fn a_teams_text_template_sends_a_card_title_as_text() {
    let rx = Receiver::start(Reply::status(202)).await;
    let route = chat_route(
        "teams",
        &rx.url("/workflows/x"),
        r#"message = "{{ payload.pull_request.title }}""#,
    );
    let gw = TestGateway::start("", &route).await;
    let title = r#"{"type":"AdaptiveCard","version":"1.4","body":[{"type":"TextBlock","text":"pwned"}],"actions":[{"type":"Action.OpenUrl","title":"Log in","url":"https://evil.example"}]}"#;
    post_titled(&gw, title, "teams-card-title").await;
    assert_eq!(
        one_body(&rx).await,
        r#"{"attachments":[{"content":{"$schema":"http://adaptivecards.io/schemas/adaptive-card.json","body":[{"text":"{\"type\":\"AdaptiveCard\",\"version\":\"1.4\",\"body\":[{\"type\":\"TextBlock\",\"text\":\"pwned\"}],\"actions\":[{\"type\":\"Action.OpenUrl\",\"title\":\"Log in\",\"url\":\"https://evil.example\"}]}","type":"TextBlock","wrap":true}],"type":"AdaptiveCard","version":"1.4"},"contentType":"application/vnd.microsoft.card.adaptive","contentUrl":null}],"type":"message"}"#
    );
}

/// A `*.json` Teams card: a payload string that tries to close its quotes
/// and add an action stays the TextBlock's text.
#[tokio::test]
async fn a_teams_json_template_keeps_payload_strings_strings() {
    let rx = Receiver::start(Reply::status(202)).await;
    let templates = tempfile::tempdir().unwrap();
    let file = templates.path().join("pr.teams.json.j2");
    std::fs::write(
        &file,
        r#"{"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": {{ payload.pull_request.title }}}]}"#,
    )
    .unwrap();
    let route = chat_route(
        "teams",
        &rx.url("/workflows/x"),
        &format!("template = \"{}\"", file.display()),
    );
    let gw = TestGateway::start("", &route).await;
    let title = r#"x"}], "actions": [{"type": "Action.OpenUrl", "url": "javascript:alert(1)"}], "y": [{"a": ""#;
    post_titled(&gw, title, "teams-json-template").await;
    assert_eq!(
        one_body(&rx).await,
        r#"{"attachments":[{"content":{"body":[{"text":"x\"}], \"actions\": [{\"type\": \"Action.OpenUrl\", \"url\": \"javascript:alert(1)\"}], \"y\": [{\"a\": \"","type":"TextBlock"}],"type":"AdaptiveCard","version":"1.4"},"contentType":"application/vnd.microsoft.card.adaptive","contentUrl":null}],"type":"message"}"#
    );
}

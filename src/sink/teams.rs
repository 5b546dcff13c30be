//! Microsoft Teams Workflows webhooks: a Bot Framework message with one
//! Adaptive Card (version 1.4) attachment. A 202 means the flow was queued,
//! not that the channel post succeeded; that is all Teams tells us. The
//! whole message stays under ~28 KB; a larger card is replaced by its text,
//! truncated with a marker. A text template's output (and the default
//! message) goes into a TextBlock, where only http(s) Markdown links stay
//! links; a card comes only from a `*.json` template.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::summary::summarize;
use super::{frozen_json, json_message, retry_after, Answer, ChatWebhook, Outgoing, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::filters::{truncate, web_url};
use crate::route::Rendered;

/// Bytes a message may take (Teams rejects about 28 KB; keep a margin).
const MESSAGE_MAX: usize = 25_000;

pub struct TeamsSink(pub ChatWebhook);

/// The Workflows envelope around an Adaptive Card.
pub fn envelope(card: Value) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }]
    })
}

/// Markdown links (`[label](target)`) whose target is not an http(s) URL
/// made plain text: a zero-width space between `]` and `(` keeps Teams
/// from reading a link there. TextBlocks render Markdown, and their text
/// carries payload values.
pub fn web_links_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let target: String = rest[1..]
            .trim_start()
            .trim_start_matches('<')
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '>'))
            .collect();
        if web_url(&target).is_none() {
            out.push('\u{200b}');
        }
    }
    out.push_str(rest);
    out
}

/// A card of text blocks (and a link button, for an http(s) URL only).
pub fn text_card(title: Option<&str>, text: &str, url: Option<&str>) -> Value {
    let mut body = Vec::new();
    if let Some(t) = title {
        body.push(json!({"type": "TextBlock", "text": web_links_only(t), "weight": "Bolder", "size": "Medium", "wrap": true}));
    }
    body.push(json!({"type": "TextBlock", "text": web_links_only(text), "wrap": true}));
    let url = url.and_then(web_url);
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(u) = url {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": "Open", "url": u}]);
    }
    card
}

/// Keeps a message under the size Teams takes: a larger one becomes a card
/// of its text, cut (with a marker) to the most characters whose
/// serialized message still fits. Bytes, not characters, are what count:
/// CJK text is three bytes a character, a control character six escaped.
pub fn fit(message: Value, fallback_text: &str) -> Value {
    if message.to_string().len() <= MESSAGE_MAX {
        return message;
    }
    let cut = |chars: usize| {
        let text = truncate(fallback_text, chars, Some("… (message truncated)"));
        envelope(text_card(None, &text, None))
    };
    let (mut lo, mut hi) = (0, MESSAGE_MAX);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if cut(mid).to_string().len() <= MESSAGE_MAX {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    cut(lo)
}

/// Newest Adaptive Card version Teams renders in Workflows messages.
const CARD_VERSION_MAX: (u32, u32) = (1, 5);

/// A template card declaring a newer version than Teams renders is sent as
/// that version: Teams shows nothing at all for a card it cannot render,
/// while elements of a newer version in a 1.5 card are skipped.
fn cap_version(card: &mut Value) {
    let Some(Value::String(version)) = card.get_mut("version") else {
        return;
    };
    let parsed = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    if parsed.is_none_or(|v| v > CARD_VERSION_MAX) {
        let (major, minor) = CARD_VERSION_MAX;
        *version = format!("{major}.{minor}");
    }
}

/// What a `*.json` card may not do with payload values: Markdown links to
/// anything but http(s) in its text (`text` of TextBlocks, `value` of
/// facts) become plain text, and an Open button whose URL is empty (a
/// template's `web_url` found no web URL) is left out rather than have
/// Teams refuse the card.
fn web_links_in_card(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                match v {
                    Value::String(s) if k == "text" || k == "value" => *s = web_links_only(s),
                    _ => web_links_in_card(v),
                }
            }
        }
        Value::Array(a) => {
            a.retain(|e| !(e["type"] == "Action.OpenUrl" && e["url"] == ""));
            a.iter_mut().for_each(web_links_in_card);
        }
        _ => {}
    }
}

/// The words of a card (every `text` string in it, in order), for the
/// fallback of a card too large to send: not its JSON source.
fn card_text(card: &Value) -> String {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) if k == "text" => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(card, &mut out);
    out.join("\n\n")
}

impl Sink for TeamsSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let message = match rendered {
            Rendered::Default => {
                let sum = summarize(event, &crate::route::context(event).payload);
                let m = envelope(text_card(Some(&sum.place), &sum.text, sum.url.as_deref()));
                fit(m, &sum.text)
            }
            Rendered::Text(t) => fit(envelope(text_card(None, t, None)), t),
            Rendered::Json(t) => {
                let mut v = Value::Object(json_message(t)?);
                web_links_in_card(&mut v);
                if v["type"] == "message" {
                    if let Some(Value::Array(attachments)) = v.get_mut("attachments") {
                        for a in attachments {
                            cap_version(&mut a["content"]);
                        }
                    }
                    let text = card_text(&v);
                    fit(v, &text)
                } else if v["type"] == "AdaptiveCard" {
                    cap_version(&mut v);
                    let text = card_text(&v);
                    fit(envelope(v), &text)
                } else {
                    return Err(format!(
                        "the `*.json` template wrote an object of type {}: a Teams template writes \
                         an Adaptive Card (\"type\": \"AdaptiveCard\") or a whole message (\"type\": \"message\")",
                        v["type"]
                    ));
                }
            }
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(frozen_json(&message))
    }

    fn outgoing(&self, d: &DeliveryRecord, _now: SystemTime) -> Result<Outgoing, String> {
        self.0.request(|u| u, d).map(Outgoing::Http)
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(self.0.post(
            |u| u,
            d,
            |status, headers, body| {
                let body = std::str::from_utf8(body).unwrap_or("");
                (
                    classify(status, body, retry_after(headers, SystemTime::now())),
                    None,
                )
            },
        ))
    }
}

pub fn classify(status: u16, body: &str, retry_after: Option<std::time::Duration>) -> Verdict {
    // Classic connectors answer 200 with the throttle in the body.
    if status == 429 || body.contains("HTTP error 429") {
        return Verdict::RateLimited {
            after: retry_after.unwrap_or(std::time::Duration::from_secs(1)),
        };
    }
    match status {
        200..=299 => Verdict::Delivered,
        404 | 410 => Verdict::SinkGone(format!("{status}: the workflow URL no longer exists")),
        500..=599 | 408 | 425 => Verdict::Retry {
            after: retry_after,
            why: status.to_string(),
        },
        _ => Verdict::Permanent(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(classify(202, "", None), Verdict::Delivered);
        assert!(matches!(
            classify(
                200,
                "Microsoft Teams endpoint returned HTTP error 429",
                None
            ),
            Verdict::RateLimited { .. }
        ));
        assert!(matches!(classify(404, "", None), Verdict::SinkGone(_)));
        assert!(matches!(classify(502, "", None), Verdict::Retry { .. }));
        assert!(matches!(classify(400, "", None), Verdict::Permanent(_)));
    }

    #[test]
    fn huge_cards_become_truncated_text() {
        let big = "z".repeat(100_000);
        let m = fit(envelope(text_card(None, &big, None)), &big);
        let s = m.to_string();
        assert!(s.len() <= MESSAGE_MAX + 200, "{}", s.len());
        assert!(s.contains("(message truncated)"));
        assert_eq!(m["attachments"][0]["content"]["version"], "1.4");
        // Characters that take more than a byte each still fit in bytes.
        for big in [
            "語".repeat(100_000),
            "\u{1}".repeat(100_000),
            "😀".repeat(50_000),
        ] {
            let s = fit(envelope(text_card(None, &big, None)), &big).to_string();
            assert!(s.len() <= MESSAGE_MAX, "{}", s.len());
            assert!(s.len() > MESSAGE_MAX - 100, "as much as fits: {}", s.len());
        }
    }

    #[test]
    fn only_web_links_stay_links_in_text() {
        assert_eq!(
            web_links_only("[a](https://x.example/) [b](javascript:alert(1)) [c]( <data:x>) [d](mailto:x) x](y"),
            "[a](https://x.example/) [b]\u{200b}(javascript:alert(1)) [c]\u{200b}( <data:x>) [d]\u{200b}(mailto:x) x]\u{200b}(y"
        );
        assert_eq!(web_links_only("no links [here]"), "no links [here]");
    }

    fn pull_request(title: &str, url: &str) -> EventRecord {
        let mut payload: Value =
            serde_json::from_str(crate::samples::find("github", "pull_request").unwrap()).unwrap();
        payload["pull_request"]["title"] = title.into();
        payload["pull_request"]["html_url"] = url.into();
        EventRecord {
            event: "pull_request".into(),
            body: payload.to_string().into_bytes(),
            ..crate::queue::sample_record()
        }
    }

    fn sent(rendered: &Rendered, event: &EventRecord) -> Result<Value, String> {
        let sink = TeamsSink(ChatWebhook::new(
            Err("unset".into()),
            reqwest::Client::new(),
        ));
        Ok(serde_json::from_slice(&sink.prepare(rendered, event)?.body).unwrap())
    }

    /// The default message: an Open button only for an http(s) URL, and
    /// no Markdown link to anything else out of the payload's text.
    #[test]
    fn default_messages_link_only_web_urls() {
        let title = "[Log in](javascript:alert(1)) and [docs](https://docs.example/)";
        let ok = sent(
            &Rendered::Default,
            &pull_request(title, "https://github.com/a/b/pull/1"),
        )
        .unwrap();
        let card = &ok["attachments"][0]["content"];
        assert_eq!(card["actions"][0]["url"], "https://github.com/a/b/pull/1");
        assert_eq!(
            card["body"][1]["text"],
            "lee-marsh merged pull request #218: [Log in]\u{200b}(javascript:alert(1)) and [docs](https://docs.example/)"
        );
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "ms-settings:",
            "https:",
        ] {
            let v = sent(&Rendered::Default, &pull_request("t", bad)).unwrap();
            let card = &v["attachments"][0]["content"];
            assert!(card.get("actions").is_none(), "{bad}: {card}");
        }
    }

    #[test]
    fn a_text_template_is_text_and_a_json_one_must_be_a_card() {
        let e = pull_request("t", "");
        let card = r#"{"type": "AdaptiveCard", "version": "1.4", "body": []}"#;
        let v = sent(&Rendered::Text(card.into()), &e).unwrap();
        assert_eq!(v["attachments"][0]["content"]["body"][0]["text"], card);
        let v = sent(&Rendered::Json(card.into()), &e).unwrap();
        assert_eq!(v["attachments"][0]["content"]["body"], json!([]));
        let card = r#"{"type": "AdaptiveCard", "version": "1.4",
            "body": [{"type": "TextBlock", "text": "[x](javascript:alert(1))"},
                     {"type": "FactSet", "facts": [{"title": "t", "value": "[y](data:x)"}]}],
            "actions": [{"type": "Action.OpenUrl", "title": "Open", "url": ""}]}"#;
        let v = sent(&Rendered::Json(card.into()), &e).unwrap();
        let card = &v["attachments"][0]["content"];
        assert_eq!(card["body"][0]["text"], "[x]\u{200b}(javascript:alert(1))");
        assert_eq!(card["body"][1]["facts"][0]["value"], "[y]\u{200b}(data:x)");
        assert_eq!(card["actions"], json!([]));
        let err = sent(&Rendered::Json(r#"{"text": "hi"}"#.into()), &e).unwrap_err();
        assert!(
            err.contains("a Teams template writes an Adaptive Card"),
            "{err}"
        );
    }

    #[test]
    fn template_cards_newer_than_teams_renders_are_sent_as_1_5() {
        for (declared, sent) in [
            ("1.6", "1.5"),
            ("2.0", "1.5"),
            ("1.5", "1.5"),
            ("1.2", "1.2"),
            ("x", "1.5"),
        ] {
            let mut card = json!({"type": "AdaptiveCard", "version": declared, "body": []});
            cap_version(&mut card);
            assert_eq!(card["version"], sent, "{declared}");
        }
    }

    #[test]
    fn a_large_template_card_falls_back_to_its_words() {
        let card = json!({"type": "AdaptiveCard", "version": "1.4", "body": [
            {"type": "TextBlock", "text": "Title"},
            {"type": "TextBlock", "text": "x".repeat(40_000)},
        ]});
        let m = fit(envelope(card.clone()), &card_text(&card));
        let text = m["attachments"][0]["content"]["body"][0]["text"]
            .as_str()
            .unwrap();
        assert!(text.starts_with("Title\n\nxxx"), "{}", &text[..20]);
        assert!(!text.contains("TextBlock"), "not the JSON source");
    }
}

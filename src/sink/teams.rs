//! Microsoft Teams Workflows webhooks: a Bot Framework message with one
//! Adaptive Card (version 1.4) attachment. A 202 means the flow was queued,
//! not that the channel post succeeded; that is all Teams tells us. The
//! whole message stays under ~28 KB; a larger card is replaced by its text,
//! truncated with a marker.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::summary::summarize;
use super::{frozen_json, retry_after, Answer, ChatWebhook, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::filters::truncate;
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

/// A card of text blocks (and a link button).
pub fn text_card(title: Option<&str>, text: &str, url: Option<&str>) -> Value {
    let mut body = Vec::new();
    if let Some(t) = title {
        body.push(json!({"type": "TextBlock", "text": t, "weight": "Bolder", "size": "Medium", "wrap": true}));
    }
    body.push(json!({"type": "TextBlock", "text": text, "wrap": true}));
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
                let sum = summarize(event, &crate::router::context(event).payload);
                let m = envelope(text_card(Some(&sum.place), &sum.text, sum.url.as_deref()));
                fit(m, &sum.text)
            }
            Rendered::Text(t) => match serde_json::from_str::<Value>(t) {
                Ok(mut v) if v["type"] == "message" => {
                    if let Some(Value::Array(attachments)) = v.get_mut("attachments") {
                        for a in attachments {
                            cap_version(&mut a["content"]);
                        }
                    }
                    let text = card_text(&v);
                    fit(v, &text)
                }
                Ok(mut v) if v["type"] == "AdaptiveCard" => {
                    cap_version(&mut v);
                    let text = card_text(&v);
                    fit(envelope(v), &text)
                }
                _ => fit(envelope(text_card(None, t, None)), t),
            },
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(frozen_json(&message))
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

//! Slack incoming webhooks: `{"text", "blocks"}`; `ok` is success; the
//! "this webhook is gone" codes disable the sink. Limits are enforced by
//! truncating with a visible marker: 50 blocks, 3,000 characters per
//! section, 2,000 per field (10 fields), 150 per header, text 4,000.

use std::time::SystemTime;

use serde_json::{json, Value};

use super::summary::summarize;
use super::{frozen_json, message_object, object, retry_after, Answer, ChatWebhook, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::filters::{slack_escape, truncate};
use crate::route::Rendered;

/// Answers that mean the webhook will never work again.
const GONE: [&str; 7] = [
    "no_service",
    "no_service_id",
    "invalid_token",
    "channel_not_found",
    "channel_is_archived",
    "no_team",
    "team_disabled",
];
const TEXT_MAX: usize = 4000;
const BLOCKS_MAX: usize = 50;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const FIELDS_MAX: usize = 10;
const HEADER_MAX: usize = 150;

pub struct SlackSink(pub ChatWebhook);

/// Keeps a Slack message within the platform's limits.
pub fn fit(mut msg: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    if let Some(Value::String(t)) = msg.get_mut("text") {
        *t = truncate(t, TEXT_MAX, None);
    }
    if let Some(Value::Array(blocks)) = msg.get_mut("blocks") {
        if blocks.len() > BLOCKS_MAX {
            let dropped = blocks.len() - (BLOCKS_MAX - 1);
            blocks.truncate(BLOCKS_MAX - 1);
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("… {dropped} more blocks not shown")}]}));
        }
        for b in blocks.iter_mut() {
            let max = if b["type"] == "header" {
                HEADER_MAX
            } else {
                SECTION_MAX
            };
            if let Some(Value::String(t)) = b.get_mut("text").and_then(|t| t.get_mut("text")) {
                *t = truncate(t, max, None);
            }
            if let Some(Value::Array(fields)) = b.get_mut("fields") {
                fields.truncate(FIELDS_MAX);
                for f in fields.iter_mut() {
                    if let Some(Value::String(t)) = f.get_mut("text") {
                        *t = truncate(t, FIELD_MAX, None);
                    }
                }
            }
        }
    }
    msg
}

impl Sink for SlackSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let msg = match rendered {
            Rendered::Default => {
                let sum = summarize(event, &crate::router::context(event).payload);
                let link = sum.url.map(|u| format!(" <{u}|open>")).unwrap_or_default();
                object(
                    json!({ "text": format!("*{}*: {}{link}", slack_escape(&sum.place), slack_escape(&sum.text)) }),
                )
            }
            Rendered::Text(t) => message_object(t, "text"),
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(frozen_json(&Value::Object(fit(msg))))
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(self.0.post(
            |u| u,
            d,
            |status, headers, body| {
                let code = std::str::from_utf8(body).unwrap_or("").trim();
                (
                    classify(status, code, retry_after(headers, SystemTime::now())),
                    None,
                )
            },
        ))
    }
}

/// Slack answers with a status and a plain-text code.
pub fn classify(status: u16, code: &str, retry_after: Option<std::time::Duration>) -> Verdict {
    if GONE.contains(&code) {
        return Verdict::SinkGone(code.to_owned());
    }
    match status {
        200..=299 => Verdict::Delivered,
        429 => Verdict::RateLimited {
            after: retry_after.unwrap_or(std::time::Duration::from_secs(1)),
        },
        500..=599 | 408 | 425 => Verdict::Retry {
            after: retry_after,
            why: format!("{status} {code}"),
        },
        _ => Verdict::Permanent(format!("{status} {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(classify(200, "ok", None), Verdict::Delivered);
        assert!(
            matches!(classify(404, "no_service", None), Verdict::SinkGone(c) if c == "no_service")
        );
        assert!(matches!(
            classify(410, "channel_is_archived", None),
            Verdict::SinkGone(_)
        ));
        assert!(matches!(
            classify(500, "rollup_error", None),
            Verdict::Retry { .. }
        ));
        assert!(matches!(
            classify(429, "", None),
            Verdict::RateLimited { .. }
        ));
        assert!(matches!(
            classify(400, "invalid_blocks", None),
            Verdict::Permanent(_)
        ));
    }

    #[test]
    fn oversize_messages_are_cut_with_a_marker() {
        let blocks: Vec<Value> = (0..60)
            .map(|_| json!({"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(5000)}}))
            .collect();
        let msg = json!({"text": "y".repeat(10_000), "blocks": blocks});
        let Value::Object(m) = msg else { panic!() };
        let fitted = fit(m);
        assert_eq!(fitted["text"].as_str().unwrap().chars().count(), TEXT_MAX);
        let blocks = fitted["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), BLOCKS_MAX);
        assert!(blocks[49]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("11 more blocks"));
        let t = blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(t.chars().count(), SECTION_MAX);
        assert!(t.ends_with('…'));
    }
}

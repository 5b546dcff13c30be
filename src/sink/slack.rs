//! Slack incoming webhooks: `{"text", "blocks"}`; `ok` is success; the
//! "this webhook is gone" codes disable the sink. Limits are enforced by
//! truncating with a visible marker: 50 blocks, 3,000 characters per
//! section, 2,000 per field (10 fields), 150 per header, text 4,000, 10
//! context elements, ~12,000 per markdown block, and 12,000 across all
//! blocks (Slack answers `msg_blocks_too_long` near 13,000 in total, below
//! any per-block limit).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::summary::summarize;
use super::{
    frozen_json, json_message, object, retry_after, text_message, Answer, ChatWebhook, Outgoing,
    Sink, Verdict,
};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::filters::{slack_escape, slack_url, truncate};
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
const CONTEXT_ELEMENTS_MAX: usize = 10;
/// Slack's own is about 12,000; this one leaves room in the total.
const MARKDOWN_MAX: usize = 11_900;
/// Characters of text across all blocks.
const BLOCKS_TEXT_MAX: usize = 12_000;
/// What blocks may take, leaving room for the "more blocks" note.
const BLOCKS_BUDGET: usize = BLOCKS_TEXT_MAX - 40;

/// Characters of every `text` string in a block.
fn block_chars(v: &Value) -> usize {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if k == "text" => s.chars().count(),
                _ => block_chars(v),
            })
            .sum(),
        Value::Array(a) => a.iter().map(block_chars).sum(),
        _ => 0,
    }
}

/// A context block saying how many blocks were left out.
fn not_shown(n: usize) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("… {n} more blocks not shown")}]})
}

pub struct SlackSink(pub ChatWebhook);

/// Keeps a Slack message within the platform's limits.
pub fn fit(mut msg: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    if let Some(Value::String(t)) = msg.get_mut("text") {
        *t = truncate(t, TEXT_MAX, None);
    }
    if let Some(Value::Array(blocks)) = msg.get_mut("blocks") {
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
            if b["type"] == "markdown" {
                if let Some(Value::String(t)) = b.get_mut("text") {
                    *t = truncate(t, MARKDOWN_MAX, None);
                }
            }
            if b["type"] == "context" {
                if let Some(Value::Array(elements)) = b.get_mut("elements") {
                    elements.truncate(CONTEXT_ELEMENTS_MAX);
                }
            }
        }
        // The first block alone over the total (ten long fields): its
        // fields go from the end.
        if let Some(Value::Array(fields)) = blocks.first_mut().and_then(|b| b.get_mut("fields")) {
            while fields.len() > 1 && fields.iter().map(block_chars).sum::<usize>() > BLOCKS_BUDGET
            {
                fields.pop();
            }
        }
        // Blocks past the count or the total go, and a note says so
        // (room is left for it).
        let mut total = 0;
        let over_total = blocks.iter().position(|b| {
            total += block_chars(b);
            total > BLOCKS_BUDGET
        });
        let over_count = (blocks.len() > BLOCKS_MAX).then_some(BLOCKS_MAX - 1);
        if let Some(keep) = [over_total.map(|i| i.max(1)), over_count]
            .into_iter()
            .flatten()
            .min()
            .filter(|keep| *keep < blocks.len())
        {
            let dropped = blocks.len() - keep;
            blocks.truncate(keep);
            blocks.push(not_shown(dropped));
        }
    }
    msg
}

impl Sink for SlackSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let msg = match rendered {
            Rendered::Default => {
                let sum = summarize(event, &crate::route::context(event).payload);
                let link = sum
                    .url
                    .as_deref()
                    .and_then(slack_url)
                    .map(|u| format!(" <{u}|open>"))
                    .unwrap_or_default();
                object(
                    json!({ "text": format!("*{}*: {}{link}", slack_escape(&sum.place), slack_escape(&sum.text)) }),
                )
            }
            Rendered::Text(t) => text_message(t, "text"),
            Rendered::Json(t) => json_message(t)?,
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(frozen_json(&Value::Object(fit(msg))))
    }

    fn outgoing(&self, d: &DeliveryRecord, _now: SystemTime) -> Result<Outgoing, String> {
        self.0.request(|u| u, d).map(Outgoing::Http)
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
        // 3,000 characters each: three fit the 12,000 total with the note.
        assert_eq!(blocks.len(), 4);
        assert!(blocks[3]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("57 more blocks"));
        let t = blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(t.chars().count(), SECTION_MAX);
        assert!(t.ends_with('…'));
        let total: usize = blocks.iter().map(block_chars).sum();
        assert!(total <= BLOCKS_TEXT_MAX, "{total}");
    }

    #[test]
    fn payload_urls_cannot_break_out_of_their_link() {
        assert_eq!(
            slack_url("https://x.example/a?b=1&c=<!channel>|pwned").as_deref(),
            Some("https://x.example/a?b=1&amp;c=%3C!channel%3E%7Cpwned")
        );
        assert_eq!(slack_url("javascript:alert(1)"), None);
        assert_eq!(slack_url("<!channel>"), None);
    }

    fn pull_request(title: &str, url: &str) -> EventRecord {
        let mut payload: Value =
            serde_json::from_str(crate::samples::find("github", "pull_request").unwrap()).unwrap();
        payload["pull_request"]["title"] = title.into();
        payload["pull_request"]["html_url"] = url.into();
        payload["repository"]["full_name"] = "<!here>/x".into();
        EventRecord {
            event: "pull_request".into(),
            body: payload.to_string().into_bytes(),
            ..crate::queue::sample_record()
        }
    }

    fn sent(rendered: &Rendered, event: &EventRecord) -> Value {
        let sink = SlackSink(ChatWebhook::new(
            Err("unset".into()),
            reqwest::Client::new(),
        ));
        serde_json::from_slice(&sink.prepare(rendered, event).unwrap().body).unwrap()
    }

    /// The default message: payload text escaped, and a link only for an
    /// http(s) URL.
    #[test]
    fn default_messages_mention_no_one_and_link_only_web_urls() {
        let title = "<!channel> <javascript:alert(1)|click>";
        let web = sent(
            &Rendered::Default,
            &pull_request(title, "https://github.com/a/b/pull/1"),
        );
        assert_eq!(
            web["text"],
            "*&lt;!here&gt;/x*: lee-marsh merged pull request #218: \
             &lt;!channel&gt; &lt;javascript:alert(1)|click&gt; <https://github.com/a/b/pull/1|open>"
        );
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "https//github.com",
            "vbscript:x",
        ] {
            let v = sent(&Rendered::Default, &pull_request("t", bad));
            assert!(
                v["text"].as_str().unwrap().ends_with("#218: t"),
                "{bad}: {v}"
            );
        }
    }
    #[test]
    fn more_than_fifty_small_blocks_keep_forty_nine_and_a_note() {
        let blocks: Vec<Value> = (0..60)
            .map(|_| json!({"type": "section", "text": {"type": "mrkdwn", "text": "short"}}))
            .collect();
        let Value::Object(m) = json!({"blocks": blocks}) else {
            panic!()
        };
        let fitted = fit(m);
        let blocks = fitted["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), BLOCKS_MAX);
        assert!(blocks[49]["elements"][0]["text"]
            .as_str()
            .unwrap()
            .contains("11 more blocks"));
    }

    #[test]
    fn one_block_of_long_fields_is_cut_to_the_total() {
        let fields: Vec<Value> = (0..10)
            .map(|_| json!({"type": "mrkdwn", "text": "f".repeat(2000)}))
            .collect();
        let Value::Object(m) = json!({"blocks": [{"type": "section", "fields": fields}]}) else {
            panic!()
        };
        let fitted = fit(m);
        let blocks = fitted["blocks"].as_array().unwrap();
        let total: usize = blocks.iter().map(block_chars).sum();
        assert!(total <= BLOCKS_TEXT_MAX, "{total}");
        assert!(blocks[0]["fields"].as_array().unwrap().len() >= 5);
    }
}

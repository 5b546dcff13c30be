//! Discord channel webhooks: `content` and `embeds`, posted with
//! `?wait=true`. Mentions are always off (`allowed_mentions: {parse: []}`,
//! whatever a template or payload wrote there); a text template's output
//! is `content`, embeds come only from a `*.json` template. Limits: content 2,000; 10 embeds; title 256,
//! description 4,096, 25 fields of 256/1,024, footer 2,048; 6,000 across
//! all embeds. Rate limits come from its headers: a 429's `retry_after` or
//! `Retry-After`, and a pause when `X-RateLimit-Remaining` reaches 0.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::summary::summarize;
use super::{
    frozen_json, json_message, object, retry_after, text_message, Answer, ChatWebhook, Outgoing,
    Sink, Verdict,
};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::filters::{discord_escape, truncate, web_url};
use crate::route::Rendered;

const CONTENT_MAX: usize = 2000;
const EMBEDS_MAX: usize = 10;
const EMBEDS_TOTAL_MAX: usize = 6000;

pub struct DiscordSink(pub ChatWebhook);

fn cut(v: &mut Value, key: &str, max: usize) -> usize {
    match v.get_mut(key) {
        Some(Value::String(s)) => {
            *s = truncate(s, max, None);
            s.chars().count()
        }
        _ => 0,
    }
}

/// Characters an embed counts towards the 6,000 total, after cutting each
/// part to its own limit.
fn fit_embed(e: &mut Value) -> usize {
    // Only an http(s) URL makes the title a link (an empty or other one
    // would also make Discord refuse the message).
    if e["url"].as_str().is_some_and(|u| web_url(u).is_none()) {
        if let Some(obj) = e.as_object_mut() {
            obj.remove("url");
        }
    }
    let mut n = cut(e, "title", 256) + cut(e, "description", 4096);
    if let Some(f) = e.get_mut("footer") {
        n += cut(f, "text", 2048);
    }
    if let Some(a) = e.get_mut("author") {
        n += cut(a, "name", 256);
    }
    if let Some(Value::Array(fields)) = e.get_mut("fields") {
        fields.truncate(25);
        for f in fields.iter_mut() {
            n += cut(f, "name", 256) + cut(f, "value", 1024);
        }
    }
    n
}

/// Keeps a Discord message within the platform's limits, with mentions off.
pub fn fit(mut msg: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    msg.insert("allowed_mentions".into(), json!({"parse": []}));
    if let Some(Value::String(c)) = msg.get_mut("content") {
        *c = truncate(c, CONTENT_MAX, None);
    }
    if let Some(Value::Array(embeds)) = msg.get_mut("embeds") {
        embeds.truncate(EMBEDS_MAX);
        let mut total: usize = embeds.iter_mut().map(fit_embed).sum();
        // Over the total: shorten descriptions from the last embed back.
        for e in embeds.iter_mut().rev() {
            if total <= EMBEDS_TOTAL_MAX {
                break;
            }
            let len = e["description"].as_str().map_or(0, |d| d.chars().count());
            let keep = len.saturating_sub(total - EMBEDS_TOTAL_MAX);
            cut(e, "description", keep.max(1));
            total -= len - e["description"].as_str().map_or(0, |d| d.chars().count());
        }
        // Still over (titles and fields alone): drop embeds from the end.
        while total > EMBEDS_TOTAL_MAX && embeds.len() > 1 {
            let mut last = embeds.pop().expect("more than one");
            total -= fit_embed(&mut last);
        }
        // One embed left and still over: its fields go from the end, then
        // its footer and author (a title and a description alone fit).
        if total > EMBEDS_TOTAL_MAX {
            if let Some(last) = embeds.last_mut() {
                while fit_embed(last) > EMBEDS_TOTAL_MAX {
                    let Some(obj) = last.as_object_mut() else {
                        break;
                    };
                    let dropped = match obj.get_mut("fields") {
                        Some(Value::Array(fields)) if !fields.is_empty() => fields.pop(),
                        _ => obj.remove("footer").or_else(|| obj.remove("author")),
                    };
                    if dropped.is_none() {
                        break;
                    }
                }
            }
        }
    }
    msg
}

/// `?wait=true`, so a failure is an answer rather than silence.
fn with_wait(url: &str) -> String {
    if url.contains("wait=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&wait=true")
    } else {
        format!("{url}?wait=true")
    }
}

impl Sink for DiscordSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let msg = match rendered {
            Rendered::Default => {
                let sum = summarize(event, &crate::route::context(event).payload);
                let mut embed =
                    json!({"title": sum.place, "description": discord_escape(&sum.text)});
                // `summarize` gives only http(s) URLs.
                if let Some(u) = sum.url {
                    embed["url"] = json!(u);
                }
                object(json!({"embeds": [embed]}))
            }
            Rendered::Text(t) => text_message(t, "content"),
            Rendered::Json(t) => json_message(t)?,
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(frozen_json(&Value::Object(fit(msg))))
    }

    fn outgoing(&self, d: &DeliveryRecord, _now: SystemTime) -> Result<Outgoing, String> {
        self.0.request(|u| with_wait(&u), d).map(Outgoing::Http)
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(self.0.post(
            |u| with_wait(&u),
            d,
            |status, headers, body| {
                (
                    classify(status, body, retry_after(headers, SystemTime::now())),
                    pause(headers),
                )
            },
        ))
    }
}

/// How long to wait when the bucket is empty (`X-RateLimit-Remaining: 0`).
fn pause(headers: &http::HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k)?.to_str().ok()?.trim().parse::<f64>().ok();
    (get("x-ratelimit-remaining")? <= 0.0)
        .then(|| get("x-ratelimit-reset-after"))
        .flatten()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

pub fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Verdict {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match status {
        200..=299 => Verdict::Delivered,
        429 => {
            let after = json["retry_after"]
                .as_f64()
                .and_then(super::wait_secs)
                .or(retry_after)
                .unwrap_or(Duration::from_secs(1));
            Verdict::RateLimited { after }
        }
        // "If a webhook returns a 404 you should not attempt to use it again."
        404 | 401 => Verdict::SinkGone(format!(
            "{status} code {}: {}",
            json["code"],
            json["message"].as_str().unwrap_or("")
        )),
        500..=599 | 408 | 425 => Verdict::Retry {
            after: retry_after,
            why: status.to_string(),
        },
        _ => Verdict::Permanent(format!(
            "{status} code {}: {}",
            json["code"],
            json["message"].as_str().unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(classify(204, b"", None), Verdict::Delivered);
        assert_eq!(classify(200, br#"{"id":"1"}"#, None), Verdict::Delivered);
        assert_eq!(
            classify(
                429,
                br#"{"message":"You are being rate limited.","retry_after":64.57,"global":false}"#,
                None
            ),
            Verdict::RateLimited {
                after: Duration::from_secs_f64(64.57)
            }
        );
        assert!(
            matches!(classify(404, br#"{"message":"Unknown Webhook","code":10015}"#, None), Verdict::SinkGone(w) if w.contains("10015"))
        );
        assert!(matches!(
            classify(400, br#"{"code":50035}"#, None),
            Verdict::Permanent(_)
        ));
        assert!(matches!(classify(503, b"", None), Verdict::Retry { .. }));
        assert!(matches!(classify(425, b"", None), Verdict::Retry { .. }));
        // An absurd retry_after is capped, not a panic.
        assert_eq!(
            classify(429, br#"{"retry_after":1e20}"#, None),
            Verdict::RateLimited {
                after: crate::sink::LONGEST_WAIT
            }
        );
    }

    #[test]
    fn limits_and_mentions() {
        let embeds: Vec<Value> = (0..12)
            .map(|_| json!({"title": "t".repeat(300), "description": "d".repeat(4000)}))
            .collect();
        let Value::Object(m) = json!({"content": "@everyone ".repeat(300), "embeds": embeds})
        else {
            panic!()
        };
        let f = fit(m);
        assert_eq!(f["allowed_mentions"], json!({"parse": []}));
        assert_eq!(f["content"].as_str().unwrap().chars().count(), CONTENT_MAX);
        let embeds = f["embeds"].as_array().unwrap();
        assert!(embeds.len() <= EMBEDS_MAX);
        let total: usize = embeds
            .iter()
            .map(|e| {
                e["title"].as_str().unwrap().chars().count()
                    + e["description"].as_str().unwrap_or("").chars().count()
            })
            .sum();
        assert!(total <= EMBEDS_TOTAL_MAX, "{total}");
        assert_eq!(embeds[0]["title"].as_str().unwrap().chars().count(), 256);
    }

    #[test]
    fn mentions_stay_off_whatever_the_message_says() {
        for m in [
            json!({"content": "@everyone", "allowed_mentions": {"parse": ["everyone", "roles"]}}),
            json!({"content": "x", "allowed_mentions": {"users": ["1"], "replied_user": true}}),
            json!({"content": "x", "allowed_mentions": "everyone"}),
        ] {
            let Value::Object(m) = m else { panic!() };
            assert_eq!(fit(m)["allowed_mentions"], json!({"parse": []}));
        }
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

    fn sent(rendered: &Rendered, event: &EventRecord) -> Value {
        let sink = DiscordSink(ChatWebhook::new(
            Err("unset".into()),
            reqwest::Client::new(),
        ));
        serde_json::from_slice(&sink.prepare(rendered, event).unwrap().body).unwrap()
    }

    /// The default embed: a `url` only for an http(s) URL, and the text's
    /// Markdown (masked links included) and mentions escaped.
    #[test]
    fn default_messages_link_only_web_urls() {
        let title = "[Log in](javascript:alert(1)) @everyone";
        let v = sent(
            &Rendered::Default,
            &pull_request(title, "https://github.com/a/b/pull/1"),
        );
        assert_eq!(v["embeds"][0]["url"], "https://github.com/a/b/pull/1");
        assert_eq!(
            v["embeds"][0]["description"],
            "lee\\-marsh merged pull request \\#218: \\[Log in\\]\\(javascript:alert\\(1\\)\\) @\u{200b}everyone"
        );
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "discord://x",
            "http//x",
        ] {
            let v = sent(&Rendered::Default, &pull_request("t", bad));
            assert!(v["embeds"][0].get("url").is_none(), "{bad}: {v}");
        }
    }

    #[test]
    fn embeds_link_only_to_web_urls() {
        let Value::Object(m) = json!({"embeds": [
            {"title": "a", "url": "javascript:alert(1)"},
            {"title": "b", "url": ""},
            {"title": "c", "url": "https://x.example/"},
        ]}) else {
            panic!()
        };
        let out = fit(m);
        assert!(out["embeds"][0].get("url").is_none());
        assert!(out["embeds"][1].get("url").is_none());
        assert_eq!(out["embeds"][2]["url"], "https://x.example/");
    }

    #[test]
    fn a_text_template_is_content_and_a_json_one_is_the_message() {
        let e = pull_request("t", "");
        let msg = r#"{"embeds": [{"title": "x"}], "allowed_mentions": {"parse": ["everyone"]}}"#;
        assert_eq!(
            sent(&Rendered::Text(msg.into()), &e),
            json!({"content": msg, "allowed_mentions": {"parse": []}})
        );
        assert_eq!(
            sent(&Rendered::Json(msg.into()), &e),
            json!({"embeds": [{"title": "x"}], "allowed_mentions": {"parse": []}})
        );
    }

    /// One embed over the total by its fields alone: fields go from the end.
    #[test]
    fn a_single_embed_over_the_total_loses_fields() {
        let fields: Vec<Value> = (0..25)
            .map(|i| json!({"name": format!("f{i}"), "value": "v".repeat(1024)}))
            .collect();
        let Value::Object(m) = json!({"embeds": [{
            "title": "t", "description": "d".repeat(100), "fields": fields,
            "footer": {"text": "f".repeat(2048)},
        }]}) else {
            panic!()
        };
        let out = fit(m);
        let mut embed = out["embeds"][0].clone();
        assert!(fit_embed(&mut embed) <= EMBEDS_TOTAL_MAX);
        let kept = embed["fields"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 25, "{}", kept.len());
        assert_eq!(kept[0]["name"], "f0", "the first fields stay");
    }

    #[test]
    fn wait_and_pause() {
        assert_eq!(
            with_wait("https://discord.com/api/webhooks/1/t"),
            "https://discord.com/api/webhooks/1/t?wait=true"
        );
        assert_eq!(
            with_wait("https://d/x?thread_id=5"),
            "https://d/x?thread_id=5&wait=true"
        );
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-ratelimit-reset-after", "1.5".parse().unwrap());
        assert_eq!(pause(&h), Some(Duration::from_millis(1500)));
        h.insert("x-ratelimit-remaining", "3".parse().unwrap());
        assert_eq!(pause(&h), None);
    }
}

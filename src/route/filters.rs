//! Filters a webhook router needs and MiniJinja lacks. Each is registered
//! under the name in the table below and documented in the README.
//!
//! | filter | does |
//! |---|---|
//! | `regex_match(pattern)` | whether the text matches (anywhere) |
//! | `regex_capture(pattern, group=1)` | the group of the first match, or empty text |
//! | `regex_captures(pattern, group=1)` | that group of every match, as a list |
//! | `truncate(n, marker="…")` | at most `n` characters, marker included |
//! | `striptags` | HTML tags removed, entities decoded, spaces collapsed |
//! | `slack_escape` | `&`, `<`, `>` escaped for Slack mrkdwn |
//! | `discord_escape` | Markdown and mentions neutralised for Discord |
//! | `web_url` | the URL if it is a well-formed http(s) one, else empty text |
//! | `slack_link(label)` | `<url\|label>` for an http(s) URL, else the label; both made safe for Slack |
//! | `tojson` | (MiniJinja's) JSON text of a value |
//!
//! In a Slack text message (escaped as it prints, `SLACK_ESCAPE`),
//! `slack_escape`, `slack_link` and `truncate` of safe text return safe
//! strings, written as they are.

use minijinja::{Error, ErrorKind, State, Value};

use super::SLACK_ESCAPE;

/// Registers every filter of this module on `env`. Each reads its input
/// as text: none and undefined (a payload's `null` or missing field) are
/// empty, numbers and booleans their text, so a field a provider leaves
/// out never fails a route.
pub fn register(env: &mut minijinja::Environment<'static>) {
    env.add_filter("regex_match", |v: &Value, p: &str| {
        regex_match(&text_of(v), p)
    });
    // Also a test, for `selectattr("message", "regex_match", "…")`.
    env.add_test("regex_match", |v: &Value, p: &str| {
        regex_match(&text_of(v), p)
    });
    env.add_filter("regex_capture", |v: &Value, p: &str, g: Option<usize>| {
        regex_capture(&text_of(v), p, g)
    });
    env.add_filter("regex_captures", |v: &Value, p: &str, g: Option<usize>| {
        regex_captures(&text_of(v), p, g)
    });
    // Text escaped for Slack stays so when cut.
    env.add_filter(
        "truncate",
        |state: &State, v: &Value, n: usize, marker: Option<&str>| {
            let cut = truncate(&text_of(v), n, marker);
            match v.is_safe() {
                true => for_slack(state, cut),
                false => Value::from(cut),
            }
        },
    );
    env.add_filter("striptags", |v: &Value| striptags(&text_of(v)));
    // In a Slack message (escaped as it prints) these are written as
    // they are, and text already safe there is not escaped twice
    // (MiniJinja's `escape` escapes through the formatter: for Slack).
    env.add_filter("slack_escape", |state: &State, v: &Value| {
        match v.is_safe() && state.auto_escape() == SLACK_ESCAPE {
            true => v.clone(),
            false => for_slack(state, slack_escape(&text_of(v))),
        }
    });
    env.add_filter("discord_escape", |v: &Value| discord_escape(&text_of(v)));
    env.add_filter("web_url", |v: &Value| {
        web_url(&text_of(v)).unwrap_or_default()
    });
    env.add_filter("slack_link", |state: &State, v: &Value, label: &Value| {
        for_slack(state, slack_link(&text_of(v), &text_of(label)))
    });
}

/// Text made safe for Slack: marked so in a Slack message, where it is
/// written as it is.
fn for_slack(state: &State, text: String) -> Value {
    match state.auto_escape() == SLACK_ESCAPE {
        true => Value::from_safe_string(text),
        false => Value::from(text),
    }
}

/// A template value as text: none and undefined are empty.
fn text_of(v: &Value) -> std::borrow::Cow<'_, str> {
    if v.is_undefined() || v.is_none() {
        "".into()
    } else if let Some(s) = v.as_str() {
        s.into()
    } else {
        v.to_string().into()
    }
}

/// Compiled patterns are cached: routes use a handful, evaluated per event.
fn compiled(pattern: &str) -> Result<regex::Regex, Error> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: Mutex<Option<HashMap<String, regex::Regex>>> = Mutex::new(None);
    let mut cache = CACHE.lock().expect("regex cache");
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(re) = cache.get(pattern) {
        return Ok(re.clone());
    }
    let re = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("bad regex `{pattern}`: {e}"),
            )
        })?;
    if cache.len() < 256 {
        cache.insert(pattern.to_owned(), re.clone());
    }
    Ok(re)
}

fn regex_match(text: &str, pattern: &str) -> Result<bool, Error> {
    Ok(compiled(pattern)?.is_match(text))
}

fn regex_capture(text: &str, pattern: &str, group: Option<usize>) -> Result<Value, Error> {
    let group = group.unwrap_or(1);
    Ok(compiled(pattern)?
        .captures(text)
        .and_then(|c| c.get(group))
        .map(|m| Value::from(m.as_str()))
        // Empty, not none: `| lower` would make none the text "none" (a
        // ProdMatic product named "none").
        .unwrap_or(Value::from("")))
}

fn regex_captures(text: &str, pattern: &str, group: Option<usize>) -> Result<Value, Error> {
    let group = group.unwrap_or(1);
    let found: Vec<Value> = compiled(pattern)?
        .captures_iter(text)
        .filter_map(|c| c.get(group).map(|m| Value::from(m.as_str())))
        .collect();
    Ok(Value::from(found))
}

/// At most `n` characters, the marker counted in; never splits a character.
pub fn truncate(text: &str, n: usize, marker: Option<&str>) -> String {
    let marker = marker.unwrap_or("…");
    if text.chars().count() <= n {
        return text.to_owned();
    }
    let keep = n.saturating_sub(marker.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(marker);
    out
}

/// Text of an HTML fragment (Intercom and Zendesk bodies): tags dropped,
/// the common entities decoded, whitespace collapsed.
pub fn striptags(html: &str) -> String {
    static TAG: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let tag = TAG.get_or_init(|| regex::Regex::new(r"<[^>]*>").expect("static regex"));
    let text = tag
        .replace_all(html, " ")
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Slack mrkdwn: only `&`, `<` and `>` are control characters.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A payload's URL if it may become a link: well-formed, http or https,
/// with a host; written as the URL parser normalises it. Anything else
/// (`javascript:`, `data:`, a mangled URL) is `None`.
pub fn web_url(text: &str) -> Option<String> {
    let url = reqwest::Url::parse(text).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty()))
        .then(|| url.to_string())
}

/// A web URL made safe inside Slack's `<url|label>`: the characters that
/// would end the link or start a mention encoded (an Intercom
/// conversation's URL is the page its user was on).
pub fn slack_url(text: &str) -> Option<String> {
    web_url(text).map(|url| {
        url.replace('&', "&amp;")
            .replace('|', "%7C")
            .replace('<', "%3C")
            .replace('>', "%3E")
            .replace(' ', "%20")
    })
}

/// A Slack link to `url` reading `label`, or just the label when the URL
/// may not become a link.
pub fn slack_link(url: &str, label: &str) -> String {
    let label = slack_escape(label);
    match slack_url(url) {
        Some(url) => format!("<{url}|{label}>"),
        None => label,
    }
}

/// Discord Markdown: backslash-escape formatting characters, and break
/// `@everyone`/`@here` and `<@…>` mentions with a zero-width space.
pub fn discord_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '-' | '[' | ']' | '(' | ')'
        ) {
            out.push('\\');
        }
        out.push(c);
        if c == '@' || c == '<' {
            out.push('\u{200b}');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, ctx: serde_json::Value) -> String {
        let mut env = minijinja::Environment::new();
        register(&mut env);
        env.render_str(src, ctx).unwrap()
    }

    #[test]
    fn regex_filters() {
        let ctx = serde_json::json!({"m": "Add export [FEAT-123] and [FEAT-7] [CLOSES]"});
        let closes = "{{ 'y' if m | regex_match('\\\\[CLOSES\\\\]') else 'n' }}";
        assert_eq!(render(closes, ctx.clone()), "y");
        assert_eq!(
            render(
                "{{ 'y' if m | regex_match('^\\\\[') else 'n' }}",
                ctx.clone()
            ),
            "n"
        );
        assert_eq!(
            render(
                "{{ m | regex_capture('\\\\[(FEAT-\\\\d+)\\\\]') }}",
                ctx.clone()
            ),
            "FEAT-123"
        );
        assert_eq!(
            render(
                "{{ m | regex_captures('\\\\[(FEAT-\\\\d+)\\\\]') | join(',') }}",
                ctx.clone()
            ),
            "FEAT-123,FEAT-7"
        );
        assert_eq!(
            render(
                "{{ 'none' if not m | regex_capture('nope(x)') else 'x' }}",
                ctx
            ),
            "none"
        );
    }

    #[test]
    fn regex_match_is_also_a_test() {
        let ctx = serde_json::json!({"commits": [{"m": "fix [FEAT-1]"}, {"m": "chore"}]});
        let out = render("{{ commits | selectattr('m', 'regex_match', '\\\\[FEAT-') | map(attribute='m') | join(',') }}", ctx);
        assert_eq!(out, "fix [FEAT-1]");
    }

    /// Providers send `null` or leave fields out: every filter reads those
    /// as empty text, and numbers as their text.
    #[test]
    fn filters_take_null_missing_and_numbers() {
        let ctx = serde_json::json!({"body": null, "n": 42});
        for f in [
            "truncate(5)",
            "striptags",
            "slack_escape",
            "discord_escape",
            "regex_capture('(x)')",
            "regex_captures('(x)') | join(',')",
        ] {
            for v in ["body", "missing.deeper", "n"] {
                let src = format!("[{{{{ {v} | {f} }}}}]");
                let out = {
                    let mut env = minijinja::Environment::new();
                    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
                    register(&mut env);
                    env.render_str(&src, ctx.clone())
                };
                assert!(out.is_ok(), "{src}: {out:?}");
            }
        }
        assert_eq!(render("{{ n | truncate(1, '') }}", ctx.clone()), "4");
        assert_eq!(
            render("{{ 'y' if body is regex_match('.') else 'n' }}", ctx),
            "n"
        );
    }

    #[test]
    fn bad_regex_is_an_error_not_a_panic() {
        let mut env = minijinja::Environment::new();
        register(&mut env);
        let err = env
            .render_str("{{ 'x' | regex_match('(') }}", ())
            .unwrap_err();
        assert!(err.to_string().contains("bad regex"), "{err}");
    }

    #[test]
    fn truncate_counts_characters_and_the_marker() {
        assert_eq!(truncate("héllo wörld", 7, None), "héllo …");
        assert_eq!(truncate("short", 10, None), "short");
        assert_eq!(truncate("abcdef", 4, Some("...")), "a...");
        assert_eq!(
            render("{{ 'abcdef' | truncate(3, '') }}", serde_json::json!({})),
            "abc"
        );
    }

    #[test]
    fn striptags_keeps_the_text() {
        assert_eq!(
            striptags("<p>Hi <b>there</b> &amp; welcome</p>\n<p>x</p>"),
            "Hi there & welcome x"
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(
            discord_escape("**hi** @everyone"),
            "\\*\\*hi\\*\\* @\u{200b}everyone"
        );
    }

    #[test]
    fn only_web_urls_become_links() {
        assert_eq!(
            web_url("https://github.com/acme/widgets/pull/218").as_deref(),
            Some("https://github.com/acme/widgets/pull/218")
        );
        assert_eq!(
            web_url("HTTP://Example.com/a b").as_deref(),
            Some("http://example.com/a%20b")
        );
        for bad in [
            "javascript:alert(1)",
            "JavaScript://example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox(1)",
            "file:///etc/passwd",
            "mailto:a@b.example",
            "https://",
            "//example.com/x",
            "not a url",
            "",
        ] {
            assert_eq!(web_url(bad), None, "{bad}");
            assert_eq!(slack_link(bad, "open"), "open", "{bad}");
        }
        assert_eq!(
            slack_link("https://x.example/a?b=1&c=2|3", "#1 <!channel>"),
            "<https://x.example/a?b=1&amp;c=2%7C3|#1 &lt;!channel&gt;>"
        );
        assert_eq!(
            render(
                "{{ u | web_url }}|{{ bad | web_url }}|{{ missing | slack_link('x') }}",
                serde_json::json!({"u": "https://a.example/", "bad": "javascript:x"})
            ),
            "https://a.example/||x"
        );
    }
}

//! The default message for any provider event, used by chat sinks when a
//! route gives no template: who did what, where, with a link (only ever an
//! http(s) one: the URL comes from the payload).

use crate::queue::EventRecord;

/// A one-line account of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// e.g. `acme/widgets`, `PRJ-42`, `Design`.
    pub place: String,
    /// e.g. `mona merged pull request #218: Add CSV export`.
    pub text: String,
    /// A well-formed http(s) URL, or none.
    pub url: Option<String>,
}

fn s<'a>(v: &'a serde_json::Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_str().unwrap_or("")
}

/// A number (or id) as text: a missing or null one is empty, not `null`.
fn num(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

fn opt(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

pub fn summarize(event: &EventRecord, payload: &serde_json::Value) -> Summary {
    let p = payload;
    let (place, text, url) = match (event.provider.as_str(), event.event.as_str()) {
        ("github", "push") => {
            let n = p["commits"].as_array().map_or(0, Vec::len);
            let branch = s(p, &["ref"]).trim_start_matches("refs/heads/");
            (
                s(p, &["repository", "full_name"]).to_owned(),
                format!(
                    "{} pushed {n} commit{} to {branch}",
                    s(p, &["pusher", "name"]),
                    if n == 1 { "" } else { "s" }
                ),
                opt(s(p, &["compare"])),
            )
        }
        ("github", "pull_request") => {
            let merged = p["pull_request"]["merged"].as_bool() == Some(true);
            let action = if merged { "merged" } else { s(p, &["action"]) };
            (
                s(p, &["repository", "full_name"]).to_owned(),
                format!(
                    "{} {action} pull request #{}: {}",
                    s(p, &["sender", "login"]),
                    num(&p["number"]),
                    s(p, &["pull_request", "title"])
                ),
                opt(s(p, &["pull_request", "html_url"])),
            )
        }
        ("github", "issues") => (
            s(p, &["repository", "full_name"]).to_owned(),
            format!(
                "{} {} issue #{}: {}",
                s(p, &["sender", "login"]),
                s(p, &["action"]),
                num(&p["issue"]["number"]),
                s(p, &["issue", "title"])
            ),
            opt(s(p, &["issue", "html_url"])),
        ),
        ("github", other) => (
            s(p, &["repository", "full_name"]).to_owned(),
            format!("{} sent {other}", s(p, &["sender", "login"])),
            opt(s(p, &["repository", "html_url"])),
        ),
        ("gitlab", "push") => {
            let n = p["total_commits_count"].as_u64().unwrap_or(0);
            (
                s(p, &["project", "path_with_namespace"]).to_owned(),
                format!(
                    "{} pushed {n} commit{} to {}",
                    s(p, &["user_username"]),
                    if n == 1 { "" } else { "s" },
                    s(p, &["ref"]).trim_start_matches("refs/heads/")
                ),
                opt(s(p, &["project", "web_url"])),
            )
        }
        ("gitlab", "merge_request") => (
            s(p, &["project", "path_with_namespace"]).to_owned(),
            format!(
                "{} {} merge request !{}: {}",
                s(p, &["user", "username"]),
                s(p, &["object_attributes", "action"]),
                num(&p["object_attributes"]["iid"]),
                s(p, &["object_attributes", "title"])
            ),
            opt(s(p, &["object_attributes", "url"])),
        ),
        ("gitlab", "pipeline") => (
            s(p, &["project", "path_with_namespace"]).to_owned(),
            format!(
                "pipeline #{} on {}: {}",
                num(&p["object_attributes"]["id"]),
                s(p, &["object_attributes", "ref"]),
                s(p, &["object_attributes", "status"])
            ),
            opt(s(p, &["object_attributes", "url"])),
        ),
        ("jira", _) => {
            let change = p["changelog"]["items"]
                .as_array()
                .and_then(|items| items.iter().find(|i| i["field"] == "status"))
                .map(|i| format!(" ({} → {})", s(i, &["fromString"]), s(i, &["toString"])))
                .unwrap_or_default();
            let browse = s(p, &["issue", "self"])
                .split("/rest/")
                .next()
                .filter(|b| !b.is_empty())
                .map(|b| format!("{b}/browse/{}", s(p, &["issue", "key"])));
            (
                s(p, &["issue", "key"]).to_owned(),
                format!(
                    "{} {}: {}{change}",
                    s(p, &["user", "displayName"]),
                    event.event.trim_start_matches("jira:").replace('_', " "),
                    s(p, &["issue", "fields", "summary"])
                ),
                browse,
            )
        }
        ("figma", _) => {
            let comment: String = p["comment"]
                .as_array()
                .map(|parts| parts.iter().filter_map(|c| c["text"].as_str()).collect())
                .unwrap_or_default();
            let key = s(p, &["file_key"]);
            (
                s(p, &["file_name"]).to_owned(),
                format!(
                    "{} {}: {}",
                    s(p, &["triggered_by", "handle"]),
                    event.event.to_lowercase().replace('_', " "),
                    comment.trim()
                ),
                (!key.is_empty()).then(|| format!("https://www.figma.com/file/{key}")),
            )
        }
        ("zendesk", _) => (
            format!("ticket #{}", s(p, &["detail", "id"])),
            format!(
                "{}: {}",
                event.event.rsplit(':').next().unwrap_or(""),
                s(p, &["detail", "subject"])
            ),
            None,
        ),
        ("intercom", _) => (
            format!("conversation {}", s(p, &["data", "item", "id"])),
            format!(
                "{} ({}): {}",
                s(p, &["data", "item", "source", "author", "name"]),
                event.event,
                s(p, &["data", "item", "title"])
            ),
            opt(s(p, &["data", "item", "source", "url"])),
        ),
        _ => (event.source.clone(), event.event.clone(), None),
    };
    Summary {
        place: if place.is_empty() {
            event.source.clone()
        } else {
            place
        },
        text,
        url: url.as_deref().and_then(crate::route::filters::web_url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(provider: &str, event: &str) -> EventRecord {
        EventRecord {
            source: provider.into(),
            provider: provider.into(),
            event: event.into(),
            delivery_id: "d".into(),
            received_at_ms: 0,
            client_ip: "127.0.0.1".into(),
            headers: vec![],
            body: vec![],
        }
    }

    fn sample(provider: &str, event: &str) -> serde_json::Value {
        serde_json::from_str(crate::samples::find(provider, event).unwrap()).unwrap()
    }

    #[test]
    fn every_bundled_sample_has_a_readable_summary() {
        for (provider, event, _) in crate::samples::SAMPLES {
            let kind = match (*provider, *event) {
                ("jira", e) => format!("jira:{e}"),
                ("zendesk", e) => format!("zen:event-type:{e}"),
                (_, e) => e.to_string(),
            };
            let sum = summarize(&record(provider, &kind), &sample(provider, event));
            assert!(
                !sum.text.trim().is_empty() && !sum.place.is_empty(),
                "{provider}/{event}: {sum:?}"
            );
        }
    }

    #[test]
    fn links_are_web_urls_or_none() {
        let mut p = sample("github", "pull_request");
        for (bad, want) in [
            ("javascript:alert(1)", None),
            ("data:text/html,<script>x</script>", None),
            ("https://", None),
            ("https://github.com/a b", Some("https://github.com/a%20b")),
        ] {
            p["pull_request"]["html_url"] = bad.into();
            let sum = summarize(&record("github", "pull_request"), &p);
            assert_eq!(sum.url.as_deref(), want, "{bad}");
        }
        let jira = serde_json::json!({"issue": {"key": "X-1", "self": "javascript:alert(1)//x/rest/api/2/issue/1"}});
        assert_eq!(
            summarize(&record("jira", "jira:issue_updated"), &jira).url,
            None
        );
    }

    /// A missing or null number reads as nothing, never as `null`; one
    /// sent as a string reads as itself.
    #[test]
    fn missing_numbers_are_empty_not_null() {
        for (provider, event, field) in [
            ("github", "pull_request", &["number"][..]),
            ("github", "issues", &["issue", "number"][..]),
            ("gitlab", "merge_request", &["object_attributes", "iid"][..]),
            ("gitlab", "pipeline", &["object_attributes", "id"][..]),
        ] {
            let mut p = sample(provider, event);
            let at = field.iter().fold(&mut p, |v, k| &mut v[*k]);
            *at = serde_json::Value::Null;
            let text = summarize(&record(provider, event), &p).text;
            assert!(!text.contains("null"), "{provider}/{event}: {text}");
            *field.iter().fold(&mut p, |v, k| &mut v[*k]) = "77".into();
            let text = summarize(&record(provider, event), &p).text;
            assert!(
                text.contains("77") && !text.contains("\"77\""),
                "{provider}/{event}: {text}"
            );
        }
    }

    #[test]
    fn merged_pull_request_says_so_with_its_link() {
        let sum = summarize(
            &record("github", "pull_request"),
            &sample("github", "pull_request"),
        );
        assert!(sum.text.contains("merged pull request #"), "{sum:?}");
        assert!(sum.url.unwrap().starts_with("https://github.com/"));
        let jira = summarize(
            &record("jira", "jira:issue_updated"),
            &sample("jira", "issue_updated"),
        );
        assert!(jira.text.contains("(To Do → In Progress)"), "{jira:?}");
    }
}

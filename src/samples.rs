//! Realistic sample deliveries bundled into the binary, for `hookgate send`.

/// (provider, event, body). The event is what `hookgate send` takes and what
/// the provider's signer receives (GitHub's header value, GitLab's
/// `object_kind`, …).
pub const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "github",
        "push",
        include_str!("../samples/github/push.json"),
    ),
    (
        "github",
        "pull_request",
        include_str!("../samples/github/pull_request.json"),
    ),
    (
        "github",
        "issues",
        include_str!("../samples/github/issues.json"),
    ),
    (
        "github",
        "ping",
        include_str!("../samples/github/ping.json"),
    ),
    (
        "gitlab",
        "push",
        include_str!("../samples/gitlab/push.json"),
    ),
    (
        "gitlab",
        "merge_request",
        include_str!("../samples/gitlab/merge_request.json"),
    ),
    (
        "gitlab",
        "pipeline",
        include_str!("../samples/gitlab/pipeline.json"),
    ),
    (
        "jira",
        "issue_updated",
        include_str!("../samples/jira/issue_updated.json"),
    ),
    (
        "figma",
        "FILE_COMMENT",
        include_str!("../samples/figma/FILE_COMMENT.json"),
    ),
    (
        "zendesk",
        "ticket.created",
        include_str!("../samples/zendesk/ticket.created.json"),
    ),
    (
        "intercom",
        "conversation.user.created",
        include_str!("../samples/intercom/conversation.user.created.json"),
    ),
];

/// The bundled body for `provider`/`event`, where `event` is the sample's
/// name or the event type routes see for it (`issue_updated` or
/// `jira:issue_updated`; `ticket.created` or
/// `zen:event-type:ticket.created`).
pub fn find(provider: &str, event: &str) -> Option<&'static str> {
    find_named(provider, event).map(|(_, body)| body)
}

/// Like [`find`], with the sample's own name.
pub fn find_named(provider: &str, event: &str) -> Option<(&'static str, &'static str)> {
    SAMPLES
        .iter()
        .find(|(p, e, _)| *p == provider && (*e == event || route_event(p, e) == event))
        .map(|(_, e, body)| (*e, *body))
}

/// The event type routes match for a sample (what the provider's body or
/// header carries): Jira's `webhookEvent` and Zendesk's `type` have a
/// prefix the sample's short name leaves out.
pub fn route_event(provider: &str, sample: &str) -> String {
    match provider {
        "jira" => format!("jira:{sample}"),
        "zendesk" => format!("zen:event-type:{sample}"),
        _ => sample.to_owned(),
    }
}

/// The events bundled for `provider`.
pub fn events(provider: &str) -> Vec<&'static str> {
    SAMPLES
        .iter()
        .filter(|(p, _, _)| *p == provider)
        .map(|(_, e, _)| *e)
        .collect()
}

/// Makes `body` a new delivery for providers whose dedupe key is in the
/// body (Intercom `id`, Zendesk `id`, Figma's `comment_id`).
/// Other providers carry the id in a header, and the body stays as it is.
pub fn with_delivery_id(provider: &str, body: &[u8], id: &str) -> Vec<u8> {
    let field = match provider {
        "intercom" | "zendesk" => "id",
        "figma" => "comment_id",
        _ => return body.to_vec(),
    };
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(body) else {
        return body.to_vec();
    };
    let value = match provider {
        "intercom" => format!("notif_{id}"),
        _ => id.to_owned(),
    };
    map.insert(field.to_owned(), serde_json::Value::String(value));
    serde_json::to_vec_pretty(&map).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_json() {
        for (p, e, body) in SAMPLES {
            assert!(
                serde_json::from_str::<serde_json::Value>(body).is_ok(),
                "{p}/{e}"
            );
        }
    }

    /// #8.13: `send` takes the event type routes see, too.
    #[test]
    fn samples_are_found_by_route_event_names_too() {
        for (p, e, body) in SAMPLES {
            assert_eq!(find(p, &route_event(p, e)), Some(*body), "{p}/{e}");
            assert_eq!(find(p, e), Some(*body));
        }
        assert_eq!(
            find_named("jira", "jira:issue_updated").map(|(e, _)| e),
            Some("issue_updated")
        );
        // The route event of a sample matches what its body carries.
        let jira: serde_json::Value =
            serde_json::from_str(find("jira", "issue_updated").unwrap()).unwrap();
        assert_eq!(jira["webhookEvent"], "jira:issue_updated");
        let zendesk: serde_json::Value =
            serde_json::from_str(find("zendesk", "ticket.created").unwrap()).unwrap();
        assert_eq!(zendesk["type"], "zen:event-type:ticket.created");
    }

    #[test]
    fn body_ids_are_replaced() {
        let body = with_delivery_id(
            "intercom",
            find("intercom", "conversation.user.created")
                .unwrap()
                .as_bytes(),
            "x1",
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "notif_x1");
        let gh = find("github", "push").unwrap().as_bytes();
        assert_eq!(with_delivery_id("github", gh, "x1"), gh);
    }
}

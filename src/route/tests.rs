use super::*;

fn ctx(source: &str, event: &str, payload: serde_json::Value) -> EventContext {
    EventContext {
        source: source.into(),
        event: event.into(),
        delivery_id: "d-1".into(),
        received_at: "2026-11-27T05:00:00Z".into(),
        headers: BTreeMap::from([("x-github-event".to_string(), event.to_string())]),
        payload,
    }
}

fn route(name: &str, content: ContentSpec) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        sources: vec!["github".into()],
        event: Some(EventPattern::new("pull_request")),
        when: None,
        each: None,
        to: vec!["slack".into()],
        slack: vec![],
        content,
        order_key: None,
    }
}

/// The text the first outcome rendered (panics on anything else).
fn rendered_text(out: &[Outcome]) -> &str {
    match out.first() {
        Some(Outcome::Rendered {
            content: Rendered::Text(t),
            ..
        }) => t,
        _ => panic!("{out:?}"),
    }
}

fn text(source: &str) -> ContentSpec {
    ContentSpec::Template {
        source: source.into(),
        json: false,
        file: None,
    }
}

#[test]
fn merged_pull_request_renders_for_every_sink() {
    let mut r = route(
        "merged-prs",
        text(
            "{{ payload.pull_request.title | slack_escape }} merged by {{ payload.sender.login }}",
        ),
    );
    r.when = Some("payload.action == 'closed' and payload.pull_request.merged".into());
    r.to = vec!["slack".into(), "log".into()];
    let routes = Routes::compile(vec![r]).unwrap();
    let merged = ctx(
        "github",
        "pull_request",
        serde_json::json!({"action": "closed", "pull_request": {"merged": true, "title": "A <b>"}, "sender": {"login": "mona"}}),
    );
    let out = routes.evaluate(&merged);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0],
        Outcome::Rendered {
            route: "merged-prs".into(),
            sink: "slack".into(),
            item: None,
            content: Rendered::Text("A &lt;b&gt; merged by mona".into()),
            order_key: None,
        }
    );
    // Closed without merging, another event, another source: nothing.
    let closed = ctx(
        "github",
        "pull_request",
        serde_json::json!({"action": "closed", "pull_request": {"merged": false}}),
    );
    assert!(routes.evaluate(&closed).is_empty());
    assert!(routes
        .evaluate(&ctx("github", "push", serde_json::json!({})))
        .is_empty());
    assert!(routes
        .evaluate(&ctx("gitlab", "pull_request", serde_json::json!({})))
        .is_empty());
}

/// A text message to a Slack sink prints every value escaped for Slack: a
/// payload writes no mention and no link of its own. The template's own
/// text, `slack_escape`, `slack_link`, `escape` and `| safe` are written
/// as they are (nothing escaped twice). Another sink of the same route
/// gets the text as the template printed it.
#[test]
fn a_slack_message_escapes_what_the_payload_prints() {
    let mut r = route(
        "announce",
        text(concat!(
            "<!here> {{ payload.login }} by {{ payload.sender }}: ",
            "{{ payload.title | slack_escape }} {{ payload.url | slack_link('PR') }} ",
            "{{ payload.title | e }} {{ payload.title | truncate(3) }} ",
            "{{ payload.title | slack_escape | truncate(6) }} {{ payload.n }} ",
            "{{ payload.labels }} {{ payload.trusted | safe }}{{ payload.none }}",
        )),
    );
    r.to = vec!["slack".into(), "discord".into()];
    r.slack = vec!["slack".into()];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx(
        "github",
        "pull_request",
        serde_json::json!({
            "login": "<!channel>",
            "sender": "<mailto:ceo@corp.example|Payroll> & <@U024BE7LH>",
            "title": "a<b>",
            "url": "https://example.com/pr/1?a=1&b=2",
            "n": 7,
            "labels": ["<x>"],
            "trusted": "<#C123>",
            "none": null,
        }),
    ));
    let texts: Vec<(&str, &str)> = out
        .iter()
        .map(|o| match o {
            Outcome::Rendered {
                sink,
                content: Rendered::Text(t),
                ..
            } => (sink.as_str(), t.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        texts,
        [
            (
                "slack",
                concat!(
                    "<!here> &lt;!channel&gt; by &lt;mailto:ceo@corp.example|Payroll&gt; &amp; &lt;@U024BE7LH&gt;: ",
                    "a&lt;b&gt; <https://example.com/pr/1?a=1&amp;b=2|PR> ",
                    "a&lt;b&gt; a&lt;… ",
                    "a&lt;… 7 ",
                    "[\"&lt;x&gt;\"] <#C123>",
                )
            ),
            (
                "discord",
                concat!(
                    "<!here> <!channel> by <mailto:ceo@corp.example|Payroll> & <@U024BE7LH>: ",
                    "a&lt;b&gt; <https://example.com/pr/1?a=1&amp;b=2|PR> ",
                    "a&lt;b&gt; a<… ",
                    "a&lt;… 7 ",
                    "[\"<x>\"] <#C123>",
                )
            ),
        ]
    );
}

/// In a Slack message a string written inside `{{ }}` and a `~` join are
/// values like any other (escaped); a macro's output and text
/// `slack_escape` already made safe are not escaped twice; text outside
/// `{{ }}` is the template's own.
#[test]
fn a_slack_message_escapes_values_once() {
    let mut r = route(
        "once",
        text(concat!(
            "{% macro who(x) %}<@{{ x }}>{% endmacro %}",
            "{% if payload.p1 %}<!channel>{% endif %} {{ '<!here>' }} ",
            "{{ payload.a ~ '>' }} {{ who(payload.a) }} {{ who(payload.a) | slack_escape }} ",
            "{% filter slack_escape %}{{ payload.a }}{% endfilter %}",
        )),
    );
    r.slack = vec!["slack".into()];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx(
        "github",
        "pull_request",
        serde_json::json!({"p1": true, "a": "U<1"}),
    ));
    assert_eq!(
        rendered_text(&out),
        "<!channel> &lt;!here&gt; U&lt;1&gt; <@U&lt;1> <@U&lt;1> U&lt;1"
    );
}

/// A render error of a Slack message names the message, as the other
/// sinks' does.
#[test]
fn a_slack_message_fails_as_the_message() {
    let mut r = route("boom", text("{{ payload.n + 'x' }}"));
    r.to = vec!["slack".into()];
    r.slack = vec!["slack".into()];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx("github", "pull_request", serde_json::json!({"n": 1})));
    let Some(Outcome::Failed { error, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert!(error.starts_with("message: "), "{error}");
    assert!(!error.contains("slack"), "{error}");
}

#[test]
fn missing_fields_are_falsy_not_errors() {
    let mut r = route("r", ContentSpec::Default);
    r.when = Some("payload.pull_request.merged".into());
    let routes = Routes::compile(vec![r]).unwrap();
    assert!(routes
        .evaluate(&ctx("github", "pull_request", serde_json::json!({})))
        .is_empty());
}

#[test]
fn each_makes_one_delivery_per_item_with_action_fields() {
    let mut r = route(
        "link-commits",
        ContentSpec::Action {
            action: "update_feature".into(),
            fields: BTreeMap::from([
                (
                    "id".to_string(),
                    "{{ item.message | regex_capture('\\\\[(FEAT-\\\\d+)\\\\]') }}".to_string(),
                ),
                (
                    "status".to_string(),
                    "{% if item.message | regex_match('\\\\[CLOSES\\\\]') %}COMPLETED{% endif %}"
                        .to_string(),
                ),
            ]),
        },
    );
    r.event = Some(EventPattern::new("push"));
    r.each = Some("payload.commits".into());
    r.to = vec!["prodmatic".into()];
    let routes = Routes::compile(vec![r]).unwrap();
    let push = ctx(
        "github",
        "push",
        serde_json::json!({"commits": [{"message": "Add CSV [FEAT-123]"}, {"message": "Ship it [FEAT-123] [CLOSES]"}]}),
    );
    let out = routes.evaluate(&push);
    assert_eq!(out.len(), 2);
    let fields = |o: &Outcome| match o {
        Outcome::Rendered {
            content: Rendered::Action { fields, .. },
            item,
            ..
        } => (item.unwrap(), fields.clone()),
        other => panic!("{other:?}"),
    };
    let (i0, f0) = fields(&out[0]);
    let (i1, f1) = fields(&out[1]);
    assert_eq!(
        (i0, f0["id"].as_str(), f0["status"].as_str()),
        (0, "FEAT-123", "")
    );
    assert_eq!((i1, f1["status"].as_str()), (1, "COMPLETED"));
}

#[test]
fn every_compile_error_is_reported_with_route_and_part() {
    let mut a = route("a", text("{{ payload.x "));
    a.when = Some("payload.action ==".into());
    let b = route(
        "b",
        ContentSpec::Action {
            action: "create_idea".into(),
            fields: BTreeMap::from([("title".to_string(), "{% if %}".to_string())]),
        },
    );
    let errors = Routes::compile(vec![a, b]).unwrap_err();
    let parts: Vec<(String, String)> = errors
        .iter()
        .map(|e| (e.route.clone(), e.part.clone()))
        .collect();
    assert_eq!(
        parts,
        vec![
            ("a".to_string(), "when".to_string()),
            ("a".to_string(), "message".to_string()),
            ("b".to_string(), "fields.title".to_string()),
        ]
    );
    assert!(
        errors[0].to_string().starts_with("route `a`, when"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_runaway_template_runs_out_of_fuel_and_fails_alone() {
    let slow = route(
        "slow",
        text("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
    );
    let mut fine = route("fine", text("ok"));
    fine.to = vec!["log".into()];
    let routes = Routes::compile(vec![slow, fine]).unwrap();
    let started = std::time::Instant::now();
    let out = routes.evaluate(&ctx("github", "pull_request", serde_json::json!({})));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "fuel stops it"
    );
    assert!(
        matches!(&out[0], Outcome::Failed { route, error, .. } if route == "slow" && error.contains("fuel")),
        "{out:?}"
    );
    assert!(
        matches!(&out[1], Outcome::Rendered { route, content: Rendered::Text(t), .. } if route == "fine" && t == "ok")
    );
}

#[test]
fn each_over_a_non_list_or_too_many_items_fails_the_route() {
    let mut r = route("r", text("x"));
    r.each = Some("payload.n".into());
    let routes = Routes::compile(vec![r.clone()]).unwrap();
    let out = routes.evaluate(&ctx("github", "pull_request", serde_json::json!({"n": 5})));
    assert!(
        matches!(&out[0], Outcome::Failed { error, .. } if error.contains("not a list")),
        "{out:?}"
    );
    r.each = Some("range(1000)".into());
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx("github", "pull_request", serde_json::json!({})));
    assert!(
        matches!(&out[0], Outcome::Failed { error, .. } if error.contains("more than the 100")),
        "{out:?}"
    );
}

#[test]
fn json_templates_escape_as_json() {
    let mut r = route("r", text(r#"{"text": {{ payload.title | tojson }}}"#));
    r.event = None;
    r.sources = vec![];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx(
        "jira",
        "x",
        serde_json::json!({"title": "say \"hi\"\n"}),
    ));
    let t = rendered_text(&out);
    let v: serde_json::Value = serde_json::from_str(t).unwrap();
    assert_eq!(v["text"], "say \"hi\"\n");
}

/// A template file named `*.json.j2` writes every value as JSON, with no
/// `tojson`: a title with quotes cannot break out of its string.
#[test]
fn json_template_files_escape_without_tojson() {
    let mut r = route(
        "r",
        ContentSpec::Template {
            source: r#"{"text": {{ payload.title }}, "n": {{ payload.n }}}"#.into(),
            json: true,
            file: None,
        },
    );
    r.event = None;
    r.sources = vec![];
    let routes = Routes::compile(vec![r]).unwrap();
    let title = r#"x", "text": "<!channel> pwned"#;
    let out = routes.evaluate(&ctx(
        "github",
        "x",
        serde_json::json!({"title": title, "n": 3}),
    ));
    let Some(Outcome::Rendered {
        content: Rendered::Json(t),
        ..
    }) = out.first()
    else {
        panic!("a `*.json` template renders JSON: {out:?}")
    };
    let v: serde_json::Value = serde_json::from_str(t).unwrap();
    assert_eq!(v["text"], title);
    assert_eq!(v["n"], 3);
}

/// A text template whose output parses as JSON is still text: the sinks
/// take no message structure from it.
#[test]
fn a_text_template_that_renders_json_is_text() {
    let mut r = route("r", text("{{ payload.title }}"));
    r.event = None;
    let routes = Routes::compile(vec![r]).unwrap();
    let title = r#"{"text": "<!channel>", "blocks": []}"#;
    let out = routes.evaluate(&ctx("github", "x", serde_json::json!({ "title": title })));
    assert_eq!(rendered_text(&out), title);
}

/// A payload's `null` renders as nothing, not as `none`.
#[test]
fn null_fields_render_empty() {
    let mut r = route(
        "r",
        text(
            "[{{ payload.body }}][{{ payload.subject | regex_capture('^\\[(\\w+)\\]') | lower }}]",
        ),
    );
    r.event = None;
    r.sources = vec![];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx(
        "zendesk",
        "x",
        serde_json::json!({"body": null, "subject": "CSV export fails"}),
    ));
    let t = rendered_text(&out);
    assert_eq!(t, "[][]");
}

/// A template that would render a gigabyte fails alone, at the cap.
#[test]
fn huge_output_fails_the_route_not_the_daemon() {
    let mut r = route(
        "big",
        text("{% for i in range(100) %}{{ 'x' * 10000000 }}{% endfor %}"),
    );
    r.event = None;
    r.sources = vec![];
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx("github", "x", serde_json::json!({})));
    assert!(
        matches!(&out[0], Outcome::Failed { error, .. } if error.contains("output is over")),
        "{out:?}"
    );
}

/// `each` over a string or a mapping fails the route instead of making a
/// delivery per character or key.
#[test]
fn each_takes_lists_only() {
    for (payload, kind) in [
        (serde_json::json!({"commits": "abc"}), "string"),
        (serde_json::json!({"commits": {"a": 1, "b": 2}}), "map"),
    ] {
        let mut r = route("r", text("{{ item }}"));
        r.event = None;
        r.sources = vec![];
        r.each = Some("payload.commits".into());
        let routes = Routes::compile(vec![r]).unwrap();
        let out = routes.evaluate(&ctx("github", "push", payload));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            matches!(&out[0], Outcome::Failed { error, .. } if error.contains(&format!("is a {kind}, not a list"))),
            "{out:?}"
        );
    }
}

/// `order_key` renders per delivery (with `item` under `each`), trimmed;
/// empty is unordered, a failure fails the delivery, a syntax error names
/// the part.
#[test]
fn order_key_renders_per_item_and_empty_is_unordered() {
    let mut r = route("features", text("{{ item.key }}"));
    r.event = None;
    r.each = Some("payload.items".into());
    r.order_key = Some(" {{ item.key }} ".into());
    let routes = Routes::compile(vec![r.clone()]).unwrap();
    let out = routes.evaluate(&ctx(
        "github",
        "push",
        serde_json::json!({"items": [{"key": "PM-1"}, {"key": ""}]}),
    ));
    let keys: Vec<_> = out
        .iter()
        .map(|o| match o {
            Outcome::Rendered { order_key, .. } => order_key.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(keys, [Some("PM-1".to_owned()), None]);

    r.order_key = Some("{{ item.key | nope }}".into());
    let errors = Routes::compile(vec![r.clone()]).unwrap_err();
    assert!(errors.iter().any(|e| e.part == "order_key"), "{errors:?}");
    r.order_key = Some("{{ item.key ".into());
    let errors = Routes::compile(vec![r.clone()]).unwrap_err();
    assert_eq!(errors[0].part, "order_key");

    r.order_key = Some("{{ item.n + 'x' }}".into());
    let routes = Routes::compile(vec![r]).unwrap();
    let out = routes.evaluate(&ctx(
        "github",
        "push",
        serde_json::json!({"items": [{"key": "PM-1", "n": 0}]}),
    ));
    assert!(
        matches!(&out[0], Outcome::Failed { error, .. } if error.contains("order_key")),
        "{out:?}"
    );
}

/// Regression (the `config` fuzz target): an expression holding `}}` made
/// MiniJinja panic ("empty lexer stack") while the config loaded. It is a
/// compile error of that route, with what to write instead.
#[test]
fn an_expression_holding_a_closing_brace_pair_is_an_error_not_a_panic() {
    let mut r = route("r", text("x"));
    r.when = Some("payload.status == (80) | discord_escape }} {{ item.url".into());
    let errors = match Routes::compile(vec![r]) {
        Err(e) => e,
        Ok(_) => panic!("compiled"),
    };
    let shown = format!("{errors:?}");
    assert!(shown.contains("holds no `}}`"), "{shown}");
}

/// `hookgate route` says why each route made nothing: its source, its
/// event pattern, the first false condition of its `when`, an empty
/// `each`. The deliveries are those `evaluate` makes.
#[test]
fn explain_names_the_filter_that_kept_each_route_out() {
    let mut other_source = route("zendesk-only", ContentSpec::Default);
    other_source.sources = vec!["zendesk".into()];
    let mut other_event = route("pushes", ContentSpec::Default);
    other_event.event = Some(EventPattern::new("push"));
    let mut merged = route("merged", ContentSpec::Default);
    merged.when = Some(
        "payload.action == 'closed' and (payload.pull_request.merged or false) and payload.number > 1000"
            .into(),
    );
    let mut single = route("single", ContentSpec::Default);
    single.when = Some("payload.action == 'opened'".into());
    let mut each = route("labels", ContentSpec::Default);
    each.each = Some("payload.labels".into());
    let fires = route("fires", ContentSpec::Default);
    let routes =
        Routes::compile(vec![other_source, other_event, merged, single, each, fires]).unwrap();
    let event = ctx(
        "github",
        "pull_request",
        serde_json::json!({"action": "closed", "pull_request": {"merged": true}, "number": 7, "labels": []}),
    );
    let (out, skipped) = routes.explain(&event);
    assert_eq!(out, routes.evaluate(&event));
    assert!(matches!(&out[..], [Outcome::Rendered { route, .. }] if route == "fires"));
    let why: Vec<(&str, String)> = skipped
        .iter()
        .map(|s| (s.route.as_str(), s.why.to_string()))
        .collect();
    assert_eq!(
        why,
        [
            ("zendesk-only", "it takes events from source `zendesk` only".to_string()),
            ("pushes", "its event = \"push\" does not match `pull_request`".into()),
            (
                "merged",
                "its when is false: `payload.number > 1000` is false (when = \"payload.action == 'closed' and (payload.pull_request.merged or false) and payload.number > 1000\")".into()
            ),
            ("single", "its when is false (when = \"payload.action == 'opened'\")".into()),
            ("labels", "its each gave no items (each = \"payload.labels\")".into()),
        ]
    );
    assert_eq!(
        skipped
            .iter()
            .map(|s| s.why.takes_the_event())
            .collect::<Vec<_>>(),
        [false, false, true, true, true]
    );
}

/// Only a top-level `and` splits a `when` into conditions; `or` or `if`
/// at the top, or an `and` inside brackets or a string, does not.
#[test]
fn and_joined_conditions_are_split_at_the_top_level_only() {
    assert_eq!(
        and_joined("a == 'x and y' and (b or c and d) and e | f('and')"),
        Some(vec!["a == 'x and y'", "(b or c and d)", "e | f('and')"])
    );
    assert_eq!(and_joined("a and b or c"), None);
    assert_eq!(and_joined("a and b if c else d"), None);
    assert_eq!(and_joined("a == 1"), None);
}

/// A render error in a template file names the file and the line in it
/// (not the route's internal template name); an inline message names
/// the route and its part.
#[test]
fn a_template_file_render_error_names_the_file_and_line() {
    let content = |file: Option<&str>| ContentSpec::Template {
        source: "{\n  \"text\": {{ payload.n + 'x' }}\n}".into(),
        json: true,
        file: file.map(str::to_owned),
    };
    let mut in_file = route("card", content(Some("templates/card.teams.json")));
    in_file.event = None;
    let mut inline = route("inline", content(None));
    inline.event = None;
    let routes = Routes::compile(vec![in_file, inline]).unwrap();
    let out = routes.evaluate(&ctx("github", "push", serde_json::json!({"n": 1})));
    let errors: Vec<&str> = out
        .iter()
        .map(|o| match o {
            Outcome::Failed { error, .. } => error.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        errors[0].starts_with("message.json: invalid operation"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].ends_with("(in templates/card.teams.json:2)"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].ends_with("(in inline/message.json:2)"),
        "{}",
        errors[1]
    );
}

/// Routes that cannot reach the payload route an event without parsing it
/// (`reads.rs`), and make exactly what they made with it parsed: for every
/// sample, [`Routes::evaluate_event`] (the router's path) equals
/// [`Routes::evaluate`] on the whole context.
#[test]
fn routes_that_never_read_the_payload_make_the_same_without_it() {
    let any = |name: &str, content: ContentSpec| RouteSpec {
        sources: vec![],
        event: None,
        ..route(name, content)
    };
    let mut when_envelope = any("when-envelope", text("{{ source }}:{{ event }}"));
    when_envelope.when = Some("headers['content-type'] is defined or delivery_id".into());
    let mut when_payload = any("when-payload", text("{{ event }}"));
    when_payload.when = Some("payload.action is defined".into());
    let mut each = any("each", text("{{ item }}"));
    each.each = Some("payload.commits or []".into());
    let mut ordered = any("ordered", ContentSpec::Default);
    ordered.order_key = Some("{{ payload.repository.full_name }}".into());
    let specs = vec![
        any("forward", ContentSpec::Default),
        any(
            "envelope",
            text("{{ source }}/{{ event }} {{ delivery_id }} {{ received_at }}"),
        ),
        any("failing", text("{{ range(1000000) }}")),
        when_envelope,
        any("payload", text("{{ payload | tojson }}")),
        any("included", text("{% include 'payload/message' %}")),
        when_payload,
        each,
        ordered,
    ];
    let routes = Routes::compile(specs).unwrap();
    assert_eq!(
        routes.reads_payload,
        [false, false, false, false, true, true, true, true, true]
    );
    let mut events = 0;
    for provider in std::fs::read_dir("samples").unwrap() {
        for sample in std::fs::read_dir(provider.unwrap().path()).unwrap() {
            let mut event = crate::queue::sample_record();
            event.headers = vec![("content-type".into(), b"application/json".to_vec())];
            event.body = std::fs::read(sample.unwrap().path()).unwrap();
            let whole = routes.evaluate(&context::context(&event));
            assert!(whole.len() >= 5, "{whole:?}");
            assert_eq!(routes.evaluate_event(&event), whole);
            events += 1;
        }
    }
    assert!(events >= 10);
}

/// The router reads a payload only as far as its templates look
/// (`lazy.rs`), and they see exactly what the whole parse gives: for every
/// sample and every edge of JSON (`context::bodies`: repeated keys,
/// escapes, nesting at serde_json's limit, documents it refuses), each
/// shape of template below makes the same through
/// [`Routes::evaluate_event`] (the router's path) as through
/// [`Routes::evaluate`] on the whole context, errors included.
#[test]
fn a_payload_read_as_far_as_templates_look_is_the_whole_payload() {
    let any = |name: &str, content: ContentSpec| RouteSpec {
        sources: vec![],
        event: None,
        ..route(name, content)
    };
    let texts = [
        "{{ payload }} {{ payload | pprint }} {{ debug(payload) }}",
        "{{ payload | tojson }} {{ payload | tojson(indent=2) }}",
        "{{ payload.ref }}|{{ payload.repository.full_name }}|{{ payload.repository.owner.login }}",
        "{{ payload | length }} {{ payload.commits | length }} {{ payload.a | length }}",
        "{% for c in payload.commits %}{{ c.id }}:{{ c.author.name }};{% endfor %}",
        "{{ payload.commits[0] }} {{ payload.commits[-1] }} {{ payload[0] }} {{ payload['ref'] }}",
        "{% for k, v in payload | items %}{{ k }}={{ v | tojson }};{% endfor %}",
        "{{ payload | dictsort | tojson }} {{ payload | list | tojson }}",
        "{{ payload == payload }} {{ payload.sender == payload.repository.owner }} {{ payload.o == payload.o }}",
        "{{ payload is mapping }} {{ payload is sequence }} {{ payload is string }} {{ payload is number }}",
        "{{ payload.commits | map(attribute='id') | join(',') }} {{ payload.commits | selectattr('distinct') | list | length }}",
        "{% if payload %}t{% else %}f{% endif %}{% if payload.commits %}c{% endif %} {{ payload.missing.deeper is defined }}",
        "{{ payload.a }} {{ payload.o }} {{ payload.o.k }} {{ payload.k }} {{ payload.s }} {{ payload.u }} {{ payload.z }} {{ payload.f }} {{ payload.b }}",
        "{{ payload.commits | sort(attribute='id') | first | tojson }} {{ payload | reverse | list | tojson }}",
        "{{ (payload.commits or []) + [1] }} {{ payload | unique | list | length }} {{ payload.keys() }}",
        "{{ payload.a[1].b }} {{ payload.a | last }} {{ payload.a | first }} {{ payload[''].a.b[2] }}",
    ];
    let mut specs: Vec<RouteSpec> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| any(&format!("t{i}"), text(t)))
        .collect();
    let mut when = any("when", text("{{ payload.action }}"));
    when.when = Some("payload.action == 'opened' or payload.ref is defined or payload.o".into());
    let mut each = any(
        "each",
        text("{{ item | tojson }} {{ item.id }} {{ item.b }}"),
    );
    each.each = Some("payload.commits or payload.a or payload.b or []".into());
    let mut ordered = any("ordered", ContentSpec::Default);
    ordered.order_key = Some("{{ payload.repository.full_name }}{{ payload.o }}".into());
    let json = any(
        "json",
        ContentSpec::Template {
            source: r#"{"text": {{ payload.ref }}, "all": {{ payload }}, "o": {{ payload.o }}}"#
                .into(),
            json: true,
            file: None,
        },
    );
    specs.extend([when, each, ordered, json]);
    let routes = Routes::compile(specs).unwrap();
    assert!(routes.reads_payload.iter().all(|&r| r));
    let bodies = context::bodies();
    for body in &bodies {
        let mut event = crate::queue::sample_record();
        event.headers = vec![("content-type".into(), b"application/json".to_vec())];
        event.body = body.clone();
        let whole = routes.evaluate(&context::context(&event));
        assert!(whole.len() >= texts.len(), "{whole:?}");
        assert_eq!(
            routes.evaluate_event(&event),
            whole,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(bodies.len() >= 30);
}

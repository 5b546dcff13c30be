//! `[[routes]]`: validated into [`RouteSpec`]s and compiled into
//! [`Routes`]; every template error is reported with the route's name and
//! the line it is on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::Spanned;

use super::raw::{OneOrMany, RawRoute};
use super::sinks::SinkConfig;
use super::{Cx, Declared};
use crate::route::{ContentSpec, EventPattern, RouteSpec, Routes};

impl Cx<'_> {
    /// Checks every route against the sources and sinks, then compiles them.
    pub(super) fn routes(
        &mut self,
        raw: Vec<(std::ops::Range<usize>, RawRoute)>,
        declared: &Declared<'_>,
        sinks: &BTreeMap<String, SinkConfig>,
        base_dir: &Path,
    ) -> Option<Routes> {
        let before = self.problems.len();
        let mut names = BTreeSet::new();
        let mut specs = Vec::new();
        // Where each part of each route starts, to place compile errors.
        let mut places: BTreeMap<(String, String), std::ops::Range<usize>> = BTreeMap::new();
        // Routes whose message is a template file: its path, for errors.
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for (i, (span, r)) in raw.into_iter().enumerate() {
            let name = r.name.get_ref().clone();
            let at = |k: &str| format!("routes[{i}].{k}");
            if !names.insert(name.clone()) {
                self.err(
                    r.name.span(),
                    &at("name"),
                    format!("a route named `{name}` exists already: names must be unique"),
                );
            }
            if name.is_empty() || name.contains('.') {
                self.err(
                    r.name.span(),
                    &at("name"),
                    format!("`{name}`: a route name is not empty and has no `.` (it is part of each delivery's Idempotency-Key)"),
                );
            }
            let source_list = match r.source.as_ref().map(Spanned::get_ref) {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s.clone()],
                Some(OneOrMany::Many(v)) => v.clone(),
            };
            for s in &source_list {
                if !declared.sources.contains(s) {
                    let span = r.source.as_ref().map(Spanned::span).unwrap_or(span.clone());
                    self.err(span, &at("source"), no_such("source", s, declared.sources));
                }
            }
            let mut to = Vec::new();
            let mut slack = Vec::new();
            let mut named: Vec<&String> = Vec::new();
            for sink in r.to.get_ref() {
                if named.contains(&sink.get_ref()) {
                    self.err(
                        sink.span(),
                        &at("to"),
                        format!(
                            "sink `{}` is named twice: each event would go to it twice",
                            sink.get_ref()
                        ),
                    );
                    continue;
                }
                named.push(sink.get_ref());
                if !declared.sinks.contains(sink.get_ref()) {
                    self.err(
                        sink.span(),
                        &at("to"),
                        no_such("sink", sink.get_ref(), declared.sinks),
                    );
                    continue;
                }
                // A sink with a mistake of its own: reported there.
                if let Some(config) = sinks.get(sink.get_ref()) {
                    if matches!(config.kind, super::SinkKind::Slack { .. }) {
                        slack.push(sink.get_ref().clone());
                    }
                    let is_prodmatic = matches!(config.kind, super::SinkKind::Prodmatic { .. });
                    if is_prodmatic != r.action.is_some() {
                        let msg = if is_prodmatic {
                            format!(
                                "sink `{}` is ProdMatic: the route needs an `action` ({})",
                                sink.get_ref(),
                                ACTIONS.join(", ")
                            )
                        } else {
                            format!(
                                "an `action` goes to ProdMatic sinks only, and `{}` is a {} sink",
                                sink.get_ref(),
                                config.kind.name()
                            )
                        };
                        self.err(sink.span(), &at("to"), msg);
                    }
                }
                to.push(sink.get_ref().clone());
            }
            if r.to.get_ref().is_empty() {
                self.err(r.to.span(), &at("to"), "`to` names no sink");
            }
            let given = [
                r.message.is_some(),
                r.template.is_some(),
                r.action.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1 {
                self.err(
                    span.clone(),
                    &format!("routes[{i}]"),
                    "give one of `message`, `template` or `action`, not several",
                );
            }
            if r.fields.is_some() && r.action.is_none() {
                let s = r.fields.as_ref().map(Spanned::span).unwrap_or(span.clone());
                self.err(s, &at("fields"), "`fields` go with an `action`");
            }
            let content = if let Some(m) = &r.message {
                places.insert((name.clone(), "message".into()), m.span());
                if looks_like_json_object(m.get_ref()) {
                    self.warn(
                        m.span(),
                        &at("message"),
                        "this message is sent as text, though it looks like a JSON message: \
                         blocks, a card or embeds come only from a template file named `*.json` \
                         (move it to e.g. `templates/NAME.json` and set `template` to that path)",
                    );
                }
                ContentSpec::Template {
                    source: m.get_ref().clone(),
                    json: false,
                    file: None,
                }
            } else if let Some(t) = &r.template {
                let path = base_dir.join(t.get_ref());
                places.insert((name.clone(), "message".into()), t.span());
                files.insert(name.clone(), t.get_ref().clone());
                match std::fs::read_to_string(&path) {
                    Ok(source) => {
                        let json = is_json_template(t.get_ref());
                        if !json && looks_like_json_object(&source) {
                            self.warn(
                                t.span(),
                                &at("template"),
                                format!(
                                    "{} is sent as text, though it looks like a JSON message: \
                                     name it `*.json` (or `*.json.j2`) to send its blocks, card or embeds",
                                    t.get_ref()
                                ),
                            );
                        }
                        ContentSpec::Template {
                            source,
                            json,
                            file: Some(t.get_ref().clone()),
                        }
                    }
                    Err(e) => {
                        self.err(
                            t.span(),
                            &at("template"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        ContentSpec::Default
                    }
                }
            } else if let Some(a) = &r.action {
                if !ACTIONS.contains(&a.get_ref().as_str()) {
                    self.err(
                        a.span(),
                        &at("action"),
                        format!(
                            "unknown action `{}`: use one of {}",
                            a.get_ref(),
                            ACTIONS.join(", ")
                        ),
                    );
                }
                let fields = r
                    .fields
                    .as_ref()
                    .map(|f| f.get_ref().clone())
                    .unwrap_or_default();
                if a.get_ref() == "update_feature" && !fields.contains_key("id") {
                    self.err(
                        a.span(),
                        &at("fields"),
                        "`update_feature` needs `fields.id` (the feature to update)",
                    );
                }
                for k in fields.keys() {
                    if let Some(f) = &r.fields {
                        places.insert((name.clone(), format!("fields.{k}")), f.span());
                    }
                }
                ContentSpec::Action {
                    action: a.get_ref().clone(),
                    fields,
                }
            } else {
                ContentSpec::Default
            };
            for (part, v) in [
                ("when", &r.when),
                ("each", &r.each),
                ("order_key", &r.order_key),
            ] {
                if let Some(v) = v {
                    places.insert((name.clone(), part.into()), v.span());
                }
            }
            specs.push(RouteSpec {
                name,
                sources: source_list,
                event: r.event.as_ref().map(|e| EventPattern::new(e.get_ref())),
                when: r.when.as_ref().map(|w| w.get_ref().clone()),
                each: r.each.as_ref().map(|e| e.get_ref().clone()),
                to,
                slack,
                content,
                order_key: r.order_key.as_ref().map(|k| k.get_ref().clone()),
            });
        }
        // Compiled even when a route has other mistakes: template errors
        // are reported in the same run.
        match Routes::compile(specs) {
            Ok(routes) => (self.problems.len() == before).then_some(routes),
            Err(errors) => {
                for e in errors {
                    // A JSON template file compiles as `message.json`.
                    let part = e.part.strip_suffix(".json").unwrap_or(&e.part).to_owned();
                    let span = places
                        .get(&(e.route.clone(), part.clone()))
                        .cloned()
                        .unwrap_or(0..0);
                    let file = files.get(&e.route).filter(|_| part == "message");
                    let message = match (file, e.line) {
                        // In a template file: name the file and its line,
                        // at the `template =` line of routes.toml.
                        (Some(f), Some(line)) => format!("{f}:{line}: {}", e.message),
                        (Some(f), None) => format!("{f}: {}", e.message),
                        (None, _) => e.message.clone(),
                    };
                    // A template file's mistake is the `template` key's.
                    let key = match file {
                        Some(_) => "template",
                        None => &part,
                    };
                    let mut p =
                        self.problem(span.clone(), &format!("routes.{}.{key}", e.route), message);
                    // A multi-line inline template: the line inside it
                    // (TOML drops a newline right after `"""` or `'''`).
                    if let (None, Some(line)) = (file, e.line.filter(|l| *l > 1)) {
                        let opening = &self.text[span.start.min(self.text.len())..];
                        let trimmed = ["\"\"\"\n", "'''\n", "\"\"\"\r\n", "'''\r\n"]
                            .iter()
                            .any(|d| opening.starts_with(d));
                        p.line += line - 1 + usize::from(trimmed);
                        p.column = 1;
                    }
                    self.problems.push(p);
                }
                None
            }
        }
    }
}

/// What a ProdMatic route can do.
pub const ACTIONS: [&str; 3] = ["create_idea", "create_feedback", "update_feature"];

/// "no sink `stdot` (did you mean `stdout`?)", or the names there are.
fn no_such(what: &str, name: &str, names: &BTreeSet<String>) -> String {
    let names = names.iter().map(String::as_str);
    match crate::suggest::closest(name, names.clone()) {
        Some(meant) => format!("no {what} `{name}`: did you mean `{meant}`?"),
        None if names.len() == 0 => format!("no {what} `{name}`: the file defines no {what}s"),
        None => format!(
            "no {what} `{name}` (the {what}s are {})",
            names.collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Whether a template file writes JSON: named `*.json`, before an optional
/// `.j2`, `.jinja` or `.jinja2`.
/// A template that starts like a JSON object (`{` then `"`): written for
/// message structure, which only `*.json` templates give.
fn looks_like_json_object(source: &str) -> bool {
    source
        .trim_start()
        .strip_prefix('{')
        .is_some_and(|rest| rest.trim_start().starts_with('"'))
}

fn is_json_template(path: &str) -> bool {
    let name = [".j2", ".jinja2", ".jinja"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path);
    name.ends_with(".json")
}

#[cfg(test)]
mod json_template_tests {
    #[test]
    fn json_templates_are_named_json_before_the_jinja_extension() {
        for (path, json) in [
            ("t/merged.slack.json.j2", true),
            ("a.json", true),
            ("a.json.jinja2", true),
            ("a.j2", false),
            ("a.json.txt", false),
            ("json", false),
        ] {
            assert_eq!(super::is_json_template(path), json, "{path}");
        }
    }
}

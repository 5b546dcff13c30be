//! Routes: which events go to which sinks, and what is sent. Pure: no I/O.
//!
//! A route matches on source, event type (exact or glob) and an optional
//! MiniJinja `when` expression, then renders its content once per sink (and
//! per item, with `each`). Everything is compiled when the routes are built,
//! so a syntax error is a config error with the route's name; rendering runs
//! sandboxed under a fuel limit, so an operator's mistake cannot hang the
//! router, and a failure in one route does not stop the others.

mod context;
pub mod filters;
pub mod glob;
mod lazy;
mod names;
mod reads;

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};
use serde::Serialize;

pub use context::context;
pub use glob::EventPattern;

/// Longest rendered `order_key` (it becomes part of a stored key).
pub const ORDER_KEY_MAX: usize = 1024;

/// Instructions one render may execute: far above any sane template, far
/// below a hang.
const FUEL: u64 = 200_000;
/// Most deliveries one route may make of one event with `each`.
pub const EACH_MAX: usize = 100;

/// A route as the config describes it (already checked for shape).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    /// Sources it listens to; empty means every source.
    pub sources: Vec<String>,
    pub event: Option<EventPattern>,
    pub when: Option<String>,
    /// `each`: an expression giving a list; one delivery per item.
    pub each: Option<String>,
    pub to: Vec<String>,
    /// The sinks of `to` that are Slack's. A text message is rendered for
    /// them with every value it prints escaped for Slack (`&`, `<`, `>`),
    /// as an HTML template escapes for HTML: a payload cannot write a
    /// mention (`<!channel>`) or a link of its own, while the template's
    /// own text (and `slack_link`, `slack_escape`, `| safe`) stays as
    /// written.
    pub slack: Vec<String>,
    pub content: ContentSpec,
    /// `order_key`: a template rendered per delivery (with `item` for
    /// `each`); deliveries with the same output to the same sink go one at
    /// a time, in event order. Empty output: unordered.
    pub order_key: Option<String>,
}

impl RouteSpec {
    fn admits(&self, source: &str, event: &str) -> bool {
        self.refuses(source, event).is_none()
    }

    /// Why its `source` or `event` filter keeps this event out, if one does.
    fn refuses(&self, source: &str, event: &str) -> Option<Filter> {
        if !(self.sources.is_empty() || self.sources.iter().any(|s| s == source)) {
            Some(Filter::Source)
        } else if !self.event.as_ref().is_none_or(|p| p.matches(event)) {
            Some(Filter::Event)
        } else {
            None
        }
    }
}

/// A route filter that kept an event out.
#[derive(Clone, Copy)]
enum Filter {
    Source,
    Event,
}

/// A route that made no delivery of an event, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub route: String,
    pub why: Skip,
}

/// Why a route made no delivery of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Its `source` names others.
    Source { sources: Vec<String> },
    /// Its `event` pattern does not match the event type.
    Event { pattern: String, event: String },
    /// Its `when` is false. `failing` is the first of its `and`-joined
    /// conditions that is false, when it has more than one.
    When {
        when: String,
        failing: Option<String>,
    },
    /// Its `each` gave no items.
    NoItems { each: String },
}

impl Skip {
    /// A short stable label (`source`, `event`, `when`, `each`).
    pub fn label(&self) -> &'static str {
        match self {
            Skip::Source { .. } => "source",
            Skip::Event { .. } => "event",
            Skip::When { .. } => "when",
            Skip::NoItems { .. } => "each",
        }
    }

    /// Whether the route takes events of this source and type at all.
    pub fn takes_the_event(&self) -> bool {
        matches!(self, Skip::When { .. } | Skip::NoItems { .. })
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Source { sources } => {
                write!(
                    f,
                    "it takes events from source `{}` only",
                    sources.join("`, `")
                )
            }
            Skip::Event { pattern, event } => {
                write!(f, "its event = \"{pattern}\" does not match `{event}`")
            }
            Skip::When {
                when,
                failing: Some(part),
            } => write!(
                f,
                "its when is false: `{part}` is false (when = \"{when}\")"
            ),
            Skip::When {
                when,
                failing: None,
            } => write!(f, "its when is false (when = \"{when}\")"),
            Skip::NoItems { each } => write!(f, "its each gave no items (each = \"{each}\")"),
        }
    }
}

/// What a route sends.
#[derive(Debug, Clone)]
pub enum ContentSpec {
    /// The sink's default message for the event.
    Default,
    /// An inline `message`, or a `template` file's text, to render;
    /// `json` when the file is named `*.json` (or `*.json.j2`): values are
    /// then written as JSON. `file`: the template file's path as written,
    /// which render errors name (with the line in it).
    Template {
        source: String,
        json: bool,
        file: Option<String>,
    },
    /// A ProdMatic action with templated fields.
    Action {
        action: String,
        fields: BTreeMap<String, String>,
    },
}

/// The context routes see.
#[derive(Debug, Clone, Serialize)]
pub struct EventContext {
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    /// RFC 3339.
    pub received_at: String,
    pub headers: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

/// A compile error, with the route and the part it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub route: String,
    /// `when`, `each`, `message`/`template`, `fields.NAME` or `order_key`.
    pub part: String,
    /// Line within that part, when MiniJinja knows it.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route `{}`, {}", self.route, self.part)?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What routing produced for one (route, sink[, item]).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Rendered {
        route: String,
        sink: String,
        /// The item's index with `each`.
        item: Option<usize>,
        content: Rendered,
        /// The rendered `order_key`; `None` when the route has none or it
        /// rendered empty.
        order_key: Option<String>,
    },
    /// Rendering failed: becomes a dead delivery with this error.
    Failed {
        route: String,
        sink: String,
        error: String,
    },
}

/// Rendered content, frozen at routing time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Default,
    /// A text template's output: text, whatever the payload put into it
    /// (chat sinks never read message structure out of it).
    Text(String),
    /// A `*.json` template's output: the message structure itself.
    Json(String),
    Action {
        action: String,
        fields: BTreeMap<String, String>,
    },
}

/// Largest output a template may render (a message, a field): fuel
/// bounds the steps, this the bytes, so an operator's mistake cannot fill
/// memory or the queue.
const OUTPUT_MAX: usize = 1 << 20;

/// Output that refuses to grow past [`OUTPUT_MAX`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > OUTPUT_MAX {
            return Err(std::io::Error::other("output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compiled routes.
pub struct Routes {
    env: Environment<'static>,
    specs: Vec<RouteSpec>,
    /// Per route: whether any of its expressions or templates may read the
    /// payload (`reads.rs`). An event that only such routes let in is
    /// routed without parsing its payload.
    reads_payload: Vec<bool>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("routes", &self.specs.len())
            .finish()
    }
}

/// The part name of a route's message; `.json` turns on JSON escaping.
fn message_part(json: bool) -> &'static str {
    if json {
        "message.json"
    } else {
        "message"
    }
}

/// A text message's second compilation, for Slack sinks: `.slack` turns on
/// Slack escaping.
const SLACK_MESSAGE: &str = "message.slack";

/// The auto-escape mode of [`SLACK_MESSAGE`]: values printed are escaped
/// for Slack mrkdwn, safe strings are written as they are.
pub(crate) const SLACK_ESCAPE: minijinja::AutoEscape = minijinja::AutoEscape::Custom("slack");

fn template_name(route: &str, part: &str) -> String {
    format!("{route}/{part}")
}

impl Routes {
    /// Compiles every expression and template; reports every error at once.
    pub fn compile(specs: Vec<RouteSpec>) -> Result<Routes, Vec<RouteError>> {
        let mut env = Environment::new();
        // `payload.a.b` on a missing `a` is undefined, not an error:
        // webhook payloads leave fields out all the time.
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        // A payload's `null` prints as nothing, not as `none`.
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                Ok(())
            } else if state.auto_escape() == SLACK_ESCAPE {
                match value.as_str() {
                    Some(s) if value.is_safe() => out.write_str(s),
                    Some(s) => out.write_str(&filters::slack_escape(s)),
                    None => out.write_str(&filters::slack_escape(&value.to_string())),
                }
                .map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        // Template files named `*.json` (before a `.j2`) write values as
        // JSON: `{"text": {{ payload.title }}}` is valid whatever the title.
        // A text message's Slack compilation escapes for Slack.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".json") {
                minijinja::AutoEscape::Json
            } else if name.ends_with(SLACK_MESSAGE) {
                SLACK_ESCAPE
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.set_fuel(Some(FUEL));
        filters::register(&mut env);
        let mut errors = Vec::new();
        let err = |route: &str, part: &str, e: &minijinja::Error| RouteError {
            route: route.to_owned(),
            part: part.to_owned(),
            line: e.line(),
            message: e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.kind().to_string()),
        };
        // Filters and tests are looked up only at render time: find the
        // unknown ones now, in every branch.
        let mut unknown_names =
            |env: &mut Environment<'static>, route: &str, part: &str, name: &str| {
                for (line, message) in names::unknown(env, name) {
                    errors.push(RouteError {
                        route: route.to_owned(),
                        part: part.to_owned(),
                        line,
                        message,
                    });
                }
            };
        let mut compile_errors = Vec::new();
        let mut reads_payload = Vec::with_capacity(specs.len());
        for spec in &specs {
            let mut reads = false;
            for (part, expr) in [("when", &spec.when), ("each", &spec.each)] {
                if let Some(expr) = expr {
                    if let Err(e) = compile_expression(&env, expr) {
                        compile_errors.push(err(&spec.name, part, &e));
                    } else {
                        // An expression's instructions, as a template's.
                        let probe = template_name(&spec.name, &format!("{part}.probe"));
                        if env
                            .add_template_owned(probe.clone(), format!("{{{{ ({expr}) }}}}"))
                            .is_ok()
                        {
                            unknown_names(&mut env, &spec.name, part, &probe);
                            reads |= reads::may_read_payload(&env, &probe);
                            env.remove_template(&probe);
                        } else {
                            reads = true;
                        }
                    }
                }
            }
            let mut templates: Vec<(String, &String)> = match &spec.content {
                ContentSpec::Default => Vec::new(),
                ContentSpec::Template { source, json, .. } => {
                    vec![(message_part(*json).to_owned(), source)]
                }
                ContentSpec::Action { fields, .. } => fields
                    .iter()
                    .map(|(k, v)| (format!("fields.{k}"), v))
                    .collect(),
            };
            if let Some(key) = &spec.order_key {
                templates.push(("order_key".to_owned(), key));
            }
            for (part, source) in templates {
                let name = template_name(&spec.name, &part);
                match env.add_template_owned(name.clone(), source.clone()) {
                    Err(e) => compile_errors.push(err(&spec.name, &part, &e)),
                    Ok(()) => {
                        unknown_names(&mut env, &spec.name, &part, &name);
                        reads |= reads::may_read_payload(&env, &name);
                    }
                }
            }
            // The same text once more for Slack sinks; it compiled above,
            // so it compiles here.
            if let (
                ContentSpec::Template {
                    source,
                    json: false,
                    ..
                },
                false,
            ) = (&spec.content, spec.slack.is_empty())
            {
                let _ = env
                    .add_template_owned(template_name(&spec.name, SLACK_MESSAGE), source.clone());
            }
            reads_payload.push(reads);
        }
        errors.extend(compile_errors);
        if errors.is_empty() {
            Ok(Routes {
                env,
                specs,
                reads_payload,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether any route's `source` and `event` filters let this event in
    /// (before `when`). When none does, the payload need not be read.
    pub fn could_match(&self, source: &str, event: &str) -> bool {
        self.specs.iter().any(|s| s.admits(source, event))
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Every route's name, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }

    /// The sinks a route sends to; `None` when there is no such route.
    pub fn targets(&self, route: &str) -> Option<&[String]> {
        self.specs
            .iter()
            .find(|s| s.name == route)
            .map(|s| s.to.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Every delivery this event makes. Empty when no route matches.
    pub fn evaluate(&self, ctx: &EventContext) -> Vec<Outcome> {
        self.run(ctx, None, None)
    }

    /// Every delivery a stored event makes (the router, `hookgate test`): what
    /// [`Routes::evaluate`] makes of its [`context`], with the payload
    /// parsed straight into template values, and only once some route's
    /// filters let the event in.
    pub fn evaluate_event(&self, event: &crate::queue::EventRecord) -> Vec<Outcome> {
        let (ctx, json) = context::envelope(event);
        self.run(&ctx, Some(&json), None)
    }

    /// Every delivery this event makes, and every route that made none
    /// with the reason.
    pub fn explain(&self, ctx: &EventContext) -> (Vec<Outcome>, Vec<Skipped>) {
        let mut skipped = Vec::new();
        let out = self.run(ctx, None, Some(&mut skipped));
        (out, skipped)
    }

    /// [`Routes::explain`] for a stored event, read as the router reads it
    /// (`hookgate route`).
    pub fn explain_event(&self, event: &crate::queue::EventRecord) -> (Vec<Outcome>, Vec<Skipped>) {
        let (ctx, json) = context::envelope(event);
        let mut skipped = Vec::new();
        let out = self.run(&ctx, Some(&json), Some(&mut skipped));
        (out, skipped)
    }

    /// Evaluates every route; notes in `skipped`, when given, each route
    /// that made no delivery (the router passes none: it only costs).
    /// The payload is `ctx`'s, or parsed from `json` when given.
    fn run(
        &self,
        ctx: &EventContext,
        json: Option<&[u8]>,
        mut skipped: Option<&mut Vec<Skipped>>,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        let explaining = skipped.is_some();
        let mut skip = |spec: &RouteSpec, why: Skip| {
            if let Some(s) = skipped.as_deref_mut() {
                s.push(Skipped {
                    route: spec.name.clone(),
                    why,
                });
            }
        };
        // Built once, and only if some route's filters let the event in;
        // the payload parsed only for a route that may read it.
        let mut base: Option<Value> = None;
        let mut bare: Option<Value> = None;
        for (spec, &reads_payload) in self.specs.iter().zip(&self.reads_payload) {
            match spec.refuses(&ctx.source, &ctx.event) {
                None => {}
                Some(_) if !explaining => continue,
                Some(Filter::Source) => {
                    skip(
                        spec,
                        Skip::Source {
                            sources: spec.sources.clone(),
                        },
                    );
                    continue;
                }
                Some(Filter::Event) => {
                    let pattern = spec.event.as_ref().map_or("", |p| p.as_str()).to_owned();
                    skip(
                        spec,
                        Skip::Event {
                            pattern,
                            event: ctx.event.clone(),
                        },
                    );
                    continue;
                }
            }
            let base: &Value = match json {
                Some(json) if reads_payload => base.get_or_insert_with(|| {
                    context::template_value_with(ctx, context::template_payload(json))
                }),
                // Nothing of this route can reach the payload.
                Some(_) => {
                    bare.get_or_insert_with(|| context::template_value_with(ctx, Value::UNDEFINED))
                }
                None => base.get_or_insert_with(|| context::template_value(ctx)),
            };
            let failed = |error: String| {
                spec.to
                    .iter()
                    .map(|sink| Outcome::Failed {
                        route: spec.name.clone(),
                        sink: sink.clone(),
                        error: error.clone(),
                    })
                    .collect::<Vec<_>>()
            };
            if let Some(when) = &spec.when {
                match self.eval(when, base) {
                    Ok(v) if v.is_true() => {}
                    Ok(_) => {
                        if explaining {
                            let failing = self.failing_condition(when, base);
                            skip(
                                spec,
                                Skip::When {
                                    when: when.clone(),
                                    failing,
                                },
                            );
                        }
                        continue;
                    }
                    Err(e) => {
                        out.extend(failed(format!("when: {e}")));
                        continue;
                    }
                }
            }
            let items: Vec<(Option<usize>, Value)> = match &spec.each {
                None => vec![(None, base.clone())],
                Some(each) => match self.items(each, base) {
                    Ok(items) if items.is_empty() => {
                        skip(spec, Skip::NoItems { each: each.clone() });
                        continue;
                    }
                    Ok(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| (Some(i), with_item(base, item)))
                        .collect(),
                    Err(e) => {
                        out.extend(failed(e));
                        continue;
                    }
                },
            };
            // A text message for Slack sinks is rendered apart (escaped for
            // Slack); the others share one rendering.
            let for_slack = |sink: &String| {
                spec.slack.contains(sink)
                    && matches!(spec.content, ContentSpec::Template { json: false, .. })
            };
            let plain = spec.to.iter().any(|s| !for_slack(s));
            let slack = spec.to.iter().any(for_slack);
            for (item, context) in items {
                let rendered = (|| {
                    let plain = plain
                        .then(|| self.render(spec, &context, false))
                        .transpose()?;
                    let slack = slack
                        .then(|| self.render(spec, &context, true))
                        .transpose()?;
                    Ok::<_, String>((plain, slack, self.order_key(spec, &context)?))
                })();
                match rendered {
                    Ok((plain, slack, order_key)) => out.extend(spec.to.iter().map(|sink| {
                        Outcome::Rendered {
                            route: spec.name.clone(),
                            sink: sink.clone(),
                            item,
                            content: match for_slack(sink) {
                                true => slack.clone(),
                                false => plain.clone(),
                            }
                            .expect("rendered for every sink it goes to"),
                            order_key: order_key.clone(),
                        }
                    })),
                    Err(e) => out.extend(failed(e)),
                }
            }
        }
        out
    }

    fn eval(&self, expr: &str, ctx: &Value) -> Result<Value, minijinja::Error> {
        compile_expression(&self.env, expr)?.eval(ctx)
    }

    /// The first of a false `when`'s `and`-joined conditions that is
    /// false (or fails), as written; `None` when it is a single condition.
    fn failing_condition(&self, when: &str, ctx: &Value) -> Option<String> {
        and_joined(when)?
            .into_iter()
            .find_map(|part| match self.eval(part, ctx) {
                Ok(v) if v.is_true() => None,
                _ => Some(part.to_owned()),
            })
    }

    fn items(&self, each: &str, ctx: &Value) -> Result<Vec<Value>, String> {
        let list = self.eval(each, ctx).map_err(|e| format!("each: {e}"))?;
        if list.is_undefined() || list.is_none() {
            return Ok(Vec::new());
        }
        // A string or a mapping iterates too (by character, by key): one
        // delivery per character is never what a route meant.
        if matches!(
            list.kind(),
            minijinja::value::ValueKind::String | minijinja::value::ValueKind::Map
        ) {
            return Err(format!("each: `{each}` is a {}, not a list", list.kind()));
        }
        let items: Vec<Value> = list
            .try_iter()
            .map_err(|_| format!("each: `{each}` is not a list"))?
            .collect();
        if items.len() > EACH_MAX {
            return Err(format!(
                "each: {} items, more than the {EACH_MAX} allowed",
                items.len()
            ));
        }
        Ok(items)
    }

    /// The route's `order_key` for this delivery: trimmed, `None` when
    /// empty. A failure fails the delivery, as a message's would.
    fn order_key(&self, spec: &RouteSpec, ctx: &Value) -> Result<Option<String>, String> {
        if spec.order_key.is_none() {
            return Ok(None);
        }
        let key = self.render_part(spec, "order_key", ctx)?;
        let key = key.trim();
        if key.len() > ORDER_KEY_MAX {
            return Err(format!(
                "order_key: {} bytes, more than the {ORDER_KEY_MAX} allowed",
                key.len()
            ));
        }
        Ok((!key.is_empty()).then(|| key.to_owned()))
    }

    /// A route's content for one delivery; a text message escaped for
    /// Slack when `slack`.
    fn render(&self, spec: &RouteSpec, ctx: &Value, slack: bool) -> Result<Rendered, String> {
        let render = |part: &str| self.render_part(spec, part, ctx);
        Ok(match &spec.content {
            ContentSpec::Default => Rendered::Default,
            ContentSpec::Template { json: false, .. } if slack => {
                Rendered::Text(render(SLACK_MESSAGE)?)
            }
            ContentSpec::Template { json: false, .. } => {
                Rendered::Text(render(message_part(false))?)
            }
            ContentSpec::Template { json: true, .. } => Rendered::Json(render(message_part(true))?),
            ContentSpec::Action { action, fields } => Rendered::Action {
                action: action.clone(),
                fields: fields
                    .keys()
                    .map(|k| Ok((k.clone(), render(&format!("fields.{k}"))?)))
                    .collect::<Result<_, String>>()?,
            },
        })
    }

    /// Renders one of a route's templates.
    fn render_part(&self, spec: &RouteSpec, part: &str, ctx: &Value) -> Result<String, String> {
        self.env
            .get_template(&template_name(&spec.name, part))
            .and_then(|t| {
                let mut out = Capped(Vec::new());
                t.render_captured_to(ctx, &mut out).map(|_| out.0)
            })
            .map_err(|e| {
                if e.kind() == minijinja::ErrorKind::WriteFailure {
                    minijinja::Error::new(
                        e.kind(),
                        format!("the output is over {} bytes", OUTPUT_MAX),
                    )
                } else {
                    e
                }
            })
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| {
                    minijinja::Error::new(minijinja::ErrorKind::BadSerialization, "not UTF-8")
                })
            })
            .map_err(|e| {
                // The Slack compilation's errors are the message's.
                let shown = match part {
                    SLACK_MESSAGE => "message",
                    other => other,
                };
                let said = part_error(spec, shown, e);
                match part {
                    SLACK_MESSAGE => said.replace(
                        &template_name(&spec.name, part),
                        &template_name(&spec.name, shown),
                    ),
                    _ => said,
                }
            })
    }
}

/// A render error of a route's `part`, naming its template file and line
/// when the message is one.
fn part_error(spec: &RouteSpec, part: &str, e: minijinja::Error) -> String {
    match (&spec.content, part.starts_with("message")) {
        // Name the file and the line in it, not the route's
        // internal template name.
        (
            ContentSpec::Template {
                file: Some(file), ..
            },
            true,
        ) => {
            let what = match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            };
            match e.line() {
                Some(line) => format!("{part}: {what} (in {file}:{line})"),
                None => format!("{part}: {what} (in {file})"),
            }
        }
        _ => format!("{part}: {e}"),
    }
}

/// The conditions of an expression that is `a and b and …` at its top
/// level, as written; `None` for anything else (one condition, or an
/// `or` or `if` at the top level, where the parts do not decide alone).
fn and_joined(expr: &str) -> Option<Vec<&str>> {
    use minijinja::machinery::{tokenize, Token};
    let mut depth = 0usize;
    let mut cuts = Vec::new();
    for token in tokenize(expr, true, Default::default(), Default::default()) {
        let (token, span) = token.ok()?;
        match token {
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
            Token::ParenClose | Token::BracketClose | Token::BraceClose => {
                depth = depth.saturating_sub(1)
            }
            Token::Ident("or" | "if") if depth == 0 => return None,
            Token::Ident("and") if depth == 0 => {
                cuts.push((span.start_offset as usize, span.end_offset as usize))
            }
            _ => {}
        }
    }
    if cuts.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    let mut from = 0;
    for (start, end) in cuts {
        parts.push(expr.get(from..start)?.trim());
        from = end;
    }
    parts.push(expr.get(from..)?.trim());
    Some(parts)
}

/// The event context (`base`, converted once per event) plus `item`: a
/// map of its entries and `item`, as serde made of the context flattened
/// beside `item` (converting the whole context again for each item cost
/// a route with `each` as much per item as per event).
fn with_item(base: &Value, item: Value) -> Value {
    let mut entries: Vec<(Value, Value)> = base
        .try_iter()
        .map(|keys| {
            keys.filter_map(|k| Some((k.clone(), base.get_item(&k).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    entries.push((Value::from("item"), item));
    entries.into_iter().collect()
}

#[cfg(test)]
mod tests;

/// Compiles a `when`/`each` expression. MiniJinja 2 panics ("empty lexer
/// stack") on an expression holding a variable's closing `}}` (found by
/// the `config` fuzz target): refused here with what to write instead.
fn compile_expression<'env>(
    env: &'env minijinja::Environment<'static>,
    expr: &str,
) -> Result<minijinja::Expression<'env, 'static>, minijinja::Error> {
    if expr.contains("}}") {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::SyntaxError,
            "an expression holds no `}}` (it is not a template: write `payload.x == 1`, not `{{ payload.x }} == 1`; for the text \"}}\" write '}' ~ '}')",
        ));
    }
    env.compile_expression_owned(expr.to_owned())
}

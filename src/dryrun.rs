//! `hookgate route`: which routes an event would fire and exactly what
//! each sink would receive, without sending anything or touching the
//! queue. Nothing here is a copy: the request is the provider's own
//! (`Provider::sign`, then the `--header`s), the event is what ingress
//! stores of it (`Provider::envelope`, `ingress::event_record`), routing
//! is the router's (`Routes::explain`, `router::freeze`), and each request
//! is the sink's (`Sink::outgoing`, what `send` sends). Credentials are
//! shown redacted ([`Part::shown`]).
//!
//! Two things cannot be known without storage: the event's id and the
//! store's, which start each `Idempotency-Key`. Both are 0 here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use crate::config::Config;
use crate::dispatch::{SinkRuntime, Sinks};
use crate::queue::{DeliveryRecord, EventId};
use crate::route::{Outcome, Skip};
use crate::sink::{Outgoing, Part};
use crate::verify::{Inbound, Provider, ShapeError, SignInput};

/// The delivery id of the request made here, where the provider puts
/// one in a header (a `--header` may set another).
pub const DELIVERY_ID: &str = "dry-run";

/// What to route.
#[derive(Debug, Clone)]
pub struct Input {
    /// A key of `[sources]`.
    pub source: String,
    /// The event type as the provider sends it (`push`, `pull_request`…).
    pub event: String,
    /// `--header`s, in order: they replace the provider's of the same name.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// The message names the closest source.
    #[error("{0}")]
    UnknownSource(String),
    #[error("--header `{0}`: write it as 'Name: value'")]
    BadHeader(String),
    /// Ingress would answer 400: nothing would be routed.
    #[error("ingress would refuse this request with 400: {0}")]
    Refused(#[source] ShapeError),
    #[error("cannot build sink `{name}`: {reason}")]
    Sink { name: String, reason: String },
}

/// What routing makes of the event.
#[derive(Debug, Serialize)]
pub struct Report {
    pub source: String,
    pub provider: String,
    /// The event type routes matched: what ingress reads from the request.
    pub event: String,
    pub delivery_id: String,
    /// Whether any route fired.
    pub fired: bool,
    /// The routes that fired, in file order.
    pub routes: Vec<Fired>,
    /// Every other route, with the reason.
    pub not_fired: Vec<NotFired>,
    /// What the operator should know about how the event was made.
    pub notes: Vec<String>,
}

impl Report {
    /// Deliveries that could not be made: a route's template failed, or
    /// its sink cannot send what it made (each would be dead at once).
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Delivery)> {
        self.routes.iter().flat_map(|r| {
            r.deliveries
                .iter()
                .filter(|d| d.error.is_some())
                .map(move |d| (r.name.as_str(), d))
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Fired {
    pub name: String,
    /// One per sink (and per item, with `each`), in the order routing made them.
    pub deliveries: Vec<Delivery>,
}

/// One delivery: what its sink would receive, or why it could not be made.
#[derive(Debug, Serialize)]
pub struct Delivery {
    pub sink: String,
    /// The sink's kind: `slack`, `prodmatic`, `log`…
    pub kind: &'static str,
    /// The item's index, for a route with `each`.
    pub item: Option<u32>,
    pub order_key: Option<String>,
    pub idempotency_key: String,
    /// Why the delivery could not be made (it would be dead at once).
    pub error: Option<String>,
    /// `None` for the log sink (and a failed delivery).
    pub method: Option<String>,
    /// Redacted where it is a credential. `None` for the log sink.
    pub url: Option<String>,
    /// The log sink: `stdout`, or its file.
    pub writes_to: Option<String>,
    /// In the order they are sent, credentials redacted.
    pub headers: Vec<Header>,
    /// The exact body (the log sink: the line), as text (lossy if it is
    /// not UTF-8; then `body_base64` holds the bytes).
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Secrets the delivery needs that are not set: the daemon holds its
    /// deliveries until they are.
    pub missing_secrets: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct NotFired {
    pub route: String,
    /// `source`, `event`, `when` or `each`: the filter that kept it out.
    pub reason: &'static str,
    /// The same in words.
    pub detail: String,
    /// For `when`: the first of its `and`-joined conditions that is false.
    pub condition: Option<String>,
    #[serde(skip)]
    pub why: Skip,
}

/// Routes `input` as the daemon would route the request it describes:
/// `provider` is the source's (built with a placeholder secret when the
/// source's is not set: it only shapes and reads the request).
pub fn run(
    config: &Config,
    provider: &dyn Provider,
    input: &Input,
    now: SystemTime,
) -> Result<Report, DryRunError> {
    let Some(source) = config.sources.get(&input.source) else {
        return Err(DryRunError::UnknownSource(crate::suggest::not_in_config(
            "source",
            &input.source,
            config.sources.keys().map(String::as_str),
        )));
    };
    // The request as the provider sends it, with the `--header`s over it.
    let signed = provider.sign(&SignInput {
        body: &input.body,
        event: &input.event,
        delivery_id: DELIVERY_ID,
        now,
    });
    let mut headers = HeaderMap::new();
    for (k, v) in &signed.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    let mut given: Vec<HeaderName> = Vec::new();
    for (k, v) in &input.headers {
        let bad = || DryRunError::BadHeader(format!("{k}: {v}"));
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
        if !given.contains(&name) {
            headers.remove(&name);
            given.push(name.clone());
        }
        headers.append(name, value);
    }
    // What ingress reads and stores of it.
    let envelope = crate::verify::read_envelope(
        provider,
        &Inbound {
            headers: &headers,
            body: &signed.body,
            now,
        },
    )
    .map_err(DryRunError::Refused)?;
    let mut notes = Vec::new();
    if envelope.event != input.event {
        notes.push(format!(
            "ingress reads the event type `{}` from this request, not `{}` (--event): provider {} takes it from the payload or a header, and routes match what it reads",
            envelope.event,
            input.event,
            source.provider.name()
        ));
    }
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let event = crate::ingress::event_record(
        source,
        provider,
        &headers,
        &signed.body,
        envelope,
        &localhost,
        now,
    );

    let sinks = sinks_to_show(config)?;
    let (outcomes, skipped) = config.routes.explain_event(&event);
    let order: Vec<(String, String, Option<u32>)> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Rendered {
                route, sink, item, ..
            } => (route.clone(), sink.clone(), item.map(|i| i as u32)),
            Outcome::Failed { route, sink, .. } => (route.clone(), sink.clone(), None),
        })
        .collect();
    let routed = crate::router::freeze(0, &sinks, EventId(0), &event, outcomes, now);
    let mut records: Vec<DeliveryRecord> = routed.pending.into_iter().chain(routed.dead).collect();
    let mut routes: Vec<Fired> = Vec::new();
    for (route, sink, item) in order {
        let Some(at) = records
            .iter()
            .position(|r| r.route == route && r.sink == sink && r.item == item)
        else {
            continue;
        };
        let delivery = show(&sinks, records.swap_remove(at), now);
        match routes.last_mut() {
            Some(r) if r.name == route => r.deliveries.push(delivery),
            _ => routes.push(Fired {
                name: route,
                deliveries: vec![delivery],
            }),
        }
    }
    let not_fired = skipped
        .into_iter()
        .map(|s| NotFired {
            route: s.route,
            reason: s.why.label(),
            detail: s.why.to_string(),
            condition: match &s.why {
                Skip::When { failing, .. } => failing.clone(),
                _ => None,
            },
            why: s.why,
        })
        .collect();
    Ok(Report {
        source: event.source.clone(),
        provider: event.provider.clone(),
        event: event.event.clone(),
        delivery_id: event.delivery_id.clone(),
        fired: !routes.is_empty(),
        routes,
        not_fired,
        notes,
    })
}

/// Every configured sink, built to prepare and show requests only.
fn sinks_to_show(config: &Config) -> Result<Sinks, DryRunError> {
    config
        .sinks
        .values()
        .map(|c| {
            let sink = crate::sink::build_to_show(c).map_err(|reason| DryRunError::Sink {
                name: c.name.clone(),
                reason,
            })?;
            Ok((c.name.clone(), SinkRuntime::new(c.clone(), sink)))
        })
        .collect::<Result<HashMap<_, _>, _>>()
}

/// What one delivery record would send.
fn show(sinks: &Sinks, d: DeliveryRecord, now: SystemTime) -> Delivery {
    let runtime = sinks.get(&d.sink);
    let mut out = Delivery {
        kind: runtime.map_or("", |s| s.config.kind.name()),
        sink: d.sink.clone(),
        item: d.item,
        order_key: d.order_key.clone(),
        idempotency_key: d.idempotency_key.clone(),
        error: d.reason.clone(),
        method: None,
        url: None,
        writes_to: None,
        headers: Vec::new(),
        body: None,
        body_base64: None,
        missing_secrets: Vec::new(),
    };
    if out.error.is_some() {
        return out;
    }
    let Some(runtime) = runtime else {
        out.error = Some(format!("sink `{}` is not configured", d.sink));
        return out;
    };
    let body = match runtime.sink.outgoing(&d, now) {
        Err(why) => {
            out.error = Some(why);
            return out;
        }
        Ok(Outgoing::Line { to, text }) => {
            out.writes_to = Some(
                to.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "stdout".into()),
            );
            text.into_bytes()
        }
        Ok(Outgoing::Http(req)) => {
            let mut missing = |p: &Part| {
                if let Part::Missing { why, .. } = p {
                    out.missing_secrets.push(why.clone());
                }
            };
            missing(&req.url);
            for (_, v) in &req.headers {
                missing(v);
            }
            out.method = Some(req.method.to_string());
            out.url = Some(req.url.shown().to_owned());
            out.headers = req
                .headers
                .iter()
                .map(|(name, v)| Header {
                    name: name.clone(),
                    value: v.shown().to_owned(),
                })
                .collect();
            req.body.to_vec()
        }
    };
    match String::from_utf8(body) {
        Ok(text) => out.body = Some(text),
        Err(e) => {
            out.body = Some(String::from_utf8_lossy(e.as_bytes()).into_owned());
            out.body_base64 = Some(crate::verify::encode_b64(e.as_bytes()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secrets::Resolver;
    use crate::config::Proof;

    fn config(dir: &std::path::Path) -> Config {
        std::fs::write(dir.join("gh"), "s3cret").unwrap();
        std::fs::write(
            dir.join("url"),
            "https://hooks.example.com/in/T0K3N?sig=abc",
        )
        .unwrap();
        let text = format!(
            r#"
[sources.github]
provider = "github"
secret = {{ file = "{d}/gh" }}

[sinks.hook]
kind = "http"
url = {{ file = "{d}/url" }}
headers = {{ Authorization = "Bearer hunter2", X-Team = "core" }}

[[routes]]
name = "all"
to = ["hook"]

[[routes]]
name = "urgent"
source = "github"
when = "event == 'push' and headers['x-label'] == 'urgent'"
to = ["hook"]
"#,
            d = dir.display()
        );
        crate::config::parse(&text, &Resolver::default())
            .unwrap()
            .config
    }

    fn route(config: &Config, headers: &[(&str, &str)]) -> Report {
        let Proof::Ready(provider) = &config.sources["github"].proof else {
            panic!("the source has its secret");
        };
        let input = Input {
            source: "github".into(),
            event: "push".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: crate::samples::find("github", "push").unwrap().into(),
        };
        run(config, provider.as_ref(), &input, SystemTime::now()).unwrap()
    }

    /// The http sink's request as it would go out: the original payload
    /// bytes, the `Hookgate-*` headers, the URL and a credential header
    /// redacted, and no secret anywhere in the report.
    #[test]
    fn shows_the_request_with_credentials_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let report = route(&config, &[]);
        assert_eq!(
            (report.event.as_str(), report.delivery_id.as_str()),
            ("push", DELIVERY_ID)
        );
        assert_eq!(report.routes.len(), 1);
        let d = &report.routes[0].deliveries[0];
        assert_eq!((d.sink.as_str(), d.kind), ("hook", "http"));
        assert_eq!(d.method.as_deref(), Some("POST"));
        assert_eq!(
            d.url.as_deref(),
            Some("https://hooks.example.com/[redacted]")
        );
        let header = |name: &str| {
            d.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
        };
        assert_eq!(header("authorization"), Some("[redacted]"));
        assert_eq!(header("x-team"), Some("core"));
        assert_eq!(header("Hookgate-Event"), Some("push"));
        assert_eq!(header("Hookgate-Delivery"), Some(DELIVERY_ID));
        assert_eq!(
            d.body.as_deref(),
            Some(crate::samples::find("github", "push").unwrap())
        );
        assert!(d.missing_secrets.is_empty() && d.error.is_none());
        let all = serde_json::to_string(&report).unwrap();
        for secret in ["T0K3N", "sig=abc", "hunter2", "s3cret"] {
            assert!(!all.contains(secret), "{secret} in {all}");
        }
        // The route that looks at a header did not fire, and says why.
        let urgent = report
            .not_fired
            .iter()
            .find(|n| n.route == "urgent")
            .unwrap();
        assert_eq!(urgent.reason, "when");
        assert_eq!(
            urgent.condition.as_deref(),
            Some("headers['x-label'] == 'urgent'")
        );
    }

    /// A `--header` reaches routes, and replaces the provider's own.
    #[test]
    fn headers_given_reach_routes_and_replace_the_providers() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let report = route(
            &config,
            &[("X-Label", "urgent"), ("X-GitHub-Delivery", "d-42")],
        );
        let fired: Vec<&str> = report.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(fired, ["all", "urgent"]);
        assert_eq!(report.delivery_id, "d-42");
    }
}

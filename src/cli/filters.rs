//! The filters `events`, `deliveries` and `queue dead` share, as flags;
//! they travel to the daemon as the admin API's query parameters, which
//! check them (a bad time or status comes back with what to write).

use clap::Args;

/// Which events.
#[derive(Args, Default, Clone)]
pub(super) struct EventFilter {
    /// The source's name in routes.toml.
    #[arg(long)]
    pub source: Option<String>,
    /// The provider's event type (push, pull_request, …).
    #[arg(long)]
    pub event: Option<String>,
    /// The provider's id for the delivery (GitHub's X-GitHub-Delivery).
    #[arg(long)]
    pub delivery_id: Option<String>,
    /// From this time on: RFC 3339 (2026-11-28T09:00:00Z), a time of day today
    /// in UTC (09:00), or how long ago (2h).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time: RFC 3339, a time of day (UTC) or how long ago.
    #[arg(long)]
    pub until: Option<String>,
}

/// Which deliveries.
#[derive(Args, Default, Clone)]
pub(super) struct DeliveryFilter {
    #[command(flatten)]
    pub event: EventFilter,
    /// One event's deliveries.
    #[arg(long)]
    pub event_id: Option<crate::queue::EventId>,
    /// The route's name.
    #[arg(long)]
    pub route: Option<String>,
    /// The sink's name.
    #[arg(long)]
    pub sink: Option<String>,
}

/// A query string of `pairs` whose value is set.
pub(super) fn query<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(v) = value {
            q.append_pair(name, &v);
        }
    }
    q.finish()
}

impl EventFilter {
    pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("source", self.source.clone()),
            ("event", self.event.clone()),
            ("delivery_id", self.delivery_id.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
        ]
    }
}

impl DeliveryFilter {
    pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
        let mut p = self.event.pairs();
        p.push(("event_id", self.event_id.map(|i| i.0.to_string())));
        p.push(("route", self.route.clone()));
        p.push(("sink", self.sink.clone()));
        p
    }
}

/// A `--limit`: a whole number from 1 (0 would list nothing and say so as
/// if nothing matched).
pub(super) fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("0 lists nothing: give 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number: give 1 or more")),
    }
}

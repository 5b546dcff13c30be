//! Re-routing events still in the log through the current routes: after a
//! route was added, or a sink's secret set, the events it would have
//! matched get their deliveries. Only deliveries that do not exist yet
//! (pending, delivered or dead) are made, and each carries the
//! Idempotency-Key first routing would have given it, so nothing is sent
//! twice.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::dispatch::Sinks;
use crate::queue::{DeliveryFilter, EventFilter, EventId, Queue, QueueError};
use crate::route::Routes;

/// Events read per page.
const PAGE: usize = 200;

/// What a re-route did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Rerouted {
    pub dry_run: bool,
    /// Events the filter selected.
    pub events: u64,
    /// Deliveries made (dry: that would be made).
    pub created: u64,
    /// Deliveries the routes make that exist already.
    pub existing: u64,
    /// Deliveries the routes could not render, with the first reason.
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<String>,
}

/// Routes the events `filter` selects through `routes` and `sinks`.
pub async fn reroute(
    queue: &dyn Queue,
    routes: &Routes,
    sinks: &Sinks,
    filter: &EventFilter,
    dry_run: bool,
) -> Result<Rerouted, QueueError> {
    let mut out = Rerouted {
        dry_run,
        ..Rerouted::default()
    };
    let mut before = None;
    loop {
        let page = queue.events(filter, before, PAGE).await?;
        for summary in &page.items {
            let Some(event) = queue.event(EventId(summary.id)).await? else {
                // Pruned since the page was read.
                continue;
            };
            out.events += 1;
            let routed = crate::router::route_one(
                queue.install_id(),
                routes,
                sinks,
                EventId(summary.id),
                &event,
            )?;
            for d in &routed.dead {
                out.failed += 1;
                if out.first_failure.is_none() {
                    out.first_failure = d.reason.clone();
                }
            }
            if routed.pending.is_empty() {
                continue;
            }
            if dry_run {
                let have = existing(queue, summary.id).await?;
                for d in &routed.pending {
                    if have.contains(&(d.route.clone(), d.sink.clone(), d.item)) {
                        out.existing += 1;
                    } else {
                        out.created += 1;
                    }
                }
            } else {
                let added = queue.add_missing(routed.pending).await?;
                out.created += added.created;
                out.existing += added.existing;
            }
        }
        before = page.next_before;
        if before.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The (route, sink, item) of every delivery event `id` has.
async fn existing(
    queue: &dyn Queue,
    id: u64,
) -> Result<BTreeSet<(String, String, Option<u32>)>, QueueError> {
    let filter = DeliveryFilter {
        event_id: Some(id),
        ..DeliveryFilter::default()
    };
    let mut have = BTreeSet::new();
    let mut before = None;
    loop {
        let page = queue.deliveries(&filter, before, 500).await?;
        for v in &page.items {
            have.insert((v.record.route.clone(), v.record.sink.clone(), v.record.item));
        }
        before = page.next_before;
        if before.is_none() {
            break;
        }
    }
    Ok(have)
}

//! `hookgate events list|show|reroute` and `hookgate deliveries list`:
//! the daemon's admin API, reached with no more of the config than the
//! admin listener's address and token (so they work while routes.toml
//! has a mistake the daemon refused to reload).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::admin_client::AdminClient;
use super::filters::{query, DeliveryFilter, EventFilter};
use super::Json;
use crate::admin::lookup::{DeliveryItem, EventDetail, EventItem, Paged};
use crate::reroute::Rerouted;

#[derive(Subcommand)]
pub(super) enum Command {
    /// Events received, newest first.
    List {
        #[command(flatten)]
        filter: EventFilter,
        /// At most this many (default 50).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One event: headers, payload, and each delivery with its attempts.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Route events still kept through the routes in force, making only
    /// the deliveries that do not exist yet (same Idempotency-Keys).
    Reroute {
        #[command(flatten)]
        filter: EventFilter,
        /// Count what would be made; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum DeliveriesCommand {
    /// Deliveries (pending, delivered, dead), newest first.
    List {
        #[command(flatten)]
        filter: DeliveryFilter,
        /// pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (default 50).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(path: &Path, command: Command) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::from_file(path)?;
    match command {
        Command::List {
            filter,
            limit,
            json,
        } => {
            let items: Vec<EventItem> =
                collect(&admin, "/api/events", &query(filter.pairs()), limit, None).await?;
            if json {
                Json::Indented.print(&items)?;
            } else if items.is_empty() {
                println!("no events");
            } else {
                for e in &items {
                    println!(
                        "{}  {}  {}/{}  {}",
                        e.id, e.received_at, e.source, e.event, e.delivery_id
                    );
                }
            }
        }
        Command::Show { id, json } => {
            let e: EventDetail = admin.must_get(&format!("/api/events/{id}")).await?;
            if json {
                Json::Indented.print(&e)?;
            } else {
                print_event(&e);
            }
        }
        Command::Reroute {
            filter,
            dry_run,
            json,
        } => {
            let mut pairs = filter.pairs();
            pairs.push(("dry_run", dry_run.then(|| "true".to_owned())));
            let done: Rerouted = admin
                .must_post(&format!("/api/reroute?{}", query(pairs)))
                .await?;
            if json {
                Json::Line.print(&done)?;
            } else {
                println!(
                    "{} {} events: {} deliveries {}, {} existed already",
                    if dry_run {
                        "would re-route"
                    } else {
                        "re-routed"
                    },
                    done.events,
                    done.created,
                    if dry_run { "to make" } else { "made" },
                    done.existing
                );
                if done.failed > 0 {
                    eprintln!(
                        "{} deliveries could not be rendered: {}",
                        done.failed,
                        done.first_failure.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn deliveries(
    path: &Path,
    command: DeliveriesCommand,
) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::from_file(path)?;
    let DeliveriesCommand::List {
        filter,
        status,
        limit,
        json,
    } = command;
    let mut pairs = filter.pairs();
    pairs.push(("status", status));
    let items: Vec<DeliveryItem> =
        collect(&admin, "/api/deliveries", &query(pairs), limit, None).await?;
    if json {
        Json::Indented.print(&items)?;
    } else if items.is_empty() {
        println!("no deliveries");
    } else {
        for d in &items {
            print_delivery(d);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Up to `limit` items of a search below id `before` (or from the
/// newest), page after page.
pub(super) async fn collect<T: serde::de::DeserializeOwned>(
    admin: &AdminClient,
    path: &str,
    filter: &str,
    limit: usize,
    before: Option<u64>,
) -> anyhow::Result<Vec<T>> {
    let mut out: Vec<T> = Vec::new();
    let mut before = before;
    while out.len() < limit {
        let page_size = (limit - out.len()).min(crate::admin::query::LIMIT_MAX);
        let mut q = format!("{path}?limit={page_size}");
        if !filter.is_empty() {
            q.push('&');
            q.push_str(filter);
        }
        if let Some(b) = before {
            q.push_str(&format!("&before={b}"));
        }
        let page: Paged<T> = admin.must_get(&q).await?;
        out.extend(page.items);
        before = page.next_before;
        if before.is_none() {
            break;
        }
    }
    Ok(out)
}

fn print_event(e: &EventDetail) {
    let i = &e.item;
    println!(
        "event {}: {}/{} (delivery id {}) from {}, received {}",
        i.id, i.source, i.event, i.delivery_id, e.client_ip, i.received_at
    );
    for (name, value) in &e.headers {
        println!("  {name}: {value}");
    }
    match (&e.payload, &e.body_text, &e.body_base64) {
        (Some(p), _, _) => println!("{}", serde_json::to_string_pretty(p).unwrap_or_default()),
        (None, Some(t), _) => println!("{t}"),
        (None, None, Some(b)) => println!("(not text, {} bytes, base64) {b}", e.body_bytes),
        (None, None, None) => println!("(empty body)"),
    }
    if e.deliveries.is_empty() {
        println!("no deliveries: no route matched it");
    }
    for d in &e.deliveries {
        print_delivery(d);
    }
}

fn print_delivery(d: &DeliveryItem) {
    let status = serde_json::to_value(d.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let when = d
        .dead_at
        .as_deref()
        .or(d.delivered_at.as_deref())
        .or(d.due_at.as_deref())
        .unwrap_or(&d.created_at);
    println!(
        "delivery {}  {status} {when}  event {} {}/{}  route {} → {}  attempts {}{}",
        d.id,
        d.event_id,
        d.source,
        d.event,
        d.route,
        d.sink,
        d.attempts.len(),
        d.held
            .iter()
            .chain(&d.reason)
            .map(|r| format!("  {r}"))
            .collect::<String>()
    );
    for a in &d.attempts {
        println!(
            "    {}  {}  {} ms  {}  {}",
            a.at,
            a.status.map_or("-".to_owned(), |s| s.to_string()),
            a.latency_ms,
            a.outcome,
            a.response.replace('\n', " ")
        );
    }
}

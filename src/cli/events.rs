//! `hookgate events list|show|reroute` and `hookgate deliveries list`:
//! the daemon's admin API, reached with no more of the config than the
//! admin listener's address and token (so they work while routes.toml
//! has a mistake the daemon refused to reload). When no daemon answers
//! there (stopped, or crashed), `list` and `show` read storage
//! themselves, as `queue stats` does: what happened to a delivery is
//! still there to see; only `reroute` needs the daemon's routes.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use http::Method;

use super::admin_client::AdminClient;
use super::filters::{query, DeliveryFilter, EventFilter};
use super::{load_or_report, ConfigRefused, Json, Secrets};
use crate::admin::lookup::{DeliveryItem, EventDetail, EventItem, Failure, Paged, Stored};
use crate::queue::Queue;
use crate::reroute::Rerouted;

/// Where `list` and `show` read: the daemon's admin API, or storage
/// itself when nothing answers on the admin listener.
enum Reader {
    Daemon(AdminClient),
    Storage(Arc<dyn Queue>),
}

impl Reader {
    async fn open(path: &Path) -> anyhow::Result<Reader> {
        let admin = AdminClient::from_file(path)?;
        if admin.request(Method::GET, "/healthz").await?.is_some() {
            return Ok(Reader::Daemon(admin));
        }
        let loaded = load_or_report(path, Secrets::Configured).ok_or(ConfigRefused)?;
        let queue = crate::daemon::inspect_storage(&loaded.config).await?;
        admin.reading_storage();
        Ok(Reader::Storage(queue))
    }

    async fn events(&self, filter: &str, limit: usize) -> anyhow::Result<Vec<EventItem>> {
        match self {
            Reader::Daemon(admin) => collect(admin, "/api/events", filter, limit, None).await,
            Reader::Storage(queue) => {
                pages(filter, limit, None, |q| async move {
                    Stored(&**queue).events_page(Some(&q)).await.map_err(said)
                })
                .await
            }
        }
    }

    async fn event(&self, id: u64) -> anyhow::Result<EventDetail> {
        match self {
            Reader::Daemon(admin) => admin.must_get(&format!("/api/events/{id}")).await,
            Reader::Storage(queue) => Stored(&**queue).event_detail(id).await.map_err(said),
        }
    }

    async fn deliveries(&self, filter: &str, limit: usize) -> anyhow::Result<Vec<DeliveryItem>> {
        match self {
            Reader::Daemon(admin) => collect(admin, "/api/deliveries", filter, limit, None).await,
            Reader::Storage(queue) => {
                pages(filter, limit, None, |q| async move {
                    Stored(&**queue)
                        .deliveries_page(Some(&q), false)
                        .await
                        .map_err(said)
                })
                .await
            }
        }
    }
}

/// A lookup's refusal, as the API would have said it.
fn said(f: Failure) -> anyhow::Error {
    anyhow::anyhow!("{}", f.1)
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Events received, newest first.
    List {
        #[command(flatten)]
        filter: EventFilter,
        /// At most this many (default 50).
        #[arg(long, default_value_t = 50, value_parser = super::filters::at_least_one)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One event: headers, payload, and each delivery with its attempts.
    Show {
        /// As the 202 answer gave it (`evt_…`) or as `events list` shows it.
        id: crate::queue::EventId,
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
        #[arg(long, default_value_t = 50, value_parser = super::filters::at_least_one)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(path: &Path, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List {
            filter,
            limit,
            json,
        } => {
            let items = Reader::open(path)
                .await?
                .events(&query(filter.pairs()), limit)
                .await?;
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
            let e = Reader::open(path).await?.event(id.0).await?;
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
            let done: Rerouted = AdminClient::from_file(path)?
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
    let DeliveriesCommand::List {
        filter,
        status,
        limit,
        json,
    } = command;
    let mut pairs = filter.pairs();
    pairs.push(("status", status));
    let items = Reader::open(path)
        .await?
        .deliveries(&query(pairs), limit)
        .await?;
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
/// newest), page after page, from the daemon's API at `path`.
pub(super) async fn collect<T: serde::de::DeserializeOwned>(
    admin: &AdminClient,
    path: &str,
    filter: &str,
    limit: usize,
    before: Option<u64>,
) -> anyhow::Result<Vec<T>> {
    pages(filter, limit, before, |q| async move {
        admin.must_get::<Paged<T>>(&format!("{path}?{q}")).await
    })
    .await
}

/// Up to `limit` items of a search below id `before` (or from the
/// newest), page after page: `page` answers one query string (`limit`,
/// `before` and `filter`).
async fn pages<T, F, Fut>(
    filter: &str,
    limit: usize,
    before: Option<u64>,
    mut page: F,
) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<Paged<T>>>,
{
    let mut out: Vec<T> = Vec::new();
    let mut before = before;
    while out.len() < limit {
        let page_size = (limit - out.len()).min(crate::admin::query::LIMIT_MAX);
        let mut q = format!("limit={page_size}");
        if !filter.is_empty() {
            q.push('&');
            q.push_str(filter);
        }
        if let Some(b) = before {
            q.push_str(&format!("&before={b}"));
        }
        let found = page(q).await?;
        out.extend(found.items);
        before = found.next_before;
        if before.is_none() {
            break;
        }
    }
    Ok(out)
}

fn print_event(e: &EventDetail) {
    let i = &e.item;
    println!(
        "event {} ({}): {}/{} (delivery id {}) from {}, received {}",
        i.id,
        crate::queue::EventId(i.id),
        i.source,
        i.event,
        i.delivery_id,
        e.client_ip,
        i.received_at
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

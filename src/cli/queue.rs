//! `hookgate queue`: `stats`, `dead list|show|replay` and `migrate`. Stats
//! and dead letters come from the running daemon's admin API; when none
//! answers, from storage itself (the data directory, or the database).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;
use http::Method;

use super::admin_client::AdminClient;
use super::filters::{query, DeliveryFilter};
use super::{bad_config, load_or_report, Json, Secrets};
use crate::admin::lookup::{DeliveryItem, Replayed};
use crate::admin::query::{Query, DEAD_PARAMS, LIMIT_MAX};
use crate::admin::{disabled_sinks, DeadDetail, DeadSummary};
use crate::config::{Config, QueueConfig};
use crate::daemon::inspect_storage;
use crate::queue::{unix_millis, DeliveryRecord, DeliveryStatus, Requeued, Stats};

#[derive(Subcommand)]
pub(super) enum Command {
    /// Counts by state.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Deliveries that failed for good.
    Dead {
        #[command(subcommand)]
        what: Box<DeadCommand>,
    },
    /// Moves the local backend's unfinished work (events not yet routed,
    /// pending deliveries, dead letters) under server.data_dir into the
    /// PostgreSQL database `[queue]` names. Stop the local daemon first.
    Migrate {
        #[arg(long)]
        json: bool,
    },
    /// Gives back to the filesystem what the local backend's state file
    /// no longer uses (after a large backlog drained). Stop the daemon
    /// first.
    Compact,
}

#[derive(Subcommand)]
pub(super) enum DeadCommand {
    /// Dead deliveries, newest first (those the filters select).
    List {
        #[command(flatten)]
        filter: DeliveryFilter,
        /// At most this many (default 100).
        #[arg(long, default_value_t = 100, value_parser = super::filters::at_least_one)]
        limit: usize,
        /// Only those older than this id (the next page after a list
        /// that ended with it).
        #[arg(long)]
        before: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// One, with its attempt history.
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Send again (re-enables a sink that a "gone" answer disabled): one
    /// by id, --all, or those the filters select (--sink slack --since 09:00…).
    Replay {
        /// The dead delivery's id.
        #[arg(conflicts_with = "all")]
        id: Option<u64>,
        /// Every dead delivery.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: DeliveryFilter,
        /// Count what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(path: &Path, command: Command) -> anyhow::Result<ExitCode> {
    if let Command::Migrate { json } = command {
        let Some(loaded) = load_or_report(path, Secrets::Configured) else {
            return Ok(bad_config());
        };
        return migrate(path, &loaded.config, json).await;
    }
    if let Command::Compact = command {
        let Some(loaded) = load_or_report(path, Secrets::Configured) else {
            return Ok(bad_config());
        };
        return compact(&loaded.config);
    }
    let reach = Reach {
        path,
        admin: AdminClient::from_file(path)?,
    };
    match command {
        Command::Stats { json } => stats(&reach, json).await,
        Command::Dead { what } => dead(&reach, *what).await,
        Command::Migrate { .. } | Command::Compact => unreachable!("handled above"),
    }
}

/// Where the queue commands read: the running daemon's admin API, which
/// takes no more of the config than its address and token (so they work
/// while routes.toml has a mistake the daemon refused to reload); and,
/// when no daemon answers, storage itself, which needs the whole config.
struct Reach<'a> {
    path: &'a Path,
    admin: AdminClient,
}

impl Reach<'_> {
    /// The whole config, for reading storage without a daemon (which it
    /// says on stderr).
    fn config(&self) -> anyhow::Result<crate::config::Loaded> {
        let loaded = load_or_report(self.path, Secrets::Configured)
            .ok_or_else(|| anyhow::Error::from(super::ConfigRefused))?;
        self.admin.reading_storage();
        Ok(loaded)
    }
}

async fn dead(reach: &Reach<'_>, what: DeadCommand) -> anyhow::Result<ExitCode> {
    match what {
        DeadCommand::List {
            filter,
            limit,
            before,
            json,
        } => dead_list(reach, &filter, limit, before, json).await,
        DeadCommand::Show { id, json } => dead_show(reach, id, json).await,
        DeadCommand::Replay {
            id,
            all,
            filter,
            dry_run,
            json,
        } => {
            let filtered = filter.pairs().iter().any(|(_, v)| v.is_some());
            match (id, all, filtered) {
                (Some(id), _, false) if !dry_run => dead_replay(reach, Some(id), json).await,
                (None, true, false) if !dry_run => dead_replay(reach, None, json).await,
                (None, _, _) if filtered || (all && dry_run) => {
                    replay_where(reach, &filter, dry_run, json).await
                }
                (Some(_), _, _) => {
                    eprintln!("hookgate: replay one dead delivery by its id, or those filters select: not both (and --dry-run goes with filters or --all)");
                    Ok(ExitCode::from(2))
                }
                (None, _, _) => {
                    eprintln!("hookgate: say which dead deliveries to replay: an id, --all, or filters such as --sink slack --since 2h (see `hookgate queue dead replay --help`)");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

async fn stats(reach: &Reach<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let stats: Stats = match reach.admin.request(Method::GET, "/api/queue/stats").await? {
        Some(body) => serde_json::from_slice(&body).context("the daemon's stats answer")?,
        None => {
            let loaded = reach.config()?;
            let config = &loaded.config;
            let disabled = disabled_sinks(config.sinks.values());
            inspect_storage(config).await?.stats(&disabled).await?
        }
    };
    if json {
        Json::Line.print(&stats)?;
    } else {
        println!(
            "inbox {}  deliveries {}  dead {}  unmatched {}  seen {}  disk {} bytes",
            stats.inbox,
            stats.deliveries,
            stats.dead,
            stats.unmatched,
            stats.seen,
            stats.disk_bytes
        );
        for (sink, d) in &stats.disabled {
            println!(
                "held {}  for sink `{sink}`, disabled: {} (set it and reload to send them)",
                d.held, d.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn dead_list(
    reach: &Reach<'_>,
    filter: &DeliveryFilter,
    limit: usize,
    before: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let qs = query(filter.pairs());
    let admin = &reach.admin;
    // One more than shown says whether there are more: a million dead
    // letters are not read to print a screenful.
    let want = limit.saturating_add(1);
    let mut list: Vec<DeadSummary> = match admin
        .get::<serde_json::Value>("/api/queue/stats")
        .await?
    {
        Some(_) => super::events::collect::<DeliveryItem>(admin, "/api/dead", &qs, want, before)
            .await?
            .iter()
            .map(DeadSummary::of_item)
            .collect(),
        None => {
            let mut f = offline_filter(&qs)?;
            f.status = Some(DeliveryStatus::Dead);
            let queue = inspect_storage(&reach.config()?.config).await?;
            let mut out = Vec::new();
            let mut before = before;
            while out.len() < want {
                let n = (want - out.len()).min(LIMIT_MAX);
                let page = queue.deliveries(&f, before, n).await?;
                out.extend(page.items.iter().map(|v| DeadSummary::of(&v.record)));
                before = page.next_before;
                if before.is_none() {
                    break;
                }
            }
            out
        }
    };
    let more = list.len() > limit;
    list.truncate(limit);
    if more {
        let last = list.last().map_or(0, |d| d.id);
        eprintln!(
            "hookgate: the newest {limit} shown; older ones: --before {last}, or more at once: --limit N (filters such as --sink or --since narrow it)"
        );
    }
    if json {
        Json::Indented.print(&list)?;
    } else if list.is_empty() {
        println!("no dead deliveries");
    } else {
        for d in &list {
            let status = d.last_status.map_or("-".to_owned(), |s| s.to_string());
            println!(
                "{}  {}  {}/{} {}  route {} → {}  attempts {}  last {}  {}",
                d.id,
                d.dead_at,
                d.source,
                d.event,
                d.delivery_id,
                d.route,
                d.sink,
                d.attempts,
                status,
                d.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The filters as the admin API reads them, for the storage read directly.
fn offline_filter(qs: &str) -> anyhow::Result<crate::queue::DeliveryFilter> {
    Query::parse(Some(qs), DEAD_PARAMS)
        .and_then(|q| q.delivery_filter(SystemTime::now()))
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Replays the dead letters the filters select (or, dry, counts them).
async fn replay_where(
    reach: &Reach<'_>,
    filter: &DeliveryFilter,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut pairs = filter.pairs();
    pairs.push(("dry_run", dry_run.then(|| "true".to_owned())));
    let qs = query(pairs);
    let done: Replayed = match reach.admin.post(&format!("/api/dead/replay?{qs}")).await? {
        Some(done) => done,
        None => {
            let loaded = reach.config()?;
            let config = &loaded.config;
            let f = offline_filter(&query(filter.pairs()))?;
            let refuse = |rec: &DeliveryRecord| gone_sink(config, rec);
            let done = inspect_storage(config)
                .await?
                .requeue_where(&f, unix_millis(SystemTime::now()), &refuse, dry_run)
                .await?;
            Replayed { dry_run, done }
        }
    };
    let n = done.done.replayed;
    if json {
        Json::Line.print(&done)?;
    } else {
        println!(
            "{} {n} dead deliver{}",
            if dry_run { "would replay" } else { "replayed" },
            if n == 1 { "y" } else { "ies" }
        );
        for r in &done.done.refused {
            eprintln!("not replayed: {}: {}", r.id, r.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a dead letter to a sink the config no longer has stays dead.
fn gone_sink(config: &Config, rec: &DeliveryRecord) -> Option<String> {
    (!config.sinks.contains_key(&rec.sink)).then(|| {
        format!(
            "its sink `{}` is no longer in the config: add it back to replay it",
            rec.sink
        )
    })
}

async fn dead_show(reach: &Reach<'_>, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let detail: DeadDetail = match reach.admin.get(&format!("/api/dead/{id}")).await? {
        Some(detail) => detail,
        None => {
            let d = inspect_storage(&reach.config()?.config)
                .await?
                .dead_letter(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead delivery {id}"))?;
            DeadDetail::of(&d)
        }
    };
    if json {
        Json::Indented.print(&detail)?;
    } else {
        let s = &detail.summary;
        println!(
            "delivery {}: {}/{} (delivery id {}) via route {} to sink {}",
            s.id, s.source, s.event, s.delivery_id, s.route, s.sink
        );
        println!("dead since {}: {}", s.dead_at, s.reason);
        println!(
            "idempotency key {}, body {} bytes",
            detail.idempotency_key, detail.body_bytes
        );
        for a in &detail.history {
            let at = UNIX_EPOCH + Duration::from_millis(a.at_ms);
            let status = a.status.map_or("-".to_owned(), |s| s.to_string());
            println!(
                "  {}  {status}  {} ms  {}  {}",
                humantime::format_rfc3339_seconds(at),
                a.latency_ms,
                a.outcome,
                a.response.replace('\n', " ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replays one dead delivery (`id`), or every one (`None`).
async fn dead_replay(reach: &Reach<'_>, id: Option<u64>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match id {
        Some(id) => format!("/api/dead/{id}/replay"),
        None => "/api/dead/replay".to_owned(),
    };
    let done: Requeued = match reach.admin.post(&path).await? {
        Some(done) => done,
        None => {
            let loaded = reach.config()?;
            let config = &loaded.config;
            let refuse = |rec: &DeliveryRecord| gone_sink(config, rec);
            inspect_storage(config)
                .await?
                .requeue(id, unix_millis(SystemTime::now()), &refuse)
                .await?
        }
    };
    let n = done.replayed;
    if json {
        Json::Line.print(&done)?;
    } else {
        println!(
            "replayed {n} dead deliver{}",
            if n == 1 { "y" } else { "ies" }
        );
        for r in &done.refused {
            eprintln!("not replayed: {}: {}", r.id, r.reason);
        }
    }
    if let Some(id) = id {
        if let Some(r) = done.refused.first() {
            eprintln!("dead delivery {id} not replayed: {}", r.reason);
            return Ok(ExitCode::FAILURE);
        }
        if n == 0 {
            eprintln!("no dead delivery {id}: see `hookgate queue dead list`");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate(path: &Path, config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    if matches!(config.queue, QueueConfig::Local) {
        eprintln!("queue migrate moves the local backend's work into PostgreSQL: set [queue] backend = \"postgres\" and its url in {} first", path.display());
        return Ok(bad_config());
    }
    let (inbox, deliveries, dead) = crate::daemon::local_work(config)?;
    if inbox + deliveries + dead == 0 {
        println!(
            "nothing to move: {} holds no unfinished work of the local backend",
            config.server.data_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let target = crate::daemon::open_database(config).await?;
    let done = crate::daemon::migrate(config, target.as_ref()).await?;
    target.close();
    target.flush().await?;
    if json {
        Json::Line.print(&done)?;
    } else if done.already {
        println!("the database had taken this data directory's work before: nothing imported twice; the local files are moved aside");
    } else {
        println!(
            "moved {} events not yet routed, {} pending deliveries and {} dead letters into PostgreSQL; the local files are under {}/migrated-*",
            done.events,
            done.pending,
            done.dead,
            config.server.data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `queue compact`: the local backend's state file made as small as what
/// it holds.
fn compact(config: &Config) -> anyhow::Result<ExitCode> {
    if !matches!(config.queue, QueueConfig::Local) {
        println!("nothing to compact: the postgres backend keeps no state file here (PostgreSQL's autovacuum reuses the space)");
        return Ok(ExitCode::SUCCESS);
    }
    let (before, after) = crate::daemon::compact_state(config)?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "state file {:.1} MiB, now {:.1} MiB: {:.1} MiB given back",
        mib(before),
        mib(after),
        mib(before.saturating_sub(after))
    );
    Ok(ExitCode::SUCCESS)
}

//! `hookgate check`: validates the config as the daemon would, without
//! starting anything or connecting to the database.

use std::path::Path;
use std::process::ExitCode;

use super::{bad_config, closes_a_source, load_or_report, Secrets};
use crate::config::QueueConfig;

#[derive(clap::Args)]
pub(super) struct Args {
    /// Missing secrets are errors too (run it where the daemon runs).
    #[arg(long)]
    strict: bool,
}

pub(super) fn run(path: &Path, Args { strict }: Args) -> ExitCode {
    let Some(loaded) = load_or_report(path, Secrets::Configured) else {
        return bad_config();
    };
    for w in &loaded.warnings {
        eprintln!("warning: {}", w.display(path));
    }
    // A sink without its secret is merely disabled; a source without its
    // secret cannot take webhooks, so --strict fails on those only.
    for p in &loaded.secret_problems {
        let label = if strict && closes_a_source(p) {
            "error"
        } else {
            "warning"
        };
        eprintln!("{label}: {}", p.display(path));
    }
    let missing = loaded.secret_problems.len();
    let fatal_count = loaded
        .secret_problems
        .iter()
        .filter(|p| closes_a_source(p))
        .count();
    if strict && fatal_count > 0 {
        eprintln!(
            "{}: {fatal_count} secret(s) missing; those sources would answer 503",
            path.display()
        );
        return bad_config();
    }
    let c = &loaded.config;
    let names: Vec<&str> = c.sources.keys().map(String::as_str).collect();
    let closed = match (fatal_count, missing - fatal_count) {
        (0, 0) => String::new(),
        (0, sinks) => {
            format!("; {sinks} sink secret(s) not set here: those sinks would be disabled")
        }
        (sources, 0) => {
            format!("; {sources} source secret(s) not set here: those sources would answer 503")
        }
        (sources, sinks) => format!(
            "; secrets not set here: {sources} of sources (those would answer 503), {sinks} of sinks (those would be disabled)"
        ),
    };
    println!(
        "{}: ok: {} sources ({}), {} sinks, {} routes{closed}",
        path.display(),
        c.sources.len(),
        names.join(", "),
        c.sinks.len(),
        c.routes.len()
    );
    match &c.queue {
        QueueConfig::Local => {
            println!("queue: local, in {}", c.server.data_dir.display())
        }
        QueueConfig::Postgres { url, pool_size } => {
            let target = url
                .as_ref()
                .ok()
                .and_then(|u| std::str::from_utf8(u.expose()).ok())
                .and_then(|u| crate::queue::postgres::describe_url(u.trim()).ok())
                .unwrap_or_else(|| "(its url is not set here)".to_owned());
            println!(
                "queue: postgres, {target}, up to {pool_size} connections (not connected by check)"
            );
        }
    }
    ExitCode::SUCCESS
}

//! `hookgate check`: validates the config as the daemon would, without
//! starting anything or connecting to the database.

use std::path::Path;
use std::process::ExitCode;

use super::missing::Missing;
use super::{bad_config, load_or_report, Secrets};
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
    // secret cannot take webhooks, the admin API without its token
    // answers 503, and without queue.url's the daemon does not start: so
    // --strict fails on all but the first.
    let mut fatal = Vec::new();
    let mut sinks = 0;
    for p in &loaded.secret_problems {
        let missing = Missing::of(p);
        let label = if strict && missing.is_fatal() {
            "error"
        } else {
            "warning"
        };
        eprintln!("{label}: {}", p.display(path));
        if missing.is_fatal() {
            fatal.push(missing);
        } else {
            sinks += 1;
        }
    }
    if strict && !fatal.is_empty() {
        eprintln!(
            "{}: {} secret(s) missing: {}",
            path.display(),
            fatal.len(),
            fatal_consequences(&fatal)
        );
        return bad_config();
    }
    let c = &loaded.config;
    let names: Vec<&str> = c.sources.keys().map(String::as_str).collect();
    let mut not_set = Vec::new();
    if !fatal.is_empty() {
        not_set.push(fatal_consequences(&fatal));
    }
    if sinks > 0 {
        not_set.push(format!("{sinks} of sinks (those would be disabled)"));
    }
    let closed = if not_set.is_empty() {
        String::new()
    } else {
        format!("; secrets not set here: {}", not_set.join(", "))
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

/// What the missing secrets that `--strict` fails on would do, counted by
/// kind: "1 of sources (those would answer 503), the admin token's (…)".
fn fatal_consequences(fatal: &[Missing]) -> String {
    let sources = fatal.iter().filter(|m| **m == Missing::Source).count();
    let mut said = Vec::new();
    if sources > 0 {
        said.push(format!("{sources} of sources (those would answer 503)"));
    }
    if fatal.contains(&Missing::AdminToken) {
        said.push("server.admin_token's (the admin API would answer 503)".to_owned());
    }
    if fatal.contains(&Missing::DatabaseUrl) {
        said.push("queue.url's (the daemon would not start)".to_owned());
    }
    said.join(", ")
}

//! The `hookgate` command line: the arguments, one file per command group
//! (each with its arguments and a `run`), and what they share: loading the
//! config, `--dev` secrets, `--json` output and the exit codes. `main.rs`
//! parses, sets up logs and hands the arguments to [`run`].
//!
//! Exit codes: 0 done; 1 failed (an error, a failing route test, a send
//! that was not answered 2xx, a replay that did not happen, a delivery
//! `route` shows could not be made); 2 the config is wrong, or names a
//! sink that cannot be built (or, for `route`, lacks the source named).

mod admin_client;
mod check;
mod events;
mod filters;
mod missing;
mod queue;
mod route;
mod send;
mod serve;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::config::{self, secrets::Resolver, Loaded};

#[derive(Parser)]
#[command(
    name = "hookgate",
    version,
    about = "Webhook gateway: verify, queue durably, route"
)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = "routes.toml")]
    config: PathBuf,
    /// Log format; JSON is the default when stderr is not a terminal.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// `hookgate [--dev]` is `hookgate serve [--dev]`.
    #[command(flatten)]
    serve: serve::Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve(serve::Args),
    /// Validate the config; exit 2 on any problem. Missing secrets are
    /// warnings (CI rarely holds them) unless --strict.
    Check(check::Args),
    /// Run the route tests beside the config (routes.test.toml).
    Test(test::Args),
    /// Show which routes an event fires and exactly what each sink would
    /// receive (secrets redacted); nothing is sent or queued.
    Route(route::Args),
    /// Post a bundled sample, signed as the source's provider signs.
    Send(send::Args),
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        what: queue::Command,
    },
    /// Find events, see what became of them, route them again.
    Events {
        #[command(subcommand)]
        what: events::Command,
    },
    /// Find deliveries: pending, delivered or dead.
    Deliveries {
        #[command(subcommand)]
        what: events::DeliveriesCommand,
    },
}

impl Cli {
    /// Whether the arguments run the daemon (`serve`, or no subcommand).
    pub fn serves(&self) -> bool {
        matches!(self.command, None | Some(Command::Serve(_)))
    }
}

/// Runs the command the arguments name; `Err` is printed by `main` with
/// [`causes`] and exits with [`exit_code`].
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    if cli.serve.dev && !matches!(command, Command::Serve(_)) {
        anyhow::bail!("`--dev` before a subcommand goes with `serve` only: write it after the subcommand (`hookgate send --dev …`)");
    }
    let config = &cli.config;
    match command {
        Command::Serve(args) => serve::run(config, args.dev || cli.serve.dev).await,
        Command::Check(args) => Ok(check::run(config, args)),
        Command::Test(args) => Ok(test::run(config, args)),
        Command::Route(args) => route::run(config, args),
        Command::Send(args) => send::run(config, args).await,
        Command::Queue { what } => queue::run(config, what).await,
        Command::Events { what } => events::run(config, what).await,
        Command::Deliveries { what } => events::deliveries(config, what).await,
    }
}

/// The config has problems (each printed already): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("the config has the problems above; nothing was read")]
struct ConfigRefused;

/// The exit code for a command that failed with `e`.
pub fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<ConfigRefused>().is_some() {
        return bad_config();
    }
    // A sink the config describes but that cannot be built is a config
    // problem (2): systemd does not restart on it in a loop.
    match e.downcast_ref::<crate::daemon::DaemonError>() {
        Some(crate::daemon::DaemonError::Sink { .. }) => bad_config(),
        _ => ExitCode::from(1),
    }
}

/// The error and its causes, each said once: our errors name their cause
/// in their message already, and some libraries' repeat theirs.
pub fn causes(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// The target of the CLI's log lines: `hookgate`, the binary's, as when
/// they were written in `main.rs` (module paths would make them
/// `hookgate::cli::…`), so filters and log queries on it still match.
const LOG_TARGET: &str = "hookgate";

/// Exit 2: the config is wrong.
fn bad_config() -> ExitCode {
    ExitCode::from(2)
}

/// Where a command finds the secrets the config names.
#[derive(Clone, Copy)]
enum Secrets {
    /// The environment, files and systemd credentials.
    Configured,
    /// `--dev`: also the store `serve --dev` writes beside the config.
    Dev,
    /// `serve --dev`: also the store, adding a secret for each one not set.
    DevGenerate,
}

impl Secrets {
    fn resolver(self, config: &Path) -> Result<Resolver, String> {
        let resolver = Resolver::from_env();
        match self {
            Secrets::Configured => Ok(resolver),
            Secrets::Dev => resolver.with_dev(dev_secrets_path(config), false),
            Secrets::DevGenerate => resolver.with_dev(dev_secrets_path(config), true),
        }
    }
}

fn dev_secrets_path(config: &Path) -> PathBuf {
    config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("hookgate-dev-secrets.toml")
}

/// Loads the config; prints every problem and returns `None` on errors
/// (the command then exits with [`bad_config`]).
fn load_or_report(path: &Path, secrets: Secrets) -> Option<Loaded> {
    let resolver = match secrets.resolver(path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookgate: dev secrets: {e}");
            return None;
        }
    };
    match config::load(path, &resolver) {
        Ok(loaded) => {
            for name in resolver.generated() {
                tracing::warn!(target: LOG_TARGET, secret = %name, file = %dev_secrets_path(path).display(), "DEV MODE: generated a secret that was not set; never use --dev in production");
            }
            Some(loaded)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} problem(s); nothing was started",
                errors.file.display(),
                errors.problems.len()
            );
            None
        }
    }
}

/// How `--json` prints an answer: one line, or indented (`dead list` and
/// `dead show`, read by people as often as by scripts).
#[derive(Clone, Copy)]
enum Json {
    Line,
    Indented,
}

impl Json {
    fn print(self, value: &impl Serialize) -> serde_json::Result<()> {
        let text = match self {
            Json::Line => serde_json::to_string(value)?,
            Json::Indented => serde_json::to_string_pretty(value)?,
        };
        println!("{text}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = anyhow::anyhow!("disk full").context("cannot write segment 3: disk full");
        assert_eq!(causes(&e), "cannot write segment 3: disk full");
        let e = anyhow::anyhow!("disk full").context("cannot write segment 3");
        assert_eq!(causes(&e), "cannot write segment 3: disk full");
    }
}

//! `hookgate serve` (and `hookgate` alone): the daemon, with SIGTERM and
//! SIGINT to drain and SIGHUP to reload the config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::missing::Missing;
use super::{bad_config, load_or_report, Secrets, LOG_TARGET};
use crate::config;
use crate::daemon::Reload;

#[derive(clap::Args, Clone, Copy)]
pub(super) struct Args {
    /// Development only: generate the secrets that are not set and keep
    /// them in hookgate-dev-secrets.toml beside the config.
    #[arg(long)]
    pub(super) dev: bool,
}

pub(super) async fn run(path: &Path, dev: bool) -> anyhow::Result<ExitCode> {
    let secrets = if dev {
        Secrets::DevGenerate
    } else {
        Secrets::Configured
    };
    let Some(loaded) = load_or_report(path, secrets) else {
        return Ok(bad_config());
    };
    if dev {
        tracing::warn!(target: LOG_TARGET, "DEV MODE: missing secrets are generated; `hookgate send --dev` reads them");
    }
    // One line per missing secret: where it is set and what follows.
    for p in &loaded.secret_problems {
        let missing = Missing::of(p);
        if missing.is_fatal() {
            tracing::error!(target: LOG_TARGET, problem = %p.display(path), "{}", missing.consequence());
        } else {
            tracing::warn!(target: LOG_TARGET, problem = %p.display(path), "{}", missing.consequence());
        }
    }
    for w in &loaded.warnings {
        tracing::warn!(target: LOG_TARGET, problem = %w.display(path), "config warning");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let (reloads, reloaded) = mpsc::channel(4);
    tokio::spawn(reload_on_hangup(path.to_owned(), secrets, reloads));
    crate::daemon::run(loaded.config, shutdown, reloaded).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload`): read and check the config again; a good
/// one is handed to the daemon, a bad one is refused with every problem
/// logged, and the old config keeps serving.
async fn reload_on_hangup(path: PathBuf, secrets: Secrets, reloads: mpsc::Sender<Reload>) {
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    while hup.recv().await.is_some() {
        tracing::info!(target: LOG_TARGET, config = %path.display(), "SIGHUP: reloading");
        let resolver = match secrets.resolver(&path) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(target: LOG_TARGET, error = %e, "reload refused: dev secrets unreadable; the old config keeps serving");
                let _ = reloads.send(Reload::Refused).await;
                continue;
            }
        };
        // Reading files and compiling templates is blocking work.
        let loaded = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || config::load(&p, &resolver)).await
        };
        match loaded {
            Ok(Ok(loaded)) => {
                // A source without its secret would answer 503 to every
                // delivery (GitHub does not retry), so that reload is
                // refused; a sink without one is only disabled, and the
                // admin token and the queue are read only at start.
                let closed: Vec<_> = loaded
                    .secret_problems
                    .iter()
                    .filter(|p| Missing::of(p).refuses_reload())
                    .collect();
                if !closed.is_empty() {
                    for p in &closed {
                        tracing::error!(target: LOG_TARGET, problem = %p.display(&path), "{}", Missing::of(p).on_reload());
                    }
                    tracing::error!(target: LOG_TARGET,
                        problems = closed.len(),
                        "reload refused: the old config keeps serving"
                    );
                    let _ = reloads.send(Reload::Refused).await;
                    continue;
                }
                for p in &loaded.secret_problems {
                    tracing::warn!(target: LOG_TARGET, problem = %p.display(&path), "{}", Missing::of(p).on_reload());
                }
                for w in &loaded.warnings {
                    tracing::warn!(target: LOG_TARGET, problem = %w.display(&path), "config");
                }
                if reloads
                    .send(Reload::Apply(Box::new(loaded.config)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Err(errors)) => {
                for problem in &errors.problems {
                    tracing::error!(target: LOG_TARGET, problem = %problem.display(&errors.file), "reload refused");
                }
                tracing::error!(target: LOG_TARGET,
                    problems = errors.problems.len(),
                    "reload refused: the old config keeps serving"
                );
                let _ = reloads.send(Reload::Refused).await;
            }
            Err(e) => {
                tracing::error!(target: LOG_TARGET, error = %e, "reload failed");
                let _ = reloads.send(Reload::Refused).await;
            }
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!(target: LOG_TARGET, "SIGTERM: draining"),
        _ = int.recv() => tracing::info!(target: LOG_TARGET, "SIGINT: draining"),
    }
    shutdown.cancel();
}

//! `hookgate test`: runs the route tests beside the config and prints one
//! line per test, with a line diff for each failure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{bad_config, load_or_report, Secrets};
use crate::routetest;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The tests (default: the config's name with .test.toml).
    #[arg(long)]
    tests: Option<PathBuf>,
}

pub(super) fn run(path: &Path, Args { tests }: Args) -> ExitCode {
    // Secrets do not matter for routing: the dev store keeps sources open.
    let Some(loaded) = load_or_report(path, Secrets::Configured) else {
        return bad_config();
    };
    let tests = tests.unwrap_or_else(|| routetest::tests_path(path));
    let reports = match routetest::run(&loaded.config, &tests) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookgate test: {e}");
            return bad_config();
        }
    };
    let failed = reports.iter().filter(|r| !r.failures.is_empty()).count();
    for r in &reports {
        if r.failures.is_empty() {
            println!("ok    {}", r.name);
        } else {
            println!("FAIL  {}", r.name);
            for f in &r.failures {
                for line in f.lines() {
                    println!("      {line}");
                }
            }
        }
    }
    println!(
        "{}: {} passed, {failed} failed",
        tests.display(),
        reports.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

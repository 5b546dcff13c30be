//! `routes.toml` loading: any text goes through the load and validation
//! `hookgate check` uses (`config::parse_in`, templates read relative to
//! the checkout so the shipped ones resolve). Problems are fine; a panic is
//! not, and every problem and warning must render as `check` prints it.

#![no_main]

use std::path::Path;
use std::sync::Once;

use hookgate::config::{parse_in, secrets::Resolver};

/// The secrets the shipped config names, set so its sources and sinks are
/// built (not only closed) from the seeds.
const ENV: &[(&str, &str)] = &[
    ("GITHUB_WEBHOOK_SECRET", "fuzz-secret"),
    ("GITLAB_WEBHOOK_TOKEN", "fuzz-token"),
    (
        "GITLAB_SIGNING_TOKEN",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ),
    ("JIRA_WEBHOOK_SECRET", "fuzz-secret"),
    ("FIGMA_WEBHOOK_PASSCODE", "fuzz-passcode"),
    ("ZENDESK_WEBHOOK_SECRET", "fuzz-secret"),
    ("INTERCOM_CLIENT_SECRET", "fuzz-secret"),
    (
        "SLACK_WEBHOOK_URL",
        "https://hooks.slack.com/services/T0/B0/x",
    ),
    ("TEAMS_WORKFLOW_URL", "https://example.com/workflows/x"),
    (
        "DISCORD_WEBHOOK_URL",
        "https://discord.com/api/webhooks/1/x",
    ),
    ("PRODMATIC_API_TOKEN", "fuzz-token"),
    ("FUZZ_SECRET", "fuzz-secret"),
    ("FUZZ_WHSEC", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    static SET: Once = Once::new();
    SET.call_once(|| ENV.iter().for_each(|(k, v)| std::env::set_var(k, v)));
    // `load` reads the file as UTF-8 and reports anything else as unreadable.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base_dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let file = Path::new("routes.toml");
    match parse_in(text, base_dir, &Resolver::default()) {
        Ok(loaded) => {
            for p in loaded.secret_problems.iter().chain(&loaded.warnings) {
                let _ = p.display(file);
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a reason");
            for p in &problems {
                let _ = p.display(file);
            }
        }
    }
});

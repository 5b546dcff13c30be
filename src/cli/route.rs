//! `hookgate route --source S --event E --payload FILE`: which routes fire
//! for an event, and exactly what each sink would receive (method, URL and
//! headers with credentials redacted, the body's bytes), without sending
//! anything or touching the queue (`dryrun`).
//!
//! Exit 0 when it routed, and also when nothing fires (that is an answer:
//! the output says why); 1 when a delivery could not be made (a template
//! failed, or its sink cannot send what the route made: it would be dead
//! at once), or the payload cannot be read or would be refused (400); 2
//! when the config has a problem or names no such source.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;

use super::{bad_config, load_or_report, Json, Secrets};
use crate::config::{secrets::Resolver, Proof};
use crate::dryrun::{self, Delivery, DryRunError, Report};
use crate::verify::Provider;

#[derive(clap::Args)]
pub(super) struct Args {
    /// The source, a key of [sources].
    #[arg(long)]
    source: String,
    /// The event type as the provider sends it (GitHub's `push`,
    /// `pull_request`…); where the provider puts it in the payload (Jira,
    /// Zendesk…), the payload's is what routes match.
    #[arg(long)]
    event: String,
    /// The payload, as the provider would post it; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    payload: PathBuf,
    /// A request header, 'Name: value' (repeatable): for routes that look
    /// at headers; it replaces the provider's header of that name.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = header)]
    headers: Vec<(String, String)>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("`{s}` is not a header: write it as 'Name: value'")),
    }
}

pub(super) fn run(path: &Path, args: Args) -> anyhow::Result<ExitCode> {
    let Some(loaded) = load_or_report(path, Secrets::Configured) else {
        return Ok(bad_config());
    };
    let config = &loaded.config;
    let Some(source) = config.sources.get(&args.source) else {
        let names = config.sources.keys().map(String::as_str);
        eprintln!(
            "hookgate route: {}",
            crate::suggest::not_in_config("source", &args.source, names)
        );
        return Ok(bad_config());
    };
    let body = read_payload(&args.payload)?;
    let mut notes = Vec::new();
    let provider: Arc<dyn Provider> = match &source.proof {
        Proof::Ready(p) => p.clone(),
        Proof::Closed(reason) => {
            notes.push(format!(
                "source `{}` has no secret here ({reason}): the daemon would answer its webhooks 503 until it is set; its request is made with a placeholder secret, which routing does not look at",
                source.name
            ));
            placeholder_provider(path, &source.name)?
        }
    };
    let input = dryrun::Input {
        source: args.source,
        event: args.event,
        headers: args.headers,
        body,
    };
    let mut report = match dryrun::run(config, provider.as_ref(), &input, SystemTime::now()) {
        Ok(r) => r,
        Err(e @ DryRunError::Sink { .. }) => {
            eprintln!("hookgate route: {e}");
            return Ok(bad_config());
        }
        Err(e) => return Err(e.into()),
    };
    notes.append(&mut report.notes);
    report.notes = notes;
    if args.json {
        Json::Line.print(&report)?;
    } else {
        for note in &report.notes {
            eprintln!("note: {note}");
        }
        print!("{}", text(&report));
    }
    Ok(if report.failed().next().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_payload(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("cannot read the payload from stdin")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("cannot read the payload file {}", path.display()))
}

/// The source's provider as the config builds it once its secret is set:
/// the config loaded again with placeholders for secrets not set here.
fn placeholder_provider(path: &Path, source: &str) -> anyhow::Result<Arc<dyn Provider>> {
    let resolver = Resolver::from_env().with_placeholders();
    let loaded = crate::config::load(path, &resolver).map_err(|e| anyhow::anyhow!("{e}"))?;
    match loaded.config.sources.get(source).map(|s| &s.proof) {
        Some(Proof::Ready(p)) => Ok(p.clone()),
        Some(Proof::Closed(reason)) => {
            anyhow::bail!(
                "source `{source}` cannot be made even with a placeholder secret: {reason}"
            )
        }
        None => anyhow::bail!("no source `{source}` in the config"),
    }
}

/// The report for people: each delivery as an HTTP request (or the log
/// line), its body's bytes as they are, then the routes that did not fire.
fn text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let deliveries: usize = r.routes.iter().map(|f| f.deliveries.len()).sum();
    let id = &r.delivery_id;
    if r.fired {
        let _ = writeln!(
            out,
            "{} `{}` (delivery {id}): {} route(s) fire, {deliveries} deliveries; nothing was sent or queued",
            r.source,
            r.event,
            r.routes.len()
        );
    } else {
        let takes = r
            .not_fired
            .iter()
            .filter(|n| n.why.takes_the_event())
            .count();
        let why = if takes == 0 {
            format!(
                "no route takes `{}` events from source `{}`",
                r.event, r.source
            )
        } else {
            format!(
                "{takes} route(s) take `{}` events from source `{}`, and none matched",
                r.event, r.source
            )
        };
        let _ = writeln!(
            out,
            "{} `{}` (delivery {id}): nothing fires: {why}",
            r.source, r.event
        );
    }
    for f in &r.routes {
        for d in &f.deliveries {
            out.push('\n');
            delivery(&mut out, &f.name, d);
        }
    }
    // Once something fired, the routes that take other events are noise.
    let (near, far): (Vec<_>, Vec<_>) = r
        .not_fired
        .iter()
        .partition(|n| !r.fired || n.why.takes_the_event());
    if !near.is_empty() {
        let _ = writeln!(out, "\ndid not fire:");
        for n in near {
            let _ = writeln!(out, "  {}: {}", n.route, n.detail);
        }
    }
    if !far.is_empty() {
        let _ = writeln!(
            out,
            "({} other route(s) take other sources or events)",
            far.len()
        );
    }
    let failed = r.failed().count();
    if failed > 0 {
        let _ = writeln!(
            out,
            "\n{failed} delivery(ies) could not be made: the daemon would make each dead at once"
        );
    }
    out
}

fn delivery(out: &mut String, route: &str, d: &Delivery) {
    use std::fmt::Write;
    let mut title = format!("== {route} -> {} ({})", d.sink, d.kind);
    if let Some(i) = d.item {
        let _ = write!(title, ", item {i}");
    }
    if let Some(k) = &d.order_key {
        let _ = write!(title, ", order key {k}");
    }
    let _ = writeln!(out, "{title}");
    if let Some(e) = &d.error {
        let _ = writeln!(out, "FAILED: {e}");
        return;
    }
    if let (Some(method), Some(url)) = (&d.method, &d.url) {
        let _ = writeln!(out, "{method} {url}");
    }
    for h in &d.headers {
        let _ = writeln!(out, "{}: {}", h.name, h.value);
    }
    for why in &d.missing_secrets {
        let _ = writeln!(
            out,
            "secret missing: {why}; the daemon holds these deliveries until it is set"
        );
    }
    let body = d.body.as_deref().unwrap_or_default();
    match (&d.writes_to, &d.body_base64) {
        (_, Some(b64)) => {
            let _ = writeln!(out, "body: not UTF-8; its bytes in base64:\n{b64}");
        }
        (Some(to), None) => {
            let _ = write!(out, "writes to {to} ({} bytes):\n{body}", body.len());
        }
        (None, None) => {
            let _ = write!(out, "body ({} bytes):\n{body}", body.len());
        }
    }
    if !body.is_empty() && !body.ends_with('\n') && d.body_base64.is_none() {
        out.push('\n');
    }
}

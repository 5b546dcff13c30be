//! What a secret that is not set does to the daemon, told by the key it is
//! for: `serve` logs it once with its place and that consequence, `check
//! --strict` fails on those that close something, and a reload refuses
//! only those that would close something at once.

use crate::config::Problem;

/// Whose secret is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Missing {
    /// `sources.*`: the source answers 503 to every delivery.
    Source,
    /// `sinks.*`: the sink is disabled; its deliveries wait.
    Sink,
    /// `server.admin_token`: the admin API answers 503.
    AdminToken,
    /// `queue.url`: the database cannot be opened, so the daemon does not
    /// start.
    DatabaseUrl,
}

impl Missing {
    pub(super) fn of(p: &Problem) -> Missing {
        let first = p.key.split('.').next().unwrap_or_default();
        match first {
            "sinks" => Missing::Sink,
            "server" => Missing::AdminToken,
            "queue" => Missing::DatabaseUrl,
            _ => Missing::Source,
        }
    }

    /// What follows while it is missing, as `serve` logs it.
    pub(super) fn consequence(self) -> &'static str {
        match self {
            Missing::Source => "source closed: it answers 503 until its secret is set",
            Missing::Sink => "sink disabled until its secret is set: its deliveries are held (queue stats shows them) and sent once it is set and the config reloaded",
            Missing::AdminToken => "admin API closed: /metrics, /api and the console answer 503 (/healthz and /readyz stay open) until server.admin_token's secret is set and the daemon restarted",
            Missing::DatabaseUrl => "the database cannot be opened until queue.url's secret is set",
        }
    }

    /// Whether `check --strict` fails on it: everything but a sink, which
    /// is only disabled.
    pub(super) fn is_fatal(self) -> bool {
        self != Missing::Sink
    }

    /// Whether a reload is refused for it. A source would close at once;
    /// the admin token and the queue are read only at start (a reload
    /// keeps the running ones), so those are warned about, not refused.
    pub(super) fn refuses_reload(self) -> bool {
        self == Missing::Source
    }

    /// What a reload says of it, when it does not refuse it.
    pub(super) fn on_reload(self) -> &'static str {
        match self {
            Missing::Source => "reload refused: a source would have no secret",
            Missing::Sink => self.consequence(),
            Missing::AdminToken => "the running admin API keeps its token (server.* is read at start), but a restart now would close it (503) until server.admin_token's secret is set",
            Missing::DatabaseUrl => "the running daemon keeps its database ([queue] is read at start), but a restart now would not start until queue.url's secret is set",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(key: &str) -> Problem {
        Problem {
            line: 1,
            column: 1,
            key: key.into(),
            message: "secret env:X is unavailable".into(),
        }
    }

    #[test]
    fn each_key_is_told_by_whose_secret_it_is() {
        for (key, whose) in [
            ("sources.github.secret", Missing::Source),
            ("sources.gitlab.signing_secret", Missing::Source),
            ("sources.stripe.secret[1]", Missing::Source),
            ("sinks.slack.url", Missing::Sink),
            ("sinks.hook.signing_secret", Missing::Sink),
            ("server.admin_token", Missing::AdminToken),
            ("queue.url", Missing::DatabaseUrl),
        ] {
            assert_eq!(Missing::of(&problem(key)), whose, "{key}");
        }
    }

    #[test]
    fn only_a_source_refuses_a_reload_and_only_a_sink_passes_strict() {
        assert!(Missing::Source.refuses_reload());
        for m in [Missing::Sink, Missing::AdminToken, Missing::DatabaseUrl] {
            assert!(!m.refuses_reload(), "{m:?}");
        }
        assert!(!Missing::Sink.is_fatal());
        for m in [Missing::Source, Missing::AdminToken, Missing::DatabaseUrl] {
            assert!(m.is_fatal(), "{m:?}");
        }
    }
}

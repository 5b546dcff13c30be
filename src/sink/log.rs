//! The `log` sink: one JSON line per delivery, to a file or stdout. What an
//! operator points routes at to see them work, and an audit trail.
//!
//! Lines are written by a thread of the sink's own, never on a tokio
//! worker: stdout may be a pipe to a slow reader and a file may sit on a
//! hung disk, and a write blocked there must not stop the daemon from
//! answering webhooks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde_bytes::ByteBuf;
use tokio::sync::oneshot;

use super::{Answer, Outgoing, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;

/// Lines waiting for the writer thread before the sink counts as busy.
const WAITING_LINES: usize = 16;
/// How long a delivery waits when the writer is busy (not an attempt).
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// A line for the writer thread, and where to say how writing it went.
struct Line {
    text: String,
    written: oneshot::Sender<std::io::Result<()>>,
}

pub struct LogSink {
    /// The file; stdout when `None`.
    to: Option<PathBuf>,
    lines: mpsc::SyncSender<Line>,
}

impl LogSink {
    /// Opens `path` for appending (stdout when `None`) and starts the
    /// writer thread, which ends when the sink is dropped.
    pub fn open(path: Option<&Path>) -> Result<LogSink, String> {
        let mut out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
            ),
        };
        let (lines, waiting) = mpsc::sync_channel::<Line>(WAITING_LINES);
        std::thread::Builder::new()
            .name("hookgate-log-sink".into())
            .spawn(move || {
                for line in waiting {
                    // The attempt was given up (timed out): its retry
                    // brings the line again.
                    if line.written.is_closed() {
                        continue;
                    }
                    let r = out
                        .write_all(line.text.as_bytes())
                        .and_then(|()| out.flush());
                    let _ = line.written.send(r);
                }
            })
            .map_err(|e| format!("cannot start the log sink's writer: {e}"))?;
        Ok(LogSink {
            to: path.map(Path::to_path_buf),
            lines,
        })
    }

    /// A sink that only says what it would write (`hookgate route`): it
    /// opens nothing and has no writer, so a delivery to it would wait as
    /// if its writer had stopped.
    pub fn unopened(path: Option<&Path>) -> LogSink {
        let (lines, _) = mpsc::sync_channel(0);
        LogSink {
            to: path.map(Path::to_path_buf),
            lines,
        }
    }

    /// The line a delivery writes: the frozen object with the delivery's
    /// identity added.
    fn line(d: &DeliveryRecord) -> Result<String, String> {
        let frozen = d.frozen.as_ref().ok_or("nothing to send")?;
        let mut line = match serde_json::from_slice::<serde_json::Value>(&frozen.body) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        line.insert("route".into(), d.route.clone().into());
        line.insert("sink".into(), d.sink.clone().into());
        line.insert("idempotency_key".into(), d.idempotency_key.clone().into());
        let mut text = serde_json::Value::Object(line).to_string();
        text.push('\n');
        Ok(text)
    }
}

impl Sink for LogSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let message = match rendered {
            Rendered::Default => None,
            Rendered::Text(t) | Rendered::Json(t) => Some(t.clone()),
            Rendered::Action { action, fields } => {
                Some(serde_json::json!({ "action": action, "fields": fields }).to_string())
            }
        };
        let line = serde_json::json!({
            "source": event.source,
            "event": event.event,
            "delivery_id": event.delivery_id,
            "received_at_ms": event.received_at_ms,
            "message": message,
            "bytes": event.body.len(),
        });
        Ok(Frozen {
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: ByteBuf::from(line.to_string().into_bytes()),
            ..Frozen::default()
        })
    }

    fn outgoing(&self, d: &DeliveryRecord, _now: SystemTime) -> Result<Outgoing, String> {
        Ok(Outgoing::Line {
            to: self.to.clone(),
            text: Self::line(d)?,
        })
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let text = match Self::line(d) {
                Ok(text) => text,
                Err(why) => return super::no_answer(Verdict::Permanent(why)),
            };
            let (written, result) = oneshot::channel();
            match self.lines.try_send(Line { text, written }) {
                Ok(()) => {}
                // The output is not taking lines (a full pipe, a hung
                // disk): wait without spending an attempt.
                Err(mpsc::TrySendError::Full(_)) => {
                    return super::no_answer(Verdict::RateLimited { after: BUSY_WAIT })
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    return super::no_answer(Verdict::Retry {
                        after: None,
                        why: "the log sink's writer stopped".into(),
                    })
                }
            }
            match result.await {
                Ok(Ok(())) => super::no_answer(Verdict::Delivered),
                Ok(Err(e)) => super::no_answer(Verdict::Retry {
                    after: None,
                    why: e.to_string(),
                }),
                Err(_) => super::no_answer(Verdict::Retry {
                    after: None,
                    why: "the log sink's writer stopped".into(),
                }),
            }
        })
    }
}

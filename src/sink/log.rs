//! The `log` sink: one JSON line per delivery, to a file or stdout. What an
//! operator points routes at to see them work, and an audit trail.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_bytes::ByteBuf;

use super::{Answer, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;

pub struct LogSink {
    /// `None`: stdout.
    file: Option<Mutex<std::fs::File>>,
}

impl LogSink {
    pub fn open(path: Option<&Path>) -> Result<LogSink, String> {
        let file = match path {
            None => None,
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
            )),
        };
        Ok(LogSink { file })
    }
}

impl Sink for LogSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let message = match rendered {
            Rendered::Default => None,
            Rendered::Text(t) => Some(t.clone()),
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

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let Some(frozen) = &d.frozen else {
                return super::no_answer(Verdict::Permanent("nothing to send".into()));
            };
            // One line: the frozen object with the delivery's identity added.
            let mut line = match serde_json::from_slice::<serde_json::Value>(&frozen.body) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            };
            line.insert("route".into(), d.route.clone().into());
            line.insert("sink".into(), d.sink.clone().into());
            line.insert("idempotency_key".into(), d.idempotency_key.clone().into());
            let mut text = serde_json::Value::Object(line).to_string();
            text.push('\n');
            let written = match &self.file {
                Some(f) => f.lock().expect("log sink lock").write_all(text.as_bytes()),
                None => std::io::stdout().lock().write_all(text.as_bytes()),
            };
            match written {
                Ok(()) => super::no_answer(Verdict::Delivered),
                Err(e) => super::no_answer(Verdict::Retry {
                    after: None,
                    why: e.to_string(),
                }),
            }
        })
    }
}

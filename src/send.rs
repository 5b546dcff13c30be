//! `hookgate send SOURCE EVENT`: posts a bundled sample (or a file), signed
//! exactly as the source's provider signs, with the secret the config names.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::client::{self, ClientError};
use crate::config::{Config, Proof};
use crate::samples;
use crate::verify::SignInput;

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub source: String,
    pub event: String,
    /// Where to post; default `http://{server.listen}/hooks/{source}`.
    pub to: Option<String>,
    /// A body to post instead of the bundled sample.
    pub body: Option<Vec<u8>>,
    /// The delivery id; default a fresh one, so each send is a new delivery.
    pub delivery_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no source `{0}` in the config (sources: {1})")]
    UnknownSource(String, String),
    #[error("source `{source_name}` cannot sign: {reason}")]
    Closed { source_name: String, reason: String },
    #[error("no bundled `{event}` sample for provider {provider} (bundled: {known}); pass --body FILE to send your own")]
    NoSample {
        provider: String,
        event: String,
        known: String,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the gateway answered.
#[derive(Debug)]
pub struct Sent {
    pub url: String,
    pub delivery_id: String,
    pub status: StatusCode,
    pub body: Bytes,
}

pub async fn send(config: &Config, opts: SendOptions) -> Result<Sent, SendError> {
    let Some(source) = config.sources.get(&opts.source) else {
        let names: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        return Err(SendError::UnknownSource(opts.source, names.join(", ")));
    };
    let provider = match &source.proof {
        Proof::Ready(p) => p,
        Proof::Closed(reason) => {
            return Err(SendError::Closed {
                source_name: source.name.clone(),
                reason: reason.clone(),
            })
        }
    };
    let kind = source.provider.name();
    let delivery_id = opts.delivery_id.unwrap_or_else(fresh_id);
    let (event, body) = match opts.body {
        Some(b) => (opts.event.clone(), b),
        None => {
            let (name, sample) =
                samples::find_named(kind, &opts.event).ok_or_else(|| SendError::NoSample {
                    provider: kind.to_owned(),
                    event: opts.event.clone(),
                    known: samples::events(kind)
                        .iter()
                        .map(|e| format!("{e} ({})", samples::route_event(kind, e)))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            (
                name.to_owned(),
                samples::with_delivery_id(kind, sample.as_bytes(), &delivery_id),
            )
        }
    };
    let signed = provider.sign(&SignInput {
        body: &body,
        event: &event,
        delivery_id: &delivery_id,
        now: SystemTime::now(),
    });
    let url = opts
        .to
        .unwrap_or_else(|| format!("http://{}/hooks/{}", config.server.listen, source.name));
    let (status, _, answer) =
        client::request(Method::POST, &url, &signed.headers, signed.body).await?;
    Ok(Sent {
        url,
        delivery_id,
        status,
        body: answer,
    })
}

/// A random UUID-shaped id.
pub fn fresh_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

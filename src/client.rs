//! A small HTTP/1 client for the CLI (`send`, `queue`) and the tests.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an http:// URL")]
    BadUrl(String),
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer from {url}: {source}")]
    Read {
        url: String,
        #[source]
        source: hyper::Error,
    },
}

impl ClientError {
    /// Whether nothing was listening (the daemon is not running).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect { source, .. } if source.is_connect())
    }
}

/// Sends one request and reads the whole answer.
pub async fn request(
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(ClientError::BadUrl(url.to_owned()));
    }
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(req)
        .await
        .map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|source| ClientError::Read {
            url: url.to_owned(),
            source,
        })?
        .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

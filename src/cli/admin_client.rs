//! The CLI's way to a running daemon: its admin API, which takes no more
//! of the config than the admin listener's address and token.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use serde::de::DeserializeOwned;

use crate::admin::CSRF_HEADER;
use crate::secret::Secret;

pub(super) struct AdminClient {
    listen: SocketAddr,
    /// The bearer token, when the config sets one, and the CSRF header
    /// every change needs.
    headers: Vec<(String, String)>,
}

impl AdminClient {
    pub(super) fn new(listen: SocketAddr, token: Option<&Secret>) -> AdminClient {
        let mut headers = vec![(CSRF_HEADER.into(), "1".into())];
        if let Some(t) = token {
            headers.push((
                "Authorization".into(),
                format!("Bearer {}", t.expose_str().unwrap_or("")),
            ));
        }
        AdminClient { listen, headers }
    }

    /// The daemon of the config file at `path`, read for the admin
    /// listener's address and token alone (the rest may have mistakes).
    pub(super) fn from_file(path: &std::path::Path) -> anyhow::Result<AdminClient> {
        let resolver = crate::config::secrets::Resolver::from_env();
        let admin = crate::config::admin_of(path, &resolver).map_err(anyhow::Error::msg)?;
        if let Some(broken) = &admin.broken {
            eprintln!("hookgate: {broken}");
            eprintln!("hookgate: read server.admin_listen and server.admin_token from its [server] table alone (a reload would refuse this file)");
        }
        Ok(AdminClient::new(admin.listen, admin.token.as_ref()))
    }

    /// `GET path`, the answer read as JSON; no daemon answering is an error.
    pub(super) async fn must_get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.get(path).await?.ok_or_else(|| self.nobody())
    }

    /// `POST path`, the answer read as JSON; no daemon answering is an error.
    pub(super) async fn must_post<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.post(path).await?.ok_or_else(|| self.nobody())
    }

    /// Says on stderr that, no daemon answering, the command reads
    /// storage itself.
    pub(super) fn reading_storage(&self) {
        eprintln!("hookgate: {}: read from storage", self.unanswered());
    }

    fn nobody(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: start it with `hookgate serve`, or point --config at the file it runs with",
            self.unanswered()
        )
    }

    /// That nothing answers on the admin listener, and where that is.
    fn unanswered(&self) -> String {
        format!("no daemon answers on {} (server.admin_listen)", self.listen)
    }

    /// The body of a 2xx answer; `None` when nothing listens there (no
    /// daemon runs); any other answer is an error with the API's message.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<Option<Bytes>> {
        let url = format!("http://{}{path}", self.listen);
        match crate::client::request(method, &url, &self.headers, Vec::new()).await {
            Ok((status, _, body)) if status.is_success() => Ok(Some(body)),
            Ok((status, _, body)) => {
                let msg = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                anyhow::bail!("{msg} ({status})")
            }
            Err(e) if e.is_connect() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `GET path`, the answer read as JSON.
    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        self.json(Method::GET, path).await
    }

    /// `POST path` (no body), the answer read as JSON.
    pub(super) async fn post<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Option<T>> {
        self.json(Method::POST, path).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        match self.request(method, path).await? {
            Some(body) => Ok(Some(serde_json::from_slice(&body)?)),
            None => Ok(None),
        }
    }
}

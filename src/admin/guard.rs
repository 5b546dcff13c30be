//! Who may talk to the admin listener, judged from the request headers
//! alone: the `Host` a client used, the bearer token, and, for a change
//! (any method but GET, HEAD and OPTIONS), proof that a web page did not
//! send it.
//!
//! A browser is the attacker's tool on loopback: a page may POST to
//! `127.0.0.1:9090` (CSRF) or rebind its own name to that address and read
//! the API (DNS rebinding). Rebinding needs a name the attacker controls,
//! and a browser always sends the name it resolved as `Host`, so `Host`
//! must be an IP literal, `localhost`, or a name in `server.admin_hosts`.
//! A cross-site page cannot set a custom header without a CORS preflight
//! (which this listener never grants), so a change needs the bearer token
//! or `X-Hookgate-CSRF`, and a cross-site `Origin` or `Sec-Fetch-Site` is
//! refused outright.
//!
//! The console's browser carries a session cookie instead of the token
//! (`console/session.rs`). A cookie rides along with any request the
//! browser sends, so a change made with it must also carry the session's
//! CSRF token, which only pages of this origin can read: in
//! `X-Hookgate-CSRF`, or in the form's `csrf` field.

use std::net::IpAddr;

use http::{header, HeaderMap, Method, Request, StatusCode};

use crate::console::session::{Session, Sessions};
use crate::secret::Secret;

/// The header that marks a change as sent by a tool, not a web page.
pub const CSRF_HEADER: &str = "x-hookgate-csrf";

/// What the admin listener accepts, from `[server]`.
pub struct Guard {
    /// Required for everything but the probes, when set (`Err`: its secret
    /// is missing, and the API refuses everyone).
    pub token: Option<Result<Secret, String>>,
    /// `server.admin_hosts`: lower-case names, each with or without a port.
    pub hosts: Vec<String>,
    /// The console's session cookies and CSRF tokens.
    pub sessions: Sessions,
}

/// Who is asking, once the headers passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The bearer token: a tool (the CLI, a script).
    Bearer,
    /// The console's session cookie.
    Session(Session),
    /// Nobody in particular: no token is configured, or (probes only) the
    /// request carries none.
    Open,
}

/// Why a request was refused; each maps to one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No `Host`, or one that is not ours (the value, for the log).
    Host(String),
    /// A token is configured but its secret could not be read.
    TokenUnset,
    /// No bearer token (nor a session).
    Token,
    /// A bearer token that is not the admin token (and no session).
    WrongToken,
    /// A change sent by a page of another origin (the header that said so).
    CrossSite(&'static str),
    /// A change without the token or the CSRF header.
    Undeclared,
    /// A change made with the session cookie whose CSRF token is missing
    /// or not the session's.
    Csrf,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host(_) => StatusCode::MISDIRECTED_REQUEST,
            Refused::TokenUnset => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Token | Refused::WrongToken => StatusCode::UNAUTHORIZED,
            Refused::CrossSite(_) | Refused::Undeclared | Refused::Csrf => StatusCode::FORBIDDEN,
        }
    }

    /// The answer's `error`: what the operator changes to get through.
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Host(_) => "unknown Host: use the listener's address or localhost, or add the name to server.admin_hosts",
            Refused::TokenUnset => "admin token not configured",
            Refused::Token => "this needs `Authorization: Bearer <server.admin_token>`",
            Refused::WrongToken => "the bearer token is not server.admin_token: check the token you send",
            Refused::CrossSite(_) => "cross-site request refused: the admin API takes changes only from its own origin",
            Refused::Undeclared => "a change needs the header `X-Hookgate-CSRF: 1` (or the bearer token)",
            Refused::Csrf => "the page's CSRF token is missing or stale: reload the page and try again",
        }
    }
}

impl Guard {
    pub fn new(token: Option<Result<Secret, String>>, hosts: Vec<String>) -> Guard {
        let sessions = Sessions::new(token.as_ref().and_then(|t| t.as_ref().ok()));
        Guard {
            token,
            hosts,
            sessions,
        }
    }

    /// Checks `req` as the API takes it: [`Guard::caller`], then, for a
    /// change, [`Guard::csrf`] from the header.
    pub fn check<B>(&self, req: &Request<B>, probe: bool) -> Result<Caller, Refused> {
        let caller = self.caller(req, probe)?;
        if is_change(req.method()) {
            self.csrf(req.headers(), &caller, None)?;
        }
        Ok(caller)
    }

    /// Who sent `req` (`Host`, then the token or the session cookie), and
    /// for a change, that no other site's page sent it. Probes
    /// (`/healthz`, `/readyz`) need no token.
    pub fn caller<B>(&self, req: &Request<B>, probe: bool) -> Result<Caller, Refused> {
        let host = authority(req).ok_or_else(|| Refused::Host(String::new()))?;
        if !self.known_host(&host) {
            return Err(Refused::Host(host));
        }
        let headers = req.headers();
        let caller = match &self.token {
            None => Caller::Open,
            Some(Err(_)) if probe => Caller::Open,
            Some(Err(_)) => return Err(Refused::TokenUnset),
            Some(Ok(token)) => match bearer(headers) {
                Some(given) if token.ct_eq(given.as_bytes()) => Caller::Bearer,
                given => match self.sessions.of_cookies(headers) {
                    Some(session) => Caller::Session(session),
                    None if probe => Caller::Open,
                    None if given.is_some() => return Err(Refused::WrongToken),
                    None => return Err(Refused::Token),
                },
            },
        };
        if !is_change(req.method()) {
            return Ok(caller);
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            if !matches!(site.as_bytes(), b"same-origin" | b"none") {
                return Err(Refused::CrossSite("Sec-Fetch-Site"));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            if !origin.to_str().is_ok_and(|o| same_origin(o, &host)) {
                return Err(Refused::CrossSite("Origin"));
            }
        }
        Ok(caller)
    }

    /// Whether a change by `caller` proves a page of ours sent it: the
    /// bearer token does; a session needs its CSRF token (`form`'s, or
    /// else the header's); with no token configured, the console's forms
    /// carry the open CSRF token and tools the header, whatever its value.
    pub fn csrf(
        &self,
        headers: &HeaderMap,
        caller: &Caller,
        form: Option<&str>,
    ) -> Result<(), Refused> {
        let header = headers.get(CSRF_HEADER).map(|v| v.to_str().unwrap_or(""));
        match caller {
            Caller::Bearer => Ok(()),
            Caller::Session(session) => match form.or(header) {
                Some(given) if session.csrf_is(given) => Ok(()),
                _ => Err(Refused::Csrf),
            },
            Caller::Open => match (form, header) {
                (Some(given), _) if self.sessions.open_csrf_is(given) => Ok(()),
                (Some(_), _) => Err(Refused::Csrf),
                (None, Some(_)) => Ok(()),
                (None, None) => Err(Refused::Undeclared),
            },
        }
    }

    /// Whether a client may reach us by `authority` (`host[:port]`).
    fn known_host(&self, authority: &str) -> bool {
        // `user@host` is no Host a client sends.
        if authority.contains('@') || authority.parse::<http::uri::Authority>().is_err() {
            return false;
        }
        let (host, port) = split(authority);
        if host == "localhost" || ip_literal(host).is_some() {
            return true;
        }
        self.hosts.iter().any(|allowed| {
            let (name, allowed_port) = split(allowed);
            name == host && (allowed_port.is_none() || allowed_port == port)
        })
    }
}

/// Whether `method` changes something (all but GET, HEAD and OPTIONS).
fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The token of `Authorization: Bearer <token>`; the scheme is matched
/// case-insensitively (RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// The authority the client addressed, lower-cased: the request target's
/// (absolute form) or else `Host`.
fn authority<B>(req: &Request<B>) -> Option<String> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().to_ascii_lowercase()),
        None => Some(
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()?
                .to_ascii_lowercase(),
        ),
    }
}

/// Whether a page at `origin` (`scheme://host[:port]`) is the admin
/// listener itself, reached as `host` (the request's authority). `null` and
/// anything unparsable are not.
fn same_origin(origin: &str, host: &str) -> bool {
    let Ok(uri) = origin.parse::<http::Uri>() else {
        return false;
    };
    let default = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return false,
    };
    let Some(a) = uri.authority() else {
        return false;
    };
    let (name, port) = split(host);
    a.host().eq_ignore_ascii_case(name)
        && a.port_u16().unwrap_or(default) == port.unwrap_or(default)
}

/// `host[:port]` into its parts; an IPv6 host keeps its brackets.
fn split(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

/// `host` as an address: `127.0.0.1`, `[::1]`.
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>, hosts: &[&str]) -> Guard {
        Guard::new(
            token.map(|t| Ok(Secret::new(t))),
            hosts.iter().map(|h| h.to_string()).collect(),
        )
    }

    fn req(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri("/api/dead/replay");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn host_must_be_an_address_localhost_or_configured() {
        let g = guard(None, &["hookgate.internal", "admin.example:9443"]);
        let host = |h: &str| g.check(&req(Method::GET, &[("host", h)]), false);
        for ok in [
            "127.0.0.1:9090",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST",
            "10.0.0.5:9090",
            "hookgate.internal:9090",
            "HookGate.Internal",
            "admin.example:9443",
        ] {
            assert_eq!(host(ok), Ok(Caller::Open), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9090",
            "admin.example:9090",
            "user@127.0.0.1",
            "",
        ] {
            assert_eq!(host(bad), Err(Refused::Host(bad.to_lowercase())), "{bad}");
        }
        let no_host = g.check(&req(Method::GET, &[]), true);
        assert_eq!(no_host, Err(Refused::Host(String::new())));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let g = guard(Some("s3cret"), &[]);
        let with = |auth: &str| {
            g.check(
                &req(
                    Method::GET,
                    &[("host", "127.0.0.1"), ("authorization", auth)],
                ),
                false,
            )
        };
        for ok in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret"] {
            assert_eq!(with(ok), Ok(Caller::Bearer), "{ok}");
        }
        for missing in ["Basic s3cret", "Bearers3cret", "s3cret"] {
            assert_eq!(with(missing), Err(Refused::Token), "{missing}");
        }
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer "] {
            assert_eq!(with(wrong), Err(Refused::WrongToken), "{wrong}");
        }
    }

    #[test]
    fn a_change_needs_the_token_or_the_csrf_header_and_its_own_origin() {
        let open = guard(None, &[]);
        let post = |g: &Guard, h: &[(&str, &str)]| {
            let mut all = vec![("host", "127.0.0.1:9090")];
            all.extend_from_slice(h);
            g.check(&req(Method::POST, &all), false)
        };
        assert_eq!(post(&open, &[]), Err(Refused::Undeclared));
        assert_eq!(
            post(&open, &[("content-type", "text/plain")]),
            Err(Refused::Undeclared)
        );
        assert_eq!(post(&open, &[(CSRF_HEADER, "1")]), Ok(Caller::Open));
        let authed = guard(Some("t"), &[]);
        assert_eq!(
            post(&authed, &[("authorization", "Bearer t")]),
            Ok(Caller::Bearer)
        );
        // Cross-site, even with the header (a page cannot send it without
        // a preflight, but say no before anything else).
        for (name, value) in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            assert!(
                matches!(
                    post(&open, &[(CSRF_HEADER, "1"), (name, value)]),
                    Err(Refused::CrossSite(_))
                ),
                "{name}: {value}"
            );
        }
        for (name, value) in [
            ("origin", "http://127.0.0.1:9090"),
            ("origin", "HTTP://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin"),
        ] {
            assert_eq!(
                post(&open, &[(CSRF_HEADER, "1"), (name, value)]),
                Ok(Caller::Open)
            );
        }
        // Reads need neither.
        let get = open.check(
            &req(
                Method::GET,
                &[("host", "127.0.0.1"), ("sec-fetch-site", "cross-site")],
            ),
            false,
        );
        assert_eq!(get, Ok(Caller::Open));
    }

    #[test]
    fn probes_need_no_token_but_a_known_host() {
        let g = guard(Some("t"), &[]);
        let probe = |h: &str| g.check(&req(Method::GET, &[("host", h)]), true);
        assert_eq!(probe("127.0.0.1:9090"), Ok(Caller::Open));
        assert!(matches!(probe("evil.example"), Err(Refused::Host(_))));
    }
}

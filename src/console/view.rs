//! How a console page is answered: templates built into the binary
//! (minijinja, HTML-escaped), and the headers every answer carries (a
//! strict Content-Security-Policy: scripts and styles from this origin
//! only, nothing inline, no frames).

use std::sync::OnceLock;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use minijinja::Environment;
use serde::Serialize;

type Answer = Response<Full<Bytes>>;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event.html", include_str!("templates/event.html")),
    ("sinks.html", include_str!("templates/sinks.html")),
    ("dead.html", include_str!("templates/dead.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("replayed.html", include_str!("templates/replayed.html")),
    ("tail.html", include_str!("templates/tail.html")),
    ("error.html", include_str!("templates/error.html")),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in TEMPLATES {
            env.add_template(name, text)
                .unwrap_or_else(|e| panic!("console template {name}: {e:#}"));
        }
        env
    })
}

/// `template` rendered with `ctx`, as a page.
pub fn page<S: Serialize>(status: StatusCode, template: &str, ctx: S) -> Answer {
    match env().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => reply(status, "text/html; charset=utf-8", html.into()),
        Err(e) => {
            tracing::error!(template, error = %format!("{e:#}"), "cannot render a console page");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"the console could not render this page; the log says why\n"),
            )
        }
    }
}

/// An error page: what went wrong and what to do.
pub fn error(status: StatusCode, message: &str, ctx: &super::Common) -> Answer {
    page(
        status,
        "error.html",
        minijinja::context! { c => ctx, status => status.as_u16(), reason => status.canonical_reason(), message },
    )
}

/// A redirect (303: the next request is a GET).
pub fn see_other(location: &str) -> Answer {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain", Bytes::new());
    r.headers_mut().insert(
        header::LOCATION,
        location
            .parse()
            .unwrap_or(header::HeaderValue::from_static("/")),
    );
    r
}

/// The console's script and style sheet.
pub fn asset(name: &str) -> Option<Answer> {
    let (content_type, body): (&str, &'static [u8]) = match name {
        "console.css" => (
            "text/css; charset=utf-8",
            include_bytes!("assets/console.css"),
        ),
        "console.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/console.js"),
        ),
        "favicon.svg" => ("image/svg+xml", include_bytes!("assets/favicon.svg")),
        _ => return None,
    };
    let mut r = reply(StatusCode::OK, content_type, Bytes::from_static(body));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Some(r)
}

pub fn reply(status: StatusCode, content_type: &str, body: Bytes) -> Answer {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("static content type"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    // Not `no-referrer`: under it a browser sends `Origin: null` with a
    // form, which the guard must refuse as it refuses any other site.
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    r
}

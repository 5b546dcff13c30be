//! The operators' console: HTML pages the admin listener serves at `/`,
//! over the same lookups as the API (`admin/lookup.rs`).
//!
//! | page | what it shows |
//! |---|---|
//! | `/login` | the form that trades the admin token for a session cookie |
//! | `/` | events, searched and filtered, each with its deliveries' states |
//! | `/events/{id}` | one event: headers, payload, each delivery and its attempts |
//! | `/sinks` | each sink's health |
//! | `/dead` | dead letters, replayed one, selected, or by filter |
//! | `/tail` | events as they arrive |
//!
//! Pages are built on the server (`pages.rs`, templates in `templates/`);
//! a small script (`assets/console.js`) adds keys, the live tail and
//! refreshing while deliveries are pending. Who may see them: `session.rs`
//! and the admin [`Guard`](crate::admin::Guard).

mod pages;
pub mod session;
mod view;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;

use crate::admin::{Admin, Caller, Refused};

type Answer = Response<Full<Bytes>>;

/// Largest form a console page posts.
const FORM_MAX: usize = 256 * 1024;

/// What every page knows: the token its forms carry, and who is in.
#[derive(Debug, Serialize)]
pub struct Common {
    pub csrf: String,
    /// A session is in (the page offers to log out).
    pub session: bool,
    /// No admin token is configured: anyone who reaches the listener is in.
    pub open: bool,
    /// The nav entry to mark.
    pub nav: &'static str,
}

/// A form's fields, in order.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers a request for a console page.
pub async fn serve<B>(admin: &Admin, req: Request<B>) -> Answer
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if let (&Method::GET, Some(name)) = (&method, path.strip_prefix("/assets/")) {
        // Same Host rule as everything else; no login needed for these.
        if let Err(refused) = admin.guard.caller(&req, true) {
            return refused_page(&refused, &anonymous(admin));
        }
        return view::asset(name).unwrap_or_else(|| {
            view::error(StatusCode::NOT_FOUND, "no such file", &anonymous(admin))
        });
    }
    if path == "/login" {
        return pages::login(admin, req).await;
    }
    let caller = match admin.guard.caller(&req, false) {
        Ok(c) => c,
        Err(Refused::Token | Refused::WrongToken) if method == Method::GET => {
            let here = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
            return view::see_other(&format!("/login?next={next}"));
        }
        Err(refused) => return refused_page(&refused, &anonymous(admin)),
    };
    let common = |nav| Common {
        csrf: match &caller {
            Caller::Session(s) => s.csrf().to_owned(),
            _ => admin.guard.sessions.open_csrf(),
        },
        session: matches!(caller, Caller::Session(_)),
        open: admin.guard.token.is_none(),
        nav,
    };
    let query = req.uri().query().map(str::to_owned);
    let parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    if method == Method::GET || method == Method::HEAD {
        let q = query.as_deref();
        return match parts.as_slice() {
            [] => pages::events(admin, q, &common("events")).await,
            ["events", id] => pages::event(admin, id, &common("events")).await,
            ["sinks"] => pages::sinks(admin, &common("sinks")).await,
            ["dead"] => pages::dead(admin, q, &common("dead")).await,
            ["tail"] => view::page(
                StatusCode::OK,
                "tail.html",
                minijinja::context! { c => common("tail") },
            ),
            _ => view::error(StatusCode::NOT_FOUND, "no such page", &common("")),
        };
    }
    if method != Method::POST {
        return view::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console takes GET and POST",
            &common(""),
        );
    }
    let (head, body) = req.into_parts();
    let form = match read_form(body).await {
        Ok(f) => f,
        Err(message) => return view::error(StatusCode::BAD_REQUEST, &message, &common("")),
    };
    if let Err(refused) = admin.guard.csrf(&head.headers, &caller, form.get("csrf")) {
        return refused_page(&refused, &common(""));
    }
    match parts.as_slice() {
        ["logout"] => {
            let mut r = view::see_other("/login");
            r.headers_mut().insert(
                http::header::SET_COOKIE,
                session::clear_cookie().parse().expect("cookie"),
            );
            r
        }
        ["dead", id, "replay"] => pages::replay_one(admin, id, &common("dead")).await,
        ["dead", "replay"] => pages::replay_many(admin, &form, &common("dead")).await,
        _ => view::error(StatusCode::NOT_FOUND, "no such action", &common("")),
    }
}

/// The page for a request the guard refused.
fn refused_page(refused: &Refused, common: &Common) -> Answer {
    crate::admin::log_refusal(refused);
    view::error(refused.status(), refused.message(), common)
}

/// What a page knows before anyone is in.
fn anonymous(admin: &Admin) -> Common {
    Common {
        csrf: String::new(),
        session: false,
        open: admin.guard.token.is_none(),
        nav: "",
    }
}

/// A posted form (`application/x-www-form-urlencoded`), up to
/// [`FORM_MAX`] bytes.
async fn read_form<B>(body: B) -> Result<Form, String>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = Limited::new(body, FORM_MAX)
        .collect()
        .await
        .map_err(|e| format!("cannot read the form: {e}"))?
        .to_bytes();
    Ok(Form(
        form_urlencoded::parse(&bytes)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect(),
    ))
}

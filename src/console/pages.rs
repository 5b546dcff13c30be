//! Each console page: what it asks the admin lookups, and what it gives
//! its template.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use minijinja::context;
use serde::Serialize;

use super::{read_form, session, view, Common, Form};
use crate::admin::lookup::{DeliveryItem, Failure};
use crate::admin::query::{self, parse_time, rfc3339};
use crate::admin::Admin;
use crate::queue::{unix_millis, DeliveryStatus, Requeued};

type Answer = Response<Full<Bytes>>;

/// Deliveries counted per event on the events page.
const COUNTED_PER_EVENT: usize = 100;
/// How long a wrong token waits for its answer (guessing is slow).
const WRONG_TOKEN_DELAY: Duration = Duration::from_secs(1);

/// `/login`: the form, and trading the token for a session.
pub async fn login<B>(admin: &Admin, req: Request<B>) -> Answer
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let anonymous = super::anonymous(admin);
    // Host, and for the POST no other site's page: a probe's rules, as
    // nobody is in yet.
    if let Err(refused) = admin.guard.caller(&req, true) {
        return super::refused_page(&refused, &anonymous);
    }
    let next_of = |raw: Option<&str>| {
        raw.and_then(|raw| {
            form_urlencoded::parse(raw.as_bytes())
                .find(|(n, _)| n == "next")
                .map(|(_, v)| v.into_owned())
        })
    };
    let token = match &admin.guard.token {
        None => return view::see_other("/"),
        Some(Err(why)) => {
            return view::error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the admin token cannot be read, so nobody can log in: {why}"),
                &anonymous,
            )
        }
        Some(Ok(t)) => t.clone(),
    };
    if req.method() != http::Method::POST {
        let next = safe_next(next_of(req.uri().query()).as_deref());
        return view::page(
            StatusCode::OK,
            "login.html",
            context! { c => anonymous, next },
        );
    }
    let form = match read_form(req.into_body()).await {
        Ok(f) => f,
        Err(message) => return view::error(StatusCode::BAD_REQUEST, &message, &anonymous),
    };
    let next = safe_next(form.get("next"));
    let given = form.get("token").unwrap_or("").trim();
    if given.is_empty() || !token.ct_eq(given.as_bytes()) {
        tracing::warn!("console login refused: wrong admin token");
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        let error = if given.is_empty() {
            "Enter the admin token."
        } else {
            "That is not the admin token. It is the value of the secret that server.admin_token \
             names in routes.toml (an environment variable, a file or a credential)."
        };
        return view::page(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { c => anonymous, next, error },
        );
    }
    let value = admin.guard.sessions.issue(session::now_s());
    let mut r = view::see_other(&next);
    r.headers_mut().insert(
        http::header::SET_COOKIE,
        session::set_cookie(&value).parse().expect("cookie"),
    );
    r
}

/// Where to go after logging in: a path of this listener, or `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// The parameters of a query string, for a form to show again.
fn fields(raw: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// `fields` without `before`, with `before` = `next`: the next page's link.
fn next_page(raw: Option<&str>, path: &str, next: Option<u64>) -> Option<String> {
    let next = next?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (n, v) in fields(raw) {
        if n != "before" && !v.is_empty() {
            q.append_pair(&n, &v);
        }
    }
    q.append_pair("before", &next.to_string());
    Some(format!("{path}?{}", q.finish()))
}

/// A row of the events page.
#[derive(Serialize)]
struct EventRow {
    #[serde(flatten)]
    item: crate::admin::lookup::EventItem,
    pending: usize,
    delivered: usize,
    dead: usize,
}

fn count(ds: &[DeliveryItem], status: DeliveryStatus) -> usize {
    ds.iter().filter(|d| d.status == status).count()
}

/// `/`: events, newest first.
pub async fn events(admin: &Admin, raw: Option<&str>, c: &Common) -> Answer {
    let page = match admin.events_page(raw).await {
        Ok(p) => p,
        Err(Failure(StatusCode::BAD_REQUEST, message)) => {
            return view::page(
                StatusCode::BAD_REQUEST,
                "events.html",
                context! { c, f => fields(raw), error => message, rows => Vec::<EventRow>::new() },
            )
        }
        Err(Failure(status, message)) => return view::error(status, &message, c),
    };
    let mut rows = Vec::with_capacity(page.items.len());
    for item in page.items {
        let ds = match admin.deliveries_of(item.id, COUNTED_PER_EVENT).await {
            Ok(ds) => ds,
            Err(Failure(status, message)) => return view::error(status, &message, c),
        };
        rows.push(EventRow {
            pending: count(&ds, DeliveryStatus::Pending),
            delivered: count(&ds, DeliveryStatus::Delivered),
            dead: count(&ds, DeliveryStatus::Dead),
            item,
        });
    }
    let next = next_page(raw, "/", page.next_before);
    let filtered = fields(raw)
        .iter()
        .any(|(n, v)| n != "before" && !v.is_empty());
    view::page(
        StatusCode::OK,
        "events.html",
        context! { c, f => fields(raw), rows, next, filtered },
    )
}

/// `/events/{id}`: one event and what became of it.
pub async fn event(admin: &Admin, id: &str, c: &Common) -> Answer {
    let id = match id.parse::<crate::queue::EventId>() {
        Ok(id) => id.0,
        Err(e) => return view::error(StatusCode::BAD_REQUEST, &e.to_string(), c),
    };
    let detail = match admin.event_detail(id).await {
        Ok(d) => d,
        Err(Failure(status, message)) => return view::error(status, &message, c),
    };
    let body = match (&detail.payload, &detail.body_text, &detail.body_base64) {
        (Some(json), _, _) => serde_json::to_string_pretty(json).unwrap_or_default(),
        (None, Some(text), _) => text.clone(),
        (None, None, Some(b64)) => format!("(not UTF-8; base64)\n{b64}"),
        _ => String::new(),
    };
    let mut routes: Vec<&str> = detail.deliveries.iter().map(|d| d.route.as_str()).collect();
    routes.sort_unstable();
    routes.dedup();
    let pending = detail
        .deliveries
        .iter()
        .any(|d| d.status == DeliveryStatus::Pending);
    // What the page's script compares to decide whether to reload.
    let states: Vec<String> = detail
        .deliveries
        .iter()
        .map(|d| format!("{}:{:?}:{}", d.id, d.status, d.attempts.len()))
        .collect();
    view::page(
        StatusCode::OK,
        "event.html",
        context! {
            c,
            answer_id => crate::queue::EventId(detail.item.id).to_string(),
            e => detail,
            body,
            routes,
            pending,
            states => states.join(","),
        },
    )
}

/// `/sinks`: each sink's health.
pub async fn sinks(admin: &Admin, c: &Common) -> Answer {
    match admin
        .dispatcher
        .health(unix_millis(SystemTime::now()))
        .await
    {
        Ok(sinks) => view::page(StatusCode::OK, "sinks.html", context! { c, sinks }),
        Err(e) => view::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), c),
    }
}

/// `/dead`: dead letters, newest first, with replay.
pub async fn dead(admin: &Admin, raw: Option<&str>, c: &Common) -> Answer {
    let f = fields(raw);
    let sinks: Vec<String> = {
        let mut s: Vec<String> = admin.dispatcher.sinks().keys().cloned().collect();
        s.sort();
        s
    };
    match admin.deliveries_page(raw, true).await {
        Ok(page) => {
            let next = next_page(raw, "/dead", page.next_before);
            view::page(
                StatusCode::OK,
                "dead.html",
                context! { c, f, sinks, items => page.items, next },
            )
        }
        Err(Failure(StatusCode::BAD_REQUEST, message)) => view::page(
            StatusCode::BAD_REQUEST,
            "dead.html",
            context! { c, f, sinks, items => Vec::<DeliveryItem>::new(), error => message },
        ),
        Err(Failure(status, message)) => view::error(status, &message, c),
    }
}

/// `POST /dead/{id}/replay`
pub async fn replay_one(admin: &Admin, id: &str, c: &Common) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return view::error(StatusCode::BAD_REQUEST, "a dead letter's id is a number", c);
    };
    match admin.dispatcher.replay(Some(id)).await {
        Ok(done) if done.replayed == 0 && done.refused.is_empty() => view::error(
            StatusCode::NOT_FOUND,
            "no dead letter with that id: it was replayed already, or expired",
            c,
        ),
        Ok(done) => replayed(done, c),
        Err(e) => view::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), c),
    }
}

/// `POST /dead/replay`: the selected dead letters (`ids`) or those a
/// filter selects; first a page that says how many, then (`confirmed`)
/// the replay.
pub async fn replay_many(admin: &Admin, form: &Form, c: &Common) -> Answer {
    let confirmed = form.get("confirmed") == Some("1");
    let ids: Vec<&str> = form.all("ids").collect();
    if !ids.is_empty() || form.get("selected").is_some() {
        let Ok(ids) = ids
            .iter()
            .map(|i| i.parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
        else {
            return view::error(StatusCode::BAD_REQUEST, "a dead letter's id is a number", c);
        };
        if ids.is_empty() {
            return view::error(
                StatusCode::BAD_REQUEST,
                "no dead letter is selected: tick the ones to replay, or replay by filter",
                c,
            );
        }
        if !confirmed {
            return view::page(
                StatusCode::OK,
                "confirm.html",
                context! { c, count => ids.len(), ids, what => "selected" },
            );
        }
        let mut all = Requeued::default();
        for id in ids {
            match admin.dispatcher.replay(Some(id)).await {
                Ok(done) => {
                    all.replayed += done.replayed;
                    all.refused.extend(done.refused);
                }
                Err(e) => return view::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), c),
            }
        }
        return replayed(all, c);
    }
    // By filter. Times like `2h` are fixed when the count is shown, so the
    // replay takes exactly what was counted.
    let now = SystemTime::now();
    let mut filter: Vec<(String, String)> = Vec::new();
    for &name in query::REPLAY_PARAMS.iter().filter(|&&n| n != "dry_run") {
        let Some(v) = form.get(name).map(str::trim).filter(|v| !v.is_empty()) else {
            continue;
        };
        let v = match name {
            "since" | "until" => parse_time(v, now).map_or(v.to_owned(), rfc3339),
            _ => v.to_owned(),
        };
        filter.push((name.to_owned(), v));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&filter)
        .finish();
    if !confirmed {
        let dry = format!(
            "{query}{}dry_run=true",
            if query.is_empty() { "" } else { "&" }
        );
        return match admin.replay_filtered(Some(&dry)).await {
            Ok(r) => view::page(
                StatusCode::OK,
                "confirm.html",
                context! {
                    c,
                    count => r.done.replayed,
                    refused => r.done.refused.len(),
                    filter,
                    what => "filter",
                },
            ),
            Err(Failure(status, message)) => view::error(status, &message, c),
        };
    }
    match admin.replay_filtered(Some(&query)).await {
        Ok(r) => replayed(r.done, c),
        Err(Failure(status, message)) => view::error(status, &message, c),
    }
}

fn replayed(done: Requeued, c: &Common) -> Answer {
    view::page(
        StatusCode::OK,
        "replayed.html",
        context! { c, replayed => done.replayed, refused => done.refused },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_login_only_a_path_of_ours() {
        assert_eq!(safe_next(Some("/dead?sink=chat")), "/dead?sink=chat");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "dead",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_next_page_keeps_the_filters() {
        assert_eq!(
            next_page(Some("sink=chat&before=90&since="), "/dead", Some(40)).as_deref(),
            Some("/dead?sink=chat&before=40")
        );
        assert_eq!(next_page(Some("sink=chat"), "/dead", None), None);
    }
}

//! The admin API's query strings: filters, time ranges and the cursor,
//! read strictly (an unknown parameter or a bad value is a 400 that says
//! what to write instead, never a filter silently ignored).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::queue::{unix_millis, DeliveryFilter, DeliveryStatus, EventFilter};

/// Most items one page answers.
pub const LIMIT_MAX: usize = 500;
/// Items a page answers when `limit` is not given.
pub const LIMIT_DEFAULT: usize = 50;

/// A query string's parameters, each read once.
pub struct Query {
    params: BTreeMap<String, String>,
}

/// A parameter that cannot be used: the message says what to write.
#[derive(Debug, PartialEq, Eq)]
pub struct BadQuery(pub String);

impl std::fmt::Display for BadQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a page starts: ids below `before` (newest first), `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub before: Option<u64>,
    pub limit: usize,
}

impl Query {
    /// Reads `raw` (the part after `?`), allowing only `known` names.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Query, BadQuery> {
        let mut params = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(BadQuery(format!(
                    "unknown parameter `{name}`{}; this request takes {}",
                    crate::suggest::did_you_mean(&name, known.iter().copied()),
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(BadQuery(format!("`{name}` is given twice: give it once")));
            }
        }
        Ok(Query { params })
    }

    /// A text parameter; an empty value counts as not given.
    pub fn text(&self, name: &str) -> Option<String> {
        self.params.get(name).filter(|v| !v.is_empty()).cloned()
    }

    pub fn number(&self, name: &str) -> Result<Option<u64>, BadQuery> {
        match self.text(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                BadQuery(format!(
                    "`{name}`: `{v}` is not a number: write it like 1234"
                ))
            }),
        }
    }

    /// An event's id, in either form ([`crate::queue::EventId`]).
    pub fn event_id(&self, name: &str) -> Result<Option<u64>, BadQuery> {
        self.text(name)
            .map(|v| {
                v.parse::<crate::queue::EventId>()
                    .map(|id| id.0)
                    .map_err(|e| BadQuery(format!("`{name}`: {e}")))
            })
            .transpose()
    }

    pub fn flag(&self, name: &str) -> Result<bool, BadQuery> {
        match self.text(name).as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(v) => Err(BadQuery(format!(
                "`{name}`: `{v}` is not true or false: write `{name}=true`"
            ))),
        }
    }

    /// A moment: an RFC 3339 time, or how long ago (`2h`, `30m`, `7d`).
    pub fn time(&self, name: &str, now: SystemTime) -> Result<Option<u64>, BadQuery> {
        let Some(v) = self.text(name) else {
            return Ok(None);
        };
        parse_time(&v, now).map(Some).ok_or_else(|| {
            BadQuery(format!(
                "`{name}`: `{v}` is not a time: write an RFC 3339 time like \
                     2026-11-28T09:00:00Z, a time of day today in UTC like 09:00, or how \
                     long ago like 2h or 30m"
            ))
        })
    }

    pub fn page(&self) -> Result<Page, BadQuery> {
        let limit = match self.number("limit")? {
            None => LIMIT_DEFAULT,
            Some(n) if (1..=LIMIT_MAX as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(BadQuery(format!(
                    "`limit`: {n} is out of range: ask for 1 to {LIMIT_MAX} items a page"
                )))
            }
        };
        Ok(Page {
            before: self.number("before")?,
            limit,
        })
    }

    pub fn event_filter(&self, now: SystemTime) -> Result<EventFilter, BadQuery> {
        let filter = EventFilter {
            source: self.text("source"),
            event: self.text("event"),
            delivery_id: self.text("delivery_id"),
            since_ms: self.time("since", now)?,
            until_ms: self.time("until", now)?,
        };
        ordered(filter.since_ms, filter.until_ms)?;
        Ok(filter)
    }

    pub fn delivery_filter(&self, now: SystemTime) -> Result<DeliveryFilter, BadQuery> {
        let status = match self.text("status").as_deref() {
            None => None,
            Some("pending") => Some(DeliveryStatus::Pending),
            Some("delivered") => Some(DeliveryStatus::Delivered),
            Some("dead") => Some(DeliveryStatus::Dead),
            Some(v) => {
                return Err(BadQuery(format!(
                    "`status`: `{v}` is not a status{}: write pending, delivered or dead",
                    crate::suggest::did_you_mean(v, ["pending", "delivered", "dead"])
                )))
            }
        };
        let filter = DeliveryFilter {
            event_id: self.event_id("event_id")?,
            source: self.text("source"),
            event: self.text("event"),
            delivery_id: self.text("delivery_id"),
            route: self.text("route"),
            sink: self.text("sink"),
            status,
            since_ms: self.time("since", now)?,
            until_ms: self.time("until", now)?,
        };
        ordered(filter.since_ms, filter.until_ms)?;
        Ok(filter)
    }
}

/// The parameters of an event search.
pub const EVENT_PARAMS: &[&str] = &[
    "source",
    "event",
    "delivery_id",
    "since",
    "until",
    "before",
    "limit",
];
/// The parameters of a delivery search.
pub const DELIVERY_PARAMS: &[&str] = &[
    "event_id",
    "source",
    "event",
    "delivery_id",
    "route",
    "sink",
    "status",
    "since",
    "until",
    "before",
    "limit",
];
/// The parameters selecting dead letters (a search or a replay).
pub const DEAD_PARAMS: &[&str] = &[
    "event_id",
    "source",
    "event",
    "delivery_id",
    "route",
    "sink",
    "since",
    "until",
    "before",
    "limit",
];
/// A replay by filter: the dead letters' filter, and a dry run.
pub const REPLAY_PARAMS: &[&str] = &[
    "event_id",
    "source",
    "event",
    "delivery_id",
    "route",
    "sink",
    "since",
    "until",
    "dry_run",
];
/// A re-route: the events' filter, and a dry run.
pub const REROUTE_PARAMS: &[&str] = &[
    "source",
    "event",
    "delivery_id",
    "since",
    "until",
    "dry_run",
];

fn ordered(since: Option<u64>, until: Option<u64>) -> Result<(), BadQuery> {
    match (since, until) {
        (Some(s), Some(u)) if s >= u => Err(BadQuery(
            "`since` is not before `until`: the range holds nothing; swap them".into(),
        )),
        _ => Ok(()),
    }
}

/// `v` as ms since the epoch: an RFC 3339 time, a time of day (`09:00`,
/// today in UTC), or a duration before `now`.
pub fn parse_time(v: &str, now: SystemTime) -> Option<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Some(unix_millis(t));
    }
    if let Some((h, m)) = v.split_once(':') {
        let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 23 || m > 59 || v.len() != 5 {
            return None;
        }
        let midnight = unix_millis(now) / 86_400_000 * 86_400_000;
        return Some(midnight + (h * 60 + m) * 60_000);
    }
    let ago: Duration = humantime::parse_duration(v).ok()?;
    Some(unix_millis(now.checked_sub(ago)?))
}

/// Milliseconds since the epoch as RFC 3339, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str, known: &[&str]) -> Result<Query, BadQuery> {
        Query::parse(Some(raw), known)
    }

    #[test]
    fn an_unknown_or_repeated_parameter_is_refused_with_what_to_write() {
        let e = q("sinks=slack", DELIVERY_PARAMS).err().unwrap();
        assert!(
            e.0.starts_with("unknown parameter `sinks`: did you mean `sink`?"),
            "{e}"
        );
        let e = q("sink=a&sink=b", DELIVERY_PARAMS).err().unwrap();
        assert_eq!(e.0, "`sink` is given twice: give it once");
    }

    #[test]
    fn times_are_rfc3339_or_how_long_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z", now), Some(1_000));
        assert_eq!(parse_time("2h", now), Some(10_000_000 - 7_200_000));
        assert_eq!(parse_time("yesterday", now), None);
        // 10,000 s is 02:46:40 on the first day.
        assert_eq!(parse_time("01:30", now), Some(5_400_000));
        assert_eq!(parse_time("00:00", now), Some(0));
        for bad in ["24:00", "9:00", "09:60", "09:00:00x", "ab:cd"] {
            assert_eq!(parse_time(bad, now), None, "{bad}");
        }
        let e = q("since=yesterday", EVENT_PARAMS)
            .unwrap()
            .event_filter(now)
            .unwrap_err();
        assert!(e.0.contains("`yesterday` is not a time"), "{e}");
        let e = q("since=1m&until=2h", EVENT_PARAMS)
            .unwrap()
            .event_filter(now)
            .unwrap_err();
        assert!(e.0.contains("swap them"), "{e}");
    }

    #[test]
    fn a_page_is_bounded_and_statuses_are_named() {
        let now = SystemTime::now();
        assert_eq!(
            q("", EVENT_PARAMS).unwrap().page().unwrap(),
            Page {
                before: None,
                limit: LIMIT_DEFAULT
            }
        );
        let e = q("limit=0", EVENT_PARAMS).unwrap().page().unwrap_err();
        assert!(e.0.contains("1 to 500"), "{e}");
        let e = q("limit=x", EVENT_PARAMS).unwrap().page().unwrap_err();
        assert!(e.0.contains("`x` is not a number"), "{e}");
        let f = q("status=dead&sink=slack&event_id=7", DELIVERY_PARAMS)
            .unwrap()
            .delivery_filter(now)
            .unwrap();
        assert_eq!(f.status, Some(DeliveryStatus::Dead));
        assert_eq!((f.sink.as_deref(), f.event_id), (Some("slack"), Some(7)));
        let e = q("status=daed", DELIVERY_PARAMS)
            .unwrap()
            .delivery_filter(now)
            .unwrap_err();
        assert!(e.0.contains("did you mean `dead`?"), "{e}");
    }
}

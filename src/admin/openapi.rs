//! The admin API described as OpenAPI 3.0, served at `/api/openapi.json`.
//! `tests/it/admin.rs` checks that every path here answers and that every
//! answer the API gives is one described here; schemathesis checks the
//! schemas against the running daemon in CI.

use serde_json::{json, Value};

use super::query::LIMIT_MAX;

fn param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn text(name: &str, description: &str) -> Value {
    param(name, description, json!({ "type": "string" }))
}

fn time(name: &str, description: &str) -> Value {
    param(
        name,
        &format!(
            "{description}: an RFC 3339 time (2026-11-28T09:00:00Z), a time of day today in UTC (09:00), or how long ago (2h, 30m, 7d)"
        ),
        json!({ "type": "string", "pattern": "^([0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.]+(Z|[+-][0-9:]+)?|([0-9]+ ?[a-z]+ ?)+)$" }),
    )
}

fn number(name: &str, description: &str) -> Value {
    param(
        name,
        description,
        json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 9007199254740991i64 }),
    )
}

fn page() -> Vec<Value> {
    vec![
        number(
            "before",
            "Only ids below this: the `next_before` of the page before",
        ),
        param(
            "limit",
            "Items a page (default 50)",
            json!({ "type": "integer", "minimum": 1, "maximum": LIMIT_MAX }),
        ),
    ]
}

fn event_filter() -> Vec<Value> {
    vec![
        text("source", "The source's name in routes.toml"),
        text(
            "event",
            "The provider's event type (push, Merge Request Hook, …)",
        ),
        text(
            "delivery_id",
            "The provider's id for the delivery (X-GitHub-Delivery, …)",
        ),
        time("since", "Received at or after"),
        time("until", "Received before"),
    ]
}

fn delivery_filter(with_status: bool) -> Vec<Value> {
    let mut p = vec![
        json!({ "name": "event_id", "in": "query", "required": false,
                "description": "The event's id: its number, or the `evt_` form the 202 answer gave",
                "schema": { "oneOf": [
                    { "type": "integer", "format": "int64", "minimum": 0, "maximum": 9007199254740991i64 },
                    { "type": "string", "pattern": "^evt_[0-9a-fA-F]{1,16}$" }
                ] } }),
        text("source", "The source's name"),
        text("event", "The event type"),
        text("delivery_id", "The provider's id for the delivery"),
        text("route", "The route's name"),
        text("sink", "The sink's name"),
    ];
    if with_status {
        p.push(param(
            "status",
            "Where it stands",
            json!({ "type": "string", "enum": ["pending", "delivered", "dead"] }),
        ));
    }
    p.push(time(
        "since",
        "Reached its status at or after (pending: made; delivered: the last attempt; dead: buried)",
    ));
    p.push(time("until", "Reached its status before"));
    p
}

fn dry_run() -> Value {
    param(
        "dry_run",
        "Change nothing; count what would change",
        json!({ "type": "boolean" }),
    )
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn errors(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let what = match *code {
            "400" => "The request cannot be answered as asked: `error` says what to change",
            "401" => "No token, or a wrong one",
            "403" => "A change sent without the token or the CSRF header, or by another site",
            "404" => "Nothing with that id",
            "409" => "Refused: `error` says why",
            "421" => "The Host is not this listener's",
            _ => "Storage cannot answer now",
        };
        out.insert(
            (*code).to_owned(),
            json!({ "description": what, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(out)
}

fn answers(success: Value, codes: &[&str]) -> Value {
    let mut r = errors(codes);
    r.as_object_mut()
        .expect("an object")
        .insert("200".into(), success);
    r
}

const READ: &[&str] = &["400", "401", "421", "503"];
const CHANGE: &[&str] = &["400", "401", "403", "421", "503"];

/// The document.
/// The schema of one sink's health (`GET /api/sinks`).
fn sink_health() -> Value {
    let string = json!({ "type": "string" });
    let int = json!({ "type": "integer", "format": "int64", "minimum": 0 });
    json!({
        "type": "object",
        "required": ["name", "kind", "enabled", "breaker", "concurrency", "in_flight",
                     "delivered_5m", "failed_5m", "recent_failures", "dead"],
        "properties": {
            "name": string, "kind": string, "enabled": { "type": "boolean" },
            "disabled_reason": string,
            "breaker": { "type": "string", "enum": ["closed", "open", "probing"] },
            "breaker_retry_in_s": int, "paused_until": string,
            "rate_limit": { "type": "number" }, "concurrency": int, "in_flight": int,
            "delivered_5m": int, "failed_5m": int,
            "recent_failures": { "type": "array", "items": {
                "type": "object", "required": ["at", "delivery", "event_id", "outcome"],
                "properties": { "at": string, "delivery": int, "event_id": int,
                                "status": { "type": "integer" }, "outcome": string } } },
            "oldest_due_s": int, "dead": int
        }
    })
}

pub fn document() -> Value {
    let string = json!({ "type": "string" });
    let opt_string = json!({ "type": "string", "nullable": true });
    let int = json!({ "type": "integer", "format": "int64", "minimum": 0 });
    let id_path = |what: &str| {
        json!([{ "name": "id", "in": "path", "required": true, "description": what,
                 "schema": { "type": "integer", "format": "int64", "minimum": 0, "maximum": 9007199254740991i64 } }])
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hookgate admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Served by the admin listener (server.admin_listen). Every request but /healthz and /readyz needs `Authorization: Bearer <server.admin_token>` when a token is set; a change (POST) needs the token or the `X-Hookgate-CSRF: 1` header. The console's session cookie also opens the API; a change made with it needs the session's CSRF token in `X-Hookgate-CSRF`. Searches answer newest first, a page at a time: pass `next_before` back as `before`."
        },
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": string } },
                "Event": {
                    "type": "object",
                    "required": ["id", "received_at", "source", "provider", "event", "delivery_id"],
                    "properties": {
                        "id": int, "received_at": string, "source": string, "provider": string,
                        "event": string, "delivery_id": string
                    }
                },
                "EventPage": {
                    "type": "object", "required": ["items"],
                    "properties": {
                        "items": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
                        "next_before": int
                    }
                },
                "EventDetail": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Event" },
                        {
                            "type": "object",
                            "required": ["client_ip", "headers", "body_bytes", "deliveries"],
                            "properties": {
                                "client_ip": string,
                                "headers": { "type": "array", "items": { "type": "array", "items": string, "minItems": 2, "maxItems": 2 } },
                                "body_bytes": int,
                                "payload": {},
                                "body_text": string,
                                "body_base64": string,
                                "deliveries": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } }
                            }
                        }
                    ]
                },
                "Attempt": {
                    "type": "object", "required": ["at", "latency_ms", "outcome", "response"],
                    "properties": {
                        "at": string, "status": { "type": "integer" }, "latency_ms": int,
                        "outcome": string, "response": string
                    }
                },
                "Delivery": {
                    "type": "object",
                    "required": ["id", "status", "event_id", "source", "event", "delivery_id", "route", "sink",
                                 "idempotency_key", "created_at", "failures", "attempts"],
                    "properties": {
                        "id": int, "status": { "type": "string", "enum": ["pending", "delivered", "dead"] },
                        "event_id": int, "source": string, "event": string, "delivery_id": string,
                        "route": string, "sink": string, "item": int, "idempotency_key": string,
                        "created_at": string, "due_at": string, "delivered_at": string, "dead_at": string,
                        "failures": int, "reason": string,
                        "held": { "type": "string", "description": "Pending, and nothing is sent to its sink now: why (disabled until its secret is set, paused at the platform's request, or its breaker open), as this instance sees the sink." },
                        "attempts": { "type": "array", "items": { "$ref": "#/components/schemas/Attempt" } }
                    }
                },
                "DeliveryPage": {
                    "type": "object", "required": ["items"],
                    "properties": {
                        "items": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } },
                        "next_before": int
                    }
                },
                "Refused": {
                    "type": "object", "required": ["id", "sink", "reason"],
                    "properties": { "id": int, "sink": string, "reason": string }
                },
                "Replayed": {
                    "type": "object", "required": ["replayed"],
                    "properties": {
                        "dry_run": { "type": "boolean" }, "replayed": int,
                        "refused": { "type": "array", "items": { "$ref": "#/components/schemas/Refused" } }
                    }
                },
                "Rerouted": {
                    "type": "object", "required": ["dry_run", "events", "created", "existing", "failed"],
                    "properties": {
                        "dry_run": { "type": "boolean" }, "events": int, "created": int, "existing": int,
                        "failed": int, "first_failure": string
                    }
                },
                "Stats": { "type": "object", "additionalProperties": true },
                "SinkHealth": sink_health(),
                "DeadDetail": {
                    "type": "object", "required": ["id", "sink", "reason", "history"],
                    "properties": {
                        "id": int, "source": string, "event": string, "delivery_id": string, "route": string,
                        "sink": string, "attempts": int, "last_status": { "type": "integer", "nullable": true },
                        "reason": string, "dead_at": string, "idempotency_key": string, "body_bytes": int,
                        "history": { "type": "array", "items": { "type": "object" } },
                        "refused": opt_string
                    }
                }
            }
        },
        "security": [{ "token": [] }],
        "paths": {
            "/healthz": { "get": { "summary": "Alive", "security": [],
                "responses": { "200": { "description": "ok", "content": { "text/plain": { "schema": string } } } } } },
            "/readyz": { "get": { "summary": "Ready to accept webhooks", "security": [],
                "responses": {
                    "200": { "description": "ready", "content": { "text/plain": { "schema": string } } },
                    "503": { "description": "storage not writable", "content": { "text/plain": { "schema": string } } }
                } } },
            "/metrics": { "get": { "summary": "Prometheus metrics",
                "responses": { "200": { "description": "text exposition format", "content": { "text/plain": { "schema": string } } },
                               "401": errors(&["401"])["401"], "503": errors(&["503"])["503"] } } },
            "/api/openapi.json": { "get": { "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3.0", "content": { "application/json": { "schema": { "type": "object" } } } } } } },
            "/api/queue/stats": { "get": { "summary": "Counts by state",
                "responses": answers(ok("The queue's counts", "Stats"), READ) } },
            "/api/sinks": { "get": { "summary": "Each sink's health: enabled or why not, breaker, pause, recent attempts on this instance, dead letters",
                "responses": answers(json!({ "description": "The sinks, by name",
                    "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/SinkHealth" } } } } }), READ) } },
            "/api/events": { "get": { "summary": "Search events",
                "parameters": event_filter().into_iter().chain(page()).collect::<Vec<_>>(),
                "responses": answers(ok("A page of events, newest first", "EventPage"), READ) } },
            "/api/events/{id}": { "get": { "summary": "An event: headers, payload, deliveries and their attempts",
                "parameters": [{ "name": "id", "in": "path", "required": true,
                    "description": "The event's id: its number, or the `evt_` form the 202 answer gave",
                    "schema": { "oneOf": [
                        { "type": "integer", "format": "int64", "minimum": 0, "maximum": 9007199254740991i64 },
                        { "type": "string", "pattern": "^evt_[0-9a-fA-F]{1,16}$" }
                    ] } }],
                "responses": answers(ok("The event", "EventDetail"), &["400", "401", "404", "421", "503"]) } },
            "/api/deliveries": { "get": { "summary": "Search deliveries (pending, delivered, dead)",
                "parameters": delivery_filter(true).into_iter().chain(page()).collect::<Vec<_>>(),
                "responses": answers(ok("A page of deliveries, newest first", "DeliveryPage"), READ) } },
            "/api/dead": { "get": { "summary": "Search dead letters",
                "parameters": delivery_filter(false).into_iter().chain(page()).collect::<Vec<_>>(),
                "responses": answers(ok("A page of dead letters, newest first", "DeliveryPage"), READ) } },
            "/api/dead/{id}": { "get": { "summary": "A dead letter with its attempt history",
                "parameters": id_path("The delivery's id"),
                "responses": answers(ok("The dead letter", "DeadDetail"), &["400", "401", "404", "421", "503"]) } },
            "/api/dead/{id}/replay": { "post": { "summary": "Replay one dead letter",
                "parameters": id_path("The delivery's id"),
                "responses": answers(ok("Replayed", "Replayed"), &["400", "401", "403", "404", "409", "421", "503"]) } },
            "/api/dead/replay": { "post": { "summary": "Replay the dead letters a filter selects (all, without one)",
                "parameters": delivery_filter(false).into_iter().chain([dry_run()]).collect::<Vec<_>>(),
                "responses": answers(ok("What was (or would be) replayed", "Replayed"), CHANGE) } },
            "/api/reroute": { "post": { "summary": "Route events still kept through the routes in force, making only deliveries that do not exist yet",
                "parameters": event_filter().into_iter().chain([dry_run()]).collect::<Vec<_>>(),
                "responses": answers(ok("What was (or would be) made", "Rerouted"), CHANGE) } }
        }
    })
}

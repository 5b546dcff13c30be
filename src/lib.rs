//! hookgate: a webhook gateway. Providers post to `ingress`, which proves
//! each request (`verify`), stores it durably (`queue`), and answers; the
//! daemon (`daemon`) ties them to the listeners and shutdown; `cli` is the
//! `hookgate` command line.

pub mod activation;
pub mod admin;
pub mod bucket;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dispatch;
pub mod dryrun;
pub mod ingress;
pub mod json;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod reroute;
pub mod route;
pub mod router;
pub mod routetest;
pub mod samples;
pub mod secret;
pub mod send;
pub mod sink;
pub mod suggest;
pub mod verify;

//! Integration tests: the real server (in-process, and the real binary) on
//! loopback, one test binary.

mod admin;
mod cli;
mod cluster;
mod console;
mod crash;
mod delivery;
mod failover;
mod faults;
mod ingress;
mod lookup;
mod sinks;
mod storage;
mod support;

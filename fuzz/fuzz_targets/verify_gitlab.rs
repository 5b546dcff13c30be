//! `gitlab`: verify and envelope over any request, and a request signed as
//! the provider signs always verifies (see `common::exercise`).

#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::exercise("gitlab", data));

//! `X-Forwarded-For` parsing (`ingress::client_ip`). The first byte picks
//! the peer and the trusted proxies; the rest is header lines, one
//! `X-Forwarded-For` value each. The answer must be the peer, or an
//! address that appears in the header, and an untrusted peer is always
//! the answer.

#![no_main]

use std::net::IpAddr;

use hookgate::ingress::client_ip::client_ip;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let peers: [IpAddr; 4] = [
        "127.0.0.1".parse().unwrap(),
        "10.1.2.3".parse().unwrap(),
        "::ffff:10.1.2.3".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    let trusted: [&[&str]; 4] = [
        &[],
        &["127.0.0.0/8", "10.0.0.0/8"],
        &["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"],
        &["0.0.0.0/0", "::/0"],
    ];
    let peer = peers[usize::from(pick & 3)];
    let trusted: Vec<IpNet> = trusted[usize::from((pick >> 2) & 3)]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", v);
        }
    }
    let client = client_ip(peer, &headers, &trusted);
    let peer = peer.to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        assert_eq!(client, peer, "an untrusted peer's header was believed");
        return;
    }
    // Whatever else was chosen was written in the header, as an address
    // or as address:port.
    let written = rest
        .split(|b| *b == b'\n' || *b == b',')
        .filter_map(|hop| std::str::from_utf8(hop.trim_ascii()).ok())
        .filter_map(|hop| {
            hop.parse::<IpAddr>()
                .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|s| s.ip()))
                .ok()
        })
        .any(|ip| ip.to_canonical() == client);
    assert!(
        client == peer || written,
        "{client} is neither the peer nor in the header"
    );
});

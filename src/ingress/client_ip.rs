//! Who is asking: the socket peer, or — only when that peer is a trusted
//! proxy — the rightmost untrusted hop of `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The client address a request is judged by. IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.1`) become plain IPv4, so IPv4 allowlists match them.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !in_any(peer, trusted) {
        // Anyone can write X-Forwarded-For; only our proxies are believed.
        return peer;
    }
    // Split the raw bytes: a client can put non-ASCII bytes into its own
    // part of the header, and the proxy appends the real hop to that same
    // line; only the unreadable hop may be lost, not the line.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|h| !h.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                client = ip;
                if !in_any(ip, trusted) {
                    return ip;
                }
            }
            // A hop we cannot read: stop at the last proxy we trust, which
            // an allowlist of provider ranges will not contain (fail closed).
            None => return client,
        }
    }
    client
}

/// Whether `ip` lies in one of `nets`.
pub fn in_any(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|n| n.contains(&ip))
}

fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?;
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let ip = client_ip(
            "203.0.113.9".parse().unwrap(),
            &xff("192.30.252.1"),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        // A client-written first entry is ignored: the rightmost untrusted hop wins.
        let ip = client_ip(
            "127.0.0.1".parse().unwrap(),
            &xff("6.6.6.6, 192.30.252.7, 10.1.2.3"),
            &trusted,
        );
        assert_eq!(ip, "192.30.252.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn several_headers_are_one_list() {
        let mut h = xff("192.30.252.7");
        h.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        let ip = client_ip(
            "127.0.0.1".parse().unwrap(),
            &h,
            &nets(&["127.0.0.0/8", "10.0.0.0/8"]),
        );
        assert_eq!(ip, "192.30.252.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_hop_fails_closed() {
        let trusted = nets(&["127.0.0.1/32"]);
        let ip = client_ip(
            "127.0.0.1".parse().unwrap(),
            &xff("192.30.252.7, not-an-ip"),
            &trusted,
        );
        assert_eq!(ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn mapped_ipv6_peer_matches_ipv4_ranges() {
        let peer: IpAddr = "::ffff:192.30.252.9".parse().unwrap();
        let ip = client_ip(peer, &HeaderMap::new(), &[]);
        assert_eq!(ip, "192.30.252.9".parse::<IpAddr>().unwrap());
        assert!(in_any(ip, &nets(&["192.30.252.0/22"])));
        assert!(in_any(
            "2001:db8::5".parse().unwrap(),
            &nets(&["2001:db8::/32"])
        ));
    }

    #[test]
    fn hop_with_port_is_read() {
        let ip = client_ip(
            "127.0.0.1".parse().unwrap(),
            &xff("[2001:db8::1]:443"),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    /// nginx appends the real hop to the client's own line: a non-ASCII
    /// byte the client wrote must not cost the hop after it.
    #[test]
    fn a_non_ascii_hop_costs_only_itself() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.1.1.1\x80, 6.6.6.6").unwrap(),
        );
        let ip = client_ip("127.0.0.1".parse().unwrap(), &h, &nets(&["127.0.0.1/32"]));
        assert_eq!(ip, "6.6.6.6".parse::<IpAddr>().unwrap());
    }
}

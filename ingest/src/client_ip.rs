//! Which address a request really came from, and whether it may post Toss webhooks.
//!
//! `X-Forwarded-For` is read only from our own proxies: a hop counts as a proxy when its
//! address is in `TRUSTED_PROXIES`, and at most `TRUSTED_PROXY_HOPS` hops are skipped, from
//! the right. The client is the first address, walking left from the peer, that is not one of
//! our proxies (or the one reached after the allowed hops). Entries further left were written
//! by whoever sent the request and prove nothing, so a spoofed header cannot pass, a request
//! straight to ingest (not through a proxy) is judged by its own address, and a request that
//! came through more proxies than configured is judged by the extra proxy, which is not listed.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client address, or `None` when a trusted proxy sent no (or a garbled) header entry.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted_hops: usize,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let mut hops: Vec<&str> =
        forwarded_for.into_iter().flat_map(|value| value.split(',')).map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut current = peer;
    for _ in 0..trusted_hops {
        if !is_allowed(current, trusted_proxies) {
            return Some(current);
        }
        current = parse_hop(hops.pop()?)?;
    }
    Some(current)
}

/// Accepts `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())
}

/// True when `ip` is inside one of `allowed` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn is_allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn without_trusted_hops_the_peer_is_the_client_and_headers_are_ignored() {
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147"], 0, &proxies()), Some(ip("10.0.0.1")));
    }

    #[test]
    fn one_trusted_proxy_means_the_last_entry() {
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147"], 1, &proxies()), Some(ip("13.124.18.147")));
        // A spoofed first entry does not help.
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147, 6.6.6.6"], 1, &proxies()), Some(ip("6.6.6.6")));
        // Several header lines count as one list.
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147", "6.6.6.6"], 1, &proxies()), Some(ip("6.6.6.6")));
    }

    #[test]
    fn a_peer_that_is_not_our_proxy_is_the_client_whatever_it_claims() {
        assert_eq!(client_ip(ip("6.6.6.6"), ["13.124.18.147"], 1, &proxies()), Some(ip("6.6.6.6")));
    }

    #[test]
    fn two_hops_walk_through_trusted_proxies_only() {
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147, 10.0.0.2"], 2, &proxies()), Some(ip("13.124.18.147")));
        // The second hop is not ours: it is the client.
        assert_eq!(client_ip(ip("10.0.0.1"), ["13.124.18.147, 6.6.6.6"], 2, &proxies()), Some(ip("6.6.6.6")));
    }

    #[test]
    fn a_trusted_proxy_without_an_entry_or_with_garbage_gives_no_client() {
        assert_eq!(client_ip(ip("10.0.0.1"), [], 1, &proxies()), None);
        assert_eq!(client_ip(ip("10.0.0.1"), ["unknown"], 1, &proxies()), None);
    }

    #[test]
    fn ports_and_brackets_are_understood() {
        assert_eq!(client_ip(ip("10.0.0.1"), ["1.2.3.4:5678"], 1, &proxies()), Some(ip("1.2.3.4")));
        assert_eq!(client_ip(ip("10.0.0.1"), ["[2001:db8::1]:443"], 1, &proxies()), Some(ip("2001:db8::1")));
    }

    #[test]
    fn allow_list_matches_networks_and_mapped_addresses() {
        let allowed: Vec<IpNet> = vec!["13.124.18.147/32".parse().unwrap(), "10.1.0.0/16".parse().unwrap()];
        assert!(is_allowed(ip("13.124.18.147"), &allowed));
        assert!(is_allowed(ip("::ffff:13.124.18.147"), &allowed));
        assert!(is_allowed(ip("10.1.200.3"), &allowed));
        assert!(!is_allowed(ip("13.124.18.148"), &allowed));
        assert!(!is_allowed(ip("::1"), &allowed));
    }
}

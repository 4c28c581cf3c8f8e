//! Behind a reverse proxy: which address a request really comes from. Only when the
//! connection comes from a trusted proxy (`trusted_proxies`, CIDR blocks) is
//! `X-Forwarded-For` believed, and then only up to the first address that is not itself a
//! trusted proxy, read from the right: a client can write anything into the header, but
//! each trusted proxy appends the address it saw.
use std::net::IpAddr;

use axum::http::HeaderMap;
use recall_core::error::Error;

/// One CIDR block (`10.0.0.0/8`, `::1/128`; a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`.
    pub fn parse(s: &str) -> recall_core::Result<Self> {
        let bad = || Error::invalid(format!("trusted_proxies: {s:?} is not a CIDR block"));
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }

    /// Whether `ip` lies in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses the `trusted_proxies` setting.
    pub fn parse(blocks: &[String]) -> recall_core::Result<Self> {
        blocks
            .iter()
            .map(|b| Cidr::parse(b))
            .collect::<recall_core::Result<_>>()
            .map(Self)
    }

    /// Whether no proxy is trusted (the header is never read).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: `peer` itself unless it is a trusted proxy; then the right-most
    /// address of `X-Forwarded-For` that is not a trusted proxy (the left-most when all
    /// are). A malformed header is not believed.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            for part in text.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => return peer,
                }
            }
        }
        let mut client = peer;
        for ip in hops.into_iter().rev() {
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped");
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0/8", "::1/129", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let h = headers(&["203.0.113.7, 10.0.0.5"]);
        // From the proxy: the right-most untrusted hop.
        assert_eq!(t.client(ip("10.0.0.2"), &h), ip("203.0.113.7"));
        // Straight from a client: the header is whatever they wrote; not believed.
        assert_eq!(t.client(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // A client cannot hide behind a forged left-most entry.
        let forged = headers(&["1.2.3.4", "203.0.113.7"]);
        assert_eq!(t.client(ip("10.0.0.2"), &forged), ip("203.0.113.7"));
        // No header, or a broken one: the proxy's own address.
        assert_eq!(t.client(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        assert_eq!(
            t.client(ip("10.0.0.2"), &headers(&["junk, 1.2.3.4"])),
            ip("10.0.0.2")
        );
        // Nothing trusted: never read.
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.2"), &h), ip("10.0.0.2"));
    }
}

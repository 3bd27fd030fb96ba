//! Which addresses porch may connect to. Every outbound connection (other
//! servers' APIs, their keys, `.well-known`, SRV targets, notaries) is
//! checked here after name resolution and on every redirect, so a caller
//! who names a server (a federation peer, a link redeemer, a key-notary
//! caller) cannot make porch reach its own network. The defaults are the
//! ranges Synapse's `ip_range_blacklist` denies; labs and tests allow
//! loopback with `outbound.ip_range_allowlist`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// The ranges denied unless the configuration says otherwise.
pub const DEFAULT_DENYLIST: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// An address range in CIDR notation (`10.0.0.0/8`, `fc00::/7`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| format!("`{text}` is not an address range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has a prefix length outside 0-{max}"))?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_matches(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_matches(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = (usize::from(prefix / 8), prefix % 8);
    if net[..bytes] != ip[..bytes] {
        return false;
    }
    bits == 0 || {
        let mask = 0xFFu8 << (8 - bits);
        net[bytes] & mask == ip[bytes] & mask
    }
}

/// An IPv4 address carried inside an IPv6 one (compatible, NAT64,
/// translated, Teredo or 6to4; mapped ones are made IPv4 before), which
/// reaches the same host as the IPv4 address.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    let segments = ip.segments();
    if segments[..6] == [0; 6] && !(segments[6] == 0 && segments[7] <= 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // NAT64 (well-known and local-use prefixes) and IPv4-translated.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || segments[..3] == [0x64, 0xff9b, 1]
        || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
    {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // Teredo: the client's IPv4 address, inverted.
    if segments[..2] == [0x2001, 0] {
        return Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

#[derive(Clone, Debug)]
pub struct AddressGuard {
    deny: Vec<IpRange>,
    allow: Vec<IpRange>,
}

impl AddressGuard {
    pub fn new(deny: &[String], allow: &[String]) -> Result<Self, String> {
        let parse = |list: &[String]| list.iter().map(|r| r.parse()).collect::<Result<Vec<IpRange>, String>>();
        Ok(Self { deny: parse(deny)?, allow: parse(allow)? })
    }

    /// Whether porch may connect to `ip`: allowed if an allowlist range
    /// holds it, else refused if a denylist range holds it or the IPv4
    /// address it carries.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let forms: Vec<IpAddr> = match ip {
            IpAddr::V6(v6) => std::iter::once(ip).chain(embedded_ipv4(v6).map(IpAddr::V4)).collect(),
            v4 => vec![v4],
        };
        if forms.iter().any(|ip| self.allow.iter().any(|r| r.contains(*ip))) {
            return true;
        }
        !forms.iter().any(|ip| self.deny.iter().any(|r| r.contains(*ip)))
    }

    /// Refuse a URL whose host is an address porch may not reach. Names are
    /// checked when they resolve (see `discovery::Resolver`).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(Refused),
        };
        if self.permits(ip) { Ok(()) } else { Err(Refused) }
    }
}

/// A connection the guard refused.
#[derive(Debug, Clone, Copy)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the address is not one porch may connect to (outbound.ip_range_denylist)")
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_guard(allow: &[&str]) -> AddressGuard {
        let deny: Vec<String> = DEFAULT_DENYLIST.iter().map(|s| s.to_string()).collect();
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        AddressGuard::new(&deny, &allow).unwrap()
    }

    #[test]
    fn private_loopback_and_their_ipv6_forms_are_denied() {
        let guard = default_guard(&[]);
        for denied in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2002:7f00:1::",
        ] {
            assert!(!guard.permits(denied.parse().unwrap()), "{denied} must be denied");
        }
        for allowed in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(guard.permits(allowed.parse().unwrap()), "{allowed} must be allowed");
        }
    }

    #[test]
    fn the_allowlist_wins_over_the_denylist() {
        let guard = default_guard(&["127.0.0.0/8", "::1"]);
        assert!(guard.permits("127.0.0.1".parse().unwrap()));
        assert!(guard.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(guard.permits("::1".parse().unwrap()));
        assert!(!guard.permits("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn urls_with_denied_address_hosts_are_refused() {
        let guard = default_guard(&[]);
        for url in ["https://127.0.0.1:6379/x", "https://[::1]:8448/", "https://[::ffff:7f00:1]/", "http://0x7f000001/"]
        {
            assert!(guard.check_url(&url::Url::parse(url).unwrap()).is_err(), "{url}");
        }
        assert!(guard.check_url(&url::Url::parse("https://example.org:8448/").unwrap()).is_ok());
        assert!(guard.check_url(&url::Url::parse("https://8.8.8.8/").unwrap()).is_ok());
    }

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
        let range: IpRange = "172.16.0.0/12".parse().unwrap();
        assert!(range.contains("172.20.1.1".parse().unwrap()));
        assert!(!range.contains("172.32.0.0".parse().unwrap()));
    }
}

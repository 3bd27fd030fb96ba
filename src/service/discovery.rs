//! Server discovery, as the spec orders it: an IP literal or an explicit
//! port is used as given; otherwise `.well-known/matrix/server` may
//! delegate (the delegated name goes through the same steps, without
//! another `.well-known`); then SRV records (`_matrix-fed._tcp`, then the
//! older `_matrix._tcp`); then port 8448. An SRV target is reached by
//! resolving the server's own name to the target's addresses, so TLS
//! still checks the certificate of the server's name, as the spec asks.
//! Results are cached (an hour; ten minutes when nothing was found).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
};
use ruma::{OwnedServerName, ServerName};

use crate::service::address_guard::{AddressGuard, Refused};

const FOUND_FOR: Duration = Duration::from_secs(3600);
const NOT_FOUND_FOR: Duration = Duration::from_secs(600);
const CACHE_KEPT: usize = 50_000;

/// DNS for federation: the system's resolver, or `federation.dns_servers`,
/// with the SRV targets discovery chose for server names.
pub struct Dns {
    /// `None` when the system's DNS configuration cannot be read: names are
    /// then resolved by the operating system and SRV records are not used.
    resolver: Option<TokioResolver>,
    /// Server name (as a host) → the SRV target host to connect to instead.
    srv_targets: Mutex<HashMap<String, String>>,
    /// Addresses a name resolves to are kept only if the guard permits them.
    guard: Arc<AddressGuard>,
}

impl Dns {
    /// `servers`: `ip:port` of name servers to ask; empty for the system's.
    pub fn new(servers: &[SocketAddr], guard: Arc<AddressGuard>) -> anyhow::Result<Arc<Self>> {
        let builder = if servers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::warn!(
                        "cannot read the system's DNS configuration ({e}): other servers' SRV records will not be \
                         used; set `federation.dns_servers` to use them"
                    );
                    return Ok(Arc::new(Self { resolver: None, srv_targets: Mutex::new(HashMap::new()), guard }));
                }
            }
        } else {
            let name_servers = servers
                .iter()
                .map(|addr| {
                    let connection = |protocol| {
                        let mut connection = ConnectionConfig::new(protocol);
                        connection.port = addr.port();
                        connection
                    };
                    NameServerConfig::new(
                        addr.ip(),
                        true,
                        vec![connection(ProtocolConfig::Udp), connection(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder.build().map_err(|e| anyhow::anyhow!("cannot set up DNS resolution: {e}"))?;
        Ok(Arc::new(Self { resolver: Some(resolver), srv_targets: Mutex::new(HashMap::new()), guard }))
    }

    async fn lookup_ip(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match &self.resolver {
            Some(resolver) => Ok(resolver.lookup_ip(host).await.map_err(|e| e.to_string())?.iter().collect()),
            None => Ok(tokio::net::lookup_host((host, 0)).await.map_err(|e| e.to_string())?.map(|a| a.ip()).collect()),
        }
    }

    /// The best SRV target (lowest priority, then highest weight) of `name`.
    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let lookup = self.resolver.as_ref()?.srv_lookup(name).await.ok()?;
        lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .min_by_key(|srv| (srv.priority, u16::MAX - srv.weight))
            .map(|srv| (srv.target.to_utf8().trim_end_matches('.').to_owned(), srv.port))
    }
}

/// Resolution for an HTTP client through [`Dns`]; with `follow_srv`, a
/// name discovery sent to an SRV target resolves to that target's
/// addresses (the federation client, not the `.well-known` one).
pub struct Resolver {
    pub dns: Arc<Dns>,
    pub follow_srv: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (dns, follow_srv) = (self.dns.clone(), self.follow_srv);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let target = if follow_srv {
                dns.srv_targets.lock().expect("srv targets poisoned").get(&host).cloned()
            } else {
                None
            };
            let ips = dns.lookup_ip(target.as_deref().unwrap_or(&host)).await?;
            let found = ips.len();
            let ips: Vec<IpAddr> = ips.into_iter().filter(|ip| dns.guard.permits(*ip)).collect();
            if ips.is_empty() {
                return Err(if found == 0 { "the name has no address".into() } else { Box::new(Refused) as _ });
            }
            // The URL's port replaces this one.
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Where discovery sends a server's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `https://host:port`, the host being the name the certificate must match.
    pub base_url: String,
}

pub struct Discovery {
    dns: Arc<Dns>,
    /// For `.well-known`: plain name resolution, never an SRV target.
    well_known: reqwest::Client,
    guard: Arc<AddressGuard>,
    cache: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
}

/// The most a `.well-known/matrix/server` answer may take.
const MAX_WELL_KNOWN_BYTES: usize = 64 * 1024;

impl Discovery {
    pub fn new(dns: Arc<Dns>, well_known: reqwest::Client, guard: Arc<AddressGuard>) -> Self {
        Self { dns, well_known, guard, cache: Mutex::new(HashMap::new()) }
    }

    pub async fn destination(&self, server: &ServerName) -> Destination {
        if let Some((hit, until)) = self.cache.lock().expect("discovery cache poisoned").get(server).cloned()
            && until > Instant::now()
        {
            return hit;
        }
        let (destination, found) = self.discover(server).await;
        let keep = if found { FOUND_FOR } else { NOT_FOUND_FOR };
        tracing::debug!(%server, base_url = %destination.base_url, "discovered a server");
        let mut cache = self.cache.lock().expect("discovery cache poisoned");
        // Names come from other servers and from the key notary's callers:
        // the cache stays bounded.
        if cache.len() >= CACHE_KEPT {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_KEPT {
                cache.clear();
            }
        }
        cache.insert(server.to_owned(), (destination.clone(), Instant::now() + keep));
        destination
    }

    /// The destination, and whether delegation or SRV named it (rather than
    /// the 8448 fallback).
    async fn discover(&self, server: &ServerName) -> (Destination, bool) {
        if server.port().is_some() || server.is_ip_literal() {
            return (self.direct(server), true);
        }
        if let Some(delegated) = self.well_known(server).await {
            if delegated.port().is_some() || delegated.is_ip_literal() {
                return (self.direct(&delegated), true);
            }
            return self.by_srv(delegated.host()).await;
        }
        self.by_srv(server.host()).await
    }

    fn direct(&self, server: &ServerName) -> Destination {
        let base_url = match server.port() {
            Some(_) => format!("https://{server}"),
            None => format!("https://{server}:8448"),
        };
        Destination { base_url }
    }

    async fn by_srv(&self, host: &str) -> (Destination, bool) {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Some((target, port)) = self.dns.srv(&format!("{service}.{host}.")).await {
                let mut targets = self.dns.srv_targets.lock().expect("srv targets poisoned");
                if targets.len() >= CACHE_KEPT {
                    targets.clear();
                }
                targets.insert(host.to_owned(), target);
                return (Destination { base_url: format!("https://{host}:{port}") }, true);
            }
        }
        self.dns.srv_targets.lock().expect("srv targets poisoned").remove(host);
        (Destination { base_url: format!("https://{host}:8448") }, false)
    }

    async fn well_known(&self, server: &ServerName) -> Option<OwnedServerName> {
        let url = url::Url::parse(&format!("https://{server}/.well-known/matrix/server")).ok()?;
        self.guard.check_url(&url).ok()?;
        let response = self.well_known.get(url).timeout(Duration::from_secs(10)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = crate::service::federation::read_bounded(response, MAX_WELL_KNOWN_BYTES).await.ok()?;
        let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok()?;
        OwnedServerName::try_from(body["m.server"].as_str()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_ports_and_ip_literals_are_used_as_given() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let guard = Arc::new(AddressGuard::new(&[], &[]).unwrap());
        let dns = Dns::new(&["127.0.0.1:9".parse().unwrap()], guard.clone()).unwrap();
        let discovery = Discovery::new(dns, reqwest::Client::new(), guard);
        for (server, url) in [
            ("example.org:1234", "https://example.org:1234"),
            ("1.2.3.4", "https://1.2.3.4:8448"),
            ("1.2.3.4:99", "https://1.2.3.4:99"),
            ("[::1]", "https://[::1]:8448"),
        ] {
            let server = OwnedServerName::try_from(server).unwrap();
            assert_eq!(discovery.destination(&server).await.base_url, url, "{server}");
        }
    }
}

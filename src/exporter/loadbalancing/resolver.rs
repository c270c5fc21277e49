//! Where a loadbalancing exporter's backends come from: a fixed list, or the addresses of
//! a DNS name looked up every `interval`. Behind [`Resolve`] so tests drive the changes.

use std::future::Future;
use std::time::Duration;

use crate::config::{DnsResolverConfig, ResolverConfig};

/// Why one resolution gave no backends; the last good membership stays.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve.
    #[error("looking up {name} failed: {source}")]
    Lookup {
        /// `hostname:port`.
        name: String,
        /// What the system resolver said.
        source: std::io::Error,
    },
    /// The name resolved to no address.
    #[error("{name} resolved to no address")]
    Empty {
        /// `hostname:port`.
        name: String,
    },
}

/// A source of backend URLs (`http://host:port`, `https://host:port`).
pub trait Resolve: Send + Sync + 'static {
    /// The backends now, in any order and possibly repeated.
    fn resolve(&self) -> impl Future<Output = Result<Vec<String>, ResolveError>> + Send;

    /// How long until the next resolution; `None`: the answer never changes.
    fn interval(&self) -> Option<Duration>;

    /// The answer when it is known without waiting (a static list), so the backends are
    /// there before the first batch.
    fn fixed(&self) -> Option<Vec<String>> {
        None
    }
}

/// The resolver a config describes.
pub enum AnyResolver {
    /// `resolver.static`.
    Static(Vec<String>),
    /// `resolver.dns`.
    Dns(DnsResolver),
}

impl AnyResolver {
    /// The resolver of `config`; DNS backends use `https://` when `tls` says so.
    pub fn from_config(config: &ResolverConfig, https: bool) -> Self {
        match &config.dns {
            Some(dns) => Self::Dns(DnsResolver::new(dns, https)),
            None => Self::Static(config.static_urls()),
        }
    }
}

impl Resolve for AnyResolver {
    async fn resolve(&self) -> Result<Vec<String>, ResolveError> {
        match self {
            Self::Static(urls) => Ok(urls.clone()),
            Self::Dns(dns) => dns.resolve().await,
        }
    }

    fn interval(&self) -> Option<Duration> {
        match self {
            Self::Static(_) => None,
            Self::Dns(dns) => dns.interval(),
        }
    }

    fn fixed(&self) -> Option<Vec<String>> {
        match self {
            Self::Static(urls) => Some(urls.clone()),
            Self::Dns(_) => None,
        }
    }
}

/// Every address of `hostname`, each on `port`, looked up with the system resolver.
pub struct DnsResolver {
    hostname: String,
    port: u16,
    interval: Duration,
    scheme: &'static str,
}

impl DnsResolver {
    /// A resolver for `config`, giving `https://` URLs when `https`.
    pub fn new(config: &DnsResolverConfig, https: bool) -> Self {
        Self {
            hostname: config.hostname.clone(),
            port: config.port,
            interval: config.interval,
            scheme: if https { "https" } else { "http" },
        }
    }
}

impl Resolve for DnsResolver {
    async fn resolve(&self) -> Result<Vec<String>, ResolveError> {
        let name = format!("{}:{}", self.hostname, self.port);
        let addresses = tokio::net::lookup_host((self.hostname.as_str(), self.port))
            .await
            .map_err(|source| ResolveError::Lookup {
                name: name.clone(),
                source,
            })?;
        let urls: Vec<String> = addresses
            .map(|address| format!("{}://{address}", self.scheme))
            .collect();
        if urls.is_empty() {
            return Err(ResolveError::Empty { name });
        }
        Ok(urls)
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }
}

/// A membership: the backend URLs sorted and each once, so that every agent given the
/// same answer in any order builds the same ring.
pub fn membership(mut urls: Vec<String>) -> Vec<String> {
    urls.sort_unstable();
    urls.dedup();
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_is_sorted_and_unique() {
        let urls = ["http://b:1", "http://a:1", "http://b:1"].map(str::to_owned);
        assert_eq!(membership(urls.to_vec()), ["http://a:1", "http://b:1"]);
    }

    #[tokio::test]
    async fn dns_gives_each_address_on_the_port_and_static_is_as_configured() {
        let dns = DnsResolver::new(
            &DnsResolverConfig {
                hostname: "localhost".into(),
                port: 4317,
                interval: Duration::from_secs(5),
            },
            false,
        );
        let urls = dns.resolve().await.expect("localhost resolves");
        assert!(
            urls.iter()
                .all(|u| u.starts_with("http://") && u.ends_with(":4317"))
        );
        assert!(!urls.is_empty());
        let config = ResolverConfig {
            static_backends: Some(vec!["g0:4317".into(), "https://g1:4317".into()]),
            dns: None,
        };
        let resolver = AnyResolver::from_config(&config, false);
        assert_eq!(resolver.interval(), None);
        assert_eq!(
            resolver.fixed().as_deref(),
            Some(&["http://g0:4317".to_owned(), "https://g1:4317".to_owned()][..])
        );
        assert_eq!(
            resolver.resolve().await.expect("static"),
            ["http://g0:4317", "https://g1:4317"]
        );
    }
}

//! The settings of a `protocol: loadbalancing` exporter: where its backends come from
//! and what routes a span to one of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{bounds, units};

/// Where a loadbalancing exporter finds its backends: exactly one of `static` or `dns`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Fixed backends: `host:port` (plain, `http://` is assumed), `http://` or `https://` URLs.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_backends: Option<Vec<String>>,
    /// Backends from the addresses of a host name, looked up again every `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsResolverConfig>,
}

/// A host name whose addresses are the backends (a headless Kubernetes service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverConfig {
    /// The name looked up, e.g. `gateway-headless.observability.svc.cluster.local`.
    pub hostname: String,
    /// The port every address is reached on.
    #[serde(default = "default_dns_port")]
    pub port: u16,
    /// How often the name is looked up again.
    #[serde(default = "default_dns_interval", with = "units::duration")]
    pub interval: Duration,
}

/// The OTLP/gRPC port, where gateways usually listen.
fn default_dns_port() -> u16 {
    4317
}

fn default_dns_interval() -> Duration {
    bounds::DNS_RESOLVER_INTERVAL.default
}

/// What routes a span to a backend: all spans with the same key go to the same one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutingKey {
    /// The span's trace id: each trace whole on one backend.
    #[default]
    #[serde(rename = "trace_id")]
    TraceId,
    /// The span's `council.round_id` attribute (the trace id for spans without one).
    #[serde(rename = "council.round_id")]
    CouncilRoundId,
}

impl RoutingKey {
    /// The attribute key of [`RoutingKey::CouncilRoundId`].
    pub const COUNCIL_ROUND_ID: &'static str = "council.round_id";
}

impl ResolverConfig {
    /// The static backends as URLs: `host:port` becomes `http://host:port`.
    pub fn static_urls(&self) -> Vec<String> {
        self.static_backends
            .iter()
            .flatten()
            .map(|entry| backend_url(entry))
            .collect()
    }
}

/// A static backend as a URL: as written when it has a scheme, else `http://` before it.
pub fn backend_url(entry: &str) -> String {
    if entry.contains("://") {
        entry.to_owned()
    } else {
        format!("http://{entry}")
    }
}

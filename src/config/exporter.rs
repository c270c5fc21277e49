//! The `exporters` section: one destination each, with its auth, TLS, retries and queue.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::loadbalancing::{ResolverConfig, RoutingKey};
use super::url::{mask_url, split_userinfo};
use super::{ByteSize, Secret, bounds, units};

/// What an OTLP request carries: spans, or the Daena signals as metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpSignal {
    /// `ExportTraceServiceRequest`.
    Traces,
    /// `ExportMetricsServiceRequest`.
    Metrics,
}

impl OtlpSignal {
    /// The OTLP/HTTP path of the signal.
    pub fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Metrics => "/v1/metrics",
        }
    }
}

/// `url` split before its query or fragment (`?api_key=...`), which stays after a path.
fn split_query(url: &str) -> (&str, &str) {
    url.split_at(url.find(['?', '#']).unwrap_or(url.len()))
}

/// One destination.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// `grpc`, `http/protobuf`, `console` or `loadbalancing`.
    pub protocol: ExporterProtocol,
    /// loadbalancing only: where the backends come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<ResolverConfig>,
    /// loadbalancing only: what routes a span (default `trace_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<RoutingKey>,
    /// loadbalancing only: how long a backend may fail before its share goes to the
    /// others (default 30s); see [`ExporterConfig::reroute_after`].
    #[serde(
        default,
        with = "units::optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub reroute_after: Option<Duration>,
    /// loadbalancing only: each backend's exporter settings, without an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporter: Option<Box<ExporterConfig>>,
    /// `http://` or `https://` URL of the backend (not for console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// http/protobuf only: the full URL to POST to, used as-is (instead of `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces_endpoint: Option<String>,
    /// Headers sent with every request; values may use `${VAR}` and are never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// Credentials turned into an `Authorization` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Request compression.
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export request.
    #[serde(default = "default_timeout", with = "units::duration")]
    pub timeout: Duration,
    /// TLS settings for `https://` endpoints.
    #[serde(default, skip_serializing_if = "TlsConfig::is_default")]
    pub tls: TlsConfig,
    /// How failed exports are retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The exporter's own bounded queue.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Why this exporter exists when it was built from the environment.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Headers whose values were (partly) read from the environment by `${VAR}`: `check`
    /// masks them whatever their name, since a variable usually holds a credential.
    #[serde(skip)]
    pub substituted_headers: BTreeSet<String>,
}

/// Written out by hand so the URLs show masked, as everywhere else: a `{:?}` in a panic
/// or a log line must not print `user:password@` or `?api_key=`.
impl fmt::Debug for ExporterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = |url: &Option<String>| url.as_deref().map(mask_url);
        f.debug_struct("ExporterConfig")
            .field("protocol", &self.protocol)
            .field("resolver", &self.resolver)
            .field("routing_key", &self.routing_key)
            .field("reroute_after", &self.reroute_after)
            .field("exporter", &self.exporter)
            .field("endpoint", &masked(&self.endpoint))
            .field("traces_endpoint", &masked(&self.traces_endpoint))
            .field("headers", &self.headers)
            .field("auth", &self.auth)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("retry", &self.retry)
            .field("queue", &self.queue)
            .field("origin", &self.origin)
            .finish()
    }
}

fn default_timeout() -> Duration {
    bounds::EXPORT_TIMEOUT.default
}

impl ExporterConfig {
    /// A loadbalancing exporter's grace for a failing backend, its default filled in.
    pub fn reroute_after(&self) -> Duration {
        self.reroute_after.unwrap_or(bounds::REROUTE_AFTER.default)
    }

    /// An exporter of `protocol` to `endpoint` with every other setting at its default.
    pub fn new(protocol: ExporterProtocol, endpoint: Option<String>) -> Self {
        Self {
            protocol,
            resolver: None,
            routing_key: None,
            reroute_after: None,
            exporter: None,
            endpoint,
            traces_endpoint: None,
            headers: BTreeMap::new(),
            auth: None,
            compression: Compression::default(),
            timeout: default_timeout(),
            tls: TlsConfig::default(),
            retry: RetryConfig::default(),
            queue: QueueConfig::default(),
            origin: None,
            substituted_headers: BTreeSet::new(),
        }
    }

    /// Whether this is the console exporter the agent fell back to because no upstream was
    /// configured (an explicit `protocol: console` is a choice, not a fallback).
    pub fn is_console_fallback(&self) -> bool {
        self.protocol == ExporterProtocol::Console
            && self.origin.as_deref() == Some(super::env::CONSOLE_FALLBACK_ORIGIN)
    }

    /// The URL requests go to: `traces_endpoint` as-is; else for http/protobuf `endpoint`
    /// with `/v1/traces` appended unless the path already ends with it (so Grafana Cloud's
    /// `…/otlp` becomes `…/otlp/v1/traces`, as with the Collector's `otlphttp` exporter);
    /// for gRPC the endpoint as given.
    pub fn export_url(&self) -> Option<String> {
        self.signal_url(OtlpSignal::Traces)
    }

    /// Where requests carrying `signal` go. For metrics over http/protobuf that is the
    /// endpoint with `/v1/metrics` (a `traces_endpoint` ending in `/v1/traces` gets it in
    /// place of that); `None` when only a `traces_endpoint` with another path is set.
    pub fn signal_url(&self, signal: OtlpSignal) -> Option<String> {
        let http = self.protocol == ExporterProtocol::HttpProtobuf;
        if let Some(url) = &self.traces_endpoint {
            if signal == OtlpSignal::Traces || !http {
                return Some(url.clone());
            }
            let (base, query) = split_query(url);
            if let Some(root) = base.strip_suffix(OtlpSignal::Traces.http_path()) {
                return Some(format!("{root}{}{query}", signal.http_path()));
            }
        }
        let endpoint = self.endpoint.as_deref()?;
        if !http {
            return Some(endpoint.to_owned());
        }
        let (base, query) = split_query(endpoint);
        let root = base
            .strip_suffix(OtlpSignal::Traces.http_path())
            .unwrap_or(base)
            .trim_end_matches('/');
        Some(format!("{root}{}{query}", signal.http_path()))
    }

    /// The URL the HTTP client gets for `signal`: [`signal_url`](Self::signal_url)
    /// without its `user:password@`, which goes in the `Authorization` header instead, so
    /// neither the client's logs nor an HTTP/2 `:authority` ever carry it.
    pub fn request_url(&self, signal: OtlpSignal) -> Option<String> {
        self.signal_url(signal).map(|url| split_userinfo(&url).0)
    }

    /// Headers to send, lower-cased, including the `Authorization: Basic` built from
    /// `auth.basic` or from the URL's `user:password@` (as the Collector's exporters do).
    pub fn request_headers(&self) -> Vec<(String, Secret)> {
        let mut headers: Vec<(String, Secret)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let basic = self
            .auth
            .as_ref()
            .and_then(|a| a.basic.as_ref())
            .map(|b| (b.username.clone(), b.password.clone()))
            .or_else(|| {
                let url = self.export_url()?;
                split_userinfo(&url).1.map(|c| (c.username, c.password))
            });
        if let Some((username, password)) = basic {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{username}:{}", password.expose()));
            headers.push((
                "authorization".into(),
                Secret::new(format!("Basic {credentials}")),
            ));
        }
        headers
    }
}

/// How an exporter talks to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExporterProtocol {
    /// OTLP/gRPC.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// One line per span on stdout.
    #[serde(rename = "console")]
    Console,
    /// Spans routed by trace id (or council round) over several backends.
    #[serde(rename = "loadbalancing")]
    Loadbalancing,
}

impl fmt::Display for ExporterProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
            Self::Console => "console",
            Self::Loadbalancing => "loadbalancing",
        })
    }
}

/// Request compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, the only compression OTLP specifies.
    #[default]
    Gzip,
    /// No compression.
    None,
}

/// `auth:` credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HTTP Basic credentials (Grafana Cloud: instance id and API token).
    pub basic: Option<BasicAuthConfig>,
}

/// HTTP Basic credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The user name (Grafana Cloud: the instance id).
    pub username: String,
    /// The password (Grafana Cloud: the API token); never shown.
    pub password: Secret,
}

/// TLS settings for `https://` endpoints; the system roots are trusted by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA(s) to trust instead of the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM client key, for mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Encrypt without checking the server's certificate (testing only).
    pub insecure_skip_verify: bool,
}

impl TlsConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Retries with exponential backoff and jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Whether retryable failures are retried at all.
    pub enabled: bool,
    /// First backoff.
    #[serde(with = "units::duration")]
    pub initial_interval: Duration,
    /// Largest backoff.
    #[serde(with = "units::duration")]
    pub max_interval: Duration,
    /// How long one batch may be retried before it is dropped.
    #[serde(with = "units::duration")]
    pub max_elapsed: Duration,
    /// Growth of the backoff per attempt.
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_interval: bounds::RETRY_INITIAL_INTERVAL.default,
            max_interval: bounds::RETRY_MAX_INTERVAL.default,
            max_elapsed: bounds::RETRY_MAX_ELAPSED.default,
            multiplier: 2.0,
        }
    }
}

/// An exporter's bounded queue: in memory, or on disk with `persistent: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Spans waiting for export, at most (a single larger batch still fits an empty queue);
    /// unset: 65,536 in memory, no span bound on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_spans: Option<usize>,
    /// Encoded bytes waiting for export, at most; unset: 8 MiB in memory, 1 GiB on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// What a full queue does with a new batch.
    pub on_full: OnFull,
    /// Export requests in flight at once.
    pub workers: usize,
    /// Keep the queue in segment files under `dir`, so accepted spans survive a crash.
    pub persistent: bool,
    /// Where a persistent queue keeps its files (one subdirectory per exporter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// When a persistent queue forces its writes to the disk.
    pub fsync: Fsync,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_spans: None,
            max_bytes: None,
            on_full: OnFull::Block,
            workers: bounds::QUEUE_WORKERS.default,
            persistent: false,
            dir: None,
            fsync: Fsync::Batch,
        }
    }
}

impl QueueConfig {
    /// The span bound in effect.
    pub fn span_limit(&self) -> usize {
        match (self.max_spans, self.persistent) {
            (Some(spans), _) => spans,
            (None, false) => bounds::QUEUE_MAX_SPANS.default,
            (None, true) => usize::MAX,
        }
    }

    /// The byte bound in effect.
    pub fn byte_limit(&self) -> u64 {
        match (self.max_bytes, self.persistent) {
            (Some(bytes), _) => bytes.0,
            (None, false) => bounds::QUEUE_MAX_BYTES.default.0,
            (None, true) => bounds::PERSISTENT_QUEUE_MAX_BYTES.default.0,
        }
    }
}

/// When a persistent queue calls `fdatasync` (every accepted batch is written before the
/// client is answered, so a killed process loses nothing whatever the policy; the policy
/// is about losing power or the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Once per group of batches written together, before their clients are answered.
    Batch,
    /// After every batch.
    Always,
    /// Never; the kernel writes the pages back in its own time.
    Never,
}

/// What a full exporter queue does with a new batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// When every exporter is full, the pipeline waits, its queue fills, and the receivers
    /// refuse (retryably): the clients keep the data. While another exporter has room, a
    /// full one drops the new batch for itself (counted as `queue_full`), so it never holds
    /// back the others. A full persistent queue refuses the new batch at once: its clients
    /// are told to retry.
    Block,
    /// The oldest queued batches are dropped (counted as `queue_full`) to make room.
    DropOldest,
}

//! The agent's configuration: one YAML file, `${VAR}` expansion, defaults in one place,
//! validation that reports every problem at once, and the `OTEL_EXPORTER_OTLP_*` fallback.

mod env;
mod interpolate;
mod processors;
pub mod units;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

pub use processors::{
    DaenaConfig, LimitsConfig, MIN_VALUE_LENGTH, PolicyConfig, PolicyKind, ProcessorsConfig,
    RedactConfig, SamplingConfig, SamplingMode,
};
pub use units::ByteSize;

/// The whole config file; every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where spans come in.
    pub receivers: ReceiversConfig,
    /// Where spans go, by name; filled from `OTEL_EXPORTER_OTLP_*` when empty.
    pub exporters: BTreeMap<String, ExporterConfig>,
    /// The stages every span goes through: Daena schema, redaction, limits, sampling.
    pub processors: ProcessorsConfig,
    /// How spans are grouped for export.
    pub batch: BatchConfig,
    /// The queue between the receivers and the pipeline task.
    pub pipeline: PipelineConfig,
    /// The agent's own logs and metrics.
    pub telemetry: TelemetryConfig,
    /// Above `soft` resident memory the receivers refuse new spans (retryably).
    pub memory_limit: MemoryLimitConfig,
    /// How long a stop may take to deliver what is in flight.
    #[serde(with = "units::duration")]
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            receivers: ReceiversConfig::default(),
            exporters: BTreeMap::new(),
            processors: ProcessorsConfig::default(),
            batch: BatchConfig::default(),
            pipeline: PipelineConfig::default(),
            telemetry: TelemetryConfig::default(),
            memory_limit: MemoryLimitConfig::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The receivers section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiversConfig {
    /// The OTLP receiver.
    pub otlp: OtlpReceiverConfig,
}

impl Default for ReceiversConfig {
    /// Both protocols on their standard loopback ports when `receivers` is absent.
    fn default() -> Self {
        Self {
            otlp: OtlpReceiverConfig {
                grpc: Some(ReceiverEndpointConfig::new("127.0.0.1:4317")),
                http: Some(ReceiverEndpointConfig::new("127.0.0.1:4318")),
            },
        }
    }
}

/// The OTLP receiver; a protocol left out is off, as in the OpenTelemetry Collector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpReceiverConfig {
    /// OTLP/gRPC (`TraceService/Export`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<ReceiverEndpointConfig>,
    /// OTLP/HTTP (`POST /v1/traces`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<ReceiverEndpointConfig>,
}

/// One listening receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEndpointConfig {
    /// `host:port` to listen on; use `0.0.0.0:4317` inside a container.
    pub endpoint: String,
    /// Largest request accepted, on the wire and after decompression.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: ByteSize,
}

impl ReceiverEndpointConfig {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            max_request_size: default_max_request_size(),
        }
    }
}

fn default_max_request_size() -> ByteSize {
    ByteSize(8 << 20)
}

/// One destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// `grpc`, `http/protobuf` or `console`.
    pub protocol: ExporterProtocol,
    /// `http://` or `https://` URL of the backend (not for console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// http/protobuf only: the full URL to POST to, used as-is (instead of `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces_endpoint: Option<String>,
    /// Headers sent with every request; values may use `${VAR}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
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
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ExporterConfig {
    /// An exporter of `protocol` to `endpoint` with every other setting at its default.
    pub fn new(protocol: ExporterProtocol, endpoint: Option<String>) -> Self {
        Self {
            protocol,
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
        }
    }

    /// The URL requests go to: `traces_endpoint` as-is; else for http/protobuf `endpoint`
    /// with `/v1/traces` appended unless the path already ends with it (so Grafana Cloud's
    /// `…/otlp` becomes `…/otlp/v1/traces`, as with the Collector's `otlphttp` exporter);
    /// for gRPC the endpoint as given.
    pub fn export_url(&self) -> Option<String> {
        if let Some(url) = &self.traces_endpoint {
            return Some(url.clone());
        }
        let endpoint = self.endpoint.as_deref()?;
        if self.protocol != ExporterProtocol::HttpProtobuf || endpoint.ends_with("/v1/traces") {
            return Some(endpoint.to_owned());
        }
        Some(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
    }

    /// Headers to send, lower-cased, including the `Authorization` built from `auth.basic`.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(basic) = self.auth.as_ref().and_then(|a| a.basic.as_ref()) {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", basic.username, basic.password));
            headers.push(("authorization".into(), format!("Basic {credentials}")));
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
}

impl fmt::Display for ExporterProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
            Self::Console => "console",
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
    pub password: String,
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
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
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
            workers: 4,
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
            (None, false) => 65_536,
            (None, true) => usize::MAX,
        }
    }

    /// The byte bound in effect.
    pub fn byte_limit(&self) -> u64 {
        match (self.max_bytes, self.persistent) {
            (Some(bytes), _) => bytes.0,
            (None, false) => 8 << 20,
            (None, true) => 1 << 30,
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
    /// The pipeline waits, its queue fills, and the receivers refuse (retryably): the
    /// clients keep the data. With several exporters, a full one holds back all of them.
    /// A full persistent queue refuses the new batch at once: its clients are told to retry.
    Block,
    /// The oldest queued batches are dropped (counted as `queue_full`) to make room, so a
    /// dead backend never holds back the others.
    DropOldest,
}

/// Batching: a batch leaves when it has `max_spans` spans or `max_bytes`, or after `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Spans per batch, at most.
    pub max_spans: usize,
    /// Encoded bytes per batch, about (a single larger span travels alone).
    pub max_bytes: ByteSize,
    /// How long the first span of a batch may wait.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_spans: 8192,
            max_bytes: ByteSize(1 << 20),
            timeout: Duration::from_millis(200),
        }
    }
}

/// The queue between the receivers and the pipeline task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Requests waiting for the pipeline; when full, receivers answer "retry later".
    pub max_pending_requests: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_pending_requests: 64,
        }
    }
}

/// `memory_limit`: resident memory at which the receivers refuse, and where it logs an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimitConfig {
    /// Above this the receivers refuse new spans until usage falls below 90% of it.
    pub soft: ByteSize,
    /// Above this the agent logs an error; the soft limit is what keeps it from getting here.
    pub hard: ByteSize,
}

impl Default for MemoryLimitConfig {
    fn default() -> Self {
        Self {
            soft: ByteSize(256 << 20),
            hard: ByteSize(320 << 20),
        }
    }
}

/// The agent's own logs and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where `/metrics` is served; `null` turns it off.
    pub endpoint: Option<String>,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            endpoint: Some("127.0.0.1:8888".into()),
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One problem in the config: the key it is about and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, e.g. `exporters.tempo.endpoint` (or a variable name, or `line:col`).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a config, with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file, if there was one.
    pub file: Option<PathBuf>,
    /// The problems, at least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self
            .file
            .as_ref()
            .map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let count = self.errors.len();
        write!(
            f,
            "{source}: {count} config error{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  - {}: {}", error.path, error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads `path` (or the defaults), expands `${VAR}` from `env`, fills the exporter
    /// from `OTEL_EXPORTER_OTLP_*` when none is configured, and validates.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: path.map(Path::to_path_buf),
            errors,
        };
        let mut config = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    fail(vec![ConfigError::new(
                        path.display().to_string(),
                        format!(
                            "cannot read the config file: {e}; check the path given to --config"
                        ),
                    )])
                })?;
                yaml::parse(&text, path, env).map_err(fail)?
            }
        };
        if config.exporters.is_empty() {
            let (name, exporter) = env::exporter_from_env(env).map_err(fail)?;
            config.exporters.insert(name, exporter);
        }
        let errors = config.validate();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }

    /// Every problem in the config at once; empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let receivers = [
            ("receivers.otlp.grpc", &self.receivers.otlp.grpc, "gRPC"),
            ("receivers.otlp.http", &self.receivers.otlp.http, "HTTP"),
        ];
        if receivers.iter().all(|(_, r, _)| r.is_none()) {
            errors.push(ConfigError::new(
                "receivers.otlp",
                "no receiver is enabled; add grpc: or http: (or remove receivers: for both)",
            ));
        }
        let mut listening = Vec::new();
        for (key, receiver, protocol) in receivers {
            let Some(receiver) = receiver else { continue };
            match parse_listen_addr(&receiver.endpoint) {
                Ok(addr) => listening.push((key, protocol, addr, &receiver.endpoint)),
                Err(message) => errors.push(ConfigError::new(format!("{key}.endpoint"), message)),
            }
            if receiver.max_request_size.0 == 0 {
                errors.push(ConfigError::new(
                    format!("{key}.max_request_size"),
                    "must be more than 0 bytes",
                ));
            }
        }
        if let [(_, _, a, _), (_, _, b, _)] = listening[..]
            && a == b
            && a.port() != 0
        {
            errors.push(ConfigError::new(
                "receivers.otlp.http.endpoint",
                format!("{a} is also the gRPC receiver's address; give each its own port"),
            ));
        }
        if self.batch.max_spans == 0 {
            errors.push(ConfigError::new(
                "batch.max_spans",
                "must be at least 1 (got 0)",
            ));
        }
        if self.batch.max_bytes.0 < 1024 {
            errors.push(ConfigError::new(
                "batch.max_bytes",
                format!("must be at least 1KiB (got {})", self.batch.max_bytes),
            ));
        }
        if self.batch.timeout.is_zero() {
            errors.push(ConfigError::new(
                "batch.timeout",
                "must be more than 0 (e.g. 200ms)",
            ));
        }
        if self.pipeline.max_pending_requests == 0 {
            errors.push(ConfigError::new(
                "pipeline.max_pending_requests",
                "must be at least 1 (got 0)",
            ));
        }
        if !["trace", "debug", "info", "warn", "error"].contains(&self.telemetry.log_level.as_str())
        {
            errors.push(ConfigError::new(
                "telemetry.log_level",
                format!(
                    "{:?} is not a level; use trace, debug, info, warn or error",
                    self.telemetry.log_level
                ),
            ));
        }
        if let Some(endpoint) = &self.telemetry.endpoint
            && let Err(message) = parse_listen_addr(endpoint)
        {
            errors.push(ConfigError::new("telemetry.endpoint", message));
        }
        self.processors.validate(&mut errors);
        let memory = &self.memory_limit;
        if memory.soft.0 >= memory.hard.0 {
            errors.push(ConfigError::new(
                "memory_limit",
                format!(
                    "soft ({}) must be below hard ({}), e.g. soft: 256MiB, hard: 320MiB",
                    memory.soft, memory.hard
                ),
            ));
        }
        for (name, exporter) in &self.exporters {
            validate_exporter(
                &format!("exporters.{name}"),
                exporter,
                &listening,
                &mut errors,
            );
        }
        errors
    }

    /// A copy with every header value, password and URL password replaced by `***`.
    pub fn masked(&self) -> Self {
        let mut masked = self.clone();
        for exporter in masked.exporters.values_mut() {
            for value in exporter.headers.values_mut() {
                *value = MASK.into();
            }
            if let Some(basic) = exporter.auth.as_mut().and_then(|a| a.basic.as_mut()) {
                basic.password = MASK.into();
            }
            for url in [&mut exporter.endpoint, &mut exporter.traces_endpoint]
                .into_iter()
                .flatten()
            {
                *url = mask_url_credentials(url);
            }
        }
        masked
    }

    /// The config as YAML (call it on [`masked`](Self::masked) before showing it).
    pub fn to_yaml(&self) -> String {
        yaml::to_string(self)
    }
}

const MASK: &str = "***";

/// Replaces `user:password@` in a URL by `user:***@`.
fn mask_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:{MASK}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

fn validate_exporter(
    key: &str,
    exporter: &ExporterConfig,
    receivers: &[(&str, &str, SocketAddr, &String)],
    errors: &mut Vec<ConfigError>,
) {
    let endpoint_key = format!("{key}.endpoint");
    let given = [
        ("endpoint", exporter.endpoint.is_some()),
        ("traces_endpoint", exporter.traces_endpoint.is_some()),
    ];
    match (exporter.protocol, given) {
        (ExporterProtocol::Console, [(_, false), (_, false)]) => {}
        (ExporterProtocol::Console, _) => errors.push(ConfigError::new(
            &endpoint_key,
            "the console exporter prints to stdout; remove the endpoint or choose protocol grpc or http/protobuf",
        )),
        (ExporterProtocol::Grpc, [_, (_, true)]) => errors.push(ConfigError::new(
            format!("{key}.traces_endpoint"),
            "is for http/protobuf only; a grpc exporter takes endpoint",
        )),
        (_, [(_, true), (_, true)]) => errors.push(ConfigError::new(
            &endpoint_key,
            "endpoint and traces_endpoint are both set; keep one (traces_endpoint is used as-is)",
        )),
        (protocol, [(_, false), (_, false)]) => errors.push(ConfigError::new(
            &endpoint_key,
            format!("protocol {protocol} needs an endpoint, e.g. https://tempo.example.net:443"),
        )),
        (_, [(_, with_endpoint), _]) => {
            let (url_key, url) = if with_endpoint {
                (endpoint_key, exporter.endpoint.clone().unwrap_or_default())
            } else {
                (format!("{key}.traces_endpoint"), exporter.traces_endpoint.clone().unwrap_or_default())
            };
            match parse_url(&url) {
                Err(message) => errors.push(ConfigError::new(&url_key, message)),
                Ok(parsed) => {
                    if let Some(message) = self_loop(&parsed, receivers, exporter.origin.is_some()) {
                        errors.push(ConfigError::new(&url_key, format!("{url} {message}")));
                    }
                    if exporter.tls != TlsConfig::default() && !parsed.https {
                        errors.push(ConfigError::new(format!("{key}.tls"), "tls applies only to https:// endpoints; use https:// or remove tls"));
                    }
                }
            }
        }
    }
    for (name, value) in &exporter.headers {
        let header_key = format!("{key}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(ConfigError::new(
                &header_key,
                "is not a valid header name (letters, digits and -)",
            ));
        }
        if http::HeaderValue::from_str(value).is_err() {
            // The value may be a secret: say what is wrong, never what it is.
            errors.push(ConfigError::new(&header_key, "the value holds characters a header cannot carry (line breaks or control characters)"));
        }
        if name.eq_ignore_ascii_case("authorization")
            && exporter.auth.as_ref().is_some_and(|a| a.basic.is_some())
        {
            errors.push(ConfigError::new(
                &header_key,
                "both an authorization header and auth.basic are set; keep one",
            ));
        }
    }
    if exporter.auth.as_ref().is_some_and(|a| a.basic.is_none()) {
        errors.push(ConfigError::new(
            format!("{key}.auth"),
            "is empty; add basic: { username, password } or remove auth",
        ));
    }
    let tls = &exporter.tls;
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        errors.push(ConfigError::new(
            format!("{key}.tls"),
            "cert_file and key_file go together for mutual TLS; set both or neither",
        ));
    }
    for (field, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(file) = file
            && let Err(e) = std::fs::File::open(file)
        {
            errors.push(ConfigError::new(
                format!("{key}.tls.{field}"),
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    }
    if exporter.timeout.is_zero() {
        errors.push(ConfigError::new(
            format!("{key}.timeout"),
            "must be more than 0 (e.g. 10s)",
        ));
    }
    let retry = &exporter.retry;
    if retry.initial_interval.is_zero() || retry.max_interval.is_zero() {
        errors.push(ConfigError::new(
            format!("{key}.retry"),
            "initial_interval and max_interval must be more than 0",
        ));
    }
    if retry.initial_interval > retry.max_interval {
        errors.push(ConfigError::new(
            format!("{key}.retry.initial_interval"),
            "must not be longer than retry.max_interval",
        ));
    }
    if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
        errors.push(ConfigError::new(
            format!("{key}.retry.multiplier"),
            format!("must be at least 1 (got {})", retry.multiplier),
        ));
    }
    let queue = &exporter.queue;
    if queue.span_limit() == 0 || queue.byte_limit() == 0 {
        errors.push(ConfigError::new(
            format!("{key}.queue"),
            "max_spans and max_bytes must be at least 1",
        ));
    }
    match (&queue.dir, queue.persistent) {
        (None, true) => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            "is required with persistent: true; set it to a directory on a volume that outlives the agent's container",
        )),
        (Some(_), false) => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            "only applies to a persistent queue; add persistent: true or remove dir",
        )),
        (Some(dir), true) if dir.exists() && !dir.is_dir() => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            format!("{} is not a directory", dir.display()),
        )),
        _ => {}
    }
    if queue.workers == 0 {
        errors.push(ConfigError::new(
            format!("{key}.queue.workers"),
            "must be at least 1 (got 0)",
        ));
    }
}

/// The parts of an exporter URL validation needs.
struct ExportUrl {
    https: bool,
    host: String,
    port: u16,
}

fn parse_url(endpoint: &str) -> Result<ExportUrl, String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("{endpoint:?} is not a URL ({e}); write e.g. https://tempo.example.net:443")
    })?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{endpoint:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{endpoint:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(ExportUrl { https, host, port })
}

/// Why an exporter URL points back at one of this agent's receivers, if it does.
fn self_loop(
    url: &ExportUrl,
    receivers: &[(&str, &str, SocketAddr, &String)],
    from_env: bool,
) -> Option<String> {
    let local = |host: &str| {
        host == "localhost"
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
    };
    receivers.iter().find_map(|(key, protocol, addr, endpoint)| {
        let same_host = local(&url.host) || addr.ip().to_string() == url.host;
        (addr.port() != 0 && addr.port() == url.port && same_host).then(|| {
            let hint = if from_env {
                "; if it came from OTEL_EXPORTER_OTLP_ENDPOINT, unset that variable in the agent's environment (it is meant for the Daena service)"
            } else {
                ""
            };
            format!(
                "is this agent's own {protocol} receiver ({key}.endpoint = {endpoint}); a sidecar forwarding to itself loops forever. Point the exporter at your backend{hint}"
            )
        })
    })
}

/// Parses a listen endpoint: `127.0.0.1:4317`, `0.0.0.0:4318`, `[::1]:0` or `localhost:4317`.
pub fn parse_listen_addr(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let invalid = || {
        format!(
            "{endpoint:?} is not host:port; write e.g. 127.0.0.1:4317 (or 0.0.0.0:4317 in a container)"
        )
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(invalid)?;
    port.parse::<u16>().map_err(|_| invalid())?;
    if host != "localhost" {
        return Err(invalid());
    }
    // Resolving "localhost" needs no network; prefer IPv4 as most clients do.
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs().map_err(|_| invalid())?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests;

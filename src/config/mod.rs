//! The agent's configuration: one YAML file, `${VAR}` expansion, defaults in one place,
//! validation that reports every problem at once, and the `OTEL_EXPORTER_OTLP_*` fallback.

pub mod attributes;
mod bounds;
mod env;
mod error;
mod exporter;
pub mod filter;
mod interpolate;
mod loadbalancing;
mod mask;
mod pipeline;
mod processors;
mod receivers;
pub mod schema;
mod secret;
mod security;
mod telemetry;
pub mod units;
mod url;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, ConfigErrors};
pub use exporter::{
    AuthConfig, BasicAuthConfig, Compression, ExporterConfig, ExporterProtocol, Fsync, OnFull,
    OtlpSignal, QueueConfig, RetryConfig, TlsConfig,
};
pub use loadbalancing::{DnsResolverConfig, ResolverConfig, RoutingKey};
pub use pipeline::{BatchConfig, MemoryLimitConfig, PipelineConfig};
pub use processors::{
    DaenaConfig, LimitsConfig, MIN_VALUE_LENGTH, PolicyConfig, PolicyKind, ProcessorsConfig,
    RedactConfig, SamplingConfig, SamplingMode, SignalsConfig,
};
pub use receivers::{OtlpReceiverConfig, ReceiverEndpointConfig, ReceiversConfig};
pub use secret::Secret;
pub use security::{ReceiverAuthConfig, SecurityFileError, ServerTlsConfig};
pub use telemetry::{LogFormat, TelemetryConfig};
pub use units::{ByteSize, format_duration};
pub use url::mask_url;
pub use validate::parse_listen_addr;
/// Parses a config's YAML without validating it, for the stages' tests.
#[cfg(test)]
pub(crate) use yaml::parse as parse_yaml;
pub use yaml::{Located, located};

/// What the agent says while spans go to the console for want of an upstream.
pub const CONSOLE_FALLBACK_WARNING: &str =
    "spans go to the console: set OTEL_EXPORTER_OTLP_ENDPOINT or exporters:";

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
            shutdown_timeout: bounds::SHUTDOWN_TIMEOUT.default,
        }
    }
}

impl Config {
    /// Loads `path` (or the defaults), expands `${VAR}` from `env`, reads the variables
    /// `processors.daena.resource_from_env` names, fills the exporter from
    /// `OTEL_EXPORTER_OTLP_*` when none is configured, and validates.
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
        config.processors.daena.resolve_resource_from_env(env);
        let tail = config
            .processors
            .sampling
            .as_ref()
            .is_some_and(|s| s.mode == SamplingMode::Tail);
        config.pipeline.resolve_shards(tail);
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

    /// The warning to log and show while spans go to the console only because no upstream
    /// is configured; `None` when an upstream (or `protocol: console` itself) was chosen.
    pub fn console_fallback_warning(&self) -> Option<&'static str> {
        self.exporters
            .values()
            .any(ExporterConfig::is_console_fallback)
            .then_some(CONSOLE_FALLBACK_WARNING)
    }

    /// One warning per exporter that does not verify its backend's certificate.
    pub fn insecure_tls_warnings(&self) -> Vec<String> {
        self.exporters
            .iter()
            .filter(|(_, exporter)| exporter.tls.insecure_skip_verify)
            .map(|(name, _)| {
                format!("exporters.{name}.tls.insecure_skip_verify is on: the backend's certificate is not checked, so anyone on the network path can read and change the spans; trust its CA with tls.ca_file instead")
            })
            .collect()
    }

    /// The config as YAML (call it on [`masked`](Self::masked) before showing it).
    pub fn to_yaml(&self) -> String {
        yaml::to_string(self)
    }
}

#[cfg(test)]
mod tests;

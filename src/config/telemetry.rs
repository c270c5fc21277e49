//! The `telemetry` section: the agent's own logs and metrics.

use serde::{Deserialize, Serialize};

/// The agent's own logs and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `null` turns it off.
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

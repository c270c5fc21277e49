//! TEMPORARY STUB (to be replaced by the config helper's module).
#![allow(missing_docs, dead_code)]
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub receivers: ReceiversConfig,
    pub exporters: BTreeMap<String, ExporterConfig>,
    pub batch: BatchConfig,
    pub pipeline: PipelineConfig,
    pub telemetry: TelemetryConfig,
    pub shutdown_timeout: Duration,
}
#[derive(Debug, Clone, Default)]
pub struct ReceiversConfig { pub otlp: OtlpReceiverConfig }
#[derive(Debug, Clone, Default)]
pub struct OtlpReceiverConfig { pub grpc: Option<ReceiverEndpointConfig>, pub http: Option<ReceiverEndpointConfig> }
#[derive(Debug, Clone)]
pub struct ReceiverEndpointConfig { pub endpoint: String, pub max_request_size: ByteSize }
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub protocol: ExporterProtocol,
    pub endpoint: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub compression: Compression,
    pub timeout: Duration,
    pub tls: TlsConfig,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
    pub origin: Option<String>,
}
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExporterProtocol { Grpc, HttpProtobuf, Console }
impl std::fmt::Display for ExporterProtocol { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") } }
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compression { Gzip, None }
#[derive(Debug, Clone, Default)]
pub struct TlsConfig { pub ca_file: Option<PathBuf>, pub cert_file: Option<PathBuf>, pub key_file: Option<PathBuf>, pub insecure_skip_verify: bool }
#[derive(Debug, Clone)]
pub struct RetryConfig { pub enabled: bool, pub initial_interval: Duration, pub max_interval: Duration, pub max_elapsed: Duration, pub multiplier: f64 }
#[derive(Debug, Clone)]
pub struct QueueConfig { pub max_batches: usize, pub workers: usize }
#[derive(Debug, Clone, Default)]
pub struct BatchConfig { pub max_spans: usize, pub max_bytes: ByteSize, pub timeout: Duration }
impl Default for ByteSize { fn default() -> Self { ByteSize(0) } }
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig { pub max_pending_requests: usize }
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig { pub endpoint: Option<String>, pub log_level: String, pub log_format: LogFormat }
#[derive(Debug, Clone, Copy, Default)]
pub enum LogFormat { #[default] Text, Json }
#[derive(Debug)]
pub struct ConfigErrors;
impl std::fmt::Display for ConfigErrors { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "x") } }
impl Config {
    pub fn load(_path: Option<&Path>, _env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> { Err(ConfigErrors) }
    pub fn masked(&self) -> Config { self.clone() }
    pub fn to_yaml(&self) -> String { String::new() }
}
impl ExporterConfig {
    pub fn export_url(&self) -> Option<String> { self.endpoint.clone() }
    pub fn request_headers(&self) -> Vec<(String, String)> { vec![] }
}
pub fn parse_listen_addr(endpoint: &str) -> Result<SocketAddr, String> { endpoint.parse().map_err(|e: std::net::AddrParseError| e.to_string()) }

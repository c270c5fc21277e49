//! The `receivers` section: where spans come in.

use serde::{Deserialize, Serialize};

use super::{ByteSize, bounds};

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
    bounds::MAX_REQUEST_SIZE.default
}

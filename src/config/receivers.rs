//! The `receivers` section: where spans come in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, ReceiverAuthConfig, ServerTlsConfig, bounds, units};

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

/// One listening receiver, with the limits that keep hostile connections bounded
/// (docs/reliability.md, "Hostile input").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEndpointConfig {
    /// `host:port` to listen on; use `0.0.0.0:4317` inside a container.
    pub endpoint: String,
    /// Largest request accepted, on the wire and after decompression.
    #[serde(default = "default_max_request_size")]
    pub max_request_size: ByteSize,
    /// Spans one request may hold; more is refused (413 / `RESOURCE_EXHAUSTED`).
    #[serde(default = "default_max_spans_per_request")]
    pub max_spans_per_request: usize,
    /// Attributes one resource, scope, span, event, link or kvlist value may hold; more
    /// is refused (`processors.limits` truncates below this).
    #[serde(default = "default_max_attributes_per_item")]
    pub max_attributes_per_item: usize,
    /// Memory one request may take decoded, estimated before decoding; more is refused.
    /// Default: see [`max_decoded_size`](Self::max_decoded_size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_decoded_size: Option<ByteSize>,
    /// Connections open at once; a connection past it is closed as soon as it is accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time a new connection has to send its request headers (HTTP/1) or its HTTP/2
    /// connection preface; also the time for each later HTTP/1 request's headers.
    #[serde(default = "default_header_read_timeout", with = "units::duration")]
    pub header_read_timeout: Duration,
    /// HTTP receiver only: time a request's whole body has to arrive (then 408).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::optional_duration"
    )]
    pub body_read_timeout: Option<Duration>,
    /// HTTP receiver only: a connection with no request in progress for this long is closed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::optional_duration"
    )]
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 streams (concurrent calls) per connection, advertised in SETTINGS.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: usize,
    /// An HTTP/2 PING is sent after this long without traffic on a connection.
    #[serde(default = "default_keepalive_interval", with = "units::duration")]
    pub keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection (its peer is gone).
    #[serde(default = "default_keepalive_timeout", with = "units::duration")]
    pub keepalive_timeout: Duration,
    /// Server TLS (and mTLS with `client_ca_file`); plaintext when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// Bearer-token authentication of span intake; none when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ReceiverAuthConfig>,
}

impl ReceiverEndpointConfig {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            max_request_size: default_max_request_size(),
            max_spans_per_request: default_max_spans_per_request(),
            max_attributes_per_item: default_max_attributes_per_item(),
            max_decoded_size: None,
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: None,
            idle_timeout: None,
            max_concurrent_streams: default_max_concurrent_streams(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            tls: None,
            auth: None,
        }
    }

    /// `body_read_timeout`, or its default when left out.
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout
            .unwrap_or(bounds::BODY_READ_TIMEOUT.default)
    }

    /// `max_decoded_size`, or its default within `budget` (`memory_limit.budget`): 16
    /// times `max_request_size`, at most what the budget holds beside such a body.
    pub fn max_decoded_size(&self, budget: ByteSize) -> ByteSize {
        self.max_decoded_size.unwrap_or_else(|| {
            let body = self.max_request_size.0;
            ByteSize(
                body.saturating_mul(bounds::DECODED_PER_ENCODED)
                    .min(budget.0.saturating_sub(body)),
            )
        })
    }

    /// `idle_timeout`, or its default when left out.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(bounds::IDLE_TIMEOUT.default)
    }
}

fn default_max_request_size() -> ByteSize {
    bounds::MAX_REQUEST_SIZE.default
}

fn default_max_spans_per_request() -> usize {
    bounds::MAX_SPANS_PER_REQUEST.default
}

fn default_max_attributes_per_item() -> usize {
    bounds::MAX_ATTRIBUTES_PER_ITEM.default
}

fn default_max_connections() -> usize {
    bounds::MAX_CONNECTIONS.default
}

fn default_header_read_timeout() -> Duration {
    bounds::HEADER_READ_TIMEOUT.default
}

fn default_max_concurrent_streams() -> usize {
    bounds::MAX_CONCURRENT_STREAMS.default
}

fn default_keepalive_interval() -> Duration {
    bounds::KEEPALIVE_INTERVAL.default
}

fn default_keepalive_timeout() -> Duration {
    bounds::KEEPALIVE_TIMEOUT.default
}

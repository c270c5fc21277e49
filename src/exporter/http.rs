//! OTLP/HTTP exporter: POSTs the encoded batch (`application/x-protobuf`, gzip by default).

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};
use prost::Message;

use super::retry::{classify_http, parse_retry_after};
use super::transport::{Destination, HttpVersions};
use super::{BuildError, Delivered, ExportError, Exporter, Payload, grpc_message_frame};
use crate::config::{Compression, ExporterConfig, OtlpSignal};
use crate::otlp::{ExportTraceServiceResponse, RpcStatus};

/// The OTLP specification's limit on a response body.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How much of a backend's error text goes into our logs.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Exports to an OTLP/HTTP backend (Grafana Cloud's OTLP gateway, Tempo, Jaeger).
pub struct OtlpHttpExporter {
    destination: Destination,
    gzip: bool,
}

impl OtlpHttpExporter {
    /// Builds the exporter `name` from its config, posting to `signal`'s URL.
    pub fn new(
        name: &str,
        config: &ExporterConfig,
        signal: OtlpSignal,
    ) -> Result<Self, BuildError> {
        let gzip = config.compression == Compression::Gzip;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let url = config.request_url(signal).unwrap_or_default();
        Ok(Self {
            destination: Destination::new(name, config, &url, HttpVersions::Any, headers)?,
            gzip,
        })
    }

    /// Sends one encoded export request (the Daena signals' metrics) once.
    pub async fn export_message(&self, message: &[u8]) -> Result<Delivered, ExportError> {
        // The gRPC frame's gzip, without its 5-byte prefix: the same compression as a batch's.
        let body = if self.gzip {
            grpc_message_frame(message, true).slice(5..)
        } else {
            Bytes::copy_from_slice(message)
        };
        self.destination.within_timeout(self.send(body)).await
    }

    /// Posts one body; the answer of a metrics service reads as a trace service's (the
    /// same partial-success fields).
    async fn send(&self, body: Bytes) -> Result<Delivered, ExportError> {
        let response = self.destination.post(body).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let is_protobuf = response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            let partial = if is_protobuf {
                ExportTraceServiceResponse::decode(body)
                    .ok()
                    .and_then(|r| r.partial_success)
                    .unwrap_or_default()
            } else {
                Default::default()
            };
            return Ok(Delivered {
                rejected_spans: partial.rejected_spans.max(0) as u64,
                message: partial.error_message,
                ..Delivered::default()
            });
        }
        let text = if is_protobuf {
            RpcStatus::decode(body.clone())
                .map(|s| s.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned())
        } else {
            String::from_utf8_lossy(&body).into_owned()
        };
        let text: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        Err(classify_http(
            status.as_u16(),
            retry_after,
            format!("backend answered HTTP {status}: {}", text.trim()),
        ))
    }
}

impl Exporter for OtlpHttpExporter {
    fn prepare(&self, payload: &Payload) {
        if self.gzip {
            payload.gzipped();
        } else {
            payload.encoded();
        }
    }

    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let body = if self.gzip {
            payload.gzipped()
        } else {
            payload.encoded()
        };
        self.destination.within_timeout(self.send(body)).await
    }
}

//! OTLP/gRPC exporter: sends the batch to `TraceService/Export` as one gRPC message.
//!
//! It speaks gRPC over the shared hyper client rather than through a tonic channel,
//! because tonic compresses every message itself at gzip level 6, which cost half the
//! agent's CPU at saturation. Here the message is compressed once per batch at level 1
//! and shared by every exporter (see docs/performance.md).

use std::io::Read;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use super::http::{MAX_MESSAGE_CHARS, MAX_RESPONSE_BYTES};
use super::retry::classify_grpc;
use super::transport::{Destination, HttpVersions, error_chain};
use super::{BuildError, Delivered, ExportError, Exporter, Payload, grpc_message_frame};
use crate::config::{Compression, ExporterConfig, OtlpSignal};
use crate::otlp::{ExportTraceServiceResponse, METRICS_EXPORT_PATH, TRACE_EXPORT_PATH};

/// Exports to an OTLP/gRPC backend (Jaeger, Tempo, a Collector).
pub struct OtlpGrpcExporter {
    destination: Destination,
    gzip: bool,
}

impl OtlpGrpcExporter {
    /// Builds the exporter `name` for `signal`'s service; it connects on first use, so a
    /// backend that is down at start-up is retried.
    pub fn new(
        name: &str,
        config: &ExporterConfig,
        signal: OtlpSignal,
    ) -> Result<Self, BuildError> {
        let gzip = config.compression == Compression::Gzip;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("gzip"));
        if gzip {
            headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        }
        // gRPC's deadline header: at most 8 digits and a unit.
        let millis = config.timeout.as_millis().min(99_999_999);
        if let Ok(value) = HeaderValue::from_str(&format!("{millis}m")) {
            headers.insert("grpc-timeout", value);
        }
        let endpoint = config.request_url(signal).unwrap_or_default();
        // The method's path goes before a query (`?api_key=...`), which is kept.
        let (base, query) = endpoint.split_at(endpoint.find(['?', '#']).unwrap_or(endpoint.len()));
        let method = match signal {
            OtlpSignal::Traces => TRACE_EXPORT_PATH,
            OtlpSignal::Metrics => METRICS_EXPORT_PATH,
        };
        let url = format!("{}{method}{query}", base.trim_end_matches('/'));
        Ok(Self {
            destination: Destination::new(name, config, &url, HttpVersions::Http2, headers)?,
            gzip,
        })
    }

    /// Sends one encoded export request (the Daena signals' metrics) once.
    pub async fn export_message(&self, message: &[u8]) -> Result<Delivered, ExportError> {
        let frame = grpc_message_frame(message, self.gzip);
        self.destination.within_timeout(self.send(frame)).await
    }

    async fn send(&self, frame: Bytes) -> Result<Delivered, ExportError> {
        let response = self.destination.post(frame).await?;
        if response.status() != StatusCode::OK {
            let code = code_for_http_status(response.status());
            return Err(classify_grpc(
                code,
                None,
                format!("backend answered HTTP {} to a gRPC call", response.status()),
            ));
        }
        // A "trailers-only" answer carries the status in its headers.
        let early = tonic::Status::from_header_map(response.headers());
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ExportError::Retryable {
                message: format!(
                    "the answer from {} broke off: {}",
                    self.destination.shown(),
                    error_chain(&*e)
                ),
                retry_after: None,
            })?;
        let status = early
            .or_else(|| {
                collected
                    .trailers()
                    .and_then(tonic::Status::from_header_map)
            })
            .unwrap_or_else(|| tonic::Status::unknown("the backend's answer has no grpc-status"));
        if status.code() != Code::Ok {
            let retry_info = status
                .get_details_retry_info()
                .and_then(|info| info.retry_delay);
            let message: String = status.message().chars().take(MAX_MESSAGE_CHARS).collect();
            return Err(classify_grpc(
                status.code(),
                retry_info,
                format!("backend answered {:?}: {message}", status.code()),
            ));
        }
        let partial = decode_response(&collected.to_bytes())
            .and_then(|r| r.partial_success)
            .unwrap_or_default();
        Ok(Delivered {
            rejected_spans: partial.rejected_spans.max(0) as u64,
            message: partial.error_message,
            ..Delivered::default()
        })
    }
}

impl Exporter for OtlpGrpcExporter {
    fn prepare(&self, payload: &Payload) {
        payload.grpc_frame(self.gzip);
    }

    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let frame = payload.grpc_frame(self.gzip);
        self.destination.within_timeout(self.send(frame)).await
    }
}

/// Reads the one length-prefixed response message, gunzipping it if the server compressed it.
/// A metrics service's answer reads the same: its partial success has the same fields.
fn decode_response(body: &[u8]) -> Option<ExportTraceServiceResponse> {
    let (&compressed, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..4 + len)?;
    if compressed == 1 {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(message)
            .take(MAX_RESPONSE_BYTES as u64)
            .read_to_end(&mut plain)
            .ok()?;
        ExportTraceServiceResponse::decode(&plain[..]).ok()
    } else {
        ExportTraceServiceResponse::decode(message).ok()
    }
}

/// The gRPC code for an HTTP status that is not 200, per gRPC's HTTP/2 mapping.
fn code_for_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::ExportTracePartialSuccess;

    #[test]
    fn response_messages_are_read_plain_or_gzipped() {
        let response = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "too old".into(),
            }),
        };
        let message = response.encode_to_vec();
        let frame = |flag: u8, body: &[u8]| {
            let mut frame = vec![flag];
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(body);
            frame
        };
        assert_eq!(decode_response(&frame(0, &message)), Some(response.clone()));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &message).expect("gzip");
        assert_eq!(
            decode_response(&frame(1, &gz.finish().expect("gzip"))),
            Some(response)
        );
        assert_eq!(decode_response(&[]), None);
        // A metrics service's partial success reads the same (rejected data points).
        let metrics = crate::otlp::ExportMetricsServiceResponse {
            partial_success: Some(crate::otlp::ExportMetricsPartialSuccess {
                rejected_data_points: 3,
                error_message: "bad unit".into(),
            }),
        };
        let read =
            decode_response(&frame(0, &metrics.encode_to_vec())).and_then(|r| r.partial_success);
        assert_eq!(
            read.map(|p| (p.rejected_spans, p.error_message)),
            Some((3, "bad unit".into()))
        );
    }

    #[test]
    fn http_errors_map_to_retryable_grpc_codes_where_the_spec_says() {
        assert_eq!(
            code_for_http_status(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(
            code_for_http_status(StatusCode::TOO_MANY_REQUESTS),
            Code::Unavailable
        );
        assert_eq!(
            code_for_http_status(StatusCode::UNAUTHORIZED),
            Code::Unauthenticated
        );
        assert_eq!(
            code_for_http_status(StatusCode::BAD_REQUEST),
            Code::Internal
        );
    }
}

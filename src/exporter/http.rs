//! OTLP/HTTP exporter: POSTs the encoded batch (`application/x-protobuf`, gzip by default).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;

use super::retry::{classify_http, parse_retry_after};
use super::transport::{
    HttpClient, HttpVersions, client, configured_headers, export_uri, without_credentials,
};
use super::{BuildError, Delivered, ExportError, Exporter, Payload};
use crate::config::{Compression, ExporterConfig};
use crate::otlp::{ExportTraceServiceResponse, RpcStatus};

/// The OTLP specification's limit on a response body.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How much of a backend's error text goes into our logs.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Exports to an OTLP/HTTP backend (Grafana Cloud's OTLP gateway, Tempo, Jaeger).
pub struct OtlpHttpExporter {
    client: HttpClient,
    uri: Uri,
    /// The URL as logs may show it: without credentials.
    target: String,
    headers: HeaderMap,
    gzip: bool,
    timeout: Duration,
}

impl OtlpHttpExporter {
    /// Builds the exporter `name` from its config.
    pub fn new(name: &str, config: &ExporterConfig) -> Result<Self, BuildError> {
        let uri = export_uri(name, &config.export_url().unwrap_or_default())?;
        let mut headers = configured_headers(name, config)?;
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("daena-trace-agent/", env!("CARGO_PKG_VERSION"))),
        );
        let gzip = config.compression == Compression::Gzip;
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Ok(Self {
            client: client(name, config, HttpVersions::Any)?,
            target: without_credentials(&uri),
            uri,
            headers,
            gzip,
            timeout: config.timeout,
        })
    }

    async fn send(&self, body: Bytes) -> Result<Delivered, ExportError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| ExportError::Permanent {
                message: format!("cannot build the request: {e}"),
            })?;
        *request.headers_mut() = self.headers.clone();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| ExportError::Retryable {
                message: format!("request to {} failed: {e}", self.target),
                retry_after: None,
            })?;
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
        tokio::time::timeout(self.timeout, self.send(body))
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::Retryable {
                    message: format!(
                        "no answer from {} within the {:?} timeout",
                        self.target, self.timeout
                    ),
                    retry_after: None,
                })
            })
    }
}

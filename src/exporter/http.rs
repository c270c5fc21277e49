//! OTLP/HTTP exporter: POSTs the encoded batch (`application/x-protobuf`, gzip by default).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use super::retry::{classify_http, parse_retry_after};
use super::tls::{HttpVersions, connector};
use super::{BuildError, Delivered, ExportError, Exporter, Payload};
use crate::config::{Compression, ExporterConfig};
use crate::otlp::{ExportTraceServiceResponse, RpcStatus};

/// The OTLP specification's limit on a response body.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How much of a backend's error text goes into our logs.
const MAX_MESSAGE_CHARS: usize = 512;

/// Exports to an OTLP/HTTP backend (Grafana Cloud's OTLP gateway, Tempo, Jaeger).
pub struct OtlpHttpExporter {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        let url = config.export_url().unwrap_or_default();
        let uri: Uri = url.parse().map_err(|e| BuildError::Endpoint {
            exporter: name.to_owned(),
            message: format!("{url:?} is not a valid URL: {e}"),
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("daena-trace-agent/", env!("CARGO_PKG_VERSION"))),
        );
        for (key, value) in config.request_headers() {
            let header_error = |reason: &str| BuildError::Header {
                exporter: name.to_owned(),
                name: key.clone(),
                reason: reason.to_owned(),
            };
            let parsed_key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| header_error("not a valid HTTP header name"))?;
            let mut parsed_value = HeaderValue::from_str(&value)
                .map_err(|_| header_error("the value holds characters a header cannot carry"))?;
            parsed_value.set_sensitive(true);
            headers.insert(parsed_key, parsed_value);
        }
        let gzip = config.compression == Compression::Gzip;
        if gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let connector =
            connector(&config.tls, HttpVersions::Any).map_err(|message| BuildError::Tls {
                exporter: name.to_owned(),
                message,
            })?;
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
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
    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let body = if self.gzip {
            gzip(&payload.encoded())
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

/// The URL with any `user:password@` replaced, so it can be logged.
fn without_credentials(uri: &Uri) -> String {
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            uri.to_string()
                .replacen(authority.as_str(), &format!("***@{host}"), 1)
        }
        _ => uri.to_string(),
    }
}

fn gzip(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    Bytes::from(encoder.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_not_shown() {
        let uri: Uri = "https://user:s3cret@otlp.example.net/otlp/v1/traces"
            .parse()
            .expect("uri");
        assert_eq!(
            without_credentials(&uri),
            "https://***@otlp.example.net/otlp/v1/traces"
        );
        let plain: Uri = "http://tempo:4318/v1/traces".parse().expect("uri");
        assert_eq!(without_credentials(&plain), "http://tempo:4318/v1/traces");
    }
}

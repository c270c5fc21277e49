//! OTLP/gRPC exporter: sends the already-encoded batch to `TraceService/Export`.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

use super::retry::classify_grpc;
use super::tls::{HttpVersions, connector};
use super::{BuildError, Delivered, ExportError, Exporter, Payload};
use crate::config::{Compression, ExporterConfig};
use crate::otlp::ExportTraceServiceResponse;
use crate::otlp::TRACE_EXPORT_PATH;
use crate::otlp::grpc_codec::OtlpCodec;

/// Exports to an OTLP/gRPC backend (Jaeger, Tempo, a Collector).
pub struct OtlpGrpcExporter {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
}

impl OtlpGrpcExporter {
    /// Builds the exporter `name`; connects lazily, so a backend that is down at start-up is retried.
    pub fn new(name: &str, config: &ExporterConfig) -> Result<Self, BuildError> {
        let url = config.export_url().unwrap_or_default();
        let endpoint_error = |message: String| BuildError::Endpoint {
            exporter: name.to_owned(),
            message,
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| endpoint_error(format!("{url:?} is not a valid URL: {e}")))?
            .user_agent(concat!("daena-trace-agent/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| endpoint_error(e.to_string()))?
            .connect_timeout(config.timeout.min(Duration::from_secs(10)));
        let connector =
            connector(&config.tls, HttpVersions::Http2).map_err(|message| BuildError::Tls {
                exporter: name.to_owned(),
                message,
            })?;
        let mut client = Grpc::new(endpoint.connect_with_connector_lazy(connector))
            .accept_compressed(CompressionEncoding::Gzip);
        if config.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let mut metadata = MetadataMap::new();
        for (key, value) in config.request_headers() {
            let header_error = |reason: String| BuildError::Header {
                exporter: name.to_owned(),
                name: key.clone(),
                reason,
            };
            let parsed_key = MetadataKey::from_bytes(key.as_bytes())
                .map_err(|_| header_error("not a valid gRPC metadata name".into()))?;
            let parsed_value = MetadataValue::try_from(value.as_str()).map_err(|_| {
                header_error("the value holds characters a header cannot carry".into())
            })?;
            metadata.insert(parsed_key, parsed_value);
        }
        Ok(Self {
            client,
            metadata,
            timeout: config.timeout,
        })
    }
}

impl Exporter for OtlpGrpcExporter {
    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let mut client = self.client.clone();
        client.ready().await.map_err(|e| ExportError::Retryable {
            message: format!("cannot connect: {e}"),
            retry_after: None,
        })?;
        let mut request = tonic::Request::new(payload.encoded());
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(self.timeout);
        let call = client.unary(
            request,
            PathAndQuery::from_static(TRACE_EXPORT_PATH),
            OtlpCodec::<Bytes, ExportTraceServiceResponse>::default(),
        );
        // The deadline also bounds connecting, which the request timeout does not cover.
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ExportError::Retryable {
                message: format!("no answer within the {:?} timeout", self.timeout),
                retry_after: None,
            })?;
        match answer {
            Ok(response) => {
                let partial = response.into_inner().partial_success.unwrap_or_default();
                Ok(Delivered {
                    rejected_spans: partial.rejected_spans.max(0) as u64,
                    message: partial.error_message,
                })
            }
            Err(status) => {
                let retry_info = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay);
                Err(classify_grpc(
                    status.code(),
                    retry_info,
                    format!("backend answered {:?}: {}", status.code(), status.message()),
                ))
            }
        }
    }
}

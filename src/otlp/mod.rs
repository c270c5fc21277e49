//! The OTLP seam: the only module that names the generated OpenTelemetry protobuf types.
//!
//! Everything else in the crate imports OTLP types from here, so a change of the
//! generated crate (or a move to our own generated code) touches one file.

pub mod json;

use bytes::Bytes;
use prost::Message;

use crate::log_limit::{LogLimit, REPEAT_INTERVAL};

pub use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
pub use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data as MetricData,
    number_data_point::Value as NumberValue,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link, span::SpanKind,
    status::StatusCode,
};

pub mod edit;
pub mod grpc_codec;
pub mod partition;
pub mod view;
pub mod wire;

/// The package and service path of the OTLP trace service, shared by the receiver and the exporter.
pub const TRACE_SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC path of `TraceService/Export`.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The package and service path of the OTLP metrics service (the Daena signals' export).
pub const METRICS_SERVICE_NAME: &str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
/// The gRPC path of `MetricsService/Export`.
pub const METRICS_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// A body the scan accepted that fails to decode would do so for every request of its kind.
static UNDECODABLE_LOG: LogLimit = LogLimit::new(REPEAT_INTERVAL);

/// The unit that flows through the pipeline: whole OTLP `ResourceSpans`, never re-modelled.
///
/// Spans a receiver took in protobuf stay encoded, exactly as they came, until a stage
/// asks for them with [`resource_spans_mut`](Self::resource_spans_mut): forwarding then
/// costs no decode and no encode, because an export request is nothing but its
/// `resource_spans` fields and such requests concatenate.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpanBatch {
    /// Encoded `resource_spans` fields (request bodies that passed [`wire::scan_request`]),
    /// with their span counts.
    encoded: Vec<(Bytes, usize)>,
    /// Decoded resource spans.
    decoded: Vec<ResourceSpans>,
    /// Spans of encoded parts that failed to decode, until [`take_undecodable`](Self::take_undecodable) counts them.
    undecodable: usize,
}

impl SpanBatch {
    /// A batch of decoded resource spans.
    pub fn new(resource_spans: Vec<ResourceSpans>) -> Self {
        Self {
            encoded: Vec::new(),
            decoded: resource_spans,
            undecodable: 0,
        }
    }

    /// Takes the resource spans out of a decoded export request.
    pub fn from_request(request: ExportTraceServiceRequest) -> Self {
        Self::new(request.resource_spans)
    }

    /// A batch holding an encoded request body that [`wire::scan_request`] accepted with `spans` spans.
    pub fn from_encoded(body: Bytes, spans: usize) -> Self {
        Self {
            encoded: vec![(body, spans)],
            decoded: Vec::new(),
            undecodable: 0,
        }
    }

    /// The spans, decoded if they were still encoded; for stages that read or change them.
    ///
    /// An encoded part that fails to decode is lost here, after its client was told it is
    /// accepted: its spans are kept in the count [`take_undecodable`](Self::take_undecodable)
    /// hands to the metrics. Only bodies [`wire::scan_request`] accepted are encoded parts,
    /// and the scan accepts exactly what prost decodes (its differential tests), so that
    /// count stays 0; it is there so a disagreement shows instead of losing spans silently.
    pub fn resource_spans_mut(&mut self) -> &mut Vec<ResourceSpans> {
        for (body, spans) in std::mem::take(&mut self.encoded) {
            match ExportTraceServiceRequest::decode(body) {
                Ok(request) => self.decoded.extend(request.resource_spans),
                Err(e) => {
                    self.undecodable += spans;
                    if let Some(suppressed) = UNDECODABLE_LOG.check() {
                        tracing::error!(error = %e, spans, suppressed, "A request the wire scan accepted failed to decode; its spans are lost (counted as dropped, reason undecodable; suppressed: such requests not logged since the previous line)");
                    }
                }
            }
        }
        &mut self.decoded
    }

    /// Spans lost because their encoded part failed to decode since the last call, for the
    /// caller to count as dropped.
    pub fn take_undecodable(&mut self) -> usize {
        std::mem::take(&mut self.undecodable)
    }

    /// Wraps the batch into an export request, decoding what is still encoded.
    pub fn into_request(mut self) -> ExportTraceServiceRequest {
        self.resource_spans_mut();
        ExportTraceServiceRequest {
            resource_spans: self.decoded,
        }
    }

    /// Splits the batch into its encoded parts (with span counts) and its decoded resource spans.
    pub fn into_parts(self) -> (Vec<(Bytes, usize)>, Vec<ResourceSpans>) {
        (self.encoded, self.decoded)
    }

    /// Encodes the decoded spans into one encoded part. After the stages have run, a batch
    /// waits in the queues in its compact wire form (a fraction of the decoded size) and is
    /// never encoded again.
    pub fn encode_decoded(&mut self) {
        if self.decoded.is_empty() {
            return;
        }
        let spans = span_count(&self.decoded);
        let mut out = Vec::with_capacity(prost::encoding::message::encoded_len_repeated(
            1,
            &self.decoded,
        ));
        for rs in std::mem::take(&mut self.decoded) {
            prost::encoding::message::encode(1, &rs, &mut out);
        }
        self.encoded.push((Bytes::from(out), spans));
    }

    /// Moves `other`'s parts, and its count of undecodable spans, into this batch.
    pub fn append(&mut self, mut other: SpanBatch) {
        self.encoded.append(&mut other.encoded);
        self.decoded.append(&mut other.decoded);
        self.undecodable += other.undecodable;
    }

    /// Adds an encoded part.
    pub fn push_encoded(&mut self, body: Bytes, spans: usize) {
        self.encoded.push((body, spans));
    }

    /// The encoded parts with their span counts, for stages that work on the wire form
    /// ([`view`]); a part a stage rewrites must keep its count right.
    pub fn encoded_mut(&mut self) -> &mut Vec<(Bytes, usize)> {
        &mut self.encoded
    }

    /// The decoded resource spans, to append to.
    pub fn decoded_mut(&mut self) -> &mut Vec<ResourceSpans> {
        &mut self.decoded
    }

    /// Number of spans in the batch.
    pub fn span_count(&self) -> usize {
        self.encoded.iter().map(|(_, n)| n).sum::<usize>() + span_count(&self.decoded)
    }

    /// Whether the batch holds no span at all.
    pub fn is_empty(&self) -> bool {
        self.span_count() == 0
    }

    /// The batch encoded as an `ExportTraceServiceRequest`, appended to `out`.
    pub fn encode_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        for (body, _) in &self.encoded {
            out.extend_from_slice(body);
        }
        for rs in &self.decoded {
            prost::encoding::message::encode(1, rs, out);
        }
    }

    /// Length of [`encode_to`](Self::encode_to)'s output.
    pub fn encoded_len(&self) -> usize {
        self.encoded.iter().map(|(b, _)| b.len()).sum::<usize>()
            + prost::encoding::message::encoded_len_repeated(1, &self.decoded)
    }
}

/// Number of spans in a list of resource spans.
pub fn span_count(resource_spans: &[ResourceSpans]) -> usize {
    resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// The body of an OTLP/HTTP error answer: a `google.rpc.Status` (only the fields OTLP uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`; OTLP clients do not act on it, but it helps a reader.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What was wrong and what to do.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// An attribute `key = value`.
pub fn key_value(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The names of a request's spans, in order, for tests.
#[cfg(test)]
pub(crate) fn span_names(request: &ExportTraceServiceRequest) -> Vec<String> {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name.clone())
        .collect()
}

/// A request of one resource and one scope holding spans named `names`, for tests.
#[cfg(test)]
pub(crate) fn request_named(names: &[&str]) -> ExportTraceServiceRequest {
    request_of(
        names
            .iter()
            .map(|name| Span {
                name: (*name).into(),
                ..Default::default()
            })
            .collect(),
    )
}

/// A request of one resource and one scope holding `spans`, for tests.
#[cfg(test)]
pub(crate) fn request_of(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

//! The OTLP seam: the only module that names the generated OpenTelemetry protobuf types.
//!
//! Everything else in the crate imports OTLP types from here, so a change of the
//! generated crate (or a move to our own generated code) touches one file.

pub mod json;

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
pub use opentelemetry_proto::tonic::resource::v1::Resource;
pub use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link, status::StatusCode,
};

pub mod grpc_codec;
pub mod wire;

/// The package and service path of the OTLP trace service, shared by the receiver and the exporter.
pub const TRACE_SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC path of `TraceService/Export`.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The unit that flows through the pipeline: whole OTLP `ResourceSpans`, never re-modelled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SpanBatch {
    /// The spans, grouped by resource and scope exactly as OTLP groups them.
    pub resource_spans: Vec<ResourceSpans>,
}

impl SpanBatch {
    /// Takes the resource spans out of a decoded export request.
    pub fn from_request(request: ExportTraceServiceRequest) -> Self {
        Self {
            resource_spans: request.resource_spans,
        }
    }

    /// Wraps the batch into an export request for an exporter.
    pub fn into_request(self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self.resource_spans,
        }
    }

    /// Number of spans in the batch.
    pub fn span_count(&self) -> usize {
        span_count(&self.resource_spans)
    }

    /// Whether the batch holds no span at all.
    pub fn is_empty(&self) -> bool {
        self.span_count() == 0
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

//! Test data and small clients: what a Daena service would send, over plain HTTP or
//! OTLP/gRPC, each call bounded in time.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use daena_trace_agent::otlp::grpc_codec::OtlpCodec;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, TRACE_EXPORT_PATH, Value,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use super::WAIT;
use super::agent::TestAgent;

/// The deadline of one gRPC export call made by a test: long enough for any answer the
/// agent owes (a persistent queue answers after its disk write), short enough that an
/// agent that never answers fails the test instead of hanging it.
pub const GRPC_DEADLINE: Duration = Duration::from_secs(10);

/// Every span of the requests with its resource, in order.
pub fn flatten<'a>(
    requests: impl IntoIterator<Item = &'a ExportTraceServiceRequest>,
) -> Vec<(Option<Resource>, Span)> {
    requests
        .into_iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans.iter().flat_map(move |ss| {
                ss.spans
                    .iter()
                    .map(move |s| (rs.resource.clone(), s.clone()))
            })
        })
        .collect()
}

/// An attribute `key = value`.
pub fn kv(key: &str, value: Value) -> KeyValue {
    daena_trace_agent::otlp::key_value(key, value)
}

/// A Daena-shaped request: `n` spans of one council trace from service `daena-backend`.
pub fn council_request(n: usize, seed: u8) -> ExportTraceServiceRequest {
    let trace_id = vec![seed; 16];
    let spans = (0..n)
        .map(|i| Span {
            trace_id: trace_id.clone(),
            span_id: vec![seed, i as u8 + 1, 0, 0, 0, 0, 0, 1],
            parent_span_id: if i == 0 {
                Vec::new()
            } else {
                vec![seed, 1, 0, 0, 0, 0, 0, 1]
            },
            name: if i == 0 {
                "council.round".into()
            } else {
                "council.phase".into()
            },
            kind: 1,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_500_000_000 + i as u64,
            attributes: vec![
                kv(
                    "council.phase",
                    Value::StringValue(["scout", "debate", "commit"][i % 3].into()),
                ),
                kv(
                    "council.round_id",
                    Value::StringValue(format!("round-{seed}")),
                ),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    Value::StringValue("daena-backend".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A plain HTTP request over loopback (bounded by [`WAIT`]); returns status, headers and body.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = tokio::time::timeout(
        WAIT,
        client.request(builder.body(Full::new(Bytes::from(body))).expect("request")),
    )
    .await
    .expect("answer in time")
    .expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// One resource's `spans` in one scope, as an export request.
pub fn request_with_resource(resource: Resource, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs `body` gzipped as `content_type` to `url`; returns the status and the answer as text.
pub async fn post_gzipped(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let headers = [("content-type", content_type), ("content-encoding", "gzip")];
    let (status, _, answer) = http_request("POST", url, &headers, gzip(body)).await;
    (status, String::from_utf8_lossy(&answer).into_owned())
}

/// POSTs a protobuf export request to the agent's OTLP/HTTP receiver.
pub async fn post_protobuf(
    agent: &TestAgent,
    request: &ExportTraceServiceRequest,
) -> (u16, http::HeaderMap, Vec<u8>) {
    http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        request.encode_to_vec(),
    )
    .await
}

/// Sends an export request over OTLP/gRPC on a new connection, within [`GRPC_DEADLINE`];
/// see [`grpc_export_bytes`].
pub async fn grpc_export(
    url: String,
    request: ExportTraceServiceRequest,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    grpc_export_bytes(url, Bytes::from(request.encode_to_vec()), gzip).await
}

/// One OTLP/gRPC export call of `request` (its message gzipped on the wire if `gzip`) on
/// `channel`, without a deadline of its own: callers bound it.
pub async fn grpc_unary(
    channel: tonic::transport::Channel,
    request: tonic::Request<Bytes>,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    if gzip {
        client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
            OtlpCodec::<Bytes, ExportTraceServiceResponse>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `body` as it is as the message of an OTLP/gRPC export call (gzipped on the wire
/// if `gzip`) on a new connection, within [`GRPC_DEADLINE`]: an agent that cannot be
/// reached is `UNAVAILABLE`, one that does not answer in time `DEADLINE_EXCEEDED` or
/// `CANCELLED`. The deadline goes to the agent as `grpc-timeout`, the client's channel
/// enforces it, and an outer timeout covers connecting and anything that ignores both,
/// so a deadlocked agent fails a test instead of hanging it.
pub async fn grpc_export_bytes(
    url: String,
    body: Bytes,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| tonic::Status::invalid_argument(format!("bad url: {e}")))?
            .connect_timeout(GRPC_DEADLINE)
            .timeout(GRPC_DEADLINE)
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
        let mut request = tonic::Request::new(body);
        request.set_timeout(GRPC_DEADLINE);
        grpc_unary(channel, request, gzip).await
    };
    tokio::time::timeout(GRPC_DEADLINE + Duration::from_secs(1), call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {GRPC_DEADLINE:?}"
            )))
        })
}

/// `data` gzipped at the default level, as an SDK sends it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `data` gunzipped; panics on anything that is not gzip.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

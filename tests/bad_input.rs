//! Every kind of bad input gets a clear answer, is counted, and never takes the agent down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::RpcStatus;
use prost::Message;

async fn agent_with_grpc_sink(extra: &str) -> (TestAgent, Sink) {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    (TestAgent::start(&agent_yaml(&exporters, extra)).await, sink)
}

fn status_message(body: &[u8]) -> String {
    RpcStatus::decode(body)
        .expect("error body is a google.rpc.Status")
        .message
}

#[tokio::test]
async fn undecodable_protobuf_is_400_naming_the_problem() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    let (status, headers, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        vec![0x0a, 0xff, 0xff, 0x01],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    let message = status_message(&body);
    assert!(
        message.contains("not a valid OTLP protobuf ExportTraceServiceRequest"),
        "{message}"
    );
    assert_eq!(
        agent
            .counter("daena_agent_requests_refused_total{protocol=\"http\",reason=\"undecodable\"}")
            .await,
        1
    );
    agent.stop().await;
}

#[tokio::test]
async fn bad_json_is_400_with_a_json_status_naming_the_field() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"q83vEjRWeJA=","spanId":"0102030405060708","name":"x"}]}]}]}"#;
    let (status, headers, answer) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/json")],
        body.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&answer).expect("JSON error body");
    let message = json["message"].as_str().expect("message");
    assert!(message.contains("traceId"), "{message}");
    assert!(message.contains("hex"), "{message}");

    let (status, _, answer) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/json")],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&answer).contains("not valid JSON"));
    agent.stop().await;
}

#[tokio::test]
async fn unsupported_content_type_and_encoding_are_415() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "text/plain")],
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("text/plain")
            && text.contains("application/x-protobuf")
            && text.contains("application/json"),
        "{text}"
    );

    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "br"),
        ],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, 415);
    assert!(status_message(&body).contains("\"br\""));
    assert_eq!(agent.counter("daena_agent_requests_refused_total{protocol=\"http\",reason=\"unsupported_media_type\"}").await, 2);
    agent.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    let base = format!("http://{}", agent.http.expect("http"));
    let (status, _, body) = http_request(
        "POST",
        &format!("{base}/v1/metrics"),
        &[("content-type", "application/x-protobuf")],
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("/v1/metrics is not served here"));
    let (status, headers, body) = http_request("GET", &agent.http_url(), &[], vec![]).await;
    assert_eq!(status, 405);
    assert!(String::from_utf8_lossy(&body).contains("only POST"));
    assert_eq!(headers["allow"], "POST");
    agent.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_on_the_wire_and_after_gunzip() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    // Reconfigure: 64 KiB limit on both receivers.
    agent.stop().await;
    let sink = Sink::grpc().await;
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0, max_request_size: 64KiB }}\n    http: {{ endpoint: 127.0.0.1:0, max_request_size: 64KiB }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let agent = TestAgent::start(&yaml).await;

    let big = vec![0u8; 100 * 1024];
    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        big.clone(),
    )
    .await;
    assert_eq!(status, 413);
    assert!(status_message(&body).contains("max_request_size"));

    // A gzip bomb: 10 MiB of zeros compress to about 10 KiB, under the wire limit.
    let bomb = gzip(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 64 * 1024);
    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        bomb.clone(),
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        status_message(&body)
            .contains("decompressed body is larger than the receiver's limit of 65536 bytes")
    );

    let status = grpc_export_bytes(agent.grpc_url(), big.into(), false)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_request_size"),
        "{}",
        status.message()
    );
    assert_eq!(
        agent
            .counter("daena_agent_requests_refused_total{protocol=\"http\",reason=\"too_large\"}")
            .await,
        2
    );
    assert_eq!(
        agent
            .counter("daena_agent_requests_refused_total{protocol=\"grpc\",reason=\"too_large\"}")
            .await,
        1
    );
    // The agent is still serving.
    assert_eq!(post_protobuf(&agent, &council_request(1, 1)).await.0, 200);
    agent.stop().await;
}

#[tokio::test]
async fn grpc_gzip_bomb_is_resource_exhausted() {
    let sink = Sink::grpc().await;
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0, max_request_size: 64KiB }}\ntelemetry: {{ endpoint: null }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let agent = TestAgent::start(&yaml).await;
    // A valid request whose decompressed size is over the limit.
    let mut request = council_request(1, 1);
    request.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(200 * 1024);
    let status = grpc_export(agent.grpc_url(), request, true)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{}", status.message());
    agent.stop().await;
}

#[tokio::test]
async fn undecodable_grpc_is_invalid_argument() {
    let (agent, _sink) = agent_with_grpc_sink("").await;
    let status = grpc_export_bytes(agent.grpc_url(), vec![0x0a, 0xff, 0xff, 0x01].into(), false)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not a valid OTLP protobuf"),
        "{}",
        status.message()
    );
    assert_eq!(
        agent
            .counter("daena_agent_requests_refused_total{protocol=\"grpc\",reason=\"undecodable\"}")
            .await,
        1
    );
    agent.stop().await;
}

/// A length-delimited field (of a number under 16).
fn ld(number: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![number << 3 | 2];
    prost::encoding::encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Issue #12's request: a span attribute of 48 nested arrayValues whose innermost
/// ArrayValue, at depth 100, carries an unknown field, which prost's decoder refuses.
fn nested_past_prosts_limit() -> Vec<u8> {
    let mut any_value = ld(5, &[15 << 3, 1]);
    for _ in 1..48 {
        any_value = ld(5, &ld(1, &any_value));
    }
    let mut span = council_request(1, 1).resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
    span.extend(ld(9, &[ld(1, b"k"), ld(2, &any_value)].concat()));
    ld(1, &ld(2, &ld(2, &span)))
}

#[tokio::test]
async fn a_request_nested_past_the_decoders_limit_is_refused_not_acknowledged() {
    let (agent, sink) = agent_with_grpc_sink("").await;
    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        nested_past_prosts_limit(),
    )
    .await;
    assert_eq!(status, 400);
    let message = status_message(&body);
    assert!(message.contains("recursion limit reached"), "{message}");
    assert!(message.contains("flatten"), "{message}");

    let status = grpc_export_bytes(agent.grpc_url(), nested_past_prosts_limit().into(), false)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("nest more than 100 deep"),
        "{}",
        status.message()
    );

    for protocol in ["http", "grpc"] {
        let series = format!("{{protocol=\"{protocol}\",reason=\"undecodable\"}}");
        assert_eq!(
            agent
                .counter(&format!("daena_agent_requests_refused_total{series}"))
                .await,
            1
        );
        assert_eq!(
            agent
                .counter(&format!(
                    "daena_agent_spans_received_total{{protocol=\"{protocol}\"}}"
                ))
                .await,
            0
        );
    }
    let report = agent.stop().await;
    assert_eq!(report.lost_spans, 0);
    assert!(sink.received().is_empty(), "nothing forwarded");
}

#[tokio::test]
async fn invalid_span_ids_get_partial_success_over_both_protocols() {
    let (agent, sink) = agent_with_grpc_sink("").await;
    let mut request = council_request(3, 2);
    request.resource_spans[0].scope_spans[0].spans[1].trace_id = vec![1; 15];
    let response = grpc_export(agent.grpc_url(), request.clone(), false)
        .await
        .expect("ok");
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("trace_id must be 16 bytes, got 15"),
        "{}",
        partial.error_message
    );

    let json = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
        {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"ok"},
        {"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0000000000000000","name":"zero"}]}]}]}"#;
    let (status, _, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/json")],
        json.to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .expect("message")
            .contains("all zeros")
    );
    assert_eq!(
        sink.wait_for_spans(3).await.len(),
        3,
        "the valid spans are forwarded"
    );
    assert_eq!(
        agent
            .counter("daena_agent_spans_refused_total{protocol=\"grpc\",reason=\"invalid_span\"}")
            .await,
        1
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_full_pipeline_refuses_with_retryable_answers_and_counts() {
    let sink = Sink::grpc().await;
    sink.script(std::iter::repeat_n(Answer::Hang, 10));
    // One batch in flight, one queued, one pending request: the fourth request has nowhere to go.
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    timeout: 1h\n    queue: {{ max_spans: 1, workers: 1 }}\n",
        sink.addr
    );
    let yaml = agent_yaml(
        &exporters,
        "pipeline: { max_pending_requests: 1 }\nshutdown_timeout: 1s\n",
    )
    .replace(
        "batch: { timeout: 50ms }",
        "batch: { timeout: 1ms, max_spans: 1 }",
    );
    let agent = TestAgent::start(&yaml).await;

    let started = Instant::now();
    let mut http_answer = None;
    for seed in 0..50u8 {
        let (status, headers, body) = post_protobuf(&agent, &council_request(1, seed)).await;
        if status != 200 {
            http_answer = Some((status, headers, body));
            break;
        }
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, headers, body) = http_answer.expect("the pipeline filled within 50 requests");
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert!(status_message(&body).contains("pipeline is full"));

    assert_refused_with_retry_info(&agent, council_request(1, 99), tonic::Code::Unavailable).await;
    assert_eq!(
        agent
            .counter("daena_agent_spans_refused_total{protocol=\"http\",reason=\"pipeline_full\"}")
            .await,
        1
    );
    assert_eq!(
        agent
            .counter("daena_agent_spans_refused_total{protocol=\"grpc\",reason=\"pipeline_full\"}")
            .await,
        1
    );
    // The hung backend never answers: shutdown abandons what it holds, and says so.
    let report = agent.stop().await;
    assert!(report.abandoned_spans >= 2, "{report:?}");
}

#[tokio::test]
async fn above_the_soft_memory_limit_clients_are_told_to_retry() {
    // A soft limit below any process's resident set: the limiter trips at start-up. The
    // budget (half of soft) must still hold a whole request, hence the small requests.
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0, max_request_size: 64KiB }}\n    http: {{ endpoint: 127.0.0.1:0, max_request_size: 64KiB }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\nmemory_limit: {{ soft: 2MiB, hard: 3MiB }}\n",
        sink.addr
    ))
    .await;
    let (status, headers, body) = post_protobuf(&agent, &council_request(2, 1)).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "1");
    assert!(
        status_message(&body).contains("above its memory limit"),
        "{}",
        status_message(&body)
    );

    assert_refused_with_retry_info(
        &agent,
        council_request(3, 2),
        tonic::Code::ResourceExhausted,
    )
    .await;
    for (protocol, spans) in [("http", 2), ("grpc", 3)] {
        let series = format!(
            "daena_agent_spans_refused_total{{protocol=\"{protocol}\",reason=\"memory_limit\"}}"
        );
        assert_eq!(agent.counter(&series).await, spans, "{series}");
    }
    assert!(sink.received().is_empty());
    agent.stop().await;
}

/// Sends `request` over gRPC and checks the refusal: `code` with a 1 s `RetryInfo`, which
/// is what makes the SDK wait and send it again.
async fn assert_refused_with_retry_info(
    agent: &TestAgent,
    request: daena_trace_agent::otlp::ExportTraceServiceRequest,
    code: tonic::Code,
) {
    use tonic_types::StatusExt;
    let status = grpc_export(agent.grpc_url(), request, false)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay),
        Some(Duration::from_secs(1)),
        "{code:?} carries RetryInfo"
    );
}

//! OTLP in, OTLP out: spans arrive unchanged over every protocol pair, with the
//! configured headers, auth and compression, and retries follow the backend's word.

mod common;

use std::time::Duration;

use common::*;
use daena_trace_agent::otlp::{
    AnyValue, ArrayValue, Event, ExportTraceServiceRequest, InstrumentationScope, KeyValueList,
    Link, Resource, ResourceSpans, ScopeSpans, Span, Status, Value,
};
use prost::Message;

/// A request that uses every field a span can carry and every attribute value type.
fn every_field_request() -> ExportTraceServiceRequest {
    let all_values = vec![
        kv(
            "council.department",
            Value::StringValue("research ü 日本".into()),
        ),
        kv("llm.cas_hit", Value::BoolValue(true)),
        kv("nbmf.item_count", Value::IntValue(-(1 << 62))),
        kv("llm.cost_usd", Value::DoubleValue(0.012_345_678_901_234_5)),
        kv(
            "llm.prompt_hash",
            Value::BytesValue(vec![0, 1, 2, 254, 255]),
        ),
        kv(
            "message_bus.topics",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::StringValue("council.events".into())),
                    },
                    AnyValue {
                        value: Some(Value::IntValue(7)),
                    },
                ],
            }),
        ),
        kv(
            "llm.usage",
            Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("input_tokens", Value::IntValue(1200)),
                    kv("cached", Value::BoolValue(false)),
                ],
            }),
        ),
        kv(
            "empty.list",
            Value::ArrayValue(ArrayValue { values: vec![] }),
        ),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("daena-backend".into())),
                    kv("service.version", Value::StringValue("2.0.0".into())),
                ],
                dropped_attributes_count: 1,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "backend.utils.tracing".into(),
                    version: "2.0.0".into(),
                    attributes: vec![kv("scope.attr", Value::StringValue("x".into()))],
                    dropped_attributes_count: 0,
                }),
                spans: vec![Span {
                    trace_id: (1..=16).collect(),
                    span_id: (17..=24).collect(),
                    trace_state: "ot=th:8;rv:00112233445566,vendor=x".into(),
                    parent_span_id: (25..=32).collect(),
                    flags: 0x301,
                    name: "council.round".into(),
                    kind: 2,
                    start_time_unix_nano: 1_732_400_000_123_456_789,
                    end_time_unix_nano: 1_732_400_001_987_654_321,
                    attributes: all_values.clone(),
                    dropped_attributes_count: 2,
                    events: vec![Event {
                        time_unix_nano: 1_732_400_000_500_000_000,
                        name: "checkpoint_reached".into(),
                        attributes: vec![kv("items_processed", Value::IntValue(100))],
                        dropped_attributes_count: 3,
                    }],
                    dropped_events_count: 4,
                    links: vec![Link {
                        trace_id: vec![0xee; 16],
                        span_id: vec![0xdd; 8],
                        trace_state: "vendor=y".into(),
                        attributes: all_values,
                        dropped_attributes_count: 5,
                        flags: 0x100,
                    }],
                    dropped_links_count: 6,
                    status: Some(Status {
                        message: "debate timed out".into(),
                        code: 2,
                    }),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
        }],
    }
}

/// A request of two resources, each with two scopes (every resource and scope with its own
/// `schema_url`), whose spans carry events, links and every attribute value type; span ids
/// start at `first`.
fn several_resources_and_scopes(first: u8) -> ExportTraceServiceRequest {
    let template = every_field_request().resource_spans.remove(0);
    let mut next_id = first;
    let resource_spans = ["daena-backend", "daena-council"]
        .iter()
        .enumerate()
        .map(|(r, service)| {
            let mut rs = template.clone();
            rs.schema_url = format!("https://opentelemetry.io/schemas/1.3{r}.0");
            let resource = rs.resource.as_mut().expect("resource");
            resource.attributes[0] = kv("service.name", Value::StringValue((*service).into()));
            let scope_template = rs.scope_spans.remove(0);
            rs.scope_spans = ["backend.utils.tracing", "council.rounds"]
                .iter()
                .enumerate()
                .map(|(s, scope)| {
                    let mut ss = scope_template.clone();
                    ss.schema_url = format!("https://daena.example/schemas/{r}.{s}");
                    ss.scope.as_mut().expect("scope").name = (*scope).into();
                    let span = ss.spans[0].clone();
                    ss.spans = (0..2)
                        .map(|_| {
                            next_id += 1;
                            Span {
                                span_id: vec![next_id; 8],
                                ..span.clone()
                            }
                        })
                        .collect();
                    ss
                })
                .collect();
            rs
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// `request` encoded with an extra field in every span that this version of OTLP does
/// not know (as a newer SDK might send): it survives only if the agent forwards the bytes
/// it received, since prost drops unknown fields, so a decode and re-encode (which gives
/// back the same bytes for anything prost encoded itself) cannot pass for forwarding.
fn encode_with_a_field_from_the_future(request: &ExportTraceServiceRequest) -> Vec<u8> {
    use prost::encoding::{bytes, message, string};
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        let mut rs_bytes = Vec::new();
        if let Some(resource) = &rs.resource {
            message::encode(1, resource, &mut rs_bytes);
        }
        for ss in &rs.scope_spans {
            let mut ss_bytes = Vec::new();
            if let Some(scope) = &ss.scope {
                message::encode(1, scope, &mut ss_bytes);
            }
            for span in &ss.spans {
                let mut span_bytes = span.encode_to_vec();
                // Field 1000, varint 42.
                prost::encoding::encode_key(
                    1000,
                    prost::encoding::WireType::Varint,
                    &mut span_bytes,
                );
                prost::encoding::encode_varint(42, &mut span_bytes);
                bytes::encode(2, &span_bytes, &mut ss_bytes);
            }
            string::encode(3, &ss.schema_url, &mut ss_bytes);
            bytes::encode(2, &ss_bytes, &mut rs_bytes);
        }
        string::encode(3, &rs.schema_url, &mut rs_bytes);
        bytes::encode(1, &rs_bytes, &mut out);
    }
    out
}

#[tokio::test]
async fn processors_off_the_backend_gets_the_bytes_the_client_sent() {
    let (grpc_sink, http_sink) = (Sink::grpc().await, Sink::http().await);
    let exporters = format!(
        "{}{}",
        exporter_yaml("tempo", "grpc", &grpc_sink, "    compression: none\n"),
        exporter_yaml("grafana", "http/protobuf", &http_sink, "")
    );
    // One shard: more would split each request by trace id into a request per shard.
    let extra = format!("{NO_PROCESSORS}pipeline: {{ shards: 1 }}\n");
    let agent = TestAgent::start(&agent_yaml(&exporters, &extra)).await;
    let sinks = [&grpc_sink, &http_sink];
    let ways = [
        ("gRPC", false),
        ("gRPC", true),
        ("HTTP", false),
        ("HTTP", true),
    ];
    for (n, (protocol, gzipped)) in ways.into_iter().enumerate() {
        let request = several_resources_and_scopes(n as u8 * 16);
        let sent = encode_with_a_field_from_the_future(&request);
        let mut headers = vec![("content-type", "application/x-protobuf")];
        if protocol == "gRPC" {
            grpc_export_bytes(agent.grpc_url(), sent.clone().into(), gzipped)
                .await
                .expect("accepted");
        } else {
            let body = if gzipped {
                headers.push(("content-encoding", "gzip"));
                gzip(&sent)
            } else {
                sent.clone()
            };
            let (status, _, _) = http_request("POST", &agent.http_url(), &headers, body).await;
            assert_eq!(status, 200);
        }
        // One request within one batch timeout leaves as one export request.
        for sink in sinks {
            let received = sink.wait_for_requests(n + 1).await;
            assert_eq!(received.len(), n + 1, "one export request per request");
            assert!(
                received[n].body == sent,
                "{protocol} in (gzip: {gzipped}) to the sink at {}: the bytes changed on the way",
                sink.addr
            );
            assert_eq!(received[n].request, request);
        }
    }
    agent.stop().await;
}

fn exporter_yaml(name: &str, protocol: &str, sink: &Sink, extra: &str) -> String {
    format!(
        "  {name}:\n    protocol: {protocol}\n    endpoint: http://{}\n{extra}",
        sink.addr
    )
}

#[tokio::test]
async fn grpc_in_grpc_out_delivers_every_field_unchanged_with_gzip_and_headers() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &exporter_yaml(
            "tempo",
            "grpc",
            &sink,
            "    headers: { x-scope-orgid: daena, authorization: \"Bearer tempo-token\" }\n",
        ),
        NO_PROCESSORS,
    ))
    .await;
    let original = every_field_request();
    let response = grpc_export(agent.grpc_url(), original.clone(), true)
        .await
        .expect("export accepted");
    assert_eq!(response.partial_success, None);

    let received = sink.wait_for_requests(1).await;
    assert_eq!(
        received[0].request, original,
        "the span must arrive bit for bit"
    );
    assert_eq!(
        received[0].request.encode_to_vec(),
        original.encode_to_vec()
    );
    let headers = &received[0].headers;
    assert_eq!(headers["x-scope-orgid"], "daena");
    assert_eq!(headers["authorization"], "Bearer tempo-token");
    assert_eq!(
        headers["grpc-encoding"], "gzip",
        "gzip is the default export compression"
    );
    assert_eq!(
        agent
            .counter("daena_agent_spans_received_total{protocol=\"grpc\"}")
            .await,
        1
    );
    assert_eq!(
        agent
            .wait_for_counter("daena_agent_spans_exported_total{exporter=\"tempo\"}", 1)
            .await,
        1
    );
    agent.stop().await;
}

#[tokio::test]
async fn http_in_http_out_with_basic_auth_and_grafana_cloud_path() {
    let sink = Sink::http().await;
    // Grafana Cloud's OTLP gateway URL ends in /otlp: the agent appends /v1/traces to it.
    let exporter = format!(
        "  grafana:\n    protocol: http/protobuf\n    endpoint: http://{}/otlp\n    auth: {{ basic: {{ username: \"123456\", password: \"glc_secret\" }} }}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporter, NO_PROCESSORS)).await;
    let original = every_field_request();
    let (status, headers, body) = http_request(
        "POST",
        &agent.http_url(),
        &[
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        gzip(&original.encode_to_vec()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert!(daena_trace_agent::otlp::ExportTraceServiceResponse::decode(&body[..]).is_ok());

    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].request, original);
    // base64("123456:glc_secret")
    assert_eq!(
        received[0].headers["authorization"],
        "Basic MTIzNDU2OmdsY19zZWNyZXQ="
    );
    assert_eq!(received[0].headers["content-encoding"], "gzip");
    assert_eq!(
        received[0].headers["content-type"],
        "application/x-protobuf"
    );
    agent.stop().await;
}

#[tokio::test]
async fn json_in_is_forwarded_as_the_same_spans() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &exporter_yaml("jaeger", "grpc", &sink, "    compression: none\n"),
        NO_PROCESSORS,
    ))
    .await;
    let original = every_field_request();
    let json = daena_trace_agent::otlp::json::encode_request(&original);
    let (status, headers, body) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/json")],
        json,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, b"{}");
    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].request, original);
    assert!(
        received[0].headers.get("grpc-encoding").is_none(),
        "compression: none sends plain"
    );
    agent.stop().await;
}

#[tokio::test]
async fn two_exporters_each_get_every_span() {
    let (grpc_sink, http_sink) = (Sink::grpc().await, Sink::http().await);
    let exporters = format!(
        "{}{}",
        exporter_yaml("tempo", "grpc", &grpc_sink, ""),
        exporter_yaml("backup", "http/protobuf", &http_sink, "")
    );
    let agent = TestAgent::start(&agent_yaml(&exporters, "")).await;
    for seed in 1..=3 {
        assert_eq!(
            post_protobuf(&agent, &council_request(4, seed)).await.0,
            200
        );
    }
    assert_eq!(grpc_sink.wait_for_spans(12).await.len(), 12);
    assert_eq!(http_sink.wait_for_spans(12).await.len(), 12);
    agent.stop().await;
}

#[tokio::test]
async fn small_requests_are_batched_up_to_max_spans() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &exporter_yaml("tempo", "grpc", &sink, ""),
        "pipeline: { max_pending_requests: 64 }\n",
    ))
    .await;
    // Ten requests of 3 spans sent at once leave in fewer, larger batches.
    let url = agent.grpc_url();
    for seed in 1..=10 {
        grpc_export(url.clone(), council_request(3, seed), false)
            .await
            .expect("accepted");
    }
    let spans = sink.wait_for_spans(30).await;
    assert_eq!(spans.len(), 30);
    assert!(
        sink.received().len() < 10,
        "{} export calls for 10 requests",
        sink.received().len()
    );
    agent.stop().await;
}

#[tokio::test]
async fn http_429_and_503_with_retry_after_are_retried_after_the_delay() {
    let sink = Sink::http().await;
    sink.script([
        Answer::Http(429, Some(2), "rate limited"),
        Answer::Http(503, Some(2), "tempo is restarting"),
    ]);
    let agent = TestAgent::start(&agent_yaml(
        &exporter_yaml("tempo", "http/protobuf", &sink, ""),
        "",
    ))
    .await;
    assert_eq!(post_protobuf(&agent, &council_request(2, 9)).await.0, 200);
    let received = sink.wait_for_requests(3).await;
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        eprintln!("retried after {gap:?}; Retry-After said 2s");
        assert!(
            gap >= Duration::from_millis(1950),
            "retried after {gap:?}, Retry-After said 2s"
        );
        assert_eq!(pair[1].request, pair[0].request);
    }
    assert_eq!(
        agent
            .counter("daena_agent_export_failures_total{exporter=\"tempo\",kind=\"retried\"}")
            .await,
        2
    );
    assert_eq!(
        agent
            .wait_for_counter("daena_agent_spans_exported_total{exporter=\"tempo\"}", 2)
            .await,
        2
    );
    agent.stop().await;
}

#[tokio::test]
async fn grpc_resource_exhausted_with_retry_info_is_retried_after_the_delay() {
    let sink = Sink::grpc().await;
    sink.script([Answer::Grpc(
        tonic::Code::ResourceExhausted,
        Some(Duration::from_secs(1)),
        "rate limited",
    )]);
    let agent = TestAgent::start(&agent_yaml(&exporter_yaml("tempo", "grpc", &sink, ""), "")).await;
    grpc_export(agent.grpc_url(), council_request(2, 3), false)
        .await
        .expect("accepted");
    let received = sink.wait_for_requests(2).await;
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, RetryInfo said 1s"
    );
    agent.stop().await;
}

#[tokio::test]
async fn http_400_is_dropped_counted_and_never_retried() {
    let sink = Sink::http().await;
    sink.script([Answer::Http(400, None, "span too old")]);
    let agent = TestAgent::start(&agent_yaml(
        &exporter_yaml("tempo", "http/protobuf", &sink, ""),
        "",
    ))
    .await;
    assert_eq!(post_protobuf(&agent, &council_request(3, 4)).await.0, 200);
    sink.wait_for_requests(1).await;
    let dropped = "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"rejected\"}";
    assert_eq!(
        agent.wait_for_counter(dropped, 3).await,
        3,
        "the drop is counted"
    );
    // A retry would come after about a second of backoff; give it two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.received().len(), 1, "a 400 must not be retried");
    agent.stop().await;
}

#[tokio::test]
async fn partial_success_from_the_backend_is_counted() {
    let sink = Sink::grpc().await;
    sink.script([Answer::Partial(2, "2 spans too large")]);
    let agent = TestAgent::start(&agent_yaml(&exporter_yaml("tempo", "grpc", &sink, ""), "")).await;
    grpc_export(agent.grpc_url(), council_request(5, 6), false)
        .await
        .expect("accepted");
    sink.wait_for_requests(1).await;
    let rejected =
        "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"partially_rejected\"}";
    assert_eq!(agent.wait_for_counter(rejected, 2).await, 2);
    assert_eq!(
        agent
            .counter("daena_agent_spans_exported_total{exporter=\"tempo\"}")
            .await,
        3
    );
    agent.stop().await;
}

#[tokio::test]
async fn stopping_flushes_what_is_batched() {
    let sink = Sink::grpc().await;
    // A batch timeout far longer than the test: only shutdown can flush these spans.
    let yaml = agent_yaml(&exporter_yaml("tempo", "grpc", &sink, ""), "")
        .replace("batch: { timeout: 50ms }", "batch: { timeout: 1h }");
    let agent = TestAgent::start(&yaml).await;
    grpc_export(agent.grpc_url(), council_request(7, 8), false)
        .await
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        sink.received().is_empty(),
        "nothing leaves before the batch is full or timed out"
    );
    let report = agent.stop().await;
    assert_eq!(report.abandoned_spans, 0);
    assert_eq!(
        sink.spans().len(),
        7,
        "shutdown must deliver the batched spans"
    );
}

#[tokio::test]
async fn with_drop_oldest_a_hung_backend_never_holds_back_the_others() {
    let hung = Sink::grpc().await;
    hung.script(std::iter::repeat_n(Answer::Hang, 20));
    let healthy = Sink::grpc().await;
    let exporters = format!(
        "{}    timeout: 1h\n    queue: {{ max_spans: 1, workers: 1, on_full: drop_oldest }}\n{}",
        exporter_yaml("hung", "grpc", &hung, ""),
        exporter_yaml("healthy", "grpc", &healthy, "")
    );
    let yaml = agent_yaml(&exporters, "shutdown_timeout: 1s\n").replace(
        "batch: { timeout: 50ms }",
        "batch: { timeout: 1ms, max_spans: 1 }",
    );
    let agent = TestAgent::start(&yaml).await;
    for seed in 1..=10u8 {
        grpc_export(agent.grpc_url(), council_request(1, seed), false)
            .await
            .expect("accepted");
    }
    assert_eq!(healthy.wait_for_spans(10).await.len(), 10);
    // One batch hangs in flight and one waits in the queue (the worker takes the next
    // only when it has room for it); the other eight made room for newer ones.
    let dropped = agent
        .wait_for_counter(
            "daena_agent_spans_dropped_total{stage=\"exporter/hung\",reason=\"queue_full\"}",
            8,
        )
        .await;
    assert_eq!(dropped, 8);
    agent.stop().await;
}

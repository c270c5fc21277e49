//! Memory stays bounded under any input: requests that would decode to far more than
//! they weigh are refused before decoding, bodies still arriving hold the memory budget,
//! and a well-behaved client is served throughout and after.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An agent forwarding to `sink`, its receivers as given, then `extra` (whole sections).
fn yaml(sink: &Sink, receivers: &str, extra: &str) -> String {
    format!(
        "receivers:\n  otlp:\n{receivers}telemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ timeout: 50ms }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n{extra}",
        sink.addr
    )
}

/// Held by the tests that load an agent process with heavy requests, one at a time: on a
/// small machine two of them at once make each other's clients miss their deadlines, and
/// each measures its own agent's peak memory.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Both receivers with their defaults.
const BOTH: &str = "    grpc: { endpoint: 127.0.0.1:0 }\n    http: { endpoint: 127.0.0.1:0 }\n";

fn refused(protocol: &str, reason: &str) -> String {
    format!("daena_agent_spans_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}")
}

/// `spans` empty spans in one request: two bytes each on the wire, hundreds decoded.
fn empty_spans_protobuf(spans: usize) -> Vec<u8> {
    fn ld(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }
    ld(1, &ld(2, &[0x12, 0x00].repeat(spans)))
}

/// `spans` spans written `{}` in one OTLP/JSON request.
fn empty_spans_json(spans: usize) -> Vec<u8> {
    let mut body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    body.extend(b"{},".repeat(spans));
    body.pop();
    body.extend(br#"]}]}]}"#);
    body
}

#[tokio::test]
async fn amplifying_requests_are_refused_before_decoding_within_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    let sink = Sink::grpc().await;
    let mut agent = AgentProcess::with_config(&yaml(&sink, BOTH, ""), "info", &[]);
    let (grpc, http) = (agent.addr("OTLP/gRPC"), agent.addr("OTLP/HTTP"));
    let idle_mib = agent.status_kib("VmRSS").expect("VmRSS") / 1024.0;

    // Each about 8 KB of gzip, under max_request_size once gunzipped, and four at once.
    let protobuf = empty_spans_protobuf(4_000_000);
    let json = empty_spans_json(2_500_000);
    assert!(gzip(&protobuf).len() < 64 << 10 && gzip(&json).len() < 64 << 10);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        for (content_type, body) in [
            ("application/x-protobuf", protobuf.clone()),
            ("application/json", json.clone()),
        ] {
            let url = format!("http://{http}/v1/traces");
            calls.spawn(async move {
                let (status, answer) = post_gzipped(&url, content_type, &body).await;
                (status.to_string(), answer)
            });
        }
        let url = format!("http://{grpc}");
        let body = Bytes::from(empty_spans_protobuf(4_000_000));
        calls.spawn(async move {
            let status = grpc_export_bytes(url, body, true)
                .await
                .expect_err("refused");
            (format!("{:?}", status.code()), status.message().to_owned())
        });
    }
    let answers = calls.join_all().await;
    for (status, message) in &answers {
        assert!(
            status == "413" || status == "ResourceExhausted",
            "{status}: {message}"
        );
        assert!(
            message.contains("more than receivers.otlp.")
                && message.contains("max_spans_per_request (100000)"),
            "the answer names the limit: {message}"
        );
    }
    assert_eq!(
        agent.counter(&refused("http", "request_limit")).await,
        4 * (4_000_000 + 2_500_000)
    );
    assert_eq!(
        agent.counter(&refused("grpc", "request_limit")).await,
        4 * 4_000_000
    );

    // A well-behaved client is served, and nothing of the refused requests arrives.
    grpc_export(format!("http://{grpc}"), council_request(5, 1), false)
        .await
        .expect("a normal request is accepted");
    assert_eq!(sink.wait_for_spans(5).await.len(), 5);
    let peak_mib = agent.peak_rss_mib();
    println!(
        "12 amplifying requests (4M/2.5M spans each) refused; RSS idle {idle_mib:.0} MiB, peak {peak_mib:.0} MiB"
    );
    // Decoded, one of them alone would take over 1 GiB (the issue measured 1,078 MiB).
    assert!(
        peak_mib < 256.0,
        "peak RSS {peak_mib:.0} MiB must stay under memory_limit.soft"
    );
    assert_eq!(agent.terminate(), 0);
}

#[tokio::test]
async fn bodies_being_received_hold_the_budget_until_they_end() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&yaml(
        &sink,
        "    http: { endpoint: 127.0.0.1:0, max_request_size: 512KiB, max_decoded_size: 256KiB }\n",
        "memory_limit: { budget: 1MiB }\n",
    ))
    .await;
    let addr = agent.http.expect("http receiver");
    let used = "daena_agent_memory_budget_used_bytes";
    assert_eq!(
        agent.counter("daena_agent_memory_budget_bytes").await,
        1 << 20
    );

    // Two bodies, each one byte short of its declared 512 KiB: together, all the budget
    // but two bytes, held while the agent waits for the rest.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST /v1/traces HTTP/1.1\r\nhost: agent\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            512 << 10
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stream
            .write_all(&vec![0; (512 << 10) - 1])
            .await
            .expect("write");
        stalled.push(stream);
    }
    let held = agent.wait_for_counter(used, (1 << 20) - 2).await;
    assert_eq!(held, (1 << 20) - 2, "every byte received is reserved");

    let request = council_request(3, 7);
    let (status, headers, _) = post_protobuf(&agent, &request).await;
    assert_eq!(status, 429, "the budget is taken: retry later");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        agent
            .counter(
                "daena_agent_requests_refused_total{protocol=\"http\",reason=\"memory_budget\"}"
            )
            .await,
        1
    );

    // One sender gives up: its body's share comes back and the client is served.
    drop(stalled.remove(0));
    let started = Instant::now();
    while agent.counter(used).await > 512 << 10 {
        assert!(
            started.elapsed() < WAIT,
            "the closed body's share came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = post_protobuf(&agent, &request).await;
    assert_eq!(status, 200);
    let delivered = sink.wait_for_spans(3).await;
    assert_eq!(delivered.len(), 3);
    let sent: Vec<_> = request.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.span_id.clone())
        .collect();
    let ids: Vec<_> = delivered.iter().map(|(_, s)| s.span_id.clone()).collect();
    assert_eq!(ids, sent);
    drop(stalled);
    agent.stop().await;
}

/// An OTLP/JSON request whose resource has `attributes` small attributes, and one span.
fn wide_resource_json(attributes: usize, seed: usize) -> Vec<u8> {
    let attributes: Vec<String> = (0..attributes)
        .map(|i| format!(r#"{{"key":"k{i}","value":{{"stringValue":"v"}}}}"#))
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"spans":[{{"traceId":"{seed:032x}","spanId":"0102030405060708","name":"s","startTimeUnixNano":"1","endTimeUnixNano":"2"}}]}}]}}]}}"#,
        attributes.join(","),
    )
    .into_bytes()
}

/// POSTs gzipped JSON, retrying (as an SDK does) while the agent answers 429, at most
/// `attempts` times; returns the last status and answer.
async fn post_json_retrying(url: &str, body: &[u8], attempts: usize) -> (u16, String) {
    let mut answer = post_gzipped(url, "application/json", body).await;
    for _ in 1..attempts {
        if answer.0 != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        answer = post_gzipped(url, "application/json", body).await;
    }
    answer
}

#[tokio::test]
async fn after_a_burst_the_agent_serves_at_once_and_gives_its_memory_back() {
    let _heavy = HEAVY.lock().await;
    let sink = Sink::grpc().await;
    let receivers = "    http: { endpoint: 127.0.0.1:0, max_attributes_per_item: 200000 }\n";
    let mut agent = AgentProcess::with_config(&yaml(&sink, receivers, ""), "debug", &[]);
    let url = format!("http://{}/v1/traces", agent.addr("OTLP/HTTP"));
    let idle_mib = agent.status_kib("VmRSS").expect("VmRSS") / 1024.0;

    // The burst that locked the agent out: four 8 MB JSON bodies (450 KB of gzip) of
    // 180,000 resource attributes each. Decoded, each would take over 300 MiB: refused.
    let mut burst = tokio::task::JoinSet::new();
    for seed in 0..4 {
        let url = url.clone();
        burst.spawn(async move {
            post_json_retrying(&url, &wide_resource_json(180_000, seed), 1).await
        });
    }
    for (status, answer) in burst.join_all().await {
        assert_eq!(status, 413, "{answer}");
        assert!(answer.contains("max_decoded_size"), "{answer}");
    }

    // A burst the budget admits one request at a time (each about 80 MiB decoded): the
    // others are told to retry, and all get through.
    let mut burst = tokio::task::JoinSet::new();
    for seed in 10..14 {
        let url = url.clone();
        burst.spawn(async move {
            post_json_retrying(&url, &wide_resource_json(45_000, seed), 30).await
        });
    }
    for (status, answer) in burst.join_all().await {
        assert_eq!(status, 200, "{answer}");
    }
    let peak_mib = agent.peak_rss_mib();

    // A normal request right after is served.
    let normal = council_request(5, 1);
    let (status, _, _) = http_request(
        "POST",
        &url,
        &[("content-type", "application/x-protobuf")],
        prost::Message::encode_to_vec(&normal),
    )
    .await;
    assert_eq!(status, 200, "served right after the burst");
    assert_eq!(sink.wait_for_spans(4 + 5).await.len(), 9);

    // And the memory the burst took goes back to the system.
    let started = Instant::now();
    let mut rss_mib = agent.status_kib("VmRSS").expect("VmRSS") / 1024.0;
    while rss_mib > idle_mib + 48.0 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_mib = agent.status_kib("VmRSS").expect("VmRSS") / 1024.0;
    }
    println!(
        "RSS idle {idle_mib:.0} MiB, peak {peak_mib:.0} MiB, {rss_mib:.0} MiB {:.1} s after the burst",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rss_mib <= idle_mib + 48.0,
        "RSS {rss_mib:.0} MiB 10 s after the burst (idle {idle_mib:.0} MiB); logs:\n{}",
        agent.logs()
    );
    assert!(
        peak_mib < 256.0,
        "peak {peak_mib:.0} MiB under memory_limit.soft"
    );
    assert!(
        agent
            .logs()
            .contains("Handed freed memory back to the system")
    );
    assert_eq!(agent.terminate(), 0);
}

/// A request whose resource carries 512 attributes of 1 KiB over `traces` one-span traces.
fn wide_resource_traces(traces: u32) -> daena_trace_agent::otlp::ExportTraceServiceRequest {
    use daena_trace_agent::otlp::{Resource, Span, Value};
    let resource = Resource {
        attributes: (0..512)
            .map(|i| {
                kv(
                    &format!("host.blob.{i}"),
                    Value::StringValue("x".repeat(1024)),
                )
            })
            .collect(),
        ..Default::default()
    };
    let spans = (0..traces)
        .map(|t| Span {
            trace_id: [t.to_be_bytes(), [1; 4], [2; 4], [3; 4]].concat(),
            span_id: vec![1; 8],
            name: "llm.call".into(),
            ..Default::default()
        })
        .collect();
    request_with_resource(resource, spans)
}

#[tokio::test]
async fn a_wide_resource_in_the_tail_sampler_and_a_span_of_repeated_keys_stay_cheap() {
    let _heavy = HEAVY.lock().await;
    use daena_trace_agent::otlp::Value;
    let sink = Sink::grpc().await;
    let receivers = "    grpc: { endpoint: 127.0.0.1:0, max_attributes_per_item: 400000 }\n";
    let sampling = "processors:\n  sampling:\n    mode: tail\n    decision_wait: 500ms\n    policies:\n      - { name: all, type: ratio, ratio: 1.0 }\n";
    let mut agent = AgentProcess::with_config(&yaml(&sink, receivers, sampling), "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));

    // 1,000 traces under one 512 KiB resource: held once, not once per trace (500 MiB).
    grpc_export(url.clone(), wide_resource_traces(1_000), true)
        .await
        .expect("the wide request is accepted");
    // One span with 300,000 copies of llm.cost: the daena stage's work stays linear.
    let mut repeated = council_request(1, 9);
    repeated.resource_spans[0].scope_spans[0].spans[0].attributes = (0..300_000)
        .map(|i| kv("llm.cost", Value::IntValue(i)))
        .collect();
    grpc_export(url.clone(), repeated, true)
        .await
        .expect("the repeated-key span is accepted");
    // Well-behaved clients meanwhile: accepted, and delivered.
    for seed in 1..=5 {
        grpc_export(url.clone(), council_request(2, seed), false)
            .await
            .expect("a normal request is accepted");
    }
    let delivered = sink.wait_for_spans(1_000 + 1 + 10).await;
    assert_eq!(delivered.len(), 1_011);
    let peak_mib = agent.peak_rss_mib();
    println!("wide resource and repeated keys: peak RSS {peak_mib:.0} MiB");
    assert!(
        peak_mib < 256.0,
        "peak {peak_mib:.0} MiB under memory_limit.soft"
    );
    assert_eq!(agent.terminate(), 0);
}

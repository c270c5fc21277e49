//! Operating the agent as a user does: `/metrics` (every family declared, known series at
//! 0, exact deltas), `/healthz` and `/readyz` through a backend outage, the telemetry
//! endpoint's connection cap, and the `healthcheck` subcommand's exit codes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// An exporter `name` to `sink` over gRPC, retrying quickly so outages show at once.
fn grpc_exporter(name: &str, sink: &Sink) -> String {
    format!(
        "  {name}:\n    protocol: grpc\n    endpoint: http://{}\n    compression: none\n    retry: {{ initial_interval: 20ms, max_interval: 100ms, max_elapsed: 1m }}\n",
        sink.addr
    )
}

/// The status and body of `GET path` on the agent's telemetry endpoint.
async fn get(agent: &TestAgent, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", agent.telemetry.expect("telemetry"));
    let (status, _, body) = http_request("GET", &url, &[], Vec::new()).await;
    (status, String::from_utf8(body).expect("utf-8"))
}

/// Polls `GET path` (bounded by [`WAIT`]) until it answers `status`; returns the body.
async fn wait_for_status(agent: &TestAgent, path: &str, status: u16) -> String {
    let started = Instant::now();
    loop {
        let (now, body) = get(agent, path).await;
        if now == status {
            return body;
        }
        assert!(
            started.elapsed() < WAIT,
            "{path} still answers {now}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_family_is_declared_with_its_known_series_at_zero_before_any_traffic() {
    let (tempo, jaeger) = (Sink::grpc().await, Sink::grpc().await);
    let exporters = grpc_exporter("tempo", &tempo) + &grpc_exporter("jaeger", &jaeger);
    let agent = TestAgent::start(&agent_yaml(
        &exporters,
        "processors: { sampling: { mode: tail, policies: [ { name: errors, type: errors } ] } }\n",
    ))
    .await;
    let metrics = agent.metrics().await;
    let families = [
        ("daena_agent_spans_received", "counter"),
        ("daena_agent_spans_refused", "counter"),
        ("daena_agent_requests_refused", "counter"),
        ("daena_agent_spans_dropped", "counter"),
        ("daena_agent_spans_exported", "counter"),
        ("daena_agent_export_failures", "counter"),
        ("daena_agent_queue_spans", "gauge"),
        ("daena_agent_queue_bytes", "gauge"),
        ("daena_agent_batch_spans", "histogram"),
        ("daena_agent_export_duration_seconds", "histogram"),
        ("daena_agent_build", "info"),
        ("process_resident_memory_bytes", "gauge"),
        ("daena_agent_memory_budget_bytes", "gauge"),
        ("daena_agent_memory_budget_used_bytes", "gauge"),
        ("daena_agent_memory_soft_limit_bytes", "gauge"),
        ("daena_agent_memory_hard_limit_bytes", "gauge"),
        ("daena_agent_schema_errors", "counter"),
        ("daena_agent_filter_asgi_parents_kept", "counter"),
        ("daena_agent_sampling_spans", "counter"),
        ("daena_agent_sampling_traces", "counter"),
        ("daena_agent_sampling_late_spans", "counter"),
        ("daena_agent_sampling_decided_early", "counter"),
    ];
    for (family, kind) in families {
        assert!(
            metrics.contains(&format!("# TYPE {family} {kind}\n")),
            "# TYPE {family} {kind} missing:\n{metrics}"
        );
    }
    let mut zeros = Vec::new();
    for protocol in ["grpc", "http"] {
        zeros.push(format!(
            "daena_agent_spans_received_total{{protocol=\"{protocol}\"}}"
        ));
        for reason in [
            "pipeline_full",
            "shutting_down",
            "memory_limit",
            "memory_budget",
            "request_limit",
            "invalid_span",
        ] {
            zeros.push(format!(
                "daena_agent_spans_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
            ));
        }
        for reason in ["undecodable", "too_large"] {
            zeros.push(format!(
                "daena_agent_requests_refused_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
            ));
        }
    }
    for exporter in ["tempo", "jaeger"] {
        zeros.push(format!(
            "daena_agent_spans_exported_total{{exporter=\"{exporter}\"}}"
        ));
        zeros.push(format!(
            "daena_agent_queue_spans{{exporter=\"{exporter}\"}}"
        ));
        zeros.push(format!(
            "daena_agent_queue_bytes{{exporter=\"{exporter}\"}}"
        ));
        for kind in ["retried", "final"] {
            zeros.push(format!(
                "daena_agent_export_failures_total{{exporter=\"{exporter}\",kind=\"{kind}\"}}"
            ));
        }
        for reason in ["rejected", "retries_exhausted", "queue_full", "shutdown"] {
            zeros.push(format!(
                "daena_agent_spans_dropped_total{{stage=\"exporter/{exporter}\",reason=\"{reason}\"}}"
            ));
        }
        zeros.push(format!(
            "daena_agent_export_duration_seconds_count{{exporter=\"{exporter}\"}}"
        ));
    }
    zeros.push(
        "daena_agent_spans_dropped_total{stage=\"pipeline\",reason=\"agent_failure\"}".into(),
    );
    zeros.push("daena_agent_schema_errors_total{key=\"council.phase\"}".into());
    for reason in ["asgi_event", "health_route", "rule"] {
        zeros.push(format!(
            "daena_agent_spans_dropped_total{{stage=\"filter\",reason=\"{reason}\"}}"
        ));
    }
    zeros.push("daena_agent_sampling_traces_total{policy=\"errors\",outcome=\"kept\"}".into());
    zeros.push("daena_agent_sampling_traces_total{policy=\"none\",outcome=\"dropped\"}".into());
    zeros.push("daena_agent_batch_spans_count".into());
    for series in &zeros {
        assert!(
            metrics.contains(&format!("\n{series} 0\n")),
            "{series} is not at 0:\n{metrics}"
        );
    }
    // Histograms have their buckets from the start.
    assert!(metrics.contains("daena_agent_batch_spans_bucket{le=\"1.0\"} 0\n"));
    assert!(metrics.contains("daena_agent_batch_spans_bucket{le=\"+Inf\"} 0\n"));
    assert!(metrics.contains(
        "daena_agent_export_duration_seconds_bucket{le=\"0.001\",exporter=\"tempo\"} 0\n"
    ));
    let version = env!("CARGO_PKG_VERSION");
    assert!(metrics.contains(&format!(
        "daena_agent_build_info{{version=\"{version}\"}} 1\n"
    )));
    assert!(metrics.contains("daena_agent_memory_soft_limit_bytes 268435456\n"));
    assert!(metrics.contains("daena_agent_memory_hard_limit_bytes 335544320\n"));
    let rss = counter_value(&metrics, "process_resident_memory_bytes");
    assert!(rss > 1 << 20, "resident set {rss}");
    agent.stop().await;
}

#[tokio::test]
async fn counters_move_by_exactly_the_traffic_refusals_and_failures() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(&grpc_exporter("tempo", &sink), NO_PROCESSORS)).await;

    // 7 spans over gRPC and 5 over HTTP, delivered.
    // One batch each: the second is sent once the first has arrived.
    grpc_export(agent.grpc_url(), council_request(7, 1), false)
        .await
        .expect("accepted");
    sink.wait_for_spans(7).await;
    assert_eq!(post_protobuf(&agent, &council_request(5, 2)).await.0, 200);
    sink.wait_for_spans(12).await;
    let exported = "daena_agent_spans_exported_total{exporter=\"tempo\"}";
    assert_eq!(agent.wait_for_counter(exported, 12).await, 12);

    // An undecodable body, refused before its spans could be counted.
    let (status, _, _) = http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        vec![0xff; 16],
    )
    .await;
    assert_eq!(status, 400);

    // One retried failure, then one refusal for good (3 spans dropped).
    sink.script([
        Answer::Grpc(
            tonic::Code::Unavailable,
            Some(Duration::from_millis(10)),
            "restarting",
        ),
        Answer::Grpc(tonic::Code::InvalidArgument, None, "span too old"),
    ]);
    grpc_export(agent.grpc_url(), council_request(3, 3), false)
        .await
        .expect("accepted");
    let rejected = "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"rejected\"}";
    assert_eq!(agent.wait_for_counter(rejected, 3).await, 3);

    let metrics = agent.metrics().await;
    let expected = [
        ("daena_agent_spans_received_total{protocol=\"grpc\"}", 10),
        ("daena_agent_spans_received_total{protocol=\"http\"}", 5),
        (
            "daena_agent_requests_refused_total{protocol=\"http\",reason=\"undecodable\"}",
            1,
        ),
        (exported, 12),
        (
            "daena_agent_export_failures_total{exporter=\"tempo\",kind=\"retried\"}",
            1,
        ),
        (
            "daena_agent_export_failures_total{exporter=\"tempo\",kind=\"final\"}",
            1,
        ),
        (rejected, 3),
        (
            "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"retries_exhausted\"}",
            0,
        ),
        // Three batches sent; four export requests (one retried).
        ("daena_agent_batch_spans_count", 3),
        (
            "daena_agent_export_duration_seconds_count{exporter=\"tempo\"}",
            4,
        ),
        ("daena_agent_queue_spans{exporter=\"tempo\"}", 0),
    ];
    for (series, value) in expected {
        assert_eq!(
            counter_value(&metrics, series),
            value,
            "{series}\n{metrics}"
        );
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_backend_while_liveness_stays_up() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(&grpc_exporter("tempo", &sink), NO_PROCESSORS)).await;
    assert_eq!(
        wait_for_status(&agent, "/readyz", 200).await,
        r#"{"ready":true,"reasons":[]}"#
    );
    assert_eq!(
        get(&agent, "/healthz").await,
        (200, r#"{"alive":true}"#.into())
    );

    sink.set_down(true);
    grpc_export(agent.grpc_url(), council_request(4, 5), false)
        .await
        .expect("accepted while the backend is down");
    let body = wait_for_status(&agent, "/readyz", 503).await;
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["ready"], false, "{body}");
    let reason = &answer["reasons"][0];
    assert_eq!(reason["exporter"], "tempo", "{body}");
    assert!(
        reason["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("backend down")),
        "the backend's error is the reason: {body}"
    );
    assert!(
        reason["since"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    assert_eq!(
        get(&agent, "/healthz").await.0,
        200,
        "not ready is not dead"
    );

    sink.set_down(false);
    wait_for_status(&agent, "/readyz", 200).await;
    assert_eq!(get(&agent, "/healthz").await.0, 200);
    sink.wait_for_spans(4).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_makes_the_agent_not_ready_until_it_drains() {
    let sink = Sink::grpc().await;
    sink.close_gate();
    // One-span batches into a queue of two, exported one at a time: one batch held in
    // flight at the backend and two queued fill it, and the next makes the pipeline wait.
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ max_spans: 1, timeout: 50ms }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    compression: none\n    timeout: 1m\n    retry: {{ initial_interval: 20ms, max_interval: 100ms }}\n    queue: {{ max_spans: 2, workers: 1 }}\n{NO_PROCESSORS}",
        sink.addr
    );
    let agent = TestAgent::start(&yaml).await;
    wait_for_status(&agent, "/readyz", 200).await;
    for seed in 1..=4 {
        grpc_export(agent.grpc_url(), council_request(1, seed), false)
            .await
            .expect("accepted");
    }
    let body = wait_for_status(&agent, "/readyz", 503).await;
    assert_eq!(
        body,
        r#"{"ready":false,"reasons":[{"exporter":"tempo","queue_full":true}]}"#
    );
    assert_eq!(
        counter_value(
            &agent.metrics().await,
            "daena_agent_queue_spans{exporter=\"tempo\"}"
        ),
        2
    );
    assert_eq!(get(&agent, "/healthz").await.0, 200);

    sink.release_held_and_open_gate();
    sink.wait_for_spans(4).await;
    wait_for_status(&agent, "/readyz", 200).await;
    agent.stop().await;
}

/// `GET /metrics` on a new connection; the status line, or `None` when the connection
/// was closed without an answer (or none came within two seconds).
async fn raw_get(addr: std::net::SocketAddr) -> Option<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer),
    )
    .await;
    match read {
        Ok(Ok(_)) if !answer.is_empty() => {
            let text = String::from_utf8_lossy(&answer);
            text.lines().next().map(str::to_owned)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telemetry_endpoint_caps_its_connections_and_serves_again_when_they_go() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(&grpc_exporter("tempo", &sink), NO_PROCESSORS)).await;
    let addr = agent.telemetry.expect("telemetry");
    let mut idle = Vec::new();
    for _ in 0..daena_trace_agent::telemetry::server::MAX_CONNECTIONS {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Half a request: the connection holds its place until the header timeout.
        tcp.write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .expect("write");
        idle.push(tcp);
    }
    // The idle connections are accepted in turn: then one more is closed unanswered.
    let started = Instant::now();
    while raw_get(addr).await.is_some() {
        assert!(
            started.elapsed() < WAIT,
            "connections past the cap were served"
        );
    }
    drop(idle);
    let started = Instant::now();
    loop {
        if raw_get(addr).await.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        assert!(started.elapsed() < WAIT, "/metrics did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await;
}

/// Runs `healthcheck --config` on `yaml` with the built binary: exit code and output.
async fn healthcheck(yaml: &str) -> (i32, String, String) {
    let yaml = yaml.to_owned();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), &yaml);
        run_binary(
            &["healthcheck", "--config", path.to_str().expect("path")],
            &[],
        )
    })
    .await
    .expect("healthcheck ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_when_ready_1_when_not_or_unreachable_and_2_for_a_bad_config() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(&grpc_exporter("tempo", &sink), NO_PROCESSORS)).await;
    let port = agent.telemetry.expect("telemetry").port();
    // The unspecified address the agent would listen on is probed on loopback.
    let probe = format!("telemetry: {{ endpoint: 0.0.0.0:{port} }}\n");
    wait_for_status(&agent, "/readyz", 200).await;
    let (code, stdout, stderr) = healthcheck(&probe).await;
    assert_eq!((code, stdout.trim()), (0, "ready"), "{stderr}");

    sink.set_down(true);
    grpc_export(agent.grpc_url(), council_request(2, 6), false)
        .await
        .expect("accepted");
    wait_for_status(&agent, "/readyz", 503).await;
    let (code, stdout, _) = healthcheck(&probe).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.starts_with("not ready: exporter tempo failing since ")
            && stdout.contains("backend down"),
        "{stdout}"
    );
    sink.set_down(false);
    wait_for_status(&agent, "/readyz", 200).await;
    agent.stop().await;

    // Nothing listens there any more.
    let (code, stdout, _) = healthcheck(&probe).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("not ready: cannot reach"), "{stdout}");

    let (code, _, stderr) =
        healthcheck("telemetry: { endpoint: 127.0.0.1:8888, colour: red }\n").await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("colour"), "{stderr}");
    let (code, _, stderr) = healthcheck("telemetry: { endpoint: null }\n").await;
    assert_eq!(code, 2, "{stderr}");
}

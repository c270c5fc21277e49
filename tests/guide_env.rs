//! The Daena tracing guide's lines, given to the real binary as its environment only (no
//! exporter in the YAML): each reaches its backend over the protocol the guide means.
//! Placeholder credentials are refused by name, and a sidecar with no upstream says so.

mod common;

use base64::Engine;
use common::*;
use daena_trace_agent::otlp::TRACE_EXPORT_PATH;

/// The agent's own listeners on ephemeral loopback ports, and no exporter: the upstream
/// comes from the environment, as in the guide.
const NO_EXPORTERS: &str = "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0 }\n    http: { endpoint: 127.0.0.1:0 }\ntelemetry: { endpoint: 127.0.0.1:0 }\nbatch: { timeout: 50ms }\n";

/// The guide's Grafana Cloud placeholder, as it is written there.
const GUIDE_PLACEHOLDER: &str = "Authorization=Basic <base64-encoded-credentials>";

/// Starts the agent with `env`, sends it three spans over OTLP/gRPC and returns it.
async fn agent_forwarding(env: &[(&str, &str)]) -> AgentProcess {
    let agent = AgentProcess::with_config(NO_EXPORTERS, "info", env);
    let grpc = agent.addr("OTLP/gRPC");
    grpc_export(format!("http://{grpc}"), council_request(3, 7), false)
        .await
        .expect("accepted");
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jaeger_and_tempo_line_reaches_a_grpc_backend() {
    // The guide's `OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317`, on a free port.
    let sink = Sink::grpc().await;
    let endpoint = format!("http://localhost:{}", sink.addr.port());
    let mut agent = agent_forwarding(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].path, TRACE_EXPORT_PATH, "sent over OTLP/gRPC");
    assert_eq!(sink.wait_for_spans(3).await.len(), 3);
    assert!(
        agent.logs().contains("grpc inferred: endpoint has no path"),
        "the start-up line says why: {}",
        agent.logs()
    );
    assert_eq!(agent.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_cloud_lines_reach_a_tls_grpc_backend_with_basic_auth() {
    let TlsBackend { sink, ca_file } = tls_backend().await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode("1234567:glc_eyJvIjoiMTIzNDU2NyJ9");
    // `https://tempo-us-central1.grafana.net:443` in the guide: https, a port, no path.
    let endpoint = format!("https://localhost:{}", sink.addr.port());
    let headers = format!("Authorization=Basic%20{credentials}");
    let ca = ca_file.path().to_str().expect("path");
    let mut agent = agent_forwarding(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca),
    ])
    .await;
    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].path, TRACE_EXPORT_PATH, "sent over OTLP/gRPC");
    assert_eq!(
        received[0].headers["authorization"],
        format!("Basic {credentials}").as_str()
    );
    assert_eq!(agent.terminate(), 0);
    assert!(
        !agent.logs().contains(&credentials),
        "the credentials reached the logs:\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_path_means_http_protobuf() {
    // Grafana Cloud's OTLP gateway form: `.../otlp`, to which `/v1/traces` is appended.
    let sink = Sink::http().await;
    let endpoint = format!("http://127.0.0.1:{}/otlp", sink.addr.port());
    let mut agent = agent_forwarding(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].path, "/otlp/v1/traces");
    assert_eq!(agent.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traces_endpoint_with_its_path_is_used_as_is_over_http() {
    let sink = Sink::http().await;
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", sink.addr.port());
    let mut agent = agent_forwarding(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint)]).await;
    let received = sink.wait_for_requests(1).await;
    assert_eq!(received[0].path, "/v1/traces");
    assert_eq!(agent.terminate(), 0);
}

#[test]
fn the_guides_placeholder_is_refused_by_check_and_at_start_up_naming_the_variable() {
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://tempo-us-central1.grafana.net:443",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", GUIDE_PLACEHOLDER),
    ];
    for args in [&["check"][..], &[]] {
        let (code, stdout, stderr) = run_binary(args, &env);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(
                "OTEL_EXPORTER_OTLP_HEADERS: the value of authorization is still a placeholder from the tracing guide"
            ),
            "{args:?}: {stderr}"
        );
        assert!(
            !stdout.contains("base64-encoded") && !stderr.contains("base64-encoded"),
            "{args:?}: the value was shown:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn placeholders_in_the_yaml_are_refused_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{NO_EXPORTERS}exporters:\n  tempo:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    headers: {{ authorization: \"Bearer replace-me\", x-scope-orgid: daena }}\n  grafana:\n    protocol: http/protobuf\n    endpoint: https://123456:@otlp-gateway-prod-us-central-0.grafana.net/otlp\n"
    );
    let path = write_config(dir.path(), &yaml);
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("exporters.tempo.headers.authorization: the value is still a placeholder"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "exporters.grafana.endpoint: the password in the URL's user:password@ is empty"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("replace-me"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upstream_the_console_fallback_is_a_warning_in_the_logs_and_on_the_status_page()
{
    let warning = "spans go to the console: set OTEL_EXPORTER_OTLP_ENDPOINT or exporters:";
    let mut agent = AgentProcess::with_config(NO_EXPORTERS, "info", &[]);
    assert!(agent.logs().contains(warning), "{}", agent.logs());
    let metrics = agent.addr("metrics");
    let (status, _, body) = http_request(
        "GET",
        &format!("http://{metrics}/status.json"),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["warnings"], serde_json::json!([warning]));
    assert_eq!(agent.terminate(), 0);

    // A console chosen in the YAML is no fallback: nothing to warn of.
    let chosen = format!("{NO_EXPORTERS}exporters:\n  out: {{ protocol: console }}\n");
    let mut agent = AgentProcess::with_config(&chosen, "info", &[]);
    let (_, _, body) = http_request(
        "GET",
        &format!("http://{}/status.json", agent.addr("metrics")),
        &[],
        Vec::new(),
    )
    .await;
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["warnings"], serde_json::json!([]));
    assert_eq!(agent.terminate(), 0);
    assert!(!agent.logs().contains(warning), "{}", agent.logs());
}

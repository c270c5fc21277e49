//! The binary as a user runs it: `check`, `--version`, configuration from YAML and from
//! the standard OTEL_EXPORTER_OTLP_* variables, the console fallback, start-up refusals,
//! secrets kept out of every output, and a clean SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::Value;

const SECRET: &str = "glc_eyJrIjoiSECRETSECRET";
/// The token `config.example.yaml`'s Grafana Cloud exporter reads; without it the example's
/// `replace-me` default is refused as a placeholder.
const GRAFANA_TOKEN: (&str, &str) = ("GRAFANA_CLOUD_API_TOKEN", SECRET);

fn receivers_on_ephemeral_ports() -> &'static str {
    "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0 }\n    http: { endpoint: 127.0.0.1:0 }\ntelemetry: { endpoint: 127.0.0.1:0 }\n"
}

#[test]
fn version_prints_the_package_version() {
    let (code, stdout, _) = run_binary(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("daena-trace-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_prints_the_effective_config_with_every_secret_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{}exporters:\n  grafana:\n    protocol: http/protobuf\n    endpoint: https://otlp-gateway-prod-us-central-0.grafana.net/otlp\n    auth: {{ basic: {{ username: \"123456\", password: \"{SECRET}-pw\" }} }}\n  tempo:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    headers: {{ authorization: \"Basic ${{GRAFANA_CLOUD_AUTH}}\", x-scope-orgid: tenant-1 }}\n",
        receivers_on_ephemeral_ports()
    );
    let path = write_config(dir.path(), &yaml);
    let (code, stdout, stderr) = run_binary(
        &["check", "--config", path.to_str().expect("path")],
        &[("GRAFANA_CLOUD_AUTH", SECRET)],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "a secret leaked:\n{stdout}{stderr}"
    );
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("***"), "{stdout}");
    assert!(
        stdout.contains("https://otlp-gateway-prod-us-central-0.grafana.net/otlp"),
        "{stdout}"
    );
    assert!(
        stdout.contains("123456"),
        "the username is not a secret: {stdout}"
    );
    assert!(
        stdout.contains(
            "endpoint: https://otlp-gateway-prod-us-central-0.grafana.net/otlp/v1/traces"
        ),
        "the URL posted to, as the start-up line shows it: {stdout}"
    );
    assert!(
        stdout.contains("x-scope-orgid: tenant-1"),
        "a tenant is no secret: {stdout}"
    );
    assert!(stdout.contains("authorization: \"***\""), "{stdout}");
}

#[test]
fn check_leaves_out_settings_that_are_off_by_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let (code, stdout, stderr) = run_binary(&["check", "--config", path], &[GRAFANA_TOKEN]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("policies:"), "{stdout}");
    for off in [": null", ": 0s\n", ": 0ns", ": []"] {
        assert!(!stdout.contains(off), "{off:?} in:\n{stdout}");
    }
    let (code, stdout, stderr) = run_binary(&["check"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains(": null") && !stdout.contains(": {}"),
        "{stdout}"
    );
}

#[test]
fn check_into_a_reader_that_stops_early_exits_cleanly() {
    // `check | head -1`: the reader goes away before the config is printed.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let mut child = binary_command(&["check", "--config", path], &[GRAFANA_TOKEN])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn check_reports_every_error_at_once_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "exporters:\n  tempo:\n    protocol: grpc\n  broken:\n    protocol: http/protobuf\n    endpoint: ftp://nowhere\nbatch: { max_spans: 0 }\n";
    let path = write_config(dir.path(), yaml);
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains(path.to_str().expect("path")),
        "errors name the file: {stderr}"
    );
    assert!(stderr.contains("exporters.tempo.endpoint"), "{stderr}");
    assert!(stderr.contains("exporters.broken.endpoint"), "{stderr}");
    assert!(stderr.contains("batch.max_spans"), "{stderr}");
}

#[test]
fn check_names_the_line_of_a_bad_filter_rule_attribute_action_and_schema_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "processors:
  filter:
    rules:
      - { id: everything }
  attributes:
    actions:
      - { key: team, action: insert }
  daena:
    schema:
      - { key: nbmf.level, type: one_of }
";
    let path = write_config(dir.path(), yaml);
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1, "{stderr}");
    for want in [
        "processors.filter.rules[0] (line 4): has no condition",
        "processors.attributes.actions[0] (line 7)",
        "processors.daena.schema[0] (line 10): type one_of needs values",
    ] {
        assert!(stderr.contains(want), "{want:?} in {stderr}");
    }
}

#[test]
fn an_unknown_key_is_refused_with_its_name_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "exporters:\n  tempo:\n    protocol: grpc\n    endpiont: http://tempo:4317\n";
    let path = write_config(dir.path(), yaml);
    let (code, _, stderr) = run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("endpiont"), "{stderr}");
    assert!(stderr.contains(":4:"), "the error gives line 4: {stderr}");
}

#[test]
fn one_check_lists_typos_in_different_sections_with_their_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "batch:\n  max_spans: 100\n  timout: 1s\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://tempo:4317\n    timeout: ${TEMPO_TIMEOUT}\n";
    let path = write_config(dir.path(), yaml);
    let (code, _, stderr) = run_binary(
        &["check", "--config", path.to_str().expect("path")],
        &[("TEMPO_TIMEOUT", SECRET)],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("2 config errors"), "{stderr}");
    assert!(
        stderr.contains(":3:3: batch.timout: unknown field `timout`"),
        "{stderr}"
    );
    assert!(
        stderr.contains(":8:14: exporters.tempo.timeout: \"${TEMPO_TIMEOUT}\" is not a duration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("|     timeout: ${TEMPO_TIMEOUT}"),
        "the line as written: {stderr}"
    );
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[test]
fn check_refuses_zero_pipeline_shards_naming_the_key_and_its_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "pipeline: { shards: 0 }\n");
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("pipeline.shards: 0 is too small; use 1 to 64"),
        "{stderr}"
    );

    let path = write_config(dir.path(), "pipeline: { shards: 3 }\n");
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("shards: 3"), "check prints it: {stdout}");
}

#[test]
fn absurd_durations_are_config_errors_naming_the_key_and_its_range_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (yaml, expected) in [
        (
            "shutdown_timeout: 99999999999999999999999s\n",
            ":1:19: shutdown_timeout: \"99999999999999999999999s\" is too long; use 0s to 10m",
        ),
        (
            "batch: {timeout: 10000000000000000000s}\n",
            "batch.timeout: 10000000000000000000s is too long; use 1ms to 1h",
        ),
    ] {
        let path = write_config(dir.path(), yaml);
        let (code, _, stderr) =
            run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
        assert_eq!(code, 1, "{yaml}: {stderr}");
        assert!(stderr.contains(expected), "{yaml}: {stderr}");
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let (code, _, stderr) = run_binary(&["--config", "/nonexistent/agent.yaml"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/agent.yaml"), "{stderr}");
}

#[test]
fn forwarding_to_itself_is_refused_at_start_up() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:{port} }}\ntelemetry: {{ endpoint: null }}\n"
    );
    let path = write_config(dir.path(), &yaml);
    let endpoint = format!("http://localhost:{port}");
    let (code, _, stderr) = run_binary(
        &["--config", path.to_str().expect("path")],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("loop"), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_spans_are_printed_to_the_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), receivers_on_ephemeral_ports());
    let mut agent = AgentProcess::spawn(&["--config", path.to_str().expect("path")], &[]);
    assert!(
        agent.logs().contains("console"),
        "the start-up line names the console exporter: {}",
        agent.logs()
    );
    let http = agent.addr("OTLP/HTTP");
    let request = council_request(3, 0x5a);
    let (status, _, _) = http_request(
        "POST",
        &format!("http://{http}/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        prost::Message::encode_to_vec(&request),
    )
    .await;
    assert_eq!(status, 200);
    let started = Instant::now();
    // The resource's line, then one per span.
    while agent.output().lines().count() < 4 {
        assert!(
            started.elapsed() < WAIT,
            "console printed: {}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = agent.output();
    let mut lines = output.lines();
    let resource = lines.next().expect("a line");
    assert!(
        resource.starts_with("resource {service.name=\"daena-backend\""),
        "{resource}"
    );
    let first = lines.next().expect("a line");
    assert!(
        first.starts_with("daena-backend \"council.round\" kind=internal"),
        "{first}"
    );
    assert!(
        first.contains(&format!("trace={}", "5a".repeat(16))),
        "{first}"
    );
    assert!(first.contains("council.phase=\"scout\""), "{first}");
    assert!(first.contains("duration=500.000ms"), "{first}");
    assert_eq!(agent.terminate(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_otel_variables_configure_the_upstream() {
    let sink = Sink::grpc().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), receivers_on_ephemeral_ports());
    let endpoint = format!("http://127.0.0.1:{}", sink.addr.port());
    let headers = format!("authorization=Basic%20{SECRET},x-scope-orgid=daena");
    let mut agent = AgentProcess::spawn(
        &[
            "--config",
            path.to_str().expect("path"),
            "--log-level",
            "debug",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
        ],
    );
    assert!(
        agent.logs().contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "start-up says where the exporter came from: {}",
        agent.logs()
    );
    let grpc = agent.addr("OTLP/gRPC");
    grpc_export(format!("http://{grpc}"), council_request(4, 3), false)
        .await
        .expect("accepted");
    let received = sink.wait_for_requests(1).await;
    assert_eq!(
        received[0].headers["authorization"],
        format!("Basic {SECRET}").as_str()
    );
    assert_eq!(received[0].headers["x-scope-orgid"], "daena");
    assert_eq!(agent.terminate(), 0);
    assert!(
        !agent.logs().contains(SECRET),
        "a secret reached the logs:\n{}",
        agent.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_logs_even_when_the_backend_refuses() {
    let sink = Sink::http().await;
    sink.script([Answer::Http(401, None, "invalid credentials")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{}exporters:\n  grafana:\n    protocol: http/protobuf\n    endpoint: http://{}\n    auth: {{ basic: {{ username: \"123456\", password: \"${{GRAFANA_TOKEN}}\" }} }}\n    headers: {{ x-api-key: \"${{GRAFANA_TOKEN}}\" }}\n",
        receivers_on_ephemeral_ports(),
        sink.addr
    );
    let path = write_config(dir.path(), &yaml);
    let mut agent = AgentProcess::spawn(
        &[
            "--config",
            path.to_str().expect("path"),
            "--log-level",
            "trace",
        ],
        &[("GRAFANA_TOKEN", SECRET)],
    );
    let grpc = agent.addr("OTLP/gRPC");
    grpc_export(format!("http://{grpc}"), council_request(2, 1), false)
        .await
        .expect("accepted");
    sink.wait_for_requests(1).await;
    let started = Instant::now();
    while !agent.logs().contains("invalid credentials") {
        assert!(
            started.elapsed() < WAIT,
            "the refusal is logged with the backend's message: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.terminate(), 0);
    let logs = agent.logs();
    assert!(!logs.contains(SECRET), "a secret reached the logs:\n{logs}");
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("123456:{SECRET}"));
    assert!(
        !logs.contains(&basic),
        "the Basic credential reached the logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_batch_and_exits_cleanly() {
    let sink = Sink::grpc().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "{}batch: {{ timeout: 1h }}\nshutdown_timeout: 5s\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        receivers_on_ephemeral_ports(),
        sink.addr
    );
    let path = write_config(dir.path(), &yaml);
    let mut agent = AgentProcess::spawn(&["--config", path.to_str().expect("path")], &[]);
    let grpc = agent.addr("OTLP/gRPC");
    grpc_export(format!("http://{grpc}"), council_request(6, 2), false)
        .await
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        sink.received().is_empty(),
        "held in the batch until shutdown"
    );
    let started = Instant::now();
    assert_eq!(agent.terminate(), 0, "{}", agent.logs());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exits within shutdown_timeout"
    );
    assert_eq!(sink.spans().len(), 6, "nothing batched is left behind");
    let logs = agent.logs();
    let last = logs.lines().last().expect("a last log line");
    assert!(
        last.contains("Stopped") && last.contains("none abandoned"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_values_reach_neither_the_backend_nor_the_console_nor_the_logs() {
    let sink = Sink::grpc().await;
    let yaml = format!(
        "{}exporters:\n  console: {{ protocol: console }}\n  tempo: {{ protocol: grpc, endpoint: \"http://{}\" }}\n",
        receivers_on_ephemeral_ports(),
        sink.addr
    );
    let mut agent = AgentProcess::with_config(&yaml, "debug", &[]);
    let api_key = "sk-proj-Zq9XSECRETKEY1234567890";
    let bearer = "eyJhbGciOiJSUzI1NiJ9.SECRETBEARER";
    let mut request = council_request(2, 0x33);
    let span = &mut request.resource_spans[0].scope_spans[0].spans[0];
    span.attributes.extend([
        kv(
            "http.request.header.authorization",
            Value::StringValue(format!("Basic {SECRET}")),
        ),
        kv(
            "llm.prompt",
            Value::StringValue(format!("use {api_key} and write to ana@example.com")),
        ),
        kv("upstream", Value::StringValue(format!("Bearer {bearer}"))),
    ]);
    let grpc = agent.addr("OTLP/gRPC");
    grpc_export(format!("http://{grpc}"), request, false)
        .await
        .expect("accepted");
    let spans = sink.wait_for_spans(2).await;
    let started = Instant::now();
    // The resource's line, then one per span.
    while agent.output().lines().count() < 3 {
        assert!(
            started.elapsed() < WAIT,
            "console printed: {}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let redacted = spans
        .iter()
        .find(|(_, s)| s.attributes.iter().any(|kv| kv.key == "upstream"))
        .expect("the span with secrets");
    let value = |key: &str| {
        redacted
            .1
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    let text = |s: &str| Some(Value::StringValue(s.into()));
    assert_eq!(
        value("http.request.header.authorization"),
        text("[REDACTED]")
    );
    assert_eq!(
        value("llm.prompt"),
        text("use [REDACTED] and write to [REDACTED]")
    );
    assert_eq!(value("upstream"), text("Bearer [REDACTED]"));
    assert_eq!(agent.terminate(), 0);
    let everything = format!("{}{}", agent.output(), agent.logs());
    assert!(
        everything.contains("[REDACTED]"),
        "the console shows the redacted span"
    );
    for secret in [SECRET, api_key, bearer, "ana@example.com"] {
        assert!(
            !everything.contains(secret),
            "{secret} reached the output:\n{everything}"
        );
    }
}

//! Interop with the real OpenTelemetry Python SDK that Daena's services use: its OTLP
//! exporters (gRPC, HTTP/protobuf, HTTP/JSON) send Daena-shaped spans through the agent.
//! With the processors off the backend must receive exactly what the SDK encoded; with
//! them on (the default), the canonical Daena form, the semconv mirrors and no secrets.
//!
//! The virtualenvs come from the README's test command (`scripts/test.sh`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, InstrumentationScope, Resource, Span, Value,
};
use prost::Message;

/// The Python of a virtualenv made by `scripts/test.sh`.
fn python(venv: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(venv)
        .join("bin/python");
    assert!(
        path.exists(),
        "{} is missing: run the README's test command (scripts/test.sh), which creates the interop virtualenvs",
        path.display()
    );
    path
}

/// Every span with its resource and scope, ordered by span id.
fn spans_with_context(
    requests: &[&ExportTraceServiceRequest],
) -> Vec<(Option<Resource>, Option<InstrumentationScope>, Span)> {
    let mut all: Vec<_> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans.iter().flat_map(move |ss| {
                ss.spans
                    .iter()
                    .map(move |s| (rs.resource.clone(), ss.scope.clone(), s.clone()))
            })
        })
        .collect();
    all.sort_by(|a, b| a.2.span_id.cmp(&b.2.span_id));
    all
}

/// Runs the SDK script (`send_spans.py`) against `endpoint`; returns what the SDK encoded.
async fn run_sdk(
    venv: &str,
    protocol: &str,
    endpoint: String,
    flags: &[&str],
) -> ExportTraceServiceRequest {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/send_spans.py");
    let python = python(venv);
    let mut args = vec![
        script.to_string_lossy().into_owned(),
        protocol.to_owned(),
        endpoint,
        out.path().to_string_lossy().into_owned(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .output()
    })
    .await
    .expect("join")
    .expect("run python");
    assert!(
        output.status.success(),
        "the Python SDK could not export to the agent:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ExportTraceServiceRequest::decode(&std::fs::read(out.path()).expect("read")[..])
        .expect("SDK encoding")
}

/// Runs the SDK script against the agent and checks the sink received the same spans;
/// `queue` is the exporter's queue settings.
async fn python_sdk_round_trip(venv: &str, protocol: &str, gzip: bool, queue: &str) {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    queue: {{ {queue} }}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporters, NO_PROCESSORS)).await;
    let endpoint = match protocol {
        "grpc" => agent.grpc_url(),
        _ => agent.http_url(),
    };
    let flags: &[&str] = if gzip { &["--gzip"] } else { &[] };
    let sent = run_sdk(venv, protocol, endpoint, flags).await;
    let expected = spans_with_context(&[&sent]);
    assert!(expected.len() >= 10, "the script sends a whole Daena trace");

    sink.wait_for_spans(expected.len()).await;
    let received = sink.received();
    let got = spans_with_context(&received.iter().map(|r| &r.request).collect::<Vec<_>>());
    assert_eq!(got.len(), expected.len());
    for (got, expected) in got.iter().zip(&expected) {
        assert_eq!(
            got, expected,
            "span {:?} changed on the way",
            expected.2.name
        );
        assert_eq!(
            got.2.encode_to_vec(),
            expected.2.encode_to_vec(),
            "bit for bit"
        );
    }
    let every_type = got
        .iter()
        .map(|g| &g.2)
        .find(|s| s.name == "daena.every_type")
        .expect("every-type span");
    let int = every_type
        .attributes
        .iter()
        .find(|kv| kv.key == "attr.int")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref());
    assert_eq!(int, Some(&Value::IntValue(1 << 62)));
    assert_eq!(
        agent
            .wait_for_counter(
                "daena_agent_spans_exported_total{exporter=\"tempo\"}",
                expected.len() as u64
            )
            .await,
        expected.len() as u64
    );
    agent.stop().await;
}

#[tokio::test]
async fn python_sdk_over_grpc() {
    python_sdk_round_trip(".venv-interop", "grpc", false, "").await;
}

#[tokio::test]
async fn python_sdk_over_grpc_with_gzip() {
    python_sdk_round_trip(".venv-interop", "grpc", true, "").await;
}

#[tokio::test]
async fn python_sdk_over_http_protobuf() {
    python_sdk_round_trip(".venv-interop", "http", false, "").await;
}

#[tokio::test]
async fn python_sdk_over_http_protobuf_with_gzip() {
    python_sdk_round_trip(".venv-interop", "http", true, "").await;
}

#[tokio::test]
async fn python_sdk_over_http_json_with_an_empty_list_attribute() {
    python_sdk_round_trip(".venv-interop-json", "json", false, "").await;
}

/// With a persistent queue the agent answers only after the write (up to `batch.timeout`
/// later): the real SDK must see every export succeed, and every span must arrive.
#[tokio::test]
async fn python_sdk_with_a_persistent_queue_over_grpc_and_http() {
    for protocol in ["grpc", "http"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = format!("persistent: true, dir: \"{}\"", dir.path().display());
        python_sdk_round_trip(".venv-interop", protocol, false, &queue).await;
    }
}

#[tokio::test]
async fn python_sdk_spellings_arrive_canonical_mirrored_and_redacted() {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let processors = "processors:\n  daena:\n    service_name: council-api\n    resource_attributes: { deployment.environment.name: interop }\n";
    let agent = TestAgent::start(&agent_yaml(&exporters, processors)).await;
    let sent = run_sdk(".venv-interop", "grpc", agent.grpc_url(), &["--messy"]).await;
    let expected = spans_with_context(&[&sent]).len();
    let spans = sink.wait_for_spans(expected).await;
    assert_eq!(spans.len(), expected);

    let text = |s: &str| Some(Value::StringValue(s.into()));
    let attribute = |name: &str, key: &str| -> Option<Value> {
        let (_, span) = spans
            .iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| panic!("span {name}"));
        let matching: Vec<_> = span.attributes.iter().filter(|kv| kv.key == key).collect();
        assert!(matching.len() <= 1, "{key} twice on {name}");
        matching
            .first()
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    let table: &[(&str, &str, Option<Value>)] = &[
        ("council.round", "council.round_id", text("42")),
        ("council.round", "council.department", text("research")),
        ("council.round", "daena.component", text("council")),
        ("phase.scout", "council.phase", text("scout")),
        ("phase.debate", "council.phase", text("debate")),
        ("phase.commit", "council.phase", text("commit")),
        ("phase.commit", "council.Phase", None),
        (
            "message_bus.publish",
            "message_bus.operation",
            text("publish"),
        ),
        (
            "message_bus.publish",
            "message_bus.topic",
            text("council.events"),
        ),
        ("message_bus.publish", "message_bus.message_id", text("7")),
        ("message_bus.publish", "messaging.system", text("daena_bus")),
        (
            "message_bus.publish",
            "messaging.destination.name",
            text("council.events"),
        ),
        ("message_bus.publish", "messaging.message.id", text("7")),
        (
            "message_bus.publish",
            "messaging.operation.type",
            text("send"),
        ),
        (
            "message_bus.publish",
            "daena.component",
            text("message_bus"),
        ),
        ("tier.int", "nbmf.tier", text("l1")),
        ("tier.upper", "nbmf.tier", text("l2")),
        ("tier.word", "nbmf.tier", text("l3")),
        ("tier.word", "nbmf.operation", text("write")),
        ("tier.word", "daena.component", text("nbmf")),
        ("llm.exchange", "llm.model", text("gpt-4o")),
        ("llm.exchange", "gen_ai.request.model", text("gpt-4o")),
        ("llm.exchange", "llm.cas_hit", Some(Value::BoolValue(true))),
        ("llm.exchange", "llm.near_dup", Some(Value::BoolValue(true))),
        (
            "llm.exchange",
            "llm.cost_usd",
            Some(Value::DoubleValue(0.0123)),
        ),
        ("llm.exchange", "llm.cost", None),
        (
            "llm.exchange",
            "llm.prompt",
            text("reply to [REDACTED] using [REDACTED]"),
        ),
        (
            "llm.exchange",
            "http.request.header.authorization",
            text("[REDACTED]"),
        ),
        ("llm.exchange", "api_key", text("[REDACTED]")),
        ("llm.exchange", "daena.component", text("llm")),
        ("phase.unknown", "council.phase", text("planning")),
    ];
    for (name, key, value) in table {
        assert_eq!(&attribute(name, key), value, "{key} on {name}");
    }
    let errors = attribute("phase.unknown", "daena.schema.errors");
    assert!(
        format!("{errors:?}").contains("council.phase"),
        "{errors:?}"
    );

    let resource = spans[0].0.clone().expect("resource");
    let resource_value = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    };
    assert_eq!(
        resource_value("service.name"),
        text("council-api"),
        "unknown_service replaced"
    );
    assert_eq!(
        resource_value("deployment.environment.name"),
        text("interop")
    );
    assert_eq!(resource_value("db.password"), text("[REDACTED]"));
    assert!(
        agent
            .wait_for_counter("daena_agent_schema_errors_total{key=\"council.phase\"}", 1)
            .await
            >= 1
    );
    agent.stop().await;
}

#[tokio::test]
async fn python_sdk_traces_are_tail_sampled_whole_by_policy() {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let sampling = "processors:\n  sampling:\n    mode: tail\n    decision_wait: 300ms\n    policies:\n      - { name: errors, type: errors }\n      - { name: slow, type: latency, threshold: 2s }\n      - { name: commits, type: attribute, key: council.phase, values: [commit] }\n      - { name: pricey-llm, type: attribute, key: llm.cost_usd, at_least: 0.10 }\n";
    let agent = TestAgent::start(&agent_yaml(&exporters, sampling)).await;
    let sent = run_sdk(
        ".venv-interop",
        "grpc",
        agent.grpc_url(),
        &["--sampling-mix"],
    )
    .await;
    assert_eq!(
        spans_with_context(&[&sent]).len(),
        20,
        "ten two-span traces"
    );
    sink.wait_for_spans(8).await;
    // Stopping decides whatever is still held, so nothing else can arrive after this.
    agent.stop().await;
    let mut names: Vec<String> = sink.spans().into_iter().map(|(_, s)| s.name).collect();
    names.sort();
    let expected: Vec<String> = ["commit", "error", "pricey", "slow"]
        .iter()
        .flat_map(|k| [format!("mix.{k}"), format!("mix.{k}.child")])
        .collect();
    assert_eq!(names, expected);
}

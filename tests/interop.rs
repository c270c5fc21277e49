//! Interop with the real OpenTelemetry Python SDK that Daena's services use: its OTLP
//! exporters (gRPC, HTTP/protobuf, HTTP/JSON) send Daena-shaped spans through the agent,
//! and the backend must receive exactly what the SDK encoded.
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

/// Runs the SDK script against `endpoint` and checks the sink received the same spans.
async fn python_sdk_round_trip(venv: &str, protocol: &str, gzip: bool) {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporters, "")).await;
    let endpoint = match protocol {
        "grpc" => agent.grpc_url(),
        _ => agent.http_url(),
    };
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/send_spans.py");
    let python = python(venv);
    let mut args = vec![
        script.to_string_lossy().into_owned(),
        protocol.to_owned(),
        endpoint,
        out.path().to_string_lossy().into_owned(),
    ];
    if gzip {
        args.push("--gzip".into());
    }
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
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
    let sent = ExportTraceServiceRequest::decode(&std::fs::read(out.path()).expect("read")[..])
        .expect("SDK encoding");
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
    python_sdk_round_trip(".venv-interop", "grpc", false).await;
}

#[tokio::test]
async fn python_sdk_over_grpc_with_gzip() {
    python_sdk_round_trip(".venv-interop", "grpc", true).await;
}

#[tokio::test]
async fn python_sdk_over_http_protobuf() {
    python_sdk_round_trip(".venv-interop", "http", false).await;
}

#[tokio::test]
async fn python_sdk_over_http_protobuf_with_gzip() {
    python_sdk_round_trip(".venv-interop", "http", true).await;
}

#[tokio::test]
async fn python_sdk_over_http_json_with_an_empty_list_attribute() {
    python_sdk_round_trip(".venv-interop-json", "json", false).await;
}

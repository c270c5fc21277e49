//! The Daena demo program (`examples/daena_demo.py`, on the real OpenTelemetry Python
//! SDK) against the agent, over both OTLP protocols: every family of Daena span arrives,
//! normalised, however messily the program spelled it.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use daena_trace_agent::otlp::{Span, Value};

/// The families a Daena backend traces, as the agent's `daena.component` names them.
const FAMILIES: [&str; 5] = ["http", "council", "llm", "message_bus", "nbmf"];

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// Runs the demo for `count` chat requests with half its attributes spelled messily.
async fn run_demo(endpoint: String, protocol: &str, count: usize) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/daena_demo.py");
    let mut command = Command::new(venv_python(".venv-interop"));
    command
        .arg(script)
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            "50",
            "--messy",
            "0.5",
        ])
        .args(["--errors", "0.2", "--seed", "7"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env_remove("OTEL_SERVICE_NAME");
    let (status, output) = run_bounded(command, Duration::from_secs(60)).await;
    assert!(status.success(), "the demo failed:\n{output}");
    output
}

#[tokio::test]
async fn the_demo_sends_every_daena_family_and_arrives_normalised() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &format!(
            "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
            sink.addr
        ),
        "",
    ))
    .await;
    let grpc = run_demo(agent.grpc_url(), "grpc", 10).await;
    let http = run_demo(
        format!("http://{}", agent.http.expect("http receiver")),
        "http/protobuf",
        10,
    )
    .await;
    assert!(grpc.contains("sent 10 chat requests"), "{grpc}");
    assert!(http.contains("sent 10 chat requests"), "{http}");

    // Per chat request: the HTTP span, a round, 3 phases, 1 to 3 LLM calls, a publish and
    // a subscribe, a read and a write: at least 10 spans.
    let spans = sink.wait_for_spans(2 * 10 * 10).await;
    let components: BTreeSet<&str> = spans
        .iter()
        .filter_map(|(_, span)| string_attribute(span, "daena.component"))
        .collect();
    for family in FAMILIES {
        assert!(components.contains(family), "{family} in {components:?}");
    }
    for (_, span) in &spans {
        for kv in &span.attributes {
            let family = kv.key.split(['.', '_', '-']).next().unwrap_or_default();
            if ["council", "nbmf", "llm", "message"].contains(&family.to_lowercase().as_str())
                && !["message_bus.retry_after_ms", "council.topic"].contains(&kv.key.as_str())
            {
                assert!(
                    kv.key == kv.key.to_lowercase() && !kv.key.contains('-'),
                    "{} left as spelled on {:?}",
                    kv.key,
                    span.name
                );
            }
        }
        if let Some(tier) = string_attribute(span, "nbmf.tier") {
            assert!(["l1", "l2", "l3"].contains(&tier), "tier {tier:?}");
        }
        if let Some(phase) = string_attribute(span, "council.phase") {
            assert!(
                ["scout", "debate", "commit"].contains(&phase),
                "phase {phase:?}"
            );
        }
        let cas_hit = span.attributes.iter().find(|kv| kv.key == "llm.cas_hit");
        if let Some(kv) = cas_hit {
            assert!(
                matches!(
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(Value::BoolValue(_))
                ),
                "llm.cas_hit is a boolean: {kv:?}"
            );
        }
        assert!(
            string_attribute(span, "daena.schema.errors").is_none(),
            "every spelling the demo uses is one the agent knows: {span:?}"
        );
    }
    let errors = spans
        .iter()
        .filter(|(_, span)| span.status.as_ref().is_some_and(|s| s.code == 2))
        .count();
    assert!(errors > 0, "some requests fail");
    agent.stop().await;
}

#[tokio::test]
async fn the_demo_explains_itself_and_refuses_to_run_forever() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/daena_demo.py");
    let mut help = Command::new(venv_python(".venv-interop"));
    help.arg(&script).arg("--help");
    let (status, output) = run_bounded(help, Duration::from_secs(30)).await;
    assert!(status.success(), "{output}");
    for option in [
        "--rate",
        "--messy",
        "--duration",
        "--count",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        assert!(output.contains(option), "--help names {option}:\n{output}");
    }
    let mut unbounded = Command::new(venv_python(".venv-interop"));
    unbounded.arg(&script);
    let (status, output) = run_bounded(unbounded, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(
        output.contains("give --duration SECONDS or --count N"),
        "{output}"
    );
}

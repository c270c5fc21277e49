//! A real FastAPI app, instrumented with `opentelemetry-instrumentation-fastapi` as Daena's
//! backend is, exports through the agent to a gRPC backend (`tests/interop/fastapi_app.py`:
//! chat and council requests, and health probes). The instrumentation makes an INTERNAL
//! span for every ASGI message and a trace for every probe: the `processors.filter` stage,
//! on by default, drops both and counts them by reason; turned to `keep` with no health
//! routes it lets everything through.
//!
//! The virtualenv (`.venv-fastapi`) comes from the README's test command (`scripts/test.sh`).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::{Span, Value};

/// The longest the app may take: starting FastAPI, 18 requests and the final flush.
const APP_DEADLINE: Duration = Duration::from_secs(60);

/// The health routes the app serves; both are in the filter's default `health_routes`.
const HEALTH_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// OTLP span kinds.
const INTERNAL: i32 = 1;
const SERVER: i32 = 2;

/// The drop counters of the filter stage, by reason.
const ASGI_DROPS: &str = "daena_agent_spans_dropped_total{stage=\"filter\",reason=\"asgi_event\"}";
const HEALTH_DROPS: &str =
    "daena_agent_spans_dropped_total{stage=\"filter\",reason=\"health_route\"}";
const RULE_DROPS: &str = "daena_agent_spans_dropped_total{stage=\"filter\",reason=\"rule\"}";

/// What the app says it sent (the JSON line it prints last).
#[derive(Debug, serde::Deserialize)]
struct Summary {
    /// Every span the app made.
    spans: u64,
    /// INTERNAL spans carrying `asgi.event.type`.
    asgi_event: u64,
    /// SERVER spans of the health routes and the spans under them.
    health_probe: u64,
    /// The health probes' SERVER spans.
    probes: u64,
    /// Spans that either default rule matches.
    dropped_by_default: u64,
    /// Spans by name.
    names: BTreeMap<String, u64>,
    /// Spans by name that neither default rule matches.
    kept_names: BTreeMap<String, u64>,
    /// Spans the SDK's exporter reported as exported.
    exported: u64,
}

/// Runs the FastAPI app, exporting to the agent's gRPC receiver at `endpoint`; returns what
/// it says it sent.
async fn run_app(endpoint: &str) -> Summary {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fastapi_app.py");
    let mut command = Command::new(venv_python(".venv-fastapi"));
    command.arg(script).arg(endpoint);
    // No OTEL_* variable of the caller may change what the app makes or where it goes
    // (excluded URLs, semconv opt-in, another endpoint).
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
        command.env_remove(name);
    }
    let (status, output) = run_bounded(command, APP_DEADLINE).await;
    assert!(
        status.success(),
        "the FastAPI app could not export to the agent:\n{output}"
    );
    let line = output
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("the app printed no summary:\n{output}"));
    let summary: Summary = serde_json::from_str(line).expect("the app's summary");
    // What the instrumentation makes, so the assertions below test something: ASGI event
    // spans on every request, ten probes, and every span exported by the SDK.
    assert_eq!(summary.probes, 10, "{summary:?}");
    assert!(summary.asgi_event > summary.probes, "{summary:?}");
    assert!(summary.health_probe > summary.probes, "{summary:?}");
    assert_eq!(summary.exported, summary.spans, "{summary:?}");
    assert_eq!(
        summary.names.values().sum::<u64>(),
        summary.spans,
        "{summary:?}"
    );
    summary
}

/// An agent exporting to a gRPC backend, with `processors` appended to its config.
async fn start(processors: &str) -> (TestAgent, Sink) {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    (
        TestAgent::start(&agent_yaml(&exporters, processors)).await,
        sink,
    )
}

/// Spans by name.
fn by_name(spans: &[Span]) -> BTreeMap<String, u64> {
    let mut names = BTreeMap::new();
    for span in spans {
        *names.entry(span.name.clone()).or_insert(0) += 1;
    }
    names
}

/// The string value of `span`'s attribute `key`, if it has one.
fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
}

/// Whether `span` is an ASGI event span as the instrumentation makes it.
fn asgi_event(span: &Span) -> bool {
    span.kind == INTERNAL && span.attributes.iter().any(|kv| kv.key == "asgi.event.type")
}

/// Waits (bounded by [`WAIT`]) until the filter's drops add up to at least `n`; returns
/// the counts by reason (ASGI event, health route). A batch of dropped spans only moves
/// these counters, so they are what says the agent has seen everything.
async fn wait_for_drops(agent: &TestAgent, n: u64) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let metrics = agent.metrics().await;
        let drops = (
            counter_value(&metrics, ASGI_DROPS),
            counter_value(&metrics, HEALTH_DROPS),
        );
        if drops.0 + drops.1 >= n || started.elapsed() > WAIT {
            return drops;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fastapi_noise_is_dropped_by_default() {
    let (agent, sink) = start("").await;
    let sent = run_app(&agent.grpc_url()).await;
    let kept = sent.spans - sent.dropped_by_default;
    assert_eq!(kept, sent.kept_names.values().sum::<u64>(), "{sent:?}");
    sink.wait_for_spans(kept as usize).await;
    let (asgi, health) = wait_for_drops(&agent, sent.dropped_by_default).await;
    assert_eq!(
        agent
            .wait_for_counter("daena_agent_spans_exported_total{exporter=\"tempo\"}", kept)
            .await,
        kept,
        "spans counted as exported"
    );
    let rules = agent.counter(RULE_DROPS).await;
    // Stopping drains the agent: nothing can arrive after this.
    agent.stop().await;

    let spans: Vec<Span> = sink.spans().into_iter().map(|(_, span)| span).collect();
    assert_eq!(by_name(&spans), sent.kept_names, "spans at the backend");
    for span in &spans {
        assert!(!asgi_event(span), "an ASGI event span arrived: {span:?}");
        let route = string_attribute(span, "http.route");
        assert!(
            !route.is_some_and(|r| HEALTH_ROUTES.contains(&r)),
            "a health probe arrived: {span:?}"
        );
    }
    // The traces that remain are whole: each handler span hangs under a request's SERVER
    // span that arrived with it.
    for handler in spans
        .iter()
        .filter(|s| ["llm.exchange", "council.round"].contains(&s.name.as_str()))
    {
        let parent = spans
            .iter()
            .find(|s| s.span_id == handler.parent_span_id)
            .unwrap_or_else(|| panic!("{} arrived without its request span", handler.name));
        assert_eq!(parent.kind, SERVER, "{parent:?}");
        assert!(
            string_attribute(parent, "http.route").is_some_and(|r| r.starts_with("/api/v1/")),
            "{parent:?}"
        );
    }

    // Every dropped span is counted once, under one reason or the other: an ASGI child of
    // a probe matches both rules, so only the sum and the probes themselves are fixed.
    assert_eq!(
        asgi + health,
        sent.dropped_by_default,
        "drops by reason (asgi_event {asgi}, health_route {health}) of {sent:?}"
    );
    assert!(asgi > 0, "asgi_event drops: {asgi}");
    assert!(
        health >= sent.probes,
        "health_route drops ({health}) count at least the probes' own spans"
    );
    assert_eq!(rules, 0, "no rule is configured");
}

#[tokio::test]
async fn keep_and_empty_health_routes_bring_them_back() {
    let (agent, sink) =
        start("processors: { filter: { asgi_send_receive: keep, health_routes: [] } }\n").await;
    let sent = run_app(&agent.grpc_url()).await;
    sink.wait_for_spans(sent.spans as usize).await;
    let metrics = agent.metrics().await;
    agent.stop().await;

    let spans: Vec<Span> = sink.spans().into_iter().map(|(_, span)| span).collect();
    assert_eq!(by_name(&spans), sent.names, "spans at the backend");
    assert_eq!(
        spans.iter().filter(|s| asgi_event(s)).count() as u64,
        sent.asgi_event,
        "ASGI event spans at the backend"
    );
    for series in [ASGI_DROPS, HEALTH_DROPS, RULE_DROPS] {
        assert_eq!(counter_value(&metrics, series), 0, "{series}");
    }
}

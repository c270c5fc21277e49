//! Interop with the real OpenTelemetry Python SDK that Daena's services use: its OTLP
//! exporters (gRPC, HTTP/protobuf, HTTP/JSON, each plain and gzipped) send Daena-shaped
//! spans through the agent to a gRPC and an HTTP/protobuf backend. With the processors off
//! each backend must receive what the SDK sent (byte for byte from protobuf clients); with
//! them on (the default), the same but for the Daena attributes, which arrive in the
//! canonical Daena form, with the semconv mirrors and no secrets.
//!
//! The virtualenvs come from the README's test command (`scripts/test.sh`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes};
use common::*;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, InstrumentationScope, Resource, ResourceSpans, Span, Value,
    span_count,
};
use prost::Message;

/// One run of the SDK script: a trace (`daena`, `messy` or `mix`) sent with the OTLP
/// exporter for `protocol` (`grpc`, `http`, `json`) to `endpoint`.
struct Run {
    protocol: &'static str,
    endpoint: String,
    gzip: bool,
    trace: &'static str,
}

/// The longest the SDK script may take for all its runs.
const SDK_DEADLINE: Duration = Duration::from_secs(60);

/// Runs the SDK script (`send_spans.py`) in `venv` once for all `runs`, one after the
/// other (starting the SDK costs more than a run); returns for each run what the SDK sent:
/// the protobuf body of each export call, in order.
async fn run_sdk(venv: &str, runs: &[Run]) -> Vec<Vec<Bytes>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let outs: Vec<PathBuf> = (0..runs.len())
        .map(|i| dir.path().join(format!("run{i}.json")))
        .collect();
    let jobs: Vec<serde_json::Value> = runs
        .iter()
        .zip(&outs)
        .map(|(run, out)| {
            serde_json::json!({
                "protocol": run.protocol,
                "endpoint": run.endpoint,
                "gzip": run.gzip,
                "trace": run.trace,
                "out": out,
            })
        })
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/send_spans.py");
    let mut command = Command::new(venv_python(venv));
    command
        .arg(script)
        .arg(serde_json::Value::Array(jobs).to_string())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES");
    let (status, output) = run_bounded(command, SDK_DEADLINE).await;
    assert!(
        status.success(),
        "the Python SDK could not export to the agent:\n{output}"
    );
    outs.iter()
        .map(|out| {
            let text = std::fs::read_to_string(out).expect("the script's output");
            let written: serde_json::Value = serde_json::from_str(&text).expect("json");
            written["requests"]
                .as_array()
                .expect("requests")
                .iter()
                .map(|r| {
                    let encoded = r.as_str().expect("base64");
                    let body = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .expect("base64");
                    Bytes::from(body)
                })
                .collect()
        })
        .collect()
}

/// The spans of what the SDK sent.
fn sent_spans(sent: &[Bytes]) -> usize {
    sent.iter()
        .map(|body| {
            let request = ExportTraceServiceRequest::decode(body.clone()).expect("SDK encoding");
            span_count(&request.resource_spans)
        })
        .sum()
}

/// The `resource_spans` fields of an encoded export request, each the bytes of one
/// ResourceSpans message as they are on the wire.
fn resource_spans_fields(body: &Bytes) -> Vec<Bytes> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut buf = body.clone();
    let mut fields = Vec::new();
    while buf.has_remaining() {
        let key = decode_key(&mut buf).expect("a field key");
        assert_eq!(
            key,
            (1, WireType::LengthDelimited),
            "an export request holds resource_spans only"
        );
        let len = decode_varint(&mut buf).expect("a length") as usize;
        fields.push(buf.split_to(len));
    }
    fields
}

/// A span with everything that says where it comes from: its resource and scope, each
/// with its schema URL.
#[derive(Clone, Debug, PartialEq)]
struct SpanInContext {
    resource: Option<Resource>,
    resource_schema_url: String,
    scope: Option<InstrumentationScope>,
    scope_schema_url: String,
    span: Span,
}

/// Every span of `request` in its context, in order.
fn spans_in_context(request: &ExportTraceServiceRequest) -> Vec<SpanInContext> {
    let mut out = Vec::new();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(SpanInContext {
                    resource: rs.resource.clone(),
                    resource_schema_url: rs.schema_url.clone(),
                    scope: ss.scope.clone(),
                    scope_schema_url: ss.schema_url.clone(),
                    span: span.clone(),
                });
            }
        }
    }
    out
}

/// How a backend's copy must match what the SDK sent.
#[derive(Clone, Copy, Debug)]
enum Match {
    /// Byte for byte: the agent forwards protobuf as it came, each SDK request's
    /// `resource_spans` as they were.
    Bytes,
    /// Span for span, each with its resource and scope: the agent decoded OTLP/JSON, and
    /// may group spans of the same resource and scope from several requests.
    Decoded,
    /// As `Decoded` but for the attributes the default Daena stages normalise, add or
    /// redact.
    ButDaenaAttributes,
}

/// Resource attributes the daena stage adds when a service did not set them:
/// `service.name` and what `resource_from_env` reads by default.
const RESOURCE_ADDED: [&str; 7] = [
    "service.name",
    "k8s.pod.name",
    "k8s.namespace.name",
    "k8s.node.name",
    "service.instance.id",
    "host.name",
    "deployment.environment.name",
];

/// Whether the Daena stages may normalise, add or redact a span attribute of this key:
/// the schema's families, the derived `daena.*` and the semconv mirrors.
fn daena_attribute(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "council.",
        "message_bus.",
        "nbmf.",
        "llm.",
        "daena.",
        "gen_ai.",
        "messaging.",
    ]
    .iter()
    .any(|family| key.starts_with(family))
}

/// `span` without what the default stages may change: its Daena attributes, and resource
/// attributes the agent adds that are not among `sent_keys` (the SDK's own).
fn without_daena_attributes(mut span: SpanInContext, sent_keys: &[String]) -> SpanInContext {
    if let Some(resource) = span.resource.as_mut() {
        resource
            .attributes
            .retain(|kv| !RESOURCE_ADDED.contains(&kv.key.as_str()) || sent_keys.contains(&kv.key));
    }
    span.span.attributes.retain(|kv| !daena_attribute(&kv.key));
    span
}

/// Checks that `sink` received exactly the spans of `sent` (the SDK's export calls):
/// each once, with its resource and scope, equal as `how` says, and within one export
/// request in the order the SDK sent them (an exporter has several requests in flight,
/// so requests may arrive in any order, but a batch keeps the order it was filled in).
fn assert_arrived_as_sent(sent: &[Bytes], sink: &Sink, how: Match, what: &str) {
    let sent_spans: Vec<SpanInContext> = sent
        .iter()
        .flat_map(|body| {
            spans_in_context(&ExportTraceServiceRequest::decode(body.clone()).expect("SDK"))
        })
        .collect();
    let index: HashMap<Vec<u8>, usize> = sent_spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span.span_id.clone(), i))
        .collect();
    let sent_fields: Vec<Bytes> = sent.iter().flat_map(resource_spans_fields).collect();
    let mut arrived = vec![0; sent_spans.len()];
    for received in sink.received() {
        let mut previous = None;
        for got in spans_in_context(&received.request) {
            let i = *index
                .get(&got.span.span_id)
                .unwrap_or_else(|| panic!("{what}: a span the SDK never sent: {got:?}"));
            arrived[i] += 1;
            assert!(
                previous < Some(i),
                "{what}: span {i} came after span {previous:?} in one export request"
            );
            previous = Some(i);
            let sent = sent_spans[i].clone();
            if let Match::ButDaenaAttributes = how {
                let sent_keys: Vec<String> = sent
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .map(|kv| kv.key.clone())
                    .collect();
                assert_eq!(
                    without_daena_attributes(got, &sent_keys),
                    without_daena_attributes(sent, &sent_keys),
                    "{what}: span {i} changed beyond its Daena attributes"
                );
            } else {
                assert_eq!(got, sent, "{what}: span {i} changed on the way");
            }
        }
        if let Match::Bytes = how {
            for field in resource_spans_fields(&received.body) {
                assert!(
                    sent_fields.contains(&field),
                    "{what}: resource spans the SDK did not send byte for byte: {:?}",
                    ResourceSpans::decode(field)
                );
            }
        }
    }
    assert!(
        arrived.iter().all(|&n| n == 1),
        "{what}: times each span the SDK sent arrived: {arrived:?}"
    );
}

/// An agent in this process exporting to a gRPC backend (`tempo`, uncompressed) and an
/// HTTP/protobuf one (`grafana`, gzipped).
struct Forwarder {
    agent: TestAgent,
    grpc: Sink,
    http: Sink,
    /// The persistent queues' directory, if the exporters have them.
    _queue_dir: Option<tempfile::TempDir>,
}

impl Forwarder {
    /// `extra` is appended to the config (the processors); with `persistent` both
    /// exporters have persistent queues, in a directory of this agent's own.
    async fn start(extra: &str, persistent: bool) -> Self {
        let (grpc, http) = (Sink::grpc().await, Sink::http().await);
        let queue_dir = persistent.then(|| tempfile::tempdir().expect("tempdir"));
        let queue = queue_dir.as_ref().map_or_else(String::new, |dir| {
            format!("persistent: true, dir: \"{}\"", dir.path().display())
        });
        let exporters = format!(
            "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    compression: none\n    queue: {{ {queue} }}\n  grafana:\n    protocol: http/protobuf\n    endpoint: http://{}\n    queue: {{ {queue} }}\n",
            grpc.addr, http.addr
        );
        let agent = TestAgent::start(&agent_yaml(&exporters, extra)).await;
        Self {
            agent,
            grpc,
            http,
            _queue_dir: queue_dir,
        }
    }

    /// The agent's receiver for the SDK exporter of `protocol`.
    fn endpoint(&self, protocol: &str) -> String {
        match protocol {
            "grpc" => self.agent.grpc_url(),
            _ => self.agent.http_url(),
        }
    }

    /// Checks that both backends got what the SDK `sent`, matched as `how` says, and that
    /// the agent counted every span as exported; stops the agent first, so nothing can
    /// arrive after the check.
    async fn assert_forwarded(self, sent: &[Bytes], how: Match, what: &str) {
        let spans = sent_spans(sent);
        assert!(spans >= 10, "{what}: the SDK sent a whole Daena trace");
        for (sink, exporter) in [(&self.grpc, "tempo"), (&self.http, "grafana")] {
            sink.wait_for_spans(spans).await;
            let exported = format!("daena_agent_spans_exported_total{{exporter=\"{exporter}\"}}");
            assert_eq!(
                self.agent.wait_for_counter(&exported, spans as u64).await,
                spans as u64,
                "{what}: spans counted as exported by {exporter}"
            );
        }
        self.agent.stop().await;
        assert_arrived_as_sent(sent, &self.grpc, how, &format!("{what} to gRPC"));
        assert_arrived_as_sent(sent, &self.http, how, &format!("{what} to HTTP"));
    }
}

/// Sends the Daena trace with the SDK in `venv` over each of `ways` (protocol, gzip),
/// each to its own agent started with `extra` (and persistent queues if `persistent`),
/// and checks both backends of each got what the SDK sent, matched as `how` says;
/// Processors off, in one pipeline shard: more would split a request by trace id, each
/// part's resource spans framed anew, so only the spans would arrive byte for byte.
fn one_shard() -> String {
    format!("{NO_PROCESSORS}pipeline: {{ shards: 1 }}\n")
}

/// returns the backends.
async fn round_trips(
    venv: &str,
    ways: &[(&'static str, bool)],
    extra: &str,
    persistent: bool,
    how: Match,
) -> Vec<(Sink, Sink)> {
    let mut forwarders = Vec::new();
    for _ in ways {
        forwarders.push(Forwarder::start(extra, persistent).await);
    }
    let runs: Vec<Run> = ways
        .iter()
        .zip(&forwarders)
        .map(|(&(protocol, gzip), forwarder)| Run {
            protocol,
            endpoint: forwarder.endpoint(protocol),
            gzip,
            trace: "daena",
        })
        .collect();
    let sent = run_sdk(venv, &runs).await;
    let mut sinks = Vec::new();
    for ((&(protocol, gzip), forwarder), sent) in ways.iter().zip(forwarders).zip(&sent) {
        sinks.push((forwarder.grpc.clone(), forwarder.http.clone()));
        let what = format!("SDK {protocol} (gzip: {gzip})");
        forwarder.assert_forwarded(sent, how, &what).await;
    }
    sinks
}

#[tokio::test]
async fn python_sdk_protobuf_over_grpc_and_http_reaches_both_backends_byte_for_byte() {
    let ways = [
        ("grpc", false),
        ("grpc", true),
        ("http", false),
        ("http", true),
    ];
    round_trips(".venv-interop", &ways, &one_shard(), false, Match::Bytes).await;
}

#[tokio::test]
async fn python_sdk_json_with_an_empty_list_attribute_reaches_both_backends_unchanged() {
    let ways = [("json", false), ("json", true)];
    round_trips(
        ".venv-interop-json",
        &ways,
        NO_PROCESSORS,
        false,
        Match::Decoded,
    )
    .await;
}

/// With a persistent queue the agent answers only after the write (up to `batch.timeout`
/// later): the real SDK must see every export succeed, and every span must arrive.
#[tokio::test]
async fn python_sdk_with_a_persistent_queue_over_grpc_and_http() {
    let ways = [("grpc", false), ("http", false)];
    round_trips(".venv-interop", &ways, &one_shard(), true, Match::Bytes).await;
}

#[tokio::test]
async fn python_sdk_spans_through_the_default_processors_change_only_in_daena_attributes() {
    let sinks = round_trips(
        ".venv-interop",
        &[("grpc", true)],
        "",
        false,
        Match::ButDaenaAttributes,
    )
    .await;
    // The stages did run: every span says which Daena component it belongs to.
    for (grpc, http) in sinks {
        for sink in [grpc, http] {
            for (_, span) in sink.spans() {
                assert!(
                    span.attributes.iter().any(|kv| kv.key == "daena.component"),
                    "{} has no daena.component",
                    span.name
                );
            }
        }
    }
}

#[tokio::test]
async fn python_sdk_spellings_arrive_canonical_mirrored_and_redacted() {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let processors = "processors:
  daena:
    service_name: council-api
    resource_attributes: { deployment.environment.name: interop }
    schema:
      - key: tool.name
        type: one_of
        values: [search]
        spellings: [{ value: search, as: [web_search] }]
        aliases: [tool.id]
        mirror: gen_ai.tool.name
";
    let agent = TestAgent::start(&agent_yaml(&exporters, processors)).await;
    let run = Run {
        protocol: "grpc",
        endpoint: agent.grpc_url(),
        gzip: false,
        trace: "messy",
    };
    let expected = sent_spans(&run_sdk(".venv-interop", &[run]).await[0]);
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
        ("council.round", "council.topic", text("memory tiering")),
        (
            "message_bus.publish",
            "message_bus.sender",
            text("agent-scout-3"),
        ),
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
        ("tool.call", "tool.name", text("search")),
        ("tool.call", "Tool_ID", None),
        ("tool.call", "gen_ai.tool.name", text("search")),
        ("tool.call", "daena.component", text("tool")),
    ];
    for (name, key, value) in table {
        assert_eq!(&attribute(name, key), value, "{key} on {name}");
    }
    let (_, publish) = spans
        .iter()
        .find(|(_, s)| s.name == "message_bus.publish" && s.events.len() == 1)
        .expect("the messy publish span with its event");
    let event = &publish.events[0];
    assert_eq!(
        event.name, "message_bus.rate_limited",
        "RateLimited renamed"
    );
    assert_eq!(
        event
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone().and_then(|v| v.value)))
            .collect::<Vec<_>>(),
        [("message_bus.retry_after_ms", Some(Value::IntValue(250)))]
    );
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
    let run = Run {
        protocol: "grpc",
        endpoint: agent.grpc_url(),
        gzip: false,
        trace: "mix",
    };
    let sent = run_sdk(".venv-interop", &[run]).await;
    assert_eq!(sent_spans(&sent[0]), 20, "ten two-span traces");
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

//! The span stages on the wire form against their oracle, the decoded form.
//!
//! The span pass (daena, attribute actions, redact, limits, and the signals counter when it
//! counts inside the pass) is to edit encoded spans in place instead of decoding each one.
//! The decoded path is the oracle: every test here feeds the same requests once as a
//! decoded batch ([`SpanBatch::new`]) and once as an encoded one
//! ([`SpanBatch::from_encoded`]) through processors built from one config, and requires the
//! same spans out, the same metrics and the same status-page mix. While both paths decode,
//! the tests hold trivially; they are written so that they bite once the wire path exists.
//!
//! Sampling is left out of every config: head and tail sampling have their own oracle
//! tests, and the filter, which may run before the pass, is on or off at random.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;

use crate::config::attributes::{ActionKind, AttributeAction, AttributeValue, AttributesConfig};
use crate::config::filter::{FilterRule, KeepOrDrop, MatchValue};
use crate::config::schema::{SchemaRow, ValueType};
use crate::config::{
    Config, DaenaConfig, LimitsConfig, MIN_VALUE_LENGTH, ProcessorsConfig, RedactConfig, Secret,
    SignalsConfig, located,
};
use crate::otlp::view::arbitrary;
use crate::otlp::wire::scan_request;
use crate::otlp::{
    AnyValue, ArrayValue, Event, ExportTraceServiceRequest, InstrumentationScope, KeyValue,
    KeyValueList, Link, Resource, ResourceSpans, ScopeSpans, Span, SpanBatch, Status, Value,
};
use crate::processor::build;
use crate::telemetry::Metrics;
use crate::telemetry::mix::DaenaMix;

/// Real request bodies of the OpenTelemetry Python SDK (protobuf, uncompressed, as
/// `fuzz/seeds/capture.py` captured them): Daena's spans as the tracing guide writes them,
/// and the same traffic with messy spellings. (The `gzip_body` seeds hold the same bodies
/// behind the fuzz harness's mode byte, so they are not requests themselves.)
const SDK_BODIES: [(&str, &[u8]); 2] = [
    (
        "sdk-daena",
        include_bytes!("../../fuzz/seeds/wire_scan/sdk-daena.pb"),
    ),
    (
        "sdk-messy",
        include_bytes!("../../fuzz/seeds/wire_scan/sdk-messy.pb"),
    ),
];

/// One path through the processors: its own stages, metrics and mix, so that nothing the
/// other path does can leak into what this one reports.
struct Path {
    processors: Vec<Box<dyn super::Processor>>,
    metrics: Arc<Metrics>,
    mix: Arc<DaenaMix>,
}

impl Path {
    fn new(config: &ProcessorsConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let mix = Arc::new(DaenaMix::default());
        let processors = build(config, &metrics, &mix);
        Self {
            processors,
            metrics,
            mix,
        }
    }

    /// Runs `batch` through every processor in order and wraps what is left into a request.
    ///
    /// What the stages leave encoded must still be a request the receivers would accept,
    /// with the span count it is filed under: the queues and exporters forward encoded
    /// parts as they are and count spans by those counts, never by decoding.
    fn run(&mut self, mut batch: SpanBatch) -> ExportTraceServiceRequest {
        for processor in &mut self.processors {
            processor.process(&mut batch);
        }
        assert_eq!(
            batch.take_undecodable(),
            0,
            "an encoded part failed to decode"
        );
        for (body, spans) in batch.clone().into_parts().0 {
            let scan = scan_request(&body).expect("the wire scan accepts an encoded part");
            assert_eq!(scan.spans, spans, "an encoded part's span count");
        }
        let spans = batch.span_count();
        let request = batch.into_request();
        assert_eq!(
            spans,
            crate::otlp::span_count(&request.resource_spans),
            "the batch's span count"
        );
        request
    }

    /// The rendered metrics as a sorted list of lines. Sorted, because the series of one
    /// metric come out in the order of a hash map, which differs from one `Metrics` to the
    /// next; every sample line names its metric and labels, so nothing is lost. Without
    /// the lines that measure the process rather than the spans: the resident memory
    /// gauge reads `/proc` at render time, so two renders differ whatever the stages did.
    /// Nothing else in the rendering depends on time or on the process.
    fn metrics(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .metrics
            .render()
            .lines()
            .filter(|line| !line.contains("process_resident_memory_bytes"))
            .map(str::to_owned)
            .collect();
        lines.sort_unstable();
        lines
    }
}

/// `request` encoded as a request body, checked to be one the receivers would accept, in a
/// batch with the span count the scan gives.
fn encoded_batch(request: &ExportTraceServiceRequest) -> SpanBatch {
    let body = request.encode_to_vec();
    let scan = scan_request(&body).expect("the wire scan accepts the encoded request");
    assert_eq!(
        scan.spans,
        crate::otlp::span_count(&request.resource_spans),
        "the scan counts the request's spans"
    );
    SpanBatch::from_encoded(Bytes::from(body), scan.spans)
}

/// Feeds `requests`, in order, once decoded and once encoded through processors built from
/// `config`, and panics where the two paths differ: in the spans of any batch, in the
/// metrics or in the mix. Several batches in a row exercise what stages carry from one to
/// the next (the filter's probe memory, the signals' rounds, key caches).
fn run_both(config: &ProcessorsConfig, requests: &[&ExportTraceServiceRequest]) {
    assert!(
        config.sampling.is_none(),
        "sampling has its own oracle tests"
    );
    let mut decoded_path = Path::new(config);
    let mut encoded_path = Path::new(config);
    for (i, request) in requests.iter().enumerate() {
        let decoded = decoded_path.run(SpanBatch::new(request.resource_spans.clone()));
        let encoded = encoded_path.run(encoded_batch(request));
        // Compared by their encodings: field for field what the structs hold, but with
        // doubles compared by their bits, so that a NaN equals itself. The order of fields
        // on the wire is left free: both are decoded first.
        if decoded.encode_to_vec() != encoded.encode_to_vec() {
            assert_eq!(
                decoded, encoded,
                "batch {i}: the encoded path's spans (right) differ from the decoded path's (left)"
            );
            panic!("batch {i}: the paths differ in the bits of a double");
        }
    }
    let (decoded_metrics, encoded_metrics) = (decoded_path.metrics(), encoded_path.metrics());
    if decoded_metrics != encoded_metrics {
        let missing = |from: &[String], of: &[String]| -> Vec<String> {
            of.iter()
                .filter(|line| !from.contains(line))
                .cloned()
                .collect()
        };
        panic!(
            "the paths' metrics differ; only decoded: {:#?}; only encoded: {:#?}",
            missing(&encoded_metrics, &decoded_metrics),
            missing(&decoded_metrics, &encoded_metrics),
        );
    }
    // Both mixes started within the test, in the same minute: their windows line up.
    assert_eq!(
        decoded_path.mix.snapshot(),
        encoded_path.mix.snapshot(),
        "the encoded path's mix (right) differs from the decoded path's (left)"
    );
}

/// Panics unless `processors` is a section a user could write: one `Config::validate`
/// accepts, the rest of the config at its defaults.
fn assert_valid(processors: &ProcessorsConfig) {
    let config = Config {
        processors: processors.clone(),
        ..Config::default()
    };
    let errors = config.validate();
    assert!(errors.is_empty(), "{errors:?} in {processors:#?}");
}

// ---- Values and attributes of Daena's spans -------------------------------------------

fn text(s: &str) -> Value {
    Value::StringValue(s.into())
}

fn any_value(value: Value) -> AnyValue {
    AnyValue { value: Some(value) }
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// An array holding `leaf` inside `depth` arrays and key-value lists, alternately.
fn nested(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, level| {
        if level % 2 == 0 {
            Value::ArrayValue(ArrayValue {
                values: vec![any_value(inner), any_value(text("plain"))],
            })
        } else {
            Value::KvlistValue(KeyValueList {
                values: vec![kv("password", Some(any_value(inner))), kv("note", None)],
            })
        }
    })
}

/// A JSON Web Token, as the redactor looks for them.
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXBhcnQtb2YtaXQ";
/// A key with a well-known prefix.
const API_KEY: &str = "sk-proj-abcdefghijklmnopqrstuvwx0123";
/// A bearer credential long enough to be one.
const BEARER: &str = "Bearer abcdefghijklmnopqrstuvwxyz0123456789";

/// Values of every kind the stages edit, convert, reject, mask or cut.
fn value() -> impl Strategy<Value = Option<AnyValue>> {
    let strings = prop::sample::select(vec![
        // Schema values, canonical and in other spellings, and ones that fail.
        "gpt-4o",
        " gpt-4o ",
        "scout",
        " Scout ",
        "DEBATE",
        "commit",
        "bogus",
        "publish",
        "Subscribe",
        "read",
        "tier 1",
        "L2",
        "tier-3",
        "l9",
        "0.2",
        "1e-3",
        "abc",
        "yes",
        "True",
        "no",
        "1",
        "0",
        "42",
        "4.5",
        "",
        "   ",
        // Secrets, in the shapes the redactor knows.
        "Bearer abc.def",
        BEARER,
        "Basic dXNlcjpwYXNzd29yZA==",
        API_KEY,
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "AKIAABCDEFGHIJKLMNOP",
        JWT,
        "ask ada@example.com or jürgen@münchen.de",
        "https://u:p@host.example/x",
        "postgres://admin:hunter2@db:5432/app",
        "password=hunter2&user=ada",
        "dk_live_0123456789abcdef",
        // Multi-byte text where a cut may fall.
        "ééééééééééééééééééééééééééééééééééééééééé",
        "日本語のテキスト日本語のテキスト日本語のテキスト日本語",
    ])
    .prop_map(text);
    let long = (
        prop::sample::select(vec!["x", "é", "ab"]),
        20..90usize,
        prop::sample::select(vec!["", BEARER, API_KEY, " ada@example.com"]),
    )
        .prop_map(|(unit, n, tail)| text(&format!("{}{tail}", unit.repeat(n))));
    let numbers = prop_oneof![
        prop::sample::select(vec![0i64, 1, 3, 42, -3, 1_000_000, i64::MAX])
            .prop_map(Value::IntValue),
        // A huge finite cost (past 3.4e29 dollars) saturates the signals' nano-dollar sum.
        prop::sample::select(vec![0.0, 0.25, 3.0, -1.5, 1e300, f64::NAN, f64::INFINITY])
            .prop_map(Value::DoubleValue),
        any::<bool>().prop_map(Value::BoolValue),
    ];
    let bytes = prop::sample::select(vec![
        BEARER.as_bytes().to_vec(),
        API_KEY.as_bytes().to_vec(),
        b"plain bytes".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        "x".repeat(70).into_bytes(),
    ])
    .prop_map(Value::BytesValue);
    let structured = prop_oneof![
        Just(Value::ArrayValue(ArrayValue {
            values: vec![
                any_value(text("a prompt from ada@example.com")),
                any_value(text(BEARER))
            ],
        })),
        Just(Value::ArrayValue(ArrayValue {
            values: vec![any_value(Value::IntValue(1)), AnyValue { value: None }],
        })),
        Just(Value::KvlistValue(KeyValueList {
            values: vec![
                kv("api_key", Some(any_value(text("plain-looking")))),
                kv("nested", Some(any_value(text(JWT)))),
            ],
        })),
        (1..12usize).prop_map(|depth| nested(depth, text(API_KEY))),
    ];
    let filled = prop_oneof![
        6 => strings,
        2 => long,
        3 => numbers,
        1 => bytes,
        2 => structured,
    ];
    (filled, 0..10u8).prop_map(|(value, holder)| match holder {
        // An AnyValue holding nothing, and no AnyValue at all.
        0 => Some(AnyValue { value: None }),
        1 => None,
        _ => Some(any_value(value)),
    })
}

/// Keys of Daena's spans: the schema's canonical keys and other spellings of them, what
/// the daena stage writes itself, semantic-convention mirrors, secret-looking keys, keys
/// the filter and the attribute actions look at, and plain ones.
fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "llm.model",
        "llm.cost_usd",
        "llm.cas_hit",
        "llm.near_dup",
        "llm.tokens.input",
        "llm.tokens.output",
        "council.phase",
        "council.round_id",
        "council.department",
        "council.topic",
        "message_bus.operation",
        "message_bus.topic",
        "message_bus.message_id",
        "message_bus.sender",
        "message_bus.retry_after_ms",
        "nbmf.operation",
        "nbmf.item_id",
        "nbmf.class",
        "nbmf.tier",
        "LLM.Model",
        "llm.cost",
        "Llm-Cost-Usd",
        "Council_Phase",
        "council-round-id",
        "Message_Bus.Topic",
        "NBMF.Tier",
        "llm_cas_hit",
        "daena.component",
        "daena.schema.errors",
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.prompt",
        "messaging.destination.name",
        "messaging.operation.name",
        "messaging.message.id",
        "messaging.system",
        "Authorization",
        "password",
        "api_key",
        "x-auth-token",
        "accessTokens",
        "user.email",
        "llm.prompt",
        "llm.response",
        "http.route",
        "http.url",
        "asgi.event.type",
        "note",
        "",
    ])
}

/// Up to `count` attributes, their keys from `keys`, with any value.
fn attributes_named(
    keys: Vec<&'static str>,
    count: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        (prop::sample::select(keys), value()).prop_map(|(key, value)| kv(key, value)),
        count,
    )
}

/// Up to `most` attributes with any key and value.
fn attributes(most: usize) -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        (key(), value()).prop_map(|(key, value)| kv(key, value)),
        0..=most,
    )
}

/// Attributes that hold one schema row twice, canonical and in another spelling, in
/// either order, with values that may disagree.
fn duplicated_row() -> impl Strategy<Value = Vec<KeyValue>> {
    (
        prop::sample::select(vec![
            ("llm.cost_usd", "llm.cost"),
            ("council.phase", "Council_Phase"),
            ("llm.model", "LLM.Model"),
            ("nbmf.tier", "NBMF.Tier"),
        ]),
        value(),
        value(),
        any::<bool>(),
    )
        .prop_map(|((canonical, variant), first, second, swap)| {
            let pair = vec![kv(canonical, first), kv(variant, second)];
            if swap {
                pair.into_iter().rev().collect()
            } else {
                pair
            }
        })
}

/// The rows one kind of Daena span carries together, so that what needs several of them
/// is counted too: a council round's id and phase (a round ends at its commit phase), an
/// LLM call's model, cost and tokens.
fn coherent_rows() -> impl Strategy<Value = Vec<KeyValue>> {
    let council = (
        prop::sample::select(vec![text("r-1"), text(" r-2 "), Value::IntValue(7)]),
        prop::sample::select(vec!["council.phase", "Council_Phase"]),
        prop::sample::select(vec!["scout", "debate", "commit", " Commit ", "bogus"]),
    )
        .prop_map(|(round, phase_key, phase)| {
            vec![
                kv("council.round_id", Some(any_value(round))),
                kv(phase_key, Some(any_value(text(phase)))),
            ]
        });
    let llm = (
        prop::sample::select(vec![("llm.model", "gpt-4o"), ("LLM.Model", " claude ")]),
        prop::sample::select(vec![
            ("llm.cost_usd", Value::DoubleValue(0.25)),
            ("llm.cost", text("0.2")),
            ("llm.cost", text("abc")),
        ]),
        prop::sample::select(vec![
            ("llm.tokens.input", Value::IntValue(12)),
            ("gen_ai.usage.output_tokens", text("30")),
        ]),
    )
        .prop_map(
            |((model_key, model), (cost_key, cost), (tokens_key, tokens))| {
                vec![
                    kv(model_key, Some(any_value(text(model)))),
                    kv(cost_key, Some(any_value(cost))),
                    kv(tokens_key, Some(any_value(tokens))),
                ]
            },
        );
    prop_oneof![council, llm]
}

/// Events of a span: bus rate-limit events in odd spellings (with or without the family of
/// their attributes), exceptions, and events without attributes.
fn events() -> impl Strategy<Value = Vec<Event>> {
    let name = prop::sample::select(vec![
        "RateLimited",
        "rate-limited",
        "rate_limit",
        "Rate Limited",
        "RATE.LIMITED",
        "ratelimited!",
        "retry",
        "exception",
        "",
    ]);
    let event_attributes = attributes_named(
        vec![
            "retry_after_ms",
            "Retry-After-Ms",
            "message_bus.retry_after_ms",
            "message_bus.topic",
            "exception.message",
            "password",
        ],
        0..4,
    );
    prop::collection::vec(
        (name, event_attributes, 0..3u32).prop_map(|(name, attributes, dropped)| Event {
            time_unix_nano: 5,
            name: name.into(),
            attributes,
            dropped_attributes_count: dropped,
        }),
        0..5,
    )
}

fn links() -> impl Strategy<Value = Vec<Link>> {
    prop::collection::vec(
        (
            attributes(3),
            prop::sample::select(vec![
                "",
                "ot=th:8",
                "vendor=Bearer abcdefghijklmnopqrstuvwxyz01",
            ]),
            0..2u32,
        )
            .prop_map(|(attributes, trace_state, dropped)| Link {
                trace_id: vec![7; 16],
                span_id: vec![8; 8],
                trace_state: trace_state.into(),
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            }),
        0..4,
    )
}

/// A span of Daena's traffic: an LLM call, a council phase, a bus message, an NBMF access,
/// an HTTP request or a probe; secrets may sit in its name, status and `tracestate`.
fn daena_span() -> impl Strategy<Value = Span> {
    let name = prop::sample::select(vec![
        "llm.call",
        "council.phase",
        "bus.publish",
        "nbmf.read",
        "POST /api/v1/chat",
        "GET /healthz",
        "http send",
        "call with Bearer abcdefghijklmnopqrstuvwxyz0123456789",
        "sk-proj-abcdefghijklmnopqrstuvwx0123",
        "",
    ]);
    let trace_state = prop::sample::select(vec![
        "",
        "ot=th:c",
        "vendor=x,ot=rv:00000000000001",
        "key=sk-proj-abcdefghijklmnopqrstuvwx0123",
    ]);
    let status = prop::option::of((
        0..3i32,
        prop::sample::select(vec![
            "",
            "boom",
            "token Bearer abcdefghijklmnopqrstuvwxyz0123",
        ]),
    ));
    let shape = prop_oneof![
        // A plain span: no attributes at all.
        1 => Just(Vec::new()),
        5 => attributes(8),
        2 => (attributes(4), duplicated_row(), attributes(2))
            .prop_map(|(before, pair, after)| [before, pair, after].concat()),
        2 => (coherent_rows(), attributes(3))
            .prop_map(|(rows, more)| [rows, more].concat()),
    ];
    (
        (0..4u8, any::<u64>(), name, trace_state, 0..6i32),
        shape,
        events(),
        links(),
        status,
        (0..3u32, 0..3u32, 0..3u32),
    )
        .prop_map(
            |(
                (trace, id, name, trace_state, kind),
                attributes,
                events,
                links,
                status,
                (dropped_attributes, dropped_events, dropped_links),
            )| Span {
                // Few traces, so probes, their subtrees and rounds meet.
                trace_id: vec![trace + 1; 16],
                span_id: id.max(1).to_be_bytes().to_vec(),
                parent_span_id: if id % 3 == 0 {
                    Vec::new()
                } else {
                    (id / 3).max(1).to_be_bytes().to_vec()
                },
                trace_state: trace_state.into(),
                name: name.into(),
                kind,
                start_time_unix_nano: 1_000,
                end_time_unix_nano: 1_000 + id % 5_000_000_000,
                attributes,
                dropped_attributes_count: dropped_attributes,
                events,
                dropped_events_count: dropped_events,
                links,
                dropped_links_count: dropped_links,
                status: status.map(|(code, message)| Status {
                    code,
                    message: message.into(),
                }),
                flags: 0,
            },
        )
}

/// A scope: missing, or named (sometimes like a secret) with attributes.
fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop::option::of(
        (
            prop::sample::select(vec![
                "opentelemetry.instrumentation.fastapi",
                "daena.council",
                "sk-proj-abcdefghijklmnopqrstuvwx0123",
                "",
            ]),
            prop::sample::select(vec!["", "0.48b0"]),
            attributes(2),
            0..2u32,
        )
            .prop_map(
                |(name, version, attributes, dropped)| InstrumentationScope {
                    name: name.into(),
                    version: version.into(),
                    attributes,
                    dropped_attributes_count: dropped,
                },
            ),
    )
}

/// A resource with or without `service.name` (or the SDK's `unknown_service…`).
fn resource() -> impl Strategy<Value = Option<Resource>> {
    let service = prop::sample::select(vec![
        None,
        Some("council-api"),
        Some("unknown_service:python"),
        Some("unknown_service"),
    ]);
    let other = attributes_named(
        vec![
            "k8s.pod.name",
            "deployment.environment.name",
            "telemetry.sdk.language",
            "password",
            "service.name",
        ],
        0..3,
    );
    prop::option::weighted(
        0.9,
        (service, other, 0..2u32).prop_map(|(service, mut attributes, dropped)| {
            if let Some(service) = service {
                attributes.insert(0, kv("service.name", Some(any_value(text(service)))));
            }
            Resource {
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            }
        }),
    )
}

/// A request of Daena's traffic: 1–3 resources of 1–3 scopes of up to 3 spans each.
fn daena_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let schema_url = prop::sample::select(vec!["", "https://opentelemetry.io/schemas/1.21.0"]);
    let scope_spans = (
        scope(),
        prop::collection::vec(daena_span(), 0..=3),
        schema_url.clone(),
    )
        .prop_map(|(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url: schema_url.into(),
        });
    let resource_spans = (
        resource(),
        prop::collection::vec(scope_spans, 1..=3),
        schema_url,
    )
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url: schema_url.into(),
        });
    prop::collection::vec(resource_spans, 1..=3)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

// ---- Configs ----------------------------------------------------------------------------

/// A hash key of the length validation asks for.
const HASH_KEY: &str = "an-oracle-test-key-of-32-bytes-0123";

fn action(key: &str, kind: ActionKind, value: Option<AttributeValue>) -> AttributeAction {
    AttributeAction {
        key: key.into(),
        action: kind,
        value,
        span_name: None,
        resource: BTreeMap::new(),
    }
}

/// One attribute action on a key the stages care about, sometimes limited to span names
/// or resources.
fn attribute_action() -> impl Strategy<Value = AttributeAction> {
    let key = prop::sample::select(vec![
        "nbmf.tier",
        "llm.model",
        "llm.cost",
        "llm.cost_usd",
        "user.email",
        "note",
        "messaging.system",
    ]);
    let kind = prop::sample::select(ActionKind::ALL.to_vec());
    let value = prop::sample::select(vec![
        AttributeValue::Text(BEARER.into()),
        AttributeValue::Text("x".repeat(80)),
        AttributeValue::Text("tier 2".into()),
        AttributeValue::Int(3),
        AttributeValue::Double(0.5),
        AttributeValue::Bool(true),
    ]);
    let span_name = prop::option::of(prop::sample::select(vec!["llm.*", "bus.publish"]));
    let resource = prop::option::of(prop::sample::select(vec!["council-*", "unknown_service*"]));
    (key, kind, value, span_name, resource).prop_map(|(key, kind, value, span_name, resource)| {
        AttributeAction {
            span_name: span_name.map(str::to_owned),
            resource: resource
                .map(|glob| {
                    BTreeMap::from([("service.name".to_owned(), MatchValue::Text(glob.into()))])
                })
                .unwrap_or_default(),
            ..action(key, kind, kind.takes_value().then_some(value))
        }
    })
}

fn daena_config() -> impl Strategy<Value = DaenaConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::option::of(Just("daena-oracle")),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(enabled, semconv_mirror, service_name, resource, env, override_existing, row)| {
                let mut config = DaenaConfig {
                    enabled,
                    semconv_mirror,
                    service_name: service_name.map(str::to_owned),
                    override_existing,
                    ..DaenaConfig::default()
                };
                if resource {
                    config.resource_attributes = BTreeMap::from([
                        ("deployment.environment.name".into(), "production".into()),
                        ("k8s.pod.name".into(), "from-config".into()),
                    ]);
                }
                if env {
                    // What `Config::load` would have read from the environment.
                    config.resource_from_env_values =
                        BTreeMap::from([("k8s.pod.name".into(), "council-7".into())]);
                }
                if row {
                    // A row added in YAML: a new key, and one replacing a built-in row.
                    let mut priority = SchemaRow::new("council.priority", ValueType::OneOf);
                    priority.values = vec!["high".into(), "low".into()];
                    priority.aliases = vec!["council.prio".into()];
                    config.schema = vec![
                        located(priority),
                        located(SchemaRow::new("nbmf.tier", ValueType::Text)),
                    ];
                }
                config
            },
        )
}

fn redact_config() -> impl Strategy<Value = RedactConfig> {
    (
        any::<bool>(),
        prop::array::uniform5(any::<bool>()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(enabled, toggles, patterns, more_keys, allow)| {
            let [
                bearer_tokens,
                api_keys,
                jwts,
                credentials,
                emails_in_llm_text,
            ] = toggles;
            let mut config = RedactConfig {
                enabled,
                bearer_tokens,
                api_keys,
                jwts,
                credentials,
                emails_in_llm_text,
                ..RedactConfig::default()
            };
            if patterns {
                config.patterns = vec!["dk_live_".into()];
            }
            if more_keys {
                config.keys.push("email".into());
            }
            if allow {
                config.allow_keys = vec!["x-auth-token".into()];
            }
            config
        })
}

fn limits_config() -> impl Strategy<Value = LimitsConfig> {
    (
        any::<bool>(),
        MIN_VALUE_LENGTH..=64,
        1..=8usize,
        0..=3usize,
        0..=3usize,
    )
        .prop_map(
            |(enabled, max_attribute_value_length, max_attributes, max_events, max_links)| {
                LimitsConfig {
                    enabled,
                    max_attribute_value_length,
                    max_attributes,
                    max_events,
                    max_links,
                }
            },
        )
}

fn filter_rule() -> FilterRule {
    FilterRule {
        id: Some("internal".into()),
        name: Some("nbmf.*".into()),
        kind: None,
        status: None,
        attributes: BTreeMap::new(),
        resource: BTreeMap::from([(
            "service.name".into(),
            MatchValue::Text("unknown_service*".into()),
        )]),
    }
}

/// A processors section a user could write, without sampling.
fn processors_config() -> impl Strategy<Value = ProcessorsConfig> {
    (
        daena_config(),
        redact_config(),
        limits_config(),
        prop::collection::vec(attribute_action(), 0..3),
        (any::<bool>(), 1..4usize),
        (any::<bool>(), any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(daena, redact, limits, actions, (signals, series), (filter, keep_asgi, rule))| {
                let mut config = ProcessorsConfig {
                    daena,
                    redact,
                    limits,
                    attributes: AttributesConfig {
                        hash_key: Some(Secret::new(HASH_KEY)),
                        actions: actions.into_iter().map(located).collect(),
                    },
                    signals: SignalsConfig {
                        enabled: signals,
                        // Few series, so the `__other__` series fill too.
                        max_series_per_metric: series,
                        ..SignalsConfig::default()
                    },
                    sampling: None,
                    ..ProcessorsConfig::default()
                };
                config.filter.enabled = filter;
                if keep_asgi {
                    config.filter.asgi_send_receive = KeepOrDrop::Keep;
                }
                if rule {
                    config.filter.rules = vec![located(filter_rule())];
                }
                config
            },
        )
}

/// A handful of fixed configs: the default, only the daena stage, every redaction, tiny
/// limits, and attribute actions of every kind.
fn fixed_configs() -> Vec<(&'static str, ProcessorsConfig)> {
    let default = ProcessorsConfig::default();
    let mut daena_only = ProcessorsConfig::default();
    daena_only.filter.enabled = false;
    daena_only.signals.enabled = false;
    daena_only.redact.enabled = false;
    daena_only.limits.enabled = false;
    let mut redact_all = ProcessorsConfig::default();
    redact_all.redact.patterns = vec!["dk_live_".into()];
    redact_all.redact.keys.push("email".into());
    let tiny_limits = ProcessorsConfig {
        limits: LimitsConfig {
            enabled: true,
            max_attribute_value_length: MIN_VALUE_LENGTH,
            max_attributes: 1,
            max_events: 0,
            max_links: 0,
        },
        ..ProcessorsConfig::default()
    };
    let actions = ProcessorsConfig {
        attributes: AttributesConfig {
            hash_key: Some(Secret::new(HASH_KEY)),
            actions: vec![
                located(action(
                    "nbmf.tier",
                    ActionKind::Upsert,
                    Some(AttributeValue::Text("tier 2".into())),
                )),
                located(action(
                    "llm.model",
                    ActionKind::Update,
                    Some(AttributeValue::Text(BEARER.into())),
                )),
                located(action(
                    "note",
                    ActionKind::Insert,
                    Some(AttributeValue::Int(3)),
                )),
                located(action("user.email", ActionKind::Hash, None)),
                located(action("llm.cost_usd", ActionKind::Delete, None)),
            ],
        },
        ..ProcessorsConfig::default()
    };
    vec![
        ("default", default),
        ("daena only", daena_only),
        ("every redaction", redact_all),
        ("tiny limits", tiny_limits),
        ("attribute actions", actions),
    ]
}

// ---- Tests ------------------------------------------------------------------------------

proptest! {
    /// Daena's traffic, made to touch every edit of every stage, under random configs.
    #[test]
    fn daena_requests_come_out_of_the_span_stages_the_same_encoded_as_decoded(
        config in processors_config(),
        first in daena_request(),
        second in daena_request(),
    ) {
        assert_valid(&config);
        run_both(&config, &[&first, &second, &first]);
    }

    /// Fully random requests (random keys, values, ids), under random configs.
    #[test]
    fn random_requests_come_out_of_the_span_stages_the_same_encoded_as_decoded(
        config in processors_config(),
        first in arbitrary::request(),
        second in arbitrary::request(),
    ) {
        assert_valid(&config);
        run_both(&config, &[&first, &second]);
    }
}

#[test]
fn the_python_sdk_requests_come_out_of_the_span_stages_the_same_encoded_as_decoded() {
    for (name, body) in SDK_BODIES {
        let scan = scan_request(body).unwrap_or_else(|| panic!("{name} is a protobuf request"));
        assert!(scan.spans > 0, "{name} holds spans");
        let request = ExportTraceServiceRequest::decode(body).expect("the SDK body decodes");
        for (config_name, config) in fixed_configs() {
            assert_valid(&config);
            // Names the case a failure below is about.
            eprintln!("{name} under the {config_name} config");
            // The same body twice: the second meets what the first left in the stages.
            run_both(&config, &[&request, &request]);
        }
    }
}

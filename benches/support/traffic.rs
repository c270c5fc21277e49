//! Daena-shaped traffic for the benchmarks: resources, spans and attributes as the
//! tracing guide describes them, deterministic for a given seed.
#![allow(dead_code)] // each benchmark uses part of it

use daena_trace_agent::otlp::{
    Event, ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Status, Value, key_value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SERVICES: [&str; 4] = [
    "daena-backend",
    "daena-council",
    "daena-message-bus",
    "daena-nbmf",
];
const DEPARTMENTS: [&str; 5] = ["research", "engineering", "finance", "legal", "operations"];
const MODELS: [&str; 3] = ["gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b"];

fn string(value: impl Into<String>) -> Value {
    Value::StringValue(value.into())
}

/// One span of a Daena trace: name and 8–15 attributes from the tracing guide.
fn daena_span(
    rng: &mut StdRng,
    position: usize,
    round: u64,
) -> (String, Vec<daena_trace_agent::otlp::KeyValue>) {
    let phase = ["scout", "debate", "commit"][position % 3];
    let department = DEPARTMENTS[rng.random_range(0..DEPARTMENTS.len())];
    let mut attributes = vec![
        key_value("council.department", string(department)),
        key_value("council.round_id", string(format!("round-{round:08x}"))),
        key_value("thread.id", Value::IntValue(rng.random_range(1..64))),
        key_value(
            "code.function.name",
            string(format!("backend.services.step_{position}")),
        ),
        key_value(
            "daena.request_id",
            string(format!("{:032x}", rng.random::<u128>())),
        ),
        key_value(
            "daena.agent",
            string(format!("agent-{}-{}", department, rng.random_range(1..9))),
        ),
    ];
    let name = match position {
        0 => {
            attributes.extend([
                key_value("http.request.method", string("POST")),
                key_value("http.route", string("/api/v1/chat")),
                key_value("http.response.status_code", Value::IntValue(200)),
                key_value("url.path", string("/api/v1/chat")),
                key_value("user_agent.original", string("daena-web/2.0.0")),
            ]);
            "POST /api/v1/chat"
        }
        1 => {
            attributes.extend([
                key_value(
                    "council.topic",
                    string("memory tiering for long conversations"),
                ),
                key_value("council.agents", Value::IntValue(5)),
            ]);
            "council.round"
        }
        2..=4 => {
            attributes.extend([
                key_value("council.phase", string(phase)),
                key_value("council.votes", Value::IntValue(rng.random_range(0..5))),
            ]);
            "council.phase"
        }
        5 | 6 => {
            attributes.extend([
                key_value(
                    "message_bus.operation",
                    string(if position == 5 {
                        "publish"
                    } else {
                        "subscribe"
                    }),
                ),
                key_value("message_bus.topic", string(format!("council.{phase}"))),
                key_value(
                    "message_bus.message_id",
                    string(format!("msg-{:016x}", rng.random::<u64>())),
                ),
                key_value("message_bus.sender", string("agent-scout-3")),
            ]);
            if position == 5 {
                "message_bus.publish"
            } else {
                "message_bus.subscribe"
            }
        }
        7 | 8 => {
            attributes.extend([
                key_value(
                    "nbmf.operation",
                    string(if position == 7 { "write" } else { "read" }),
                ),
                key_value(
                    "nbmf.item_id",
                    string(format!("item-{}", rng.random_range(0..100_000))),
                ),
                key_value("nbmf.class", string("decision")),
                key_value(
                    "nbmf.tier",
                    string(["l1", "l2", "l3"][rng.random_range(0..3)]),
                ),
            ]);
            if position == 7 {
                "nbmf.write"
            } else {
                "nbmf.read"
            }
        }
        _ => {
            attributes.extend(llm_attributes(rng, true));
            "llm.exchange"
        }
    };
    (name.to_owned(), attributes)
}

/// An LLM exchange's attributes: model, CAS hit, near-duplicate (when asked), cost, tokens.
fn llm_attributes(rng: &mut StdRng, near_dup: bool) -> Vec<KeyValue> {
    let mut attributes = vec![
        key_value(
            "llm.model",
            string(MODELS[rng.random_range(0..MODELS.len())]),
        ),
        key_value("llm.cas_hit", Value::BoolValue(rng.random_bool(0.3))),
    ];
    if near_dup {
        attributes.push(key_value(
            "llm.near_dup",
            Value::BoolValue(rng.random_bool(0.1)),
        ));
    }
    attributes.extend([
        key_value(
            "llm.cost_usd",
            Value::DoubleValue(rng.random_range(0.0001..0.2)),
        ),
        key_value(
            "llm.tokens.input",
            Value::IntValue(rng.random_range(100..4000)),
        ),
    ]);
    attributes
}

/// A request of `spans` spans in traces of 10, from one service; ≈450 bytes per span.
pub fn request(spans: usize, seed: u64) -> ExportTraceServiceRequest {
    let mut rng = StdRng::seed_from_u64(seed);
    let service = SERVICES[(seed as usize) % SERVICES.len()];
    let start = 1_764_000_000_000_000_000u64 + seed * 1_000_000_000;
    let mut out = Vec::with_capacity(spans);
    let mut trace_id = [0u8; 16];
    let mut root = [0u8; 8];
    for i in 0..spans {
        let position = i % 10;
        if position == 0 {
            rng.fill(&mut trace_id);
            rng.fill(&mut root);
        }
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        let (name, attributes) = daena_span(&mut rng, position, seed * 1000 + (i / 10) as u64);
        let begin = start + (i as u64) * 1_000_000;
        let events = if rng.random_bool(0.25) {
            vec![Event {
                time_unix_nano: begin + 500_000,
                name: "checkpoint_reached".into(),
                attributes: vec![key_value("items_processed", Value::IntValue(100))],
                dropped_attributes_count: 0,
            }]
        } else {
            Vec::new()
        };
        let error = rng.random_bool(0.05);
        out.push(Span {
            trace_id: trace_id.to_vec(),
            span_id: if position == 0 {
                root.to_vec()
            } else {
                span_id.to_vec()
            },
            parent_span_id: if position == 0 {
                Vec::new()
            } else {
                root.to_vec()
            },
            name,
            kind: if position == 0 { 2 } else { 1 },
            start_time_unix_nano: begin,
            end_time_unix_nano: begin + rng.random_range(100_000..50_000_000),
            attributes,
            events,
            status: error.then(|| Status {
                message: "upstream model timed out".into(),
                code: 2,
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    key_value("service.name", string(service)),
                    key_value("service.version", string("2.0.0")),
                    key_value("deployment.environment.name", string("production")),
                    key_value("telemetry.sdk.language", string("python")),
                    key_value("telemetry.sdk.version", string("1.45.2")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "backend.utils.tracing".into(),
                    version: "2.0.0".into(),
                    ..Default::default()
                }),
                spans: out,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The same request as [`request`], shaped as a Daena pod exports it after Kubernetes
/// enrichment: 16 resource attributes, and the spans spread over 5 instrumentation scopes
/// (the service's own and four instrumentations'), a trace's spans kept together.
pub fn pod_request(spans: usize, seed: u64) -> ExportTraceServiceRequest {
    let mut request = request(spans, seed);
    let Some(resource_spans) = request.resource_spans.first_mut() else {
        return request;
    };
    if let Some(resource) = resource_spans.resource.as_mut() {
        let pod = format!("council-api-7d9f8b6c5-{:05x}", seed % 0x10_0000);
        resource.attributes.extend([
            key_value("k8s.namespace.name", string("daena")),
            key_value("k8s.pod.name", string(pod.clone())),
            key_value(
                "k8s.pod.uid",
                string(format!("6f1c2a9e-3b7d-4e8f-9a0b-{seed:012x}")),
            ),
            key_value("k8s.deployment.name", string("council-api")),
            key_value("k8s.replicaset.name", string("council-api-7d9f8b6c5")),
            key_value(
                "k8s.node.name",
                string("gke-daena-prod-pool-1-8c2f4a1b-x7kq"),
            ),
            key_value("k8s.container.name", string("council-api")),
            key_value("container.id", string(format!("{seed:064x}"))),
            key_value("host.name", string(pod)),
            key_value("cloud.provider", string("gcp")),
            key_value("cloud.region", string("europe-west4")),
        ]);
    }
    let scopes = [
        ("backend.utils.tracing", "2.0.0"),
        ("opentelemetry.instrumentation.fastapi", "0.56b0"),
        ("opentelemetry.instrumentation.httpx", "0.56b0"),
        ("opentelemetry.instrumentation.redis", "0.56b0"),
        ("opentelemetry.instrumentation.sqlalchemy", "0.56b0"),
    ];
    let spans = std::mem::take(&mut resource_spans.scope_spans[0].spans);
    let mut scope_spans: Vec<ScopeSpans> = scopes
        .iter()
        .map(|(name, version)| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: (*name).into(),
                version: (*version).into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    for (i, span) in spans.into_iter().enumerate() {
        scope_spans[(i / 10) % scopes.len()].spans.push(span);
    }
    resource_spans.scope_spans = scope_spans;
    request
}

/// A random span id.
fn span_id(rng: &mut StdRng) -> Vec<u8> {
    rng.random::<u64>().to_be_bytes().to_vec()
}

/// The health route FastAPI traffic probes; in the filter's default `health_routes`.
pub const HEALTH_ROUTE: &str = "/healthz";

/// One request to a FastAPI app as `opentelemetry-instrumentation-fastapi` traces it
/// (stable HTTP semconv, as with `OTEL_SEMCONV_STABILITY_OPT_IN=http`), in its own trace:
/// the SERVER span, an INTERNAL span for each ASGI message (`asgi.event.type`), and for a
/// chat request a handler span with Daena attributes. Returns the instrumentation's spans
/// and the handler's.
fn fastapi_trace(rng: &mut StdRng, begin: u64, probe: bool) -> (Vec<Span>, Vec<Span>) {
    let mut trace_id = [0u8; 16];
    rng.fill(&mut trace_id);
    let server_id = span_id(rng);
    let (method, route) = if probe {
        ("GET", HEALTH_ROUTE)
    } else {
        ("POST", "/api/v1/chat")
    };
    let name = format!("{method} {route}");
    let end = begin + 20_000_000;
    let child = |span_id: Vec<u8>, name: String, kind: i32, at: u64, attributes| Span {
        trace_id: trace_id.to_vec(),
        span_id,
        parent_span_id: server_id.clone(),
        name,
        kind,
        start_time_unix_nano: at,
        end_time_unix_nano: at + 200_000,
        attributes,
        ..Default::default()
    };
    let mut asgi = Vec::new();
    let mut handler = Vec::new();
    if !probe {
        asgi.push(child(
            span_id(rng),
            format!("{name} http receive"),
            1,
            begin + 100_000,
            vec![key_value("asgi.event.type", string("http.request"))],
        ));
        handler.push(child(
            span_id(rng),
            "llm.exchange".into(),
            3,
            begin + 1_000_000,
            {
                let mut attributes = llm_attributes(rng, false);
                attributes.push(key_value(
                    "council.round_id",
                    string(format!("round-{:08x}", rng.random::<u32>())),
                ));
                attributes
            },
        ));
    }
    asgi.push(child(
        span_id(rng),
        format!("{name} http send"),
        1,
        end - 2_000_000,
        vec![
            key_value("asgi.event.type", string("http.response.start")),
            key_value("http.response.status_code", Value::IntValue(200)),
        ],
    ));
    asgi.push(child(
        span_id(rng),
        format!("{name} http send"),
        1,
        end - 1_000_000,
        vec![key_value("asgi.event.type", string("http.response.body"))],
    ));
    let user_agent = if probe {
        "kube-probe/1.31"
    } else {
        "daena-web/2.0.0"
    };
    asgi.push(Span {
        trace_id: trace_id.to_vec(),
        span_id: server_id.clone(),
        name,
        kind: 2,
        start_time_unix_nano: begin,
        end_time_unix_nano: end,
        attributes: vec![
            key_value("url.scheme", string("http")),
            key_value("server.address", string("daena-backend")),
            key_value("server.port", Value::IntValue(8000)),
            key_value("network.protocol.version", string("1.1")),
            key_value("url.path", string(route)),
            key_value("http.request.method", string(method)),
            key_value("user_agent.original", string(user_agent)),
            key_value(
                "client.address",
                string(format!(
                    "10.0.{}.{}",
                    rng.random_range(0..4),
                    rng.random_range(1..255)
                )),
            ),
            key_value(
                "client.port",
                Value::IntValue(rng.random_range(30_000..60_000)),
            ),
            key_value("http.route", string(route)),
            key_value("http.response.status_code", Value::IntValue(200)),
        ],
        ..Default::default()
    });
    (asgi, handler)
}

/// FastAPI traffic as `opentelemetry-instrumentation-fastapi` makes it, from one service:
/// whole requests (each its own trace) until there are at least `spans` spans. Every fifth
/// request is a health probe (`GET /healthz`: its SERVER span and two ASGI `send` spans);
/// the others are `POST /api/v1/chat`: the SERVER span, its ASGI `receive` and two `send`
/// spans, and an `llm.exchange` handler span. The instrumentation's spans and the
/// handler's come in two scopes, as the SDK exports them.
pub fn fastapi_request(spans: usize, seed: u64) -> ExportTraceServiceRequest {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = 1_764_000_000_000_000_000u64 + seed * 1_000_000_000;
    let (mut instrumentation, mut handlers) = (Vec::new(), Vec::new());
    let mut request = 0u64;
    while instrumentation.len() + handlers.len() < spans {
        let (asgi, handler) =
            fastapi_trace(&mut rng, start + request * 25_000_000, request % 5 == 4);
        instrumentation.extend(asgi);
        handlers.extend(handler);
        request += 1;
    }
    let scope = |name: &str, version: &str, spans| ScopeSpans {
        scope: Some(InstrumentationScope {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        }),
        spans,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    key_value("service.name", string("daena-backend")),
                    key_value("service.version", string("2.0.0")),
                    key_value("deployment.environment.name", string("production")),
                    key_value("telemetry.sdk.language", string("python")),
                    key_value("telemetry.sdk.version", string("1.45.2")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![
                scope(
                    "opentelemetry.instrumentation.fastapi",
                    "0.66b2",
                    instrumentation,
                ),
                scope("backend.utils.tracing", "2.0.0", handlers),
            ],
            ..Default::default()
        }],
    }
}

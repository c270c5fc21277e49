//! The load benchmark: Daena-shaped traffic through the real agent binary into an OTLP
//! sink that only counts spans, measuring the agent process. The agent process and the
//! sink come from the integration tests' harness (`tests/common`).
//!
//! Run: `cargo bench --bench load -- [--seconds 10] [--runs 3] [--scenario NAME]...`
//! Under `cargo test` (no `--bench` argument) it makes one tiny run of every scenario,
//! so the test command checks that it works: every span expected arrives at the sink (no
//! more), nothing is refused at the fixed rate (far below saturation), and the agent
//! exits with 0 after SIGTERM.
//!
//! Per scenario it reports, for the agent process: received spans/s at saturation, exported
//! spans/s (what reached the sink: all of them, or what the filter and sampling keep),
//! CPU-seconds per million received spans (user+system from /proc/PID/stat), peak RSS (VmHWM),
//! idle RSS, client latency p50/p99 at a fixed 20K spans/s and at saturation, and
//! refusals. The `baseline` scenario sends straight to the sink: the harness's ceiling.
//! The agent gets an empty environment except `MALLOC_*` variables, for allocator experiments.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/traffic.rs"]
mod traffic;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{AgentProcess, CountingSink};
use daena_trace_agent::otlp::grpc_codec::OtlpCodec;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TRACE_EXPORT_PATH,
};
use daena_trace_agent::otlp::{Span, Value, span_count};
use daena_trace_agent::processor::sampling::{ConsistentSampler, trace_id_randomness};
use http_body_util::{BodyExt, Full};
use prost::Message;

const SPANS_PER_REQUEST: usize = 512;
const SENDERS: usize = 4;
const FIXED_RATE: f64 = 20_000.0;

/// How the load generator talks to the agent.
#[derive(Clone, Copy)]
enum Input {
    Grpc,
    Http { gzip: bool },
}

/// One line of the results table. Stages added later add a line here.
///
/// The harness mirrors the default `processors.filter` ([`default_filter_keeps`]: ASGI
/// event spans and health probes dropped) to know what must arrive. Only FastAPI traffic
/// has such spans, so the mirror is exact for council traffic whether a scenario's config
/// leaves the filter on or turns it off; a FastAPI scenario must leave it at its default.
struct Scenario {
    name: &'static str,
    input: Input,
    /// What the load generator sends.
    traffic: Traffic,
    /// The agent's exporter settings and extra config; `None` sends straight to the sink.
    agent: Option<&'static str>,
    /// The sampling the config sets, so the harness knows what must arrive.
    sampling: Sampling,
}

/// The traffic of a scenario.
#[derive(Clone, Copy)]
enum Traffic {
    /// Daena council traces of ten spans (`traffic::request`).
    Council,
    /// FastAPI requests as its instrumentation traces them, a fifth of them health probes
    /// (`traffic::fastapi_request`).
    FastApi,
    /// Council traces as a pod exports them after Kubernetes enrichment: 16 resource
    /// attributes, 5 scopes per request (`traffic::pod_request`).
    Pod,
}

/// Sampling in a scenario's config, mirrored by the harness to count what must arrive.
#[derive(Clone, Copy)]
enum Sampling {
    None,
    /// `processors.sampling.ratio`.
    Head(f64),
    /// Tail mode with an `errors` policy, then a `ratio` policy of this ratio.
    TailErrorsAndRatio(f64),
}

/// Appended to the pass-through scenarios: the processors (on by default) off.
macro_rules! passthrough {
    ($exporter:literal) => {
        concat!(
            $exporter,
            "processors: { filter: { enabled: false }, signals: { enabled: false }, daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n"
        )
    };
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "baseline (no agent, gRPC into the sink)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: None,
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-gzip",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-2shards-gzip (pass-through, two pipeline shards)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(passthrough!(
                "    compression: gzip\npipeline: { shards: 2 }\n"
            )),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-none",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(passthrough!("    compression: none\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-gzip-persistent (disk queue, fsync: batch)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(passthrough!(
                "    compression: gzip\n    queue: { persistent: true, dir: \"@queue_dir@\" }\n"
            )),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-gzip (the default processors)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some("    compression: gzip\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-2shards-gzip (the default processors, two pipeline shards)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some("    compression: gzip\npipeline: { shards: 2 }\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-nosignals-gzip (the default processors but signals)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some("    compression: gzip\nprocessors: { signals: { enabled: false } }\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-head10-gzip (default processors, 10% head sampling)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some("    compression: gzip\nprocessors: { sampling: { ratio: 0.1 } }\n"),
            sampling: Sampling::Head(0.1),
        },
        Scenario {
            name: "grpc-daena-redact-limits-tail-gzip (default processors, tail: errors + 10%)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(concat!(
                "    compression: gzip\n",
                "processors:\n  sampling:\n    mode: tail\n    decision_wait: 1s\n",
                "    policies: [ { name: errors, type: errors }, { name: baseline, type: ratio, ratio: 0.1 } ]\n"
            )),
            sampling: Sampling::TailErrorsAndRatio(0.1),
        },
        Scenario {
            name: "grpc-gateway-tail-gzip (the two-tier gateway: redact and limits, tail: errors + 10%; shards: the cores)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(concat!(
                "    compression: gzip\n",
                "processors:\n  filter: { enabled: false }\n  signals: { enabled: false }\n  daena: { enabled: false }\n",
                "  sampling:\n    mode: tail\n    decision_wait: 1s\n",
                "    policies: [ { name: errors, type: errors }, { name: baseline, type: ratio, ratio: 0.1 } ]\n"
            )),
            sampling: Sampling::TailErrorsAndRatio(0.1),
        },
        Scenario {
            name: "grpc-gateway-tail-1shard-gzip (the same gateway on one pipeline shard)",
            input: Input::Grpc,
            traffic: Traffic::Council,
            agent: Some(concat!(
                "    compression: gzip\n",
                "pipeline: { shards: 1 }\n",
                "processors:\n  filter: { enabled: false }\n  signals: { enabled: false }\n  daena: { enabled: false }\n",
                "  sampling:\n    mode: tail\n    decision_wait: 1s\n",
                "    policies: [ { name: errors, type: errors }, { name: baseline, type: ratio, ratio: 0.1 } ]\n"
            )),
            sampling: Sampling::TailErrorsAndRatio(0.1),
        },
        Scenario {
            name: "grpc-fastapi-gzip (FastAPI traffic, default processors: the filter drops ASGI events and health probes)",
            input: Input::Grpc,
            traffic: Traffic::FastApi,
            agent: Some("    compression: gzip\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-pod-passthrough-gzip (pod-shaped council traffic: 16 resource attributes, 5 scopes)",
            input: Input::Grpc,
            traffic: Traffic::Pod,
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-pod-daena-redact-limits-gzip (pod-shaped traffic, the default processors)",
            input: Input::Grpc,
            traffic: Traffic::Pod,
            agent: Some("    compression: gzip\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "http-protobuf-in",
            input: Input::Http { gzip: false },
            traffic: Traffic::Council,
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "http-protobuf-gzip-in",
            input: Input::Http { gzip: true },
            traffic: Traffic::Council,
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
    ]
}

struct Args {
    seconds: f64,
    runs: usize,
    only: Vec<String>,
    /// A tiny run for `cargo test`: a few thousand spans per scenario.
    quick: bool,
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        raw.iter()
            .position(|a| a == flag)
            .and_then(|i| raw.get(i + 1))
            .cloned()
    };
    let quick = !raw.iter().any(|a| a == "--bench");
    Args {
        seconds: value("--seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 0.5 } else { 10.0 }),
        runs: value("--runs").and_then(|v| v.parse().ok()).unwrap_or(1),
        only: raw
            .windows(2)
            .filter(|w| w[0] == "--scenario")
            .map(|w| w[1].clone())
            .collect(),
        quick,
    }
}

/// Figures of one run of one scenario.
#[derive(Clone, Default)]
struct Figures {
    /// Spans the agent accepted per second at saturation.
    spans_per_second: f64,
    /// Spans the sink counted per second at saturation: what the agent exported, after
    /// the filter and sampling.
    exported_spans_per_second: f64,
    cpu_seconds_per_million: Option<f64>,
    peak_rss_mib: Option<f64>,
    idle_rss_mib: Option<f64>,
    fixed_p50_ms: f64,
    fixed_p99_ms: f64,
    fixed_refused: u64,
    saturated_p50_ms: f64,
    saturated_p99_ms: f64,
    saturated_refused: u64,
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let count = if args.quick { 4 } else { 64 };
    let council = Arc::new(Bodies::new(count, Traffic::Council));
    let fastapi = Arc::new(Bodies::new(count, Traffic::FastApi));
    let pod = Arc::new(Bodies::new(count, Traffic::Pod));
    println!(
        "{} spans per request, {} protobuf bytes per span; {} senders at saturation; {} s per phase; median of {} run(s)\n",
        SPANS_PER_REQUEST,
        council.protobuf[0].len() / SPANS_PER_REQUEST,
        SENDERS,
        args.seconds,
        args.runs
    );
    println!(
        "| scenario | received spans/s | exported spans/s | CPU-s per M received spans | peak RSS MiB | idle RSS MiB | p50/p99 ms @20K/s | refused @20K/s | p50/p99 ms @saturation | refused @saturation |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for scenario in scenarios() {
        if !args.only.is_empty()
            && !args
                .only
                .iter()
                .any(|o| scenario.name.starts_with(o.as_str()))
        {
            continue;
        }
        let bodies = match scenario.traffic {
            Traffic::Council => &council,
            Traffic::FastApi => &fastapi,
            Traffic::Pod => &pod,
        };
        let runs: Vec<Figures> = (0..args.runs)
            .map(|_| runtime.block_on(run(&scenario, &args, Arc::clone(bodies))))
            .collect();
        print_row(scenario.name, &runs);
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print_row(name: &str, runs: &[Figures]) {
    let m = |f: fn(&Figures) -> f64| median(runs.iter().map(f).collect());
    let opt = |f: fn(&Figures) -> Option<f64>, digits: usize| {
        let values: Vec<f64> = runs.iter().filter_map(f).collect();
        if values.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.*}", digits, median(values))
        }
    };
    println!(
        "| {name} | {:.0} | {:.0} | {} | {} | {} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.0} |",
        m(|f| f.spans_per_second),
        m(|f| f.exported_spans_per_second),
        opt(|f| f.cpu_seconds_per_million, 2),
        opt(|f| f.peak_rss_mib, 1),
        opt(|f| f.idle_rss_mib, 1),
        m(|f| f.fixed_p50_ms),
        m(|f| f.fixed_p99_ms),
        m(|f| f.fixed_refused as f64),
        m(|f| f.saturated_p50_ms),
        m(|f| f.saturated_p99_ms),
        m(|f| f.saturated_refused as f64),
    );
}

/// Pre-encoded request bodies, so the generator is not the bottleneck.
#[derive(Clone)]
struct Bodies {
    protobuf: Vec<Bytes>,
    gzipped: Vec<Bytes>,
    /// Spans of each body: what the agent receives when it accepts it.
    spans: Vec<u64>,
    /// Spans of each body that reach the sink: those the default filter keeps (all of
    /// them in council traffic), and of those what the scenario's sampling keeps.
    delivered: Vec<u64>,
}

impl Bodies {
    fn new(count: u64, traffic: Traffic) -> Self {
        let requests: Vec<ExportTraceServiceRequest> = (0..count)
            .map(|seed| match traffic {
                Traffic::Council => traffic::request(SPANS_PER_REQUEST, seed),
                Traffic::FastApi => traffic::fastapi_request(SPANS_PER_REQUEST, seed),
                Traffic::Pod => traffic::pod_request(SPANS_PER_REQUEST, seed),
            })
            .collect();
        let spans = requests
            .iter()
            .map(|request| span_count(&request.resource_spans) as u64)
            .collect();
        let protobuf: Vec<Bytes> = requests
            .iter()
            .map(|request| Bytes::from(request.encode_to_vec()))
            .collect();
        let gzipped = protobuf
            .iter()
            .map(|body| {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(body).expect("gzip");
                Bytes::from(encoder.finish().expect("gzip"))
            })
            .collect();
        Self {
            protobuf,
            gzipped,
            delivered: Vec::new(),
            spans,
        }
        .sampled(Sampling::None)
    }

    /// The same bodies, counting only the spans that reach the sink: those the default
    /// filter keeps, then of those the ones `sampling` keeps (the filter runs first). The
    /// rules are functions of the spans of one trace (a trace never spans two bodies): the
    /// filter's of a span's kind, attributes and parents, sampling's of the trace id and
    /// the spans' status, so the harness knows exactly what must arrive.
    fn sampled(&self, sampling: Sampling) -> Self {
        let delivered = self
            .protobuf
            .iter()
            .map(|body| {
                let request = ExportTraceServiceRequest::decode(&body[..]).expect("decodes");
                let all: Vec<Span> = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|rs| rs.scope_spans)
                    .flat_map(|ss| ss.spans)
                    .collect();
                let spans: Vec<Span> = default_filter_keeps(&all)
                    .into_iter()
                    .zip(all)
                    .filter_map(|(keep, span)| keep.then_some(span))
                    .collect();
                let kept = |span: &Span| match sampling {
                    Sampling::None => true,
                    Sampling::Head(ratio) => {
                        ConsistentSampler::new(ratio).sample(&mut span.clone())
                    }
                    Sampling::TailErrorsAndRatio(ratio) => {
                        let trace = spans.iter().filter(|s| s.trace_id == span.trace_id);
                        let error = |s: &Span| s.status.as_ref().is_some_and(|st| st.code == 2);
                        trace.clone().any(error)
                            || ConsistentSampler::new(ratio)
                                .keeps(trace_id_randomness(&span.trace_id))
                    }
                };
                spans.iter().filter(|span| kept(span)).count() as u64
            })
            .collect();
        Self {
            delivered,
            ..self.clone()
        }
    }
}

/// The routes of the filter's default `health_routes`.
const DEFAULT_HEALTH_ROUTES: [&str; 5] = ["/health", "/healthz", "/readyz", "/livez", "/metrics"];

/// Which of `spans` (one body's) the default `processors.filter` keeps, mirrored: it drops
/// INTERNAL spans carrying `asgi.event.type` (`asgi_send_receive: drop`), and SERVER spans
/// of a health route (`http.route`, else `url.path`, else the path of `http.target`) with
/// every span under them in the body (their ASGI children).
fn default_filter_keeps(spans: &[Span]) -> Vec<bool> {
    let string = |span: &Span, key: &str| -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
    };
    let probe = |span: &Span| {
        let route = string(span, "http.route")
            .or_else(|| string(span, "url.path"))
            .or_else(|| {
                string(span, "http.target").map(|t| t.split('?').next().unwrap_or("").to_owned())
            });
        span.kind == 2 && route.is_some_and(|r| DEFAULT_HEALTH_ROUTES.contains(&r.as_str()))
    };
    let asgi_event = |span: &Span| {
        span.kind == 1 && span.attributes.iter().any(|kv| kv.key == "asgi.event.type")
    };
    let by_id: HashMap<(&[u8], &[u8]), &Span> = spans
        .iter()
        .map(|s| ((&s.trace_id[..], &s.span_id[..]), s))
        .collect();
    // Under a probe: its parent chain in the body reaches one. The walk is bounded by the
    // body's length, as a chain never is longer, even with a cycle in broken input.
    let under_probe = |span: &Span| {
        let mut current = span;
        for _ in 0..=spans.len() {
            if probe(current) {
                return true;
            }
            match by_id.get(&(&current.trace_id[..], &current.parent_span_id[..])) {
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    };
    spans
        .iter()
        .map(|span| !asgi_event(span) && !under_probe(span))
        .collect()
}

async fn run(scenario: &Scenario, args: &Args, bodies: Arc<Bodies>) -> Figures {
    let bodies = Arc::new(bodies.sampled(scenario.sampling));
    let sink = CountingSink::start().await;
    let queue_dir = tempfile::tempdir().expect("tempdir");
    let mut agent = scenario
        .agent
        .map(|exporter| start_agent(sink.addr, exporter, queue_dir.path()));
    let target = match (&agent, scenario.input) {
        (None, _) => Target::Grpc(sink.addr),
        (Some(a), Input::Grpc) => Target::Grpc(a.addr("OTLP/gRPC")),
        (Some(a), Input::Http { gzip }) => Target::Http(a.addr("OTLP/HTTP"), gzip),
    };
    let mut figures = Figures::default();
    if let Some(agent) = &agent {
        tokio::time::sleep(Duration::from_secs(if args.quick { 0 } else { 2 })).await;
        figures.idle_rss_mib = agent.status_kib("VmRSS").map(|k| k / 1024.0);
    }
    let phase = Duration::from_secs_f64(args.seconds);
    let max_requests = if args.quick { 8 } else { u64::MAX };

    // Latency at a fixed offered rate.
    let fixed = fixed_rate(&target, &bodies, phase, max_requests).await;
    figures.fixed_p50_ms = fixed.percentile(0.50);
    figures.fixed_p99_ms = fixed.percentile(0.99);
    figures.fixed_refused = fixed.refused;
    let arrived = sink
        .wait_for_spans(fixed.delivered_spans, DELIVERY_WAIT)
        .await;
    if args.quick {
        // 8 requests at 20K spans/s are far below saturation: nothing may be refused.
        assert_eq!(
            fixed.refused, 0,
            "{}: requests refused at a fixed rate below saturation",
            scenario.name
        );
        assert_eq!(
            arrived, fixed.delivered_spans,
            "{}: spans at the sink after the fixed-rate phase",
            scenario.name
        );
    }

    // Saturation: senders as fast as answers come.
    let cpu_before = agent.as_ref().map(AgentProcess::cpu_seconds);
    let delivered_before = sink.spans();
    let started = Instant::now();
    let saturated = saturate(&target, &bodies, phase, max_requests).await;
    let expected = delivered_before + saturated.delivered_spans;
    let arrived = sink.wait_for_spans(expected, DELIVERY_WAIT).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Per received span: with sampling, fewer arrive at the sink by design.
    let received = saturated.accepted_spans;
    figures.spans_per_second = received as f64 / elapsed;
    // What the sink counted in this phase: the agent's output, after filter and sampling.
    figures.exported_spans_per_second = arrived.saturating_sub(delivered_before) as f64 / elapsed;
    figures.saturated_p50_ms = saturated.percentile(0.50);
    figures.saturated_p99_ms = saturated.percentile(0.99);
    figures.saturated_refused = saturated.refused;
    if let (Some(agent), Some(before)) = (&agent, cpu_before) {
        let cpu = agent.cpu_seconds() - before;
        figures.cpu_seconds_per_million = Some(cpu / (received.max(1) as f64 / 1e6));
        figures.peak_rss_mib = agent.status_kib("VmHWM").map(|k| k / 1024.0);
    }
    let exit = agent.as_mut().map(AgentProcess::terminate);
    if args.quick {
        assert_eq!(
            arrived, expected,
            "{}: spans at the sink after saturation",
            scenario.name
        );
        if let Some(agent) = &agent {
            assert_eq!(
                exit,
                Some(0),
                "{}: the agent's exit code after SIGTERM; logs:\n{}",
                scenario.name,
                agent.logs()
            );
        }
        // The stop drained the agent: had it sent anything twice, it is counted now.
        assert_eq!(
            sink.spans(),
            expected,
            "{}: spans at the sink once the agent stopped",
            scenario.name
        );
    }
    figures
}

/// How long the harness waits for what was accepted to reach the sink.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// Starts the agent binary exporting to `sink` with a scenario's exporter settings and
/// extra config (`@queue_dir@` becomes `queue_dir`). Its environment is empty but for
/// `MALLOC_*` variables, for allocator experiments.
fn start_agent(sink: SocketAddr, exporter: &str, queue_dir: &Path) -> AgentProcess {
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\n    http: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null, log_level: warn }}\nexporters:\n  sink:\n    protocol: grpc\n    endpoint: http://{sink}\n{}",
        exporter.replace("@queue_dir@", &queue_dir.display().to_string())
    );
    let malloc: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MALLOC_"))
        .collect();
    let env: Vec<(&str, &str)> = malloc
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    AgentProcess::with_config(&yaml, "info", &env)
}

// ---------------------------------------------------------------- load generation

#[derive(Clone)]
enum Target {
    Grpc(SocketAddr),
    Http(SocketAddr, bool),
}

#[derive(Default)]
struct Outcome {
    latencies_ms: Vec<f64>,
    accepted_spans: u64,
    /// Of the accepted spans, those that should reach the sink.
    delivered_spans: u64,
    refused: u64,
}

impl Outcome {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies_ms.extend(other.latencies_ms);
        self.accepted_spans += other.accepted_spans;
        self.delivered_spans += other.delivered_spans;
        self.refused += other.refused;
    }
}

/// A client for the target: gRPC with a pre-encoded body, or an HTTP POST.
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http(
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            Full<Bytes>,
        >,
        String,
        bool,
    ),
}

impl Client {
    async fn connect(target: &Target) -> Self {
        match target {
            Target::Grpc(addr) => Client::Grpc(tonic::client::Grpc::new(channel(*addr).await)),
            Target::Http(addr, gzip) => Client::Http(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
                format!("http://{addr}/v1/traces"),
                *gzip,
            ),
        }
    }

    /// Sends body `i`; returns whether it was accepted.
    async fn send(&mut self, bodies: &Bodies, i: usize) -> bool {
        let i = i % bodies.protobuf.len();
        match self {
            Client::Grpc(grpc) => {
                if grpc.ready().await.is_err() {
                    return false;
                }
                grpc.unary(
                    tonic::Request::new(bodies.protobuf[i].clone()),
                    http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH),
                    OtlpCodec::<Bytes, ExportTraceServiceResponse>::default(),
                )
                .await
                .is_ok()
            }
            Client::Http(client, url, gzip) => {
                let mut request = http::Request::post(url.as_str())
                    .header("content-type", "application/x-protobuf");
                let body = if *gzip {
                    request = request.header("content-encoding", "gzip");
                    bodies.gzipped[i].clone()
                } else {
                    bodies.protobuf[i].clone()
                };
                match client
                    .request(request.body(Full::new(body)).expect("request"))
                    .await
                {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                }
            }
        }
    }
}

/// Offers FIXED_RATE spans/s for `phase`, each request on its own task so a slow answer
/// does not delay the schedule. (FastAPI bodies hold whole requests, a few spans more than
/// SPANS_PER_REQUEST: their rate is under 1% above it.)
async fn fixed_rate(
    target: &Target,
    bodies: &Arc<Bodies>,
    phase: Duration,
    max_requests: u64,
) -> Outcome {
    let interval = Duration::from_secs_f64(SPANS_PER_REQUEST as f64 / FIXED_RATE);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while started.elapsed() < phase && sent < max_requests {
        ticker.tick().await;
        let (target, bodies) = (target.clone(), Arc::clone(bodies));
        tasks.spawn(async move {
            let mut client = Client::connect_cached(&target).await;
            let begin = Instant::now();
            let ok = client.send(&bodies, sent as usize).await;
            let i = sent as usize % bodies.spans.len();
            (
                begin.elapsed().as_secs_f64() * 1e3,
                ok,
                bodies.spans[i],
                bodies.delivered[i],
            )
        });
        sent += 1;
    }
    let mut outcome = Outcome::default();
    while let Some(Ok((ms, ok, spans, delivered))) = tasks.join_next().await {
        outcome.latencies_ms.push(ms);
        if ok {
            outcome.accepted_spans += spans;
            outcome.delivered_spans += delivered;
        } else {
            outcome.refused += 1
        }
    }
    outcome
}

impl Client {
    /// Connections are per task in the fixed-rate phase; gRPC channels are cheap to clone,
    /// so reuse one per target to measure requests, not connection set-up.
    async fn connect_cached(target: &Target) -> Self {
        use std::sync::OnceLock;
        static GRPC: OnceLock<tokio::sync::Mutex<Vec<(SocketAddr, tonic::transport::Channel)>>> =
            OnceLock::new();
        match target {
            Target::Grpc(addr) => {
                let cache = GRPC.get_or_init(Default::default);
                let mut cache = cache.lock().await;
                if let Some((_, channel)) = cache.iter().find(|(a, _)| a == addr) {
                    return Client::Grpc(tonic::client::Grpc::new(channel.clone()));
                }
                let channel = channel(*addr).await;
                cache.push((*addr, channel.clone()));
                Client::Grpc(tonic::client::Grpc::new(channel))
            }
            Target::Http(..) => Client::connect(target).await,
        }
    }
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

/// SENDERS clients send back to back for `phase`.
async fn saturate(
    target: &Target,
    bodies: &Arc<Bodies>,
    phase: Duration,
    max_requests: u64,
) -> Outcome {
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (target, bodies, sent) = (target.clone(), Arc::clone(bodies), Arc::clone(&sent));
        tasks.spawn(async move {
            let mut client = Client::connect(&target).await;
            let mut outcome = Outcome::default();
            while started.elapsed() < phase {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                let begin = Instant::now();
                let ok = client.send(&bodies, i as usize).await;
                outcome
                    .latencies_ms
                    .push(begin.elapsed().as_secs_f64() * 1e3);
                if ok {
                    let i = i as usize % bodies.spans.len();
                    outcome.accepted_spans += bodies.spans[i];
                    outcome.delivered_spans += bodies.delivered[i];
                } else {
                    outcome.refused += 1;
                    // A refusal asks for a retry later; back off a little as an SDK would.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            outcome
        });
    }
    let mut outcome = Outcome::default();
    while let Some(Ok(part)) = tasks.join_next().await {
        outcome.merge(part);
    }
    outcome
}

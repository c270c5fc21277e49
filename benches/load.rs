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
//! Per scenario it reports, for the agent process: received spans/s at saturation (all of them delivered, or what sampling keeps),
//! CPU-seconds per million spans (user+system from /proc/PID/stat), peak RSS (VmHWM),
//! idle RSS, client latency p50/p99 at a fixed 20K spans/s and at saturation, and
//! refusals. The `baseline` scenario sends straight to the sink: the harness's ceiling.
//! The agent gets an empty environment except `MALLOC_*` variables, for allocator experiments.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/traffic.rs"]
mod traffic;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{AgentProcess, CountingSink};
use daena_trace_agent::otlp::Span;
use daena_trace_agent::otlp::grpc_codec::OtlpCodec;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, TRACE_EXPORT_PATH,
};
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
struct Scenario {
    name: &'static str,
    input: Input,
    /// The agent's exporter settings and extra config; `None` sends straight to the sink.
    agent: Option<&'static str>,
    /// The sampling the config sets, so the harness knows what must arrive.
    sampling: Sampling,
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
            "processors: { filter: { enabled: false }, daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n"
        )
    };
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "baseline (no agent, gRPC into the sink)",
            input: Input::Grpc,
            agent: None,
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-gzip",
            input: Input::Grpc,
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-none",
            input: Input::Grpc,
            agent: Some(passthrough!("    compression: none\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-passthrough-gzip-persistent (disk queue, fsync: batch)",
            input: Input::Grpc,
            agent: Some(passthrough!(
                "    compression: gzip\n    queue: { persistent: true, dir: \"@queue_dir@\" }\n"
            )),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-gzip (the default processors)",
            input: Input::Grpc,
            agent: Some("    compression: gzip\n"),
            sampling: Sampling::None,
        },
        Scenario {
            name: "grpc-daena-redact-limits-head10-gzip (default processors, 10% head sampling)",
            input: Input::Grpc,
            agent: Some("    compression: gzip\nprocessors: { sampling: { ratio: 0.1 } }\n"),
            sampling: Sampling::Head(0.1),
        },
        Scenario {
            name: "grpc-daena-redact-limits-tail-gzip (default processors, tail: errors + 10%)",
            input: Input::Grpc,
            agent: Some(concat!(
                "    compression: gzip\n",
                "processors:\n  sampling:\n    mode: tail\n    decision_wait: 1s\n",
                "    policies: [ { name: errors, type: errors }, { name: baseline, type: ratio, ratio: 0.1 } ]\n"
            )),
            sampling: Sampling::TailErrorsAndRatio(0.1),
        },
        Scenario {
            name: "http-protobuf-in",
            input: Input::Http { gzip: false },
            agent: Some(passthrough!("    compression: gzip\n")),
            sampling: Sampling::None,
        },
        Scenario {
            name: "http-protobuf-gzip-in",
            input: Input::Http { gzip: true },
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
    spans_per_second: f64,
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
    let bodies = Arc::new(Bodies::new(if args.quick { 4 } else { 64 }));
    println!(
        "{} spans per request, {} protobuf bytes per span; {} senders at saturation; {} s per phase; median of {} run(s)\n",
        SPANS_PER_REQUEST,
        bodies.protobuf[0].len() / SPANS_PER_REQUEST,
        SENDERS,
        args.seconds,
        args.runs
    );
    println!(
        "| scenario | received spans/s | CPU-s per M received spans | peak RSS MiB | idle RSS MiB | p50/p99 ms @20K/s | refused @20K/s | p50/p99 ms @saturation | refused @saturation |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for scenario in scenarios() {
        if !args.only.is_empty()
            && !args
                .only
                .iter()
                .any(|o| scenario.name.starts_with(o.as_str()))
        {
            continue;
        }
        let runs: Vec<Figures> = (0..args.runs)
            .map(|_| runtime.block_on(run(&scenario, &args, Arc::clone(&bodies))))
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
        "| {name} | {:.0} | {} | {} | {} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.0} |",
        m(|f| f.spans_per_second),
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
    /// Spans of each body that reach the sink (all of them unless the scenario samples).
    delivered: Vec<u64>,
}

impl Bodies {
    fn new(count: u64) -> Self {
        let protobuf: Vec<Bytes> = (0..count)
            .map(|seed| Bytes::from(traffic::request(SPANS_PER_REQUEST, seed).encode_to_vec()))
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
        let delivered = vec![SPANS_PER_REQUEST as u64; protobuf.len()];
        Self {
            protobuf,
            gzipped,
            delivered,
        }
    }

    /// The same bodies, counting only the spans `sampling` keeps: the rules are functions
    /// of the trace id and the spans' status, and a trace never spans two bodies, so the
    /// harness knows exactly what must arrive.
    fn sampled(&self, sampling: Sampling) -> Self {
        let delivered = self
            .protobuf
            .iter()
            .map(|body| {
                let request = ExportTraceServiceRequest::decode(&body[..]).expect("decodes");
                let spans: Vec<Span> = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|rs| rs.scope_spans)
                    .flat_map(|ss| ss.spans)
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
/// does not delay the schedule.
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
            let delivered = bodies.delivered[sent as usize % bodies.delivered.len()];
            (begin.elapsed().as_secs_f64() * 1e3, ok, delivered)
        });
        sent += 1;
    }
    let mut outcome = Outcome::default();
    while let Some(Ok((ms, ok, delivered))) = tasks.join_next().await {
        outcome.latencies_ms.push(ms);
        if ok {
            outcome.accepted_spans += SPANS_PER_REQUEST as u64;
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
                    outcome.accepted_spans += SPANS_PER_REQUEST as u64;
                    outcome.delivered_spans +=
                        bodies.delivered[i as usize % bodies.delivered.len()];
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

//! Faults a sidecar lives through, each bounded in time: a backend outage and a slow
//! backend under load.
//! Delivered spans are counted exactly, by unique span id, at a recording sink.

mod common;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::ExportTraceServiceRequest;
use daena_trace_agent::telemetry::memory;

/// Request number `n`: `spans` spans whose ids say (n, i), so every span id is unique.
fn numbered_request(n: u32, spans: u32) -> ExportTraceServiceRequest {
    let mut request = council_request(spans as usize, 1);
    for (i, span) in request.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .enumerate()
    {
        span.trace_id = [n.to_be_bytes(), [1; 4], [2; 4], [3; 4]].concat();
        span.span_id = [n.to_be_bytes(), (i as u32 + 1).to_be_bytes()].concat();
        span.parent_span_id = Vec::new();
    }
    request
}

fn span_ids(request: &ExportTraceServiceRequest) -> impl Iterator<Item = Vec<u8>> + '_ {
    request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.span_id.clone())
}

/// What the client saw.
struct Offered {
    span_ids: HashSet<Vec<u8>>,
    requests: u32,
    refusals: u64,
}

/// Offers 2,000 spans/s (20 requests of 100 spans a second) to the agent at `url` for
/// `load`, sending a refused request again on the next 50 ms tick (as an SDK does on a
/// retryable answer) until it is accepted, within `load` + 30 s. `each_tick` gets the time
/// since the start, to change the backend.
async fn offer_load(url: &str, load: Duration, mut each_tick: impl FnMut(Duration)) -> Offered {
    const TICK: Duration = Duration::from_millis(50);
    const SPANS_PER_REQUEST: u32 = 100;
    let started = Instant::now();
    let mut offered = Offered {
        span_ids: HashSet::new(),
        requests: 0,
        refusals: 0,
    };
    let mut retry: VecDeque<ExportTraceServiceRequest> = VecDeque::new();
    while started.elapsed() < load + Duration::from_secs(30)
        && (started.elapsed() < load || !retry.is_empty())
    {
        each_tick(started.elapsed());
        // Requests due by now at 20 a second, so the offered rate holds while we retry.
        let due = (started.elapsed().min(load).as_millis() / TICK.as_millis()) as u32 + 1;
        while offered.requests < due {
            let request = numbered_request(offered.requests, SPANS_PER_REQUEST);
            offered.span_ids.extend(span_ids(&request));
            retry.push_back(request);
            offered.requests += 1;
        }
        while let Some(request) = retry.pop_front() {
            if let Err(status) = grpc_export(url.to_owned(), request.clone(), false).await {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ),
                    "only retryable refusals: {status:?}"
                );
                offered.refusals += 1;
                retry.push_front(request);
                break; // back off until the next tick, like an SDK
            }
        }
        tokio::time::sleep(TICK).await;
    }
    assert!(
        retry.is_empty(),
        "every request accepted within 30 s of the end of the load"
    );
    offered
}

/// Waits (at most 60 s) until the sink has every span id; returns (unique, total) delivered.
async fn delivered(sink: &Sink, expected: &HashSet<Vec<u8>>) -> (HashSet<Vec<u8>>, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = sink.spans();
        let unique: HashSet<Vec<u8>> = spans.iter().map(|(_, s)| s.span_id.clone()).collect();
        if unique.len() >= expected.len() || Instant::now() > deadline {
            return (unique, spans.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let sink = Sink::grpc().await;
    sink.set_down(true);
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 200ms, max_interval: 2s }}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporters, "")).await;
    let offered = offer_load(
        &agent.grpc_url(),
        OUTAGE + Duration::from_secs(2),
        |elapsed| {
            if elapsed >= OUTAGE {
                sink.set_down(false);
            }
        },
    )
    .await;
    let (unique, total) = delivered(&sink, &offered.span_ids).await;
    let lost = offered.span_ids.difference(&unique).count();
    eprintln!(
        "outage {OUTAGE:?} at 2000 spans/s: sent {} spans in {} requests, {} retryable refusals, delivered {} unique ({} duplicates), lost {lost}, peak RSS of the test process (agent in-process) {:.0} MiB",
        offered.span_ids.len(),
        offered.requests,
        offered.refusals,
        unique.len(),
        total - unique.len(),
        peak_rss_mib("self")
    );
    assert_eq!(lost, 0, "spans lost");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_under_load_gets_refusals_upstream_and_loses_nothing() {
    const HARD_MIB: f64 = 96.0;
    let sink = Sink::grpc().await;
    sink.set_delay(Duration::from_secs(1));
    // Four requests of at most 250 spans a second drain 1,000 spans/s: half the load.
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null }}\nbatch: {{ max_spans: 250, timeout: 50ms }}\nmemory_limit: {{ soft: 64MiB, hard: 96MiB }}\nexporters:\n  tempo: {{ protocol: grpc, endpoint: \"http://{}\", queue: {{ workers: 4, max_spans: 1000 }} }}\n",
        sink.addr
    );
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let offered = offer_load(&url, Duration::from_secs(8), |_| {}).await;
    let (unique, total) = delivered(&sink, &offered.span_ids).await;
    let lost = offered.span_ids.difference(&unique).count();
    let peak = peak_rss_mib(&agent.child.id().to_string());
    eprintln!(
        "slow backend (1 s per request) at 2000 spans/s: sent {} spans, {} retryable refusals, delivered {} unique ({} duplicates), lost {lost}, agent peak RSS {peak:.0} MiB",
        offered.span_ids.len(),
        offered.refusals,
        unique.len(),
        total - unique.len(),
    );
    assert!(
        offered.refusals > 0,
        "the backend was too slow for the load: the client was told to retry"
    );
    assert_eq!(lost, 0, "spans lost");
    assert!(
        peak < HARD_MIB,
        "agent peak RSS {peak:.0} MiB over the hard limit"
    );
    assert_eq!(agent.terminate(), 0);
}

/// Peak resident set of process `pid` (or `self`).
fn peak_rss_mib(pid: &str) -> f64 {
    memory::proc_status_kib(pid, "VmHWM").map_or(0.0, |kib| kib as f64 / 1024.0)
}

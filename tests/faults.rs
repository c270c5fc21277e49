//! Faults a sidecar lives through, each bounded in time: a backend outage under load.
//! Delivered spans are counted exactly, by unique span id, at a recording sink.

mod common;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::ExportTraceServiceRequest;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const RATE_SPANS: u32 = 2_000;
    const TICK: Duration = Duration::from_millis(50);
    const SPANS_PER_REQUEST: u32 = RATE_SPANS / 20; // 20 requests per second

    let sink = Sink::grpc().await;
    sink.set_down(true);
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 200ms, max_interval: 2s }}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(&exporters, "")).await;

    // The client: 20 requests a second for the outage and two seconds after; a refused
    // request is kept and sent again, as the SDK's exporter does on a retryable answer.
    let started = Instant::now();
    let mut sent: HashSet<Vec<u8>> = HashSet::new();
    let mut retry: VecDeque<ExportTraceServiceRequest> = VecDeque::new();
    let (mut refusals, mut n) = (0u64, 0u32);
    let load = OUTAGE + Duration::from_secs(2);
    while started.elapsed() < load + Duration::from_secs(30)
        && (started.elapsed() < load || !retry.is_empty())
    {
        if started.elapsed() >= OUTAGE {
            sink.set_down(false);
        }
        // Requests due by now at 20 a second, so the offered rate holds while we retry.
        let due = (started.elapsed().min(load).as_millis() / TICK.as_millis()) as u32 + 1;
        while n < due {
            let request = numbered_request(n, SPANS_PER_REQUEST);
            sent.extend(span_ids(&request));
            retry.push_back(request);
            n += 1;
        }
        for _ in 0..retry.len() {
            let request = retry.pop_front().expect("queued");
            match grpc_export(agent.grpc_url(), request.clone(), false).await {
                Ok(_) => {}
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ),
                        "only retryable refusals: {status:?}"
                    );
                    refusals += 1;
                    retry.push_back(request);
                    break; // back off until the next tick, like an SDK
                }
            }
        }
        tokio::time::sleep(TICK).await;
    }
    assert!(
        retry.is_empty(),
        "the client got every request accepted within 30 s of the outage's end"
    );

    // Every accepted span reaches the backend once it is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let spans = sink.spans();
        let unique: HashSet<Vec<u8>> = spans.iter().map(|(_, s)| s.span_id.clone()).collect();
        if unique.len() >= sent.len() || Instant::now() > deadline {
            break (unique, spans.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (unique, total) = delivered;
    let lost = sent.difference(&unique).count();
    eprintln!(
        "outage {OUTAGE:?} at {RATE_SPANS} spans/s: sent {} spans in {n} requests, {refusals} retryable refusals, delivered {} unique ({} duplicates), lost {lost}, peak RSS of the test process (agent in-process) {:.0} MiB",
        sent.len(),
        unique.len(),
        total - unique.len(),
        peak_rss_mib()
    );
    assert_eq!(lost, 0, "spans lost");
    agent.stop().await;
}

/// Peak resident set of this process (the agent runs in it), from /proc.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

//! Faults a sidecar lives through, each bounded in time: a backend outage, a slow backend
//! under load, `kill -9` and SIGTERM under load with a persistent queue, a damaged segment,
//! a full disk queue.
//! Delivered spans are counted exactly, by unique span id, at a recording sink.

mod common;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
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

/// A backend down for 30 s while the client sends 2,000 spans/s, then back: with `queue`
/// as the exporter's queue settings, nothing is lost.
async fn outage(kind: &str, queue: &str) {
    const OUTAGE: Duration = Duration::from_secs(30);
    let sink = Sink::grpc().await;
    sink.set_down(true);
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null }}\nbatch: {{ timeout: 50ms }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 200ms, max_interval: 2s }}\n    queue: {{ {queue} }}\n",
        sink.addr
    );
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let offered = offer_load(&url, OUTAGE + Duration::from_secs(2), |elapsed| {
        if elapsed >= OUTAGE {
            sink.set_down(false);
        }
    })
    .await;
    let (unique, total) = delivered(&sink, &offered.span_ids).await;
    let lost = offered.span_ids.difference(&unique).count();
    let peak = peak_rss_mib(&agent.child.id().to_string());
    eprintln!(
        "outage {OUTAGE:?} at 2000 spans/s, {kind} queue: sent {} spans in {} requests, {} retryable refusals, delivered {} unique ({} duplicates), lost {lost}, agent peak RSS {peak:.0} MiB",
        offered.span_ids.len(),
        offered.requests,
        offered.refusals,
        unique.len(),
        total - unique.len(),
    );
    assert_eq!(lost, 0, "spans lost");
    assert_eq!(tokio::task::block_in_place(|| agent.terminate()), 0);
    assert!(agent.logs().contains("none abandoned"), "{}", agent.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing_from_memory() {
    outage("memory", "max_bytes: 8MiB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    outage(
        "persistent",
        &format!("persistent: true, dir: \"{}\"", dir.path().display()),
    )
    .await;
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

/// An agent process with a persistent queue in `dir`, exporting to `sink`.
fn persistent_yaml(sink: &Sink, dir: &Path, batch: &str, queue: &str, extra: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null }}\nbatch: {batch}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 100ms, max_interval: 1s }}\n    queue: {{ persistent: true, dir: \"{}\"{queue} }}\n{extra}",
        sink.addr,
        dir.display()
    )
}

/// What a client saw while sending 2,000 spans/s (a 100-span request every 50 ms) to
/// `url` for `load`, numbering requests from `first`: the span ids of the requests the
/// agent answered with success, and how many requests were sent. Failures (refusals, a
/// dead agent) are not retried: only what was acknowledged counts.
async fn send_for(url: String, first: u32, load: Duration) -> (HashSet<Vec<u8>>, u32) {
    let started = Instant::now();
    let mut accepted = HashSet::new();
    let mut n = first;
    while started.elapsed() < load {
        let request = numbered_request(n, 100);
        n += 1;
        if grpc_export(url.clone(), request.clone(), false)
            .await
            .is_ok()
        {
            accepted.extend(span_ids(&request));
        }
        let due = started + Duration::from_millis(50) * (n - first);
        tokio::time::sleep_until(due.into()).await;
    }
    (accepted, n - first)
}

/// The number after `key=` in the agent's logs (its last mention).
fn logged_number(logs: &str, key: &str) -> Option<u64> {
    let at = logs.rfind(&format!("{key}="))? + key.len() + 1;
    let digits: String = logs[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_the_client_saw_accepted() {
    const CRASHES: u32 = 3;
    let sink = Sink::grpc().await;
    // Slower than the load, so every crash leaves a backlog and exports in flight.
    sink.set_delay(Duration::from_millis(300));
    let queue = tempfile::tempdir().expect("tempdir");
    let yaml = persistent_yaml(
        &sink,
        queue.path(),
        "{ max_spans: 250, timeout: 50ms }",
        ", workers: 2",
        "",
    );
    let mut accepted = HashSet::new();
    let mut sent = 0;
    let mut peak: f64 = 0.0;
    for crash in 1..=CRASHES {
        let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
        let url = format!("http://{}", agent.addr("OTLP/gRPC"));
        let load = tokio::spawn(send_for(url, sent, Duration::from_secs(3)));
        let kill_at = Duration::from_millis(rand::random_range(800..2_500));
        tokio::time::sleep(kill_at).await;
        peak = peak.max(peak_rss_mib(&agent.child.id().to_string()));
        agent.child.kill().expect("kill -9");
        agent.child.wait().expect("reaped");
        let (ids, requests) = load.await.expect("load");
        eprintln!(
            "crash {crash}: kill -9 after {kill_at:?} of load; {} spans acknowledged in this run",
            ids.len()
        );
        accepted.extend(ids);
        sent += requests;
    }
    sink.set_delay(Duration::ZERO);
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let (unique, total) = delivered(&sink, &accepted).await;
    let lost = accepted.difference(&unique).count();
    let replayed = logged_number(&agent.logs(), "spans").unwrap_or(0);
    eprintln!(
        "kill -9 ×{CRASHES} at 2000 spans/s: {} spans acknowledged, delivered {} unique ({} duplicates), lost {lost}; the last restart replayed {replayed} spans; agent peak RSS {peak:.0} MiB",
        accepted.len(),
        unique.len(),
        total - unique.len(),
    );
    assert_eq!(lost, 0, "acknowledged spans lost");
    assert!(
        replayed > 0,
        "the crashes left a backlog on disk for the restart to deliver"
    );
    assert_eq!(agent.terminate(), 0);
}

/// Fills a persistent queue in `dir` with `requests` acknowledged one-batch requests while
/// the backend is down, then kills the agent; returns their span ids, request by request.
async fn fill_and_kill(sink: &Sink, dir: &Path, requests: u32) -> Vec<HashSet<Vec<u8>>> {
    sink.set_down(true);
    let yaml = persistent_yaml(sink, dir, "{ max_spans: 100, timeout: 10ms }", "", "");
    let agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let mut sent = Vec::new();
    for n in 0..requests {
        let request = numbered_request(n, 100);
        grpc_export(url.clone(), request.clone(), false)
            .await
            .expect("acknowledged");
        sent.push(span_ids(&request).collect());
    }
    drop(agent); // kill -9
    sent
}

/// The newest segment file of the `tempo` exporter's queue that holds records.
fn last_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("tempo"))
        .expect("queue dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 8))
        .collect();
    segments.sort();
    segments.pop().expect("a segment with records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_last_segment_costs_only_the_damaged_record() {
    for damage in ["truncated mid-record", "a flipped byte"] {
        let sink = Sink::grpc().await;
        let queue = tempfile::tempdir().expect("tempdir");
        let sent = fill_and_kill(&sink, queue.path(), 5).await;
        let segment = last_segment(queue.path());
        let mut bytes = std::fs::read(&segment).expect("read segment");
        let at = bytes.len() - 10;
        match damage {
            "truncated mid-record" => bytes.truncate(at),
            _ => bytes[at] ^= 0x01,
        }
        std::fs::write(&segment, bytes).expect("damage segment");

        sink.set_down(false);
        let yaml = persistent_yaml(&sink, queue.path(), "{ timeout: 10ms }", "", "");
        let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
        let before: HashSet<Vec<u8>> = sent[..4].iter().flatten().cloned().collect();
        let (unique, total) = delivered(&sink, &before).await;
        // Give a wrongly replayed damaged record the time to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let logs = agent.logs();
        eprintln!(
            "segment {damage}: delivered {} of the {} spans before the damage, {} spans in all ({} duplicates); damaged records counted: {:?}",
            before.intersection(&unique).count(),
            before.len(),
            sink.spans().len(),
            total - unique.len(),
            logged_number(&logs, "damaged_records"),
        );
        assert_eq!(
            unique, before,
            "{damage}: everything before the damage, nothing of it"
        );
        assert_eq!(logged_number(&logs, "damaged_records"), Some(1), "{logs}");
        assert!(
            logs.contains("a damaged record ends this segment"),
            "{logs}"
        );
        assert_eq!(agent.terminate(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_queue_refuses_with_a_retryable_answer_and_recovers() {
    use tonic_types::StatusExt;
    let sink = Sink::grpc().await;
    sink.set_down(true);
    let queue = tempfile::tempdir().expect("tempdir");
    let yaml = persistent_yaml(
        &sink,
        queue.path(),
        "{ max_spans: 100, timeout: 10ms }",
        ", max_bytes: 256KiB",
        // In this process the limiter would read the sinks of the other tests too.
        "memory_limit: { soft: 15GiB, hard: 16GiB }\n",
    )
    .replace(
        "telemetry: { endpoint: null }",
        "telemetry: { endpoint: 127.0.0.1:0 }",
    );
    let agent = TestAgent::start(&yaml).await;
    let mut accepted = HashSet::new();
    let mut refusal = None;
    for n in 0..500 {
        let request = numbered_request(n, 100);
        match grpc_export(agent.grpc_url(), request.clone(), false).await {
            Ok(_) => accepted.extend(span_ids(&request)),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("a 256 KiB queue fills up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("persistent queue is full"),
        "{status:?}"
    );
    assert_eq!(
        status.get_details_retry_info().and_then(|i| i.retry_delay),
        Some(Duration::from_secs(1)),
        "RESOURCE_EXHAUSTED is retryable only with RetryInfo"
    );
    let on_disk: u64 = std::fs::read_dir(queue.path().join("tempo"))
        .expect("queue dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(on_disk <= (256 << 10) + 64, "{on_disk} bytes on disk");
    assert!(
        agent
            .counter("daena_agent_spans_refused_total{protocol=\"grpc\",reason=\"queue_full\"}")
            .await
            >= 100
    );

    sink.set_down(false);
    let (unique, _) = delivered(&sink, &accepted).await;
    assert_eq!(accepted.difference(&unique).count(), 0, "spans lost");
    let request = numbered_request(1_000, 100);
    grpc_export(agent.grpc_url(), request, false)
        .await
        .expect("room again once the backend drained the queue");
    eprintln!(
        "disk queue full at {} acknowledged spans ({on_disk} bytes of segments for max_bytes 256 KiB): refused with {:?} + RetryInfo; all delivered once the backend came back",
        accepted.len(),
        status.code()
    );
    let report = agent.stop().await;
    assert_eq!(report.spans_left_on_disk, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_in_time_and_a_restart_delivers_the_rest() {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
    let sink = Sink::grpc().await;
    sink.set_delay(Duration::from_millis(500));
    let queue = tempfile::tempdir().expect("tempdir");
    let yaml = persistent_yaml(
        &sink,
        queue.path(),
        "{ max_spans: 200, timeout: 50ms }",
        ", workers: 1",
        "shutdown_timeout: 2s\n",
    );
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let load = tokio::spawn(send_for(url, 0, Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let signalled = Instant::now();
    let code = tokio::task::block_in_place(|| agent.terminate());
    let exit_after = signalled.elapsed();
    let (accepted, _) = load.await.expect("load");
    let logs = agent.logs();
    let left = logged_number(&logs, "spans_left_on_disk").unwrap_or(0);
    assert_eq!(code, 0, "{logs}");

    sink.set_delay(Duration::ZERO);
    let mut restarted = AgentProcess::with_config(&yaml, "info", &[]);
    let (unique, total) = delivered(&sink, &accepted).await;
    let lost = accepted.difference(&unique).count();
    eprintln!(
        "SIGTERM under load: exited after {exit_after:?} (shutdown_timeout {SHUTDOWN_TIMEOUT:?}) leaving {left} spans on disk; {} spans acknowledged, delivered {} unique after the restart ({} duplicates), lost {lost}",
        accepted.len(),
        unique.len(),
        total - unique.len(),
    );
    assert!(
        exit_after < SHUTDOWN_TIMEOUT + Duration::from_secs(5),
        "exited after {exit_after:?}"
    );
    assert!(left > 0, "the slow backend left a backlog: {logs}");
    assert_eq!(lost, 0, "spans lost");
    assert_eq!(restarted.terminate(), 0);
}

/// Peak resident set of process `pid` (or `self`).
fn peak_rss_mib(pid: &str) -> f64 {
    memory::proc_status_kib(pid, "VmHWM").map_or(0.0, |kib| kib as f64 / 1024.0)
}

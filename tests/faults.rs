//! Faults a sidecar lives through, each bounded in time: a backend outage, a slow backend
//! under load, a dead backend beside a healthy one, `kill -9` and SIGTERM under load with a
//! persistent queue, a damaged segment, a full disk queue.
//! Delivered spans are counted exactly, by span id, at a recording sink: every span the
//! client saw acknowledged must arrive, and no span may arrive twice.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::ExportTraceServiceRequest;
use tokio_util::sync::CancellationToken;

/// The client's pace in every load: a request of 100 spans every 50 ms, 2,000 spans/s.
const TICK: Duration = Duration::from_millis(50);
const SPANS_PER_REQUEST: u32 = 100;
const SPANS_PER_SECOND: u64 = 2_000;

/// How long the backend must have sent no answer before a test crashes or stops the
/// agent: time for the agent to act on the last answer it got (mark the batch delivered
/// in its persistent queue). Only then is a span the backend has also a span the agent
/// knows is delivered, so a restart that sends it again is a bug, not bad timing.
const QUIET: Duration = Duration::from_millis(300);

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

// ---------------------------------------------------------------- what arrived

/// What reached a sink: how many times each span id arrived.
struct Delivered {
    arrivals: HashMap<Vec<u8>, usize>,
}

impl Delivered {
    /// What the sink has now.
    fn now(sink: &Sink) -> Self {
        let mut arrivals = HashMap::new();
        for (_, span) in sink.spans() {
            *arrivals.entry(span.span_id).or_default() += 1;
        }
        Self { arrivals }
    }

    /// Waits (at most `limit`) until every span id of `expected` arrived at the sink;
    /// returns what the sink has then.
    async fn all_of(sink: &Sink, expected: &HashSet<Vec<u8>>, limit: Duration) -> Self {
        let deadline = Instant::now() + limit;
        loop {
            let delivered = Self::now(sink);
            if delivered.lost(expected) == 0 || Instant::now() > deadline {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spans of `expected` that never arrived.
    fn lost(&self, expected: &HashSet<Vec<u8>>) -> usize {
        expected
            .iter()
            .filter(|id| !self.arrivals.contains_key(*id))
            .count()
    }

    /// Distinct spans that arrived.
    fn unique(&self) -> usize {
        self.arrivals.len()
    }

    /// Arrivals of a span beyond its first.
    fn duplicates(&self) -> usize {
        self.arrivals.values().map(|n| n - 1).sum()
    }

    /// How many times span `id` arrived.
    fn times(&self, id: &[u8]) -> usize {
        self.arrivals.get(id).copied().unwrap_or(0)
    }
}

// ---------------------------------------------------------------- clients

/// What a client saw while offering load and retrying refusals.
struct Offered {
    span_ids: HashSet<Vec<u8>>,
    requests: u32,
    refusals: u64,
}

/// Offers 2,000 spans/s to the agent at `url` for `load`, sending a refused request again
/// on the next tick (as an SDK does on a retryable answer) until it is accepted, within
/// `load` + 30 s. `each_tick` gets the time since the start, to change the backend.
async fn offer_load(url: &str, load: Duration, mut each_tick: impl FnMut(Duration)) -> Offered {
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
        // Requests due by now, so the offered rate holds while we retry.
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

/// What a client saw while sending without retries.
struct Sent {
    /// The span ids of each request the agent answered with success, and when it did.
    acknowledged: Vec<(Instant, Vec<Vec<u8>>)>,
    /// Requests sent.
    requests: u32,
    /// Requests that failed: refused, or the agent was gone.
    failed: u32,
}

impl Sent {
    /// Every span id the agent acknowledged.
    fn span_ids(&self) -> HashSet<Vec<u8>> {
        self.acknowledged
            .iter()
            .flat_map(|(_, ids)| ids.iter().cloned())
            .collect()
    }
}

/// Sends 2,000 spans/s to `url`, numbering requests from `first`, until `stop` is
/// cancelled or `max` has passed. Failures (refusals, a dead agent) are not retried: only
/// what was acknowledged counts.
async fn send_for(url: String, first: u32, stop: CancellationToken, max: Duration) -> Sent {
    let started = Instant::now();
    let mut sent = Sent {
        acknowledged: Vec::new(),
        requests: 0,
        failed: 0,
    };
    while started.elapsed() < max && !stop.is_cancelled() {
        let request = numbered_request(first + sent.requests, SPANS_PER_REQUEST);
        sent.requests += 1;
        match grpc_export(url.clone(), request.clone(), false).await {
            Ok(_) => sent
                .acknowledged
                .push((Instant::now(), span_ids(&request).collect())),
            Err(_) => sent.failed += 1,
        }
        let due = started + TICK * sent.requests;
        tokio::select! {
            () = tokio::time::sleep_until(due.into()) => {}
            () = stop.cancelled() => {}
        }
    }
    sent
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

// ---------------------------------------------------------------- outage, slow backend

/// The most retryable refusals a client offering 2,000 spans/s for `load` may see while
/// the backend is down, from an agent whose exporter queue holds `capacity` spans: none
/// until the queue is full, `capacity / 2,000` seconds in; from then on at most one per
/// tick (after a refusal the client waits for the next tick), until the load ends; plus
/// one second of ticks for slack (the pipeline cutting a batch, the backend's first
/// answers once it is back). An agent that buffers nothing is refused on every tick
/// from the start: 20 a second, 640 over a 32 s load.
fn refusal_bound(capacity: u64, load: Duration) -> u64 {
    let ticks_per_second = 1_000 / TICK.as_millis() as u64;
    let full_after = capacity / SPANS_PER_SECOND;
    let full_for = load.as_secs().saturating_sub(full_after);
    (full_for + 1) * ticks_per_second
}

/// A backend down for 30 s while the client sends 2,000 spans/s, then back: with `queue`
/// as the exporter's queue settings, bounded by `max_spans` and `max_bytes`, nothing is
/// lost, nothing arrives twice, and the client is refused only once the queue is full.
async fn outage(kind: &str, queue: &str, max_spans: u64, max_bytes: u64) {
    const OUTAGE: Duration = Duration::from_secs(30);
    const LOAD: Duration = Duration::from_secs(32);
    let sink = Sink::grpc().await;
    sink.set_down(true);
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null }}\nbatch: {{ timeout: 50ms }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 200ms, max_interval: 2s }}\n    queue: {{ {queue} }}\n",
        sink.addr
    );
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let offered = offer_load(&url, LOAD, |elapsed| {
        if elapsed >= OUTAGE {
            sink.set_down(false);
        }
    })
    .await;
    Delivered::all_of(&sink, &offered.span_ids, Duration::from_secs(60)).await;
    let peak = agent.peak_rss_mib();
    // A graceful stop sends whatever the agent still meant to send, resends included.
    assert_eq!(tokio::task::block_in_place(|| agent.terminate()), 0);
    assert!(agent.logs().contains("none abandoned"), "{}", agent.logs());
    let delivered = Delivered::now(&sink);
    // The queue holds batches as the agent encodes them for the backend, which is what
    // the backend receives: its bytes per span give the queue's capacity in spans.
    let received = sink.received();
    let bytes: usize = received.iter().map(|r| r.body.len()).sum();
    let spans = sink.spans().len();
    let bytes_per_span = (bytes / spans.max(1)).max(1) as u64;
    let capacity = max_spans.min(max_bytes / bytes_per_span);
    let bound = refusal_bound(capacity, LOAD);
    let lost = delivered.lost(&offered.span_ids);
    eprintln!(
        "outage {OUTAGE:?} at 2000 spans/s, {kind} queue: sent {} spans in {} requests, {} retryable refusals (bound {bound}: the queue holds {capacity} spans of {bytes_per_span} bytes, {} s of the load), delivered {} unique ({} duplicates), lost {lost}, agent peak RSS {peak:.0} MiB",
        offered.span_ids.len(),
        offered.requests,
        offered.refusals,
        capacity / SPANS_PER_SECOND,
        delivered.unique(),
        delivered.duplicates(),
    );
    assert_eq!(lost, 0, "spans lost");
    assert_eq!(delivered.duplicates(), 0, "spans delivered twice");
    assert!(
        offered.refusals <= bound,
        "{} refusals, more than {bound}: the queue did not buffer what it has room for",
        offered.refusals
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing_from_memory() {
    outage(
        "memory",
        "max_spans: 65536, max_bytes: 8MiB",
        65_536,
        8 << 20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_thirty_seconds_under_load_loses_nothing_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    outage(
        "persistent",
        &format!(
            "persistent: true, dir: \"{}\", max_bytes: 1GiB",
            dir.path().display()
        ),
        u64::MAX,
        1 << 30,
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
    Delivered::all_of(&sink, &offered.span_ids, Duration::from_secs(60)).await;
    let peak = agent.peak_rss_mib();
    assert_eq!(tokio::task::block_in_place(|| agent.terminate()), 0);
    let delivered = Delivered::now(&sink);
    let lost = delivered.lost(&offered.span_ids);
    eprintln!(
        "slow backend (1 s per request) at 2000 spans/s: sent {} spans, {} retryable refusals, delivered {} unique ({} duplicates), lost {lost}, agent peak RSS {peak:.0} MiB",
        offered.span_ids.len(),
        offered.refusals,
        delivered.unique(),
        delivered.duplicates(),
    );
    assert!(
        offered.refusals > 0,
        "the backend was too slow for the load: the client was told to retry"
    );
    assert_eq!(lost, 0, "spans lost");
    assert_eq!(delivered.duplicates(), 0, "spans delivered twice");
    assert!(
        peak < HARD_MIB,
        "agent peak RSS {peak:.0} MiB over the hard limit"
    );
}

// ---------------------------------------------------------------- two exporters

/// Two exporters under load, one whose backend never answers and one healthy. The
/// contract: a full exporter queue sheds its own load (counted as `queue_full`) while
/// another exporter has room, and clients are pushed back only when every exporter is
/// full. So the healthy backend gets every acknowledged span on time, the client is
/// never refused, and every span the dead exporter took is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_exporter_beside_a_healthy_one_sheds_its_own_load_and_holds_back_nothing() {
    const LOAD: Duration = Duration::from_secs(8);
    // The healthy backend answers at once and batches leave every 50 ms, so only a stall
    // makes a span take this long from its acknowledgement to the backend.
    const ON_TIME: Duration = Duration::from_secs(3);
    let healthy = Sink::grpc().await;
    let dead = Sink::grpc().await;
    dead.close_gate(); // it takes requests and never answers
    // The dead exporter's queue holds one second of the load.
    let yaml = format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ max_spans: 100, timeout: 50ms }}\nshutdown_timeout: 1s\nexporters:\n  healthy: {{ protocol: grpc, endpoint: \"http://{}\" }}\n  dead: {{ protocol: grpc, endpoint: \"http://{}\", queue: {{ max_spans: 2000, on_full: block }} }}\n",
        healthy.addr, dead.addr
    );
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let sent = send_for(url, 0, CancellationToken::new(), LOAD).await;
    let acknowledged = sent.span_ids();
    let last_ack = sent
        .acknowledged
        .last()
        .map_or_else(Instant::now, |(at, _)| *at);
    let wait = (last_ack + ON_TIME).saturating_duration_since(Instant::now());
    let delivered = Delivered::all_of(&healthy, &acknowledged, wait).await;

    // When each span first reached the healthy backend.
    let mut arrived: HashMap<Vec<u8>, Instant> = HashMap::new();
    for received in healthy.received() {
        for (_, span) in flatten([&received.request]) {
            arrived.entry(span.span_id).or_insert(received.at);
        }
    }
    let mut late = 0;
    let mut slowest = Duration::ZERO;
    for (acked_at, ids) in &sent.acknowledged {
        for id in ids {
            match arrived.get(id) {
                Some(at) => {
                    let took = at.saturating_duration_since(*acked_at);
                    slowest = slowest.max(took);
                    late += usize::from(took > ON_TIME);
                }
                None => late += 1,
            }
        }
    }
    let received = agent
        .counter("daena_agent_spans_received_total{protocol=\"grpc\"}")
        .await;
    let shed = agent
        .counter("daena_agent_spans_dropped_total{stage=\"exporter/dead\",reason=\"queue_full\"}")
        .await;
    let code = tokio::task::block_in_place(|| agent.terminate());
    let logs = agent.logs();
    let abandoned = logged_number(&logs, "abandoned_spans").unwrap_or(0);
    eprintln!(
        "dead + healthy exporter at 2000 spans/s for {LOAD:?}: {} requests, {} refused or failed, {} spans acknowledged; healthy backend: {} lost, {} duplicates, {late} not within {ON_TIME:?} (slowest {slowest:?}); dead exporter: {shed} spans shed as queue_full, {abandoned} abandoned at the stop, of {received} received",
        sent.requests,
        sent.failed,
        acknowledged.len(),
        delivered.lost(&acknowledged),
        delivered.duplicates(),
    );
    assert_eq!(
        sent.failed, 0,
        "the client was refused while the healthy exporter had room"
    );
    assert_eq!(
        delivered.lost(&acknowledged),
        0,
        "acknowledged spans never reached the healthy backend"
    );
    assert_eq!(late, 0, "spans reached the healthy backend late");
    assert_eq!(delivered.duplicates(), 0, "spans delivered twice");
    assert!(
        shed > 0,
        "the dead exporter's loss is counted as queue_full"
    );
    assert_eq!(
        shed + abandoned,
        received,
        "every span the dead exporter took is shed or abandoned, and counted"
    );
    assert_eq!(code, 0, "{logs}");
}

// ---------------------------------------------------------------- kill -9, SIGTERM

/// An agent process with a persistent queue in `dir`, exporting to `sink`.
fn persistent_yaml(sink: &Sink, dir: &Path, batch: &str, queue: &str, extra: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: null }}\nbatch: {batch}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    retry: {{ initial_interval: 100ms, max_interval: 1s }}\n    queue: {{ persistent: true, dir: \"{}\"{queue} }}\n{extra}",
        sink.addr,
        dir.display()
    )
}

/// Closes the sink's gate and waits until an export is held at it and the backend has
/// been quiet for [`QUIET`]: from then on the backend has exactly what the agent knows it
/// delivered. Returns the requests held.
async fn freeze_backend(sink: &Sink) -> usize {
    sink.close_gate();
    sink.wait_until_held_and_quiet(QUIET).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged_and_resends_nothing_delivered() {
    const CRASHES: u32 = 3;
    let sink = Sink::grpc().await;
    // Slower than the load, so every crash leaves a backlog and an export in flight.
    sink.set_delay(Duration::from_millis(300));
    let queue = tempfile::tempdir().expect("tempdir");
    // One export in flight: the crash comes at a random moment, and with two in flight it
    // could land between their answers; that case is pinned down by the next test.
    let yaml = persistent_yaml(
        &sink,
        queue.path(),
        "{ max_spans: 250, timeout: 50ms }",
        ", workers: 1",
        "",
    );
    let mut acknowledged = HashSet::new();
    let mut sent = 0;
    let mut peak: f64 = 0.0;
    for crash in 1..=CRASHES {
        let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
        let url = format!("http://{}", agent.addr("OTLP/gRPC"));
        let stop = CancellationToken::new();
        let load = tokio::spawn(send_for(url, sent, stop.clone(), Duration::from_secs(10)));
        let kill_at = Duration::from_millis(rand::random_range(800..2_500));
        tokio::time::sleep(kill_at).await;
        let held = freeze_backend(&sink).await;
        peak = peak.max(agent.peak_rss_mib());
        agent.child.kill().expect("kill -9");
        agent.child.wait().expect("reaped");
        stop.cancel();
        let load = load.await.expect("load");
        // The held exports belonged to the dead process: the backend never records them.
        sink.release_held_and_open_gate();
        eprintln!(
            "crash {crash}: kill -9 after {kill_at:?} of load, {held} export(s) held unanswered; {} spans acknowledged in this run",
            load.span_ids().len()
        );
        acknowledged.extend(load.span_ids());
        sent += load.requests;
    }
    sink.set_delay(Duration::ZERO);
    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let replayed = logged_number(&agent.logs(), "spans").unwrap_or(0);
    Delivered::all_of(&sink, &acknowledged, Duration::from_secs(60)).await;
    // A graceful stop sends whatever the agent still meant to send, resends included.
    assert_eq!(tokio::task::block_in_place(|| agent.terminate()), 0);
    let delivered = Delivered::now(&sink);
    let lost = delivered.lost(&acknowledged);
    eprintln!(
        "kill -9 ×{CRASHES} at 2000 spans/s: {} spans acknowledged, delivered {} unique ({} duplicates), lost {lost}; the last restart replayed {replayed} spans; agent peak RSS {peak:.0} MiB",
        acknowledged.len(),
        delivered.unique(),
        delivered.duplicates(),
    );
    assert_eq!(lost, 0, "acknowledged spans lost");
    assert_eq!(
        delivered.duplicates(),
        0,
        "spans the backend had acknowledged were sent again"
    );
    assert!(
        replayed > 0,
        "the crashes left a backlog on disk for the restart to deliver"
    );
}

/// A batch the backend acknowledged while an older one was still in flight is delivered:
/// after `kill -9` only the older one may be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_resends_the_batch_in_flight_but_not_a_newer_one_already_delivered() {
    let sink = Sink::grpc().await;
    let queue = tempfile::tempdir().expect("tempdir");
    let yaml = persistent_yaml(
        &sink,
        queue.path(),
        "{ max_spans: 100, timeout: 10ms }",
        ", workers: 2",
        "",
    );
    let agent = AgentProcess::with_config(&yaml, "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let requests: Vec<ExportTraceServiceRequest> = (0..3)
        .map(|n| numbered_request(n, SPANS_PER_REQUEST))
        .collect();
    // A first batch delivered at the first attempt lets the exporter have two in flight.
    grpc_export(url.clone(), requests[0].clone(), false)
        .await
        .expect("acknowledged");
    sink.wait_for_spans(100).await;
    // The backend holds the second batch and answers the third.
    let older: HashSet<Vec<u8>> = span_ids(&requests[1]).collect();
    sink.close_gate_for(move |request| {
        flatten([request])
            .iter()
            .any(|(_, span)| older.contains(&span.span_id))
    });
    for request in &requests[1..] {
        grpc_export(url.clone(), request.clone(), false)
            .await
            .expect("acknowledged");
    }
    sink.wait_for_spans(200).await;
    sink.wait_until_held_and_quiet(QUIET).await;
    drop(agent); // kill -9
    sink.release_held_and_open_gate();

    let mut agent = AgentProcess::with_config(&yaml, "info", &[]);
    let acknowledged: HashSet<Vec<u8>> = requests.iter().flat_map(span_ids).collect();
    Delivered::all_of(&sink, &acknowledged, Duration::from_secs(20)).await;
    assert_eq!(tokio::task::block_in_place(|| agent.terminate()), 0);
    let delivered = Delivered::now(&sink);
    // Spans of each request that arrived more than once.
    let resent: Vec<usize> = requests
        .iter()
        .map(|r| span_ids(r).filter(|id| delivered.times(id) > 1).count())
        .collect();
    eprintln!(
        "kill -9 with the older of two batches in flight: {} of {} spans delivered, {} duplicates (spans sent twice, by request: {resent:?})",
        acknowledged.len() - delivered.lost(&acknowledged),
        acknowledged.len(),
        delivered.duplicates()
    );
    assert_eq!(delivered.lost(&acknowledged), 0, "acknowledged spans lost");
    assert_eq!(
        delivered.duplicates(),
        0,
        "spans sent twice, by request {resent:?}: request 2's batch was acknowledged by the backend before the crash, yet sent again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_in_time_and_a_restart_delivers_the_rest_once() {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
    // The agent stops exporting at shutdown_timeout, then only stops its tasks and writes
    // its last log line.
    const MARGIN: Duration = Duration::from_secs(1);
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
    let stop = CancellationToken::new();
    let load = tokio::spawn(send_for(url, 0, stop.clone(), Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The export in flight then never ends: the agent must give up on it at the deadline.
    let held = freeze_backend(&sink).await;
    let (code, exit_after) = tokio::task::block_in_place(|| agent.terminate_timed());
    stop.cancel();
    let acknowledged = load.await.expect("load").span_ids();
    sink.release_held_and_open_gate();
    let logs = agent.logs();
    let left = logged_number(&logs, "spans_left_on_disk").unwrap_or(0);
    assert_eq!(code, 0, "{logs}");

    sink.set_delay(Duration::ZERO);
    let mut restarted = AgentProcess::with_config(&yaml, "info", &[]);
    Delivered::all_of(&sink, &acknowledged, Duration::from_secs(60)).await;
    assert_eq!(tokio::task::block_in_place(|| restarted.terminate()), 0);
    let delivered = Delivered::now(&sink);
    let lost = delivered.lost(&acknowledged);
    eprintln!(
        "SIGTERM under load with {held} export(s) held: exited after {exit_after:?} (shutdown_timeout {SHUTDOWN_TIMEOUT:?}) leaving {left} spans on disk; {} spans acknowledged, delivered {} unique after the restart ({} duplicates), lost {lost}",
        acknowledged.len(),
        delivered.unique(),
        delivered.duplicates(),
    );
    assert!(
        exit_after <= SHUTDOWN_TIMEOUT + MARGIN,
        "exited {exit_after:?} after SIGTERM, shutdown_timeout is {SHUTDOWN_TIMEOUT:?}"
    );
    assert!(left > 0, "the slow backend left a backlog: {logs}");
    assert_eq!(lost, 0, "spans lost");
    assert_eq!(
        delivered.duplicates(),
        0,
        "spans the backend had acknowledged were sent again"
    );
}

// ---------------------------------------------------------------- damage, disk full

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
        Delivered::all_of(&sink, &before, Duration::from_secs(60)).await;
        // Give a wrongly replayed damaged record the time to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let logs = agent.logs();
        let delivered = Delivered::now(&sink);
        eprintln!(
            "segment {damage}: delivered {} of the {} spans before the damage, {} spans in all ({} duplicates); damaged records counted: {:?}",
            before.len() - delivered.lost(&before),
            before.len(),
            delivered.unique(),
            delivered.duplicates(),
            logged_number(&logs, "damaged_records"),
        );
        assert_eq!(
            delivered.lost(&before),
            0,
            "{damage}: records before it lost"
        );
        assert_eq!(
            delivered.unique(),
            before.len(),
            "{damage}: nothing of the damaged record"
        );
        assert_eq!(delivered.duplicates(), 0, "{damage}: spans delivered twice");
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
    let delivered = Delivered::all_of(&sink, &accepted, Duration::from_secs(60)).await;
    assert_eq!(delivered.lost(&accepted), 0, "spans lost");
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
    assert_eq!(
        Delivered::now(&sink).duplicates(),
        0,
        "spans delivered twice"
    );
}

//! Two tiers: sidecars with a `loadbalancing` exporter in front of three gateway agents
//! that tail-sample. Every trace's spans reach one gateway, wherever they entered, so the
//! gateways decide on whole traces.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use daena_trace_agent::config::{ExporterConfig, ExporterProtocol};
use daena_trace_agent::exporter::Payload;
use daena_trace_agent::exporter::loadbalancing::resolver::{Resolve, ResolveError};
use daena_trace_agent::exporter::loadbalancing::ring::HashRing;
use daena_trace_agent::exporter::loadbalancing::start_with_resolver;
use daena_trace_agent::exporter::queue::Tasks;
use daena_trace_agent::otlp::partition::route_hash;
use daena_trace_agent::otlp::{Resource, Span, SpanBatch, Status, StatusCode};
use daena_trace_agent::telemetry::Metrics;
use daena_trace_agent::telemetry::health::Health;

/// Traces sent; every fifth has an error span.
const TRACES: u32 = 300;
/// Spans per trace: the first half goes through one sidecar, the rest through the other.
const SPANS: u32 = 4;

fn errored(trace: u32) -> bool {
    trace.is_multiple_of(5)
}

/// Spread-out trace ids, none all zeros (which the receivers refuse).
fn trace_id(trace: u32) -> Vec<u8> {
    let mixed = u64::from(trace + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    [mixed.to_be_bytes(), mixed.rotate_left(17).to_be_bytes()].concat()
}

/// Span `index` of every trace in `traces`.
fn spans(traces: std::ops::Range<u32>, indexes: std::ops::Range<u32>) -> Vec<Span> {
    traces
        .flat_map(|trace| {
            indexes.clone().map(move |index| Span {
                trace_id: trace_id(trace),
                span_id: [(trace + 1).to_be_bytes(), index.to_be_bytes()].concat(),
                name: format!("t{trace}.{index}"),
                start_time_unix_nano: 1_700_000_000_000_000_000,
                end_time_unix_nano: 1_700_000_000_001_000_000,
                status: (errored(trace) && index == SPANS - 1).then(|| Status {
                    code: StatusCode::Error as i32,
                    message: "boom".into(),
                }),
                ..Default::default()
            })
        })
        .collect()
}

fn gateway_yaml(sink: &Sink) -> String {
    agent_yaml(
        &format!(
            "  tempo: {{ protocol: grpc, endpoint: \"http://{}\" }}",
            sink.addr
        ),
        "processors: { filter: { enabled: false }, signals: { enabled: false }, daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false }, sampling: { mode: tail, decision_wait: 200ms, policies: [{ name: errors, type: errors }] } }\n",
    )
}

fn sidecar_yaml(gateways: &[String]) -> String {
    agent_yaml(&gateways_exporter(gateways, "30s"), NO_PROCESSORS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_route_each_trace_whole_to_one_tail_sampling_gateway() {
    let sinks = [Sink::grpc().await, Sink::grpc().await, Sink::grpc().await];
    let mut gateways = Vec::new();
    for sink in &sinks {
        gateways.push(TestAgent::start(&gateway_yaml(sink)).await);
    }
    let addresses: Vec<String> = gateways
        .iter()
        .map(|g| g.grpc.expect("gateway grpc").to_string())
        .collect();
    let sidecars = [
        TestAgent::start(&sidecar_yaml(&addresses)).await,
        TestAgent::start(&sidecar_yaml(&addresses)).await,
    ];
    // Each sidecar gets its half of every trace, in requests of 50 traces, both at once.
    let half = SPANS / 2;
    let send = |sidecar: &TestAgent, indexes: std::ops::Range<u32>| {
        let url = sidecar.grpc_url();
        async move {
            for start in (0..TRACES).step_by(50) {
                let request = request_with_resource(
                    Resource::default(),
                    spans(start..start + 50, indexes.clone()),
                );
                grpc_export(url.clone(), request, false)
                    .await
                    .expect("the sidecar accepts");
            }
        }
    };
    tokio::join!(send(&sidecars[0], 0..half), send(&sidecars[1], half..SPANS));

    let expected = (0..TRACES).filter(|&t| errored(t)).count() * SPANS as usize;
    let started = std::time::Instant::now();
    while sinks.iter().map(|s| s.spans().len()).sum::<usize>() < expected {
        if started.elapsed() > WAIT {
            // What each agent counted, to tell a routing fault from a sampling one.
            for agent in sidecars.iter().chain(&gateways) {
                let metrics = agent.metrics().await;
                let lines: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        !l.starts_with('#')
                            && !l.ends_with(" 0")
                            && (l.contains("span") || l.contains("lb_"))
                    })
                    .collect();
                eprintln!("{}\n", lines.join("\n"));
            }
            let got: Vec<usize> = sinks.iter().map(|s| s.spans().len()).collect();
            panic!("the kept traces did not all arrive: {got:?} of {expected}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything kept wrongly would follow within a decision wait and a batch or two.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let mut landed: BTreeMap<Vec<u8>, (BTreeSet<usize>, usize)> = BTreeMap::new();
    for (gateway, sink) in sinks.iter().enumerate() {
        for (_, span) in sink.spans() {
            let entry = landed.entry(span.trace_id).or_default();
            entry.0.insert(gateway);
            entry.1 += 1;
        }
    }
    for trace in 0..TRACES {
        match landed.get(&trace_id(trace)) {
            Some((on, spans)) => {
                assert!(errored(trace), "trace {trace} has no error yet was kept");
                assert_eq!(on.len(), 1, "trace {trace} reached gateways {on:?}");
                assert_eq!(*spans, SPANS as usize, "trace {trace} arrived incomplete");
            }
            None => assert!(!errored(trace), "errored trace {trace} was lost"),
        }
    }
    for (gateway, sink) in sinks.iter().enumerate() {
        assert!(!sink.spans().is_empty(), "gateway {gateway} got no share");
    }
    for sidecar in &sidecars {
        assert_eq!(
            sidecar
                .counter("daena_agent_lb_backends{exporter=\"gateways\"}")
                .await,
            3
        );
        for address in &addresses {
            let sent = sidecar
                .counter(&format!(
                    "daena_agent_spans_exported_total{{exporter=\"gateways/{address}\"}}"
                ))
                .await;
            assert!(sent > 0, "a sidecar sent nothing to {address}");
        }
    }
    for agent in sidecars.into_iter().chain(gateways) {
        agent.stop().await;
    }
}

/// The index in `addresses` of each trace's owner, as every agent computes it: the ring
/// over the sorted `host:port`s, by the fixed hash of the trace id.
fn owner_of(addresses: &[String]) -> impl Fn(u32) -> usize + '_ {
    let mut hosts = addresses.to_vec();
    hosts.sort();
    let ring = HashRing::new(&hosts);
    move |trace| {
        let index = ring.owner(route_hash(&trace_id(trace))).expect("a backend");
        addresses
            .iter()
            .position(|a| *a == hosts[index])
            .expect("a sink")
    }
}

/// The trace ids of the spans a sink holds with a span index in `indexes`.
fn trace_ids(sink: &Sink, indexes: std::ops::Range<u32>) -> BTreeSet<Vec<u8>> {
    sink.spans()
        .into_iter()
        .filter(|(_, span)| {
            let index = u32::from_be_bytes(span.span_id[4..8].try_into().expect("8 bytes"));
            indexes.contains(&index)
        })
        .map(|(_, span)| span.trace_id)
        .collect()
}

/// Trace ids of `traces` that `owner` gives to `sink`.
fn owned(
    traces: std::ops::Range<u32>,
    owner: impl Fn(u32) -> usize,
    sink: usize,
) -> BTreeSet<Vec<u8>> {
    traces.filter(|&t| owner(t) == sink).map(trace_id).collect()
}

/// Waits (bounded by [`WAIT`]) until `done`; fails saying `what` did not happen.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded by [`WAIT`]) until the sinks hold `spans` spans between them.
async fn wait_for_total(sinks: &[Sink], spans: usize) {
    let total = || sinks.iter().map(|s| s.spans().len()).sum::<usize>();
    until(&format!("{spans} spans in the sinks"), || total() >= spans).await;
}

/// Three recording gateways on loopback, the third down (refusing retryably), and their
/// `host:port`s.
async fn three_gateways_the_third_down() -> ([Sink; 3], Vec<String>) {
    let sinks = [Sink::grpc().await, Sink::grpc().await, Sink::grpc().await];
    sinks[2].set_down(true);
    let addresses = sinks.iter().map(|s| s.addr.to_string()).collect();
    (sinks, addresses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_holds_back_no_other_and_gets_its_own_traces_when_it_is_back() {
    let (sinks, addresses) = three_gateways_the_third_down().await;
    // Within its grace: its share waits for it.
    let sidecar = TestAgent::start(&agent_yaml(
        &gateways_exporter(&addresses, "1h"),
        NO_PROCESSORS,
    ))
    .await;
    let owner = owner_of(&addresses);
    // Under load: six requests of ten traces while the third backend refuses.
    let traces = 0..60;
    for start in traces.clone().step_by(10) {
        let request =
            request_with_resource(Resource::default(), spans(start..start + 10, 0..SPANS));
        grpc_export(sidecar.grpc_url(), request, false)
            .await
            .expect("the sidecar accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let expected = |sink: usize| owned(traces.clone(), &owner, sink).len() * SPANS as usize;
    assert!(expected(2) > 0, "the down backend owns some traces");
    // The two up backends get all of their traces while the third refuses.
    for (index, sink) in sinks.iter().enumerate().take(2) {
        sink.wait_for_spans(expected(index)).await;
        assert_eq!(
            trace_ids(sink, 0..SPANS),
            owned(traces.clone(), &owner, index),
            "sink {index}"
        );
    }
    assert!(sinks[2].spans().is_empty());

    sinks[2].set_down(false);
    sinks[2].wait_for_spans(expected(2)).await;
    assert_eq!(
        trace_ids(&sinks[2], 0..SPANS),
        owned(traces.clone(), &owner, 2)
    );
    for (index, sink) in sinks.iter().enumerate() {
        assert_eq!(
            sink.spans().len(),
            expected(index),
            "sink {index}: a span twice"
        );
    }
    assert_eq!(
        sidecar
            .counter("daena_agent_lb_rerouted_spans_total{exporter=\"gateways\"}")
            .await,
        0
    );
    sidecar.stop().await;
}

/// Answers what the test last set: backends, or a failure.
#[derive(Clone, Default)]
struct ChangingResolver(Arc<Mutex<Option<Vec<String>>>>);

impl ChangingResolver {
    fn answer(&self, urls: Option<Vec<String>>) {
        *self.0.lock().expect("lock") = urls;
    }
}

impl Resolve for ChangingResolver {
    async fn resolve(&self) -> Result<Vec<String>, ResolveError> {
        self.0
            .lock()
            .expect("lock")
            .clone()
            .ok_or(ResolveError::Empty {
                name: "test".into(),
            })
    }

    fn interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(10))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backends_queue_goes_to_the_new_owners_and_its_traces_come_back_with_it() {
    let sinks = [Sink::grpc().await, Sink::grpc().await, Sink::grpc().await];
    let addresses: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let url = |i: usize| format!("http://{}", addresses[i]);
    let mut backend = ExporterConfig::new(ExporterProtocol::Grpc, None);
    backend.retry.initial_interval = Duration::from_millis(50);
    backend.retry.max_interval = Duration::from_millis(200);
    let mut config = ExporterConfig::new(ExporterProtocol::Loadbalancing, None);
    config.exporter = Some(Box::new(backend));
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let tasks = Tasks {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        ..Default::default()
    };
    let resolver = ChangingResolver::default();
    let (handle, task) =
        start_with_resolver("lb", &config, resolver.clone(), tasks).expect("start");
    let value = |series: &str| counter_value(&metrics.render(), series);
    let backends = "daena_agent_lb_backends{exporter=\"lb\"}";
    let changes = "daena_agent_lb_membership_changes_total{exporter=\"lb\"}";
    let rerouted = "daena_agent_lb_rerouted_spans_total{exporter=\"lb\"}";
    let member = |i: usize| {
        let series = format!(
            "daena_agent_lb_member{{exporter=\"lb\",backend=\"{}\"}}",
            addresses[i]
        );
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse::<u64>().ok())
    };
    let send = |traces: std::ops::Range<u32>, indexes: std::ops::Range<u32>| {
        let request = request_with_resource(Resource::default(), spans(traces, indexes));
        let payload = Arc::new(Payload::new(SpanBatch::from_request(request)));
        assert!(
            handle.try_send(&payload, &[]),
            "the exporter takes the batch"
        );
    };
    assert_eq!(value(backends), 0);

    // In any order, once twice: three backends.
    resolver.answer(Some(vec![url(2), url(0), url(1), url(0)]));
    until("three backends", || value(backends) == 3).await;
    assert_eq!(value(changes), 0, "the first answer is no change");
    assert_eq!(
        (member(0), member(1), member(2)),
        (Some(1), Some(1), Some(1))
    );

    // The third is down: its share waits in its queue while the others get theirs.
    sinks[2].set_down(true);
    let traces = 0..TRACES;
    let three = owner_of(&addresses);
    send(traces.clone(), 0..2);
    let share = |owner: &dyn Fn(u32) -> usize, sink| owned(traces.clone(), owner, sink);
    for (index, sink) in sinks.iter().enumerate().take(2) {
        sink.wait_for_spans(share(&three, index).len() * 2).await;
    }
    let queued = share(&three, 2).len() * 2;
    assert!(queued > 0, "the third owns some traces");

    // A failing answer keeps the membership.
    resolver.answer(None);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(value(backends), 3);

    // Removed: its queue goes to the owners of its traces on the ring without it.
    resolver.answer(Some(vec![url(0), url(1)]));
    until("two backends", || value(backends) == 2).await;
    assert_eq!(value(changes), 1);
    assert_eq!(member(2), None, "a removed backend has no series");
    wait_for_total(&sinks, TRACES as usize * 2).await;
    let two = owner_of(&addresses[..2]);
    for (index, sink) in sinks.iter().enumerate().take(2) {
        let held = trace_ids(sink, 0..2);
        assert_eq!(
            held,
            share(&two, index),
            "sink {index} holds its traces on two"
        );
        assert!(
            held.is_superset(&share(&three, index)),
            "sink {index}: a trace moved away"
        );
    }
    assert_eq!(value(rerouted), queued as u64);
    assert!(sinks[2].spans().is_empty());
    assert_eq!(
        sinks.iter().map(|s| s.spans().len()).sum::<usize>(),
        TRACES as usize * 2,
        "a span lost or twice"
    );
    // Drained and gone, it no longer counts for readiness.
    let registered = |name: &str| health.exporters().iter().any(|e| e.exporter == name);
    until("the removed backend leaves the health list", || {
        !registered(&format!("lb/{}", addresses[2]))
    })
    .await;

    // Back: it owns exactly what it owned.
    sinks[2].set_down(false);
    resolver.answer(Some(vec![url(0), url(1), url(2)]));
    until("three backends again", || value(backends) == 3).await;
    assert_eq!(value(changes), 2);
    assert_eq!(member(2), Some(1));
    send(traces.clone(), 2..4);
    wait_for_total(&sinks, TRACES as usize * 4).await;
    for (index, sink) in sinks.iter().enumerate() {
        assert_eq!(trace_ids(sink, 2..4), share(&three, index), "sink {index}");
    }
    assert!(registered(&format!("lb/{}", addresses[2])));

    drop(handle);
    let left = tokio::time::timeout(WAIT, task)
        .await
        .expect("the exporter and its backends end once closed");
    assert_eq!(left.ok().flatten(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_past_reroute_after_has_its_share_sent_to_the_others_until_it_answers() {
    let (sinks, addresses) = three_gateways_the_third_down().await;
    let sidecar = TestAgent::start(&agent_yaml(
        &gateways_exporter(&addresses, "1s"),
        NO_PROCESSORS,
    ))
    .await;
    let three = owner_of(&addresses);
    let two = owner_of(&addresses[..2]);
    let traces = 0..TRACES;
    let share = |owner: &dyn Fn(u32) -> usize, sink| owned(traces.clone(), owner, sink);

    // Under load: six requests of 50 traces while the third backend is down.
    for start in traces.clone().step_by(50) {
        let request = request_with_resource(Resource::default(), spans(start..start + 50, 0..2));
        grpc_export(sidecar.grpc_url(), request, false)
            .await
            .expect("the sidecar accepts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others get their own traces, then, once the grace has passed, the third's.
    wait_for_total(&sinks, TRACES as usize * 2).await;
    for (index, sink) in sinks.iter().enumerate().take(2) {
        let held = trace_ids(sink, 0..2);
        assert_eq!(held, share(&two, index), "sink {index}");
        assert!(held.is_superset(&share(&three, index)));
    }
    let down = &addresses[2];
    let queued = share(&three, 2).len() as u64 * 2;
    assert!(queued > 0, "the third owns some traces");
    let series = |name: &str| format!("{name}{{exporter=\"gateways\"}}");
    assert_eq!(
        sidecar
            .counter(&series("daena_agent_lb_rerouted_spans_total"))
            .await,
        queued
    );
    let member = format!("daena_agent_lb_member{{exporter=\"gateways\",backend=\"{down}\"}}");
    let metrics = sidecar.metrics().await;
    assert!(metrics.contains(&format!("{member} 0")), "{metrics}");
    // Handed on is neither delivered by it nor dropped.
    assert_eq!(
        counter_value(
            &metrics,
            &format!("daena_agent_spans_exported_total{{exporter=\"gateways/{down}\"}}")
        ),
        0
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("daena_agent_spans_dropped_total") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Back up: a probe finds it, and it owns its traces again.
    sinks[2].set_down(false);
    let mut round = 2;
    for _ in 0..40 {
        if !sinks[2].spans().is_empty() {
            break;
        }
        let request =
            request_with_resource(Resource::default(), spans(traces.clone(), round..round + 1));
        grpc_export(sidecar.grpc_url(), request, false)
            .await
            .expect("the sidecar accepts");
        round += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!sinks[2].spans().is_empty(), "the third was never probed");
    sidecar.wait_for_counter(&member, 1).await;
    let before = sinks.iter().map(|s| s.spans().len()).sum::<usize>();
    let request =
        request_with_resource(Resource::default(), spans(traces.clone(), round..round + 1));
    grpc_export(sidecar.grpc_url(), request, false)
        .await
        .expect("the sidecar accepts");
    wait_for_total(&sinks, before + TRACES as usize).await;
    for (index, sink) in sinks.iter().enumerate() {
        assert_eq!(
            trace_ids(sink, round..round + 1),
            share(&three, index),
            "sink {index}"
        );
    }
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_backends_queue_left_on_disk_goes_to_the_backends_of_the_next_run() {
    let sinks = [Sink::grpc().await, Sink::grpc().await, Sink::grpc().await];
    let addresses: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let queues = tempfile::tempdir().expect("queue dir");
    let sidecar = |backends: &[String]| {
        agent_yaml(
            &format!(
                "  gateways:\n    protocol: loadbalancing\n    resolver: {{ static: [{}] }}\n    exporter: {{ protocol: grpc, retry: {{ initial_interval: 50ms, max_interval: 200ms }}, queue: {{ persistent: true, dir: \"{}\" }} }}\n",
                backends.join(", "),
                queues.path().display()
            ),
            &format!("{NO_PROCESSORS}shutdown_timeout: 1s\n"),
        )
    };

    // A run whose only gateway is down ends with its share on disk.
    sinks[2].set_down(true);
    let first = TestAgent::start(&sidecar(&addresses[2..])).await;
    let traces = 0..50;
    let request = request_with_resource(Resource::default(), spans(traces.clone(), 0..2));
    grpc_export(first.grpc_url(), request, false)
        .await
        .expect("the sidecar accepts");
    let queued = format!(
        "daena_agent_queue_spans{{exporter=\"gateways/{}\"}}",
        addresses[2]
    );
    assert_eq!(first.wait_for_counter(&queued, 100).await, 100);
    assert_eq!(first.stop().await.spans_left_on_disk, 100);

    // The next run has two other gateways: they get those spans, each trace to its owner.
    let second = TestAgent::start(&sidecar(&addresses[..2])).await;
    wait_for_total(&sinks, 100).await;
    let two = owner_of(&addresses[..2]);
    for (index, sink) in sinks.iter().enumerate().take(2) {
        assert_eq!(
            trace_ids(sink, 0..2),
            owned(traces.clone(), &two, index),
            "sink {index}"
        );
    }
    assert!(sinks[2].spans().is_empty());
    assert_eq!(
        second
            .wait_for_counter(
                "daena_agent_lb_rerouted_spans_total{exporter=\"gateways\"}",
                100
            )
            .await,
        100
    );
    assert_eq!(second.stop().await.spans_left_on_disk, 0);
}

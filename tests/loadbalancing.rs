//! Two tiers: sidecars with a `loadbalancing` exporter in front of three gateway agents
//! that tail-sample. Every trace's spans reach one gateway, wherever they entered, so the
//! gateways decide on whole traces.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use daena_trace_agent::exporter::loadbalancing::ring::HashRing;
use daena_trace_agent::otlp::partition::route_hash;
use daena_trace_agent::otlp::{Resource, Span, Status, StatusCode};

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
    agent_yaml(
        &format!(
            "  gateways:\n    protocol: loadbalancing\n    resolver: {{ static: [{}] }}\n    exporter: {{ protocol: grpc }}",
            gateways.join(", ")
        ),
        NO_PROCESSORS,
    )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_holds_back_no_other_and_gets_its_own_traces_when_it_is_back() {
    let sinks = [Sink::grpc().await, Sink::grpc().await, Sink::grpc().await];
    sinks[2].set_down(true);
    let addresses: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let sidecar = TestAgent::start(&agent_yaml(
        &format!(
            "  gateways:\n    protocol: loadbalancing\n    resolver: {{ static: [{}] }}\n    exporter: {{ protocol: grpc, retry: {{ initial_interval: 50ms, max_interval: 200ms }} }}",
            addresses.join(", ")
        ),
        NO_PROCESSORS,
    ))
    .await;

    // The owner of each trace as any agent computes it: the ring over the sorted
    // `host:port`s, by the fixed hash of the trace id.
    let mut hosts = addresses.clone();
    hosts.sort();
    let ring = HashRing::new(&hosts);
    let owner = |trace: u32| {
        let index = ring.owner(route_hash(&trace_id(trace))).expect("a backend");
        addresses
            .iter()
            .position(|a| *a == hosts[index])
            .expect("a sink")
    };
    let traces = 0..60;
    let request = request_with_resource(Resource::default(), spans(traces.clone(), 0..SPANS));
    grpc_export(sidecar.grpc_url(), request, false)
        .await
        .expect("the sidecar accepts");

    let trace_ids = |sink: &Sink| -> BTreeSet<Vec<u8>> {
        sink.spans().into_iter().map(|(_, s)| s.trace_id).collect()
    };
    let owned = |sink: usize| -> BTreeSet<Vec<u8>> {
        traces
            .clone()
            .filter(|&t| owner(t) == sink)
            .map(trace_id)
            .collect()
    };
    let expected = |sink: usize| owned(sink).len() * SPANS as usize;
    assert!(expected(2) > 0, "the down backend owns some traces");
    // The two up backends get all of their traces while the third refuses.
    for (index, sink) in sinks.iter().enumerate().take(2) {
        sink.wait_for_spans(expected(index)).await;
        assert_eq!(trace_ids(sink), owned(index), "sink {index}");
    }
    assert!(sinks[2].spans().is_empty());

    sinks[2].set_down(false);
    sinks[2].wait_for_spans(expected(2)).await;
    assert_eq!(trace_ids(&sinks[2]), owned(2));
    for (index, sink) in sinks.iter().enumerate() {
        assert_eq!(
            sink.spans().len(),
            expected(index),
            "sink {index}: a span twice"
        );
    }
    sidecar.stop().await;
}

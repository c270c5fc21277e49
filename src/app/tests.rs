//! The agent's own failure: a stage that panics on a span, injected after the configured ones.

use std::time::Duration;

use super::*;
use crate::otlp::{ExportTraceServiceRequest, Span, SpanBatch, request_of};
use crate::processor::Processor;

/// Panics on a span named `poison`, as a stage with a bug would on one odd span.
struct PanicsOnPoison;

impl Processor for PanicsOnPoison {
    fn name(&self) -> &'static str {
        "test stage"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        let poisoned = batch
            .resource_spans_mut()
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .any(|span| span.name == "poison");
        assert!(!poisoned, "a poisoned span");
    }
}

fn request(names: &[&str], seed: u8) -> ExportTraceServiceRequest {
    request_of(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Span {
                trace_id: vec![seed; 16],
                span_id: vec![seed, i as u8 + 1, 0, 0, 0, 0, 0, 1],
                name: (*name).into(),
                ..Default::default()
            })
            .collect(),
    )
}

async fn export(url: &str, request: ExportTraceServiceRequest) -> Result<(), tonic::Status> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let call = async {
        let mut client = TraceServiceClient::connect(url.to_owned())
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
        client.export(request).await.map(|_| ())
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in 10 s")))
}

fn counter(metrics: &Metrics, series: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stage_fails_the_agent_which_delivers_what_it_can_counts_the_rest_and_refuses_clients()
 {
    let yaml = "receivers: { otlp: { grpc: { endpoint: 127.0.0.1:0 } } }\n\
        telemetry: { endpoint: null }\n\
        processors: { daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n\
        batch: { timeout: 1h }\n\
        shutdown_timeout: 5s\n\
        exporters: { console: { protocol: console } }\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).expect("config");
    let config = Config::load(Some(&path), &|_| None).expect("valid config");
    let mut agent = Agent::bind(config).await.expect("binds");
    agent.extra_stages.push(|| Box::new(PanicsOnPoison));
    let url = format!("http://{}", agent.grpc_addr().expect("gRPC receiver"));
    let metrics = agent.metrics();
    let running = tokio::spawn(agent.run(std::future::pending()));

    // Accepted, and waiting in the batcher for its (hour-long) timeout.
    export(&url, request(&["scout", "debate", "commit"], 1))
        .await
        .expect("accepted before the failure");
    // Accepted too: the client is answered as the request is queued, before the stages run.
    export(&url, request(&["ok", "poison"], 2))
        .await
        .expect("answered before the stage ran");

    let ended = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the failed agent stops by itself, within shutdown_timeout")
        .expect("agent task");
    let Err(AppError::Failed { failure, report }) = ended else {
        panic!("a failure, with its report: {ended:?}");
    };
    // The shard the poisoned trace routes to (`pipeline-0` unless `pipeline.shards` is set).
    assert!(failure.task.starts_with("pipeline-"), "{failure}");
    assert!(
        failure
            .what
            .contains("the test stage stage panicked: a poisoned span"),
        "{failure}"
    );
    assert_eq!(
        report,
        ShutdownReport {
            abandoned_spans: 0,
            spans_left_on_disk: 0,
            lost_spans: 2,
        },
        "the poisoned request was acknowledged and is lost; nothing else"
    );
    let message = AppError::Failed {
        failure: failure.clone(),
        report,
    }
    .to_string();
    assert!(
        message.contains("2 acknowledged spans lost in memory"),
        "the last log line says what was lost: {message}"
    );
    assert_eq!(
        counter(
            &metrics,
            "daena_agent_spans_dropped_total{stage=\"pipeline\",reason=\"agent_failure\"}"
        ),
        2
    );
    assert_eq!(
        counter(
            &metrics,
            "daena_agent_spans_exported_total{exporter=\"console\"}"
        ),
        3,
        "what had passed every stage was delivered"
    );
    let after = export(&url, request(&["late"], 3)).await;
    assert_eq!(
        after.map_err(|status| status.code()),
        Err(tonic::Code::Unavailable),
        "after the failure a client is refused, never answered OK"
    );
}

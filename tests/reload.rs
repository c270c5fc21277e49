//! Reloading the config while spans flow: a good file's new exporter settings apply to
//! every span sent after the reload, and none is lost or repeated; a bad file is refused
//! with its reason, and the running config keeps delivering.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// An agent exporting to `sink` over gRPC with the tenant header `tenant`.
fn yaml(sink: &Sink, tenant: &str) -> String {
    agent_yaml(
        &format!(
            "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    headers: {{ x-scope-orgid: {tenant} }}\n",
            sink.addr
        ),
        "",
    )
}

/// `POST /-/reload` on the telemetry endpoint: status and answer.
async fn reload(agent: &AgentProcess) -> (u16, String) {
    let url = format!("http://{}/-/reload", agent.addr("metrics"));
    let (status, _, body) = http_request("POST", &url, &[], Vec::new()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The tenant header each delivered span came with, by span id; panics on a duplicate.
fn tenants_by_span(sink: &Sink) -> HashMap<Vec<u8>, String> {
    let mut tenants = HashMap::new();
    for received in sink.received() {
        let tenant = received.headers["x-scope-orgid"]
            .to_str()
            .expect("ascii")
            .to_owned();
        for span in received
            .request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let earlier = tenants.insert(span.span_id.clone(), tenant.clone());
            assert!(earlier.is_none(), "span {:?} delivered twice", span.span_id);
        }
    }
    tenants
}

#[tokio::test]
async fn a_reload_under_load_applies_to_every_later_span_and_loses_none() {
    let sink = Sink::grpc().await;
    let agent = AgentProcess::with_config(&yaml(&sink, "before"), "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));

    // 100 requests of 10 spans, one every 20 ms, the reload half-way through.
    let load = tokio::spawn({
        let url = url.clone();
        async move {
            let mut sent = Vec::new();
            for seed in 1..=100u8 {
                let at = Instant::now();
                grpc_export(url.clone(), council_request(10, seed), false)
                    .await
                    .expect("accepted");
                sent.push((seed, at));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    std::fs::write(agent.config_path(), yaml(&sink, "after")).expect("rewrite config");
    let (status, answer) = reload(&agent).await;
    let reloaded_at = Instant::now();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("exporter tempo replaced"), "{answer}");
    let sent = load.await.expect("load task");

    sink.wait_for_spans(1_000).await;
    let tenants = tenants_by_span(&sink);
    assert_eq!(tenants.len(), 1_000, "every span delivered once");
    let later: Vec<u8> = sent
        .iter()
        .filter(|(_, at)| *at > reloaded_at)
        .map(|(seed, _)| *seed)
        .collect();
    assert!(
        later.len() >= 20,
        "a good part of the load came after the reload: {}",
        later.len()
    );
    for seed in later {
        for i in 0..10u8 {
            let span_id = vec![seed, i + 1, 0, 0, 0, 0, 0, 1];
            assert_eq!(
                tenants[&span_id], "after",
                "span {span_id:?} sent after the reload"
            );
        }
    }
    assert!(
        tenants.values().any(|t| t == "before"),
        "the first spans went out before"
    );
    assert_eq!(
        agent
            .counter("daena_agent_config_reloads_total{result=\"applied\"}")
            .await,
        1
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_with_its_reason_and_the_running_one_keeps_delivering() {
    let sink = Sink::grpc().await;
    let agent = AgentProcess::with_config(&yaml(&sink, "kept"), "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    let path = agent.config_path();
    let good = std::fs::read_to_string(&path).expect("config");

    // Invalid: refused over HTTP, with the reason.
    std::fs::write(&path, good.replace("protocol: grpc", "protocol: zipkin")).expect("write");
    let (status, answer) = reload(&agent).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("the running config is kept"), "{answer}");
    assert!(answer.contains("zipkin"), "names what is wrong: {answer}");

    // Valid but needing a restart, by SIGHUP: refused, and the reason logged.
    std::fs::write(
        &path,
        good.replace("batch: { timeout: 50ms }", "batch: { timeout: 60ms }"),
    )
    .expect("write");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let started = Instant::now();
    while !agent.logs().contains("need a restart (batch)") {
        assert!(started.elapsed() < WAIT, "logs:\n{}", agent.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        agent
            .logs()
            .contains("Config reload refused: the new config is invalid")
    );

    grpc_export(url, council_request(5, 1), false)
        .await
        .expect("still accepting");
    sink.wait_for_spans(5).await;
    let tenants = tenants_by_span(&sink);
    assert!(tenants.values().all(|t| t == "kept"), "{tenants:?}");
    assert_eq!(
        agent
            .counter("daena_agent_config_reloads_total{result=\"refused\"}")
            .await,
        2
    );
}

#[tokio::test]
async fn a_reload_restarts_the_signals_export_with_its_new_settings() {
    let sink = Sink::grpc().await;
    let config = |tenant: &str, interval: &str| {
        format!(
            "{}processors:\n  signals: {{ export: [tempo], interval: {interval} }}\n",
            yaml(&sink, tenant)
        )
    };
    let agent = AgentProcess::with_config(&config("before", "1h"), "info", &[]);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    grpc_export(url, council_request(10, 1), false)
        .await
        .expect("accepted");
    sink.wait_for_spans(10).await;
    std::fs::write(agent.config_path(), config("after", "1s")).expect("rewrite config");
    let (status, answer) = reload(&agent).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("signals export replaced"), "{answer}");
    let started = Instant::now();
    while sink.metrics().is_empty() {
        assert!(
            started.elapsed() < WAIT,
            "no metrics export within {WAIT:?} of the reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = &sink.metrics()[0];
    assert_eq!(
        received.headers["x-scope-orgid"], "after",
        "the new exporter settings"
    );
}

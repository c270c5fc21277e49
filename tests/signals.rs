//! The Daena signals through a running agent: counted exactly from every span, though
//! head sampling keeps one trace in a hundred.

mod common;

use std::time::{Duration, Instant};

use common::*;
use daena_trace_agent::otlp::{Resource, Span, Value};

/// The value of the sample line starting with `series` (its labels included).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn llm_counts_and_cost_are_exact_under_one_percent_head_sampling() {
    let sink = Sink::grpc().await;
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    );
    let agent = TestAgent::start(&agent_yaml(
        &exporters,
        "processors:\n  sampling: { ratio: 0.01 }\n",
    ))
    .await;
    let text = |s: &str| Value::StringValue(s.into());
    let (requests, spans_per_request) = (20u64, 200u64);
    let mut nano_dollars = 0u64;
    for r in 0..requests {
        let spans: Vec<Span> = (0..spans_per_request)
            .map(|i| {
                let n = r * spans_per_request + i;
                let nanos = 1_000 + 7 * (n % 1_000);
                nano_dollars += nanos;
                let dollars = nanos as f64 / 1e9;
                // A quarter with the spellings another service version uses.
                let attributes = if n % 4 == 0 {
                    vec![
                        kv("LLM.Model", text(" gpt-4o ")),
                        kv("llm.cost", text(&format!("{dollars}"))),
                        kv("Council_Department", text("research")),
                    ]
                } else {
                    vec![
                        kv("llm.model", text("gpt-4o")),
                        kv("llm.cost_usd", Value::DoubleValue(dollars)),
                        kv("council.department", text("research")),
                    ]
                };
                // Random-looking ids, as SDKs make: the sampler reads their last 56 bits.
                let mix = |x: u64| {
                    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    x ^ (x >> 31)
                };
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&mix(2 * n + 1).to_be_bytes());
                trace_id[8..].copy_from_slice(&mix(2 * n + 2).to_be_bytes());
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id: (n + 1).to_be_bytes().to_vec(),
                    name: "llm.exchange".into(),
                    kind: 3,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    attributes,
                    ..Default::default()
                }
            })
            .collect();
        grpc_export(
            agent.grpc_url(),
            request_with_resource(Resource::default(), spans),
            false,
        )
        .await
        .expect("accepted");
    }
    let total = requests * spans_per_request;
    // Every span has been through head sampling once its decisions add up.
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let metrics = agent.metrics().await;
        let decided = counter_value(&metrics, "daena_agent_sampling_spans_total{kind=\"kept\"}")
            + counter_value(
                &metrics,
                "daena_agent_sampling_spans_total{kind=\"dropped\"}",
            );
        if decided >= total || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kept = counter_value(&metrics, "daena_agent_sampling_spans_total{kind=\"kept\"}");
    assert!(
        (total / 300..total / 30).contains(&kept),
        "about 1% kept: {kept} of {total}"
    );
    let requests_seen = sample(
        &metrics,
        "daena_llm_requests_total{model=\"gpt-4o\",department=\"research\",cas_hit=\"false\",near_dup=\"false\"}",
    );
    assert_eq!(
        requests_seen,
        Some(total as f64),
        "every span counted:\n{metrics}"
    );
    let cost = sample(
        &metrics,
        "daena_llm_cost_usd_total{model=\"gpt-4o\",department=\"research\"}",
    )
    .expect("a cost series");
    let expected = nano_dollars as f64 / 1e9;
    assert!((cost - expected).abs() < 1e-6, "{cost} against {expected}");
    sink.wait_for_spans(kept as usize).await;
    agent.stop().await;
}

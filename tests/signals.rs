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

/// Spans with every kind of signal: LLM exchanges (cost, tokens, CAS hits), council
/// phases of one round, and HTTP requests, `n` of each with varied durations.
fn signal_spans(n: u64) -> Vec<Span> {
    let text = |s: &str| Value::StringValue(s.into());
    let span = |i: u64, name: &str, kind: i32, millis: u64, attributes| Span {
        trace_id: (i + 1).to_be_bytes().repeat(2),
        span_id: (i + 1).to_be_bytes().to_vec(),
        name: name.into(),
        kind,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + millis * 1_000_000,
        attributes,
        ..Default::default()
    };
    let mut spans = Vec::new();
    for i in 0..n {
        let model = if i % 3 == 0 { "claude-3" } else { "gpt-4o" };
        spans.push(span(
            i,
            "llm.exchange",
            3,
            40 + i,
            vec![
                kv("llm.model", text(model)),
                kv("council.department", text("research")),
                kv("llm.cas_hit", Value::BoolValue(i % 4 == 0)),
                kv(
                    "llm.cost_usd",
                    Value::DoubleValue(0.000_123 * (i + 1) as f64),
                ),
                kv("llm.tokens.input", Value::IntValue(100 + i as i64)),
                kv("llm.tokens.output", Value::IntValue(7)),
            ],
        ));
        let phase = ["scout", "debate", "commit"][(i % 3) as usize];
        spans.push(span(
            n + i,
            "council.phase",
            1,
            3 + 97 * i,
            vec![
                kv("council.phase", text(phase)),
                kv("council.department", text("research")),
                kv("council.round_id", text(&format!("round-{}", i / 3))),
            ],
        ));
        spans.push(span(
            2 * n + i,
            "POST /api/v1/chat",
            2,
            1 + i,
            vec![
                kv("http.route", text("/api/v1/chat")),
                kv("http.response.status_code", Value::IntValue(200)),
            ],
        ));
    }
    spans
}

/// Sends [`signal_spans`] of `n` and waits until `exporter` has delivered them all, so
/// that every one is counted.
async fn send_signal_spans(agent: &TestAgent, n: u64, exporter: &str) {
    grpc_export(
        agent.grpc_url(),
        request_with_resource(Resource::default(), signal_spans(n)),
        false,
    )
    .await
    .expect("accepted");
    let series = format!("daena_agent_spans_exported_total{{exporter=\"{exporter}\"}}");
    assert_eq!(agent.wait_for_counter(&series, 3 * n).await, 3 * n);
}

/// The attribute values of a data point, in order, as a `/metrics` label list.
fn labels(attributes: &[daena_trace_agent::otlp::KeyValue]) -> Vec<String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("a label is a string, not {other:?}"),
            };
            format!("{}=\"{value}\"", kv.key)
        })
        .collect()
}

/// Asserts that every data point of `request` has the value `/metrics` shows for the
/// same series, and returns how many data points it compared.
fn assert_same_as_scrape(
    request: &daena_trace_agent::otlp::ExportMetricsServiceRequest,
    scrape: &str,
) -> usize {
    use daena_trace_agent::otlp::{AggregationTemporality, MetricData, NumberValue};
    let resource = request.resource_metrics[0]
        .resource
        .as_ref()
        .expect("resource");
    assert!(
        resource.attributes.iter().any(|kv| kv.key == "service.name"
            && kv.value.as_ref().and_then(|v| v.value.as_ref())
                == Some(&Value::StringValue("daena-trace-agent".into()))),
        "the agent's resource: {resource:?}"
    );
    let cumulative = AggregationTemporality::Cumulative as i32;
    let read = |series: &str| {
        sample(scrape, series).unwrap_or_else(|| panic!("/metrics has no {series}:\n{scrape}"))
    };
    let mut compared = 0;
    for metric in &request.resource_metrics[0].scope_metrics[0].metrics {
        match metric.data.as_ref().expect("data") {
            MetricData::Sum(sum) => {
                assert!(sum.is_monotonic && sum.aggregation_temporality == cumulative);
                for point in &sum.data_points {
                    assert!(point.start_time_unix_nano <= point.time_unix_nano);
                    let series = format!(
                        "{}_total{{{}}}",
                        metric.name,
                        labels(&point.attributes).join(",")
                    );
                    let value = match point.value {
                        Some(NumberValue::AsInt(n)) => n as f64,
                        Some(NumberValue::AsDouble(x)) => x,
                        None => panic!("{series} has no value"),
                    };
                    let shown = read(&series);
                    assert!(
                        (value - shown).abs() < 1e-6,
                        "{series}: OTLP {value}, /metrics {shown}"
                    );
                    compared += 1;
                }
            }
            MetricData::Histogram(histogram) => {
                assert_eq!(histogram.aggregation_temporality, cumulative);
                for point in &histogram.data_points {
                    let labels = labels(&point.attributes);
                    let series =
                        |suffix: &str| format!("{}_{suffix}{{{}}}", metric.name, labels.join(","));
                    assert_eq!(
                        point.count as f64,
                        read(&series("count")),
                        "{}",
                        series("count")
                    );
                    let sum = point.sum.expect("a sum");
                    assert!(
                        (sum - read(&series("sum"))).abs() < 1e-6,
                        "{}",
                        series("sum")
                    );
                    // /metrics shows cumulative buckets; OTLP counts each bucket alone.
                    let mut below = 0;
                    for (bound, count) in point.explicit_bounds.iter().zip(&point.bucket_counts) {
                        below += count;
                        // `{:?}` writes 1.0 as /metrics does, not as 1.
                        let mut with_le = vec![format!("le=\"{bound:?}\"")];
                        with_le.extend(labels.iter().cloned());
                        let bucket = format!("{}_bucket{{{}}}", metric.name, with_le.join(","));
                        assert_eq!(below as f64, read(&bucket), "{bucket}");
                    }
                    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
                    compared += 1;
                }
            }
            other => panic!("{} is a sum or a histogram, not {other:?}", metric.name),
        }
    }
    compared
}

/// The LLM request count a metrics request carries, over every series.
fn llm_requests(request: &daena_trace_agent::otlp::ExportMetricsServiceRequest) -> i64 {
    use daena_trace_agent::otlp::{MetricData, NumberValue};
    request.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .filter(|m| m.name == "daena_llm_requests")
        .flat_map(|m| match &m.data {
            Some(MetricData::Sum(sum)) => sum.data_points.clone(),
            _ => Vec::new(),
        })
        .map(|p| match p.value {
            Some(NumberValue::AsInt(n)) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test]
async fn the_otlp_metrics_export_reaches_grpc_and_http_backends_with_the_values_of_metrics() {
    let (tempo, cloud) = (Sink::grpc().await, Sink::http().await);
    let exporters = format!(
        "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n    headers: {{ x-scope-orgid: daena }}\n  cloud:\n    protocol: http/protobuf\n    endpoint: http://{}/otlp\n    auth: {{ basic: {{ username: \"123\", password: s3cret }} }}\n",
        tempo.addr, cloud.addr
    );
    let agent = TestAgent::start(&agent_yaml(
        &exporters,
        "processors:\n  signals: { export: [tempo, cloud], interval: 1s }\n",
    ))
    .await;
    let n = 60;
    send_signal_spans(&agent, n, "tempo").await;
    for (sink, path) in [
        (&tempo, daena_trace_agent::otlp::METRICS_EXPORT_PATH),
        (&cloud, "/otlp/v1/metrics"),
    ] {
        // Exports come every second; wait for one made after the spans were counted.
        let started = Instant::now();
        let received = loop {
            let received = sink.metrics();
            if let Some(last) = received
                .last()
                .filter(|r| llm_requests(&r.request) == n as i64)
            {
                break last.clone();
            }
            assert!(
                started.elapsed() < WAIT,
                "no export with {n} LLM requests within {WAIT:?}: {received:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(received.path, path);
        let compared = assert_same_as_scrape(&received.request, &agent.metrics().await);
        // LLM requests (claude, gpt × CAS hit or not), cost, tokens, phases, rounds, HTTP
        // count and duration, and the folded counter for each metric.
        assert!(compared >= 20, "only {compared} data points compared");
    }
    let tempo_headers = &tempo.metrics()[0].headers;
    assert_eq!(
        tempo_headers.get("x-scope-orgid").map(|v| v.as_bytes()),
        Some(&b"daena"[..])
    );
    let cloud_headers = &cloud.metrics()[0].headers;
    assert_eq!(
        cloud_headers.get("authorization").map(|v| v.as_bytes()),
        Some(&b"Basic MTIzOnMzY3JldA=="[..]),
        "the exporter's auth goes with the metrics"
    );
    assert!(
        agent
            .counter("daena_agent_signals_exports_total{exporter=\"cloud\",result=\"sent\"}")
            .await
            >= 1
    );
    agent.stop().await;
}

#[tokio::test]
async fn the_last_counts_are_exported_when_the_agent_stops() {
    let sink = Sink::http().await;
    let exporters = format!(
        "  cloud:\n    protocol: http/protobuf\n    endpoint: http://{}\n",
        sink.addr
    );
    // An hour between exports: only the one at shutdown can carry these spans.
    let agent = TestAgent::start(&agent_yaml(
        &exporters,
        "processors:\n  signals: { export: [cloud], interval: 1h }\n",
    ))
    .await;
    let n = 30;
    send_signal_spans(&agent, n, "cloud").await;
    let scrape = agent.metrics().await;
    assert!(sink.metrics().is_empty(), "nothing before the interval");
    assert_eq!(
        sample(
            &scrape,
            "daena_agent_signals_exports_total{exporter=\"cloud\",result=\"failed\"}"
        ),
        Some(0.0),
        "the series is there at 0 before the first export"
    );
    agent.stop().await;
    let received = sink.metrics();
    assert_eq!(received.len(), 1, "one export, at shutdown");
    assert_eq!(received[0].path, "/v1/metrics");
    assert_eq!(llm_requests(&received[0].request), n as i64);
    assert_same_as_scrape(&received[0].request, &scrape);
}

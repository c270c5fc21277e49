use std::sync::Arc;

use super::*;
use crate::config::{SamplingConfig, SamplingMode};
use crate::otlp::{Event, ResourceSpans, ScopeSpans, SpanBatch, Status, key_value};
use crate::processor::{Processor, SpanPass, build};
use crate::telemetry::Metrics;
use crate::telemetry::signals::OTHER;

fn text(s: &str) -> Value {
    Value::StringValue(s.into())
}

/// A span of its own trace `n`, lasting `nanos`.
fn span(n: u64, name: &str, kind: SpanKind, nanos: u64, attributes: &[(&str, Value)]) -> Span {
    let mut trace_id = vec![0; 16];
    trace_id[..8].copy_from_slice(&n.to_be_bytes());
    trace_id[8..].copy_from_slice(&(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
    Span {
        trace_id,
        span_id: n.max(1).to_be_bytes().to_vec(),
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 1_000 + nanos,
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(*k, v.clone()))
            .collect(),
        ..Default::default()
    }
}

fn batch(spans: Vec<Span>) -> SpanBatch {
    SpanBatch::new(vec![ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }])
}

fn run(config: &ProcessorsConfig, metrics: &Arc<Metrics>, spans: Vec<Span>) -> usize {
    let mut processors = build(config, metrics, &Arc::default());
    let mut batch = batch(spans);
    for processor in &mut processors {
        processor.process(&mut batch);
    }
    batch.span_count()
}

/// The tally of `signal` with exactly these label values.
fn tally(metrics: &Metrics, signal: Signal, labels: &[&str]) -> Tally {
    let table = metrics.signals().lock();
    table
        .series(signal)
        .into_iter()
        .find(|(values, _)| values.iter().map(String::as_str).eq(labels.iter().copied()))
        .map(|(_, tally)| tally.clone())
        .unwrap_or_else(|| panic!("no {signal:?} {labels:?} in {:?}", table.series(signal)))
}

#[test]
fn counts_and_sums_are_exact_from_every_span_though_one_trace_in_100_is_kept() {
    let config = ProcessorsConfig {
        sampling: Some(SamplingConfig {
            mode: SamplingMode::Head,
            ratio: Some(0.01),
            ..SamplingConfig::default()
        }),
        ..ProcessorsConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let models = ["gpt-4o", "claude-sonnet", "llama-3"];
    let mut spans = Vec::new();
    // Expected figures, from the full set: requests per model, cost in billionths.
    let mut requests: HashMap<&str, u64> = HashMap::new();
    let mut cost: HashMap<&str, u128> = HashMap::new();
    let mut phase_nanos = 0u64;
    for n in 0..8_000u64 {
        let model = models[(n % 3) as usize];
        let dollars = 0.000_137 * (n % 97) as f64 + 0.01;
        let messy = n % 4 == 0;
        let attributes = if messy {
            vec![
                ("LLM.Model", text(&format!(" {model} "))),
                ("llm.cost", text(&format!("{dollars}"))),
                ("Council-Department", text("research ")),
                ("llm.cas_hit", text("True")),
            ]
        } else {
            vec![
                ("llm.model", text(model)),
                ("llm.cost_usd", Value::DoubleValue(dollars)),
                ("council.department", text("research")),
                ("llm.cas_hit", Value::BoolValue(true)),
            ]
        };
        spans.push(span(
            n,
            "llm.exchange",
            SpanKind::Client,
            5_000,
            &attributes,
        ));
        *requests.entry(model).or_default() += 1;
        *cost.entry(model).or_default() += (dollars * 1e9).round() as u128;
        let nanos = 1_000_000 + n * 1_003;
        phase_nanos += nanos;
        let phase = if messy { " Scout" } else { "scout" };
        spans.push(span(
            1_000_000 + n,
            "council.phase",
            SpanKind::Internal,
            nanos,
            &[
                ("council.phase", text(phase)),
                ("council.department", text("research")),
            ],
        ));
    }
    let received = spans.len();
    let kept = run(&config, &metrics, spans);
    assert!(
        (received / 300..received / 30).contains(&kept),
        "about 1% kept: {kept} of {received}"
    );
    for model in models {
        let requests_seen = tally(
            &metrics,
            Signal::LlmRequests,
            &[model, "research", "true", "false"],
        );
        assert_eq!(requests_seen.count, requests[model], "{model}");
        let cost_seen = tally(&metrics, Signal::LlmCost, &[model, "research"]);
        assert_eq!(
            cost_seen.billionths, cost[model],
            "{model}: exact to the nano-dollar"
        );
    }
    let phases = tally(
        &metrics,
        Signal::CouncilPhaseDuration,
        &["research", "scout"],
    );
    assert_eq!(
        (phases.count, phases.billionths),
        (8_000, u128::from(phase_nanos))
    );
    let shown = metrics.render();
    let line = shown
        .lines()
        .find(|l| {
            l.starts_with("daena_llm_cost_usd_total{model=\"gpt-4o\",department=\"research\"}")
        })
        .unwrap_or_else(|| panic!("no cost line in {shown}"));
    let value: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    #[allow(clippy::cast_precision_loss)]
    let expected = cost["gpt-4o"] as f64 / 1e9;
    assert!(
        (value - expected).abs() < 1e-6,
        "{value} against {expected}"
    );
    assert!(shown.contains(
        "daena_council_phase_duration_seconds_count{department=\"research\",phase=\"scout\"} 8000"
    ));
}

#[test]
fn past_the_series_limit_values_fold_into_other_and_nothing_is_lost() {
    let mut config = ProcessorsConfig::default();
    config.signals.max_series_per_metric = 100;
    let metrics = Arc::new(Metrics::default());
    let spans = (0..3_000)
        .map(|n| {
            span(
                n,
                "message_bus.publish",
                SpanKind::Producer,
                1,
                &[
                    ("message_bus.topic", text(&format!("topic-{n}"))),
                    ("message_bus.operation", text("publish")),
                ],
            )
        })
        .collect();
    run(&config, &metrics, spans);
    let table = metrics.signals().lock();
    let series = table.series(Signal::BusMessages);
    assert!(series.len() <= 101, "{} series", series.len());
    assert!(series.iter().any(|(labels, _)| labels[0] == OTHER));
    assert_eq!(series.iter().map(|(_, t)| t.count).sum::<u64>(), 3_000);
    drop(table);
    assert!(
        metrics
            .render()
            .contains("daena_signals_folded_total{metric=\"daena_bus_messages\"} 2900"),
        "{}",
        metrics.render()
    );
}

#[test]
fn a_round_ends_with_its_commit_phase_status_or_as_incomplete() {
    let mut config = ProcessorsConfig::default();
    // Short, so the test need not wait long; each batch reads the clock once, so a round
    // done in one batch is still remembered at the start of the next.
    config.signals.round_window = Duration::from_millis(200);
    let metrics = Arc::new(Metrics::default());
    let mut counter = SpanPass::new(vec![Box::new(SignalsCounter::new(
        &config,
        metrics.signals().clone(),
    ))]);
    let phase = |n, round: &str, phase: &str, error: bool| {
        let mut span = span(
            n,
            "council.phase",
            SpanKind::Internal,
            10,
            &[
                ("council.round_id", text(round)),
                ("council.phase", text(phase)),
                ("council.department", text("ops")),
            ],
        );
        if error {
            span.status = Some(Status {
                code: StatusCode::Error as i32,
                ..Default::default()
            });
        }
        span
    };
    counter.process(&mut batch(vec![
        phase(1, "r1", "scout", false),
        phase(2, "r1", "commit", false),
        phase(3, "r2", "commit", true),
    ]));
    // r3 never commits; its scout is seen, then the window passes.
    counter.process(&mut batch(vec![
        phase(4, "r3", "scout", false),
        phase(5, "r1", "debate", false),
    ]));
    std::thread::sleep(Duration::from_millis(250));
    counter.process(&mut batch(vec![]));
    assert_eq!(
        tally(&metrics, Signal::CouncilRounds, &["ops", "ok"]).count,
        1
    );
    assert_eq!(
        tally(&metrics, Signal::CouncilRounds, &["ops", "error"]).count,
        1
    );
    assert_eq!(
        tally(&metrics, Signal::CouncilRounds, &["ops", "incomplete"]).count,
        1,
        "r3 only: r1's late debate span opens no new round while r1 is remembered as done"
    );
}

#[test]
fn http_routes_are_templates_and_rate_limit_events_are_counted_once_each() {
    let config = ProcessorsConfig::default();
    let metrics = Arc::new(Metrics::default());
    let mut limited = span(
        3,
        "message_bus.publish",
        SpanKind::Producer,
        1,
        &[("Message_Bus.Topic", text("council.events"))],
    );
    limited.events = ["rate_limited", "RateLimited", "retry"]
        .iter()
        .map(|name| Event {
            name: (*name).into(),
            ..Default::default()
        })
        .collect();
    let spans = vec![
        span(
            1,
            "GET /api/v1/items/{id}",
            SpanKind::Server,
            2_000_000,
            &[
                ("http.route", text("/api/v1/items/{id}")),
                ("url.path", text("/api/v1/items/42")),
                ("http.response.status_code", Value::IntValue(200)),
            ],
        ),
        span(
            2,
            "POST /api/v1/chat",
            SpanKind::Server,
            1_000,
            &[("http.status_code", Value::IntValue(503))],
        ),
        span(4, "GET /api/v1/items/7", SpanKind::Client, 1_000, &[]),
        limited,
    ];
    run(&config, &metrics, spans);
    assert_eq!(
        tally(
            &metrics,
            Signal::HttpRequests,
            &["/api/v1/items/{id}", "2xx"]
        )
        .count,
        1
    );
    assert_eq!(
        tally(&metrics, Signal::HttpRequests, &["/api/v1/chat", "5xx"]).count,
        1
    );
    assert_eq!(
        metrics.signals().lock().series(Signal::HttpRequests).len(),
        2,
        "client spans are not HTTP routes"
    );
    assert_eq!(
        tally(&metrics, Signal::BusRateLimited, &["council.events"]).count,
        2
    );
    let duration = tally(&metrics, Signal::HttpDuration, &["/api/v1/items/{id}"]);
    assert_eq!((duration.count, duration.billionths), (1, 2_000_000));
}

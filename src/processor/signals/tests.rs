use std::sync::Arc;

use super::*;
use crate::config::{SamplingConfig, SamplingMode};
use crate::otlp::{Event, SpanBatch, Status, Value, key_value};
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
    SpanBatch::from_request(crate::otlp::request_of(spans))
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
fn a_cost_or_token_count_too_large_to_sum_stays_at_the_largest_sum() {
    let metrics = Arc::new(Metrics::default());
    let huge = || {
        vec![span(
            1,
            "llm.exchange",
            SpanKind::Client,
            5_000,
            &[
                ("llm.model", text("gpt-4o")),
                ("llm.cost_usd", Value::DoubleValue(1e300)),
                ("llm.tokens.input", Value::IntValue(i64::MAX)),
                ("council.department", text("research")),
            ],
        )]
    };
    // Each span's nano-dollars already saturate, and three spans' tokens pass u64::MAX:
    // the sums must not wrap or panic.
    let config = ProcessorsConfig::default();
    for _ in 0..3 {
        run(&config, &metrics, huge());
    }
    let cost = tally(&metrics, Signal::LlmCost, &["gpt-4o", "research"]);
    assert_eq!((cost.count, cost.billionths), (3, u128::MAX));
    let tokens = tally(
        &metrics,
        Signal::LlmTokens,
        &["gpt-4o", "research", "input"],
    );
    assert_eq!(tokens.count, u64::MAX);
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

/// Daena-shaped spans in any spelling, for the wire path against its oracle.
fn daena_spans() -> impl proptest::strategy::Strategy<Value = Vec<Span>> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec![
        "llm.model",
        "LLM.Model",
        "llm.cost_usd",
        "llm.cost",
        "llm.cas_hit",
        "llm.near_dup",
        "llm.tokens.input",
        "gen_ai.usage.output_tokens",
        "council.department",
        "Council_Department",
        "council.phase",
        "council.round_id",
        "message_bus.topic",
        "message_bus.operation",
        "nbmf.operation",
        "nbmf.tier",
        "nbmf.class",
        "http.route",
        "http.response.status_code",
        "other",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "gpt-4o",
            " Scout ",
            "commit",
            "L1",
            "1",
            "true",
            "0.25",
            "/api/v1/chat",
            "x"
        ])
        .prop_map(text),
        (0..600i64).prop_map(Value::IntValue),
        (0.0..1.0f64).prop_map(Value::DoubleValue),
        any::<bool>().prop_map(Value::BoolValue),
    ];
    let one = (
        0..400u64,
        prop::sample::select(vec![
            "POST /api/v1/chat",
            "llm.exchange",
            "council.phase",
            "bus.publish",
        ]),
        prop::sample::select(vec![SpanKind::Server, SpanKind::Internal, SpanKind::Client]),
        0..5_000_000_000u64,
        prop::collection::vec((key, value), 0..6),
        prop::collection::vec(
            prop::sample::select(vec!["RateLimited", "rate-limit", "retry"]),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(n, name, kind, nanos, attributes, events, error)| {
            let mut span = span(n, name, kind, nanos, &[]);
            span.attributes = attributes
                .into_iter()
                .map(|(k, v)| key_value(k, v))
                .collect();
            span.events = events
                .into_iter()
                .map(|name| Event {
                    name: name.into(),
                    ..Default::default()
                })
                .collect();
            if error {
                span.status = Some(Status {
                    code: StatusCode::Error as i32,
                    ..Default::default()
                });
            }
            span
        });
    prop::collection::vec(one, 0..40)
}

proptest::proptest! {
    /// The wire path against its oracle, the decoded path: the same table from the same
    /// spans, counted in place by the pass before head sampling or decoded in the span pass.
    #[test]
    fn signals_read_in_place_count_what_decoded_spans_count(spans in daena_spans()) {
        use prost::Message;
        let config = ProcessorsConfig::default();
        let request = batch(spans).into_request();
        let count = crate::otlp::span_count(&request.resource_spans);
        let (wire_metrics, decoded_metrics) = (Arc::new(Metrics::default()), Arc::new(Metrics::default()));
        let mut pass = SignalsPass(SignalsCounter::new(&config, wire_metrics.signals().clone()));
        let mut wire = SpanBatch::from_encoded(request.encode_to_vec().into(), count);
        pass.process(&mut wire);
        proptest::prop_assert!(wire.into_parts().1.is_empty(), "nothing decoded");
        let mut stage = SpanPass::new(vec![Box::new(SignalsCounter::new(&config, decoded_metrics.signals().clone()))]);
        stage.process(&mut SpanBatch::from_request(request));
        for signal in Signal::ALL {
            let (wire, decoded) = (wire_metrics.signals().lock(), decoded_metrics.signals().lock());
            let wire_series: Vec<_> = wire.series(signal).into_iter().map(|(l, t)| (l.to_vec(), t.clone())).collect();
            let decoded_series: Vec<_> = decoded.series(signal).into_iter().map(|(l, t)| (l.to_vec(), t.clone())).collect();
            proptest::prop_assert_eq!(wire_series, decoded_series, "{:?}", signal);
        }
    }
}

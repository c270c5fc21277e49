use super::*;
use crate::otlp::{Status, key_value};

const WAIT: Duration = Duration::from_secs(5);

fn sampler(policies: Vec<PolicyConfig>, coherent_by: Option<&str>) -> (TailSampler, Arc<Metrics>) {
    let config = SamplingConfig {
        mode: crate::config::SamplingMode::Tail,
        decision_wait: WAIT,
        coherent_by: coherent_by.map(str::to_owned),
        policies,
        ..SamplingConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    (TailSampler::new(&config, Arc::clone(&metrics)), metrics)
}

/// A span of trace `trace`, numbered `n`, lasting `millis`, with attributes.
fn span(trace: u8, n: u8, millis: u64, attributes: &[(&str, Value)]) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![trace, n, 1, 1, 1, 1, 1, 1],
        parent_span_id: if n == 0 {
            Vec::new()
        } else {
            vec![trace, 0, 1, 1, 1, 1, 1, 1]
        },
        name: format!("span-{n}"),
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_000_000_000 + millis * 1_000_000,
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(*k, v.clone()))
            .collect(),
        ..Default::default()
    }
}

fn error(mut span: Span) -> Span {
    span.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "boom".into(),
    });
    span
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

/// Span ids (trace, n) in a batch, sorted.
fn ids(batch: &mut SpanBatch) -> Vec<(u8, u8)> {
    let mut ids: Vec<(u8, u8)> = batch
        .resource_spans_mut()
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| (s.span_id[0], s.span_id[1]))
        .collect();
    ids.sort_unstable();
    ids
}

/// Feeds `spans` at `at` and returns what the sampler released by then.
fn feed(sampler: &mut TailSampler, spans: Vec<Span>, at: Instant) -> Vec<(u8, u8)> {
    let mut b = batch(spans);
    sampler.accept(&mut b, at);
    ids(&mut b)
}

fn expire(sampler: &mut TailSampler, at: Instant) -> Vec<(u8, u8)> {
    let mut out = SpanBatch::default();
    sampler.expire(at, &mut out);
    ids(&mut out)
}

#[test]
fn a_trace_is_held_until_its_wait_is_over_then_kept_whole() {
    let (mut sampler, metrics) =
        sampler(vec![PolicyConfig::new("errors", PolicyKind::Errors)], None);
    let t0 = Instant::now();
    assert!(
        feed(
            &mut sampler,
            vec![span(1, 0, 10, &[]), span(2, 0, 10, &[])],
            t0
        )
        .is_empty()
    );
    // More spans of trace 1, one an error, in two later requests within the wait.
    assert!(
        feed(
            &mut sampler,
            vec![span(1, 1, 5, &[])],
            t0 + Duration::from_secs(2)
        )
        .is_empty()
    );
    assert!(
        feed(
            &mut sampler,
            vec![error(span(1, 2, 5, &[]))],
            t0 + Duration::from_secs(4)
        )
        .is_empty()
    );
    // Trace 2 is due at 5 s and dropped; trace 1 waits until 4 + 5 s.
    assert!(expire(&mut sampler, t0 + Duration::from_secs(5)).is_empty());
    assert_eq!(sampler.held_traces(), 1);
    assert!(expire(&mut sampler, t0 + Duration::from_millis(8_999)).is_empty());
    assert_eq!(
        expire(&mut sampler, t0 + Duration::from_secs(9)),
        vec![(1, 0), (1, 1), (1, 2)]
    );
    assert_eq!(sampler.held_traces(), 0);
    let rendered = metrics.render();
    for line in [
        r#"daena_agent_sampling_traces_total{policy="errors",outcome="kept"} 1"#,
        r#"daena_agent_sampling_traces_total{policy="none",outcome="dropped"} 1"#,
        r#"daena_agent_sampling_spans_total{kind="kept"} 3"#,
        r#"daena_agent_sampling_spans_total{kind="dropped"} 1"#,
    ] {
        assert!(rendered.contains(line), "{line} in {rendered}");
    }
}

#[test]
fn late_spans_follow_the_decision() {
    let (mut sampler, metrics) =
        sampler(vec![PolicyConfig::new("errors", PolicyKind::Errors)], None);
    let t0 = Instant::now();
    feed(
        &mut sampler,
        vec![error(span(1, 0, 1, &[])), span(2, 0, 1, &[])],
        t0,
    );
    assert_eq!(expire(&mut sampler, t0 + WAIT), vec![(1, 0)]);
    let late = feed(
        &mut sampler,
        vec![span(1, 5, 1, &[]), span(2, 5, 1, &[])],
        t0 + WAIT * 2,
    );
    assert_eq!(
        late,
        vec![(1, 5)],
        "kept trace's late span leaves at once, dropped one's never"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains(r#"daena_agent_sampling_late_spans_total{kind="kept"} 1"#),
        "{rendered}"
    );
    assert!(
        rendered.contains(r#"daena_agent_sampling_late_spans_total{kind="dropped"} 1"#),
        "{rendered}"
    );
}

#[test]
fn each_policy_keeps_what_it_should_and_only_that() {
    let slow = PolicyConfig {
        threshold: Duration::from_millis(500),
        ..PolicyConfig::new("slow", PolicyKind::Latency)
    };
    let commit = PolicyConfig {
        key: Some("council.phase".into()),
        values: vec!["commit".into()],
        ..PolicyConfig::new("commit", PolicyKind::Attribute)
    };
    let pricey = PolicyConfig {
        key: Some("llm.cost_usd".into()),
        at_least: Some(0.10),
        ..PolicyConfig::new("pricey", PolicyKind::Attribute)
    };
    let (mut sampler, metrics) = sampler(
        vec![
            PolicyConfig::new("errors", PolicyKind::Errors),
            slow,
            commit,
            pricey,
        ],
        None,
    );
    let t0 = Instant::now();
    let spans = vec![
        error(span(1, 1, 1, &[])), // errors
        span(2, 0, 600, &[]),      // slow root
        span(3, 0, 100, &[]),
        span(3, 1, 900, &[]), // root fast, child slow: not kept
        span(4, 1, 900, &[]), // no root: the slowest span counts
        span(
            5,
            0,
            1,
            &[("council.phase", Value::StringValue("commit".into()))],
        ),
        span(
            6,
            0,
            1,
            &[("council.phase", Value::StringValue("debate".into()))],
        ),
        span(7, 0, 1, &[("llm.cost_usd", Value::DoubleValue(0.25))]),
        span(8, 0, 1, &[("llm.cost_usd", Value::DoubleValue(0.05))]),
        span(9, 0, 1, &[("llm.cost_usd", Value::IntValue(1))]),
    ];
    feed(&mut sampler, spans, t0);
    let kept = expire(&mut sampler, t0 + WAIT);
    assert_eq!(kept, vec![(1, 1), (2, 0), (4, 1), (5, 0), (7, 0), (9, 0)]);
    let rendered = metrics.render();
    for (policy, n) in [
        ("errors", 1),
        ("slow", 2),
        ("commit", 1),
        ("pricey", 2),
        ("none", 3),
    ] {
        let outcome = if policy == "none" { "dropped" } else { "kept" };
        let line = format!(
            r#"daena_agent_sampling_traces_total{{policy="{policy}",outcome="{outcome}"}} {n}"#
        );
        assert!(rendered.contains(&line), "{line} in {rendered}");
    }
}

#[test]
fn the_ratio_policy_is_the_consistent_rule_and_records_its_threshold() {
    let half = PolicyConfig {
        ratio: Some(0.5),
        ..PolicyConfig::new("half", PolicyKind::Ratio)
    };
    let (mut sampler, _) = sampler(vec![half], None);
    let t0 = Instant::now();
    // Trace 0x10…: last seven bytes 0x10… < 0x80…: dropped; 0xf0…: kept.
    feed(
        &mut sampler,
        vec![span(0x10, 0, 1, &[]), span(0xf0, 0, 1, &[])],
        t0,
    );
    let mut out = SpanBatch::default();
    sampler.expire(t0 + WAIT, &mut out);
    let spans: Vec<Span> = out
        .into_request()
        .resource_spans
        .into_iter()
        .flat_map(|rs| rs.scope_spans)
        .flat_map(|ss| ss.spans)
        .collect();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].trace_id, vec![0xf0; 16]);
    assert_eq!(spans[0].trace_state, "ot=th:8");
}

#[test]
fn the_rate_limit_keeps_at_most_its_rate_of_what_others_left() {
    let limit = PolicyConfig {
        traces_per_second: Some(2.0),
        ..PolicyConfig::new("cap", PolicyKind::RateLimit)
    };
    let (mut sampler, _) = sampler(
        vec![PolicyConfig::new("errors", PolicyKind::Errors), limit],
        None,
    );
    let t0 = Instant::now();
    feed(
        &mut sampler,
        (1..=6)
            .map(|t| span(t, 0, 1, &[]))
            .chain([error(span(7, 0, 1, &[]))])
            .collect(),
        t0,
    );
    let kept = expire(&mut sampler, t0 + WAIT);
    assert_eq!(kept.len(), 3, "two by the rate limit, one error: {kept:?}");
    assert!(kept.contains(&(7, 0)));
    feed(
        &mut sampler,
        (10..=13).map(|t| span(t, 0, 1, &[])).collect(),
        t0 + WAIT,
    );
    assert_eq!(
        expire(&mut sampler, t0 + WAIT * 2).len(),
        2,
        "the bucket refills to a second's worth"
    );
}

#[test]
fn every_trace_of_a_council_round_gets_the_same_decision() {
    let round = |id: &str| ("council.round_id", Value::StringValue(id.into()));
    let half = PolicyConfig {
        ratio: Some(0.5),
        ..PolicyConfig::new("half", PolicyKind::Ratio)
    };
    let (mut sampler, _) = sampler(
        vec![PolicyConfig::new("errors", PolicyKind::Errors), half],
        Some("council.round_id"),
    );
    let t0 = Instant::now();
    // Round r-1: the debate trace has an error; scout and commit traces come later.
    feed(
        &mut sampler,
        vec![error(span(2, 0, 1, &[round("r-1")]))],
        t0,
    );
    assert_eq!(expire(&mut sampler, t0 + WAIT), vec![(2, 0)]);
    feed(
        &mut sampler,
        vec![
            span(1, 0, 1, &[round("r-1")]),
            span(3, 0, 1, &[round("r-1")]),
        ],
        t0 + WAIT,
    );
    assert_eq!(
        expire(&mut sampler, t0 + WAIT * 2),
        vec![(1, 0), (3, 0)],
        "the round is kept whole"
    );
    // Rounds without errors: the ratio rule on the round id decides all their traces alike.
    let rounds: Vec<String> = (0..40).map(|i| format!("round-{i}")).collect();
    let t1 = t0 + WAIT * 10;
    // Three traces per round (trace ids 10 + 3i + t), each span numbered by its round.
    let spans = rounds
        .iter()
        .enumerate()
        .flat_map(|(i, r)| (0..3).map(move |t| span(10 + 3 * i as u8 + t, i as u8, 1, &[round(r)])))
        .collect();
    feed(&mut sampler, spans, t1);
    let mut kept_spans = Vec::new();
    let mut out = SpanBatch::default();
    sampler.expire(t1 + WAIT, &mut out);
    kept_spans.extend(ids(&mut out));
    let kept_rounds: std::collections::BTreeSet<u8> = kept_spans.iter().map(|(_, n)| *n).collect();
    for n in &kept_rounds {
        assert_eq!(
            kept_spans.iter().filter(|(_, m)| m == n).count(),
            3,
            "round {n} kept with all three traces"
        );
    }
    let expected: std::collections::BTreeSet<u8> = rounds
        .iter()
        .enumerate()
        .filter(|(_, r)| ConsistentSampler::new(0.5).keeps(round_hash(r)))
        .map(|(i, _)| i as u8)
        .collect();
    assert_eq!(kept_rounds, expected);
    assert!(!expected.is_empty() && expected.len() < rounds.len());
}

#[test]
fn a_full_buffer_decides_the_oldest_traces_early_and_none_undecided() {
    let config = SamplingConfig {
        mode: crate::config::SamplingMode::Tail,
        max_traces: 10,
        max_buffered_spans: 1_000,
        policies: vec![PolicyConfig::new("errors", PolicyKind::Errors)],
        ..SamplingConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let mut sampler = TailSampler::new(&config, Arc::clone(&metrics));
    let t0 = Instant::now();
    let mut released = Vec::new();
    for t in 0..50u8 {
        let s = if t % 10 == 0 {
            error(span(t, 0, 1, &[]))
        } else {
            span(t, 0, 1, &[])
        };
        released.extend(feed(
            &mut sampler,
            vec![s],
            t0 + Duration::from_millis(u64::from(t)),
        ));
        assert!(sampler.held_traces() <= 10);
    }
    let mut out = SpanBatch::default();
    sampler.decide_all(t0 + Duration::from_secs(1), &mut out);
    released.extend(ids(&mut out));
    assert_eq!(
        released,
        vec![(0, 0), (10, 0), (20, 0), (30, 0), (40, 0)],
        "errors kept, early or not"
    );
    let rendered = metrics.render();
    assert!(
        rendered.contains("daena_agent_sampling_decided_early_total 40"),
        "{rendered}"
    );
    assert!(
        rendered
            .contains(r#"daena_agent_sampling_traces_total{policy="none",outcome="dropped"} 45"#),
        "{rendered}"
    );
}

/// One request: a resource of about `resource_kib` KiB over one-span traces numbered `traces`.
fn wide_request(resource_kib: usize, traces: std::ops::Range<u32>) -> SpanBatch {
    let resource = crate::otlp::Resource {
        attributes: (0..resource_kib)
            .map(|i| {
                key_value(
                    format!("host.blob.{i}"),
                    Value::StringValue("x".repeat(1024)),
                )
            })
            .collect(),
        ..Default::default()
    };
    let spans = traces
        .map(|t| Span {
            trace_id: [t.to_be_bytes(), [1; 4], [2; 4], [3; 4]].concat(),
            span_id: vec![1; 8],
            name: "llm.call".into(),
            ..Default::default()
        })
        .collect();
    SpanBatch::new(vec![ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            scope: Some(crate::otlp::InstrumentationScope {
                name: "daena".into(),
                ..Default::default()
            }),
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }])
}

#[test]
fn traces_of_one_request_share_its_resource_in_the_buffer_and_on_the_way_out() {
    let (mut sampler, _) = sampler(vec![PolicyConfig::new("all", PolicyKind::Ratio)], None);
    let mut batch = wide_request(512, 0..1_000);
    let resource_bytes = batch.resource_spans_mut()[0]
        .resource
        .as_ref()
        .map_or(0, Message::encoded_len);
    assert!(resource_bytes > 512 * 1024);
    let t0 = Instant::now();
    sampler.accept(&mut batch, t0);
    assert_eq!(sampler.held_traces(), 1_000);
    // Held once, not once per trace (which would be 1,000 resources, about 500 MiB).
    let held = sampler.held_bytes();
    assert!(
        held > resource_bytes && held < resource_bytes + 100 * 1024,
        "{held} bytes held for a resource of {resource_bytes}"
    );
    let mut out = SpanBatch::default();
    sampler.expire(t0 + WAIT, &mut out);
    assert_eq!(sampler.held_bytes(), 0);
    // Every trace kept, under one copy of the resource and the scope.
    let resource_spans = out.resource_spans_mut();
    assert_eq!(resource_spans.len(), 1);
    assert_eq!(
        resource_spans[0]
            .resource
            .as_ref()
            .map(|r| r.attributes.len()),
        Some(512)
    );
    assert_eq!(resource_spans[0].scope_spans.len(), 1);
    assert_eq!(resource_spans[0].scope_spans[0].spans.len(), 1_000);
}

#[test]
fn max_buffered_bytes_decides_the_oldest_traces_early() {
    let config = SamplingConfig {
        mode: crate::config::SamplingMode::Tail,
        max_buffered_bytes: crate::config::ByteSize(64 * 1024),
        policies: vec![PolicyConfig::new("all", PolicyKind::Ratio)],
        ..SamplingConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let mut sampler = TailSampler::new(&config, Arc::clone(&metrics));
    let t0 = Instant::now();
    let mut released = 0;
    // Ten requests of 16 KiB resources: at most four fit under 64 KiB.
    for request in 0..10 {
        let first = u32::try_from(request * 10).expect("small");
        let mut batch = wide_request(16, first..first + 10);
        sampler.accept(&mut batch, t0 + Duration::from_millis(request));
        released += batch.span_count();
        assert!(
            sampler.held_bytes() <= 64 * 1024,
            "{}",
            sampler.held_bytes()
        );
    }
    assert!(sampler.held_traces() > 0);
    let mut out = SpanBatch::default();
    sampler.decide_all(t0 + Duration::from_secs(1), &mut out);
    released += out.span_count();
    assert_eq!(released, 100, "every span decided, none lost");
    let rendered = metrics.render();
    let early = rendered
        .lines()
        .find_map(|l| l.strip_prefix("daena_agent_sampling_decided_early_total "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(early.is_some_and(|n| n >= 60), "{rendered}");
}

use super::*;
use crate::otlp::{Status, Value, key_value};

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
    SpanBatch::from_request(crate::otlp::request_of(spans))
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

#[test]
fn the_bytes_held_are_the_encoded_spans_and_each_resource_and_scope_once() {
    let (mut sampler, metrics) =
        sampler(vec![PolicyConfig::new("errors", PolicyKind::Errors)], None);
    let mut batch = wide_request(2, 0..3);
    let request = batch.resource_spans_mut().clone();
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = request[0].clone();
    let ScopeSpans {
        scope,
        spans,
        schema_url: scope_schema_url,
    } = scope_spans[0].clone();
    // Each span as the span field of its `ScopeSpans`, as it will leave.
    let span_bytes: usize = spans
        .iter()
        .map(|s| 1 + prost::encoding::encoded_len_varint(s.encoded_len() as u64) + s.encoded_len())
        .sum();
    let resource_bytes = ResourceSpans {
        resource,
        scope_spans: Vec::new(),
        schema_url,
    }
    .encoded_len();
    let scope_bytes = ScopeSpans {
        scope,
        spans: Vec::new(),
        schema_url: scope_schema_url,
    }
    .encoded_len();
    let t0 = Instant::now();
    sampler.accept(&mut batch, t0);
    let expected = span_bytes + resource_bytes + scope_bytes;
    assert_eq!(sampler.held_bytes(), expected);
    let rendered = metrics.render();
    for line in [
        format!("daena_agent_sampling_buffered_bytes {expected}"),
        "daena_agent_sampling_buffered_spans 3".to_owned(),
    ] {
        assert!(rendered.contains(&line), "{line} in {rendered}");
    }
    let mut out = SpanBatch::default();
    sampler.expire(t0 + WAIT, &mut out);
    assert_eq!(sampler.held_bytes(), 0);
    let rendered = metrics.render();
    assert!(
        rendered.contains("daena_agent_sampling_buffered_bytes 0"),
        "{rendered}"
    );
}

/// The decisions the sampler made on decoded spans, before it held them encoded: the
/// oracle the byte-holding sampler is held against.
mod oracle {
    use std::collections::HashSet;

    use super::*;

    /// The errors, latency, attribute and ratio rules, as `mask` turns them on.
    pub struct Reference {
        pub errors: bool,
        pub latency: Option<u64>,
        pub attribute: Option<(String, Vec<String>, f64)>,
        pub ratio: Option<ConsistentSampler>,
        pub coherent_by: Option<String>,
        pub kept_rounds: HashSet<u64>,
    }

    impl Reference {
        /// Whether the trace of `spans` is kept, recording the ratio rule's threshold in
        /// its spans as the sampler did.
        pub fn decide(&mut self, id: &TraceId, spans: &mut [Span]) -> bool {
            let round = self.coherent_by.as_deref().and_then(|key| {
                spans.iter().find_map(|s| {
                    let kv = s.attributes.iter().find(|kv| kv.key == key)?;
                    match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) if !s.is_empty() => Some(round_hash(s)),
                        _ => None,
                    }
                })
            });
            if round.is_some_and(|r| self.kept_rounds.contains(&r)) {
                return true;
            }
            let by_rule = self.errors
                && spans.iter().any(|s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.code == StatusCode::Error as i32)
                })
                || self.latency.is_some_and(|threshold| {
                    let duration =
                        |s: &Span| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
                    match spans.iter().find(|s| s.parent_span_id.is_empty()) {
                        Some(root) => duration(root) >= threshold,
                        None => spans.iter().map(duration).max().unwrap_or(0) >= threshold,
                    }
                })
                || self
                    .attribute
                    .as_ref()
                    .is_some_and(|(key, values, at_least)| {
                        spans.iter().flat_map(|s| &s.attributes).any(|kv| {
                            kv.key == *key
                                && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                    Some(Value::StringValue(text)) => {
                                        values.contains(text)
                                            || text
                                                .trim()
                                                .parse::<f64>()
                                                .is_ok_and(|n| n >= *at_least)
                                    }
                                    #[allow(clippy::cast_precision_loss)]
                                    Some(Value::IntValue(n)) => {
                                        *n as f64 >= *at_least || values.contains(&n.to_string())
                                    }
                                    Some(Value::DoubleValue(n)) => *n >= *at_least,
                                    Some(Value::BoolValue(b)) => values.contains(&b.to_string()),
                                    _ => false,
                                }
                        })
                    });
            if by_rule {
                if let Some(round) = round {
                    self.kept_rounds.insert(round);
                }
                return true;
            }
            let Some(sampler) = &self.ratio else {
                return false;
            };
            if !sampler.keeps(round.unwrap_or_else(|| trace_id_randomness(id))) {
                return false;
            }
            if round.is_none() {
                for span in spans {
                    sampler.record(&mut span.trace_state);
                }
            }
            true
        }
    }
}

/// Every span of a request with its resource and scope, as a one-span `ResourceSpans`
/// encoding: the form in which released spans are compared, whatever their grouping.
fn span_keys(resource_spans: &[ResourceSpans]) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = resource_spans
        .iter()
        .flat_map(|rs| rs.scope_spans.iter().map(move |ss| (rs, ss)))
        .flat_map(|(rs, ss)| ss.spans.iter().map(move |span| (rs, ss, span)))
        .map(|(rs, ss, span)| {
            ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans: vec![ScopeSpans {
                    scope: ss.scope.clone(),
                    spans: vec![span.clone()],
                    schema_url: ss.schema_url.clone(),
                }],
                schema_url: rs.schema_url.clone(),
            }
            .encode_to_vec()
        })
        .collect();
    keys.sort_unstable();
    keys
}

/// `request` with its spans in a few traces of `pool`, lasting by their names, and some
/// attributes named `k`: the ones not numbers or booleans name one of two council rounds,
/// and the first three traces get one last.
fn shaped(
    mut request: crate::otlp::ExportTraceServiceRequest,
    pool: &[TraceId],
) -> crate::otlp::ExportTraceServiceRequest {
    let spans = request
        .resource_spans
        .iter_mut()
        .flat_map(|rs| &mut rs.scope_spans)
        .flat_map(|ss| &mut ss.spans);
    for span in spans {
        let trace = usize::from(span.trace_id[0]) % pool.len();
        span.trace_id = pool[trace].to_vec();
        span.end_time_unix_nano = span.start_time_unix_nano + 100 * span.name.len() as u64;
        for kv in span
            .attributes
            .iter_mut()
            .filter(|kv| kv.key.len() % 3 == 0)
        {
            kv.key = "k".into();
            // Numbers and booleans stay for the attribute rule; the rest name a round.
            let value = kv.value.get_or_insert_default();
            if !matches!(
                value.value,
                Some(Value::IntValue(_) | Value::DoubleValue(_) | Value::BoolValue(_))
            ) {
                value.value = Some(Value::StringValue(format!("r{}", span.name.len() % 2)));
            }
        }
        // The first traces of the pool in rounds, two of them in the same one.
        if trace < 3 {
            span.attributes.push(key_value(
                "k",
                Value::StringValue(format!("r{}", trace % 2)),
            ));
        }
    }
    request
}

/// The spans of trace `id` in `request`, under their resources and scopes.
fn only_trace(
    request: &crate::otlp::ExportTraceServiceRequest,
    id: &TraceId,
) -> Vec<ResourceSpans> {
    let mut trace = request.resource_spans.clone();
    for rs in &mut trace {
        for ss in &mut rs.scope_spans {
            ss.spans.retain(|s| trace_id(s) == *id);
        }
    }
    trace
}

proptest::proptest! {
    #[test]
    fn held_as_bytes_the_sampler_keeps_and_releases_what_it_did_decoded(
        requests in proptest::collection::vec(crate::otlp::view::arbitrary::request(), 1..4),
        pool in proptest::collection::vec(proptest::array::uniform16(0..=255u8), 2..6),
        mask in 0..16u8,
        coherent in proptest::bool::ANY,
        max_traces in 1..6usize,
        max_bytes in proptest::option::of(100..4_000u64),
        encoded in proptest::bool::ANY,
    ) {
        // The batches come decoded, or encoded as a receiver hands them on (then regrouped
        // as they came, never decoded).
        let batch_of = |resource_spans: Vec<crate::otlp::ResourceSpans>| {
            if !encoded {
                return SpanBatch::new(resource_spans);
            }
            let request = crate::otlp::ExportTraceServiceRequest { resource_spans };
            let spans = crate::otlp::span_count(&request.resource_spans);
            SpanBatch::from_encoded(request.encode_to_vec().into(), spans)
        };
        let request = shaped(
            crate::otlp::ExportTraceServiceRequest {
                resource_spans: requests.into_iter().flat_map(|r| r.resource_spans).collect(),
            },
            &pool,
        );
        let mut policies = Vec::new();
        let mut reference = oracle::Reference {
            errors: mask & 1 != 0,
            latency: (mask & 2 != 0).then_some(1_500),
            attribute: (mask & 4 != 0)
                .then(|| ("k".to_owned(), vec!["r1".to_owned(), "true".to_owned()], 1e9)),
            ratio: (mask & 8 != 0).then(|| ConsistentSampler::new(0.5)),
            coherent_by: coherent.then(|| "k".to_owned()),
            kept_rounds: std::collections::HashSet::new(),
        };
        if reference.errors {
            policies.push(PolicyConfig::new("errors", PolicyKind::Errors));
        }
        if reference.latency.is_some() {
            policies.push(PolicyConfig {
                threshold: Duration::from_nanos(1_500),
                ..PolicyConfig::new("slow", PolicyKind::Latency)
            });
        }
        if let Some((key, values, at_least)) = &reference.attribute {
            policies.push(PolicyConfig {
                key: Some(key.clone()),
                values: values.clone(),
                at_least: Some(*at_least),
                ..PolicyConfig::new("k", PolicyKind::Attribute)
            });
        }
        if reference.ratio.is_some() {
            policies.push(PolicyConfig {
                ratio: Some(0.5),
                ..PolicyConfig::new("half", PolicyKind::Ratio)
            });
        }
        let config = SamplingConfig {
            mode: crate::config::SamplingMode::Tail,
            decision_wait: WAIT,
            coherent_by: reference.coherent_by.clone(),
            max_traces,
            max_buffered_bytes: crate::config::ByteSize(max_bytes.unwrap_or(1 << 30)),
            policies,
            ..SamplingConfig::default()
        };
        let mut sampler = TailSampler::new(&config, Arc::new(Metrics::default()));
        let mut ids: Vec<TraceId> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(trace_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let t0 = Instant::now();
        let mut released = Vec::new();
        if coherent {
            // A round's traces are decided in the order they came: one request per trace.
            for (i, id) in ids.iter().enumerate() {
                let mut batch = batch_of(only_trace(&request, id));
                sampler.accept(&mut batch, t0 + Duration::from_millis(i as u64));
                released.extend(batch.into_request().resource_spans);
            }
        } else {
            let mut batch = batch_of(request.resource_spans.clone());
            sampler.accept(&mut batch, t0);
            released.extend(batch.into_request().resource_spans);
        }
        let mut out = SpanBatch::default();
        sampler.expire(t0 + WAIT * 2, &mut out);
        released.extend(out.into_request().resource_spans);
        proptest::prop_assert_eq!(sampler.held_traces(), 0);
        proptest::prop_assert_eq!((sampler.held_spans(), sampler.held_bytes()), (0, 0));

        let mut expected = Vec::new();
        let mut kept = Vec::new();
        for id in &ids {
            let mut trace = only_trace(&request, id);
            let mut spans: Vec<Span> = trace
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| ss.spans.clone())
                .collect();
            if reference.decide(id, &mut spans) {
                // The spans, as the reference changed them, back under their scopes.
                let mut spans = spans.into_iter();
                for ss in trace.iter_mut().flat_map(|rs| &mut rs.scope_spans) {
                    for span in &mut ss.spans {
                        *span = spans.next().unwrap_or_default();
                    }
                }
                expected.extend(trace);
                kept.push(*id);
            }
        }
        proptest::prop_assert_eq!(span_keys(&released), span_keys(&expected));

        // Late spans follow the decisions, as they came.
        let mut late = SpanBatch::from_request(request.clone());
        sampler.accept(&mut late, t0 + WAIT * 3);
        let late_kept: Vec<ResourceSpans> = kept
            .iter()
            .flat_map(|id| only_trace(&request, id))
            .collect();
        proptest::prop_assert_eq!(
            span_keys(&late.into_request().resource_spans),
            span_keys(&late_kept)
        );
        proptest::prop_assert_eq!(sampler.held_traces(), 0);
    }
}

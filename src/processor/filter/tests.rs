use std::path::Path;

use proptest::prelude::{Strategy, any, prop};

use super::*;
use crate::otlp::{Resource, ResourceSpans, ScopeSpans, Status, Value, key_value};
use crate::processor::matcher::attribute;

fn text(s: &str) -> Value {
    Value::StringValue(s.into())
}

/// A span of trace `trace`, id `id`, parent `parent` (0: a root).
fn span(
    trace: u8,
    id: u8,
    parent: u8,
    name: &str,
    kind: SpanKind,
    attributes: &[(&str, Value)],
) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: name.into(),
        kind: kind as i32,
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(*k, v.clone()))
            .collect(),
        ..Default::default()
    }
}

fn batch(resource: &[(&str, Value)], spans: Vec<Span>) -> SpanBatch {
    SpanBatch::new(vec![ResourceSpans {
        resource: Some(Resource {
            attributes: resource
                .iter()
                .map(|(k, v)| key_value(*k, v.clone()))
                .collect(),
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }])
}

fn names(batch: &mut SpanBatch) -> Vec<String> {
    batch
        .resource_spans_mut()
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .map(|s| s.name.clone())
        .collect()
}

fn filter(yaml: &str) -> (NoiseFilter, Arc<Metrics>) {
    let config = crate::config::parse_yaml(yaml, Path::new("agent.yaml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let metrics = Arc::new(Metrics::default());
    (
        NoiseFilter::new(&config.processors.filter, Arc::clone(&metrics)),
        metrics,
    )
}

fn dropped(metrics: &Metrics, reason: &str) -> u64 {
    let text = metrics.render();
    let series =
        format!("daena_agent_spans_dropped_total{{stage=\"filter\",reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

/// A FastAPI request as its instrumentation traces it: the server span, its ASGI
/// receive and send spans, and a span the handler makes.
fn request(trace: u8, method_route: &str, route: &str) -> Vec<Span> {
    let asgi = |id, suffix: &str, event: &str| {
        span(
            trace,
            id,
            1,
            &format!("{method_route} {suffix}"),
            SpanKind::Internal,
            &[(ASGI_EVENT_TYPE, text(event))],
        )
    };
    vec![
        asgi(2, "http receive", "http.request"),
        asgi(3, "http send", "http.response.start"),
        asgi(4, "http send", "http.response.body"),
        span(trace, 5, 1, "handler.work", SpanKind::Internal, &[]),
        span(
            trace,
            1,
            0,
            method_route,
            SpanKind::Server,
            &[
                ("http.route", text(route)),
                ("http.request.method", text("GET")),
            ],
        ),
    ]
}

#[test]
fn asgi_event_spans_and_health_probes_go_by_default_and_nothing_else() {
    let (mut filter, metrics) = filter("");
    let mut spans = request(1, "POST /api/v1/chat", "/api/v1/chat");
    spans.extend(request(2, "GET /healthz", "/healthz"));
    let mut batch = batch(&[], spans);
    filter.process(&mut batch);
    assert_eq!(names(&mut batch), ["handler.work", "POST /api/v1/chat"]);
    assert_eq!(dropped(&metrics, "asgi_event"), 6, "three per request");
    assert_eq!(
        dropped(&metrics, "health_route"),
        2,
        "the probe and its handler span"
    );
    assert_eq!(dropped(&metrics, "rule"), 0);
}

#[test]
fn a_probe_takes_its_whole_local_subtree_even_when_asgi_spans_are_kept() {
    let (mut filter, metrics) = filter("processors:\n  filter:\n    asgi_send_receive: keep\n");
    let mut batch1 = batch(&[], request(2, "GET /readyz", "/readyz"));
    filter.process(&mut batch1);
    assert!(names(&mut batch1).is_empty(), "{:?}", names(&mut batch1));
    assert_eq!(dropped(&metrics, "health_route"), 5);
    // A span of the probe's trace in a later request (it ended after the probe's export).
    let mut batch2 = batch(
        &[],
        vec![span(2, 9, 5, "late.child", SpanKind::Internal, &[])],
    );
    filter.process(&mut batch2);
    assert!(names(&mut batch2).is_empty());
    // An ASGI span of a probe that comes before its server span is known by its name.
    let mut batch3 = batch(
        &[],
        vec![span(
            3,
            2,
            1,
            "GET /healthz http send",
            SpanKind::Internal,
            &[(ASGI_EVENT_TYPE, text("http.response.body"))],
        )],
    );
    filter.process(&mut batch3);
    assert!(names(&mut batch3).is_empty());
    assert_eq!(dropped(&metrics, "asgi_event"), 0);
}

#[test]
fn a_probe_that_is_not_a_root_takes_its_descendants_only() {
    let (mut filter, _) = filter("");
    let spans = vec![
        // The grandchild first: a child may come before its parent in a request.
        span(7, 4, 3, "grandchild", SpanKind::Internal, &[]),
        span(7, 3, 2, "child", SpanKind::Internal, &[]),
        span(
            7,
            2,
            1,
            "GET /livez",
            SpanKind::Server,
            &[("url.path", text("/livez"))],
        ),
        span(7, 5, 1, "sibling", SpanKind::Internal, &[]),
        span(7, 1, 0, "gateway", SpanKind::Client, &[]),
    ];
    let mut batch = batch(&[], spans);
    filter.process(&mut batch);
    assert_eq!(names(&mut batch), ["sibling", "gateway"]);
}

#[test]
fn keep_and_no_health_routes_keep_everything() {
    let (mut filter, _) =
        filter("processors:\n  filter:\n    asgi_send_receive: keep\n    health_routes: []\n");
    let mut spans = request(1, "GET /healthz", "/healthz");
    spans.extend(request(2, "POST /x", "/x"));
    let mut batch = batch(&[], spans);
    filter.process(&mut batch);
    assert_eq!(names(&mut batch).len(), 10);
}

#[test]
fn an_asgi_span_with_a_child_is_kept_and_counted() {
    let (mut filter, metrics) = filter("");
    let spans = vec![
        span(
            1,
            2,
            1,
            "POST /x http receive",
            SpanKind::Internal,
            &[(ASGI_EVENT_TYPE, text("http.request"))],
        ),
        span(1, 3, 2, "under.receive", SpanKind::Internal, &[]),
        span(
            1,
            4,
            1,
            "POST /x http send",
            SpanKind::Internal,
            &[(ASGI_EVENT_TYPE, text("http.response.body"))],
        ),
    ];
    let mut batch = batch(&[], spans);
    filter.process(&mut batch);
    assert_eq!(names(&mut batch), ["POST /x http receive", "under.receive"]);
    assert!(
        metrics
            .render()
            .contains("daena_agent_filter_asgi_parents_kept_total 1")
    );
    assert_eq!(dropped(&metrics, "asgi_event"), 1);
}

#[test]
fn each_rule_condition_drops_only_what_it_names() {
    let (mut filter, metrics) = filter(
        r#"processors:
  filter:
    rules:
      - name: "GET /favicon.ico"
      - { id: internal, kind: server, attributes: { http.route: "/internal/*" } }
      - { id: errors, status: error, name: "db.*" }
      - { id: big, attributes: { http.response.status_code: ">= 500", retry: true } }
      - { id: exact-int, attributes: { council.votes: 3 } }
      - { id: staging, resource: { deployment.environment.name: "stag*" }, kind: client }
"#,
    );
    let status = |mut span: Span, code: StatusCode| {
        span.status = Some(Status {
            code: code as i32,
            ..Default::default()
        });
        span
    };
    let cases = [
        (
            span(1, 1, 0, "GET /favicon.ico", SpanKind::Server, &[]),
            false,
        ),
        (
            span(1, 2, 0, "GET /favicon.icon", SpanKind::Server, &[]),
            true,
        ),
        (
            span(
                1,
                3,
                0,
                "x",
                SpanKind::Server,
                &[("http.route", text("/internal/a"))],
            ),
            false,
        ),
        (
            span(
                1,
                4,
                0,
                "x",
                SpanKind::Client,
                &[("http.route", text("/internal/a"))],
            ),
            true,
        ),
        (
            status(
                span(1, 5, 0, "db.query", SpanKind::Client, &[]),
                StatusCode::Error,
            ),
            false,
        ),
        (
            status(
                span(1, 6, 0, "db.query", SpanKind::Client, &[]),
                StatusCode::Ok,
            ),
            true,
        ),
        (
            span(
                1,
                7,
                0,
                "y",
                SpanKind::Client,
                &[
                    ("http.response.status_code", Value::IntValue(503)),
                    ("retry", Value::BoolValue(true)),
                ],
            ),
            false,
        ),
        (
            span(
                1,
                8,
                0,
                "y",
                SpanKind::Client,
                &[("http.response.status_code", Value::IntValue(503))],
            ),
            true,
        ),
        (
            span(
                1,
                9,
                0,
                "y",
                SpanKind::Client,
                &[
                    ("http.response.status_code", Value::IntValue(404)),
                    ("retry", Value::BoolValue(true)),
                ],
            ),
            true,
        ),
        (
            span(
                1,
                10,
                0,
                "v",
                SpanKind::Internal,
                &[("council.votes", Value::IntValue(3))],
            ),
            false,
        ),
        (
            span(
                1,
                11,
                0,
                "v",
                SpanKind::Internal,
                &[("council.votes", Value::IntValue(4))],
            ),
            true,
        ),
    ];
    for (span, kept) in cases {
        let name = format!("{} {:?}", span.name, span.span_id);
        let mut one = batch(
            &[("deployment.environment.name", text("production"))],
            vec![span],
        );
        filter.process(&mut one);
        assert_eq!(names(&mut one).len(), usize::from(kept), "{name}");
    }
    let client = || span(2, 1, 0, "call", SpanKind::Client, &[]);
    let mut staging = batch(
        &[("deployment.environment.name", text("staging"))],
        vec![client()],
    );
    filter.process(&mut staging);
    assert!(
        names(&mut staging).is_empty(),
        "the resource condition holds"
    );
    let mut production = batch(
        &[("deployment.environment.name", text("production"))],
        vec![client()],
    );
    filter.process(&mut production);
    assert_eq!(names(&mut production), ["call"]);

    assert_eq!(dropped(&metrics, "rule"), 6);
    let text = metrics.render();
    for series in [
        "daena_agent_filter_rule_spans_dropped_total{rule=\"0\"} 1",
        "daena_agent_filter_rule_spans_dropped_total{rule=\"internal\"} 1",
        "daena_agent_filter_rule_spans_dropped_total{rule=\"errors\"} 1",
        "daena_agent_filter_rule_spans_dropped_total{rule=\"big\"} 1",
        "daena_agent_filter_rule_spans_dropped_total{rule=\"exact-int\"} 1",
        "daena_agent_filter_rule_spans_dropped_total{rule=\"staging\"} 1",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
}

#[test]
fn invalid_rules_are_reported_with_their_line() {
    let yaml = r#"processors:
  filter:
    health_routes: [healthz]
    rules:
      - { id: ok, name: "GET /x" }
      - { id: nothing }
      - attributes: { http.response.status_code: ">= five hundred" }
"#;
    let config =
        crate::config::parse_yaml(yaml, Path::new("agent.yaml"), &|_| None).expect("parses");
    let errors: Vec<String> = config
        .validate()
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect();
    for want in [
        "processors.filter.health_routes[0]: \"healthz\" is not a route",
        "processors.filter.rules[1] (line 6): has no condition",
        "processors.filter.rules[2] (line 7): attributes.http.response.status_code: \">= five hundred\" is not a comparison",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "{want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 3, "{errors:#?}");
    let typo = crate::config::parse_yaml(
        "processors:\n  filter:\n    rules:\n      - { kind: sever }\n",
        Path::new("agent.yaml"),
        &|_| None,
    )
    .expect_err("unknown kind");
    assert!(typo[0].path.starts_with("agent.yaml:4:"), "{typo:?}");
}

/// Spans of a few traces, each a probe, an ASGI span, or an ordinary span, with parents
/// among the spans before them (or none).
fn arbitrary_spans() -> impl Strategy<Value = Vec<Span>> {
    prop::collection::vec((1u8..4, 0u8..4, 0u8..5, any::<bool>()), 0..40).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (trace, role, parent, with_route))| {
                let id = u8::try_from(i + 1).unwrap_or(u8::MAX);
                let parent = if parent == 0 {
                    0
                } else {
                    id.saturating_sub(parent).max(1)
                };
                let parent = if parent == id { 0 } else { parent };
                match role {
                    0 => span(
                        trace,
                        id,
                        parent,
                        "GET /healthz",
                        SpanKind::Server,
                        &[(
                            "http.route",
                            text(if with_route { "/healthz" } else { "/x" }),
                        )],
                    ),
                    1 => span(
                        trace,
                        id,
                        parent,
                        "GET /healthz http send",
                        SpanKind::Internal,
                        &[(ASGI_EVENT_TYPE, text("http.response.body"))],
                    ),
                    2 => span(
                        trace,
                        id,
                        parent,
                        "POST /x http receive",
                        SpanKind::Internal,
                        &[(ASGI_EVENT_TYPE, text("http.request"))],
                    ),
                    _ => span(trace, id, parent, "work", SpanKind::Internal, &[]),
                }
            })
            .collect()
    })
}

proptest::proptest! {
    #[test]
    fn every_span_is_kept_or_counted_and_no_kept_span_is_noise(
        spans in arbitrary_spans(),
        keep_asgi in proptest::bool::ANY,
        no_routes in proptest::bool::ANY,
    ) {
        let yaml = format!(
            "processors:\n  filter:\n    asgi_send_receive: {}\n{}",
            if keep_asgi { "keep" } else { "drop" },
            if no_routes { "    health_routes: []\n" } else { "" },
        );
        let (mut filter, metrics) = filter(&yaml);
        let input = spans.len() as u64;
        let mut batch = batch(&[], spans);
        filter.process(&mut batch);
        let kept: Vec<Span> = batch
            .resource_spans_mut()
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect();
        let counted = dropped(&metrics, "asgi_event") + dropped(&metrics, "health_route");
        proptest::prop_assert_eq!(kept.len() as u64 + counted, input);
        for span in &kept {
            let asgi = attribute(&span.attributes, ASGI_EVENT_TYPE).is_some();
            let has_child = kept.iter().any(|s| s.parent_span_id == span.span_id && s.trace_id == span.trace_id);
            proptest::prop_assert!(keep_asgi || !asgi || has_child, "an ASGI span kept: {:?}", span.name);
            let probe = span.kind() == SpanKind::Server
                && attribute(&span.attributes, "http.route") == Some(ValueRef::Str("/healthz"));
            proptest::prop_assert!(no_routes || !probe, "a probe kept");
        }
        if no_routes && keep_asgi {
            proptest::prop_assert_eq!(counted, 0);
        }
    }
}

proptest::proptest! {
    /// The wire path against its oracle, the decoded path: the same spans kept, the same
    /// drops counted, for FastAPI noise, probes and rules (of spans and resources).
    #[test]
    fn the_filter_keeps_the_same_spans_read_in_place_as_decoded(
        spans in arbitrary_spans(),
        keep_asgi in proptest::bool::ANY,
        rules in 0..3usize,
        split in 0..8usize,
    ) {
        use prost::Message;
        let rules = [
            "",
            "    rules: [{ id: work, name: \"wor*\", kind: internal }]\n",
            "    rules: [{ id: pod, resource: { k8s.pod.name: \"api-*\" }, status: unset }]\n",
        ][rules];
        let yaml = format!(
            "processors:\n  filter:\n    asgi_send_receive: {}\n{rules}",
            if keep_asgi { "keep" } else { "drop" },
        );
        // Two resources, the second one a pod the resource rule names.
        let split = split.min(spans.len());
        let resource = |pod: &str| Some(Resource {
            attributes: vec![key_value("k8s.pod.name", text(pod))],
            ..Default::default()
        });
        // Two batches, so that a probe remembered from the first drops spans of the second.
        let batches = [("worker-1", &spans[..split]), ("api-7", &spans[split..])];
        let ((mut wire_filter, wire_metrics), (mut decoded_filter, decoded_metrics)) = (filter(&yaml), filter(&yaml));
        for (pod, spans) in batches {
            let request = crate::otlp::ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: resource(pod),
                    scope_spans: vec![ScopeSpans { spans: spans.to_vec(), ..Default::default() }],
                    ..Default::default()
                }],
            };
            let mut wire = SpanBatch::from_encoded(request.encode_to_vec().into(), spans.len());
            let mut decoded = SpanBatch::from_request(request);
            wire_filter.process(&mut wire);
            decoded_filter.process(&mut decoded);
            proptest::prop_assert_eq!(wire.span_count(), decoded.span_count());
            proptest::prop_assert_eq!(wire.into_request(), decoded.into_request());
        }
        for reason in crate::telemetry::metrics::FILTER_REASONS {
            proptest::prop_assert_eq!(dropped(&wire_metrics, reason), dropped(&decoded_metrics, reason));
        }
    }
}

#[test]
fn daena_traffic_with_nothing_to_drop_is_never_decoded() {
    use prost::Message;
    let (mut filter, _) = filter("");
    let spans = vec![
        span(
            1,
            1,
            0,
            "POST /api/v1/chat",
            SpanKind::Server,
            &[("http.route", text("/api/v1/chat"))],
        ),
        span(
            1,
            2,
            1,
            "llm.exchange",
            SpanKind::Client,
            &[("llm.model", text("gpt-4o"))],
        ),
    ];
    let request = batch(&[], spans).into_request();
    let body = bytes::Bytes::from(request.encode_to_vec());
    let mut wire = SpanBatch::from_encoded(body.clone(), 2);
    filter.process(&mut wire);
    let (parts, decoded) = wire.into_parts();
    assert!(decoded.is_empty(), "decoded");
    assert_eq!(parts, vec![(body, 2)], "forwarded as it came");
}

#[test]
fn a_remembered_probe_drops_its_later_spans_read_in_place() {
    use prost::Message;
    let (mut filter, metrics) = filter("");
    let probe = span(
        7,
        1,
        0,
        "GET /healthz",
        SpanKind::Server,
        &[("http.route", text("/healthz"))],
    );
    filter.process(&mut batch(&[], vec![probe]));
    // Its handler's span comes in a later request, alone and harmless-looking.
    let later = batch(&[], vec![span(7, 2, 1, "work", SpanKind::Internal, &[])]).into_request();
    let mut wire = SpanBatch::from_encoded(later.encode_to_vec().into(), 1);
    filter.process(&mut wire);
    assert_eq!(wire.span_count(), 0);
    assert_eq!(dropped(&metrics, "health_route"), 2);
}

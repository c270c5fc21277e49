use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::otlp::{Event, Link, ResourceSpans, ScopeSpans, Span, SpanBatch, Status};
use crate::processor::{Processor, SpanPass};

/// Attributes written as `(key, value)` pairs in the tables.
type Pairs<'a> = &'a [(&'a str, Value)];
/// String attributes written as `(key, value)` pairs in the tables.
type TextPairs<'a> = &'a [(&'a str, &'a str)];

fn s(text: &str) -> Value {
    Value::StringValue(text.into())
}

fn stage(config: &DaenaConfig) -> DaenaNormaliser {
    DaenaNormaliser::new(config, Arc::new(Metrics::default()), Arc::default())
}

/// The stage as the pipeline runs it.
fn pass() -> SpanPass {
    SpanPass::new(vec![Box::new(stage(&DaenaConfig::default()))])
}

fn span_with(name: &str, attributes: &[(&str, Value)]) -> Span {
    Span {
        name: name.into(),
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(*k, v.clone()))
            .collect(),
        ..Default::default()
    }
}

/// The span's attributes as a map, so tables need not care about order.
fn attributes(span: &Span) -> BTreeMap<String, Option<Value>> {
    let map: BTreeMap<_, _> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
        .collect();
    assert_eq!(
        map.len(),
        span.attributes.len(),
        "duplicate keys in {:?}",
        span.attributes
    );
    map
}

fn expect(pairs: &[(&str, Value)]) -> BTreeMap<String, Option<Value>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Some(v.clone())))
        .collect()
}

fn errors(keys: &[&str]) -> Value {
    Value::ArrayValue(ArrayValue {
        values: keys
            .iter()
            .map(|k| AnyValue { value: Some(s(k)) })
            .collect(),
    })
}

fn run(name: &str, input: &[(&str, Value)]) -> BTreeMap<String, Option<Value>> {
    let mut span = span_with(name, input);
    stage(&DaenaConfig {
        semconv_mirror: false,
        ..DaenaConfig::default()
    })
    .normalise_span(&mut SpanMut::decoded(&mut span));
    attributes(&span)
}

#[test]
fn keys_are_normalised_and_the_canonical_key_wins() {
    let table: &[(Pairs<'_>, Pairs<'_>)] = &[
        (
            &[("Council_Phase", s("debate"))],
            &[("council.phase", s("debate"))],
        ),
        (
            &[("council-phase", s("debate"))],
            &[("council.phase", s("debate"))],
        ),
        (
            &[("council.Phase", s("debate"))],
            &[("council.phase", s("debate"))],
        ),
        (
            &[("LLM.Cost", Value::DoubleValue(0.5))],
            &[("llm.cost_usd", Value::DoubleValue(0.5))],
        ),
        (
            &[
                ("COUNCIL_PHASE", s("scout")),
                ("council.phase", s("commit")),
                ("council-phase", s("debate")),
            ],
            &[("council.phase", s("commit"))],
        ),
        (
            &[
                ("Council_Phase", s("scout")),
                ("council-phase", s("debate")),
            ],
            &[("council.phase", s("scout"))],
        ),
        (&[("council.topic", s("x"))], &[("council.topic", s("x"))]),
    ];
    for (input, output) in table {
        let mut want = expect(output);
        want.insert(COMPONENT.into(), Some(s("council")));
        if output[0].0.starts_with("llm") {
            want.insert(COMPONENT.into(), Some(s("llm")));
        }
        assert_eq!(run("op", input), want, "{input:?}");
    }
}

#[test]
fn values_are_normalised_per_key() {
    let int = Value::IntValue;
    let bool_ = Value::BoolValue;
    let double = Value::DoubleValue;
    let table: &[(&str, Value, Value)] = &[
        ("council.phase", s("Scout"), s("scout")),
        ("council.phase", s("scout "), s("scout")),
        ("council.phase", s("SCOUT"), s("scout")),
        ("message_bus.operation", s(" Publish"), s("publish")),
        ("nbmf.operation", s("WRITE"), s("write")),
        ("nbmf.tier", s("L1"), s("l1")),
        ("nbmf.tier", s("l2"), s("l2")),
        ("nbmf.tier", s("3"), s("l3")),
        ("nbmf.tier", int(1), s("l1")),
        ("nbmf.tier", s("tier1"), s("l1")),
        ("nbmf.tier", s("Tier2"), s("l2")),
        ("llm.cas_hit", s("True"), bool_(true)),
        ("llm.cas_hit", s("FALSE"), bool_(false)),
        ("llm.cas_hit", s("1"), bool_(true)),
        ("llm.cas_hit", s("0"), bool_(false)),
        ("llm.cas_hit", int(1), bool_(true)),
        ("llm.cas_hit", int(0), bool_(false)),
        ("llm.near_dup", s("yes"), bool_(true)),
        ("llm.near_dup", s("No"), bool_(false)),
        ("llm.near_dup", bool_(true), bool_(true)),
        ("llm.cost_usd", s("0.0123"), double(0.0123)),
        ("llm.cost_usd", s(" 2 "), double(2.0)),
        ("llm.cost_usd", int(3), double(3.0)),
        ("council.round_id", int(42), s("42")),
        ("message_bus.message_id", int(-7), s("-7")),
        ("nbmf.item_id", s("item-9"), s("item-9")),
        ("council.department", s("  research "), s("research")),
        ("nbmf.class", s("episodic\n"), s("episodic")),
        (
            "message_bus.topic",
            s(" council.events"),
            s("council.events"),
        ),
        ("llm.model", s("gpt-4o "), s("gpt-4o")),
    ];
    for (key, input, output) in table {
        let got = run("op", &[(key, input.clone())]);
        assert_eq!(
            got.get(*key),
            Some(&Some(output.clone())),
            "{key} = {input:?}"
        );
        assert!(!got.contains_key(SCHEMA_ERRORS), "{key} = {input:?}");
    }
}

#[test]
fn a_value_that_cannot_be_normalised_is_kept_and_listed() {
    let table: &[(&str, Value)] = &[
        ("council.phase", s("planning")),
        ("nbmf.tier", s("l4")),
        ("nbmf.tier", Value::IntValue(4)),
        ("llm.cas_hit", s("maybe")),
        ("llm.cas_hit", Value::IntValue(2)),
        ("llm.cost_usd", s("ten cents")),
        ("llm.cost_usd", s("NaN")),
        ("council.round_id", Value::DoubleValue(1.5)),
        ("llm.model", Value::BoolValue(true)),
    ];
    let metrics = Arc::new(Metrics::default());
    let mut stage = DaenaNormaliser::new(
        &DaenaConfig::default(),
        Arc::clone(&metrics),
        Arc::default(),
    );
    for (key, input) in table {
        let mut span = span_with("op", &[(key, input.clone())]);
        stage.normalise_span(&mut SpanMut::decoded(&mut span));
        let got = attributes(&span);
        assert_eq!(
            got.get(*key),
            Some(&Some(input.clone())),
            "{key} kept as sent"
        );
        assert_eq!(
            got.get(SCHEMA_ERRORS),
            Some(&Some(errors(&[key]))),
            "{key} = {input:?}"
        );
    }
    stage.finish_batch();
    let rendered = metrics.render();
    assert!(
        rendered.contains(r#"daena_agent_schema_errors_total{key="nbmf.tier"} 2"#),
        "{rendered}"
    );
    assert!(
        rendered.contains(r#"daena_agent_schema_errors_total{key="council.phase"} 1"#),
        "{rendered}"
    );
}

#[test]
fn the_component_comes_from_the_families_then_the_span_name() {
    let table: &[(&str, Pairs<'_>, &str)] = &[
        ("anything", &[("council.phase", s("scout"))], "council"),
        (
            "anything",
            &[("council.round_id", s("r")), ("llm.model", s("m"))],
            "llm",
        ),
        ("anything", &[("Message-Bus.Sender", s("a"))], "message_bus"),
        ("anything", &[("nbmf.tier", s("l1"))], "nbmf"),
        ("anything", &[("http.route", s("/api"))], "http"),
        ("POST /api/v1/chat", &[], "http"),
        ("council.round", &[], "council"),
        ("message_bus.publish", &[], "message_bus"),
        ("nbmf.write", &[], "nbmf"),
        ("llm.exchange", &[], "llm"),
        ("checkpoint", &[("user_id", s("u1"))], "other"),
        ("GETTER", &[], "other"),
    ];
    for (name, input, component) in table {
        assert_eq!(
            run(name, input).get(COMPONENT),
            Some(&Some(s(component))),
            "{name} {input:?}"
        );
    }
}

#[test]
fn each_batch_adds_its_canonical_components_phases_and_models_to_the_mix() {
    let mix = Arc::new(DaenaMix::default());
    let stage = DaenaNormaliser::new(
        &DaenaConfig::default(),
        Arc::new(Metrics::default()),
        Arc::clone(&mix),
    );
    let mut pass = SpanPass::new(vec![Box::new(stage)]);
    let spans = [
        span_with("council.phase", &[("Council_Phase", s(" SCOUT "))]),
        span_with("council.phase", &[("council.phase", s("debate"))]),
        span_with("council.phase", &[("council.phase", s("lunch"))]),
        span_with("llm.exchange", &[("llm.model", s(" gpt-4o "))]),
        span_with("llm.exchange", &[("llm.model", Value::IntValue(4))]),
        span_with("checkpoint", &[]),
    ];
    let mut batch = SpanBatch::new(vec![ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans: spans.to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    }]);
    pass.process(&mut batch);
    let shown = |top: &crate::telemetry::mix::TopValues| {
        top.values
            .iter()
            .map(|v| (v.value.clone(), v.spans))
            .collect::<Vec<_>>()
    };
    let mix = mix.snapshot();
    assert_eq!(mix.spans, 6);
    assert_eq!(
        shown(&mix.components),
        [
            ("council".to_owned(), 3),
            ("llm".to_owned(), 2),
            ("other".to_owned(), 1)
        ]
    );
    assert_eq!(
        shown(&mix.council_phases),
        [("debate".to_owned(), 1), ("scout".to_owned(), 1)],
        "canonical values only; one that cannot be normalised is not a phase"
    );
    assert_eq!(shown(&mix.llm_models), [("gpt-4o".to_owned(), 1)]);
}

#[test]
fn mirrors_follow_the_semantic_conventions_and_never_replace() {
    let mut span = span_with(
        "message_bus.publish",
        &[
            ("message_bus.operation", s("Publish")),
            ("message_bus.topic", s("council.events")),
            ("message_bus.message_id", Value::IntValue(17)),
            ("llm.model", s("gpt-4o")),
        ],
    );
    stage(&DaenaConfig::default()).normalise_span(&mut SpanMut::decoded(&mut span));
    let got = attributes(&span);
    for (key, value) in [
        ("gen_ai.request.model", "gpt-4o"),
        ("messaging.system", "daena_bus"),
        ("messaging.destination.name", "council.events"),
        ("messaging.message.id", "17"),
        ("messaging.operation.type", "send"),
        ("messaging.operation.name", "publish"),
    ] {
        assert_eq!(got.get(key), Some(&Some(s(value))), "{key}");
    }

    let mut span = span_with(
        "message_bus.subscribe",
        &[
            ("message_bus.operation", s("subscribe")),
            ("messaging.system", s("kafka")),
        ],
    );
    stage(&DaenaConfig::default()).normalise_span(&mut SpanMut::decoded(&mut span));
    let got = attributes(&span);
    assert_eq!(
        got.get("messaging.operation.type"),
        Some(&Some(s("receive")))
    );
    assert_eq!(
        got.get("messaging.system"),
        Some(&Some(s("kafka"))),
        "never replaced"
    );

    let got = run("llm.exchange", &[("llm.model", s("m"))]);
    assert!(
        !got.contains_key("gen_ai.request.model"),
        "semconv_mirror: false adds none"
    );
}

/// The stage with the schema rows of `yaml` (a `processors:` section).
fn stage_with_schema(yaml: &str) -> DaenaNormaliser {
    let config = crate::config::Config::load(Some(&write_config(yaml)), &|_| None)
        .unwrap_or_else(|errors| panic!("{errors}"));
    stage(&config.processors.daena)
}

fn write_config(yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "daena-schema-test-{}-{}",
        std::process::id(),
        yaml.len()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

const EXTENDED: &str = "processors:
  daena:
    schema:
      - key: tool.name
        type: one_of
        values: [search, calculator]
        spellings: [{ value: search, as: [web_search, Search-Web] }]
        aliases: [tool.id]
        mirror: gen_ai.tool.name
      - key: council.priority
        type: int
      - key: nbmf.tier
        type: one_of
        values: [l1, l2, l3, l4]
        spellings: [{ value: l4, as: [\"4\", archive] }]
exporters:
  out: { protocol: console }
";

#[test]
fn a_schema_row_from_yaml_works_like_a_built_in_one() {
    let mut stage = stage_with_schema(EXTENDED);
    let mut span = span_with(
        "tool.call",
        &[
            ("Tool_ID", s(" Web_Search ")),
            ("council.phase", s("Debate")),
            ("Council-Priority", s("3")),
        ],
    );
    stage.normalise_span(&mut SpanMut::decoded(&mut span));
    assert_eq!(
        attributes(&span),
        expect(&[
            ("tool.name", s("search")),
            ("council.phase", s("debate")),
            ("council.priority", Value::IntValue(3)),
            ("gen_ai.tool.name", s("search")),
            (COMPONENT, s("tool")),
        ]),
        "alias, spelling, int rule, mirror, and the new family ranks first"
    );

    let mut span = span_with(
        "nbmf.read",
        &[("nbmf.tier", s("ARCHIVE")), ("tool.name", s("hammer"))],
    );
    stage.normalise_span(&mut SpanMut::decoded(&mut span));
    assert_eq!(
        attributes(&span),
        expect(&[
            ("nbmf.tier", s("l4")),
            ("tool.name", s("hammer")),
            (COMPONENT, s("tool")),
            (SCHEMA_ERRORS, errors(&["tool.name"])),
        ]),
        "a replaced built-in row takes its new values; a bad value is listed"
    );
    let mut span = span_with("nbmf.read", &[("nbmf.tier", s("tier1"))]);
    stage.normalise_span(&mut SpanMut::decoded(&mut span));
    assert_eq!(
        attributes(&span).get(SCHEMA_ERRORS),
        Some(&Some(errors(&["nbmf.tier"]))),
        "the replaced row keeps only what it lists"
    );
}

#[test]
fn the_guides_topic_sender_and_retry_after_are_normalised() {
    let got = run(
        "council.round",
        &[
            ("Council_Topic", s(" pricing ")),
            ("council.department", s("sales")),
        ],
    );
    assert_eq!(got.get("council.topic"), Some(&Some(s("pricing"))));
    let got = run(
        "message_bus.publish",
        &[
            ("Message-Bus.Sender", s(" scout-agent ")),
            ("message_bus.retry_after_ms", Value::DoubleValue(250.0)),
        ],
    );
    assert_eq!(got.get("message_bus.sender"), Some(&Some(s("scout-agent"))));
    assert_eq!(
        got.get("message_bus.retry_after_ms"),
        Some(&Some(Value::IntValue(250)))
    );
    assert_eq!(got.get(COMPONENT), Some(&Some(s("message_bus"))));
    let got = run(
        "x",
        &[("message_bus.retry_after_ms", Value::DoubleValue(0.5))],
    );
    assert_eq!(
        got.get(SCHEMA_ERRORS),
        Some(&Some(errors(&["message_bus.retry_after_ms"]))),
        "a fraction is not an int"
    );
}

#[test]
fn rate_limit_events_on_bus_spans_get_one_name_and_canonical_attributes() {
    let event = |name: &str, attributes: &[(&str, Value)]| Event {
        name: name.into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| key_value(*k, v.clone()))
            .collect(),
        ..Default::default()
    };
    let names = [
        "rate_limited",
        "rate-limit",
        "RateLimited",
        "RATE_LIMIT_EXCEEDED",
        "bus.rate_limiting",
        "message_bus.rate_limited",
    ];
    let mut span = span_with("message_bus.publish", &[("message_bus.topic", s("t"))]);
    span.events = names
        .iter()
        .map(|name| event(name, &[("Retry_After_Ms", s("250"))]))
        .chain([event("retry", &[]), event("rate_limiter_reset", &[])])
        .collect();
    stage(&DaenaConfig::default()).normalise_span(&mut SpanMut::decoded(&mut span));
    let got: Vec<(&str, Vec<_>)> = span
        .events
        .iter()
        .map(|e| {
            let attributes = e
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
                .collect::<Vec<_>>();
            (e.name.as_str(), attributes)
        })
        .collect();
    for (i, (name, attributes)) in got.iter().take(names.len()).enumerate() {
        assert_eq!(*name, RATE_LIMITED_EVENT, "{}", names[i]);
        assert_eq!(
            attributes,
            &[(
                "message_bus.retry_after_ms".to_owned(),
                Some(Value::IntValue(250))
            )],
            "{}",
            names[i]
        );
    }
    assert_eq!(got[names.len()].0, "retry", "other events keep their name");
    assert_eq!(got[names.len() + 1].0, "rate_limiter_reset");

    let mut span = span_with("llm.chat", &[("llm.model", s("m"))]);
    span.events = vec![event("rate_limited", &[])];
    stage(&DaenaConfig::default()).normalise_span(&mut SpanMut::decoded(&mut span));
    assert_eq!(
        span.events[0].name, "rate_limited",
        "only bus spans' events"
    );
}

#[test]
fn the_resource_is_enriched_without_replacing_unless_told() {
    let mut config = DaenaConfig {
        resource_attributes: [("deployment.environment.name".into(), "prod".into())].into(),
        ..DaenaConfig::default()
    };
    config.resolve_resource_from_env(&|name| match name {
        "K8S_POD_NAME" => Some("chat-7d9f".to_owned()),
        "K8S_NAMESPACE_NAME" => Some("daena".to_owned()),
        "HOSTNAME" => Some(" ".to_owned()),
        "DAENA_ENVIRONMENT" => Some("staging".to_owned()),
        _ => None,
    });
    let table: &[(TextPairs<'_>, bool, TextPairs<'_>)] = &[
        (
            &[],
            false,
            &[
                ("service.name", "daena"),
                ("k8s.pod.name", "chat-7d9f"),
                ("k8s.namespace.name", "daena"),
                ("deployment.environment.name", "prod"),
            ],
        ),
        (
            &[("service.name", "unknown_service:python")],
            false,
            &[("service.name", "daena")],
        ),
        (
            &[("service.name", "chat"), ("k8s.pod.name", "own")],
            false,
            &[("service.name", "chat"), ("k8s.pod.name", "own")],
        ),
        (
            &[("service.name", "chat"), ("k8s.pod.name", "own")],
            true,
            &[("service.name", "chat"), ("k8s.pod.name", "chat-7d9f")],
        ),
    ];
    for (input, override_existing, output) in table {
        let config = DaenaConfig {
            override_existing: *override_existing,
            ..config.clone()
        };
        let stage = DaenaNormaliser::new(&config, Arc::new(Metrics::default()), Arc::default());
        let mut resource = Resource {
            attributes: input.iter().map(|(k, v)| key_value(*k, s(v))).collect(),
            ..Default::default()
        };
        stage.enrich_resource(&mut resource);
        let got: BTreeMap<_, _> = resource
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.clone()))
            .collect();
        for (key, value) in *output {
            assert_eq!(
                got.get(key),
                Some(&Some(AnyValue {
                    value: Some(s(value))
                })),
                "{key} from {input:?}"
            );
        }
        assert!(
            !got.contains_key("host.name"),
            "an empty variable adds nothing"
        );
    }
    let named = DaenaNormaliser::new(
        &DaenaConfig {
            service_name: Some("council".into()),
            override_existing: true,
            ..DaenaConfig::default()
        },
        Arc::new(Metrics::default()),
        Arc::default(),
    );
    let mut resource = Resource {
        attributes: vec![key_value("service.name", s("chat"))],
        ..Default::default()
    };
    named.enrich_resource(&mut resource);
    assert_eq!(
        resource.attributes[0].value,
        Some(AnyValue {
            value: Some(s("council"))
        })
    );
}

// ------------------------------------------------------------------ properties

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[ a-zA-Z0-9._-]{0,12}".prop_map(Value::StringValue),
        prop::sample::select(vec![
            "Scout", " DEBATE", "l2", "Tier3", "true", "No", "0.25", "1"
        ])
        .prop_map(|v| Value::StringValue(v.into())),
        any::<i64>().prop_map(Value::IntValue),
        (0i64..4).prop_map(Value::IntValue),
        any::<bool>().prop_map(Value::BoolValue),
        (-1e6f64..1e6).prop_map(Value::DoubleValue),
    ]
}

fn daena_key() -> impl Strategy<Value = String> {
    let keys: Vec<String> = crate::config::schema::built_in()
        .iter()
        .flat_map(|f| {
            [
                f.key.to_owned(),
                f.key.to_uppercase(),
                f.key.replace('.', "_"),
                f.key.replace(['.', '_'], "-"),
            ]
        })
        .chain(
            [
                "llm.cost",
                "council.topic",
                "http.route",
                "user_id",
                "messaging.system",
            ]
            .map(String::from),
        )
        .collect();
    prop::sample::select(keys)
}

fn arbitrary_span(key: impl Strategy<Value = String>) -> impl Strategy<Value = Span> {
    (
        prop::collection::vec((key, any_value()), 0..12),
        "[a-zA-Z ./]{0,20}",
        prop::collection::vec(any::<u8>(), 16),
        any::<u64>(),
        prop::collection::vec("[a-z]{1,8}", 0..3),
    )
        .prop_map(|(attributes, name, trace_id, start, events)| Span {
            name,
            trace_id,
            span_id: start.to_be_bytes().to_vec(),
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(1000),
            attributes: attributes
                .into_iter()
                .map(|(k, v)| key_value(k, v))
                .collect(),
            events: events
                .into_iter()
                .map(|name| Event {
                    name,
                    ..Default::default()
                })
                .collect(),
            links: vec![Link {
                trace_id: vec![9; 16],
                span_id: vec![8; 8],
                ..Default::default()
            }],
            status: Some(Status {
                message: "m".into(),
                code: 2,
            }),
            ..Default::default()
        })
}

fn batch_of(span: Span) -> SpanBatch {
    SpanBatch::new(vec![ResourceSpans {
        scope_spans: vec![ScopeSpans {
            spans: vec![span],
            ..Default::default()
        }],
        ..Default::default()
    }])
}

fn only_span(batch: &mut SpanBatch) -> Span {
    batch.resource_spans_mut()[0].scope_spans[0].spans[0].clone()
}

proptest! {
    #[test]
    fn normalising_twice_is_normalising_once(span in arbitrary_span(daena_key())) {
        let mut pass = pass();
        let mut batch = batch_of(span);
        pass.process(&mut batch);
        let once = batch.clone();
        pass.process(&mut batch);
        prop_assert_eq!(batch, once);
    }

    #[test]
    fn ids_times_events_links_and_status_are_never_changed(span in arbitrary_span(daena_key())) {
        let mut batch = batch_of(span.clone());
        pass().process(&mut batch);
        let out = only_span(&mut batch);
        prop_assert_eq!(
            (&out.trace_id, &out.span_id, &out.parent_span_id, out.start_time_unix_nano, out.end_time_unix_nano),
            (&span.trace_id, &span.span_id, &span.parent_span_id, span.start_time_unix_nano, span.end_time_unix_nano)
        );
        prop_assert_eq!((&out.name, &out.events, &out.links, &out.status), (&span.name, &span.events, &span.links, &span.status));
    }

    #[test]
    fn a_span_without_daena_attributes_only_gains_its_component(
        span in arbitrary_span(prop::sample::select(vec!["user_id", "rpc.method", "db.system", "Customer", "x-y"]).prop_map(String::from)),
    ) {
        prop_assume!(Schema::default().family(&span.name).is_none() && !span.name.contains(' '));
        let mut batch = batch_of(span.clone());
        pass().process(&mut batch);
        let mut expected = span;
        expected.attributes.push(key_value(COMPONENT, s("other")));
        prop_assert_eq!(only_span(&mut batch), expected);
    }
}

/// The span's attributes as (key, value) pairs, in order.
fn pairs(span: &Span) -> Vec<(String, Option<Value>)> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
        .collect()
}

#[test]
fn a_span_of_300k_copies_of_a_key_keeps_the_one_the_readme_names() {
    const N: i64 = 300_000;
    let copies = |key: &str| -> Vec<KeyValue> {
        (0..N).map(|i| key_value(key, Value::IntValue(i))).collect()
    };
    let normalised = |attributes: Vec<KeyValue>| {
        let mut batch = batch_of(Span {
            name: "call".into(),
            attributes,
            ..Default::default()
        });
        pass().process(&mut batch);
        pairs(&only_span(&mut batch))
    };
    let component = |family: &str| (COMPONENT.to_owned(), Some(s(family)));
    // Among variants the first wins, renamed, its int value made a double.
    assert_eq!(
        normalised(copies("llm.cost")),
        vec![
            ("llm.cost_usd".to_owned(), Some(Value::DoubleValue(0.0))),
            component("llm"),
        ]
    );
    // Among canonical keys, too.
    assert_eq!(
        normalised(copies("llm.cost_usd")),
        vec![
            ("llm.cost_usd".to_owned(), Some(Value::DoubleValue(0.0))),
            component("llm"),
        ]
    );
    // The canonical key wins over variants before and after it, and stays where it was.
    let mut mixed = copies("llm.cost");
    mixed[1000] = key_value("llm.cost_usd", Value::IntValue(-1));
    mixed.insert(0, key_value("note", s("first")));
    assert_eq!(
        normalised(mixed),
        vec![
            ("note".to_owned(), Some(s("first"))),
            ("llm.cost_usd".to_owned(), Some(Value::DoubleValue(-1.0))),
            component("llm"),
        ]
    );
    // Copies of a key outside the schema all pass, in order.
    let out = normalised(copies("note"));
    assert_eq!(out.len(), 300_001);
    assert!(
        out[..300_000]
            .iter()
            .zip(0..)
            .all(|(kv, i)| *kv == ("note".to_owned(), Some(Value::IntValue(i))))
    );
    assert_eq!(out[300_000], component("other"));
}

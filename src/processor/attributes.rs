//! The `attributes` stage: `processors.attributes`' ordered actions on span attributes,
//! with the OpenTelemetry Collector's attributes-processor semantics (insert where absent,
//! update where present, upsert, delete, hash), each limited to span names and resources.
//!
//! It runs after the daena stage, so actions name canonical keys, and before redaction, so
//! a value an action writes is still checked for secrets.

use std::io::Write as _;
use std::sync::Arc;

use ring::hmac;

use super::matcher::{AttributesMatch, TextMatch};
use super::{SpanStage, flush_counts, work};
use crate::config::attributes::{ActionKind, AttributeAction, AttributeValue, AttributesConfig};
use crate::otlp::edit::{AttributesMut, SpanMut};
use crate::otlp::view::{SpanRead, ValueRef};
use crate::otlp::{Resource, Value, key_value};
use crate::telemetry::Metrics;

/// Applies `processors.attributes` to each span in place.
pub struct AttributeActions {
    actions: Vec<Action>,
    /// Whether each action's resource condition holds for the resource being processed,
    /// decided once per resource rather than per span.
    resource_holds: Vec<bool>,
    /// Where a non-string value's string form is written before hashing, reused.
    scratch: Vec<u8>,
    metrics: Arc<Metrics>,
    /// Actions applied in the current batch, by [`ActionKind`] (in [`ActionKind::ALL`] order).
    counts: [u64; ActionKind::ALL.len()],
}

/// One action, compiled.
struct Action {
    key: String,
    /// What is counted as applied.
    kind: ActionKind,
    op: Op,
    span_name: Option<TextMatch>,
    resource: AttributesMatch,
}

/// What an action does, with what it needs.
enum Op {
    Insert(Value),
    Update(Value),
    Upsert(Value),
    Delete,
    Hash(hmac::Key),
}

impl AttributeActions {
    /// Builds the stage from its (validated) config.
    pub fn new(config: &AttributesConfig, metrics: Arc<Metrics>) -> Self {
        let hash_key = config
            .hash_key
            .as_ref()
            .map(|key| hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes()));
        let actions: Vec<Action> = config
            .actions
            .iter()
            .map(|located| Action::new(&located.value, hash_key.as_ref()))
            .collect();
        Self {
            resource_holds: vec![true; actions.len()],
            actions,
            scratch: Vec::new(),
            metrics,
            counts: [0; ActionKind::ALL.len()],
        }
    }
}

impl SpanStage for AttributeActions {
    fn name(&self) -> &'static str {
        "attributes"
    }

    fn resource(&mut self, resource: &mut Resource) {
        for (holds, action) in self.resource_holds.iter_mut().zip(&self.actions) {
            *holds = action.resource.is_empty() || action.resource.matches(&resource.attributes);
        }
    }

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        for (action, holds) in self.actions.iter().zip(&self.resource_holds) {
            let name_matches = action
                .span_name
                .as_ref()
                .is_none_or(|name| name.matches(span.name()));
            if *holds && name_matches && action.apply(span, &mut self.scratch) {
                // `ActionKind` is declared in `ALL` order.
                self.counts[action.kind as usize] += 1;
            }
        }
    }

    fn finish_batch(&mut self) {
        let metrics = &self.metrics;
        flush_counts(
            &mut self.counts,
            ActionKind::ALL.map(ActionKind::name),
            |action, n| metrics.attribute_actions(action, n),
        );
    }
}

impl Action {
    /// Compiles `action`; `hash_key` is the compiled `processors.attributes.hash_key`.
    fn new(action: &AttributeAction, hash_key: Option<&hmac::Key>) -> Self {
        // Validation makes insert, update and upsert carry a value.
        let value = || {
            action
                .value
                .as_ref()
                .map_or(Value::StringValue(String::new()), otlp_value)
        };
        let (kind, op) = match (action.action, hash_key) {
            (ActionKind::Insert, _) => (ActionKind::Insert, Op::Insert(value())),
            (ActionKind::Update, _) => (ActionKind::Update, Op::Update(value())),
            (ActionKind::Upsert, _) => (ActionKind::Upsert, Op::Upsert(value())),
            (ActionKind::Delete, _) => (ActionKind::Delete, Op::Delete),
            (ActionKind::Hash, Some(key)) => (ActionKind::Hash, Op::Hash(key.clone())),
            (ActionKind::Hash, None) => {
                // Validation refuses this; should it be skipped, the value must still not
                // leave the agent readable.
                tracing::error!(
                    key = %action.key,
                    "action hash without processors.attributes.hash_key: the attribute is deleted instead"
                );
                (ActionKind::Delete, Op::Delete)
            }
        };
        Self {
            key: action.key.clone(),
            kind,
            op,
            span_name: action.span_name.as_deref().map(TextMatch::new),
            resource: AttributesMatch::new(&action.resource),
        }
    }

    /// Applies the action to `attributes`; returns whether it changed them. Every
    /// attribute with the key is acted on: OTLP forbids repeated keys, but a sender may
    /// repeat one, and a value to delete or hash must not survive in a second copy.
    fn apply(&self, attributes: &mut impl AttributesMut, scratch: &mut Vec<u8>) -> bool {
        // One scan of the attributes whether the key is there or not.
        work(attributes.count());
        let key = self.key.as_str();
        match &self.op {
            Op::Insert(value) => {
                let absent = positions(&*attributes, key).is_empty();
                if absent {
                    attributes.push(key_value(key, value.clone()));
                }
                absent
            }
            Op::Update(value) => set_all(attributes, &positions(&*attributes, key), value),
            Op::Upsert(value) => {
                let updated = set_all(attributes, &positions(&*attributes, key), value);
                if !updated {
                    attributes.push(key_value(key, value.clone()));
                }
                true
            }
            Op::Delete => {
                let gone: Vec<bool> = (0..attributes.count())
                    .map(|i| attributes.key(i) == key.as_bytes())
                    .collect();
                let deleted = gone.contains(&true);
                if deleted {
                    attributes.remove_marked(&gone);
                }
                deleted
            }
            Op::Hash(hash_key) => {
                let found = positions(&*attributes, key);
                for &i in &found {
                    let hashed = hash_of(hash_key, attributes, i, scratch);
                    attributes.set_value(i, hashed);
                }
                !found.is_empty()
            }
        }
    }
}

/// The indexes of the attributes named `key` (no allocation when there is none).
fn positions(attributes: &impl AttributesMut, key: &str) -> Vec<usize> {
    (0..attributes.count())
        .filter(|&i| attributes.key(i) == key.as_bytes())
        .collect()
}

/// Sets the attributes at `found` to `value`; returns whether there was one.
fn set_all(attributes: &mut impl AttributesMut, found: &[usize], value: &Value) -> bool {
    for &i in found {
        attributes.set_value(i, value.clone());
    }
    !found.is_empty()
}

/// The lowercase hex HMAC-SHA256 of the string form of attribute `i`'s value, as a string.
///
/// Keyed, unlike a plain SHA-256: a low-entropy value (an e-mail address, a user id, a
/// phone number) cannot be recovered by hashing every candidate without the key, and the
/// same value still gives the same hash under one key, so spans remain joinable.
fn hash_of(
    key: &hmac::Key,
    attributes: &impl AttributesMut,
    i: usize,
    scratch: &mut Vec<u8>,
) -> Value {
    let tag = match attributes.value(i) {
        ValueRef::Str(text) => hmac::sign(key, text.as_bytes()),
        ValueRef::Bytes(bytes) => hmac::sign(key, bytes),
        _ => {
            scratch.clear();
            let value = attributes.value_owned(i).and_then(|v| v.value);
            string_form(value.as_ref(), scratch);
            hmac::sign(key, scratch)
        }
    };
    let mut hex = const_hex::Buffer::<32>::new();
    Value::StringValue(hex.format_slice(tag.as_ref()).to_owned())
}

/// Writes the string form of a value that is not a string or bytes into `out`: an int or
/// double in decimal, `true`/`false`, an array or kvlist as its OTLP protobuf encoding,
/// nothing for an empty value.
fn string_form(value: Option<&Value>, out: &mut Vec<u8>) {
    // Writing into a `Vec` cannot fail.
    let _ = match value {
        Some(Value::IntValue(i)) => write!(out, "{i}"),
        Some(Value::DoubleValue(d)) => write!(out, "{d}"),
        Some(Value::BoolValue(b)) => write!(out, "{b}"),
        Some(other) => {
            other.encode(out);
            Ok(())
        }
        None => Ok(()),
    };
}

/// The OTLP value of a configured scalar.
fn otlp_value(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Bool(b) => Value::BoolValue(*b),
        AttributeValue::Int(i) => Value::IntValue(*i),
        AttributeValue::Double(d) => Value::DoubleValue(*d),
        AttributeValue::Text(text) => Value::StringValue(text.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Secret;
    use crate::config::filter::MatchValue;
    use crate::config::located;
    use crate::otlp::{AnyValue, ArrayValue, KeyValue, ResourceSpans, ScopeSpans, Span, SpanBatch};
    use crate::processor::{Processor, SpanPass, work_of};

    const KEY: &str = "a-test-key-of-32-bytes-0123456789";

    fn action(key: &str, kind: ActionKind, value: Option<&str>) -> AttributeAction {
        AttributeAction {
            key: key.into(),
            action: kind,
            value: value.map(|v| AttributeValue::Text(v.into())),
            span_name: None,
            resource: BTreeMap::new(),
        }
    }

    fn stage_with(actions: Vec<AttributeAction>, hash_key: &str) -> AttributeActions {
        let config = AttributesConfig {
            hash_key: Some(Secret::new(hash_key)),
            actions: actions.into_iter().map(located).collect(),
        };
        AttributeActions::new(&config, Arc::new(Metrics::default()))
    }

    fn stage(actions: Vec<AttributeAction>) -> AttributeActions {
        stage_with(actions, KEY)
    }

    fn text(s: &str) -> Value {
        Value::StringValue(s.into())
    }

    fn span(name: &str, attributes: &[(&str, Value)]) -> Span {
        Span {
            name: name.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| key_value(*k, v.clone()))
                .collect(),
            ..Default::default()
        }
    }

    /// The span's attributes after `stage` ran on it under an empty resource.
    fn after(stage: &mut AttributeActions, mut span: Span) -> Vec<(String, Option<Value>)> {
        stage.resource(&mut Resource::default());
        stage.span(&mut SpanMut::decoded(&mut span));
        span.attributes
            .into_iter()
            .map(|kv| (kv.key, kv.value.and_then(|v| v.value)))
            .collect()
    }

    fn pairs(attributes: &[(&str, Value)]) -> Vec<(String, Option<Value>)> {
        attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some(v.clone())))
            .collect()
    }

    fn hmac_hex(key: &str, data: &str) -> String {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
            data.as_bytes(),
        );
        const_hex::encode(tag.as_ref())
    }

    #[test]
    fn insert_adds_only_where_the_key_is_absent() {
        let mut insert = stage(vec![action("env", ActionKind::Insert, Some("production"))]);
        assert_eq!(
            after(&mut insert, span("s", &[("a", text("1"))])),
            pairs(&[("a", text("1")), ("env", text("production"))])
        );
        assert_eq!(
            after(&mut insert, span("s", &[("env", text("staging"))])),
            pairs(&[("env", text("staging"))])
        );
    }

    #[test]
    fn update_replaces_only_where_the_key_is_present() {
        let mut update = stage(vec![action("tenant", ActionKind::Update, Some("daena"))]);
        assert_eq!(
            after(&mut update, span("s", &[("a", text("1"))])),
            pairs(&[("a", text("1"))])
        );
        assert_eq!(
            after(&mut update, span("s", &[("tenant", Value::IntValue(7))])),
            pairs(&[("tenant", text("daena"))])
        );
    }

    #[test]
    fn upsert_sets_the_value_in_both_cases_with_its_type() {
        let mut upsert = stage(vec![AttributeAction {
            value: Some(AttributeValue::Int(3)),
            ..action("retries", ActionKind::Upsert, None)
        }]);
        assert_eq!(
            after(&mut upsert, span("s", &[])),
            pairs(&[("retries", Value::IntValue(3))])
        );
        assert_eq!(
            after(&mut upsert, span("s", &[("retries", text("many"))])),
            pairs(&[("retries", Value::IntValue(3))])
        );
    }

    #[test]
    fn delete_removes_the_key_every_time_it_appears() {
        let mut delete = stage(vec![action("debug.payload", ActionKind::Delete, None)]);
        assert_eq!(
            after(
                &mut delete,
                span(
                    "s",
                    &[
                        ("debug.payload", text("x")),
                        ("a", text("1")),
                        ("debug.payload", text("y"))
                    ]
                )
            ),
            pairs(&[("a", text("1"))])
        );
        assert_eq!(
            after(&mut delete, span("s", &[("a", text("1"))])),
            pairs(&[("a", text("1"))])
        );
    }

    #[test]
    fn hash_writes_the_hex_hmac_of_the_string_form_where_present() {
        let mut hash = stage(vec![
            action("user.email", ActionKind::Hash, None),
            action("user.id", ActionKind::Hash, None),
            action("user.vip", ActionKind::Hash, None),
            action("user.score", ActionKind::Hash, None),
        ]);
        let out = after(
            &mut hash,
            span(
                "s",
                &[
                    ("user.email", text("ada@example.com")),
                    ("user.id", Value::IntValue(42)),
                    ("user.vip", Value::BoolValue(true)),
                    ("user.score", Value::DoubleValue(0.5)),
                ],
            ),
        );
        assert_eq!(
            out,
            pairs(&[
                ("user.email", text(&hmac_hex(KEY, "ada@example.com"))),
                ("user.id", text(&hmac_hex(KEY, "42"))),
                ("user.vip", text(&hmac_hex(KEY, "true"))),
                ("user.score", text(&hmac_hex(KEY, "0.5"))),
            ])
        );
        let Some(Some(Value::StringValue(hashed))) = out.first().map(|(_, v)| v.clone()) else {
            panic!("a string: {out:?}");
        };
        assert_eq!(hashed.len(), 64);
        assert!(
            hashed
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(hashed, "ada@example.com");
        assert_eq!(
            after(&mut hash, span("s", &[("a", text("1"))])),
            pairs(&[("a", text("1"))]),
            "nothing is added where the key is absent"
        );
    }

    #[test]
    fn hashes_are_stable_for_one_key_and_differ_across_keys() {
        let hash_with = |key: &str, value: &str| {
            let mut hash = stage_with(vec![action("user.email", ActionKind::Hash, None)], key);
            after(&mut hash, span("s", &[("user.email", text(value))]))
        };
        let other_key = "another-key-of-32-bytes-987654321";
        let first = hash_with(KEY, "ada@example.com");
        assert_eq!(first, hash_with(KEY, "ada@example.com"));
        assert_ne!(first, hash_with(other_key, "ada@example.com"));
        assert_ne!(first, hash_with(KEY, "bob@example.com"));
        for value in ["", "ada@example.com", &hmac_hex(KEY, "x")] {
            assert_ne!(
                hash_with(KEY, value),
                pairs(&[("user.email", text(value))]),
                "{value:?} is changed"
            );
        }
    }

    #[test]
    fn arrays_and_empty_values_are_hashed_too() {
        let mut hash = stage(vec![action("ids", ActionKind::Hash, None)]);
        let array = Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(text("secret-id")),
            }],
        });
        let out = after(&mut hash, span("s", &[("ids", array)]));
        assert!(
            matches!(&out[0].1, Some(Value::StringValue(h)) if h.len() == 64),
            "{out:?}"
        );
        let mut empty = span("s", &[]);
        empty.attributes.push(KeyValue {
            key: "ids".into(),
            ..Default::default()
        });
        assert_eq!(
            after(&mut hash, empty),
            pairs(&[("ids", text(&hmac_hex(KEY, "")))])
        );
    }

    #[test]
    fn actions_apply_in_order() {
        let mut stage = stage(vec![
            action("user.email", ActionKind::Insert, Some("nobody@example.com")),
            action("user.email", ActionKind::Hash, None),
        ]);
        assert_eq!(
            after(&mut stage, span("s", &[])),
            pairs(&[("user.email", text(&hmac_hex(KEY, "nobody@example.com")))])
        );
    }

    #[test]
    fn a_span_name_condition_limits_the_action_exactly_or_by_glob() {
        let conditioned = |pattern: &str| {
            stage(vec![AttributeAction {
                span_name: Some(pattern.into()),
                ..action("x_debug", ActionKind::Delete, None)
            }])
        };
        let input = || [("x_debug", text("1"))];
        for (pattern, name, deleted) in [
            ("GET /internal/*", "GET /internal/metrics", true),
            ("GET /internal/*", "GET /public", false),
            ("GET /health", "GET /health", true),
            ("GET /health", "GET /healthz", false),
        ] {
            let out = after(&mut conditioned(pattern), span(name, &input()));
            assert_eq!(out.is_empty(), deleted, "{pattern} on {name}");
        }
    }

    #[test]
    fn a_resource_condition_limits_the_action_to_matching_resources() {
        let config = AttributesConfig {
            hash_key: None,
            actions: vec![located(AttributeAction {
                resource: BTreeMap::from([(
                    "service.name".to_owned(),
                    MatchValue::Text("council-*".into()),
                )]),
                ..action("tenant", ActionKind::Upsert, Some("daena"))
            })],
        };
        let metrics = Arc::new(Metrics::default());
        let resource_spans = |service: &str| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value("service.name", text(service))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span("a", &[]), span("b", &[])],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut batch = SpanBatch::new(vec![
            resource_spans("council-api"),
            resource_spans("gateway"),
            resource_spans("council-worker"),
        ]);
        let mut pass = SpanPass::new(vec![Box::new(AttributeActions::new(
            &config,
            Arc::clone(&metrics),
        ))]);
        pass.process(&mut batch);
        let tagged: Vec<usize> = batch
            .resource_spans_mut()
            .iter()
            .map(|rs| {
                rs.scope_spans[0]
                    .spans
                    .iter()
                    .filter(|s| s.attributes.iter().any(|kv| kv.key == "tenant"))
                    .count()
            })
            .collect();
        assert_eq!(tagged, [2, 0, 2]);
        let rendered = metrics.render();
        for line in [
            r#"daena_agent_attribute_actions_total{action="upsert"} 4"#,
            r#"daena_agent_attribute_actions_total{action="hash"} 0"#,
        ] {
            assert!(rendered.contains(line), "{line} in {rendered}");
        }
    }

    #[test]
    fn an_action_on_an_absent_key_costs_one_scan_and_nothing_is_counted() {
        let mut stage = stage(vec![
            action("absent", ActionKind::Update, Some("x")),
            action("absent", ActionKind::Hash, None),
            action("absent", ActionKind::Delete, None),
        ]);
        let attributes: Vec<(&str, Value)> = (0..100).map(|_| ("a", Value::IntValue(1))).collect();
        let mut input = span("s", &attributes);
        stage.resource(&mut Resource::default());
        let steps = work_of(|| stage.span(&mut SpanMut::decoded(&mut input)));
        assert_eq!(steps, 300, "one scan per action");
        assert_eq!(stage.counts, [0; 5]);
    }

    #[test]
    fn the_stage_runs_after_daena_and_before_redact() {
        let mut config = crate::config::ProcessorsConfig::default();
        config.attributes.actions = vec![
            // `llm.cost` is the daena alias of `llm.cost_usd`: deleted only once canonical.
            located(action("llm.cost_usd", ActionKind::Delete, None)),
            located(action(
                "note",
                ActionKind::Insert,
                Some("Bearer abcdefghijklmnopqrstuvwxyz0123456789"),
            )),
        ];
        let metrics = Arc::new(Metrics::default());
        let mut stages = crate::processor::build(&config, &metrics, &Arc::default());
        let mut batch = SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span("llm.call", &[("llm.cost", Value::DoubleValue(0.5))])],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        for stage in &mut stages {
            stage.process(&mut batch);
        }
        let span = &batch.resource_spans_mut()[0].scope_spans[0].spans[0];
        let value = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref()?.value.clone())
        };
        assert_eq!(value("llm.cost"), None);
        assert_eq!(value("llm.cost_usd"), None);
        let Some(Value::StringValue(note)) = value("note") else {
            panic!("note inserted: {span:?}");
        };
        assert!(!note.contains("abcdefghij"), "redacted after: {note}");
    }

    #[test]
    fn a_hash_without_a_key_deletes_rather_than_leaking() {
        let config = AttributesConfig {
            hash_key: None,
            actions: vec![located(action("user.email", ActionKind::Hash, None))],
        };
        let mut stage = AttributeActions::new(&config, Arc::new(Metrics::default()));
        assert_eq!(
            after(
                &mut stage,
                span("s", &[("user.email", text("ada@example.com"))])
            ),
            []
        );
    }
}

//! The `daena` stage: canonical Daena attribute keys and values, `daena.component`, the
//! OpenTelemetry semantic-convention mirrors, and resource enrichment.
//!
//! One pass over each span's attributes finds the schema's keys (see [`super::schema`]);
//! a span whose keys and values are already canonical is not written to, except for
//! `daena.component`.

use std::sync::Arc;

use super::key_cache::KeyCache;
use super::schema::{self, FAMILIES, FIELDS, SCHEMA, ValueRule, row};
use super::{SpanStage, flush_counts, work};
use crate::config::DaenaConfig;
use crate::otlp::{AnyValue, ArrayValue, KeyValue, Resource, Span, Value, key_value};
use crate::telemetry::Metrics;
use crate::telemetry::mix::{DaenaMix, MixTally};

/// The span attribute naming the Daena component a span belongs to.
pub const COMPONENT: &str = "daena.component";
/// The span attribute listing keys whose values could not be normalised.
pub const SCHEMA_ERRORS: &str = "daena.schema.errors";
/// The `messaging.system` value of Daena's message bus.
pub const BUS_SYSTEM: &str = "daena_bus";

/// Normalises Daena spans and enriches their resources, in place.
pub struct DaenaNormaliser {
    semconv_mirror: bool,
    /// `service.name` for resources without one.
    service_name: String,
    /// Whether `service_name` was configured (only then may `override` replace a real name).
    service_name_configured: bool,
    /// Resource attributes to add, resolved once at start.
    resource: Vec<(String, String)>,
    override_existing: bool,
    metrics: Arc<Metrics>,
    /// Schema errors of the current batch, per schema row; flushed to the metrics per batch.
    errors: [u64; FIELDS],
    keys: KeyCache<KeyClass>,
    /// The status page's Daena mix, given this stage's tally once per batch.
    mix: Arc<DaenaMix>,
    /// The current batch's spans per component, council phase and LLM model.
    tally: MixTally,
}

impl DaenaNormaliser {
    /// Builds the stage from its config, whose `resource_from_env_values`
    /// [`Config::load`](crate::config::Config::load) has filled; it counts the spans it
    /// sees in `mix`.
    pub fn new(config: &DaenaConfig, metrics: Arc<Metrics>, mix: Arc<DaenaMix>) -> Self {
        // Every schema key shows at 0 from the start, so an alert on its rate sees 0.
        for field in SCHEMA {
            metrics.schema_errors(field.key, 0);
        }
        // A static resource attribute wins over one read from the environment.
        let mut resource: Vec<(String, String)> = config
            .resource_from_env_values
            .iter()
            .filter(|(key, _)| !config.resource_attributes.contains_key(*key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        resource.extend(config.resource_attributes.clone());
        Self {
            semconv_mirror: config.semconv_mirror,
            service_name: config
                .service_name
                .clone()
                .unwrap_or_else(|| "daena".into()),
            service_name_configured: config.service_name.is_some(),
            resource,
            override_existing: config.override_existing,
            metrics,
            errors: [0; FIELDS],
            keys: KeyCache::new(),
            mix,
            tally: MixTally::default(),
        }
    }

    /// Sets `service.name` and the configured resource attributes.
    fn enrich_resource(&self, resource: &mut Resource) {
        let attributes = &mut resource.attributes;
        match attributes.iter_mut().find(|kv| kv.key == "service.name") {
            None => attributes.push(key_value("service.name", string(&self.service_name))),
            Some(kv) => {
                let unknown = string_of(kv).is_none_or(|name| name.starts_with("unknown_service"));
                if unknown || (self.override_existing && self.service_name_configured) {
                    set_string(kv, &self.service_name);
                }
            }
        }
        for (key, value) in &self.resource {
            match attributes.iter_mut().find(|kv| kv.key == *key) {
                None => attributes.push(key_value(key.clone(), string(value))),
                Some(kv) if self.override_existing => set_string(kv, value),
                Some(_) => {}
            }
        }
    }

    /// Canonical keys and values, `daena.component`, schema errors and mirrors for one span.
    fn normalise_span(&mut self, span: &mut Span) {
        let mut found = Found::default();
        let mut duplicates: Vec<usize> = Vec::new();
        work(span.attributes.len());
        for (i, kv) in span.attributes.iter().enumerate() {
            match self.keys.get(&kv.key, KeyClass::of) {
                KeyClass::Schema {
                    row,
                    canonical,
                    family,
                } => {
                    match found.rows[row] {
                        None => found.rows[row] = Some((i, canonical)),
                        // The canonical key wins over a variant; otherwise the first one seen.
                        Some((previous, false)) if canonical => {
                            duplicates.push(previous);
                            found.rows[row] = Some((i, true));
                        }
                        Some(_) => duplicates.push(i),
                    }
                    found.families[family] = true;
                }
                KeyClass::Family(f) => found.families[f] = true,
                KeyClass::Component => found.component_at = Some(i),
                KeyClass::SchemaErrors => found.schema_errors_at = Some(i),
                KeyClass::Mirror(m) => found.mirrors[m] = true,
                KeyClass::Http => found.http = true,
                KeyClass::Other => {}
            }
        }

        let mut failed = [false; FIELDS];
        for (row, slot) in found.rows.iter().enumerate() {
            let Some((i, canonical)) = *slot else {
                continue;
            };
            let kv = &mut span.attributes[i];
            if !canonical {
                kv.key = SCHEMA[row].key.to_owned();
            }
            if !normalise_value(&SCHEMA[row].rule, &mut kv.value) {
                failed[row] = true;
                self.errors[row] += 1;
            }
        }

        let component = found.component(&span.name);
        self.tally.span(
            component,
            canonical_string(span, &found, &failed, row::COUNCIL_PHASE),
            canonical_string(span, &found, &failed, row::LLM_MODEL),
        );
        if self.semconv_mirror {
            mirror(span, &found, &failed);
        }
        set_or_push(
            &mut span.attributes,
            found.component_at,
            COMPONENT,
            || Value::StringValue(component.to_owned()),
            |v| matches!(v, Value::StringValue(s) if s == component),
        );
        let errors: Vec<AnyValue> = failed
            .iter()
            .zip(SCHEMA)
            .filter(|(failed, _)| **failed)
            .map(|(_, field)| AnyValue {
                value: Some(string(field.key)),
            })
            .collect();
        let mut remove = duplicates;
        if errors.is_empty() {
            remove.extend(found.schema_errors_at);
        } else {
            let list = Value::ArrayValue(ArrayValue { values: errors });
            match found.schema_errors_at {
                Some(i) => span.attributes[i].value = Some(AnyValue { value: Some(list) }),
                None => span.attributes.push(key_value(SCHEMA_ERRORS, list)),
            }
        }
        if !remove.is_empty() {
            // One mark per attribute: a lookup in `remove` per attribute would make a span
            // of n copies of one key cost n² (300k copies took seconds).
            let mut gone = vec![false; span.attributes.len()];
            for i in remove {
                if let Some(mark) = gone.get_mut(i) {
                    *mark = true;
                }
            }
            work(gone.len());
            let mut index = 0;
            span.attributes.retain(|_| {
                index += 1;
                !gone.get(index - 1).copied().unwrap_or(false)
            });
        }
    }
}

impl SpanStage for DaenaNormaliser {
    fn name(&self) -> &'static str {
        "daena"
    }

    fn resource(&mut self, resource: &mut Resource) {
        self.enrich_resource(resource);
    }

    fn span(&mut self, span: &mut Span) {
        self.normalise_span(span);
    }

    fn finish_batch(&mut self) {
        let metrics = &self.metrics;
        flush_counts(&mut self.errors, SCHEMA.iter().map(|f| f.key), |key, n| {
            metrics.schema_errors(key, n);
        });
        if !self.tally.is_empty() {
            self.mix.add(&self.tally);
            self.tally.reset();
        }
    }
}

/// What one walk over a span's attributes found.
#[derive(Default)]
struct Found {
    /// Per schema row: the attribute's index and whether its key was already canonical.
    rows: [Option<(usize, bool)>; FIELDS],
    /// Daena families present, in the order of [`FAMILIES`].
    families: [bool; 4],
    http: bool,
    component_at: Option<usize>,
    schema_errors_at: Option<usize>,
    /// Which mirror keys the span already has, in the order of [`MIRRORS`].
    mirrors: [bool; MIRRORS.len()],
}

/// The semantic-convention keys the stage may add.
const MIRRORS: [&str; 6] = [
    "gen_ai.request.model",
    "messaging.system",
    "messaging.destination.name",
    "messaging.message.id",
    "messaging.operation.type",
    "messaging.operation.name",
];

/// What an attribute key is to this stage; cached per key.
#[derive(Clone, Copy)]
enum KeyClass {
    /// A schema row, whether the key is already canonical, and the row's family.
    Schema {
        row: usize,
        canonical: bool,
        family: usize,
    },
    /// Another key of a Daena family (index into [`FAMILIES`]).
    Family(usize),
    /// `daena.component`.
    Component,
    /// `daena.schema.errors`.
    SchemaErrors,
    /// A semconv key the stage may add (index into [`MIRRORS`]).
    Mirror(usize),
    /// An `http.*` key.
    Http,
    /// Anything else.
    Other,
}

impl KeyClass {
    fn of(key: &str) -> Self {
        if let Some((row, canonical)) = schema::lookup(key) {
            // Every schema key starts with its family's name.
            let family = schema::family(SCHEMA[row].key).unwrap_or_default();
            return Self::Schema {
                row,
                canonical,
                family,
            };
        }
        if key == COMPONENT {
            return Self::Component;
        }
        if key == SCHEMA_ERRORS {
            return Self::SchemaErrors;
        }
        if let Some(m) = MIRRORS.iter().position(|m| *m == key) {
            return Self::Mirror(m);
        }
        if key.starts_with("http.") {
            return Self::Http;
        }
        schema::family(key).map_or(Self::Other, Self::Family)
    }
}

impl Found {
    /// `daena.component`: the most specific family present, else HTTP, else the span name.
    fn component(&self, span_name: &str) -> &'static str {
        if let Some(i) = self.families.iter().position(|present| *present) {
            return FAMILIES[i];
        }
        if self.http {
            return "http";
        }
        if let Some(family) = schema::family(span_name) {
            return FAMILIES[family];
        }
        let method = span_name.split(' ').next().unwrap_or_default();
        let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        if span_name.contains(' ') && methods.contains(&method) {
            "http"
        } else {
            "other"
        }
    }
}

/// The string value of schema `row` on `span` once normalised; `None` when the span lacks
/// it or its value could not be normalised.
fn canonical_string<'a>(
    span: &'a Span,
    found: &Found,
    failed: &[bool; FIELDS],
    row: usize,
) -> Option<&'a str> {
    let (i, _) = found.rows[row]?;
    if failed[row] {
        return None;
    }
    string_of(&span.attributes[i])
}

/// Adds the `gen_ai.*` and `messaging.*` attributes the span lacks.
fn mirror(span: &mut Span, found: &Found, failed: &[bool; FIELDS]) {
    let value_of = |row: usize| canonical_string(span, found, failed, row).map(str::to_owned);
    let mut added = Vec::new();
    if let Some(model) = value_of(row::LLM_MODEL).filter(|_| !found.mirrors[0]) {
        added.push(key_value(MIRRORS[0], Value::StringValue(model)));
    }
    let bus = FAMILIES
        .iter()
        .position(|f| *f == "message_bus")
        .is_some_and(|i| found.families[i]);
    if bus {
        let operation = value_of(row::BUS_OPERATION);
        let operation_type = operation.as_deref().map(|op| match op {
            "publish" => "send",
            _ => "receive",
        });
        let values = [
            Some(BUS_SYSTEM.to_owned()),
            value_of(row::BUS_TOPIC),
            value_of(row::BUS_MESSAGE_ID),
            operation_type.map(str::to_owned),
            operation,
        ];
        for (m, value) in values.into_iter().enumerate() {
            if let Some(value) = value.filter(|_| !found.mirrors[m + 1]) {
                added.push(key_value(MIRRORS[m + 1], Value::StringValue(value)));
            }
        }
    }
    span.attributes.append(&mut added);
}

/// Normalises `value` by `rule` in place; false when it cannot (the value is left as it came).
fn normalise_value(rule: &ValueRule, value: &mut Option<AnyValue>) -> bool {
    let Some(value) = value.as_mut().and_then(|v| v.value.as_mut()) else {
        return false;
    };
    let normalised = match (rule, &*value) {
        (ValueRule::OneOf(choices), Value::StringValue(s)) => match one_of(choices, s.trim()) {
            Some(canonical) if canonical == s => return true,
            Some(canonical) => Value::StringValue(canonical.to_owned()),
            None => return false,
        },
        (ValueRule::OneOf(choices), Value::IntValue(i)) => match one_of(choices, &i.to_string()) {
            Some(canonical) => Value::StringValue(canonical.to_owned()),
            None => return false,
        },
        (ValueRule::Bool, Value::BoolValue(_))
        | (ValueRule::Double, Value::DoubleValue(_))
        | (ValueRule::Id, Value::StringValue(_)) => return true,
        (ValueRule::Bool, Value::StringValue(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::BoolValue(true),
            "false" | "0" | "no" => Value::BoolValue(false),
            _ => return false,
        },
        (ValueRule::Bool, Value::IntValue(i @ (0 | 1))) => Value::BoolValue(*i == 1),
        #[allow(clippy::cast_precision_loss)] // costs are far below 2^53
        (ValueRule::Double, Value::IntValue(i)) => Value::DoubleValue(*i as f64),
        (ValueRule::Double, Value::StringValue(s)) => match s.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Value::DoubleValue(number),
            _ => return false,
        },
        (ValueRule::Id, Value::IntValue(i)) => Value::StringValue(i.to_string()),
        (ValueRule::Text, Value::StringValue(s)) => match s.trim() {
            trimmed if trimmed.len() == s.len() => return true,
            trimmed => Value::StringValue(trimmed.to_owned()),
        },
        _ => return false,
    };
    *value = normalised;
    true
}

/// The canonical value `text` spells, ignoring ASCII case.
fn one_of(choices: &[(&'static str, &[&str])], text: &str) -> Option<&'static str> {
    choices.iter().find_map(|(canonical, spellings)| {
        (canonical.eq_ignore_ascii_case(text)
            || spellings.iter().any(|s| s.eq_ignore_ascii_case(text)))
        .then_some(*canonical)
    })
}

/// Sets the attribute at `at` unless `is_same` says it already holds the value, or pushes it.
fn set_or_push(
    attributes: &mut Vec<KeyValue>,
    at: Option<usize>,
    key: &str,
    value: impl FnOnce() -> Value,
    is_same: impl Fn(&Value) -> bool,
) {
    match at {
        Some(i) => {
            let kv = &mut attributes[i];
            if !kv
                .value
                .as_ref()
                .and_then(|v| v.value.as_ref())
                .is_some_and(is_same)
            {
                kv.value = Some(AnyValue {
                    value: Some(value()),
                });
            }
        }
        None => attributes.push(key_value(key, value())),
    }
}

fn string(text: &str) -> Value {
    Value::StringValue(text.to_owned())
}

fn string_of(kv: &KeyValue) -> Option<&str> {
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn set_string(kv: &mut KeyValue, text: &str) {
    kv.value = Some(AnyValue {
        value: Some(string(text)),
    });
}

#[cfg(test)]
mod tests;

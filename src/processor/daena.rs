//! The `daena` stage: canonical Daena attribute keys and values, `daena.component`, the
//! OpenTelemetry semantic-convention mirrors, and resource enrichment.
//!
//! One pass over each span's attributes finds the schema's keys (see [`super::schema`]);
//! a span whose keys and values are already canonical is not written to, except for
//! `daena.component`.

use std::sync::Arc;

use super::key_cache::KeyCache;
use super::schema::{MIRROR_OPERATION_TYPE, MIRROR_SYSTEM, Schema, ValueRule};
use super::{SpanStage, work};
use crate::config::DaenaConfig;
use crate::otlp::edit::{AttributesMut, SpanMut};
use crate::otlp::view::{SpanRead, ValueRef};
use crate::otlp::{AnyValue, ArrayValue, Event, KeyValue, Resource, Value, key_value};
use crate::telemetry::Metrics;
use crate::telemetry::mix::{DaenaMix, MixTally};

/// The span attribute naming the Daena component a span belongs to.
pub const COMPONENT: &str = "daena.component";
/// The span attribute listing keys whose values could not be normalised.
pub const SCHEMA_ERRORS: &str = "daena.schema.errors";
/// The `messaging.system` value of Daena's message bus.
pub const BUS_SYSTEM: &str = "daena_bus";
/// The one name of a rate-limit event on a message-bus span, whatever the service wrote.
pub const RATE_LIMITED_EVENT: &str = "message_bus.rate_limited";

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
    schema: Schema,
    /// Schema errors of the current batch, per schema row; flushed to the metrics per batch.
    errors: Vec<u64>,
    keys: KeyCache<KeyClass>,
    /// What the attribute walk found, reused from span to span.
    found: Found,
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
        let schema = Schema::new(&config.schema);
        // Every schema key shows at 0 from the start, so an alert on its rate sees 0.
        for field in &schema.fields {
            metrics.schema_errors(&field.key, 0);
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
            errors: vec![0; schema.fields.len()],
            schema,
            keys: KeyCache::new(),
            found: Found::default(),
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
    fn normalise_span(&mut self, span: &mut SpanMut<'_, '_>) {
        let schema = &self.schema;
        let found = &mut self.found;
        found.clear();
        work(span.count());
        for i in 0..span.count() {
            match self.keys.get(span.key(i), |key| KeyClass::of(schema, key)) {
                KeyClass::Schema {
                    row,
                    canonical,
                    family,
                } => {
                    found.hit(row, i, canonical);
                    found.families |= 1 << family;
                }
                KeyClass::Family(f) => found.families |= 1 << f,
                KeyClass::Component => found.component_at = Some(i),
                KeyClass::SchemaErrors => found.schema_errors_at = Some(i),
                KeyClass::Mirror(m) => found.mirrors |= 1 << m,
                KeyClass::Http => found.http = true,
                KeyClass::Other => {}
            }
        }

        let (mut phase, mut model) = (None, None);
        for hit in &mut found.hits {
            let field = &schema.fields[hit.row];
            if !hit.canonical {
                span.set_key(hit.at, &field.key);
            }
            match normalise_value(&field.rule, span.value(hit.at)) {
                Normalised::Failed => {
                    hit.failed = true;
                    found.failed = true;
                    self.errors[hit.row] += 1;
                }
                normalised => {
                    if let Normalised::To(value) = normalised {
                        span.set_value(hit.at, value);
                    }
                    if Some(hit.row) == schema.council_phase {
                        phase = Some(hit.at);
                    } else if Some(hit.row) == schema.llm_model {
                        model = Some(hit.at);
                    }
                }
            }
            found.mirrored |= field.mirror.is_some();
        }

        let component = found.component(schema, span.name());
        self.tally.span(
            component,
            phase.and_then(|at| string_at(span, at)),
            model.and_then(|at| string_at(span, at)),
        );
        if found.families & (1 << schema.bus_family) != 0
            && span.count_events(is_rate_limit_event) > 0
        {
            normalise_rate_limit_events(
                span.events_mut(),
                schema,
                &mut self.keys,
                &mut self.errors,
            );
        }
        if self.semconv_mirror {
            mirror(span, schema, found);
        }
        match found.component_at {
            Some(i) if matches!(span.value(i), ValueRef::Str(s) if s == component) => {}
            Some(i) => span.set_value(i, string(component)),
            None => span.push(key_value(COMPONENT, string(component))),
        }
        let remove = &mut found.duplicates;
        if !found.failed {
            remove.extend(found.schema_errors_at);
        } else {
            // In schema order, so a span normalised twice lists them the same way.
            let mut failed: Vec<usize> = found
                .hits
                .iter()
                .filter(|hit| hit.failed)
                .map(|hit| hit.row)
                .collect();
            failed.sort_unstable();
            let errors = failed
                .into_iter()
                .map(|row| AnyValue {
                    value: Some(string(&schema.fields[row].key)),
                })
                .collect();
            let list = Value::ArrayValue(ArrayValue { values: errors });
            match found.schema_errors_at {
                Some(i) => span.set_value(i, list),
                None => span.push(key_value(SCHEMA_ERRORS, list)),
            }
        }
        if !remove.is_empty() {
            // One mark per attribute: a lookup in `remove` per attribute would make a span
            // of n copies of one key cost n² (300k copies took seconds).
            let mut gone = vec![false; span.count()];
            for &i in remove.iter() {
                if let Some(mark) = gone.get_mut(i) {
                    *mark = true;
                }
            }
            work(gone.len());
            span.remove_marked(&gone);
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

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        self.normalise_span(span);
    }

    fn finish_batch(&mut self) {
        for (count, field) in self.errors.iter_mut().zip(&self.schema.fields) {
            if *count > 0 {
                self.metrics
                    .schema_errors(&field.key, std::mem::take(count));
            }
        }
        if !self.tally.is_empty() {
            self.mix.add(&self.tally);
            self.tally.reset();
        }
    }
}

/// A schema key found on a span.
struct Hit {
    /// The schema row.
    row: usize,
    /// The attribute's index.
    at: usize,
    /// Whether its key was already canonical.
    canonical: bool,
    /// Whether its value could not be normalised.
    failed: bool,
}

/// What one walk over a span's attributes found; its buffers are reused.
#[derive(Default)]
struct Found {
    /// The schema keys, one per row (usually none to four).
    hits: Vec<Hit>,
    /// Attributes to remove: variants of a key the span also carries.
    duplicates: Vec<usize>,
    /// Daena families present, a bit per index into [`Schema::families`].
    families: u64,
    http: bool,
    component_at: Option<usize>,
    schema_errors_at: Option<usize>,
    /// Which mirror keys the span already has, a bit per index into [`Schema::mirrors`].
    mirrors: u64,
    /// Whether a value could not be normalised.
    failed: bool,
    /// Whether a row found has a mirror.
    mirrored: bool,
}

impl Found {
    fn clear(&mut self) {
        self.hits.clear();
        self.duplicates.clear();
        self.families = 0;
        self.http = false;
        self.component_at = None;
        self.schema_errors_at = None;
        self.mirrors = 0;
        self.failed = false;
        self.mirrored = false;
    }

    /// Notes schema `row` at attribute `at`: the canonical key wins over a variant;
    /// otherwise the first one seen. The loser is a duplicate.
    fn hit(&mut self, row: usize, at: usize, canonical: bool) {
        match self.hits.iter_mut().find(|hit| hit.row == row) {
            None => self.hits.push(Hit {
                row,
                at,
                canonical,
                failed: false,
            }),
            Some(hit) if canonical && !hit.canonical => {
                self.duplicates.push(hit.at);
                hit.at = at;
                hit.canonical = true;
            }
            Some(_) => self.duplicates.push(at),
        }
    }

    /// `daena.component`: the most specific family present, else HTTP, else the span name.
    fn component<'s>(&self, schema: &'s Schema, span_name: &str) -> &'s str {
        if self.families != 0 {
            return &schema.families[self.families.trailing_zeros() as usize];
        }
        if self.http {
            return "http";
        }
        if let Some(family) = schema.family(span_name) {
            return &schema.families[family];
        }
        let method = span_name.split(' ').next().unwrap_or_default();
        let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        if span_name.contains(' ') && methods.contains(&method) {
            "http"
        } else {
            "other"
        }
    }

    /// The string value of schema `row` on `span` once normalised; `None` when the span
    /// lacks it or its value could not be normalised.
    fn canonical_string<'a>(
        &self,
        attributes: &'a impl AttributesMut,
        row: Option<usize>,
    ) -> Option<&'a str> {
        let row = row?;
        let hit = self.hits.iter().find(|hit| hit.row == row && !hit.failed)?;
        string_at(attributes, hit.at)
    }
}

/// What an attribute key is to this stage; cached per key.
#[derive(Clone, Copy)]
enum KeyClass {
    /// A schema row, whether the key is already canonical, and the row's family.
    Schema {
        row: usize,
        canonical: bool,
        family: usize,
    },
    /// Another key of a Daena family (index into [`Schema::families`]).
    Family(usize),
    /// `daena.component`.
    Component,
    /// `daena.schema.errors`.
    SchemaErrors,
    /// A semconv key the stage may add (index into [`Schema::mirrors`]).
    Mirror(usize),
    /// An `http.*` key.
    Http,
    /// Anything else.
    Other,
}

impl KeyClass {
    fn of(schema: &Schema, key: &str) -> Self {
        if let Some((row, canonical)) = schema.lookup(key) {
            return Self::Schema {
                row,
                canonical,
                family: schema.fields[row].family,
            };
        }
        if key == COMPONENT {
            return Self::Component;
        }
        if key == SCHEMA_ERRORS {
            return Self::SchemaErrors;
        }
        if let Some(m) = schema.mirrors.iter().position(|m| m == key) {
            return Self::Mirror(m);
        }
        if key.starts_with("http.") {
            return Self::Http;
        }
        schema.family(key).map_or(Self::Other, Self::Family)
    }
}

/// Adds the semconv mirrors the span lacks: each row's mirror, and for message-bus
/// spans `messaging.system` and `messaging.operation.type`.
fn mirror(span: &mut SpanMut<'_, '_>, schema: &Schema, found: &Found) {
    let absent = |m: usize| found.mirrors & (1 << m) == 0;
    let bus = found.families & (1 << schema.bus_family) != 0;
    if !found.mirrored && !bus {
        return;
    }
    let mut added = Vec::new();
    for hit in found.hits.iter().filter(|hit| !hit.failed) {
        if let Some(m) = schema.fields[hit.row].mirror.filter(|m| absent(*m))
            && let Some(value) = span.value_owned(hit.at)
        {
            added.push(KeyValue {
                key: schema.mirrors[m].clone(),
                value: Some(value),
                ..KeyValue::default()
            });
        }
    }
    if bus {
        if absent(MIRROR_SYSTEM) {
            added.push(key_value(
                &schema.mirrors[MIRROR_SYSTEM],
                string(BUS_SYSTEM),
            ));
        }
        let operation_type = match found.canonical_string(span, schema.bus_operation) {
            Some("publish") => Some("send"),
            Some("subscribe") => Some("receive"),
            _ => None,
        };
        if let Some(operation_type) = operation_type.filter(|_| absent(MIRROR_OPERATION_TYPE)) {
            added.push(key_value(
                &schema.mirrors[MIRROR_OPERATION_TYPE],
                string(operation_type),
            ));
        }
    }
    for key_value in added {
        span.push(key_value);
    }
}

/// Renames a bus span's rate-limit events, in any spelling, to [`RATE_LIMITED_EVENT`],
/// and gives their attributes canonical keys and values (rare events: a key outside the
/// schema is also tried under `message_bus.`).
fn normalise_rate_limit_events(
    events: &mut [Event],
    schema: &Schema,
    keys: &mut KeyCache<KeyClass>,
    errors: &mut [u64],
) {
    for event in events {
        if !is_rate_limit_event(&event.name) {
            continue;
        }
        if event.name != RATE_LIMITED_EVENT {
            RATE_LIMITED_EVENT.clone_into(&mut event.name);
        }
        work(event.attributes.len());
        for kv in &mut event.attributes {
            let row = match keys.get(&kv.key, |key| KeyClass::of(schema, key)) {
                KeyClass::Schema { row, .. } => Some(row),
                // An event of a bus span may leave out the family: `retry_after_ms`.
                KeyClass::Other => schema
                    .lookup(&format!("message_bus.{}", kv.key))
                    .map(|(row, _)| row)
                    .filter(|row| schema.fields[*row].family == schema.bus_family),
                _ => None,
            };
            if let Some(row) = row {
                let field = &schema.fields[row];
                if kv.key != field.key {
                    kv.key.clone_from(&field.key);
                }
                match normalise_value(&field.rule, ValueRef::of(kv)) {
                    Normalised::Failed => errors[row] += 1,
                    Normalised::To(value) => kv.value = Some(AnyValue { value: Some(value) }),
                    Normalised::Same => {}
                }
            }
        }
    }
}

/// Whether an event name says "rate limited": ignoring case and separators, and a leading
/// `message_bus` or `bus`, it is `rate_limit`, `rate_limited`, `rate_limiting` or
/// `rate_limit_exceeded`.
pub(super) fn is_rate_limit_event(name: &str) -> bool {
    let mut letters = name
        .bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase());
    let mut folded = [0u8; 32];
    let mut len = 0;
    for byte in letters.by_ref() {
        if len == folded.len() {
            return false;
        }
        folded[len] = byte;
        len += 1;
    }
    let folded = &folded[..len];
    let folded = folded
        .strip_prefix(b"messagebus")
        .or_else(|| folded.strip_prefix(b"bus"))
        .unwrap_or(folded);
    matches!(
        folded,
        b"ratelimit" | b"ratelimited" | b"ratelimiting" | b"ratelimitexceeded"
    )
}

/// What [`normalise_value`] made of a value.
enum Normalised {
    /// It was canonical already.
    Same,
    /// Its canonical form.
    To(Value),
    /// It cannot be normalised (it is left as it came).
    Failed,
}

/// Normalises `value` by `rule`.
#[inline(always)]
fn normalise_value(rule: &ValueRule, value: ValueRef<'_>) -> Normalised {
    let normalised = match (rule, value) {
        (ValueRule::OneOf(choices), ValueRef::Str(s)) => match one_of(choices, s.trim()) {
            Some(canonical) if canonical == s => return Normalised::Same,
            Some(canonical) => Value::StringValue(canonical.to_owned()),
            None => return Normalised::Failed,
        },
        (ValueRule::OneOf(choices), ValueRef::Int(i)) => match one_of(choices, &i.to_string()) {
            Some(canonical) => Value::StringValue(canonical.to_owned()),
            None => return Normalised::Failed,
        },
        (ValueRule::Bool, ValueRef::Bool(_))
        | (ValueRule::Double, ValueRef::Double(_))
        | (ValueRule::Int, ValueRef::Int(_))
        | (ValueRule::Id, ValueRef::Str(_)) => return Normalised::Same,
        (ValueRule::Bool, ValueRef::Str(s)) => match bool_of(s) {
            Some(b) => Value::BoolValue(b),
            None => return Normalised::Failed,
        },
        (ValueRule::Bool, ValueRef::Int(i @ (0 | 1))) => Value::BoolValue(i == 1),
        #[allow(clippy::cast_precision_loss)] // costs are far below 2^53
        (ValueRule::Double, ValueRef::Int(i)) => Value::DoubleValue(i as f64),
        (ValueRule::Double, ValueRef::Str(s)) => match s.trim().parse::<f64>() {
            Ok(number) if number.is_finite() => Value::DoubleValue(number),
            _ => return Normalised::Failed,
        },
        (ValueRule::Int, ValueRef::Str(s)) => match s.trim().parse::<i64>() {
            Ok(number) => Value::IntValue(number),
            _ => return Normalised::Failed,
        },
        (ValueRule::Int, ValueRef::Double(d)) => match whole(d) {
            Some(number) => Value::IntValue(number),
            None => return Normalised::Failed,
        },
        (ValueRule::Id, ValueRef::Int(i)) => Value::StringValue(i.to_string()),
        (ValueRule::Text, ValueRef::Str(s)) => match s.trim() {
            trimmed if trimmed.len() == s.len() => return Normalised::Same,
            trimmed => Value::StringValue(trimmed.to_owned()),
        },
        _ => return Normalised::Failed,
    };
    Normalised::To(normalised)
}

/// `d` as an int when it is a whole number an int holds exactly.
fn whole(d: f64) -> Option<i64> {
    // 2^63 as a double; every whole double below it in magnitude converts exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    #[allow(clippy::cast_possible_truncation)] // whole and in range: exact
    (d.fract() == 0.0 && d > -LIMIT && d < LIMIT).then_some(d as i64)
}

/// The boolean a string spells: `true`/`false` in any case, `1`/`0`, `yes`/`no`.
pub(super) fn bool_of(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// The canonical value `text` spells, ignoring ASCII case.
pub(super) fn one_of<'a>(choices: &'a [(String, Vec<String>)], text: &str) -> Option<&'a str> {
    // Most values arrive canonical: one comparison of lengths and bytes each.
    if let Some((canonical, _)) = choices.iter().find(|(canonical, _)| canonical == text) {
        return Some(canonical);
    }
    choices.iter().find_map(|(canonical, spellings)| {
        (canonical.eq_ignore_ascii_case(text)
            || spellings.iter().any(|s| s.eq_ignore_ascii_case(text)))
        .then_some(canonical.as_str())
    })
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

/// The string value of attribute `i`, if it is one.
fn string_at(attributes: &impl AttributesMut, i: usize) -> Option<&str> {
    match attributes.value(i) {
        ValueRef::Str(s) => Some(s),
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

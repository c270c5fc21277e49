//! The processor stages the pipeline runs over every batch: the noise filter first, the
//! Daena signals, head sampling, then the Daena schema, attribute actions, redaction and
//! limits in one pass over each span, tail sampling after.

pub mod attributes;
pub mod daena;
pub mod filter;
mod key_cache;
pub mod limits;
pub mod matcher;
#[cfg(test)]
mod oracle_tests;
pub mod redact;
pub mod sampling;
pub mod schema;
pub mod signals;
pub mod tail;

pub use attributes::AttributeActions;
pub use daena::DaenaNormaliser;
pub use filter::NoiseFilter;
pub use limits::Limiter;
pub use redact::Redactor;
pub use sampling::HeadSampler;
pub use signals::{SignalsCounter, SignalsPass};
pub use tail::TailSampler;

use std::sync::Arc;

use crate::config::{ProcessorsConfig, SamplingMode};
use crate::otlp::edit::{RequestEditor, SpanMut, edit_decoded, edit_request};
use crate::otlp::{InstrumentationScope, Resource, SpanBatch};
use crate::telemetry::Metrics;
use crate::telemetry::mix::DaenaMix;

/// The enabled stages. The noise filter runs first, then the signals (which must see every
/// span it keeps) and head sampling; the span stages
/// run in one pass, in a fixed order: daena (so the others see canonical keys), attributes
/// (before redact, so what an action writes is still checked), redact (before limits, so a
/// cut can never leave half a secret behind), limits; tail sampling runs after them. The daena
/// stage counts the spans it sees in `mix`, for the status page.
pub fn build(
    config: &ProcessorsConfig,
    metrics: &Arc<Metrics>,
    mix: &Arc<DaenaMix>,
) -> Vec<Box<dyn Processor>> {
    let mut stages: Vec<Box<dyn SpanStage>> = Vec::new();
    if config.daena.enabled {
        stages.push(Box::new(DaenaNormaliser::new(
            &config.daena,
            Arc::clone(metrics),
            Arc::clone(mix),
        )));
    }
    if !config.attributes.actions.is_empty() {
        stages.push(Box::new(AttributeActions::new(
            &config.attributes,
            Arc::clone(metrics),
        )));
    }
    if config.redact.enabled {
        stages.push(Box::new(Redactor::new(&config.redact, Arc::clone(metrics))));
    }
    if config.limits.enabled {
        stages.push(Box::new(Limiter::new(&config.limits, Arc::clone(metrics))));
    }
    let mut processors: Vec<Box<dyn Processor>> = Vec::new();
    let sampling = config.sampling.as_ref();
    let mut order: Vec<&'static str> = Vec::new();
    // The filter first: what it drops costs nothing further, sampled or not.
    let head = sampling.filter(|s| s.mode == SamplingMode::Head);
    let tail = sampling.filter(|s| s.mode == SamplingMode::Tail);
    if config.filter.enabled {
        let filter = NoiseFilter::new(&config.filter, Arc::clone(metrics));
        order.push(filter.name());
        processors.push(Box::new(filter));
    }
    // Signals next: exact counts need every span the filter keeps, before sampling. With
    // no head sampler they count in the span pass, on its one walk over each span.
    if config.signals.enabled {
        let signals = SignalsCounter::new(config, metrics.signals().clone());
        if head.is_some() {
            order.push(signals.name());
            processors.push(Box::new(SignalsPass(signals)));
        } else {
            stages.insert(0, Box::new(signals));
        }
    }
    // Head sampling reads only trace ids, so it goes before the span stages and they never
    // see the spans it drops; tail policies read attributes, so the tail sampler goes last.
    if let Some(sampling) = sampling {
        let policies: Vec<&str> = sampling.policies.iter().map(|p| p.name.as_str()).collect();
        metrics.declare_sampling(&policies);
    }
    if let Some(head) = head {
        let sampler = HeadSampler::new(head.ratio.unwrap_or(1.0), Arc::clone(metrics));
        order.push(sampler.name());
        processors.push(Box::new(sampler));
    }
    if !stages.is_empty() {
        order.extend(stages.iter().map(|stage| stage.name()));
        processors.push(Box::new(SpanPass::new(stages)));
    }
    if let Some(tail) = tail {
        let sampler = TailSampler::new(tail, Arc::clone(metrics));
        order.push(sampler.name());
        processors.push(Box::new(sampler));
    }
    tracing::info!(stages = ?order, "Processor stages, in order");
    processors
}

/// One pipeline stage: works on a batch in place, synchronously, and never fails it.
///
/// A stage that cannot handle a span passes it through unchanged (and counts it), so a
/// failed enrichment never loses data. Stages run inline in the single pipeline task, in
/// the fixed order [`build`] gives them, and take `&mut self` so stateful stages need no lock.
pub trait Processor: Send + 'static {
    /// Stable name, used as the `processor` label in logs and metrics.
    fn name(&self) -> &'static str;
    /// Mutates, filters or drops spans of `batch` in place, through
    /// [`SpanBatch::resource_spans_mut`], which decodes spans that are still encoded.
    fn process(&mut self, batch: &mut SpanBatch);
    /// Whether the stage holds spans back to release later; only then is it asked for them.
    fn holds_spans(&self) -> bool {
        false
    }
    /// Spans held back now (answered for already): what a failure of the agent would lose.
    fn held_spans(&self) -> usize {
        0
    }
    /// Called about every 100 ms: spans the stage held back that are now due go into `out`.
    fn release_due(&mut self, _out: &mut SpanBatch) {}
    /// Called once when the pipeline stops: everything the stage still holds, decided now.
    fn release_all(&mut self, _out: &mut SpanBatch) {}
}

/// A stage that works on one resource or span at a time; [`SpanPass`] runs several of
/// them over each span while it is in cache. A stage reads and edits a span through
/// [`SpanMut`], written once for spans decoded and spans read in place.
pub trait SpanStage: Send + 'static {
    /// Stable name, used in logs.
    fn name(&self) -> &'static str;
    /// Works on a resource before its spans.
    fn resource(&mut self, resource: &mut Resource);
    /// Works on an instrumentation scope before its spans.
    fn scope(&mut self, _scope: &mut InstrumentationScope) {}
    /// Works on a resource's or a scope's schema URL.
    fn schema_url(&mut self, _url: &mut String) {}
    /// Works on one span in place.
    fn span(&mut self, span: &mut SpanMut<'_, '_>);
    /// Called after each batch: the place to hand per-batch counts to the metrics.
    fn finish_batch(&mut self);
}

/// Runs span stages in order over each resource and span of a batch, in one pass: over
/// encoded requests where they lie ([`edit_request`]), so a span no stage changes is
/// copied as it came and one a stage adds to has the new attributes appended.
pub struct SpanPass {
    stages: Vec<Box<dyn SpanStage>>,
}

impl SpanPass {
    /// A pass running `stages` in order.
    pub fn new(stages: Vec<Box<dyn SpanStage>>) -> Self {
        Self { stages }
    }
}

impl RequestEditor for SpanPass {
    fn resource(&mut self, resource: &mut Resource, schema_url: &mut String) {
        for stage in &mut self.stages {
            stage.resource(resource);
            stage.schema_url(schema_url);
        }
    }

    fn scope(&mut self, mut scope: Option<&mut InstrumentationScope>, schema_url: &mut String) {
        for stage in &mut self.stages {
            if let Some(scope) = &mut scope {
                stage.scope(scope);
            }
            stage.schema_url(schema_url);
        }
    }

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        for stage in &mut self.stages {
            stage.span(span);
        }
    }
}

impl Processor for SpanPass {
    fn name(&self) -> &'static str {
        "span stages"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        edit_decoded(batch.decoded_mut(), self);
        // A part whose resource or scope does not decode (the scan's agreement with prost
        // rules it out) takes the decoded path, which counts its spans as lost.
        let mut undecodable = SpanBatch::default();
        for (body, spans) in std::mem::take(batch.encoded_mut()) {
            match edit_request(&body, self) {
                Some(edited) => batch.push_encoded(edited.into(), spans),
                None => undecodable.push_encoded(body, spans),
            }
        }
        if !undecodable.is_empty() {
            edit_decoded(undecodable.resource_spans_mut(), self);
            batch.append(undecodable);
        }
        for stage in &mut self.stages {
            stage.finish_batch();
        }
    }
}

/// Counts `n` steps of work of the span stages (an attribute visited, a byte scanned): in
/// tests, which check that the count grows linearly with the input; nothing otherwise.
#[inline]
fn work(n: usize) {
    #[cfg(test)]
    WORK.with(|steps| steps.set(steps.get() + n as u64));
    #[cfg(not(test))]
    let _ = n;
}

#[cfg(test)]
thread_local! {
    /// Steps counted by [`work`] on this thread (each test runs on its own).
    static WORK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Steps of work `f` took, as counted by [`work`].
#[cfg(test)]
fn work_of(f: impl FnOnce()) -> u64 {
    let before = WORK.with(std::cell::Cell::get);
    f();
    WORK.with(std::cell::Cell::get) - before
}

/// Hands a stage's per-batch counts to the metrics: `record(label, count)` for each count
/// that is not zero, which it then resets. `labels` name the counts in order.
fn flush_counts(
    counts: &mut [u64],
    labels: impl IntoIterator<Item = &'static str>,
    mut record: impl FnMut(&'static str, u64),
) {
    for (count, label) in counts.iter_mut().zip(labels) {
        if *count > 0 {
            record(label, std::mem::take(count));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{KeyValue, ScopeSpans, Span, Value, key_value};

    /// Attributes of a size `n`.
    type Input = Box<dyn Fn(usize) -> Vec<KeyValue>>;

    /// Steps the span stages, as configured by default, take over one span of
    /// `attributes`, its name making it a Daena `llm` span.
    fn work_on(attributes: Vec<KeyValue>) -> u64 {
        let metrics = Arc::new(Metrics::default());
        let mut stages = build(&ProcessorsConfig::default(), &metrics, &Arc::default());
        let mut batch = SpanBatch::new(vec![crate::otlp::ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: "llm.call".into(),
                    attributes,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        work_of(|| {
            for stage in &mut stages {
                stage.process(&mut batch);
            }
        })
    }

    #[test]
    fn the_work_per_span_grows_linearly_with_repeated_keys_and_long_values() {
        let copies = |key: &'static str| {
            move |n: usize| {
                (0..n)
                    .map(|i| key_value(key, Value::IntValue(i64::try_from(i).unwrap_or(0))))
                    .collect::<Vec<_>>()
            }
        };
        let value = |key: &'static str, unit: &'static str| {
            move |n: usize| vec![key_value(key, Value::StringValue(unit.repeat(n)))]
        };
        let inputs: [(&str, Input); 7] = [
            ("llm.cost copies", Box::new(copies("llm.cost"))),
            ("llm.cost_usd copies", Box::new(copies("llm.cost_usd"))),
            ("Council_Phase copies", Box::new(copies("Council_Phase"))),
            ("note copies", Box::new(copies("note"))),
            ("-bearer-bearer…", Box::new(value("note", "-bearer"))),
            ("sk-sk-…", Box::new(value("note", "sk-"))),
            ("a@a@… in a prompt", Box::new(value("llm.prompt", "a@"))),
        ];
        for (name, input) in inputs {
            let (small, large) = (work_on(input(2_000)), work_on(input(8_000)));
            // Linear work is 4 times as much for 4 times the input; quadratic, 16.
            assert!(
                small > 0 && large * 10 <= small * 45,
                "{name}: {small} then {large}"
            );
        }
    }
}

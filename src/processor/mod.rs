//! The pipeline's middle: processor stages run in order on each batch, then the batcher
//! groups spans for the exporters.

pub mod batch;
pub mod daena;
pub mod limits;
pub mod pipeline;
pub mod redact;
pub mod schema;

pub use batch::Batcher;
pub use daena::DaenaProcessor;
pub use limits::Limiter;
pub use pipeline::Pipeline;
pub use redact::Redactor;

use std::sync::Arc;

use crate::config::ProcessorsConfig;
use crate::otlp::SpanBatch;
use crate::telemetry::Metrics;

/// The enabled stages in their fixed order: daena (so the others see canonical keys),
/// redact (before limits, so a cut can never leave half a secret behind), limits.
/// `env` reads the variables `processors.daena.resource_from_env` names.
pub fn build(
    config: &ProcessorsConfig,
    env: impl Fn(&str) -> Option<String>,
    metrics: &Arc<Metrics>,
) -> Vec<Box<dyn Processor>> {
    let mut stages: Vec<Box<dyn Processor>> = Vec::new();
    if config.daena.enabled {
        stages.push(Box::new(DaenaProcessor::new(
            &config.daena,
            env,
            Arc::clone(metrics),
        )));
    }
    if config.redact.enabled {
        stages.push(Box::new(Redactor::new(&config.redact, Arc::clone(metrics))));
    }
    if config.limits.enabled {
        stages.push(Box::new(Limiter::new(&config.limits, Arc::clone(metrics))));
    }
    stages
}

/// One pipeline stage: works on a batch in place, synchronously, and never fails it.
///
/// A stage that cannot handle a span passes it through unchanged (and counts it), so a
/// failed enrichment never loses data. Stages run inline in the single pipeline task, in
/// the order the config lists them, and take `&mut self` so stateful stages need no lock.
pub trait Processor: Send + 'static {
    /// Stable name, used as the `processor` label in logs and metrics.
    fn name(&self) -> &'static str;
    /// Mutates, filters or drops spans of `batch` in place, through
    /// [`SpanBatch::resource_spans_mut`], which decodes spans that are still encoded.
    fn process(&mut self, batch: &mut SpanBatch);
}

//! The pipeline's middle: processor stages run in order on each batch, then the batcher
//! groups spans for the exporters.

pub mod batch;
pub mod pipeline;

pub use batch::Batcher;
pub use pipeline::Pipeline;

use crate::otlp::SpanBatch;

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

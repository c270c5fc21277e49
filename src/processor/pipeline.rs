//! The pipeline task: takes batches from the receivers, runs the processor stages,
//! batches, and hands each full batch to every exporter's queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Batcher, Processor};
use crate::exporter::{ExporterHandle, Payload};
use crate::otlp::SpanBatch;

/// The pipeline between the receivers and the exporters.
pub struct Pipeline {
    processors: Vec<Box<dyn Processor>>,
    batcher: Batcher,
    timeout: Duration,
    exporters: Vec<ExporterHandle>,
}

impl Pipeline {
    /// A pipeline running `processors` in order, then batching by the given limits.
    pub fn new(
        processors: Vec<Box<dyn Processor>>,
        batcher: Batcher,
        timeout: Duration,
        exporters: Vec<ExporterHandle>,
    ) -> Self {
        Self {
            processors,
            batcher,
            timeout,
            exporters,
        }
    }

    /// Runs until every receiver has dropped its sender, then flushes what is batched;
    /// returning drops the exporter handles, which lets the exporter queues drain and end.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SpanBatch>) {
        // When the oldest span waiting in the batcher must leave, at the latest.
        let mut deadline: Option<Instant> = None;
        loop {
            let flush_at = deadline;
            tokio::select! {
                received = rx.recv() => {
                    let Some(mut batch) = received else { break };
                    for processor in &mut self.processors {
                        processor.process(&mut batch);
                    }
                    for full in self.batcher.push(batch) {
                        dispatch(&self.exporters, full).await;
                    }
                    deadline = match deadline {
                        _ if self.batcher.is_empty() => None,
                        None => Some(Instant::now() + self.timeout),
                        kept => kept,
                    };
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    if let Some(batch) = self.batcher.flush() {
                        dispatch(&self.exporters, batch).await;
                    }
                    deadline = None;
                }
            }
        }
        if let Some(batch) = self.batcher.flush() {
            dispatch(&self.exporters, batch).await;
        }
    }
}

/// Gives the batch to every exporter, encoded at most once between them.
async fn dispatch(exporters: &[ExporterHandle], batch: SpanBatch) {
    let payload = Arc::new(Payload::new(batch));
    for exporter in exporters {
        exporter.send(Arc::clone(&payload)).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

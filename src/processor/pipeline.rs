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
        let mut release = tokio::time::interval(RELEASE_INTERVAL);
        release.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let holds = self.processors.iter().any(|p| p.holds_spans());
        loop {
            let flush_at = deadline;
            tokio::select! {
                received = rx.recv() => {
                    let Some(mut batch) = received else { break };
                    self.process(0, &mut batch);
                    self.admit(batch, &mut deadline).await;
                }
                _ = release.tick(), if holds => {
                    self.release(&mut deadline, |p, out| p.release_due(out)).await;
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    if let Some(batch) = self.batcher.flush() {
                        dispatch(&self.exporters, batch).await;
                    }
                    deadline = None;
                }
            }
        }
        self.release(&mut deadline, |p, out| p.release_all(out))
            .await;
        if let Some(batch) = self.batcher.flush() {
            dispatch(&self.exporters, batch).await;
        }
    }

    /// Runs the processors from index `from` on `batch`, then encodes what they decoded.
    fn process(&mut self, from: usize, batch: &mut SpanBatch) {
        if self.processors.is_empty() {
            return;
        }
        for processor in &mut self.processors[from..] {
            processor.process(batch);
        }
        batch.encode_decoded();
    }

    /// What each processor releases (held spans now due) goes through the ones after it.
    async fn release(
        &mut self,
        deadline: &mut Option<Instant>,
        take: impl Fn(&mut dyn Processor, &mut SpanBatch),
    ) {
        for i in 0..self.processors.len() {
            let mut released = SpanBatch::default();
            take(self.processors[i].as_mut(), &mut released);
            if !released.is_empty() {
                self.process(i + 1, &mut released);
                self.admit(released, deadline).await;
            }
        }
    }

    /// Adds a batch to the batcher and sends what is full.
    async fn admit(&mut self, batch: SpanBatch, deadline: &mut Option<Instant>) {
        for full in self.batcher.push(batch) {
            dispatch(&self.exporters, full).await;
        }
        *deadline = match *deadline {
            _ if self.batcher.is_empty() => None,
            None => Some(Instant::now() + self.timeout),
            kept => kept,
        };
    }
}

/// How often stages that hold spans (tail sampling) are asked for what is due.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::{ExporterConfig, ExporterProtocol};
    use crate::exporter::{Delivered, ExportError, Exporter, queue};
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};

    /// Records the span names of every batch it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl Exporter for Recorder {
        async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
            let names = payload
                .request()
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| s.name.clone())
                .collect();
            self.0.lock().expect("lock").push(names);
            Ok(Delivered::default())
        }
    }

    /// A stage that upper-cases span names, to see stages run before batching.
    struct Shout;

    impl Processor for Shout {
        fn name(&self) -> &'static str {
            "shout"
        }

        fn process(&mut self, batch: &mut SpanBatch) {
            for rs in batch.resource_spans_mut() {
                for ss in &mut rs.scope_spans {
                    for span in &mut ss.spans {
                        span.name = span.name.to_uppercase();
                    }
                }
            }
        }
    }

    fn batch(names: &[&str]) -> SpanBatch {
        SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: names
                    .iter()
                    .map(|n| Span {
                        name: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    #[tokio::test(start_paused = true)]
    async fn stages_run_then_batches_leave_on_timeout_and_at_the_end() {
        let recorder = Recorder::default();
        let config = ExporterConfig::new(ExporterProtocol::Console, None);
        let (handle, worker) = queue::spawn(
            "recorder",
            recorder.clone(),
            &config,
            Arc::default(),
            CancellationToken::new(),
        );
        let (tx, rx) = mpsc::channel(8);
        let pipeline = Pipeline::new(
            vec![Box::new(Shout)],
            Batcher::new(100, 1 << 20),
            Duration::from_millis(200),
            vec![handle],
        );
        let task = tokio::spawn(pipeline.run(rx));

        tx.send(batch(&["scout", "debate"])).await.expect("send");
        tx.send(batch(&["commit"])).await.expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            recorder.0.lock().expect("lock").is_empty(),
            "waits for the timeout"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            *recorder.0.lock().expect("lock"),
            vec![vec!["SCOUT", "DEBATE", "COMMIT"]]
        );

        tx.send(batch(&["late"])).await.expect("send");
        drop(tx);
        task.await
            .expect("pipeline ends when the receivers are gone");
        worker.await.expect("exporter queue drains and ends");
        assert_eq!(recorder.0.lock().expect("lock")[1], vec!["LATE"]);
    }
}

//! The pipeline task: takes batches from the receivers, runs the processor stages,
//! batches, and hands each full batch to the [`Outlet`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ack::Ack;
use super::batcher::Batcher;
use super::batching::Batching;
use crate::otlp::SpanBatch;
use crate::processor::Processor;

/// A request a receiver accepted; with persistent queues, the share of its client's
/// answer that the pipeline hands on with every batch its spans go into.
pub struct Accepted {
    /// The request's spans.
    pub batch: SpanBatch,
    /// Confirmed once the spans are in every persistent queue.
    pub ack: Option<Ack>,
}

/// Where the batches leaving the batcher go: the exporters' fan-out.
pub trait Outlet: Send + 'static {
    /// Takes one batch with the shares of its clients' answers. Waiting here is the
    /// backpressure that fills the pipeline's queue, so the receivers refuse retryably.
    fn send(&self, batch: SpanBatch, acks: Vec<Ack>) -> impl Future<Output = ()> + Send;
}

/// The pipeline between the receivers and the exporters.
pub struct Pipeline<O> {
    processors: Vec<Box<dyn Processor>>,
    batching: Batching,
    timeout: Duration,
    outlet: O,
}

impl<O: Outlet> Pipeline<O> {
    /// A pipeline running `processors` in order, then batching by the given limits.
    pub fn new(
        processors: Vec<Box<dyn Processor>>,
        batcher: Batcher,
        timeout: Duration,
        outlet: O,
    ) -> Self {
        Self {
            processors,
            batching: Batching::new(batcher),
            timeout,
            outlet,
        }
    }

    /// Runs until every receiver has dropped its sender, then flushes what is batched;
    /// returning drops the outlet, which lets the exporter queues drain and end.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Accepted>) {
        // When the oldest span waiting in the batcher must leave, at the latest.
        let mut deadline: Option<Instant> = None;
        let mut release = tokio::time::interval(RELEASE_INTERVAL);
        release.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let holds = self.processors.iter().any(|p| p.holds_spans());
        loop {
            let flush_at = deadline;
            tokio::select! {
                received = rx.recv() => {
                    let Some(Accepted { mut batch, ack }) = received else { break };
                    self.process(0, &mut batch);
                    self.admit(batch, ack, &mut deadline).await;
                    // Clients waiting for the durable write are not kept waiting for the
                    // batch to fill: it leaves once no other request is there to join it.
                    if self.batching.has_waiting_clients() && rx.is_empty() {
                        self.flush().await;
                        deadline = None;
                    }
                }
                _ = release.tick(), if holds => {
                    self.release(&mut deadline, |p, out| p.release_due(out)).await;
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush().await;
                    deadline = None;
                }
            }
        }
        self.release(&mut deadline, |p, out| p.release_all(out))
            .await;
        self.flush().await;
    }

    /// Sends what the batcher holds.
    async fn flush(&mut self) {
        if let Some((batch, acks)) = self.batching.flush() {
            self.outlet.send(batch, acks).await;
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
                // Held spans were answered for when the stage took them.
                self.admit(released, None, deadline).await;
            }
        }
    }

    /// Adds a batch to the batcher and sends what is full, each full batch with the answers
    /// of the requests that may have spans in it.
    async fn admit(&mut self, batch: SpanBatch, ack: Option<Ack>, deadline: &mut Option<Instant>) {
        if batch.is_empty() {
            // Sampled out or held by a stage: nothing of it is left to write.
            ack.into_iter().for_each(Ack::confirm);
            return;
        }
        for (batch, acks) in self.batching.push(batch, ack) {
            self.outlet.send(batch, acks).await;
        }
        *deadline = match *deadline {
            _ if self.batching.is_empty() => None,
            None => Some(Instant::now() + self.timeout),
            kept => kept,
        };
    }
}

/// How often stages that hold spans (tail sampling) are asked for what is due.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};

    /// Records the span names of every batch it is given, and confirms its answers.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl Outlet for Recorder {
        async fn send(&self, batch: SpanBatch, acks: Vec<Ack>) {
            let names = batch
                .into_request()
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
                .map(|s| s.name.clone())
                .collect();
            self.0.lock().expect("lock").push(names);
            acks.into_iter().for_each(Ack::confirm);
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

    /// A request of spans named `names`, as a receiver hands it over.
    pub(crate) fn accepted(names: &[&str]) -> Accepted {
        let batch = SpanBatch::new(vec![ResourceSpans {
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
        }]);
        Accepted { batch, ack: None }
    }

    #[tokio::test(start_paused = true)]
    async fn stages_run_then_batches_leave_on_timeout_and_at_the_end() {
        let recorder = Recorder::default();
        let (tx, rx) = mpsc::channel(8);
        let pipeline = Pipeline::new(
            vec![Box::new(Shout)],
            Batcher::new(100, 1 << 20),
            Duration::from_millis(200),
            recorder.clone(),
        );
        let task = tokio::spawn(pipeline.run(rx));

        tx.send(accepted(&["scout", "debate"])).await.expect("send");
        tx.send(accepted(&["commit"])).await.expect("send");
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

        tx.send(accepted(&["late"])).await.expect("send");
        drop(tx);
        task.await
            .expect("pipeline ends when the receivers are gone");
        assert_eq!(recorder.0.lock().expect("lock")[1], vec!["LATE"]);
    }

    #[tokio::test]
    async fn a_waiting_client_is_answered_without_waiting_for_the_batch_timeout() {
        let recorder = Recorder::default();
        let (tx, rx) = mpsc::channel(8);
        let (ack, answer) = Ack::new();
        let mut request = accepted(&["a"]);
        request.ack = Some(ack);
        tx.send(request).await.expect("send");
        let pipeline = Pipeline::new(
            Vec::new(),
            Batcher::new(100, 1 << 20),
            Duration::from_secs(3600),
            recorder.clone(),
        );
        tokio::spawn(pipeline.run(rx));
        let answered = tokio::time::timeout(Duration::from_secs(10), answer).await;
        assert_eq!(answered.ok(), Some(Ok(Ok(()))));
        assert_eq!(*recorder.0.lock().expect("lock"), vec![vec!["a"]]);
    }
}

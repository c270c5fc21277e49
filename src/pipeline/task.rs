//! The pipeline task: takes batches from the receivers, runs the processor stages,
//! batches, and hands each full batch to the [`Outlet`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ack::Ack;
use super::batcher::Batcher;
use super::batching::Batching;
use super::ledger::Ledger;
use crate::otlp::SpanBatch;
use crate::processor::Processor;
use crate::supervisor::panic_message;
use crate::telemetry::Metrics;
use crate::telemetry::memory::Reservation;
use crate::telemetry::metrics::DropReason;

/// A request a receiver accepted; with persistent queues, the share of its client's
/// answer that the pipeline hands on with every batch its spans go into.
pub struct Accepted {
    /// The request's spans.
    pub batch: SpanBatch,
    /// Confirmed once the spans are in every persistent queue.
    pub ack: Option<Ack>,
    /// The request's share of the memory budget, given back once the pipeline has run
    /// its stages and handed its spans on (to the batcher, whose size is bounded).
    pub memory: Reservation,
}

/// The receivers' end of the pipeline's queue; it notes in the [`Ledger`] the spans it
/// hands over whose clients are answered at once.
#[derive(Clone)]
pub struct Inlet {
    tx: mpsc::Sender<Accepted>,
    ledger: Arc<Ledger>,
}

impl Inlet {
    /// Queues a request for the pipeline, or gives it back when the queue is full or closed.
    pub fn try_send(&self, accepted: Accepted) -> Result<(), mpsc::error::TrySendError<Accepted>> {
        let spans = match accepted.ack {
            Some(_) => 0,
            None => accepted.batch.span_count() as u64,
        };
        // Noted before it is sent, so the pipeline never takes what the ledger lacks.
        self.ledger.queue(spans);
        self.tx
            .try_send(accepted)
            .inspect_err(|_| self.ledger.taken(spans))
    }
}

/// The pipeline's end of its queue, with the ledger it shares with the [`Inlet`].
pub struct Inbox {
    rx: mpsc::Receiver<Accepted>,
    ledger: Arc<Ledger>,
}

impl Inbox {
    /// The ledger of what the pipeline holds, for the report when the agent stops.
    pub fn ledger(&self) -> Arc<Ledger> {
        Arc::clone(&self.ledger)
    }

    /// The next request, if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Result<Accepted, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }
}

/// The pipeline's queue of `capacity` requests: the receivers' end and the pipeline's.
pub fn queue(capacity: usize) -> (Inlet, Inbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let ledger = Arc::new(Ledger::default());
    let inlet = Inlet {
        tx,
        ledger: Arc::clone(&ledger),
    };
    (inlet, Inbox { rx, ledger })
}

/// Where the batches leaving the batcher go: the exporters' fan-out.
pub trait Outlet: Send + 'static {
    /// Takes one batch with the shares of its clients' answers. Waiting here is the
    /// backpressure that fills the pipeline's queue, so the receivers refuse retryably.
    fn send(&self, batch: SpanBatch, acks: Vec<Ack>) -> impl Future<Output = ()> + Send;
}

/// A processor stage panicked: the pipeline stopped taking requests, delivered what had
/// passed every stage, and left the rest counted in its [`Ledger`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {stage} stage panicked: {message}")]
pub struct StageFailure {
    /// The stage's name.
    pub stage: &'static str,
    /// The panic's message.
    pub message: String,
}

/// New stages for a running pipeline (a config reload), and whom to tell once they run.
pub struct StageSwap {
    /// The stages that replace the running ones.
    pub stages: Vec<Box<dyn Processor>>,
    /// Told once the old stages have released what they held and the new ones run.
    pub done: oneshot::Sender<()>,
}

/// The pipeline between the receivers and the exporters.
pub struct Pipeline<O> {
    processors: Vec<Box<dyn Processor>>,
    swaps: Option<mpsc::Receiver<StageSwap>>,
    batching: Batching,
    timeout: Duration,
    outlet: O,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
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
            swaps: None,
            batching: Batching::new(batcher),
            timeout,
            outlet,
            ledger: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` the spans the pipeline loses (by default, into counters of its own).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Takes new stages from `swaps` while it runs (see [`StageSwap`]).
    pub fn with_stage_swaps(mut self, swaps: mpsc::Receiver<StageSwap>) -> Self {
        self.swaps = Some(swaps);
        self
    }

    /// Runs until every receiver has dropped its sender, then flushes what is batched;
    /// returning drops the outlet, which lets the exporter queues drain and end. A stage
    /// that panics ends it early, with the panic, after what can still go was sent.
    /// It keeps the inbox's ledger up to date with what it holds.
    pub async fn run(mut self, inbox: Inbox) -> Result<(), StageFailure> {
        let Inbox { mut rx, ledger } = inbox;
        self.ledger = ledger;
        // When the oldest span waiting in the batcher must leave, at the latest.
        let mut deadline: Option<Instant> = None;
        let mut release = tokio::time::interval(RELEASE_INTERVAL);
        release.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut holds = self.processors.iter().any(|p| p.holds_spans());
        let mut swaps = self.swaps.take();
        loop {
            let flush_at = deadline;
            tokio::select! {
                Some(swap) = next_swap(&mut swaps) => {
                    // What the old stages hold (the tail sampler's traces) is decided and
                    // passed on now: the new stages start empty, and nothing is lost.
                    if let Err((failure, in_hand)) = self.release(&mut deadline, |p, out| p.release_all(out)).await {
                        return self.fail(rx, failure, in_hand).await;
                    }
                    self.processors = swap.stages;
                    holds = self.processors.iter().any(|p| p.holds_spans());
                    let _ = swap.done.send(());
                }
                received = rx.recv() => {
                    let Some(Accepted { mut batch, ack, memory }) = received else { break };
                    let in_hand = self.take(&batch, ack.as_ref());
                    if let Err(failure) = self.process(0, &mut batch) {
                        return self.fail(rx, failure, in_hand).await;
                    }
                    self.admit(batch, ack, &mut deadline).await;
                    drop(memory);
                    // Clients waiting for the durable write are not kept waiting for the
                    // batch to fill: it leaves once no other request is there to join it.
                    if self.batching.has_waiting_clients() && rx.is_empty() {
                        self.flush().await;
                        deadline = None;
                    }
                }
                _ = release.tick(), if holds => {
                    if let Err((failure, in_hand)) = self.release(&mut deadline, |p, out| p.release_due(out)).await {
                        return self.fail(rx, failure, in_hand).await;
                    }
                }
                () = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush().await;
                    deadline = None;
                }
            }
        }
        if let Err((failure, in_hand)) = self
            .release(&mut deadline, |p, out| p.release_all(out))
            .await
        {
            return self.fail(rx, failure, in_hand).await;
        }
        self.flush().await;
        Ok(())
    }

    /// A stage panicked on a batch: refuse what comes next, send what passed every stage,
    /// and leave in the ledger, as lost, the acknowledged spans that cannot go on: the
    /// `in_hand` batch, the requests still queued, what the stages hold.
    async fn fail(
        mut self,
        mut rx: mpsc::Receiver<Accepted>,
        failure: StageFailure,
        in_hand: u64,
    ) -> Result<(), StageFailure> {
        rx.close();
        let mut lost = in_hand;
        // Unprocessed requests cannot skip the stages (redaction among them). Dropping
        // them drops their answers too: with persistent queues, those clients are refused.
        while let Ok(Accepted { batch, ack, .. }) = rx.try_recv() {
            lost += self.take(&batch, ack.as_ref());
        }
        self.flush().await;
        let held: usize = self.processors.iter().map(|p| p.held_spans()).sum();
        self.ledger.hold(lost + held as u64);
        Err(failure)
    }

    /// Takes a request off the queue; returns how many of its spans the client was already
    /// told are accepted (all of them, unless it waits for a persistent queue).
    fn take(&mut self, batch: &SpanBatch, ack: Option<&Ack>) -> u64 {
        if ack.is_some() {
            return 0;
        }
        let spans = batch.span_count() as u64;
        self.ledger.taken(spans);
        self.ledger.hold(self.held() + spans);
        spans
    }

    /// Acknowledged spans the pipeline holds between requests: in the stages and the batcher.
    fn held(&self) -> u64 {
        let in_stages: usize = self.processors.iter().map(|p| p.held_spans()).sum();
        (in_stages + self.batching.acknowledged_spans()) as u64
    }

    /// Sends what the batcher holds.
    async fn flush(&mut self) {
        if let Some((batch, acks)) = self.batching.flush() {
            self.metrics.batch_sent(batch.span_count());
            self.outlet.send(batch, acks).await;
        }
        self.ledger.hold(self.held());
    }

    /// Runs the processors from index `from` on `batch`, then encodes what they decoded.
    /// A panic in a stage is caught here, so the pipeline can still deliver what it holds.
    fn process(&mut self, from: usize, batch: &mut SpanBatch) -> Result<(), StageFailure> {
        if self.processors.is_empty() {
            return Ok(());
        }
        for processor in &mut self.processors[from..] {
            let stage = processor.name();
            std::panic::catch_unwind(AssertUnwindSafe(|| processor.process(batch))).map_err(
                |panic| StageFailure {
                    stage,
                    message: panic_message(&*panic),
                },
            )?;
        }
        let undecodable = batch.take_undecodable();
        self.count_undecodable(undecodable);
        batch.encode_decoded();
        Ok(())
    }

    /// Counts acknowledged spans lost because their bytes failed to decode (for a stage, or
    /// to be split by the batcher). Zero while the receivers' scan accepts only what prost
    /// decodes; see `SpanBatch::resource_spans_mut`.
    fn count_undecodable(&self, spans: usize) {
        self.metrics
            .dropped_in_pipeline(DropReason::Undecodable, spans as u64);
    }

    /// What each processor releases (held spans now due) goes through the ones after it.
    /// On a panic, also the acknowledged spans that were in hand.
    async fn release(
        &mut self,
        deadline: &mut Option<Instant>,
        take: impl Fn(&mut dyn Processor, &mut SpanBatch),
    ) -> Result<(), (StageFailure, u64)> {
        for i in 0..self.processors.len() {
            let mut released = SpanBatch::default();
            let processor = &mut self.processors[i];
            let stage = processor.name();
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                take(processor.as_mut(), &mut released);
            }))
            .map_err(|panic| {
                let failure = StageFailure {
                    stage,
                    message: panic_message(&*panic),
                };
                (failure, 0)
            })?;
            if !released.is_empty() {
                let spans = released.span_count() as u64;
                self.process(i + 1, &mut released)
                    .map_err(|failure| (failure, spans))?;
                // Held spans were answered for when the stage took them.
                self.admit(released, None, deadline).await;
            }
        }
        Ok(())
    }

    /// Adds a batch to the batcher and sends what is full, each full batch with the answers
    /// of the requests that may have spans in it.
    async fn admit(&mut self, batch: SpanBatch, ack: Option<Ack>, deadline: &mut Option<Instant>) {
        if batch.is_empty() {
            // Sampled out or held by a stage: nothing of it is left to write.
            ack.into_iter().for_each(Ack::confirm);
            self.ledger.hold(self.held());
            return;
        }
        let leaving = self.batching.push(batch, ack);
        let undecodable = self.batching.take_undecodable();
        self.count_undecodable(undecodable);
        for (batch, acks) in leaving {
            self.metrics.batch_sent(batch.span_count());
            self.outlet.send(batch, acks).await;
        }
        self.ledger.hold(self.held());
        *deadline = match *deadline {
            _ if self.batching.is_empty() => None,
            None => Some(Instant::now() + self.timeout),
            kept => kept,
        };
    }
}

/// How often stages that hold spans (tail sampling) are asked for what is due.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// The next stage swap, or never when there is no channel (or it closed).
async fn next_swap(swaps: &mut Option<mpsc::Receiver<StageSwap>>) -> Option<StageSwap> {
    match swaps {
        Some(rx) => match rx.recv().await {
            Some(swap) => Some(swap),
            None => {
                *swaps = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the span names of every batch it is given, and confirms its answers.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl Outlet for Recorder {
        async fn send(&self, batch: SpanBatch, acks: Vec<Ack>) {
            let names = crate::otlp::span_names(&batch.into_request());
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
        let batch = SpanBatch::from_request(crate::otlp::request_named(names));
        Accepted {
            batch,
            ack: None,
            memory: Reservation::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stages_run_then_batches_leave_on_timeout_and_at_the_end() {
        let recorder = Recorder::default();
        let (tx, rx) = queue(8);
        let pipeline = Pipeline::new(
            vec![Box::new(Shout)],
            Batcher::new(100, 1 << 20),
            Duration::from_millis(200),
            recorder.clone(),
        );
        let task = tokio::spawn(pipeline.run(rx));

        tx.try_send(accepted(&["scout", "debate"])).expect("send");
        tx.try_send(accepted(&["commit"])).expect("send");
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

        tx.try_send(accepted(&["late"])).expect("send");
        drop(tx);
        let ended = task.await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the pipeline ends when the receivers are gone"
        );
        assert_eq!(recorder.0.lock().expect("lock")[1], vec!["LATE"]);
    }

    /// Holds every span until it is asked to release them all.
    #[derive(Default)]
    struct Hold(SpanBatch);

    impl Processor for Hold {
        fn name(&self) -> &'static str {
            "hold"
        }

        fn process(&mut self, batch: &mut SpanBatch) {
            let held = std::mem::take(batch).into_request();
            let mut mine = std::mem::take(&mut self.0).into_request();
            mine.resource_spans.extend(held.resource_spans);
            self.0 = SpanBatch::from_request(mine);
        }

        fn holds_spans(&self) -> bool {
            true
        }

        fn held_spans(&self) -> usize {
            self.0.span_count()
        }

        fn release_all(&mut self, out: &mut SpanBatch) {
            *out = std::mem::take(&mut self.0);
        }
    }

    #[tokio::test]
    async fn swapped_stages_release_what_the_old_ones_held_and_run_from_the_next_request() {
        let recorder = Recorder::default();
        let (tx, rx) = queue(8);
        let (swaps, swapped) = mpsc::channel(1);
        let pipeline = Pipeline::new(
            vec![Box::new(Hold::default()), Box::new(Shout)],
            Batcher::new(100, 1 << 20),
            Duration::from_millis(10),
            recorder.clone(),
        )
        .with_stage_swaps(swapped);
        let task = tokio::spawn(pipeline.run(rx));
        tx.try_send(accepted(&["scout"])).expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(recorder.0.lock().expect("lock").is_empty(), "held");

        let (done, applied) = oneshot::channel();
        swaps
            .send(StageSwap {
                stages: Vec::new(),
                done,
            })
            .await
            .expect("swap");
        applied.await.expect("applied");
        tx.try_send(accepted(&["debate"])).expect("send");
        drop(tx);
        assert!(matches!(task.await, Ok(Ok(()))));
        let mut delivered = recorder.0.lock().expect("lock").concat();
        delivered.sort();
        assert_eq!(
            delivered,
            ["SCOUT", "debate"],
            "the held span went through the old stages after it; the next ran none"
        );
    }

    #[tokio::test]
    async fn spans_whose_bytes_fail_to_decode_in_the_pipeline_are_counted_as_dropped() {
        // The receivers' scan keeps such bytes out; should it ever let some in, the loss
        // shows in the drop counter instead of nowhere. Bytes are decoded for a stage, and
        // for the batcher when a request is too large for one batch (3 spans, 2 a batch).
        let cases: [(Vec<Box<dyn Processor>>, &str); 2] =
            [(vec![Box::new(Shout)], "FINE"), (Vec::new(), "fine")];
        for (stages, name) in cases {
            let recorder = Recorder::default();
            let (tx, rx) = queue(8);
            let undecodable = bytes::Bytes::from_static(&[0x0a, 0xff, 0xff, 0x01]);
            tx.try_send(Accepted {
                batch: SpanBatch::from_encoded(undecodable, 3),
                ack: None,
                memory: Reservation::default(),
            })
            .expect("send");
            tx.try_send(accepted(&["fine"])).expect("send");
            drop(tx);
            let metrics = Arc::new(Metrics::default());
            let pipeline = Pipeline::new(
                stages,
                Batcher::new(2, 1 << 20),
                Duration::from_secs(3600),
                recorder.clone(),
            )
            .with_metrics(Arc::clone(&metrics));
            assert!(matches!(pipeline.run(rx).await, Ok(())));
            assert_eq!(*recorder.0.lock().expect("lock"), vec![vec![name]]);
            let rendered = metrics.render();
            assert!(
                rendered.contains(
                    "daena_agent_spans_dropped_total{stage=\"pipeline\",reason=\"undecodable\"} 3\n"
                ),
                "{rendered}"
            );
        }
    }

    #[tokio::test]
    async fn a_waiting_client_is_answered_without_waiting_for_the_batch_timeout() {
        let recorder = Recorder::default();
        let (tx, rx) = queue(8);
        let (ack, answer) = Ack::new();
        let mut request = accepted(&["a"]);
        request.ack = Some(ack);
        tx.try_send(request).expect("send");
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

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
use crate::otlp::partition::RouteKey;
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

/// The receivers' end of the pipelines' queues, one queue per shard; it notes in each
/// shard's [`Ledger`] the spans it hands over whose clients are answered at once.
#[derive(Clone)]
pub struct Inlet {
    shards: Vec<Shard>,
}

/// One shard's queue and the ledger it shares with that shard's [`Inbox`].
#[derive(Clone)]
struct Shard {
    tx: mpsc::Sender<Accepted>,
    ledger: Arc<Ledger>,
}

impl Inlet {
    /// Queues a request for the pipeline, split by trace id over the shards; refuses all
    /// of it when any shard that gets a part is full or closed.
    pub fn try_send(&self, accepted: Accepted) -> Result<(), mpsc::error::TrySendError<()>> {
        match self.shards.as_slice() {
            [shard] => shard.try_send(accepted),
            // Nothing to route (a request of no spans): its client still waits for an answer.
            [first, ..] if accepted.batch.is_empty() => first.try_send(accepted),
            shards => Self::try_send_split(shards, accepted),
        }
    }

    /// Splits `accepted` by trace id and sends every non-empty part to its shard, or none:
    /// a slot is reserved in each of those shards first, so a refused client's retry never
    /// repeats a part already queued.
    fn try_send_split(
        shards: &[Shard],
        accepted: Accepted,
    ) -> Result<(), mpsc::error::TrySendError<()>> {
        let Accepted { batch, ack, memory } = accepted;
        let count = shards.len() as u64;
        let parts = batch.partition(shards.len(), &RouteKey::TraceId, |hash| {
            (hash % count) as usize
        });
        let mut permits = Vec::with_capacity(shards.len());
        for (shard, part) in shards.iter().zip(parts) {
            if part.is_empty() {
                continue;
            }
            let permit = shard.tx.try_reserve()?;
            permits.push((shard, permit, part));
        }
        // The memory reservation goes whole with the largest part, the last to be handed on
        // as a rule (shards run side by side): the other parts' bytes go uncounted only
        // while that one is still in the stages, which is close enough for a budget.
        let largest = permits
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, _, part))| part.span_count())
            .map_or(0, |(i, _)| i);
        let mut memory = Some(memory);
        let mut ack = ack;
        let last = permits.len().saturating_sub(1);
        for (i, (shard, permit, batch)) in permits.into_iter().enumerate() {
            // One share of the answer per part; the original goes with the last.
            let ack = if i == last { ack.take() } else { ack.clone() };
            let memory = if i == largest { memory.take() } else { None };
            let accepted = Accepted {
                batch,
                ack,
                memory: memory.unwrap_or_default(),
            };
            shard.ledger.queue(acknowledged(&accepted));
            permit.send(accepted);
        }
        Ok(())
    }
}

impl Shard {
    /// Queues a whole request on this shard, or refuses it when the queue is full or closed.
    fn try_send(&self, accepted: Accepted) -> Result<(), mpsc::error::TrySendError<()>> {
        let spans = acknowledged(&accepted);
        // Noted before it is sent, so the pipeline never takes what the ledger lacks.
        self.ledger.queue(spans);
        self.tx.try_send(accepted).map_err(|e| {
            self.ledger.taken(spans);
            match e {
                mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
            }
        })
    }
}

/// The spans of a request its client is told are accepted at once (none when it waits
/// for a persistent queue).
fn acknowledged(accepted: &Accepted) -> u64 {
    match accepted.ack {
        Some(_) => 0,
        None => accepted.batch.span_count() as u64,
    }
}

/// A pipeline shard's end of its queue, with the ledger it shares with the [`Inlet`].
pub struct Inbox {
    rx: mpsc::Receiver<Accepted>,
    ledger: Arc<Ledger>,
}

impl Inbox {
    /// The ledger of what this shard holds, for the report when the agent stops.
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
    let (inlet, mut inboxes) = sharded_queue(capacity, 1);
    let inbox = inboxes.remove(0);
    (inlet, inbox)
}

/// The queues of `shards` pipelines (at least one), `capacity` requests each: a request
/// split over every shard takes one slot in each, so they hold as many requests as one.
pub fn sharded_queue(capacity: usize, shards: usize) -> (Inlet, Vec<Inbox>) {
    let (shards, inboxes) = (0..shards.max(1))
        .map(|_| {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            let ledger = Arc::new(Ledger::default());
            let shard = Shard {
                tx,
                ledger: Arc::clone(&ledger),
            };
            (shard, Inbox { rx, ledger })
        })
        .unzip();
    (Inlet { shards }, inboxes)
}

/// Where the batches leaving the batcher go: the exporters' fan-out.
pub trait Outlet: Send + 'static {
    /// Takes one batch with the shares of its clients' answers. Waiting here is the
    /// backpressure that fills the pipeline's queue, so the receivers refuse retryably.
    fn send(&self, batch: SpanBatch, acks: Vec<Ack>) -> impl Future<Output = ()> + Send;
}

/// The shards' pipelines share one outlet; it is dropped (closing the exporter queues)
/// with the last of them.
impl<O: Outlet + Sync> Outlet for Arc<O> {
    fn send(&self, batch: SpanBatch, acks: Vec<Ack>) -> impl Future<Output = ()> + Send {
        O::send(self, batch, acks)
    }
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

    /// The spans of a request of one span per trace id in `traces`.
    fn request_of_traces(traces: &[u8]) -> crate::otlp::ExportTraceServiceRequest {
        crate::otlp::request_of(
            traces
                .iter()
                .map(|&t| crate::otlp::Span {
                    trace_id: vec![t; 16],
                    span_id: vec![1; 8],
                    name: format!("t{t}"),
                    ..Default::default()
                })
                .collect(),
        )
    }

    /// The shard of `shards` a trace id of 16 bytes `t` routes to.
    fn shard_of(t: u8, shards: usize) -> usize {
        (crate::otlp::partition::route_hash(&[t; 16]) % shards as u64) as usize
    }

    /// The names of the spans queued in `inbox`, one list per request.
    fn queued(inbox: &mut Inbox) -> Vec<Vec<String>> {
        std::iter::from_fn(|| inbox.try_recv().ok())
            .map(|a| crate::otlp::span_names(&a.batch.into_request()))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Encoded or decoded, every span goes, once, to the shard its trace id picks;
        /// each shard's ledger holds what it was given.
        #[test]
        fn every_span_goes_once_to_the_shard_its_trace_id_picks(
            request in crate::otlp::view::arbitrary::request(),
            shards in 1usize..5,
            encoded in proptest::prelude::any::<bool>(),
        ) {
            use prost::Message;
            let total: usize = request.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
            let batch = if encoded {
                SpanBatch::from_encoded(request.encode_to_vec().into(), total)
            } else {
                SpanBatch::from_request(request)
            };
            let (inlet, mut inboxes) = sharded_queue(4, shards);
            inlet.try_send(Accepted { batch, ack: None, memory: Reservation::default() }).expect("room");
            let mut landed = 0;
            for (shard, inbox) in inboxes.iter_mut().enumerate() {
                let mut spans = 0;
                while let Ok(Accepted { batch, .. }) = inbox.try_recv() {
                    proptest::prop_assert!(total == 0 || !batch.is_empty(), "no empty part is sent");
                    for rs in batch.into_request().resource_spans {
                        for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                            let picked = crate::otlp::partition::route_hash(&span.trace_id) % shards as u64;
                            proptest::prop_assert_eq!(picked as usize, shard);
                            spans += 1;
                        }
                    }
                }
                proptest::prop_assert_eq!(inbox.ledger().in_memory(), spans);
                landed += spans;
            }
            proptest::prop_assert_eq!(landed, total as u64);
        }
    }

    #[test]
    fn a_full_shard_refuses_the_whole_request_and_the_retry_sends_each_part_once() {
        let first = (0..=u8::MAX)
            .find(|&t| shard_of(t, 2) == 0)
            .expect("a trace of shard 0");
        let second = (0..=u8::MAX)
            .find(|&t| shard_of(t, 2) == 1)
            .expect("a trace of shard 1");
        let (inlet, mut inboxes) = sharded_queue(1, 2);
        let only_second = SpanBatch::from_request(request_of_traces(&[second]));
        inlet
            .try_send(Accepted {
                batch: only_second,
                ack: None,
                memory: Reservation::default(),
            })
            .expect("room in shard 1");

        let both = || SpanBatch::from_request(request_of_traces(&[first, second, first]));
        let refused = inlet.try_send(Accepted {
            batch: both(),
            ack: None,
            memory: Reservation::default(),
        });
        assert!(matches!(refused, Err(mpsc::error::TrySendError::Full(()))));
        assert_eq!(
            queued(&mut inboxes[0]),
            Vec::<Vec<String>>::new(),
            "no part went to shard 0"
        );
        assert_eq!(inboxes[0].ledger().in_memory(), 0);
        assert_eq!(inboxes[1].ledger().in_memory(), 1, "only the first request");
        assert_eq!(queued(&mut inboxes[1]).len(), 1);

        inlet
            .try_send(Accepted {
                batch: both(),
                ack: None,
                memory: Reservation::default(),
            })
            .expect("room once shard 1 took its request");
        let (a, b) = (format!("t{first}"), format!("t{second}"));
        assert_eq!(queued(&mut inboxes[0]), vec![vec![a.clone(), a]]);
        assert_eq!(queued(&mut inboxes[1]), vec![vec![b]]);
    }

    #[tokio::test]
    async fn a_split_request_is_answered_once_every_part_is_confirmed() {
        let first = (0..=u8::MAX)
            .find(|&t| shard_of(t, 3) == 0)
            .expect("a trace of shard 0");
        let third = (0..=u8::MAX)
            .find(|&t| shard_of(t, 3) == 2)
            .expect("a trace of shard 2");
        let (inlet, mut inboxes) = sharded_queue(1, 3);
        let (ack, answer) = Ack::new();
        let batch = SpanBatch::from_request(request_of_traces(&[first, third]));
        inlet
            .try_send(Accepted {
                batch,
                ack: Some(ack),
                memory: Reservation::default(),
            })
            .expect("room");
        assert!(inboxes[1].try_recv().is_err(), "shard 1 gets no part");
        let parts: Vec<Accepted> = [0, 2]
            .iter()
            .filter_map(|&i| inboxes[i].try_recv().ok())
            .collect();
        assert_eq!(parts.len(), 2);
        assert!(
            inboxes.iter().all(|inbox| inbox.ledger().in_memory() == 0),
            "the client waits"
        );
        let mut answer = answer;
        for part in parts {
            assert!(
                answer.try_recv().is_err(),
                "not answered before every part is"
            );
            part.ack.expect("a share of the answer").confirm();
        }
        assert_eq!(answer.await, Ok(Ok(())));
    }
}

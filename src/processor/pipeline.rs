//! The pipeline task: takes batches from the receivers, runs the processor stages,
//! batches, and hands each full batch to every exporter's queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Batcher, Processor};
use crate::exporter::ack::Ack;
use crate::exporter::{ExporterHandle, Payload};
use crate::otlp::SpanBatch;

/// A request a receiver accepted; with persistent queues, the share of its client's
/// answer that the pipeline hands on with every batch its spans go into.
pub struct Accepted {
    /// The request's spans.
    pub batch: SpanBatch,
    /// Confirmed once the spans are in every persistent queue.
    pub ack: Option<Ack>,
}

/// The pipeline between the receivers and the exporters.
pub struct Pipeline {
    processors: Vec<Box<dyn Processor>>,
    batching: Batching,
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
            batching: Batching {
                batcher,
                waiting: Vec::new(),
            },
            timeout,
            exporters,
        }
    }

    /// Runs until every receiver has dropped its sender, then flushes what is batched;
    /// returning drops the exporter handles, which lets the exporter queues drain and end.
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
                    if !self.batching.waiting.is_empty() && rx.is_empty() {
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
            dispatch(&self.exporters, batch, acks).await;
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
            dispatch(&self.exporters, batch, acks).await;
        }
        *deadline = match *deadline {
            _ if self.batching.batcher.is_empty() => None,
            None => Some(Instant::now() + self.timeout),
            kept => kept,
        };
    }
}

/// How often stages that hold spans (tail sampling) are asked for what is due.
const RELEASE_INTERVAL: Duration = Duration::from_millis(100);

/// The batcher, and the answers of the requests whose spans are in it: every batch that
/// leaves carries a share of each answer it may hold spans of.
struct Batching {
    batcher: Batcher,
    waiting: Vec<Ack>,
}

/// A batch leaving the batcher, with its shares of the clients' answers.
type Leaving = (SpanBatch, Vec<Ack>);

impl Batching {
    /// Adds a request's spans; returns the batches that became full.
    fn push(&mut self, batch: SpanBatch, ack: Option<Ack>) -> Vec<Leaving> {
        let has_ack = ack.is_some();
        self.waiting.extend(ack);
        let full = self.batcher.push(batch);
        if full.is_empty() {
            return Vec::new();
        }
        let leaving = full
            .into_iter()
            .map(|batch| (batch, self.waiting.clone()))
            .collect();
        // A full batch takes everything that was waiting, so only this request's spans
        // can still be in the batcher.
        let current = (has_ack && !self.batcher.is_empty())
            .then(|| self.waiting.pop())
            .flatten();
        self.waiting.drain(..).for_each(Ack::confirm);
        self.waiting.extend(current);
        leaving
    }

    /// Takes what is waiting, with every waiting answer.
    fn flush(&mut self) -> Option<Leaving> {
        let acks = std::mem::take(&mut self.waiting);
        match self.batcher.flush() {
            Some(batch) => Some((batch, acks)),
            None => {
                acks.into_iter().for_each(Ack::confirm);
                None
            }
        }
    }
}

/// Gives the batch to every exporter, encoded at most once between them, each with its
/// own share of the answers waiting for it.
async fn dispatch(exporters: &[ExporterHandle], batch: SpanBatch, acks: Vec<Ack>) {
    let payload = Arc::new(Payload::new(batch));
    for exporter in exporters {
        exporter.send(Arc::clone(&payload), acks.clone()).await;
    }
    acks.into_iter().for_each(Ack::confirm);
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

    fn batch(names: &[&str]) -> Accepted {
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
        let config = ExporterConfig::new(ExporterProtocol::Console, None);
        let (handle, worker) = queue::spawn(
            "recorder",
            recorder.clone(),
            &config,
            Arc::default(),
            CancellationToken::new(),
        )
        .expect("memory queue");
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

    /// Never answers: what it is given stays in flight.
    struct Hung;

    impl Exporter for Hung {
        async fn export(&self, _: &Payload) -> Result<Delivered, ExportError> {
            std::future::pending().await
        }
    }

    fn persistent(dir: &std::path::Path, max_bytes: u64) -> ExporterConfig {
        let mut config = ExporterConfig::new(ExporterProtocol::Console, None);
        config.queue = crate::config::QueueConfig {
            persistent: true,
            dir: Some(dir.to_owned()),
            max_bytes: Some(crate::config::ByteSize(max_bytes)),
            ..Default::default()
        };
        config
    }

    fn with_ack(names: &[&str]) -> (Accepted, crate::exporter::ack::AckWait) {
        let (ack, wait) = Ack::new();
        let mut accepted = batch(names);
        accepted.ack = Some(ack);
        (accepted, wait)
    }

    #[tokio::test]
    async fn with_a_persistent_queue_clients_are_answered_once_their_batch_is_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recorder = Recorder::default();
        let (handle, _worker) = queue::spawn(
            "disk",
            recorder.clone(),
            &persistent(dir.path(), 1 << 20),
            Arc::default(),
            CancellationToken::new(),
        )
        .expect("persistent queue");
        let (tx, rx) = mpsc::channel(8);
        // Both requests wait in the channel before the pipeline starts: they share a batch,
        // which leaves as soon as nothing else is waiting, long before the timeout.
        let (first, first_answer) = with_ack(&["a", "b"]);
        let (second, second_answer) = with_ack(&["c"]);
        tx.send(first).await.expect("send");
        tx.send(second).await.expect("send");
        let pipeline = Pipeline::new(
            Vec::new(),
            Batcher::new(100, 1 << 20),
            Duration::from_secs(3600),
            vec![handle],
        );
        tokio::spawn(pipeline.run(rx));
        assert_eq!(first_answer.await, Ok(Ok(())));
        let segment = std::fs::read_dir(dir.path().join("disk"))
            .expect("queue dir")
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .expect("a segment");
        let written = std::fs::read(segment.path()).expect("read");
        assert!(
            written.len() > crate::exporter::persistent::MAGIC.len() + 12,
            "the record is in the segment when the client is answered"
        );
        assert_eq!(second_answer.await, Ok(Ok(())));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while recorder.0.lock().expect("lock").is_empty() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *recorder.0.lock().expect("lock"),
            vec![vec!["a", "b", "c"]],
            "one batch for both"
        );
    }

    #[tokio::test]
    async fn a_full_persistent_queue_refuses_the_clients_instead_of_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (handle, _worker) = queue::spawn(
            "disk",
            Hung,
            &persistent(dir.path(), 64),
            Arc::default(),
            CancellationToken::new(),
        )
        .expect("persistent queue");
        let (tx, rx) = mpsc::channel(8);
        let pipeline = Pipeline::new(
            Vec::new(),
            Batcher::new(1, 1 << 20),
            Duration::from_secs(3600),
            vec![handle],
        );
        tokio::spawn(pipeline.run(rx));
        let (first, first_answer) = with_ack(&["taken, alone in an empty queue"]);
        let (second, second_answer) = with_ack(&["no room"]);
        tx.send(first).await.expect("send");
        tx.send(second).await.expect("send");
        drop(tx);
        assert_eq!(first_answer.await, Ok(Ok(())));
        assert_eq!(
            second_answer.await,
            Ok(Err(crate::exporter::ack::NotQueued::Full))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the request sizes, batch limit and timeouts, a client is answered only
        /// once every batch holding any of its spans is written, and then always.
        #[test]
        fn a_client_is_answered_exactly_when_all_its_batches_are_written(
            requests in proptest::collection::vec((1usize..30, proptest::bool::ANY), 1..20),
            max_spans in 1usize..25,
        ) {
            let mut batching = Batching { batcher: Batcher::new(max_spans, 1 << 20), waiting: Vec::new() };
            let mut answers = Vec::new();
            let mut leaving = Vec::new();
            for (k, (spans, timeout_after)) in requests.iter().enumerate() {
                let names: Vec<String> = (0..*spans).map(|i| format!("{k}/{i}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let (mut accepted, answer) = with_ack(&names);
                answers.push(answer);
                leaving.extend(batching.push(accepted.batch, accepted.ack.take()));
                if *timeout_after {
                    leaving.extend(batching.flush());
                }
            }
            leaving.extend(batching.flush());

            let request_of = |name: &str| -> usize {
                name.split('/').next().and_then(|k| k.parse().ok()).expect("k/i")
            };
            let holds: Vec<Vec<usize>> = leaving
                .iter()
                .map(|(batch, _)| {
                    let mut requests: Vec<usize> = batch
                        .clone()
                        .into_request()
                        .resource_spans
                        .iter()
                        .flat_map(|rs| &rs.scope_spans)
                        .flat_map(|ss| &ss.spans)
                        .map(|s| request_of(&s.name))
                        .collect();
                    requests.dedup();
                    requests
                })
                .collect();
            let total: usize = leaving.iter().map(|(b, _)| b.span_count()).sum();
            proptest::prop_assert_eq!(total, requests.iter().map(|r| r.0).sum::<usize>());
            for (j, (_, acks)) in leaving.into_iter().enumerate() {
                let unwritten = holds[j..].iter().flatten().copied().collect::<Vec<_>>();
                for &k in &unwritten {
                    proptest::prop_assert!(
                        answers[k].try_recv().is_err(),
                        "request {} answered before batch {} holding its spans was written", k, j
                    );
                }
                acks.into_iter().for_each(Ack::confirm);
            }
            for (k, answer) in answers.iter_mut().enumerate() {
                proptest::prop_assert_eq!(answer.try_recv(), Ok(Ok(())), "request {}", k);
            }
        }
    }
}

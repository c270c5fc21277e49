//! The fan-out: the pipeline's [`Outlet`], handing each batch to every exporter's queue.
//!
//! A full, slow or dead exporter never delays the others. While any exporter has room,
//! a full one sheds the batch for itself (counted as `queue_full` for it); only when every
//! exporter is full does the pipeline wait, for the first to have room, which is the
//! backpressure that makes the receivers refuse retryably. With one exporter that is the
//! plain `on_full: block`: the clients keep their data. (A full persistent queue never
//! makes the pipeline wait: it refuses the batch's clients, who send it again.)

use std::sync::Arc;

use futures_util::future::select_all;

use super::Payload;
use super::queue::ExporterHandle;
use crate::otlp::SpanBatch;
use crate::pipeline::{Ack, Outlet};

/// Every exporter's queue; dropping it closes them, so they drain and end.
pub struct Fanout {
    exporters: Vec<ExporterHandle>,
}

impl Fanout {
    /// A fan-out to `exporters`.
    pub fn new(exporters: Vec<ExporterHandle>) -> Self {
        Self { exporters }
    }
}

impl Outlet for Fanout {
    /// Gives the batch to every exporter that has room, encoded at most once between them;
    /// waits only when none has.
    async fn send(&self, batch: SpanBatch, acks: Vec<Ack>) {
        let payload = Arc::new(Payload::new(batch));
        let mut full: Vec<&ExporterHandle> = self
            .exporters
            .iter()
            .filter(|exporter| !exporter.try_send(&payload, &acks))
            .collect();
        if !full.is_empty() && full.len() == self.exporters.len() {
            loop {
                let rooms = full
                    .iter()
                    .map(|exporter| Box::pin(exporter.room(&payload)));
                let (_, first, _) = select_all(rooms).await;
                if full[first].try_send(&payload, &acks) {
                    full.swap_remove(first);
                    break;
                }
            }
        }
        for exporter in full {
            exporter.shed(&payload);
        }
        acks.into_iter().for_each(Ack::confirm);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::config::{ExporterConfig, ExporterProtocol};
    use crate::exporter::{Delivered, ExportError, Exporter, queue};
    use crate::pipeline::{Accepted, Batcher, Pipeline};

    /// Records the span names of every batch it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<String>>>>);

    impl Exporter for Recorder {
        async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
            let names = crate::otlp::span_names(payload.request());
            self.0.lock().expect("lock").push(names);
            Ok(Delivered::default())
        }
    }

    fn batch(names: &[&str]) -> Accepted {
        let batch = SpanBatch::from_request(crate::otlp::request_named(names));
        Accepted {
            batch,
            ack: None,
            memory: Default::default(),
        }
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

    fn with_ack(names: &[&str]) -> (Accepted, crate::pipeline::AckWait) {
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
            queue::Tasks::default(),
        )
        .expect("persistent queue");
        let (tx, rx) = crate::pipeline::queue(8);
        // Both requests wait in the channel before the pipeline starts: they share a batch,
        // which leaves as soon as nothing else is waiting, long before the timeout.
        let (first, first_answer) = with_ack(&["a", "b"]);
        let (second, second_answer) = with_ack(&["c"]);
        tx.try_send(first).expect("send");
        tx.try_send(second).expect("send");
        let pipeline = Pipeline::new(
            Vec::new(),
            Batcher::new(100, 1 << 20),
            Duration::from_secs(3600),
            Fanout::new(vec![handle]),
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
            queue::Tasks::default(),
        )
        .expect("persistent queue");
        let (tx, rx) = crate::pipeline::queue(8);
        let pipeline = Pipeline::new(
            Vec::new(),
            Batcher::new(1, 1 << 20),
            Duration::from_secs(3600),
            Fanout::new(vec![handle]),
        );
        tokio::spawn(pipeline.run(rx));
        let (first, first_answer) = with_ack(&["taken, alone in an empty queue"]);
        let (second, second_answer) = with_ack(&["no room"]);
        tx.try_send(first).expect("send");
        tx.try_send(second).expect("send");
        drop(tx);
        assert_eq!(first_answer.await, Ok(Ok(())));
        assert_eq!(
            second_answer.await,
            Ok(Err(crate::pipeline::NotQueued::Full))
        );
    }

    /// Lets one export through per permit added; what waits stays in flight.
    #[derive(Clone)]
    struct Gate {
        open: Arc<tokio::sync::Semaphore>,
        passed: Recorder,
    }

    impl Gate {
        fn closed() -> Self {
            Self {
                open: Arc::new(tokio::sync::Semaphore::new(0)),
                passed: Recorder::default(),
            }
        }
    }

    impl Exporter for Gate {
        async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
            if let Ok(permit) = self.open.acquire().await {
                permit.forget();
            }
            self.passed.export(payload).await
        }
    }

    /// A memory queue of one span exporting one batch at a time: one batch in flight and
    /// one queued fill it.
    fn tiny(
        name: &str,
        exporter: impl Exporter,
        metrics: &Arc<crate::telemetry::Metrics>,
    ) -> ExporterHandle {
        let mut config = ExporterConfig::new(ExporterProtocol::Console, None);
        config.queue.max_spans = Some(1);
        config.queue.workers = 1;
        let tasks = queue::Tasks {
            metrics: Arc::clone(metrics),
            ..Default::default()
        };
        queue::spawn(name, exporter, &config, tasks)
            .expect("memory queue")
            .0
    }

    fn one_span(name: &str) -> SpanBatch {
        batch(&[name]).batch
    }

    fn shed(metrics: &crate::telemetry::Metrics, exporter: &str) -> u64 {
        let series = format!(
            "daena_agent_spans_dropped_total{{stage=\"exporter/{exporter}\",reason=\"queue_full\"}} "
        );
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_dead_exporter_sheds_its_own_load_and_never_delays_the_others() {
        let metrics = Arc::default();
        let live = Recorder::default();
        let (live_queue, _worker) = queue::spawn(
            "live",
            live.clone(),
            &ExporterConfig::new(ExporterProtocol::Console, None),
            queue::Tasks {
                metrics: Arc::clone(&metrics),
                ..Default::default()
            },
        )
        .expect("memory queue");
        let fanout = Fanout::new(vec![tiny("dead", Hung, &metrics), live_queue]);
        for i in 0..10 {
            let name = format!("span {i}");
            let sent = tokio::time::timeout(
                Duration::from_secs(10),
                fanout.send(one_span(&name), Vec::new()),
            )
            .await;
            assert!(sent.is_ok(), "batch {i} waited for the dead exporter");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while live.0.lock().expect("lock").len() < 10 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            live.0.lock().expect("lock").len(),
            10,
            "the live exporter got every batch"
        );
        assert_eq!(shed(&metrics, "live"), 0);
        // One batch hangs in flight, one may wait in the queue: the rest is shed, counted.
        let dead = shed(&metrics, "dead");
        assert!(
            (8..=9).contains(&dead),
            "{dead} spans shed by the dead exporter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_exporter_is_full_the_pipeline_waits_for_the_first_with_room() {
        let metrics = Arc::default();
        let (slow, slower) = (Gate::closed(), Gate::closed());
        let fanout = Fanout::new(vec![
            tiny("slow", slow.clone(), &metrics),
            tiny("slower", slower.clone(), &metrics),
        ]);
        fanout.send(one_span("in flight"), Vec::new()).await;
        // Let both workers take it: each exports one batch at a time, and the gates hold them.
        tokio::time::sleep(Duration::from_millis(10)).await;
        fanout.send(one_span("queued"), Vec::new()).await;
        let mut waiting = Box::pin(fanout.send(one_span("waits"), Vec::new()));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), &mut waiting)
                .await
                .is_err(),
            "both exporters are full: the pipeline waits (backpressure)"
        );
        slow.open.add_permits(1);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the first exporter with room takes the batch");
        slow.open.add_permits(10);
        slower.open.add_permits(10);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let names = |gate: &Gate| -> Vec<String> {
            gate.passed
                .0
                .lock()
                .expect("lock")
                .iter()
                .flatten()
                .cloned()
                .collect()
        };
        assert_eq!(names(&slow), ["in flight", "queued", "waits"]);
        assert_eq!(names(&slower), ["in flight", "queued"]);
        assert_eq!(shed(&metrics, "slow"), 0);
        assert_eq!(
            shed(&metrics, "slower"),
            1,
            "\"waits\" went to the first with room"
        );
    }
}

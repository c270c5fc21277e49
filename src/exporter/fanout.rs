//! The fan-out: the pipeline's [`Outlet`], handing each batch to every exporter's queue.

use std::sync::Arc;

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
    /// Gives the batch to every exporter, encoded at most once between them, each with its
    /// own share of the answers waiting for it.
    async fn send(&self, batch: SpanBatch, acks: Vec<Ack>) {
        let payload = Arc::new(Payload::new(batch));
        for exporter in &self.exporters {
            exporter.send(Arc::clone(&payload), acks.clone()).await;
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
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};
    use crate::pipeline::{Accepted, Batcher, Pipeline};

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
}

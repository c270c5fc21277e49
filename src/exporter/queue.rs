//! The per-exporter queue: a bounded channel and a task that exports up to `workers`
//! batches at once, each with retries, and drains on shutdown until told to abandon.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::retry::{RetryPolicy, deliver};
use super::{Exporter, Payload};
use crate::config::ExporterConfig;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

/// The pipeline's end of one exporter's queue.
#[derive(Clone)]
pub struct ExporterHandle {
    name: Arc<str>,
    tx: mpsc::Sender<Arc<Payload>>,
    metrics: Arc<Metrics>,
}

impl ExporterHandle {
    /// The exporter's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a batch, waiting while the queue is full: that wait is the backpressure
    /// that makes the receivers refuse new data instead of buffering without bound.
    pub async fn send(&self, payload: Arc<Payload>) {
        let spans = payload.spans() as u64;
        if self.tx.send(payload).await.is_err() {
            // The worker stopped because shutdown_timeout passed.
            self.metrics
                .dropped(&self.name, DropReason::Shutdown, spans);
        }
    }
}

/// Starts the queue task for `exporter`; it ends when every handle is dropped and the
/// queue is drained, or when `abandon` is cancelled (what is left is counted as dropped).
pub fn spawn<E: Exporter>(
    name: &str,
    exporter: E,
    config: &ExporterConfig,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
) -> (ExporterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(config.queue.max_batches.max(1));
    let name: Arc<str> = Arc::from(name);
    let handle = ExporterHandle {
        name: Arc::clone(&name),
        tx,
        metrics: Arc::clone(&metrics),
    };
    let worker = Worker {
        name,
        exporter: Arc::new(exporter),
        policy: Arc::new(RetryPolicy::from_config(&config.retry)),
        workers: config.queue.workers.max(1),
        metrics,
        abandon,
    };
    (handle, tokio::spawn(worker.run(rx)))
}

struct Worker<E> {
    name: Arc<str>,
    exporter: Arc<E>,
    policy: Arc<RetryPolicy>,
    workers: usize,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
}

impl<E: Exporter> Worker<E> {
    async fn run(self, mut rx: mpsc::Receiver<Arc<Payload>>) {
        let permits = Arc::new(Semaphore::new(self.workers));
        let mut in_flight = JoinSet::new();
        loop {
            let payload = tokio::select! {
                biased;
                () = self.abandon.cancelled() => break,
                payload = rx.recv() => match payload {
                    Some(payload) => payload,
                    None => break,
                },
            };
            let permit = tokio::select! {
                biased;
                () = self.abandon.cancelled() => {
                    self.metrics.dropped(&self.name, DropReason::Shutdown, payload.spans() as u64);
                    break;
                }
                permit = Arc::clone(&permits).acquire_owned() => permit,
            };
            let Ok(permit) = permit else { break };
            let (name, exporter, policy, metrics, abandon) = (
                Arc::clone(&self.name),
                Arc::clone(&self.exporter),
                Arc::clone(&self.policy),
                Arc::clone(&self.metrics),
                self.abandon.clone(),
            );
            in_flight.spawn(async move {
                let prepared = {
                    let (exporter, payload) = (Arc::clone(&exporter), Arc::clone(&payload));
                    tokio::task::spawn_blocking(move || exporter.prepare(&payload))
                };
                // A panic while encoding would surface again in export; nothing to add here.
                let _ = prepared.await;
                deliver(&name, &*exporter, &payload, &policy, &metrics, &abandon).await;
                drop(permit);
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
        rx.close();
        let mut abandoned = 0;
        while let Ok(payload) = rx.try_recv() {
            abandoned += payload.spans() as u64;
        }
        if abandoned > 0 {
            self.metrics
                .dropped(&self.name, DropReason::Shutdown, abandoned);
        }
    }
}

//! The writer task of a persistent queue: appends the batches the pipeline sends, a group
//! at a time under one fsync, then answers the clients waiting for them.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::refuse;
use crate::exporter::Payload;
use crate::exporter::persistent::PersistentQueue;
use crate::exporter::state::{ExporterState, Filled};
use crate::pipeline::{Ack, NotQueued};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

/// Batches the writer appends together under one fsync, at most.
const WRITE_GROUP: usize = 64;

/// A batch on its way into a persistent queue, with the clients waiting for it.
pub struct Appending {
    /// The batch.
    pub payload: Arc<Payload>,
    /// The shares of the answers of the clients whose spans it holds.
    pub acks: Vec<Ack>,
}

/// Appends what the pipeline sends to the persistent queue, a group at a time under one
/// fsync, then answers the clients; closes the queue when the pipeline is gone.
pub async fn write_loop(
    queue: Arc<PersistentQueue>,
    mut rx: mpsc::Receiver<Appending>,
    name: Arc<str>,
    metrics: Arc<Metrics>,
    state: Arc<ExporterState>,
) {
    let mut group = Vec::with_capacity(WRITE_GROUP);
    while rx.recv_many(&mut group, WRITE_GROUP).await > 0 {
        let payloads: Vec<Arc<Payload>> = group.iter().map(|a| Arc::clone(&a.payload)).collect();
        let writer = Arc::clone(&queue);
        let results = tokio::task::spawn_blocking(move || writer.append_group(&payloads))
            .await
            .unwrap_or_default();
        for (i, appending) in group.drain(..).enumerate() {
            let spans = appending.payload.spans() as u64;
            match results
                .get(i)
                .copied()
                .unwrap_or(Err(NotQueued::WriteFailed))
            {
                Ok(dropped) => {
                    if dropped > 0 {
                        metrics.dropped(&name, DropReason::QueueFull, dropped as u64);
                        state.filled(Filled::DroppingOldest);
                    } else {
                        state.maybe_drained();
                    }
                    appending.acks.into_iter().for_each(Ack::confirm);
                }
                Err(reason) => {
                    if reason == NotQueued::Full {
                        state.filled(Filled::RefusingClients);
                    }
                    refuse(&name, &metrics, appending.acks, reason, spans);
                }
            }
        }
    }
    queue.close();
}

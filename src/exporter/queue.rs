//! The per-exporter queue, bounded by spans and bytes, and a task that exports up to
//! `workers` batches at once, each with retries, and drains on shutdown until told to abandon.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::retry::{RetryPolicy, deliver};
use super::{Exporter, Payload};
use crate::config::{ExporterConfig, OnFull};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

/// The pipeline's end of one exporter's queue; the queue closes when the last clone drops.
#[derive(Clone)]
pub struct ExporterHandle {
    name: Arc<str>,
    queue: Arc<Closer>,
    metrics: Arc<Metrics>,
}

impl ExporterHandle {
    /// The exporter's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a batch. When the queue is full it waits (`on_full: block`): that wait is
    /// the backpressure that makes the receivers refuse new data instead of buffering
    /// without bound; or it drops the oldest batches (`drop_oldest`), counted.
    pub async fn send(&self, payload: Arc<Payload>) {
        let spans = payload.spans() as u64;
        match self.queue.0.push(payload).await {
            Ok(0) => {}
            Ok(dropped) => self
                .metrics
                .dropped(&self.name, DropReason::QueueFull, dropped),
            // The worker stopped because shutdown_timeout passed.
            Err(()) => self
                .metrics
                .dropped(&self.name, DropReason::Shutdown, spans),
        }
    }
}

/// Closes the queue when the last handle is dropped, so the worker drains and ends.
struct Closer(Arc<BoundedQueue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A FIFO of batches bounded by spans and encoded bytes (an empty queue takes any batch).
struct BoundedQueue {
    state: Mutex<QueueState>,
    /// Woken on every push, pop and close.
    changed: Notify,
    max_spans: usize,
    max_bytes: usize,
    on_full: OnFull,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Arc<Payload>>,
    spans: usize,
    bytes: usize,
    closed: bool,
}

impl BoundedQueue {
    fn new(max_spans: usize, max_bytes: usize, on_full: OnFull) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            changed: Notify::new(),
            max_spans: max_spans.max(1),
            max_bytes: max_bytes.max(1),
            on_full,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a batch; returns the spans dropped to make room, or `Err` once closed.
    async fn push(&self, payload: Arc<Payload>) -> Result<u64, ()> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    return Err(());
                }
                let fits = |state: &QueueState| {
                    state.batches.is_empty()
                        || (state.spans + payload.spans() <= self.max_spans
                            && state.bytes + payload.bytes() <= self.max_bytes)
                };
                let mut dropped = 0;
                if !fits(&state) && self.on_full == OnFull::DropOldest {
                    while !fits(&state) {
                        let Some(old) = state.batches.pop_front() else {
                            break;
                        };
                        state.spans -= old.spans();
                        state.bytes -= old.bytes();
                        dropped += old.spans() as u64;
                    }
                }
                if fits(&state) {
                    state.spans += payload.spans();
                    state.bytes += payload.bytes();
                    state.batches.push_back(payload);
                    drop(state);
                    self.changed.notify_waiters();
                    return Ok(dropped);
                }
            }
            changed.await;
        }
    }

    /// The oldest batch, waiting for one; `None` once closed and empty.
    async fn pop(&self) -> Option<Arc<Payload>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(payload) = state.batches.pop_front() {
                    state.spans -= payload.spans();
                    state.bytes -= payload.bytes();
                    drop(state);
                    self.changed.notify_waiters();
                    return Some(payload);
                }
                if state.closed {
                    return None;
                }
            }
            changed.await;
        }
    }

    /// Refuses further pushes; what is queued can still be popped.
    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Closes the queue and empties it; returns the spans it held.
    fn close_and_clear(&self) -> u64 {
        let mut state = self.lock();
        state.closed = true;
        let spans = state.batches.drain(..).map(|p| p.spans() as u64).sum();
        state.spans = 0;
        state.bytes = 0;
        drop(state);
        self.changed.notify_waiters();
        spans
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
    let queue = Arc::new(BoundedQueue::new(
        config.queue.max_spans,
        usize::try_from(config.queue.max_bytes.0).unwrap_or(usize::MAX),
        config.queue.on_full,
    ));
    let name: Arc<str> = Arc::from(name);
    let handle = ExporterHandle {
        name: Arc::clone(&name),
        queue: Arc::new(Closer(Arc::clone(&queue))),
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
    (handle, tokio::spawn(worker.run(queue)))
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
    async fn run(self, queue: Arc<BoundedQueue>) {
        let permits = Arc::new(Semaphore::new(self.workers));
        let mut in_flight = JoinSet::new();
        loop {
            let payload = tokio::select! {
                biased;
                () = self.abandon.cancelled() => break,
                payload = queue.pop() => match payload {
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
        let abandoned = queue.close_and_clear();
        if abandoned > 0 {
            self.metrics
                .dropped(&self.name, DropReason::Shutdown, abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::otlp::{Span, SpanBatch, request_of};

    fn payload(spans: usize) -> Arc<Payload> {
        let spans = (0..spans).map(|_| Span::default()).collect();
        Arc::new(Payload::new(SpanBatch::from_request(request_of(spans))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_blocks_until_a_batch_leaves() {
        let queue = Arc::new(BoundedQueue::new(10, usize::MAX, OnFull::Block));
        assert_eq!(queue.push(payload(6)).await, Ok(0));
        assert_eq!(queue.push(payload(4)).await, Ok(0));
        let blocked = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push(payload(3)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!blocked.is_finished(), "11 spans do not fit in 10");
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(6));
        assert_eq!(blocked.await.expect("join"), Ok(0));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(4));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(3));
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_too_and_an_empty_queue_takes_any_batch() {
        let one = payload(1).bytes();
        let queue = BoundedQueue::new(usize::MAX, one * 2, OnFull::DropOldest);
        assert_eq!(queue.push(payload(1)).await, Ok(0));
        assert_eq!(queue.push(payload(1)).await, Ok(0));
        assert_eq!(queue.push(payload(1)).await, Ok(1), "the oldest made room");
        let big = BoundedQueue::new(1, 1, OnFull::Block);
        assert_eq!(
            big.push(payload(5)).await,
            Ok(0),
            "larger than the bounds, but alone"
        );
    }

    #[tokio::test]
    async fn drop_oldest_sheds_as_many_old_batches_as_it_takes() {
        let queue = BoundedQueue::new(10, usize::MAX, OnFull::DropOldest);
        for spans in [3, 3, 3] {
            assert_eq!(queue.push(payload(spans)).await, Ok(0));
        }
        assert_eq!(
            queue.push(payload(7)).await,
            Ok(6),
            "two oldest batches dropped"
        );
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(3));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(7));
    }

    #[tokio::test]
    async fn a_closed_queue_hands_out_what_it_holds_then_ends() {
        let queue = BoundedQueue::new(10, usize::MAX, OnFull::Block);
        assert_eq!(queue.push(payload(2)).await, Ok(0));
        queue.close();
        assert_eq!(queue.push(payload(1)).await, Err(()));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(2));
        assert!(queue.pop().await.is_none());
        let held = BoundedQueue::new(10, usize::MAX, OnFull::Block);
        assert_eq!(held.push(payload(4)).await, Ok(0));
        assert_eq!(held.close_and_clear(), 4);
    }
}

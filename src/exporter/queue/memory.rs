//! An exporter's queue in memory: a FIFO of batches bounded by spans and encoded bytes,
//! which a full queue makes the pipeline wait on (`on_full: block`) or sheds the oldest of.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::config::OnFull;
use crate::exporter::Payload;
use crate::exporter::wait::wait_for;
use crate::telemetry::metrics::QueueDepth;

/// Closes the queue when the last handle is dropped, so the worker drains and ends.
pub struct Closer(pub Arc<BoundedQueue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What a queue did with a batch offered without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued; `dropped` older spans were shed to make room (`drop_oldest`).
    Taken {
        /// Spans of the oldest batches dropped.
        dropped: u64,
    },
    /// No room now (`on_full: block`).
    Full,
    /// The queue no longer takes batches: its worker stopped.
    Closed,
}

/// A FIFO of batches bounded by spans and encoded bytes (an empty queue takes any batch).
pub struct BoundedQueue {
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
    pub fn new(max_spans: usize, max_bytes: usize, on_full: OnFull) -> Self {
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

    /// Adds a batch if there is room now (making room with `drop_oldest`).
    pub fn offer(&self, payload: &Arc<Payload>) -> Offered {
        let mut state = self.lock();
        if state.closed {
            return Offered::Closed;
        }
        let mut dropped = 0;
        if !self.fits(&state, payload) && self.on_full == OnFull::DropOldest {
            while !self.fits(&state, payload) {
                let Some(old) = state.batches.pop_front() else {
                    break;
                };
                state.spans -= old.spans();
                state.bytes -= old.bytes();
                dropped += old.spans() as u64;
            }
        }
        if !self.fits(&state, payload) {
            return Offered::Full;
        }
        state.spans += payload.spans();
        state.bytes += payload.bytes();
        state.batches.push_back(Arc::clone(payload));
        drop(state);
        self.changed.notify_waiters();
        Offered::Taken { dropped }
    }

    /// Waits until `payload` fits, or the queue is closed.
    pub async fn room(&self, payload: &Payload) {
        wait_for(&self.changed, || {
            let state = self.lock();
            (state.closed || self.fits(&state, payload)).then_some(())
        })
        .await;
    }

    /// Adds a batch, waiting for room; returns the spans dropped to make room, or `Err`
    /// once closed.
    pub async fn push(&self, payload: Arc<Payload>) -> Result<u64, ()> {
        loop {
            match self.offer(&payload) {
                Offered::Taken { dropped } => return Ok(dropped),
                Offered::Closed => return Err(()),
                Offered::Full => self.room(&payload).await,
            }
        }
    }

    /// An empty queue takes any batch; otherwise both bounds must hold.
    fn fits(&self, state: &QueueState, payload: &Payload) -> bool {
        state.batches.is_empty()
            || (state.spans + payload.spans() <= self.max_spans
                && state.bytes + payload.bytes() <= self.max_bytes)
    }

    /// The oldest batch, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<Arc<Payload>> {
        wait_for(&self.changed, || {
            let mut state = self.lock();
            if let Some(payload) = state.batches.pop_front() {
                state.spans -= payload.spans();
                state.bytes -= payload.bytes();
                drop(state);
                self.changed.notify_waiters();
                return Some(Some(payload));
            }
            state.closed.then_some(None)
        })
        .await
    }

    /// Refuses further pushes; what is queued can still be popped.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Closes the queue and empties it; returns the spans it held.
    pub fn close_and_clear(&self) -> u64 {
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

impl QueueDepth for BoundedQueue {
    fn depth(&self) -> (u64, u64) {
        let state = self.lock();
        (state.spans as u64, state.bytes as u64)
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

//! What an exporter reports of itself: each attempt's outcome and whether its queue is
//! full, into its [`ExporterHealth`] (which `/readyz` reads), with one log line per change
//! of state, never one per batch or per retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::telemetry::health::{Change, ExporterHealth};
use crate::telemetry::metrics::QueueDepth;

/// How a full queue is handled, for the line logged when it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Other exporters took the batch: this one drops its new batches.
    Shedding,
    /// Every exporter is full: the pipeline waits and the receivers refuse retryably.
    Blocking,
    /// `on_full: drop_oldest` drops the oldest batches to make room.
    DroppingOldest,
    /// A persistent queue is full: the clients are refused retryably.
    RefusingClients,
}

/// One exporter's health reporting and state-change logs.
pub struct ExporterState {
    name: Arc<str>,
    health: Arc<ExporterHealth>,
    queue: Arc<dyn QueueDepth>,
    /// The queue's bounds in spans and bytes.
    bounds: (u64, u64),
    full: AtomicBool,
}

impl ExporterState {
    /// The state of exporter `name`, whose `queue` holds at most `bounds` (spans, bytes).
    pub fn new(
        name: Arc<str>,
        health: Arc<ExporterHealth>,
        queue: Arc<dyn QueueDepth>,
        bounds: (u64, u64),
    ) -> Self {
        Self {
            name,
            health,
            queue,
            bounds,
            full: AtomicBool::new(false),
        }
    }

    /// Notes a delivered batch; the end of an outage is logged with its length and the
    /// spans waiting in the queue at that moment.
    pub fn succeeded(&self) {
        if let Some(Change::Recovered { outage }) = self.health.succeeded() {
            let (queued_spans, _) = self.queue.depth();
            tracing::info!(
                exporter = %self.name,
                outage = ?outage,
                queued_spans,
                "Export recovered after {}: the backend accepts batches again ({queued_spans} spans waiting in the queue)",
                humantime::format_duration(round_to_millis(outage))
            );
        }
    }

    /// Notes a failed attempt; the start of an outage is logged with the whole error.
    pub fn failed(&self, error: &str) {
        if self.health.failed(error) == Some(Change::Failing) {
            tracing::warn!(
                exporter = %self.name,
                error,
                "Export failing; batches are retried as configured and /readyz answers 503 until an export succeeds"
            );
        }
    }

    /// Notes that the queue is full, handled as `how`; logged when it was not full before.
    pub fn filled(&self, how: Filled) {
        if self.full.swap(true, Ordering::Relaxed) {
            return;
        }
        self.health.set_queue_full(true);
        let name = &self.name;
        match how {
            Filled::Shedding => {
                tracing::warn!(exporter = %name, "The exporter's queue is full while other exporters have room: its new batches are dropped (counted as queue_full) until it catches up")
            }
            Filled::Blocking => {
                tracing::warn!(exporter = %name, "The exporter's queue is full and so are the others': the pipeline waits for room and the receivers refuse new spans retryably")
            }
            Filled::DroppingOldest => {
                tracing::warn!(exporter = %name, "The exporter's queue is full: its oldest batches are dropped to make room (on_full: drop_oldest, counted as queue_full)")
            }
            Filled::RefusingClients => {
                tracing::warn!(exporter = %name, "The exporter's persistent queue is full: clients are refused retryably until it drains")
            }
        }
    }

    /// Notes that the queue may have drained: once it holds half its bounds or less after
    /// being full, it is no longer full (the margin keeps a queue at its bound from
    /// logging a pair of lines per batch).
    pub fn maybe_drained(&self) {
        if !self.full.load(Ordering::Relaxed) {
            return;
        }
        let (spans, bytes) = self.queue.depth();
        let (max_spans, max_bytes) = self.bounds;
        if spans.saturating_mul(2) > max_spans || bytes.saturating_mul(2) > max_bytes {
            return;
        }
        if self.full.swap(false, Ordering::Relaxed) {
            self.health.set_queue_full(false);
            tracing::info!(exporter = %self.name, queued_spans = spans, "The exporter's queue has room again; it takes new batches");
        }
    }
}

/// A duration shown to the millisecond.
fn round_to_millis(duration: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::telemetry::health::Health;

    struct Depth(AtomicU64);

    impl QueueDepth for Depth {
        fn depth(&self) -> (u64, u64) {
            let spans = self.0.load(Ordering::Relaxed);
            (spans, spans * 10)
        }
    }

    #[test]
    fn a_full_queue_is_full_until_it_holds_half_its_bounds() {
        let health = Health::default();
        let depth = Arc::new(Depth(AtomicU64::new(100)));
        let state = ExporterState::new(
            Arc::from("tempo"),
            health.register("tempo"),
            Arc::clone(&depth) as Arc<dyn QueueDepth>,
            (100, 1 << 20),
        );
        state.maybe_drained();
        assert!(!health.exporters()[0].queue_full);
        state.filled(Filled::Blocking);
        assert!(health.exporters()[0].queue_full);
        depth.0.store(51, Ordering::Relaxed);
        state.maybe_drained();
        assert!(health.exporters()[0].queue_full, "51 of 100 is over half");
        depth.0.store(50, Ordering::Relaxed);
        state.maybe_drained();
        assert!(!health.exporters()[0].queue_full);
    }
}

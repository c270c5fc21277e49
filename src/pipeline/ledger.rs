//! What the pipeline holds that clients were told is accepted, kept up to date as it
//! goes, so that a failure of the agent can say exactly what it lost.

use std::sync::atomic::{AtomicU64, Ordering};

/// Acknowledged spans in the pipeline's memory: queued for it, or held by it (in hand, in a
/// stage, in the batcher). Spans whose clients still wait for a persistent queue are not
/// in it: if they are lost, their clients are refused and send them again.
#[derive(Debug, Default)]
pub struct Ledger {
    queued: AtomicU64,
    held: AtomicU64,
}

impl Ledger {
    /// A receiver is handing over `spans` its client will be told are accepted.
    pub fn queue(&self, spans: u64) {
        self.queued.fetch_add(spans, Ordering::Relaxed);
    }

    /// The hand-over failed (the client is refused), or the pipeline took them.
    pub fn taken(&self, spans: u64) {
        self.queued.fetch_sub(spans, Ordering::Relaxed);
    }

    /// The pipeline now holds `spans` acknowledged spans.
    pub fn hold(&self, spans: u64) {
        self.held.store(spans, Ordering::Relaxed);
    }

    /// Acknowledged spans in the pipeline's memory now: what a failure loses.
    pub fn in_memory(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) + self.held.load(Ordering::Relaxed)
    }
}

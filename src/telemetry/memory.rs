//! Memory limits: the [`MemoryBudget`] the receivers admit requests against, and the
//! [`MemoryLimiter`] watching the resident set as a backstop.
//!
//! The budget accounts for what a request costs while the agent holds it (its body being
//! read and decompressed, its decoded form estimated before decoding, until the pipeline
//! has batched it), so it measures exactly what admission controls and frees itself when
//! requests finish. The resident set also counts what the allocator keeps after a spike,
//! which no refusal can lower: the limiter refuses above the soft limit only as a backstop,
//! for memory the budget does not see.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// Bytes that requests in the agent's hands may hold at once, summed over them.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    /// Bytes reserved now; the gauge `/metrics` shows.
    used: Gauge<u64, AtomicU64>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Self::counted_in(limit, Gauge::default())
    }

    /// A budget of `limit` bytes whose use is kept in `used` (shared with the metrics).
    pub(super) fn counted_in(limit: u64, used: Gauge<u64, AtomicU64>) -> Arc<Self> {
        used.set(0);
        Arc::new(Self { limit, used })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.get()
    }

    /// An empty reservation, to grow as a request's bytes arrive.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Some(Arc::clone(self)),
            bytes: 0,
        }
    }

    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .inner()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.dec_by(bytes);
    }
}

/// One request's share of the [`MemoryBudget`], given back when it is dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<Arc<MemoryBudget>>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `bytes` more, if the budget has them; otherwise holds what it held.
    pub fn grow(&mut self, bytes: u64) -> bool {
        self.resize(self.bytes.saturating_add(bytes))
    }

    /// Holds `total` bytes from now: shrinking always succeeds, growing when the budget has
    /// the difference (otherwise it holds what it held).
    pub fn resize(&mut self, total: u64) -> bool {
        let Some(budget) = &self.budget else {
            self.bytes = total;
            return true;
        };
        if total > self.bytes {
            if !budget.try_take(total - self.bytes) {
                return false;
            }
        } else {
            budget.give_back(self.bytes - total);
        }
        self.bytes = total;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.bytes);
        }
    }
}

/// How often the resident set is read.
const INTERVAL: Duration = Duration::from_millis(100);

/// Shared between the watcher and the receivers.
#[derive(Debug)]
pub struct MemoryLimiter {
    soft: u64,
    hard: u64,
    over: AtomicBool,
}

impl MemoryLimiter {
    /// A limiter refusing above `soft` bytes; `hard` is where it logs an error.
    pub fn new(soft: u64, hard: u64) -> Self {
        Self {
            soft,
            hard,
            over: AtomicBool::new(false),
        }
    }

    /// Whether the receivers should refuse now.
    pub fn over_limit(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// The soft limit in bytes.
    pub fn soft(&self) -> u64 {
        self.soft
    }

    /// Takes a reading of the resident set. Refusing starts at `soft` and stops below 90%
    /// of it, so the receivers do not flap at the line.
    pub fn update(&self, rss: u64) {
        let was_over = self.over.load(Ordering::Relaxed);
        let over = if was_over {
            rss >= self.soft / 10 * 9
        } else {
            rss >= self.soft
        };
        if over != was_over {
            self.over.store(over, Ordering::Relaxed);
            if over {
                tracing::warn!(
                    rss_mib = rss >> 20,
                    soft_mib = self.soft >> 20,
                    "Above the soft memory limit: refusing new spans until the queues drain"
                );
            } else {
                tracing::info!(
                    rss_mib = rss >> 20,
                    "Back under the soft memory limit: accepting spans again"
                );
            }
        }
        if rss >= self.hard {
            tracing::error!(
                rss_mib = rss >> 20,
                hard_mib = self.hard >> 20,
                "Above the hard memory limit"
            );
        }
    }

    /// A limiter that has read the resident set once (so the first request already sees
    /// it) and keeps reading it every 100 ms on a supervised task until `stop`.
    pub fn start(
        soft: u64,
        hard: u64,
        stop: CancellationToken,
        supervisor: &Supervisor,
    ) -> Arc<Self> {
        let limiter = Arc::new(Self::new(soft, hard));
        if let Some(rss) = resident_bytes() {
            limiter.update(rss);
        }
        let watched = Arc::clone(&limiter);
        supervisor.spawn_service("memory limiter", async move {
            let mut ticker = tokio::time::interval(INTERVAL);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if let Some(rss) = resident_bytes() {
                            watched.update(rss);
                        }
                    }
                    () = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                }
            }
        });
        limiter
    }
}

/// This process's resident set in bytes.
pub fn resident_bytes() -> Option<u64> {
    proc_status_kib("self", "VmRSS").map(|kib| kib * 1024)
}

/// A `kB` field (`VmRSS`, `VmHWM`, …) of `/proc/<pid>/status`; `pid` may be `self`.
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reservation();
        assert!(first.grow(60));
        let mut second = budget.reservation();
        assert!(!second.grow(41), "60 + 41 is over 100");
        assert_eq!(second.bytes(), 0, "a failed grow holds nothing more");
        assert!(second.grow(40));
        assert_eq!(budget.used(), 100);
        assert!(first.resize(10), "shrinking always succeeds");
        assert_eq!(budget.used(), 50);
        drop(second);
        assert_eq!(budget.used(), 10);
        drop(first);
        assert_eq!(budget.used(), 0);
        assert!(
            !budget.reservation().grow(101),
            "more than the whole budget"
        );
        assert!(Reservation::default().grow(u64::MAX), "without a budget");
    }

    #[test]
    fn refusing_starts_at_soft_and_stops_below_ninety_percent_of_it() {
        let limiter = MemoryLimiter::new(100 << 20, 120 << 20);
        let readings = [
            (50, false),
            (99, false),
            (100, true),
            (95, true),
            (90, true),
            (89, false),
            (130, true),
        ];
        for (mib, over) in readings {
            limiter.update(mib << 20);
            assert_eq!(limiter.over_limit(), over, "at {mib} MiB");
        }
    }

    #[test]
    fn the_resident_set_is_readable_here() {
        let rss = resident_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20, "{rss}");
    }
}

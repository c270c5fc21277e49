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
use std::time::{Duration, Instant};

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
    above_hard: AtomicBool,
}

impl MemoryLimiter {
    /// A limiter refusing above `soft` bytes; `hard` is where it logs an error.
    pub fn new(soft: u64, hard: u64) -> Self {
        Self {
            soft,
            hard,
            over: AtomicBool::new(false),
            above_hard: AtomicBool::new(false),
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
        let was_above_hard = self.above_hard.swap(rss >= self.hard, Ordering::Relaxed);
        if rss >= self.hard && !was_above_hard {
            tracing::error!(
                rss_mib = rss >> 20,
                hard_mib = self.hard >> 20,
                "Above the hard memory limit"
            );
        }
    }

    /// A limiter that has read the resident set once (so the first request already sees
    /// it) and keeps reading it every 100 ms on a supervised task until `stop`; `release`,
    /// if given, hands the allocator's free memory back to the system once the requests
    /// holding `budget` are done (see [`Release`]).
    pub fn start(
        soft: u64,
        hard: u64,
        release: Option<fn()>,
        budget: Arc<MemoryBudget>,
        stop: CancellationToken,
        supervisor: &Supervisor,
    ) -> Arc<Self> {
        let limiter = Arc::new(Self::new(soft, hard));
        let first = resident_bytes();
        if let Some(rss) = first {
            limiter.update(rss);
        }
        let mut release = release.map(|call| Release::new(call, first.unwrap_or(0)));
        let watched = Arc::clone(&limiter);
        supervisor.spawn_service("memory limiter", async move {
            let mut ticker = tokio::time::interval(INTERVAL);
            // A late reading is read once, not followed by the readings it missed.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let Some(mut rss) = resident_bytes() else { continue };
                        if let Some(release) = release.as_mut()
                            && release.due(rss, soft, budget.used(), Instant::now())
                        {
                            rss = release.run(rss).await;
                        }
                        watched.update(rss);
                    }
                    () = stop.cancelled() => return Ok::<(), std::convert::Infallible>(()),
                }
            }
        });
        limiter
    }
}

/// Growth of the resident set since the last release that makes another one due.
const RELEASE_GROWTH: u64 = 32 << 20;
/// The least time between two releases.
const RELEASE_INTERVAL: Duration = Duration::from_secs(1);

/// Hands the allocator's free memory back to the system after a spike, so the resident
/// set, which the backstop and a container's limit watch, follows what the agent holds.
///
/// glibc keeps what the agent frees: after a burst the resident set stays at its peak
/// though nothing is held, and a limiter reading it would refuse forever. A release is due
/// once the resident set has grown by [`RELEASE_GROWTH`] since the last one and the
/// requests that grew it are done (the budget is idle), or when it reaches the soft limit
/// (before refusing on it); at most every [`RELEASE_INTERVAL`].
struct Release {
    call: fn(),
    /// The resident set after the last release.
    floor: u64,
    last: Option<Instant>,
}

impl Release {
    fn new(call: fn(), rss: u64) -> Self {
        Self {
            call,
            floor: rss,
            last: None,
        }
    }

    /// Whether to release now, at `rss` against the `soft` limit, with `budget_used`
    /// bytes reserved by requests in hand.
    fn due(&self, rss: u64, soft: u64, budget_used: u64, now: Instant) -> bool {
        let spike_over = budget_used == 0 && rss >= self.floor.saturating_add(RELEASE_GROWTH);
        (spike_over || rss >= soft) && self.last.is_none_or(|last| now >= last + RELEASE_INTERVAL)
    }

    /// Releases on a blocking thread (it walks the allocator's free lists) and returns the
    /// resident set after it.
    async fn run(&mut self, before: u64) -> u64 {
        let started = Instant::now();
        let _ = tokio::task::spawn_blocking(self.call).await;
        let after = resident_bytes().unwrap_or(before);
        tracing::debug!(
            before_mib = before >> 20,
            after_mib = after >> 20,
            took_ms = started.elapsed().as_millis() as u64,
            "Handed freed memory back to the system"
        );
        self.floor = after;
        self.last = Some(Instant::now());
        after
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
    fn a_release_is_due_once_a_spike_is_over_or_at_the_soft_limit() {
        const MIB: u64 = 1 << 20;
        let start = Instant::now();
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut release = Release::new(|| {}, 20 * MIB);
        assert!(
            !release.due(51 * MIB, 256 * MIB, 0, at(0.0)),
            "grown by less than 32 MiB"
        );
        assert!(
            !release.due(600 * MIB, 700 * MIB, 1, at(0.0)),
            "requests still hold the budget"
        );
        assert!(
            release.due(600 * MIB, 700 * MIB, 0, at(0.0)),
            "the spike is over"
        );
        release.floor = 35 * MIB;
        release.last = Some(at(0.0));
        assert!(
            !release.due(300 * MIB, 256 * MIB, 0, at(0.5)),
            "at most every second"
        );
        assert!(
            release.due(300 * MIB, 256 * MIB, 1, at(1.0)),
            "at the soft limit, busy or not"
        );
        assert!(
            !release.due(66 * MIB, 256 * MIB, 0, at(5.0)),
            "from the new floor"
        );
        assert!(release.due(67 * MIB, 256 * MIB, 0, at(5.0)));
    }

    #[test]
    fn the_resident_set_is_readable_here() {
        let rss = resident_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20, "{rss}");
    }
}

//! The memory limiter: above the soft limit the receivers refuse new data (retryably), so
//! the client keeps it and the agent's queues drain before it takes more.
//!
//! It watches the process's resident set (`VmRSS`) rather than counting allocations: that
//! is what a container's memory limit kills on. On systems without `/proc` it never trips.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

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

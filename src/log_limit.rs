//! Limits a log line that can repeat per request or per connection: the first occurrence
//! is logged, then at most one line per interval, saying how many occurrences went
//! unlogged since the previous line. The counters in `/metrics` keep the totals.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The interval of the receivers' and the pipeline's repeated warnings.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// One repeating log line's limit; `check` before logging it.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    state: Mutex<Logged>,
}

/// When the line was last logged, and how often it occurred since without being logged.
#[derive(Debug)]
struct Logged {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(Logged {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Records an occurrence: `Some(suppressed)` when it is to be logged, `suppressed`
    /// being the occurrences left unlogged since the previous line, or `None` when it is
    /// only counted.
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut logged = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match logged.last {
            Some(last) if now.duration_since(last) < self.interval => {
                logged.suppressed += 1;
                None
            }
            _ => {
                logged.last = Some(now);
                Some(std::mem::take(&mut logged.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_occurrence_is_logged_then_one_line_per_interval_with_the_count() {
        let limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.check(), Some(0), "the first one is logged");
        for _ in 0..500 {
            assert_eq!(limit.check(), None);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(limit.check(), None, "still within the interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limit.check(), Some(501), "logged, saying how many were not");
        assert_eq!(limit.check(), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limit.check(), Some(1));
    }
}

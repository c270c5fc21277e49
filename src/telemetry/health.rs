//! What the agent knows of its exporters' health: for each, whether it is failing and since
//! when, its last error, and whether its queue is full. `/readyz`, the status page and the
//! log lines of state changes all read it from here.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How long a failed attempt keeps its exporter failing without another attempt: retries
/// come at least every `retry.max_interval` (30 s by default) while an outage lasts, so an
/// exporter that stopped trying (its batches dropped, nothing new to send) is ready again.
pub const FAILING_WINDOW: Duration = Duration::from_secs(120);

use serde::Serialize;

/// Every exporter's health, in the order they were registered.
#[derive(Debug, Default)]
pub struct Health {
    exporters: RwLock<Vec<Arc<ExporterHealth>>>,
}

impl Health {
    /// Registers an exporter (replacing one of the same name) and returns its record.
    pub fn register(&self, name: &str) -> Arc<ExporterHealth> {
        let health = Arc::new(ExporterHealth::new(name));
        let mut exporters = self.exporters.write().unwrap_or_else(|e| e.into_inner());
        exporters.retain(|e| e.name != name);
        exporters.push(Arc::clone(&health));
        health
    }

    /// Forgets an exporter that ended for good (a load balancer's removed backend), so
    /// its last failure does not keep the agent unready.
    pub fn unregister(&self, name: &str) {
        let mut exporters = self.exporters.write().unwrap_or_else(|e| e.into_inner());
        exporters.retain(|e| e.name != name);
    }

    /// Each exporter's health now.
    pub fn exporters(&self) -> Vec<ExporterStatus> {
        let exporters = self.exporters.read().unwrap_or_else(|e| e.into_inner());
        exporters.iter().map(|e| e.status()).collect()
    }
}

/// One exporter's health, updated by its workers and queue.
#[derive(Debug)]
pub struct ExporterHealth {
    name: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current outage began (the first failure after a success), if failing.
    failing_since: Option<(Instant, SystemTime)>,
    /// When the last attempt failed.
    last_failure: Option<Instant>,
    last_error: Option<(String, SystemTime)>,
    last_success: Option<SystemTime>,
    queue_full: bool,
}

/// A change of an exporter's state, for the one log line it deserves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The first failed attempt after a success (or since start).
    Failing,
    /// The first success after failing, which lasted this long.
    Recovered {
        /// From the first failure to this success.
        outage: Duration,
    },
}

impl ExporterHealth {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: Mutex::default(),
        }
    }

    /// The exporter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Notes a delivered batch; `Some` when it ends an outage.
    pub fn succeeded(&self) -> Option<Change> {
        let mut state = self.lock();
        state.last_success = Some(SystemTime::now());
        state
            .failing_since
            .take()
            .map(|(since, _)| Change::Recovered {
                outage: since.elapsed(),
            })
    }

    /// Notes a failed attempt with its `error` (the whole chain, as logged); `Some` when
    /// it begins an outage.
    pub fn failed(&self, error: &str) -> Option<Change> {
        let mut state = self.lock();
        let now = SystemTime::now();
        state.last_error = Some((error.to_owned(), now));
        state.last_failure = Some(Instant::now());
        if state.failing_since.is_some() {
            return None;
        }
        state.failing_since = Some((Instant::now(), now));
        Some(Change::Failing)
    }

    /// Notes whether the exporter's queue is full now.
    pub fn set_queue_full(&self, full: bool) {
        self.lock().queue_full = full;
    }

    /// The exporter's health now: failing while its outage lasts and its last failed
    /// attempt is less than [`FAILING_WINDOW`] old.
    pub fn status(&self) -> ExporterStatus {
        self.status_at(Instant::now())
    }

    fn status_at(&self, now: Instant) -> ExporterStatus {
        let state = self.lock();
        let recent = state
            .last_failure
            .is_some_and(|at| now.saturating_duration_since(at) < FAILING_WINDOW);
        ExporterStatus {
            exporter: self.name.clone(),
            failing_since: state
                .failing_since
                .filter(|_| recent)
                .map(|(_, at)| rfc3339(at)),
            last_error: state.last_error.as_ref().map(|(error, _)| error.clone()),
            last_error_at: state.last_error.as_ref().map(|&(_, at)| rfc3339(at)),
            last_success_at: state.last_success.map(rfc3339),
            queue_full: state.queue_full,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain values, each written whole: a panic cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One exporter's health as `/readyz` and the status page show it; times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExporterStatus {
    /// The exporter's name.
    pub exporter: String,
    /// When its current outage began; `None` while it delivers.
    pub failing_since: Option<String>,
    /// Its last error, even after it recovered.
    pub last_error: Option<String>,
    /// When that error happened.
    pub last_error_at: Option<String>,
    /// When it last delivered a batch.
    pub last_success_at: Option<String>,
    /// Whether its queue is full now.
    pub queue_full: bool,
}

impl ExporterStatus {
    /// Whether the exporter stops the agent being ready: failing, or its queue full.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some() || self.queue_full
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_begins_at_the_first_failure_and_ends_at_the_next_success() {
        let health = Health::default();
        let tempo = health.register("tempo");
        assert_eq!(tempo.succeeded(), None, "no outage to end");
        assert_eq!(tempo.failed("connection refused"), Some(Change::Failing));
        assert_eq!(
            tempo.failed("connection refused"),
            None,
            "still the same outage"
        );
        let status = &health.exporters()[0];
        assert!(status.failing());
        assert_eq!(status.last_error.as_deref(), Some("connection refused"));
        assert!(
            status
                .failing_since
                .as_deref()
                .is_some_and(|t| t.ends_with('Z'))
        );

        assert!(matches!(tempo.succeeded(), Some(Change::Recovered { .. })));
        let status = &health.exporters()[0];
        assert!(!status.failing());
        assert_eq!(
            status.last_error.as_deref(),
            Some("connection refused"),
            "kept after recovering"
        );
        tempo.set_queue_full(true);
        assert!(health.exporters()[0].failing(), "a full queue is not ready");
    }

    #[test]
    fn an_exporter_that_stopped_trying_is_not_failing_after_the_window() {
        let health = Health::default();
        let tempo = health.register("tempo");
        let _ = tempo.failed("connection refused");
        let now = Instant::now();
        assert!(tempo.status_at(now + FAILING_WINDOW / 2).failing());
        let later = tempo.status_at(now + FAILING_WINDOW + Duration::from_secs(1));
        assert!(!later.failing(), "no attempt for the whole window");
        assert_eq!(later.last_error.as_deref(), Some("connection refused"));
        let _ = tempo.failed("connection refused");
        assert!(tempo.status().failing(), "a new attempt failed");
    }

    #[test]
    fn registering_a_name_again_replaces_its_record() {
        let health = Health::default();
        health.register("tempo").set_queue_full(true);
        health.register("jaeger");
        health.register("tempo");
        let names: Vec<_> = health
            .exporters()
            .into_iter()
            .map(|e| (e.exporter, e.queue_full))
            .collect();
        assert_eq!(
            names,
            [("jaeger".to_owned(), false), ("tempo".to_owned(), false)]
        );
    }
}

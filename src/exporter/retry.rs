//! Retry discipline: exponential backoff with jitter, bounded by `retry.max_elapsed`,
//! honouring the delay a backend asks for, and the OTLP rules for what is retryable.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::ExporterState;
use super::{ExportError, Exporter, Payload};
use crate::config::RetryConfig;
use crate::log_limit::{LogLimit, REPEAT_INTERVAL};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

// Lines that can come once per batch (a backend refusing every batch, say, on a 401): the
// first is logged, then one per interval with the count left out; the drop counters keep
// every batch. (`suppressed` counts across exporters; the metrics have them by exporter.)
static PARTIAL_LOG: LogLimit = LogLimit::new(REPEAT_INTERVAL);
static REFUSED_LOG: LogLimit = LogLimit::new(REPEAT_INTERVAL);
static EXHAUSTED_LOG: LogLimit = LogLimit::new(REPEAT_INTERVAL);

/// How an exporter retries a failed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    enabled: bool,
    initial_interval: Duration,
    max_interval: Duration,
    max_elapsed: Duration,
    multiplier: f64,
}

impl RetryPolicy {
    /// The policy an exporter's `retry` config describes.
    pub fn from_config(config: &RetryConfig) -> Self {
        Self {
            enabled: config.enabled,
            initial_interval: config.initial_interval,
            max_interval: config.max_interval,
            max_elapsed: config.max_elapsed,
            multiplier: config.multiplier.max(1.0),
        }
    }

    /// The backoff before retry number `attempt` (0-based), without jitter.
    fn base_delay(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.powi(attempt.min(64) as i32);
        self.initial_interval
            .mul_f64(factor.min(1e6))
            .min(self.max_interval)
    }

    /// The backoff before retry `attempt`, spread by ±50% so that agents that failed
    /// together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay(attempt)
            .mul_f64(rand::rng().random_range(0.5..1.5))
    }

    /// The wait before retry `attempt` of something first tried at `started`: the delay
    /// the backend `asked` for, else the backoff; `None` when retries are off or the
    /// retry would come after `max_elapsed`.
    pub fn next_retry(
        &self,
        attempt: u32,
        asked: Option<Duration>,
        started: Instant,
    ) -> Option<Duration> {
        let delay = asked.unwrap_or_else(|| self.delay(attempt));
        (self.enabled && started.elapsed() + delay <= self.max_elapsed).then_some(delay)
    }
}

/// How a batch's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The backend has it; `retried` says whether it took more than one attempt.
    Sent {
        /// Whether an attempt failed first.
        retried: bool,
    },
    /// Refused for good or out of retries: dropped and counted.
    Dropped,
    /// The agent stopped first; the caller counts or keeps the batch.
    Abandoned,
}

/// Where an exporter's attempts are counted and reported.
pub struct Reporting<'a> {
    /// The exporter's name.
    pub name: &'a str,
    /// The agent's counters.
    pub metrics: &'a Metrics,
    /// The exporter's health, told every attempt's outcome.
    pub state: &'a ExporterState,
}

/// Exports `payload` until it is delivered, refused, out of retries or abandoned,
/// counting every outcome but abandonment, which the caller handles, and reporting each
/// attempt's outcome to the exporter's health.
pub async fn deliver<E: Exporter>(
    exporter: &E,
    payload: &Payload,
    policy: &RetryPolicy,
    reporting: &Reporting<'_>,
    abandon: &CancellationToken,
) -> Delivery {
    let Reporting {
        name,
        metrics,
        state,
    } = *reporting;
    let spans = payload.spans() as u64;
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        let attempt_started = Instant::now();
        let result = tokio::select! {
            biased;
            () = abandon.cancelled() => return Delivery::Abandoned,
            result = exporter.export(payload) => result,
        };
        metrics.export_took(name, attempt_started.elapsed());
        match &result {
            // Handed whole to another exporter: the backend was not asked.
            Ok(delivered) if delivered.handed_on >= spans => {}
            Ok(_) => state.succeeded(),
            Err(error) => state.failed(&error.to_string()),
        }
        let (message, retry_after) = match result {
            Ok(delivered) => {
                let rejected = delivered.rejected_spans.min(spans);
                let handed_on = delivered.handed_on.min(spans - rejected);
                metrics.exported(name, spans - rejected - handed_on);
                if rejected > 0 || !delivered.message.is_empty() {
                    metrics.dropped(name, DropReason::PartiallyRejected, rejected);
                    if let Some(suppressed) = PARTIAL_LOG.check() {
                        tracing::warn!(exporter = name, rejected_spans = rejected, backend_message = %delivered.message, suppressed, "Backend accepted the batch but rejected some spans");
                    }
                }
                return Delivery::Sent {
                    retried: attempt > 0,
                };
            }
            Err(ExportError::Permanent { message }) => {
                metrics.export_failed(name, false);
                metrics.dropped(name, DropReason::Rejected, spans);
                if let Some(suppressed) = REFUSED_LOG.check() {
                    tracing::error!(exporter = name, spans, error = %message, suppressed, "Backend refused the batch; dropped without retry");
                }
                return Delivery::Dropped;
            }
            Err(ExportError::Retryable {
                message,
                retry_after,
            }) => (message, retry_after),
        };
        let Some(delay) = policy.next_retry(attempt, retry_after, started) else {
            metrics.export_failed(name, false);
            metrics.dropped(name, DropReason::RetriesExhausted, spans);
            if let Some(suppressed) = EXHAUSTED_LOG.check() {
                tracing::error!(exporter = name, spans, error = %message, attempts = attempt + 1, suppressed, "Export failed and retries are exhausted; batch dropped");
            }
            return Delivery::Dropped;
        };
        metrics.export_failed(name, true);
        // The outage was logged once when it began: a line per retry would only repeat it.
        tracing::debug!(exporter = name, error = %message, retry_in = ?delay, "Export failed; will retry");
        tokio::select! {
            biased;
            () = abandon.cancelled() => return Delivery::Abandoned,
            () = tokio::time::sleep(delay) => {}
        }
        attempt += 1;
    }
}

/// Classifies an OTLP/HTTP answer: only 429, 502, 503 and 504 are retried.
pub fn classify_http(status: u16, retry_after: Option<Duration>, message: String) -> ExportError {
    match status {
        429 | 502 | 503 | 504 => ExportError::Retryable {
            message,
            retry_after,
        },
        _ => ExportError::Permanent { message },
    }
}

/// Classifies a gRPC status per the OTLP specification; `RESOURCE_EXHAUSTED` is retried
/// only when the server sent `RetryInfo`.
pub fn classify_grpc(
    code: tonic::Code,
    retry_info: Option<Duration>,
    message: String,
) -> ExportError {
    use tonic::Code;
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => ExportError::Retryable {
            message,
            retry_after: retry_info,
        },
        Code::ResourceExhausted if retry_info.is_some() => ExportError::Retryable {
            message,
            retry_after: retry_info,
        },
        _ => ExportError::Permanent { message },
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::exporter::Delivered;
    use crate::otlp::SpanBatch;

    #[test]
    fn http_statuses_follow_the_otlp_table() {
        for status in [429, 502, 503, 504] {
            assert!(
                matches!(
                    classify_http(status, None, String::new()),
                    ExportError::Retryable { .. }
                ),
                "{status} must be retried"
            );
        }
        for status in [400, 401, 403, 404, 413, 500, 501] {
            assert!(
                matches!(
                    classify_http(status, None, String::new()),
                    ExportError::Permanent { .. }
                ),
                "{status} must not be retried"
            );
        }
    }

    #[test]
    fn grpc_codes_follow_the_otlp_table() {
        use tonic::Code::*;
        for code in [
            Cancelled,
            DeadlineExceeded,
            Aborted,
            OutOfRange,
            Unavailable,
            DataLoss,
        ] {
            assert!(
                matches!(
                    classify_grpc(code, None, String::new()),
                    ExportError::Retryable { .. }
                ),
                "{code:?}"
            );
        }
        for code in [
            Unknown,
            InvalidArgument,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            Unauthenticated,
            FailedPrecondition,
            Unimplemented,
            Internal,
            ResourceExhausted,
        ] {
            assert!(
                matches!(
                    classify_grpc(code, None, String::new()),
                    ExportError::Permanent { .. }
                ),
                "{code:?}"
            );
        }
        assert_eq!(
            classify_grpc(
                ResourceExhausted,
                Some(Duration::from_secs(3)),
                "slow down".into()
            ),
            ExportError::Retryable {
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).expect("date");
        assert!(parsed > Duration::from_secs(55) && parsed <= Duration::from_secs(60));
        assert_eq!(parse_retry_after("soon"), None);
    }

    fn policy(max_elapsed: Duration) -> RetryPolicy {
        RetryPolicy {
            enabled: true,
            initial_interval: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            max_elapsed,
            multiplier: 2.0,
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_bounded_jitter() {
        let p = policy(Duration::from_secs(300));
        assert_eq!(p.base_delay(0), Duration::from_secs(1));
        assert_eq!(p.base_delay(3), Duration::from_secs(8));
        assert_eq!(p.base_delay(20), Duration::from_secs(30));
        for _ in 0..100 {
            let d = p.delay(2);
            assert!(
                d >= Duration::from_secs(2) && d < Duration::from_secs(6),
                "{d:?}"
            );
        }
    }

    /// Answers with the scripted results in order, recording when each call came.
    struct Scripted {
        answers: Mutex<Vec<Result<Delivered, ExportError>>>,
        calls: Mutex<Vec<Instant>>,
    }

    impl Exporter for Scripted {
        async fn export(&self, _: &Payload) -> Result<Delivered, ExportError> {
            self.calls.lock().expect("lock").push(Instant::now());
            self.answers.lock().expect("lock").remove(0)
        }
    }

    fn scripted(answers: Vec<Result<Delivered, ExportError>>) -> Scripted {
        Scripted {
            answers: Mutex::new(answers),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The health of exporter `t`, and the state its attempts are reported to.
    fn exporter_state() -> (crate::telemetry::health::Health, ExporterState) {
        let health = crate::telemetry::health::Health::default();
        let state = ExporterState::new(
            std::sync::Arc::from("t"),
            health.register("t"),
            std::sync::Arc::new(crate::exporter::queue::memory::BoundedQueue::new(
                10,
                1 << 20,
                crate::config::OnFull::Block,
            )),
            (10, 1 << 20),
        );
        (health, state)
    }

    fn payload() -> Payload {
        let batch = SpanBatch::new(vec![crate::otlp::ResourceSpans {
            scope_spans: vec![crate::otlp::ScopeSpans {
                spans: vec![crate::otlp::Span::default(); 3],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        Payload::new(batch)
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_batch_waits_as_told_then_is_delivered() {
        let exporter = scripted(vec![
            Err(ExportError::Retryable {
                message: "busy".into(),
                retry_after: Some(Duration::from_secs(7)),
            }),
            Ok(Delivered::default()),
        ]);
        let metrics = Metrics::default();
        let (health, state) = exporter_state();
        let delivery = deliver(
            &exporter,
            &payload(),
            &policy(Duration::from_secs(60)),
            &Reporting {
                name: "t",
                metrics: &metrics,
                state: &state,
            },
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(delivery, Delivery::Sent { retried: true });
        let status = &health.exporters()[0];
        assert!(!status.failing(), "the success ended the outage");
        assert_eq!(status.last_error.as_deref(), Some("busy"));
        let calls = exporter.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1] - calls[0], Duration::from_secs(7));
        let text = metrics.render();
        assert!(
            text.contains("daena_agent_spans_exported_total{exporter=\"t\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("daena_agent_export_failures_total{exporter=\"t\",kind=\"retried\"} 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_dropped_and_counted_without_retry() {
        let exporter = scripted(vec![Err(ExportError::Permanent {
            message: "bad".into(),
        })]);
        let metrics = Metrics::default();
        let (health, state) = exporter_state();
        let delivery = deliver(
            &exporter,
            &payload(),
            &policy(Duration::from_secs(60)),
            &Reporting {
                name: "t",
                metrics: &metrics,
                state: &state,
            },
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(delivery, Delivery::Dropped);
        assert!(health.exporters()[0].failing(), "a refusal is a failure");
        assert_eq!(exporter.calls.lock().expect("lock").len(), 1);
        assert!(metrics.render().contains(
            "daena_agent_spans_dropped_total{stage=\"exporter/t\",reason=\"rejected\"} 3"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_max_elapsed() {
        let unavailable = || {
            Err(ExportError::Retryable {
                message: "down".into(),
                retry_after: None,
            })
        };
        let exporter = scripted((0..50).map(|_| unavailable()).collect());
        let metrics = Metrics::default();
        let started = Instant::now();
        let (_health, state) = exporter_state();
        let delivery = deliver(
            &exporter,
            &payload(),
            &policy(Duration::from_secs(20)),
            &Reporting {
                name: "t",
                metrics: &metrics,
                state: &state,
            },
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(delivery, Delivery::Dropped);
        assert!(started.elapsed() <= Duration::from_secs(20));
        assert!(exporter.calls.lock().expect("lock").len() >= 3);
        assert!(metrics.render().contains(
            "daena_agent_spans_dropped_total{stage=\"exporter/t\",reason=\"retries_exhausted\"} 3"
        ));
    }
}

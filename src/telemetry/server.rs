//! The telemetry endpoint: the agent's counters at `GET /metrics`, liveness at
//! `GET /healthz`, readiness at `GET /readyz`, and a config reload on `POST /-/reload`.
//!
//! Routes read what they show from one [`Telemetry`] state, so adding a page is one line
//! in [`router`]. The endpoint has its own small connection cap and header-read timeout: a
//! flood of connections here must not take the descriptors the exporters need.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::health::Health;
use super::reload::{ReloadError, ReloadHandle};
use crate::accept::ConnectionCap;
use crate::supervisor::Supervisor;

/// Connections the telemetry endpoint serves at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a connection has to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection is kept open: a scraper reconnects, an idle holder is let go.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Where the agent is in its life, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners bound, exporters being started: not ready yet.
    Starting = 0,
    /// Receivers serving.
    Running = 1,
    /// Shutting down: the receivers refuse, the exporters drain.
    Stopping = 2,
}

/// What the telemetry endpoint shows: the counters, each exporter's health and whether the
/// agent's tasks run. Shared by every route.
pub struct Telemetry {
    /// The agent's counters.
    pub metrics: Arc<Metrics>,
    /// Each exporter's health.
    pub health: Arc<Health>,
    /// Knows whether a supervised task failed.
    pub supervisor: Supervisor,
    phase: AtomicU8,
    /// Asks the agent to reload its config, when it can.
    reload: Option<ReloadHandle>,
}

/// One reason the agent is not ready, as `/readyz` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NotReady {
    /// The agent as a whole: `starting`, `stopping` or `failed` (with the failure).
    Agent {
        /// `starting`, `stopping` or `failed`.
        agent: &'static str,
        /// The failed task and what happened to it.
        #[serde(skip_serializing_if = "Option::is_none")]
        failure: Option<String>,
    },
    /// An exporter whose backend is failing, or whose queue is full.
    Exporter {
        /// The exporter's name.
        exporter: String,
        /// The error of its last failed attempt, while failing.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
        /// When its outage began (RFC 3339, UTC), while failing.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        /// Whether its queue is full.
        queue_full: bool,
    },
}

/// The body of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether the agent is ready.
    pub ready: bool,
    /// Why not, each reason once; empty when ready.
    pub reasons: Vec<NotReady>,
}

/// The body of `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Liveness {
    /// Whether every supervised task runs.
    pub alive: bool,
    /// The task that failed and how, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Telemetry {
    /// The state of an agent that is starting.
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>, supervisor: Supervisor) -> Self {
        Self {
            metrics,
            health,
            supervisor,
            phase: AtomicU8::new(Phase::Starting as u8),
            reload: None,
        }
    }

    /// Serves `POST /-/reload` through `reload`.
    pub fn with_reload(mut self, reload: ReloadHandle) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Notes where the agent is in its life.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Where the agent is in its life.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            _ => Phase::Stopping,
        }
    }

    /// Alive while no supervised task has failed. Not ready is not dead: a failing backend
    /// never makes the agent unhealthy.
    pub fn liveness(&self) -> Liveness {
        let failure = self.supervisor.failure().map(|f| f.to_string());
        Liveness {
            alive: failure.is_none(),
            failure,
        }
    }

    /// Ready when the receivers serve, no task failed, and no exporter is failing or full.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if let Some(failure) = self.supervisor.failure() {
            reasons.push(NotReady::Agent {
                agent: "failed",
                failure: Some(failure.to_string()),
            });
        }
        match self.phase() {
            Phase::Starting => reasons.push(NotReady::Agent {
                agent: "starting",
                failure: None,
            }),
            Phase::Stopping => reasons.push(NotReady::Agent {
                agent: "stopping",
                failure: None,
            }),
            Phase::Running => {}
        }
        for status in self.health.exporters() {
            if !status.failing() {
                continue;
            }
            let failing = status.failing_since.is_some();
            reasons.push(NotReady::Exporter {
                exporter: status.exporter,
                last_error: status.last_error.filter(|_| failing),
                since: status.failing_since,
                queue_full: status.queue_full,
            });
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

/// The telemetry routes, each reading [`Telemetry`].
pub fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .with_state(telemetry)
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let liveness = telemetry.liveness();
    let status = if liveness.alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &liveness)
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let readiness = telemetry.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &readiness)
}

/// Reloads and answers 200 with what changed, or with why not: 400 for a config that is
/// refused (the running one is kept), 503 while the agent stops.
async fn reload(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let outcome = match &telemetry.reload {
        Some(handle) => handle.reload().await,
        None => Err(ReloadError::NoConfigFile),
    };
    match outcome {
        Ok(changed) => (StatusCode::OK, format!("reloaded: {changed}\n")).into_response(),
        Err(error @ ReloadError::Stopping) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}

/// A JSON answer.
fn json(status: StatusCode, body: &impl Serialize) -> Response {
    // Plain structs of strings and booleans always serialise.
    let text = serde_json::to_string(body).unwrap_or_default();
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// Serves the telemetry routes, and the status page's (`status`), on `listener` until
/// `stop` is cancelled, at most
/// [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    status: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = router(telemetry).merge(status);
    let cap = ConnectionCap::new("telemetry endpoint", MAX_CONNECTIONS);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (tcp, permit) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = cap.accept(&listener, || {}) => accepted,
        };
        let router = router.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, request).await }
            });
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            // A connection past its lifetime is dropped with whatever it was doing.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_running_with_every_exporter_delivering() {
        let telemetry = Telemetry::new(
            Arc::default(),
            Arc::new(Health::default()),
            Supervisor::new(),
        );
        let tempo = telemetry.health.register("tempo");
        assert_eq!(
            telemetry.readiness().reasons,
            [NotReady::Agent {
                agent: "starting",
                failure: None
            }]
        );
        telemetry.set_phase(Phase::Running);
        assert!(telemetry.readiness().ready);

        let _ = tempo.failed("connect to 127.0.0.1:14317: connection refused");
        let readiness = telemetry.readiness();
        let json = serde_json::to_value(&readiness).expect("json");
        assert_eq!(json["ready"], false);
        assert_eq!(json["reasons"][0]["exporter"], "tempo");
        assert_eq!(
            json["reasons"][0]["last_error"],
            "connect to 127.0.0.1:14317: connection refused"
        );
        assert!(json["reasons"][0]["since"].is_string());
        assert!(telemetry.liveness().alive, "not ready is not dead");

        let _ = tempo.succeeded();
        tempo.set_queue_full(true);
        let json = serde_json::to_value(telemetry.readiness()).expect("json");
        assert_eq!(
            json["reasons"],
            serde_json::json!([{"exporter": "tempo", "queue_full": true}]),
            "a recovered error is not a reason"
        );
        tempo.set_queue_full(false);
        telemetry.supervisor.fail("pipeline", "panicked: boom");
        assert!(!telemetry.liveness().alive);
        assert!(!telemetry.readiness().ready);
        telemetry.set_phase(Phase::Stopping);
        assert_eq!(telemetry.readiness().reasons.len(), 2);
    }
}

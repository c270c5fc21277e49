//! The telemetry endpoint: serves the agent's counters at `GET /metrics` and reloads its
//! config on `POST /-/reload`.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::reload::{ReloadError, ReloadHandle};

/// Serves `/metrics` and `/-/reload` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    reload: ReloadHandle,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new().route("/-/reload", post(move || reload_now(reload.clone())));
    let router = router.route(
        "/metrics",
        get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Reloads and answers 200 with what changed, or with why not: 400 for a config that is
/// refused (the running one is kept), 503 while the agent stops.
async fn reload_now(reload: ReloadHandle) -> (StatusCode, String) {
    match reload.reload().await {
        Ok(changed) => (StatusCode::OK, format!("reloaded: {changed}\n")),
        Err(error @ ReloadError::Stopping) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n"))
        }
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")),
    }
}

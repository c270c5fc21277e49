//! Asking the running agent to reload its config file: SIGHUP and `POST /-/reload` send a
//! request here, and are answered once the new config runs or was refused.

use tokio::sync::{mpsc, oneshot};

/// Why a reload was refused; the running config is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The agent was started without a config file.
    #[error("the agent was started without --config: there is no file to reload")]
    NoConfigFile,
    /// The new file does not load or is invalid.
    #[error("the new config is invalid, the running config is kept: {0}")]
    Invalid(String),
    /// The new file changes settings only a restart applies.
    #[error(
        "the new config changes settings that need a restart ({}); the running config is kept",
        .0.join(", ")
    )]
    NeedsRestart(Vec<String>),
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
}

/// What a reload answers: what it changed, or why it was refused.
pub type ReloadOutcome = Result<String, ReloadError>;

/// Sends reload requests to the running agent; clones share it.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<oneshot::Sender<ReloadOutcome>>,
}

/// The agent's end: the reload requests to serve, one at a time.
#[derive(Debug)]
pub struct ReloadRequests {
    rx: mpsc::Receiver<oneshot::Sender<ReloadOutcome>>,
}

/// A handle and the requests it sends.
pub fn reload_channel() -> (ReloadHandle, ReloadRequests) {
    // One reload runs at a time; a few more may wait for it.
    let (tx, rx) = mpsc::channel(4);
    (ReloadHandle { tx }, ReloadRequests { rx })
}

impl ReloadHandle {
    /// Asks for a reload and waits for its outcome.
    pub async fn reload(&self) -> ReloadOutcome {
        let (answer, outcome) = oneshot::channel();
        self.tx
            .send(answer)
            .await
            .map_err(|_| ReloadError::Stopping)?;
        outcome.await.unwrap_or(Err(ReloadError::Stopping))
    }
}

impl ReloadRequests {
    /// The next request's answer channel; `None` once every handle is gone.
    pub async fn next(&mut self) -> Option<oneshot::Sender<ReloadOutcome>> {
        self.rx.recv().await
    }
}

//! Accepting connections under a cap, for the receivers and the telemetry endpoint: a
//! connection past the cap is accepted and closed at once (an immediate, retryable failure
//! for its client, where the kernel's backlog would leave it waiting), and an `accept`
//! that fails (no descriptor left) is retried after a pause instead of spinning.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::log_limit::{LogLimit, REPEAT_INTERVAL};

/// How long to wait after `accept` failed before trying again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connections one listener lets in at once.
#[derive(Debug)]
pub struct ConnectionCap {
    listener: &'static str,
    permits: Arc<Semaphore>,
    /// Accept errors repeat every pause while their cause lasts.
    errors: LogLimit,
}

impl ConnectionCap {
    /// A cap of `max` connections at once on `listener` (named in logs).
    pub fn new(listener: &'static str, max: usize) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            errors: LogLimit::new(REPEAT_INTERVAL),
        }
    }

    /// The permits of the connections let in, one each while it is open.
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// The next connection within the cap, with the permit it holds while open; those
    /// past it are closed, and `refused` is called for each.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        refused: impl Fn(),
    ) -> (TcpStream, OwnedSemaphorePermit) {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(permit) => {
                        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs hold
                        // answers back for up to 40 ms.
                        let _ = tcp.set_nodelay(true);
                        return (tcp, permit);
                    }
                    Err(_) => {
                        refused();
                        drop(tcp);
                    }
                },
                Err(error) => {
                    if let Some(suppressed) = self.errors.check() {
                        tracing::warn!(
                            listener = self.listener,
                            suppressed,
                            "cannot accept a connection: {error}; retrying every {ACCEPT_ERROR_PAUSE:?} (suppressed: accept errors not logged since the previous line)"
                        );
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
}

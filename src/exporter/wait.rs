//! Waiting on a condition guarded by a lock, shared by the memory and persistent queues.

use tokio::sync::Notify;

/// Calls `ready` until it gives an answer, sleeping on `changed` in between without
/// missing a wake-up that comes while `ready` runs.
pub async fn wait_for<T>(changed: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(answer) = ready() {
            return answer;
        }
        notified.await;
    }
}

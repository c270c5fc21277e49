//! The promise a persistent queue keeps to a receiver: a client is answered only once
//! every batch holding its spans is written to every persistent queue.
//!
//! An [`Ack`] is one share of that promise. Each batch a request's spans end up in, and
//! each persistent queue that writes it, holds a share; the client's answer is sent when
//! the last share is gone. A share dropped without [`Ack::confirm`] counts as a failure,
//! so no path can answer "accepted" for spans that were never written.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Why spans were not written to a persistent queue; the client is told to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotQueued {
    /// The queue is at its `max_bytes` (or `max_spans`) with `on_full: block`.
    #[error("the persistent queue is full")]
    Full,
    /// Writing failed (disk full, I/O error); the error is logged by the queue.
    #[error("the persistent queue could not be written")]
    WriteFailed,
    /// The agent is stopping, or the batch went nowhere.
    #[error("the agent is shutting down")]
    Stopped,
}

/// One share of a client's answer; clone it for every batch or queue that must hold it.
#[derive(Debug)]
pub struct Ack {
    answer: Arc<Answer>,
    confirmed: bool,
}

/// The client's side: resolves once every share is confirmed or one has failed.
pub type AckWait = oneshot::Receiver<Result<(), NotQueued>>;

#[derive(Debug)]
struct Answer {
    tx: Option<oneshot::Sender<Result<(), NotQueued>>>,
    failure: Mutex<Option<NotQueued>>,
}

impl Ack {
    /// A promise with one share, and the receiver's end of it.
    pub fn new() -> (Self, AckWait) {
        let (tx, rx) = oneshot::channel();
        let answer = Answer {
            tx: Some(tx),
            failure: Mutex::new(None),
        };
        (
            Self {
                answer: Arc::new(answer),
                confirmed: false,
            },
            rx,
        )
    }

    /// This share's part is done: its spans are written (or deliberately not kept).
    pub fn confirm(mut self) {
        self.confirmed = true;
    }

    /// This share failed; the client is refused with `reason` (the first failure wins).
    pub fn fail(mut self, reason: NotQueued) {
        self.answer.fail(reason);
        self.confirmed = true;
    }
}

impl Clone for Ack {
    fn clone(&self) -> Self {
        Self {
            answer: Arc::clone(&self.answer),
            confirmed: false,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.confirmed {
            self.answer.fail(NotQueued::Stopped);
        }
    }
}

impl Answer {
    fn fail(&self, reason: NotQueued) {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = self.tx.take() {
            // The client may have gone away; nobody is left to tell.
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_waits_for_every_share() {
        let (ack, mut wait) = Ack::new();
        let (first, second) = (ack.clone(), ack.clone());
        ack.confirm();
        first.confirm();
        assert!(wait.try_recv().is_err(), "one share is still out");
        second.confirm();
        assert_eq!(wait.try_recv(), Ok(Ok(())));
    }

    #[test]
    fn one_failed_share_refuses_the_client_with_the_first_reason() {
        let (ack, mut wait) = Ack::new();
        let other = ack.clone();
        ack.fail(NotQueued::Full);
        other.fail(NotQueued::WriteFailed);
        assert_eq!(wait.try_recv(), Ok(Err(NotQueued::Full)));
    }

    #[test]
    fn a_share_dropped_unconfirmed_is_a_failure_never_a_success() {
        let (ack, mut wait) = Ack::new();
        let lost = ack.clone();
        ack.confirm();
        drop(lost);
        assert_eq!(wait.try_recv(), Ok(Err(NotQueued::Stopped)));
    }
}

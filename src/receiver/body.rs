//! Request bodies read against the memory budget: every frame's bytes are reserved as it
//! arrives, so bodies still being received count, and a body the budget cannot hold ends
//! in an error at once instead of being read to the end.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::telemetry::memory::Reservation;

/// A request's reservation, shared by its body (which grows it) and its handler (which
/// takes it over once the body is read); it remembers whether the budget refused a frame.
#[derive(Debug, Clone, Default)]
pub struct BodyReservation(Arc<Mutex<Shared>>);

#[derive(Debug, Default)]
struct Shared {
    reservation: Reservation,
    refused: bool,
}

impl BodyReservation {
    /// Shares `reservation` with a body.
    pub fn new(reservation: Reservation) -> Self {
        Self(Arc::new(Mutex::new(Shared {
            reservation,
            refused: false,
        })))
    }

    /// Takes the reservation over (what the body reserved), leaving an empty one.
    pub fn take(&self) -> Reservation {
        std::mem::take(&mut self.lock().reservation)
    }

    /// Whether the body ended because the budget could not hold its next frame.
    pub fn refused(&self) -> bool {
        self.lock().refused
    }

    /// Reserves `bytes` more; on refusal, remembers it.
    fn grow(&self, bytes: usize) -> bool {
        let mut shared = self.lock();
        let grown = shared.reservation.grow(bytes as u64);
        shared.refused |= !grown;
        grown
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // The lock guards two plain values; a panic cannot leave them half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The error a body ends with when the budget cannot hold its next frame.
#[derive(Debug, thiserror::Error)]
#[error("the agent's memory budget (memory_limit.budget) cannot hold this body now")]
pub struct OverBudget;

/// A body whose frames are reserved in a [`BodyReservation`] as they arrive.
pub struct ReservedBody<B> {
    inner: B,
    reservation: BodyReservation,
}

impl<B> ReservedBody<B> {
    /// Wraps `inner`, reserving its frames in `reservation`.
    pub fn new(inner: B, reservation: BodyReservation) -> Self {
        Self { inner, reservation }
    }
}

impl<B> Body for ReservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled.map(|frame| frame.map(|result| result.map_err(Into::into)));
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        if self.reservation.grow(len) {
            Poll::Ready(Some(Ok(frame)))
        } else {
            Poll::Ready(Some(Err(OverBudget.into())))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::memory::MemoryBudget;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn frames_are_reserved_and_a_body_past_the_budget_ends_in_an_error() {
        let budget = MemoryBudget::new(100);
        let shared = BodyReservation::new(budget.reservation());
        let body = ReservedBody::new(Full::new(Bytes::from(vec![1; 60])), shared.clone());
        let read = body.collect().await.expect("fits").to_bytes();
        assert_eq!(read.len(), 60);
        assert_eq!(budget.used(), 60, "held until the handler is done");
        let held = shared.take();
        assert!(!shared.refused());

        let second = BodyReservation::new(budget.reservation());
        let body = ReservedBody::new(Full::new(Bytes::from(vec![1; 41])), second.clone());
        let error = body.collect().await.expect_err("60 + 41 is over 100");
        assert!(error.is::<OverBudget>(), "{error}");
        assert!(second.refused());
        drop((held, second));
        assert_eq!(budget.used(), 0);
    }
}

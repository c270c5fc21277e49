//! The task that exports an exporter's backlog: up to `workers` batches at once, each
//! delivered with retries, ramping up after an outage instead of flooding the backend.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::memory::BoundedQueue;
use crate::exporter::persistent::{PersistentQueue, Record};
use crate::exporter::retry::{Delivery, Reporting, RetryPolicy, deliver};
use crate::exporter::state::ExporterState;
use crate::exporter::{Exporter, Payload};
use crate::supervisor::Supervisor;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

/// The batches an exporter's workers take from.
pub enum Backlog {
    /// A queue in memory.
    Memory(Arc<BoundedQueue>),
    /// A persistent queue.
    Disk(Arc<PersistentQueue>),
}

/// One batch taken from the backlog.
enum Entry {
    Memory(Arc<Payload>),
    /// A record of the persistent queue, which it must be marked done in.
    Disk(Arc<PersistentQueue>, Record),
}

impl Backlog {
    async fn next(&self) -> Option<Entry> {
        match self {
            Self::Memory(queue) => queue.pop().await.map(Entry::Memory),
            Self::Disk(queue) => queue
                .next()
                .await
                .map(|record| Entry::Disk(Arc::clone(queue), record)),
        }
    }
}

/// Exports one exporter's backlog.
pub struct Worker<E> {
    pub(super) name: Arc<str>,
    /// `exporter NAME`: the supervised task's name, made once.
    pub(super) task: Arc<str>,
    pub(super) exporter: Arc<E>,
    pub(super) policy: Arc<RetryPolicy>,
    /// Export requests in flight at once, at most.
    pub(super) workers: usize,
    pub(super) metrics: Arc<Metrics>,
    pub(super) abandon: CancellationToken,
    pub(super) supervisor: Supervisor,
    /// Its health and queue state, reported per attempt and per batch taken.
    pub(super) state: Arc<ExporterState>,
}

impl<E: Exporter> Worker<E> {
    /// Exports batches, up to `limit` at once: it starts at one, grows by one per batch
    /// sent at the first attempt up to `workers`, and falls back to one when a batch needed
    /// retries. So an outage is probed by one request, not `workers`, and a backend that
    /// comes back (or an agent restarting with a backlog on disk) gets the backlog spread
    /// out rather than all at once.
    ///
    /// Returns the spans left on disk. A panic while feeding fails the agent; the queue is
    /// still accounted for: what memory held is counted as dropped, the disk keeps the rest.
    pub async fn run(self, backlog: Backlog) -> u64 {
        let fed = self.supervisor.watch(&self.task, self.feed(&backlog)).await;
        let reason = match fed {
            Some(()) => DropReason::Shutdown,
            None => DropReason::AgentFailure,
        };
        match &backlog {
            Backlog::Memory(queue) => {
                let abandoned = queue.close_and_clear();
                if abandoned > 0 {
                    self.metrics.dropped(&self.name, reason, abandoned);
                }
                0
            }
            Backlog::Disk(queue) => queue.spans() as u64,
        }
    }

    /// Takes batches from the backlog and exports them until it is drained and closed, or
    /// until `abandon`; then waits for the exports in flight.
    async fn feed(&self, backlog: &Backlog) {
        let mut limit = 1;
        let mut in_flight = JoinSet::new();
        'feed: loop {
            while in_flight.len() >= limit {
                tokio::select! {
                    biased;
                    () = self.abandon.cancelled() => break 'feed,
                    Some(joined) = in_flight.join_next() => {
                        limit = self.next_limit(limit, joined.ok());
                        self.state.maybe_drained();
                    }
                }
            }
            let entry = tokio::select! {
                biased;
                () = self.abandon.cancelled() => break,
                entry = backlog.next() => match entry {
                    Some(entry) => entry,
                    None => break,
                },
            };
            self.state.maybe_drained();
            in_flight.spawn(self.export(entry));
            while let Some(joined) = in_flight.try_join_next() {
                limit = self.next_limit(limit, joined.ok());
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    fn next_limit(&self, limit: usize, delivery: Option<Delivery>) -> usize {
        match delivery {
            Some(Delivery::Sent { retried: true }) => 1,
            Some(Delivery::Sent { retried: false }) => (limit + 1).min(self.workers),
            _ => limit,
        }
    }

    /// One batch: read (from disk if need be) and encoded on a blocking thread, delivered
    /// with retries, then removed from the disk unless the agent stopped first. A panic on
    /// the way fails the agent: a batch from memory is counted as dropped, one from disk
    /// stays there for the next start.
    fn export(&self, entry: Entry) -> impl Future<Output = Delivery> + Send + 'static {
        let (name, exporter, policy, metrics, abandon, supervisor) = (
            Arc::clone(&self.name),
            Arc::clone(&self.exporter),
            Arc::clone(&self.policy),
            Arc::clone(&self.metrics),
            self.abandon.clone(),
            self.supervisor.clone(),
        );
        let state = Arc::clone(&self.state);
        let in_memory = match &entry {
            Entry::Memory(payload) => payload.spans() as u64,
            Entry::Disk(..) => 0,
        };
        let task = Arc::clone(&self.task);
        let counted = Arc::clone(&metrics);
        let counted_name = Arc::clone(&name);
        let attempt = async move {
            let loading = Arc::clone(&exporter);
            let loaded = tokio::task::spawn_blocking(move || {
                let (payload, on_disk) = match entry {
                    Entry::Memory(payload) => (payload, None),
                    Entry::Disk(queue, mut record) => match queue.load(&mut record) {
                        Ok(payload) => (payload, Some((queue, record))),
                        Err(error) => return Err((queue, record, error)),
                    },
                };
                loading.prepare(&payload);
                Ok((payload, on_disk))
            })
            .await;
            let (payload, on_disk) = match loaded {
                Ok(Ok(loaded)) => loaded,
                Ok(Err((queue, record, error))) => {
                    tracing::error!(exporter = %name, %error, spans = record.spans, "Persistent queue: a record could not be read back; it is dropped");
                    metrics.dropped(&name, DropReason::Damaged, record.spans as u64);
                    metrics.queue_damaged(&name, 1);
                    queue.done(&record);
                    return Delivery::Dropped;
                }
                // A panic while encoding: the supervised attempt fails with it.
                Err(join) => match join.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled: the runtime is going away with the batch.
                    Err(_) => {
                        metrics.dropped(&name, DropReason::Shutdown, in_memory);
                        return Delivery::Abandoned;
                    }
                },
            };
            let delivery = deliver(
                &*exporter,
                &payload,
                &policy,
                &Reporting {
                    name: &name,
                    metrics: &metrics,
                    state: &state,
                },
                &abandon,
            )
            .await;
            match on_disk {
                Some((queue, record)) if delivery != Delivery::Abandoned => queue.done(&record),
                None if delivery == Delivery::Abandoned => {
                    metrics.dropped(&name, DropReason::Shutdown, payload.spans() as u64);
                }
                _ => {}
            }
            delivery
        };
        async move {
            match supervisor.watch(&task, attempt).await {
                Some(delivery) => delivery,
                None => {
                    counted.dropped(&counted_name, DropReason::AgentFailure, in_memory);
                    Delivery::Dropped
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::exporter::queue::spawn;
    use crate::exporter::{Delivered, ExportError};
    use crate::otlp::{Span, SpanBatch, request_of};

    fn payload(spans: usize) -> Arc<Payload> {
        let spans = (0..spans).map(|_| Span::default()).collect();
        Arc::new(Payload::new(SpanBatch::from_request(request_of(spans))))
    }

    /// Fails while `down` is set, and notes how many exports were in flight at each start.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<std::sync::atomic::AtomicBool>,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        /// (backend down?, exports in flight including this one) per attempt.
        starts: Arc<Mutex<Vec<(bool, usize)>>>,
    }

    impl Exporter for Flaky {
        async fn export(&self, _: &Payload) -> Result<Delivered, ExportError> {
            use std::sync::atomic::Ordering::SeqCst;
            let down = self.down.load(SeqCst);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.starts.lock().expect("lock").push((down, now));
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            if down {
                return Err(ExportError::Retryable {
                    message: "down".into(),
                    retry_after: Some(Duration::from_millis(50)),
                });
            }
            Ok(Delivered::default())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_probed_by_one_request_and_the_backlog_ramps_up_after_it() {
        use crate::config::{ExporterConfig, ExporterProtocol};
        let flaky = Flaky::default();
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut config = ExporterConfig::new(ExporterProtocol::Console, None);
        config.queue.workers = 4;
        let (handle, worker) = spawn(
            "flaky",
            flaky.clone(),
            &config,
            crate::exporter::queue::Tasks::default(),
        )
        .expect("memory queue");
        for _ in 0..40 {
            assert!(handle.try_send(&payload(1), &[]), "room for 40 spans");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        drop(handle);
        worker.await.expect("drains");
        let starts = flaky.starts.lock().expect("lock").clone();
        let during: Vec<usize> = starts
            .iter()
            .filter(|(down, _)| *down)
            .map(|s| s.1)
            .collect();
        let after: Vec<usize> = starts
            .iter()
            .filter(|(down, _)| !*down)
            .map(|s| s.1)
            .collect();
        assert!(during.len() > 5, "retried during the outage: {during:?}");
        assert!(
            during.iter().all(|&n| n == 1),
            "one probe at a time: {during:?}"
        );
        assert_eq!(after.len(), 40, "every batch delivered once");
        assert_eq!(
            &after[..2],
            [1, 1],
            "the probe, then one more alone: {after:?}"
        );
        let full = after.iter().position(|&n| n == 4);
        assert!(
            full.is_some_and(|i| i >= 3),
            "ramps up to workers one at a time: {after:?}"
        );
    }

    /// Panics on every export, as an exporter with a bug would.
    struct Panics;

    impl Exporter for Panics {
        async fn export(&self, _: &Payload) -> Result<Delivered, ExportError> {
            panic!("exporter bug")
        }
    }

    #[tokio::test]
    async fn a_panicking_export_fails_the_agent_and_its_batch_is_counted_as_lost() {
        let tasks = crate::exporter::queue::Tasks::default();
        let (supervisor, metrics) = (tasks.supervisor.clone(), Arc::clone(&tasks.metrics));
        let config =
            crate::config::ExporterConfig::new(crate::config::ExporterProtocol::Console, None);
        let (handle, worker) = spawn("buggy", Panics, &config, tasks).expect("memory queue");
        assert!(handle.try_send(&payload(5), &[]));
        let failure = tokio::time::timeout(Duration::from_secs(10), supervisor.failed())
            .await
            .expect("the panic is reported");
        assert_eq!(failure.task, "exporter buggy");
        assert_eq!(failure.what, "panicked: exporter bug");
        drop(handle);
        assert_eq!(
            worker.await.ok(),
            Some(Some(0)),
            "the queue drains and ends"
        );
        assert!(metrics.render().contains(
            "daena_agent_spans_dropped_total{stage=\"exporter/buggy\",reason=\"agent_failure\"} 5"
        ));
    }
}

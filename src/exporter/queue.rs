//! The per-exporter queue, in memory (bounded by spans and bytes) or on disk
//! ([`persistent`](super::persistent)), and a task that exports up to `workers` batches at
//! once, each with retries, and drains on shutdown until told to abandon.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::ack::{Ack, NotQueued};
use super::persistent::{LogOptions, OpenError, PersistentQueue, Record};
use super::retry::{Delivery, RetryPolicy, deliver};
use super::{Exporter, Payload};
use crate::config::{ExporterConfig, OnFull};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::DropReason;

/// The pipeline's end of one exporter's queue; the queue closes when the last clone drops.
#[derive(Clone)]
pub struct ExporterHandle {
    name: Arc<str>,
    inlet: Arc<Inlet>,
    metrics: Arc<Metrics>,
}

/// Where a handle puts batches.
enum Inlet {
    Memory(Closer),
    /// The writer task that appends to the persistent queue.
    Disk(mpsc::Sender<Appending>),
}

/// A batch on its way into a persistent queue, with the clients waiting for it.
struct Appending {
    payload: Arc<Payload>,
    acks: Vec<Ack>,
}

impl ExporterHandle {
    /// The exporter's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a batch and confirms `acks` once it is queued (on disk, for a persistent
    /// queue), or fails them so the clients are told to retry.
    ///
    /// A full memory queue waits (`on_full: block`): that wait is the backpressure that
    /// makes the receivers refuse new data instead of buffering without bound; or it drops
    /// the oldest batches (`drop_oldest`), counted. A full persistent queue refuses at once.
    pub async fn send(&self, payload: Arc<Payload>, acks: Vec<Ack>) {
        let spans = payload.spans() as u64;
        match &*self.inlet {
            Inlet::Memory(queue) => match queue.0.push(payload).await {
                Ok(dropped) => {
                    if dropped > 0 {
                        self.metrics
                            .dropped(&self.name, DropReason::QueueFull, dropped);
                    }
                    acks.into_iter().for_each(Ack::confirm);
                }
                // The worker stopped because shutdown_timeout passed.
                Err(()) => refuse(&self.name, &self.metrics, acks, NotQueued::Stopped, spans),
            },
            Inlet::Disk(writer) => {
                if let Err(mpsc::error::SendError(appending)) =
                    writer.send(Appending { payload, acks }).await
                {
                    refuse(
                        &self.name,
                        &self.metrics,
                        appending.acks,
                        NotQueued::Stopped,
                        spans,
                    );
                }
            }
        }
    }
}

/// Fails the waiting clients (they retry), or counts the spans as dropped when no client
/// waits for them.
fn refuse(name: &str, metrics: &Metrics, acks: Vec<Ack>, reason: NotQueued, spans: u64) {
    if acks.is_empty() {
        let drop_reason = match reason {
            NotQueued::Stopped => DropReason::Shutdown,
            NotQueued::Full | NotQueued::WriteFailed => DropReason::QueueFull,
        };
        metrics.dropped(name, drop_reason, spans);
    }
    for ack in acks {
        ack.fail(reason);
    }
}

/// Closes the queue when the last handle is dropped, so the worker drains and ends.
struct Closer(Arc<BoundedQueue>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A FIFO of batches bounded by spans and encoded bytes (an empty queue takes any batch).
struct BoundedQueue {
    state: Mutex<QueueState>,
    /// Woken on every push, pop and close.
    changed: Notify,
    max_spans: usize,
    max_bytes: usize,
    on_full: OnFull,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Arc<Payload>>,
    spans: usize,
    bytes: usize,
    closed: bool,
}

impl BoundedQueue {
    fn new(max_spans: usize, max_bytes: usize, on_full: OnFull) -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            changed: Notify::new(),
            max_spans: max_spans.max(1),
            max_bytes: max_bytes.max(1),
            on_full,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a batch; returns the spans dropped to make room, or `Err` once closed.
    async fn push(&self, payload: Arc<Payload>) -> Result<u64, ()> {
        wait_for(&self.changed, || {
            let mut state = self.lock();
            if state.closed {
                return Some(Err(()));
            }
            let fits = |state: &QueueState| {
                state.batches.is_empty()
                    || (state.spans + payload.spans() <= self.max_spans
                        && state.bytes + payload.bytes() <= self.max_bytes)
            };
            let mut dropped = 0;
            if !fits(&state) && self.on_full == OnFull::DropOldest {
                while !fits(&state) {
                    let Some(old) = state.batches.pop_front() else {
                        break;
                    };
                    state.spans -= old.spans();
                    state.bytes -= old.bytes();
                    dropped += old.spans() as u64;
                }
            }
            if !fits(&state) {
                return None;
            }
            state.spans += payload.spans();
            state.bytes += payload.bytes();
            state.batches.push_back(Arc::clone(&payload));
            drop(state);
            self.changed.notify_waiters();
            Some(Ok(dropped))
        })
        .await
    }

    /// The oldest batch, waiting for one; `None` once closed and empty.
    async fn pop(&self) -> Option<Arc<Payload>> {
        wait_for(&self.changed, || {
            let mut state = self.lock();
            if let Some(payload) = state.batches.pop_front() {
                state.spans -= payload.spans();
                state.bytes -= payload.bytes();
                drop(state);
                self.changed.notify_waiters();
                return Some(Some(payload));
            }
            state.closed.then_some(None)
        })
        .await
    }

    /// Refuses further pushes; what is queued can still be popped.
    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Closes the queue and empties it; returns the spans it held.
    fn close_and_clear(&self) -> u64 {
        let mut state = self.lock();
        state.closed = true;
        let spans = state.batches.drain(..).map(|p| p.spans() as u64).sum();
        state.spans = 0;
        state.bytes = 0;
        drop(state);
        self.changed.notify_waiters();
        spans
    }
}

/// Calls `ready` until it gives an answer, sleeping on `changed` in between without
/// missing a wake-up that comes while `ready` runs.
pub(super) async fn wait_for<T>(changed: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
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

/// Starts the queue task for `exporter` (opening its persistent queue under
/// `queue.dir/<name>` if it has one); the task ends when every handle is dropped and the
/// queue is drained, or when `abandon` is cancelled: what is left is counted as dropped
/// from memory, or stays on disk and is returned as spans left.
pub fn spawn<E: Exporter>(
    name: &str,
    exporter: E,
    config: &ExporterConfig,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
) -> Result<(ExporterHandle, JoinHandle<u64>), OpenError> {
    let queue = &config.queue;
    let name: Arc<str> = Arc::from(name);
    let (inlet, backlog) = match &queue.dir {
        Some(dir) if queue.persistent => {
            let disk = open_persistent(&name, &dir.join(dir_name(&name)), config, &metrics)?;
            let (tx, rx) = mpsc::channel(WRITER_QUEUE);
            tokio::spawn(write_loop(
                Arc::clone(&disk),
                rx,
                Arc::clone(&name),
                Arc::clone(&metrics),
            ));
            (Inlet::Disk(tx), Backlog::Disk(disk))
        }
        _ => {
            let memory = Arc::new(BoundedQueue::new(
                queue.span_limit(),
                usize::try_from(queue.byte_limit()).unwrap_or(usize::MAX),
                queue.on_full,
            ));
            (
                Inlet::Memory(Closer(Arc::clone(&memory))),
                Backlog::Memory(memory),
            )
        }
    };
    let handle = ExporterHandle {
        name: Arc::clone(&name),
        inlet: Arc::new(inlet),
        metrics: Arc::clone(&metrics),
    };
    let worker = Worker {
        name,
        exporter: Arc::new(exporter),
        policy: Arc::new(RetryPolicy::from_config(&config.retry)),
        workers: queue.workers.max(1),
        metrics,
        abandon,
    };
    Ok((handle, tokio::spawn(worker.run(backlog))))
}

/// Batches waiting for the writer task; the pipeline waits when it is behind.
const WRITER_QUEUE: usize = 16;
/// Batches the writer appends together under one fsync, at most.
const WRITE_GROUP: usize = 64;

/// An exporter name as a directory name: anything but letters, digits, `-` and `_` becomes `_`.
fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn open_persistent(
    name: &str,
    dir: &Path,
    config: &ExporterConfig,
    metrics: &Metrics,
) -> Result<Arc<PersistentQueue>, OpenError> {
    let queue = &config.queue;
    let options = LogOptions {
        max_bytes: queue.byte_limit(),
        max_spans: queue.span_limit(),
        fsync: queue.fsync,
        drop_oldest: queue.on_full == OnFull::DropOldest,
    };
    let (disk, recovery) = PersistentQueue::open(dir, options)?;
    metrics.queue_replayed(name, recovery.spans as u64);
    metrics.queue_damaged(name, recovery.damaged as u64);
    if recovery.records > 0 || recovery.damaged > 0 {
        tracing::info!(
            exporter = name,
            dir = %dir.display(),
            spans = recovery.spans,
            batches = recovery.records,
            damaged_records = recovery.damaged,
            "Persistent queue: delivering what the previous run left"
        );
    }
    Ok(Arc::new(disk))
}

/// Appends what the pipeline sends to the persistent queue, a group at a time under one
/// fsync, then answers the clients; closes the queue when the pipeline is gone.
async fn write_loop(
    queue: Arc<PersistentQueue>,
    mut rx: mpsc::Receiver<Appending>,
    name: Arc<str>,
    metrics: Arc<Metrics>,
) {
    let mut group = Vec::with_capacity(WRITE_GROUP);
    while rx.recv_many(&mut group, WRITE_GROUP).await > 0 {
        let payloads: Vec<Arc<Payload>> = group.iter().map(|a| Arc::clone(&a.payload)).collect();
        let writer = Arc::clone(&queue);
        let results = tokio::task::spawn_blocking(move || writer.append_group(&payloads))
            .await
            .unwrap_or_default();
        for (i, appending) in group.drain(..).enumerate() {
            let spans = appending.payload.spans() as u64;
            match results
                .get(i)
                .copied()
                .unwrap_or(Err(NotQueued::WriteFailed))
            {
                Ok(dropped) => {
                    if dropped > 0 {
                        metrics.dropped(&name, DropReason::QueueFull, dropped as u64);
                    }
                    appending.acks.into_iter().for_each(Ack::confirm);
                }
                Err(reason) => refuse(&name, &metrics, appending.acks, reason, spans),
            }
        }
    }
    queue.close();
}

/// The batches an exporter's workers take from.
enum Backlog {
    Memory(Arc<BoundedQueue>),
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

struct Worker<E> {
    name: Arc<str>,
    exporter: Arc<E>,
    policy: Arc<RetryPolicy>,
    workers: usize,
    metrics: Arc<Metrics>,
    abandon: CancellationToken,
}

impl<E: Exporter> Worker<E> {
    /// Exports batches, up to `limit` at once: it starts at one, grows by one per batch
    /// sent at the first attempt up to `workers`, and falls back to one when a batch needed
    /// retries. So an outage is probed by one request, not `workers`, and a backend that
    /// comes back (or an agent restarting with a backlog on disk) gets the backlog spread
    /// out rather than all at once.
    async fn run(self, backlog: Backlog) -> u64 {
        let mut limit = 1;
        let mut in_flight = JoinSet::new();
        'feed: loop {
            while in_flight.len() >= limit {
                tokio::select! {
                    biased;
                    () = self.abandon.cancelled() => break 'feed,
                    Some(joined) = in_flight.join_next() => {
                        limit = self.next_limit(limit, joined.ok());
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
            in_flight.spawn(self.export(entry));
            while let Some(joined) = in_flight.try_join_next() {
                limit = self.next_limit(limit, joined.ok());
            }
        }
        while in_flight.join_next().await.is_some() {}
        match &backlog {
            Backlog::Memory(queue) => {
                let abandoned = queue.close_and_clear();
                if abandoned > 0 {
                    self.metrics
                        .dropped(&self.name, DropReason::Shutdown, abandoned);
                }
                0
            }
            Backlog::Disk(queue) => queue.spans() as u64,
        }
    }

    fn next_limit(&self, limit: usize, delivery: Option<Delivery>) -> usize {
        match delivery {
            Some(Delivery::Sent { retried: true }) => 1,
            Some(Delivery::Sent { retried: false }) => (limit + 1).min(self.workers),
            _ => limit,
        }
    }

    /// One batch: read (from disk if need be) and encoded on a blocking thread, delivered
    /// with retries, then removed from the disk unless the agent stopped first.
    fn export(&self, entry: Entry) -> impl Future<Output = Delivery> + Send + 'static {
        let (name, exporter, policy, metrics, abandon) = (
            Arc::clone(&self.name),
            Arc::clone(&self.exporter),
            Arc::clone(&self.policy),
            Arc::clone(&self.metrics),
            self.abandon.clone(),
        );
        async move {
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
                // Only a panic while encoding gets here; the batch went with it.
                Err(_) => return Delivery::Dropped,
            };
            let delivery = deliver(&name, &*exporter, &payload, &policy, &metrics, &abandon).await;
            match on_disk {
                Some((queue, record)) if delivery != Delivery::Abandoned => queue.done(&record),
                None if delivery == Delivery::Abandoned => {
                    metrics.dropped(&name, DropReason::Shutdown, payload.spans() as u64);
                }
                _ => {}
            }
            delivery
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::otlp::{Span, SpanBatch, request_of};

    fn payload(spans: usize) -> Arc<Payload> {
        let spans = (0..spans).map(|_| Span::default()).collect();
        Arc::new(Payload::new(SpanBatch::from_request(request_of(spans))))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_blocks_until_a_batch_leaves() {
        let queue = Arc::new(BoundedQueue::new(10, usize::MAX, OnFull::Block));
        assert_eq!(queue.push(payload(6)).await, Ok(0));
        assert_eq!(queue.push(payload(4)).await, Ok(0));
        let blocked = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.push(payload(3)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!blocked.is_finished(), "11 spans do not fit in 10");
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(6));
        assert_eq!(blocked.await.expect("join"), Ok(0));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(4));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(3));
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_too_and_an_empty_queue_takes_any_batch() {
        let one = payload(1).bytes();
        let queue = BoundedQueue::new(usize::MAX, one * 2, OnFull::DropOldest);
        assert_eq!(queue.push(payload(1)).await, Ok(0));
        assert_eq!(queue.push(payload(1)).await, Ok(0));
        assert_eq!(queue.push(payload(1)).await, Ok(1), "the oldest made room");
        let big = BoundedQueue::new(1, 1, OnFull::Block);
        assert_eq!(
            big.push(payload(5)).await,
            Ok(0),
            "larger than the bounds, but alone"
        );
    }

    #[tokio::test]
    async fn drop_oldest_sheds_as_many_old_batches_as_it_takes() {
        let queue = BoundedQueue::new(10, usize::MAX, OnFull::DropOldest);
        for spans in [3, 3, 3] {
            assert_eq!(queue.push(payload(spans)).await, Ok(0));
        }
        assert_eq!(
            queue.push(payload(7)).await,
            Ok(6),
            "two oldest batches dropped"
        );
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(3));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(7));
    }

    #[tokio::test]
    async fn a_closed_queue_hands_out_what_it_holds_then_ends() {
        let queue = BoundedQueue::new(10, usize::MAX, OnFull::Block);
        assert_eq!(queue.push(payload(2)).await, Ok(0));
        queue.close();
        assert_eq!(queue.push(payload(1)).await, Err(()));
        assert_eq!(queue.pop().await.map(|p| p.spans()), Some(2));
        assert!(queue.pop().await.is_none());
        let held = BoundedQueue::new(10, usize::MAX, OnFull::Block);
        assert_eq!(held.push(payload(4)).await, Ok(0));
        assert_eq!(held.close_and_clear(), 4);
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
        async fn export(
            &self,
            _: &Payload,
        ) -> Result<super::super::Delivered, super::super::ExportError> {
            use std::sync::atomic::Ordering::SeqCst;
            let down = self.down.load(SeqCst);
            let now = self.in_flight.fetch_add(1, SeqCst) + 1;
            self.starts.lock().expect("lock").push((down, now));
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, SeqCst);
            if down {
                return Err(super::super::ExportError::Retryable {
                    message: "down".into(),
                    retry_after: Some(Duration::from_millis(50)),
                });
            }
            Ok(super::super::Delivered::default())
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
            Arc::default(),
            CancellationToken::new(),
        )
        .expect("memory queue");
        for _ in 0..40 {
            handle.send(payload(1), Vec::new()).await;
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
}

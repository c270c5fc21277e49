//! An exporter's queue, in memory ([`memory`]) or on disk (a persistent queue fed by the
//! [`writer`] task), and the [`worker`] task that exports up to `workers` batches at once,
//! each with retries, and drains on shutdown until told to abandon.

pub mod memory;
pub mod worker;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::memory::{BoundedQueue, Closer, Offered};
use self::worker::{Backlog, Worker};
use self::writer::{Appending, write_loop};
use super::persistent::{LogOptions, OpenError, PersistentQueue};
use super::retry::RetryPolicy;
use super::state::{ExporterState, Filled};
use super::{Exporter, Payload};
use crate::config::{ExporterConfig, OnFull};
use crate::pipeline::{Ack, NotQueued};
use crate::supervisor::Supervisor;
use crate::telemetry::Metrics;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::{DropReason, QueueDepth};

/// The pipeline's end of one exporter's queue; the queue closes when the last clone drops.
#[derive(Clone)]
pub struct ExporterHandle {
    name: Arc<str>,
    inlet: Arc<QueueInput>,
    metrics: Arc<Metrics>,
    /// Whether its queue is full, reported to its health and logged once per change.
    state: Arc<ExporterState>,
}

/// Where a handle puts batches.
enum QueueInput {
    Memory(Closer),
    /// The writer task that appends to the persistent queue.
    Disk(mpsc::Sender<Appending>),
}

impl ExporterHandle {
    /// The exporter's name from the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues the batch if there is room now; `false` when the queue is full. A persistent
    /// queue holds a share of each of `acks` until the batch is on disk; a queue that no
    /// longer takes batches (its worker stopped) refuses them, which counts as taken.
    pub fn try_send(&self, payload: &Arc<Payload>, acks: &[Ack]) -> bool {
        let offered = match &*self.inlet {
            QueueInput::Memory(queue) => queue.0.offer(payload),
            QueueInput::Disk(writer) => match writer.try_reserve() {
                Ok(permit) => {
                    permit.send(Appending {
                        payload: Arc::clone(payload),
                        acks: acks.to_vec(),
                    });
                    Offered::Taken { dropped: 0 }
                }
                Err(mpsc::error::TrySendError::Full(())) => Offered::Full,
                Err(mpsc::error::TrySendError::Closed(())) => Offered::Closed,
            },
        };
        match offered {
            Offered::Taken { dropped } => {
                if dropped > 0 {
                    self.metrics
                        .dropped(&self.name, DropReason::QueueFull, dropped);
                    self.state.filled(Filled::DroppingOldest);
                } else {
                    self.state.maybe_drained();
                }
                true
            }
            Offered::Full => false,
            Offered::Closed => {
                let spans = payload.spans() as u64;
                refuse(
                    &self.name,
                    &self.metrics,
                    acks.to_vec(),
                    NotQueued::Stopped,
                    spans,
                );
                true
            }
        }
    }

    /// Waits until the queue may take `payload` (or no longer takes anything); the pipeline
    /// waits here only when every exporter is full.
    pub async fn room(&self, payload: &Payload) {
        match &*self.inlet {
            QueueInput::Memory(queue) => {
                self.state.filled(Filled::Blocking);
                queue.0.room(payload).await;
            }
            // The writer being behind is not a full queue: the writer reports that.
            QueueInput::Disk(writer) => {
                // The permit goes back at once: only the pipeline sends, so the room stays.
                let _ = writer.reserve().await;
            }
        }
    }

    /// Drops the batch for this exporter alone, counted as `queue_full`: its queue is full
    /// while other exporters took the batch.
    pub fn shed(&self, payload: &Payload) {
        self.metrics
            .dropped(&self.name, DropReason::QueueFull, payload.spans() as u64);
        self.state.filled(Filled::Shedding);
    }
}

/// Fails the waiting clients (they retry), or counts the spans as dropped when no client
/// waits for them.
pub(super) fn refuse(name: &str, metrics: &Metrics, acks: Vec<Ack>, reason: NotQueued, spans: u64) {
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

/// What an exporter's tasks share with the rest of the agent.
#[derive(Default)]
pub struct Tasks {
    /// The agent's counters.
    pub metrics: Arc<Metrics>,
    /// Cancelled when `shutdown_timeout` has passed: what is left is abandoned.
    pub abandon: CancellationToken,
    /// Watches the tasks: a panic in one fails the agent.
    pub supervisor: Supervisor,
    /// Where each exporter reports its health, for `/readyz`.
    pub health: Arc<Health>,
}

/// Starts the queue task for `exporter` (opening its persistent queue under
/// `queue.dir/<name>` if it has one); the task ends when every handle is dropped and the
/// queue is drained, or when `abandon` is cancelled: what is left is counted as dropped
/// from memory, or stays on disk and is returned as spans left.
pub fn spawn<E: Exporter>(
    name: &str,
    exporter: E,
    config: &ExporterConfig,
    tasks: Tasks,
) -> Result<(ExporterHandle, JoinHandle<Option<u64>>), OpenError> {
    let Tasks {
        metrics,
        abandon,
        supervisor,
        health,
    } = tasks;
    let queue = &config.queue;
    let name: Arc<str> = Arc::from(name);
    let bounds = (queue.span_limit() as u64, queue.byte_limit());
    let new_state = |depth: Arc<dyn QueueDepth>| {
        metrics.declare_exporter(&name, Arc::clone(&depth));
        Arc::new(ExporterState::new(
            Arc::clone(&name),
            health.register(&name),
            depth,
            bounds,
        ))
    };
    let (inlet, backlog, state) = match &queue.dir {
        Some(dir) if queue.persistent => {
            let disk = open_persistent(&name, &dir.join(dir_name(&name)), config, &metrics)?;
            let state = new_state(Arc::clone(&disk) as Arc<dyn QueueDepth>);
            let (tx, rx) = mpsc::channel(WRITER_QUEUE);
            supervisor.spawn(
                format!("exporter {name} (persistent queue writer)"),
                write_loop(
                    Arc::clone(&disk),
                    rx,
                    Arc::clone(&name),
                    Arc::clone(&metrics),
                    Arc::clone(&state),
                ),
            );
            (QueueInput::Disk(tx), Backlog::Disk(disk), state)
        }
        _ => {
            let memory = Arc::new(BoundedQueue::new(
                queue.span_limit(),
                usize::try_from(queue.byte_limit()).unwrap_or(usize::MAX),
                queue.on_full,
            ));
            let state = new_state(Arc::clone(&memory) as Arc<dyn QueueDepth>);
            (
                QueueInput::Memory(Closer(Arc::clone(&memory))),
                Backlog::Memory(memory),
                state,
            )
        }
    };
    let handle = ExporterHandle {
        name: Arc::clone(&name),
        inlet: Arc::new(inlet),
        metrics: Arc::clone(&metrics),
        state: Arc::clone(&state),
    };
    let worker = Worker {
        name: Arc::clone(&name),
        task: Arc::from(format!("exporter {name}")),
        exporter: Arc::new(exporter),
        policy: Arc::new(RetryPolicy::from_config(&config.retry)),
        workers: queue.workers.max(1),
        metrics,
        abandon,
        supervisor: supervisor.clone(),
        state,
    };
    let task = supervisor.spawn(format!("exporter {name}"), worker.run(backlog));
    Ok((handle, task))
}

/// Batches waiting for the writer task; the pipeline waits when it is behind.
const WRITER_QUEUE: usize = 16;

/// An exporter name as a directory name: anything but letters, digits, `-` and `_` becomes `_`.
pub(super) fn dir_name(name: &str) -> String {
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

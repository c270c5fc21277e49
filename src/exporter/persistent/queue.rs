//! The persistent queue shared by an exporter's writer task (which appends) and its
//! workers (which take records, load them and mark them done).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::log::{LogOptions, OpenError, Record, Recovery, SegmentLog, read_record};
use crate::exporter::Payload;
use crate::exporter::wait::wait_for;
use crate::otlp::SpanBatch;
use crate::pipeline::NotQueued;
use crate::telemetry::metrics::QueueDepth;

/// A [`SegmentLog`] shared by the exporter's writer and its workers.
pub struct PersistentQueue {
    dir: PathBuf,
    state: Mutex<QueueState>,
    /// Woken when records arrive and when the queue closes.
    changed: Notify,
}

struct QueueState {
    log: SegmentLog,
    closed: bool,
}

impl PersistentQueue {
    /// Opens the queue in `dir`, returning what the previous run left in it.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(Self, Recovery), OpenError> {
        let (log, recovery) = SegmentLog::open(dir, options)?;
        let queue = Self {
            dir: dir.to_owned(),
            state: Mutex::new(QueueState { log, closed: false }),
            changed: Notify::new(),
        };
        Ok((queue, recovery))
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a group of batches and forces them to disk per the policy (blocking I/O);
    /// per batch, the spans dropped to make room or why it was not written.
    pub fn append_group(&self, payloads: &[Arc<Payload>]) -> Vec<Result<usize, NotQueued>> {
        let mut state = self.lock();
        let mut results: Vec<_> = payloads.iter().map(|p| state.log.append(p)).collect();
        if let Err(reason) = state.log.sync() {
            // Written but maybe not durable: the clients must not be told it is.
            for result in &mut results {
                if result.is_ok() {
                    *result = Err(reason);
                }
            }
        }
        drop(state);
        self.changed.notify_waiters();
        results
    }

    /// The oldest record not handed out yet, waiting for one; `None` once closed and empty.
    pub async fn next(&self) -> Option<Record> {
        wait_for(&self.changed, || {
            let mut state = self.lock();
            match state.log.take_next() {
                Some(record) => Some(Some(record)),
                None => state.closed.then_some(None),
            }
        })
        .await
    }

    /// The record's batch: from memory when it is still there, else read from its segment
    /// (blocking I/O).
    pub fn load(&self, record: &mut Record) -> io::Result<Arc<Payload>> {
        if let Some(hot) = record.take_hot() {
            return Ok(hot);
        }
        let (spans, body) = read_record(&self.dir, record)?;
        Ok(Arc::new(Payload::new(SpanBatch::from_encoded(body, spans))))
    }

    /// The record is delivered (or refused for good): it leaves the disk.
    pub fn done(&self, record: &Record) {
        self.lock().log.done(record);
    }

    /// No more appends will come: the workers drain what is left, then stop.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Spans on disk not yet acknowledged by the backend.
    pub fn spans(&self) -> usize {
        self.lock().log.spans()
    }
}

impl QueueDepth for PersistentQueue {
    fn depth(&self) -> (u64, u64) {
        let state = self.lock();
        (state.log.spans() as u64, state.log.disk_bytes())
    }
}

//! The persistent queue: an exporter's backlog kept in an append-only log of segment
//! files, so what the receivers acknowledged survives a crash and is sent after a restart.
//!
//! - [`log`]: the segment files, their record format, replay and damage rules.
//! - [`queue`]: the log shared by an exporter's writer task and its workers.

pub mod log;
pub mod queue;

pub use log::{
    LogOptions, MAGIC, MAX_SEGMENT, OpenError, Record, RecordId, Recovery, SegmentLog, read_record,
};
pub use queue::PersistentQueue;

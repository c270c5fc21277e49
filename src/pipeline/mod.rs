//! The pipeline between the receivers and the exporters: one task takes the requests the
//! receivers accepted, runs the processor stages over them, batches them, and hands each
//! batch to the [`Outlet`] (the exporters' fan-out) with the answers its clients wait for.
//!
//! - [`ack`]: the promise a receiver waits on with persistent queues: answered once the
//!   spans are written.
//! - [`batcher`]: groups spans into batches bounded by spans and encoded bytes.
//! - [`batching`]: the batcher plus the answers of the clients whose spans it holds.
//! - [`ledger`]: the acknowledged spans in the pipeline's memory, for a failure to count.
//! - [`task`]: the pipeline task.

pub mod ack;
pub mod batcher;
pub mod batching;
pub mod ledger;
pub mod task;

pub use ack::{Ack, AckWait, NotQueued};
pub use batcher::Batcher;
pub use ledger::Ledger;
pub use task::{
    Accepted, Inbox, Inlet, Outlet, Pipeline, StageFailure, StageSwap, queue, sharded_queue,
};

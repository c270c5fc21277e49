//! daena-trace-agent: an OTLP trace sidecar for Daena services.
//!
//! # Layout
//! One pipeline, one module per part of it:
//!
//! ```text
//! receiver/ (grpc, http) ──► pipeline/ (processor/ stages, then the batcher) ──► exporter/ (fan-out, queue + retry per backend)
//! ```
//!
//! Imports run downhill: `receiver` and `exporter` depend on `pipeline` (the requests it
//! takes, the answers it carries, the [`pipeline::Outlet`] it hands batches to), never
//! on each other; `pipeline` depends on `processor`; all of them on `otlp`, `config`
//! and `telemetry`. `scripts/check-layering.py` checks it.
//!
//! - [`otlp`]: the only module that names the generated OTLP types, plus OTLP/JSON.
//! - [`receiver`]: OTLP/gRPC and OTLP/HTTP servers; they hand batches to the pipeline or refuse.
//! - [`pipeline`]: the pipeline task, the batcher, and the answers clients wait for.
//! - [`processor`]: the [`processor::Processor`] stage trait and the stages.
//! - [`exporter`]: OTLP/gRPC, OTLP/HTTP and console exporters, each behind its own bounded
//!   queue, in memory or on disk.
//! - [`config`]: the YAML config, its defaults, validation and the `OTEL_EXPORTER_OTLP_*` fallback.
//! - [`telemetry`]: the agent's own logs and counters.
//! - [`accept`]: accepting connections under a cap, for the receivers and the telemetry
//!   endpoint; it imports only `log_limit`.
//! - [`log_limit`]: one line per interval for warnings that can repeat per request or
//!   connection; it imports nothing of the crate, so every module may use it.
//! - [`app`]: wiring only: builds the parts from the config and runs them until shutdown.

#![forbid(unsafe_code)]
// Input from outside never unwraps: every failure is an answer or a counted drop.
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod accept;
pub mod app;
pub mod config;
pub mod exporter;
pub mod log_limit;
pub mod otlp;
pub mod pipeline;
pub mod processor;
pub mod receiver;
pub mod supervisor;
pub mod telemetry;

//! daena-trace-agent: an OTLP trace sidecar for Daena services.
//!
//! # Layout
//! One pipeline, one module per part of it:
//!
//! ```text
//! receiver/ (grpc, http) ──► processor/ (stages, then the batcher) ──► exporter/ (queue + retry per backend)
//! ```
//!
//! - [`otlp`]: the only module that names the generated OTLP types, plus OTLP/JSON.
//! - [`receiver`]: OTLP/gRPC and OTLP/HTTP servers; they hand batches to the pipeline or refuse.
//! - [`processor`]: the [`processor::Processor`] stage trait, the pipeline task and the batcher.
//! - [`exporter`]: OTLP/gRPC, OTLP/HTTP and console exporters, each behind its own bounded
//!   queue, in memory or on disk.
//! - [`config`]: the YAML config, its defaults, validation and the `OTEL_EXPORTER_OTLP_*` fallback.
//! - [`telemetry`]: the agent's own logs and counters.
//! - [`app`]: wiring only: builds the parts from the config and runs them until shutdown.

pub mod app;
pub mod config;
pub mod exporter;
pub mod otlp;
pub mod processor;
pub mod receiver;
pub mod telemetry;

//! Exporters: deliver batches to a backend (OTLP/gRPC, OTLP/HTTP) or to the console.
//!
//! Each exporter runs behind its own bounded queue and task ([`queue`]), with retries
//! ([`retry`]); the [`fanout`] hands every batch to all of them, and a full one sheds its
//! own load while another has room, so a slow or dead backend never stalls the others.

pub mod console;
pub mod fanout;
pub mod grpc;
pub mod http;
pub mod loadbalancing;
pub mod persistent;
pub mod queue;
pub mod retry;
pub mod signals;
pub mod state;
pub mod swap;
mod transport;
mod wait;

use std::future::Future;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

pub use console::ConsoleExporter;
pub use fanout::Fanout;
pub use grpc::OtlpGrpcExporter;
pub use http::OtlpHttpExporter;
pub use queue::ExporterHandle;
pub use swap::{AnyExporter, SwappableExporter};

use crate::config::{ExporterConfig, ExporterProtocol};
use crate::otlp::{ExportTraceServiceRequest, SpanBatch};

/// One batch ready for the exporters, shared by all of them: encoded and compressed at
/// most once, however many exporters send it.
pub struct Payload {
    batch: SpanBatch,
    spans: usize,
    bytes: usize,
    /// Decoded on demand, for exporters that read spans (the console).
    request: OnceLock<ExportTraceServiceRequest>,
    /// The encoding and its gzip, each behind 5 spare bytes that hold the gRPC message
    /// prefix, so the gRPC exporter sends the same memory the HTTP exporter does.
    framed: [OnceLock<Bytes>; 2],
}

/// Length of gRPC's message prefix: a compressed flag and a big-endian length.
const GRPC_PREFIX: usize = 5;

impl Payload {
    /// Wraps a batch from the batcher.
    pub fn new(batch: SpanBatch) -> Self {
        let spans = batch.span_count();
        let bytes = batch.encoded_len();
        Self {
            batch,
            spans,
            bytes,
            request: OnceLock::new(),
            framed: Default::default(),
        }
    }

    /// The batch as a decoded export request.
    pub fn request(&self) -> &ExportTraceServiceRequest {
        self.request
            .get_or_init(|| self.batch.clone().into_request())
    }

    /// The batch itself, for an exporter that splits it (the load balancer).
    pub fn batch(&self) -> &SpanBatch {
        &self.batch
    }

    /// Number of spans in the batch.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Size of the batch's protobuf encoding.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The protobuf encoding, computed by the first exporter that needs it.
    pub fn encoded(&self) -> Bytes {
        self.grpc_frame(false).slice(GRPC_PREFIX..)
    }

    /// The encoding gzipped at level 1: on these batches it costs a fifth of level 6
    /// for about 10% more bytes (see docs/performance.md).
    pub fn gzipped(&self) -> Bytes {
        self.grpc_frame(true).slice(GRPC_PREFIX..)
    }

    /// The batch as one gRPC length-prefixed message, gzipped or not.
    pub fn grpc_frame(&self, gzip: bool) -> Bytes {
        self.framed[usize::from(gzip)]
            .get_or_init(|| {
                let mut frame = vec![0u8; GRPC_PREFIX];
                if gzip {
                    frame = gzip_onto(frame, &self.encoded());
                } else {
                    self.batch.encode_to(&mut frame);
                }
                seal_grpc_frame(frame, gzip)
            })
            .clone()
    }
}

/// An encoded message (the Daena signals' metrics) as one gRPC length-prefixed message,
/// gzipped at level 1 when `gzip`, as [`Payload::grpc_frame`] makes a batch's.
pub fn grpc_message_frame(message: &[u8], gzip: bool) -> Bytes {
    let mut frame = vec![0u8; GRPC_PREFIX];
    if gzip {
        frame = gzip_onto(frame, message);
    } else {
        frame.extend_from_slice(message);
    }
    seal_grpc_frame(frame, gzip)
}

/// `data` gzipped at level 1 and appended to `out`.
fn gzip_onto(mut out: Vec<u8>, data: &[u8]) -> Vec<u8> {
    out.reserve(data.len() / 4);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(data);
    encoder.finish().unwrap_or_default()
}

/// Fills in the prefix of a frame whose message follows [`GRPC_PREFIX`] spare bytes.
fn seal_grpc_frame(mut frame: Vec<u8>, gzip: bool) -> Bytes {
    let len = (frame.len() - GRPC_PREFIX) as u32;
    frame[0] = u8::from(gzip);
    frame[1..GRPC_PREFIX].copy_from_slice(&len.to_be_bytes());
    Bytes::from(frame)
}

/// A backend's answer to a delivered batch: spans it rejected (OTLP partial success).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Spans (data points, for metrics) the backend accepted the request for but rejected.
    pub rejected_spans: u64,
    /// The backend's explanation, if any.
    pub message: String,
    /// Spans not sent to this backend but handed to another exporter's queue (a load
    /// balancer's removed or down backend re-routing its share): neither delivered here
    /// nor dropped, and no news of this backend's health.
    pub handed_on: u64,
}

/// Why an export attempt failed, classified by the OTLP specification's retry rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    /// Worth another attempt, after `retry_after` when the backend said so.
    #[error("{message}")]
    Retryable {
        /// What happened, with the backend's words.
        message: String,
        /// The delay the backend asked for (`Retry-After`, `RetryInfo`).
        retry_after: Option<Duration>,
    },
    /// The backend refused the data; sending it again would fail again.
    #[error("{message}")]
    Permanent {
        /// What happened, with the backend's words.
        message: String,
    },
}

/// A destination for batches; the queue worker calls it, concurrently up to `queue.workers`.
pub trait Exporter: Send + Sync + 'static {
    /// Does the CPU-heavy part of sending (encoding, compressing) ahead of `export`; the
    /// queue runs it on a blocking thread so the receivers never wait behind it.
    fn prepare(&self, payload: &Payload) {
        let _ = payload;
    }

    /// Sends one batch once; retrying is the caller's business.
    fn export(
        &self,
        payload: &Payload,
    ) -> impl Future<Output = Result<Delivered, ExportError>> + Send;
}

/// Why an exporter could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The endpoint URL is not usable.
    #[error("exporters.{exporter}.endpoint: {message}")]
    Endpoint {
        /// The exporter's name.
        exporter: String,
        /// What is wrong.
        message: String,
    },
    /// A header cannot be sent (the value is never shown).
    #[error("exporters.{exporter}.headers: header {name:?} cannot be sent: {reason}")]
    Header {
        /// The exporter's name.
        exporter: String,
        /// The header's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings could not be loaded.
    #[error("exporters.{exporter}.tls: {message}")]
    Tls {
        /// The exporter's name.
        exporter: String,
        /// What is wrong.
        message: String,
    },
    /// The persistent queue could not be opened.
    #[error("exporters.{exporter}.queue: {source}")]
    Queue {
        /// The exporter's name.
        exporter: String,
        /// What failed.
        source: persistent::OpenError,
    },
}

/// A started exporter's queue: its handle for the fan-out, and its task, which ends when
/// the queue is drained (or abandoned) with the spans it left on disk.
pub type Queued = (ExporterHandle, JoinHandle<Option<u64>>);

/// Starts the exporter `name` behind its queue (in memory, or on disk when
/// `queue.persistent`): its handle for the fan-out, its task (which returns the spans it
/// left on disk, if any), and the exporter itself, which a config reload may replace (a
/// loadbalancing exporter, which routes over exporters of its own, has none).
pub fn start(
    name: &str,
    config: &ExporterConfig,
    tasks: queue::Tasks,
) -> Result<(Queued, Option<SwappableExporter>), BuildError> {
    if config.protocol == ExporterProtocol::Loadbalancing {
        return Ok((loadbalancing::start(name, config, tasks)?, None));
    }
    let exporter = SwappableExporter::new(AnyExporter::build(name, config)?);
    Ok((
        start_queue(name, exporter.clone(), config, tasks)?,
        Some(exporter),
    ))
}

/// Starts `exporter` behind the queue `config` describes, as [`start`] does.
fn start_queue<E: Exporter>(
    name: &str,
    exporter: E,
    config: &ExporterConfig,
    tasks: queue::Tasks,
) -> Result<Queued, BuildError> {
    queue::spawn(name, exporter, config, tasks).map_err(|source| BuildError::Queue {
        exporter: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use prost::Message;

    use super::*;
    use crate::otlp::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn every_form_of_a_payload_holds_the_same_request() {
        let batch = SpanBatch::new(vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    Span {
                        name: "nbmf.write".into(),
                        ..Default::default()
                    };
                    100
                ],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let payload = Payload::new(batch.clone());
        let request = batch.into_request();
        assert_eq!(payload.spans(), 100);
        assert_eq!(
            ExportTraceServiceRequest::decode(payload.encoded()).ok(),
            Some(request)
        );

        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&payload.gzipped()[..])
            .read_to_end(&mut plain)
            .expect("gzip");
        assert_eq!(plain, payload.encoded());

        for gzip in [false, true] {
            let frame = payload.grpc_frame(gzip);
            assert_eq!(frame[0], u8::from(gzip));
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            assert_eq!(len, frame.len() - 5);
        }
    }
}

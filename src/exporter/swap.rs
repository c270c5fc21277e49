//! Exporters whose settings a config reload replaces while their queue and workers keep
//! running: batches already taken finish on the exporter they started with, the next
//! ones go to the new one, so a reload neither drops nor repeats a span.

use std::sync::{Arc, RwLock};

use super::{
    BuildError, ConsoleExporter, Delivered, ExportError, Exporter, OtlpGrpcExporter,
    OtlpHttpExporter, Payload,
};
use crate::config::{ExporterConfig, ExporterProtocol, OtlpSignal};

/// Any exporter the config can name, as one type: a reload may change the protocol.
pub enum AnyExporter {
    /// OTLP/gRPC.
    Grpc(OtlpGrpcExporter),
    /// OTLP/HTTP with protobuf bodies.
    Http(OtlpHttpExporter),
    /// Lines on standard output.
    Console(ConsoleExporter),
}

impl AnyExporter {
    /// The exporter `config` describes, named `name` in errors.
    pub fn build(name: &str, config: &ExporterConfig) -> Result<Self, BuildError> {
        Ok(match config.protocol {
            ExporterProtocol::Grpc => {
                Self::Grpc(OtlpGrpcExporter::new(name, config, OtlpSignal::Traces)?)
            }
            ExporterProtocol::HttpProtobuf => {
                Self::Http(OtlpHttpExporter::new(name, config, OtlpSignal::Traces)?)
            }
            ExporterProtocol::Console if config.is_console_fallback() => {
                Self::Console(ConsoleExporter::stdout().warning_as_fallback())
            }
            ExporterProtocol::Console => Self::Console(ConsoleExporter::stdout()),
            // It routes over exporters of its own (`loadbalancing::start`); a reload
            // changing it needs a restart, so nothing builds it here.
            ExporterProtocol::Loadbalancing => {
                return Err(BuildError::Endpoint {
                    exporter: name.to_owned(),
                    message: "a loadbalancing exporter cannot be replaced while running; restart the agent".into(),
                });
            }
        })
    }
}

impl Exporter for AnyExporter {
    fn prepare(&self, payload: &Payload) {
        match self {
            Self::Grpc(exporter) => exporter.prepare(payload),
            Self::Http(exporter) => exporter.prepare(payload),
            Self::Console(exporter) => exporter.prepare(payload),
        }
    }

    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        match self {
            Self::Grpc(exporter) => exporter.export(payload).await,
            Self::Http(exporter) => exporter.export(payload).await,
            Self::Console(exporter) => exporter.export(payload).await,
        }
    }
}

/// The exporter a queue's workers use, replaceable while they run; clones share it.
#[derive(Clone)]
pub struct SwappableExporter {
    current: Arc<RwLock<Arc<AnyExporter>>>,
}

impl SwappableExporter {
    /// Starts with `exporter`.
    pub fn new(exporter: AnyExporter) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(exporter))),
        }
    }

    /// Sends the next batches to `exporter`; those in flight finish on the old one.
    pub fn replace(&self, exporter: AnyExporter) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(exporter);
    }

    fn current(&self) -> Arc<AnyExporter> {
        // The lock only guards the swap of one Arc; a panic cannot leave it half-done.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Exporter for SwappableExporter {
    fn prepare(&self, payload: &Payload) {
        self.current().prepare(payload);
    }

    async fn export(&self, payload: &Payload) -> Result<Delivered, ExportError> {
        let exporter = self.current();
        exporter.export(payload).await
    }
}

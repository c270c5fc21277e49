//! The Daena signals as OTLP metrics: every `processors.signals.interval` the table's
//! cumulative figures go to each exporter `processors.signals.export` names, over that
//! exporter's own transport, headers, TLS and compression, retried by its retry rules.
//!
//! The sums are cumulative, so an export that fails for good loses no count: the next one
//! carries them all. Retries therefore stop when the next export is due.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use prost::Message;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::retry::RetryPolicy;
use super::{BuildError, Delivered, ExportError, OtlpGrpcExporter, OtlpHttpExporter};
use crate::config::{Config, ExporterConfig, ExporterProtocol, OtlpSignal};
use crate::log_limit::{LogLimit, REPEAT_INTERVAL};
use crate::otlp::{Resource, Value, key_value};
use crate::supervisor::Supervisor;
use crate::telemetry::Metrics;

/// A backend refusing every export would log a line per interval and exporter.
static FAILED_LOG: LogLimit = LogLimit::new(REPEAT_INTERVAL);

/// An OTLP exporter's settings pointed at its backend's metrics service.
enum MetricsSender {
    Grpc(OtlpGrpcExporter),
    Http(OtlpHttpExporter),
}

impl MetricsSender {
    fn build(name: &str, config: &ExporterConfig) -> Result<Self, BuildError> {
        match config.protocol {
            ExporterProtocol::Grpc => Ok(Self::Grpc(OtlpGrpcExporter::new(
                name,
                config,
                OtlpSignal::Metrics,
            )?)),
            ExporterProtocol::HttpProtobuf => Ok(Self::Http(OtlpHttpExporter::new(
                name,
                config,
                OtlpSignal::Metrics,
            )?)),
            // Validation refuses this; a config built in code may still try.
            ExporterProtocol::Console => Err(BuildError::Endpoint {
                exporter: name.to_owned(),
                message: "a console exporter cannot take the signals as OTLP metrics; name an OTLP exporter in processors.signals.export".into(),
            }),
            ExporterProtocol::Loadbalancing => Err(BuildError::Endpoint {
                exporter: name.to_owned(),
                message: "a loadbalancing exporter cannot take the signals; name an OTLP exporter in processors.signals.export".into(),
            }),
        }
    }

    async fn send(&self, message: &[u8]) -> Result<Delivered, ExportError> {
        match self {
            Self::Grpc(exporter) => exporter.export_message(message).await,
            Self::Http(exporter) => exporter.export_message(message).await,
        }
    }
}

/// One exporter the signals go to.
struct Target {
    name: String,
    sender: MetricsSender,
    policy: RetryPolicy,
}

impl Target {
    /// Sends `message`, retrying until it is delivered, refused, out of retries or
    /// superseded by the export due at `next`; counts the result.
    async fn deliver(&self, message: &[u8], next: Instant, metrics: &Metrics) {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let error = match self.sender.send(message).await {
                Ok(delivered) => return self.sent(&delivered, metrics),
                Err(error) => error,
            };
            let retry = match &error {
                ExportError::Retryable { retry_after, .. } => self
                    .policy
                    .next_retry(attempt, *retry_after, started)
                    .filter(|delay| Instant::now() + *delay < next),
                ExportError::Permanent { .. } => None,
            };
            let Some(delay) = retry else {
                return self.failed(&error, metrics);
            };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt, for the last export at shutdown.
    async fn send_once(&self, message: &[u8], metrics: &Metrics) {
        match self.sender.send(message).await {
            Ok(delivered) => self.sent(&delivered, metrics),
            Err(error) => self.failed(&error, metrics),
        }
    }

    fn sent(&self, delivered: &Delivered, metrics: &Metrics) {
        metrics.signals_exported(&self.name, true);
        if delivered.rejected_spans > 0 {
            tracing::warn!(exporter = %self.name, rejected_data_points = delivered.rejected_spans, backend_message = %delivered.message, "The backend accepted the Daena signals but rejected some data points");
        }
    }

    fn failed(&self, error: &ExportError, metrics: &Metrics) {
        metrics.signals_exported(&self.name, false);
        if let Some(suppressed) = FAILED_LOG.check() {
            tracing::warn!(exporter = %self.name, %error, suppressed, "The Daena signals could not be sent as OTLP metrics; the next export, cumulative, carries the same counts");
        }
    }
}

/// Sends the Daena signals' table as OTLP metrics to the configured exporters.
pub struct SignalsExport {
    targets: Vec<Target>,
    interval: Duration,
    metrics: Arc<Metrics>,
    identity: AgentIdentity,
}

impl SignalsExport {
    /// The export `config` asks for, or `None` when `processors.signals.export` is empty.
    fn build(
        config: &Config,
        metrics: Arc<Metrics>,
        identity: AgentIdentity,
    ) -> Result<Option<Self>, BuildError> {
        let signals = &config.processors.signals;
        if signals.export.is_empty() || !signals.enabled {
            return Ok(None);
        }
        let mut targets = Vec::new();
        for name in &signals.export {
            let Some(exporter) = config.exporters.get(name) else {
                return Err(BuildError::Endpoint {
                    exporter: name.clone(),
                    message: "processors.signals.export names an exporter that does not exist"
                        .into(),
                });
            };
            metrics.declare_signals_export(name);
            targets.push(Target {
                name: name.clone(),
                sender: MetricsSender::build(name, exporter)?,
                policy: RetryPolicy::from_config(&exporter.retry),
            });
        }
        Ok(Some(Self {
            targets,
            interval: signals.interval,
            metrics,
            identity,
        }))
    }

    /// Sends every `interval` until `stop`, then once more, one attempt each, so that the
    /// counts of the last interval reach the backends too.
    async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval_at(Instant::now() + self.interval, self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let message = self.encode();
            let next = Instant::now() + self.interval;
            let sends = self
                .targets
                .iter()
                .map(|target| target.deliver(&message, next, &self.metrics));
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = join_all(sends) => {}
            }
        }
        let message = self.encode();
        join_all(
            self.targets
                .iter()
                .map(|target| target.send_once(&message, &self.metrics)),
        )
        .await;
    }

    /// The table now, as an encoded `ExportMetricsServiceRequest`.
    fn encode(&self) -> Vec<u8> {
        let table = self.metrics.signals().lock();
        table
            .to_otlp(
                self.identity.resource(),
                self.identity.started,
                unix_nanos(SystemTime::now()),
            )
            .encode_to_vec()
    }
}

/// The running export, which a reload replaces and the agent's stop finishes.
pub struct SignalsExporter {
    running: Option<JoinHandle<Option<()>>>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    identity: AgentIdentity,
    supervisor: Supervisor,
}

impl SignalsExporter {
    /// Starts the export `config` asks for, if any.
    pub fn start(
        config: &Config,
        metrics: Arc<Metrics>,
        supervisor: Supervisor,
    ) -> Result<Self, BuildError> {
        let mut exporter = Self {
            running: None,
            stop: CancellationToken::new(),
            metrics,
            identity: AgentIdentity::of_this_process(),
            supervisor,
        };
        let export = exporter.build(config)?;
        exporter.replace(export);
        Ok(exporter)
    }

    /// The export `config` asks for, built but not started, so that a reload can fail
    /// before it changes anything.
    pub fn build(&self, config: &Config) -> Result<Option<SignalsExport>, BuildError> {
        SignalsExport::build(config, Arc::clone(&self.metrics), self.identity.clone())
    }

    /// Runs `export` instead of the running one. The counts live in the table, so the
    /// new export carries on where the old one stopped.
    pub fn replace(&mut self, export: Option<SignalsExport>) {
        if let Some(running) = self.running.take() {
            running.abort();
        }
        self.running = export.map(|export| {
            self.supervisor
                .spawn("signals export", export.run(self.stop.clone()))
        });
    }

    /// Sends the last counts (once, by `deadline`) and ends the export.
    pub async fn finish(self, deadline: Instant) {
        self.stop.cancel();
        if let Some(mut running) = self.running
            && tokio::time::timeout_at(deadline, &mut running)
                .await
                .is_err()
        {
            running.abort();
        }
    }
}

/// Who sends the signals: the resource every export carries and the time the counts
/// start from. Made once per process, so a reload keeps the series continuous.
#[derive(Debug, Clone)]
struct AgentIdentity {
    /// `service.instance.id`: the host name (a pod's name in Kubernetes), else random, so
    /// that the cumulative series of two sidecars never collide in a backend.
    instance: String,
    /// Unix nanoseconds when the agent started: the sums' start time.
    started: u64,
}

impl AgentIdentity {
    /// This process's identity, named by `HOSTNAME` when it is set.
    fn of_this_process() -> Self {
        let instance = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| {
                let bits: u128 = rand::random();
                format!("{bits:032x}")
            });
        Self {
            instance,
            started: unix_nanos(SystemTime::now()),
        }
    }

    /// The agent's resource: `service.name` `daena-trace-agent`, its version and instance.
    fn resource(&self) -> Resource {
        let text = |s: &str| Value::StringValue(s.to_owned());
        Resource {
            attributes: vec![
                key_value("service.name", text("daena-trace-agent")),
                key_value("service.version", text(env!("CARGO_PKG_VERSION"))),
                key_value("service.instance.id", text(&self.instance)),
            ],
            ..Default::default()
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

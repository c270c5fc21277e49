//! Wiring only: builds the receivers, pipeline and exporters from the config, runs
//! them, and stops them in order (receivers, then pipeline flush, then exporter drain).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, parse_listen_addr};
use crate::exporter::signals::SignalsExporter;
use crate::exporter::{self, ExporterHandle, Fanout};
use crate::pipeline::{self, Batcher, Inbox, Ledger, Pipeline};
use crate::processor;
use crate::receiver::conn::{ConnectionLimits, cap_connections, open_file_limit, open_files};
use crate::receiver::grpc::GrpcReceiver;
use crate::receiver::http::HttpReceiver;
use crate::receiver::{Intake, RequestLimits, Security, SecurityError, exposure_warning};
use crate::supervisor::{Supervisor, TaskFailure};
use crate::telemetry::health::Health;
use crate::telemetry::memory::MemoryLimiter;
use crate::telemetry::metrics::DropReason;
use crate::telemetry::mix::DaenaMix;
use crate::telemetry::reload::{ReloadHandle, ReloadRequests, reload_channel};
use crate::telemetry::server::{Phase, Telemetry};
use crate::telemetry::status::{self, MemoryLimits};
use crate::telemetry::{self, Metrics};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be opened.
    #[error("cannot listen on {endpoint} ({key}): {source}; free the port or change {key}")]
    Bind {
        /// The config key naming the endpoint.
        key: &'static str,
        /// The endpoint as configured.
        endpoint: String,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// An endpoint in the config is not a listen address (normally caught by validation).
    #[error("{key}: {message}")]
    Endpoint {
        /// The config key naming the endpoint.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A receiver's `tls` or `auth` file could not be used (normally caught by validation).
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// An exporter could not be built.
    #[error(transparent)]
    Exporter(#[from] exporter::BuildError),
    /// A task of the agent failed; the agent stopped in order, and this is what it lost.
    #[error(
        "{failure}; stopped: {} acknowledged spans lost in memory, {} abandoned at shutdown_timeout, {} left in persistent queues for the next start",
        report.lost_spans, report.abandoned_spans, report.spans_left_on_disk
    )]
    Failed {
        /// The task that failed first, and how.
        failure: TaskFailure,
        /// What happened to the spans in flight.
        report: ShutdownReport,
    },
}

/// An agent whose listeners are bound and exporters built, ready to [`run`](Self::run).
pub struct Agent {
    config: Config,
    grpc: Option<TcpListener>,
    http: Option<TcpListener>,
    telemetry: Option<TcpListener>,
    /// The receivers' TLS and auth, loaded at bind so that a bad file stops the start.
    security: [Security; 2],
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Hands the allocator's free memory back to the system (the binary's `malloc_trim`).
    release_memory: Option<fn()>,
    /// Loads the config file again, for a reload.
    source: Option<ConfigSource>,
    reload_handle: ReloadHandle,
    reload_requests: ReloadRequests,
    /// Stages appended after the configured ones, to inject faults in tests.
    #[cfg(test)]
    extra_stages: Vec<fn() -> Box<dyn crate::processor::Processor>>,
}

/// What happened to the spans in flight when the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Spans dropped because `shutdown_timeout` passed before they were exported.
    pub abandoned_spans: u64,
    /// Spans left in persistent queues, delivered when the agent starts again.
    pub spans_left_on_disk: u64,
    /// Acknowledged spans still in the pipeline's memory when it stopped: after a failure,
    /// or past `shutdown_timeout`, they are lost (counted as dropped by the `pipeline` stage).
    pub lost_spans: u64,
}

impl Agent {
    /// Binds every listener the config enables, so that ports are known (and taken) before running.
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        let receivers = &config.receivers.otlp;
        let grpc = match &receivers.grpc {
            Some(r) => Some(listen("receivers.otlp.grpc.endpoint", &r.endpoint).await?),
            None => None,
        };
        let http = match &receivers.http {
            Some(r) => Some(listen("receivers.otlp.http.endpoint", &r.endpoint).await?),
            None => None,
        };
        let telemetry = match &config.telemetry.endpoint {
            Some(endpoint) => Some(listen("telemetry.endpoint", endpoint).await?),
            None => None,
        };
        let security = [
            ("grpc", "receivers.otlp.grpc", &receivers.grpc),
            ("http", "receivers.otlp.http", &receivers.http),
        ]
        .map(|(receiver, key, config)| match config {
            Some(config) => Security::start(receiver, key, config),
            None => Ok(Security::default()),
        });
        let [grpc_security, http_security] = security;
        let security = [grpc_security?, http_security?];
        let (reload_handle, reload_requests) = reload_channel();
        Ok(Self {
            config,
            grpc,
            http,
            telemetry,
            security,
            metrics: Arc::default(),
            health: Arc::default(),
            release_memory: None,
            source: None,
            reload_handle,
            reload_requests,
            #[cfg(test)]
            extra_stages: Vec::new(),
        })
    }

    /// Reloads the config from `source` (the file the agent was started with) on request:
    /// SIGHUP in the binary, `POST /-/reload` on the telemetry endpoint.
    pub fn reloading_with(
        mut self,
        source: impl Fn() -> Result<Config, ConfigErrors> + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// A handle that asks the running agent to reload its config.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload_handle.clone()
    }

    /// Calls `release` to hand the allocator's free memory back to the system after a
    /// spike (the binary passes glibc's `malloc_trim`; the library has no unsafe code).
    pub fn releasing_memory_with(mut self, release: fn()) -> Self {
        self.release_memory = Some(release);
        self
    }

    /// The bound OTLP/gRPC address, if that receiver is enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound OTLP/HTTP address, if that receiver is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound telemetry (`/metrics`) address, if enabled.
    pub fn telemetry_addr(&self) -> Option<SocketAddr> {
        self.telemetry.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The agent's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Each exporter's health, as `/readyz` reads it.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// Runs until `shutdown` completes, or until a task of the agent fails, then stops in
    /// order within `shutdown_timeout`. A failure is an error carrying the report.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<ShutdownReport, AppError> {
        let Self {
            config,
            grpc,
            http,
            telemetry,
            security: [grpc_security, http_security],
            metrics,
            health,
            release_memory,
            source,
            reload_handle,
            mut reload_requests,
            #[cfg(test)]
            extra_stages,
        } = self;
        let supervisor = Supervisor::new();
        let state = Arc::new(
            Telemetry::new(
                Arc::clone(&metrics),
                Arc::clone(&health),
                supervisor.clone(),
            )
            .with_reload(reload_handle.clone()),
        );
        let abandon = CancellationToken::new();
        let mut handles: Vec<ExporterHandle> = Vec::new();
        let mut exporter_tasks = Vec::new();
        let mut exporters = BTreeMap::new();
        for (name, exporter_config) in &config.exporters {
            let tasks = exporter::queue::Tasks {
                metrics: Arc::clone(&metrics),
                abandon: abandon.clone(),
                supervisor: supervisor.clone(),
                health: Arc::clone(&health),
            };
            let ((handle, task), swappable) = exporter::start(name, exporter_config, tasks)?;
            if let Some(swappable) = swappable {
                exporters.insert(name.clone(), swappable);
            }
            handles.push(handle);
            exporter_tasks.push(task);
        }

        let shards = config.pipeline.shards();
        let (tx, inboxes) = pipeline::sharded_queue(config.pipeline.max_pending_requests, shards);
        let ledgers: Vec<Arc<Ledger>> = inboxes.iter().map(Inbox::ledger).collect();
        let mix = Arc::new(DaenaMix::default());
        // Shared by the shards: the exporter queues close when the last pipeline ends.
        let fanout = Arc::new(Fanout::new(handles));
        let signals_export =
            SignalsExporter::start(&config, Arc::clone(&metrics), supervisor.clone())?;
        let stage_config = config.processors.per_shard(shards);
        let mut stages = Vec::with_capacity(shards);
        let mut pipelines = Vec::with_capacity(shards);
        for (shard, inbox) in inboxes.into_iter().enumerate() {
            #[cfg_attr(not(test), allow(unused_mut))]
            let mut processors = processor::build(&stage_config, &metrics, &mix);
            #[cfg(test)]
            processors.extend(extra_stages.iter().map(|stage| stage()));
            let (swaps, stage_swaps) = mpsc::channel(1);
            stages.push(swaps);
            let pipeline = Pipeline::new(
                processors,
                Batcher::new(config.batch.max_spans, config.batch.max_bytes.0 as usize),
                config.batch.timeout,
                Arc::clone(&fanout),
            )
            .with_metrics(Arc::clone(&metrics))
            .with_stage_swaps(stage_swaps);
            // Thread names are cut at 15 bytes: `pipeline-63` fits.
            pipelines.push(
                supervisor
                    .spawn_service_on_thread(format!("pipeline-{shard}"), pipeline.run(inbox)),
            );
        }
        drop(fanout);

        let stop_receivers = CancellationToken::new();
        let budget = config.memory_limit.budget();
        let memory_budget = metrics.memory_budget(budget.0);
        metrics.memory_limits(config.memory_limit.soft.0, config.memory_limit.hard.0);
        let limiter = MemoryLimiter::start(
            config.memory_limit.soft.0,
            config.memory_limit.hard.0,
            release_memory,
            Arc::clone(&memory_budget),
            stop_receivers.clone(),
            &supervisor,
        );
        let mut intake = Intake::new(tx, Arc::clone(&metrics))
            .with_memory_limit(limiter)
            .with_budget(memory_budget);
        if config.exporters.values().any(|e| e.queue.persistent) {
            intake = intake.durable();
        }
        let mut servers = Vec::new();
        let receivers = &config.receivers.otlp;
        for (key, receiver) in [
            ("receivers.otlp.grpc", &receivers.grpc),
            ("receivers.otlp.http", &receivers.http),
        ] {
            if let Some(warning) = receiver.as_ref().and_then(|r| exposure_warning(key, r)) {
                tracing::warn!("{warning}");
            }
        }
        let listening = describe_listeners(
            [
                (grpc.as_ref(), &grpc_security),
                (http.as_ref(), &http_security),
            ],
            telemetry.as_ref(),
        );
        let [grpc_limits, http_limits] = connection_limits(&config);
        if let (Some(listener), Some(receiver), Some(limits)) =
            (grpc, &config.receivers.otlp.grpc, grpc_limits)
        {
            let server = GrpcReceiver::new(
                intake
                    .clone()
                    .with_limits(RequestLimits::from_config(receiver, budget)),
                receiver.max_request_size.0 as usize,
                limits,
            )
            .with_security(grpc_security);
            servers.push(supervisor.spawn_service(
                "OTLP/gRPC receiver",
                server.serve(listener, stop_receivers.clone()),
            ));
        }
        if let (Some(listener), Some(receiver), Some(limits)) =
            (http, &config.receivers.otlp.http, http_limits)
        {
            let server = HttpReceiver::new(
                intake
                    .clone()
                    .with_limits(RequestLimits::from_config(receiver, budget)),
                receiver.max_request_size.0 as usize,
                limits,
            )
            .with_security(http_security);
            servers.push(supervisor.spawn_service(
                "OTLP/HTTP receiver",
                server.serve(listener, stop_receivers.clone()),
            ));
        }
        let stop_telemetry = CancellationToken::new();
        let limits = MemoryLimits {
            soft: config.memory_limit.soft.0,
            hard: config.memory_limit.hard.0,
            budget: budget.0,
        };
        let status = status::routes(
            Arc::clone(&metrics),
            Arc::clone(&health),
            Arc::clone(&mix),
            limits,
            config
                .console_fallback_warning()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        );
        let telemetry_task = telemetry.map(|listener| {
            supervisor.spawn_service(
                "telemetry endpoint",
                telemetry::server::serve(
                    listener,
                    Arc::clone(&state),
                    status,
                    stop_telemetry.clone(),
                ),
            )
        });
        state.set_phase(Phase::Running);

        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "daena-trace-agent started: {listening}; exporters: {}",
            describe_exporters(&config)
        );
        if let Some(warning) = config.console_fallback_warning() {
            tracing::warn!("{warning}");
        }
        for warning in config.insecure_tls_warnings() {
            tracing::warn!("{warning}");
        }

        let mut reloader = Reloader {
            current: config,
            source,
            stages,
            shards,
            exporters,
            signals_export,
            metrics: Arc::clone(&metrics),
            mix: Arc::clone(&mix),
        };
        drop(reload_handle);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!(
                        "Shutting down: receivers stop, batched spans are flushed, exporters drain for up to {:?}",
                        reloader.current.shutdown_timeout
                    );
                    break;
                }
                // The supervisor logged it; what follows is the same orderly stop.
                _ = supervisor.failed() => break,
                Some(answer) = reload_requests.next() => {
                    let _ = answer.send(reloader.reload().await);
                }
            }
        }
        let Reloader {
            current: config,
            signals_export,
            ..
        } = reloader;
        supervisor.stop();
        state.set_phase(Phase::Stopping);
        let deadline = Instant::now() + config.shutdown_timeout;
        stop_receivers.cancel();
        // In-flight requests finish; past the deadline the servers are cut off.
        for mut server in servers {
            if tokio::time::timeout_at(deadline, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        // The pipeline's queue closes when the last intake goes: only now, after the
        // receivers, so the pipeline never ends before the agent stops.
        drop(intake);
        let _ = tokio::time::timeout_at(deadline, futures_util::future::join_all(pipelines)).await;
        // Every span is counted now: the last figures go out while the exporters drain.
        signals_export.finish(deadline).await;
        let mut spans_left_on_disk = 0;
        let mut unfinished = Vec::new();
        for mut task in exporter_tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(left) => spans_left_on_disk += left.ok().flatten().unwrap_or(0),
                Err(_) => unfinished.push(task),
            }
        }
        // Whatever is still queued or retrying now is abandoned: counted when it was in
        // memory, left for the next start when it is on disk.
        abandon.cancel();
        for task in unfinished {
            spans_left_on_disk += task.await.ok().flatten().unwrap_or(0);
        }

        stop_telemetry.cancel();
        if let Some(task) = telemetry_task {
            let _ = task.await;
        }
        let failure = supervisor.failure();
        // What the pipeline still holds was acknowledged and is lost with the process.
        let lost_spans: u64 = ledgers.iter().map(|ledger| ledger.in_memory()).sum();
        let reason = match failure {
            Some(_) => DropReason::AgentFailure,
            None => DropReason::Shutdown,
        };
        metrics.dropped_in_pipeline(reason, lost_spans);
        let report = ShutdownReport {
            abandoned_spans: metrics.dropped_total(DropReason::Shutdown),
            spans_left_on_disk,
            lost_spans,
        };
        if let Some(failure) = failure {
            return Err(AppError::Failed { failure, report });
        }
        match report {
            ShutdownReport {
                abandoned_spans: 0,
                spans_left_on_disk: 0,
                lost_spans: 0,
            } => tracing::info!(
                "Stopped: every accepted span was handed to the exporters' backends or dropped as counted in /metrics; none abandoned"
            ),
            ShutdownReport {
                abandoned_spans: 0,
                spans_left_on_disk,
                lost_spans: 0,
            } => tracing::info!(
                spans_left_on_disk,
                "Stopped after shutdown_timeout; the undelivered spans stay in the persistent queues and are sent when the agent starts again"
            ),
            ShutdownReport {
                abandoned_spans,
                spans_left_on_disk,
                lost_spans,
            } => tracing::warn!(
                abandoned_spans = abandoned_spans + lost_spans,
                spans_left_on_disk,
                "Stopped after shutdown_timeout with spans still undelivered in memory; they are lost"
            ),
        }
        Ok(report)
    }
}

async fn listen(key: &'static str, endpoint: &str) -> Result<TcpListener, AppError> {
    let addr =
        parse_listen_addr(endpoint).map_err(|message| AppError::Endpoint { key, message })?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind {
            key,
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// Descriptors kept free of the receivers' connections for the telemetry endpoint, logs,
/// DNS and the exporters' TLS roots, on top of what [`fd_reserve`] counts.
const FD_RESERVE: u64 = 64;

/// Descriptors an exporter may need: a connection per worker (and one being replaced),
/// and for a persistent queue its lock, cursor, directory, segment being written, one
/// being read and a done file.
fn exporter_fds(exporter: &crate::config::ExporterConfig) -> u64 {
    let queue = &exporter.queue;
    let own = queue.workers as u64 + 1 + if queue.persistent { 8 } else { 0 };
    // A loadbalancing exporter's backends each have their own; a DNS answer is counted as 8.
    let backends = exporter.exporter.as_deref().map_or(0, |backend| {
        let count = exporter
            .resolver
            .as_ref()
            .and_then(|r| r.static_backends.as_ref())
            .map_or(8, Vec::len);
        count as u64 * exporter_fds(backend)
    });
    own + backends
}

/// Descriptors the receivers must leave free: those open now, the exporters' and a reserve.
fn fd_reserve(config: &Config) -> u64 {
    FD_RESERVE + open_files() + config.exporters.values().map(exporter_fds).sum::<u64>()
}

/// The gRPC and HTTP receivers' limits, their connections capped together so that the
/// process stays below its open-file limit with [`fd_reserve`] to spare; logs the caps.
fn connection_limits(config: &Config) -> [Option<ConnectionLimits>; 2] {
    let receivers = &config.receivers.otlp;
    let mut limits = [receivers.grpc.as_ref(), receivers.http.as_ref()]
        .map(|r| r.map(ConnectionLimits::from_config));
    let wanted: Vec<usize> = limits
        .iter()
        .map(|l| l.map_or(0, |l| l.max_connections))
        .collect();
    let file_limit = open_file_limit();
    let reserve = fd_reserve(config);
    let capped = cap_connections(&wanted, file_limit, reserve);
    for (limit, cap) in limits.iter_mut().zip(&capped) {
        if let Some(limit) = limit {
            limit.max_connections = *cap;
        }
    }
    let show = |l: &Option<ConnectionLimits>| {
        l.map_or_else(|| "off".to_owned(), |l| l.max_connections.to_string())
    };
    let file_limit_text = file_limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    if capped != wanted {
        tracing::warn!(
            "Connections capped below the open-file limit: OTLP/gRPC {}, OTLP/HTTP {} (configured {}, {}; open-file limit {file_limit_text}, {reserve} kept for exporters, queues and /metrics); raise ulimit -n to allow more",
            show(&limits[0]),
            show(&limits[1]),
            wanted[0],
            wanted[1],
        );
    } else {
        tracing::info!(
            "Connection limits: OTLP/gRPC {}, OTLP/HTTP {} (open-file limit {file_limit_text}, {reserve} kept for exporters, queues and /metrics)",
            show(&limits[0]),
            show(&limits[1]),
        );
    }
    limits
}

/// The start-up line's listeners: the gRPC and HTTP receivers, each with what its clients
/// must bring (TLS, bearer token), then the telemetry endpoint.
fn describe_listeners(
    [(grpc, grpc_security), (http, http_security)]: [(Option<&TcpListener>, &Security); 2],
    telemetry: Option<&TcpListener>,
) -> String {
    let addr = |l: Option<&TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .map_or_else(|| "off".to_owned(), |a| a.to_string())
    };
    let receiver = |l: Option<&TcpListener>, security: &Security| match l {
        Some(_) => format!("{}{}", addr(l), security.describe()),
        None => addr(l),
    };
    format!(
        "OTLP/gRPC on {}, OTLP/HTTP on {}, metrics on {}",
        receiver(grpc, grpc_security),
        receiver(http, http_security),
        addr(telemetry)
    )
}

/// One phrase per exporter: name, protocol, destination and, for env-built ones, why.
fn describe_exporters(config: &Config) -> String {
    let masked = config.masked();
    masked
        .exporters
        .iter()
        .map(|(name, e)| {
            let mut text = format!("{name} ({}", e.protocol);
            if let Some(url) = e.export_url() {
                text.push_str(&format!(" to {url}"));
            }
            if let Some(origin) = &e.origin {
                text.push_str(&format!("; {origin}"));
            }
            text.push(')');
            text
        })
        .collect::<Vec<_>>()
        .join(", ")
}

mod reload;
#[cfg(test)]
mod tests;

pub use reload::ConfigSource;
use reload::Reloader;

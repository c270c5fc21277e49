//! Counters for what the agent accepted, refused, sent and dropped, by reason.
//!
//! Counted per request or per batch, never per span, so they cost nothing on the hot path.
//! Every family is declared from the start, and every label set the agent knows of (each
//! protocol, exporter and reason) is present at 0 before anything happens, so that a
//! `rate()` alert sees 0 rather than no data. Gauges cheaper to read than to keep (queue
//! depths, the resident set) are read at scrape time by collectors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::memory::{MemoryBudget, resident_bytes};
use super::signals::{Signals, SignalsCollector};
use crate::config::attributes::ActionKind;

/// The receivers' protocols, as the `protocol` and `receiver` labels name them.
const PROTOCOLS: [&str; 2] = ["grpc", "http"];

/// Labels of a receiver counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

/// Labels of a refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    protocol: &'static str,
    reason: &'static str,
}

/// Labels of a connection counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    receiver: &'static str,
    reason: &'static str,
}

/// Labels of an exporter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabels {
    exporter: String,
}

/// Labels of one backend of a loadbalancing exporter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    exporter: String,
    backend: String,
}

/// Labels of a failed export attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    exporter: String,
    kind: &'static str,
}

/// Labels of a drop counter: the stage (`exporter/<name>`) and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    stage: String,
    reason: &'static str,
}

/// Labels of a counter keyed by a Daena schema key (built-in or from the config).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: String,
}

/// Labels of a counter keyed by what was done.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Labels of a counter keyed by an attribute action (`insert`, `hash`…).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// Labels of an export of the Daena signals as OTLP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalsExportLabels {
    exporter: String,
    result: &'static str,
}

fn signals_export_labels(exporter: &str, sent: bool) -> SignalsExportLabels {
    SignalsExportLabels {
        exporter: exporter.to_owned(),
        result: if sent { "sent" } else { "failed" },
    }
}

/// Labels of a counter keyed by how something ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The reasons `processors.filter` drops spans for.
pub const FILTER_REASONS: [&str; 3] = ["asgi_event", "health_route", "rule"];

/// Labels of a filter rule's drops.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

/// Labels of a tail-sampling decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    outcome: &'static str,
}

/// Labels of the build-information series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Why a receiver refused spans or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The pipeline's queue was full; the client was told to retry.
    PipelineFull,
    /// The agent was shutting down; the client was told to retry.
    ShuttingDown,
    /// The agent's resident memory was above its soft limit; the client was told to retry.
    MemoryLimit,
    /// The memory budget was taken by requests in progress; the client was told to retry.
    MemoryBudget,
    /// The request held more spans, attributes or decoded bytes than a per-request limit.
    RequestLimit,
    /// A persistent queue was full; the client was told to retry.
    QueueFull,
    /// A persistent queue could not be written (disk full, I/O error); the client was told to retry.
    QueueWriteFailed,
    /// A span had an invalid trace or span id (reported as partial success).
    InvalidSpan,
    /// The body could not be decoded.
    Undecodable,
    /// The body was over the size limit.
    TooLarge,
    /// The content type or encoding is not OTLP.
    UnsupportedMediaType,
    /// The body did not arrive within `body_read_timeout` (answered 408).
    BodyReadTimeout,
    /// The request lacked the bearer token `auth` requires (answered 401 / `UNAUTHENTICATED`).
    Unauthenticated,
}

impl RefusalReason {
    fn label(self) -> &'static str {
        match self {
            Self::PipelineFull => "pipeline_full",
            Self::ShuttingDown => "shutting_down",
            Self::MemoryLimit => "memory_limit",
            Self::MemoryBudget => "memory_budget",
            Self::RequestLimit => "request_limit",
            Self::QueueFull => "queue_full",
            Self::QueueWriteFailed => "queue_write_failed",
            Self::InvalidSpan => "invalid_span",
            Self::Undecodable => "undecodable",
            Self::TooLarge => "too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyReadTimeout => "body_read_timeout",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// Why a receiver refused or closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionReason {
    /// `max_connections` (or the open-file cap) were open: closed as soon as accepted.
    MaxConnections,
    /// The request headers or the HTTP/2 preface did not arrive within `header_read_timeout`.
    HeaderReadTimeout,
    /// No request for `idle_timeout`.
    IdleTimeout,
    /// An HTTP/2 PING went unanswered for `keepalive_timeout`.
    KeepaliveTimeout,
    /// The TLS handshake failed: not TLS, or a client certificate the receiver refuses.
    TlsHandshake,
}

impl ConnectionReason {
    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::TlsHandshake => "tls_handshake",
        }
    }
}

/// Why an exporter, or the pipeline, dropped spans it had been given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The backend answered with a non-retryable error.
    Rejected,
    /// The backend accepted the request but rejected these spans (partial success).
    PartiallyRejected,
    /// Retries ran out (`retry.max_elapsed`, or retry disabled).
    RetriesExhausted,
    /// The agent stopped before the spans could be delivered (`shutdown_timeout`).
    Shutdown,
    /// The exporter's queue was full and `on_full: drop_oldest` made room.
    QueueFull,
    /// A persistent queue's record no longer matched its checksum when read back.
    Damaged,
    /// A task of the agent failed (a panic) while the spans were in its memory.
    AgentFailure,
    /// An accepted request's bytes failed to decode when a stage read them (never expected:
    /// the receivers' scan accepts only what decodes).
    Undecodable,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::PartiallyRejected => "partially_rejected",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Shutdown => "shutdown",
            Self::QueueFull => "queue_full",
            Self::Damaged => "damaged",
            Self::AgentFailure => "agent_failure",
            Self::Undecodable => "undecodable",
        }
    }
}

/// The agent's counters, rendered in the Prometheus text format at `/metrics`.
pub struct Metrics {
    registry: Registry,
    received_spans: Family<ProtocolLabels, Counter>,
    refused_spans: Family<RefusalLabels, Counter>,
    refused_requests: Family<RefusalLabels, Counter>,
    refused_connections: Family<ConnectionLabels, Counter>,
    closed_connections: Family<ConnectionLabels, Counter>,
    exported_spans: Family<ExporterLabels, Counter>,
    export_failures: Family<FailureLabels, Counter>,
    dropped_spans: Family<DropLabels, Counter>,
    filter_rule_drops: Family<RuleLabels, Counter>,
    filter_asgi_parents_kept: Counter,
    schema_errors: Family<KeyLabels, Counter>,
    redactions: Family<KindLabels, Counter>,
    limits_applied: Family<KindLabels, Counter>,
    attribute_actions: Family<ActionLabels, Counter>,
    sampled_spans: Family<KindLabels, Counter>,
    sampling_decisions: Family<DecisionLabels, Counter>,
    late_spans: Family<KindLabels, Counter>,
    decided_early: Counter,
    sampling_buffered_spans: Gauge<u64, AtomicU64>,
    sampling_buffered_bytes: Gauge<u64, AtomicU64>,
    queue_replayed: Family<ExporterLabels, Counter>,
    queue_damaged: Family<ExporterLabels, Counter>,
    memory_budget_used: Gauge<u64, AtomicU64>,
    memory_budget_limit: Gauge<u64, AtomicU64>,
    config_reloads: Family<ResultLabels, Counter>,
    signals_exports: Family<SignalsExportLabels, Counter>,
    memory_soft_limit: Gauge<u64, AtomicU64>,
    memory_hard_limit: Gauge<u64, AtomicU64>,
    lb_backends: Family<ExporterLabels, Gauge>,
    lb_membership_changes: Family<ExporterLabels, Counter>,
    lb_rerouted: Family<ExporterLabels, Counter>,
    lb_member: Family<BackendLabels, Gauge>,
    batch_spans: Histogram,
    export_duration: Family<ExporterLabels, Histogram, fn() -> Histogram>,
    /// Each exporter's queue, read at scrape time.
    queues: Arc<QueueDepths>,
    /// Totals across exporters, indexed by `DropReason as usize`, for the shutdown report.
    dropped_totals: [AtomicU64; 8],
    /// The Daena signals' series, filled by the `signals` stage.
    signals: Signals,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        // The standard process gauge keeps its standard, unprefixed name.
        root.register_collector(Box::new(ResidentMemory));
        // The Daena signals are the service's figures, not the agent's: `daena_*`.
        let signals = Signals::default();
        root.register_collector(Box::new(SignalsCollector(signals.clone())));
        let registry = root.sub_registry_with_prefix("daena_agent");
        let received_spans = Family::default();
        let refused_spans = Family::default();
        let refused_requests = Family::default();
        let refused_connections = Family::default();
        let closed_connections = Family::default();
        let exported_spans = Family::default();
        let export_failures = Family::default();
        let dropped_spans = Family::default();
        let filter_rule_drops = Family::default();
        let filter_asgi_parents_kept = Counter::default();
        let schema_errors = Family::default();
        let redactions = Family::default();
        let limits_applied = Family::default();
        let attribute_actions = Family::<ActionLabels, Counter>::default();
        for action in ActionKind::ALL {
            let _ = attribute_actions.get_or_create(&ActionLabels {
                action: action.name(),
            });
        }
        let sampled_spans = Family::default();
        let sampling_decisions = Family::default();
        let late_spans = Family::default();
        let decided_early = Counter::default();
        let sampling_buffered_spans = Gauge::default();
        let sampling_buffered_bytes = Gauge::default();
        let queue_replayed = Family::default();
        let queue_damaged = Family::default();
        let memory_budget_used = Gauge::default();
        let memory_budget_limit = Gauge::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        for result in ["applied", "refused"] {
            let _ = config_reloads.get_or_create(&ResultLabels { result });
        }
        let signals_exports = Family::<SignalsExportLabels, Counter>::default();
        let memory_soft_limit = Gauge::default();
        let memory_hard_limit = Gauge::default();
        let lb_backends = Family::default();
        let lb_membership_changes = Family::default();
        let lb_rerouted = Family::default();
        let lb_member = Family::default();
        let batch_spans = Histogram::new(exponential_buckets(1.0, 4.0, 11));
        let export_duration: Family<ExporterLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(export_duration_histogram);
        let queues = Arc::new(QueueDepths::default());
        registry.register(
            "spans_received",
            "Spans a receiver accepted and handed to the pipeline",
            received_spans.clone(),
        );
        registry.register(
            "spans_refused",
            "Spans a receiver refused, by reason",
            refused_spans.clone(),
        );
        registry.register(
            "requests_refused",
            "Requests a receiver refused before it could count their spans, by reason",
            refused_requests.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections a receiver closed as soon as it accepted them, by reason",
            refused_connections.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections a receiver closed because a limit ran out, by reason",
            closed_connections.clone(),
        );
        registry.register(
            "spans_exported",
            "Spans an exporter delivered to its backend",
            exported_spans.clone(),
        );
        registry.register(
            "export_failures",
            "Failed export attempts, by whether they are retried",
            export_failures.clone(),
        );
        registry.register(
            "spans_dropped",
            "Spans a stage dropped after accepting them, by reason",
            dropped_spans.clone(),
        );
        registry.register(
            "filter_rule_spans_dropped",
            "Spans processors.filter dropped by each rule (its id, else its index)",
            filter_rule_drops.clone(),
        );
        registry.register(
            "filter_asgi_parents_kept",
            "ASGI event spans kept because other spans of their batch are their children",
            filter_asgi_parents_kept.clone(),
        );
        registry.register(
            "schema_errors",
            "Daena attribute values that could not be normalised (kept as sent), by canonical key",
            schema_errors.clone(),
        );
        registry.register(
            "redactions",
            "Attribute values redacted, by kind (key, bearer_token, api_key, email)",
            redactions.clone(),
        );
        registry.register(
            "limits_applied",
            "Things cut by processors.limits, by kind (attributes, events, links, values truncated)",
            limits_applied.clone(),
        );
        registry.register(
            "attribute_actions",
            "Actions processors.attributes applied to span attributes, by action (insert, update, upsert, delete, hash)",
            attribute_actions.clone(),
        );
        registry.register(
            "sampling_spans",
            "Spans the sampler kept or dropped, by outcome (kept, dropped)",
            sampled_spans.clone(),
        );
        registry.register(
            "sampling_traces",
            "Tail-sampling decisions, by the policy that kept the trace (none when dropped) and outcome",
            sampling_decisions.clone(),
        );
        registry.register(
            "sampling_late_spans",
            "Spans that arrived for a trace already decided, by the decision they followed",
            late_spans.clone(),
        );
        registry.register(
            "sampling_decided_early",
            "Traces decided before their decision wait because the buffer was full",
            decided_early.clone(),
        );
        registry.register(
            "sampling_buffered_spans",
            "Spans the tail sampler holds for their trace's decision",
            sampling_buffered_spans.clone(),
        );
        registry.register(
            "sampling_buffered_bytes",
            "Encoded bytes the tail sampler holds: its spans, and each resource and scope they share once (bounded by max_buffered_bytes)",
            sampling_buffered_bytes.clone(),
        );
        registry.register(
            "queue_replayed_spans",
            "Spans a persistent queue found on disk at start-up, left by the previous run",
            queue_replayed.clone(),
        );
        registry.register(
            "queue_damaged_records",
            "Torn or corrupted records a persistent queue skipped",
            queue_damaged.clone(),
        );
        registry.register(
            "memory_budget_used_bytes",
            "Bytes of requests being read, decoded and waiting for the pipeline, as reserved in memory_limit.budget",
            memory_budget_used.clone(),
        );
        registry.register(
            "memory_budget_bytes",
            "memory_limit.budget: the bytes requests in hand may hold together",
            memory_budget_limit.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP, POST /-/reload), by result (applied, refused)",
            config_reloads.clone(),
        );
        registry.register(
            "signals_exports",
            "Exports of the Daena signals as OTLP metrics (processors.signals.export), by exporter and result (sent; failed: refused, or out of retries before the next export)",
            signals_exports.clone(),
        );
        registry.register(
            "memory_soft_limit_bytes",
            "memory_limit.soft: above this resident set the receivers refuse new spans",
            memory_soft_limit.clone(),
        );
        registry.register(
            "memory_hard_limit_bytes",
            "memory_limit.hard: the resident set at which the agent logs an error",
            memory_hard_limit.clone(),
        );
        registry.register(
            "lb_backends",
            "Backends a loadbalancing exporter routes to now",
            lb_backends.clone(),
        );
        registry.register(
            "lb_membership_changes",
            "Changes of a loadbalancing exporter's backends after the first resolution",
            lb_membership_changes.clone(),
        );
        registry.register(
            "lb_rerouted_spans",
            "Spans queued for a removed backend, or one down past reroute_after, handed to another",
            lb_rerouted.clone(),
        );
        registry.register(
            "lb_member",
            "A loadbalancing exporter's backend: 1 routed to, 0 down past reroute_after (its share goes to the others)",
            lb_member.clone(),
        );
        registry.register(
            "batch_spans",
            "Spans in each batch the pipeline hands to the exporters",
            batch_spans.clone(),
        );
        registry.register(
            "export_duration_seconds",
            "Time of each export request to a backend (every attempt, failed ones included)",
            export_duration.clone(),
        );
        registry.register(
            "build",
            "The agent's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register_collector(Box::new(Arc::clone(&queues)));
        let metrics = Self {
            registry: root,
            received_spans,
            refused_spans,
            refused_requests,
            refused_connections,
            closed_connections,
            exported_spans,
            export_failures,
            dropped_spans,
            filter_rule_drops,
            filter_asgi_parents_kept,
            schema_errors,
            redactions,
            limits_applied,
            attribute_actions,
            sampled_spans,
            sampling_decisions,
            late_spans,
            decided_early,
            sampling_buffered_spans,
            sampling_buffered_bytes,
            queue_replayed,
            queue_damaged,
            memory_budget_used,
            memory_budget_limit,
            config_reloads,
            signals_exports,
            memory_soft_limit,
            memory_hard_limit,
            lb_backends,
            lb_membership_changes,
            lb_rerouted,
            lb_member,
            batch_spans,
            export_duration,
            queues,
            dropped_totals: Default::default(),
            signals,
        };
        metrics.declare_receivers();
        metrics
    }
}

/// Buckets of an export request's duration, 1 ms to 30 s.
fn export_duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Reasons a receiver counts refused spans for, by protocol.
const SPAN_REFUSALS: [RefusalReason; 8] = [
    RefusalReason::PipelineFull,
    RefusalReason::ShuttingDown,
    RefusalReason::MemoryLimit,
    RefusalReason::MemoryBudget,
    RefusalReason::RequestLimit,
    RefusalReason::QueueFull,
    RefusalReason::QueueWriteFailed,
    RefusalReason::InvalidSpan,
];

/// Reasons both receivers count refused requests for.
const REQUEST_REFUSALS: [RefusalReason; 4] = [
    RefusalReason::Undecodable,
    RefusalReason::TooLarge,
    RefusalReason::MemoryBudget,
    RefusalReason::Unauthenticated,
];

/// Reasons only the HTTP receiver counts refused requests for.
const HTTP_REQUEST_REFUSALS: [RefusalReason; 3] = [
    RefusalReason::RequestLimit,
    RefusalReason::UnsupportedMediaType,
    RefusalReason::BodyReadTimeout,
];

/// Reasons an exporter drops spans for.
const EXPORTER_DROPS: [DropReason; 7] = [
    DropReason::Rejected,
    DropReason::PartiallyRejected,
    DropReason::RetriesExhausted,
    DropReason::Shutdown,
    DropReason::QueueFull,
    DropReason::Damaged,
    DropReason::AgentFailure,
];

/// Reasons the pipeline drops acknowledged spans for.
const PIPELINE_DROPS: [DropReason; 3] = [
    DropReason::Shutdown,
    DropReason::AgentFailure,
    DropReason::Undecodable,
];

/// What waits in an exporter's queue, read when `/metrics` is scraped.
pub trait QueueDepth: Send + Sync {
    /// Spans and bytes waiting now (in memory: encoded bytes; on disk: segment bytes).
    fn depth(&self) -> (u64, u64);
}

/// Every exporter's queue by name, rendered as `queue_spans` and `queue_bytes` gauges.
#[derive(Default)]
struct QueueDepths(Mutex<Vec<(String, Arc<dyn QueueDepth>)>>);

impl std::fmt::Debug for QueueDepths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueDepths")
    }
}

impl QueueDepths {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<dyn QueueDepth>)>> {
        // A list replaced whole per exporter: a panic cannot leave it half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for QueueDepths {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let depths: Vec<(String, (u64, u64))> = self
            .lock()
            .iter()
            .map(|(name, queue)| (name.clone(), queue.depth()))
            .collect();
        let families = [
            (
                "queue_spans",
                "Spans waiting in each exporter's queue, in memory or on disk",
            ),
            (
                "queue_bytes",
                "Bytes waiting in each exporter's queue, in memory or on disk",
            ),
        ];
        for (i, (name, help)) in families.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (exporter, (spans, bytes)) in &depths {
                let labels = ExporterLabels {
                    exporter: exporter.clone(),
                };
                let value = if i == 0 { *spans } else { *bytes };
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `process_resident_memory_bytes`, read from `/proc` at each scrape.
#[derive(Debug)]
struct ResidentMemory;

impl Collector for ResidentMemory {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(resident_bytes().unwrap_or(0));
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            ConstGauge::<u64>::TYPE,
        )?;
        gauge.encode(metric)
    }
}

impl Metrics {
    /// Creates every receiver series at 0: each protocol, and each reason it can refuse for.
    fn declare_receivers(&self) {
        for protocol in PROTOCOLS {
            self.received(protocol, 0);
            for reason in SPAN_REFUSALS {
                self.refused_spans(protocol, reason, 0);
            }
            for reason in REQUEST_REFUSALS {
                self.refused_request_series(protocol, reason);
            }
            let reasons = [
                ConnectionReason::MaxConnections,
                ConnectionReason::HeaderReadTimeout,
            ];
            for reason in reasons {
                let labels = ConnectionLabels {
                    receiver: protocol,
                    reason: reason.label(),
                };
                drop(self.refused_connections.get_or_create(&labels));
                drop(self.closed_connections.get_or_create(&labels));
            }
            drop(self.closed_connections.get_or_create(&ConnectionLabels {
                receiver: protocol,
                reason: ConnectionReason::TlsHandshake.label(),
            }));
        }
        for reason in HTTP_REQUEST_REFUSALS {
            self.refused_request_series("http", reason);
        }
        for reason in [
            ConnectionReason::IdleTimeout,
            ConnectionReason::KeepaliveTimeout,
        ] {
            let labels = ConnectionLabels {
                receiver: "http",
                reason: reason.label(),
            };
            drop(self.closed_connections.get_or_create(&labels));
        }
        drop(self.closed_connections.get_or_create(&ConnectionLabels {
            receiver: "grpc",
            reason: ConnectionReason::KeepaliveTimeout.label(),
        }));
        for reason in PIPELINE_DROPS {
            let labels = DropLabels {
                stage: "pipeline".to_owned(),
                reason: reason.label(),
            };
            drop(self.dropped_spans.get_or_create(&labels));
        }
    }

    fn refused_request_series(&self, protocol: &'static str, reason: RefusalReason) {
        let labels = RefusalLabels {
            protocol,
            reason: reason.label(),
        };
        drop(self.refused_requests.get_or_create(&labels));
    }

    /// Creates the exporter's series at 0 and shows its queue's depth from now on.
    pub fn declare_exporter(&self, exporter: &str, queue: Arc<dyn QueueDepth>) {
        let labels = ExporterLabels {
            exporter: exporter.to_owned(),
        };
        drop(self.exported_spans.get_or_create(&labels));
        drop(self.export_duration.get_or_create(&labels));
        drop(self.queue_replayed.get_or_create(&labels));
        drop(self.queue_damaged.get_or_create(&labels));
        for kind in ["retried", "final"] {
            drop(self.export_failures.get_or_create(&FailureLabels {
                exporter: exporter.to_owned(),
                kind,
            }));
        }
        for reason in EXPORTER_DROPS {
            drop(self.dropped_spans.get_or_create(&DropLabels {
                stage: format!("exporter/{exporter}"),
                reason: reason.label(),
            }));
        }
        let mut queues = self.queues.lock();
        queues.retain(|(name, _)| name != exporter);
        queues.push((exporter.to_owned(), queue));
    }

    /// Creates a loadbalancing exporter's series at 0.
    pub fn declare_loadbalancer(&self, exporter: &str) {
        let labels = ExporterLabels {
            exporter: exporter.to_owned(),
        };
        drop(self.lb_backends.get_or_create(&labels));
        drop(self.lb_membership_changes.get_or_create(&labels));
        drop(self.lb_rerouted.get_or_create(&labels));
    }

    /// Records a loadbalancing exporter's membership: `backends` now, and whether it
    /// changed (the first resolution is not a change).
    pub fn lb_membership(&self, exporter: &str, backends: usize, changed: bool) {
        let labels = ExporterLabels {
            exporter: exporter.to_owned(),
        };
        self.lb_backends
            .get_or_create(&labels)
            .set(i64::try_from(backends).unwrap_or(i64::MAX));
        if changed {
            self.lb_membership_changes.get_or_create(&labels).inc();
        }
    }

    /// Records whether a loadbalancing exporter's `backend` (`host:port`) is routed to
    /// (`false`: down past `reroute_after`, its share goes to the others).
    pub fn lb_member(&self, exporter: &str, backend: &str, routed: bool) {
        let labels = BackendLabels {
            exporter: exporter.to_owned(),
            backend: backend.to_owned(),
        };
        self.lb_member.get_or_create(&labels).set(i64::from(routed));
    }

    /// Removes a backend's [`lb_member`](Self::lb_member) series: it left the membership.
    pub fn lb_member_left(&self, exporter: &str, backend: &str) {
        self.lb_member.remove(&BackendLabels {
            exporter: exporter.to_owned(),
            backend: backend.to_owned(),
        });
    }

    /// Counts `spans` of a loadbalancing exporter handed from one backend to another.
    pub fn lb_rerouted(&self, exporter: &str, spans: u64) {
        self.lb_rerouted
            .get_or_create(&ExporterLabels {
                exporter: exporter.to_owned(),
            })
            .inc_by(spans);
    }

    /// Creates the sampling series at 0: spans kept and dropped, late spans, and the tail
    /// sampler's decisions for each of its `policies`.
    pub fn declare_sampling(&self, policies: &[&str]) {
        for kind in ["kept", "dropped"] {
            drop(self.sampled_spans.get_or_create(&KindLabels { kind }));
            drop(self.late_spans.get_or_create(&KindLabels { kind }));
        }
        let kept = policies.iter().copied().chain(["coherent_by"]);
        for policy in kept {
            drop(self.sampling_decisions.get_or_create(&DecisionLabels {
                policy: policy.to_owned(),
                outcome: "kept",
            }));
        }
        drop(self.sampling_decisions.get_or_create(&DecisionLabels {
            policy: "none".to_owned(),
            outcome: "dropped",
        }));
    }

    /// Shows the memory limits the limiter applies.
    pub fn memory_limits(&self, soft: u64, hard: u64) {
        self.memory_soft_limit.set(soft);
        self.memory_hard_limit.set(hard);
    }

    /// Notes a batch the pipeline hands to the exporters.
    pub fn batch_sent(&self, spans: usize) {
        self.batch_spans.observe(spans as f64);
    }

    /// Notes how long one export request to a backend took.
    pub fn export_took(&self, exporter: &str, took: Duration) {
        self.export_duration
            .get_or_create(&ExporterLabels {
                exporter: exporter.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts spans a receiver accepted.
    pub fn received(&self, protocol: &'static str, spans: u64) {
        self.received_spans
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(spans);
    }

    /// Counts spans a receiver refused.
    pub fn refused_spans(&self, protocol: &'static str, reason: RefusalReason, spans: u64) {
        let labels = RefusalLabels {
            protocol,
            reason: reason.label(),
        };
        self.refused_spans.get_or_create(&labels).inc_by(spans);
    }

    /// Counts a request refused before its spans could be counted.
    pub fn refused_request(&self, protocol: &'static str, reason: RefusalReason) {
        let labels = RefusalLabels {
            protocol,
            reason: reason.label(),
        };
        self.refused_requests.get_or_create(&labels).inc();
    }

    /// Counts a connection closed as soon as it was accepted.
    pub fn refused_connection(&self, receiver: &'static str, reason: ConnectionReason) {
        let labels = ConnectionLabels {
            receiver,
            reason: reason.label(),
        };
        self.refused_connections.get_or_create(&labels).inc();
    }

    /// Counts a connection closed because one of its limits ran out.
    pub fn closed_connection(&self, receiver: &'static str, reason: ConnectionReason) {
        let labels = ConnectionLabels {
            receiver,
            reason: reason.label(),
        };
        self.closed_connections.get_or_create(&labels).inc();
    }

    /// Counts spans an exporter delivered.
    pub fn exported(&self, exporter: &str, spans: u64) {
        self.exported_spans
            .get_or_create(&ExporterLabels {
                exporter: exporter.to_owned(),
            })
            .inc_by(spans);
    }

    /// Counts one failed export attempt; `retried` says whether it will be tried again.
    pub fn export_failed(&self, exporter: &str, retried: bool) {
        self.export_failures
            .get_or_create(&FailureLabels {
                exporter: exporter.to_owned(),
                kind: if retried { "retried" } else { "final" },
            })
            .inc();
    }

    /// Counts one export of the Daena signals to `exporter`, sent or given up.
    pub fn signals_exported(&self, exporter: &str, sent: bool) {
        self.signals_exports
            .get_or_create(&signals_export_labels(exporter, sent))
            .inc();
    }

    /// Shows `exporter`'s signals-export series at 0 before its first export.
    pub fn declare_signals_export(&self, exporter: &str) {
        for sent in [true, false] {
            let _ = self
                .signals_exports
                .get_or_create(&signals_export_labels(exporter, sent));
        }
    }

    /// Counts spans an exporter dropped.
    pub fn dropped(&self, exporter: &str, reason: DropReason, spans: u64) {
        let labels = DropLabels {
            stage: format!("exporter/{exporter}"),
            reason: reason.label(),
        };
        self.dropped_spans.get_or_create(&labels).inc_by(spans);
        self.dropped_totals[reason as usize].fetch_add(spans, Ordering::Relaxed);
    }

    /// Counts acknowledged spans the pipeline lost, as dropped by the `pipeline` stage: those
    /// it still held when the agent stopped (after a failure, or past `shutdown_timeout`),
    /// or whose bytes failed to decode for a processor stage.
    pub fn dropped_in_pipeline(&self, reason: DropReason, spans: u64) {
        if spans > 0 {
            let labels = DropLabels {
                stage: "pipeline".to_owned(),
                reason: reason.label(),
            };
            self.dropped_spans.get_or_create(&labels).inc_by(spans);
        }
    }

    /// Counts spans a persistent queue found on disk at start-up, left by the previous run.
    pub fn queue_replayed(&self, exporter: &str, spans: u64) {
        self.queue_replayed
            .get_or_create(&ExporterLabels {
                exporter: exporter.to_owned(),
            })
            .inc_by(spans);
    }

    /// Counts torn or corrupted records a persistent queue skipped.
    pub fn queue_damaged(&self, exporter: &str, records: u64) {
        self.queue_damaged
            .get_or_create(&ExporterLabels {
                exporter: exporter.to_owned(),
            })
            .inc_by(records);
    }

    /// Spans dropped for `reason`, summed over every exporter.
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped_totals[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts Daena attribute values of `key` that could not be normalised.
    pub fn schema_errors(&self, key: &str, count: u64) {
        self.schema_errors
            .get_or_create(&KeyLabels {
                key: key.to_owned(),
            })
            .inc_by(count);
    }

    /// Counts redacted values of one kind.
    pub fn redacted(&self, kind: &'static str, count: u64) {
        self.redactions
            .get_or_create(&KindLabels { kind })
            .inc_by(count);
    }

    /// Counts attributes, events or links cut, or values truncated.
    pub fn limited(&self, kind: &'static str, count: u64) {
        self.limits_applied
            .get_or_create(&KindLabels { kind })
            .inc_by(count);
    }

    /// Shows the filter's series at 0 from the start: each reason, and each rule by name.
    pub fn declare_filter(&self, rules: &[String]) {
        for reason in FILTER_REASONS {
            drop(self.dropped_spans.get_or_create(&DropLabels {
                stage: "filter".to_owned(),
                reason,
            }));
        }
        for rule in rules {
            drop(
                self.filter_rule_drops
                    .get_or_create(&RuleLabels { rule: rule.clone() }),
            );
        }
    }

    /// Counts spans `processors.filter` dropped for `reason` (one of [`FILTER_REASONS`]).
    pub fn filtered(&self, reason: &'static str, spans: u64) {
        if spans > 0 {
            self.dropped_spans
                .get_or_create(&DropLabels {
                    stage: "filter".to_owned(),
                    reason,
                })
                .inc_by(spans);
        }
    }

    /// Counts spans a filter rule dropped.
    pub fn filtered_by_rule(&self, rule: &str, spans: u64) {
        if spans > 0 {
            self.filter_rule_drops
                .get_or_create(&RuleLabels {
                    rule: rule.to_owned(),
                })
                .inc_by(spans);
        }
    }

    /// Counts ASGI event spans kept because they have children.
    pub fn asgi_parents_kept(&self, spans: u64) {
        self.filter_asgi_parents_kept.inc_by(spans);
    }

    /// Counts attribute actions applied, of one kind (`insert`, `update`…).
    pub fn attribute_actions(&self, action: &'static str, count: u64) {
        self.attribute_actions
            .get_or_create(&ActionLabels { action })
            .inc_by(count);
    }

    /// The Daena signals' table.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Counts spans the sampler kept and dropped.
    pub fn sampled_spans(&self, kept: u64, dropped: u64) {
        for (outcome, count) in [("kept", kept), ("dropped", dropped)] {
            if count > 0 {
                self.sampled_spans
                    .get_or_create(&KindLabels { kind: outcome })
                    .inc_by(count);
            }
        }
    }

    /// Counts tail-sampling decisions; `policy` is the one that kept the traces, or `none`.
    pub fn sampling_decisions(&self, policy: &str, kept: bool, traces: u64) {
        if traces == 0 {
            return;
        }
        let labels = DecisionLabels {
            policy: policy.to_owned(),
            outcome: if kept { "kept" } else { "dropped" },
        };
        self.sampling_decisions
            .get_or_create(&labels)
            .inc_by(traces);
    }

    /// Counts spans that arrived after their trace was decided.
    pub fn late_spans(&self, kept: bool, count: u64) {
        let kind = if kept { "kept" } else { "dropped" };
        self.late_spans
            .get_or_create(&KindLabels { kind })
            .inc_by(count);
    }

    /// Counts traces decided early because the buffer was full.
    pub fn decided_early(&self, count: u64) {
        self.decided_early.inc_by(count);
    }

    /// Shows what one tail sampler holds now, `(spans, encoded bytes)`, in place of what it
    /// held `before`: the gauges sum the samplers of every pipeline shard.
    pub fn sampling_buffered(&self, before: (usize, usize), now: (usize, usize)) {
        shift(&self.sampling_buffered_spans, before.0, now.0);
        shift(&self.sampling_buffered_bytes, before.1, now.1);
    }

    /// The memory budget of `limit` bytes the receivers admit requests against, its use
    /// shown here.
    pub fn memory_budget(&self, limit: u64) -> Arc<MemoryBudget> {
        self.memory_budget_limit.set(limit);
        MemoryBudget::counted_in(limit, self.memory_budget_used.clone())
    }

    /// Counts a config reload, applied or refused.
    pub fn config_reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Moves a gauge that sums several parts by one part's change, from `before` to `now`.
fn shift(gauge: &Gauge<u64, AtomicU64>, before: usize, now: usize) {
    if now >= before {
        gauge.inc_by((now - before) as u64);
    } else {
        gauge.dec_by((before - now) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_reason_with_its_count() {
        let metrics = Metrics::default();
        metrics.received("grpc", 5);
        metrics.refused_spans("http", RefusalReason::PipelineFull, 3);
        metrics.refused_request("http", RefusalReason::TooLarge);
        metrics.dropped("tempo", DropReason::Rejected, 7);
        let text = metrics.render();
        assert!(text.contains("daena_agent_spans_received_total{protocol=\"grpc\"} 5"));
        assert!(text.contains(
            "daena_agent_spans_refused_total{protocol=\"http\",reason=\"pipeline_full\"} 3"
        ));
        assert!(text.contains(
            "daena_agent_requests_refused_total{protocol=\"http\",reason=\"too_large\"} 1"
        ));
        assert!(text.contains(
            "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"rejected\"} 7"
        ));
    }

    struct Fixed;

    impl QueueDepth for Fixed {
        fn depth(&self) -> (u64, u64) {
            (12, 3400)
        }
    }

    #[test]
    fn every_family_is_declared_and_known_series_start_at_zero() {
        let metrics = Metrics::default();
        metrics.declare_exporter("tempo", Arc::new(Fixed));
        metrics.declare_loadbalancer("gateways");
        metrics.memory_limits(256 << 20, 320 << 20);
        let text = metrics.render();
        for family in [
            "# TYPE daena_agent_spans_received counter",
            "# TYPE daena_agent_export_failures counter",
            "# TYPE daena_agent_queue_spans gauge",
            "# TYPE daena_agent_queue_bytes gauge",
            "# TYPE daena_agent_batch_spans histogram",
            "# TYPE daena_agent_export_duration_seconds histogram",
            "# TYPE daena_agent_build info",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.contains(family), "{family} in\n{text}");
        }
        for series in [
            "daena_agent_spans_received_total{protocol=\"grpc\"} 0",
            "daena_agent_spans_refused_total{protocol=\"http\",reason=\"memory_limit\"} 0",
            "daena_agent_spans_dropped_total{stage=\"exporter/tempo\",reason=\"retries_exhausted\"} 0",
            "daena_agent_spans_dropped_total{stage=\"pipeline\",reason=\"agent_failure\"} 0",
            "daena_agent_export_failures_total{exporter=\"tempo\",kind=\"final\"} 0",
            "daena_agent_queue_spans{exporter=\"tempo\"} 12",
            "daena_agent_queue_bytes{exporter=\"tempo\"} 3400",
            "daena_agent_export_duration_seconds_count{exporter=\"tempo\"} 0",
            "daena_agent_memory_soft_limit_bytes 268435456",
            "daena_agent_lb_backends{exporter=\"gateways\"} 0",
            "daena_agent_lb_membership_changes_total{exporter=\"gateways\"} 0",
            "daena_agent_lb_rerouted_spans_total{exporter=\"gateways\"} 0",
            concat!(
                "daena_agent_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}

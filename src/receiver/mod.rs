//! OTLP receivers: gRPC and HTTP servers that decode requests and hand them to the pipeline.
//!
//! Both share [`Intake`], which checks a request against its limits and the memory budget
//! before decoding it, validates spans, counts them and either queues them for the
//! pipeline or refuses with an answer the client's SDK retries (or, over a per-request
//! limit, with one it does not).

pub mod auth;
pub mod body;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod tls;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use bytes::Bytes;
use prost::Message;

use crate::config::{ByteSize, ReceiverEndpointConfig, parse_listen_addr};
use crate::otlp::{ExportTracePartialSuccess, ExportTraceServiceRequest, SpanBatch, wire};
use crate::pipeline::{Accepted, Ack, Inlet, NotQueued};
use crate::telemetry::Metrics;
use crate::telemetry::memory::{MemoryBudget, MemoryLimiter, Reservation};
use crate::telemetry::metrics::RefusalReason;

/// How long a refused client is asked to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The one line a receiver's port answers to `GET /`, so that the check the Daena tracing
/// guide gives, `curl $OTEL_EXPORTER_OTLP_ENDPOINT`, shows the agent is there: which agent
/// and version, which receiver, and how to send it traces.
fn introduction(receiver: &str, how_to_send: &str) -> String {
    format!(
        "daena-trace-agent {}: {receiver} receiver; {how_to_send}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// A receiver's TLS and bearer-token authentication, each on when configured.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The TLS handshake every connection must complete.
    pub tls: Option<Arc<tls::ServerTls>>,
    /// The token every span-intake request must carry.
    pub auth: Option<auth::BearerAuth>,
}

/// A receiver's `tls` or `auth` file that cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SecurityError {
    /// The key of the file, e.g. `receivers.otlp.grpc.tls.key_file`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Security {
    /// Loads the files the receiver `receiver` configured at `key` (e.g.
    /// `receivers.otlp.grpc`) names, and watches them for changes from now on.
    pub fn start(
        receiver: &'static str,
        key: &str,
        config: &ReceiverEndpointConfig,
    ) -> Result<Self, SecurityError> {
        let failed = |section: &str, e: crate::config::SecurityFileError| SecurityError {
            key: format!("{key}.{section}.{}", e.field),
            message: e.message,
        };
        let tls = config
            .tls
            .as_ref()
            .map(|tls| tls::ServerTls::start(receiver, &format!("{key}.tls"), tls))
            .transpose()
            .map_err(|e| failed("tls", e))?;
        let auth = config
            .auth
            .as_ref()
            .map(|auth| auth::BearerAuth::start(&format!("{key}.auth"), auth))
            .transpose()
            .map_err(|e| failed("auth", e))?;
        Ok(Self {
            tls: tls.map(Arc::new),
            auth,
        })
    }
}

impl Security {
    /// What clients must bring, for the start-up line: e.g. ` (mTLS, bearer token)`;
    /// empty when the receiver has neither `tls` nor `auth`.
    pub fn describe(&self) -> String {
        let tls = self
            .tls
            .as_ref()
            .map(|tls| if tls.is_mutual() { "mTLS" } else { "TLS" });
        let auth = self.auth.as_ref().map(|_| "bearer token");
        let parts: Vec<&str> = tls.into_iter().chain(auth).collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// The warning to log at start-up when the receiver configured at `key` listens beyond
/// loopback with neither `tls` nor `auth`: anyone who can reach it can send spans.
pub fn exposure_warning(key: &str, config: &ReceiverEndpointConfig) -> Option<String> {
    let addr = parse_listen_addr(&config.endpoint).ok()?;
    if addr.ip().is_loopback() || config.tls.is_some() || config.auth.is_some() {
        return None;
    }
    Some(format!(
        "{key} listens on {} without tls or auth: anyone who can reach that address can send spans in plaintext; add {key}.auth.bearer_token_file (and {key}.tls with cert_file and key_file), or listen on 127.0.0.1 when the services run beside the agent",
        config.endpoint
    ))
}

/// Why the pipeline could not take a request; the client should retry later.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The pipeline queue is full because the exporters are behind.
    #[error(
        "the agent's pipeline is full ({spans} spans refused): its exporters are behind; retry after {}s",
        RETRY_AFTER.as_secs()
    )]
    PipelineFull {
        /// Spans in the refused request.
        spans: usize,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down ({spans} spans refused); retry against the next instance")]
    ShuttingDown {
        /// Spans in the refused request.
        spans: usize,
    },
    /// The agent's resident memory is above its soft limit.
    #[error(
        "the agent is above its memory limit ({spans} spans refused): its exporters are behind; retry after {}s",
        RETRY_AFTER.as_secs()
    )]
    OverMemoryLimit {
        /// Spans in the refused request.
        spans: usize,
    },
    /// The memory budget is taken by requests in progress.
    #[error(
        "the agent's memory budget (memory_limit.budget) is taken by requests in progress; retry after {}s",
        RETRY_AFTER.as_secs()
    )]
    OverMemoryBudget {
        /// Spans in the refused request, 0 when it was refused before its body was read.
        spans: usize,
    },
    /// A persistent queue is full or could not be written.
    #[error(
        "{reason} ({spans} spans refused); retry after {}s",
        RETRY_AFTER.as_secs()
    )]
    NotQueued {
        /// Spans in the refused request.
        spans: usize,
        /// Full, or the write failed.
        reason: NotQueued,
    },
}

impl Refusal {
    /// The refusal counter's reason.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Self::PipelineFull { .. } => RefusalReason::PipelineFull,
            Self::ShuttingDown { .. } => RefusalReason::ShuttingDown,
            Self::OverMemoryLimit { .. } => RefusalReason::MemoryLimit,
            Self::OverMemoryBudget { .. } => RefusalReason::MemoryBudget,
            Self::NotQueued {
                reason: NotQueued::WriteFailed,
                ..
            } => RefusalReason::QueueWriteFailed,
            Self::NotQueued { .. } => RefusalReason::QueueFull,
        }
    }
}

/// What one request may hold, checked on its scan before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Spans.
    pub max_spans: usize,
    /// Attributes of one resource, scope, span, event, link or kvlist value.
    pub max_attributes: usize,
    /// Bytes its decoded form may take, as the scan estimates them.
    pub max_decoded_bytes: usize,
}

impl RequestLimits {
    /// No limit: for tests of other things.
    pub const NONE: Self = Self {
        max_spans: usize::MAX,
        max_attributes: usize::MAX,
        max_decoded_bytes: usize::MAX,
    };

    /// The limits of a receiver configured as `config`, whose requests share `budget`.
    pub fn from_config(config: &ReceiverEndpointConfig, budget: ByteSize) -> Self {
        Self {
            max_spans: config.max_spans_per_request,
            max_attributes: config.max_attributes_per_item,
            max_decoded_bytes: usize::try_from(config.max_decoded_size(budget).0)
                .unwrap_or(usize::MAX),
        }
    }

    /// The first limit `scan` is over, named by its key under `receivers.otlp.<protocol>`.
    fn check(&self, protocol: &str, scan: &wire::Scan) -> Result<(), OverLimit> {
        let over = |what: String, key: &'static str, limit: usize| {
            Err(OverLimit {
                message: format!(
                    "the request holds {what}, more than receivers.otlp.{protocol}.{key} ({limit}); send smaller batches (the SDK's max_export_batch_size) or raise the limit"
                ),
                spans: scan.spans,
            })
        };
        if scan.spans > self.max_spans {
            return over(
                format!("{} spans", scan.spans),
                "max_spans_per_request",
                self.max_spans,
            );
        }
        if scan.most_attributes > self.max_attributes {
            return over(
                format!(
                    "{} attributes on one resource, scope, span, event, link or kvlist value",
                    scan.most_attributes
                ),
                "max_attributes_per_item",
                self.max_attributes,
            );
        }
        if scan.decoded_bytes > self.max_decoded_bytes {
            return over(
                format!("{} bytes once decoded", scan.decoded_bytes),
                "max_decoded_size",
                self.max_decoded_bytes,
            );
        }
        Ok(())
    }
}

/// A request over one of its receiver's [`RequestLimits`]: sending it again will not help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OverLimit {
    message: String,
    spans: usize,
}

/// The receivers' shared entrance to the pipeline.
#[derive(Clone)]
pub struct Intake {
    tx: Inlet,
    metrics: Arc<Metrics>,
    memory: Option<Arc<MemoryLimiter>>,
    budget: Option<Arc<MemoryBudget>>,
    limits: RequestLimits,
    durable: bool,
}

impl Intake {
    /// An intake feeding the pipeline through `tx`, counting into `metrics`.
    pub fn new(tx: Inlet, metrics: Arc<Metrics>) -> Self {
        Self {
            tx,
            metrics,
            memory: None,
            budget: None,
            limits: RequestLimits::NONE,
            durable: false,
        }
    }

    /// Answers a request only once its spans are in every persistent queue.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Refuses new spans while `limiter` says the agent is above its soft memory limit.
    pub fn with_memory_limit(mut self, limiter: Arc<MemoryLimiter>) -> Self {
        self.memory = Some(limiter);
        self
    }

    /// Admits requests only while `budget` has room for them.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Refuses requests over `limits` (each receiver has its own).
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The agent's counters, for refusals a receiver counts itself.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A new request's empty share of the memory budget, grown as its body arrives.
    pub fn reservation(&self) -> Reservation {
        self.budget
            .as_ref()
            .map_or_else(Reservation::default, MemoryBudget::reservation)
    }

    /// Checks a request's `scan` against the limits, then grows its `memory` to hold its
    /// body of `body_len` bytes and its decoded form.
    pub fn admit(
        &self,
        protocol: &'static str,
        scan: &wire::Scan,
        body_len: usize,
        memory: &mut Reservation,
    ) -> Result<(), IntakeError> {
        if let Err(over) = self.limits.check(protocol, scan) {
            self.metrics
                .refused_spans(protocol, RefusalReason::RequestLimit, over.spans as u64);
            return Err(IntakeError::OverLimit(over));
        }
        if !memory.resize(body_len.saturating_add(scan.decoded_bytes) as u64) {
            let refusal = Refusal::OverMemoryBudget { spans: scan.spans };
            self.metrics
                .refused_spans(protocol, refusal.reason(), scan.spans as u64);
            return Err(refusal.into());
        }
        Ok(())
    }

    /// Validates and queues a decoded request, its decoding paid for by `memory`; `Ok`
    /// carries the partial success to report, if any.
    pub async fn accept(
        &self,
        protocol: &'static str,
        request: ExportTraceServiceRequest,
        memory: Reservation,
    ) -> Result<Option<ExportTracePartialSuccess>, Refusal> {
        let mut batch = SpanBatch::from_request(request);
        let partial = reject_invalid_spans(&mut batch).map(|(rejected, message)| {
            self.metrics
                .refused_spans(protocol, RefusalReason::InvalidSpan, rejected as u64);
            ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: message,
            }
        });
        self.queue(protocol, batch, memory).await.map(|()| partial)
    }

    /// Validates and queues an encoded request whose body `memory` holds, keeping its
    /// bytes when it is well formed and every span valid (the common case), decoding it
    /// otherwise. Nothing is decoded before the request is admitted.
    pub async fn accept_encoded(
        &self,
        protocol: &'static str,
        body: Bytes,
        mut memory: Reservation,
    ) -> Result<Option<ExportTracePartialSuccess>, IntakeError> {
        // A faulty body is admitted up to its fault: what prost decodes before it fails.
        let (scan, well_formed) = wire::scan_prefix(&body);
        self.admit(protocol, &scan, body.len(), &mut memory)?;
        if well_formed && scan.invalid_ids == 0 {
            let batch = SpanBatch::from_encoded(body, scan.spans);
            return Ok(self.queue(protocol, batch, memory).await.map(|()| None)?);
        }
        // Invalid spans to filter out, or a body prost must judge (and name the problem of).
        let request = ExportTraceServiceRequest::decode(body).map_err(IntakeError::Undecodable)?;
        Ok(self.accept(protocol, request, memory).await?)
    }

    /// Hands the batch to the pipeline, and with persistent queues waits until it is
    /// written; counts it as received or refused.
    async fn queue(
        &self,
        protocol: &'static str,
        batch: SpanBatch,
        memory: Reservation,
    ) -> Result<(), Refusal> {
        let spans = batch.span_count();
        if spans == 0 {
            return Ok(());
        }
        let outcome = self.hand_over(batch, spans, memory).await;
        match &outcome {
            Ok(()) => self.metrics.received(protocol, spans as u64),
            Err(refusal) => self
                .metrics
                .refused_spans(protocol, refusal.reason(), spans as u64),
        }
        outcome
    }

    async fn hand_over(
        &self,
        batch: SpanBatch,
        spans: usize,
        memory: Reservation,
    ) -> Result<(), Refusal> {
        if self.memory.as_ref().is_some_and(|m| m.over_limit()) {
            return Err(Refusal::OverMemoryLimit { spans });
        }
        let (ack, answer) = if self.durable {
            let (ack, answer) = Ack::new();
            (Some(ack), Some(answer))
        } else {
            (None, None)
        };
        match self.tx.try_send(Accepted { batch, ack, memory }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(Refusal::PipelineFull { spans }),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Refusal::ShuttingDown { spans });
            }
        }
        let Some(answer) = answer else { return Ok(()) };
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(NotQueued::Stopped)) | Err(_) => Err(Refusal::ShuttingDown { spans }),
            Ok(Err(reason)) => Err(Refusal::NotQueued { spans, reason }),
        }
    }
}

/// Why an encoded request was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The body is not an OTLP protobuf request.
    #[error(
        "body is not a valid OTLP protobuf ExportTraceServiceRequest: {0}{hint}",
        hint = undecodable_hint(.0)
    )]
    Undecodable(prost::DecodeError),
    /// The request is over a per-request limit (counted by the intake).
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
    /// The pipeline cannot take it now.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// What to do about a decode error whose cause prost's message leaves unclear.
fn undecodable_hint(error: &prost::DecodeError) -> &'static str {
    // prost names the kind only in its message; its recursion limit is not configurable.
    if error.to_string().contains("recursion limit reached") {
        " (messages nest more than 100 deep, through arrayValue or kvlistValue attributes; \
         flatten those attribute values)"
    } else {
        ""
    }
}

/// Removes spans no backend would accept (trace id not 16 bytes, span id not 8 bytes,
/// or all zero) and returns how many went and why, for the partial-success answer.
fn reject_invalid_spans(batch: &mut SpanBatch) -> Option<(usize, String)> {
    let mut rejected = 0;
    let mut first_reason = None;
    let resource_spans = batch.resource_spans_mut();
    for scope_spans in resource_spans.iter_mut().flat_map(|rs| &mut rs.scope_spans) {
        scope_spans.spans.retain(|span| {
            let problem = id_problem("trace_id", &span.trace_id, 16)
                .or_else(|| id_problem("span_id", &span.span_id, 8));
            match problem {
                None => true,
                Some(problem) => {
                    rejected += 1;
                    first_reason.get_or_insert_with(|| format!("span {:?}: {problem}", span.name));
                    false
                }
            }
        });
    }
    // Forwarders should not create empty envelopes.
    for rs in resource_spans.iter_mut() {
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
    first_reason.map(|reason| {
        (
            rejected,
            format!("{rejected} span(s) rejected; first: {reason}"),
        )
    })
}

fn id_problem(field: &str, id: &[u8], len: usize) -> Option<String> {
    if id.len() != len {
        Some(format!("{field} must be {len} bytes, got {}", id.len()))
    } else if id.iter().all(|&b| b == 0) {
        Some(format!(
            "{field} is all zeros, which OTLP defines as invalid"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReceiverAuthConfig, ReceiversConfig, ServerTlsConfig};
    use crate::otlp::Span;

    #[test]
    fn listening_beyond_loopback_without_tls_or_auth_is_warned_about() {
        let Some(mut receiver) = ReceiversConfig::default().otlp.grpc else {
            panic!("a default gRPC receiver");
        };
        let key = "receivers.otlp.grpc";
        for endpoint in ["127.0.0.1:4317", "[::1]:4317", "localhost:4317"] {
            receiver.endpoint = endpoint.to_owned();
            assert_eq!(exposure_warning(key, &receiver), None, "{endpoint}");
        }
        for endpoint in ["0.0.0.0:4317", "[::]:4317", "10.1.2.3:4317"] {
            receiver.endpoint = endpoint.to_owned();
            let warning = exposure_warning(key, &receiver).unwrap_or_default();
            assert!(warning.contains(endpoint), "{warning}");
            assert!(warning.contains("anyone who can reach"), "{warning}");
            assert!(
                warning.contains("receivers.otlp.grpc.auth.bearer_token_file"),
                "{warning}"
            );
            assert!(warning.contains("receivers.otlp.grpc.tls"), "{warning}");
        }
        receiver.endpoint = "0.0.0.0:4317".to_owned();
        receiver.auth = Some(ReceiverAuthConfig {
            bearer_token_file: "/run/secrets/token".into(),
        });
        assert_eq!(exposure_warning(key, &receiver), None, "with auth");
        receiver.auth = None;
        receiver.tls = Some(ServerTlsConfig {
            cert_file: "/tls/cert.pem".into(),
            key_file: "/tls/key.pem".into(),
            client_ca_file: None,
        });
        assert_eq!(exposure_warning(key, &receiver), None, "with tls");
    }

    fn span(name: &str, trace_id: Vec<u8>, span_id: Vec<u8>) -> Span {
        Span {
            name: name.into(),
            trace_id,
            span_id,
            ..Default::default()
        }
    }

    use crate::otlp::request_of as request;

    #[tokio::test]
    async fn invalid_ids_are_reported_as_partial_success_and_the_rest_is_queued() {
        let (tx, mut rx) = crate::pipeline::queue(4);
        let intake = Intake::new(tx, Arc::default());
        let partial = intake
            .accept(
                "http",
                request(vec![
                    span("good", vec![1; 16], vec![2; 8]),
                    span("short", vec![1; 15], vec![2; 8]),
                    span("zero", vec![1; 16], vec![0; 8]),
                ]),
                Reservation::default(),
            )
            .await
            .expect("accepted")
            .expect("partial success");
        assert_eq!(partial.rejected_spans, 2);
        assert!(
            partial
                .error_message
                .contains("span \"short\": trace_id must be 16 bytes, got 15"),
            "{}",
            partial.error_message
        );
        let queued = rx.try_recv().expect("queued");
        assert_eq!(queued.batch.span_count(), 1);
    }

    #[tokio::test]
    async fn a_full_pipeline_refuses_and_counts_the_spans() {
        let (tx, _rx) = crate::pipeline::queue(1);
        let intake = Intake::new(tx, Arc::default());
        let ok = request(vec![span("a", vec![1; 16], vec![2; 8])]);
        assert_eq!(
            intake
                .accept("grpc", ok.clone(), Reservation::default())
                .await,
            Ok(None)
        );
        assert_eq!(
            intake.accept("grpc", ok, Reservation::default()).await,
            Err(Refusal::PipelineFull { spans: 1 })
        );
        assert!(intake.metrics().render().contains(
            "daena_agent_spans_refused_total{protocol=\"grpc\",reason=\"pipeline_full\"} 1"
        ));
    }

    #[tokio::test]
    async fn encoded_requests_stay_encoded_unless_a_span_is_invalid() {
        let (tx, mut rx) = crate::pipeline::queue(4);
        let intake = Intake::new(tx, Arc::default());
        let good = request(vec![
            span("a", vec![1; 16], vec![2; 8]),
            span("b", vec![1; 16], vec![3; 8]),
        ]);
        let body = Bytes::from(good.encode_to_vec());
        assert_eq!(
            intake
                .accept_encoded("grpc", body.clone(), Reservation::default())
                .await
                .ok(),
            Some(None)
        );
        let queued = rx.try_recv().expect("queued").batch;
        assert_eq!(
            queued,
            SpanBatch::from_encoded(body, 2),
            "forwarded as it came"
        );

        let mixed = request(vec![
            span("a", vec![1; 16], vec![2; 8]),
            span("bad", vec![1; 3], vec![2; 8]),
        ]);
        let partial = intake
            .accept_encoded(
                "grpc",
                Bytes::from(mixed.encode_to_vec()),
                Reservation::default(),
            )
            .await
            .expect("accepted")
            .expect("partial success");
        assert_eq!(partial.rejected_spans, 1);
        assert_eq!(
            rx.try_recv()
                .expect("queued")
                .batch
                .into_request()
                .resource_spans[0]
                .scope_spans[0]
                .spans
                .len(),
            1
        );

        let error = intake
            .accept_encoded(
                "grpc",
                Bytes::from_static(&[0x0a, 0xff, 0xff, 0x01]),
                Reservation::default(),
            )
            .await;
        assert!(
            matches!(error, Err(IntakeError::Undecodable(_))),
            "{error:?}"
        );
    }

    /// A length-delimited field (of a number under 16).
    fn ld(number: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A request whose span has an attribute of `arrays` nested arrayValues, the innermost
    /// holding unknown field 15: at 48, that field is at depth 100, past prost's limit.
    fn deep_request(arrays: usize) -> Bytes {
        let mut any_value = ld(5, &[15 << 3, 1]);
        for _ in 1..arrays {
            any_value = ld(5, &ld(1, &any_value));
        }
        let mut span = span("deep", vec![1; 16], vec![2; 8]).encode_to_vec();
        span.extend(ld(9, &[ld(1, b"k"), ld(2, &any_value)].concat()));
        Bytes::from(ld(1, &ld(2, &ld(2, &span))))
    }

    #[tokio::test]
    async fn a_request_nested_past_prosts_limit_is_refused_naming_the_depth() {
        let (tx, mut rx) = crate::pipeline::queue(4);
        let intake = Intake::new(tx, Arc::default());
        assert_eq!(
            intake
                .accept_encoded("grpc", deep_request(47), Reservation::default())
                .await
                .ok(),
            Some(None)
        );
        assert_eq!(rx.try_recv().expect("queued").batch.span_count(), 1);

        let error = intake
            .accept_encoded("grpc", deep_request(48), Reservation::default())
            .await
            .expect_err("refused");
        let message = error.to_string();
        assert!(matches!(error, IntakeError::Undecodable(_)), "{error:?}");
        assert!(message.contains("recursion limit reached"), "{message}");
        assert!(message.contains("nest more than 100 deep"), "{message}");
        assert!(rx.try_recv().is_err(), "nothing queued");
        let metrics = intake.metrics().render();
        assert!(
            metrics.contains("daena_agent_spans_received_total{protocol=\"grpc\"} 1\n"),
            "only the first counted as received: {metrics}"
        );
    }

    /// A request of `spans` empty spans: two bytes each on the wire, a few hundred decoded.
    fn empty_spans(spans: usize) -> Vec<u8> {
        ld(1, &ld(2, &[0x12, 0x00].repeat(spans)))
    }

    #[tokio::test]
    async fn a_request_over_a_limit_is_refused_before_decoding_naming_the_key() {
        let (tx, mut rx) = crate::pipeline::queue(4);
        let limits = RequestLimits {
            max_spans: 10,
            max_attributes: 3,
            max_decoded_bytes: 64 << 10,
        };
        let intake = Intake::new(tx, Arc::default()).with_limits(limits);
        let many_attributes = {
            let mut span = span("a", vec![1; 16], vec![2; 8]);
            span.attributes = vec![crate::otlp::key_value("k", crate::otlp::Value::IntValue(1)); 4];
            request(vec![span]).encode_to_vec()
        };
        let long_name = request(vec![span(&"x".repeat(100 << 10), vec![1; 16], vec![2; 8])]);
        // Over the span limit, and faulty after its spans: refused on what comes before the fault.
        let mut faulty = empty_spans(11);
        faulty.push(0xff);
        let cases = [
            (empty_spans(11), "11 spans", "max_spans_per_request (10)"),
            (faulty, "11 spans", "max_spans_per_request (10)"),
            (
                many_attributes,
                "4 attributes",
                "max_attributes_per_item (3)",
            ),
            (
                long_name.encode_to_vec(),
                "bytes once decoded",
                "max_decoded_size (65536)",
            ),
        ];
        for (body, what, key) in cases {
            let error = intake
                .accept_encoded("http", Bytes::from(body), Reservation::default())
                .await
                .expect_err("over a limit");
            let message = error.to_string();
            assert!(matches!(error, IntakeError::OverLimit(_)), "{error:?}");
            assert!(message.contains(what), "{message}");
            assert!(
                message.contains(&format!("receivers.otlp.http.{key}")),
                "{message}"
            );
        }
        assert!(rx.try_recv().is_err(), "nothing queued");
        assert!(intake.metrics().render().contains(
            "daena_agent_spans_refused_total{protocol=\"http\",reason=\"request_limit\"} 24\n"
        ));
        let at_limit = intake
            .accept_encoded("http", Bytes::from(empty_spans(10)), Reservation::default())
            .await
            .expect("at the limit: admitted")
            .expect("its spans have no ids");
        assert_eq!(at_limit.rejected_spans, 10);
    }

    #[tokio::test]
    async fn a_request_the_budget_cannot_hold_now_is_told_to_retry_and_fits_later() {
        let (tx, mut rx) = crate::pipeline::queue(4);
        let budget = MemoryBudget::new(1 << 20);
        let intake = Intake::new(tx, Arc::default()).with_budget(Arc::clone(&budget));
        let spans = vec![span("s", vec![1; 16], vec![2; 8]); 1000];
        let body = Bytes::from(request(spans).encode_to_vec());
        let scan = wire::scan_request(&body).expect("valid");
        let cost = (body.len() + scan.decoded_bytes) as u64;
        assert!(cost < 1 << 20, "{cost}");

        let mut other = intake.reservation();
        assert!(
            other.grow((1 << 20) - cost + 1),
            "another request holds the rest"
        );
        let refused = intake
            .accept_encoded("grpc", body.clone(), intake.reservation())
            .await;
        assert!(
            matches!(
                refused,
                Err(IntakeError::Refused(Refusal::OverMemoryBudget {
                    spans: 1000
                }))
            ),
            "{refused:?}"
        );
        assert!(intake.metrics().render().contains(
            "daena_agent_spans_refused_total{protocol=\"grpc\",reason=\"memory_budget\"} 1000\n"
        ));

        drop(other);
        assert_eq!(
            intake
                .accept_encoded("grpc", body, intake.reservation())
                .await
                .ok(),
            Some(None)
        );
        let queued = rx.try_recv().expect("queued");
        assert_eq!(
            queued.memory.bytes(),
            cost,
            "the request's cost travels with it"
        );
        assert_eq!(budget.used(), cost);
        drop(queued);
        assert_eq!(
            budget.used(),
            0,
            "given back once the pipeline is done with it"
        );
    }

    #[tokio::test]
    async fn an_empty_request_succeeds_without_queueing() {
        let (tx, mut rx) = crate::pipeline::queue(1);
        let intake = Intake::new(tx, Arc::default());
        assert_eq!(
            intake
                .accept(
                    "grpc",
                    ExportTraceServiceRequest::default(),
                    Reservation::default(),
                )
                .await,
            Ok(None)
        );
        assert!(rx.try_recv().is_err());
    }
}

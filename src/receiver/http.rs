//! OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, optionally gzipped.

use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::{BodyReservation, ReservedBody};
use super::conn::{ConnectionLimits, Gate};
use super::tls::{MaybeTls, ServerTls};
use super::{Intake, IntakeError, RETRY_AFTER as RETRY_DELAY, Refusal, Security, introduction};
use crate::config::format_duration;
use crate::otlp::{ExportTracePartialSuccess, ExportTraceServiceResponse, RpcStatus, json};
use crate::telemetry::Metrics;
use crate::telemetry::memory::Reservation;
use crate::telemetry::metrics::{ConnectionReason, RefusalReason};

const PROTOCOL: &str = "http";
const TRACES_PATH: &str = "/v1/traces";
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP receiver.
#[derive(Clone)]
pub struct HttpReceiver {
    intake: Intake,
    max_request_size: usize,
    limits: ConnectionLimits,
    security: Security,
}

impl HttpReceiver {
    /// A receiver handing requests to `intake`, refusing bodies over `max_request_size`
    /// bytes, its connections bounded by `limits`.
    pub fn new(intake: Intake, max_request_size: usize, limits: ConnectionLimits) -> Self {
        Self {
            intake,
            max_request_size,
            limits,
            security: Security::default(),
        }
    }

    /// Requires the TLS handshake and bearer token `security` holds.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The routes: `/v1/traces` for POST, `/` for GET (one line saying what answers, for
    /// `curl`), clear 404 and 405 answers for the rest.
    pub fn router(self) -> Router {
        Router::new()
            .route(TRACES_PATH, post(export))
            .route(
                "/",
                get(|| async {
                    plain(
                        StatusCode::OK,
                        introduction(
                            "OTLP/HTTP",
                            &format!("send traces with POST {TRACES_PATH} (protobuf or JSON)"),
                        ),
                    )
                }),
            )
            .method_not_allowed_fallback(|request: Request| async move {
                let path = request.uri().path();
                let message = if path == TRACES_PATH {
                    format!("{path} accepts only POST with an OTLP ExportTraceServiceRequest")
                } else {
                    format!("{path} answers only GET; send traces with POST {TRACES_PATH}")
                };
                plain(StatusCode::METHOD_NOT_ALLOWED, message)
            })
            .fallback(|request: Request| async move {
                plain(
                    StatusCode::NOT_FOUND,
                    format!(
                        "{} is not served here; send traces with POST {TRACES_PATH}",
                        request.uri().path()
                    ),
                )
            })
            .with_state(self)
    }

    /// Serves on `listener` until `stop` is cancelled, then finishes in-flight requests.
    ///
    /// Its own accept loop rather than `axum::serve`, which sets no limit: connections are
    /// counted, and hyper's header timeout, HTTP/2 settings and an idle timer apply.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let limits = self.limits;
        let metrics = Arc::clone(self.intake.metrics());
        let gate = Gate::new(PROTOCOL, limits.max_connections, Arc::clone(&metrics));
        let builder = Arc::new(server_builder(&limits));
        let tls = self.security.tls.clone();
        let router = self.router();
        loop {
            let (tcp, permit) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = gate.accept(&listener) => accepted,
            };
            tokio::spawn(serve_connection(
                Arc::clone(&builder),
                tcp,
                permit,
                Connection {
                    router: router.clone(),
                    limits,
                    metrics: Arc::clone(&metrics),
                    stop: stop.clone(),
                    tls: tls.clone(),
                },
            ));
        }
        drop(listener);
        gate.closed().await;
        Ok(())
    }
}

/// HTTP/1 and HTTP/2 (prior knowledge) with the receiver's limits.
fn server_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    builder
}

/// What one connection's task needs besides its socket.
struct Connection {
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// The handshake to do first, when the receiver has `tls`.
    tls: Option<Arc<ServerTls>>,
}

/// Serves one connection until it closes, a limit closes it, or the receiver stops (then
/// gracefully: in-flight requests finish). `permit` holds its place under `max_connections`.
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    permit: OwnedSemaphorePermit,
    connection: Connection,
) {
    let Connection {
        router,
        limits,
        metrics,
        stop,
        tls,
    } = connection;
    // From the accept: the handshake counts against the time for the first request's headers.
    let activity = Arc::new(Activity::new());
    let io = match tls {
        None => MaybeTls::Plain(tcp),
        Some(tls) => {
            let deadline = Instant::now() + limits.header_read_timeout;
            // A stop does not wait for a handshake: nothing was asked yet.
            let handshake = tokio::select! {
                tls = tls.accept(tcp, deadline, &metrics) => tls,
                () = stop.cancelled() => None,
            };
            match handshake {
                Some(tls) => MaybeTls::Tls(Box::new(tls)),
                None => return,
            }
        }
    };
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut router = router.clone();
            let busy = activity.begin();
            async move {
                let response = tower_service::Service::call(&mut router, request).await;
                drop(busy);
                response
            }
        })
    };
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Some(reason) = result.err().and_then(|e| closed_by_limit(&*e)) {
                    metrics.closed_connection(PROTOCOL, reason);
                }
                break;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
            // A request began or ended: the deadline moved.
            () = activity.changed.notified() => {}
            // The timer also runs while stopping: an idle connection does not hold the stop up.
            () = tokio::time::sleep_until(activity.next_check(&limits)) => {
                if let Some(reason) = activity.expired(&limits) {
                    // No request is in progress: dropping the connection loses nothing.
                    metrics.closed_connection(PROTOCOL, reason);
                    break;
                }
            }
        }
    }
    drop(permit);
}

/// Which limit closed a connection whose serving ended in `error`, if one did.
fn closed_by_limit(error: &(dyn std::error::Error + 'static)) -> Option<ConnectionReason> {
    let mut next = Some(error);
    while let Some(error) = next {
        // hyper's keep-alive error type is private; its message is what it exposes.
        if error.to_string() == "keep-alive timed out" {
            return Some(ConnectionReason::KeepaliveTimeout);
        }
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return Some(ConnectionReason::HeaderReadTimeout);
        }
        next = error.source();
    }
    None
}

/// A connection's requests: how many are in progress, how many began, and when it last
/// changed, for the header and idle timers.
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    since: Mutex<Instant>,
    /// Wakes the connection's task to compute its deadline again.
    changed: Notify,
}

/// A request in progress; its drop marks the connection idle from then.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        Busy(Arc::clone(self))
    }

    /// The limit that applies now: the first request's headers, then idleness.
    fn limit(&self, limits: &ConnectionLimits) -> (Duration, ConnectionReason) {
        if self.requests.load(Ordering::Acquire) == 0 {
            (
                limits.header_read_timeout,
                ConnectionReason::HeaderReadTimeout,
            )
        } else {
            (limits.idle_timeout, ConnectionReason::IdleTimeout)
        }
    }

    /// When to look again: when the limit runs out if nothing happens meanwhile.
    fn next_check(&self, limits: &ConnectionLimits) -> Instant {
        let (limit, _) = self.limit(limits);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + limit;
        }
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) + limit
    }

    /// The limit that ran out, if the connection has no request in progress and one did.
    fn expired(&self, limits: &ConnectionLimits) -> Option<ConnectionReason> {
        let (limit, reason) = self.limit(limits);
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        (self.in_flight.load(Ordering::Acquire) == 0 && since.elapsed() >= limit).then_some(reason)
    }
}

/// The body format of a request, which is also the format of its answer.
#[derive(Clone, Copy, PartialEq)]
enum Format {
    Protobuf,
    Json,
}

/// A refused request: its HTTP status, why, the counter reason, when to retry, and
/// whether the intake already counted its spans.
struct Rejection {
    status: StatusCode,
    message: String,
    reason: RefusalReason,
    retry_after: Option<u64>,
    counted: bool,
}

impl Rejection {
    fn new(status: StatusCode, reason: RefusalReason, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            reason,
            retry_after: None,
            counted: false,
        }
    }

    /// The pipeline could not take the request: retry later.
    fn refused(refusal: Refusal) -> Self {
        let status = match refusal {
            Refusal::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::PipelineFull { .. }
            | Refusal::OverMemoryLimit { .. }
            | Refusal::OverMemoryBudget { .. }
            | Refusal::NotQueued { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        Self {
            status,
            message: refusal.to_string(),
            reason: refusal.reason(),
            retry_after: Some(RETRY_DELAY.as_secs()),
            counted: true,
        }
    }

    /// The intake did not take the request.
    fn from_intake(error: IntakeError) -> Self {
        match error {
            IntakeError::Undecodable(_) => Self::new(
                StatusCode::BAD_REQUEST,
                RefusalReason::Undecodable,
                error.to_string(),
            ),
            IntakeError::OverLimit(_) => Self {
                counted: true,
                ..Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    RefusalReason::RequestLimit,
                    error.to_string(),
                )
            },
            IntakeError::Refused(refusal) => Self::refused(refusal),
        }
    }

    /// The memory budget could not hold the body while it was read: retry later.
    fn over_budget() -> Self {
        Self {
            counted: false,
            ..Self::refused(Refusal::OverMemoryBudget { spans: 0 })
        }
    }
}

async fn export(State(receiver): State<HttpReceiver>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    // Before the body is read: an unauthenticated client costs no decoding.
    if let Some(auth) = &receiver.security.auth
        && let Err(refusal) = auth.check(&parts.headers)
    {
        receiver
            .intake
            .metrics()
            .refused_request(PROTOCOL, RefusalReason::Unauthenticated);
        let status = StatusCode::UNAUTHORIZED;
        let mut response = match content_format(&parts.headers) {
            Ok(format) => status_response(format, status, refusal.to_string(), None),
            Err(_) => plain(status, refusal.to_string()),
        };
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let format = match content_format(&parts.headers) {
        Ok(format) => format,
        Err(rejection) => {
            receiver
                .intake
                .metrics()
                .refused_request(PROTOCOL, rejection.reason);
            return plain(rejection.status, rejection.message);
        }
    };
    match receive(&receiver, format, &parts.headers, body).await {
        Ok(partial_success) => {
            let response = ExportTraceServiceResponse { partial_success };
            let body = match format {
                Format::Protobuf => response.encode_to_vec(),
                Format::Json => json::encode_response(&response),
            };
            ([(CONTENT_TYPE, content_type(format))], body).into_response()
        }
        Err(rejection) => {
            if !rejection.counted {
                receiver
                    .intake
                    .metrics()
                    .refused_request(PROTOCOL, rejection.reason);
            }
            status_response(
                format,
                rejection.status,
                rejection.message,
                rejection.retry_after,
            )
        }
    }
}

/// Reads, admits, decodes when it must, and queues one request's body.
async fn receive(
    receiver: &HttpReceiver,
    format: Format,
    headers: &HeaderMap,
    body: Body,
) -> Result<Option<ExportTracePartialSuccess>, Rejection> {
    let intake = &receiver.intake;
    let (bytes, mut memory) = read_body(
        headers,
        body,
        intake.reservation(),
        receiver.max_request_size,
        receiver.limits.body_read_timeout,
    )
    .await?;
    match format {
        Format::Protobuf => intake
            .accept_encoded(PROTOCOL, bytes, memory)
            .await
            .map_err(Rejection::from_intake),
        Format::Json => {
            let not_json = |e: json::JsonDecodeError| {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    RefusalReason::Undecodable,
                    format!("body is not a valid OTLP/JSON request: {e}"),
                )
            };
            let scan = json::scan_request(&bytes).map_err(not_json)?;
            intake
                .admit(PROTOCOL, &scan, bytes.len(), &mut memory)
                .map_err(Rejection::from_intake)?;
            let request = json::decode_request(&bytes).map_err(not_json)?;
            intake
                .accept(PROTOCOL, request, memory)
                .await
                .map_err(Rejection::refused)
        }
    }
}

fn content_format(headers: &HeaderMap) -> Result<Format, Rejection> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Parameters such as `; charset=utf-8` do not change the format.
    let media_type = value.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Format::Protobuf)
    } else if media_type.eq_ignore_ascii_case(JSON) {
        Ok(Format::Json)
    } else {
        Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RefusalReason::UnsupportedMediaType,
            format!("Content-Type {value:?} is not supported; send {PROTOBUF} or {JSON}"),
        ))
    }
}

/// Reads the body into `memory`, refusing it as soon as it is over `limit`, on the wire
/// or once decompressed, when it has not all arrived within `timeout`, or when the
/// memory budget cannot hold it; gives back the body and what it holds of the budget.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    memory: Reservation,
    limit: usize,
    timeout: Duration,
) -> Result<(Bytes, Reservation), Rejection> {
    let too_large = |what: &str| {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            RefusalReason::TooLarge,
            format!(
                "{what} is larger than the receiver's limit of {limit} bytes; send smaller batches or raise receivers.otlp.http.max_request_size"
            ),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large("body"));
    }
    let shared = BodyReservation::new(memory);
    let body = Limited::new(ReservedBody::new(body, shared.clone()), limit);
    let collected = tokio::time::timeout(timeout, body.collect())
        .await
        .map_err(|_| {
            Rejection::new(
                StatusCode::REQUEST_TIMEOUT,
                RefusalReason::BodyReadTimeout,
                format!(
                    "the body did not arrive within {} (receivers.otlp.http.body_read_timeout); send it at once",
                    format_duration(timeout)
                ),
            )
        })?;
    let wire = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large("body")
            } else if shared.refused() {
                Rejection::over_budget()
            } else {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    RefusalReason::Undecodable,
                    format!("could not read the request body: {e}"),
                )
            }
        })?
        .to_bytes();
    let mut memory = shared.take();
    let encoding = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim();
    if encoding.eq_ignore_ascii_case("gzip") {
        let decompressed = gunzip(&wire, limit, &mut memory)?;
        if decompressed.len() > limit {
            return Err(too_large("decompressed body"));
        }
        // The compressed body is freed; the reservation keeps what remains.
        memory.resize(decompressed.capacity() as u64);
        Ok((decompressed.into(), memory))
    } else if encoding.eq_ignore_ascii_case("identity") || encoding.is_empty() {
        Ok((wire, memory))
    } else {
        Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RefusalReason::UnsupportedMediaType,
            format!(
                "Content-Encoding {encoding:?} is not supported; send gzip or an uncompressed body"
            ),
        ))
    }
}

/// Decompresses `wire` up to one byte past `limit` (which tells "too large" from "exactly
/// at the limit"), reserving the growing buffer in `memory` beside the compressed body.
fn gunzip(wire: &[u8], limit: usize, memory: &mut Reservation) -> Result<Vec<u8>, Rejection> {
    let mut decoder = flate2::read::GzDecoder::new(wire).take(limit as u64 + 1);
    let mut decompressed = Vec::new();
    let mut chunk = vec![0; GUNZIP_CHUNK];
    loop {
        let read = decoder.read(&mut chunk).map_err(|e| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                RefusalReason::Undecodable,
                format!("body is declared Content-Encoding: gzip but is not valid gzip: {e}"),
            )
        })?;
        if read == 0 {
            return Ok(decompressed);
        }
        decompressed.reserve(read);
        let held = wire.len() + chunk.len() + decompressed.capacity();
        if !memory.resize(held as u64) {
            return Err(Rejection::over_budget());
        }
        decompressed.extend_from_slice(&chunk[..read]);
    }
}

/// Bytes decompressed at a time.
const GUNZIP_CHUNK: usize = 64 << 10;

fn content_type(format: Format) -> HeaderValue {
    HeaderValue::from_static(match format {
        Format::Protobuf => PROTOBUF,
        Format::Json => JSON,
    })
}

/// An error answer in the request's format: a `google.rpc.Status` as OTLP/HTTP requires.
fn status_response(
    format: Format,
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
) -> Response {
    let rpc = RpcStatus {
        code: grpc_code(status),
        message,
    };
    let body = match format {
        Format::Protobuf => rpc.encode_to_vec(),
        Format::Json => serde_json::json!({ "code": rpc.code, "message": rpc.message })
            .to_string()
            .into_bytes(),
    };
    let mut response = (status, [(CONTENT_TYPE, content_type(format))], body).into_response();
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The `google.rpc.Code` matching an HTTP status, for readers of the error body.
fn grpc_code(status: StatusCode) -> i32 {
    match status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument as i32,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => {
            tonic::Code::ResourceExhausted as i32
        }
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable as i32,
        StatusCode::REQUEST_TIMEOUT => tonic::Code::DeadlineExceeded as i32,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated as i32,
        _ => tonic::Code::Unknown as i32,
    }
}

/// A plain-text answer, for requests whose format we do not know.
fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

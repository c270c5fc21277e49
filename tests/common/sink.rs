//! OTLP backends on ephemeral loopback ports: [`Sink`] records every request byte for
//! byte (gRPC, HTTP, or both over TLS) and can be scripted, slowed, taken down or gated;
//! [`CountingSink`] only counts spans, for the load benchmark.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daena_trace_agent::otlp::grpc_codec::OtlpCodec;
use daena_trace_agent::otlp::grpc_codec::WireEncode;
use daena_trace_agent::otlp::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse, ExportTracePartialSuccess,
    ExportTraceServiceRequest, ExportTraceServiceResponse, METRICS_EXPORT_PATH,
    METRICS_SERVICE_NAME, Resource, Span, TRACE_SERVICE_NAME,
};
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::WAIT;
use super::client::{flatten, gunzip};

/// One request as the sink saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    /// The request's path: `/v1/traces` (or `/otlp/v1/traces`) for OTLP/HTTP, the
    /// TraceService method's for OTLP/gRPC.
    pub path: String,
    /// The request body as it came, gzip undone: exactly the bytes the agent encoded.
    pub body: Bytes,
    /// `body` decoded by prost.
    pub request: ExportTraceServiceRequest,
    pub at: Instant,
}

/// One OTLP metrics request as the sink saw it.
#[derive(Clone, Debug)]
pub struct MetricsReceived {
    pub headers: http::HeaderMap,
    /// `/v1/metrics` (or `/otlp/v1/metrics`), or the MetricsService method's.
    pub path: String,
    pub request: ExportMetricsServiceRequest,
}

/// How the sink answers the next request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// HTTP status (and Retry-After seconds) for the HTTP sink.
    Http(u16, Option<u64>, &'static str),
    /// gRPC status (and RetryInfo delay) for the gRPC sink.
    Grpc(tonic::Code, Option<Duration>, &'static str),
    /// Accept but report these spans as rejected (partial success).
    Partial(i64, &'static str),
    /// Record, then never answer (a hung backend).
    Hang,
}

/// A recording OTLP backend; clones share what it recorded and how it behaves.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    received: Mutex<Vec<Received>>,
    /// OTLP metrics requests (the Daena signals), always accepted.
    metrics: Mutex<Vec<MetricsReceived>>,
    script: Mutex<VecDeque<Answer>>,
    /// While set, the sink answers UNAVAILABLE (HTTP 503) and records nothing: an outage.
    down: AtomicBool,
    /// Milliseconds the sink takes over each request (a slow backend).
    delay_ms: AtomicU64,
    gate: Mutex<Gate>,
    /// Bumped to release every request held at the gate.
    released: watch::Sender<u64>,
}

/// Which requests the closed gate holds.
type Holds = Arc<dyn Fn(&ExportTraceServiceRequest) -> bool + Send + Sync>;

/// The gate between a request's arrival and its recording (see [`Sink::close_gate`]).
#[derive(Default)]
struct Gate {
    /// Set while the gate is closed.
    closed: Option<Holds>,
    /// Requests waiting at the closed gate.
    held: usize,
    /// When the sink last answered a request.
    last_answer: Option<Instant>,
}

/// What became of one request, whatever protocol brought it.
enum Taken {
    /// The backend is down: refused, not recorded.
    Down,
    /// Held at the closed gate, then released: refused, not recorded.
    Released,
    /// Recorded; to be answered as scripted (`None`: accepted).
    Recorded(Option<Answer>),
}

impl Sink {
    /// An OTLP/gRPC sink on an ephemeral port. The request body reaches it as bytes
    /// through the library's [`OtlpCodec`] and is decoded by prost here, so what is
    /// recorded is what the agent sent, never a re-encoding.
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Self::new(listener.local_addr().expect("addr"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sink.grpc_endpoint())
                .add_service(sink.grpc_metrics_endpoint())
                .serve_with_incoming(incoming(listener)),
        );
        sink
    }

    /// An OTLP/HTTP sink on an ephemeral port, serving `/v1/traces` and `/otlp/v1/traces`.
    pub async fn http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Self::new(listener.local_addr().expect("addr"));
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .route("/otlp/v1/traces", axum::routing::post(http_export))
            .route("/v1/metrics", axum::routing::post(http_metrics))
            .route("/otlp/v1/metrics", axum::routing::post(http_metrics))
            .with_state(sink.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        sink
    }

    /// A sink serving both OTLP/gRPC and OTLP/HTTP over TLS with the given PEM
    /// certificate and key (HTTP/2 and HTTP/1.1 negotiated by ALPN).
    pub async fn tls(cert_pem: &str, key_pem: &str) -> Self {
        use hyper_util::server::conn::auto::Builder;
        use hyper_util::service::TowerToHyperService;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Self::new(listener.local_addr().expect("addr"));
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .route("/v1/metrics", axum::routing::post(http_metrics))
            .with_state(sink.clone())
            .route_service(
                daena_trace_agent::otlp::TRACE_EXPORT_PATH,
                sink.grpc_endpoint(),
            )
            .route_service(METRICS_EXPORT_PATH, sink.grpc_metrics_endpoint());
        let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    // A client that rejects our certificate ends the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tls),
                            TowerToHyperService::new(router),
                        )
                        .await;
                });
            }
        });
        sink
    }

    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            state: Arc::new(State {
                received: Mutex::default(),
                metrics: Mutex::default(),
                script: Mutex::default(),
                down: AtomicBool::default(),
                delay_ms: AtomicU64::default(),
                gate: Mutex::default(),
                released: watch::Sender::new(0),
            }),
        }
    }

    /// The gRPC `MetricsService/Export` endpoint of this sink: records and accepts.
    fn grpc_metrics_endpoint(&self) -> GrpcEndpoint<ExportMetricsServiceResponse> {
        let sink = self.clone();
        GrpcEndpoint(Arc::new(move |request: tonic::Request<Bytes>| {
            let headers = request.metadata().clone().into_headers();
            sink.record_metrics(headers, METRICS_EXPORT_PATH, request.get_ref());
            Box::pin(std::future::ready(Ok(tonic::Response::new(
                ExportMetricsServiceResponse::default(),
            ))))
        }))
    }

    fn record_metrics(&self, headers: http::HeaderMap, path: &str, body: &[u8]) {
        let request = ExportMetricsServiceRequest::decode(body)
            .expect("the sink receives valid OTLP metrics protobuf");
        lock(&self.state.metrics).push(MetricsReceived {
            headers,
            path: path.to_owned(),
            request,
        });
    }

    /// Every OTLP metrics request received so far.
    pub fn metrics(&self) -> Vec<MetricsReceived> {
        lock(&self.state.metrics).clone()
    }

    /// The gRPC `TraceService/Export` endpoint of this sink.
    fn grpc_endpoint(&self) -> GrpcEndpoint {
        let sink = self.clone();
        GrpcEndpoint(Arc::new(move |request: tonic::Request<Bytes>| {
            let sink = sink.clone();
            Box::pin(async move { sink.grpc_export(request).await })
        }))
    }

    /// Takes the backend down (UNAVAILABLE or 503, nothing recorded) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Makes the sink take `delay` over each request before it records it.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Queues answers for the next requests (then it accepts everything).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        lock(&self.state.script).extend(answers);
    }

    /// Closes the gate: from now on a request (after its delay) waits at the gate,
    /// unrecorded and unanswered, until [`release_held_and_open_gate`](Self::release_held_and_open_gate).
    /// Deciding and recording happen under the gate's lock, so once this returns nothing
    /// more is recorded: a test can crash the agent knowing exactly what the backend has.
    pub fn close_gate(&self) {
        self.close_gate_for(|_| true);
    }

    /// Closes the gate for the requests `holds` picks only; the others pass as usual.
    pub fn close_gate_for(
        &self,
        holds: impl Fn(&ExportTraceServiceRequest) -> bool + Send + Sync + 'static,
    ) {
        lock(&self.state.gate).closed = Some(Arc::new(holds));
    }

    /// Waits (bounded by [`WAIT`]) until at least one request waits at the closed gate and
    /// no answer has left the sink for `quiet`, so the agent has had time to act on every
    /// answer it got (e.g. mark a batch delivered in its persistent queue); returns the
    /// number of requests held.
    pub async fn wait_until_held_and_quiet(&self, quiet: Duration) -> usize {
        let started = Instant::now();
        loop {
            {
                let gate = lock(&self.state.gate);
                assert!(gate.closed.is_some(), "the gate is open");
                if gate.held > 0 && gate.last_answer.is_none_or(|at| at.elapsed() >= quiet) {
                    return gate.held;
                }
            }
            assert!(
                started.elapsed() < WAIT,
                "no request held at the gate with {quiet:?} of quiet within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers every request held at the gate with a refusal, without recording it (they
    /// belong to connections of an agent that is gone), and opens the gate.
    pub fn release_held_and_open_gate(&self) {
        let mut gate = lock(&self.state.gate);
        gate.closed = None;
        self.state
            .released
            .send_modify(|generation| *generation += 1);
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Every span received so far, with its resource, in arrival order.
    pub fn spans(&self) -> Vec<(Option<Resource>, Span)> {
        flatten(self.received().iter().map(|r| &r.request))
    }

    /// Waits until at least `n` spans arrived (bounded by [`WAIT`]).
    pub async fn wait_for_spans(&self, n: usize) -> Vec<(Option<Resource>, Span)> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                started.elapsed() < WAIT,
                "only {} of {n} spans arrived within {WAIT:?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` requests arrived (bounded by [`WAIT`]).
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                started.elapsed() < WAIT,
                "only {} of {n} requests arrived within {WAIT:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request, whatever the protocol: refused while down; after the delay, held while
    /// the gate is closed; else recorded with the next scripted answer.
    async fn take(&self, headers: http::HeaderMap, path: &str, body: Bytes) -> Taken {
        let state = &self.state;
        if state.down.load(Ordering::SeqCst) {
            lock(&state.gate).last_answer = Some(Instant::now());
            return Taken::Down;
        }
        let request = ExportTraceServiceRequest::decode(body.clone())
            .expect("the sink receives valid OTLP protobuf");
        let delay = state.delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let generation = {
            let mut gate = lock(&state.gate);
            if !gate.closed.as_ref().is_some_and(|holds| holds(&request)) {
                let answer = lock(&state.script).pop_front();
                lock(&state.received).push(Received {
                    headers,
                    path: path.to_owned(),
                    body,
                    request,
                    at: Instant::now(),
                });
                gate.last_answer = Some(Instant::now());
                return Taken::Recorded(answer);
            }
            gate.held += 1;
            *state.released.borrow()
        };
        // Counts the request as held until it is released or its connection drops it.
        let _held = Held(state);
        let mut released = state.released.subscribe();
        let _ = released.wait_for(|g| *g != generation).await;
        Taken::Released
    }

    async fn grpc_export(
        &self,
        request: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let path = daena_trace_agent::otlp::TRACE_EXPORT_PATH;
        match self.take(headers, path, request.into_inner()).await {
            Taken::Down => Err(tonic::Status::unavailable("backend down")),
            Taken::Released => Err(tonic::Status::unavailable("released from the gate")),
            Taken::Recorded(None | Some(Answer::Http(..))) => {
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
            Taken::Recorded(Some(Answer::Partial(rejected, message))) => {
                Ok(tonic::Response::new(partial(rejected, message)))
            }
            Taken::Recorded(Some(Answer::Grpc(code, retry, message))) => {
                use tonic_types::{ErrorDetails, StatusExt};
                Err(match retry {
                    Some(delay) => tonic::Status::with_error_details(
                        code,
                        message,
                        ErrorDetails::with_retry_info(Some(delay)),
                    ),
                    None => tonic::Status::new(code, message),
                })
            }
            Taken::Recorded(Some(Answer::Hang)) => std::future::pending().await,
        }
    }
}

/// Locks `mutex`; a test that panicked while holding it already failed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("lock")
}

/// One request waiting at the gate, for as long as this lives.
struct Held<'a>(&'a State);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        lock(&self.0.gate).held -= 1;
    }
}

fn partial(rejected: i64, message: &str) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message.into(),
        }),
    }
}

/// The body as sent, its `Content-Encoding: gzip` undone.
fn without_gzip(headers: &http::HeaderMap, body: Bytes) -> Bytes {
    if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        Bytes::from(gunzip(&body))
    } else {
        body
    }
}

async fn http_metrics(
    axum::extract::State(sink): axum::extract::State<Sink>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = without_gzip(&headers, body);
    sink.record_metrics(headers, uri.path(), &body);
    (
        [(http::header::CONTENT_TYPE, "application/x-protobuf")],
        ExportMetricsServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

async fn http_export(
    axum::extract::State(sink): axum::extract::State<Sink>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = without_gzip(&headers, body);
    let protobuf = [(http::header::CONTENT_TYPE, "application/x-protobuf")];
    match sink.take(headers, uri.path(), body).await {
        Taken::Down => (http::StatusCode::SERVICE_UNAVAILABLE, "backend down").into_response(),
        Taken::Released => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "released from the gate",
        )
            .into_response(),
        Taken::Recorded(None | Some(Answer::Grpc(..))) => (
            protobuf,
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
        Taken::Recorded(Some(Answer::Partial(rejected, message))) => {
            (protobuf, partial(rejected, message).encode_to_vec()).into_response()
        }
        Taken::Recorded(Some(Answer::Http(status, retry_after, message))) => {
            let mut response =
                (http::StatusCode::from_u16(status).expect("status"), message).into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert("retry-after", secs.into());
            }
            response
        }
        Taken::Recorded(Some(Answer::Hang)) => std::future::pending().await,
    }
}

// ---------------------------------------------------------------- counting sink

/// An OTLP/gRPC backend that only counts the spans it receives, by the library's wire
/// scan and without decoding, so it costs the machine as little as possible: the load
/// benchmark's backend, whose ceiling is the `baseline` scenario.
pub struct CountingSink {
    pub addr: SocketAddr,
    spans: Arc<AtomicU64>,
}

impl CountingSink {
    /// A counting sink on an ephemeral port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&spans);
        let endpoint = GrpcEndpoint(Arc::new(move |request: tonic::Request<Bytes>| {
            let answer = match daena_trace_agent::otlp::wire::scan_request(request.get_ref()) {
                Some(scan) => {
                    counter.fetch_add(scan.spans as u64, Ordering::Relaxed);
                    Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
                }
                None => Err(tonic::Status::invalid_argument("not an OTLP trace request")),
            };
            Box::pin(std::future::ready(answer))
        }));
        serve_grpc(listener, endpoint);
        Self { addr, spans }
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until at least `n` spans arrived; returns how many did.
    pub async fn wait_for_spans(&self, n: u64, limit: Duration) -> u64 {
        let deadline = Instant::now() + limit;
        while self.spans() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.spans()
    }
}

// ---------------------------------------------------------------- the gRPC endpoint

type ExportResult<R> = Result<tonic::Response<R>, tonic::Status>;
type ExportFuture<R = ExportTraceServiceResponse> =
    Pin<Box<dyn Future<Output = ExportResult<R>> + Send>>;

/// An OTLP/gRPC service (`TraceService`, or `MetricsService` with `R` its response) that
/// hands each request body, as received (gzip undone by tonic), to its handler: the
/// library's [`OtlpCodec`] moves bytes, so no sink decodes more than it needs to.
struct GrpcEndpoint<R = ExportTraceServiceResponse>(
    Arc<dyn Fn(tonic::Request<Bytes>) -> ExportFuture<R> + Send + Sync>,
);

impl<R> Clone for GrpcEndpoint<R> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl tonic::server::NamedService for GrpcEndpoint {
    const NAME: &'static str = TRACE_SERVICE_NAME;
}

impl tonic::server::NamedService for GrpcEndpoint<ExportMetricsServiceResponse> {
    const NAME: &'static str = METRICS_SERVICE_NAME;
}

impl<R: WireEncode> tonic::server::UnaryService<Bytes> for GrpcEndpoint<R> {
    type Response = R;
    type Future = ExportFuture<R>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        (self.0)(request)
    }
}

impl<R: WireEncode, B> tower_service::Service<http::Request<B>> for GrpcEndpoint<R>
where
    B: axum::body::HttpBody + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let endpoint = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(OtlpCodec::<R, Bytes>::default())
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(64 << 20);
            Ok(grpc.unary(endpoint, request).await)
        })
    }
}

/// Serves `endpoint` over plain HTTP/2 on `listener`, without Nagle's delay.
fn serve_grpc(listener: TcpListener, endpoint: GrpcEndpoint) {
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(endpoint)
            .serve_with_incoming(incoming(listener)),
    );
}

/// `listener`'s connections, without Nagle's delay.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A TLS sink with a fresh self-signed certificate for `localhost`, and that certificate
/// as a CA file for the agent to trust.
pub struct TlsBackend {
    /// The sink, listening with TLS.
    pub sink: Sink,
    /// Its certificate, to give the agent as a CA.
    pub ca_file: tempfile::NamedTempFile,
}

/// Starts a [`TlsBackend`].
pub async fn tls_backend() -> TlsBackend {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_pem = certified.cert.pem();
    let sink = Sink::tls(&cert_pem, &certified.signing_key.serialize_pem()).await;
    let ca_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(ca_file.path(), cert_pem).expect("write CA");
    TlsBackend { sink, ca_file }
}

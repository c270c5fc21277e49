//! Shared test harness: an agent on ephemeral loopback ports, a recording OTLP sink
//! (gRPC and HTTP) whose answers can be scripted, and small clients.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use daena_trace_agent::app::{Agent, ShutdownReport};
use daena_trace_agent::config::Config;
use daena_trace_agent::otlp::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, KeyValue, Resource, ResourceSpans,
    ScopeSpans, Span, Value,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any test waits for something to arrive.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- agent

/// An agent running in this process on ephemeral ports.
pub struct TestAgent {
    pub grpc: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub telemetry: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<ShutdownReport, daena_trace_agent::app::AppError>>,
    _dir: tempfile::TempDir,
}

/// Writes `yaml` to a temporary file and loads it with an empty environment.
pub fn load_config(yaml: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let config =
        Config::load(Some(&path), &|_| None).unwrap_or_else(|e| panic!("config must load: {e}"));
    (config, dir)
}

/// The YAML of an agent with both receivers on ephemeral ports and `exporters` as given.
/// The processors off: the agent as a pure forwarder (for tests of the transport).
pub const NO_PROCESSORS: &str = "processors: { daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n";

pub fn agent_yaml(exporters: &str, extra: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0 }}\n    http: {{ endpoint: 127.0.0.1:0 }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ timeout: 50ms }}\nexporters:\n{exporters}\n{extra}"
    )
}

impl TestAgent {
    /// Starts an agent from YAML.
    pub async fn start(yaml: &str) -> Self {
        let (config, dir) = load_config(yaml);
        let agent = Agent::bind(config).await.expect("agent binds");
        let (stop, stopped) = oneshot::channel::<()>();
        let (grpc, http, telemetry) =
            (agent.grpc_addr(), agent.http_addr(), agent.telemetry_addr());
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            http,
            telemetry,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    /// Stops the agent and returns its shutdown report.
    pub async fn stop(mut self) -> ShutdownReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task")
            .expect("agent ran")
    }

    /// The agent's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let addr = self.telemetry.expect("telemetry enabled");
        let (status, _, body) =
            http_request("GET", &format!("http://{addr}/metrics"), &[], Vec::new()).await;
        assert_eq!(status, 200);
        String::from_utf8(body).expect("utf-8 metrics")
    }

    /// The value of one counter line of `/metrics` (0 when absent).
    pub async fn counter(&self, series: &str) -> u64 {
        counter_value(&self.metrics().await, series)
    }

    /// Waits (bounded by [`WAIT`]) until a counter reaches `at_least`, then returns its
    /// value: exporter counters move after the backend answers, not when it receives.
    pub async fn wait_for_counter(&self, series: &str, at_least: u64) -> u64 {
        let started = Instant::now();
        loop {
            let value = self.counter(series).await;
            if value >= at_least || started.elapsed() > WAIT {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/v1/traces", self.http.expect("http receiver"))
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc.expect("grpc receiver"))
    }
}

/// Reads `series` (e.g. `daena_agent_spans_received_total{protocol="grpc"}`) from metrics text.
pub fn counter_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------- sink

/// One request as the sink saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub request: ExportTraceServiceRequest,
    pub at: Instant,
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
    /// Never answer (a hung backend).
    Hang,
}

/// A recording OTLP backend.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// While set, the gRPC sink answers UNAVAILABLE and records nothing (a backend outage).
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds the gRPC sink takes over each request (a slow backend).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Sink {
    /// An OTLP/gRPC sink on an ephemeral port.
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Self::new(listener.local_addr().expect("addr"));
        let service = TraceServiceServer::new(sink.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(64 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
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
        let grpc = TraceServiceServer::new(sink.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let router = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(sink.clone())
            .route_service(daena_trace_agent::otlp::TRACE_EXPORT_PATH, grpc);
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
            received: Arc::default(),
            script: Arc::default(),
            down: Arc::default(),
            delay_ms: Arc::default(),
        }
    }

    /// Takes the backend down (UNAVAILABLE, nothing recorded) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes the gRPC sink take `delay` over each request.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Queues answers for the next requests (then it accepts everything).
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().expect("lock").extend(answers);
    }

    fn next_answer(&self) -> Option<Answer> {
        self.script.lock().expect("lock").pop_front()
    }

    fn record(&self, headers: http::HeaderMap, request: ExportTraceServiceRequest) {
        self.received.lock().expect("lock").push(Received {
            headers,
            request,
            at: Instant::now(),
        });
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
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
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("backend down"));
        }
        let delay = self.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let headers = request.metadata().clone().into_headers();
        let answer = self.next_answer();
        self.record(headers, request.into_inner());
        match answer {
            None | Some(Answer::Http(..)) => {
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
            Some(Answer::Partial(rejected, message)) => {
                Ok(tonic::Response::new(partial(rejected, message)))
            }
            Some(Answer::Grpc(code, retry, message)) => {
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
            Some(Answer::Hang) => std::future::pending().await,
        }
    }
}

fn partial(rejected: i64, message: &str) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: Some(
            opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: message.into(),
            },
        ),
    }
}

async fn http_export(
    axum::extract::State(sink): axum::extract::State<Sink>,
    headers: http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        gunzip(&body)
    } else {
        body.to_vec()
    };
    let request = ExportTraceServiceRequest::decode(&raw[..]).expect("sink got valid protobuf");
    let answer = sink.next_answer();
    sink.record(headers, request);
    let protobuf = [(http::header::CONTENT_TYPE, "application/x-protobuf")];
    match answer {
        None | Some(Answer::Grpc(..)) => (
            protobuf,
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response(),
        Some(Answer::Partial(rejected, message)) => {
            (protobuf, partial(rejected, message).encode_to_vec()).into_response()
        }
        Some(Answer::Http(status, retry_after, message)) => {
            let mut response =
                (http::StatusCode::from_u16(status).expect("status"), message).into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert("retry-after", secs.into());
            }
            response
        }
        Some(Answer::Hang) => std::future::pending().await,
    }
}

// ---------------------------------------------------------------- data and clients

/// Every span of the requests with its resource, in order.
pub fn flatten<'a>(
    requests: impl IntoIterator<Item = &'a ExportTraceServiceRequest>,
) -> Vec<(Option<Resource>, Span)> {
    requests
        .into_iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans.iter().flat_map(move |ss| {
                ss.spans
                    .iter()
                    .map(move |s| (rs.resource.clone(), s.clone()))
            })
        })
        .collect()
}

pub fn kv(key: &str, value: Value) -> KeyValue {
    daena_trace_agent::otlp::key_value(key, value)
}

/// A Daena-shaped request: `n` spans of one council trace from service `daena-backend`.
pub fn council_request(n: usize, seed: u8) -> ExportTraceServiceRequest {
    let trace_id = vec![seed; 16];
    let spans = (0..n)
        .map(|i| Span {
            trace_id: trace_id.clone(),
            span_id: vec![seed, i as u8 + 1, 0, 0, 0, 0, 0, 1],
            parent_span_id: if i == 0 {
                Vec::new()
            } else {
                vec![seed, 1, 0, 0, 0, 0, 0, 1]
            },
            name: if i == 0 {
                "council.round".into()
            } else {
                "council.phase".into()
            },
            kind: 1,
            start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
            end_time_unix_nano: 1_700_000_000_500_000_000 + i as u64,
            attributes: vec![
                kv(
                    "council.phase",
                    Value::StringValue(["scout", "debate", "commit"][i % 3].into()),
                ),
                kv(
                    "council.round_id",
                    Value::StringValue(format!("round-{seed}")),
                ),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    Value::StringValue("daena-backend".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A plain HTTP request over loopback; returns status, headers and body.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let response = tokio::time::timeout(
        WAIT,
        client.request(builder.body(Full::new(Bytes::from(body))).expect("request")),
    )
    .await
    .expect("answer in time")
    .expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// POSTs a protobuf export request to the agent's OTLP/HTTP receiver.
pub async fn post_protobuf(
    agent: &TestAgent,
    request: &ExportTraceServiceRequest,
) -> (u16, http::HeaderMap, Vec<u8>) {
    http_request(
        "POST",
        &agent.http_url(),
        &[("content-type", "application/x-protobuf")],
        request.encode_to_vec(),
    )
    .await
}

/// Sends an export request over OTLP/gRPC; an agent that cannot be reached is `UNAVAILABLE`.
pub async fn grpc_export(
    url: String,
    request: ExportTraceServiceRequest,
    gzip: bool,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let mut client = TraceServiceClient::connect(url)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    if gzip {
        client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    client
        .export(request)
        .await
        .map(tonic::Response::into_inner)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

// ---------------------------------------------------------------- the binary

/// The agent binary built by cargo for these tests.
pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_daena-trace-agent"))
}

/// Runs the binary to completion with `args` and a clean environment plus `env`.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = binary_command(args, env).output().expect("run binary");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A command for the binary with a clean environment (no inherited OTEL_* variables).
pub fn binary_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(agent_binary());
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A running agent process whose stderr (logs) and stdout are collected in the background.
pub struct AgentProcess {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    /// The config file's directory, when the process was started from YAML.
    config_dir: Option<tempfile::TempDir>,
}

impl AgentProcess {
    /// Writes `yaml` to a config file and starts the binary on it at `log_level`.
    pub fn with_config(yaml: &str, log_level: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), yaml);
        let mut process = Self::spawn(
            &[
                "--config",
                path.to_str().expect("path"),
                "--log-level",
                log_level,
            ],
            env,
        );
        process.config_dir = Some(dir);
        process
    }

    /// Starts the binary; waits (bounded) until its start-up line names the listeners.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = binary_command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let process = Self {
            child,
            stdout,
            stderr,
            config_dir: None,
        };
        let started = Instant::now();
        while !process.logs().contains("daena-trace-agent started") {
            assert!(
                started.elapsed() < WAIT,
                "agent did not start; logs:\n{}",
                process.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn output(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// The address the start-up line gives for `what` ("OTLP/gRPC", "OTLP/HTTP", "metrics").
    pub fn addr(&self, what: &str) -> SocketAddr {
        let logs = self.logs();
        let marker = format!("{what} on ");
        let start = logs.find(&marker).expect("listener in start-up line") + marker.len();
        let rest = &logs[start..];
        let end = rest.find([',', ';', ' ', '\n']).unwrap_or(rest.len());
        rest[..end].parse().expect("socket address")
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    pub fn terminate(&mut self) -> i32 {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.wait()
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the collector threads read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > WAIT {
                let _ = self.child.kill();
                panic!("agent did not exit in time; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

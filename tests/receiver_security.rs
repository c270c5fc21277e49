//! The receivers' TLS, mutual TLS, certificate reload and bearer-token auth
//! (`receivers.otlp.*.tls` and `.auth`), seen from clients: who is served, who is refused
//! and how, rotation without a restart, the refusals in `/metrics`, and the config errors
//! `check` reports for unusable files.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use daena_trace_agent::config::Config;
use daena_trace_agent::otlp::ExportTraceServiceResponse;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The longest a change of a watched file may take to show (it is polled every second).
const RELOAD_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- certificates

/// A certificate authority issuing server and client certificates.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `localhost`, usable by a server and by a client.
    fn leaf(&self) -> Leaf {
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("signed");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Files in a temporary directory that live as long as this.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

// ---------------------------------------------------------------- clients

/// A TLS client config trusting `ca_pem`, presenting `identity` if given.
fn client_config(ca_pem: &str, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`, bounded by [`WAIT`].
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(WAIT, connect)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// POSTs `request` as protobuf to `/v1/traces` over TLS (HTTP/1.1) with `headers`; the
/// status, headers and body, or why there was no answer.
async fn https_post(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, http::HeaderMap, Vec<u8>), String> {
    let exchange = async {
        let tls = tls_connect(addr, config).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut builder = http::Request::post("/v1/traces")
            .header("host", "localhost")
            .header("content-type", "application/x-protobuf");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::from(body))).expect("request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        Ok((status, headers, body))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

/// Connects tonic to the agent over TLS.
#[derive(Clone)]
struct TlsConnector {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let (addr, config) = (self.addr, Arc::clone(&self.config));
        Box::pin(async move { tls_connect(addr, config).await.map(TokioIo::new) })
    }
}

/// One OTLP/gRPC export of `spans` spans to `addr`, over TLS with `tls` or in plaintext,
/// with `authorization` as metadata if given; bounded by [`WAIT`].
async fn grpc_call(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<&str>,
    spans: usize,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .timeout(GRPC_DEADLINE);
        let channel = match tls {
            Some(config) => {
                endpoint
                    .connect_with_connector(TlsConnector { addr, config })
                    .await
            }
            None => endpoint.connect().await,
        }
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
        let mut request =
            tonic::Request::new(Bytes::from(council_request(spans, 7).encode_to_vec()));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("metadata"));
        }
        grpc_unary(channel, request, false).await
    };
    tokio::time::timeout(WAIT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")))
}

/// What a plaintext HTTP/1.1 request to a TLS port gets back before the port closes.
async fn plaintext_answer(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("the port closes the connection");
    answer
}

// ---------------------------------------------------------------- agents

/// A tiny request body, for auth checks that should not depend on its contents.
fn body(spans: usize) -> Vec<u8> {
    council_request(spans, 3).encode_to_vec()
}

/// The YAML of a receiver section whose receivers both carry `settings` (a flow-map body,
/// e.g. `tls: { ... }`), on ephemeral loopback ports.
fn yaml_with(sink: &Sink, settings: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0, {settings} }}\n    http: {{ endpoint: 127.0.0.1:0, {settings} }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ timeout: 50ms }}\n{NO_PROCESSORS}exporters:\n  sink: {{ protocol: grpc, endpoint: http://{}, compression: none }}\n",
        sink.addr
    )
}

/// `tls:` settings for a server certificate of `server` in `files`, with `client_ca` for mTLS.
fn tls_settings(files: &Files, server: &Leaf, client_ca: Option<&Pki>) -> String {
    let cert = files.write("server.crt", &server.cert);
    let key = files.write("server.key", &server.key);
    let client_ca = client_ca.map_or_else(String::new, |ca| {
        let path = files.write("client-ca.crt", &ca.ca_pem());
        format!(", client_ca_file: {}", path.display())
    });
    format!(
        "tls: {{ cert_file: {}, key_file: {}{client_ca} }}",
        cert.display(),
        key.display()
    )
}

fn series(metric: &str, protocol: &str, reason: &str) -> String {
    format!("daena_agent_{metric}_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}")
}

fn closed(receiver: &str, reason: &str) -> String {
    format!("daena_agent_connections_closed_total{{receiver=\"{receiver}\",reason=\"{reason}\"}}")
}

// ---------------------------------------------------------------- TLS

#[tokio::test]
async fn clients_trusting_the_ca_are_served_over_tls_and_plaintext_is_refused() {
    let (sink, files, pki) = (Sink::grpc().await, Files::new(), Pki::new("server CA"));
    let agent = TestAgent::start(&yaml_with(&sink, &tls_settings(&files, &pki.leaf(), None))).await;
    let (grpc, http) = (agent.grpc.expect("grpc"), agent.http.expect("http"));
    let client = client_config(&pki.ca_pem(), None);

    let (status, _, answer) = https_post(http, Arc::clone(&client), &[], body(2))
        .await
        .expect("served over TLS");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    grpc_call(grpc, Some(Arc::clone(&client)), None, 3)
        .await
        .expect("gRPC over TLS");
    assert_eq!(sink.wait_for_spans(5).await.len(), 5);

    for addr in [grpc, http] {
        let answer = plaintext_answer(addr).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "plaintext HTTP gets no HTTP answer: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(
        grpc_call(grpc, None, None, 1).await.is_err(),
        "plaintext gRPC is refused"
    );
    assert!(agent.counter(&closed("http", "tls_handshake")).await >= 1);
    assert!(agent.counter(&closed("grpc", "tls_handshake")).await >= 2);
    // A client that does not trust the certificate gives up in the handshake.
    let stranger = client_config(&Pki::new("another CA").ca_pem(), None);
    assert!(tls_connect(http, stranger).await.is_err());
    agent.stop().await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_header_read_timeout_and_holds_no_one_back() {
    let (sink, files, pki) = (Sink::grpc().await, Files::new(), Pki::new("server CA"));
    let settings = format!(
        "header_read_timeout: 500ms, {}",
        tls_settings(&files, &pki.leaf(), None)
    );
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let client = client_config(&pki.ca_pem(), None);
    for (receiver, addr) in [("grpc", agent.grpc), ("http", agent.http)] {
        let addr = addr.expect("receiver");
        // TCP open, no ClientHello.
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        match receiver {
            "grpc" => drop(
                grpc_call(addr, Some(Arc::clone(&client)), None, 1)
                    .await
                    .expect("served beside a stalled handshake"),
            ),
            _ => {
                let (status, _, _) = https_post(addr, Arc::clone(&client), &[], body(1))
                    .await
                    .expect("served beside a stalled handshake");
                assert_eq!(status, 200);
            }
        }
        let mut rest = Vec::new();
        let closed_after = tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
            .await
            .map(|_| started.elapsed())
            .expect("the stalled connection is closed");
        assert!(
            closed_after >= Duration::from_millis(400),
            "{receiver}: closed after {closed_after:?}, before header_read_timeout"
        );
        assert_eq!(
            agent
                .counter(&closed(receiver, "header_read_timeout"))
                .await,
            1,
            "{receiver}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn curl_over_tls_gets_the_introduction_on_the_grpc_port_without_a_token() {
    let (sink, files, pki) = (Sink::grpc().await, Files::new(), Pki::new("server CA"));
    let token_file = files.write("token", "curl-token");
    let settings = format!(
        "{}, auth: {{ bearer_token_file: {} }}",
        tls_settings(&files, &pki.leaf(), None),
        token_file.display()
    );
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    // What curl offers over https: HTTP/1.1 when asked for it.
    let mut config = (*client_config(&pki.ca_pem(), None)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(agent.grpc.expect("grpc"), Arc::new(config))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1");
    tokio::spawn(connection);
    let request = http::Request::get("/")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("answer");
    assert_eq!(response.status(), 200);
    let text = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("OTLP/gRPC receiver"),
        "{text:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    let (sink, files) = (Sink::grpc().await, Files::new());
    let (server_ca, client_ca, other_ca) = (
        Pki::new("server CA"),
        Pki::new("client CA"),
        Pki::new("other CA"),
    );
    let settings = tls_settings(&files, &server_ca.leaf(), Some(&client_ca));
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let (grpc, http) = (agent.grpc.expect("grpc"), agent.http.expect("http"));

    let member = client_config(&server_ca.ca_pem(), Some(&client_ca.leaf()));
    let (status, _, _) = https_post(http, Arc::clone(&member), &[], body(2))
        .await
        .expect("a client of the client CA is served");
    assert_eq!(status, 200);
    grpc_call(grpc, Some(member), None, 1)
        .await
        .expect("a client of the client CA is served over gRPC");
    assert_eq!(sink.wait_for_spans(3).await.len(), 3);

    let anonymous = client_config(&server_ca.ca_pem(), None);
    let outsider = client_config(&server_ca.ca_pem(), Some(&other_ca.leaf()));
    for (who, client) in [("no certificate", anonymous), ("another CA", outsider)] {
        let answer = https_post(http, Arc::clone(&client), &[], body(1)).await;
        assert!(answer.is_err(), "{who}: refused, got {answer:?}");
        let answer = grpc_call(grpc, Some(client), None, 1).await;
        assert!(answer.is_err(), "{who}: refused over gRPC, got {answer:?}");
    }
    assert!(agent.counter(&closed("http", "tls_handshake")).await >= 2);
    assert_eq!(sink.spans().len(), 3, "nothing from the refused clients");
    agent.stop().await;
}

#[tokio::test]
async fn rewritten_certificate_files_are_served_to_new_connections_without_a_restart() {
    let (sink, files) = (Sink::grpc().await, Files::new());
    let (old_ca, new_ca) = (Pki::new("old CA"), Pki::new("new CA"));
    let agent = TestAgent::start(&yaml_with(
        &sink,
        &tls_settings(&files, &old_ca.leaf(), None),
    ))
    .await;
    let http = agent.http.expect("http");
    let (old_client, new_client) = (
        client_config(&old_ca.ca_pem(), None),
        client_config(&new_ca.ca_pem(), None),
    );
    assert!(tls_connect(http, Arc::clone(&old_client)).await.is_ok());
    assert!(tls_connect(http, Arc::clone(&new_client)).await.is_err());

    let renewed = new_ca.leaf();
    files.write("server.crt", &renewed.cert);
    files.write("server.key", &renewed.key);
    let started = Instant::now();
    while tls_connect(http, Arc::clone(&new_client)).await.is_err() {
        assert!(
            started.elapsed() < RELOAD_WAIT,
            "the new certificate is not served within {RELOAD_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tls_connect(http, old_client).await.is_err());
    let (status, _, _) = https_post(http, Arc::clone(&new_client), &[], body(1))
        .await
        .expect("served with the new certificate");
    assert_eq!(status, 200);

    // A broken file keeps the certificate that works.
    files.write("server.crt", "not a certificate");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(tls_connect(http, new_client).await.is_ok());
    agent.stop().await;
}

// ---------------------------------------------------------------- bearer tokens

#[tokio::test]
async fn span_intake_requires_the_bearer_token_which_rotates_without_a_restart() {
    let (sink, files) = (Sink::grpc().await, Files::new());
    let token_file = files.write("token", "first-token-0123\n");
    let settings = format!("auth: {{ bearer_token_file: {} }}", token_file.display());
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let grpc = agent.grpc.expect("grpc");
    let post = |authorization: Option<&'static str>| {
        let url = agent.http_url();
        async move {
            let mut headers = vec![("content-type", "application/x-protobuf")];
            headers.extend(authorization.map(|value| ("authorization", value)));
            http_request("POST", &url, &headers, body(2)).await
        }
    };

    let (status, headers, answer) = post(None).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.contains("Authorization: Bearer"), "{answer}");
    let (status, _, answer) = post(Some("Bearer wrong-token-99")).await;
    assert_eq!(status, 401);
    assert!(!String::from_utf8_lossy(&answer).contains("wrong-token-99"));
    assert_eq!(post(Some("Basic Zmlyc3Q=")).await.0, 401);
    assert_eq!(post(Some("bearer first-token-0123")).await.0, 200);

    let refused = grpc_call(grpc, None, None, 1).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = grpc_call(grpc, None, Some("Bearer wrong-token-99"), 1)
        .await
        .expect_err("wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(!refused.message().contains("wrong-token-99"));
    grpc_call(grpc, None, Some("Bearer first-token-0123"), 3)
        .await
        .expect("the right token");
    assert_eq!(sink.wait_for_spans(5).await.len(), 5);

    // `GET /` says what listens without a token.
    let root = format!("http://{}/", agent.http.expect("http"));
    assert_eq!(http_request("GET", &root, &[], Vec::new()).await.0, 200);

    std::fs::write(&token_file, "second-token-4567\n").expect("rotate");
    let started = Instant::now();
    let mut refused_while_rotating = 0;
    while post(Some("Bearer second-token-4567")).await.0 != 200 {
        refused_while_rotating += 1;
        assert!(
            started.elapsed() < RELOAD_WAIT,
            "the new token is not accepted within {RELOAD_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(Some("Bearer first-token-0123")).await.0, 401);
    grpc_call(grpc, None, Some("Bearer second-token-4567"), 1)
        .await
        .expect("the new token over gRPC");
    assert_eq!(sink.wait_for_spans(5 + 2 + 1).await.len(), 8);

    let metrics = agent.metrics().await;
    assert_eq!(
        counter_value(
            &metrics,
            &series("requests_refused", "http", "unauthenticated")
        ),
        3 + refused_while_rotating + 1
    );
    assert_eq!(
        counter_value(
            &metrics,
            &series("requests_refused", "grpc", "unauthenticated")
        ),
        2
    );
    agent.stop().await;
}

#[tokio::test]
async fn tls_and_a_bearer_token_together() {
    let (sink, files, pki) = (Sink::grpc().await, Files::new(), Pki::new("server CA"));
    let token_file = files.write("token", "together-token");
    let settings = format!(
        "{}, auth: {{ bearer_token_file: {} }}",
        tls_settings(&files, &pki.leaf(), None),
        token_file.display()
    );
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let client = client_config(&pki.ca_pem(), None);
    let http = agent.http.expect("http");
    let (status, _, _) = https_post(http, Arc::clone(&client), &[], body(1))
        .await
        .expect("an answer");
    assert_eq!(status, 401);
    let authorized = [("authorization", "Bearer together-token")];
    let (status, _, _) = https_post(http, Arc::clone(&client), &authorized, body(1))
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    grpc_call(
        agent.grpc.expect("grpc"),
        Some(client),
        Some("Bearer together-token"),
        1,
    )
    .await
    .expect("gRPC over TLS with the token");
    assert_eq!(sink.wait_for_spans(2).await.len(), 2);
    agent.stop().await;
}

// ---------------------------------------------------------------- config errors

/// The errors `Config::load` (and so `check`) reports for `yaml`, as `key: message` lines.
fn config_errors(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), yaml);
    match Config::load(Some(&path), &|_| None) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

/// Both receivers on ephemeral ports with `grpc` and `http` added to their settings.
fn receivers_yaml(grpc: &str, http: &str) -> String {
    let settings = |extra: &str| {
        if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        }
    };
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0{} }}\n    http: {{ endpoint: 127.0.0.1:0{} }}\nexporters:\n  out: {{ protocol: console }}\n",
        settings(grpc),
        settings(http)
    )
}

#[test]
fn unusable_tls_and_token_files_are_config_errors_naming_their_keys() {
    let files = Files::new();
    let (pki, other) = (Pki::new("CA"), Pki::new("other CA"));
    let (leaf, stranger) = (pki.leaf(), other.leaf());
    let cert = files.write("server.crt", &leaf.cert);
    let wrong_key = files.write("other.key", &stranger.key);
    let empty_token = files.write("empty-token", " \n");
    let missing = files.path("missing.crt");
    let errors = config_errors(&receivers_yaml(
        &format!(
            "tls: {{ cert_file: {}, key_file: {} }}",
            missing.display(),
            wrong_key.display()
        ),
        &format!(
            "tls: {{ cert_file: {}, key_file: {} }}, auth: {{ bearer_token_file: {} }}",
            cert.display(),
            wrong_key.display(),
            empty_token.display()
        ),
    ));
    let find = |key: &str| {
        errors
            .iter()
            .find(|e| e.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no error for {key} in {errors:#?}"))
            .clone()
    };
    let missing_cert = find("receivers.otlp.grpc.tls.cert_file");
    assert!(
        missing_cert.contains(&missing.display().to_string()),
        "{missing_cert}"
    );
    let mismatch = find("receivers.otlp.http.tls.key_file");
    assert!(
        mismatch.contains("is not the key of the certificate"),
        "{mismatch}"
    );
    let empty = find("receivers.otlp.http.auth.bearer_token_file");
    assert!(empty.contains("holds no token"), "{empty}");
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // Never the contents of a file.
    for error in &errors {
        assert!(!error.contains("PRIVATE KEY"), "{error}");
    }

    let token = files.write("token", "a-real-token\n");
    let key = files.write("server.key", &leaf.key);
    let client_ca = files.write("client-ca.crt", &other.ca_pem());
    let valid = receivers_yaml(
        &format!(
            "tls: {{ cert_file: {}, key_file: {}, client_ca_file: {} }}",
            cert.display(),
            key.display(),
            client_ca.display()
        ),
        &format!("auth: {{ bearer_token_file: {} }}", token.display()),
    );
    assert_eq!(config_errors(&valid), Vec::<String>::new());
}

#[test]
fn check_reports_an_unusable_token_file_without_its_contents() {
    let files = Files::new();
    let token = files.write("token", "tok en-with-a-space");
    let config = files.write(
        "agent.yaml",
        &receivers_yaml(
            "",
            &format!("auth: {{ bearer_token_file: {} }}", token.display()),
        ),
    );
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", &config.display().to_string()], &[]);
    let output = stdout + &stderr;
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("receivers.otlp.http.auth.bearer_token_file"),
        "{output}"
    );
    assert!(!output.contains("tok en"), "{output}");
}

// ---------------------------------------------------------------- the Python SDK

/// Exports one span with the real Python SDK over `protocol` to `endpoint`, with the
/// `OTEL_EXPORTER_OTLP_*` variables `env`; whether the SDK reported success, and what it
/// printed.
async fn python_sdk_export(protocol: &str, endpoint: &str, env: &[(&str, &str)]) -> (bool, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/send_with_token.py");
    let mut command = std::process::Command::new(venv_python(".venv-interop"));
    command
        .arg(script)
        .arg(protocol)
        .arg(endpoint)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_INSECURE")
        // `requests` lets these replace the CA file the HTTP exporter gives its session
        // (OTEL_EXPORTER_OTLP_CERTIFICATE); a machine's own must not decide the test.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .envs(env.iter().copied());
    let (status, output) = run_bounded(command, Duration::from_secs(60)).await;
    assert!(
        matches!(status.code(), Some(0 | 2)),
        "the SDK script failed:\n{output}"
    );
    (status.success(), output)
}

#[tokio::test]
async fn the_python_sdk_is_refused_without_the_token_and_served_with_it() {
    let (sink, files) = (Sink::grpc().await, Files::new());
    let token_file = files.write("token", "sdk-token-2468\n");
    let settings = format!("auth: {{ bearer_token_file: {} }}", token_file.display());
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let header = [(
        "OTEL_EXPORTER_OTLP_HEADERS",
        "authorization=Bearer%20sdk-token-2468",
    )];
    for (protocol, endpoint) in [("grpc", agent.grpc_url()), ("http", agent.http_url())] {
        let (served, output) = python_sdk_export(protocol, &endpoint, &[]).await;
        assert!(!served, "{protocol}: refused without the header:\n{output}");
        let (served, output) = python_sdk_export(protocol, &endpoint, &header).await;
        assert!(
            served,
            "{protocol}: served with OTEL_EXPORTER_OTLP_HEADERS:\n{output}"
        );
    }
    assert_eq!(sink.wait_for_spans(2).await.len(), 2);
    for protocol in ["grpc", "http"] {
        let refused = series("requests_refused", protocol, "unauthenticated");
        assert_eq!(agent.counter(&refused).await, 1, "{protocol}");
    }
    agent.stop().await;
}

#[tokio::test]
async fn the_python_sdk_exports_over_mutual_tls_with_the_token_from_its_environment() {
    let (sink, files) = (Sink::grpc().await, Files::new());
    let (server_ca, client_ca) = (Pki::new("server CA"), Pki::new("client CA"));
    let token_file = files.write("token", "sdk-token-1357");
    let settings = format!(
        "{}, auth: {{ bearer_token_file: {} }}",
        tls_settings(&files, &server_ca.leaf(), Some(&client_ca)),
        token_file.display()
    );
    let agent = TestAgent::start(&yaml_with(&sink, &settings)).await;
    let service = client_ca.leaf();
    let ca = files.write("agent-ca.crt", &server_ca.ca_pem());
    let cert = files.write("service.crt", &service.cert);
    let key = files.write("service.key", &service.key);
    let (ca, cert, key) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let env = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20sdk-token-1357",
        ),
    ];
    let grpc = format!("https://localhost:{}", agent.grpc.expect("grpc").port());
    let http = format!(
        "https://localhost:{}/v1/traces",
        agent.http.expect("http").port()
    );
    for (protocol, endpoint) in [("grpc", grpc), ("http", http)] {
        let (served, output) = python_sdk_export(protocol, &endpoint, &env).await;
        assert!(
            served,
            "{protocol}: served over mTLS with the token:\n{output}"
        );
    }
    assert_eq!(sink.wait_for_spans(2).await.len(), 2);
    agent.stop().await;
}

//! What both OTLP exporters share: the HTTP client (rustls with the ring provider only,
//! system roots unless `tls.ca_file` names the CA to trust), the configured headers, and
//! the endpoint as logs may show it.

use std::error::Error;
use std::io;
use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::USER_AGENT;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{BuildError, Delivered, ExportError};
use crate::config::{ExporterConfig, TlsConfig, mask_url};

/// The client both exporters send with.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where an exporter sends: a pooled client, the URL, the headers every request carries
/// and the deadline of one attempt.
pub struct Destination {
    client: HttpClient,
    uri: Uri,
    /// The URL as logs may show it: secret query values masked.
    shown: String,
    /// The `host:port` connections go to, for connection failures.
    address: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl Destination {
    /// A destination for exporter `name` at `url` (with no `user:password@`: see
    /// [`ExporterConfig::request_url`]), sending `headers` plus the configured ones.
    pub fn new(
        name: &str,
        config: &ExporterConfig,
        url: &str,
        versions: HttpVersions,
        headers: HeaderMap,
    ) -> Result<Self, BuildError> {
        let shown = mask_url(url);
        let uri: Uri = url.parse().map_err(|e| BuildError::Endpoint {
            exporter: name.to_owned(),
            message: format!("{shown:?} is not a valid URL: {e}"),
        })?;
        let mut all = configured_headers(name, config)?;
        all.extend(headers);
        all.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("daena-trace-agent/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Self {
            client: client(name, config, versions)?,
            shown,
            address: address_of(&uri),
            uri,
            headers: all,
            timeout: config.timeout,
        })
    }

    /// The URL with secret query values masked, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// POSTs `body`; a connection failure is retryable.
    pub async fn post(&self, body: Bytes) -> Result<Response<Incoming>, ExportError> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        self.client
            .request(request)
            .await
            .map_err(|e| ExportError::Retryable {
                message: self.failure(&e),
                retry_after: None,
            })
    }

    /// What went wrong with a request the client could not complete, with the whole
    /// chain of causes: `connect to 127.0.0.1:4317: connection refused`.
    fn failure(&self, error: &hyper_util::client::legacy::Error) -> String {
        // The client's own text ("client error (Connect)") names only the stage that
        // failed; what failed is in its sources.
        let cause = error
            .source()
            .map_or_else(|| error.to_string(), error_chain);
        if error.is_connect() {
            // hyper-util's connector says "tcp connect error" before the socket's error,
            // which "connect to" already says.
            let cause = cause.strip_prefix("tcp connect error: ").unwrap_or(&cause);
            format!("connect to {}: {cause}", self.address)
        } else {
            format!("request to {} failed: {cause}", self.shown)
        }
    }

    /// Runs one attempt within the exporter's timeout; running out of time is retryable.
    pub async fn within_timeout(
        &self,
        attempt: impl Future<Output = Result<Delivered, ExportError>>,
    ) -> Result<Delivered, ExportError> {
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(ExportError::Retryable {
                    message: format!(
                        "no answer from {} within the {:?} timeout",
                        self.shown, self.timeout
                    ),
                    retry_after: None,
                })
            })
    }
}

/// A pooled client for `config`'s endpoint; `versions` says what it may speak.
fn client(
    name: &str,
    config: &ExporterConfig,
    versions: HttpVersions,
) -> Result<HttpClient, BuildError> {
    let connector = connector(&config.tls, versions).map_err(|message| BuildError::Tls {
        exporter: name.to_owned(),
        message,
    })?;
    let mut builder = Client::builder(TokioExecutor::new());
    if matches!(versions, HttpVersions::Http2) {
        // gRPC: HTTP/2 with prior knowledge on http://, negotiated by ALPN on https://.
        builder.http2_only(true);
    }
    Ok(builder.build(connector))
}

/// The configured headers (and `auth.basic`), marked sensitive so they are never printed.
fn configured_headers(name: &str, config: &ExporterConfig) -> Result<HeaderMap, BuildError> {
    let mut headers = HeaderMap::new();
    for (key, value) in config.request_headers() {
        let header_error = |reason: &str| BuildError::Header {
            exporter: name.to_owned(),
            name: key.clone(),
            reason: reason.to_owned(),
        };
        let parsed_key = HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| header_error("not a valid header name"))?;
        let mut parsed_value = HeaderValue::from_str(value.expose())
            .map_err(|_| header_error("the value holds characters a header cannot carry"))?;
        parsed_value.set_sensitive(true);
        headers.insert(parsed_key, parsed_value);
    }
    Ok(headers)
}

/// The `host:port` a URL's requests connect to, the scheme's port when it names none.
fn address_of(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    format!("{host}:{port}")
}

/// `error` and its sources as one line, `outer: inner: innermost`. A layer whose text is
/// already in the line (a layer that prints its source's text itself) is not repeated,
/// and an operating-system error reads as its description alone (`connection refused`).
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = layer_text(error);
    let mut next = error.source();
    while let Some(source) = next {
        let text = layer_text(source);
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

/// One layer's own text: an OS error's description without its number, in lower case
/// as the rest of the line (`Connection refused (os error 111)` → `connection refused`).
fn layer_text(error: &(dyn Error + 'static)) -> String {
    let text = error.to_string();
    let Some(code) = error
        .downcast_ref::<io::Error>()
        .and_then(io::Error::raw_os_error)
    else {
        return text;
    };
    let description = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text);
    let mut chars = description.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// Which HTTP versions the connector offers (gRPC needs HTTP/2 only).
#[derive(Clone, Copy)]
pub enum HttpVersions {
    /// HTTP/2 only, for gRPC.
    Http2,
    /// HTTP/1.1 and HTTP/2, for OTLP/HTTP.
    Any,
}

/// Builds a connector for `http://` and `https://` endpoints with the given TLS settings.
fn connector(
    tls: &TlsConfig,
    versions: HttpVersions,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(tls)?)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs(cert_file)?;
            let key = read_key(key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("cert_file and key_file do not make a client identity: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    Ok(match versions {
        HttpVersions::Http2 => https.enable_http2().wrap_connector(http),
        HttpVersions::Any => https.enable_http1().enable_http2().wrap_connector(http),
    })
}

fn roots(tls: &TlsConfig) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(ca_file) = &tls.ca_file {
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
        }
    } else {
        // Unreadable system certificates are skipped; an https endpoint then fails
        // its handshake with a message naming the certificate problem.
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!("No system CA certificates found; https exporters need tls.ca_file");
        }
    }
    Ok(roots)
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{} holds no usable PEM private key: {e}", path.display()))
}

/// `insecure_skip_verify: true`: accepts any server certificate but still checks the
/// handshake signatures, so the connection is encrypted, just not authenticated.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExporterProtocol, OtlpSignal};
    use crate::exporter::{Exporter, OtlpGrpcExporter, OtlpHttpExporter, Payload};

    /// A loopback port nothing listens on: bound, read, and closed again.
    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    fn payload() -> Payload {
        Payload::new(crate::otlp::SpanBatch::new(
            crate::otlp::request_named(&["council.round"]).resource_spans,
        ))
    }

    #[tokio::test]
    async fn an_export_to_a_closed_port_names_the_address_and_the_refusal() {
        let port = closed_port();
        let endpoint = Some(format!("http://127.0.0.1:{port}"));
        let grpc = OtlpGrpcExporter::new(
            "tempo",
            &ExporterConfig::new(ExporterProtocol::Grpc, endpoint.clone()),
            OtlpSignal::Traces,
        )
        .expect("exporter");
        let http = OtlpHttpExporter::new(
            "grafana",
            &ExporterConfig::new(ExporterProtocol::HttpProtobuf, endpoint),
            OtlpSignal::Traces,
        )
        .expect("exporter");
        let expected = format!("connect to 127.0.0.1:{port}: connection refused");
        for result in [grpc.export(&payload()).await, http.export(&payload()).await] {
            match result {
                Err(ExportError::Retryable { message, .. }) => {
                    assert_eq!(message, expected);
                }
                other => panic!("expected a retryable failure, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_chain_is_printed_whole_and_each_layer_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{text}")]
        struct Layer {
            text: &'static str,
            source: Option<Box<dyn Error + Send + Sync>>,
        }
        let refused = io::Error::from_raw_os_error(111);
        let chain = Layer {
            text: "dns error",
            source: Some(Box::new(Layer {
                text: "lookup of tempo failed: no such host",
                source: Some(Box::new(Layer {
                    text: "no such host",
                    source: Some(Box::new(refused)),
                })),
            })),
        };
        assert_eq!(
            error_chain(&chain),
            "dns error: lookup of tempo failed: no such host: connection refused"
        );
    }

    #[test]
    fn connections_go_to_the_urls_port_or_the_schemes() {
        let address = |url: &str| address_of(&url.parse().expect("uri"));
        assert_eq!(address("http://127.0.0.1:4317"), "127.0.0.1:4317");
        assert_eq!(
            address("https://user:pw@tempo.example.net/otlp"),
            "tempo.example.net:443"
        );
        assert_eq!(address("http://[::1]/v1/traces"), "[::1]:80");
    }
}

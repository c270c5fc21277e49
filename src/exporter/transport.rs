//! What both OTLP exporters share: the HTTP client (rustls with the ring provider only,
//! system roots unless `tls.ca_file` names the CA to trust), the configured headers, and
//! the endpoint as logs may show it.

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
use crate::config::{ExporterConfig, TlsConfig};

/// The client both exporters send with.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where an exporter sends: a pooled client, the URL, the headers every request carries
/// and the deadline of one attempt.
pub struct Destination {
    client: HttpClient,
    uri: Uri,
    /// The URL as logs may show it: without credentials.
    shown: String,
    headers: HeaderMap,
    timeout: Duration,
}

impl Destination {
    /// A destination for exporter `name` at `url`, sending `headers` plus the configured ones.
    pub fn new(
        name: &str,
        config: &ExporterConfig,
        url: &str,
        versions: HttpVersions,
        headers: HeaderMap,
    ) -> Result<Self, BuildError> {
        let uri: Uri = url.parse().map_err(|e| BuildError::Endpoint {
            exporter: name.to_owned(),
            message: format!("{url:?} is not a valid URL: {e}"),
        })?;
        let mut all = configured_headers(name, config)?;
        all.extend(headers);
        all.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("daena-trace-agent/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Self {
            client: client(name, config, versions)?,
            shown: without_credentials(&uri),
            uri,
            headers: all,
            timeout: config.timeout,
        })
    }

    /// The URL without credentials, for messages.
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
                message: format!("request to {} failed: {}", self.shown, error_chain(&e)),
                retry_after: None,
            })
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

/// An error with its causes, e.g. `client error (Connect): tcp connect error: Connection
/// refused (os error 111)`: the outermost alone hides why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their cause; it is said once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
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
        let mut parsed_value = HeaderValue::from_str(&value)
            .map_err(|_| header_error("the value holds characters a header cannot carry"))?;
        parsed_value.set_sensitive(true);
        headers.insert(parsed_key, parsed_value);
    }
    Ok(headers)
}

/// The URL with any `user:password@` replaced, so it can be logged.
fn without_credentials(uri: &Uri) -> String {
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            uri.to_string()
                .replacen(authority.as_str(), &format!("***@{host}"), 1)
        }
        _ => uri.to_string(),
    }
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

    #[test]
    fn credentials_in_the_url_are_not_shown() {
        let uri: Uri = "https://user:s3cret@otlp.example.net/otlp/v1/traces"
            .parse()
            .expect("uri");
        assert_eq!(
            without_credentials(&uri),
            "https://***@otlp.example.net/otlp/v1/traces"
        );
        let plain: Uri = "http://tempo:4318/v1/traces".parse().expect("uri");
        assert_eq!(without_credentials(&plain), "http://tempo:4318/v1/traces");
    }
}

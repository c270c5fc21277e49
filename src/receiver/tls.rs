//! Server TLS for the receivers (`receivers.otlp.*.tls`): the handshake, done by the
//! receiver itself with `tokio-rustls` within `header_read_timeout`, with a server config
//! rebuilt whole when the certificate, key or client CA files change.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::watch::Watched;
use crate::config::{SecurityFileError, ServerTlsConfig};
use crate::log_limit::{LogLimit, REPEAT_INTERVAL};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ConnectionReason;

/// A receiver's TLS: the server config as last loaded from its files.
#[derive(Debug)]
pub struct ServerTls {
    receiver: &'static str,
    /// Whether clients must present a certificate (`client_ca_file`).
    mutual: bool,
    config: Arc<Watched<rustls::ServerConfig>>,
    /// Failed handshakes repeat per connection while their cause lasts.
    failures: LogLimit,
}

impl ServerTls {
    /// Loads the config now (an error names the file's key), and again whenever one of
    /// its files changes; `key` (e.g. `receivers.otlp.grpc.tls`) names it in logs.
    pub fn start(
        receiver: &'static str,
        key: &str,
        config: &ServerTlsConfig,
    ) -> Result<Self, SecurityFileError> {
        let files = config.files();
        let mutual = config.client_ca_file.is_some();
        let config = config.clone();
        let config = Watched::start(format!("the TLS certificate of {key}"), files, move || {
            config.load()
        })?;
        Ok(Self {
            receiver,
            mutual,
            config,
            failures: LogLimit::new(REPEAT_INTERVAL),
        })
    }

    /// Whether clients must present a certificate signed by `client_ca_file`.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// The TLS side of `tcp`, once its handshake is done with the current config; `None`
    /// (counted and logged) when the handshake fails or is not done by `deadline`.
    pub(super) async fn accept(
        &self,
        tcp: TcpStream,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.get());
        match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => Some(tls),
            // The client closed without an alert: a TCP probe or port check, or a client that
            // went away; not a TLS failure worth a warning.
            Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!(
                    receiver = self.receiver,
                    "connection closed before its TLS handshake: {error}"
                );
                None
            }
            Ok(Err(error)) => {
                metrics.closed_connection(self.receiver, ConnectionReason::TlsHandshake);
                if let Some(suppressed) = self.failures.check() {
                    tracing::warn!(
                        receiver = self.receiver,
                        suppressed,
                        "TLS handshake failed: {error}; the client must speak TLS, trust the receiver's certificate and, with client_ca_file, present a certificate signed by that CA (suppressed: failures not logged since the previous line)"
                    );
                }
                None
            }
            Err(_) => {
                metrics.closed_connection(self.receiver, ConnectionReason::HeaderReadTimeout);
                None
            }
        }
    }
}

/// An accepted connection, in plaintext or over TLS.
pub(super) enum MaybeTls {
    /// A receiver without `tls`.
    Plain(TcpStream),
    /// A receiver with `tls`, its handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// The TCP connection underneath.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

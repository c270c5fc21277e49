//! Connection limits shared by both receivers: how many connections may be open, how long
//! a connection may take to say what it wants, and how many descriptors they may use.
//!
//! A connection past `max_connections` is accepted and closed at once rather than left in
//! the kernel's backlog: the client learns immediately (its SDK retries with backoff)
//! instead of waiting for its own timeout behind a flood, the refusal is counted per
//! connection, and the backlog never holds sockets the agent cannot see.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::tls::{MaybeTls, ServerTls};
use crate::accept::ConnectionCap;
use crate::config::ReceiverEndpointConfig;
use crate::telemetry::Metrics;
use crate::telemetry::metrics::ConnectionReason;

/// The HTTP/2 connection preface, which a gRPC client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection limits of one receiver, as it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (after the open-file cap).
    pub max_connections: usize,
    /// Time for a new connection's headers or HTTP/2 preface.
    pub header_read_timeout: Duration,
    /// Time for a request's whole body (HTTP receiver).
    pub body_read_timeout: Duration,
    /// Time a connection may stay without a request in progress (HTTP receiver).
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits a receiver's config asks for.
    pub fn from_config(config: &ReceiverEndpointConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            body_read_timeout: config.body_read_timeout(),
            idle_timeout: config.idle_timeout(),
            max_concurrent_streams: u32::try_from(config.max_concurrent_streams)
                .unwrap_or(u32::MAX),
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
        }
    }
}

/// The soft open-file limit of this process (`RLIMIT_NOFILE`), read from
/// `/proc/self/limits` because the crate forbids the `unsafe` a `getrlimit` call needs;
/// `None` when unlimited or unreadable.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files            1024                 1048576              files"
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Descriptors this process has open now (0 when `/proc` cannot be read).
pub fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// The receivers' connection caps: `wanted` as configured, scaled down together (each one
/// that is on keeping at least one) when their sum would leave fewer than `reserve` descriptors
/// below `limit`.
pub fn cap_connections(wanted: &[usize], limit: Option<u64>, reserve: u64) -> Vec<usize> {
    let total: u64 = wanted.iter().map(|&w| w as u64).sum();
    let Some(budget) = limit.map(|l| l.saturating_sub(reserve)) else {
        return wanted.to_vec();
    };
    if total <= budget {
        return wanted.to_vec();
    }
    wanted
        .iter()
        // A receiver that is off (0) stays at 0.
        .map(|&w| ((w as u64 * budget / total) as usize).clamp(w.min(1), w))
        .collect()
}

/// Counts a receiver's open connections and refuses those past its limit.
pub(super) struct Gate {
    receiver: &'static str,
    cap: ConnectionCap,
    max: u32,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate letting `max_connections` connections of `receiver` in at once.
    pub(super) fn new(
        receiver: &'static str,
        max_connections: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let max = u32::try_from(max_connections).unwrap_or(u32::MAX);
        Self {
            receiver,
            cap: ConnectionCap::new(receiver, max as usize),
            max,
            metrics,
        }
    }

    /// The next connection within the limit, with the permit it holds while open; those
    /// past the limit are closed and counted.
    pub(super) async fn accept(&self, listener: &TcpListener) -> (TcpStream, OwnedSemaphorePermit) {
        self.cap
            .accept(listener, || {
                self.metrics
                    .refused_connection(self.receiver, ConnectionReason::MaxConnections);
            })
            .await
    }

    /// Waits until every connection let in has closed.
    pub(super) async fn closed(&self) {
        let _ = self.cap.permits().acquire_many(self.max).await;
    }

    /// The accepted connections as a stream for tonic, each closed if its opening (the
    /// HTTP/2 preface, or an HTTP/1 request's head) does not arrive within `opening_timeout`
    /// of its accept. With `tls`, each connection's handshake must also be done within
    /// that time; handshakes run side by side, so a slow one holds no other back.
    pub(super) fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        opening_timeout: Duration,
        tls: Option<Arc<ServerTls>>,
    ) -> impl Stream<Item = io::Result<Tracked>> {
        let handshakes = FuturesUnordered::new();
        let state = (self, listener, handshakes);
        futures_util::stream::unfold(state, move |(gate, listener, mut handshakes)| {
            let tls = tls.clone();
            async move {
                loop {
                    tokio::select! {
                        (tcp, permit) = gate.accept(&listener) => {
                            let deadline = Instant::now() + opening_timeout;
                            let Some(tls) = &tls else {
                                let tracked = gate.track(MaybeTls::Plain(tcp), permit, deadline);
                                return Some((Ok(tracked), (gate, listener, handshakes)));
                            };
                            let (tls, metrics) = (Arc::clone(tls), Arc::clone(&gate.metrics));
                            handshakes.push(async move {
                                let tls = tls.accept(tcp, deadline, &metrics).await?;
                                Some((MaybeTls::Tls(Box::new(tls)), permit, deadline))
                            });
                        }
                        Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                            if let Some((io, permit, deadline)) = done {
                                let tracked = gate.track(io, permit, deadline);
                                return Some((Ok(tracked), (gate, listener, handshakes)));
                            }
                        }
                    }
                }
            }
        })
    }

    /// A connection let in, its opening due by `deadline`.
    fn track(&self, io: MaybeTls, permit: OwnedSemaphorePermit, deadline: Instant) -> Tracked {
        Tracked {
            io,
            _permit: permit,
            opening: Some((Box::pin(tokio::time::sleep_until(deadline)), Opening::START)),
            receiver: self.receiver,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// An accepted gRPC connection: holds its place under `max_connections` until dropped, and
/// fails its reads once its opening is overdue, which the server does not time out by
/// itself: hyper's HTTP/2 server has no preface timeout, and tonic sets no timer for
/// HTTP/1 (spoken on this port only to answer `curl`, one request per connection).
pub(super) struct Tracked {
    io: MaybeTls,
    _permit: OwnedSemaphorePermit,
    /// Until the opening has arrived: its deadline and how much of it has.
    opening: Option<(Pin<Box<Sleep>>, Opening)>,
    receiver: &'static str,
    metrics: Arc<Metrics>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some((deadline, opening)) = &mut this.opening {
            *opening = opening.read(&buf.filled()[before..]);
            if *opening == Opening::Complete {
                this.opening = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                this.opening = None;
                this.metrics
                    .closed_connection(this.receiver, ConnectionReason::HeaderReadTimeout);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "neither the HTTP/2 connection preface nor an HTTP/1 request's headers arrived within header_read_timeout",
                )));
            }
        }
        polled
    }
}

/// How much of a new connection's opening has arrived: the HTTP/2 preface, or, from the
/// first byte that leaves it, the head of an HTTP/1 request (its request line and header
/// lines, up to the empty line that ends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// This many bytes of the HTTP/2 preface.
    Preface(usize),
    /// Part of an HTTP/1 request's head.
    Http1Head {
        /// Whether a byte other than a line end has arrived (empty lines before the
        /// request line do not end the head).
        content: bool,
        /// Whether the current line is empty so far.
        blank_line: bool,
    },
    /// All of it.
    Complete,
}

impl Opening {
    /// Nothing has arrived.
    const START: Self = Self::Preface(0);

    /// An HTTP/1 head of which nothing has arrived.
    const HTTP1_START: Self = Self::Http1Head {
        content: false,
        blank_line: true,
    };

    /// The opening once `bytes` have arrived after what has.
    fn read(self, bytes: &[u8]) -> Self {
        bytes.iter().fold(self, |opening, &byte| opening.next(byte))
    }

    fn next(self, byte: u8) -> Self {
        match self {
            Self::Preface(matched) if H2_PREFACE[matched] == byte => {
                if matched + 1 == H2_PREFACE.len() {
                    Self::Complete
                } else {
                    Self::Preface(matched + 1)
                }
            }
            // Not HTTP/2: the bytes so far began an HTTP/1 request.
            Self::Preface(matched) => Self::HTTP1_START.read(&H2_PREFACE[..matched]).next(byte),
            // hyper accepts lines ended by a bare `\n` as well as by `\r\n`.
            Self::Http1Head {
                content,
                blank_line,
            } => match byte {
                b'\n' if content && blank_line => Self::Complete,
                b'\n' => Self::Http1Head {
                    content,
                    blank_line: true,
                },
                b'\r' => self,
                _ => Self::Http1Head {
                    content: true,
                    blank_line: false,
                },
            },
            Self::Complete => Self::Complete,
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Tracked {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.tcp().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_the_reserve_free_and_keep_the_ratio() {
        assert_eq!(cap_connections(&[512, 512], None, 64), vec![512, 512]);
        assert_eq!(
            cap_connections(&[512, 512], Some(1 << 20), 64),
            vec![512, 512]
        );
        // 1,024 descriptors, 100 kept: 924 shared in the configured ratio.
        assert_eq!(
            cap_connections(&[512, 512], Some(1024), 100),
            vec![462, 462]
        );
        assert_eq!(cap_connections(&[300, 100], Some(300), 100), vec![150, 50]);
        // Nothing left: one each, so that the receivers still serve someone.
        assert_eq!(cap_connections(&[512, 512], Some(64), 100), vec![1, 1]);
        assert_eq!(cap_connections(&[0, 512], Some(200), 100), vec![0, 100]);
    }

    #[test]
    fn an_opening_is_complete_with_the_http2_preface_or_an_http1_head() {
        let complete = |bytes: &[u8]| Opening::START.read(bytes) == Opening::Complete;
        assert!(complete(H2_PREFACE));
        assert!(!complete(&H2_PREFACE[..23]));
        assert!(complete(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n"));
        assert!(complete(b"GET / HTTP/1.1\nHost: agent\n\n"));
        // POST shares its first byte with the preface.
        assert!(complete(
            b"POST /v1/traces HTTP/1.1\r\nContent-Length: 9\r\n\r\n"
        ));
        assert!(!complete(b"GET / HTTP/1.1\r\nHost: agent\r\n"));
        assert!(!complete(b"POST /v1/traces HTTP/1.1\r\nContent-Ty"));
        // Empty lines before a request line do not end its head.
        assert!(!complete(b"\r\n\r\n\r\n"));
        // Arriving in pieces changes nothing.
        let pieces = [&b"G"[..], b"ET / HTTP/1.1\r", b"\n", b"\r", b"\n"];
        let opening = pieces
            .iter()
            .fold(Opening::START, |opening, piece| opening.read(piece));
        assert_eq!(opening, Opening::Complete);
    }

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let limit = open_file_limit().expect("a limit on Linux");
        assert!(limit >= open_files(), "{limit}");
    }
}

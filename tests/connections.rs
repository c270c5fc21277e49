//! Hostile connections stay bounded: slowloris headers and half-sent bodies are closed
//! after their timeouts, a flood past `max_connections` is refused, HTTP/2 advertises its
//! stream limit, and a low open-file limit leaves room for exports and `/metrics`. Every
//! refusal is counted; a well-behaved client is served throughout.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An agent forwarding to `sink`, each receiver given the extra settings (`, key: value`).
fn yaml(sink: &Sink, grpc: &str, http: &str) -> String {
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0{grpc} }}\n    http: {{ endpoint: 127.0.0.1:0{http} }}\ntelemetry: {{ endpoint: 127.0.0.1:0 }}\nbatch: {{ timeout: 50ms }}\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://{}\n",
        sink.addr
    )
}

fn series(metric: &str, receiver: &str, reason: &str) -> String {
    format!("daena_agent_{metric}_total{{receiver=\"{receiver}\",reason=\"{reason}\"}}")
}

/// `n` connections to `addr`, each having sent `prefix`.
async fn open(addr: SocketAddr, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        if !prefix.is_empty() {
            stream.write_all(prefix).await.expect("write");
        }
        streams.push(stream);
    }
    streams
}

/// Reads until the agent closes the connection, for at most `limit`; returns what it sent,
/// or `None` if the connection was still open at `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

/// An OTLP/HTTP request with a whole protobuf body, as raw HTTP/1.1 bytes.
fn raw_request(request: &daena_trace_agent::otlp::ExportTraceServiceRequest) -> Vec<u8> {
    let body = request.encode_to_vec();
    let mut bytes = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: agent\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Sends one request on a new connection (asking the agent to close it after answering)
/// and returns the status line, or `None` if the connection was closed without an answer.
async fn raw_post(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut request = raw_request(&council_request(1, 7));
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    request.splice(head_end..head_end, *b"\r\nConnection: close");
    stream.write_all(&request).await.ok()?;
    let answer = read_until_closed(&mut stream, WAIT).await?;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_header_read_timeout_while_clients_are_served() {
    let sink = Sink::grpc().await;
    let timeout = ", header_read_timeout: 500ms";
    let agent = TestAgent::start(&yaml(&sink, timeout, timeout)).await;
    let started = Instant::now();
    let mut stalled = open(
        agent.http.expect("http"),
        50,
        b"POST /v1/traces HTTP/1.1\r\nHost: agent\r\nContent-Ty",
    )
    .await;
    stalled.extend(open(agent.grpc.expect("grpc"), 20, b"PRI * HTTP/2.0\r\n").await);
    // Clients that send what they owe are served while the stalled ones wait.
    assert_eq!(post_protobuf(&agent, &council_request(2, 1)).await.0, 200);
    grpc_export(agent.grpc_url(), council_request(2, 2), false)
        .await
        .expect("gRPC client served during the slowloris");
    for stream in &mut stalled {
        assert!(
            read_until_closed(stream, WAIT).await.is_some(),
            "a stalled connection was left open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "closed before header_read_timeout: {:?}",
        started.elapsed()
    );
    for (receiver, n) in [("http", 50), ("grpc", 20)] {
        let closed = series("connections_closed", receiver, "header_read_timeout");
        assert_eq!(agent.wait_for_counter(&closed, n).await, n, "{closed}");
    }
    assert_eq!(sink.wait_for_spans(4).await.len(), 4);
    agent.stop().await;
}

#[tokio::test]
async fn half_sent_bodies_are_answered_408_after_body_read_timeout() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&yaml(&sink, "", ", body_read_timeout: 500ms")).await;
    let addr = agent.http.expect("http");
    let started = Instant::now();

    // Content-Length larger than what is sent.
    let mut short = open(
        addr,
        1,
        b"POST /v1/traces HTTP/1.1\r\nHost: agent\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await
    .remove(0);
    let answer = read_until_closed(&mut short, WAIT)
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );

    // Chunked at one byte per 100 ms: each byte arrives in time, the body never does.
    let chunked = open(
        addr,
        1,
        b"POST /v1/traces HTTP/1.1\r\nHost: agent\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .remove(0);
    let (mut reader, mut writer) = chunked.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if writer.write_all(b"1\r\nx\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(WAIT, async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer in time");
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    assert_eq!(
        agent
            .counter(
                "daena_agent_requests_refused_total{protocol=\"http\",reason=\"body_read_timeout\"}"
            )
            .await,
        2
    );
    // Still serving.
    assert_eq!(post_protobuf(&agent, &council_request(1, 1)).await.0, 200);
    agent.stop().await;
}

#[tokio::test]
async fn a_flood_past_max_connections_is_refused_and_counted_and_clients_are_served_after() {
    let sink = Sink::grpc().await;
    let limits = ", max_connections: 20, header_read_timeout: 30s";
    let agent = TestAgent::start(&yaml(&sink, limits, limits)).await;
    let http = agent.http.expect("http");
    let grpc = agent.grpc.expect("grpc");

    let mut flood = open(http, 30, b"").await;
    flood.extend(open(grpc, 30, b"").await);
    for receiver in ["http", "grpc"] {
        let refused = series("connections_refused", receiver, "max_connections");
        assert_eq!(agent.wait_for_counter(&refused, 10).await, 10, "{refused}");
    }
    // While the flood holds every place, a new connection is closed unanswered.
    assert_eq!(raw_post(http).await, None);
    let status = grpc_export(agent.grpc_url(), council_request(1, 1), false)
        .await
        .expect_err("no place for the gRPC client");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    drop(flood);
    // Once the flood's connections close, clients are served again (bounded retries:
    // the agent notices each close when it reads the end of the stream).
    let started = Instant::now();
    let mut status_line = None;
    while started.elapsed() < WAIT && status_line.is_none() {
        status_line = raw_post(http).await;
        if status_line.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(status_line.as_deref(), Some("HTTP/1.1 200 OK"));
    let mut answer = Err(tonic::Status::unknown("not tried"));
    for seed in 2..50 {
        answer = grpc_export(agent.grpc_url(), council_request(1, seed), false).await;
        if answer.is_ok() || started.elapsed() > WAIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer.expect("gRPC client served once the flood closed");
    agent.stop().await;
}

#[tokio::test]
async fn an_idle_http_connection_is_closed_after_idle_timeout() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&yaml(
        &sink,
        "",
        ", header_read_timeout: 5s, idle_timeout: 300ms",
    ))
    .await;
    let mut stream = open(
        agent.http.expect("http"),
        1,
        &raw_request(&council_request(1, 1)),
    )
    .await
    .remove(0);
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(read_until_closed(&mut stream, WAIT).await.is_some());
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "{:?}",
        answered.elapsed()
    );
    let idle = series("connections_closed", "http", "idle_timeout");
    assert_eq!(
        agent.wait_for_counter(&idle, 1).await,
        1,
        "{}",
        agent.metrics().await
    );
    agent.stop().await;
}

/// The `SETTINGS_MAX_CONCURRENT_STREAMS` an HTTP/2 server at `addr` advertises, read by an
/// h2 client after one request (the settings have been exchanged once it is answered).
async fn advertised_streams(addr: SocketAddr) -> usize {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut client, mut connection) = tokio::time::timeout(WAIT, h2::client::handshake(tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/not.a.Service/Method"))
        .header("content-type", "application/grpc")
        .body(())
        .expect("request");
    let (response, _) = client.send_request(request, true).expect("send");
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            answer = response => { answer.expect("answered"); }
            result = &mut connection => panic!("connection ended first: {result:?}"),
        }
    })
    .await
    .expect("answer in time");
    connection.max_concurrent_send_streams()
}

#[tokio::test]
async fn both_receivers_advertise_max_concurrent_streams() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&yaml(
        &sink,
        ", max_concurrent_streams: 7",
        ", max_concurrent_streams: 9",
    ))
    .await;
    assert_eq!(advertised_streams(agent.grpc.expect("grpc")).await, 7);
    assert_eq!(advertised_streams(agent.http.expect("http")).await, 9);
    agent.stop().await;
}

#[tokio::test]
async fn under_a_low_open_file_limit_a_flood_leaves_room_for_exports_and_metrics() {
    let sink = Sink::grpc().await;
    // Default limits (512 connections each) under 128 descriptors: the agent caps them.
    let agent = AgentProcess::with_config_and_file_limit(&yaml(&sink, "", ""), "info", 128);
    assert!(
        agent
            .logs()
            .contains("Connections capped below the open-file limit"),
        "{}",
        agent.logs()
    );
    let http = agent.addr("OTLP/HTTP");
    let _flood = open(http, 300, b"").await;

    let mut accepted = 0u64;
    // Seeds from 1: a trace id of zeros would be refused as invalid.
    for seed in 1..=20u8 {
        if grpc_export(
            format!("http://{}", agent.addr("OTLP/gRPC")),
            council_request(10, seed),
            false,
        )
        .await
        .is_ok()
        {
            accepted += 10;
        }
    }
    assert_eq!(
        accepted, 200,
        "the gRPC client was refused under the HTTP flood"
    );
    let exported = "daena_agent_spans_exported_total{exporter=\"tempo\"}";
    let started = Instant::now();
    let mut delivered = 0;
    while delivered < accepted && started.elapsed() < WAIT {
        delivered = agent.counter(exported).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered, accepted, "logs:\n{}", agent.logs());
    assert_eq!(
        sink.wait_for_spans(accepted as usize).await.len() as u64,
        accepted
    );
    // /metrics answers under the flood: the telemetry endpoint kept its descriptors.
    let refused = series("connections_refused", "http", "max_connections");
    let refused_count = agent.counter(&refused).await;
    assert!(refused_count > 0, "the flood was not refused");
    let logs = agent.logs();
    assert!(!logs.contains("cannot accept"), "{logs}");
    println!(
        "open-file limit 128: {refused_count} flood connections refused, {accepted} spans accepted, {delivered} exported"
    );
}

#[tokio::test]
async fn on_the_grpc_port_an_http1_head_that_stalls_is_closed_and_a_whole_one_answered_once() {
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&yaml(&sink, ", header_read_timeout: 500ms", "")).await;
    let grpc = agent.grpc.expect("grpc");
    let started = Instant::now();
    let mut stalled = open(grpc, 5, b"GET / HTTP/1.1\r\nHost: agent\r\nUser-Ag").await;
    // A whole head is answered, and its keep-alive connection closed after the one answer.
    let mut whole = open(grpc, 1, b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .remove(0);
    let answer = read_until_closed(&mut whole, WAIT)
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("OTLP/gRPC receiver"), "{text}");
    for stream in &mut stalled {
        assert!(
            read_until_closed(stream, WAIT).await.is_some(),
            "a stalled HTTP/1 connection was left open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "closed before header_read_timeout: {:?}",
        started.elapsed()
    );
    let closed = series("connections_closed", "grpc", "header_read_timeout");
    assert_eq!(agent.wait_for_counter(&closed, 5).await, 5, "{closed}");
    grpc_export(agent.grpc_url(), council_request(1, 1), false)
        .await
        .expect("gRPC served beside them");
    assert_eq!(sink.wait_for_spans(1).await.len(), 1);
    agent.stop().await;
}

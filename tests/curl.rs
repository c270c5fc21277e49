//! The check the Daena tracing guide gives, `curl $OTEL_EXPORTER_OTLP_ENDPOINT`: both
//! receiver ports answer a plain HTTP/1.1 `GET /` with one line saying the agent is there
//! (asked by hyper's client, and by the real `curl` when the machine has it), other paths
//! keep their clear 404, and gRPC and OTLP/HTTP clients are served as before.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn http_line() -> String {
    format!(
        "daena-trace-agent {VERSION}: OTLP/HTTP receiver; send traces with POST /v1/traces (protobuf or JSON)\n"
    )
}

fn grpc_line() -> String {
    format!(
        "daena-trace-agent {VERSION}: OTLP/gRPC receiver; send traces to opentelemetry.proto.collector.trace.v1.TraceService/Export\n"
    )
}

async fn agent_and_sink() -> (TestAgent, Sink) {
    let sink = Sink::grpc().await;
    let exporter = format!(
        "  tempo: {{ protocol: grpc, endpoint: \"http://{}\" }}",
        sink.addr
    );
    (TestAgent::start(&agent_yaml(&exporter, "")).await, sink)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, String) {
    let (status, headers, body) =
        http_request("GET", &format!("http://{addr}{path}"), &[], Vec::new()).await;
    (
        status,
        headers,
        String::from_utf8(body).expect("a text answer"),
    )
}

#[tokio::test]
async fn get_slash_on_both_ports_says_which_agent_answers_and_how_to_send() {
    let (agent, sink) = agent_and_sink().await;
    let (http, grpc) = (agent.http.expect("http"), agent.grpc.expect("grpc"));

    let (status, headers, body) = get(http, "/").await;
    assert_eq!((status, body), (200, http_line()));
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

    let (status, headers, body) = get(grpc, "/").await;
    assert_eq!((status, body), (200, grpc_line()));
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        headers["connection"], "close",
        "HTTP/1 on the gRPC port is one answer"
    );

    // Other paths keep their clear 404s.
    let (status, _, body) = get(http, "/v1/trace").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("/v1/trace is not served here; send traces with POST /v1/traces"),
        "{body}"
    );
    let (status, _, body) = get(grpc, "/v1/traces").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("this port takes OTLP/gRPC over HTTP/2"),
        "{body}"
    );
    // An OTLP/HTTP exporter pointed at the gRPC port is told where to go, and nothing is taken.
    let (status, _, body) = http_request(
        "POST",
        &format!("http://{grpc}/v1/traces"),
        &[("content-type", "application/x-protobuf")],
        prost::Message::encode_to_vec(&council_request(1, 9)),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        body_text(&body).contains("OTLP/HTTP receiver"),
        "{}",
        body_text(&body)
    );
    let (status, _, body) = http_request("POST", &format!("http://{http}/"), &[], Vec::new()).await;
    assert_eq!(status, 405);
    assert!(body_text(&body).contains("send traces with POST /v1/traces"));

    // The clients the ports are for are served as before.
    assert_eq!(post_protobuf(&agent, &council_request(2, 1)).await.0, 200);
    grpc_export(agent.grpc_url(), council_request(3, 2), false)
        .await
        .expect("gRPC export on the port that also answered HTTP/1");
    assert_eq!(sink.wait_for_spans(5).await.len(), 5);
    assert_eq!(
        agent
            .counter("daena_agent_spans_received_total{protocol=\"grpc\"}")
            .await,
        3,
        "the HTTP/1 POST to the gRPC port was not taken"
    );
    agent.stop().await;
}

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Runs the real `curl` with `options` against `url` (bounded); `None` when the machine has
/// no curl.
async fn curl(options: &'static [&'static str], url: String) -> Option<(bool, String, String)> {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(options)
            .arg(&url)
            .output()
    })
    .await
    .expect("curl task");
    match output {
        Ok(output) => Some((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot run curl: {e}"),
    }
}

#[tokio::test]
async fn the_real_curl_prints_the_line_on_both_ports() {
    let (agent, _sink) = agent_and_sink().await;
    let (http, grpc) = (agent.http.expect("http"), agent.grpc.expect("grpc"));
    // As the guide runs it (HTTP/1.1), and over HTTP/2 as a gRPC client's connection would be.
    for (options, addr, line) in [
        (&[][..], http, http_line()),
        (&[][..], grpc, grpc_line()),
        (&["--http2-prior-knowledge"][..], grpc, grpc_line()),
    ] {
        let Some((success, stdout, stderr)) = curl(options, format!("http://{addr}")).await else {
            println!("no curl on this machine: only hyper's client asked");
            break;
        };
        assert!(success, "curl {options:?} failed against {addr}: {stderr}");
        assert_eq!(
            stdout, line,
            "curl {options:?}'s output against {addr}; stderr: {stderr}"
        );
    }
    // The gRPC port still serves gRPC once curl's HTTP/1 connection is gone.
    tokio::time::timeout(
        Duration::from_secs(15),
        grpc_export(agent.grpc_url(), council_request(1, 3), false),
    )
    .await
    .expect("in time")
    .expect("served");
    agent.stop().await;
}

//! Secrets never leave except in the requests they are for: the binary at
//! `--log-level trace`, exporting over HTTPS, HTTP/protobuf and gRPC to live and dead
//! backends, and `check` on the same config, print none of them, while the backends
//! still receive the credentials.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

/// An exporter header value, given through `${SECRET_HEADER}`.
const HEADER_FROM_ENV: &str = "env-hdr-s3cr3t-9f1c";
/// An exporter header value written in the file, under a name that marks it a credential.
const HEADER_LITERAL: &str = "lit-hdr-s3cr3t-77aa";
/// An `auth.basic` password.
const BASIC_PASSWORD: &str = "basic-s3cr3t-4b2e";
/// The password in the URLs' `user:password@`.
const URL_PASSWORD: &str = "hunter2-url";
/// The value of a secret query parameter.
const QUERY_SECRET: &str = "qry-s3cr3t-c0de";

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Every text that must not be printed: the secrets and the headers built from them.
fn forbidden() -> Vec<String> {
    let mut texts: Vec<String> = [
        HEADER_FROM_ENV,
        HEADER_LITERAL,
        BASIC_PASSWORD,
        URL_PASSWORD,
        QUERY_SECRET,
    ]
    .map(str::to_owned)
    .to_vec();
    for (user, password) in [
        ("grafana", URL_PASSWORD),
        ("dead", URL_PASSWORD),
        ("inst", BASIC_PASSWORD),
    ] {
        let header = basic(user, password);
        texts.push(header.trim_start_matches("Basic ").to_owned());
    }
    texts
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in forbidden() {
        assert!(!text.contains(&secret), "{what} shows {secret:?}:\n{text}");
    }
}

/// A closed loopback port: bound, read, and released.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Four exporters with secrets in every place they can be written: a live HTTPS one
/// (URL credentials, secret query), a live gRPC one (`${VAR}` and literal headers,
/// `auth.basic`), and a dead gRPC and a dead HTTP one that keep failing and retrying.
fn exporters(https: u16, grpc: u16, dead: u16, ca_file: &str) -> String {
    let retry = "retry: { initial_interval: 50ms, max_interval: 100ms }";
    format!(
        "  https-live:
    protocol: http/protobuf
    endpoint: \"https://grafana:{URL_PASSWORD}@localhost:{https}?api_key={QUERY_SECRET}&tenant=t1\"
    tls: {{ ca_file: {ca_file} }}
  grpc-live:
    protocol: grpc
    endpoint: http://127.0.0.1:{grpc}
    headers: {{ x-api-key: \"${{SECRET_HEADER}}\", x-literal-token: {HEADER_LITERAL} }}
    auth: {{ basic: {{ username: inst, password: \"{BASIC_PASSWORD}\" }} }}
  grpc-dead:
    protocol: grpc
    endpoint: \"http://dead:{URL_PASSWORD}@127.0.0.1:{dead}\"
    headers: {{ x-api-key: \"${{SECRET_HEADER}}\" }}
    {retry}
  http-dead:
    protocol: http/protobuf
    endpoint: \"http://127.0.0.1:{dead}/v1/traces?token={QUERY_SECRET}\"
    auth: {{ basic: {{ username: inst, password: \"{BASIC_PASSWORD}\" }} }}
    {retry}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_logged_at_trace_or_shown_by_check_and_the_backends_still_get_them() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert_pem = certified.cert.pem();
    let https_sink = Sink::tls(&cert_pem, &certified.signing_key.serialize_pem()).await;
    let grpc_sink = Sink::grpc().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert_pem).expect("write CA");
    let dead = dead_port();
    let yaml = agent_yaml(
        &exporters(
            https_sink.addr.port(),
            grpc_sink.addr.port(),
            dead,
            ca_file.to_str().expect("path"),
        ),
        "shutdown_timeout: 1s\n",
    );
    let env = [("SECRET_HEADER", HEADER_FROM_ENV)];

    // `check` on the same config: valid, every secret masked.
    let path = write_config(dir.path(), &yaml);
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_no_secret("check", &format!("{stdout}{stderr}"));
    for shown in [
        "https://grafana:***@localhost",
        "api_key=***&tenant=t1",
        "http://dead:***@127.0.0.1",
        "token=***",
        "x-api-key: \"***\"",
        "password: \"***\"",
    ] {
        assert!(
            stdout.contains(shown),
            "check does not show {shown:?}:\n{stdout}"
        );
    }

    let mut agent = AgentProcess::with_config(&yaml, "trace", &env);
    let url = format!("http://{}", agent.addr("OTLP/gRPC"));
    grpc_export(url, council_request(5, 1), false)
        .await
        .expect("accepted");
    let https_received = https_sink.wait_for_requests(1).await;
    let grpc_received = grpc_sink.wait_for_requests(1).await;
    // The dead exporters fail, and retry, at least twice each before the agent stops.
    let started = Instant::now();
    let dead_address = format!("connect to 127.0.0.1:{dead}");
    while agent.logs().matches(&dead_address).count() < 4 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = tokio::task::block_in_place(|| agent.terminate());
    let logs = agent.logs();
    assert_eq!(code, 0, "{logs}");
    assert!(
        logs.matches(&dead_address).count() >= 4,
        "the dead exporters' failures are logged:\n{logs}"
    );
    assert!(
        logs.contains("TRACE"),
        "trace lines are printed, so the test sees the clients' own logs"
    );
    assert_no_secret("the logs", &logs);
    assert_no_secret("stdout", &agent.output());

    // The masking took nothing from the requests.
    let header = |received: &[Received], name: &str| {
        received[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header(&https_received, "authorization"),
        Some(basic("grafana", URL_PASSWORD)),
        "URL credentials are sent as Basic auth"
    );
    assert_eq!(
        header(&grpc_received, "authorization"),
        Some(basic("inst", BASIC_PASSWORD))
    );
    assert_eq!(
        header(&grpc_received, "x-api-key").as_deref(),
        Some(HEADER_FROM_ENV)
    );
    assert_eq!(
        header(&grpc_received, "x-literal-token").as_deref(),
        Some(HEADER_LITERAL)
    );
}

#[test]
fn a_yaml_error_on_a_secrets_line_names_the_line_and_key_but_not_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "exporters:\n  tempo:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    auth:\n      basic: {{ username: inst, passwrd: \"{BASIC_PASSWORD}\" }}\n"
    );
    let path = write_config(dir.path(), &yaml);
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_no_secret("the error", &format!("{stdout}{stderr}"));
    assert!(
        stderr.contains("agent.yaml:6:32: exporters.tempo.auth.basic.passwrd: unknown field"),
        "{stderr}"
    );
    assert!(
        stderr.contains("basic: { username: ***, passwrd: *** }"),
        "{stderr}"
    );
}

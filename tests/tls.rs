//! Exporting over TLS: a private CA from `tls.ca_file`, the system roots by default, and
//! `insecure_skip_verify` for test backends.

mod common;

use common::*;

fn exporter(protocol: &str, backend: &TlsBackend, tls: &str) -> String {
    format!(
        "  secure:\n    protocol: {protocol}\n    endpoint: https://localhost:{}\n    tls: {tls}\n    retry: {{ initial_interval: 100ms, max_interval: 200ms }}\n",
        backend.sink.addr.port()
    )
}

#[tokio::test]
async fn grpc_over_tls_with_a_private_ca() {
    let backend = tls_backend().await;
    let tls = format!("{{ ca_file: {} }}", backend.ca_file.path().display());
    let agent = TestAgent::start(&agent_yaml(&exporter("grpc", &backend, &tls), "")).await;
    grpc_export(agent.grpc_url(), council_request(3, 1), false)
        .await
        .expect("accepted");
    assert_eq!(backend.sink.wait_for_spans(3).await.len(), 3);
    agent.stop().await;
}

#[tokio::test]
async fn http_over_tls_with_a_private_ca() {
    let backend = tls_backend().await;
    let tls = format!("{{ ca_file: {} }}", backend.ca_file.path().display());
    let agent = TestAgent::start(&agent_yaml(&exporter("http/protobuf", &backend, &tls), "")).await;
    assert_eq!(post_protobuf(&agent, &council_request(4, 2)).await.0, 200);
    assert_eq!(backend.sink.wait_for_spans(4).await.len(), 4);
    agent.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_verification_is_skipped() {
    let backend = tls_backend().await;
    // The system roots do not know our self-signed certificate: every attempt fails.
    let agent = TestAgent::start(&agent_yaml(
        &exporter("http/protobuf", &backend, "{}"),
        "shutdown_timeout: 1s\n",
    ))
    .await;
    assert_eq!(post_protobuf(&agent, &council_request(2, 3)).await.0, 200);
    let retried = "daena_agent_export_failures_total{exporter=\"secure\",kind=\"retried\"}";
    assert!(
        agent.wait_for_counter(retried, 2).await >= 2,
        "TLS failures are retried and counted"
    );
    assert!(
        backend.sink.received().is_empty(),
        "nothing crosses an unverified connection"
    );
    let report = agent.stop().await;
    assert_eq!(
        report.abandoned_spans, 2,
        "the undeliverable spans are reported at shutdown"
    );

    let agent = TestAgent::start(&agent_yaml(
        &exporter("grpc", &backend, "{ insecure_skip_verify: true }"),
        "",
    ))
    .await;
    grpc_export(agent.grpc_url(), council_request(2, 4), false)
        .await
        .expect("accepted");
    assert_eq!(backend.sink.wait_for_spans(2).await.len(), 2);
    agent.stop().await;
}

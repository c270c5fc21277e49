//! Everything under deploy/ is checked with the tools its users have: hadolint for the
//! Dockerfile, the Kubernetes schemas (offline) for the manifests, docker-compose for the
//! compose file, `daena-trace-agent check` for every agent config they carry, and a YAML
//! parser for the configs of Tempo, Prometheus and Grafana. The validators come from the
//! virtualenvs the README's test command creates.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use daena_trace_agent::otlp::{Event, KeyValue, Resource, Span, Value};

/// How long one validator may take.
const DEADLINE: Duration = Duration::from_secs(120);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A validator from the `.venv-deploy` or `.venv-compose` virtualenv.
fn tool(venv: &str, name: &str) -> Command {
    let python = venv_python(venv);
    let mut command = Command::new(python.with_file_name(name));
    command.current_dir(repo("."));
    command
}

async fn assert_passes(command: Command) {
    let shown = format!("{command:?}");
    let (status, output) = run_bounded(command, DEADLINE).await;
    assert!(status.success(), "{shown} failed:\n{output}");
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `daena-trace-agent check` on `config`, with placeholder credentials for the
/// `${VAR}` references the manifests fill from secrets.
fn check_agent_config(name: &str, config: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, config).expect("write");
    let env = [
        (
            "GRAFANA_CLOUD_OTLP_ENDPOINT",
            "https://otlp-gateway.example.net/otlp",
        ),
        ("GRAFANA_CLOUD_INSTANCE_ID", "123456"),
        ("GRAFANA_CLOUD_API_TOKEN", "glc_placeholder"),
    ];
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &env);
    assert_eq!(code, 0, "{name} does not pass check:\n{stdout}{stderr}");
    assert!(
        !stdout.contains("glc_placeholder"),
        "{name}: check shows a secret"
    );
}

#[tokio::test]
async fn the_dockerfile_passes_hadolint_and_builds_what_the_readme_builds() {
    let mut hadolint = tool(".venv-deploy", "hadolint");
    hadolint.arg("deploy/Dockerfile");
    assert_passes(hadolint).await;

    let dockerfile = std::fs::read_to_string(repo("deploy/Dockerfile")).expect("Dockerfile");
    let readme = std::fs::read_to_string(repo("README.md")).expect("README");
    let build = "cargo build --release --locked";
    assert!(
        dockerfile.contains(&format!("RUN {build}\n")),
        "the build stage runs `{build}`"
    );
    assert!(readme.contains(build), "the README documents `{build}`");
    // The build context holds everything the manifest names: cargo refuses to build a
    // package whose declared bench or test files are missing.
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("Cargo.toml");
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src".to_owned(),
    ];
    let mut section = "";
    for line in manifest.lines() {
        if line.starts_with('[') {
            section = line;
        } else if let Some(name) = line.strip_prefix("name = ")
            && section == "[[bench]]"
        {
            needed.push(format!("benches/{}.rs", name.trim_matches('"')));
        }
    }
    for path in needed {
        assert!(
            copied
                .iter()
                .any(|c| path == *c || path.starts_with(&format!("{c}/"))),
            "deploy/Dockerfile does not copy {path} (copies {copied:?})"
        );
    }
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"healthcheck\""));
    assert!(dockerfile.contains("USER 65532"), "runs as a non-root user");
    check_agent_config(
        "deploy/docker/agent.yaml",
        &std::fs::read_to_string(repo("deploy/docker/agent.yaml")).expect("config"),
    );
}

#[tokio::test]
async fn the_kubernetes_manifests_match_the_schemas_and_carry_valid_agent_configs() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 5, "{manifests:?}");
    let mut validate = tool(".venv-deploy", "kubernetes-validate");
    validate.args(["--strict", "--quiet"]).args(&manifests);
    assert_passes(validate).await;

    let configmap = yaml(&repo("deploy/kubernetes/configmap.yaml"));
    let configs = configmap["data"].as_object().expect("data");
    assert!(configs.contains_key("agent.yaml") && configs.contains_key("agent-persistent.yaml"));
    for (name, config) in configs {
        check_agent_config(name, config.as_str().expect("text"));
    }
    // Each workload mounts a config the ConfigMap has, and limits the agent's memory
    // above the hard limit of the configs (320MiB), so the agent refuses before it is killed.
    for workload in [
        "sidecar-classic.yaml",
        "sidecar-native.yaml",
        "statefulset-persistent.yaml",
    ] {
        let text = std::fs::read_to_string(repo(&format!("deploy/kubernetes/{workload}")))
            .expect("manifest");
        let config = text
            .split("/etc/daena-trace-agent/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a --config argument");
        assert!(configs.contains_key(config), "{workload} runs {config}");
        assert!(text.contains("limits: { memory: 384Mi }"), "{workload}");
        assert!(
            text.contains("readOnlyRootFilesystem: true") && text.contains("runAsNonRoot: true")
        );
        for variable in [
            "K8S_POD_NAME",
            "K8S_NAMESPACE_NAME",
            "K8S_NODE_NAME",
            "K8S_POD_UID",
        ] {
            assert!(
                text.contains(variable),
                "{workload} sets {variable} from the downward API"
            );
        }
    }
    let native =
        std::fs::read_to_string(repo("deploy/kubernetes/sidecar-native.yaml")).expect("manifest");
    assert!(native.contains("initContainers") && native.contains("restartPolicy: Always"));
}

#[tokio::test]
async fn the_compose_demo_is_valid_and_every_config_it_mounts_parses() {
    let mut config = tool(".venv-compose", "docker-compose");
    config.args(["-f", "deploy/docker-compose.yaml", "config", "-q"]);
    assert_passes(config).await;

    let compose = yaml(&repo("deploy/docker-compose.yaml"));
    let services = compose["services"].as_object().expect("services");
    for service in [
        "daena-demo",
        "agent",
        "jaeger",
        "tempo",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(service), "{service}");
    }
    let agent_env = &services["agent"]["environment"]["AGENT_LISTEN_HOST"];
    assert_eq!(
        agent_env, "0.0.0.0",
        "a separate container listens on all interfaces"
    );
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .next()
                .expect("source");
            let path = repo("deploy").join(source);
            assert!(path.exists(), "{name} mounts {source}, which is missing");
            if path.extension().is_some_and(|e| e == "yaml") {
                yaml(&path);
            }
        }
    }
    check_agent_config(
        "deploy/compose/agent.yaml",
        &std::fs::read_to_string(repo("deploy/compose/agent.yaml")).expect("config"),
    );
    for provisioning in ["datasources/datasources.yaml", "dashboards/dashboards.yaml"] {
        let parsed = yaml(&repo(&format!(
            "deploy/grafana/provisioning/{provisioning}"
        )));
        assert_eq!(parsed["apiVersion"], 1, "{provisioning}");
    }
}

#[test]
fn the_systemd_unit_leaves_room_above_the_hard_limit_and_keeps_the_queue() {
    let unit =
        std::fs::read_to_string(repo("deploy/systemd/daena-trace-agent.service")).expect("unit");
    let config = std::fs::read_to_string(repo("deploy/systemd/config.yaml")).expect("config");
    check_agent_config("deploy/systemd/config.yaml", &config);
    assert!(unit.contains("MemoryMax=384M") && config.contains("hard: 320MiB"));
    assert!(unit.contains("StateDirectory=daena-trace-agent"));
    assert!(config.contains("dir: /var/lib/daena-trace-agent/queue"));
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

/// The metric names a dashboard query reads: the words that name the agent's series.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("daena_") || word.starts_with("process_"))
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_reads_is_one_the_agent_exports() {
    let text = std::fs::read_to_string(repo("deploy/grafana/daena-agent-dashboard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "daena-trace-agent");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queried = Vec::new();
    for panel in panels {
        assert!(
            panel["title"].is_string() && panel["gridPos"].is_object(),
            "{panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queried.extend(metric_names(expr).into_iter().map(str::to_owned));
        }
    }
    for wanted in [
        "daena_agent_spans_received_total",
        "daena_agent_spans_refused_total",
        "daena_agent_spans_dropped_total",
        "daena_agent_queue_spans",
        "daena_agent_export_duration_seconds_bucket",
        "daena_agent_sampling_traces_total",
        "daena_agent_schema_errors_total",
        "process_resident_memory_bytes",
        "daena_agent_memory_soft_limit_bytes",
        "daena_llm_cost_usd_total",
        "daena_llm_requests_total",
        "daena_council_phase_duration_seconds_bucket",
        "daena_bus_rate_limited_total",
        "daena_nbmf_operations_total",
        "daena_http_requests_total",
    ] {
        assert!(
            queried.iter().any(|q| q == wanted),
            "the dashboard shows {wanted}"
        );
    }

    // A live agent after traffic: tail sampling on, so its series exist too.
    let sink = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &format!("  tempo:\n    protocol: grpc\n    endpoint: http://{}\n", sink.addr),
        "processors:\n  sampling:\n    mode: tail\n    decision_wait: 100ms\n    policies: [{ name: all, type: ratio, ratio: 1.0 }]\n",
    ))
    .await;
    grpc_export(agent.grpc_url(), council_request(5, 1), false)
        .await
        .expect("accepted");
    // One span of each other Daena signal the dashboard shows.
    let text = |s: &str| Value::StringValue(s.into());
    let signal_span = |id: u8, name: &str, kind: i32, attributes: Vec<KeyValue>| Span {
        trace_id: vec![9; 16],
        span_id: vec![id; 8],
        name: name.into(),
        kind,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_100_000_000,
        attributes,
        ..Default::default()
    };
    let mut bus = signal_span(
        3,
        "message_bus.publish",
        4,
        vec![kv("message_bus.topic", text("t"))],
    );
    bus.events = vec![Event {
        name: "rate_limited".into(),
        ..Default::default()
    }];
    let signals = request_with_resource(
        Resource::default(),
        vec![
            signal_span(
                1,
                "llm.exchange",
                3,
                vec![
                    kv("llm.model", text("m")),
                    kv("llm.cost_usd", Value::DoubleValue(0.01)),
                ],
            ),
            signal_span(
                2,
                "POST /api/v1/chat",
                2,
                vec![kv("http.route", text("/api/v1/chat"))],
            ),
            bus,
            signal_span(4, "nbmf.read", 3, vec![kv("nbmf.operation", text("read"))]),
        ],
    );
    grpc_export(agent.grpc_url(), signals, false)
        .await
        .expect("accepted");
    sink.wait_for_spans(9).await;
    agent
        .wait_for_counter("daena_agent_spans_exported_total{exporter=\"tempo\"}", 9)
        .await;
    let metrics = agent.metrics().await;
    let exported: Vec<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    for name in &queried {
        assert!(
            exported.contains(&name.as_str()),
            "the dashboard reads {name}, which the agent does not export:\n{metrics}"
        );
    }
    agent.stop().await;
}

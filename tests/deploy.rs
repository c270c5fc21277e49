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
        ("DAENA_GATEWAY_TOKEN", "gateway_token_placeholder"),
    ];
    let (code, stdout, stderr) =
        run_binary(&["check", "--config", path.to_str().expect("path")], &env);
    assert_eq!(code, 0, "{name} does not pass check:\n{stdout}{stderr}");
    for secret in ["glc_placeholder", "gateway_token_placeholder"] {
        assert!(!stdout.contains(secret), "{name}: check shows a secret");
    }
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

const TWO_TIER: &str = "deploy/kubernetes/two-tier";

/// Every document of a multi-document YAML file.
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The one object of `kind` among `objects`.
fn one_of_kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

/// The text of `key` in a ConfigMap, parsed as YAML too.
fn embedded_config(configmap: &serde_json::Value, key: &str) -> (String, serde_json::Value) {
    let text = configmap["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"))
        .to_owned();
    let parsed = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{key}: {e}"));
    (text, parsed)
}

/// A size in bytes, as Kubernetes (`1Gi`) or the agent (`896MiB`) writes it.
fn bytes(size: &str) -> u64 {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &size[digits.len()..] {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        other => panic!("unit {other} in {size}"),
    };
    digits.parse::<u64>().expect(size) * unit
}

/// The port of a `host:port` endpoint.
fn port_of(endpoint: &str) -> u64 {
    let (_, port) = endpoint.rsplit_once(':').expect(endpoint);
    port.parse().expect(endpoint)
}

/// The sidecars' ConfigMap and the config it carries.
fn two_tier_sidecar_config() -> (String, serde_json::Value) {
    let objects = yaml_documents(&repo(&format!("{TWO_TIER}/sidecar-configmap.yaml")));
    embedded_config(one_of_kind(&objects, "ConfigMap"), "agent.yaml")
}

#[tokio::test]
async fn the_two_tier_manifests_match_the_schemas_and_the_sidecars_reach_the_gateways() {
    let mut names: Vec<String> = std::fs::read_dir(repo(TWO_TIER))
        .expect(TWO_TIER)
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["gateway.yaml", "sidecar-configmap.yaml"],
        "{TWO_TIER} holds the two manifests (their comments say how to apply them)"
    );
    let mut validate = tool(".venv-deploy", "kubernetes-validate");
    validate
        .args(["--strict", "--quiet"])
        .args(names.iter().map(|n| repo(&format!("{TWO_TIER}/{n}"))));
    assert_passes(validate).await;
    for name in &names {
        let text = std::fs::read_to_string(repo(&format!("{TWO_TIER}/{name}"))).expect(name);
        assert!(
            text.starts_with('#') && text.contains("kubectl apply -f deploy/kubernetes/two-tier/"),
            "{name} begins with a comment saying how to apply it"
        );
    }

    let gateway = yaml_documents(&repo(&format!("{TWO_TIER}/gateway.yaml")));
    let service = one_of_kind(&gateway, "Service");
    let statefulset = one_of_kind(&gateway, "StatefulSet");
    let configmap = one_of_kind(&gateway, "ConfigMap");
    let secret = one_of_kind(&gateway, "Secret");
    let budget = one_of_kind(&gateway, "PodDisruptionBudget");
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .expect("a namespace");
    for object in &gateway {
        assert_eq!(
            object["metadata"]["namespace"], namespace,
            "every gateway object is in one namespace: {}",
            object["kind"]
        );
    }

    // The headless Service, and the StatefulSet that governs it.
    let service_name = service["metadata"]["name"].as_str().expect("name");
    assert_eq!(service_name, "daena-trace-gateway-headless");
    assert_eq!(
        service["spec"]["clusterIP"], "None",
        "the Service is headless"
    );
    assert_eq!(
        statefulset["spec"]["serviceName"], service_name,
        "the StatefulSet's serviceName is the headless Service"
    );
    assert_eq!(statefulset["spec"]["replicas"], 3);
    let labels = &statefulset["spec"]["template"]["metadata"]["labels"];
    assert_eq!(statefulset["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(
        service["spec"]["selector"], *labels,
        "the Service selects the gateways"
    );
    assert_eq!(budget["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(budget["spec"]["minAvailable"], 2);

    // Each Service port reaches the container port of the same number.
    let pod = &statefulset["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one gateway agent per pod");
    let container = &containers[0];
    let container_ports = container["ports"].as_array().expect("ports");
    let service_ports = service["spec"]["ports"].as_array().expect("ports");
    let mut ports = Vec::new();
    for port in service_ports {
        let number = port["port"].as_u64().expect("port");
        let target = container_ports
            .iter()
            .find(|p| p["name"] == port["targetPort"])
            .unwrap_or_else(|| panic!("no container port {}", port["targetPort"]));
        assert_eq!(target["containerPort"], number, "{port}");
        ports.push(number);
    }

    // The config the gateway runs is the ConfigMap's, mounted where its --config points.
    let args = container["args"].as_array().expect("args");
    let config_path = args[args.iter().position(|a| a == "--config").expect("--config") + 1]
        .as_str()
        .expect("path");
    let (config_dir, config_key) = config_path.rsplit_once('/').expect("a path");
    let mount_of = |volume: &str| -> String {
        container["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("{volume} is not mounted"))["mountPath"]
            .as_str()
            .expect("mountPath")
            .to_owned()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume_with = |source: &str, name: &serde_json::Value| -> &str {
        volumes
            .iter()
            .find(|v| v[source]["name"] == *name || v[source]["secretName"] == *name)
            .unwrap_or_else(|| panic!("no {source} volume of {name}"))["name"]
            .as_str()
            .expect("name")
    };
    assert_eq!(
        mount_of(volume_with("configMap", &configmap["metadata"]["name"])),
        config_dir
    );
    let (gateway_text, config) = embedded_config(configmap, config_key);

    // Its receivers listen on the Service's ports, on every interface, and take the
    // Secret's token.
    let token_volume = volume_with("secret", &secret["metadata"]["name"]);
    let token_item = &volumes
        .iter()
        .find(|v| v["name"] == token_volume)
        .expect("volume")["secret"]["items"][0];
    let token_key = token_item["key"].as_str().expect("key");
    assert!(secret["stringData"][token_key].is_string(), "{token_key}");
    let token_dir = mount_of(token_volume);
    let token_file = format!("{token_dir}/{}", token_item["path"].as_str().expect("path"));
    for (protocol, port) in [("grpc", 4317), ("http", 4318)] {
        let receiver = &config["receivers"]["otlp"][protocol];
        assert_eq!(receiver["endpoint"], format!("0.0.0.0:{port}"));
        assert_eq!(
            receiver["auth"]["bearer_token_file"], token_file,
            "the {protocol} receiver requires the mounted token"
        );
        assert!(ports.contains(&port), "the Service has port {port}");
    }
    let telemetry = config["telemetry"]["endpoint"].as_str().expect("telemetry");
    assert!(
        ports.contains(&port_of(telemetry)),
        "the Service has the telemetry port"
    );

    // Tail sampling, then Tempo, through a queue on the volume claim of each gateway.
    let sampling = &config["processors"]["sampling"];
    assert_eq!(sampling["mode"], "tail", "the gateways sample whole traces");
    let policies: Vec<&str> = sampling["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    assert!(
        policies.contains(&"errors") && policies.contains(&"ratio"),
        "errors and a ratio: {policies:?}"
    );
    let exporters = config["exporters"].as_object().expect("exporters");
    assert_eq!(exporters.len(), 1, "{exporters:?}");
    let tempo = exporters.values().next().expect("an exporter");
    assert_eq!(tempo["protocol"], "grpc");
    assert_eq!(
        tempo["endpoint"],
        format!("http://tempo.{namespace}.svc:4317"),
        "the gateways export to the Tempo of their namespace"
    );
    assert_eq!(tempo["queue"]["persistent"], true);
    let claim = &statefulset["spec"]["volumeClaimTemplates"][0];
    assert_eq!(
        mount_of(claim["metadata"]["name"].as_str().expect("name")),
        tempo["queue"]["dir"].as_str().expect("dir"),
        "the queue is on the volume claim"
    );
    let storage = claim["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .expect("storage");
    let queue_bytes = tempo["queue"]["max_bytes"].as_str().expect("max_bytes");
    assert!(
        bytes(storage) > bytes(queue_bytes),
        "{storage} holds {queue_bytes}"
    );
    let hard = config["memory_limit"]["hard"].as_str().expect("hard");
    let limit = container["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    assert!(bytes(limit) > bytes(hard), "{limit} is above {hard}");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);

    // `check` passes, with the token where the Secret would be mounted.
    let secrets = tempfile::tempdir().expect("tempdir");
    let token_path = secrets
        .path()
        .join(token_item["path"].as_str().expect("path"));
    std::fs::write(&token_path, "gateway_token_placeholder").expect("token");
    check_agent_config(
        config_key,
        &gateway_text.replace(&token_dir, secrets.path().to_str().expect("path")),
    );

    // The sidecars: loopback receivers, no sampling, and every trace to one gateway, found
    // through the headless Service's DNS name, with the token of their Secret.
    let sidecar_objects = yaml_documents(&repo(&format!("{TWO_TIER}/sidecar-configmap.yaml")));
    for object in &sidecar_objects {
        assert!(
            object["metadata"]["namespace"].is_null(),
            "the sidecars' {} goes in the services' namespace",
            object["kind"]
        );
    }
    let (_, sidecar) = two_tier_sidecar_config();
    for protocol in ["grpc", "http"] {
        let endpoint = sidecar["receivers"]["otlp"][protocol]["endpoint"]
            .as_str()
            .expect("endpoint");
        assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    }
    assert!(
        sidecar["processors"]["sampling"].is_null(),
        "the gateways sample, not the sidecars"
    );
    let exporters = sidecar["exporters"].as_object().expect("exporters");
    assert_eq!(exporters.len(), 1, "{exporters:?}");
    let gateways = exporters.values().next().expect("an exporter");
    assert_eq!(gateways["protocol"], "loadbalancing");
    assert_eq!(gateways["routing_key"], "trace_id");
    let dns = &gateways["resolver"]["dns"];
    assert_eq!(
        dns["hostname"],
        format!("{service_name}.{namespace}.svc.cluster.local"),
        "the sidecars resolve the headless Service"
    );
    assert_eq!(dns["port"], 4317, "the gateways' OTLP/gRPC port");
    assert_eq!(gateways["exporter"]["protocol"], "grpc");
    assert_eq!(
        gateways["exporter"]["headers"]["authorization"],
        format!("Bearer ${{{token_key}}}")
    );
    let sidecar_secret = one_of_kind(&sidecar_objects, "Secret");
    assert_eq!(
        sidecar_secret["metadata"]["name"],
        secret["metadata"]["name"]
    );
    assert!(sidecar_secret["stringData"][token_key].is_string());
}

/// Waits for the `loadbalancing` exporter (issue #20): until the agent knows it, `check`
/// refuses the sidecars' config.
#[test]
fn the_two_tier_sidecar_config_passes_check() {
    let (text, _) = two_tier_sidecar_config();
    check_agent_config("two-tier/sidecar-configmap.yaml agent.yaml", &text);
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
        "daena_agent_lb_rerouted_spans_total",
        "daena_agent_lb_member",
    ] {
        assert!(
            queried.iter().any(|q| q == wanted),
            "the dashboard shows {wanted}"
        );
    }

    // A live agent after traffic: tail sampling on and a load balancer, so their series
    // exist too.
    let sink = Sink::grpc().await;
    let gateway = Sink::grpc().await;
    let agent = TestAgent::start(&agent_yaml(
        &format!(
            "  tempo:\n    protocol: grpc\n    endpoint: http://{}\n{}",
            sink.addr,
            gateways_exporter(&[gateway.addr.to_string()], "30s")
        ),
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

use proptest::prelude::*;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_text(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.yaml");
    std::fs::write(&path, yaml).expect("write");
    Config::load(Some(&path), env)
}

fn errors_of(yaml: &str) -> String {
    load_text(yaml, &no_env)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn an_empty_file_means_every_default_and_the_console() {
    let config = load_text("", &no_env).expect("valid");
    let otlp = &config.receivers.otlp;
    assert_eq!(
        otlp.grpc.as_ref().map(|r| r.endpoint.as_str()),
        Some("127.0.0.1:4317")
    );
    assert_eq!(
        otlp.http.as_ref().map(|r| r.endpoint.as_str()),
        Some("127.0.0.1:4318")
    );
    assert_eq!(
        otlp.grpc.as_ref().map(|r| r.max_request_size),
        Some(ByteSize(8 << 20))
    );
    assert_eq!(
        config.batch,
        BatchConfig {
            max_spans: 8192,
            max_bytes: ByteSize(1 << 20),
            timeout: Duration::from_millis(200)
        }
    );
    assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(config.telemetry.endpoint.as_deref(), Some("127.0.0.1:8888"));
    assert_eq!(config.exporters.keys().collect::<Vec<_>>(), ["console"]);
}

#[test]
fn a_listed_receiver_protocol_turns_the_other_off() {
    let config = load_text(
        "receivers:\n  otlp:\n    grpc: { endpoint: 0.0.0.0:4317 }\n",
        &no_env,
    )
    .expect("valid");
    assert!(config.receivers.otlp.http.is_none());
    assert_eq!(
        parse_listen_addr("localhost:4317").map(|a| a.port()),
        Ok(4317)
    );
}

#[test]
fn unknown_keys_are_refused_with_name_and_position() {
    let text =
        errors_of("exporters:\n  tempo:\n    protocol: grpc\n    endpiont: http://tempo:4317\n");
    assert!(text.contains("agent.yaml:4:"), "{text}");
    assert!(text.contains("endpiont"), "{text}");
    assert!(
        text.contains("|     endpiont: ***\n      |     ^"),
        "the line is shown, its value masked: {text}"
    );
}

#[test]
fn duplicate_keys_and_wrong_types_are_refused() {
    let text = errors_of("batch:\n  max_spans: 10\n  max_spans: 20\n");
    assert!(text.to_lowercase().contains("duplicate"), "{text}");
    let text = errors_of("batch:\n  timeout: fast\n");
    assert!(text.contains("not a duration"), "{text}");
    let text = errors_of("exporters:\n  t:\n    protocol: zipkin\n    endpoint: http://x:1\n");
    assert!(text.contains("zipkin"), "{text}");
}

#[test]
fn validation_reports_every_problem_at_once() {
    let text = errors_of(
        "exporters:\n  a:\n    protocol: grpc\n  b:\n    protocol: http/protobuf\n    endpoint: ftp://x\n  c:\n    protocol: console\n    endpoint: http://x:1\n    queue: { workers: 0 }\nbatch: { max_spans: 0 }\ntelemetry: { log_level: loud }\n",
    );
    for expected in [
        "exporters.a.endpoint: protocol grpc needs an endpoint",
        "exporters.b.endpoint: \"ftp://x\" must start with http:// or https://",
        "exporters.c.endpoint: the console exporter",
        "exporters.c.queue.workers",
        "batch.max_spans: 0 is too small; use 1 to 1000000",
        "telemetry.log_level",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("6 config errors"), "{text}");
}

#[test]
fn unset_variables_are_errors_and_defaults_apply() {
    let text = errors_of("exporters:\n  t:\n    protocol: grpc\n    endpoint: ${TEMPO_URL}\n");
    assert!(text.contains("line 4: ${TEMPO_URL} is not set"), "{text}");
    let config = load_text(
        "exporters:\n  t:\n    protocol: grpc\n    endpoint: ${TEMPO_URL:-http://tempo:4317}\n",
        &no_env,
    )
    .expect("valid");
    assert_eq!(
        config.exporters["t"].endpoint.as_deref(),
        Some("http://tempo:4317")
    );
}

#[test]
fn http_export_urls_get_v1_traces_like_the_collector() {
    let url = |endpoint: &str| {
        ExporterConfig::new(ExporterProtocol::HttpProtobuf, Some(endpoint.into())).export_url()
    };
    assert_eq!(
        url("https://otlp-gateway-prod-us-central-0.grafana.net/otlp").as_deref(),
        Some("https://otlp-gateway-prod-us-central-0.grafana.net/otlp/v1/traces")
    );
    assert_eq!(
        url("http://tempo:4318").as_deref(),
        Some("http://tempo:4318/v1/traces")
    );
    assert_eq!(
        url("http://tempo:4318/").as_deref(),
        Some("http://tempo:4318/v1/traces")
    );
    assert_eq!(
        url("http://tempo:4318/v1/traces").as_deref(),
        Some("http://tempo:4318/v1/traces")
    );
    let mut exact = ExporterConfig::new(ExporterProtocol::HttpProtobuf, None);
    exact.traces_endpoint = Some("http://x:4318/custom".into());
    assert_eq!(exact.export_url().as_deref(), Some("http://x:4318/custom"));
    let grpc = ExporterConfig::new(ExporterProtocol::Grpc, Some("http://tempo:4317".into()));
    assert_eq!(grpc.export_url().as_deref(), Some("http://tempo:4317"));
}

#[test]
fn the_signals_metrics_go_beside_the_traces_url() {
    let metrics = |protocol, endpoint: Option<&str>, traces: Option<&str>| {
        let mut exporter = ExporterConfig::new(protocol, endpoint.map(str::to_owned));
        exporter.traces_endpoint = traces.map(str::to_owned);
        exporter.signal_url(OtlpSignal::Metrics)
    };
    let http = ExporterProtocol::HttpProtobuf;
    for (endpoint, traces, expected) in [
        (
            Some("https://otlp.grafana.net/otlp"),
            None,
            Some("https://otlp.grafana.net/otlp/v1/metrics"),
        ),
        (
            Some("http://tempo:4318/"),
            None,
            Some("http://tempo:4318/v1/metrics"),
        ),
        (
            Some("http://tempo:4318/v1/traces?k=v"),
            None,
            Some("http://tempo:4318/v1/metrics?k=v"),
        ),
        (
            None,
            Some("http://x:4318/a/v1/traces"),
            Some("http://x:4318/a/v1/metrics"),
        ),
        (
            Some("http://x:4318"),
            Some("http://x:4318/custom"),
            Some("http://x:4318/v1/metrics"),
        ),
        (None, Some("http://x:4318/custom"), None),
    ] {
        assert_eq!(
            metrics(http, endpoint, traces).as_deref(),
            expected,
            "{endpoint:?} {traces:?}"
        );
    }
    assert_eq!(
        metrics(ExporterProtocol::Grpc, Some("http://tempo:4317"), None).as_deref(),
        Some("http://tempo:4317"),
        "gRPC names the service in the path itself"
    );
}

#[test]
fn a_signals_export_must_name_otlp_exporters_once() {
    let errors = errors_of(
        "exporters:\n  out: { protocol: console }\n  cloud: { protocol: http/protobuf, traces_endpoint: \"http://x:4318/custom\" }\n  tempo: { protocol: grpc, endpoint: \"http://tempo:4317\" }\nprocessors:\n  signals: { export: [tempo, nope, out, cloud, tempo], interval: 0s }\n",
    );
    for expected in [
        "processors.signals.export[1]: \"nope\" names no exporter; the exporters are: cloud, out, tempo",
        "processors.signals.export[2]: \"out\" is a console exporter",
        "processors.signals.export[3]: exporters.cloud has only a traces_endpoint",
        "processors.signals.export[4]: \"tempo\" is listed twice",
        "processors.signals.interval: 0s is too short",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
    }
    let off = errors_of(
        "exporters:\n  tempo: { protocol: grpc, endpoint: \"http://tempo:4317\" }\nprocessors:\n  signals: { enabled: false, export: [tempo] }\n",
    );
    assert!(
        off.contains("processors.signals.export: the signals are off"),
        "{off}"
    );
}

#[test]
fn an_exporter_pointing_at_our_own_receiver_is_refused() {
    let yaml = "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:4317 }\nexporters:\n  loop:\n    protocol: grpc\n    endpoint: http://localhost:4317\n";
    let text = errors_of(yaml);
    assert!(text.contains("exporters.loop.endpoint"), "{text}");
    assert!(text.contains("loops forever"), "{text}");
    let env = |name: &str| {
        (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://0.0.0.0:4318".to_owned())
    };
    let text = load_text("", &env).expect_err("loop").to_string();
    assert!(
        text.contains("OTLP_ENDPOINT"),
        "the hint names the variable: {text}"
    );
    // Port 0 receivers (tests) never match anything.
    let yaml = "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0 }\nexporters:\n  t:\n    protocol: grpc\n    endpoint: http://localhost:4317\n";
    assert!(load_text(yaml, &no_env).is_ok());
}

#[test]
fn masked_config_shows_no_secret() {
    let yaml = "exporters:\n  g:\n    protocol: http/protobuf\n    endpoint: https://user:urlpass@otlp.example.net/otlp\n    headers: { x-api-token: \"Bearer ${TOKEN}\" }\n  h:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    auth: { basic: { username: inst, password: basicpass } }\n";
    let env = |name: &str| (name == "TOKEN").then(|| "tokensecret".to_owned());
    let config = load_text(yaml, &env).expect("valid");
    let shown = config.masked().to_yaml();
    for secret in ["tokensecret", "urlpass", "basicpass"] {
        assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
    }
    assert!(
        shown.contains("https://user:***@otlp.example.net/otlp"),
        "{shown}"
    );
    assert!(shown.contains("inst"), "{shown}");
    // The real config still carries them, for the exporters.
    assert_eq!(
        config.exporters["g"].headers["x-api-token"].expose(),
        "Bearer tokensecret"
    );
}

#[test]
fn a_secret_from_the_environment_never_appears_in_a_parse_error() {
    let env = |name: &str| (name == "TOKEN").then(|| "tokensecret-123".to_owned());
    let text = load_text("batch:\n  timeout: ${TOKEN}\n", &env)
        .expect_err("bad duration")
        .to_string();
    assert!(!text.contains("tokensecret-123"), "{text}");
    assert!(text.contains("${TOKEN}"), "{text}");
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"));
    let errors = Config::load(Some(path), &no_env).expect_err("no Grafana Cloud token");
    assert_eq!(
        errors
            .errors
            .iter()
            .map(|e| e.path.as_str())
            .collect::<Vec<_>>(),
        ["exporters.grafana-cloud.auth.basic.password"],
        "the token's placeholder default is refused: {errors}"
    );
    let token =
        |name: &str| (name == "GRAFANA_CLOUD_API_TOKEN").then(|| "glc_eyJvIjoiMTIzIn0=".to_owned());
    let config = Config::load(Some(path), &token).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.exporters.len(), 3);
    assert_eq!(
        config.exporters["grafana-cloud"].export_url().as_deref(),
        Some("https://otlp-gateway-prod-us-central-0.grafana.net/otlp/v1/traces")
    );
}

#[test]
fn the_image_config_listens_on_loopback_unless_told_to_listen_on_all_interfaces() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/docker/agent.yaml"
    ));
    for (listen_host, expected) in [(None, "127.0.0.1:4317"), (Some("0.0.0.0"), "0.0.0.0:4317")] {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("https://tempo.example.net:4317".to_owned()),
            "AGENT_LISTEN_HOST" => listen_host.map(str::to_owned),
            _ => None,
        };
        let config = Config::load(Some(path), &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.receivers.otlp.grpc.map(|r| r.endpoint).as_deref(),
            Some(expected)
        );
        assert_eq!(config.exporters["otlp"].protocol, ExporterProtocol::Grpc);
    }
}

#[test]
fn processor_settings_are_validated_together() {
    let text = errors_of(
        "processors:\n  daena:\n    service_name: \" \"\n    resource_from_env: { k8s.pod.name: \"\" }\n  redact:\n    keys: [token, \"._\"]\n  limits:\n    max_attribute_value_length: 8\n    max_attributes: 0\n",
    );
    for expected in [
        "processors.daena.service_name: is empty",
        "processors.daena.resource_from_env.k8s.pod.name: names no environment variable",
        "processors.redact.keys[1]: \"._\" has no word to match",
        "processors.limits.max_attribute_value_length: 8 is too small; use 32 to 16777216",
        "processors.limits.max_attributes: 0 is too small; use 1 to 65536",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("5 config errors"), "{text}");
    let unknown = errors_of("processors:\n  daena:\n    semconv_mirrors: false\n");
    assert!(unknown.contains("semconv_mirrors"), "{unknown}");
}

#[test]
fn the_processors_are_on_by_default_and_can_be_turned_off() {
    let config = load_text("", &no_env).expect("valid");
    let processors = &config.processors;
    assert!(processors.daena.enabled && processors.redact.enabled && processors.limits.enabled);
    assert!(processors.daena.semconv_mirror);
    assert_eq!(processors.limits.max_attribute_value_length, 4096);
    let off = load_text(
        "processors: { daena: { enabled: false }, redact: { enabled: false }, limits: { enabled: false } }\n",
        &no_env,
    )
    .expect("valid");
    assert!(!off.processors.daena.enabled && !off.processors.redact.enabled);
}

#[test]
fn sampling_settings_are_validated_with_examples() {
    let text = errors_of(
        "processors:\n  sampling:\n    mode: tail\n    ratio: 0.5\n    max_traces: 0\n    policies:\n      - { name: slow, type: latency }\n      - { name: slow, type: attribute, key: council.phase }\n      - { name: r, type: ratio, ratio: 1.5 }\n      - { name: cap, type: rate_limit }\n",
    );
    for expected in [
        "processors.sampling.ratio: in tail mode, give the ratio as a policy",
        "processors.sampling.max_traces: 0 is too small; use 1 to 10000000",
        "processors.sampling.policies[0]: type latency needs threshold: 2s",
        "processors.sampling.policies[1].name: \"slow\" must be a non-empty name no other policy has",
        "processors.sampling.policies[1]: type attribute needs key and either values",
        "processors.sampling.policies[2]: type ratio needs ratio above 0 and at most 1",
        "processors.sampling.policies[3]: type rate_limit needs traces_per_second above 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let head = errors_of("processors:\n  sampling: { ratio: 0 }\n");
    assert!(
        head.contains("processors.sampling.ratio: must be above 0 and at most 1 (got 0)"),
        "{head}"
    );
    let none = errors_of("processors:\n  sampling: {}\n");
    assert!(none.contains("head sampling needs a ratio"), "{none}");
    let config = load_text("processors:\n  sampling: { ratio: 0.1 }\n", &no_env).expect("valid");
    assert_eq!(
        config.processors.sampling.map(|s| s.mode),
        Some(SamplingMode::Head)
    );
}

#[test]
fn the_memory_limit_defaults_to_256_and_320_mib_and_soft_must_be_below_hard() {
    let config = load_text("", &no_env).expect("valid");
    assert_eq!(
        (config.memory_limit.soft, config.memory_limit.hard),
        (ByteSize(256 << 20), ByteSize(320 << 20))
    );
    let text = errors_of("memory_limit: { soft: 512MiB, hard: 320MiB }\n");
    assert!(
        text.contains("memory_limit: soft (512MiB) must be below hard (320MiB)"),
        "{text}"
    );
}

#[test]
fn a_persistent_queue_needs_a_dir_and_gets_disk_sized_defaults() {
    let text = errors_of(
        "exporters:\n  a:\n    protocol: console\n    queue: { persistent: true }\n  b:\n    protocol: console\n    queue: { dir: /tmp/q }\n  c:\n    protocol: console\n    queue: { persistent: true, dir: /etc/hostname }\n",
    );
    for expected in [
        "exporters.a.queue.dir: is required with persistent: true",
        "exporters.b.queue.dir: only applies to a persistent queue",
        "exporters.c.queue.dir: /etc/hostname is not a directory",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let config = load_text(
        "exporters:\n  disk:\n    protocol: console\n    queue: { persistent: true, dir: /var/lib/daena, fsync: always }\n  memory:\n    protocol: console\n",
        &no_env,
    )
    .expect("valid");
    let disk = &config.exporters["disk"].queue;
    assert_eq!(
        (disk.byte_limit(), disk.span_limit(), disk.fsync),
        (1 << 30, usize::MAX, Fsync::Always)
    );
    let memory = &config.exporters["memory"].queue;
    assert_eq!(
        (memory.byte_limit(), memory.span_limit()),
        (8 << 20, 65_536)
    );
}

#[test]
fn load_reads_the_resource_variables_once_and_check_does_not_show_them() {
    let env = |name: &str| match name {
        "POD" => Some(" chat-7d9f ".to_owned()),
        "BLANK" => Some("  ".to_owned()),
        _ => None,
    };
    let config = load_text(
        "processors:\n  daena:\n    resource_from_env: { k8s.pod.name: POD, host.name: BLANK, k8s.node.name: UNSET }\n",
        &env,
    )
    .expect("valid");
    assert_eq!(
        config.processors.daena.resource_from_env_values,
        [("k8s.pod.name".to_owned(), "chat-7d9f".to_owned())].into(),
        "trimmed; unset and blank variables add nothing"
    );
    assert!(!config.masked().to_yaml().contains("chat-7d9f"));
    let defaults = Config::load(None, &|name: &str| {
        (name == "K8S_NAMESPACE_NAME").then(|| "daena".to_owned())
    })
    .expect("valid");
    assert_eq!(
        defaults.processors.daena.resource_from_env_values["k8s.namespace.name"], "daena",
        "without a file the default variables are read too"
    );
}

#[test]
fn every_yaml_error_is_listed_in_one_run_with_its_key_position_and_line() {
    let text = errors_of(
        "batch:\n  max_spans: 10\n  colour: blue\nexporters:\n  tempo:\n    protocol: grpc\n    endpoint: http://tempo:4317\n    timeout: fast\n    retry: { max_intervall: 30s, multiplier: quick, enabled: maybe }\n  broken:\n    protocol: zipkin\nprocessors:\n  sampling:\n    mode: tail\n    policies:\n      - { name: slow, type: latency, threshold: 2 }\n      - { name: errors, typo: errors }\nmemory_limit:\n  soft: 1MiB\n  soft: 2MiB\n",
    );
    for expected in [
        "agent.yaml:3:3: batch.colour: unknown field `colour`, expected one of max_spans, max_bytes, timeout; fix the spelling or remove the key\n      |   colour: ***\n      |   ^",
        "agent.yaml:8:14: exporters.tempo.timeout: \"fast\" is not a duration",
        "agent.yaml:9:14: exporters.tempo.retry.max_intervall: unknown field `max_intervall`",
        "agent.yaml:9:46: exporters.tempo.retry.multiplier: quick is not a number",
        "agent.yaml:9:62: exporters.tempo.retry.enabled: maybe is not true or false",
        "agent.yaml:11:15: exporters.broken.protocol: unknown variant `zipkin`",
        "processors.sampling.policies[0].threshold: \"2\" has no unit; write e.g. 2s or 2ms",
        "processors.sampling.policies[1].typo: unknown field `typo`",
        "processors.sampling.policies[1]: missing field `type`; add it",
        "agent.yaml:20:3: memory_limit: duplicate key \"soft\"; keep one of them\n      |   soft: ***\n      |   ^",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains(": 10 config errors:"), "{text}");
    assert!(
        !text.contains("missing field `protocol`"),
        "a required key refused for its value is not also missing: {text}"
    );
}

#[test]
fn yaml_errors_point_at_the_original_text_and_never_show_a_secret() {
    let env = |name: &str| match name {
        "TOKEN" => Some("tokensecret-123".to_owned()),
        "LINES" => Some("a\nb\nc".to_owned()),
        _ => None,
    };
    let text = load_text(
        "exporters:\n  t:\n    protocol: grpc\n    endpoint: http://tempo:4317\n    headers: { x-a: \"${LINES}\", x-b: \"${TOKEN}\" }\n    retry: { multiplier: \"${TOKEN}\", max_intervall: 1s }\n",
        &env,
    )
    .expect_err("invalid")
    .to_string();
    assert!(!text.contains("tokensecret"), "{text}");
    assert!(
        text.contains(
            "agent.yaml:6:26: exporters.t.retry.multiplier: \"${TOKEN}\" is not a number\n      |     retry: { multiplier: \"${TOKEN}\", max_intervall: *** }\n      |                          ^"
        ),
        "a multi-line value above and a secret before do not move the position: {text}"
    );
    assert!(
        text.contains("agent.yaml:6:38: exporters.t.retry.max_intervall"),
        "{text}"
    );
}

#[test]
fn a_broken_document_is_reported_once() {
    let text = errors_of("batch: { max_spans: 1\nexporters: [\n");
    assert!(text.contains(": 1 config error:"), "{text}");
    let text = errors_of("- just\n- a list\n");
    assert!(text.contains(": 1 config error:"), "{text}");
}

#[test]
fn sizes_are_whole_bytes_or_text_with_a_unit() {
    for (written, bytes) in [
        ("2048", 2048),
        ("\"2048\"", 2048),
        ("2KiB", 2048),
        ("2e3", 2000),
    ] {
        let config = load_text(&format!("batch: {{ max_bytes: {written} }}\n"), &no_env)
            .unwrap_or_else(|e| panic!("{written}: {e}"));
        assert_eq!(config.batch.max_bytes, ByteSize(bytes), "{written}");
    }
    for (written, expected) in [
        ("-2048", "is negative"),
        ("1500.5", "is not a whole number of bytes"),
        (".inf", "batch.max_bytes"),
        ("[1]", "batch.max_bytes"),
    ] {
        let text = errors_of(&format!("batch: {{ max_bytes: {written} }}\n"));
        assert!(text.contains(expected), "{written}: {text}");
    }
}

/// Every duration, size and count in the config: its key, and a valid value.
const QUANTITIES: &[(&str, &str)] = &[
    ("receivers.otlp.grpc.max_request_size", "8MiB"),
    ("receivers.otlp.http.max_request_size", "8MiB"),
    ("receivers.otlp.http.max_connections", "512"),
    ("receivers.otlp.http.header_read_timeout", "10s"),
    ("receivers.otlp.http.body_read_timeout", "30s"),
    ("receivers.otlp.http.idle_timeout", "1m"),
    ("receivers.otlp.http.max_concurrent_streams", "100"),
    ("receivers.otlp.http.keepalive_interval", "30s"),
    ("receivers.otlp.http.keepalive_timeout", "10s"),
    ("exporters.t.timeout", "10s"),
    ("exporters.t.retry.initial_interval", "1s"),
    ("exporters.t.retry.max_interval", "30s"),
    ("exporters.t.retry.max_elapsed", "5m"),
    ("exporters.t.queue.max_spans", "65536"),
    ("exporters.t.queue.max_bytes", "8MiB"),
    ("exporters.t.queue.workers", "4"),
    ("exporters.disk.queue.max_spans", "100000"),
    ("exporters.disk.queue.max_bytes", "1GiB"),
    ("processors.limits.max_attribute_value_length", "4096"),
    ("processors.limits.max_attributes", "128"),
    ("processors.limits.max_events", "128"),
    ("processors.limits.max_links", "128"),
    ("processors.sampling.decision_wait", "5s"),
    ("processors.sampling.max_traces", "50000"),
    ("processors.sampling.max_buffered_spans", "500000"),
    ("processors.sampling.max_buffered_bytes", "256MiB"),
    ("processors.sampling.decision_cache", "100000"),
    ("processors.sampling.policies[0].threshold", "2s"),
    ("batch.max_spans", "8192"),
    ("batch.max_bytes", "1MiB"),
    ("batch.timeout", "200ms"),
    ("pipeline.max_pending_requests", "64"),
    ("pipeline.shards", "3"),
    ("memory_limit.soft", "256MiB"),
    ("memory_limit.hard", "320MiB"),
    ("shutdown_timeout", "10s"),
    ("receivers.otlp.http.max_spans_per_request", "100000"),
    ("receivers.otlp.http.max_attributes_per_item", "16384"),
    ("receivers.otlp.http.max_decoded_size", "64MiB"),
    ("memory_limit.budget", "128MiB"),
];

/// A config setting every quantity, `values` in the order of [`QUANTITIES`].
fn config_with(values: &[String]) -> String {
    let v = |key: &str| {
        let i = QUANTITIES
            .iter()
            .position(|(k, _)| *k == key)
            .expect("a quantity");
        values[i].as_str()
    };
    format!(
        "receivers:\n  otlp:\n    grpc: {{ endpoint: 127.0.0.1:0, max_request_size: {} }}\n    http: {{ endpoint: 127.0.0.1:0, max_request_size: {}, max_connections: {}, header_read_timeout: {}, body_read_timeout: {}, idle_timeout: {}, max_concurrent_streams: {}, keepalive_interval: {}, keepalive_timeout: {}, max_spans_per_request: {}, max_attributes_per_item: {}, max_decoded_size: {} }}\n\
         exporters:\n  t:\n    protocol: console\n    timeout: {}\n    retry: {{ initial_interval: {}, max_interval: {}, max_elapsed: {} }}\n    queue: {{ max_spans: {}, max_bytes: {}, workers: {} }}\n  \
         disk:\n    protocol: console\n    queue: {{ persistent: true, dir: /nonexistent/daena-queue, max_spans: {}, max_bytes: {} }}\n\
         processors:\n  limits: {{ max_attribute_value_length: {}, max_attributes: {}, max_events: {}, max_links: {} }}\n  \
         sampling:\n    mode: tail\n    decision_wait: {}\n    max_traces: {}\n    max_buffered_spans: {}\n    max_buffered_bytes: {}\n    decision_cache: {}\n    policies:\n      - {{ name: slow, type: latency, threshold: {} }}\n\
         batch: {{ max_spans: {}, max_bytes: {}, timeout: {} }}\npipeline: {{ max_pending_requests: {}, shards: {} }}\nmemory_limit: {{ soft: {}, hard: {}, budget: {} }}\nshutdown_timeout: {}\ntelemetry: {{ endpoint: null }}\n",
        v("receivers.otlp.grpc.max_request_size"),
        v("receivers.otlp.http.max_request_size"),
        v("receivers.otlp.http.max_connections"),
        v("receivers.otlp.http.header_read_timeout"),
        v("receivers.otlp.http.body_read_timeout"),
        v("receivers.otlp.http.idle_timeout"),
        v("receivers.otlp.http.max_concurrent_streams"),
        v("receivers.otlp.http.keepalive_interval"),
        v("receivers.otlp.http.keepalive_timeout"),
        v("receivers.otlp.http.max_spans_per_request"),
        v("receivers.otlp.http.max_attributes_per_item"),
        v("receivers.otlp.http.max_decoded_size"),
        v("exporters.t.timeout"),
        v("exporters.t.retry.initial_interval"),
        v("exporters.t.retry.max_interval"),
        v("exporters.t.retry.max_elapsed"),
        v("exporters.t.queue.max_spans"),
        v("exporters.t.queue.max_bytes"),
        v("exporters.t.queue.workers"),
        v("exporters.disk.queue.max_spans"),
        v("exporters.disk.queue.max_bytes"),
        v("processors.limits.max_attribute_value_length"),
        v("processors.limits.max_attributes"),
        v("processors.limits.max_events"),
        v("processors.limits.max_links"),
        v("processors.sampling.decision_wait"),
        v("processors.sampling.max_traces"),
        v("processors.sampling.max_buffered_spans"),
        v("processors.sampling.max_buffered_bytes"),
        v("processors.sampling.decision_cache"),
        v("processors.sampling.policies[0].threshold"),
        v("batch.max_spans"),
        v("batch.max_bytes"),
        v("batch.timeout"),
        v("pipeline.max_pending_requests"),
        v("pipeline.shards"),
        v("memory_limit.soft"),
        v("memory_limit.hard"),
        v("memory_limit.budget"),
        v("shutdown_timeout"),
    )
}

/// Whether an error about `key` names it: by its key, or by the rule it breaks.
fn names(error: &ConfigError, key: &str) -> bool {
    let text = format!("{}: {}", error.path, error.message);
    // A receiver's request must fit in the budget: that rule names the receiver and the
    // budget, and is broken by any of the sizes it weighs.
    let receiver_fits = |receiver: &str| {
        text.starts_with(&format!("{receiver}: a request at max_request_size"))
            || text.starts_with(&format!("{receiver}: max_request_size ("))
    };
    text.contains(key)
        || match key {
            "receivers.otlp.grpc.max_request_size" => receiver_fits("receivers.otlp.grpc"),
            "receivers.otlp.http.max_request_size" | "receivers.otlp.http.max_decoded_size" => {
                receiver_fits("receivers.otlp.http")
            }
            "memory_limit.budget" => text.starts_with("memory_limit.budget"),
            "memory_limit.soft" | "memory_limit.hard" => text.starts_with("memory_limit: soft ("),
            "processors.sampling.policies[0].threshold" => {
                text.starts_with("processors.sampling.policies[0]: type latency needs threshold")
            }
            _ => false,
        }
}

/// A number (huge, fractional, zero, negative, exponent, not a number) and a unit, valid
/// or not, sometimes quoted.
fn any_quantity() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[0-9]{18,30}",
        "-?[0-9]{1,4}(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,3})?",
        Just("NaN".to_owned()),
        Just("inf".to_owned()),
    ];
    let unit = prop::sample::select(vec![
        "", "", "ns", "us", "ms", "s", "m", "h", "B", "KiB", "MiB", "GiB", "TiB", "KB", "GB", "x",
        " s",
    ]);
    (number, unit, any::<bool>()).prop_map(|(number, unit, quoted)| {
        let text = format!("{number}{unit}");
        if quoted { format!("\"{text}\"") } else { text }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// One setting at a time: `load` answers (never panics) with a valid config or with
    /// errors that all name that setting, and an out-of-range one says the range.
    #[test]
    fn any_value_in_any_quantity_loads_or_names_its_key(
        field in 0..QUANTITIES.len(),
        value in any_quantity(),
    ) {
        let mut values: Vec<String> = QUANTITIES.iter().map(|(_, v)| (*v).to_owned()).collect();
        values[field] = value.clone();
        let key = QUANTITIES[field].0;
        if let Err(errors) = load_text(&config_with(&values), &no_env) {
            for error in &errors.errors {
                prop_assert!(names(error, key), "{key}: {value}: {errors}");
                let text = &error.message;
                if text.contains(" is too ") {
                    prop_assert!(text.contains("; use "), "{key}: {value}: {errors}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every setting at once: every error names one of them.
    #[test]
    fn any_values_in_every_quantity_load_or_name_their_keys(
        values in prop::collection::vec(any_quantity(), QUANTITIES.len()),
    ) {
        if let Err(errors) = load_text(&config_with(&values), &no_env) {
            for error in &errors.errors {
                prop_assert!(
                    QUANTITIES.iter().any(|(key, _)| names(error, key)),
                    "{errors}"
                );
            }
        }
    }
}

#[test]
fn the_valid_values_of_the_property_tests_load() {
    let values: Vec<String> = QUANTITIES.iter().map(|(_, v)| (*v).to_owned()).collect();
    let config = load_text(&config_with(&values), &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.exporters["disk"].queue.byte_limit(), 1 << 30);
}

#[test]
fn every_default_is_within_its_range() {
    let config = load_text(
        "exporters:\n  memory: { protocol: console }\n  disk: { protocol: console, queue: { persistent: true, dir: /nonexistent/q } }\nprocessors:\n  sampling:\n    mode: tail\n    policies: [{ name: slow, type: latency, threshold: 2s }]\n",
        &no_env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.batch, BatchConfig::default());
    assert_eq!(config.exporters["disk"].queue.byte_limit(), 1 << 30);
}

#[test]
fn http_only_timeouts_are_refused_on_the_grpc_receiver() {
    let text = errors_of(
        "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0, idle_timeout: 5s }\n    http: { endpoint: 127.0.0.1:0, body_read_timeout: 0s, max_connections: 0 }\n",
    );
    assert!(
        text.contains("receivers.otlp.grpc.idle_timeout: applies to the HTTP receiver only"),
        "{text}"
    );
    assert!(
        text.contains("receivers.otlp.http.body_read_timeout: 0s is too short; use 1ms to 1h"),
        "{text}"
    );
    assert!(
        text.contains("receivers.otlp.http.max_connections: 0 is too small; use 1 to 65536"),
        "{text}"
    );
}

#[test]
fn the_memory_budget_defaults_to_half_of_soft_and_must_hold_a_whole_request() {
    let config = load_text("memory_limit: { soft: 512MiB, hard: 600MiB }\n", &no_env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.memory_limit.budget(), ByteSize(256 << 20));
    let receiver = config.receivers.otlp.grpc.as_ref().expect("grpc on");
    assert_eq!(
        receiver.max_decoded_size(config.memory_limit.budget()),
        ByteSize(128 << 20),
        "16 × max_request_size"
    );
    let text = errors_of(
        "receivers:\n  otlp:\n    grpc: { endpoint: 127.0.0.1:0, max_decoded_size: 100MiB }\n    http: { endpoint: 127.0.0.1:0, max_request_size: 64MiB }\nmemory_limit: { soft: 100MiB, hard: 120MiB }\n",
    );
    assert!(
        text.contains("receivers.otlp.grpc: a request at max_request_size (8MiB) and max_decoded_size (100MiB) would not fit in memory_limit.budget (50MiB, half of memory_limit.soft)"),
        "{text}"
    );
    assert!(
        text.contains("receivers.otlp.http: max_request_size (64MiB) leaves no room in memory_limit.budget (50MiB, half of memory_limit.soft) to decode a request"),
        "{text}"
    );
    let text = errors_of("memory_limit: { budget: 300MiB }\n");
    assert!(
        text.contains("memory_limit.budget: 300MiB is above memory_limit.soft (256MiB)"),
        "{text}"
    );
}

#[test]
fn a_line_break_in_a_header_value_is_refused_without_showing_the_value() {
    let text = errors_of(
        "exporters:\n  tempo:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    headers:\n      authorization: \"Bearer s3cr3t\\r\\nx-injected: 1\"\n",
    );
    assert!(
        text.contains(
            "exporters.tempo.headers.authorization: the value holds a line break (CR or LF)"
        ),
        "{text}"
    );
    assert!(
        !text.contains("s3cr3t"),
        "the value stays out of the message: {text}"
    );
}

#[test]
fn a_yaml_error_on_a_line_holding_a_secret_names_the_place_but_not_the_value() {
    // A misspelt key under auth.basic: the error names the line, column and key.
    let text = errors_of(
        "exporters:\n  g:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    auth:\n      basic: { username: inst, pasword: hunter2-typo }\n",
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("agent.yaml:6:32: exporters.g.auth.basic.pasword: unknown field `pasword`"),
        "{text}"
    );
    assert!(
        text.contains("basic: { username: ***, pasword: *** }"),
        "{text}"
    );
    // Broken YAML: an unterminated quote after a token.
    let text = errors_of(
        "exporters:\n  g:\n    protocol: grpc\n    headers:\n      authorization: \"Bearer hunter2-quote\n",
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("agent.yaml:"), "{text}");
    // A header value of the wrong type under a secret key: what is written is not repeated.
    let text = errors_of(
        "exporters:\n  g:\n    protocol: grpc\n    endpoint: https://tempo.example.net:443\n    headers: { x-key: [hunter2-list] }\n",
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("exporters.g.headers.x-key"), "{text}");
}

#[test]
fn credentials_in_the_url_become_a_basic_header_and_leave_the_url() {
    let config = load_text(
        "exporters:\n  g:\n    protocol: http/protobuf\n    endpoint: https://inst:hunter2@otlp.example.net/otlp?api_key=k3y\n",
        &no_env,
    )
    .expect("valid");
    let exporter = &config.exporters["g"];
    assert_eq!(
        exporter.request_url(OtlpSignal::Traces).as_deref(),
        Some("https://otlp.example.net/otlp/v1/traces?api_key=k3y")
    );
    let headers = exporter.request_headers();
    assert_eq!(headers.len(), 1);
    assert_eq!(headers[0].0, "authorization");
    assert_eq!(
        headers[0].1.expose(),
        "Basic aW5zdDpodW50ZXIy",
        "inst:hunter2"
    );
    let shown = config.masked().to_yaml();
    assert!(
        shown.contains("https://inst:***@otlp.example.net/otlp/v1/traces?api_key=***"),
        "{shown}"
    );
    assert!(
        !shown.contains("hunter2") && !shown.contains("k3y"),
        "{shown}"
    );
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("k3y"),
        "{debug}"
    );
    assert!(
        debug.contains("https://inst:***@otlp.example.net"),
        "{debug}"
    );
}

#[test]
fn receiver_tls_and_auth_need_their_files_and_take_no_other_key() {
    let missing_key = errors_of(
        "receivers:\n  otlp:\n    grpc:\n      endpoint: 127.0.0.1:4317\n      tls: { cert_file: /tls/server.crt }\n",
    );
    assert!(missing_key.contains("key_file"), "{missing_key}");
    let unknown = errors_of(
        "receivers:\n  otlp:\n    http:\n      endpoint: 127.0.0.1:4318\n      auth: { token_file: /run/token }\n",
    );
    assert!(
        unknown.contains("unknown field `token_file`, expected one of bearer_token_file"),
        "{unknown}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let unreadable = dir.path().join("absent-token");
    let errors = errors_of(&format!(
        "receivers:\n  otlp:\n    http:\n      endpoint: 127.0.0.1:4318\n      auth: {{ bearer_token_file: {} }}\n      tls: {{ cert_file: {}, key_file: {} }}\n",
        unreadable.display(),
        dir.path().join("absent.crt").display(),
        dir.path().join("absent.key").display(),
    ));
    assert!(
        errors.contains("receivers.otlp.http.auth.bearer_token_file: cannot read"),
        "{errors}"
    );
    assert!(
        errors.contains("receivers.otlp.http.tls.cert_file: cannot read"),
        "{errors}"
    );
}

#[test]
fn url_credentials_with_another_authorization_are_refused() {
    let text = errors_of(
        "exporters:\n  g:\n    protocol: grpc\n    endpoint: https://inst:hunter2@tempo.example.net:443\n    auth: { basic: { username: inst, password: other } }\n",
    );
    assert!(
        text.contains("exporters.g.endpoint: the URL holds user:password@"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn a_bad_url_is_reported_masked() {
    for url in [
        "https://inst:hunter2@tempo example.net",
        "ftp://inst:hunter2@tempo.example.net?token=hunter2",
        "https://h:4317/ bad?api_key=hunter2",
    ] {
        let text = errors_of(&format!(
            "exporters:\n  g:\n    protocol: grpc\n    endpoint: \"{url}\"\n"
        ));
        assert!(text.contains("exporters.g.endpoint"), "{text}");
        assert!(!text.contains("hunter2"), "{url}: {text}");
    }
}

#[test]
fn a_bearer_token_is_read_trimmed_and_never_shown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    let auth = ReceiverAuthConfig {
        bearer_token_file: file.clone(),
    };
    std::fs::write(&file, "\n  t0ken-value \r\n").expect("write");
    let token = auth.read_token().expect("a token");
    assert_eq!(token.expose(), "t0ken-value");
    assert_eq!(format!("{token:?}"), "***");
    std::fs::write(&file, "two words").expect("write");
    let error = auth.read_token().expect_err("a space");
    assert_eq!(error.field, "bearer_token_file");
    assert!(!error.message.contains("two"), "{error}");
    std::fs::write(&file, "\n").expect("write");
    assert!(auth.read_token().is_err(), "empty");
}

#[test]
fn a_key_read_from_a_variable_is_shown_as_its_reference() {
    // Found by the config_yaml fuzz target: the key path showed the variable's value.
    let env = |name: &str| (name == "DAENA_TOKEN").then(|| "tok-CANARY-5e8a1b9c".to_owned());
    let text = load_text("exporters:\n  \"${DAENA_TOKEN}\": 1\n", &env)
        .expect_err("must be refused")
        .to_string();
    assert!(!text.contains("CANARY"), "{text}");
    assert!(text.contains("exporters.${DAENA_TOKEN}:"), "{text}");
}

#[test]
fn only_a_console_chosen_for_want_of_an_upstream_warns() {
    let fallback = Config::load(None, &no_env).expect("defaults");
    assert_eq!(
        fallback.console_fallback_warning(),
        Some("spans go to the console: set OTEL_EXPORTER_OTLP_ENDPOINT or exporters:")
    );
    let chosen = load_text("exporters:\n  out: { protocol: console }\n", &no_env).expect("valid");
    assert_eq!(chosen.console_fallback_warning(), None);
    let upstream = Config::load(None, &|name: &str| {
        (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://tempo:4317".to_owned())
    })
    .expect("valid");
    assert_eq!(upstream.console_fallback_warning(), None);
}

#[test]
fn the_shown_config_reads_easily_and_keeps_only_what_is_not_default() {
    let yaml = "exporters:\n  t:\n    protocol: grpc\n    endpoint: http://tempo:4317\n    headers: { x-scope-orgid: daena, x-tenant: \"${TENANT}\", authorization: \"Bearer s3cr3t-value\" }\n  g:\n    protocol: http/protobuf\n    endpoint: https://otlp.example.net/otlp\ntelemetry: { endpoint: null }\nprocessors:\n  sampling:\n    mode: tail\n    policies:\n      - { name: errors, type: errors }\n";
    let env = |name: &str| (name == "TENANT").then(|| "acme-corp".to_owned());
    let shown = load_text(yaml, &env).expect("valid").masked().to_yaml();
    assert!(shown.contains("x-scope-orgid: daena"), "{shown}");
    assert!(
        shown.contains("x-tenant: \"***\""),
        "from ${{TENANT}}: {shown}"
    );
    assert!(shown.contains("authorization: \"***\""), "{shown}");
    assert!(
        !shown.contains("acme-corp") && !shown.contains("s3cr3t"),
        "{shown}"
    );
    assert!(
        shown.contains("endpoint: https://otlp.example.net/otlp/v1/traces"),
        "{shown}"
    );
    assert!(
        shown.contains("  endpoint: null"),
        "telemetry off is not the default: {shown}"
    );
    for off in [
        "key: null",
        "threshold: 0s",
        "values: []",
        "sampling: null",
        "ratio: null",
    ] {
        assert!(!shown.contains(off), "{off} in:\n{shown}");
    }
}

#[test]
fn an_exporter_that_skips_certificate_checks_is_warned_of_by_name() {
    let yaml = "exporters:\n  tempo: { protocol: grpc, endpoint: https://tempo:4317, tls: { insecure_skip_verify: true } }\n  jaeger: { protocol: grpc, endpoint: https://jaeger:4317 }\n";
    let config =
        crate::config::yaml::parse(yaml, Path::new("agent.yaml"), &no_env).expect("parses");
    let warnings = config.insecure_tls_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("exporters.tempo.tls.insecure_skip_verify is on"),
        "{warnings:?}"
    );
}

#[test]
fn a_loadbalancing_exporter_reads_its_resolver_key_and_backend_settings() {
    let config = load_text(
        "exporters:\n  gateways:\n    protocol: loadbalancing\n    resolver:\n      static: [gw-0:4317, http://gw-1:4317, https://gw-2:4317]\n    routing_key: council.round_id\n    exporter:\n      protocol: grpc\n      headers: { authorization: Bearer s3cr3t, x-scope-orgid: daena }\n      queue: { max_spans: 1000 }\n",
        &no_env,
    )
    .expect("valid");
    let gateways = &config.exporters["gateways"];
    assert_eq!(gateways.protocol, ExporterProtocol::Loadbalancing);
    assert_eq!(gateways.routing_key, Some(RoutingKey::CouncilRoundId));
    let resolver = gateways.resolver.as_ref().expect("resolver");
    assert_eq!(
        resolver.static_urls(),
        ["http://gw-0:4317", "http://gw-1:4317", "https://gw-2:4317"]
    );
    let inner = gateways.exporter.as_ref().expect("exporter");
    assert_eq!(inner.protocol, ExporterProtocol::Grpc);
    assert_eq!(inner.queue.max_spans, Some(1000));
    let dns = load_text(
        "exporters:\n  gateways:\n    protocol: loadbalancing\n    resolver: { dns: { hostname: gw.ns.svc } }\n    exporter: { protocol: http/protobuf }\n",
        &no_env,
    )
    .expect("valid");
    let dns = dns.exporters["gateways"]
        .resolver
        .clone()
        .expect("resolver");
    assert_eq!(
        dns.dns,
        Some(DnsResolverConfig {
            hostname: "gw.ns.svc".into(),
            port: 4317,
            interval: Duration::from_secs(5)
        })
    );
    // `check` shows the backends' settings with their secrets masked, as for any exporter.
    let shown = config.masked().to_yaml();
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(shown.contains("daena"), "{shown}");
    assert!(shown.contains("protocol: loadbalancing"), "{shown}");
}

#[test]
fn loadbalancing_errors_name_the_key_and_what_to_write() {
    let text = errors_of(
        "exporters:\n  a:\n    protocol: loadbalancing\n    endpoint: http://gw:4317\n  b:\n    protocol: loadbalancing\n    resolver: { static: [gw:4317], dns: { hostname: gw } }\n    exporter: { protocol: console }\n  c:\n    protocol: loadbalancing\n    resolver: { static: [] }\n    exporter: { protocol: grpc, endpoint: http://gw:4317 }\n  d:\n    protocol: loadbalancing\n    resolver: { dns: { hostname: gw, interval: 10ms } }\n    exporter: { protocol: loadbalancing }\n  e:\n    protocol: loadbalancing\n    resolver: { static: [\"ftp://gw:1\"] }\n    headers: { x-a: b }\n    exporter: { protocol: grpc, timeout: 0s }\n  f:\n    protocol: grpc\n    endpoint: http://gw:4317\n    routing_key: trace_id\n",
    );
    for expected in [
        "exporters.a.endpoint: does not apply to protocol loadbalancing: the backends come from resolver",
        "exporters.a.resolver: protocol loadbalancing needs a resolver, e.g.",
        "exporters.a.exporter: protocol loadbalancing needs exporter",
        "exporters.b.resolver: both static and dns are set; keep one",
        "exporters.b.exporter.protocol: console cannot send to a backend; use grpc or http/protobuf",
        "exporters.c.resolver.static: is empty; list at least one backend",
        "exporters.c.exporter.endpoint: is set per backend from resolver; remove it",
        "exporters.d.resolver.dns.interval: 10ms is too short; use 1s to 1h",
        "exporters.d.exporter.protocol: loadbalancing cannot send to a backend",
        "exporters.e.resolver.static[0]: \"ftp://gw:1\" must start with http:// or https://",
        "exporters.e.headers: does not apply to protocol loadbalancing",
        "exporters.e.exporter.timeout",
        "exporters.f.routing_key: is only for protocol: loadbalancing",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn each_pipeline_shard_gets_its_share_of_the_tail_sampler_limits() {
    let sampling = SamplingConfig {
        max_traces: 10,
        max_buffered_spans: 2,
        max_buffered_bytes: ByteSize(3000),
        decision_cache: 7,
        ..SamplingConfig::default()
    };
    let share = sampling.per_shard(3);
    assert_eq!(
        (
            share.max_traces,
            share.max_buffered_spans,
            share.max_buffered_bytes,
            share.decision_cache
        ),
        (3, 1, ByteSize(1000), 2),
        "divided, at least 1"
    );
    assert_eq!(sampling.per_shard(1), sampling);
}

#[test]
fn pipeline_shards_default_to_the_cores_with_tail_sampling_and_to_one_otherwise() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let shards = |yaml: &str| {
        load_text(yaml, &no_env)
            .unwrap_or_else(|e| panic!("{e}"))
            .pipeline
            .shards
    };
    assert_eq!(shards(""), Some(1), "a sidecar: one pipeline");
    assert_eq!(
        shards("processors: { sampling: { ratio: 0.1 } }\n"),
        Some(1),
        "head sampling needs no whole traces"
    );
    let tail = "processors:\n  sampling:\n    mode: tail\n    policies: [{ name: errors, type: errors }]\n";
    assert_eq!(
        shards(tail),
        Some(cores.clamp(1, 64)),
        "a gateway: one per core"
    );
    assert_eq!(
        shards(&format!("{tail}pipeline: {{ shards: 3 }}\n")),
        Some(3),
        "a value given is kept"
    );
}

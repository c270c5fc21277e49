//! `Config::validate`: every problem in a parsed config, reported at once.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::secret::{endpoint_placeholder, is_placeholder, placeholder_key_message};
use super::units::format_duration;
use super::url::{mask_url, split_userinfo};
use super::{
    Config, ConfigError, ExporterConfig, ExporterProtocol, MemoryLimitConfig, OtlpSignal,
    PolicyKind, ProcessorsConfig, ReceiverEndpointConfig, SamplingConfig, SamplingMode, TlsConfig,
    bounds,
};

impl Config {
    /// Every problem in the config at once; empty when it is valid.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let receivers = [
            ("receivers.otlp.grpc", &self.receivers.otlp.grpc, "gRPC"),
            ("receivers.otlp.http", &self.receivers.otlp.http, "HTTP"),
        ];
        if receivers.iter().all(|(_, r, _)| r.is_none()) {
            errors.push(ConfigError::new(
                "receivers.otlp",
                "no receiver is enabled; add grpc: or http: (or remove receivers: for both)",
            ));
        }
        let mut listening = Vec::new();
        for (key, receiver, protocol) in receivers {
            let Some(receiver) = receiver else { continue };
            match parse_listen_addr(&receiver.endpoint) {
                Ok(addr) => listening.push((key, protocol, addr, &receiver.endpoint)),
                Err(message) => errors.push(ConfigError::new(format!("{key}.endpoint"), message)),
            }
            bounds::MAX_REQUEST_SIZE.check(
                &format!("{key}.max_request_size"),
                receiver.max_request_size,
                &mut errors,
            );
            receiver.validate_limits(key, &mut errors);
            receiver.validate_decode_limits(key, &self.memory_limit, &mut errors);
            receiver.validate_security(key, &mut errors);
        }
        if let [(_, _, a, _), (_, _, b, _)] = listening[..]
            && a == b
            && a.port() != 0
        {
            errors.push(ConfigError::new(
                "receivers.otlp.http.endpoint",
                format!("{a} is also the gRPC receiver's address; give each its own port"),
            ));
        }
        let batch = &self.batch;
        bounds::BATCH_MAX_SPANS.check("batch.max_spans", batch.max_spans, &mut errors);
        bounds::BATCH_MAX_BYTES.check("batch.max_bytes", batch.max_bytes, &mut errors);
        bounds::BATCH_TIMEOUT.check("batch.timeout", batch.timeout, &mut errors);
        bounds::MAX_PENDING_REQUESTS.check(
            "pipeline.max_pending_requests",
            self.pipeline.max_pending_requests,
            &mut errors,
        );
        if let Some(shards) = self.pipeline.shards {
            bounds::SHARDS.check("pipeline.shards", shards, &mut errors);
        }
        bounds::SHUTDOWN_TIMEOUT.check("shutdown_timeout", self.shutdown_timeout, &mut errors);
        if !["trace", "debug", "info", "warn", "error"].contains(&self.telemetry.log_level.as_str())
        {
            errors.push(ConfigError::new(
                "telemetry.log_level",
                format!(
                    "{:?} is not a level; use trace, debug, info, warn or error",
                    self.telemetry.log_level
                ),
            ));
        }
        if let Some(endpoint) = &self.telemetry.endpoint
            && let Err(message) = parse_listen_addr(endpoint)
        {
            errors.push(ConfigError::new("telemetry.endpoint", message));
        }
        self.processors.validate(&mut errors);
        let memory = &self.memory_limit;
        bounds::MEMORY_SOFT.check("memory_limit.soft", memory.soft, &mut errors);
        bounds::MEMORY_HARD.check("memory_limit.hard", memory.hard, &mut errors);
        if let Some(budget) = memory.budget {
            bounds::MEMORY_BUDGET.check("memory_limit.budget", budget, &mut errors);
            if budget.0 > memory.soft.0 {
                errors.push(ConfigError::new(
                    "memory_limit.budget",
                    format!(
                        "{budget} is above memory_limit.soft ({}): the resident-memory backstop would refuse first; keep the budget at most soft, e.g. half of it",
                        memory.soft
                    ),
                ));
            }
        }
        if memory.soft.0 >= memory.hard.0 {
            errors.push(ConfigError::new(
                "memory_limit",
                format!(
                    "soft ({}) must be below hard ({}), e.g. soft: 256MiB, hard: 320MiB",
                    memory.soft, memory.hard
                ),
            ));
        }
        for (name, exporter) in &self.exporters {
            validate_exporter(
                &format!("exporters.{name}"),
                exporter,
                &listening,
                &mut errors,
            );
        }
        self.validate_signals_export(&mut errors);
        errors
    }

    /// `processors.signals.export` names OTLP exporters, each once, with a metrics URL.
    fn validate_signals_export(&self, errors: &mut Vec<ConfigError>) {
        let signals = &self.processors.signals;
        bounds::SIGNALS_INTERVAL.check("processors.signals.interval", signals.interval, errors);
        if !signals.enabled && !signals.export.is_empty() {
            errors.push(ConfigError::new(
                "processors.signals.export",
                "the signals are off (enabled: false), so there is nothing to send; turn them on or remove export",
            ));
        }
        for (i, name) in signals.export.iter().enumerate() {
            let key = format!("processors.signals.export[{i}]");
            if signals.export[..i].contains(name) {
                errors.push(ConfigError::new(
                    key,
                    format!("{name:?} is listed twice; name each exporter once"),
                ));
                continue;
            }
            let Some(exporter) = self.exporters.get(name) else {
                let known: Vec<&str> = self.exporters.keys().map(String::as_str).collect();
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "{name:?} names no exporter; the exporters are: {}",
                        known.join(", ")
                    ),
                ));
                continue;
            };
            if exporter.protocol == ExporterProtocol::Loadbalancing {
                errors.push(ConfigError::new(
                    key,
                    format!("{name:?} is a loadbalancing exporter; the signals go to one OTLP exporter (grpc or http/protobuf), not spread over backends"),
                ));
            } else if exporter.protocol == ExporterProtocol::Console {
                errors.push(ConfigError::new(
                    key,
                    format!("{name:?} is a console exporter; the signals go to OTLP exporters only (grpc or http/protobuf), the console has them on /metrics"),
                ));
            } else if exporter.signal_url(OtlpSignal::Metrics).is_none() {
                errors.push(ConfigError::new(
                    key,
                    format!("exporters.{name} has only a traces_endpoint, which does not end in /v1/traces, so the metrics URL is unknown; set its endpoint (the metrics go to <endpoint>/v1/metrics)"),
                ));
            }
        }
    }
}

impl ReceiverEndpointConfig {
    /// Adds the problems of the `tls` and `auth` files of the receiver at `key`: each must
    /// load as the running receiver loads it (certificate and key parse and match, the
    /// token file holds a token).
    fn validate_security(&self, key: &str, errors: &mut Vec<ConfigError>) {
        if let Some(tls) = &self.tls
            && let Err(e) = tls.load()
        {
            errors.push(ConfigError::new(
                format!("{key}.tls.{}", e.field),
                e.message,
            ));
        }
        if let Some(auth) = &self.auth
            && let Err(e) = auth.read_token()
        {
            errors.push(ConfigError::new(
                format!("{key}.auth.{}", e.field),
                e.message,
            ));
        }
    }

    /// Adds the problems of the per-request limits of the receiver at `key`, whose
    /// requests are admitted against `memory`'s budget.
    fn validate_decode_limits(
        &self,
        key: &str,
        memory: &MemoryLimitConfig,
        errors: &mut Vec<ConfigError>,
    ) {
        bounds::MAX_SPANS_PER_REQUEST.check(
            &format!("{key}.max_spans_per_request"),
            self.max_spans_per_request,
            errors,
        );
        bounds::MAX_ATTRIBUTES_PER_ITEM.check(
            &format!("{key}.max_attributes_per_item"),
            self.max_attributes_per_item,
            errors,
        );
        if let Some(size) = self.max_decoded_size {
            bounds::MAX_DECODED_SIZE.check(&format!("{key}.max_decoded_size"), size, errors);
        }
        let budget = memory.budget();
        let budget_text = match memory.budget {
            Some(_) => format!("memory_limit.budget ({budget})"),
            None => format!("memory_limit.budget ({budget}, half of memory_limit.soft)"),
        };
        let decoded = self.max_decoded_size(budget);
        if decoded.0 == 0 {
            errors.push(ConfigError::new(
                key,
                format!(
                    "max_request_size ({}) leaves no room in {budget_text} to decode a request; raise memory_limit.budget (or soft) or lower max_request_size",
                    self.max_request_size
                ),
            ));
        } else if self.max_request_size.0.saturating_add(decoded.0) > budget.0 {
            errors.push(ConfigError::new(
                key,
                format!(
                    "a request at max_request_size ({}) and max_decoded_size ({decoded}) would not fit in {budget_text}, so it could never be admitted; raise memory_limit.budget (or soft) or lower these",
                    self.max_request_size
                ),
            ));
        }
    }

    /// Adds the problems of the connection limits of the receiver at `key`.
    fn validate_limits(&self, key: &str, errors: &mut Vec<ConfigError>) {
        bounds::MAX_CONNECTIONS.check(
            &format!("{key}.max_connections"),
            self.max_connections,
            errors,
        );
        bounds::MAX_CONCURRENT_STREAMS.check(
            &format!("{key}.max_concurrent_streams"),
            self.max_concurrent_streams,
            errors,
        );
        for (bound, field, value) in [
            (
                bounds::HEADER_READ_TIMEOUT,
                "header_read_timeout",
                self.header_read_timeout,
            ),
            (
                bounds::KEEPALIVE_INTERVAL,
                "keepalive_interval",
                self.keepalive_interval,
            ),
            (
                bounds::KEEPALIVE_TIMEOUT,
                "keepalive_timeout",
                self.keepalive_timeout,
            ),
        ] {
            bound.check(&format!("{key}.{field}"), value, errors);
        }
        for (bound, field, value) in [
            (
                bounds::BODY_READ_TIMEOUT,
                "body_read_timeout",
                self.body_read_timeout,
            ),
            (bounds::IDLE_TIMEOUT, "idle_timeout", self.idle_timeout),
        ] {
            let Some(value) = value else { continue };
            if key.ends_with("grpc") {
                // A gRPC call's body is bounded by the client's deadline and its idle
                // connection by keepalive; the HTTP/1 timers have nothing to act on.
                errors.push(ConfigError::new(
                    format!("{key}.{field}"),
                    "applies to the HTTP receiver only; gRPC connections are bounded by keepalive_interval and keepalive_timeout. Remove it",
                ));
            } else {
                bound.check(&format!("{key}.{field}"), value, errors);
            }
        }
    }
}

/// Credentials still written as a guide's placeholders, by key; values are never shown.
fn placeholders(key: &str, exporter: &ExporterConfig, errors: &mut Vec<ConfigError>) {
    for (name, value) in &exporter.headers {
        if is_placeholder(value.expose()) {
            errors.push(ConfigError::new(
                format!("{key}.headers.{name}"),
                placeholder_key_message(),
            ));
        }
    }
    if let Some(basic) = exporter.auth.as_ref().and_then(|a| a.basic.as_ref()) {
        let password = basic.password.expose();
        if password.trim().is_empty() || is_placeholder(password) {
            errors.push(ConfigError::new(
                format!("{key}.auth.basic.password"),
                "is empty or still a placeholder (e.g. replace-me); set the real token, e.g. password: ${GRAFANA_CLOUD_API_TOKEN}",
            ));
        }
        if is_placeholder(&basic.username) {
            errors.push(ConfigError::new(
                format!("{key}.auth.basic.username"),
                "is still a placeholder; set the real user (Grafana Cloud: the instance id)",
            ));
        }
    }
    for (field, url) in [
        ("endpoint", &exporter.endpoint),
        ("traces_endpoint", &exporter.traces_endpoint),
    ] {
        if let Some(message) = url.as_deref().and_then(endpoint_placeholder) {
            errors.push(ConfigError::new(format!("{key}.{field}"), message));
        }
    }
}

fn validate_exporter(
    key: &str,
    exporter: &ExporterConfig,
    receivers: &[(&str, &str, SocketAddr, &String)],
    errors: &mut Vec<ConfigError>,
) {
    // A line break in a header value would let it add headers of its own to every export
    // request; the value itself is never shown (it is usually a credential).
    for (name, value) in &exporter.headers {
        if value.expose().contains(['\r', '\n']) {
            errors.push(ConfigError::new(
                format!("{key}.headers.{name}"),
                "the value holds a line break (CR or LF), which would inject headers into every export request; remove it",
            ));
        }
    }
    if exporter.protocol == ExporterProtocol::Loadbalancing {
        validate_loadbalancing(key, exporter, receivers, errors);
        return;
    }
    for (field, set) in [
        ("resolver", exporter.resolver.is_some()),
        ("routing_key", exporter.routing_key.is_some()),
        ("reroute_after", exporter.reroute_after.is_some()),
        ("exporter", exporter.exporter.is_some()),
    ] {
        if set {
            errors.push(ConfigError::new(
                format!("{key}.{field}"),
                "is only for protocol: loadbalancing; remove it or set protocol: loadbalancing",
            ));
        }
    }
    placeholders(key, exporter, errors);
    let endpoint_key = format!("{key}.endpoint");
    let given = [
        ("endpoint", exporter.endpoint.is_some()),
        ("traces_endpoint", exporter.traces_endpoint.is_some()),
    ];
    match (exporter.protocol, given) {
        (ExporterProtocol::Console, [(_, false), (_, false)]) => {}
        (ExporterProtocol::Console, _) => errors.push(ConfigError::new(
            &endpoint_key,
            "the console exporter prints to stdout; remove the endpoint or choose protocol grpc or http/protobuf",
        )),
        (ExporterProtocol::Grpc, [_, (_, true)]) => errors.push(ConfigError::new(
            format!("{key}.traces_endpoint"),
            "is for http/protobuf only; a grpc exporter takes endpoint",
        )),
        (_, [(_, true), (_, true)]) => errors.push(ConfigError::new(
            &endpoint_key,
            "endpoint and traces_endpoint are both set; keep one (traces_endpoint is used as-is)",
        )),
        (protocol, [(_, false), (_, false)]) => errors.push(ConfigError::new(
            &endpoint_key,
            format!("protocol {protocol} needs an endpoint, e.g. https://tempo.example.net:443"),
        )),
        (_, [(_, with_endpoint), _]) => {
            let (url_key, url) = if with_endpoint {
                (endpoint_key, exporter.endpoint.clone().unwrap_or_default())
            } else {
                (format!("{key}.traces_endpoint"), exporter.traces_endpoint.clone().unwrap_or_default())
            };
            match parse_url(&url) {
                Err(message) => errors.push(ConfigError::new(&url_key, message)),
                Ok(parsed) => {
                    if let Some(message) = self_loop(&parsed, receivers, exporter.origin.is_some()) {
                        errors.push(ConfigError::new(&url_key, format!("{} {message}", mask_url(&url))));
                    }
                    if exporter.tls != TlsConfig::default() && !parsed.https {
                        errors.push(ConfigError::new(format!("{key}.tls"), "tls applies only to https:// endpoints; use https:// or remove tls"));
                    }
                }
            }
        }
    }
    for (name, value) in &exporter.headers {
        let header_key = format!("{key}.headers.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(ConfigError::new(
                &header_key,
                "is not a valid header name (letters, digits and -)",
            ));
        }
        if http::HeaderValue::from_str(value.expose()).is_err() {
            // The value may be a secret: say what is wrong, never what it is.
            errors.push(ConfigError::new(&header_key, "the value holds characters a header cannot carry (line breaks or control characters)"));
        }
        if name.eq_ignore_ascii_case("authorization")
            && exporter.auth.as_ref().is_some_and(|a| a.basic.is_some())
        {
            errors.push(ConfigError::new(
                &header_key,
                "both an authorization header and auth.basic are set; keep one",
            ));
        }
    }
    let url_credentials = exporter
        .export_url()
        .is_some_and(|url| split_userinfo(&url).1.is_some());
    let header_auth = exporter
        .headers
        .keys()
        .any(|name| name.eq_ignore_ascii_case("authorization"));
    let basic_auth = exporter.auth.as_ref().is_some_and(|a| a.basic.is_some());
    if url_credentials && (header_auth || basic_auth) {
        let field = if exporter.traces_endpoint.is_some() {
            "traces_endpoint"
        } else {
            "endpoint"
        };
        errors.push(ConfigError::new(
            format!("{key}.{field}"),
            "the URL holds user:password@ (sent as an Authorization: Basic header) and an authorization header or auth.basic is set too; keep one",
        ));
    }
    if exporter.auth.as_ref().is_some_and(|a| a.basic.is_none()) {
        errors.push(ConfigError::new(
            format!("{key}.auth"),
            "is empty; add basic: { username, password } or remove auth",
        ));
    }
    let tls = &exporter.tls;
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        errors.push(ConfigError::new(
            format!("{key}.tls"),
            "cert_file and key_file go together for mutual TLS; set both or neither",
        ));
    }
    for (field, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(file) = file
            && let Err(e) = std::fs::File::open(file)
        {
            errors.push(ConfigError::new(
                format!("{key}.tls.{field}"),
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    }
    bounds::EXPORT_TIMEOUT.check(&format!("{key}.timeout"), exporter.timeout, errors);
    let retry = &exporter.retry;
    for (bound, field, value) in [
        (
            bounds::RETRY_INITIAL_INTERVAL,
            "initial_interval",
            retry.initial_interval,
        ),
        (
            bounds::RETRY_MAX_INTERVAL,
            "max_interval",
            retry.max_interval,
        ),
        (bounds::RETRY_MAX_ELAPSED, "max_elapsed", retry.max_elapsed),
    ] {
        bound.check(&format!("{key}.retry.{field}"), value, errors);
    }
    if retry.initial_interval > retry.max_interval {
        errors.push(ConfigError::new(
            format!("{key}.retry.initial_interval"),
            format!(
                "{} must not be longer than {key}.retry.max_interval ({})",
                format_duration(retry.initial_interval),
                format_duration(retry.max_interval)
            ),
        ));
    }
    if !(retry.multiplier >= 1.0 && retry.multiplier.is_finite()) {
        errors.push(ConfigError::new(
            format!("{key}.retry.multiplier"),
            format!("must be at least 1 (got {})", retry.multiplier),
        ));
    }
    let queue = &exporter.queue;
    if let Some(spans) = queue.max_spans {
        bounds::QUEUE_MAX_SPANS.check(&format!("{key}.queue.max_spans"), spans, errors);
    }
    if let Some(bytes) = queue.max_bytes {
        let bound = if queue.persistent {
            bounds::PERSISTENT_QUEUE_MAX_BYTES
        } else {
            bounds::QUEUE_MAX_BYTES
        };
        bound.check(&format!("{key}.queue.max_bytes"), bytes, errors);
    }
    bounds::QUEUE_WORKERS.check(&format!("{key}.queue.workers"), queue.workers, errors);
    match (&queue.dir, queue.persistent) {
        (None, true) => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            "is required with persistent: true; set it to a directory on a volume that outlives the agent's container",
        )),
        (Some(_), false) => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            "only applies to a persistent queue; add persistent: true or remove dir",
        )),
        (Some(dir), true) if dir.exists() && !dir.is_dir() => errors.push(ConfigError::new(
            format!("{key}.queue.dir"),
            format!("{} is not a directory", dir.display()),
        )),
        _ => {}
    }
}

/// A `protocol: loadbalancing` exporter: a resolver with exactly one of `static` or `dns`,
/// an inner `exporter` that is OTLP and has no endpoint (the backends are its endpoints),
/// and none of the per-backend settings on the outer one, where they would do nothing.
fn validate_loadbalancing(
    key: &str,
    exporter: &ExporterConfig,
    receivers: &[(&str, &str, SocketAddr, &String)],
    errors: &mut Vec<ConfigError>,
) {
    let outer_only = [
        ("endpoint", exporter.endpoint.is_some()),
        ("traces_endpoint", exporter.traces_endpoint.is_some()),
        ("headers", !exporter.headers.is_empty()),
        ("auth", exporter.auth.is_some()),
        ("tls", exporter.tls != TlsConfig::default()),
    ];
    for (field, set) in outer_only {
        if set {
            let hint = if field.ends_with("endpoint") {
                "the backends come from resolver; list them there, e.g. resolver: { static: [gateway-0:4317] }"
            } else {
                "each backend's exporter sends the requests; move it under exporter"
            };
            errors.push(ConfigError::new(
                format!("{key}.{field}"),
                format!("does not apply to protocol loadbalancing: {hint}"),
            ));
        }
    }
    if exporter.queue.persistent {
        errors.push(ConfigError::new(
            format!("{key}.queue.persistent"),
            "the loadbalancing exporter's own queue is in memory; set persistent: true under exporter.queue, so each backend keeps its own queue on disk",
        ));
    }
    bounds::QUEUE_WORKERS.check(
        &format!("{key}.queue.workers"),
        exporter.queue.workers,
        errors,
    );
    let mut sample_url = None;
    match &exporter.resolver {
        None => errors.push(ConfigError::new(
            format!("{key}.resolver"),
            "protocol loadbalancing needs a resolver, e.g. resolver: { static: [gateway-0:4317, gateway-1:4317] } or resolver: { dns: { hostname: gateway-headless.ns.svc, port: 4317 } }",
        )),
        Some(resolver) => match (&resolver.static_backends, &resolver.dns) {
            (Some(_), Some(_)) => errors.push(ConfigError::new(
                format!("{key}.resolver"),
                "both static and dns are set; keep one",
            )),
            (None, None) => errors.push(ConfigError::new(
                format!("{key}.resolver"),
                "is empty; add static: [host:port, ...] or dns: { hostname: ..., port: 4317 }",
            )),
            (Some(entries), None) if entries.is_empty() => errors.push(ConfigError::new(
                format!("{key}.resolver.static"),
                "is empty; list at least one backend, e.g. [gateway-0:4317]",
            )),
            (Some(_), None) => {
                for (i, url) in resolver.static_urls().iter().enumerate() {
                    let entry_key = format!("{key}.resolver.static[{i}]");
                    match parse_url(url) {
                        Err(message) => errors.push(ConfigError::new(entry_key, message)),
                        Ok(parsed) => {
                            if let Some(message) = self_loop(&parsed, receivers, false) {
                                errors.push(ConfigError::new(
                                    entry_key,
                                    format!("{} {message}", mask_url(url)),
                                ));
                            }
                            sample_url.get_or_insert_with(|| url.clone());
                        }
                    }
                }
            }
            (None, Some(dns)) => {
                if dns.hostname.trim().is_empty() {
                    errors.push(ConfigError::new(
                        format!("{key}.resolver.dns.hostname"),
                        "is empty; set the name whose addresses are the backends, e.g. gateway-headless.observability.svc.cluster.local",
                    ));
                }
                if dns.port == 0 {
                    errors.push(ConfigError::new(
                        format!("{key}.resolver.dns.port"),
                        "must be a port from 1 to 65535, e.g. 4317",
                    ));
                }
                bounds::DNS_RESOLVER_INTERVAL.check(
                    &format!("{key}.resolver.dns.interval"),
                    dns.interval,
                    errors,
                );
            }
        },
    }
    if let Some(grace) = exporter.reroute_after {
        bounds::REROUTE_AFTER.check(&format!("{key}.reroute_after"), grace, errors);
    }
    let inner_key = format!("{key}.exporter");
    let Some(inner) = &exporter.exporter else {
        errors.push(ConfigError::new(
            inner_key,
            "protocol loadbalancing needs exporter: the settings of each backend's exporter, without an endpoint, e.g. exporter: { protocol: grpc }",
        ));
        return;
    };
    if matches!(
        inner.protocol,
        ExporterProtocol::Loadbalancing | ExporterProtocol::Console
    ) {
        errors.push(ConfigError::new(
            format!("{inner_key}.protocol"),
            format!(
                "{} cannot send to a backend; use grpc or http/protobuf",
                inner.protocol
            ),
        ));
        return;
    }
    let mut inner_endpoint_set = false;
    for (field, set) in [
        ("endpoint", inner.endpoint.is_some()),
        ("traces_endpoint", inner.traces_endpoint.is_some()),
    ] {
        if set {
            inner_endpoint_set = true;
            errors.push(ConfigError::new(
                format!("{inner_key}.{field}"),
                "is set per backend from resolver; remove it",
            ));
        }
    }
    if inner_endpoint_set {
        return;
    }
    // The rest of the inner settings are checked as a backend's exporter will use them.
    let mut backend = (**inner).clone();
    backend.endpoint = Some(sample_url.unwrap_or_else(|| {
        let scheme = if inner.tls == TlsConfig::default() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://backend:4317")
    }));
    validate_exporter(&inner_key, &backend, receivers, errors);
}

/// The parts of an exporter URL validation needs.
struct ExportUrl {
    https: bool,
    host: String,
    port: u16,
}

/// Parses an exporter URL; messages show it masked, as it may hold credentials.
fn parse_url(url: &str) -> Result<ExportUrl, String> {
    let endpoint = mask_url(url);
    let uri: http::Uri = url.parse().map_err(|e| {
        format!("{endpoint:?} is not a URL ({e}); write e.g. https://tempo.example.net:443")
    })?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{endpoint:?} must start with http:// or https://")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{endpoint:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(ExportUrl { https, host, port })
}

/// Why an exporter URL points back at one of this agent's receivers, if it does.
fn self_loop(
    url: &ExportUrl,
    receivers: &[(&str, &str, SocketAddr, &String)],
    from_env: bool,
) -> Option<String> {
    let local = |host: &str| {
        host == "localhost"
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
    };
    receivers.iter().find_map(|(key, protocol, addr, endpoint)| {
        let same_host = local(&url.host) || addr.ip().to_string() == url.host;
        (addr.port() != 0 && addr.port() == url.port && same_host).then(|| {
            let hint = if from_env {
                "; if it came from OTEL_EXPORTER_OTLP_ENDPOINT, unset that variable in the agent's environment (it is meant for the Daena service)"
            } else {
                ""
            };
            format!(
                "is this agent's own {protocol} receiver ({key}.endpoint = {endpoint}); a sidecar forwarding to itself loops forever. Point the exporter at your backend{hint}"
            )
        })
    })
}

/// Parses a listen endpoint: `127.0.0.1:4317`, `0.0.0.0:4318`, `[::1]:0` or `localhost:4317`.
pub fn parse_listen_addr(endpoint: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let invalid = || {
        format!(
            "{endpoint:?} is not host:port; write e.g. 127.0.0.1:4317 (or 0.0.0.0:4317 in a container)"
        )
    };
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(invalid)?;
    port.parse::<u16>().map_err(|_| invalid())?;
    if host != "localhost" {
        return Err(invalid());
    }
    // Resolving "localhost" needs no network; prefer IPv4 as most clients do.
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs().map_err(|_| invalid())?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(invalid)
}

impl ProcessorsConfig {
    /// Adds every problem of the section to `errors`.
    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let daena = &self.daena;
        for (key, value) in daena
            .resource_attributes
            .iter()
            .chain(&daena.resource_from_env)
        {
            if key.trim().is_empty() {
                errors.push(ConfigError::new(
                    "processors.daena",
                    format!(
                        "a resource attribute has an empty key (value {value:?}); give it a name"
                    ),
                ));
            }
        }
        for (key, variable) in &daena.resource_from_env {
            if variable.trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("processors.daena.resource_from_env.{key}"),
                    "names no environment variable; write the variable's name, e.g. K8S_POD_NAME",
                ));
            }
        }
        if daena
            .service_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            errors.push(ConfigError::new(
                "processors.daena.service_name",
                "is empty; remove it (the default is daena) or give a name",
            ));
        }
        super::schema::validate(&daena.schema, errors);
        super::filter::validate(&self.filter, errors);
        let signals = &self.signals;
        if !(1..=100_000).contains(&signals.max_series_per_metric) {
            errors.push(ConfigError::new(
                "processors.signals.max_series_per_metric",
                format!(
                    "{} is out of range; use 1 to 100000",
                    signals.max_series_per_metric
                ),
            ));
        }
        if signals.round_window < Duration::from_secs(1)
            || signals.round_window > Duration::from_secs(86_400)
        {
            errors.push(ConfigError::new(
                "processors.signals.round_window",
                "is out of range; use 1s to 24h",
            ));
        }
        super::attributes::validate(&self.attributes, errors);
        for (i, key) in self.redact.keys.iter().enumerate() {
            if !key.chars().any(char::is_alphanumeric) {
                errors.push(ConfigError::new(
                    format!("processors.redact.keys[{i}]"),
                    format!("{key:?} has no word to match; write e.g. token or api_key"),
                ));
            }
        }
        for (i, pattern) in self.redact.patterns.iter().enumerate() {
            if pattern.trim().len() < 3 || pattern.trim().contains(char::is_whitespace) {
                errors.push(ConfigError::new(
                    format!("processors.redact.patterns[{i}]"),
                    format!("{pattern:?} is not a key prefix of 3 or more characters without spaces, e.g. dk_live_"),
                ));
            }
        }
        let limits = &self.limits;
        for (bound, value) in [
            (
                bounds::MAX_ATTRIBUTE_VALUE_LENGTH,
                limits.max_attribute_value_length,
            ),
            (bounds::MAX_ATTRIBUTES, limits.max_attributes),
            (bounds::MAX_EVENTS, limits.max_events),
            (bounds::MAX_LINKS, limits.max_links),
        ] {
            bound.check(bound.key, value, errors);
        }
        if let Some(sampling) = &self.sampling {
            sampling.validate(errors);
        }
    }
}

/// A ratio is valid in (0, 1] (the consistent-sampling spec's smallest is 2^-56).
fn valid_ratio(ratio: f64) -> bool {
    ratio > 0.0 && ratio <= 1.0
}

impl SamplingConfig {
    fn validate(&self, errors: &mut Vec<ConfigError>) {
        let key = "processors.sampling";
        match (self.mode, self.ratio) {
            (SamplingMode::Head, None) => errors.push(ConfigError::new(
                format!("{key}.ratio"),
                "head sampling needs a ratio, e.g. ratio: 0.1 (or mode: tail with policies)",
            )),
            (SamplingMode::Head, Some(_)) if !self.policies.is_empty() => errors.push(
                ConfigError::new(format!("{key}.policies"), "policies need mode: tail"),
            ),
            (SamplingMode::Tail, Some(_)) => errors.push(ConfigError::new(
                format!("{key}.ratio"),
                "in tail mode, give the ratio as a policy: { name: baseline, type: ratio, ratio: 0.05 }",
            )),
            (SamplingMode::Tail, None) if self.policies.is_empty() => errors.push(
                ConfigError::new(format!("{key}.policies"), "tail sampling needs at least one policy"),
            ),
            _ => {}
        }
        if let Some(ratio) = self.ratio.filter(|r| !valid_ratio(*r)) {
            errors.push(ConfigError::new(
                format!("{key}.ratio"),
                format!("must be above 0 and at most 1 (got {ratio})"),
            ));
        }
        for (bound, value) in [
            (bounds::MAX_TRACES, self.max_traces),
            (bounds::MAX_BUFFERED_SPANS, self.max_buffered_spans),
            (bounds::DECISION_CACHE, self.decision_cache),
        ] {
            bound.check(bound.key, value, errors);
        }
        bounds::MAX_BUFFERED_BYTES.check(
            bounds::MAX_BUFFERED_BYTES.key,
            self.max_buffered_bytes,
            errors,
        );
        bounds::DECISION_WAIT.check(bounds::DECISION_WAIT.key, self.decision_wait, errors);
        let mut names = std::collections::BTreeSet::new();
        for (i, policy) in self.policies.iter().enumerate() {
            let at = format!("{key}.policies[{i}]");
            bounds::LATENCY_THRESHOLD.check(&format!("{at}.threshold"), policy.threshold, errors);
            if policy.name.trim().is_empty() || !names.insert(policy.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("{at}.name"),
                    format!(
                        "{:?} must be a non-empty name no other policy has",
                        policy.name
                    ),
                ));
            }
            let missing = match policy.kind {
                PolicyKind::Errors => None,
                PolicyKind::Latency => policy.threshold.is_zero().then_some("threshold: 2s"),
                PolicyKind::Attribute => (policy.key.is_none()
                    || (policy.values.is_empty() == policy.at_least.is_none()))
                .then_some("key and either values: [commit] or at_least: 0.10"),
                PolicyKind::Ratio => (!policy.ratio.is_some_and(valid_ratio))
                    .then_some("ratio above 0 and at most 1, e.g. ratio: 0.05"),
                PolicyKind::RateLimit => (!policy.traces_per_second.is_some_and(|r| r > 0.0))
                    .then_some("traces_per_second above 0, e.g. traces_per_second: 50"),
            };
            if let Some(example) = missing {
                errors.push(ConfigError::new(
                    at,
                    format!("type {} needs {example}", policy.kind.name()),
                ));
            }
        }
    }
}

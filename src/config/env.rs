//! The exporter built from the standard `OTEL_EXPORTER_OTLP_*` variables when the YAML
//! names none, following the OpenTelemetry specification's exporter rules except for the
//! protocol chosen when none is set (see `infer_protocol`).

use std::path::PathBuf;
use std::time::Duration;

use super::secret::{endpoint_placeholder, is_placeholder, placeholder_message};
use super::{Compression, ConfigError, ExporterConfig, ExporterProtocol, bounds};

/// The `origin` of the console exporter used because no upstream is configured.
pub const CONSOLE_FALLBACK_ORIGIN: &str =
    "no exporter configured and OTEL_EXPORTER_OTLP_ENDPOINT unset";

/// Reads `OTEL_EXPORTER_OTLP_TRACES_<name>`, else `OTEL_EXPORTER_OTLP_<name>`; returns the variable used too.
fn variable(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|var| {
        env(&var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (var, v.trim().to_owned()))
    })
}

/// The exporter the environment describes: `("otlp", …)`, or `("console", …)` when no endpoint is set.
pub fn exporter_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, ExporterConfig), Vec<ConfigError>> {
    let Some((endpoint_var, endpoint)) = variable(env, "ENDPOINT") else {
        let mut console = ExporterConfig::new(ExporterProtocol::Console, None);
        console.origin = Some(CONSOLE_FALLBACK_ORIGIN.into());
        return Ok(("console".into(), console));
    };
    let mut errors = Vec::new();
    let insecure = variable(env, "INSECURE").is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"));
    // A gRPC endpoint may come without a scheme; then INSECURE decides.
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else if insecure {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    };
    let (protocol, why) = match variable(env, "PROTOCOL") {
        Some((var, p)) if p == "grpc" => (ExporterProtocol::Grpc, format!("from {var}")),
        Some((var, p)) if p == "http/protobuf" => {
            (ExporterProtocol::HttpProtobuf, format!("from {var}"))
        }
        Some((var, p)) => {
            let hint = if p == "http/json" {
                "; the agent exports http/protobuf or grpc"
            } else {
                ""
            };
            errors.push(ConfigError::new(
                var,
                format!("{p:?} is not supported; use grpc or http/protobuf{hint}"),
            ));
            (ExporterProtocol::HttpProtobuf, String::new())
        }
        None => infer_protocol(&endpoint),
    };
    if let Some(message) = endpoint_placeholder(&endpoint) {
        errors.push(ConfigError::new(&endpoint_var, message));
    }
    let mut exporter = ExporterConfig::new(protocol, None);
    // The signal-specific endpoint is used as-is; the generic one is a base URL.
    if endpoint_var.contains("_TRACES_") && protocol == ExporterProtocol::HttpProtobuf {
        exporter.traces_endpoint = Some(endpoint);
    } else {
        exporter.endpoint = Some(endpoint);
    }
    if let Some((var, headers)) = variable(env, "HEADERS") {
        match parse_headers(&headers) {
            Ok(parsed) => {
                for (name, value) in &parsed {
                    if is_placeholder(value) {
                        errors.push(ConfigError::new(&var, placeholder_message(name)));
                    }
                }
                exporter.headers = parsed.into_iter().map(|(k, v)| (k, v.into())).collect();
            }
            Err(message) => errors.push(ConfigError::new(var, message)),
        }
    }
    match variable(env, "COMPRESSION") {
        Some((_, c)) if c == "gzip" => exporter.compression = Compression::Gzip,
        Some((_, c)) if c == "none" => exporter.compression = Compression::None,
        Some((var, c)) => errors.push(ConfigError::new(
            var,
            format!("{c:?} is not supported; use gzip or none"),
        )),
        None => {}
    }
    if let Some((var, timeout)) = variable(env, "TIMEOUT") {
        let range = bounds::EXPORT_TIMEOUT;
        let (min, max) = (range.min.as_millis(), range.max.as_millis());
        match timeout.parse::<u64>() {
            // The specification: 0 means no limit; ours is the longest accepted.
            Ok(0) => exporter.timeout = range.max,
            Ok(ms) if (min..=max).contains(&u128::from(ms)) => {
                exporter.timeout = Duration::from_millis(ms);
            }
            Ok(ms) => errors.push(ConfigError::new(
                var,
                format!("{ms} is out of range; use {min} to {max} milliseconds, or 0 for {max}"),
            )),
            Err(_) => errors.push(ConfigError::new(
                var,
                format!("{timeout:?} is not a whole number of milliseconds (e.g. 10000)"),
            )),
        }
    }
    let https = exporter
        .export_url()
        .is_some_and(|u| u.starts_with("https://"));
    // TLS files matter only for https; a CA set for all signals must not break an http endpoint.
    if https {
        exporter.tls.ca_file = variable(env, "CERTIFICATE").map(|(_, v)| PathBuf::from(v));
        exporter.tls.cert_file = variable(env, "CLIENT_CERTIFICATE").map(|(_, v)| PathBuf::from(v));
        exporter.tls.key_file = variable(env, "CLIENT_KEY").map(|(_, v)| PathBuf::from(v));
    }
    exporter.origin = Some(format!("from {endpoint_var}; {why}"));
    if errors.is_empty() {
        Ok(("otlp".into(), exporter))
    } else {
        Err(errors)
    }
}

/// The protocol an endpoint means when no `PROTOCOL` variable says: the tracing guide's
/// lines (`http://localhost:4317`, `https://tempo-us-central1.grafana.net:443`) are all
/// OTLP/gRPC, as is the Python distro's default, so a bare `scheme://host[:port]` is gRPC;
/// port 4318 (OTLP/HTTP's) or a path (`/otlp`, `/v1/traces`) is http/protobuf. This departs
/// from the specification's default (http/protobuf) on purpose: the guide's lines work as written.
fn infer_protocol(endpoint: &str) -> (ExporterProtocol, String) {
    const UNSET: &str = "(OTEL_EXPORTER_OTLP_PROTOCOL unset)";
    // An unparsable URL is reported by validation; the guess does not matter then.
    let uri = endpoint.parse::<http::Uri>().ok();
    let port = uri.as_ref().and_then(http::Uri::port_u16);
    let path = uri.as_ref().map_or("", http::Uri::path);
    if port == Some(4318) {
        return (
            ExporterProtocol::HttpProtobuf,
            format!("http/protobuf inferred: port 4318 is OTLP/HTTP's {UNSET}"),
        );
    }
    if !path.is_empty() && path != "/" {
        return (
            ExporterProtocol::HttpProtobuf,
            format!("http/protobuf inferred: endpoint has the path {path} {UNSET}"),
        );
    }
    let port = match port {
        Some(port) => format!("port {port} is not 4318"),
        None => "it names no port".to_owned(),
    };
    (
        ExporterProtocol::Grpc,
        format!("grpc inferred: endpoint has no path and {port} {UNSET}"),
    )
}

/// Parses `k=v,k2=v2` (W3C baggage style): values percent-decoded, split at the first `=`,
/// so an unencoded `Authorization=Basic abc=` works too. Errors never show a value.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (index, entry) in text.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let (key, value) = entry.split_once('=').ok_or_else(|| {
            format!(
                "entry {} has no '='; write key=value,key2=value2",
                index + 1
            )
        })?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err(format!("entry {} has an empty header name", index + 1));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8 once percent-decoded"))?;
        headers.push((key, value.into_owned()));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<(String, ExporterConfig), Vec<ConfigError>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        exporter_from_env(&|name| map.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_console() {
        let (name, exporter) = from(&[]).expect("valid");
        assert_eq!(name, "console");
        assert_eq!(exporter.protocol, ExporterProtocol::Console);
    }

    #[test]
    fn the_generic_endpoint_is_a_base_url() {
        let (_, e) =
            from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]).expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::HttpProtobuf);
        assert_eq!(
            e.export_url().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let (_, e) = from(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318/mycollector/",
        )])
        .expect("valid");
        assert_eq!(
            e.export_url().as_deref(),
            Some("http://collector:4318/mycollector/v1/traces")
        );
        assert_eq!(
            e.origin.as_deref(),
            Some(
                "from OTEL_EXPORTER_OTLP_ENDPOINT; http/protobuf inferred: port 4318 is OTLP/HTTP's (OTEL_EXPORTER_OTLP_PROTOCOL unset)"
            )
        );
    }

    #[test]
    fn the_tracing_guides_lines_mean_grpc() {
        let guide = [
            ("http://localhost:4317", "port 4317 is not 4318"),
            (
                "https://tempo-us-central1.grafana.net:443",
                "port 443 is not 4318",
            ),
            ("https://tempo-us-central1.grafana.net", "it names no port"),
            ("http://collector:9999/", "port 9999 is not 4318"),
        ];
        for (endpoint, why) in guide {
            let (_, e) = from(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "Authorization=Basic%20MTIzNDU2OmdsY19yZWFs",
                ),
            ])
            .expect("valid");
            assert_eq!(e.protocol, ExporterProtocol::Grpc, "{endpoint}");
            assert_eq!(e.export_url().as_deref(), Some(endpoint), "used as given");
            assert_eq!(
                e.origin,
                Some(format!(
                    "from OTEL_EXPORTER_OTLP_ENDPOINT; grpc inferred: endpoint has no path and {why} (OTEL_EXPORTER_OTLP_PROTOCOL unset)"
                )),
            );
        }
    }

    #[test]
    fn port_4318_or_a_path_means_http_protobuf() {
        let cases = [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp-gateway-prod-us-central-0.grafana.net/otlp",
                "https://otlp-gateway-prod-us-central-0.grafana.net/otlp/v1/traces",
            ),
            (
                "http://collector:4317/v1/traces",
                "http://collector:4317/v1/traces",
            ),
        ];
        for (endpoint, url) in cases {
            let (_, e) = from(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]).expect("valid");
            assert_eq!(e.protocol, ExporterProtocol::HttpProtobuf, "{endpoint}");
            assert_eq!(e.export_url().as_deref(), Some(url));
        }
        let (_, e) = from(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otlp-gateway-prod-us-central-0.grafana.net/otlp",
        )])
        .expect("valid");
        assert!(
            e.origin
                .as_deref()
                .is_some_and(|o| o.contains("http/protobuf inferred: endpoint has the path /otlp")),
            "{:?}",
            e.origin
        );
    }

    #[test]
    fn the_traces_endpoint_follows_the_same_rule() {
        let (_, e) = from(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://tempo.example.net:443",
        )])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::Grpc);
        assert_eq!(
            e.export_url().as_deref(),
            Some("https://tempo.example.net:443")
        );
        let (_, e) = from(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318",
        )])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::HttpProtobuf);
        assert_eq!(
            e.export_url().as_deref(),
            Some("http://collector:4318"),
            "the signal-specific endpoint is used as-is"
        );
    }

    #[test]
    fn placeholder_credentials_are_refused_naming_the_variable_not_the_value() {
        let errors = from(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://tempo-us-central1.grafana.net:443",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic <base64-encoded-credentials>,X-Scope-OrgID=daena",
            ),
        ])
        .expect_err("a placeholder");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            format!("{}: {}", errors[0].path, errors[0].message),
            "OTEL_EXPORTER_OTLP_HEADERS: the value of authorization is still a placeholder from the tracing guide; set the real credentials (e.g. Basic base64(instance-id:token))"
        );
        let errors = from(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://123456:@otlp.example.net/otlp",
        )])
        .expect_err("an empty password");
        assert_eq!(errors[0].path, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        assert!(!errors[0].message.contains("123456"), "{errors:?}");
    }

    #[test]
    fn the_traces_endpoint_is_used_as_is_and_wins() {
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom",
            ),
        ])
        .expect("valid");
        assert_eq!(e.export_url().as_deref(), Some("http://traces:4318/custom"));
        assert!(
            e.origin
                .as_deref()
                .is_some_and(|o| o.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        );
    }

    #[test]
    fn an_explicit_protocol_wins_over_the_rule() {
        let (_, e) = from(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://tempo-us-central1.grafana.net:4317",
        )])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::Grpc);
        assert_eq!(
            e.export_url().as_deref(),
            Some("https://tempo-us-central1.grafana.net:4317")
        );
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::HttpProtobuf);
        assert_eq!(
            e.origin.as_deref(),
            Some("from OTEL_EXPORTER_OTLP_ENDPOINT; from OTEL_EXPORTER_OTLP_PROTOCOL")
        );
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::Grpc);
        let (_, e) = from(&[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://tempo.grafana.net:443",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::Grpc, "the _TRACES_ form wins");
    }

    #[test]
    fn headers_are_percent_decoded_and_unencoded_values_accepted() {
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic%20dXNlcjpwYXNz, X-Scope-OrgID = daena",
            ),
        ])
        .expect("valid");
        assert_eq!(e.headers["authorization"].expose(), "Basic dXNlcjpwYXNz");
        assert_eq!(e.headers["x-scope-orgid"].expose(), "daena");
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Basic abc="),
        ])
        .expect("valid");
        assert_eq!(e.headers["authorization"].expose(), "Basic abc=");
    }

    #[test]
    fn bad_header_text_names_the_entry_but_not_the_value() {
        let errors = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=ok,s3cretvalue"),
        ])
        .expect_err("invalid");
        assert_eq!(errors[0].path, "OTEL_EXPORTER_OTLP_HEADERS");
        assert!(errors[0].message.contains("entry 2"));
        assert!(!errors[0].message.contains("s3cret"));
    }

    #[test]
    fn timeout_compression_and_certificate() {
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ])
        .expect("valid");
        assert_eq!(e.timeout, Duration::from_millis(2500));
        let (_, unlimited) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ])
        .expect("valid");
        assert_eq!(
            unlimited.timeout,
            Duration::from_secs(3600),
            "0: the longest accepted"
        );
        let errors = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "99999999999999"),
        ])
        .expect_err("too long");
        assert_eq!(
            errors[0].message,
            "99999999999999 is out of range; use 1 to 3600000 milliseconds, or 0 for 3600000"
        );
        assert_eq!(e.compression, Compression::None);
        assert_eq!(e.tls.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        let errors = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otlp.example.net"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .expect_err("invalid");
        assert!(
            errors
                .iter()
                .any(|e| e.path == "OTEL_EXPORTER_OTLP_TIMEOUT"
                    && e.message.contains("milliseconds"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.path == "OTEL_EXPORTER_OTLP_PROTOCOL"
                    && e.message.contains("http/protobuf or grpc"))
        );
    }
}

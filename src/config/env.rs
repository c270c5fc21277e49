//! The exporter built from the standard `OTEL_EXPORTER_OTLP_*` variables when the YAML
//! names none, following the OpenTelemetry specification's exporter rules.

use std::path::PathBuf;
use std::time::Duration;

use super::{Compression, ConfigError, ExporterConfig, ExporterProtocol, bounds};

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
        console.origin =
            Some("no exporter configured and OTEL_EXPORTER_OTLP_ENDPOINT unset".into());
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
    let port = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.port_u16());
    let (protocol, why) = match variable(env, "PROTOCOL") {
        Some((_, p)) if p == "grpc" => (
            ExporterProtocol::Grpc,
            "from OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
        ),
        Some((_, p)) if p == "http/protobuf" => (
            ExporterProtocol::HttpProtobuf,
            "from OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
        ),
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
        None if port == Some(4317) => (
            ExporterProtocol::Grpc,
            "grpc inferred from port 4317 (OTEL_EXPORTER_OTLP_PROTOCOL unset)".to_owned(),
        ),
        None => (
            ExporterProtocol::HttpProtobuf,
            "http/protobuf, the specification's default (OTEL_EXPORTER_OTLP_PROTOCOL unset)"
                .to_owned(),
        ),
    };
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
        assert!(
            e.origin
                .as_deref()
                .is_some_and(|o| o.contains("specification's default"))
        );
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
    fn port_4317_means_grpc_unless_the_protocol_says_otherwise() {
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
        assert!(
            e.origin
                .as_deref()
                .is_some_and(|o| o.contains("inferred from port 4317"))
        );
        let (_, e) = from(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect("valid");
        assert_eq!(e.protocol, ExporterProtocol::HttpProtobuf);
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

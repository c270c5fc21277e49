//! `processors.filter`: the spans dropped before anything else runs (FastAPI's ASGI
//! event spans, health probes, and rules), and the value conditions its rules share with
//! `processors.attributes`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::yaml::Located;

/// `processors.filter`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// The INTERNAL `… http send` / `… http receive` spans FastAPI's instrumentation makes
    /// per request (they carry `asgi.event.type`).
    pub asgi_send_receive: KeepOrDrop,
    /// Routes whose SERVER spans are health probes, dropped with their local subtree.
    pub health_routes: Vec<String>,
    /// Each drops the spans matching all of its conditions.
    pub rules: Vec<Located<FilterRule>>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            asgi_send_receive: KeepOrDrop::Drop,
            health_routes: ["/health", "/healthz", "/readyz", "/livez", "/metrics"]
                .map(String::from)
                .to_vec(),
            rules: Vec::new(),
        }
    }
}

/// Whether a kind of span is kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepOrDrop {
    /// Kept.
    Keep,
    /// Dropped.
    Drop,
}

/// One filter rule: a span matching every condition given is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// The rule's name in metrics (`rule` label); its index when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The span name: exact, or a glob with `*` and `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The span kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<SpanKindName>,
    /// The span status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusName>,
    /// Span attributes, each matching its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, MatchValue>,
    /// Resource attributes, each matching its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, MatchValue>,
}

/// A span kind as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKindName {
    /// `SPAN_KIND_UNSPECIFIED`.
    Unspecified,
    /// `SPAN_KIND_INTERNAL`.
    Internal,
    /// `SPAN_KIND_SERVER`.
    Server,
    /// `SPAN_KIND_CLIENT`.
    Client,
    /// `SPAN_KIND_PRODUCER`.
    Producer,
    /// `SPAN_KIND_CONSUMER`.
    Consumer,
}

/// A span status code as written in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusName {
    /// `STATUS_CODE_UNSET` (or no status).
    Unset,
    /// `STATUS_CODE_OK`.
    Ok,
    /// `STATUS_CODE_ERROR`.
    Error,
}

/// What an attribute's value must be: a string (exact; a glob when it holds `*` or `?`;
/// a comparison such as `">= 500"`), a number (equal), or a boolean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    /// Equal to this boolean.
    Bool(bool),
    /// Equal to this number (an int or a double attribute).
    Int(i64),
    /// Equal to this number.
    Double(f64),
    /// A string condition.
    Text(String),
}

/// A numeric comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`.
    Less,
    /// `<=`.
    LessOrEqual,
    /// `>`.
    Greater,
    /// `>=`.
    GreaterOrEqual,
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
}

impl MatchValue {
    /// A string that starts with `<`, `>`, `=` or `!` is a comparison: its operator and
    /// number, or what is wrong with it.
    pub fn comparison(&self) -> Option<Result<(Comparison, f64), String>> {
        let Self::Text(text) = self else {
            return None;
        };
        let text = text.trim();
        if !text.starts_with(['<', '>', '=', '!']) {
            return None;
        }
        let operators = [
            ("<=", Comparison::LessOrEqual),
            (">=", Comparison::GreaterOrEqual),
            ("==", Comparison::Equal),
            ("!=", Comparison::NotEqual),
            ("<", Comparison::Less),
            (">", Comparison::Greater),
        ];
        let parsed = operators.iter().find_map(|(op, comparison)| {
            let number = text.strip_prefix(op)?.trim().parse::<f64>().ok()?;
            number.is_finite().then_some((*comparison, number))
        });
        Some(parsed.ok_or_else(|| {
            format!("{text:?} is not a comparison; write an operator (<, <=, >, >=, ==, !=) and a number, e.g. \">= 500\"")
        }))
    }
}

/// Every problem of `processors.filter`, each naming its rule and the rule's line.
pub fn validate(filter: &FilterConfig, errors: &mut Vec<ConfigError>) {
    for (i, route) in filter.health_routes.iter().enumerate() {
        if !route.starts_with('/') {
            errors.push(ConfigError::new(
                format!("processors.filter.health_routes[{i}]"),
                format!("{route:?} is not a route; write a path such as /healthz"),
            ));
        }
    }
    for (i, rule) in filter.rules.iter().enumerate() {
        let at = if rule.line > 0 {
            format!("processors.filter.rules[{i}] (line {})", rule.line)
        } else {
            format!("processors.filter.rules[{i}]")
        };
        let rule = &rule.value;
        let conditions = usize::from(rule.name.is_some())
            + usize::from(rule.kind.is_some())
            + usize::from(rule.status.is_some())
            + rule.attributes.len()
            + rule.resource.len();
        if conditions == 0 {
            errors.push(ConfigError::new(
                &at,
                "has no condition and would drop every span; give name, kind, status, attributes or resource",
            ));
        }
        if rule.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            errors.push(ConfigError::new(
                &at,
                "id is empty; name the rule or remove id",
            ));
        }
        validate_values("attributes", &rule.attributes, &at, errors);
        validate_values("resource", &rule.resource, &at, errors);
    }
}

/// Reports malformed comparisons and empty keys among `values`.
pub fn validate_values(
    what: &str,
    values: &BTreeMap<String, MatchValue>,
    at: &str,
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in values {
        if key.trim().is_empty() {
            errors.push(ConfigError::new(at, format!("{what} has an empty key")));
        }
        if let Some(Err(message)) = value.comparison() {
            errors.push(ConfigError::new(at, format!("{what}.{key}: {message}")));
        }
        if matches!(value, MatchValue::Double(d) if !d.is_finite()) {
            errors.push(ConfigError::new(
                at,
                format!("{what}.{key}: is not a finite number"),
            ));
        }
    }
}

//! The `processors` section: the Daena schema stage, redaction and limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The processor stages; they always run in the order daena → redact → limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// Normalises Daena attributes, derives `daena.component` and the semconv mirrors,
    /// and enriches the resource.
    pub daena: DaenaConfig,
    /// Masks secrets in attribute values.
    pub redact: RedactConfig,
    /// Caps attribute value length and the number of attributes, events and links.
    pub limits: LimitsConfig,
}

/// `processors.daena`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaenaConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// Adds `gen_ai.*` and `messaging.*` mirrors of the Daena attributes where absent.
    pub semconv_mirror: bool,
    /// `service.name` for resources without one (or with `unknown_service…`); `daena` when unset.
    pub service_name: Option<String>,
    /// Static resource attributes, e.g. `deployment.environment.name: production`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Resource attributes read from environment variables (the downward-API pattern):
    /// attribute → variable. A variable that is unset or empty adds nothing.
    pub resource_from_env: BTreeMap<String, String>,
    /// Replace resource attributes the service already set with the configured ones.
    #[serde(rename = "override")]
    pub override_existing: bool,
}

impl Default for DaenaConfig {
    fn default() -> Self {
        let from_env = [
            ("k8s.pod.name", "K8S_POD_NAME"),
            ("k8s.namespace.name", "K8S_NAMESPACE_NAME"),
            ("k8s.node.name", "K8S_NODE_NAME"),
            ("service.instance.id", "K8S_POD_UID"),
            ("host.name", "HOSTNAME"),
            ("deployment.environment.name", "DAENA_ENVIRONMENT"),
        ];
        Self {
            enabled: true,
            semconv_mirror: true,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            resource_from_env: from_env
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            override_existing: false,
        }
    }
}

/// `processors.redact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// Words of attribute keys whose values are replaced by `[REDACTED]`. A pattern
    /// matches whole words of the key (words split at `.`, `_`, `-`), ignoring case:
    /// `token` matches `x-auth-token` but not `gen_ai.usage.input_tokens`.
    pub keys: Vec<String>,
    /// `Authorization`-style `Bearer <token>` inside any string value.
    pub bearer_tokens: bool,
    /// `sk-…`-style API keys inside any string value.
    pub api_keys: bool,
    /// E-mail addresses inside prompt/response/completion text of `llm.*` and `gen_ai.*`.
    pub emails_in_llm_text: bool,
}

impl Default for RedactConfig {
    fn default() -> Self {
        let keys = [
            "authorization",
            "cookie",
            "password",
            "passwd",
            "secret",
            "token",
            "api_key",
            "apikey",
        ];
        Self {
            enabled: true,
            keys: keys.into_iter().map(str::to_owned).collect(),
            bearer_tokens: true,
            api_keys: true,
            emails_in_llm_text: true,
        }
    }
}

/// `processors.limits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// Longest string value in bytes; longer ones are cut at a character boundary and end
    /// with `…[truncated]`.
    pub max_attribute_value_length: usize,
    /// Attributes per span (and per event and link); the rest are dropped and counted in
    /// the span's `dropped_attributes_count`.
    pub max_attributes: usize,
    /// Events per span; the rest are dropped and counted in `dropped_events_count`.
    pub max_events: usize,
    /// Links per span; the rest are dropped and counted in `dropped_links_count`.
    pub max_links: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attribute_value_length: 4096,
            max_attributes: 128,
            max_events: 128,
            max_links: 128,
        }
    }
}

/// The shortest `max_attribute_value_length` accepted: room for the marker and some text.
pub const MIN_VALUE_LENGTH: usize = 32;

impl ProcessorsConfig {
    /// Adds every problem of the section to `errors`.
    pub(super) fn validate(&self, errors: &mut Vec<ConfigError>) {
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
        for (i, key) in self.redact.keys.iter().enumerate() {
            if key.split(['.', '_', '-']).all(str::is_empty) {
                errors.push(ConfigError::new(
                    format!("processors.redact.keys[{i}]"),
                    format!("{key:?} has no word to match; write e.g. token or api_key"),
                ));
            }
        }
        let limits = &self.limits;
        if limits.max_attribute_value_length < MIN_VALUE_LENGTH {
            errors.push(ConfigError::new(
                "processors.limits.max_attribute_value_length",
                format!(
                    "must be at least {MIN_VALUE_LENGTH} bytes (got {})",
                    limits.max_attribute_value_length
                ),
            ));
        }
        if limits.max_attributes == 0 {
            errors.push(ConfigError::new(
                "processors.limits.max_attributes",
                "must be at least 1",
            ));
        }
    }
}

//! The `processors` section: the Daena schema stage, redaction and limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::attributes::AttributesConfig;
use super::filter::FilterConfig;
use super::schema::SchemaRow;
use super::yaml::Located;
use super::{ByteSize, bounds, units};

/// The processor stages; they always run in the order filter → (head sampling) → daena →
/// attributes → redact → limits → (tail sampling).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// Drops noise first: FastAPI's ASGI event spans, health probes, and rules.
    pub filter: FilterConfig,
    /// Counts the Daena signals (LLM cost, CAS hits, phases, bus, NBMF, HTTP) from every
    /// span the filter keeps, before any sampling.
    pub signals: SignalsConfig,
    /// Normalises Daena attributes, derives `daena.component` and the semconv mirrors,
    /// and enriches the resource.
    pub daena: DaenaConfig,
    /// Inserts, updates, upserts, deletes or hashes span attributes, in order.
    #[serde(skip_serializing_if = "AttributesConfig::is_empty")]
    pub attributes: AttributesConfig,
    /// Masks secrets in attribute values.
    pub redact: RedactConfig,
    /// Caps attribute value length and the number of attributes, events and links.
    pub limits: LimitsConfig,
    /// Keeps a consistent share of traces (head, before the other stages) or whole traces
    /// by policy (tail, after them, so policies see canonical attributes); off unless set.
    pub sampling: Option<SamplingConfig>,
}

impl ProcessorsConfig {
    /// The stages of one of `shards` pipelines: the same, with the tail sampler's limits
    /// shared out (see [`SamplingConfig::per_shard`]).
    pub fn per_shard(&self, shards: usize) -> Self {
        Self {
            sampling: self.sampling.as_ref().map(|s| s.per_shard(shards)),
            ..self.clone()
        }
    }
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
    /// What `resource_from_env` read, attribute → trimmed value, filled by
    /// [`Config::load`](super::Config::load) so the stage itself reads no environment.
    #[serde(skip)]
    pub resource_from_env_values: BTreeMap<String, String>,
    /// Replace resource attributes the service already set with the configured ones.
    #[serde(rename = "override")]
    pub override_existing: bool,
    /// Rows added to the built-in Daena schema, or replacing the built-in row of their key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<Located<SchemaRow>>,
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
            resource_from_env_values: BTreeMap::new(),
            override_existing: false,
            schema: Vec::new(),
        }
    }
}

impl DaenaConfig {
    /// Reads the variables `resource_from_env` names through `env` into
    /// `resource_from_env_values`; an unset or blank variable adds nothing.
    pub fn resolve_resource_from_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        self.resource_from_env_values = self
            .resource_from_env
            .iter()
            .filter_map(|(attribute, variable)| {
                env(variable)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (attribute.clone(), value.trim().to_owned()))
            })
            .collect();
    }
}

/// `processors.redact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// Words of attribute keys whose values are replaced by `[REDACTED]`. A pattern
    /// matches whole words of the key (split at non-letters and camelCase humps, the last
    /// word also plural), ignoring case, after folding look-alike letters: `token`
    /// matches `x-auth-token` and `accessTokens` but not `gen_ai.usage.input_tokens`.
    pub keys: Vec<String>,
    /// Keys kept readable whatever their words (exact, compared after the same folding).
    pub allow_keys: Vec<String>,
    /// `Bearer`, `Basic` and `Token` credentials inside any string value.
    pub bearer_tokens: bool,
    /// Keys with a well-known prefix (`sk-`, `ghp_`, `AKIA`…) inside any string value.
    pub api_keys: bool,
    /// JSON Web Tokens (`eyJ….….…`) inside any string value.
    pub jwts: bool,
    /// URL passwords (`://user:pass@`) and `name=value` pairs with a secret name.
    pub credentials: bool,
    /// E-mail addresses inside prompt/response/completion text of `llm.*` and `gen_ai.*`.
    pub emails_in_llm_text: bool,
    /// Extra literal key prefixes (e.g. `dk_live_`), masked with what follows them.
    pub patterns: Vec<String>,
}

impl Default for RedactConfig {
    fn default() -> Self {
        let keys = [
            "authorization",
            "auth",
            "cookie",
            "password",
            "passwd",
            "pwd",
            "passphrase",
            "secret",
            "token",
            "api_key",
            "apikey",
            "credential",
            "private_key",
            "privatekey",
            "jwt",
            "bearer",
            "connection_string",
            "connectionstring",
        ];
        Self {
            enabled: true,
            keys: keys.into_iter().map(str::to_owned).collect(),
            allow_keys: Vec::new(),
            bearer_tokens: true,
            api_keys: true,
            jwts: true,
            credentials: true,
            emails_in_llm_text: true,
            patterns: Vec::new(),
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
            max_attribute_value_length: bounds::MAX_ATTRIBUTE_VALUE_LENGTH.default,
            max_attributes: bounds::MAX_ATTRIBUTES.default,
            max_events: bounds::MAX_EVENTS.default,
            max_links: bounds::MAX_LINKS.default,
        }
    }
}

/// `processors.sampling`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// `head`: decide each span by its trace id at once; `tail`: hold whole traces and
    /// decide by `policies`.
    pub mode: SamplingMode,
    /// Head mode: the share of traces kept, in (0, 1].
    pub ratio: Option<f64>,
    /// Tail mode: how long after a trace's last span arrived it is decided.
    #[serde(with = "units::duration")]
    pub decision_wait: Duration,
    /// Tail mode: traces held at once; beyond it the oldest are decided early.
    pub max_traces: usize,
    /// Tail mode: spans held at once; beyond it the oldest traces are decided early.
    pub max_buffered_spans: usize,
    /// Tail mode: encoded bytes held at once (spans, and each shared resource and scope
    /// once); beyond it the oldest traces are decided early.
    pub max_buffered_bytes: ByteSize,
    /// Tail mode: recent decisions remembered for spans that arrive late.
    pub decision_cache: usize,
    /// Tail mode: an attribute whose value ties traces together (`council.round_id`):
    /// every trace with the same value gets the same decision.
    pub coherent_by: Option<String>,
    /// Tail mode: in order; a trace is kept when one keeps it.
    pub policies: Vec<PolicyConfig>,
}

impl SamplingConfig {
    /// The share of one of `shards` pipelines: the buffer and cache limits are for the
    /// whole agent, so each shard's sampler gets its part of them (at least 1).
    pub fn per_shard(&self, shards: usize) -> Self {
        let shards = shards.max(1);
        let share = |limit: usize| (limit / shards).max(1);
        Self {
            max_traces: share(self.max_traces),
            max_buffered_spans: share(self.max_buffered_spans),
            max_buffered_bytes: ByteSize((self.max_buffered_bytes.0 / shards as u64).max(1)),
            decision_cache: share(self.decision_cache),
            ..self.clone()
        }
    }
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            mode: SamplingMode::Head,
            ratio: None,
            decision_wait: bounds::DECISION_WAIT.default,
            max_traces: bounds::MAX_TRACES.default,
            max_buffered_spans: bounds::MAX_BUFFERED_SPANS.default,
            max_buffered_bytes: bounds::MAX_BUFFERED_BYTES.default,
            decision_cache: bounds::DECISION_CACHE.default,
            coherent_by: None,
            policies: Vec::new(),
        }
    }
}

/// Head or tail sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMode {
    /// Per span, by trace id, at once.
    Head,
    /// Per whole trace, by policy, after `decision_wait`.
    Tail,
}

/// One tail-sampling policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Names the policy in metrics and logs.
    pub name: String,
    /// What the policy looks at.
    #[serde(rename = "type")]
    pub kind: PolicyKind,
    /// `latency`: the duration a span (the root, when the trace has one) must reach.
    #[serde(default, with = "units::duration")]
    pub threshold: Duration,
    /// `attribute`: the span attribute to look at.
    #[serde(default)]
    pub key: Option<String>,
    /// `attribute`: keep when the value equals one of these.
    #[serde(default)]
    pub values: Vec<String>,
    /// `attribute`: keep when the (numeric) value is at least this.
    #[serde(default)]
    pub at_least: Option<f64>,
    /// `ratio`: the share of traces kept, by the consistent probability rule.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// `rate_limit`: traces kept per second at most.
    #[serde(default)]
    pub traces_per_second: Option<f64>,
}

/// The kinds of tail policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Any span with status ERROR.
    Errors,
    /// A span (the root, if present) at least `threshold` long.
    Latency,
    /// A span attribute equal to one of `values`, or a number at least `at_least`.
    Attribute,
    /// The consistent probability rule with `ratio`.
    Ratio,
    /// At most `traces_per_second` of what earlier policies did not keep.
    RateLimit,
}

impl PolicyConfig {
    /// A policy of `kind` with no parameters set yet.
    pub fn new(name: impl Into<String>, kind: PolicyKind) -> Self {
        Self {
            name: name.into(),
            kind,
            threshold: bounds::LATENCY_THRESHOLD.default,
            key: None,
            values: Vec::new(),
            at_least: None,
            ratio: None,
            traces_per_second: None,
        }
    }
}

impl PolicyKind {
    /// The name used in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Errors => "errors",
            Self::Latency => "latency",
            Self::Attribute => "attribute",
            Self::Ratio => "ratio",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// The shortest `max_attribute_value_length` accepted: room for the marker and some text.
pub const MIN_VALUE_LENGTH: usize = 32;

/// `processors.signals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    /// Runs the stage.
    pub enabled: bool,
    /// Label sets each signal keeps; further ones are added to its `__other__` series.
    pub max_series_per_metric: usize,
    /// How long a council round may take to reach its commit phase before it is counted
    /// as `incomplete`.
    #[serde(with = "units::duration")]
    pub round_window: Duration,
    /// Exporters (OTLP, by name) the signals are also sent to as OTLP metrics.
    pub export: Vec<String>,
    /// How often the signals are sent to `export`.
    #[serde(with = "units::duration")]
    pub interval: Duration,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_series_per_metric: 1000,
            round_window: Duration::from_secs(300),
            export: Vec::new(),
            interval: bounds::SIGNALS_INTERVAL.default,
        }
    }
}

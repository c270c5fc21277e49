//! `batch`, `pipeline` and `memory_limit`: how spans flow from the receivers to the exporters.

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::{ByteSize, bounds, units};

/// Batching: a batch leaves when it has `max_spans` spans or `max_bytes`, or after `timeout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Spans per batch, at most.
    pub max_spans: usize,
    /// Encoded bytes per batch, about (a single larger span travels alone).
    pub max_bytes: ByteSize,
    /// How long the first span of a batch may wait.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_spans: bounds::BATCH_MAX_SPANS.default,
            max_bytes: bounds::BATCH_MAX_BYTES.default,
            timeout: bounds::BATCH_TIMEOUT.default,
        }
    }
}

/// The pipelines between the receivers and the exporters, and their queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Requests waiting for each pipeline; when full, receivers answer "retry later".
    pub max_pending_requests: usize,
    /// Pipelines, each on a thread of its own, with the spans routed by trace id; left
    /// out, [`Config::load`](super::Config::load) picks it (see [`PipelineConfig::resolve_shards`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_pending_requests: bounds::MAX_PENDING_REQUESTS.default,
            shards: None,
        }
    }
}

impl PipelineConfig {
    /// The pipelines to run: `shards`, or one when it was not resolved.
    pub fn shards(&self) -> usize {
        self.shards.unwrap_or(1).max(1)
    }

    /// Fills in `shards` when the config leaves it out: one pipeline per core the agent
    /// may use when a tail sampler must see whole traces at a gateway's rate, else one.
    /// Splitting each request by trace id costs a sidecar more than a second core gives it
    /// (docs/performance.md: +13% CPU per span forwarded, p50 at 20K spans/s 1.1 → 2.3 ms
    /// with the default processors).
    pub fn resolve_shards(&mut self, tail_sampling: bool) {
        if self.shards.is_none() {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let shards = if tail_sampling { cores } else { 1 };
            self.shards = Some(shards.clamp(bounds::SHARDS.min, bounds::SHARDS.max));
        }
    }
}

/// `memory_limit`: the budget requests are admitted against, and the resident memory at
/// which the receivers refuse anyway (a backstop), and where the agent logs an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimitConfig {
    /// Bytes of requests being read, decoded and waiting for the pipeline, summed; a
    /// request that does not fit is refused until others finish. Default: half of `soft`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<ByteSize>,
    /// Above this resident memory (after freed memory is returned to the system) the
    /// receivers refuse new spans until it falls below 90% of it.
    pub soft: ByteSize,
    /// Above this the agent logs an error; the soft limit is what keeps it from getting here.
    pub hard: ByteSize,
}

impl Default for MemoryLimitConfig {
    fn default() -> Self {
        Self {
            budget: None,
            soft: bounds::MEMORY_SOFT.default,
            hard: bounds::MEMORY_HARD.default,
        }
    }
}

impl MemoryLimitConfig {
    /// `budget`, or half of `soft` when left out.
    pub fn budget(&self) -> ByteSize {
        self.budget.unwrap_or(ByteSize(self.soft.0 / 2))
    }
}

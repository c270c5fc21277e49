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

/// The queue between the receivers and the pipeline task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Requests waiting for the pipeline; when full, receivers answer "retry later".
    pub max_pending_requests: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_pending_requests: bounds::MAX_PENDING_REQUESTS.default,
        }
    }
}

/// `memory_limit`: resident memory at which the receivers refuse, and where it logs an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryLimitConfig {
    /// Above this the receivers refuse new spans until usage falls below 90% of it.
    pub soft: ByteSize,
    /// Above this the agent logs an error; the soft limit is what keeps it from getting here.
    pub hard: ByteSize,
}

impl Default for MemoryLimitConfig {
    fn default() -> Self {
        Self {
            soft: bounds::MEMORY_SOFT.default,
            hard: bounds::MEMORY_HARD.default,
        }
    }
}

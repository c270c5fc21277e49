//! The default and the accepted range of every duration, size and count in the config, in
//! one place: the section types take their defaults from here, `Config::validate` checks
//! the ranges, YAML errors at these keys suggest them, and the README's "Ranges" lists them.
//!
//! The ranges keep every value a Collector user would write, and stop values that would
//! overflow an `Instant`, panic a channel constructor or make the agent allocate absurdly:
//! in-memory sizes stay within 64GiB, the persistent queue within 16TiB, a request 1GiB.

use std::time::Duration;

use super::units::{ByteSize, format_duration};
use super::yaml::{KeyPath, Segment};
use super::{ConfigError, MIN_VALUE_LENGTH};

/// A value a range applies to: a duration, a size or a count.
pub trait Measure: Copy {
    /// The value as one number, to compare.
    fn magnitude(self) -> u128;
    /// The value as the config writes it.
    fn show(self) -> String;
    /// What a value above the range is: `long` or `large`.
    const ABOVE: &'static str;
    /// What a value below the range is: `short` or `small`.
    const BELOW: &'static str;
}

impl Measure for Duration {
    fn magnitude(self) -> u128 {
        self.as_nanos()
    }
    fn show(self) -> String {
        format_duration(self)
    }
    const ABOVE: &'static str = "long";
    const BELOW: &'static str = "short";
}

impl Measure for ByteSize {
    fn magnitude(self) -> u128 {
        self.0.into()
    }
    fn show(self) -> String {
        self.to_string()
    }
    const ABOVE: &'static str = "large";
    const BELOW: &'static str = "small";
}

impl Measure for usize {
    fn magnitude(self) -> u128 {
        self as u128
    }
    fn show(self) -> String {
        self.to_string()
    }
    const ABOVE: &'static str = "large";
    const BELOW: &'static str = "small";
}

/// One setting's default and its accepted range, `min` and `max` included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound<T> {
    /// The key; `*` stands for an exporter's name or a receiver protocol, `[*]` for a list index.
    pub key: &'static str,
    /// When the bound applies, if not always (e.g. `persistent: true`).
    pub when: Option<&'static str>,
    /// The value when the key is left out.
    pub default: T,
    /// How the default is worked out, when it depends on other settings (`default` is
    /// then its value with theirs at their defaults).
    pub derived: Option<&'static str>,
    /// The smallest value accepted.
    pub min: T,
    /// The largest value accepted.
    pub max: T,
}

impl<T: Measure> Bound<T> {
    /// `min to max`, as the config writes them.
    pub fn range(&self) -> String {
        format!("{} to {}", self.min.show(), self.max.show())
    }

    /// Adds an error naming `key`, the value and the range when `value` is outside it.
    pub(super) fn check(&self, key: &str, value: T, errors: &mut Vec<ConfigError>) {
        let word = if value.magnitude() > self.max.magnitude() {
            T::ABOVE
        } else if value.magnitude() < self.min.magnitude() {
            T::BELOW
        } else {
            return;
        };
        let when = self.when.map_or_else(String::new, |w| format!(" with {w}"));
        errors.push(ConfigError::new(
            key,
            format!("{} is too {word}{when}; use {}", value.show(), self.range()),
        ));
    }

    fn row(&self) -> Row {
        Row {
            key: self.key,
            when: self.when,
            default: self
                .derived
                .map_or_else(|| self.default.show(), str::to_owned),
            range: self.range(),
        }
    }
}

const fn duration(
    key: &'static str,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Bound<Duration> {
    Bound {
        key,
        when: None,
        default,
        derived: None,
        min,
        max,
    }
}

const fn size(key: &'static str, default: u64, min: u64, max: u64) -> Bound<ByteSize> {
    Bound {
        key,
        when: None,
        default: ByteSize(default),
        derived: None,
        min: ByteSize(min),
        max: ByteSize(max),
    }
}

const fn count(key: &'static str, default: usize, min: usize, max: usize) -> Bound<usize> {
    Bound {
        key,
        when: None,
        default,
        derived: None,
        min,
        max,
    }
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// `receivers.otlp.{grpc,http}.max_request_size`.
pub const MAX_REQUEST_SIZE: Bound<ByteSize> =
    size("receivers.otlp.*.max_request_size", 8 * MIB, KIB, GIB);

/// `receivers.otlp.*.max_spans_per_request`: a request holding more is refused.
pub const MAX_SPANS_PER_REQUEST: Bound<usize> = count(
    "receivers.otlp.*.max_spans_per_request",
    100_000,
    1,
    10_000_000,
);
/// `receivers.otlp.*.max_attributes_per_item`: a request with a resource, scope, span,
/// event, link or kvlist value holding more attributes is refused.
pub const MAX_ATTRIBUTES_PER_ITEM: Bound<usize> = count(
    "receivers.otlp.*.max_attributes_per_item",
    16_384,
    1,
    10_000_000,
);
/// `receivers.otlp.*.max_decoded_size`: the memory a request may take decoded, as the scan
/// estimates it before decoding.
pub const MAX_DECODED_SIZE: Bound<ByteSize> = Bound {
    derived: Some("16 × max_request_size, at most memory_limit.budget − max_request_size"),
    ..size(
        "receivers.otlp.*.max_decoded_size",
        120 * MIB,
        KIB,
        64 * GIB,
    )
};
/// How many times its encoded size a request may take decoded, by default.
pub const DECODED_PER_ENCODED: u64 = 16;

/// `receivers.otlp.*.max_connections`: connections open at once; more are closed at once.
/// The sum of both receivers' is also capped below the process's open-file limit.
pub const MAX_CONNECTIONS: Bound<usize> = count("receivers.otlp.*.max_connections", 512, 1, 65_536);
/// `receivers.otlp.*.header_read_timeout`: a new connection's request headers (HTTP/1)
/// or HTTP/2 connection preface must arrive within it.
pub const HEADER_READ_TIMEOUT: Bound<Duration> = duration(
    "receivers.otlp.*.header_read_timeout",
    Duration::from_secs(10),
    MS,
    HOUR,
);
/// `receivers.otlp.http.body_read_timeout`: a request's whole body must arrive within it.
pub const BODY_READ_TIMEOUT: Bound<Duration> = duration(
    "receivers.otlp.http.body_read_timeout",
    Duration::from_secs(30),
    MS,
    HOUR,
);
/// `receivers.otlp.http.idle_timeout`: a connection with no request in progress for this
/// long is closed.
pub const IDLE_TIMEOUT: Bound<Duration> = duration(
    "receivers.otlp.http.idle_timeout",
    Duration::from_secs(60),
    MS,
    Duration::from_secs(24 * 3600),
);
/// `receivers.otlp.*.max_concurrent_streams`: HTTP/2 streams (calls) per connection.
pub const MAX_CONCURRENT_STREAMS: Bound<usize> =
    count("receivers.otlp.*.max_concurrent_streams", 100, 1, 65_536);
/// `receivers.otlp.*.keepalive_interval`: HTTP/2 PING sent after this long without traffic.
pub const KEEPALIVE_INTERVAL: Bound<Duration> = duration(
    "receivers.otlp.*.keepalive_interval",
    Duration::from_secs(30),
    MS,
    HOUR,
);
/// `receivers.otlp.*.keepalive_timeout`: a PING unanswered this long closes the connection.
pub const KEEPALIVE_TIMEOUT: Bound<Duration> = duration(
    "receivers.otlp.*.keepalive_timeout",
    Duration::from_secs(10),
    MS,
    HOUR,
);

/// `exporters.*.timeout`: one export request.
pub const EXPORT_TIMEOUT: Bound<Duration> =
    duration("exporters.*.timeout", Duration::from_secs(10), MS, HOUR);
/// `exporters.*.retry.initial_interval`.
pub const RETRY_INITIAL_INTERVAL: Bound<Duration> = duration(
    "exporters.*.retry.initial_interval",
    Duration::from_secs(1),
    MS,
    HOUR,
);
/// `exporters.*.retry.max_interval`.
pub const RETRY_MAX_INTERVAL: Bound<Duration> = duration(
    "exporters.*.retry.max_interval",
    Duration::from_secs(30),
    MS,
    HOUR,
);
/// `exporters.*.retry.max_elapsed`: 0 retries nothing.
pub const RETRY_MAX_ELAPSED: Bound<Duration> = duration(
    "exporters.*.retry.max_elapsed",
    Duration::from_secs(300),
    Duration::ZERO,
    Duration::from_secs(24 * 3600),
);
/// `exporters.*.queue.max_spans`; unset on disk: no span bound.
pub const QUEUE_MAX_SPANS: Bound<usize> =
    count("exporters.*.queue.max_spans", 65_536, 1, 100_000_000);
/// `exporters.*.queue.max_bytes` of a queue in memory.
pub const QUEUE_MAX_BYTES: Bound<ByteSize> =
    size("exporters.*.queue.max_bytes", 8 * MIB, KIB, 64 * GIB);
/// `exporters.*.queue.max_bytes` of a persistent queue.
pub const PERSISTENT_QUEUE_MAX_BYTES: Bound<ByteSize> = Bound {
    when: Some("persistent: true"),
    ..size("exporters.*.queue.max_bytes", GIB, KIB, 16 * TIB)
};
/// `exporters.*.queue.workers`.
pub const QUEUE_WORKERS: Bound<usize> = count("exporters.*.queue.workers", 4, 1, 1024);
/// `exporters.*.resolver.dns.interval`: how often a loadbalancing exporter looks its
/// backends up again.
pub const DNS_RESOLVER_INTERVAL: Bound<Duration> = duration(
    "exporters.*.resolver.dns.interval",
    Duration::from_secs(5),
    Duration::from_secs(1),
    HOUR,
);

/// `exporters.*.reroute_after`: a loadbalancing exporter's backend failing this long has
/// its share re-routed to the others; 0s re-routes at the first failure.
pub const REROUTE_AFTER: Bound<Duration> = duration(
    "exporters.*.reroute_after",
    Duration::from_secs(30),
    Duration::ZERO,
    Duration::from_secs(24 * 3600),
);

/// `processors.limits.max_attribute_value_length`, in bytes; the least leaves room for
/// the `…[truncated]` marker and some text.
pub const MAX_ATTRIBUTE_VALUE_LENGTH: Bound<usize> = count(
    "processors.limits.max_attribute_value_length",
    4096,
    MIN_VALUE_LENGTH,
    16 << 20,
);
/// `processors.limits.max_attributes`.
pub const MAX_ATTRIBUTES: Bound<usize> = count("processors.limits.max_attributes", 128, 1, 65_536);
/// `processors.limits.max_events`.
pub const MAX_EVENTS: Bound<usize> = count("processors.limits.max_events", 128, 0, 65_536);
/// `processors.limits.max_links`.
pub const MAX_LINKS: Bound<usize> = count("processors.limits.max_links", 128, 0, 65_536);

/// `processors.sampling.decision_wait`.
pub const DECISION_WAIT: Bound<Duration> = duration(
    "processors.sampling.decision_wait",
    Duration::from_secs(5),
    MS,
    HOUR,
);
/// `processors.sampling.max_traces`.
pub const MAX_TRACES: Bound<usize> = count("processors.sampling.max_traces", 50_000, 1, 10_000_000);
/// `processors.sampling.max_buffered_spans`.
pub const MAX_BUFFERED_SPANS: Bound<usize> = count(
    "processors.sampling.max_buffered_spans",
    500_000,
    1,
    100_000_000,
);
/// `processors.sampling.max_buffered_bytes`: the encoded size of the spans, resources and
/// scopes the tail sampler holds (each shared resource and scope counted once).
pub const MAX_BUFFERED_BYTES: Bound<ByteSize> = size(
    "processors.sampling.max_buffered_bytes",
    256 * MIB,
    KIB,
    64 * GIB,
);
/// `processors.sampling.decision_cache`.
pub const DECISION_CACHE: Bound<usize> =
    count("processors.sampling.decision_cache", 100_000, 1, 10_000_000);
/// `processors.sampling.policies[*].threshold` (a latency policy needs one above 0).
pub const LATENCY_THRESHOLD: Bound<Duration> = duration(
    "processors.sampling.policies[*].threshold",
    Duration::ZERO,
    Duration::ZERO,
    Duration::from_secs(24 * 3600),
);

/// `processors.signals.interval`: how often the signals go out as OTLP metrics.
pub const SIGNALS_INTERVAL: Bound<Duration> = duration(
    "processors.signals.interval",
    Duration::from_secs(60),
    Duration::from_secs(1),
    HOUR,
);

/// `batch.max_spans`.
pub const BATCH_MAX_SPANS: Bound<usize> = count("batch.max_spans", 8192, 1, 1_000_000);
/// `batch.max_bytes`.
pub const BATCH_MAX_BYTES: Bound<ByteSize> = size("batch.max_bytes", MIB, KIB, 256 * MIB);
/// `batch.timeout`.
pub const BATCH_TIMEOUT: Bound<Duration> =
    duration("batch.timeout", Duration::from_millis(200), MS, HOUR);
/// `pipeline.max_pending_requests`.
pub const MAX_PENDING_REQUESTS: Bound<usize> =
    count("pipeline.max_pending_requests", 16, 1, 65_536);
/// `pipeline.shards`: pipelines, each on a thread of its own.
pub const SHARDS: Bound<usize> = Bound {
    derived: Some("the number of cores with tail sampling, else 1"),
    ..count("pipeline.shards", 1, 1, 64)
};
/// `memory_limit.soft`.
pub const MEMORY_SOFT: Bound<ByteSize> = size("memory_limit.soft", 256 * MIB, MIB, 64 * GIB);
/// `memory_limit.budget`: bytes of requests being read, decoded and waiting for the pipeline.
pub const MEMORY_BUDGET: Bound<ByteSize> = Bound {
    derived: Some("half of soft"),
    ..size("memory_limit.budget", 128 * MIB, MIB, 64 * GIB)
};
/// `memory_limit.hard`.
pub const MEMORY_HARD: Bound<ByteSize> = size("memory_limit.hard", 320 * MIB, MIB, 64 * GIB);
/// `shutdown_timeout`: 0 abandons what is in flight at once.
pub const SHUTDOWN_TIMEOUT: Bound<Duration> = duration(
    "shutdown_timeout",
    Duration::from_secs(10),
    Duration::ZERO,
    Duration::from_secs(600),
);

/// A bound as the README's table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The key pattern.
    pub key: &'static str,
    /// When it applies, if not always.
    pub when: Option<&'static str>,
    /// The default, as written in the config.
    pub default: String,
    /// `min to max`.
    pub range: String,
}

/// Every bound, in the order of `config.example.yaml`.
pub fn rows() -> Vec<Row> {
    vec![
        MAX_REQUEST_SIZE.row(),
        MAX_SPANS_PER_REQUEST.row(),
        MAX_ATTRIBUTES_PER_ITEM.row(),
        MAX_DECODED_SIZE.row(),
        MAX_CONNECTIONS.row(),
        HEADER_READ_TIMEOUT.row(),
        BODY_READ_TIMEOUT.row(),
        IDLE_TIMEOUT.row(),
        MAX_CONCURRENT_STREAMS.row(),
        KEEPALIVE_INTERVAL.row(),
        KEEPALIVE_TIMEOUT.row(),
        EXPORT_TIMEOUT.row(),
        RETRY_INITIAL_INTERVAL.row(),
        RETRY_MAX_INTERVAL.row(),
        RETRY_MAX_ELAPSED.row(),
        QUEUE_MAX_BYTES.row(),
        PERSISTENT_QUEUE_MAX_BYTES.row(),
        QUEUE_MAX_SPANS.row(),
        QUEUE_WORKERS.row(),
        DNS_RESOLVER_INTERVAL.row(),
        REROUTE_AFTER.row(),
        MAX_ATTRIBUTE_VALUE_LENGTH.row(),
        MAX_ATTRIBUTES.row(),
        MAX_EVENTS.row(),
        MAX_LINKS.row(),
        DECISION_WAIT.row(),
        MAX_TRACES.row(),
        MAX_BUFFERED_SPANS.row(),
        MAX_BUFFERED_BYTES.row(),
        DECISION_CACHE.row(),
        LATENCY_THRESHOLD.row(),
        SIGNALS_INTERVAL.row(),
        BATCH_MAX_SPANS.row(),
        BATCH_MAX_BYTES.row(),
        BATCH_TIMEOUT.row(),
        MAX_PENDING_REQUESTS.row(),
        SHARDS.row(),
        MEMORY_BUDGET.row(),
        MEMORY_SOFT.row(),
        MEMORY_HARD.row(),
        SHUTDOWN_TIMEOUT.row(),
    ]
}

/// The range(s) of the setting at `path`, e.g. `1ms to 1h`, for an error there.
pub fn range_at(path: &KeyPath) -> Option<String> {
    let ranges: Vec<String> = rows()
        .into_iter()
        .filter(|row| matches(row.key, path))
        .map(|row| match row.when {
            Some(when) => format!("{} with {when}", row.range),
            None => row.range,
        })
        .collect();
    (!ranges.is_empty()).then(|| ranges.join(", or "))
}

/// Whether `path` is an instance of the key pattern (`*`: any key, `[*]`: any index).
fn matches(pattern: &str, path: &KeyPath) -> bool {
    let mut segments = path.0.iter();
    for part in pattern.split('.') {
        let (name, indexed) = match part.strip_suffix("[*]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        match segments.next() {
            Some(Segment::Key(key)) if name == "*" || key == name => {}
            _ => return false,
        }
        if indexed && !matches!(segments.next(), Some(Segment::Index(_))) {
            return false;
        }
    }
    segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_range_with_its_default() {
        let readme = include_str!("../../README.md");
        for row in rows() {
            let when = row
                .when
                .map_or_else(String::new, |w| format!(" (with {w})"));
            let line = format!("| `{}`{when} | {} | {} |", row.key, row.default, row.range);
            assert!(readme.contains(&line), "README.md lacks {line:?}");
        }
    }

    #[test]
    fn the_example_config_documents_every_range() {
        let lines: Vec<&str> = include_str!("../../config.example.yaml").lines().collect();
        // A key's comment, continued on the lines below that start with `#   `.
        let comment = |i: usize| {
            let more = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim_start().starts_with("#   "))
                .copied();
            std::iter::once(lines[i]).chain(more).collect::<String>()
        };
        for row in rows() {
            let field = row.key.rsplit('.').next().unwrap_or_default();
            let documented = (0..lines.len()).any(|i| {
                lines[i].contains(&format!("{field}:")) && comment(i).contains(&row.range)
            });
            assert!(
                documented,
                "config.example.yaml: no {field}: line says {}",
                row.range
            );
        }
    }

    #[test]
    fn key_patterns_match_exporter_names_and_list_indexes() {
        let path = |segments: &[Segment]| KeyPath(segments.to_vec());
        let key = |k: &str| Segment::Key(k.to_owned());
        let timeout = path(&[key("exporters"), key("my.tempo"), key("timeout")]);
        assert_eq!(range_at(&timeout).as_deref(), Some("1ms to 1h"));
        let threshold = path(&[
            key("processors"),
            key("sampling"),
            key("policies"),
            Segment::Index(3),
            key("threshold"),
        ]);
        assert_eq!(range_at(&threshold).as_deref(), Some("0s to 24h"));
        let queue = path(&[key("exporters"), key("t"), key("queue"), key("max_bytes")]);
        assert_eq!(
            range_at(&queue).as_deref(),
            Some("1KiB to 64GiB, or 1KiB to 16TiB with persistent: true")
        );
        assert_eq!(range_at(&path(&[key("exporters"), key("timeout")])), None);
        assert_eq!(range_at(&path(&[key("batch")])), None);
    }
}

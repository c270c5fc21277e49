//! The Daena signals' series (LLM cost and CAS hits, council phases and rounds, bus and
//! NBMF traffic, HTTP routes), exact counts and sums kept as integers and shown on
//! `/metrics` at scrape time. The `signals` stage fills them once per batch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::otlp::{
    AggregationTemporality, ExportMetricsServiceRequest, Histogram, HistogramDataPoint,
    InstrumentationScope, KeyValue, Metric, MetricData, NumberDataPoint, NumberValue, Resource,
    ResourceMetrics, ScopeMetrics, Sum, Value, key_value,
};

/// The label value that stands for every value past a metric's series limit.
pub const OTHER: &str = "__other__";

/// Upper bounds of the duration histograms' buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// One of the signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `daena_llm_requests_total{model, department, cas_hit, near_dup}`.
    LlmRequests,
    /// `daena_llm_cost_usd_total{model, department}`.
    LlmCost,
    /// `daena_llm_tokens_total{model, department, direction}`.
    LlmTokens,
    /// `daena_council_phase_duration_seconds{department, phase}`.
    CouncilPhaseDuration,
    /// `daena_council_rounds_total{department, outcome}`.
    CouncilRounds,
    /// `daena_bus_messages_total{topic, operation}`.
    BusMessages,
    /// `daena_bus_rate_limited_total{topic}`.
    BusRateLimited,
    /// `daena_nbmf_operations_total{operation, tier, class}`.
    NbmfOperations,
    /// `daena_nbmf_operation_duration_seconds{operation, tier}`.
    NbmfDuration,
    /// `daena_http_requests_total{route, status_class}`.
    HttpRequests,
    /// `daena_http_request_duration_seconds{route}`.
    HttpDuration,
}

/// How a signal adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A count.
    Counter,
    /// A sum of billionths (nano-dollars), shown as units: exact whatever the order.
    Billionths,
    /// Durations in nanoseconds: count, exact sum and buckets.
    Histogram,
}

impl Signal {
    /// Every signal, in the order `/metrics` shows them.
    pub const ALL: [Self; 11] = [
        Self::LlmRequests,
        Self::LlmCost,
        Self::LlmTokens,
        Self::CouncilPhaseDuration,
        Self::CouncilRounds,
        Self::BusMessages,
        Self::BusRateLimited,
        Self::NbmfOperations,
        Self::NbmfDuration,
        Self::HttpRequests,
        Self::HttpDuration,
    ];

    /// The family's name (a counter's without `_total`), its help and its label names.
    fn describe(self) -> (&'static str, &'static str, &'static [&'static str], Kind) {
        match self {
            Self::LlmRequests => (
                "daena_llm_requests",
                "LLM exchanges, every span before sampling",
                &["model", "department", "cas_hit", "near_dup"],
                Kind::Counter,
            ),
            Self::LlmCost => (
                "daena_llm_cost_usd",
                "LLM cost in US dollars (llm.cost_usd), summed exactly to the nano-dollar",
                &["model", "department"],
                Kind::Billionths,
            ),
            Self::LlmTokens => (
                "daena_llm_tokens",
                "LLM tokens, by direction (input, output)",
                &["model", "department", "direction"],
                Kind::Counter,
            ),
            Self::CouncilPhaseDuration => (
                "daena_council_phase_duration_seconds",
                "Council phase spans' durations",
                &["department", "phase"],
                Kind::Histogram,
            ),
            Self::CouncilRounds => (
                "daena_council_rounds",
                "Council rounds by outcome: their commit phase's status, or incomplete",
                &["department", "outcome"],
                Kind::Counter,
            ),
            Self::BusMessages => (
                "daena_bus_messages",
                "Message-bus spans",
                &["topic", "operation"],
                Kind::Counter,
            ),
            Self::BusRateLimited => (
                "daena_bus_rate_limited",
                "Rate-limit events on message-bus spans",
                &["topic"],
                Kind::Counter,
            ),
            Self::NbmfOperations => (
                "daena_nbmf_operations",
                "NBMF memory operations",
                &["operation", "tier", "class"],
                Kind::Counter,
            ),
            Self::NbmfDuration => (
                "daena_nbmf_operation_duration_seconds",
                "NBMF memory operations' durations",
                &["operation", "tier"],
                Kind::Histogram,
            ),
            Self::HttpRequests => (
                "daena_http_requests",
                "HTTP server spans, by route template and status class",
                &["route", "status_class"],
                Kind::Counter,
            ),
            Self::HttpDuration => (
                "daena_http_request_duration_seconds",
                "HTTP server spans' durations, by route template",
                &["route"],
                Kind::Histogram,
            ),
        }
    }

    /// The label names, in order.
    pub fn labels(self) -> &'static [&'static str] {
        self.describe().2
    }

    /// The metric name the `metric` label of `daena_signals_folded_total` gives.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// The OTLP unit: seconds for durations, an annotation (which Prometheus-compatible
    /// backends leave out of the name) for the others.
    fn unit(self) -> &'static str {
        match self {
            Self::LlmCost => "{USD}",
            Self::LlmTokens => "{token}",
            Self::CouncilPhaseDuration | Self::NbmfDuration | Self::HttpDuration => "s",
            _ => "",
        }
    }
}

/// What one series has added up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events counted (for a histogram: observations), or tokens; saturates at `u64::MAX`
    /// (only hostile token counts reach it) rather than wrap or panic.
    pub count: u64,
    /// Billionths (cost) or nanoseconds (histograms); a sum saturates at `u128::MAX`
    /// (3.4e29 dollars), which only a hostile value reaches, rather than wrap or panic.
    pub billionths: u128,
    /// Observations per bucket of [`BUCKETS`] (not cumulative), and past the last.
    pub buckets: [u64; BUCKETS.len() + 1],
}

impl Tally {
    /// Adds one duration of `nanos` nanoseconds.
    pub fn observe(&mut self, nanos: u64) {
        self.count += 1;
        self.billionths = self.billionths.saturating_add(u128::from(nanos));
        #[allow(clippy::cast_precision_loss)] // a bucket's choice, not a sum
        let seconds = nanos as f64 / 1e9;
        let bucket = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket] += 1;
    }

    fn add(&mut self, other: &Tally) {
        self.count = self.count.saturating_add(other.count);
        self.billionths = self.billionths.saturating_add(other.billionths);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }
}

/// Every signal's series, with at most `limit` label sets per signal.
#[derive(Debug)]
pub struct SignalTable {
    limit: usize,
    series: HashMap<Signal, HashMap<Vec<String>, Tally>>,
    folded: HashMap<Signal, u64>,
}

impl SignalTable {
    fn new() -> Self {
        Self {
            limit: 1000,
            series: HashMap::new(),
            folded: HashMap::new(),
        }
    }

    /// Sets the most label sets a signal keeps (`processors.signals.max_series_per_metric`).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(1);
    }

    /// Adds `tally` to the series `labels` of `signal`. A label set past the limit is
    /// added to the one whose every value is [`OTHER`] (which the limit leaves room for),
    /// and counted as folded: nothing is lost.
    pub fn add(&mut self, signal: Signal, labels: &[&str], tally: &Tally) {
        let series = self.series.entry(signal).or_default();
        let key: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        if let Some(existing) = series.get_mut(&key) {
            existing.add(tally);
            return;
        }
        if series.len() < self.limit {
            series.insert(key, tally.clone());
            return;
        }
        let folded = self.folded.entry(signal).or_default();
        *folded = folded.saturating_add(tally.count.max(1));
        let other = vec![OTHER.to_owned(); labels.len()];
        series.entry(other).or_default().add(tally);
    }

    /// The series of `signal`: label values and tally.
    pub fn series(&self, signal: Signal) -> Vec<(&[String], &Tally)> {
        let mut all: Vec<_> = self
            .series
            .get(&signal)
            .map(|s| s.iter().map(|(k, v)| (k.as_slice(), v)).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// The status page's headline Daena figures, since the agent started.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Headline {
    /// LLM exchanges.
    pub llm_requests: u64,
    /// Their cost in US dollars.
    pub llm_cost_usd: f64,
    /// The share of exchanges served from the content-addressed cache (`null` before any).
    pub cas_hit_rate: Option<f64>,
    /// The share of exchanges answered by near-duplicate reuse (`null` before any).
    pub near_dup_rate: Option<f64>,
    /// Council rounds, by outcome (`ok`, `error`, `incomplete`).
    pub council_rounds: Vec<(String, u64)>,
    /// Rate-limit events on the message bus.
    pub bus_rate_limited: u64,
    /// HTTP server requests.
    pub http_requests: u64,
}

impl SignalTable {
    /// The headline figures, summed over every series.
    pub fn headline(&self) -> Headline {
        let sum = |signal| -> u64 { self.series(signal).iter().map(|(_, t)| t.count).sum() };
        let requests = self.series(Signal::LlmRequests);
        let llm_requests: u64 = requests.iter().map(|(_, t)| t.count).sum();
        // The share of requests whose label `at` (cas_hit, near_dup) is `true`.
        let share = |at: usize| {
            let yes: u64 = requests
                .iter()
                .filter(|(labels, _)| labels.get(at).is_some_and(|v| v == "true"))
                .map(|(_, t)| t.count)
                .sum();
            #[allow(clippy::cast_precision_loss)] // a ratio to show
            (llm_requests > 0).then(|| yes as f64 / llm_requests as f64)
        };
        let mut rounds: Vec<(String, u64)> = Vec::new();
        for (labels, tally) in self.series(Signal::CouncilRounds) {
            let outcome = labels.get(1).cloned().unwrap_or_default();
            match rounds.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, n)) => *n = n.saturating_add(tally.count),
                None => rounds.push((outcome, tally.count)),
            }
        }
        let cost: u128 = self
            .series(Signal::LlmCost)
            .iter()
            .map(|(_, t)| t.billionths)
            .fold(0, u128::saturating_add);
        #[allow(clippy::cast_precision_loss)] // shown as a float
        let llm_cost_usd = cost as f64 / 1e9;
        Headline {
            llm_requests,
            llm_cost_usd,
            cas_hit_rate: share(2),
            near_dup_rate: share(3),
            council_rounds: rounds,
            bus_rate_limited: sum(Signal::BusRateLimited),
            http_requests: sum(Signal::HttpRequests),
        }
    }
}

/// Billionths (nano-dollars, nanoseconds) as units (dollars, seconds).
#[allow(clippy::cast_precision_loss)] // shown as a float; kept exact inside
fn units(billionths: u128) -> f64 {
    billionths as f64 / 1e9
}

impl SignalTable {
    /// The table as one OTLP metrics request: cumulative monotonic sums and explicit-bucket
    /// histograms counted since `start` (Unix nanoseconds), read at `now`, with the same
    /// names as on `/metrics` (a Prometheus-compatible backend adds `_total` to the sums).
    pub fn to_otlp(&self, resource: Resource, start: u64, now: u64) -> ExportMetricsServiceRequest {
        let attributes = |names: &[&str], values: &[String]| -> Vec<KeyValue> {
            names
                .iter()
                .zip(values)
                .map(|(name, value)| key_value(*name, Value::StringValue(value.clone())))
                .collect()
        };
        let number = |attributes, value| NumberDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(value),
            ..Default::default()
        };
        let sum = |data_points| {
            MetricData::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })
        };
        let mut metrics: Vec<Metric> = Signal::ALL
            .into_iter()
            .map(|signal| {
                let (name, help, label_names, kind) = signal.describe();
                let series = self.series(signal);
                let data = match kind {
                    Kind::Histogram => MetricData::Histogram(Histogram {
                        data_points: series
                            .iter()
                            .map(|(values, tally)| HistogramDataPoint {
                                attributes: attributes(label_names, values),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: tally.count,
                                sum: Some(units(tally.billionths)),
                                bucket_counts: tally.buckets.to_vec(),
                                explicit_bounds: BUCKETS.to_vec(),
                                ..Default::default()
                            })
                            .collect(),
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    }),
                    Kind::Billionths => sum(series
                        .iter()
                        .map(|(values, tally)| {
                            number(
                                attributes(label_names, values),
                                NumberValue::AsDouble(units(tally.billionths)),
                            )
                        })
                        .collect()),
                    Kind::Counter => sum(series
                        .iter()
                        .map(|(values, tally)| {
                            let count = i64::try_from(tally.count).unwrap_or(i64::MAX);
                            number(attributes(label_names, values), NumberValue::AsInt(count))
                        })
                        .collect()),
                };
                Metric {
                    name: name.to_owned(),
                    description: help.to_owned(),
                    unit: signal.unit().to_owned(),
                    data: Some(data),
                    ..Default::default()
                }
            })
            .collect();
        metrics.push(Metric {
            name: "daena_signals_folded".to_owned(),
            description: FOLDED_HELP.to_owned(),
            data: Some(sum(Signal::ALL
                .into_iter()
                .map(|signal| {
                    let folded = self.folded.get(&signal).copied().unwrap_or(0);
                    number(
                        vec![key_value(
                            "metric",
                            Value::StringValue(signal.name().into()),
                        )],
                        NumberValue::AsInt(i64::try_from(folded).unwrap_or(i64::MAX)),
                    )
                })
                .collect())),
            ..Default::default()
        });
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "daena-trace-agent/signals".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// The help of `daena_signals_folded`.
const FOLDED_HELP: &str =
    "Observations whose label set was past max_series_per_metric, added to the __other__ series";

/// The table, shared by the stage that fills it and the collector that shows it.
#[derive(Debug, Clone)]
pub struct Signals(Arc<Mutex<SignalTable>>);

impl Default for Signals {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(SignalTable::new())))
    }
}

impl Signals {
    /// The table, locked (a panic elsewhere while it was held leaves counts, not harm).
    pub fn lock(&self) -> MutexGuard<'_, SignalTable> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shows the table on `/metrics`.
#[derive(Debug)]
pub struct SignalsCollector(pub Signals);

impl Collector for SignalsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let table = self.0.lock();
        for signal in Signal::ALL {
            let (name, help, label_names, kind) = signal.describe();
            let metric_type = match kind {
                Kind::Counter | Kind::Billionths => MetricType::Counter,
                Kind::Histogram => MetricType::Histogram,
            };
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (values, tally) in table.series(signal) {
                let labels: Vec<(&str, &str)> = label_names
                    .iter()
                    .copied()
                    .zip(values.iter().map(String::as_str))
                    .collect();
                let series = family.encode_family(&labels)?;
                let units = units(tally.billionths);
                match kind {
                    Kind::Counter => ConstCounter::new(tally.count).encode(series)?,
                    Kind::Billionths => ConstCounter::new(units).encode(series)?,
                    Kind::Histogram => {
                        // Per bucket, not cumulative: the encoder adds them up.
                        let buckets: Vec<(f64, u64)> = BUCKETS
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(tally.buckets)
                            .collect();
                        let mut series = series;
                        series.encode_histogram::<Vec<(&str, &str)>>(
                            units,
                            tally.count,
                            &buckets,
                            None,
                        )?;
                    }
                }
            }
        }
        let mut folded = encoder.encode_descriptor(
            "daena_signals_folded",
            FOLDED_HELP,
            None,
            MetricType::Counter,
        )?;
        for signal in Signal::ALL {
            let n = table.folded.get(&signal).copied().unwrap_or(0);
            let labels = [("metric", signal.name())];
            ConstCounter::new(n).encode(folded.encode_family(&labels.to_vec())?)?;
        }
        Ok(())
    }
}

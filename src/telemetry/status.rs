//! The status page for a person: `GET /` serves one self-contained HTML page
//! (`status.html`: inline styles and script, nothing fetched from elsewhere) that refreshes
//! itself every 2 s from `GET /status.json`.
//!
//! The JSON's counters and gauges are read from the `/metrics` text itself, parsed into
//! series, so the page shows what `/metrics` shows whatever families the metrics declare;
//! per-second rates divide the change since an earlier reading, kept here, by the time
//! between them. Exporters' errors come from [`Health`], the Daena mix from [`DaenaMix`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use serde::Serialize;

use super::Metrics;
use super::health::Health;
use super::memory;
use super::mix::{DaenaMix, MixSnapshot};
use super::signals::Headline;

/// The page, served as it is.
const PAGE: &str = include_str!("status.html");

/// Nothing but the page's own inline style and script, and fetches to this origin: the
/// page works without internet and cannot be made to load anything from elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A rate needs readings at least this far apart to mean something.
const MIN_RATE_INTERVAL: Duration = Duration::from_secs(1);
/// Readings closer together than this are not kept (several open pages refresh at once).
const MIN_READING_GAP: Duration = Duration::from_millis(250);
/// Readings kept for rates: enough for a reading a second old with pages refreshing often.
const READINGS: usize = 8;

/// The memory limits of the config, which the page shows the memory figures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// `memory_limit.soft`, in bytes.
    pub soft: u64,
    /// `memory_limit.hard`, in bytes.
    pub hard: u64,
    /// `memory_limit.budget` (or its default), in bytes.
    pub budget: u64,
}

/// `GET /` (the page) and `GET /status.json` (what it shows), to merge into the telemetry
/// endpoint's router; `warnings` are shown at the top of the page (e.g. the console fallback).
pub fn routes(
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mix: Arc<DaenaMix>,
    limits: MemoryLimits,
    warnings: Vec<String>,
) -> Router {
    let mut status = Status::new(metrics, health, mix, limits);
    status.warnings = warnings;
    let status = Arc::new(status);
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .with_state(status)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

async fn status_json(State(status): State<Arc<Status>>) -> Response {
    match serde_json::to_vec(&status.report()) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the status: {error}"),
        )
            .into_response(),
    }
}

/// What the status endpoint reads, and its earlier readings for rates.
struct Status {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mix: Arc<DaenaMix>,
    limits: MemoryLimits,
    /// What the agent warns of for as long as it runs, e.g. spans going to the console.
    warnings: Vec<String>,
    started: Instant,
    /// Earlier readings of the counters, oldest first; the first one is taken at start, so
    /// the first page load already has rates (averaged since start).
    readings: Mutex<VecDeque<Reading>>,
}

/// The counters at one moment, by series.
struct Reading {
    at: Instant,
    values: HashMap<String, f64>,
}

impl Status {
    fn new(
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        mix: Arc<DaenaMix>,
        limits: MemoryLimits,
    ) -> Self {
        let started = Instant::now();
        let first = Reading {
            at: started,
            values: values_by_series(&Samples::parse(&metrics.render())),
        };
        Self {
            metrics,
            health,
            mix,
            limits,
            warnings: Vec::new(),
            started,
            readings: Mutex::new(VecDeque::from([first])),
        }
    }

    /// The status now, its rates against an earlier reading.
    fn report(&self) -> StatusReport {
        let samples = Samples::parse(&self.metrics.render());
        let now = Instant::now();
        let values = values_by_series(&samples);
        let rates = self.rates_since_earlier_reading(now, values);
        let exporters = self.exporters(&samples, &rates);
        let load_balancers = load_balancers(&samples, &rates);
        // The filter's drops are noise removed on purpose, not spans given up.
        let (filtered, dropped) = rates
            .counter(&samples, "daena_agent_spans_dropped_total")
            .split("stage", "filter");
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            generated_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            uptime_seconds: now.duration_since(self.started).as_secs_f64(),
            warnings: self.warnings.clone(),
            rate_interval_seconds: rates.interval.map(|i| i.as_secs_f64()),
            spans: SpanFlow {
                received: rates.counter(&samples, "daena_agent_spans_received_total"),
                exported: rates.counter(&samples, "daena_agent_spans_exported_total"),
                refused: rates.counter(&samples, "daena_agent_spans_refused_total"),
                dropped,
                filtered,
                requests_refused: rates.counter(&samples, "daena_agent_requests_refused_total"),
            },
            exporters,
            load_balancers,
            sampling: SamplingView {
                spans: rates.counter(&samples, "daena_agent_sampling_spans_total"),
                traces: rates.counter(&samples, "daena_agent_sampling_traces_total"),
                late_spans: rates.counter(&samples, "daena_agent_sampling_late_spans_total"),
                decided_early: rates.counter(&samples, "daena_agent_sampling_decided_early_total"),
            },
            memory: MemoryView {
                resident_bytes: samples
                    .value("process_resident_memory_bytes", &[])
                    .map(whole)
                    .or_else(memory::resident_bytes),
                soft_limit_bytes: self.limits.soft,
                hard_limit_bytes: self.limits.hard,
                budget_used_bytes: samples
                    .value("daena_agent_memory_budget_used_bytes", &[])
                    .map(whole),
                budget_bytes: self.limits.budget,
            },
            daena_mix: self.mix.snapshot(),
            signals: self.metrics.signals().lock().headline(),
        }
    }

    /// Rates of `values` (read at `now`) against the newest earlier reading at least
    /// [`MIN_RATE_INTERVAL`] old (or the oldest one, if none is), keeping `values` as a
    /// reading for later.
    fn rates_since_earlier_reading(&self, now: Instant, values: HashMap<String, f64>) -> Rates {
        let mut readings = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        let earlier = readings
            .iter()
            .rev()
            .find(|r| now.duration_since(r.at) >= MIN_RATE_INTERVAL)
            .or_else(|| readings.front());
        let rates = match earlier {
            Some(earlier) if now.duration_since(earlier.at) >= MIN_RATE_INTERVAL => {
                let seconds = now.duration_since(earlier.at).as_secs_f64();
                let per_second = values
                    .iter()
                    .map(|(series, value)| {
                        let before = earlier.values.get(series).copied().unwrap_or(0.0);
                        // A counter never goes down; a series that did was replaced.
                        (series.clone(), ((value - before) / seconds).max(0.0))
                    })
                    .collect();
                Rates {
                    interval: Some(now.duration_since(earlier.at)),
                    per_second,
                }
            }
            _ => Rates::default(),
        };
        let newest_gap = readings.back().map(|r| now.duration_since(r.at));
        if newest_gap.is_none_or(|gap| gap >= MIN_READING_GAP) {
            if readings.len() >= READINGS {
                readings.pop_front();
            }
            readings.push_back(Reading { at: now, values });
        }
        rates
    }

    /// Every exporter [`Health`] knows, in its order, then any other the metrics name.
    fn exporters(&self, samples: &Samples, rates: &Rates) -> Vec<ExporterView> {
        let health = self.health.exporters();
        let mut names: Vec<String> = health.iter().map(|e| e.exporter.clone()).collect();
        let mut from_metrics: Vec<String> = samples
            .label_values("daena_agent_spans_exported_total", "exporter")
            .chain(samples.label_values("daena_agent_queue_spans", "exporter"))
            .chain(samples.label_values("daena_agent_export_failures_total", "exporter"))
            .chain(
                samples
                    .label_values("daena_agent_spans_dropped_total", "stage")
                    .filter_map(|stage| stage.strip_prefix("exporter/").map(str::to_owned)),
            )
            .filter(|name| !names.contains(name))
            .collect();
        from_metrics.sort();
        from_metrics.dedup();
        names.extend(from_metrics);
        names
            .into_iter()
            .map(|name| {
                let status = health.iter().find(|e| e.exporter == name);
                let exporter = [("exporter", name.as_str())];
                let exported =
                    rates.counter_of(samples, "daena_agent_spans_exported_total", &exporter);
                let stage = format!("exporter/{name}");
                ExporterView {
                    queue_spans: samples
                        .value("daena_agent_queue_spans", &exporter)
                        .map(whole),
                    queue_bytes: samples
                        .value("daena_agent_queue_bytes", &exporter)
                        .map(whole),
                    exported_total: exported.total,
                    exported_per_second: exported.per_second,
                    failures_total: samples
                        .sum("daena_agent_export_failures_total", &exporter)
                        .map_or(0, whole),
                    dropped_total: samples
                        .sum("daena_agent_spans_dropped_total", &[("stage", &stage)])
                        .map_or(0, whole),
                    failing: status.is_some_and(|s| s.failing()),
                    failing_since: status.and_then(|s| s.failing_since.clone()),
                    queue_full: status.is_some_and(|s| s.queue_full),
                    last_error: status.and_then(|s| s.last_error.clone()),
                    last_error_at: status.and_then(|s| s.last_error_at.clone()),
                    last_success_at: status.and_then(|s| s.last_success_at.clone()),
                    exporter: name,
                }
            })
            .collect()
    }
}

/// `/status.json`. Totals count since the agent started; each `per_second` is over the
/// last `rate_interval_seconds` (`null` until two readings are a second apart).
#[derive(Debug, Serialize)]
struct StatusReport {
    /// The agent's version.
    version: &'static str,
    /// When this was read, RFC 3339, UTC.
    generated_at: String,
    /// Seconds since the telemetry endpoint started.
    uptime_seconds: f64,
    /// What the agent warns of for as long as it runs (the page shows each as a banner).
    warnings: Vec<String>,
    /// Seconds the rates are measured over.
    rate_interval_seconds: Option<f64>,
    /// Spans in, out, refused and dropped.
    spans: SpanFlow,
    /// Each exporter's queue, deliveries and errors.
    exporters: Vec<ExporterView>,
    /// Each loadbalancing exporter (one per `exporter` of `daena_agent_lb_backends`) and
    /// its backends, by name; empty when there is none.
    load_balancers: Vec<LoadBalancerView>,
    /// The samplers' decisions.
    sampling: SamplingView,
    /// Memory against its limits.
    memory: MemoryView,
    /// Spans per Daena component, council phase and LLM model, over the last minutes.
    daena_mix: MixSnapshot,
    /// The Daena signals' headline figures, from every span before sampling.
    signals: Headline,
}

/// The span counters, each with its series by label.
#[derive(Debug, Serialize)]
struct SpanFlow {
    /// `daena_agent_spans_received_total`, by `protocol`.
    received: CounterView,
    /// `daena_agent_spans_exported_total`, by `exporter`.
    exported: CounterView,
    /// `daena_agent_spans_refused_total`, by `protocol` and `reason`.
    refused: CounterView,
    /// `daena_agent_spans_dropped_total`, by `stage` and `reason`, but the filter's.
    dropped: CounterView,
    /// `daena_agent_spans_dropped_total{stage="filter"}`: noise removed, by `reason`.
    filtered: CounterView,
    /// `daena_agent_requests_refused_total` (requests, not spans), by `protocol` and `reason`.
    requests_refused: CounterView,
}

/// The sampling counters.
#[derive(Debug, Serialize)]
struct SamplingView {
    /// `daena_agent_sampling_spans_total`, by `kind` (`kept`, `dropped`).
    spans: CounterView,
    /// `daena_agent_sampling_traces_total`, by `policy` and `outcome`.
    traces: CounterView,
    /// `daena_agent_sampling_late_spans_total`, by `kind`.
    late_spans: CounterView,
    /// `daena_agent_sampling_decided_early_total`.
    decided_early: CounterView,
}

/// One counter family: its sum over every series, and each series.
#[derive(Debug, Default, Serialize)]
struct CounterView {
    /// The sum of the series.
    total: u64,
    /// The sum's rate.
    per_second: Option<f64>,
    /// Each series, ordered by its labels.
    series: Vec<SeriesView>,
}

/// One series of a counter.
#[derive(Debug, Serialize)]
struct SeriesView {
    /// Its labels, as in `/metrics`.
    labels: BTreeMap<String, String>,
    /// Its value.
    total: u64,
    /// Its rate.
    per_second: Option<f64>,
}

/// One exporter.
#[derive(Debug, Serialize)]
struct ExporterView {
    /// Its name in the config.
    exporter: String,
    /// `daena_agent_queue_spans`: spans in its queue now (`null` when not reported).
    queue_spans: Option<u64>,
    /// `daena_agent_queue_bytes`: bytes in its queue now (`null` when not reported).
    queue_bytes: Option<u64>,
    /// Spans it delivered.
    exported_total: u64,
    /// Spans it delivers per second.
    exported_per_second: Option<f64>,
    /// Failed export attempts, retried or final.
    failures_total: u64,
    /// Spans it dropped, for any reason.
    dropped_total: u64,
    /// Whether it is failing now (its last attempt failed, or its queue is full).
    failing: bool,
    /// When its current outage began.
    failing_since: Option<String>,
    /// Whether its queue is full now.
    queue_full: bool,
    /// Its last error, even after it recovered.
    last_error: Option<String>,
    /// When that error happened.
    last_error_at: Option<String>,
    /// When it last delivered a batch.
    last_success_at: Option<String>,
}

/// One loadbalancing exporter: its consistent-hash ring's members and what moved between them.
#[derive(Debug, Serialize)]
struct LoadBalancerView {
    /// Its name in the config.
    exporter: String,
    /// `daena_agent_lb_backends`: backends it routes over now.
    backends: u64,
    /// `daena_agent_lb_membership_changes_total`: changes of its backends after the first
    /// resolution.
    membership_changes_total: u64,
    /// `daena_agent_lb_rerouted_spans_total`: spans queued for a backend that left, or that
    /// was down past `reroute_after`, handed to another backend.
    rerouted_spans_total: u64,
    /// Spans re-routed per second.
    rerouted_per_second: Option<f64>,
    /// `daena_agent_lb_member`: its backends now, by `backend`.
    members: Vec<MemberView>,
}

/// One backend of a loadbalancing exporter.
#[derive(Debug, Serialize)]
struct MemberView {
    /// Its `host:port`.
    backend: String,
    /// Whether traces are routed to it; `false`: down past `reroute_after`, its share goes
    /// to the other backends until it is back.
    routed: bool,
    /// Its row in `exporters`: `<load balancer>/<backend>`.
    exporter: String,
}

/// Memory against the configured limits.
#[derive(Debug, Serialize)]
struct MemoryView {
    /// The resident set (`process_resident_memory_bytes`, else read from `/proc`).
    resident_bytes: Option<u64>,
    /// `memory_limit.soft`: above it the receivers refuse.
    soft_limit_bytes: u64,
    /// `memory_limit.hard`: above it the agent logs an error.
    hard_limit_bytes: u64,
    /// `daena_agent_memory_budget_used_bytes`: bytes of requests in hand.
    budget_used_bytes: Option<u64>,
    /// `memory_limit.budget`.
    budget_bytes: u64,
}

/// Per-second rates by series, and the interval they are measured over.
#[derive(Default)]
struct Rates {
    interval: Option<Duration>,
    per_second: HashMap<String, f64>,
}

impl Rates {
    /// Family `name` with its sum, each series, and their rates.
    fn counter(&self, samples: &Samples, name: &str) -> CounterView {
        self.counter_of(samples, name, &[])
    }

    /// The series of family `name` that have the labels `with`, summed, with their rates.
    fn counter_of(&self, samples: &Samples, name: &str, with: &[(&str, &str)]) -> CounterView {
        let rate = |sample: &Sample| {
            self.interval
                .map(|_| self.per_second.get(&sample.key()).copied().unwrap_or(0.0))
        };
        let mut series: Vec<SeriesView> = samples
            .matching(name, with)
            .map(|sample| SeriesView {
                labels: sample.labels.iter().cloned().collect(),
                total: whole(sample.value),
                per_second: rate(sample),
            })
            .collect();
        // `/metrics` lists a family's series in no fixed order; the page's rows keep still.
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        CounterView::of(series, self.interval.is_some())
    }
}

impl CounterView {
    /// The sum of `series`, with the sum of their rates when rates are known.
    fn of(series: Vec<SeriesView>, rated: bool) -> Self {
        Self {
            total: series.iter().map(|s| s.total).sum(),
            // Folded from +0.0: an empty f64 sum is -0.0, which would show as "-0.0".
            per_second: rated.then(|| {
                series
                    .iter()
                    .filter_map(|s| s.per_second)
                    .fold(0.0, |sum, rate| sum + rate)
            }),
            series,
        }
    }

    /// Splits the series by `label == value`: (those with it, the others).
    fn split(self, label: &str, value: &str) -> (Self, Self) {
        let rated = self.per_second.is_some();
        let (with, without) = self
            .series
            .into_iter()
            .partition(|s| s.labels.get(label).is_some_and(|v| v == value));
        (Self::of(with, rated), Self::of(without, rated))
    }
}

/// Each loadbalancing exporter the metrics name, by name, with its members by backend.
fn load_balancers(samples: &Samples, rates: &Rates) -> Vec<LoadBalancerView> {
    let mut names: Vec<String> = samples
        .label_values("daena_agent_lb_backends", "exporter")
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let exporter = [("exporter", name.as_str())];
            let rerouted =
                rates.counter_of(samples, "daena_agent_lb_rerouted_spans_total", &exporter);
            let mut members: Vec<MemberView> = samples
                .matching("daena_agent_lb_member", &exporter)
                .filter_map(|sample| {
                    let (_, backend) = sample.labels.iter().find(|(l, _)| l == "backend")?;
                    Some(MemberView {
                        exporter: format!("{name}/{backend}"),
                        backend: backend.clone(),
                        routed: sample.value > 0.0,
                    })
                })
                .collect();
            // `/metrics` lists the series in no fixed order; the page's rows keep still.
            members.sort_by(|a, b| a.backend.cmp(&b.backend));
            LoadBalancerView {
                backends: samples
                    .value("daena_agent_lb_backends", &exporter)
                    .map_or(0, whole),
                membership_changes_total: samples
                    .value("daena_agent_lb_membership_changes_total", &exporter)
                    .map_or(0, whole),
                rerouted_spans_total: rerouted.total,
                rerouted_per_second: rerouted.per_second,
                members,
                exporter: name,
            }
        })
        .collect()
}

/// A counter or gauge value as a whole number (they count spans, bytes or events).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // saturating by design
fn whole(value: f64) -> u64 {
    value.max(0.0) as u64
}

/// Every sample's value, by series.
fn values_by_series(samples: &Samples) -> HashMap<String, f64> {
    samples
        .0
        .iter()
        .map(|sample| (sample.key(), sample.value))
        .collect()
}

/// The samples of a Prometheus (or OpenMetrics) text exposition.
struct Samples(Vec<Sample>);

/// One sample: a series (name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    /// The series, as a key that tells it from every other.
    fn key(&self) -> String {
        let mut key = self.name.clone();
        for (label, value) in &self.labels {
            key.push('\0');
            key.push_str(label);
            key.push('\0');
            key.push_str(value);
        }
        key
    }

    fn has(&self, with: &[(&str, &str)]) -> bool {
        with.iter()
            .all(|(label, value)| self.labels.iter().any(|(l, v)| l == label && v == value))
    }
}

impl Samples {
    /// The samples of `text`; comment lines and lines that do not parse are skipped.
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(parse_sample)
                .collect(),
        )
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0
            .iter()
            .filter(move |sample| sample.name == name && sample.has(with))
    }

    /// The value of the first series of `name` with the labels `with`.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, with).next().map(|sample| sample.value)
    }

    /// The sum of the series of `name` with the labels `with`; `None` when there are none.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, with)
            .map(|sample| sample.value)
            .reduce(|a, b| a + b)
    }

    /// The values label `label` takes in family `name`.
    fn label_values<'a>(
        &'a self,
        name: &'a str,
        label: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        self.matching(name, &[]).filter_map(move |sample| {
            sample
                .labels
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, v)| v.clone())
        })
    }
}

/// Parses `name{label="value",…} value [timestamp] [# exemplar]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once('=')?;
            let (value, after) = quoted(after.strip_prefix('"')?)?;
            labels.push((label.trim().to_owned(), value));
            rest = after;
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, its escapes (`\\`, `\"`, `\n`) undone, and the
/// text after the quote.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                escaped => value.push(escaped),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::{DropReason, RefusalReason};

    fn limits() -> MemoryLimits {
        MemoryLimits {
            soft: 256 << 20,
            hard: 320 << 20,
            budget: 128 << 20,
        }
    }

    /// The status of `metrics`, with no exporter health and an empty Daena mix.
    fn status_of(metrics: Arc<Metrics>) -> Status {
        Status::new(metrics, Arc::default(), Arc::default(), limits())
    }

    #[test]
    fn samples_parse_labels_with_escapes_and_skip_comments() {
        let text = "# TYPE x counter\nx_total{a=\"q\\\"uote\",b=\"back\\\\slash\\nline\"} 7\nup 1.5 1700000000\nbad{a=\"open 3\n# EOF\n";
        let samples = Samples::parse(text);
        assert_eq!(
            samples.0,
            [
                Sample {
                    name: "x_total".into(),
                    labels: vec![
                        ("a".into(), "q\"uote".into()),
                        ("b".into(), "back\\slash\nline".into())
                    ],
                    value: 7.0
                },
                Sample {
                    name: "up".into(),
                    labels: vec![],
                    value: 1.5
                },
            ]
        );
    }

    #[test]
    fn the_report_shows_what_metrics_counts_and_rates_over_a_second_or_more() {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        health.register("tempo").failed("connection refused");
        let status = Status::new(
            Arc::clone(&metrics),
            Arc::clone(&health),
            Arc::default(),
            limits(),
        );
        metrics.received("grpc", 30);
        metrics.received("http", 10);
        metrics.refused_spans("http", RefusalReason::PipelineFull, 4);
        metrics.exported("tempo", 25);
        metrics.exported("jaeger", 5);
        metrics.dropped("jaeger", DropReason::Rejected, 2);
        metrics.filtered("health_route", 7);

        // Pretend the reading taken at start was two seconds ago.
        {
            let mut readings = status.readings.lock().unwrap();
            readings[0].at = readings[0].at.checked_sub(Duration::from_secs(2)).unwrap();
        }
        let report = status.report();
        assert_eq!(report.spans.received.total, 40);
        // 40 spans over a little more than 2 s.
        let per_second = |rate: Option<f64>| rate.map(|r| (r * 10.0).round() / 10.0);
        assert_eq!(per_second(report.spans.received.per_second), Some(20.0));
        let grpc = &report.spans.received.series[0];
        assert_eq!(grpc.labels["protocol"], "grpc");
        assert_eq!((grpc.total, per_second(grpc.per_second)), (30, Some(15.0)));
        assert_eq!(
            report.spans.requests_refused.per_second.map(f64::to_bits),
            Some(0.0f64.to_bits())
        );
        assert_eq!(report.spans.refused.total, 4);
        assert_eq!(
            report.spans.dropped.total, 2,
            "noise removed is not given up"
        );
        assert_eq!(report.spans.filtered.total, 7);
        assert_eq!(
            report.spans.filtered.series[0].labels["reason"],
            "health_route"
        );
        assert!(report.rate_interval_seconds.is_some_and(|s| s >= 2.0));

        let names: Vec<_> = report.exporters.iter().map(|e| &e.exporter).collect();
        assert_eq!(
            names,
            ["tempo", "jaeger"],
            "health's order, then the metrics'"
        );
        let tempo = &report.exporters[0];
        assert!(tempo.failing);
        assert_eq!(tempo.last_error.as_deref(), Some("connection refused"));
        assert_eq!(tempo.exported_total, 25);
        assert_eq!(tempo.queue_spans, None, "no queue gauge in these metrics");
        assert_eq!(report.exporters[1].dropped_total, 2);
        assert_eq!(report.memory.soft_limit_bytes, 256 << 20);
        assert_eq!(report.memory.budget_used_bytes, Some(0), "the gauge, at 0");

        // A second report at once measures against the same earlier reading.
        let again = status.report();
        assert!(again.spans.received.per_second.is_some());
    }

    #[test]
    fn rates_are_absent_until_readings_are_a_second_apart() {
        let status = status_of(Arc::default());
        let report = status.report();
        assert_eq!(report.rate_interval_seconds, None);
        assert_eq!(report.spans.received.per_second, None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["spans"]["received"]["per_second"],
            serde_json::Value::Null
        );
        assert_eq!(json["daena_mix"]["window_seconds"], 300);
        assert_eq!(json["warnings"], serde_json::json!([]), "none unless given");
    }

    #[test]
    fn the_daena_signals_headline_sums_every_series() {
        use crate::telemetry::signals::{Signal, Tally};
        let metrics = Arc::new(Metrics::default());
        {
            let mut table = metrics.signals().lock();
            let requests = |count| Tally {
                count,
                ..Tally::default()
            };
            table.add(
                Signal::LlmRequests,
                &["m", "d", "true", "false"],
                &requests(3),
            );
            table.add(
                Signal::LlmRequests,
                &["m", "d", "false", "true"],
                &requests(1),
            );
            let cost = Tally {
                count: 4,
                billionths: 1_250_000_000,
                ..Tally::default()
            };
            table.add(Signal::LlmCost, &["m", "d"], &cost);
            table.add(Signal::CouncilRounds, &["d", "incomplete"], &requests(2));
        }
        let status = status_of(metrics);
        let json = serde_json::to_value(status.report()).unwrap();
        let signals = &json["signals"];
        assert_eq!(signals["llm_requests"], 4);
        assert_eq!(signals["llm_cost_usd"], 1.25);
        assert_eq!(signals["cas_hit_rate"], 0.75);
        assert_eq!(signals["near_dup_rate"], 0.25);
        assert_eq!(
            signals["council_rounds"],
            serde_json::json!([["incomplete", 2]])
        );
        assert_eq!(signals["http_requests"], 0);
    }

    #[test]
    fn load_balancers_show_their_backends_by_name_and_which_are_routed_to() {
        let none = status_of(Arc::default());
        let json = serde_json::to_value(none.report()).unwrap();
        assert_eq!(
            json["load_balancers"],
            serde_json::json!([]),
            "none declared"
        );

        let metrics = Arc::new(Metrics::default());
        let status = status_of(Arc::clone(&metrics));
        metrics.declare_loadbalancer("gateways");
        metrics.declare_loadbalancer("edge");
        for backend in ["10.0.0.3:4317", "10.0.0.1:4317", "10.0.0.2:4317"] {
            metrics.lb_member("gateways", backend, true);
        }
        metrics.lb_membership("gateways", 3, false);
        // One backend leaves; another is down past reroute_after, its queued spans moved.
        metrics.lb_member_left("gateways", "10.0.0.3:4317");
        metrics.lb_membership("gateways", 2, true);
        metrics.lb_member("gateways", "10.0.0.2:4317", false);
        metrics.lb_rerouted("gateways", 12);

        // Pretend the reading taken at start was two seconds ago.
        {
            let mut readings = status.readings.lock().unwrap();
            readings[0].at = readings[0].at.checked_sub(Duration::from_secs(2)).unwrap();
        }
        let report = status.report();
        let names: Vec<_> = report.load_balancers.iter().map(|l| &l.exporter).collect();
        assert_eq!(names, ["edge", "gateways"], "by name");
        let edge = &report.load_balancers[0];
        assert_eq!(
            (edge.backends, edge.members.len()),
            (0, 0),
            "not resolved yet"
        );
        let gateways = &report.load_balancers[1];
        assert_eq!(gateways.backends, 2);
        assert_eq!(
            gateways.membership_changes_total, 1,
            "the first resolution is no change"
        );
        assert_eq!(gateways.rerouted_spans_total, 12);
        // 12 spans over a little more than 2 s.
        assert_eq!(
            gateways
                .rerouted_per_second
                .map(|r| (r * 10.0).round() / 10.0),
            Some(6.0)
        );
        let members: Vec<_> = gateways
            .members
            .iter()
            .map(|m| (m.backend.as_str(), m.routed, m.exporter.as_str()))
            .collect();
        assert_eq!(
            members,
            [
                ("10.0.0.1:4317", true, "gateways/10.0.0.1:4317"),
                ("10.0.0.2:4317", false, "gateways/10.0.0.2:4317"),
            ],
            "by backend, the one that left gone"
        );
    }

    #[test]
    fn readings_are_bounded() {
        let status = status_of(Arc::default());
        let mut at = Instant::now();
        for _ in 0..100 {
            at += Duration::from_secs(1);
            let _ = status.rates_since_earlier_reading(at, HashMap::new());
        }
        assert_eq!(status.readings.lock().unwrap().len(), READINGS);
    }
}

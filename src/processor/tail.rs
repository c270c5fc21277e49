//! Tail sampling: spans are held per trace until `decision_wait` after the trace's last
//! span, then the whole trace is kept when a policy keeps it, else dropped whole.
//!
//! Memory is bounded by `max_traces`, `max_buffered_spans` and `max_buffered_bytes`: past
//! them the least recently active traces are decided early (by the same policies, on what
//! has arrived), never dropped undecided. Recent decisions are remembered so late spans
//! follow them.
//!
//! The traces of one request share its resource and scopes (an [`Arc`] each) rather than
//! copying them: a large resource over many traces is held, and counted, once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message;

use tokio::time::Instant;

use super::Processor;
use super::sampling::{ConsistentSampler, trace_id_randomness};
use crate::config::{PolicyConfig, PolicyKind, SamplingConfig};
use crate::otlp::{
    InstrumentationScope, Resource, ResourceSpans, ScopeSpans, Span, SpanBatch, StatusCode, Value,
};
use crate::telemetry::Metrics;

/// A trace id as a map key.
type TraceId = [u8; 16];

/// Holds traces and decides them whole.
pub struct TailSampler {
    wait: Duration,
    max_traces: usize,
    max_spans: usize,
    max_bytes: usize,
    policies: Vec<Policy>,
    coherent_by: Option<String>,
    pending: HashMap<TraceId, Pending>,
    /// (deadline, trace, generation) in deadline order; stale entries are skipped.
    deadlines: VecDeque<(Instant, TraceId, u64)>,
    buffered_spans: usize,
    /// Encoded bytes held: every held span, and each resource and scope they share once.
    buffered_bytes: usize,
    decided: DecisionCache,
    /// Council rounds (hashes of `coherent_by` values) kept, until when.
    kept_rounds: HashMap<u64, Instant>,
    /// Kept spans waiting to leave.
    ready: Vec<Fragment>,
    metrics: Arc<Metrics>,
    /// Decisions not yet handed to the metrics (counted per call, not per trace).
    counts: DecisionCounts,
    generation: u64,
}

/// One trace waiting for its decision.
struct Pending {
    fragments: Vec<Fragment>,
    spans: usize,
    generation: u64,
}

/// Spans of one trace that arrived together under one resource and scope.
struct Fragment {
    resource: Arc<Shared<ResourceHead>>,
    scope: Arc<Shared<ScopeHead>>,
    spans: Vec<Span>,
    /// Encoded size of `spans`.
    bytes: usize,
}

/// What a `ResourceSpans` holds besides its scopes.
#[derive(Clone)]
struct ResourceHead {
    resource: Option<Resource>,
    schema_url: String,
}

/// What a `ScopeSpans` holds besides its spans.
#[derive(Clone)]
struct ScopeHead {
    scope: Option<InstrumentationScope>,
    schema_url: String,
}

/// A resource or scope shared by the fragments of every trace that came with it.
struct Shared<T> {
    value: T,
    /// Encoded size, in the buffer's account while any held fragment refers to it.
    bytes: usize,
    /// Held (pending) fragments referring to it. An atomic only because the sampler must be
    /// `Send`; one thread ever touches it.
    held: AtomicUsize,
}

impl<T> Shared<T> {
    fn new(value: T, bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            value,
            bytes,
            held: AtomicUsize::new(0),
        })
    }

    /// Counts one more held fragment; the bytes to add to the account (the first one's only).
    fn hold(&self) -> usize {
        if self.held.fetch_add(1, Ordering::Relaxed) == 0 {
            self.bytes
        } else {
            0
        }
    }

    /// Counts one held fragment less; the bytes to take off the account (the last one's only).
    fn release(&self) -> usize {
        if self.held.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.bytes
        } else {
            0
        }
    }
}

impl Fragment {
    /// Bytes the account gains when the fragment is held.
    fn hold(&self) -> usize {
        self.bytes + self.resource.hold() + self.scope.hold()
    }

    /// Bytes the account loses when the held fragment is decided.
    fn release(&self) -> usize {
        self.bytes + self.resource.release() + self.scope.release()
    }
}

/// A policy built from its config.
struct Policy {
    name: String,
    rule: Rule,
}

enum Rule {
    Errors,
    Latency(Duration),
    Attribute {
        key: String,
        values: Vec<String>,
        at_least: Option<f64>,
    },
    Ratio(ConsistentSampler),
    RateLimit(TokenBucket),
}

impl TailSampler {
    /// Builds the sampler from a (validated) tail config.
    pub fn new(config: &SamplingConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            wait: config.decision_wait,
            max_traces: config.max_traces.max(1),
            max_spans: config.max_buffered_spans.max(1),
            max_bytes: usize::try_from(config.max_buffered_bytes.0).unwrap_or(usize::MAX),
            policies: config.policies.iter().map(Policy::new).collect(),
            coherent_by: config.coherent_by.clone(),
            pending: HashMap::new(),
            deadlines: VecDeque::new(),
            buffered_spans: 0,
            buffered_bytes: 0,
            decided: DecisionCache::new(config.decision_cache.max(1)),
            kept_rounds: HashMap::new(),
            ready: Vec::new(),
            metrics,
            counts: DecisionCounts::new(config.policies.len()),
            generation: 0,
        }
    }

    /// Takes the batch's spans in; kept spans of already decided traces stay in the batch.
    pub fn accept(&mut self, batch: &mut SpanBatch, now: Instant) {
        let (mut late_kept, mut late_dropped) = (0, 0);
        for resource_spans in std::mem::take(batch.resource_spans_mut()) {
            let ResourceSpans {
                resource,
                scope_spans,
                schema_url,
            } = resource_spans;
            let bytes = resource.as_ref().map_or(0, Message::encoded_len) + schema_url.len();
            let resource = Shared::new(
                ResourceHead {
                    resource,
                    schema_url,
                },
                bytes,
            );
            for ScopeSpans {
                scope,
                spans,
                schema_url,
            } in scope_spans
            {
                let bytes = scope.as_ref().map_or(0, Message::encoded_len) + schema_url.len();
                let scope = Shared::new(ScopeHead { scope, schema_url }, bytes);
                // This scope's spans, per trace, as fragments sharing resource and scope.
                let mut fragments: HashMap<TraceId, Fragment> = HashMap::new();
                for span in spans {
                    let fragment = fragments
                        .entry(trace_id(&span))
                        .or_insert_with(|| Fragment {
                            resource: Arc::clone(&resource),
                            scope: Arc::clone(&scope),
                            spans: Vec::new(),
                            bytes: 0,
                        });
                    fragment.bytes += span.encoded_len();
                    fragment.spans.push(span);
                }
                for (id, fragment) in fragments {
                    let spans = fragment.spans.len();
                    match self.decided.get(&id) {
                        Some(true) => {
                            late_kept += spans as u64;
                            self.ready.push(fragment);
                        }
                        Some(false) => late_dropped += spans as u64,
                        None => self.hold(id, fragment, spans, now),
                    }
                }
            }
        }
        if late_kept > 0 {
            self.metrics.late_spans(true, late_kept);
        }
        if late_dropped > 0 {
            self.metrics.late_spans(false, late_dropped);
        }
        self.counts.kept_spans += late_kept;
        self.counts.dropped_spans += late_dropped;
        let mut early = 0;
        while self.pending.len() > self.max_traces
            || self.buffered_spans > self.max_spans
            || self.buffered_bytes > self.max_bytes
        {
            let Some(id) = self.pop_oldest(None) else {
                break;
            };
            self.decide(id, now);
            early += 1;
        }
        if early > 0 {
            self.metrics.decided_early(early);
        }
        self.release(batch);
    }

    /// Decides every trace whose wait is over; their kept spans go into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut SpanBatch) {
        while let Some(id) = self.pop_oldest(Some(now)) {
            self.decide(id, now);
        }
        self.kept_rounds.retain(|_, until| *until > now);
        self.release(out);
    }

    /// Decides every trace now (at shutdown).
    pub fn decide_all(&mut self, now: Instant, out: &mut SpanBatch) {
        let ids: Vec<TraceId> = self.pending.keys().copied().collect();
        for id in ids {
            self.decide(id, now);
        }
        self.deadlines.clear();
        self.release(out);
    }

    /// Traces held now.
    pub fn held_traces(&self) -> usize {
        self.pending.len()
    }

    /// Encoded bytes held now: the spans, and each resource and scope they share once.
    pub fn held_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// The held trace whose deadline comes first (due by `now`, when given), skipping
    /// entries a later span of the same trace has superseded.
    fn pop_oldest(&mut self, now: Option<Instant>) -> Option<TraceId> {
        while let Some(&(deadline, id, generation)) = self.deadlines.front() {
            if now.is_some_and(|now| deadline > now) {
                return None;
            }
            self.deadlines.pop_front();
            if self
                .pending
                .get(&id)
                .is_some_and(|p| p.generation == generation)
            {
                return Some(id);
            }
        }
        None
    }

    fn hold(&mut self, id: TraceId, fragment: Fragment, spans: usize, now: Instant) {
        self.generation += 1;
        let generation = self.generation;
        let pending = self.pending.entry(id).or_insert_with(|| Pending {
            fragments: Vec::new(),
            spans: 0,
            generation,
        });
        self.buffered_bytes += fragment.hold();
        pending.fragments.push(fragment);
        pending.spans += spans;
        pending.generation = generation;
        self.buffered_spans += spans;
        self.deadlines.push_back((now + self.wait, id, generation));
    }

    /// Hands over the kept spans and the counts of the decisions since the last call.
    ///
    /// Fragments sharing a resource (and scope) leave as one `ResourceSpans` (and one
    /// `ScopeSpans`), so a shared resource is copied once per call, not once per trace.
    fn release(&mut self, out: &mut SpanBatch) {
        let out = out.decoded_mut();
        // Where each shared resource and scope went in `out`, by address: every one of
        // them stays alive in `ready` until the loop has seen its last fragment.
        let mut resources: HashMap<usize, usize> = HashMap::new();
        let mut scopes: HashMap<usize, (usize, usize)> = HashMap::new();
        for Fragment {
            resource,
            scope,
            spans,
            ..
        } in std::mem::take(&mut self.ready)
        {
            let scope_at = Arc::as_ptr(&scope) as usize;
            if let Some(&(r, s)) = scopes.get(&scope_at) {
                out[r].scope_spans[s].spans.extend(spans);
                continue;
            }
            let resource_at = Arc::as_ptr(&resource) as usize;
            let r = *resources.entry(resource_at).or_insert_with(|| {
                let ResourceHead {
                    resource,
                    schema_url,
                } = unwrap_or_clone(resource);
                out.push(ResourceSpans {
                    resource,
                    scope_spans: Vec::new(),
                    schema_url,
                });
                out.len() - 1
            });
            let ScopeHead { scope, schema_url } = unwrap_or_clone(scope);
            let scope_spans = &mut out[r].scope_spans;
            scope_spans.push(ScopeSpans {
                scope,
                spans,
                schema_url,
            });
            scopes.insert(scope_at, (r, scope_spans.len() - 1));
        }
        self.counts.flush(&self.policies, &self.metrics);
    }

    /// Decides one held trace by the policies, in order.
    fn decide(&mut self, id: TraceId, now: Instant) {
        let Some(mut pending) = self.pending.remove(&id) else {
            return;
        };
        self.buffered_spans -= pending.spans;
        for fragment in &pending.fragments {
            self.buffered_bytes -= fragment.release();
        }
        let spans: Vec<&Span> = pending.fragments.iter().flat_map(|f| &f.spans).collect();
        let round = self
            .coherent_by
            .as_deref()
            .and_then(|key| spans.iter().find_map(|s| string_attribute(s, key)))
            .map(round_hash);
        let randomness = round.unwrap_or_else(|| trace_id_randomness(&id));
        let keeper = if round.is_some_and(|r| self.kept_rounds.contains_key(&r)) {
            Some(Keeper::Round)
        } else {
            self.policies
                .iter_mut()
                .enumerate()
                .find_map(|(index, policy)| {
                    let by_ratio = policy.keeps(&spans, randomness, now)?;
                    Some(Keeper::Policy { index, by_ratio })
                })
        };
        let kept = keeper.is_some();
        self.counts.decide(keeper, pending.spans as u64);
        self.decided.insert(id, kept);
        match keeper {
            None => {}
            Some(Keeper::Round) => self.ready.append(&mut pending.fragments),
            Some(Keeper::Policy { index, by_ratio }) => {
                let rule = &self.policies[index].rule;
                if let Some(round) = round
                    && !by_ratio
                    && !matches!(rule, Rule::RateLimit(_))
                {
                    // A round kept for what one of its traces holds is kept whole for the wait.
                    self.kept_rounds.insert(round, now + self.wait);
                }
                // The ratio rule records its threshold, when the trace id was its randomness
                // (a round's hash is not what a backend would check `th` against).
                if let (Rule::Ratio(sampler), None) = (rule, round) {
                    for span in pending.fragments.iter_mut().flat_map(|f| &mut f.spans) {
                        sampler.record(&mut span.trace_state);
                    }
                }
                self.ready.append(&mut pending.fragments);
            }
        }
    }
}

/// Decisions and spans per outcome since the last flush.
struct DecisionCounts {
    /// Traces kept per policy, in config order.
    kept_by_policy: Vec<u64>,
    kept_by_round: u64,
    dropped: u64,
    kept_spans: u64,
    dropped_spans: u64,
}

impl DecisionCounts {
    fn new(policies: usize) -> Self {
        Self {
            kept_by_policy: vec![0; policies],
            kept_by_round: 0,
            dropped: 0,
            kept_spans: 0,
            dropped_spans: 0,
        }
    }

    fn decide(&mut self, keeper: Option<Keeper>, spans: u64) {
        match keeper {
            Some(Keeper::Round) => self.kept_by_round += 1,
            Some(Keeper::Policy { index, .. }) => self.kept_by_policy[index] += 1,
            None => self.dropped += 1,
        }
        if keeper.is_some() {
            self.kept_spans += spans;
        } else {
            self.dropped_spans += spans;
        }
    }

    fn flush(&mut self, policies: &[Policy], metrics: &Metrics) {
        for (policy, count) in policies.iter().zip(&mut self.kept_by_policy) {
            metrics.sampling_decisions(&policy.name, true, std::mem::take(count));
        }
        metrics.sampling_decisions("coherent_by", true, std::mem::take(&mut self.kept_by_round));
        metrics.sampling_decisions("none", false, std::mem::take(&mut self.dropped));
        metrics.sampled_spans(
            std::mem::take(&mut self.kept_spans),
            std::mem::take(&mut self.dropped_spans),
        );
    }
}

/// Why a trace was kept.
#[derive(Clone, Copy)]
enum Keeper {
    /// Its council round was kept by another of the round's traces.
    Round,
    /// A policy kept it; `by_ratio` when that was the consistent probability rule.
    Policy { index: usize, by_ratio: bool },
}

impl Processor for TailSampler {
    fn name(&self) -> &'static str {
        "tail sampling"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        self.accept(batch, Instant::now());
    }

    fn holds_spans(&self) -> bool {
        true
    }

    fn held_spans(&self) -> usize {
        self.buffered_spans
    }

    fn release_due(&mut self, out: &mut SpanBatch) {
        self.expire(Instant::now(), out);
    }

    fn release_all(&mut self, out: &mut SpanBatch) {
        self.decide_all(Instant::now(), out);
    }
}

impl Policy {
    fn new(config: &PolicyConfig) -> Self {
        let rule = match config.kind {
            PolicyKind::Errors => Rule::Errors,
            PolicyKind::Latency => Rule::Latency(config.threshold),
            PolicyKind::Attribute => Rule::Attribute {
                key: config.key.clone().unwrap_or_default(),
                values: config.values.clone(),
                at_least: config.at_least,
            },
            PolicyKind::Ratio => Rule::Ratio(ConsistentSampler::new(config.ratio.unwrap_or(1.0))),
            PolicyKind::RateLimit => {
                Rule::RateLimit(TokenBucket::new(config.traces_per_second.unwrap_or(1.0)))
            }
        };
        Self {
            name: config.name.clone(),
            rule,
        }
    }

    /// `Some(by_ratio)` when the policy keeps the trace.
    fn keeps(&mut self, spans: &[&Span], randomness: u64, now: Instant) -> Option<bool> {
        let keep = match &mut self.rule {
            Rule::Errors => spans.iter().any(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == StatusCode::Error as i32)
            }),
            Rule::Latency(threshold) => {
                let threshold = u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX);
                let duration =
                    |s: &&Span| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
                match spans.iter().find(|s| s.parent_span_id.is_empty()) {
                    Some(root) => duration(root) >= threshold,
                    None => spans.iter().map(duration).max().unwrap_or(0) >= threshold,
                }
            }
            Rule::Attribute {
                key,
                values,
                at_least,
            } => spans.iter().any(|s| {
                s.attributes.iter().filter(|kv| kv.key == *key).any(|kv| {
                    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(text)) => {
                            values.iter().any(|v| v == text)
                                || at_least
                                    .zip(text.trim().parse::<f64>().ok())
                                    .is_some_and(|(min, n)| n >= min)
                        }
                        #[allow(clippy::cast_precision_loss)]
                        Some(Value::IntValue(n)) => {
                            at_least.is_some_and(|min| *n as f64 >= min)
                                || values.iter().any(|v| *v == n.to_string())
                        }
                        Some(Value::DoubleValue(n)) => at_least.is_some_and(|min| *n >= min),
                        Some(Value::BoolValue(b)) => values.iter().any(|v| *v == b.to_string()),
                        _ => false,
                    }
                })
            }),
            Rule::Ratio(sampler) => return sampler.keeps(randomness).then_some(true),
            Rule::RateLimit(bucket) => bucket.take(now),
        };
        keep.then_some(false)
    }
}

/// At most `rate` tokens per second, a burst of one second's worth.
struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl TokenBucket {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate.max(1.0),
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Recent decisions, oldest forgotten first.
struct DecisionCache {
    capacity: usize,
    decisions: HashMap<TraceId, bool>,
    order: VecDeque<TraceId>,
}

impl DecisionCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            decisions: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &TraceId) -> Option<bool> {
        self.decisions.get(id).copied()
    }

    fn insert(&mut self, id: TraceId, kept: bool) {
        if self.decisions.insert(id, kept).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.decisions.remove(&old);
            }
        }
    }
}

/// The shared value itself when `shared` is its last reference, else a copy.
fn unwrap_or_clone<T: Clone>(shared: Arc<Shared<T>>) -> T {
    Arc::try_unwrap(shared).map_or_else(|shared| shared.value.clone(), |shared| shared.value)
}

fn trace_id(span: &Span) -> TraceId {
    let mut id = [0u8; 16];
    let n = span.trace_id.len().min(16);
    id[..n].copy_from_slice(&span.trace_id[..n]);
    id
}

fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
}

/// The 56-bit randomness of a council round: FNV-1a 64 of its id, the same in every
/// agent and process (no seed).
pub fn round_hash(round_id: &str) -> u64 {
    let hash = round_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash & ((1 << 56) - 1)
}

#[cfg(test)]
mod tests;

//! Tail sampling: spans are held per trace until `decision_wait` after the trace's last
//! span, then the whole trace is kept when a policy keeps it, else dropped whole.
//!
//! Memory is bounded by `max_traces`, `max_buffered_spans` and `max_buffered_bytes`: past
//! them the least recently active traces are decided early (by the same policies, on what
//! has arrived), never dropped undecided. Recent decisions are remembered so late spans
//! follow them.
//!
//! Spans are held encoded, a fraction of their decoded size: the policies read them in
//! place ([`SpanRef`]) and kept ones leave as the bytes they were held in, never encoded
//! again. The traces of one request share its encoded resource and scopes (an [`Arc`]
//! each) rather than copying them: a large resource over many traces is held, and
//! counted, once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use tokio::time::Instant;

use super::Processor;
use super::sampling::{ConsistentSampler, trace_id_randomness};
use crate::config::{PolicyConfig, PolicyKind, SamplingConfig};
use crate::otlp::view::{
    ScopeParts, SpanRef, ValueRef, field_len, spans_in_scope, walk_scopes, write_field_head,
    write_span_with_trace_state,
};
use crate::otlp::{ResourceSpans, ScopeSpans, Span, SpanBatch, StatusCode};
use crate::telemetry::Metrics;

/// A trace id as a map key.
type TraceId = [u8; 16];

/// `ExportTraceServiceRequest.resource_spans`.
const RESOURCE_SPANS_FIELD: u32 = 1;
/// `ResourceSpans.scope_spans`.
const SCOPE_SPANS_FIELD: u32 = 2;
/// `ScopeSpans.spans`.
const SPANS_FIELD: u32 = 2;

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
    /// What the buffered gauges last showed of this sampler, `(spans, bytes)`: they sum
    /// the samplers of every pipeline shard, so each moves them by its own change.
    shown: (usize, usize),
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
    resource: Arc<Shared>,
    scope: Arc<Shared>,
    /// The spans encoded as the span fields of a `ScopeSpans`, as they will leave.
    spans: Vec<u8>,
    /// How many spans `spans` holds.
    count: usize,
}

/// A resource or scope, encoded, shared by the fragments of every trace that came with it.
struct Shared {
    /// A `ResourceSpans` without its scopes, or a `ScopeSpans` without its spans: the
    /// fields that go before them when the fragments leave. In the buffer's account while
    /// any held fragment refers to it.
    head: Vec<u8>,
    /// Held (pending) fragments referring to it. An atomic only because the sampler must be
    /// `Send`; one thread ever touches it.
    held: AtomicUsize,
}

impl Shared {
    fn new(head: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            head,
            held: AtomicUsize::new(0),
        })
    }

    /// Counts one more held fragment; the bytes to add to the account (the first one's only).
    fn hold(&self) -> usize {
        if self.held.fetch_add(1, Ordering::Relaxed) == 0 {
            self.head.len()
        } else {
            0
        }
    }

    /// Counts one held fragment less; the bytes to take off the account (the last one's only).
    fn release(&self) -> usize {
        if self.held.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.head.len()
        } else {
            0
        }
    }
}

impl Fragment {
    /// The span fields `fields` (of one trace, as they came) under `resource` and `scope`.
    fn from_fields(resource: &Arc<Shared>, scope: &Arc<Shared>, fields: &[&[u8]]) -> Self {
        Self {
            resource: Arc::clone(resource),
            scope: Arc::clone(scope),
            spans: fields.concat(),
            count: fields.len(),
        }
    }

    /// Encodes `spans` (of one trace) under `resource` and `scope`.
    fn new(resource: &Arc<Shared>, scope: &Arc<Shared>, spans: &[Span]) -> Self {
        let len = prost::encoding::message::encoded_len_repeated(SPANS_FIELD, spans);
        let mut encoded = Vec::with_capacity(len);
        for span in spans {
            prost::encoding::message::encode(SPANS_FIELD, span, &mut encoded);
        }
        Self {
            resource: Arc::clone(resource),
            scope: Arc::clone(scope),
            spans: encoded,
            count: spans.len(),
        }
    }

    /// Bytes the account gains when the fragment is held.
    fn hold(&self) -> usize {
        self.spans.len() + self.resource.hold() + self.scope.hold()
    }

    /// Bytes the account loses when the held fragment is decided.
    fn release(&self) -> usize {
        self.spans.len() + self.resource.release() + self.scope.release()
    }

    /// Records `sampler`'s threshold in every span's `tracestate`, copying the rest of
    /// each span's bytes as they are.
    fn record(&mut self, sampler: &ConsistentSampler) {
        // Room for a short `ot=th:…` member more in each span.
        let mut recorded = Vec::with_capacity(self.spans.len() + 16 * self.count);
        for span in spans_in_scope(&self.spans) {
            let mut trace_state = SpanRef::parse(span).trace_state.to_owned();
            sampler.record(&mut trace_state);
            write_span_with_trace_state(&mut recorded, span, &trace_state);
        }
        self.spans = recorded;
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
            shown: (0, 0),
            counts: DecisionCounts::new(config.policies.len()),
            generation: 0,
        }
    }

    /// Takes the batch's spans in; kept spans of already decided traces stay in the batch.
    pub fn accept(&mut self, batch: &mut SpanBatch, now: Instant) {
        let mut late = (0, 0);
        // Encoded parts are regrouped as they came: no span is decoded or encoded.
        for (body, _) in std::mem::take(batch.encoded_mut()) {
            let mut resource: Option<(usize, Arc<Shared>)> = None;
            walk_scopes(&body, |parts| {
                let resource = match &resource {
                    Some((index, shared)) if *index == parts.resource_index => Arc::clone(shared),
                    _ => {
                        let shared = Shared::new(ScopeParts::head(parts.resource_spans));
                        resource = Some((parts.resource_index, Arc::clone(&shared)));
                        shared
                    }
                };
                let scope = Shared::new(ScopeParts::head(parts.scope_spans));
                let mut traces: HashMap<TraceId, Vec<&[u8]>> = HashMap::new();
                for (span, field) in parts.spans() {
                    traces
                        .entry(trace_id_of(span.trace_id))
                        .or_default()
                        .push(field);
                }
                for (id, fields) in traces {
                    let fragment = || Fragment::from_fields(&resource, &scope, &fields);
                    self.take(id, fields.len(), fragment, now, &mut late);
                }
            });
        }
        for resource_spans in std::mem::take(batch.decoded_mut()) {
            let ResourceSpans {
                resource,
                scope_spans,
                schema_url,
            } = resource_spans;
            let resource = Shared::new(
                ResourceSpans {
                    resource,
                    scope_spans: Vec::new(),
                    schema_url,
                }
                .encode_to_vec(),
            );
            for ScopeSpans {
                scope,
                spans,
                schema_url,
            } in scope_spans
            {
                let scope = Shared::new(
                    ScopeSpans {
                        scope,
                        spans: Vec::new(),
                        schema_url,
                    }
                    .encode_to_vec(),
                );
                // This scope's spans, per trace; a trace already dropped is never encoded.
                let mut traces: HashMap<TraceId, Vec<Span>> = HashMap::new();
                for span in spans {
                    traces.entry(trace_id(&span)).or_default().push(span);
                }
                for (id, spans) in traces {
                    let fragment = || Fragment::new(&resource, &scope, &spans);
                    self.take(id, spans.len(), fragment, now, &mut late);
                }
            }
        }
        let (late_kept, late_dropped) = late;
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

    /// Takes `count` spans of trace `id`: dropped when the trace was dropped, ready when it
    /// was kept (counted in `late`, kept then dropped), held otherwise. The fragment is
    /// made only when the spans stay.
    fn take(
        &mut self,
        id: TraceId,
        count: usize,
        fragment: impl FnOnce() -> Fragment,
        now: Instant,
        late: &mut (u64, u64),
    ) {
        match self.decided.get(&id) {
            Some(false) => late.1 += count as u64,
            Some(true) => {
                late.0 += count as u64;
                self.ready.push(fragment());
            }
            None => self.hold(id, fragment(), now),
        }
    }

    fn hold(&mut self, id: TraceId, fragment: Fragment, now: Instant) {
        self.generation += 1;
        let generation = self.generation;
        let pending = self.pending.entry(id).or_insert_with(|| Pending {
            fragments: Vec::new(),
            spans: 0,
            generation,
        });
        self.buffered_bytes += fragment.hold();
        self.buffered_spans += fragment.count;
        pending.spans += fragment.count;
        pending.fragments.push(fragment);
        pending.generation = generation;
        self.deadlines.push_back((now + self.wait, id, generation));
    }

    /// Hands over the kept spans (encoded, see [`encode_kept`]), the counts of the
    /// decisions since the last call, and what the buffer holds now.
    fn release(&mut self, out: &mut SpanBatch) {
        for (body, spans) in encode_kept(&std::mem::take(&mut self.ready)) {
            out.push_encoded(body, spans);
        }
        self.counts.flush(&self.policies, &self.metrics);
        let now = (self.buffered_spans, self.buffered_bytes);
        self.metrics.sampling_buffered(self.shown, now);
        self.shown = now;
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
        let spans: Vec<SpanRef<'_>> = pending
            .fragments
            .iter()
            .flat_map(|f| spans_in_scope(&f.spans))
            .map(SpanRef::parse)
            .collect();
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
                    for fragment in &mut pending.fragments {
                        fragment.record(sampler);
                    }
                }
                self.ready.append(&mut pending.fragments);
            }
        }
    }
}

/// Kept fragments as encoded parts of a batch (`resource_spans` fields), one per resource,
/// with their span counts. Fragments sharing a resource (and scope) leave as one
/// `ResourceSpans` (and one `ScopeSpans`), so a shared resource is copied once per call,
/// not once per trace. One part per resource, as a receiver hands on one per request, so
/// the batcher can take parts whole rather than decode a whole release to split it.
fn encode_kept(fragments: &[Fragment]) -> Vec<(Bytes, usize)> {
    // Each resource with its scopes, each scope with its fragments, in the order first
    // seen; found by address, every one of them alive in `fragments`.
    let mut resources: Vec<Under<'_, Under<'_, &Fragment>>> = Vec::new();
    let mut resource_at: HashMap<*const Shared, usize> = HashMap::new();
    let mut scope_at: HashMap<*const Shared, (usize, usize)> = HashMap::new();
    for fragment in fragments {
        if let Some(&(r, s)) = scope_at.get(&Arc::as_ptr(&fragment.scope)) {
            resources[r].1[s].1.push(fragment);
            continue;
        }
        let r = *resource_at
            .entry(Arc::as_ptr(&fragment.resource))
            .or_insert_with(|| {
                resources.push((&fragment.resource, Vec::new()));
                resources.len() - 1
            });
        let scopes = &mut resources[r].1;
        scopes.push((&fragment.scope, vec![fragment]));
        scope_at.insert(Arc::as_ptr(&fragment.scope), (r, scopes.len() - 1));
    }
    let scope_len = |(scope, fragments): &Under<'_, &Fragment>| {
        scope.head.len() + fragments.iter().map(|f| f.spans.len()).sum::<usize>()
    };
    resources
        .iter()
        .map(|(resource, scopes)| {
            let len = resource.head.len()
                + scopes
                    .iter()
                    .map(|s| field_len(SCOPE_SPANS_FIELD, scope_len(s)))
                    .sum::<usize>();
            let mut body = Vec::with_capacity(field_len(RESOURCE_SPANS_FIELD, len));
            write_field_head(&mut body, RESOURCE_SPANS_FIELD, len);
            body.extend_from_slice(&resource.head);
            let mut spans = 0;
            for scope in scopes {
                write_field_head(&mut body, SCOPE_SPANS_FIELD, scope_len(scope));
                body.extend_from_slice(&scope.0.head);
                for fragment in &scope.1 {
                    body.extend_from_slice(&fragment.spans);
                    spans += fragment.count;
                }
            }
            (Bytes::from(body), spans)
        })
        .collect()
}

/// A resource or scope with what leaves under it: scopes, or fragments.
type Under<'a, T> = (&'a Shared, Vec<T>);

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
    fn keeps(&mut self, spans: &[SpanRef<'_>], randomness: u64, now: Instant) -> Option<bool> {
        let keep = match &mut self.rule {
            Rule::Errors => spans
                .iter()
                .any(|s| s.status_code == StatusCode::Error as i32),
            Rule::Latency(threshold) => {
                let threshold = u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX);
                let duration =
                    |s: &SpanRef<'_>| s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
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
                s.attributes()
                    .filter(|(k, _)| *k == key.as_bytes())
                    .any(|(_, value)| match value.get() {
                        ValueRef::Str(text) => {
                            values.iter().any(|v| v == text)
                                || at_least
                                    .zip(text.trim().parse::<f64>().ok())
                                    .is_some_and(|(min, n)| n >= min)
                        }
                        #[allow(clippy::cast_precision_loss)]
                        ValueRef::Int(n) => {
                            at_least.is_some_and(|min| n as f64 >= min)
                                || values.iter().any(|v| *v == n.to_string())
                        }
                        ValueRef::Double(n) => at_least.is_some_and(|min| n >= min),
                        ValueRef::Bool(b) => values.iter().any(|v| *v == b.to_string()),
                        _ => false,
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

fn trace_id(span: &Span) -> TraceId {
    trace_id_of(&span.trace_id)
}

/// A trace id as the sampler keys it: its first 16 bytes, zero-padded.
fn trace_id_of(bytes: &[u8]) -> TraceId {
    let mut id = [0u8; 16];
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    id
}

fn string_attribute<'a>(span: &SpanRef<'a>, key: &str) -> Option<&'a str> {
    match span.attribute(key)? {
        ValueRef::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
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

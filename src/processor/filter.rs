//! The `filter` stage: drops noise before anything else pays for it. FastAPI's
//! instrumentation makes an INTERNAL `… http receive` / `… http send` span per ASGI event
//! of every request (two thirds of its spans), and Kubernetes probes every pod's
//! `/healthz` every few seconds, each probe a trace of its own. Rules drop the rest.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Processor;
use super::matcher::{Attributes, AttributesMatch, TextMatch};
use crate::config::filter::{FilterConfig, FilterRule, KeepOrDrop, SpanKindName, StatusName};
use crate::otlp::view::{SpanRead, ValueRef, Verdict, retain_spans, walk_spans};
use crate::otlp::{Span, SpanBatch, SpanKind, StatusCode};
use crate::telemetry::Metrics;

/// The attribute FastAPI's (ASGI) instrumentation puts on its send/receive spans.
const ASGI_EVENT_TYPE: &str = "asgi.event.type";
/// How long a probe's trace id is remembered, for its spans that come in later requests.
const PROBE_MEMORY: Duration = Duration::from_secs(60);
/// The most probe traces remembered (a probe every few seconds needs a few dozen).
const MAX_PROBE_TRACES: usize = 1024;

/// Drops ASGI event spans, health probes with their local subtree, and spans matching a rule.
pub struct NoiseFilter {
    drop_asgi: bool,
    health_routes: Vec<String>,
    rules: Vec<Rule>,
    metrics: Arc<Metrics>,
    /// Trace ids of probes (root health-probe spans) seen lately, oldest first.
    probe_traces: VecDeque<([u8; 16], Instant)>,
    probe_set: HashSet<[u8; 16]>,
    /// Per span of the current batch, in order: whether and why it goes (reused).
    decisions: Vec<Option<Drop>>,
    /// Per rule, for the current resource: whether its resource conditions hold (reused).
    resource_rules: Vec<bool>,
}

/// What the filter reads of a span, decoded or in place: its decisions are written once.
trait FilterSpan: SpanRead + Attributes {}

impl<T: SpanRead + Attributes> FilterSpan for T {}

/// One compiled rule.
struct Rule {
    /// Its `rule` label: the id, else the index.
    label: String,
    name: Option<TextMatch>,
    kind: Option<SpanKind>,
    status: Option<StatusCode>,
    attributes: AttributesMatch,
    resource: AttributesMatch,
}

/// Why a span is dropped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drop {
    Asgi,
    Health,
    Rule(usize),
}

impl NoiseFilter {
    /// Builds the stage from its (validated) config.
    pub fn new(config: &FilterConfig, metrics: Arc<Metrics>) -> Self {
        let rules: Vec<Rule> = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::new(i, &rule.value))
            .collect();
        metrics.declare_filter(&rules.iter().map(|r| r.label.clone()).collect::<Vec<_>>());
        Self {
            drop_asgi: config.asgi_send_receive == KeepOrDrop::Drop,
            health_routes: config.health_routes.clone(),
            rules,
            metrics,
            probe_traces: VecDeque::new(),
            probe_set: HashSet::new(),
            decisions: Vec::new(),
            resource_rules: Vec::new(),
        }
    }

    /// What to do with one span, before its subtree is known.
    fn classify(&self, span: &impl FilterSpan, resource_rules: &[bool]) -> Option<Drop> {
        let kind = span.kind();
        if kind == SpanKind::Internal && span.get(ASGI_EVENT_TYPE).is_some() {
            if self.drop_asgi {
                return Some(Drop::Asgi);
            }
            // A probe's ASGI span may come before its server span: its name says whose it is.
            if self.is_probe_asgi_name(span.name()) {
                return Some(Drop::Health);
            }
        }
        if kind == SpanKind::Server && self.is_probe(span) {
            return Some(Drop::Health);
        }
        self.rules
            .iter()
            .zip(resource_rules)
            .position(|(rule, resource)| *resource && rule.matches(span))
            .map(Drop::Rule)
    }

    /// Whether a SERVER span serves a health route: its `http.route`, else its
    /// `url.path` or `http.target` (without a query), else its name `GET /healthz`.
    fn is_probe(&self, span: &impl FilterSpan) -> bool {
        if self.health_routes.is_empty() {
            return false;
        }
        let route = ["http.route", "url.path", "http.target"]
            .iter()
            .find_map(|key| span.get(key))
            .and_then(|value| match value {
                ValueRef::Str(s) => Some(s.split('?').next().unwrap_or_default()),
                _ => None,
            })
            .or_else(|| span.name().split_once(' ').map(|(_, route)| route));
        route.is_some_and(|route| self.health_routes.iter().any(|r| r == route))
    }

    /// Whether an ASGI span's name, `GET /healthz http send`, is that of a probe's.
    fn is_probe_asgi_name(&self, name: &str) -> bool {
        let Some(server) = name
            .strip_suffix(" http send")
            .or_else(|| name.strip_suffix(" http receive"))
        else {
            return false;
        };
        server
            .split_once(' ')
            .is_some_and(|(_, route)| self.health_routes.iter().any(|r| r == route))
    }

    /// Remembers a probe's trace, forgetting those older than [`PROBE_MEMORY`].
    fn remember_probe(&mut self, trace: [u8; 16], now: Instant) {
        while let Some((old, at)) = self.probe_traces.front().copied() {
            if now.duration_since(at) < PROBE_MEMORY && self.probe_traces.len() < MAX_PROBE_TRACES {
                break;
            }
            self.probe_traces.pop_front();
            self.probe_set.remove(&old);
        }
        if self.probe_set.insert(trace) {
            self.probe_traces.push_back((trace, now));
        }
    }
}

impl Rule {
    fn new(index: usize, rule: &FilterRule) -> Self {
        Self {
            label: rule.id.clone().unwrap_or_else(|| index.to_string()),
            name: rule.name.as_deref().map(TextMatch::new),
            kind: rule.kind.map(|kind| match kind {
                SpanKindName::Unspecified => SpanKind::Unspecified,
                SpanKindName::Internal => SpanKind::Internal,
                SpanKindName::Server => SpanKind::Server,
                SpanKindName::Client => SpanKind::Client,
                SpanKindName::Producer => SpanKind::Producer,
                SpanKindName::Consumer => SpanKind::Consumer,
            }),
            status: rule.status.map(|status| match status {
                StatusName::Unset => StatusCode::Unset,
                StatusName::Ok => StatusCode::Ok,
                StatusName::Error => StatusCode::Error,
            }),
            attributes: AttributesMatch::new(&rule.attributes),
            resource: AttributesMatch::new(&rule.resource),
        }
    }

    /// Whether the span meets every condition but the resource's (checked per resource).
    fn matches(&self, span: &impl FilterSpan) -> bool {
        self.kind.is_none_or(|kind| span.kind() == kind)
            && self.status.is_none_or(|status| span.status() == status)
            && self
                .name
                .as_ref()
                .is_none_or(|name| name.matches(span.name()))
            && self.attributes.matches(span)
    }
}

impl Processor for NoiseFilter {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        // Encoded spans are read in place first: a batch with nothing to drop stays encoded.
        if self.keeps_every_encoded_span(batch) {
            return;
        }
        // First every span's fate, then the ASGI spans that turn out to be parents are
        // kept, then the spans go: three passes, no allocation once the buffers are warm.
        let mut decisions = std::mem::take(&mut self.decisions);
        decisions.clear();
        for resource_spans in batch.resource_spans_mut().iter() {
            let resource = resource_spans
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            self.resource_rules.clear();
            for rule in &self.rules {
                let applies = rule.resource.is_empty() || rule.resource.matches(resource);
                self.resource_rules.push(applies);
            }
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    decisions.push(self.classify(span, &self.resource_rules));
                }
            }
        }
        if decisions.contains(&Some(Drop::Asgi)) {
            self.keep_asgi_parents(batch, &mut decisions);
        }

        let now = Instant::now();
        let mut counts = [0u64; 2];
        let mut rule_counts = vec![0u64; self.rules.len()];
        // Probes that are not roots take their descendants in this batch; a probe that is a
        // root takes its whole trace, remembered for its spans in later requests.
        let mut subtree_roots: HashSet<([u8; 16], [u8; 8])> = HashSet::new();
        let mut new_probes = Vec::new();
        let mut index = 0;
        for resource_spans in batch.resource_spans_mut().iter_mut() {
            for scope_spans in &mut resource_spans.scope_spans {
                scope_spans.spans.retain(|span| {
                    index += 1;
                    match decisions.get(index - 1).copied().flatten() {
                        None => true,
                        Some(Drop::Asgi) => {
                            counts[0] += 1;
                            false
                        }
                        Some(Drop::Health) => {
                            counts[1] += 1;
                            if span.kind() == SpanKind::Server {
                                if span.parent_span_id.is_empty() {
                                    new_probes.push(ids(span).0);
                                } else {
                                    subtree_roots.insert(ids(span));
                                }
                            }
                            false
                        }
                        Some(Drop::Rule(i)) => {
                            rule_counts[i] += 1;
                            false
                        }
                    }
                });
            }
        }
        self.decisions = decisions;
        for trace in new_probes {
            self.remember_probe(trace, now);
        }
        if !self.probe_set.is_empty() || !subtree_roots.is_empty() {
            counts[1] += self.drop_probe_descendants(batch, &mut subtree_roots);
        }
        for (reason, count) in ["asgi_event", "health_route"].into_iter().zip(counts) {
            self.metrics.filtered(reason, count);
        }
        self.metrics.filtered("rule", rule_counts.iter().sum());
        for (rule, count) in self.rules.iter().zip(rule_counts) {
            self.metrics.filtered_by_rule(&rule.label, count);
        }
        prune_empty(batch);
    }
}

impl NoiseFilter {
    /// Whether the batch is all encoded and the filter would drop none of its spans,
    /// read in place: then it stays as it came, never decoded (Daena traffic without
    /// FastAPI's noise), only rid of scopes and resources without spans as the full path
    /// would be.
    fn keeps_every_encoded_span(&mut self, batch: &mut SpanBatch) -> bool {
        if !batch.decoded_mut().is_empty() {
            return false;
        }
        let mut resource_rules = std::mem::take(&mut self.resource_rules);
        let mut keeps = true;
        let mut to_prune = Vec::new();
        for (part, (body, _)) in batch.encoded_mut().iter().enumerate() {
            let mut resource_seen: Option<&[u8]> = None;
            let walked =
                walk_spans(body, |resource, span| {
                    if !keeps {
                        return;
                    }
                    if resource_seen.is_none_or(|seen| !std::ptr::eq(seen, resource.bytes())) {
                        resource_seen = Some(resource.bytes());
                        resource_rules.clear();
                        resource_rules.extend(self.rules.iter().map(|rule| {
                            rule.resource.is_empty() || rule.resource.matches(&resource)
                        }));
                    }
                    let trace: [u8; 16] = span.trace_id.try_into().unwrap_or_default();
                    keeps = self.classify(span, &resource_rules).is_none()
                        && !self.probe_set.contains(&trace);
                });
            if !keeps {
                break;
            }
            if walked.empty_containers {
                to_prune.push(part);
            }
        }
        self.resource_rules = resource_rules;
        if keeps {
            let parts = batch.encoded_mut();
            for part in to_prune {
                let (body, _) = &mut parts[part];
                *body = retain_spans(body, |_, _| Verdict::Keep).body.into();
            }
        }
        keeps
    }

    /// ASGI event spans are leaves; one that is the parent of a span of the batch the filter
    /// keeps is kept too (and counted), so no kept span loses its parent to the filter.
    fn keep_asgi_parents(&self, batch: &mut SpanBatch, decisions: &mut [Option<Drop>]) {
        let resource_spans = &*batch.resource_spans_mut();
        let spans = || {
            resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
        };
        let asgi: std::collections::HashMap<([u8; 16], [u8; 8]), usize> = spans()
            .zip(decisions.iter())
            .enumerate()
            .filter(|(_, (_, decision))| **decision == Some(Drop::Asgi))
            .map(|(i, (span, _))| (ids(span), i))
            .collect();
        // Only a kept child keeps its parent; a parent kept may keep its own parent in turn,
        // so repeat until nothing changes (each pass keeps at least one more span).
        let mut kept = 0;
        for _ in 0..asgi.len() {
            let before = kept;
            for (j, span) in spans().enumerate() {
                if decisions[j].is_some() || span.parent_span_id.is_empty() {
                    continue;
                }
                if let Some(&i) = asgi.get(&(ids(span).0, parent_id(span)))
                    && decisions[i].is_some()
                {
                    decisions[i] = None;
                    kept += 1;
                }
            }
            if kept == before {
                break;
            }
        }
        if kept > 0 {
            self.metrics.asgi_parents_kept(kept);
        }
    }

    /// Drops the spans of remembered probe traces, and the descendants (within the batch)
    /// of probes that are not roots; returns how many.
    fn drop_probe_descendants(
        &self,
        batch: &mut SpanBatch,
        roots: &mut HashSet<([u8; 16], [u8; 8])>,
    ) -> u64 {
        let mut dropped = 0;
        // A child may come before its parent in a request: repeat until nothing changes
        // (each pass drops at least one level, so a chain of n costs n passes).
        for _ in 0..64 {
            let before = dropped;
            for resource_spans in batch.resource_spans_mut().iter_mut() {
                for scope_spans in &mut resource_spans.scope_spans {
                    scope_spans.spans.retain(|span| {
                        let (trace, span_id) = ids(span);
                        let gone = self.probe_set.contains(&trace)
                            || (!roots.is_empty() && roots.contains(&(trace, parent_id(span))));
                        if gone {
                            dropped += 1;
                            if !roots.is_empty() {
                                roots.insert((trace, span_id));
                            }
                        }
                        !gone
                    });
                }
            }
            if dropped == before || roots.is_empty() {
                break;
            }
        }
        dropped
    }
}

/// The span's trace and span ids (zeros where malformed: the receivers refuse those).
fn ids(span: &Span) -> ([u8; 16], [u8; 8]) {
    (
        span.trace_id.as_slice().try_into().unwrap_or_default(),
        span.span_id.as_slice().try_into().unwrap_or_default(),
    )
}

fn parent_id(span: &Span) -> [u8; 8] {
    span.parent_span_id
        .as_slice()
        .try_into()
        .unwrap_or_default()
}

/// Removes scopes and resources left without spans.
fn prune_empty(batch: &mut SpanBatch) {
    let resource_spans = batch.resource_spans_mut();
    for rs in resource_spans.iter_mut() {
        rs.scope_spans.retain(|ss| !ss.spans.is_empty());
    }
    resource_spans.retain(|rs| !rs.scope_spans.is_empty());
}

#[cfg(test)]
mod tests;

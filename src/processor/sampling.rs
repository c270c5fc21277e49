//! Consistent probability sampling (OpenTelemetry "TraceState: Probability Sampling"):
//! the 56-bit rejection threshold `th`, randomness from the trace id or `rv`, and the
//! `tracestate` rewrite; and the head sampler that applies it to every span.
//!
//! A decision depends on the trace id (and `tracestate`) only: every agent, process and
//! restart decides the same trace the same way.

use std::sync::Arc;

use bytes::Bytes;

use super::Processor;
use crate::otlp::view::{Verdict, retain_spans};
use crate::otlp::{Span, SpanBatch};
use crate::telemetry::Metrics;

/// 2^56: thresholds and randomness are 56-bit.
const MAX: u64 = 1 << 56;

/// The rejection threshold for keeping `ratio` of traces: `(1 - ratio) * 2^56`, rounded to
/// four significant hex digits after any leading `f`s (the Collector's default precision),
/// so the encoded `th` stays short. 0 keeps everything.
pub fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let exact = ((1.0 - ratio) * MAX as f64).round() as u64;
    let exact = exact.min(MAX - 1);
    // Hex digits of `exact` (14 in all), leading `f`s first.
    let leading_f = (0..14)
        .take_while(|i| (exact >> (52 - 4 * i)) & 0xf == 0xf)
        .count();
    let digits = (4 + leading_f).min(14);
    let shift = 4 * (14 - digits) as u32;
    if shift == 0 {
        return exact;
    }
    let rounded = ((exact + (1 << (shift - 1))) >> shift) << shift;
    rounded.min(MAX - 1)
}

/// `th` as the spec encodes it: 14 hex digits with trailing zeros removed (`0` for 0).
pub fn encode_threshold(threshold: u64) -> String {
    if threshold == 0 {
        return "0".into();
    }
    let digits = format!("{threshold:014x}");
    digits.trim_end_matches('0').to_owned()
}

/// Parses a `th` or `rv` value: 1–14 hex digits, padded with trailing zeros.
fn parse_hex56(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 14 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u64::from_str_radix(text, 16).ok()?;
    Some(value << (4 * (14 - text.len())))
}

/// The `ot` member's sub-key `key` in a W3C `tracestate`.
fn ot_value<'a>(tracestate: &'a str, key: &str) -> Option<&'a str> {
    let ot = tracestate
        .split(',')
        .map(str::trim)
        .find_map(|member| member.strip_prefix("ot="))?;
    ot.split(';')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix(':'))
}

/// The randomness of a span: `rv` from its `tracestate` when present (exactly 14 hex
/// digits), else the trace id's 56 least-significant bits.
pub fn randomness(trace_id: &[u8], tracestate: &str) -> u64 {
    if let Some(rv) = ot_value(tracestate, "rv").filter(|rv| rv.len() == 14)
        && let Some(value) = parse_hex56(rv)
    {
        return value;
    }
    trace_id_randomness(trace_id)
}

/// The last seven bytes of a trace id, big-endian.
pub fn trace_id_randomness(trace_id: &[u8]) -> u64 {
    trace_id
        .iter()
        .rev()
        .take(7)
        .rev()
        .fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// The threshold an upstream sampler recorded in `tracestate`, if any.
pub fn upstream_threshold(tracestate: &str) -> Option<u64> {
    ot_value(tracestate, "th").and_then(parse_hex56)
}

/// `tracestate` with the `ot` member's `th` set to `threshold`: the `ot` member moves to
/// the front (W3C: a modified member goes first), its other sub-keys and every other
/// vendor's member are kept in order.
pub fn with_threshold(tracestate: &str, threshold: u64) -> String {
    let th = format!("th:{}", encode_threshold(threshold));
    let mut ot = th.clone();
    let mut others = Vec::new();
    for member in tracestate
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        match member.strip_prefix("ot=") {
            Some(value) => {
                ot = std::iter::once(th.as_str())
                    .chain(
                        value
                            .split(';')
                            .filter(|p| !p.starts_with("th:") && !p.is_empty()),
                    )
                    .collect::<Vec<_>>()
                    .join(";");
            }
            None => others.push(member),
        }
    }
    std::iter::once(format!("ot={ot}"))
        .chain(others.into_iter().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(",")
}

/// A downstream consistent probability sampler (the spec's "equalizing" one).
#[derive(Debug, Clone)]
pub struct ConsistentSampler {
    threshold: u64,
    /// The `tracestate` of a kept span that had none: the common case, built once.
    alone: String,
}

impl ConsistentSampler {
    /// Keeps `ratio` of traces.
    pub fn new(ratio: f64) -> Self {
        let threshold = threshold(ratio);
        Self {
            threshold,
            alone: with_threshold("", threshold),
        }
    }

    /// Records this sampler's threshold in a kept span's `tracestate`.
    pub fn record(&self, tracestate: &mut String) {
        let mut recorded = String::new();
        self.write_recorded(tracestate, &mut recorded);
        *tracestate = recorded;
    }

    /// Writes `tracestate` with this sampler's threshold into `out`.
    fn write_recorded(&self, tracestate: &str, out: &mut String) {
        if tracestate.is_empty() {
            out.push_str(&self.alone);
        } else {
            out.push_str(&with_threshold(tracestate, self.threshold));
        }
    }

    /// Whether randomness `r` is kept.
    pub fn keeps(&self, r: u64) -> bool {
        r >= self.threshold
    }

    /// Decides a span and, when kept, records the threshold in its `tracestate`. A span
    /// an upstream sampler already sampled more selectively passes unchanged: a downstream
    /// sampler may only raise the threshold, never lower it.
    pub fn sample(&self, span: &mut Span) -> bool {
        let mut recorded = String::new();
        match self.decide(&span.trace_id, &span.trace_state, &mut recorded) {
            Verdict::Drop => false,
            Verdict::Keep => true,
            Verdict::KeepWithTraceState => {
                span.trace_state = recorded;
                true
            }
        }
    }

    /// Decides a span by its trace id and `tracestate`; when its `tracestate` must change,
    /// writes the new one into `recorded` (empty on entry).
    pub fn decide(&self, trace_id: &[u8], tracestate: &str, recorded: &mut String) -> Verdict {
        let upstream = upstream_threshold(tracestate);
        if upstream.is_some_and(|t| t >= self.threshold) {
            return Verdict::Keep;
        }
        if !self.keeps(randomness(trace_id, tracestate)) {
            return Verdict::Drop;
        }
        self.write_recorded(tracestate, recorded);
        Verdict::KeepWithTraceState
    }
}

/// Head mode: every span is decided at once by its trace id, consistently.
pub struct HeadSampler {
    sampler: ConsistentSampler,
    metrics: Arc<Metrics>,
}

impl HeadSampler {
    /// Keeps `ratio` of traces.
    pub fn new(ratio: f64, metrics: Arc<Metrics>) -> Self {
        Self {
            sampler: ConsistentSampler::new(ratio),
            metrics,
        }
    }
}

impl Processor for HeadSampler {
    fn name(&self) -> &'static str {
        "head sampling"
    }

    fn process(&mut self, batch: &mut SpanBatch) {
        let (mut kept, mut dropped) = (0, 0);
        // Encoded parts are decided on their bytes: the spans dropped are never decoded.
        batch.encoded_mut().retain_mut(|(body, spans)| {
            let retained = retain_spans(body, |span, trace_state| {
                self.sampler
                    .decide(span.trace_id, span.trace_state, trace_state)
            });
            kept += retained.kept as u64;
            dropped += retained.dropped as u64;
            *spans = retained.kept;
            if retained.changed {
                *body = Bytes::from(retained.body);
            }
            *spans > 0
        });
        for resource_spans in batch.decoded_mut().iter_mut() {
            for scope_spans in &mut resource_spans.scope_spans {
                scope_spans.spans.retain_mut(|span| {
                    let keep = self.sampler.sample(span);
                    if keep {
                        kept += 1;
                    } else {
                        dropped += 1;
                    }
                    keep
                });
            }
            resource_spans.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        batch.decoded_mut().retain(|rs| !rs.scope_spans.is_empty());
        self.metrics.sampled_spans(kept, dropped);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn thresholds_follow_the_specification() {
        assert_eq!(threshold(1.0), 0);
        assert_eq!(encode_threshold(threshold(1.0)), "0");
        assert_eq!(encode_threshold(threshold(0.5)), "8");
        assert_eq!(encode_threshold(threshold(0.25)), "c");
        assert_eq!(encode_threshold(threshold(0.1)), "e666");
        // The spec's example: 1% with its leading f, fd70a3d7… rounded.
        assert_eq!(encode_threshold(threshold(0.01)), "fd70a");
        assert_eq!(encode_threshold(threshold(0.001)), "ffbe77");
        assert_eq!(parse_hex56("8"), Some(1 << 55));
        assert_eq!(parse_hex56("fd70a4"), Some(0xfd70a4 << 32));
        assert_eq!(parse_hex56("0"), Some(0));
        for bad in ["", "123456789abcdef", "xyz"] {
            assert_eq!(parse_hex56(bad), None, "{bad}");
        }
    }

    /// Trace ids with their decisions at ratio 0.25 (threshold 0xc0000000000000):
    /// kept when the last seven bytes, big-endian, are at least the threshold.
    #[test]
    fn decisions_for_known_trace_ids() {
        let sampler = ConsistentSampler::new(0.25);
        let table = [
            ("0000000000000000 00c0000000000000", true),
            ("ffffffffffffffff ffbfffffffffffff", false),
            ("0123456789abcdef 01ffffffffffffff", true),
            ("0123456789abcdef 0100000000000000", false),
            ("a3ce929d0e0e4736 00d2a3b4c5d6e7f8", true),
            ("a3ce929d0e0e4736 004bf92f3577b34d", false),
        ];
        for (hex, kept) in table {
            let id = const_hex::decode(hex.replace(' ', "")).expect("hex");
            let mut span = Span {
                trace_id: id,
                ..Default::default()
            };
            assert_eq!(sampler.sample(&mut span), kept, "{hex}");
            if kept {
                assert_eq!(span.trace_state, "ot=th:c");
            }
        }
    }

    #[test]
    fn tracestate_keeps_other_vendors_and_only_raises_the_threshold() {
        let sampler = ConsistentSampler::new(0.5);
        let kept_id = [0xff; 16].to_vec();
        let mut span = Span {
            trace_id: kept_id.clone(),
            trace_state: "vendor=abc,ot=rv:ffffffffffffff;th:4;x:1,other=9".into(),
            ..Default::default()
        };
        assert!(sampler.sample(&mut span));
        assert_eq!(
            span.trace_state,
            "ot=th:8;rv:ffffffffffffff;x:1,vendor=abc,other=9"
        );
        // Upstream sampled at 1/16 (th:f): more selective than 1/2, so left as it is.
        let mut span = Span {
            trace_id: kept_id,
            trace_state: "ot=th:f".into(),
            ..Default::default()
        };
        assert!(sampler.sample(&mut span));
        assert_eq!(span.trace_state, "ot=th:f");
        // Explicit randomness wins over the trace id.
        let mut span = Span {
            trace_id: vec![0xff; 16],
            trace_state: "ot=rv:00000000000001".into(),
            ..Default::default()
        };
        assert!(!sampler.sample(&mut span));
    }

    #[test]
    fn kept_fractions_are_within_three_standard_deviations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(20261129);
        let ids: Vec<[u8; 16]> = (0..200_000).map(|_| rng.random()).collect();
        for ratio in [0.5, 0.1, 0.01] {
            let sampler = ConsistentSampler::new(ratio);
            let kept = ids
                .iter()
                .filter(|id| sampler.keeps(trace_id_randomness(*id)))
                .count();
            let n = ids.len() as f64;
            let sd = (n * ratio * (1.0 - ratio)).sqrt();
            let expected = n * ratio;
            assert!(
                (kept as f64 - expected).abs() <= 3.0 * sd,
                "ratio {ratio}: kept {kept}, expected {expected} ± {}",
                3.0 * sd
            );
        }
    }

    proptest! {
        #[test]
        fn a_trace_kept_at_a_ratio_is_kept_at_every_higher_ratio(id in any::<[u8; 16]>(), low in 0.001f64..1.0, high in 0.001f64..1.0) {
            let (low, high) = if low <= high { (low, high) } else { (high, low) };
            let r = trace_id_randomness(&id);
            prop_assert!(!ConsistentSampler::new(low).keeps(r) || ConsistentSampler::new(high).keeps(r));
        }

        /// The wire path against its oracle, the decoded path: the same spans kept, with
        /// the same `tracestate`, and the dropped ones never decoded.
        #[test]
        fn head_sampling_on_the_wire_keeps_what_it_keeps_decoded(
            request in crate::otlp::view::arbitrary::request(),
            ratio in prop::sample::select(vec![0.0001, 0.1, 0.5, 0.9, 1.0]),
        ) {
            use prost::Message;
            let spans = crate::otlp::span_count(&request.resource_spans);
            let mut wire = SpanBatch::from_encoded(Bytes::from(request.encode_to_vec()), spans);
            let mut decoded = SpanBatch::from_request(request);
            let (wire_metrics, decoded_metrics) = (Arc::new(Metrics::default()), Arc::new(Metrics::default()));
            HeadSampler::new(ratio, Arc::clone(&wire_metrics)).process(&mut wire);
            HeadSampler::new(ratio, Arc::clone(&decoded_metrics)).process(&mut decoded);
            prop_assert!(wire.clone().into_parts().1.is_empty(), "nothing decoded");
            prop_assert_eq!(wire.span_count(), decoded.span_count());
            prop_assert_eq!(wire.into_request(), decoded.into_request());
            let sampled = |metrics: &Metrics| -> Vec<String> {
                let mut lines: Vec<String> = metrics.render().lines().filter(|l| l.starts_with("daena_agent_sampling_spans_total")).map(str::to_owned).collect();
                lines.sort();
                lines
            };
            prop_assert_eq!(sampled(&wire_metrics), sampled(&decoded_metrics));
        }
    }
}

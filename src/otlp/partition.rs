//! Splitting a batch by a key of each span: every span of one trace (or of one council
//! round) into the same part. The pipeline's shards and the load-balancing exporter
//! route by it, so a tail sampler downstream sees whole traces.
//!
//! Encoded parts are split where they lie: a span's bytes are copied as they came, each
//! under a copy of its resource and scope, and only the enclosing lengths are new (as
//! [`view::retain_spans`](super::view::retain_spans) does). Decoded parts are split decoded.

use super::view::{Field, SpanRef, ValueRef, next_field, span_trace_id, write_field_head};
use super::{AnyValue, ResourceSpans, ScopeSpans, Span, SpanBatch, Value};

/// What routes a span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    /// Its trace id.
    TraceId,
    /// A string attribute of the span (`council.round_id`), or its trace id without one.
    Attribute(String),
}

impl RouteKey {
    /// The bytes that route a span read in place from its encoding.
    fn of_encoded<'a>(&self, span: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Attribute(key) => {
                let span = SpanRef::parse(span);
                match span.attribute(key) {
                    Some(ValueRef::Str(value)) if !value.is_empty() => value.as_bytes(),
                    _ => span.trace_id,
                }
            }
            Self::TraceId => span_trace_id(span),
        }
    }

    /// The bytes that route a decoded span.
    fn of_decoded<'a>(&self, span: &'a Span) -> &'a [u8] {
        if let Self::Attribute(key) = self {
            let value = span
                .attributes
                .iter()
                .rev()
                .find(|kv| kv.key == *key)
                .and_then(|kv| kv.value.as_ref());
            if let Some(AnyValue {
                value: Some(Value::StringValue(value)),
            }) = value
                && !value.is_empty()
            {
                return value.as_bytes();
            }
        }
        &span.trace_id
    }
}

/// A stable 64-bit hash of a routing key: FNV-1a, then the splitmix64 finaliser so that
/// nearby keys spread. Fixed, because every agent of any version must route alike.
pub fn route_hash(key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

impl SpanBatch {
    /// Splits the batch into `parts` batches (at least one): each span goes to the part
    /// `pick` chooses from the [`route_hash`] of its `key`. Empty parts stay empty.
    pub fn partition(
        self,
        parts: usize,
        key: &RouteKey,
        mut pick: impl FnMut(u64) -> usize,
    ) -> Vec<SpanBatch> {
        let parts = parts.max(1);
        let mut out = vec![SpanBatch::default(); parts];
        let mut choose = |bytes: &[u8]| pick(route_hash(bytes)).min(parts - 1);
        let (encoded, decoded) = self.into_parts();
        for (body, _) in encoded {
            for (part, (bytes, spans)) in
                split_encoded(&body, parts, |span| choose(key.of_encoded(span)))
                    .into_iter()
                    .enumerate()
            {
                if spans > 0 {
                    out[part].push_encoded(bytes.into(), spans);
                }
            }
        }
        let mut split = vec![Vec::new(); parts];
        for resource_spans in decoded {
            split_decoded(resource_spans, &mut split, |span| {
                choose(key.of_decoded(span))
            });
        }
        for (batch, resource_spans) in out.iter_mut().zip(split) {
            batch.append(SpanBatch::new(resource_spans));
        }
        out
    }
}

/// One part of an encoded request being written: its body, and the spans and scopes of
/// the resource it is in the middle of.
#[derive(Default)]
struct EncodedPart {
    body: Vec<u8>,
    /// The current resource's scopes (whole fields) that have spans of this part.
    scopes: Vec<u8>,
    /// The current scope's spans (whole fields) of this part.
    spans_in_scope: Vec<u8>,
    spans: usize,
}

/// Writes field `number` holding `head` then `tail` (protobuf allows fields in any order,
/// so a message's own fields may go before its repeated ones).
fn write_joined(out: &mut Vec<u8>, number: u32, head: &[u8], tail: &[u8]) {
    write_field_head(out, number, head.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(tail);
}

/// Splits an encoded request body into `parts` bodies with their span counts.
fn split_encoded(
    body: &[u8],
    parts: usize,
    mut choose: impl FnMut(&[u8]) -> usize,
) -> Vec<(Vec<u8>, usize)> {
    let mut out: Vec<EncodedPart> = (0..parts).map(|_| EncodedPart::default()).collect();
    let (mut resource_head, mut scope_head) = (Vec::new(), Vec::new());
    let mut rest = body;
    while let Some((number, field, _)) = next_field(&mut rest) {
        // A request has no field but its resource spans that a part could hold.
        let (1, Field::Bytes(resource_spans)) = (number, field) else {
            continue;
        };
        resource_head.clear();
        let mut rs_rest = resource_spans;
        while let Some((number, field, whole)) = next_field(&mut rs_rest) {
            let (2, Field::Bytes(scope_spans)) = (number, field) else {
                resource_head.extend_from_slice(whole);
                continue;
            };
            scope_head.clear();
            let mut ss_rest = scope_spans;
            while let Some((number, field, whole)) = next_field(&mut ss_rest) {
                let (2, Field::Bytes(span)) = (number, field) else {
                    scope_head.extend_from_slice(whole);
                    continue;
                };
                let part = &mut out[choose(span)];
                part.spans_in_scope.extend_from_slice(whole);
                part.spans += 1;
            }
            for part in out.iter_mut().filter(|p| !p.spans_in_scope.is_empty()) {
                write_joined(&mut part.scopes, 2, &scope_head, &part.spans_in_scope);
                part.spans_in_scope.clear();
            }
        }
        for part in out.iter_mut().filter(|p| !p.scopes.is_empty()) {
            write_joined(&mut part.body, 1, &resource_head, &part.scopes);
            part.scopes.clear();
        }
    }
    out.into_iter()
        .map(|part| (part.body, part.spans))
        .collect()
}

/// Splits decoded resource spans into `out`, one list per part.
fn split_decoded(
    resource_spans: ResourceSpans,
    out: &mut [Vec<ResourceSpans>],
    mut choose: impl FnMut(&Span) -> usize,
) {
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = resource_spans;
    let mut scopes: Vec<Vec<ScopeSpans>> = vec![Vec::new(); out.len()];
    for scope_spans in scope_spans {
        let ScopeSpans {
            scope,
            spans,
            schema_url,
        } = scope_spans;
        let mut by_part: Vec<Vec<Span>> = vec![Vec::new(); out.len()];
        for span in spans {
            let part = choose(&span);
            by_part[part].push(span);
        }
        for (part, spans) in by_part.into_iter().enumerate() {
            if !spans.is_empty() {
                scopes[part].push(ScopeSpans {
                    scope: scope.clone(),
                    spans,
                    schema_url: schema_url.clone(),
                });
            }
        }
    }
    for (part, scope_spans) in scopes.into_iter().enumerate() {
        if !scope_spans.is_empty() {
            out[part].push(ResourceSpans {
                resource: resource.clone(),
                scope_spans,
                schema_url: schema_url.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::otlp::view::arbitrary;
    use crate::otlp::{key_value, wire};

    /// Each span with the resource and scope it came under, in order: what a split keeps.
    fn spans_in_context(batch: SpanBatch) -> Vec<(Vec<u8>, Vec<u8>, Span)> {
        let mut out = Vec::new();
        for rs in batch.into_request().resource_spans {
            let resource = ResourceSpans {
                scope_spans: Vec::new(),
                ..rs.clone()
            }
            .encode_to_vec();
            for ss in rs.scope_spans {
                let scope = ScopeSpans {
                    spans: Vec::new(),
                    ..ss.clone()
                }
                .encode_to_vec();
                for span in ss.spans {
                    out.push((resource.clone(), scope.clone(), span));
                }
            }
        }
        out
    }

    fn part_of(key: &[u8], parts: usize) -> usize {
        (route_hash(key) % parts as u64) as usize
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Split encoded or decoded, every span lands once, in the part its key picks,
        /// under its own resource and scope, and each encoded part passes the scan.
        #[test]
        fn every_span_lands_once_in_the_part_its_key_picks(
            request in arbitrary::request(),
            parts in 1usize..5,
            by_round in any::<bool>(),
        ) {
            let key = if by_round { RouteKey::Attribute("council.round_id".into()) } else { RouteKey::TraceId };
            let body = request.encode_to_vec();
            let total = request.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum::<usize>();
            let expected = spans_in_context(SpanBatch::from_request(request.clone()));
            for batch in [
                SpanBatch::from_encoded(body.into(), total),
                SpanBatch::from_request(request),
            ] {
                let split = batch.partition(parts, &key, |hash| (hash % parts as u64) as usize);
                prop_assert_eq!(split.len(), parts);
                let mut landed = Vec::new();
                for (part, batch) in split.into_iter().enumerate() {
                    let (encoded, _) = batch.clone().into_parts();
                    for (bytes, spans) in &encoded {
                        prop_assert_eq!(wire::scan_request(bytes).map(|s| s.spans), Some(*spans));
                    }
                    for (resource, scope, span) in spans_in_context(batch) {
                        prop_assert_eq!(part_of(key.of_decoded(&span), parts), part);
                        landed.push((resource, scope, span));
                    }
                }
                let sort = |v: &mut Vec<(Vec<u8>, Vec<u8>, Span)>| v.sort_by_key(|(r, s, span)| (r.clone(), s.clone(), span.encode_to_vec()));
                let mut want = expected.clone();
                sort(&mut landed);
                sort(&mut want);
                prop_assert_eq!(landed, want);
            }
        }
    }

    #[test]
    fn spans_of_one_council_round_stay_together_whatever_their_trace() {
        let span = |trace: u8, round: Option<&str>| Span {
            trace_id: vec![trace; 16],
            span_id: vec![1; 8],
            attributes: round
                .map(|r| vec![key_value("council.round_id", Value::StringValue(r.into()))])
                .unwrap_or_default(),
            ..Default::default()
        };
        let spans: Vec<Span> = (0..64u8).map(|t| span(t, Some("round-7"))).collect();
        let request = crate::otlp::request_of(spans);
        let body = request.encode_to_vec();
        let key = RouteKey::Attribute("council.round_id".into());
        let split =
            SpanBatch::from_encoded(body.into(), 64).partition(4, &key, |h| (h % 4) as usize);
        let sizes: Vec<usize> = split.iter().map(SpanBatch::span_count).collect();
        assert_eq!(sizes.iter().filter(|&&n| n == 64).count(), 1, "{sizes:?}");

        // Without the attribute, the trace id routes: 64 traces spread over the parts.
        let spans: Vec<Span> = (0..64u8).map(|t| span(t, None)).collect();
        let split =
            SpanBatch::from_request(crate::otlp::request_of(spans))
                .partition(4, &key, |h| (h % 4) as usize);
        let sizes: Vec<usize> = split.iter().map(SpanBatch::span_count).collect();
        assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
    }
}

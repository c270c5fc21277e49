//! The batcher: groups spans into export batches bounded by span count and encoded bytes.
//!
//! It is pure: the pipeline task decides when the timeout has passed and calls [`Batcher::flush`].

use bytes::Bytes;
use prost::Message;

use crate::otlp::{ResourceSpans, ScopeSpans, SpanBatch};

/// Groups incoming resource spans into batches of at most `max_spans` spans and about
/// `max_bytes` encoded bytes (a single span larger than `max_bytes` travels alone).
pub struct Batcher {
    max_spans: usize,
    max_bytes: usize,
    pending: SpanBatch,
    pending_spans: usize,
    pending_bytes: usize,
    /// Spans of oversized encoded requests that failed to decode for splitting, until
    /// [`take_undecodable`](Self::take_undecodable) counts them.
    undecodable: usize,
}

impl Batcher {
    /// An empty batcher with the given limits (both at least 1).
    pub fn new(max_spans: usize, max_bytes: usize) -> Self {
        Self {
            max_spans: max_spans.max(1),
            max_bytes: max_bytes.max(1),
            pending: SpanBatch::default(),
            pending_spans: 0,
            pending_bytes: 0,
            undecodable: 0,
        }
    }

    /// Spans lost since the last call because an encoded request failed to decode for
    /// splitting (see `SpanBatch::resource_spans_mut`), for the caller to count as dropped.
    pub fn take_undecodable(&mut self) -> usize {
        std::mem::take(&mut self.undecodable)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending_spans == 0
    }

    /// Spans waiting.
    pub fn pending_spans(&self) -> usize {
        self.pending_spans
    }

    /// Adds `batch`; returns the batches that became full, in order.
    pub fn push(&mut self, batch: SpanBatch) -> Vec<SpanBatch> {
        let mut full = Vec::new();
        let (encoded, decoded) = batch.into_parts();
        for (body, spans) in encoded {
            self.push_encoded(body, spans, &mut full);
        }
        for resource_spans in decoded {
            self.push_resource_spans(resource_spans, &mut full);
        }
        full
    }

    /// Encoded requests join the batch as they are; only one too large for a batch on
    /// its own is decoded, to be split.
    fn push_encoded(&mut self, body: Bytes, spans: usize, full: &mut Vec<SpanBatch>) {
        if spans == 0 {
            return;
        }
        let bytes = body.len();
        if !self.fits(spans, bytes) {
            full.extend(self.flush());
        }
        if self.fits(spans, bytes) {
            self.pending_spans += spans;
            self.pending_bytes += bytes;
            self.pending.push_encoded(body, spans);
            return;
        }
        let mut batch = SpanBatch::from_encoded(body, spans);
        let resource_spans = std::mem::take(batch.resource_spans_mut());
        self.undecodable += batch.take_undecodable();
        for rs in resource_spans {
            self.push_resource_spans(rs, full);
        }
    }

    /// Takes whatever is waiting, if anything.
    pub fn flush(&mut self) -> Option<SpanBatch> {
        if self.is_empty() {
            return None;
        }
        self.pending_spans = 0;
        self.pending_bytes = 0;
        Some(std::mem::take(&mut self.pending))
    }

    fn push_resource_spans(&mut self, rs: ResourceSpans, full: &mut Vec<SpanBatch>) {
        let spans = crate::otlp::span_count(std::slice::from_ref(&rs));
        if spans == 0 {
            return;
        }
        let bytes = rs.encoded_len();
        if self.fits(spans, bytes) {
            self.append(rs, spans, bytes);
            return;
        }
        full.extend(self.flush());
        if self.fits(spans, bytes) {
            self.append(rs, spans, bytes);
            return;
        }
        // Larger than a whole batch on its own: split it span by span, keeping its
        // resource and scopes on every piece.
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = rs;
        for ss in scope_spans {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema_url,
            } = ss;
            for span in spans {
                let piece = ResourceSpans {
                    resource: resource.clone(),
                    scope_spans: vec![ScopeSpans {
                        scope: scope.clone(),
                        spans: vec![span],
                        schema_url: scope_schema_url.clone(),
                    }],
                    schema_url: schema_url.clone(),
                };
                let bytes = piece.encoded_len();
                if !self.fits(1, bytes) {
                    full.extend(self.flush());
                }
                self.append(piece, 1, bytes);
            }
        }
        if self.pending_spans >= self.max_spans {
            full.extend(self.flush());
        }
    }

    fn fits(&self, spans: usize, bytes: usize) -> bool {
        // A single span over max_bytes is let through alone rather than never sent.
        let alone = self.pending_spans == 0 && spans == 1;
        self.pending_spans + spans <= self.max_spans
            && (alone || self.pending_bytes + bytes <= self.max_bytes)
    }

    /// Appends, merging into the last resource/scope when they are the same, so split
    /// pieces of one resource come back together in the batch.
    fn append(&mut self, rs: ResourceSpans, spans: usize, bytes: usize) {
        self.pending_spans += spans;
        self.pending_bytes += bytes;
        let decoded = self.pending.decoded_mut();
        if let Some(last) = decoded.last_mut()
            && last.resource == rs.resource
            && last.schema_url == rs.schema_url
        {
            for ss in rs.scope_spans {
                match last.scope_spans.last_mut() {
                    Some(last_ss)
                        if last_ss.scope == ss.scope && last_ss.schema_url == ss.schema_url =>
                    {
                        last_ss.spans.extend(ss.spans);
                    }
                    _ => last.scope_spans.push(ss),
                }
            }
            return;
        }
        decoded.push(rs);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::{InstrumentationScope, Resource, Span, key_value};

    fn resource_spans(service: &str, names: &[String]) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value(
                    "service.name",
                    crate::otlp::Value::StringValue(service.into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "daena".into(),
                    ..Default::default()
                }),
                spans: names
                    .iter()
                    .map(|name| Span {
                        name: name.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_large_request_is_split_at_max_spans_and_keeps_its_resource() {
        let names: Vec<String> = (0..25).map(|i| format!("span-{i}")).collect();
        let mut batcher = Batcher::new(10, usize::MAX);
        let mut out = batcher.push(SpanBatch::new(vec![resource_spans("council", &names)]));
        out.extend(batcher.flush());
        let sizes: Vec<usize> = out.iter().map(SpanBatch::span_count).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        for batch in out {
            assert_eq!(
                batch.into_request().resource_spans.len(),
                1,
                "pieces of one resource merge back"
            );
        }
    }

    #[test]
    fn small_requests_wait_until_flushed() {
        let mut batcher = Batcher::new(100, usize::MAX);
        assert!(
            batcher
                .push(SpanBatch::new(vec![resource_spans("a", &["x".into()])]))
                .is_empty()
        );
        assert!(!batcher.is_empty());
        assert_eq!(batcher.flush().map(|b| b.span_count()), Some(1));
        assert!(batcher.flush().is_none());
    }

    const SCHEMAS: [&str; 3] = [
        "",
        "https://opentelemetry.io/schemas/1.21.0",
        "https://opentelemetry.io/schemas/1.26.0",
    ];

    /// What a span must come out with: its resource, the resource's `schema_url`, its
    /// scope and the scope's `schema_url`.
    type Context = (
        Option<Resource>,
        String,
        Option<InstrumentationScope>,
        String,
    );
    /// One scope of a generated request: (name, version, schema_url, span name paddings);
    /// indexes into small pools, so equal and almost equal neighbours are frequent.
    type ScopeGen = (usize, usize, usize, Vec<usize>);
    /// One resource of a generated request: (service, schema_url, scopes).
    type ResourceGen = (usize, usize, Vec<ScopeGen>);

    fn request_strategy() -> impl Strategy<Value = (Vec<ResourceGen>, bool)> {
        let scope = (
            0usize..3,
            0usize..3,
            0usize..3,
            prop::collection::vec(0usize..60, 0..8),
        );
        let resource = (0usize..3, 0usize..3, prop::collection::vec(scope, 0..4));
        (prop::collection::vec(resource, 0..4), any::<bool>())
    }

    /// The generated resource spans; every span is named `<seq>:<padding>`, `seq` counting
    /// spans in arrival order, and `expected[seq]` is its context.
    fn build(request: &[ResourceGen], expected: &mut Vec<Context>) -> (Vec<ResourceSpans>, usize) {
        let mut spans_in_request = 0;
        let resource_spans = request
            .iter()
            .map(|(service, rs_schema, scopes)| {
                let resource = (*service > 0).then(|| Resource {
                    attributes: vec![key_value(
                        "service.name",
                        crate::otlp::Value::StringValue(format!("svc{service}")),
                    )],
                    ..Default::default()
                });
                let scope_spans = scopes
                    .iter()
                    .map(|(name, version, ss_schema, paddings)| {
                        let scope = (*name > 0).then(|| InstrumentationScope {
                            name: format!("lib{name}"),
                            version: ["", "1.0.0", "2.0.0"][*version].into(),
                            ..Default::default()
                        });
                        let spans = paddings
                            .iter()
                            .map(|pad| {
                                let seq = expected.len();
                                expected.push((
                                    resource.clone(),
                                    SCHEMAS[*rs_schema].into(),
                                    scope.clone(),
                                    SCHEMAS[*ss_schema].into(),
                                ));
                                spans_in_request += 1;
                                Span {
                                    name: format!("{seq}:{}", "x".repeat(*pad)),
                                    ..Default::default()
                                }
                            })
                            .collect();
                        ScopeSpans {
                            scope,
                            spans,
                            schema_url: SCHEMAS[*ss_schema].into(),
                        }
                    })
                    .collect();
                ResourceSpans {
                    resource,
                    scope_spans,
                    schema_url: SCHEMAS[*rs_schema].into(),
                }
            })
            .collect();
        (resource_spans, spans_in_request)
    }

    /// Every span as (seq, its context), in the order of `resource_spans`.
    fn spans_of(resource_spans: &[ResourceSpans]) -> Vec<(usize, Context)> {
        let mut out = Vec::new();
        for rs in resource_spans {
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let seq = span
                        .name
                        .split(':')
                        .next()
                        .and_then(|seq| seq.parse().ok())
                        .expect("a generated span name");
                    let context = (
                        rs.resource.clone(),
                        rs.schema_url.clone(),
                        ss.scope.clone(),
                        ss.schema_url.clone(),
                    );
                    out.push((seq, context));
                }
            }
        }
        out
    }

    fn decode(body: &[u8]) -> Vec<ResourceSpans> {
        crate::otlp::ExportTraceServiceRequest::decode(body)
            .expect("the batcher's output decodes")
            .resource_spans
    }

    fn seqs(spans: &[(usize, Context)]) -> Vec<usize> {
        spans.iter().map(|(seq, _)| *seq).collect()
    }

    fn increasing(seqs: &[usize]) -> bool {
        seqs.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn scopes_that_differ_only_in_schema_url_stay_apart_and_split_pieces_keep_both_schema_urls() {
        let (v1, v2) = (SCHEMAS[1], SCHEMAS[2]);
        // One resource, two scopes equal but for their schema_url, 3 spans each; batches
        // of 2 spans split it.
        let request = vec![(1, 1, vec![(1, 1, 1, vec![0; 3]), (1, 1, 2, vec![0; 3])])];
        let mut expected = Vec::new();
        let (rs, _) = build(&request, &mut expected);
        let mut batcher = Batcher::new(2, usize::MAX);
        let mut out = batcher.push(SpanBatch::new(rs));
        out.extend(batcher.flush());
        let got: Vec<Vec<(usize, Context)>> = out
            .into_iter()
            .map(|batch| spans_of(&batch.into_request().resource_spans))
            .collect();
        let want = |seq: usize, scope_schema: &str| {
            let (resource, rs_schema, scope, _) = expected[seq].clone();
            (seq, (resource, rs_schema, scope, scope_schema.to_owned()))
        };
        assert_eq!(expected[0].1, v1);
        assert_eq!(
            got,
            vec![
                vec![want(0, v1), want(1, v1)],
                vec![want(2, v1), want(3, v2)],
                vec![want(4, v2), want(5, v2)],
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Requests of several resources and scopes (with `schema_url`s, scope versions,
        /// protobuf-encoded or decoded) come out with every span exactly once, with its own
        /// resource, scope and both `schema_url`s, in arrival order, and every batch within
        /// the limits.
        ///
        /// The one reordering the batcher does: a batch keeps the encoded requests it took
        /// whole apart from its decoded resource spans, and its wire form (`encode_to`)
        /// puts the former first. So each batch is the next run of arrivals, its encoded
        /// requests byte for byte as they came and in arrival order, then its decoded
        /// spans in arrival order.
        #[test]
        fn batching_preserves_spans_order_and_context_and_respects_limits(
            requests in prop::collection::vec(request_strategy(), 0..12),
            max_spans in 1usize..40,
            max_bytes in 32usize..4096,
        ) {
            let mut batcher = Batcher::new(max_spans, max_bytes);
            let mut expected = Vec::new();
            let mut bodies = Vec::new();
            let mut out = Vec::new();
            for (request, encoded) in &requests {
                let (rs, spans) = build(request, &mut expected);
                let batch = if *encoded {
                    let body = Bytes::from(
                        crate::otlp::ExportTraceServiceRequest { resource_spans: rs }.encode_to_vec(),
                    );
                    bodies.push(body.clone());
                    SpanBatch::from_encoded(body, spans)
                } else {
                    SpanBatch::new(rs)
                };
                out.extend(batcher.push(batch));
                prop_assert!(batcher.pending_spans() <= max_spans);
            }
            out.extend(batcher.flush());
            prop_assert!(batcher.is_empty());

            let mut next = 0;
            for (i, batch) in out.iter().enumerate() {
                let mut wire = Vec::new();
                batch.encode_to(&mut wire);
                prop_assert_eq!(wire.len(), batch.encoded_len());
                let wire = spans_of(&decode(&wire));
                for (seq, context) in &wire {
                    prop_assert_eq!(context, &expected[*seq], "span {} in batch {}", seq, i);
                }
                let (encoded, decoded) = batch.clone().into_parts();
                let mut whole = Vec::new();
                for (body, spans) in &encoded {
                    prop_assert!(bodies.contains(body), "an encoded request was changed");
                    let got = seqs(&spans_of(&decode(body)));
                    prop_assert_eq!(got.len(), *spans);
                    whole.extend(got);
                }
                let rest = seqs(&spans_of(&decoded));
                prop_assert!(increasing(&whole), "batch {}: encoded {:?}", i, whole);
                prop_assert!(increasing(&rest), "batch {}: decoded {:?}", i, rest);
                let in_wire_order: Vec<usize> = whole.iter().chain(&rest).copied().collect();
                prop_assert_eq!(&seqs(&wire), &in_wire_order);
                let mut arrivals = in_wire_order;
                arrivals.sort_unstable();
                let run: Vec<usize> = (next..next + wire.len()).collect();
                prop_assert_eq!(arrivals, run, "batch {} is not the next run of arrivals", i);
                next += wire.len();

                let spans = batch.span_count();
                prop_assert_eq!(spans, wire.len());
                prop_assert!(spans >= 1 && spans <= max_spans, "{} spans", spans);
                // The batcher counts a decoded resource's bytes without the 1-byte field
                // tag and the length prefix it takes in the request; merging only saves.
                let framing: usize = decoded
                    .iter()
                    .map(|rs| 1 + prost::encoding::encoded_len_varint(rs.encoded_len() as u64))
                    .sum();
                let bytes = batch.encoded_len();
                prop_assert!(
                    bytes <= max_bytes + framing || spans == 1,
                    "{} bytes in {} spans (framing {})", bytes, spans, framing
                );
            }
            prop_assert_eq!(next, expected.len(), "spans lost");
        }
    }
}

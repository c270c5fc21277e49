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
        }
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
        for rs in SpanBatch::from_encoded(body, spans)
            .into_request()
            .resource_spans
        {
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

    /// Every span as (service, span name), in order.
    fn flatten(batches: &[SpanBatch]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for batch in batches {
            for rs in &batch.clone().into_request().resource_spans {
                let service = format!("{:?}", rs.resource);
                for ss in &rs.scope_spans {
                    assert!(ss.scope.is_some(), "a split piece lost its scope");
                    for span in &ss.spans {
                        out.push((service.clone(), span.name.clone()));
                    }
                }
            }
        }
        out
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

    proptest! {
        /// No span is lost, duplicated or reordered, and every batch respects the limits.
        #[test]
        fn batching_preserves_spans_and_respects_limits(
            requests in prop::collection::vec(
                (0usize..3, prop::collection::vec("[a-z]{1,40}", 0..30), any::<bool>()), 0..12),
            max_spans in 1usize..40,
            max_bytes in 64usize..4096,
        ) {
            let mut batcher = Batcher::new(max_spans, max_bytes);
            let mut input = Vec::new();
            let mut out = Vec::new();
            for (service, names, encoded) in &requests {
                let rs = resource_spans(&format!("svc{service}"), names);
                // Requests arrive encoded (protobuf) or decoded (JSON); both kinds mix.
                let batch = if *encoded {
                    let body = SpanBatch::new(vec![rs]).into_request().encode_to_vec();
                    SpanBatch::from_encoded(body.into(), names.len())
                } else {
                    SpanBatch::new(vec![rs])
                };
                input.extend(flatten(std::slice::from_ref(&batch)));
                out.extend(batcher.push(batch));
            }
            out.extend(batcher.flush());
            // The order of resource spans in a request means nothing; their spans must all be there once.
            let (mut got, mut want) = (flatten(&out), input);
            got.sort();
            want.sort();
            prop_assert_eq!(got, want);
            for batch in &out {
                let spans = batch.span_count();
                prop_assert!(spans >= 1 && spans <= max_spans);
                let bytes = batch.encoded_len();
                // A batch goes over max_bytes only when it is a single span.
                prop_assert!(bytes <= max_bytes + 64 || spans == 1, "{} bytes in {} spans", bytes, spans);
            }
        }
    }
}

//! A validating scan of an encoded `ExportTraceServiceRequest` that allocates nothing:
//! it checks what prost's decoder would check (wire types, lengths, UTF-8 of every
//! string field, nesting depth), checks span and trace id lengths, and counts spans.
//!
//! It lets the agent forward a request's bytes as they came instead of decoding and
//! re-encoding them when no stage reads the spans. When in doubt it says no, and the
//! caller decodes with prost, which gives the precise error.

/// What a scan found in a well-formed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Spans in the request.
    pub spans: usize,
    /// Spans whose trace id is not 16 bytes or span id not 8 bytes, or all zero.
    pub invalid_ids: usize,
}

/// Scans `body`; `None` when it is not a request prost would decode.
pub fn scan_request(body: &[u8]) -> Option<Scan> {
    let mut scan = Scan {
        spans: 0,
        invalid_ids: 0,
    };
    walk(body, Msg::Request, 0, &mut scan).then_some(scan)
}

/// The messages of the trace schema whose fields the scan knows.
#[derive(Clone, Copy)]
enum Msg {
    Request,
    ResourceSpans,
    Resource,
    EntityRef,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a field holds, by the schema.
enum Field {
    Nested(Msg),
    Str,
    Bytes,
    Varint,
    Fixed64,
    Fixed32,
    Unknown,
}

fn field(message: Msg, number: u64) -> Field {
    use Field::*;
    use Msg as M;
    match (message, number) {
        (M::Request, 1) => Nested(M::ResourceSpans),
        (M::ResourceSpans, 1) => Nested(M::Resource),
        (M::ResourceSpans, 2) => Nested(M::ScopeSpans),
        (M::ResourceSpans, 3) | (M::ScopeSpans, 3) => Str,
        (M::Resource, 1) | (M::Scope, 3) | (M::Span, 9) | (M::Event, 3) | (M::Link, 4) => {
            Nested(M::KeyValue)
        }
        (M::Resource, 2)
        | (M::Scope, 4)
        | (M::Span, 6 | 10 | 12 | 14)
        | (M::Event, 4)
        | (M::Link, 5) => Varint,
        (M::Resource, 3) => Nested(M::EntityRef),
        (M::EntityRef, 1..=4) => Str,
        (M::ScopeSpans, 1) => Nested(M::Scope),
        (M::ScopeSpans, 2) => Nested(M::Span),
        (M::Scope, 1 | 2) => Str,
        (M::Span, 1 | 2 | 4) | (M::Link, 1 | 2) => Bytes,
        (M::Span, 3 | 5) | (M::Event, 2) | (M::Link, 3) | (M::Status, 2) => Str,
        (M::Span, 7 | 8) | (M::Event, 1) => Fixed64,
        (M::Span, 16) | (M::Link, 6) => Fixed32,
        (M::Span, 11) => Nested(M::Event),
        (M::Span, 13) => Nested(M::Link),
        (M::Span, 15) => Nested(M::Status),
        (M::Status, 3) => Varint,
        (M::KeyValue, 1) => Str,
        (M::KeyValue, 2) | (M::ArrayValue, 1) => Nested(M::AnyValue),
        (M::KeyValue, 3) => Varint,
        (M::AnyValue, 1) => Str,
        (M::AnyValue, 2 | 3 | 8) => Varint,
        (M::AnyValue, 4) => Fixed64,
        (M::AnyValue, 5) => Nested(M::ArrayValue),
        (M::AnyValue, 6) => Nested(M::KeyValueList),
        (M::AnyValue, 7) => Bytes,
        (M::KeyValueList, 1) => Nested(M::KeyValue),
        _ => Unknown,
    }
}

/// prost refuses messages nested deeper than this.
const MAX_DEPTH: usize = 100;

/// Reads a varint as prost does (at most 10 bytes, the 10th at most 1), inlined for
/// slices: the generic reader over `Buf` was a sixth of the agent's time.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if buf.len() < len {
        return None;
    }
    let (head, tail) = buf.split_at(len);
    *buf = tail;
    Some(head)
}

fn walk(mut buf: &[u8], message: Msg, depth: usize, scan: &mut Scan) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    // Span ids, checked once the span's fields are all read (prost keeps the last value).
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return false;
        };
        let (number, wire_type) = (key >> 3, key & 7);
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return false;
        }
        let expected = field(message, number);
        let ok = match (wire_type, &expected) {
            (0, Field::Varint | Field::Unknown) => varint(&mut buf).is_some(),
            (1, Field::Fixed64 | Field::Unknown) => take(&mut buf, 8).is_some(),
            (5, Field::Fixed32 | Field::Unknown) => take(&mut buf, 4).is_some(),
            (2, Field::Nested(_) | Field::Str | Field::Bytes | Field::Unknown) => {
                let Some(len) = varint(&mut buf) else {
                    return false;
                };
                let Some(value) = usize::try_from(len)
                    .ok()
                    .and_then(|len| take(&mut buf, len))
                else {
                    return false;
                };
                match expected {
                    Field::Nested(inner) => {
                        if matches!(inner, Msg::Span) {
                            scan.spans += 1;
                        }
                        walk(value, inner, depth + 1, scan)
                    }
                    Field::Str => std::str::from_utf8(value).is_ok(),
                    Field::Bytes => {
                        match (message, number) {
                            (Msg::Span, 1) => trace_id = value,
                            (Msg::Span, 2) => span_id = value,
                            _ => {}
                        }
                        true
                    }
                    _ => true,
                }
            }
            // Groups (3, 4) are obsolete and appear nowhere in OTLP; prost skips them, we
            // leave such a request to prost.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    if matches!(message, Msg::Span) {
        let valid = |id: &[u8], len: usize| id.len() == len && id.iter().any(|&b| b != 0);
        if !valid(trace_id, 16) || !valid(span_id, 8) {
            scan.invalid_ids += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use super::*;
    use crate::otlp::{
        ArrayValue, Event, ExportTraceServiceRequest, KeyValueList, Link, Span, Status, Value,
        key_value,
    };

    use crate::otlp::request_of as request;

    fn full_span(name: &str) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: name.into(),
            trace_state: "ot=th:8".into(),
            flags: 0x301,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![
                key_value("s", Value::StringValue("ü".into())),
                key_value("b", Value::BoolValue(true)),
                key_value("i", Value::IntValue(-5)),
                key_value("d", Value::DoubleValue(0.5)),
                key_value("x", Value::BytesValue(vec![0xff])),
                key_value("a", Value::ArrayValue(ArrayValue { values: vec![] })),
                key_value(
                    "m",
                    Value::KvlistValue(KeyValueList {
                        values: vec![key_value("k", Value::IntValue(1))],
                    }),
                ),
            ],
            events: vec![Event {
                name: "e".into(),
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: "m".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_request_is_counted() {
        let body = request(vec![full_span("a"), full_span("b")]).encode_to_vec();
        assert_eq!(
            scan_request(&body),
            Some(Scan {
                spans: 2,
                invalid_ids: 0
            })
        );
        assert_eq!(
            scan_request(&[]),
            Some(Scan {
                spans: 0,
                invalid_ids: 0
            })
        );
    }

    #[test]
    fn varints_read_as_prost_reads_them() {
        for value in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut encoded = Vec::new();
            prost::encoding::encode_varint(value, &mut encoded);
            let mut slice = &encoded[..];
            assert_eq!(varint(&mut slice), Some(value));
            assert!(slice.is_empty());
        }
        let overflow = [0xff; 10];
        assert_eq!(varint(&mut &overflow[..]), None);
        assert!(prost::encoding::decode_varint(&mut &overflow[..]).is_err());
        assert_eq!(varint(&mut &[0x80][..]), None, "truncated");
    }

    #[test]
    fn bad_ids_are_counted_not_refused() {
        let mut short = full_span("short");
        short.trace_id = vec![1; 15];
        let mut zero = full_span("zero");
        zero.span_id = vec![0; 8];
        let body = request(vec![short, zero, full_span("ok")]).encode_to_vec();
        assert_eq!(
            scan_request(&body),
            Some(Scan {
                spans: 3,
                invalid_ids: 2
            })
        );
    }

    #[test]
    fn invalid_utf8_and_truncation_are_refused() {
        let body = request(vec![full_span("nbmf.write")]).encode_to_vec();
        let at = body
            .windows(10)
            .position(|w| w == b"nbmf.write")
            .expect("name in body");
        let mut bad = body.clone();
        bad[at] = 0xff;
        assert_eq!(scan_request(&bad), None);
        assert!(
            ExportTraceServiceRequest::decode(&bad[..]).is_err(),
            "prost agrees"
        );
        assert_eq!(scan_request(&body[..body.len() - 1]), None);
    }

    proptest! {
        /// Whatever the scan accepts, prost decodes, with the same span count.
        #[test]
        fn the_scan_never_accepts_what_prost_refuses(
            cut in 0usize..400,
            flip in 0usize..400,
            bit in 0u8..8,
            garbage in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut body = request(vec![full_span("council.round"), full_span("llm.exchange")]).encode_to_vec();
            if flip < body.len() {
                body[flip] ^= 1 << bit;
            }
            body.truncate(cut.min(body.len()));
            body.extend_from_slice(&garbage);
            if let Some(scan) = scan_request(&body) {
                let decoded = ExportTraceServiceRequest::decode(&body[..]);
                prop_assert!(decoded.is_ok(), "scan accepted what prost refuses: {:?}", decoded);
                let decoded = decoded.expect("checked");
                prop_assert_eq!(scan.spans, crate::otlp::span_count(&decoded.resource_spans));
            }
        }
    }
}

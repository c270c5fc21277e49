//! A validating scan of an encoded `ExportTraceServiceRequest` that allocates nothing:
//! it checks what prost's decoder would check (wire types, lengths, UTF-8 of every
//! string field, unknown fields and groups, nesting depth as prost counts it), checks
//! span and trace id lengths, counts spans and attributes, and estimates what decoding
//! would allocate, so the receivers can refuse a request before it costs memory.
//!
//! It lets the agent forward a request's bytes as they came instead of decoding and
//! re-encoding them when no stage reads the spans. It must accept exactly what prost
//! decodes: a body it accepts is acknowledged and may be decoded only later, by a stage
//! or an exporter, where a failure can no longer be told to the client. When it says no,
//! the caller decodes with prost, which gives the precise error.

/// What a scan found in a well-formed request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scan {
    /// Spans in the request.
    pub spans: usize,
    /// Spans whose trace id is not 16 bytes or span id not 8 bytes, or all zero.
    pub invalid_ids: usize,
    /// The most attributes held by one resource, scope, span, event, link or kvlist value.
    pub most_attributes: usize,
    /// What decoding the request into the generated types would allocate: each element of
    /// a repeated message field three times its size, each string its length and a chunk
    /// header (`tests/decode_cost.rs` measures it against a counting allocator).
    pub decoded_bytes: usize,
}

/// Scans `body`; `None` when it is not a request prost would decode.
pub fn scan_request(body: &[u8]) -> Option<Scan> {
    let (scan, well_formed) = scan_prefix(body);
    well_formed.then_some(scan)
}

/// Scans `body` up to its first fault, if it has one: what it holds up to there (what
/// prost would have decoded, and allocated, before failing), and whether it had none.
pub fn scan_prefix(body: &[u8]) -> (Scan, bool) {
    let mut scan = Scan::default();
    let well_formed = walk(body, Msg::Request, RECURSION_LIMIT, &mut scan);
    (scan, well_formed)
}

/// The allocator's bookkeeping per allocation (glibc: 16 bytes, 32 at least).
pub(super) const PER_ALLOCATION: usize = 32;

/// What one element of a repeated field holding `message`, inside `parent`, costs decoded:
/// its size three times over, as a `Vec` grows by doubling and while it moves the old and
/// the new buffer are both live. Singular messages (a span's status, an attribute's value)
/// live inline in their parent and cost nothing more.
pub(super) fn element_cost(parent: Msg, message: Msg) -> usize {
    use std::mem::size_of;
    let size = match (parent, message) {
        (_, Msg::ResourceSpans) => size_of::<super::ResourceSpans>(),
        (_, Msg::ScopeSpans) => size_of::<super::ScopeSpans>(),
        (_, Msg::Span) => size_of::<super::Span>(),
        (_, Msg::Event) => size_of::<super::Event>(),
        (_, Msg::Link) => size_of::<super::Link>(),
        (_, Msg::KeyValue) => size_of::<super::KeyValue>(),
        (_, Msg::EntityRef) => size_of::<super::EntityRef>(),
        (Msg::ArrayValue, Msg::AnyValue) => size_of::<super::AnyValue>(),
        _ => return 0,
    };
    3 * size
}

/// What a decoded string or bytes value of `len` bytes costs: its own allocation.
pub(super) fn string_cost(len: usize) -> usize {
    if len == 0 { 0 } else { len + PER_ALLOCATION }
}

/// The messages of the trace schema whose fields the scan knows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Msg {
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

fn field(message: Msg, number: u32) -> Field {
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

/// prost's `RECURSION_LIMIT`: the depth budget a decode starts with.
///
/// prost gives the fields of the request message this budget; entering a nested message
/// (`message::merge`) or skipping an unknown field (`skip_field`, any wire type) fails when
/// the budget of the fields being read is 0, and a nested message's fields, or the fields
/// inside a skipped group, get one less. The scan keeps the same account, so it refuses
/// exactly the depths prost refuses (`wire::tests::depth_is_counted_as_prost_counts_it`).
pub(super) const RECURSION_LIMIT: u32 = 100;

/// Reads a varint as prost does (at most 10 bytes, the 10th at most 1), inlined for
/// slices: the generic reader over `Buf` was a sixth of the agent's time.
#[inline]
pub(super) fn varint(buf: &mut &[u8]) -> Option<u64> {
    // Most varints (field keys, lengths of keys and short values) are one byte.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Some(u64::from(byte));
    }
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

/// Walks the fields of one `message`; `budget` is prost's recursion budget for them.
fn walk(mut buf: &[u8], message: Msg, budget: u32, scan: &mut Scan) -> bool {
    // Span ids, checked once the span's fields are all read (prost keeps the last value).
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    let mut attributes = 0;
    while !buf.is_empty() {
        let Some((number, wire_type)) = key(&mut buf) else {
            return false;
        };
        let expected = field(message, number);
        let ok = match (wire_type, &expected) {
            // prost's skip_field checks the budget before it looks at the wire type, so an
            // unknown field of any type is refused where the budget is spent.
            (_, Field::Unknown) => skip(&mut buf, wire_type, number, budget),
            (0, Field::Varint) => varint(&mut buf).is_some(),
            (1, Field::Fixed64) => take(&mut buf, 8).is_some(),
            (5, Field::Fixed32) => take(&mut buf, 4).is_some(),
            (2, Field::Nested(_) | Field::Str | Field::Bytes) => {
                let Some(value) = length_delimited(&mut buf) else {
                    return false;
                };
                match expected {
                    Field::Nested(inner) => {
                        match inner {
                            Msg::Span => scan.spans += 1,
                            // Every KeyValue field is an attribute of this message (or an
                            // entry of this kvlist value).
                            Msg::KeyValue => attributes += 1,
                            _ => {}
                        }
                        scan.decoded_bytes += element_cost(message, inner);
                        budget > 0 && walk(value, inner, budget - 1, scan)
                    }
                    Field::Str => {
                        scan.decoded_bytes += string_cost(value.len());
                        // Most keys and values are ASCII: checked a word at a time, without
                        // the UTF-8 decoder's per-call setup.
                        value.is_ascii() || std::str::from_utf8(value).is_ok()
                    }
                    Field::Bytes => {
                        scan.decoded_bytes += string_cost(value.len());
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
            // A known field with another wire type than the schema's (groups included):
            // prost's check_wire_type refuses it.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    scan.most_attributes = scan.most_attributes.max(attributes);
    if matches!(message, Msg::Span) {
        let valid = |id: &[u8], len: usize| id.len() == len && id.iter().any(|&b| b != 0);
        if !valid(trace_id, 16) || !valid(span_id, 8) {
            scan.invalid_ids += 1;
        }
    }
    true
}

/// Reads a field key as prost's `decode_key` does: a varint of at most 32 bits, a field
/// number of at least 1; the wire type is checked where it is used.
pub(super) fn key(buf: &mut &[u8]) -> Option<(u32, u8)> {
    let key = u32::try_from(varint(buf)?).ok()?;
    let number = key >> 3;
    (number != 0).then_some((number, (key & 7) as u8))
}

/// Reads a length and that many bytes.
pub(super) fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    take(buf, len)
}

/// Skips an unknown field as prost's `skip_field` does, with its depth rule: refused when
/// `budget` is 0; a group's fields are skipped with one less, and its end must carry its
/// number. OTLP has no groups, but prost accepts them as unknown fields, so the scan must.
pub(super) fn skip(buf: &mut &[u8], wire_type: u8, number: u32, budget: u32) -> bool {
    if budget == 0 {
        return false;
    }
    match wire_type {
        0 => varint(buf).is_some(),
        1 => take(buf, 8).is_some(),
        2 => length_delimited(buf).is_some(),
        3 => loop {
            let Some((inner, inner_type)) = key(buf) else {
                return false;
            };
            if inner_type == 4 {
                break inner == number;
            }
            if !skip(buf, inner_type, inner, budget - 1) {
                return false;
            }
        },
        5 => take(buf, 4).is_some(),
        // An end-group without its start, or wire types 6 and 7, which do not exist.
        _ => false,
    }
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
        let scan = scan_request(&body).expect("valid");
        assert_eq!((scan.spans, scan.invalid_ids), (2, 0));
        assert_eq!(scan.most_attributes, 7, "the span's seven");
        assert_eq!(scan_request(&[]), Some(Scan::default()));
    }

    #[test]
    fn attributes_are_counted_per_owner_and_kvlist() {
        let mut span = full_span("a");
        span.events[0].attributes = vec![key_value("e", Value::IntValue(1)); 9];
        let kvlist = KeyValueList {
            values: vec![key_value("k", Value::IntValue(1)); 12],
        };
        span.attributes
            .push(key_value("big", Value::KvlistValue(kvlist)));
        let scan = scan_request(&request(vec![span]).encode_to_vec()).expect("valid");
        assert_eq!(scan.most_attributes, 12, "the kvlist's entries");
    }

    #[test]
    fn the_decoded_size_grows_with_what_decoding_allocates() {
        let one = scan_request(&request(vec![full_span("a")]).encode_to_vec()).expect("valid");
        let two = scan_request(&request(vec![full_span("a"), full_span("b")]).encode_to_vec())
            .expect("valid");
        let span_cost = two.decoded_bytes - one.decoded_bytes;
        assert!(
            span_cost > 3 * std::mem::size_of::<Span>(),
            "a span costs its struct three times, its attributes and strings: {span_cost}"
        );
        // Empty spans are the cheapest on the wire and the dearest decoded.
        let empty = [0x12, 0x00].repeat(1000);
        let body = ld(1, &ld(2, &empty));
        let scan = scan_request(&body).expect("valid");
        assert_eq!(scan.spans, 1000);
        assert!(
            scan.decoded_bytes >= 1000 * std::mem::size_of::<Span>(),
            "{} for {} bytes",
            scan.decoded_bytes,
            body.len()
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
        let scan = scan_request(&body).expect("valid");
        assert_eq!((scan.spans, scan.invalid_ids), (3, 2));
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

    /// Field bytes: the key of `number` with `wire_type`, then `payload` as it is.
    fn raw(number: u32, wire_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(u64::from(number << 3 | u32::from(wire_type)), &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A length-delimited field.
    fn ld(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut len = Vec::new();
        prost::encoding::encode_varint(payload.len() as u64, &mut len);
        len.extend_from_slice(payload);
        raw(number, 2, &len)
    }

    /// A request whose one span (at depth 3; the request is depth 0) has the attribute
    /// `k` holding `any_value`, the encoded AnyValue, at depth 5.
    fn request_with_value(any_value: &[u8]) -> Vec<u8> {
        let key_value = [ld(1, b"k"), ld(2, any_value)].concat();
        let span = [ld(1, &[1; 16]), ld(2, &[2; 8]), ld(9, &key_value)].concat();
        ld(1, &ld(2, &ld(2, &span)))
    }

    /// An AnyValue holding `arrays` nested ArrayValues, the innermost of which holds
    /// `innermost` (its encoded fields). The k-th ArrayValue is at depth 4 + 2k.
    fn nested_arrays(arrays: usize, innermost: &[u8]) -> Vec<u8> {
        let mut any_value = ld(5, innermost);
        for _ in 1..arrays {
            any_value = ld(5, &ld(1, &any_value));
        }
        any_value
    }

    /// Whether prost decodes `body`, with the scan asserted to agree (and count the same spans).
    fn agreed(body: &[u8]) -> bool {
        let decoded = ExportTraceServiceRequest::decode(body);
        let scanned = scan_request(body);
        assert_eq!(
            scanned.is_some(),
            decoded.is_ok(),
            "scan {scanned:?}, prost {decoded:?}"
        );
        if let (Some(scan), Ok(request)) = (scanned, &decoded) {
            assert_eq!(scan.spans, crate::otlp::span_count(&request.resource_spans));
        }
        decoded.is_ok()
    }

    #[test]
    fn an_unknown_field_at_depth_100_is_refused_as_prost_refuses_it() {
        // Issue #12: 48 nested arrays put the innermost ArrayValue at depth 100, where
        // prost's budget is spent; its unknown field 15 made prost fail after the scan said yes.
        let unknown = raw(15, 0, &[1]);
        let body = request_with_value(&nested_arrays(48, &unknown));
        assert_eq!(scan_request(&body), None);
        let error = ExportTraceServiceRequest::decode(&body[..]).expect_err("prost refuses");
        assert!(
            error.to_string().contains("recursion limit reached"),
            "{error}"
        );
        // One level up the same field is fine, and so is the empty array at depth 100.
        assert!(agreed(&request_with_value(&nested_arrays(47, &unknown))));
        assert!(agreed(&request_with_value(&nested_arrays(48, &[]))));
        // A message at depth 101 is refused whatever it holds.
        assert!(!agreed(&request_with_value(&nested_arrays(
            48,
            &ld(1, &[])
        ))));
    }

    #[test]
    fn depth_is_counted_as_prost_counts_it() {
        let group =
            |number: u32, inner: &[u8]| [raw(number, 3, inner), raw(number, 4, &[])].concat();
        // (innermost fields, the most nested arrays prost takes them in)
        let cases: [(Vec<u8>, usize); 9] = [
            (Vec::new(), 48),
            (raw(15, 0, &[0x96, 0x01]), 47),
            (raw(15, 1, &[0; 8]), 47),
            (raw(15, 5, &[0; 4]), 47),
            (ld(15, b"\xff not parsed"), 47),
            (group(15, &[]), 47),
            (group(15, &raw(1, 0, &[1])), 47),
            (group(15, &group(2, &raw(1, 0, &[1]))), 46),
            (ld(1, &ld(6, &ld(1, &ld(1, b"k")))), 46),
        ];
        for (innermost, deepest) in cases {
            for arrays in deepest - 2..=deepest + 2 {
                let body = request_with_value(&nested_arrays(arrays, &innermost));
                assert_eq!(
                    agreed(&body),
                    arrays <= deepest,
                    "{arrays} arrays around {innermost:02x?}"
                );
            }
        }
    }

    #[test]
    fn malformed_groups_are_refused_as_prost_refuses_them() {
        let span = |extra: &[u8]| {
            let span = [ld(1, &[1; 16]), ld(2, &[2; 8]), extra.to_vec()].concat();
            ld(1, &ld(2, &ld(2, &span)))
        };
        for extra in [
            raw(20, 3, &raw(21, 4, &[])), // ends another group
            raw(20, 3, &[]),              // never ends
            raw(20, 4, &[]),              // ends without a start
            raw(20, 3, &raw(21, 6, &[])), // wire type 6 inside
            raw(20, 7, &[]),              // wire type 7
            raw(5, 3, &raw(5, 4, &[])),   // a known field (name) as a group
            raw(20, 3, &[raw(21, 2, &[5]), raw(20, 4, &[])].concat()), // truncated inside
        ] {
            assert!(!agreed(&span(&extra)), "{extra:02x?}");
        }
        assert!(agreed(&span(
            &[raw(20, 3, &raw(21, 2, &[0])), raw(20, 4, &[])].concat()
        )));
    }

    /// An unknown field, of any wire type; groups hold more of them.
    #[derive(Debug, Clone)]
    enum Unknown {
        Varint(u64),
        Fixed64,
        Fixed32,
        /// Length-delimited: garbage bytes, or a valid request's bytes (a nested message prost skips).
        Bytes(Vec<u8>),
        Group(Vec<(u32, Unknown)>),
    }

    /// Field numbers no message of the trace schema knows (the largest known is 16).
    fn unknown_number() -> impl Strategy<Value = u32> {
        prop_oneof![17u32..40, Just(536_870_911)]
    }

    fn unknown() -> impl Strategy<Value = Unknown> {
        let leaf = prop_oneof![
            any::<u64>().prop_map(Unknown::Varint),
            Just(Unknown::Fixed64),
            Just(Unknown::Fixed32),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(Unknown::Bytes),
            Just(Unknown::Bytes(
                request(vec![full_span("nested")]).encode_to_vec()
            )),
        ];
        // Groups nest up to 3 deep: enough to cross the limit from a few levels above it.
        leaf.prop_recursive(3, 8, 3, |inner| {
            prop::collection::vec((unknown_number(), inner), 0..3).prop_map(Unknown::Group)
        })
    }

    fn encode_unknown(number: u32, field: &Unknown, out: &mut Vec<u8>) {
        match field {
            Unknown::Varint(value) => {
                out.extend(raw(number, 0, &[]));
                prost::encoding::encode_varint(*value, out);
            }
            Unknown::Fixed64 => out.extend(raw(number, 1, &[7; 8])),
            Unknown::Fixed32 => out.extend(raw(number, 5, &[7; 4])),
            Unknown::Bytes(bytes) => out.extend(ld(number, bytes)),
            Unknown::Group(fields) => {
                out.extend(raw(number, 3, &[]));
                for (inner, field) in fields {
                    encode_unknown(*inner, field, out);
                }
                out.extend(raw(number, 4, &[]));
            }
        }
    }

    /// Builds a message: its unknown field (if any) first, then its known fields.
    fn message(extra: &Option<(u32, Unknown)>, known: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some((number, field)) = extra {
            encode_unknown(*number, field, &mut out);
        }
        out.extend_from_slice(known);
        out
    }

    /// A request whose span attribute nests AnyValues through arrays (2 levels each) and
    /// key-value lists (3 levels each) down to about `depth` (the request is depth 0), with
    /// an unknown field, maybe, in every message on the way, innermost included.
    fn deep_request(depth: usize, kvlists: &[bool], extras: &[Option<(u32, Unknown)>]) -> Vec<u8> {
        let mut extras = extras.iter().cycle();
        let mut wrap = |known: &[u8]| message(extras.next().expect("cycle"), known);
        // The levels, outermost first; the AnyValue of the attribute is at depth 5.
        let mut kinds = Vec::new();
        let mut reached = 5;
        for &kvlist in kvlists.iter().cycle() {
            let step = if kvlist { 3 } else { 2 };
            if reached + step > depth {
                break;
            }
            reached += step;
            kinds.push(kvlist);
        }
        let mut any_value = wrap(&[]);
        for &kvlist in kinds.iter().rev() {
            any_value = if kvlist {
                let key_value = wrap(&[ld(1, b"k"), ld(2, &any_value)].concat());
                let list = wrap(&ld(1, &key_value));
                wrap(&ld(6, &list))
            } else {
                let array = wrap(&ld(1, &any_value));
                wrap(&ld(5, &array))
            };
        }
        let key_value = wrap(&[ld(1, b"k"), ld(2, &any_value)].concat());
        let span = wrap(&[ld(1, &[1; 16]), ld(2, &[2; 8]), ld(9, &key_value)].concat());
        let scope_spans = wrap(&ld(2, &span));
        let resource_spans = wrap(&ld(2, &scope_spans));
        wrap(&ld(1, &resource_spans))
    }

    /// Requests the mutations start from: ordinary ones, and deep ones at the limit.
    fn seeds() -> Vec<Vec<u8>> {
        let group = [raw(20, 3, &raw(21, 0, &[1])), raw(20, 4, &[])].concat();
        vec![
            request(vec![full_span("council.round"), full_span("llm.exchange")]).encode_to_vec(),
            request_with_value(&nested_arrays(48, &[])),
            request_with_value(&nested_arrays(47, &raw(15, 0, &[1]))),
            request_with_value(&nested_arrays(47, &group)),
            request_with_value(&nested_arrays(30, &ld(1, &ld(6, &ld(1, &ld(1, b"k")))))),
        ]
    }

    /// One edit of the bytes, each kind a way a broken client or a bad network garbles a body.
    #[derive(Debug, Clone)]
    enum Mutation {
        FlipBit {
            at: usize,
            bit: u8,
        },
        SetByte {
            at: usize,
            byte: u8,
        },
        Truncate {
            at: usize,
        },
        Delete {
            at: usize,
            len: usize,
        },
        Duplicate {
            at: usize,
            len: usize,
        },
        Insert {
            at: usize,
            bytes: Vec<u8>,
        },
        /// Makes the byte at `at` a varint byte (continuation bit set), or adds `delta` to
        /// it: lengths, keys and counts all change by a little.
        EditVarint {
            at: usize,
            delta: i8,
        },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let at = any::<prop::sample::Index>().prop_map(|i| i.index(1 << 16));
        prop_oneof![
            (at.clone(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
            (at.clone(), any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
            at.clone().prop_map(|at| Mutation::Truncate { at }),
            (at.clone(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
            (at.clone(), 1usize..32).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
            (at.clone(), prop::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
            (at, any::<i8>()).prop_map(|(at, delta)| Mutation::EditVarint { at, delta }),
        ]
    }

    fn mutate(body: &mut Vec<u8>, mutation: &Mutation) {
        if body.is_empty() {
            return;
        }
        let len = body.len();
        match mutation {
            Mutation::FlipBit { at, bit } => body[at % len] ^= 1 << bit,
            Mutation::SetByte { at, byte } => body[at % len] = *byte,
            Mutation::Truncate { at } => body.truncate(at % len),
            Mutation::Delete { at, len: n } => {
                let at = at % len;
                body.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate { at, len: n } => {
                let at = at % len;
                let range = body[at..(at + n).min(len)].to_vec();
                body.splice(at..at, range);
            }
            Mutation::Insert { at, bytes } => {
                body.splice(at % len..at % len, bytes.iter().copied());
            }
            Mutation::EditVarint { at, delta } => {
                let byte = &mut body[at % len];
                *byte = if *delta == 0 {
                    *byte | 0x80
                } else {
                    byte.wrapping_add_signed(*delta)
                };
            }
        }
    }

    /// The scan's verdict and span count against prost's.
    fn assert_agrees(body: &[u8]) -> Result<(), TestCaseError> {
        let scanned = scan_request(body);
        let decoded = ExportTraceServiceRequest::decode(body);
        prop_assert_eq!(
            scanned.is_some(),
            decoded.is_ok(),
            "scan {:?}, prost {:?}",
            scanned,
            decoded.as_ref().err()
        );
        if let (Some(scan), Ok(request)) = (scanned, decoded) {
            prop_assert_eq!(scan.spans, crate::otlp::span_count(&request.resource_spans));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        /// The scan accepts exactly what prost decodes, with the same span count, for
        /// nesting around prost's recursion limit with unknown fields (every wire type,
        /// groups, nested messages) at every depth.
        #[test]
        fn the_scan_agrees_with_prost_around_the_recursion_limit(
            depth in 92usize..108,
            kvlists in prop::collection::vec(prop::bool::weighted(0.3), 1..8),
            extras in prop::collection::vec(
                prop::option::weighted(0.25, (unknown_number(), unknown())),
                1..12,
            ),
        ) {
            assert_agrees(&deep_request(depth, &kvlists, &extras))?;
        }
    }

    proptest! {
        // Not a cargo-fuzz target: cargo-fuzz needs a nightly toolchain, which the build
        // machines do not have. This is the same idea, bounded (a fixed seed and case count,
        // well under a second) so it runs with every `cargo test`: valid requests (deep ones
        // at the limit among them) garbled by a few byte mutations, and the scan must say
        // what prost says.
        #![proptest_config(ProptestConfig {
            cases: 1500,
            rng_seed: proptest::test_runner::RngSeed::Fixed(12),
            ..ProptestConfig::default()
        })]

        /// Garbled requests: the scan accepts exactly what prost decodes, with the same span count.
        #[test]
        fn the_scan_agrees_with_prost_on_garbled_requests(
            seed in 0usize..5,
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            let mut body = seeds().swap_remove(seed);
            for mutation in &mutations {
                mutate(&mut body, mutation);
            }
            assert_agrees(&body)?;
        }
    }
}

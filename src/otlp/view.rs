//! Spans read where they lie in an encoded `ExportTraceServiceRequest` (a body the wire
//! scan accepted), without decoding or allocating, and a rewrite that keeps some of them
//! by copying their bytes as they came. Stages that only read spans and drop some (head
//! sampling) work on this form, so the spans they drop are never decoded.
//!
//! Fields are read as prost reads them: a singular field given twice keeps the last
//! value, a singular message given twice (a span's status) is merged.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::wire::{RECURSION_LIMIT, key, length_delimited, skip, varint};
use super::{Span, SpanKind, StatusCode};

/// An attribute value read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// An array, a key-value list or a string-table index, not read further.
    Other,
    /// No value.
    Empty,
}

/// An attribute's value, read only when asked for: most attributes a stage walks past
/// are never read, and a long string value costs nothing until then.
#[derive(Debug, Clone, Copy)]
pub enum LazyValue<'a> {
    /// A value at hand (a decoded attribute's).
    Ready(ValueRef<'a>),
    /// The encoded `KeyValue` it is in.
    Encoded(&'a [u8]),
}

impl<'a> LazyValue<'a> {
    /// The value.
    pub fn get(self) -> ValueRef<'a> {
        match self {
            Self::Ready(value) => value,
            Self::Encoded(key_value) => value_of(key_value),
        }
    }
}

/// One span, its fields found in one walk; attributes and events are read on demand.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    bytes: &'a [u8],
    /// 16 bytes when valid.
    pub trace_id: &'a [u8],
    /// 8 bytes when valid.
    pub span_id: &'a [u8],
    /// Empty for a root span.
    pub parent_span_id: &'a [u8],
    /// The W3C `tracestate`.
    pub trace_state: &'a str,
    /// The span's name.
    pub name: &'a str,
    /// The `SpanKind` number.
    pub kind: i32,
    /// The `Status.code` number (0, unset, when there is no status).
    pub status_code: i32,
    /// The `Status.message` (empty when there is no status).
    pub status_message: &'a str,
    /// Start time, Unix nanoseconds.
    pub start_time_unix_nano: u64,
    /// End time, Unix nanoseconds.
    pub end_time_unix_nano: u64,
    /// How many events the span has (a stage that looks for one skips the walk when none).
    pub event_count: usize,
}

impl<'a> SpanRef<'a> {
    /// Reads a span's encoding; the wire scan has accepted it, so a fault only ends the walk.
    pub fn parse(bytes: &'a [u8]) -> Self {
        Self::parse_with(bytes, |_, _, _| {})
    }

    /// Reads a span's encoding as [`parse`](Self::parse) does, handing every field it does
    /// not keep (attributes, events, links, counts) to `other` with its whole encoding, in
    /// the same walk.
    pub(super) fn parse_with(
        bytes: &'a [u8],
        mut other: impl FnMut(u32, Field<'a>, &'a [u8]),
    ) -> Self {
        let mut span = Self {
            bytes,
            trace_id: &[],
            span_id: &[],
            parent_span_id: &[],
            trace_state: "",
            name: "",
            kind: 0,
            status_code: 0,
            status_message: "",
            start_time_unix_nano: 0,
            end_time_unix_nano: 0,
            event_count: 0,
        };
        let mut rest = bytes;
        while let Some((number, field, whole)) = next_field(&mut rest) {
            match (number, field) {
                (1, Field::Bytes(b)) => span.trace_id = b,
                (2, Field::Bytes(b)) => span.span_id = b,
                (3, Field::Bytes(b)) => span.trace_state = text(b),
                (4, Field::Bytes(b)) => span.parent_span_id = b,
                (5, Field::Bytes(b)) => span.name = text(b),
                (6, Field::Varint(v)) => span.kind = v as i32,
                (7, Field::Fixed64(t)) => span.start_time_unix_nano = t,
                (8, Field::Fixed64(t)) => span.end_time_unix_nano = t,
                (15, Field::Bytes(status)) => {
                    for (number, field) in Fields(status) {
                        match (number, field) {
                            (2, Field::Bytes(message)) => span.status_message = text(message),
                            (3, Field::Varint(code)) => span.status_code = code as i32,
                            _ => {}
                        }
                    }
                }
                (11, _) => {
                    span.event_count += 1;
                    other(number, field, whole);
                }
                _ => other(number, field, whole),
            }
        }
        span
    }

    /// The span's encoding.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The span's attributes, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a [u8], LazyValue<'a>)> + use<'a> {
        key_values(self.bytes, 9)
    }

    /// The value of the first attribute named `key`, if it has one.
    pub fn attribute(&self, key: &str) -> Option<ValueRef<'a>> {
        first_value(self.attributes(), key)
    }

    /// The span's events: each one's name and attributes.
    pub fn events(&self) -> impl Iterator<Item = EventRef<'a>> + use<'a> {
        // No walk for the spans (most) without events.
        let bytes = if self.event_count == 0 {
            &[][..]
        } else {
            self.bytes
        };
        Fields(bytes).filter_map(|(number, field)| match (number, field) {
            (11, Field::Bytes(event)) => Some(EventRef(event)),
            _ => None,
        })
    }
}

/// A resource read in place.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceRef<'a>(&'a [u8]);

impl<'a> ResourceRef<'a> {
    /// The resource's encoding.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The value of the first attribute named `key`, if it has one.
    pub fn attribute(&self, key: &str) -> Option<ValueRef<'a>> {
        first_value(key_values(self.0, 1), key)
    }
}

/// The value of the first of `attributes` named `key`, unless it has none.
fn first_value<'a>(
    mut attributes: impl Iterator<Item = (&'a [u8], LazyValue<'a>)>,
    key: &str,
) -> Option<ValueRef<'a>> {
    attributes
        .find(|(k, _)| *k == key.as_bytes())
        .map(|(_, v)| v.get())
        .filter(|v| *v != ValueRef::Empty)
}

impl<'a> ValueRef<'a> {
    /// The value of a decoded attribute.
    pub fn of(key_value: &'a super::KeyValue) -> Self {
        key_value
            .value
            .as_ref()
            .and_then(|v| v.value.as_ref())
            .map_or(Self::Empty, Self::from)
    }
}

impl<'a> From<&'a super::Value> for ValueRef<'a> {
    fn from(value: &'a super::Value) -> Self {
        use super::Value;
        match value {
            Value::StringValue(s) => Self::Str(s),
            Value::BoolValue(b) => Self::Bool(*b),
            Value::IntValue(i) => Self::Int(*i),
            Value::DoubleValue(d) => Self::Double(*d),
            Value::BytesValue(b) => Self::Bytes(b),
            Value::ArrayValue(_) | Value::KvlistValue(_) | Value::StringValueStrindex(_) => {
                Self::Other
            }
        }
    }
}

/// What [`walk_spans`] found besides the spans.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Spans visited.
    pub spans: usize,
    /// Whether a scope without spans or a resource without scopes is there (which the
    /// decoded stages leave out).
    pub empty_containers: bool,
}

/// Calls `visit` with every span of `body` and its resource, in order.
pub fn walk_spans<'a>(
    body: &'a [u8],
    mut visit: impl FnMut(ResourceRef<'a>, &SpanRef<'a>),
) -> Walked {
    let mut walked = Walked::default();
    for (number, field) in Fields(body) {
        let (1, Field::Bytes(resource_spans)) = (number, field) else {
            continue;
        };
        let mut resource = ResourceRef::default();
        let mut scopes = 0;
        for (number, field) in Fields(resource_spans) {
            match (number, field) {
                (1, Field::Bytes(bytes)) => resource = ResourceRef(bytes),
                (2, Field::Bytes(scope_spans)) => {
                    scopes += 1;
                    let mut spans = 0;
                    for (number, field) in Fields(scope_spans) {
                        if let (2, Field::Bytes(span)) = (number, field) {
                            spans += 1;
                            visit(resource, &SpanRef::parse(span));
                        }
                    }
                    walked.spans += spans;
                    walked.empty_containers |= spans == 0;
                }
                _ => {}
            }
        }
        walked.empty_containers |= scopes == 0;
    }
    walked
}

/// What a stage reads of a span besides its attributes, decoded or in place: a stage that
/// reads through it is written once for both forms.
pub trait SpanRead {
    /// The span's name.
    fn name(&self) -> &str;
    /// Its kind (an unknown number reads as prost reads it: the default).
    fn kind(&self) -> SpanKind;
    /// Its status code (unset when it has no status).
    fn status(&self) -> StatusCode;
    /// End minus start, in nanoseconds (0 when the end is before the start).
    fn duration_nanos(&self) -> u64;
}

impl SpanRead for Span {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> SpanKind {
        Span::kind(self)
    }
    fn status(&self) -> StatusCode {
        self.status.as_ref().map_or(StatusCode::Unset, |s| s.code())
    }
    fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }
}

impl SpanRead for SpanRef<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.kind).unwrap_or_default()
    }
    fn status(&self) -> StatusCode {
        StatusCode::try_from(self.status_code).unwrap_or_default()
    }
    fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }
}

/// One span event read in place.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a>(&'a [u8]);

impl<'a> EventRef<'a> {
    /// The event's name (the last one given).
    pub fn name(&self) -> &'a str {
        Fields(self.0)
            .filter_map(|(number, field)| match (number, field) {
                (2, Field::Bytes(name)) => Some(text(name)),
                _ => None,
            })
            .last()
            .unwrap_or_default()
    }

    /// The event's attributes, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a [u8], LazyValue<'a>)> + use<'a> {
        key_values(self.0, 3)
    }
}

/// The attributes of `message`, its `KeyValue` field being `number`: keys read, values
/// left for when they are asked for.
fn key_values<'a>(
    message: &'a [u8],
    number: u32,
) -> impl Iterator<Item = (&'a [u8], LazyValue<'a>)> + use<'a> {
    Fields(message).filter_map(move |(n, field)| match field {
        Field::Bytes(kv) if n == number => Some((key_of(kv), LazyValue::Encoded(kv))),
        _ => None,
    })
}

/// The keys of a `KeyValue`'s key and value fields (both length-delimited).
const KEY: u8 = 1 << 3 | 2;
const VALUE: u8 = 2 << 3 | 2;

/// A `KeyValue`'s key (the last one given), as bytes: comparing them needs no UTF-8 check.
fn key_of(key_value: &[u8]) -> &[u8] {
    if let Some(key) = plain_key(key_value) {
        return key;
    }
    let mut key: &[u8] = &[];
    for (number, field) in Fields(key_value) {
        if let (1, Field::Bytes(k)) = (number, field) {
            key = k;
        }
    }
    key
}

/// The key of a `KeyValue` in the shape encoders write, its key field then at most one
/// value field, read without the general walk (the filter and the signals look at every
/// attribute's key); `None` for any other shape, which the general walk reads.
fn plain_key(key_value: &[u8]) -> Option<&[u8]> {
    let mut rest = key_value.strip_prefix(&[KEY])?;
    let key = length_delimited(&mut rest)?;
    if let Some(mut value) = rest.strip_prefix(&[VALUE]) {
        length_delimited(&mut value)?;
        rest = value;
    }
    rest.is_empty().then_some(key)
}

/// A `KeyValue`'s key and value, read as [`key_of`] and [`value_of`] read them, in one
/// step for the shape encoders write: the key, then a value of one member.
pub(super) fn key_and_value(key_value: &[u8]) -> (&[u8], ValueRef<'_>) {
    plain_key_value(key_value).unwrap_or_else(|| (key_of(key_value), value_of(key_value)))
}

fn plain_key_value(key_value: &[u8]) -> Option<(&[u8], ValueRef<'_>)> {
    let mut rest = key_value.strip_prefix(&[KEY])?;
    let key = length_delimited(&mut rest)?;
    if rest.is_empty() {
        return Some((key, ValueRef::Empty));
    }
    let mut rest = rest.strip_prefix(&[VALUE])?;
    let mut any = length_delimited(&mut rest)?;
    if !rest.is_empty() {
        return None;
    }
    if any.is_empty() {
        return Some((key, ValueRef::Empty));
    }
    let (number, field, _) = next_field(&mut any)?;
    if !any.is_empty() {
        return None;
    }
    Some((key, any_value((number, field))?))
}

/// A `KeyValue`'s value: one given twice is merged, its oneof keeping the last member given.
fn value_of(key_value: &[u8]) -> ValueRef<'_> {
    let mut value = ValueRef::Empty;
    for (number, field) in Fields(key_value) {
        if let (2, Field::Bytes(any)) = (number, field) {
            for member in Fields(any) {
                value = any_value(member).unwrap_or(value);
            }
        }
    }
    value
}

fn any_value((number, field): (u32, Field<'_>)) -> Option<ValueRef<'_>> {
    Some(match (number, field) {
        (1, Field::Bytes(s)) => ValueRef::Str(text(s)),
        (2, Field::Varint(v)) => ValueRef::Bool(v != 0),
        (3, Field::Varint(v)) => ValueRef::Int(v as i64),
        (4, Field::Fixed64(bits)) => ValueRef::Double(f64::from_bits(bits)),
        (5 | 6, Field::Bytes(_)) | (8, Field::Varint(_)) => ValueRef::Other,
        (7, Field::Bytes(b)) => ValueRef::Bytes(b),
        _ => return None,
    })
}

/// A span's trace id read alone from its encoding: the last field 1, as a decoder keeps
/// it, without the rest of [`SpanRef::parse`]'s work (routing reads nothing else).
pub(super) fn span_trace_id(span: &[u8]) -> &[u8] {
    Fields(span)
        .filter_map(|field| match field {
            (1, Field::Bytes(id)) => Some(id),
            _ => None,
        })
        .last()
        .unwrap_or_default()
}

/// A string field the scan found to be UTF-8.
pub(super) fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// One field's value.
#[derive(Debug, Clone, Copy)]
pub(super) enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: a string, bytes or a nested message.
    Bytes(&'a [u8]),
    /// Fixed32 or a group, not read.
    Other,
}

/// The fields of a message, in order, with their numbers; ends at the first fault.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = (u32, Field<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let (number, field, _) = next_field(&mut self.0)?;
        Some((number, field))
    }
}

/// Reads one field: its number, its value and its whole encoding (key included).
pub(super) fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u32, Field<'a>, &'a [u8])> {
    let start = *buf;
    if start.is_empty() {
        return None;
    }
    let (number, wire_type) = key(buf)?;
    let field = match wire_type {
        0 => Field::Varint(varint(buf)?),
        1 => {
            let bytes: [u8; 8] = buf.get(..8)?.try_into().ok()?;
            *buf = &buf[8..];
            Field::Fixed64(u64::from_le_bytes(bytes))
        }
        2 => Field::Bytes(length_delimited(buf)?),
        _ => {
            if !skip(buf, wire_type, number, RECURSION_LIMIT) {
                return None;
            }
            Field::Other
        }
    };
    let whole = &start[..start.len() - buf.len()];
    Some((number, field, whole))
}

/// What a rewrite does with one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it out.
    Drop,
    /// Keep its bytes as they are.
    Keep,
    /// Keep it with the `tracestate` the caller wrote into the scratch string.
    KeepWithTraceState,
}

/// A request rewritten by [`retain_spans`].
#[derive(Debug, Default)]
pub struct Retained {
    /// The encoding of the kept spans, with their resources and scopes.
    pub body: Vec<u8>,
    /// Spans kept.
    pub kept: usize,
    /// Spans dropped.
    pub dropped: usize,
    /// Whether `body` differs from the request: a span dropped or edited, or a scope or
    /// resource without spans left out.
    pub changed: bool,
}

/// Rewrites `body` keeping the spans `decide` keeps: their bytes are copied as they came
/// (a new `tracestate` replaces the old one at the end of the span, which protobuf
/// allows), and only the enclosing lengths are written anew. A scope or resource left
/// without spans goes too.
pub fn retain_spans(
    body: &[u8],
    mut decide: impl FnMut(&SpanRef<'_>, &mut String) -> Verdict,
) -> Retained {
    let mut out = Retained {
        body: Vec::with_capacity(body.len()),
        ..Retained::default()
    };
    let (mut resource, mut scope) = (Vec::new(), Vec::new());
    let mut trace_state = String::new();
    let mut rest = body;
    while let Some((number, field, whole)) = next_field(&mut rest) {
        let (1, Field::Bytes(resource_spans)) = (number, field) else {
            out.body.extend_from_slice(whole);
            continue;
        };
        resource.clear();
        let mut resource_kept = false;
        let mut rs_rest = resource_spans;
        while let Some((number, field, whole)) = next_field(&mut rs_rest) {
            let (2, Field::Bytes(scope_spans)) = (number, field) else {
                resource.extend_from_slice(whole);
                continue;
            };
            scope.clear();
            let mut scope_kept = false;
            let mut ss_rest = scope_spans;
            while let Some((number, field, whole)) = next_field(&mut ss_rest) {
                let (2, Field::Bytes(span_bytes)) = (number, field) else {
                    scope.extend_from_slice(whole);
                    continue;
                };
                let span = SpanRef::parse(span_bytes);
                trace_state.clear();
                match decide(&span, &mut trace_state) {
                    Verdict::Drop => {
                        out.dropped += 1;
                        out.changed = true;
                    }
                    Verdict::Keep => {
                        out.kept += 1;
                        scope_kept = true;
                        scope.extend_from_slice(whole);
                    }
                    Verdict::KeepWithTraceState => {
                        out.kept += 1;
                        out.changed = true;
                        scope_kept = true;
                        write_span_with_trace_state(&mut scope, span_bytes, &trace_state);
                    }
                }
            }
            if scope_kept {
                resource_kept = true;
                write_message(&mut resource, 2, &scope);
            } else {
                out.changed = true;
            }
        }
        if resource_kept {
            write_message(&mut out.body, 1, &resource);
        } else {
            out.changed = true;
        }
    }
    out
}

/// Writes span field 2 of a `ScopeSpans`: `span` without its `tracestate` fields, then
/// `trace_state` (left out when empty, as prost leaves out an empty string).
pub fn write_span_with_trace_state(out: &mut Vec<u8>, span: &[u8], trace_state: &str) {
    let mut kept_len = 0;
    let mut rest = span;
    while let Some((number, _, whole)) = next_field(&mut rest) {
        if number != 3 {
            kept_len += whole.len();
        }
    }
    let state_len = if trace_state.is_empty() {
        0
    } else {
        field_len(3, trace_state.len())
    };
    write_field_head(out, 2, kept_len + state_len);
    let mut rest = span;
    while let Some((number, _, whole)) = next_field(&mut rest) {
        if number != 3 {
            out.extend_from_slice(whole);
        }
    }
    if !trace_state.is_empty() {
        write_message(out, 3, trace_state.as_bytes());
    }
}

/// Writes `message` as length-delimited field `number`.
pub(super) fn write_message(out: &mut Vec<u8>, number: u32, message: &[u8]) {
    write_field_head(out, number, message.len());
    out.extend_from_slice(message);
}

/// Writes the key and length of length-delimited field `number` holding `len` bytes.
pub fn write_field_head(out: &mut Vec<u8>, number: u32, len: usize) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// The encoded size of length-delimited field `number` holding `len` bytes.
pub fn field_len(number: u32, len: usize) -> usize {
    key_len(number) + encoded_len_varint(len as u64) + len
}

/// One scope of an encoded request, split for a stage that regroups its spans: the
/// fields of its resource and its own, each without the repeated field it nests (field 2
/// of both), and each span's whole field, as they came.
pub struct ScopeParts<'a> {
    /// Counts the request's resources: the same for the scopes of one resource.
    pub resource_index: usize,
    /// The `ResourceSpans`' encoding.
    pub resource_spans: &'a [u8],
    /// The `ScopeSpans`' encoding.
    pub scope_spans: &'a [u8],
}

impl<'a> ScopeParts<'a> {
    /// The fields of `message` but its field 2, as they came: a `ResourceSpans` without
    /// its scopes, a `ScopeSpans` without its spans.
    pub fn head(message: &[u8]) -> Vec<u8> {
        let mut head = Vec::new();
        let mut rest = message;
        while let Some((number, _, whole)) = next_field(&mut rest) {
            if number != 2 {
                head.extend_from_slice(whole);
            }
        }
        head
    }

    /// The scope's spans: each one read, and its whole field (key included).
    pub fn spans(&self) -> impl Iterator<Item = (SpanRef<'a>, &'a [u8])> + use<'a> {
        let mut rest = self.scope_spans;
        std::iter::from_fn(move || {
            loop {
                let (number, field, whole) = next_field(&mut rest)?;
                if let (2, Field::Bytes(span)) = (number, field) {
                    return Some((SpanRef::parse(span), whole));
                }
            }
        })
    }
}

/// Calls `visit` with every scope of the encoded request `body`, in order.
pub fn walk_scopes<'a>(body: &'a [u8], mut visit: impl FnMut(ScopeParts<'a>)) {
    let resources = Fields(body).filter_map(|(number, field)| match (number, field) {
        (1, Field::Bytes(resource_spans)) => Some(resource_spans),
        _ => None,
    });
    for (resource_index, resource_spans) in resources.enumerate() {
        for (number, field) in Fields(resource_spans) {
            if let (2, Field::Bytes(scope_spans)) = (number, field) {
                visit(ScopeParts {
                    resource_index,
                    resource_spans,
                    scope_spans,
                });
            }
        }
    }
}

/// The spans (field 2) of an encoded `ScopeSpans`, each one's encoding, in order; ends at
/// the first fault.
pub fn spans_in_scope(scope_spans: &[u8]) -> impl Iterator<Item = &[u8]> {
    Fields(scope_spans).filter_map(|(number, field)| match (number, field) {
        (2, Field::Bytes(span)) => Some(span),
        _ => None,
    })
}

/// Random requests for the tests that hold the wire form against the decoded one.
#[cfg(test)]
pub(crate) mod arbitrary {
    use proptest::prelude::*;

    use crate::otlp::{
        AnyValue, ArrayValue, Event, ExportTraceServiceRequest, InstrumentationScope, KeyValue,
        Resource, ResourceSpans, ScopeSpans, Span, Status, Value,
    };

    fn value() -> impl Strategy<Value = Option<AnyValue>> {
        let member = prop_oneof![
            "[a-z /_.]{0,12}".prop_map(Value::StringValue),
            any::<bool>().prop_map(Value::BoolValue),
            any::<i64>().prop_map(Value::IntValue),
            any::<f64>().prop_map(Value::DoubleValue),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Value::BytesValue),
            Just(Value::ArrayValue(ArrayValue::default())),
        ];
        prop::option::of(prop::option::of(member).prop_map(|value| AnyValue { value }))
    }

    fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
        prop::collection::vec(
            ("[a-z._]{0,10}", value()).prop_map(|(key, value)| KeyValue {
                key,
                value,
                ..Default::default()
            }),
            0..4,
        )
    }

    /// A span with random ids (a few trace ids shared), `tracestate` and content.
    pub fn span() -> impl Strategy<Value = Span> {
        let trace_state = prop::sample::select(vec![
            "",
            "ot=th:c",
            "vendor=x",
            "ot=rv:00000000000001",
            "ot=rv:ffffffffffffff;th:4,other=9",
        ]);
        (
            prop::array::uniform16(any::<u8>()),
            prop::array::uniform8(any::<u8>()),
            trace_state,
            "[A-Za-z ./]{0,16}",
            0..6i32,
            attributes(),
            prop::collection::vec(("[a-z_-]{0,10}", attributes()), 0..3),
            prop::option::of(0..3i32),
            prop::collection::vec(any::<u8>(), 0..9),
        )
            .prop_map(
                |(trace, id, trace_state, name, kind, attributes, events, status, parent)| Span {
                    trace_id: trace.to_vec(),
                    span_id: id.to_vec(),
                    trace_state: trace_state.into(),
                    parent_span_id: parent,
                    name,
                    kind,
                    start_time_unix_nano: 1,
                    end_time_unix_nano: 2,
                    attributes,
                    events: events
                        .into_iter()
                        .map(|(name, attributes)| Event {
                            name,
                            attributes,
                            ..Default::default()
                        })
                        .collect(),
                    status: status.map(|code| Status {
                        code,
                        message: "m".into(),
                    }),
                    ..Default::default()
                },
            )
    }

    /// A request of up to 3 resources of up to 3 scopes of up to 5 spans.
    pub fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
        let scope = (
            "[a-z]{0,6}",
            prop::collection::vec(span(), 0..5),
            "[a-z:/]{0,6}",
        )
            .prop_map(|(name, spans, schema_url)| ScopeSpans {
                scope: Some(InstrumentationScope {
                    name,
                    ..Default::default()
                }),
                spans,
                schema_url,
            });
        let resource = (attributes(), prop::collection::vec(scope, 0..3)).prop_map(
            |(attributes, scope_spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans,
                schema_url: String::new(),
            },
        );
        prop::collection::vec(resource, 0..3)
            .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::otlp::{ExportTraceServiceRequest, Value};

    /// A decoded value as the view reads it.
    fn as_ref(value: Option<&Value>) -> ValueRef<'_> {
        value.map_or(ValueRef::Empty, ValueRef::from)
    }

    #[test]
    fn a_trace_id_read_alone_is_the_one_prost_keeps() {
        let span = crate::otlp::Span {
            trace_id: vec![1; 16],
            name: "council.round".into(),
            ..Default::default()
        };
        let encoded = span.encode_to_vec();
        assert_eq!(span_trace_id(&encoded), &[1; 16]);
        // Given twice, the last one counts, as in the decoded span the shards compare.
        let again = crate::otlp::Span {
            trace_id: vec![2; 16],
            ..Default::default()
        }
        .encode_to_vec();
        let twice = [encoded, again].concat();
        let decoded = crate::otlp::Span::decode(&twice[..]).expect("decodes");
        assert_eq!(span_trace_id(&twice), &decoded.trace_id[..]);
        assert_eq!(span_trace_id(&[]), &[] as &[u8]);
    }

    #[test]
    fn a_key_given_twice_or_after_its_value_reads_as_prost_reads_it() {
        use crate::otlp::KeyValue;
        let kv = |key: &str| {
            KeyValue {
                key: key.into(),
                ..Default::default()
            }
            .encode_to_vec()
        };
        let value = crate::otlp::key_value("", Value::IntValue(7)).encode_to_vec();
        // Key, value, then the key again: prost keeps the last key.
        let twice = [kv("first"), value.clone(), kv("last")].concat();
        assert_eq!(key_of(&twice), b"last");
        assert_eq!(
            KeyValue::decode(&twice[..])
                .map(|kv| kv.key)
                .ok()
                .as_deref(),
            Some("last")
        );
        // The value before the key.
        let swapped = [value, kv("k")].concat();
        assert_eq!(key_of(&swapped), b"k");
        assert_eq!(value_of(&swapped), ValueRef::Int(7));
        assert_eq!(key_of(&kv("only")), b"only");
        assert_eq!(key_of(&[]), b"");
    }

    proptest! {
        #[test]
        fn a_span_reads_in_place_as_prost_decodes_it(span in arbitrary::span()) {
            let bytes = span.encode_to_vec();
            let view = SpanRef::parse(&bytes);
            prop_assert_eq!(view.trace_id, &span.trace_id[..]);
            prop_assert_eq!(view.span_id, &span.span_id[..]);
            prop_assert_eq!(view.parent_span_id, &span.parent_span_id[..]);
            prop_assert_eq!(view.trace_state, &span.trace_state[..]);
            prop_assert_eq!(view.name, &span.name[..]);
            prop_assert_eq!(view.kind, span.kind);
            prop_assert_eq!(view.status_code, span.status.as_ref().map_or(0, |s| s.code));
            prop_assert_eq!((view.start_time_unix_nano, view.end_time_unix_nano), (span.start_time_unix_nano, span.end_time_unix_nano));
            let attributes: Vec<_> = view.attributes().map(|(k, v)| (k, v.get())).collect();
            let expected: Vec<_> = span.attributes.iter()
                .map(|kv| (kv.key.as_bytes(), as_ref(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                .collect();
            // NaN is not equal to itself: compare the bits of doubles.
            prop_assert_eq!(format!("{attributes:?}"), format!("{expected:?}"));
            let mut read_together = Vec::new();
            let mut rest = &bytes[..];
            while let Some((number, field, _)) = next_field(&mut rest) {
                if let (9, Field::Bytes(key_value)) = (number, field) {
                    read_together.push(key_and_value(key_value));
                }
            }
            prop_assert_eq!(format!("{read_together:?}"), format!("{expected:?}"));
            let events: Vec<_> = view.events().map(|e| (e.name(), e.attributes().count())).collect();
            let expected: Vec<_> = span.events.iter().map(|e| (e.name.as_str(), e.attributes.len())).collect();
            prop_assert_eq!(events, expected);
        }

        #[test]
        fn a_rewrite_decodes_to_the_request_with_only_the_kept_spans(
            request in arbitrary::request(),
            pattern in prop::collection::vec(0..3u8, 1..8),
        ) {
            let body = request.encode_to_vec();
            let mut i = 0;
            let retained = retain_spans(&body, |_, trace_state| {
                i += 1;
                match pattern[i % pattern.len()] {
                    0 => Verdict::Drop,
                    1 => Verdict::Keep,
                    _ => {
                        trace_state.push_str("ot=th:8");
                        Verdict::KeepWithTraceState
                    }
                }
            });
            // The oracle: the same decisions on the decoded request.
            let mut expected = request.clone();
            let mut i = 0;
            for rs in &mut expected.resource_spans {
                for ss in &mut rs.scope_spans {
                    ss.spans.retain_mut(|span| {
                        i += 1;
                        match pattern[i % pattern.len()] {
                            0 => false,
                            1 => true,
                            _ => {
                                span.trace_state = "ot=th:8".into();
                                true
                            }
                        }
                    });
                }
                rs.scope_spans.retain(|ss| !ss.spans.is_empty());
            }
            expected.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
            let decoded = ExportTraceServiceRequest::decode(&retained.body[..]).expect("decodes");
            prop_assert_eq!(&decoded, &expected);
            prop_assert_eq!(retained.kept, crate::otlp::span_count(&expected.resource_spans));
            prop_assert_eq!(retained.kept + retained.dropped, crate::otlp::span_count(&request.resource_spans));
            prop_assert!(crate::otlp::wire::scan_request(&retained.body).is_some());
        }
    }
}

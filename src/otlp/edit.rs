//! Spans edited where they lie in an encoded request. A span stage is written once, over
//! [`SpanMut`] and [`AttributesMut`]; on a decoded span they edit the structs, on a span
//! read in place they record the edits beside its bytes, and [`edit_request`] writes the
//! request anew: an unchanged attribute's bytes are copied as they came, a changed one is
//! encoded alone, and an added one is appended (protobuf allows repeated fields to come in
//! any number of pieces). Events are decoded when a stage asks for them, the span's own.
//! Only edits the in-place form has no cheap way to make (a span's name, `tracestate` or
//! status message, its links, its dropped counts) decode the span, and only that span.

use prost::Message;
use prost::encoding::message;

use super::view::{
    Field, LazyValue, SpanRead, SpanRef, ValueRef, field_len, key_and_value, next_field, text,
    write_field_head, write_message,
};
use super::{
    AnyValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanKind, Status,
    StatusCode, Value,
};

/// A list of attributes as a stage reads and edits it, by index: a decoded list, or a
/// span's attributes in place. Indexes hold until the list is truncated or thinned.
pub trait AttributesMut {
    /// How many attributes there are.
    fn count(&self) -> usize;
    /// The key of attribute `i`, as bytes (UTF-8: the wire scan checked a key read in
    /// place); most stages only compare keys, which needs no UTF-8 check.
    fn key(&self, i: usize) -> &[u8];
    /// The value of attribute `i` (arrays and key-value lists read as [`ValueRef::Other`]).
    fn value(&self, i: usize) -> ValueRef<'_>;
    /// The value of attribute `i`, owned: for arrays and key-value lists, and for copies.
    fn value_owned(&self, i: usize) -> Option<AnyValue>;
    /// Renames attribute `i`.
    fn set_key(&mut self, i: usize, key: &str);
    /// Gives attribute `i` a new value.
    fn set_value(&mut self, i: usize, value: Value);
    /// Adds an attribute at the end.
    fn push(&mut self, key_value: KeyValue);
    /// Removes the attributes whose index is marked in `gone`.
    fn remove_marked(&mut self, gone: &[bool]);
    /// Keeps the first `len` attributes.
    fn truncate(&mut self, len: usize);
}

impl AttributesMut for Vec<KeyValue> {
    fn count(&self) -> usize {
        self.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        self[i].key.as_bytes()
    }
    fn value(&self, i: usize) -> ValueRef<'_> {
        ValueRef::of(&self[i])
    }
    fn value_owned(&self, i: usize) -> Option<AnyValue> {
        self[i].value.clone()
    }
    fn set_key(&mut self, i: usize, key: &str) {
        key.clone_into(&mut self[i].key);
    }
    fn set_value(&mut self, i: usize, value: Value) {
        self[i].value = Some(AnyValue { value: Some(value) });
    }
    fn push(&mut self, key_value: KeyValue) {
        Vec::push(self, key_value);
    }
    fn remove_marked(&mut self, gone: &[bool]) {
        let mut index = 0;
        self.retain(|_| {
            index += 1;
            !gone.get(index - 1).copied().unwrap_or(false)
        });
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

/// One attribute of a span read in place.
#[derive(Debug)]
enum Attribute<'a> {
    /// As it came: its whole field (head included), its `KeyValue`, and its key and
    /// value read once (the stages read every value, most of them more than once).
    InPlace {
        field: &'a [u8],
        key_value: &'a [u8],
        key: &'a [u8],
        value: ValueRef<'a>,
    },
    /// Written by a stage.
    Written(KeyValue),
}

/// The attributes and other parts of one span read in place, with the stages' edits.
struct InPlace<'s, 'a> {
    span: SpanRef<'a>,
    /// The span's attributes, edited; a buffer the caller reuses from span to span.
    attributes: &'s mut Vec<Attribute<'a>>,
    /// How many attributes the span came with.
    original: usize,
    /// Whether an attribute it came with was changed or removed (else the span's bytes
    /// stay whole and what was added is appended).
    edited: bool,
    /// Events, decoded once a stage asked for them.
    events: Option<Vec<Event>>,
    link_count: usize,
}

enum Form<'s, 'a> {
    Decoded(&'s mut Span),
    InPlace(InPlace<'s, 'a>),
    /// Read in place, then decoded for an edit the in-place form does not make.
    Owned(Box<Span>),
}

/// A span as a stage edits it: decoded, or read in place with its edits recorded.
pub struct SpanMut<'s, 'a> {
    form: Form<'s, 'a>,
}

impl<'s> SpanMut<'s, '_> {
    /// A decoded span.
    pub fn decoded(span: &'s mut Span) -> Self {
        Self {
            form: Form::Decoded(span),
        }
    }
}

impl<'s, 'a> SpanMut<'s, 'a> {
    /// The span encoded in `bytes` (which the wire scan accepted), its attributes listed
    /// into `attributes`.
    fn in_place(bytes: &'a [u8], attributes: &'s mut Vec<Attribute<'a>>) -> Self {
        attributes.clear();
        let mut link_count = 0;
        let span = SpanRef::parse_with(bytes, |number, field, whole| match (number, field) {
            (9, Field::Bytes(key_value)) => {
                let (key, value) = key_and_value(key_value);
                attributes.push(Attribute::InPlace {
                    field: whole,
                    key_value,
                    key,
                    value,
                });
            }
            (13, _) => link_count += 1,
            _ => {}
        });
        let original = attributes.len();
        Self {
            form: Form::InPlace(InPlace {
                span,
                attributes,
                original,
                edited: false,
                events: None,
                link_count,
            }),
        }
    }

    /// The span decoded, for an edit the in-place form has no way to make: the span is
    /// decoded (only this one) and written whole.
    pub fn span(&mut self) -> &mut Span {
        if let Form::InPlace(in_place) = &mut self.form {
            let span = in_place.decode();
            self.form = Form::Owned(Box::new(span));
        }
        match &mut self.form {
            Form::Decoded(span) => span,
            Form::Owned(span) => span,
            Form::InPlace(_) => unreachable!("decoded just above"),
        }
    }

    /// The decoded span, if it is one.
    fn as_decoded(&self) -> Option<&Span> {
        match &self.form {
            Form::Decoded(span) => Some(span),
            Form::Owned(span) => Some(span),
            Form::InPlace(_) => None,
        }
    }

    /// The span's `tracestate`.
    pub fn trace_state(&self) -> &str {
        match &self.form {
            Form::InPlace(in_place) => in_place.span.trace_state,
            _ => self.as_decoded().map_or("", |span| &span.trace_state),
        }
    }

    /// The status message (empty without a status).
    pub fn status_message(&self) -> &str {
        match &self.form {
            Form::InPlace(in_place) => in_place.span.status_message,
            _ => self
                .as_decoded()
                .and_then(|span| span.status.as_ref())
                .map_or("", |status| &status.message),
        }
    }

    /// Replaces the status message (a span without a status gets one, unset).
    pub fn set_status_message(&mut self, message: String) {
        self.span()
            .status
            .get_or_insert_with(Status::default)
            .message = message;
    }

    /// How many events the span has.
    pub fn event_count(&self) -> usize {
        match &self.form {
            Form::InPlace(in_place) => in_place
                .events
                .as_ref()
                .map_or(in_place.span.event_count, Vec::len),
            _ => self.as_decoded().map_or(0, |span| span.events.len()),
        }
    }

    /// How many of the span's events have a name `matches` accepts.
    pub fn count_events(&self, matches: impl Fn(&str) -> bool) -> usize {
        match &self.form {
            Form::InPlace(InPlace {
                events: None, span, ..
            }) => span.events().filter(|e| matches(e.name())).count(),
            Form::InPlace(InPlace {
                events: Some(events),
                ..
            }) => events.iter().filter(|e| matches(&e.name)).count(),
            _ => self.as_decoded().map_or(0, |span| {
                span.events.iter().filter(|e| matches(&e.name)).count()
            }),
        }
    }

    /// The span's events, decoded (only they, in place: the rest of the span stays as it came).
    pub fn events_mut(&mut self) -> &mut Vec<Event> {
        match &mut self.form {
            Form::Decoded(span) => &mut span.events,
            Form::Owned(span) => &mut span.events,
            Form::InPlace(in_place) => {
                let span = in_place.span;
                in_place.events.get_or_insert_with(|| decode_events(&span))
            }
        }
    }

    /// How many links the span has.
    pub fn link_count(&self) -> usize {
        match &self.form {
            Form::InPlace(in_place) => in_place.link_count,
            _ => self.as_decoded().map_or(0, |span| span.links.len()),
        }
    }

    /// The span's links, decoded (with the whole span: links are rare).
    pub fn links_mut(&mut self) -> &mut Vec<Link> {
        &mut self.span().links
    }

    /// The span's attributes as they are now: keys, and values read when asked for.
    pub fn attributes(&self) -> impl Iterator<Item = (&[u8], LazyValue<'_>)> {
        let (decoded, in_place) = match &self.form {
            Form::InPlace(in_place) => (None, Some(in_place.attributes.iter())),
            _ => (self.as_decoded().map(|s| s.attributes.iter()), None),
        };
        let decoded = decoded
            .into_iter()
            .flatten()
            .map(|kv| (kv.key.as_bytes(), LazyValue::Ready(ValueRef::of(kv))));
        let in_place = in_place
            .into_iter()
            .flatten()
            .map(|attribute| match attribute {
                Attribute::InPlace { key, value, .. } => (*key, LazyValue::Ready(*value)),
                Attribute::Written(kv) => (kv.key.as_bytes(), LazyValue::Ready(ValueRef::of(kv))),
            });
        decoded.chain(in_place)
    }

    /// Writes the span, as field 2 of a `ScopeSpans`: what did not change as it came.
    fn write(&self, out: &mut Vec<u8>) {
        match &self.form {
            Form::InPlace(in_place) => in_place.write(out),
            _ => {
                if let Some(span) = self.as_decoded() {
                    message::encode(2, span, out);
                }
            }
        }
    }
}

/// Decodes the events of a span read in place.
fn decode_events(span: &SpanRef<'_>) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rest = span.bytes();
    while let Some((number, field, _)) = next_field(&mut rest) {
        if let (11, Field::Bytes(event)) = (number, field) {
            // The wire scan accepted the request, and it accepts only what prost decodes.
            events.push(Event::decode(event).unwrap_or_default());
        }
    }
    events
}

impl InPlace<'_, '_> {
    /// The whole span decoded, with the edits made so far.
    fn decode(&mut self) -> Span {
        // The wire scan accepted the request, and it accepts only what prost decodes.
        let mut span = Span::decode(self.span.bytes()).unwrap_or_default();
        span.attributes = self
            .attributes
            .drain(..)
            .map(|attribute| match attribute {
                Attribute::InPlace { key_value, .. } => {
                    KeyValue::decode(key_value).unwrap_or_default()
                }
                Attribute::Written(kv) => kv,
            })
            .collect();
        if let Some(events) = self.events.take() {
            span.events = events;
        }
        span
    }

    /// Whether field `number` of the span is written from the edits rather than copied.
    fn rewritten(&self, number: u32) -> bool {
        (number == 9 && self.edited) || (number == 11 && self.events.is_some())
    }

    fn write(&self, out: &mut Vec<u8>) {
        let bytes = self.span.bytes();
        let added = &self.attributes[self.original.min(self.attributes.len())..];
        if !self.edited && self.events.is_none() {
            let added_len: usize = added.iter().map(Attribute::encoded_len).sum();
            write_field_head(out, 2, bytes.len() + added_len);
            out.extend_from_slice(bytes);
            added.iter().for_each(|attribute| attribute.write(out));
            return;
        }
        let mut len = 0;
        let mut rest = bytes;
        while let Some((number, _, whole)) = next_field(&mut rest) {
            if !self.rewritten(number) {
                len += whole.len();
            }
        }
        let attributes = if self.edited {
            &self.attributes[..]
        } else {
            added
        };
        len += attributes.iter().map(Attribute::encoded_len).sum::<usize>();
        let events = self.events.as_deref().unwrap_or_default();
        len += message::encoded_len_repeated(11, events);
        write_field_head(out, 2, len);
        let mut rest = bytes;
        while let Some((number, _, whole)) = next_field(&mut rest) {
            if !self.rewritten(number) {
                out.extend_from_slice(whole);
            }
        }
        attributes.iter().for_each(|attribute| attribute.write(out));
        events
            .iter()
            .for_each(|event| message::encode(11, event, out));
    }

    /// Attribute `i` made a written one (an edit follows).
    fn written(&mut self, i: usize) -> &mut KeyValue {
        if i < self.original {
            self.edited = true;
        }
        let attribute = &mut self.attributes[i];
        if let Attribute::InPlace { key_value, .. } = attribute {
            *attribute = Attribute::Written(KeyValue::decode(*key_value).unwrap_or_default());
        }
        match attribute {
            Attribute::Written(kv) => kv,
            Attribute::InPlace { .. } => unreachable!("made written just above"),
        }
    }
}

impl Attribute<'_> {
    /// Its encoding's length as a span's field 9.
    fn encoded_len(&self) -> usize {
        match self {
            Self::InPlace { field, .. } => field.len(),
            Self::Written(kv) => field_len(9, kv.encoded_len()),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::InPlace { field, .. } => out.extend_from_slice(field),
            Self::Written(kv) => message::encode(9, kv, out),
        }
    }
}

impl AttributesMut for SpanMut<'_, '_> {
    fn count(&self) -> usize {
        match &self.form {
            Form::InPlace(in_place) => in_place.attributes.len(),
            _ => self.as_decoded().map_or(0, |span| span.attributes.len()),
        }
    }

    fn key(&self, i: usize) -> &[u8] {
        match &self.form {
            Form::Decoded(span) => span.attributes[i].key.as_bytes(),
            Form::Owned(span) => span.attributes[i].key.as_bytes(),
            Form::InPlace(in_place) => match &in_place.attributes[i] {
                Attribute::InPlace { key, .. } => key,
                Attribute::Written(kv) => kv.key.as_bytes(),
            },
        }
    }

    fn value(&self, i: usize) -> ValueRef<'_> {
        match &self.form {
            Form::Decoded(span) => ValueRef::of(&span.attributes[i]),
            Form::Owned(span) => ValueRef::of(&span.attributes[i]),
            Form::InPlace(in_place) => match &in_place.attributes[i] {
                Attribute::InPlace { value, .. } => *value,
                Attribute::Written(kv) => ValueRef::of(kv),
            },
        }
    }

    fn value_owned(&self, i: usize) -> Option<AnyValue> {
        match &self.form {
            Form::Decoded(span) => span.attributes[i].value.clone(),
            Form::Owned(span) => span.attributes[i].value.clone(),
            Form::InPlace(in_place) => match &in_place.attributes[i] {
                Attribute::InPlace { key_value, .. } => {
                    KeyValue::decode(*key_value).unwrap_or_default().value
                }
                Attribute::Written(kv) => kv.value.clone(),
            },
        }
    }

    fn set_key(&mut self, i: usize, key: &str) {
        match &mut self.form {
            Form::Decoded(span) => span.attributes.set_key(i, key),
            Form::Owned(span) => span.attributes.set_key(i, key),
            Form::InPlace(in_place) => key.clone_into(&mut in_place.written(i).key),
        }
    }

    fn set_value(&mut self, i: usize, value: Value) {
        match &mut self.form {
            Form::Decoded(span) => span.attributes.set_value(i, value),
            Form::Owned(span) => span.attributes.set_value(i, value),
            Form::InPlace(in_place) => {
                if i < in_place.original {
                    in_place.edited = true;
                }
                let key = match &mut in_place.attributes[i] {
                    Attribute::InPlace { key, .. } => text(key).to_owned(),
                    Attribute::Written(kv) => std::mem::take(&mut kv.key),
                };
                in_place.attributes[i] = Attribute::Written(KeyValue {
                    key,
                    value: Some(AnyValue { value: Some(value) }),
                    ..KeyValue::default()
                });
            }
        }
    }

    fn push(&mut self, key_value: KeyValue) {
        match &mut self.form {
            Form::Decoded(span) => span.attributes.push(key_value),
            Form::Owned(span) => span.attributes.push(key_value),
            Form::InPlace(in_place) => in_place.attributes.push(Attribute::Written(key_value)),
        }
    }

    fn remove_marked(&mut self, gone: &[bool]) {
        match &mut self.form {
            Form::Decoded(span) => span.attributes.remove_marked(gone),
            Form::Owned(span) => span.attributes.remove_marked(gone),
            Form::InPlace(in_place) => {
                let original = in_place.original;
                let mut index = 0;
                let mut removed = 0;
                in_place.attributes.retain(|_| {
                    index += 1;
                    let go = gone.get(index - 1).copied().unwrap_or(false);
                    removed += usize::from(go && index <= original);
                    !go
                });
                if removed > 0 {
                    in_place.edited = true;
                    in_place.original -= removed;
                }
            }
        }
    }

    fn truncate(&mut self, len: usize) {
        match &mut self.form {
            Form::Decoded(span) => span.attributes.truncate(len),
            Form::Owned(span) => span.attributes.truncate(len),
            Form::InPlace(in_place) => {
                if len < in_place.original {
                    in_place.edited = true;
                    in_place.original = len;
                }
                in_place.attributes.truncate(len);
            }
        }
    }
}

impl SpanRead for SpanMut<'_, '_> {
    fn name(&self) -> &str {
        match &self.form {
            Form::InPlace(in_place) => in_place.span.name,
            _ => self.as_decoded().map_or("", |span| &span.name),
        }
    }
    fn kind(&self) -> SpanKind {
        match &self.form {
            Form::InPlace(in_place) => in_place.span.kind(),
            _ => self.as_decoded().map_or(SpanKind::Unspecified, Span::kind),
        }
    }
    fn status(&self) -> StatusCode {
        match &self.form {
            Form::InPlace(in_place) => SpanRead::status(&in_place.span),
            _ => self
                .as_decoded()
                .map_or(StatusCode::Unset, SpanRead::status),
        }
    }
    fn duration_nanos(&self) -> u64 {
        match &self.form {
            Form::InPlace(in_place) => in_place.span.duration_nanos(),
            _ => self.as_decoded().map_or(0, SpanRead::duration_nanos),
        }
    }
}

/// What [`edit_request`] hands its caller, part by part, in the order of the request.
pub trait RequestEditor {
    /// A resource (an empty one where the request has none) and its schema URL.
    fn resource(&mut self, resource: &mut Resource, schema_url: &mut String);
    /// An instrumentation scope, when the request has one, and its schema URL.
    fn scope(&mut self, scope: Option<&mut InstrumentationScope>, schema_url: &mut String);
    /// A span.
    fn span(&mut self, span: &mut SpanMut<'_, '_>);
}

/// Runs `editor` over decoded resource spans, in place.
pub fn edit_decoded(resource_spans: &mut [super::ResourceSpans], editor: &mut impl RequestEditor) {
    for resource_spans in resource_spans {
        let resource = resource_spans
            .resource
            .get_or_insert_with(Resource::default);
        editor.resource(resource, &mut resource_spans.schema_url);
        for scope_spans in &mut resource_spans.scope_spans {
            editor.scope(scope_spans.scope.as_mut(), &mut scope_spans.schema_url);
            for span in &mut scope_spans.spans {
                editor.span(&mut SpanMut::decoded(span));
            }
        }
    }
}

/// Runs `editor` over an encoded request (a body the wire scan accepted) and writes the
/// request it makes: resources and scopes (a few per request) decoded and written anew,
/// spans edited in place. `None` when a part does not decode, which the scan's agreement
/// with prost rules out; the caller then takes the decoded path, which counts the loss.
pub fn edit_request(body: &[u8], editor: &mut impl RequestEditor) -> Option<Vec<u8>> {
    // The edited request is larger than the one that came by the attributes the stages add
    // (a Daena span gains `daena.component` and mirrors, a sixth of its size or so).
    let room = |len: usize| len + len / 4;
    let mut out = Vec::with_capacity(room(body.len()));
    let (mut resource_buf, mut scope_buf) = (Vec::new(), Vec::new());
    let mut attributes = Vec::new();
    let mut rest = body;
    while let Some((number, field, _)) = next_field(&mut rest) {
        let (1, Field::Bytes(resource_spans)) = (number, field) else {
            continue;
        };
        resource_buf.reserve(room(resource_spans.len()));
        let mut resource = Resource::default();
        let mut schema_url = String::new();
        let mut scopes = Vec::new();
        let mut fields = resource_spans;
        while let Some((number, field, _)) = next_field(&mut fields) {
            match (number, field) {
                (1, Field::Bytes(bytes)) => resource.merge(bytes).ok()?,
                (2, Field::Bytes(scope_spans)) => scopes.push(scope_spans),
                (3, Field::Bytes(url)) => text(url).clone_into(&mut schema_url),
                _ => {}
            }
        }
        editor.resource(&mut resource, &mut schema_url);
        resource_buf.clear();
        message::encode(1, &resource, &mut resource_buf);
        for scope_spans in scopes {
            let mut scope: Option<InstrumentationScope> = None;
            let mut scope_url = String::new();
            let mut fields = scope_spans;
            while let Some((number, field, _)) = next_field(&mut fields) {
                match (number, field) {
                    (1, Field::Bytes(bytes)) => scope.get_or_insert_default().merge(bytes).ok()?,
                    (3, Field::Bytes(url)) => text(url).clone_into(&mut scope_url),
                    _ => {}
                }
            }
            editor.scope(scope.as_mut(), &mut scope_url);
            scope_buf.clear();
            scope_buf.reserve(room(scope_spans.len()));
            if let Some(scope) = &scope {
                message::encode(1, scope, &mut scope_buf);
            }
            let mut fields = scope_spans;
            while let Some((number, field, _)) = next_field(&mut fields) {
                if let (2, Field::Bytes(bytes)) = (number, field) {
                    let mut span = SpanMut::in_place(bytes, &mut attributes);
                    editor.span(&mut span);
                    span.write(&mut scope_buf);
                }
            }
            if !scope_url.is_empty() {
                write_message(&mut scope_buf, 3, scope_url.as_bytes());
            }
            write_message(&mut resource_buf, 2, &scope_buf);
        }
        if !schema_url.is_empty() {
            write_message(&mut resource_buf, 3, schema_url.as_bytes());
        }
        write_message(&mut out, 1, &resource_buf);
    }
    Some(out)
}

//! The `redact` stage: secrets in resource, scope, span, event and link attributes (nested
//! arrays, kvlists and UTF-8 bytes included), in span, event and scope names, status
//! messages, `trace_state` and schema URLs become `[REDACTED]` before anything leaves the
//! agent (the console exporter included).

mod keys;
mod values;

use std::sync::Arc;

use self::keys::KeyRules;
use self::values::{Found, Kind, Scanner};
use super::key_cache::KeyCache;
use super::{SpanStage, flush_counts, work};
use crate::config::RedactConfig;
use crate::otlp::edit::{AttributesMut, SpanMut};
use crate::otlp::view::{SpanRead, ValueRef};
use crate::otlp::{InstrumentationScope, Resource, Value};
use crate::telemetry::Metrics;

/// What a redacted value (or the secret part of one) is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Kinds of redaction, the `kind` label of the metric, in [`Kind`] order.
const KINDS: [&str; 9] = [
    "key",
    "bearer_token",
    "api_key",
    "email",
    "basic_auth",
    "jwt",
    "url_credentials",
    "key_value",
    "too_deep",
];

/// Arrays and kvlists are looked into this many levels deep; a deeper value is replaced
/// whole, as it cannot be checked (the decoder bounds nesting, this bounds the stage's stack).
const MAX_DEPTH: usize = 8;

/// What the stage decided about one attribute key.
#[derive(Clone, Copy)]
struct KeyClass {
    /// Names a secret: the value is replaced whole.
    secret: bool,
    /// Holds LLM prompt or response text: e-mail addresses are masked too.
    llm_text: bool,
    /// The key itself holds a secret (a token used as a key): it is masked.
    holds_secret: bool,
}

/// Masks attribute values whose key names a secret, and secrets found inside text.
pub struct Redactor {
    rules: KeyRules,
    scanner: Scanner,
    emails_in_llm_text: bool,
    keys: KeyCache<KeyClass>,
    /// Secrets found in the text at hand; kept to reuse its allocation.
    found: Vec<Found>,
    metrics: Arc<Metrics>,
    /// Redactions of the current batch, by [`KINDS`] index.
    counts: [u64; KINDS.len()],
}

impl Redactor {
    /// Builds the stage from its config.
    pub fn new(config: &RedactConfig, metrics: Arc<Metrics>) -> Self {
        // Every kind shows at 0 from the start, so an alert on its rate sees 0.
        for kind in KINDS {
            metrics.redacted(kind, 0);
        }
        Self {
            rules: KeyRules::new(&config.keys, &config.allow_keys),
            scanner: Scanner::new(
                config.bearer_tokens,
                config.api_keys,
                config.jwts,
                config.credentials,
                &config.patterns,
            ),
            emails_in_llm_text: config.emails_in_llm_text,
            keys: KeyCache::new(),
            found: Vec::new(),
            metrics,
            counts: [0; KINDS.len()],
        }
    }

    fn redact(&mut self, attributes: &mut (impl AttributesMut + ?Sized)) {
        self.attributes(attributes, 0);
    }

    fn attributes(&mut self, attributes: &mut (impl AttributesMut + ?Sized), depth: usize) {
        for i in 0..attributes.count() {
            let (rules, scanner) = (&self.rules, &self.scanner);
            let class = self.keys.get(attributes.key(i), |key| {
                let mut found = Vec::new();
                scanner.find(key, false, rules, &mut found);
                let (secret, llm_text) = rules.classify(key);
                KeyClass {
                    secret,
                    llm_text,
                    holds_secret: !found.is_empty(),
                }
            });
            if class.holds_secret
                && let Ok(key) = std::str::from_utf8(attributes.key(i))
                && let Some(masked) = self.mask(key, false)
            {
                attributes.set_key(i, &masked);
            }
            let emails = self.emails_in_llm_text && class.llm_text;
            let masked = match attributes.value(i) {
                ValueRef::Empty => continue,
                // Replaced once: a value already `[REDACTED]` is not counted again.
                ValueRef::Str(text) if class.secret && text == REDACTED => None,
                _ if class.secret => {
                    self.counts[Kind::Key as usize] += 1;
                    Some(Value::StringValue(REDACTED.to_owned()))
                }
                ValueRef::Str(text) => self.mask(text, emails).map(Value::StringValue),
                // Bytes that are UTF-8 text are scanned as text; other bytes hold no text.
                ValueRef::Bytes(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| self.mask(text, emails))
                    .map(|masked| Value::BytesValue(masked.into_bytes())),
                ValueRef::Other => {
                    attributes
                        .value_owned(i)
                        .and_then(|v| v.value)
                        .and_then(|mut value| {
                            let before = self.redactions();
                            self.value(&mut value, class.llm_text, depth);
                            (self.redactions() != before).then_some(value)
                        })
                }
                // Numbers and booleans hold no text.
                _ => None,
            };
            if let Some(masked) = masked {
                attributes.set_value(i, masked);
            }
        }
    }

    /// Redactions counted so far in this batch: a value changes exactly when it grows.
    fn redactions(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Replaces a value whole (once: a value already `[REDACTED]` is not counted again).
    fn replace(&mut self, value: &mut Value, kind: Kind) {
        if !matches!(value, Value::StringValue(s) if s == REDACTED) {
            *value = Value::StringValue(REDACTED.to_owned());
            self.counts[kind as usize] += 1;
        }
    }

    /// Masks the secrets in a nested value (an array's or a key-value list's member).
    fn value(&mut self, value: &mut Value, llm_text: bool, depth: usize) {
        let emails = self.emails_in_llm_text && llm_text;
        match value {
            Value::StringValue(text) => self.mask_in_place(text, emails),
            Value::BytesValue(bytes) => {
                if let Ok(text) = std::str::from_utf8(bytes)
                    && let Some(masked) = self.mask(text, emails)
                {
                    *bytes = masked.into_bytes();
                }
            }
            Value::ArrayValue(_) | Value::KvlistValue(_) if depth >= MAX_DEPTH => {
                self.replace(value, Kind::TooDeep);
            }
            Value::ArrayValue(array) => {
                for element in &mut array.values {
                    if let Some(element) = element.value.as_mut() {
                        self.value(element, llm_text, depth + 1);
                    }
                }
            }
            Value::KvlistValue(list) => self.attributes(&mut list.values, depth + 1),
            // Numbers, booleans and string-table indexes hold no text.
            _ => {}
        }
    }

    fn mask_in_place(&mut self, text: &mut String, emails: bool) {
        if let Some(masked) = self.mask(text, emails) {
            *text = masked;
        }
    }

    /// `text` with its secrets masked, or `None` when it has none.
    fn mask(&mut self, text: &str, emails: bool) -> Option<String> {
        work(1);
        self.found.clear();
        self.scanner
            .find(text, emails, &self.rules, &mut self.found);
        if self.found.is_empty() {
            return None;
        }
        Some(self.masked(text))
    }

    /// `text` with the secrets found in it masked. Out of line: most texts hold none, and
    /// [`Self::mask`] stays small, cheap to call for each of them.
    #[inline(never)]
    fn masked(&mut self, text: &str) -> String {
        // By start, then the longest first, then the lowest kind: overlaps count once.
        self.found
            .sort_unstable_by_key(|&(start, end, kind)| (start, std::cmp::Reverse(end), kind));
        let mut masked = String::with_capacity(text.len());
        let mut at = 0;
        for &(start, end, kind) in &self.found {
            if start < at {
                continue; // inside a secret already masked
            }
            masked.push_str(&text[at..start]);
            masked.push_str(REDACTED);
            at = end;
            self.counts[kind as usize] += 1;
        }
        masked.push_str(&text[at..]);
        masked
    }
}

impl SpanStage for Redactor {
    fn name(&self) -> &'static str {
        "redact"
    }

    fn resource(&mut self, resource: &mut Resource) {
        self.redact(&mut resource.attributes);
    }

    fn scope(&mut self, scope: &mut InstrumentationScope) {
        self.mask_in_place(&mut scope.name, false);
        self.redact(&mut scope.attributes);
    }

    fn schema_url(&mut self, url: &mut String) {
        self.mask_in_place(url, false);
    }

    fn span(&mut self, span: &mut SpanMut<'_, '_>) {
        if let Some(masked) = self.mask(span.name(), false) {
            span.span().name = masked;
        }
        if let Some(masked) = self.mask(span.trace_state(), false) {
            span.span().trace_state = masked;
        }
        if let Some(masked) = self.mask(span.status_message(), false) {
            span.set_status_message(masked);
        }
        self.redact(span);
        if span.event_count() > 0 {
            for event in span.events_mut() {
                self.mask_in_place(&mut event.name, false);
                self.redact(&mut event.attributes);
            }
        }
        if span.link_count() > 0 {
            for link in span.links_mut() {
                self.mask_in_place(&mut link.trace_state, false);
                self.redact(&mut link.attributes);
            }
        }
    }

    fn finish_batch(&mut self) {
        let metrics = &self.metrics;
        flush_counts(&mut self.counts, KINDS, |kind, n| metrics.redacted(kind, n));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::SpanBatch;
    use crate::otlp::{AnyValue, KeyValue, ResourceSpans, ScopeSpans, Span, key_value};
    use crate::processor::{Processor, SpanPass};

    fn redactor() -> Redactor {
        Redactor::new(&RedactConfig::default(), Arc::new(Metrics::default()))
    }

    #[test]
    fn a_secret_key_with_a_number_becomes_the_redacted_string() {
        let mut attributes = vec![key_value("password", Value::IntValue(1234))];
        redactor().redact(&mut attributes);
        assert_eq!(
            attributes[0].value,
            Some(AnyValue {
                value: Some(Value::StringValue(REDACTED.into()))
            })
        );
    }

    /// Where a table row puts its input.
    #[derive(Debug, Clone, Copy)]
    enum At {
        /// The value of this attribute key, on the resource, scope, span, event, link.
        Resource(&'static str),
        Scope(&'static str),
        Span(&'static str),
        Event(&'static str),
        Link(&'static str),
        /// The second string of an array value of this span attribute.
        Array(&'static str),
        /// A kvlist value of the span attribute `payload`, at this inner key.
        Kvlist(&'static str),
        /// A bytes value of this span attribute.
        Bytes(&'static str),
        /// The key of a span attribute (the input is the key).
        AttributeKey,
        ScopeName,
        SpanName,
        EventName,
        StatusMessage,
        TraceState,
        SchemaUrl,
    }

    /// Runs the default stage over a span holding `input` at `at`; returns what is there after.
    fn placed(at: At, input: &str) -> String {
        let attribute = |key: &str| vec![key_value(key, string(input))];
        let mut scope = crate::otlp::InstrumentationScope::default();
        let mut span = Span {
            events: vec![crate::otlp::Event::default()],
            links: vec![crate::otlp::Link::default()],
            ..Default::default()
        };
        let mut resource = Resource::default();
        let mut schema_url = String::new();
        match at {
            At::Resource(key) => resource.attributes = attribute(key),
            At::Scope(key) => scope.attributes = attribute(key),
            At::Span(key) => span.attributes = attribute(key),
            At::Event(key) => span.events[0].attributes = attribute(key),
            At::Link(key) => span.links[0].attributes = attribute(key),
            At::Array(key) => {
                let values = vec![
                    AnyValue {
                        value: Some(string("ok")),
                    },
                    AnyValue {
                        value: Some(string(input)),
                    },
                ];
                span.attributes = vec![key_value(
                    key,
                    Value::ArrayValue(crate::otlp::ArrayValue { values }),
                )];
            }
            At::Kvlist(key) => {
                let values = vec![key_value(key, string(input))];
                span.attributes = vec![key_value(
                    "payload",
                    Value::KvlistValue(crate::otlp::KeyValueList { values }),
                )];
            }
            At::Bytes(key) => {
                span.attributes = vec![key_value(key, Value::BytesValue(input.into()))]
            }
            At::AttributeKey => span.attributes = vec![key_value(input, string("v"))],
            At::ScopeName => scope.name = input.into(),
            At::SpanName => span.name = input.into(),
            At::EventName => span.events[0].name = input.into(),
            At::StatusMessage => {
                span.status = Some(crate::otlp::Status {
                    message: input.into(),
                    ..Default::default()
                });
            }
            At::TraceState => span.trace_state = input.into(),
            At::SchemaUrl => schema_url = input.into(),
        }
        let mut batch = SpanBatch::new(vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope),
                spans: vec![span],
                schema_url: schema_url.clone(),
            }],
            schema_url,
        }]);
        SpanPass::new(vec![Box::new(redactor())]).process(&mut batch);
        let request = batch.into_request();
        let rs = &request.resource_spans[0];
        let ss = &rs.scope_spans[0];
        let (scope, span) = (ss.scope.clone().unwrap_or_default(), &ss.spans[0]);
        let first = |attributes: &[KeyValue]| match attributes
            .first()
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
        {
            Some(Value::StringValue(s)) => s,
            Some(Value::BytesValue(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(Value::ArrayValue(a)) => match a.values.get(1).and_then(|v| v.value.clone()) {
                Some(Value::StringValue(s)) => s,
                other => format!("{other:?}"),
            },
            Some(Value::KvlistValue(l)) => match l
                .values
                .first()
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
            {
                Some(Value::StringValue(s)) => s,
                other => format!("{other:?}"),
            },
            other => format!("{other:?}"),
        };
        match at {
            At::Resource(_) => first(&rs.resource.clone().unwrap_or_default().attributes),
            At::Scope(_) => first(&scope.attributes),
            At::Span(_) | At::Array(_) | At::Kvlist(_) | At::Bytes(_) => first(&span.attributes),
            At::Event(_) => first(&span.events[0].attributes),
            At::Link(_) => first(&span.links[0].attributes),
            At::AttributeKey => span.attributes[0].key.clone(),
            At::ScopeName => scope.name,
            At::SpanName => span.name.clone(),
            At::EventName => span.events[0].name.clone(),
            At::StatusMessage => span.status.clone().unwrap_or_default().message,
            At::TraceState => span.trace_state.clone(),
            At::SchemaUrl => format!("{} {}", rs.schema_url, ss.schema_url),
        }
    }

    /// Every shape of issue #15 and the README's table: where it is, the input, what comes out.
    /// `R` is a redacted value; a row whose output equals its input must stay readable.
    #[test]
    fn every_secret_shape_is_masked_and_neutral_text_stays() {
        const R: &str = REDACTED;
        let ghp = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let rows: Vec<(At, &str, String)> = vec![
            // Keys naming a secret: camelCase, plural, separators, credential words.
            (At::Span("userPassword"), "hunter2", R.into()),
            (At::Span("clientSecret"), "hunter2", R.into()),
            (At::Span("accessToken"), "hunter2", R.into()),
            (At::Span("privateKey"), "hunter2", R.into()),
            (At::Span("passwords"), "hunter2", R.into()),
            (At::Span("tokens"), "hunter2", R.into()),
            (At::Span("auth"), "hunter2", R.into()),
            (At::Span("credentials"), "hunter2", R.into()),
            (At::Span("private_key"), "hunter2", R.into()),
            (At::Span("passphrase"), "hunter2", R.into()),
            (At::Span("pwd"), "hunter2", R.into()),
            (At::Span("jwt"), "hunter2", R.into()),
            (At::Span("bearer"), "hunter2", R.into()),
            (At::Span("db.connection_string"), "hunter2", R.into()),
            (At::Span("authorization"), "hunter2", R.into()),
            (
                At::Span("http.request.header.authorization"),
                "hunter2",
                R.into(),
            ),
            (At::Span("Set-Cookie"), "hunter2", R.into()),
            (At::Span("x-auth-token"), "hunter2", R.into()),
            (At::Span("OPENAI_APIKEY"), "hunter2", R.into()),
            (At::Span("llm.api-key"), "hunter2", R.into()),
            (At::Span("llm.token"), "hunter2", R.into()),
            // ...with a trailing space, a zero-width character, homoglyphs.
            (At::Span("password "), "hunter2", R.into()),
            (At::Span("pass\u{200B}word"), "hunter2", R.into()),
            (At::Span("\u{FEFF}api_key\u{2060}"), "hunter2", R.into()),
            (At::Span("p\u{0430}ssword"), "hunter2", R.into()),
            (At::Span("t\u{03BF}ken"), "hunter2", R.into()),
            (At::Span("\u{FF50}\u{FF57}\u{FF44}"), "hunter2", R.into()),
            // Keys that stay readable: counts, near misses, Daena's keys.
            (At::Span("gen_ai.usage.input_tokens"), "42", "42".into()),
            (At::Span("gen_ai.usage.output_tokens"), "42", "42".into()),
            (At::Span("gen_ai.request.max_tokens"), "42", "42".into()),
            (At::Span("llm.tokens"), "42", "42".into()),
            (At::Span("daena.llm.tokens_in"), "42", "42".into()),
            (At::Span("prompt_tokens"), "42", "42".into()),
            (At::Span("max_tokens"), "42", "42".into()),
            (At::Span("token_count"), "42", "42".into()),
            (At::Span("apikeys_count"), "3", "3".into()),
            (At::Span("cookies.enabled"), "true", "true".into()),
            (At::Span("token_type"), "Bearer", "Bearer".into()),
            (At::Span("tokenizer"), "cl100k_base", "cl100k_base".into()),
            (At::Span("author"), "Ada", "Ada".into()),
            (At::Span("authority"), "api.daena.ai", "api.daena.ai".into()),
            (At::Span("oauth_provider"), "google", "google".into()),
            (At::Span("OAuthProvider"), "google", "google".into()),
            (At::Span("secretary"), "Ada", "Ada".into()),
            (At::Span("passage"), "It was night.", "It was night.".into()),
            (At::Span("keyboard"), "qwerty", "qwerty".into()),
            (At::Span("monkey"), "bonobo", "bonobo".into()),
            (At::Span("key_id"), "k-2026-01", "k-2026-01".into()),
            (
                At::Span("cas.key"),
                "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ),
            (
                At::Span("request.id"),
                "550e8400-e29b-41d4-a716-446655440000",
                "550e8400-e29b-41d4-a716-446655440000".into(),
            ),
            (
                At::Span("trace.parent"),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            ),
            (
                At::Span("http.url"),
                "https://api.daena.ai/v1/chat?model=gpt-4&stream=true",
                "https://api.daena.ai/v1/chat?model=gpt-4&stream=true".into(),
            ),
            (
                At::Span("note"),
                "the token expired, retry with a new token",
                "the token expired, retry with a new token".into(),
            ),
            (
                At::Span("note"),
                "basic information: token bucket empty",
                "basic information: token bucket empty".into(),
            ),
            (
                At::Span("note"),
                "the bearer of news, task-sk-short",
                "the bearer of news, task-sk-short".into(),
            ),
            (At::Span("note"), "Bearer short", "Bearer short".into()),
            (
                At::Span("note"),
                "pk_live_0123456789abcdefghij",
                "pk_live_0123456789abcdefghij".into(),
            ),
            (
                At::Span("exception.message"),
                "KeyError: 'token'",
                "KeyError: 'token'".into(),
            ),
            (At::SpanName, "auth:login", "auth:login".into()),
            (
                At::Span("log"),
                "password: hunter2",
                format!("password: {R}"),
            ),
            (
                At::Span("llm.prompt"),
                "not-an-email@ and user@localhost and @handle",
                "not-an-email@ and user@localhost and @handle".into(),
            ),
            (
                At::Span("user.email"),
                "bob@daena.ai",
                "bob@daena.ai".into(),
            ),
            // The keys of Daena's tracing guide.
            (
                At::Span("council.department"),
                "research",
                "research".into(),
            ),
            (At::Span("council.phase"), "debate", "debate".into()),
            (
                At::Span("council.round_id"),
                "round-0001",
                "round-0001".into(),
            ),
            (
                At::Span("message_bus.operation"),
                "publish",
                "publish".into(),
            ),
            (
                At::Span("message_bus.topic"),
                "council.scout",
                "council.scout".into(),
            ),
            (At::Span("message_bus.message_id"), "m-42", "m-42".into()),
            (At::Span("nbmf.operation"), "read", "read".into()),
            (At::Span("nbmf.item_id"), "item-7", "item-7".into()),
            (At::Span("nbmf.class"), "decision", "decision".into()),
            (At::Span("nbmf.tier"), "l2", "l2".into()),
            (At::Span("llm.model"), "gpt-4o", "gpt-4o".into()),
            (At::Span("llm.cas_hit"), "true", "true".into()),
            (At::Span("llm.near_dup"), "false", "false".into()),
            (At::Span("llm.cost_usd"), "0.02", "0.02".into()),
            (At::Span("user_id"), "user123", "user123".into()),
            (At::Event("items_processed"), "100", "100".into()),
            (At::Span("key"), "value", "value".into()),
            // Credentials after Bearer, Basic, Token, with any separator.
            (
                At::Span("http.header"),
                "Bearer eyJhbGciOi.J9.abc",
                format!("Bearer {R}"),
            ),
            (
                At::Span("note"),
                "sent with bearer abcdefgh1234 today",
                format!("sent with bearer {R} today"),
            ),
            (
                At::Span("note"),
                "Bearer\tabcdefgh12",
                format!("Bearer\t{R}"),
            ),
            (At::Span("note"), "Bearer:abcdefgh12", format!("Bearer:{R}")),
            (
                At::Span("note"),
                "Bearer%20abcdefgh12",
                format!("Bearer%20{R}"),
            ),
            (At::Span("note"), "BEARER=abcdefgh12", format!("BEARER={R}")),
            (
                At::Span("note"),
                "Basic dXNlcjpwYXNzd29yZA==",
                format!("Basic {R}"),
            ),
            (At::Span("note"), "Token a1b2c3d4e5f6", format!("Token {R}")),
            (
                At::Span("note"),
                "Authorization=Basic dXNlcjpwYXNz",
                format!("Authorization=Basic {R}"),
            ),
            (
                At::Span("note"),
                "curl -H 'Authorization: Bearer abcdefgh12' https://x",
                format!("curl -H 'Authorization: Bearer {R}' https://x"),
            ),
            // Keys with a known prefix, in any case.
            (
                At::Span("llm.request"),
                "key sk-proj-ABCDEFGHIJKLMNOP1234 used",
                format!("key {R} used"),
            ),
            (At::Span("note"), "SK-ABCDEFGHIJKLMNOP1234", R.into()),
            (At::Span("note"), "sk-ant-api03-abcdefghijklmnop", R.into()),
            (
                At::Span("note"),
                "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                format!("stripe {R}"),
            ),
            (At::Span("note"), "rk_test_4eC39HqLyjWDarjt", R.into()),
            (At::Span("note"), ghp, R.into()),
            (
                At::Span("note"),
                "github_pat_11ABCDEFG0123456789_abcdefghij",
                R.into(),
            ),
            (
                At::Span("note"),
                "aws AKIAIOSFODNN7EXAMPLE, ASIAIOSFODNN7EXAMPLE",
                format!("aws {R}, {R}"),
            ),
            (
                At::Span("note"),
                "AIzaSyA-1234567890abcdefghijklmnopqrstu",
                R.into(),
            ),
            (At::Span("note"), "xoxb-123456789012-abcdefghij", R.into()),
            (At::Span("note"), "xapp-1-A0123456789", R.into()),
            // JWTs, URL credentials, secret query parameters.
            (At::Span("note"), jwt, R.into()),
            (
                At::Span("db.url"),
                "postgres://app:hunter2@db:5432/x",
                format!("postgres://app:{R}@db:5432/x"),
            ),
            (
                At::Span("http.url"),
                "https://x.io/cb?code=1&password=hunter2&x=1",
                format!("https://x.io/cb?code=1&password={R}&x=1"),
            ),
            (
                At::Span("http.url"),
                "https://s3.x/o?X-Amz-Credential=AKID%2F2026&X-Amz-Signature=abc123",
                format!("https://s3.x/o?X-Amz-Credential={R}&X-Amz-Signature={R}"),
            ),
            (
                At::Span("http.url"),
                "https://x/?access_token=a1&apikey=b2&key=c3&sig=d4&pwd=e5",
                format!("https://x/?access_token={R}&apikey={R}&key={R}&sig={R}&pwd={R}"),
            ),
            (
                At::Span("log"),
                r#"{"user":"ana","password":"hunter2"}"#,
                format!(r#"{{"user":"ana","password":"{R}"}}"#),
            ),
            // Inside arrays, kvlists and bytes under neutral keys; a secret as a key.
            (
                At::Array("args"),
                "Bearer abcdefgh12",
                format!("Bearer {R}"),
            ),
            (At::Kvlist("password"), "hunter2", R.into()),
            (At::Kvlist("note"), "sk-ABCDEFGHIJKLMNOP1234", R.into()),
            (
                At::Bytes("body"),
                "Authorization: Bearer abcdefgh12",
                format!("Authorization: Bearer {R}"),
            ),
            (At::AttributeKey, "sk-ABCDEFGHIJKLMNOP1234", R.into()),
            (
                At::AttributeKey,
                "user.sk-ABCDEFGHIJKLMNOP1234",
                format!("user.{R}"),
            ),
            // Everywhere else a span carries text.
            (At::Resource("token"), "s3cr3t", R.into()),
            (At::Scope("token"), "s3cr3t", R.into()),
            (At::Event("token"), "s3cr3t", R.into()),
            (At::Link("token"), "s3cr3t", R.into()),
            (
                At::ScopeName,
                "client sk-proj-ABCDEFGHIJKLMNOP1234",
                format!("client {R}"),
            ),
            (
                At::SpanName,
                "GET /login?password=hunter2",
                format!("GET /login?password={R}"),
            ),
            (
                At::EventName,
                "retry with Bearer abcdefgh12",
                format!("retry with Bearer {R}"),
            ),
            (
                At::StatusMessage,
                "called with password=hunter2",
                format!("called with password={R}"),
            ),
            (
                At::TraceState,
                "daena=t61rcWkgMzE,auth=abc123",
                format!("daena=t61rcWkgMzE,auth={R}"),
            ),
            (
                At::SchemaUrl,
                "https://u:p4ss@schemas.x/1.0",
                format!("https://u:{R}@schemas.x/1.0 https://u:{R}@schemas.x/1.0"),
            ),
            // E-mail addresses in LLM text: IDN, arrays of prompts, system instructions.
            (
                At::Span("llm.prompt"),
                "mail ana.lopez+x@example.co.uk now",
                format!("mail {R} now"),
            ),
            (
                At::Span("gen_ai.output.messages"),
                "reply to bob@daena.ai.",
                format!("reply to {R}."),
            ),
            (
                At::Span("llm.prompt"),
                "write to jürgen@münchen.de",
                format!("write to {R}"),
            ),
            (
                At::Span("llm.prompt"),
                "пишите: иван@почта.рф",
                format!("пишите: {R}"),
            ),
            (
                At::Array("gen_ai.prompt"),
                "cc ana@daena.ai",
                format!("cc {R}"),
            ),
            (
                At::Span("gen_ai.system_instructions"),
                "escalate to ops@daena.ai",
                format!("escalate to {R}"),
            ),
            (
                At::Span("llm.response"),
                "Bearer abcdefghijk and sk-0123456789abcdefXYZ",
                format!("Bearer {R} and {R}"),
            ),
        ];
        let mut wrong = Vec::new();
        for (at, input, expected) in &rows {
            let output = placed(*at, input);
            if &output != expected {
                wrong.push(format!(
                    "{at:?} {input:?}: {output:?}, expected {expected:?}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn configured_prefixes_are_masked_allowed_keys_stay_and_bad_ones_are_refused() {
        let config = RedactConfig {
            patterns: vec!["dk_live_".into()],
            allow_keys: vec!["Session.Token ".into()],
            ..RedactConfig::default()
        };
        let mut attributes = vec![
            key_value("note", string("key DK_LIVE_abcdefgh12 and dk_live_short")),
            key_value("session.token", string("kept")),
            key_value("session.tokens", string("hunter2")),
        ];
        Redactor::new(&config, Arc::new(Metrics::default())).redact(&mut attributes);
        let values: Vec<_> = attributes
            .iter()
            .map(|kv| kv.value.clone().and_then(|v| v.value))
            .collect();
        assert_eq!(
            values,
            [
                Some(string("key [REDACTED] and dk_live_short")),
                Some(string("kept")),
                Some(string(REDACTED)),
            ]
        );
        let mut config = crate::config::Config::default();
        config.processors.redact.patterns = vec!["dk_live_".into(), "x".into(), "a b".into()];
        config.processors.redact.keys = vec!["token".into(), "@@".into()];
        let paths: Vec<String> = config.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "processors.redact.keys[1]",
                "processors.redact.patterns[1]",
                "processors.redact.patterns[2]",
            ]
        );
    }

    #[test]
    fn the_work_grows_linearly_with_hostile_repetitions() {
        let inputs = [
            ("note", "bearer="),
            ("note", "Token%20"),
            ("note", "password=password="),
            ("note", "eyJ0eXAiOiJKV1Qi."),
            ("note", "a://b:c@"),
            ("note", "ghp_sk-"),
            ("note", "x:x="),
            ("llm.prompt", "\u{e9}@\u{e9}."),
        ];
        for (key, unit) in inputs {
            let work = |n: usize| {
                let mut attributes = vec![key_value(key, string(&unit.repeat(n)))];
                let mut redactor = redactor();
                super::super::work_of(|| redactor.redact(&mut attributes))
            };
            let (small, large) = (work(2_000), work(8_000));
            // Linear work is 4 times as much for 4 times the input; quadratic, 16.
            assert!(
                small > 0 && large * 10 <= small * 45,
                "{unit}: {small} then {large}"
            );
        }
    }

    #[test]
    fn a_value_nested_too_deep_is_replaced_whole() {
        let mut value = string("Bearer abcdefgh12");
        for _ in 0..=MAX_DEPTH {
            value = Value::ArrayValue(crate::otlp::ArrayValue {
                values: vec![AnyValue { value: Some(value) }],
            });
        }
        let mut attributes = vec![key_value("note", value)];
        redactor().redact(&mut attributes);
        let mut at = attributes[0].value.as_ref().and_then(|v| v.value.as_ref());
        while let Some(Value::ArrayValue(array)) = at {
            at = array.values[0].value.as_ref();
        }
        assert_eq!(at, Some(&string(REDACTED)));
    }

    #[test]
    fn resource_event_and_link_attributes_are_redacted_and_counted() {
        let secret = || vec![key_value("token", Value::StringValue("s3cr3t".into()))];
        let span = Span {
            attributes: secret(),
            events: vec![crate::otlp::Event {
                attributes: secret(),
                ..Default::default()
            }],
            links: vec![crate::otlp::Link {
                attributes: secret(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut batch = SpanBatch::new(vec![ResourceSpans {
            resource: Some(crate::otlp::Resource {
                attributes: secret(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }]);
        let metrics = Arc::new(Metrics::default());
        SpanPass::new(vec![Box::new(Redactor::new(
            &RedactConfig::default(),
            Arc::clone(&metrics),
        ))])
        .process(&mut batch);
        let request = batch.into_request();
        assert!(!format!("{request:?}").contains("s3cr3t"));
        assert!(
            metrics
                .render()
                .contains(r#"daena_agent_redactions_total{kind="key"} 4"#)
        );
    }

    #[test]
    fn turned_off_patterns_leave_values_alone() {
        let config = RedactConfig {
            keys: Vec::new(),
            bearer_tokens: false,
            api_keys: false,
            jwts: false,
            credentials: false,
            emails_in_llm_text: false,
            ..RedactConfig::default()
        };
        let mut attributes = vec![
            key_value("password", Value::StringValue("p".into())),
            key_value(
                "llm.prompt",
                Value::StringValue("Bearer abcdefghij sk-0123456789abcdefXYZ a@b.io".into()),
            ),
        ];
        let before = attributes.clone();
        Redactor::new(&config, Arc::new(Metrics::default())).redact(&mut attributes);
        assert_eq!(attributes, before);
    }

    proptest! {
        #[test]
        fn redacting_twice_is_redacting_once(text in "(Bearer |sk-|@|[a-z0-9.]{1,20}| ){0,12}", key in "(llm\\.prompt|token|note)") {
            let mut redactor = redactor();
            let mut attributes = vec![key_value(key, Value::StringValue(text))];
            redactor.redact(&mut attributes);
            let once = attributes.clone();
            redactor.redact(&mut attributes);
            prop_assert_eq!(attributes, once);
        }
    }

    /// Redactions counted so far, by [`KINDS`] index, read from the metrics as scraped.
    fn redactions(metrics: &Metrics) -> [u64; KINDS.len()] {
        let text = metrics.render();
        KINDS.map(|kind| {
            let prefix = format!("daena_agent_redactions_total{{kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .map_or(0, |n| n.trim().parse().expect("a count"))
        })
    }

    /// A batch of one resource and one span with one event and one link, holding
    /// `attributes[0]` on the resource, `[1]` on the span, `[2]` on the event, `[3]` on the link.
    fn batch_with(attributes: [Vec<KeyValue>; 4]) -> SpanBatch {
        let [resource, span, event, link] = attributes;
        SpanBatch::new(vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: "council.round".into(),
                    attributes: span,
                    events: vec![crate::otlp::Event {
                        name: "llm.exchange".into(),
                        attributes: event,
                        ..Default::default()
                    }],
                    links: vec![crate::otlp::Link {
                        attributes: link,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }])
    }

    /// The four attribute lists of a batch made by [`batch_with`].
    fn attributes_of(request: &crate::otlp::ExportTraceServiceRequest) -> [Vec<KeyValue>; 4] {
        let rs = &request.resource_spans[0];
        let span = &rs.scope_spans[0].spans[0];
        [
            rs.resource
                .as_ref()
                .map(|r| r.attributes.clone())
                .unwrap_or_default(),
            span.attributes.clone(),
            span.events[0].attributes.clone(),
            span.links[0].attributes.clone(),
        ]
    }

    /// Runs the stage as the pipeline does; returns the request and the counts it added.
    fn run_stage(
        attributes: [Vec<KeyValue>; 4],
    ) -> (crate::otlp::ExportTraceServiceRequest, [u64; KINDS.len()]) {
        let metrics = Arc::new(Metrics::default());
        let mut batch = batch_with(attributes);
        SpanPass::new(vec![Box::new(Redactor::new(
            &RedactConfig::default(),
            Arc::clone(&metrics),
        ))])
        .process(&mut batch);
        (batch.into_request(), redactions(&metrics))
    }

    fn string(s: &str) -> Value {
        Value::StringValue(s.into())
    }

    #[test]
    fn known_secrets_are_gone_everywhere_their_neighbours_stay_and_each_is_counted() {
        // (where: resource, span, event, link; key; value; the secret; the value after)
        let secrets: [(usize, &str, Value, &str, Value); 14] = [
            (
                0,
                "http.request.header.authorization",
                string("Basic dXNlcjpwYXNzd29yZA=="),
                "dXNlcjpwYXNzd29yZA",
                string(REDACTED),
            ),
            (
                1,
                "Set-Cookie",
                string("session=4f9Qx81zK; Path=/"),
                "4f9Qx81zK",
                string(REDACTED),
            ),
            (
                2,
                "DB_PASSWORD",
                string("Hunter2!Hunter2"),
                "Hunter2!",
                string(REDACTED),
            ),
            (
                3,
                "x-api-key",
                string("K3y0000abcdef"),
                "K3y0000abcdef",
                string(REDACTED),
            ),
            (
                1,
                "openai.ApiKey",
                string("K3y1111abcdef"),
                "K3y1111abcdef",
                string(REDACTED),
            ),
            (
                0,
                "client.secret",
                Value::IntValue(918_273_645),
                "918273645",
                string(REDACTED),
            ),
            (
                2,
                "auth.TOKEN",
                string("T0k3nT0k3n"),
                "T0k3nT0k3n",
                string(REDACTED),
            ),
            (
                1,
                "http.request.header.x_forwarded",
                string(
                    "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln' https://x",
                ),
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
                string("curl -H 'Authorization: Bearer [REDACTED]' https://x"),
            ),
            (
                3,
                "exception.message",
                string("OpenAI rejected sk-proj-AbCdEf0123456789xyz: invalid key"),
                "sk-proj-AbCdEf0123456789xyz",
                string("OpenAI rejected [REDACTED]: invalid key"),
            ),
            (
                0,
                "db.statement",
                string("UPDATE keys SET v='sk-live_9a8b7c6d5e4f3a2b1c0d'"),
                "sk-live_9a8b7c6d5e4f3a2b1c0d",
                string("UPDATE keys SET v='[REDACTED]'"),
            ),
            (
                2,
                "llm.prompt",
                string("Write to ana.lopez+x@example.co.uk, thanks"),
                "ana.lopez+x@example.co.uk",
                string("Write to [REDACTED], thanks"),
            ),
            (
                1,
                "gen_ai.completion",
                string(r#"[{"role":"assistant","content":"mail bob@daena.ai."}]"#),
                "bob@daena.ai",
                string(r#"[{"role":"assistant","content":"mail [REDACTED]."}]"#),
            ),
            (
                3,
                "llm.input_messages",
                string("from <carol_x@mail.example.org>"),
                "carol_x@mail.example.org",
                string("from <[REDACTED]>"),
            ),
            (
                0,
                "gen_ai.output.messages",
                string("token: Bearer Zm9vYmFyYmF6cXV4 for dave@daena.ai"),
                "Zm9vYmFyYmF6cXV4",
                string("token: Bearer [REDACTED] for [REDACTED]"),
            ),
        ];
        let neighbours: [(usize, &str, Value); 9] = [
            (1, "gen_ai.usage.input_tokens", Value::IntValue(1234)),
            (1, "gen_ai.usage.output_tokens", Value::IntValue(56)),
            (0, "tokenizer", string("cl100k_base")),
            (2, "secretary", string("Ada")),
            (3, "apikeys_count", Value::IntValue(3)),
            (1, "user.email", string("eve@daena.ai")),
            (3, "llm.prompt", string("the bearer of news, task-sk-short")),
            (0, "service.name", string("council")),
            (3, "note", string("Bearer short")),
        ];
        let mut places: [Vec<KeyValue>; 4] = Default::default();
        for (at, key, value, _, _) in &secrets {
            places[*at].push(key_value(*key, value.clone()));
        }
        for (at, key, value) in &neighbours {
            places[*at].push(key_value(*key, value.clone()));
        }
        let (request, counts) = run_stage(places);
        let after = attributes_of(&request);
        let all = format!("{request:?}");
        let value_of = |at: usize, key: &str| {
            after[at]
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        for (at, key, _, secret, expected) in &secrets {
            assert!(!all.contains(secret), "{key}: {secret} is still there");
            assert_eq!(value_of(*at, key).as_ref(), Some(expected), "{key}");
        }
        for (at, key, value) in &neighbours {
            assert_eq!(value_of(*at, key).as_ref(), Some(value), "{key} changed");
        }
        // 7 keys; 2 bearer tokens; 2 API keys; 4 e-mails.
        assert_eq!(counts, [7, 2, 2, 4, 0, 0, 0, 0, 0]);
    }

    /// Neutral text: no capital letter, no `@`, no `-`, so it neither forms a secret nor
    /// holds a generated one.
    const TEXT: &str = "[a-z0-9 ,!?]{0,16}";
    /// What may come right before a planted secret (never a letter or digit).
    const BEFORE: [&str; 5] = [" ", " (", " \"", ": ", " <"];
    /// What may come right after a secret: nothing that continues it.
    const AFTER_TOKEN: [&str; 5] = [" ", ", ", "; ", ") ", "\" "];
    const AFTER_KEY_OR_EMAIL: [&str; 6] = [" ", ", ", ". ", "; ", ") ", "> "];

    /// Text in one of three cases.
    fn cased(word: &str, how: u8) -> String {
        match how % 3 {
            0 => word.to_ascii_lowercase(),
            1 => word.to_ascii_uppercase(),
            _ => word[..1].to_ascii_uppercase() + &word[1..],
        }
    }

    /// A secret planted inside a string value.
    #[derive(Debug, Clone)]
    enum Inner {
        /// `Bearer` (any case), spaces, a token of at least 8 token characters.
        Bearer {
            word: String,
            spaces: usize,
            token: String,
        },
        /// `sk-` and at least 16 key characters, or another known prefix and its key.
        ApiKey(String),
        /// `eyJ…` header, payload and signature.
        Jwt(String),
        /// `https://u:{password}@h.io/x`: only the password goes.
        UrlPassword(String),
        /// `local@domain.tld`.
        Email(String),
    }

    impl Inner {
        fn planted(&self) -> String {
            match self {
                Inner::Bearer {
                    word,
                    spaces,
                    token,
                } => format!("{word}{}{token}", " ".repeat(*spaces)),
                Inner::ApiKey(key) | Inner::Jwt(key) => key.clone(),
                Inner::Email(address) => address.clone(),
                Inner::UrlPassword(password) => format!("https://u:{password}@h.io/x"),
            }
        }

        fn masked(&self) -> String {
            match self {
                Inner::Bearer { word, spaces, .. } => {
                    format!("{word}{}{REDACTED}", " ".repeat(*spaces))
                }
                Inner::ApiKey(_) | Inner::Jwt(_) | Inner::Email(_) => REDACTED.to_owned(),
                Inner::UrlPassword(_) => format!("https://u:{REDACTED}@h.io/x"),
            }
        }

        /// The text that must be gone.
        fn secret(&self) -> &str {
            match self {
                Inner::Bearer { token, .. } => token,
                Inner::ApiKey(s) | Inner::Jwt(s) | Inner::Email(s) | Inner::UrlPassword(s) => s,
            }
        }

        fn kind(&self) -> usize {
            match self {
                Inner::Bearer { .. } => 1,
                Inner::ApiKey(_) => 2,
                Inner::Email(_) => 3,
                Inner::Jwt(_) => 5,
                Inner::UrlPassword(_) => 6,
            }
        }

        fn after(&self, i: usize) -> &'static str {
            match self {
                Inner::Bearer { .. } => AFTER_TOKEN[i % AFTER_TOKEN.len()],
                Inner::ApiKey(_) | Inner::Jwt(_) | Inner::Email(_) | Inner::UrlPassword(_) => {
                    AFTER_KEY_OR_EMAIL[i % AFTER_KEY_OR_EMAIL.len()]
                }
            }
        }
    }

    fn inner(emails: bool) -> BoxedStrategy<Inner> {
        // Generated secrets start with a capital and a digit (bearer tokens), hold `sk-`
        // or an `@`: never part of the neutral text nor of `[REDACTED]`.
        let bearer = (
            prop::sample::select(vec!["Bearer", "bearer", "BEARER", "BeArEr"]),
            1usize..4,
            "[A-Z][0-9][A-Za-z0-9._~+/=-]{6,40}",
        )
            .prop_map(|(word, spaces, token)| Inner::Bearer {
                word: word.into(),
                spaces,
                token,
            });
        let api_key = "sk-[A-Za-z0-9_-]{16,40}".prop_map(Inner::ApiKey);
        let known_key = prop_oneof![
            (
                prop::sample::select(vec![
                    "SK-",
                    "sk-ant-",
                    "sk_live_",
                    "rk_test_",
                    "ghp_",
                    "GHO_",
                    "github_pat_",
                    "xoxb-",
                    "xapp-",
                ]),
                "[A-Z][0-9][A-Za-z0-9]{18,38}",
            )
                .prop_map(|(prefix, body)| Inner::ApiKey(format!("{prefix}{body}"))),
            "(AKIA|ASIA)[A-Z0-9]{16}".prop_map(Inner::ApiKey),
            "AIza[0-9][A-Za-z0-9_-]{34}".prop_map(Inner::ApiKey),
        ];
        let jwt = "eyJ[A-Za-z0-9_-]{10,30}\\.eyJ[A-Za-z0-9_-]{2,30}\\.[A-Za-z0-9_-]{0,30}"
            .prop_map(Inner::Jwt);
        if !emails {
            // An address in the password would be an e-mail address in LLM text.
            let url = "[A-Z][0-9][A-Za-z0-9!*]{4,12}".prop_map(Inner::UrlPassword);
            return prop_oneof![bearer, api_key, known_key, jwt, url].boxed();
        }
        let email = "[a-z0-9][a-z0-9._%+-]{0,15}@[a-z0-9]{1,10}(\\.[a-z0-9-]{1,8})?\\.[a-z]{2,6}"
            .prop_map(Inner::Email);
        prop_oneof![bearer, api_key, known_key, jwt, email].boxed()
    }

    /// Words around a secret word in a key.
    const OTHER_WORDS: [&str; 12] = [
        "http", "request", "header", "db", "x", "client", "openai", "access", "set", "proxy",
        "user", "llm",
    ];
    const SEPARATORS: [&str; 3] = [".", "_", "-"];

    fn join(words: &[String], separators: &[usize]) -> String {
        let mut key = String::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                key.push_str(SEPARATORS[separators[i % separators.len()]]);
            }
            key.push_str(word);
        }
        key
    }

    /// A key holding a default key word (its parts, for `api_key`) as whole words among
    /// other words, in any case, with any separators.
    fn secret_key() -> impl Strategy<Value = String> {
        let words = || {
            prop::collection::vec(
                (prop::sample::select(OTHER_WORDS.to_vec()), any::<u8>()),
                0..3,
            )
        };
        (
            words(),
            prop::sample::select(RedactConfig::default().keys),
            any::<u8>(),
            words(),
            prop::collection::vec(0usize..3, 8),
        )
            .prop_map(|(before, word, how, after, separators)| {
                let mut words: Vec<String> = before.iter().map(|(w, h)| cased(w, *h)).collect();
                words.extend(word.split('_').map(|w| cased(w, how)));
                words.extend(after.iter().map(|(w, h)| cased(w, *h)));
                join(&words, &separators)
            })
    }

    /// A key of LLM prompt or response text: `llm` or `gen_ai` first, then one of the text
    /// words somewhere after.
    fn llm_text_key() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["llm", "LLM", "gen_ai", "GEN_AI", "Gen_AI"]),
            prop::option::of(prop::sample::select(vec![
                "chat", "openai", "v1", "request",
            ])),
            prop::sample::select(vec![
                "prompt",
                "response",
                "completion",
                "messages",
                "content",
                "input",
                "output",
            ]),
            any::<u8>(),
            prop::option::of(prop::sample::select(vec!["0", "text", "value"])),
            prop::collection::vec(0usize..3, 4),
        )
            .prop_map(|(first, middle, word, how, last, separators)| {
                let mut words = vec![first.to_owned()];
                words.extend(middle.map(str::to_owned));
                words.push(cased(word, how));
                words.extend(last.map(str::to_owned));
                join(&words, &separators)
            })
    }

    /// Keys that name no secret and hold no LLM text.
    const PLAIN_KEYS: [&str; 6] = [
        "note",
        "exception.message",
        "db.statement",
        "url.full",
        "council.phase",
        "http.request.header.x_forwarded_for",
    ];
    /// Near misses of the key words, and other neighbours, that must stay as they are.
    const NEUTRAL_KEYS: [&str; 10] = [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "tokenizer",
        "secretary",
        "apikeys_count",
        "passwords_rotated",
        "cookies.enabled",
        "user.email",
        "council.phase",
        "llm.model_name",
    ];

    #[derive(Debug, Clone)]
    enum Planted {
        /// A key naming a secret, with a value that must vanish.
        SecretKey { key: String, value: String },
        /// A string value of secrets between neutral text.
        Text {
            key: String,
            parts: Vec<(String, usize, Inner, usize)>,
            tail: String,
        },
        /// A neighbour that must come out as it went in.
        Neutral { key: String, value: Value },
    }

    impl Planted {
        fn attribute(&self) -> KeyValue {
            match self {
                Planted::SecretKey { key, value } => key_value(key.clone(), string(value)),
                Planted::Text { key, .. } => {
                    key_value(key.clone(), string(&self.text(Inner::planted)))
                }
                Planted::Neutral { key, value } => key_value(key.clone(), value.clone()),
            }
        }

        fn expected(&self) -> KeyValue {
            match self {
                Planted::SecretKey { key, .. } => key_value(key.clone(), string(REDACTED)),
                Planted::Text { key, .. } => {
                    key_value(key.clone(), string(&self.text(Inner::masked)))
                }
                Planted::Neutral { .. } => self.attribute(),
            }
        }

        /// A text value, each secret written by `secret` (as planted, or as masked).
        fn text(&self, secret: fn(&Inner) -> String) -> String {
            let mut text = String::new();
            if let Planted::Text { parts, tail, .. } = self {
                for (before_text, before, inner, after) in parts {
                    text.push_str(before_text);
                    text.push_str(BEFORE[*before]);
                    text.push_str(&secret(inner));
                    text.push_str(inner.after(*after));
                }
                text.push_str(tail);
            }
            text
        }
    }

    fn parts(emails: bool) -> impl Strategy<Value = (Vec<(String, usize, Inner, usize)>, String)> {
        (
            prop::collection::vec((TEXT, 0..BEFORE.len(), inner(emails), 0usize..6), 0..4),
            TEXT,
        )
    }

    fn planted() -> impl Strategy<Value = Planted> {
        prop_oneof![
            (secret_key(), "[A-Z][0-9][A-Za-z0-9!#%&*]{6,20}")
                .prop_map(|(key, value)| Planted::SecretKey { key, value }),
            (prop::sample::select(PLAIN_KEYS.to_vec()), parts(false)).prop_map(
                |(key, (parts, tail))| Planted::Text {
                    key: key.into(),
                    parts,
                    tail
                }
            ),
            (llm_text_key(), parts(true)).prop_map(|(key, (parts, tail))| Planted::Text {
                key,
                parts,
                tail
            }),
            (
                prop::sample::select(NEUTRAL_KEYS.to_vec()),
                prop_oneof![
                    any::<i64>().prop_map(Value::IntValue),
                    TEXT.prop_map(Value::StringValue)
                ],
            )
                .prop_map(|(key, value)| Planted::Neutral {
                    key: key.into(),
                    value
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Secrets of every shape the defaults promise to catch, planted among neutral
        /// text, near-miss keys and other attributes on the resource, span, event and link:
        /// each one's text is gone from the whole span, everything around it is unchanged
        /// (the value is exactly the planted one with each secret masked), and each one is
        /// counted once under its kind.
        #[test]
        fn planted_secrets_vanish_their_neighbours_stay_and_each_is_counted(
            attributes in prop::collection::vec((0usize..4, planted()), 1..12),
        ) {
            let mut places: [Vec<KeyValue>; 4] = Default::default();
            let mut expected: [Vec<KeyValue>; 4] = Default::default();
            let mut counts = [0u64; KINDS.len()];
            let mut secrets = Vec::new();
            for (at, planted) in &attributes {
                places[*at].push(planted.attribute());
                expected[*at].push(planted.expected());
                match planted {
                    Planted::SecretKey { value, .. } => {
                        counts[0] += 1;
                        secrets.push(value.clone());
                    }
                    Planted::Text { parts, .. } => {
                        for (_, _, secret, _) in parts {
                            counts[secret.kind()] += 1;
                            secrets.push(secret.secret().to_owned());
                        }
                    }
                    Planted::Neutral { .. } => {}
                }
            }
            let (request, counted) = run_stage(places);
            let all = format!("{request:?}");
            for secret in &secrets {
                prop_assert!(!all.contains(secret.as_str()), "{} is still there", secret);
            }
            prop_assert_eq!(attributes_of(&request), expected);
            prop_assert_eq!(counted, counts);
        }
    }
}

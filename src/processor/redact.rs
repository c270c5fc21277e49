//! The `redact` stage: secrets in resource, span, event and link attributes become
//! `[REDACTED]` before anything leaves the agent (the console exporter included).

use std::sync::Arc;

use super::key_cache::KeyCache;
use super::{SpanStage, flush_counts, work};
use crate::config::RedactConfig;
use crate::otlp::{KeyValue, Resource, Span, Value};
use crate::telemetry::Metrics;

/// What a redacted value (or the secret part of one) is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Kinds of redaction, the `kind` label of the metric.
const KINDS: [&str; 4] = ["key", "bearer_token", "api_key", "email"];

/// Masks attribute values whose key names a secret, and secrets found inside values.
pub struct Redactor {
    /// Each key pattern as its lower-case words.
    key_patterns: Vec<Vec<String>>,
    bearer_tokens: bool,
    api_keys: bool,
    emails_in_llm_text: bool,
    /// Per key: (names a secret, holds LLM prompt/response text).
    keys: KeyCache<(bool, bool)>,
    /// Finds `sk-` fast in long values.
    api_key_prefix: memchr::memmem::Finder<'static>,
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
            key_patterns: config
                .keys
                .iter()
                .map(|k| words(k).map(str::to_ascii_lowercase).collect())
                .filter(|words: &Vec<String>| !words.is_empty())
                .collect(),
            bearer_tokens: config.bearer_tokens,
            api_keys: config.api_keys,
            emails_in_llm_text: config.emails_in_llm_text,
            keys: KeyCache::new(),
            api_key_prefix: memchr::memmem::Finder::new(b"sk-").into_owned(),
            metrics,
            counts: [0; KINDS.len()],
        }
    }

    fn redact(&mut self, attributes: &mut [KeyValue]) {
        for kv in attributes {
            let Some(value) = kv.value.as_mut().and_then(|v| v.value.as_mut()) else {
                continue;
            };
            let patterns = &self.key_patterns;
            let (secret, llm_text) = self.keys.get(&kv.key, |key| {
                (secret_key(patterns, key), llm_text_key(key))
            });
            if secret {
                if !matches!(value, Value::StringValue(s) if s == REDACTED) {
                    *value = Value::StringValue(REDACTED.to_owned());
                    self.counts[0] += 1;
                }
            } else if let Value::StringValue(text) = value {
                let emails = self.emails_in_llm_text && llm_text;
                if let Some(masked) = self.mask(text, emails) {
                    *text = masked;
                }
            }
        }
    }

    /// `text` with its secrets masked, or `None` when it has none.
    fn mask(&mut self, text: &str, emails: bool) -> Option<String> {
        work(text.len());
        let mut found: Vec<(usize, usize, usize)> = Vec::new();
        // Most values are shorter than the shortest secret, or lack the byte it needs.
        let bytes = text.as_bytes();
        if self.bearer_tokens && text.len() >= 14 && memchr::memchr(b' ', bytes).is_some() {
            found.extend(bearer_tokens(text).map(|(start, end)| (start, end, 1)));
        }
        if self.api_keys && text.len() >= 19 && self.api_key_prefix.find(bytes).is_some() {
            found.extend(api_keys(text).map(|(start, end)| (start, end, 2)));
        }
        if emails && memchr::memchr(b'@', bytes).is_some() {
            found.extend(emails_in(text).map(|(start, end)| (start, end, 3)));
        }
        if found.is_empty() {
            return None;
        }
        found.sort_unstable();
        let mut masked = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in found {
            if start < at {
                continue; // inside a secret already masked
            }
            masked.push_str(&text[at..start]);
            masked.push_str(REDACTED);
            at = end;
            self.counts[kind] += 1;
        }
        masked.push_str(&text[at..]);
        Some(masked)
    }
}

impl SpanStage for Redactor {
    fn name(&self) -> &'static str {
        "redact"
    }

    fn resource(&mut self, resource: &mut Resource) {
        self.redact(&mut resource.attributes);
    }

    fn span(&mut self, span: &mut Span) {
        self.redact(&mut span.attributes);
        for event in &mut span.events {
            self.redact(&mut event.attributes);
        }
        for link in &mut span.links {
            self.redact(&mut link.attributes);
        }
    }

    fn finish_batch(&mut self) {
        let metrics = &self.metrics;
        flush_counts(&mut self.counts, KINDS, |kind, n| metrics.redacted(kind, n));
    }
}

/// Whether some pattern's words appear, in order and whole, among the key's words.
fn secret_key(patterns: &[Vec<String>], key: &str) -> bool {
    let key_words: Vec<&str> = words(key).collect();
    patterns.iter().any(|pattern| {
        key_words.windows(pattern.len()).any(|window| {
            window
                .iter()
                .zip(pattern)
                .all(|(w, p)| w.eq_ignore_ascii_case(p))
        })
    })
}

/// The words of a key: split at `.`, `_` and `-`.
fn words(key: &str) -> impl Iterator<Item = &str> {
    // Splits at ASCII bytes, which are always character boundaries.
    let bytes = key.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        while start < bytes.len() {
            let end = bytes[start..]
                .iter()
                .position(|b| matches!(b, b'.' | b'_' | b'-'))
                .map_or(bytes.len(), |p| start + p);
            let word = &key[start..end];
            start = end + 1;
            if !word.is_empty() {
                return Some(word);
            }
        }
        None
    })
}

/// Prompt and response text of LLM calls: `llm.*` or `gen_ai.*` keys with such a word.
fn llm_text_key(key: &str) -> bool {
    let mut key_words = words(key);
    matches!(key_words.next(), Some(first) if first.eq_ignore_ascii_case("llm") || first.eq_ignore_ascii_case("gen"))
        && key_words.any(|w| {
            [
                "prompt",
                "response",
                "completion",
                "messages",
                "content",
                "input",
                "output",
            ]
            .iter()
            .any(|t| w.eq_ignore_ascii_case(t))
        })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// The token after each `Bearer ` (any case) that is at least 8 token characters long.
fn bearer_tokens(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(6)).filter_map(move |i| {
        if bytes[i] | 0x20 != b'b' {
            return None;
        }
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if !word_start || !bytes[i..i + 6].eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        let start = i + 6 + bytes[i + 6..].iter().take_while(|b| **b == b' ').count();
        // Only after a space: scanning the token of every `bearer` would make
        // `-bearer-bearer-…` cost the square of its length. A token holds no space, so the
        // tokens scanned, like the runs of spaces before them, never overlap.
        if start == i + 6 {
            return None;
        }
        let token = bytes[start..]
            .iter()
            .take_while(|b| is_token_byte(**b))
            .count();
        work(start - i + token);
        (token >= 8).then_some((start, start + token))
    })
}

/// `sk-…` keys: `sk-` at a word start followed by at least 16 key characters.
fn api_keys(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let is_key_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
    // The end of the run of key characters last measured: an `sk-` inside that run ends
    // where it does. Measuring each one again would make `sk-sk-sk-…` cost the square
    // of its length.
    let mut run_end = 0;
    (0..bytes.len().saturating_sub(3)).filter_map(move |i| {
        if bytes[i] != b's' || bytes[i + 1] != b'k' || bytes[i + 2] != b'-' {
            return None;
        }
        if i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
            return None;
        }
        if run_end <= i + 3 {
            let rest = bytes[i + 3..].iter().take_while(|b| is_key_byte(b)).count();
            work(rest);
            run_end = i + 3 + rest;
        }
        (run_end - (i + 3) >= 16).then_some((i, run_end))
    })
}

/// E-mail addresses: `local@domain.tld`.
fn emails_in(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    text.match_indices('@').filter_map(move |(at, _)| {
        let local = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
            })
            .count();
        let domain = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            .count();
        // Neither part holds an `@`: each stretch between two is scanned at most twice.
        work(local + domain);
        let domain_text = text[at + 1..at + 1 + domain].trim_end_matches('.');
        let tld = domain_text.rsplit_once('.').map(|(_, tld)| tld);
        let valid = local > 0
            && tld.is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()));
        valid.then_some((at - local, at + 1 + domain_text.len()))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::SpanBatch;
    use crate::otlp::{AnyValue, ResourceSpans, ScopeSpans, Span, key_value};
    use crate::processor::{Processor, SpanPass};

    fn redactor() -> Redactor {
        Redactor::new(&RedactConfig::default(), Arc::new(Metrics::default()))
    }

    fn redacted(key: &str, value: &str) -> String {
        let mut attributes = vec![key_value(key, Value::StringValue(value.into()))];
        redactor().redact(&mut attributes);
        match attributes[0].value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_naming_a_secret_are_redacted_whole() {
        for key in [
            "authorization",
            "http.request.header.authorization",
            "Set-Cookie",
            "db.password",
            "user_passwd",
            "client_secret",
            "x-auth-token",
            "access_token",
            "llm.api_key",
            "OPENAI_APIKEY",
            "llm.api-key",
        ] {
            assert_eq!(redacted(key, "hunter2"), REDACTED, "{key}");
        }
        for key in [
            "gen_ai.usage.input_tokens",
            "tokenizer",
            "council.phase",
            "apikeys_count",
            "secretary",
        ] {
            assert_eq!(redacted(key, "hunter2"), "hunter2", "{key}");
        }
        let mut attributes = vec![key_value("password", Value::IntValue(1234))];
        redactor().redact(&mut attributes);
        assert_eq!(
            attributes[0].value,
            Some(AnyValue {
                value: Some(Value::StringValue(REDACTED.into()))
            })
        );
    }

    #[test]
    fn secrets_inside_values_are_masked() {
        let table = [
            (
                "http.header",
                "Bearer eyJhbGciOi.J9.abc",
                "Bearer [REDACTED]",
            ),
            (
                "note",
                "sent with bearer abcdefgh1234 today",
                "sent with bearer [REDACTED] today",
            ),
            ("note", "the bearer of news", "the bearer of news"),
            (
                "llm.request",
                "key sk-proj-ABCDEFGHIJKLMNOP1234 used",
                "key [REDACTED] used",
            ),
            ("note", "task-sk-short", "task-sk-short"),
            (
                "llm.prompt",
                "mail ana.lopez+x@example.co.uk now",
                "mail [REDACTED] now",
            ),
            (
                "gen_ai.output.messages",
                "reply to bob@daena.ai.",
                "reply to [REDACTED].",
            ),
            (
                "llm.prompt",
                "me@localhost and @handle",
                "me@localhost and @handle",
            ),
            ("user.email", "bob@daena.ai", "bob@daena.ai"),
            (
                "llm.response",
                "Bearer abcdefghijk and sk-0123456789abcdefXYZ",
                "Bearer [REDACTED] and [REDACTED]",
            ),
        ];
        for (key, input, output) in table {
            assert_eq!(redacted(key, input), output, "{key}: {input}");
        }
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
    ) -> (crate::otlp::ExportTraceServiceRequest, [u64; 4]) {
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
        assert_eq!(counts, [7, 2, 2, 4]);
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
        /// `sk-` and at least 16 key characters.
        ApiKey(String),
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
                Inner::ApiKey(key) => key.clone(),
                Inner::Email(address) => address.clone(),
            }
        }

        fn masked(&self) -> String {
            match self {
                Inner::Bearer { word, spaces, .. } => {
                    format!("{word}{}{REDACTED}", " ".repeat(*spaces))
                }
                Inner::ApiKey(_) | Inner::Email(_) => REDACTED.to_owned(),
            }
        }

        /// The text that must be gone.
        fn secret(&self) -> &str {
            match self {
                Inner::Bearer { token, .. } => token,
                Inner::ApiKey(s) | Inner::Email(s) => s,
            }
        }

        fn kind(&self) -> usize {
            match self {
                Inner::Bearer { .. } => 1,
                Inner::ApiKey(_) => 2,
                Inner::Email(_) => 3,
            }
        }

        fn after(&self, i: usize) -> &'static str {
            match self {
                Inner::Bearer { .. } => AFTER_TOKEN[i % AFTER_TOKEN.len()],
                Inner::ApiKey(_) | Inner::Email(_) => {
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
        if !emails {
            return prop_oneof![bearer, api_key].boxed();
        }
        let email = "[a-z0-9][a-z0-9._%+-]{0,15}@[a-z0-9]{1,10}(\\.[a-z0-9-]{1,8})?\\.[a-z]{2,6}"
            .prop_map(Inner::Email);
        prop_oneof![bearer, api_key, email].boxed()
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
            let mut counts = [0u64; 4];
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

//! The `redact` stage: secrets in resource, span, event and link attributes become
//! `[REDACTED]` before anything leaves the agent (the console exporter included).

use std::sync::Arc;

use super::key_cache::KeyCache;
use super::{SpanStage, flush_counts};
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
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| is_token_byte(**b))
                .count();
        (start > i + 6 && end - start >= 8).then_some((start, end))
    })
}

/// `sk-…` keys: `sk-` at a word start followed by at least 16 key characters.
fn api_keys(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(3)).filter_map(move |i| {
        if bytes[i] != b's' || bytes[i + 1] != b'k' || bytes[i + 2] != b'-' {
            return None;
        }
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let rest = bytes[i + 3..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .count();
        (word_start && rest >= 16).then_some((i, i + 3 + rest))
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
}

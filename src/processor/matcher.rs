//! Conditions compiled once from the config and matched without allocation: span names
//! (exact or glob) and attribute values (exact, glob, number, boolean, comparison).

use std::collections::BTreeMap;

use crate::config::filter::{Comparison, MatchValue};
use crate::otlp::KeyValue;
use crate::otlp::view::{ResourceRef, SpanRef, ValueRef};

/// A text condition: exact, or a glob where `*` is any run of characters and `?` one.
#[derive(Debug, Clone)]
pub enum TextMatch {
    /// Equal.
    Exact(String),
    /// A glob pattern.
    Glob(String),
}

impl TextMatch {
    /// A glob when `pattern` holds `*` or `?`, else an exact match.
    pub fn new(pattern: &str) -> Self {
        if pattern.contains(['*', '?']) {
            Self::Glob(pattern.to_owned())
        } else {
            Self::Exact(pattern.to_owned())
        }
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == text,
            Self::Glob(pattern) => glob(pattern.as_bytes(), text.as_bytes()),
        }
    }
}

/// Wildcard matching with one backtrack point (the last `*`): linear in practice, at
/// most pattern × text steps, and no allocation. `?` matches one byte.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// A condition on an attribute value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// A string value matching this text.
    Text(TextMatch),
    /// A number equal to this (int or double attribute).
    Number(f64),
    /// A boolean equal to this.
    Bool(bool),
    /// A number (int or double attribute) compared with this.
    Compare(Comparison, f64),
}

impl ValueMatch {
    /// Compiles a validated config value (a malformed comparison never reaches here; it
    /// would be matched as text).
    pub fn new(value: &MatchValue) -> Self {
        if let Some(Ok((op, number))) = value.comparison() {
            return Self::Compare(op, number);
        }
        match value {
            MatchValue::Bool(b) => Self::Bool(*b),
            #[allow(clippy::cast_precision_loss)] // compared as attributes are: as doubles
            MatchValue::Int(i) => Self::Number(*i as f64),
            MatchValue::Double(d) => Self::Number(*d),
            MatchValue::Text(text) => Self::Text(TextMatch::new(text)),
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: Option<ValueRef<'_>>) -> bool {
        #[allow(clippy::cast_precision_loss)] // an int attribute compared as a double
        let number = match value {
            Some(ValueRef::Int(i)) => Some(i as f64),
            Some(ValueRef::Double(d)) => Some(d),
            _ => None,
        };
        match (self, value) {
            (Self::Text(text), Some(ValueRef::Str(s))) => text.matches(s),
            (Self::Bool(b), Some(ValueRef::Bool(v))) => *b == v,
            (Self::Number(n), _) => number == Some(*n),
            (Self::Compare(op, n), _) => number.is_some_and(|v| compare(*op, v, *n)),
            _ => false,
        }
    }
}

fn compare(op: Comparison, value: f64, number: f64) -> bool {
    match op {
        Comparison::Less => value < number,
        Comparison::LessOrEqual => value <= number,
        Comparison::Greater => value > number,
        Comparison::GreaterOrEqual => value >= number,
        Comparison::Equal => value == number,
        Comparison::NotEqual => value != number,
    }
}

/// Conditions on attributes by key: all must hold, and a missing key fails its condition.
#[derive(Debug, Clone, Default)]
pub struct AttributesMatch(Vec<(String, ValueMatch)>);

impl AttributesMatch {
    /// Compiles `conditions` (key → value condition).
    pub fn new(conditions: &BTreeMap<String, MatchValue>) -> Self {
        Self(
            conditions
                .iter()
                .map(|(key, value)| (key.clone(), ValueMatch::new(value)))
                .collect(),
        )
    }

    /// Whether every condition holds on `attributes`.
    pub fn matches(&self, attributes: &(impl Attributes + ?Sized)) -> bool {
        self.0
            .iter()
            .all(|(key, condition)| condition.matches(attributes.get(key)))
    }

    /// Whether there is no condition.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Attributes looked up by key, decoded or read in place: one matcher serves both forms.
pub trait Attributes {
    /// The value of the first attribute named `key`, if it has one.
    fn get(&self, key: &str) -> Option<ValueRef<'_>>;
}

impl Attributes for [KeyValue] {
    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        attribute(self, key)
    }
}

impl Attributes for Vec<KeyValue> {
    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        attribute(self, key)
    }
}

impl Attributes for crate::otlp::Span {
    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        attribute(&self.attributes, key)
    }
}

impl Attributes for SpanRef<'_> {
    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.attribute(key)
    }
}

impl Attributes for ResourceRef<'_> {
    fn get(&self, key: &str) -> Option<ValueRef<'_>> {
        self.attribute(key)
    }
}

/// The value of the first attribute named `key`, if it has one.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<ValueRef<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(ValueRef::from)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::otlp::Value;

    /// The glob's meaning, written the slow and obvious way.
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match (pattern.first(), text.first()) {
            (None, _) => text.is_empty(),
            (Some(b'*'), _) => {
                reference(&pattern[1..], text)
                    || (!text.is_empty() && reference(pattern, &text[1..]))
            }
            (Some(&p), Some(&t)) if p == b'?' || p == t => reference(&pattern[1..], &text[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn the_glob_agrees_with_its_definition(pattern in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            prop_assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                reference(pattern.as_bytes(), text.as_bytes())
            );
        }
    }

    #[test]
    fn globs_match_any_run_and_one_character() {
        let table = [
            ("/internal/*", "/internal/metrics", true),
            ("/internal/*", "/internal/", true),
            ("/internal/*", "/internals", false),
            ("GET /*/items", "GET /a/b/items", true),
            ("GET /*/items", "GET /a/b/item", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.ico", "GET /favicon.ico", true),
            ("**x", "yyx", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ];
        for (pattern, text, expected) in table {
            assert_eq!(
                TextMatch::new(pattern).matches(text),
                expected,
                "{pattern} {text}"
            );
        }
        assert!(TextMatch::new("GET /healthz").matches("GET /healthz"));
        assert!(!TextMatch::new("GET /healthz").matches("GET /healthz2"));
    }

    #[test]
    fn values_match_by_type_number_and_comparison() {
        let int = |i| Some(Value::IntValue(i));
        let text = |s: &str| Some(Value::StringValue(s.into()));
        let cases: [(MatchValue, Option<Value>, bool); 11] = [
            (MatchValue::Text(">= 500".into()), int(503), true),
            (MatchValue::Text(">= 500".into()), int(404), false),
            (
                MatchValue::Text("< 0.5".into()),
                Some(Value::DoubleValue(0.25)),
                true,
            ),
            (MatchValue::Text("!= 200".into()), int(200), false),
            (MatchValue::Text(">= 500".into()), text("503"), false),
            (MatchValue::Int(200), int(200), true),
            (MatchValue::Int(200), Some(Value::DoubleValue(200.0)), true),
            (MatchValue::Int(200), text("200"), false),
            (MatchValue::Bool(true), Some(Value::BoolValue(true)), true),
            (
                MatchValue::Text("/internal/*".into()),
                text("/internal/x"),
                true,
            ),
            (MatchValue::Text("x".into()), None, false),
        ];
        for (condition, value, expected) in cases {
            assert_eq!(
                ValueMatch::new(&condition).matches(value.as_ref().map(ValueRef::from)),
                expected,
                "{condition:?} {value:?}"
            );
        }
    }
}

//! The one place that parses and writes YAML (serde-saphyr: pure Rust, rejects duplicate keys).
//!
//! serde-saphyr stops at the first error. To list every YAML-level error in one run, the
//! document is deserialized again after each error with the key that failed skipped (its
//! value read and ignored), until a run gets through or repeats itself. A wrapper around
//! serde-saphyr's deserializer does the skipping and notes the key path of each failure,
//! so every error names its key; serde-saphyr's own messages and positions are kept.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};

use super::interpolate::{Expanded, interpolate};
use super::secret::MASK;
use super::url::is_secret_name;
use super::{Config, ConfigError, bounds};

/// A value with the line of the YAML it was read from, for errors found after parsing.
/// Two are equal when their values are, wherever they were written.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Its 1-based line; 0 when it was not read from YAML.
    pub line: usize,
}

/// `value` without a line, as when it was not read from YAML.
pub fn located<T>(value: T) -> Located<T> {
    Located { value, line: 0 }
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: serde::Serialize> serde::Serialize for Located<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(Self {
            line: usize::try_from(spanned.referenced.line()).unwrap_or_default(),
            value: spanned.value,
        })
    }
}

/// Runs after which the remaining errors are left for the next `check`.
const MAX_RUNS: usize = 64;

/// Expands `${VAR}` in `text` and parses it; every YAML-level error is listed, each with
/// `file:line:col`, its key, and the original line (never a value from the environment).
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let expanded = interpolate(text, env).map_err(|problems| {
        problems
            .into_iter()
            .map(|message| ConfigError::new(path.display().to_string(), message))
            .collect::<Vec<_>>()
    })?;
    if expanded.text.trim().is_empty() {
        return Ok(Config::default());
    }
    // Invalid YAML first, alone: what follows a syntax error cannot be trusted. Duplicate
    // keys are left to the runs below, which report them with the rest.
    let syntax = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::FirstWins,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
    };
    if let Err(error) = serde_saphyr::from_str_with_options::<IgnoredAny>(&expanded.text, syntax) {
        return Err(vec![report(
            &error,
            &KeyPath::default(),
            text,
            &expanded,
            path,
        )]);
    }
    let mut skip = BTreeSet::new();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..MAX_RUNS {
        let tracker = Tracker {
            skip: &skip,
            failed_at: RefCell::new(None),
            skipping: Cell::new(false),
        };
        // The snippet serde-saphyr can render would show the expanded text; we show the
        // original line ourselves instead. Non-finite floats reach the visitors (which
        // refuse them with the key) instead of failing a skipped value.
        let options = serde_saphyr::options! {
            strict_booleans: true,
            with_snippet: false,
            non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        };
        let result =
            serde_saphyr::with_deserializer_from_str_with_options(&expanded.text, options, |de| {
                Config::deserialize(Recover {
                    inner: de,
                    path: KeyPath::default(),
                    tracker: &tracker,
                })
            });
        let error = match result {
            Ok(config) if errors.is_empty() => {
                return Ok(note_substituted_headers(config, &expanded));
            }
            Ok(_) => break,
            Err(error) => error,
        };
        // An error found again (a duplicate key is seen even in a skipped value) means the
        // rest cannot be reached.
        if !seen.insert(error.to_string()) {
            break;
        }
        let at = tracker.failed_at.take().unwrap_or_default();
        // A value skipped for its own error that cannot even be skipped, or a required key
        // skipped that way and now missing, is the same error again.
        let consequence = tracker.skipping.get()
            || matches!(&error, serde_saphyr::Error::SerdeMissingField { field, .. }
                if skip.contains(&at.child(Segment::Key((*field).to_owned()))));
        if !consequence {
            errors.push(report(&error, &at, text, &expanded, path));
        }
        if at.0.is_empty() || !skip.insert(at) {
            break;
        }
    }
    Err(errors)
}

/// Notes on each exporter the headers whose values hold a value read from the environment
/// (an empty one cannot be told apart, and shows nothing anyway).
fn note_substituted_headers(mut config: Config, expanded: &Expanded) -> Config {
    for exporter in config.exporters.values_mut() {
        note_exporter_headers(exporter, expanded);
    }
    config
}

/// [`note_substituted_headers`] for one exporter and a loadbalancing exporter's backends.
fn note_exporter_headers(exporter: &mut super::ExporterConfig, expanded: &Expanded) {
    exporter.substituted_headers = exporter
        .headers
        .iter()
        .filter(|(_, value)| {
            expanded
                .substitutions
                .iter()
                .any(|s| !s.value.is_empty() && value.expose().contains(&s.value))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if let Some(inner) = &mut exporter.exporter {
        note_exporter_headers(inner, expanded);
    }
}

/// One error as the user sees it: position, key, message, and the line as written.
fn report(
    error: &serde_saphyr::Error,
    at: &KeyPath,
    original: &str,
    expanded: &Expanded,
    path: &Path,
) -> ConfigError {
    let offset = error
        .location()
        .filter(|l| l.line() > 0)
        .and_then(|l| offset_of(&expanded.text, l.line(), l.column()))
        .map(|offset| expanded.original_offset(offset));
    // Under a secret-looking key the message says what is wrong but not what is written.
    let written = match offset {
        Some(offset) if !is_secret_path(at) => written_at(original, offset),
        _ => "the value",
    };
    let mut message = match error {
        serde_saphyr::Error::InvalidBooleanStrict { .. } => {
            format!("{written} is not true or false")
        }
        serde_saphyr::Error::InvalidScalar { ty, .. } if ty.starts_with('f') => {
            format!("{written} is not a number")
        }
        serde_saphyr::Error::InvalidScalar { .. } => {
            format!("{written} is not a whole number this setting can hold")
        }
        serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } => {
            format!("duplicate key {key:?}; keep one of them")
        }
        serde_saphyr::Error::SerdeUnknownField { .. } => format!(
            "{}; fix the spelling or remove the key",
            strip_location(&error.to_string())
        ),
        serde_saphyr::Error::SerdeMissingField { .. } => {
            format!("{}; add it", strip_location(&error.to_string()))
        }
        _ => strip_location(&error.to_string()).to_owned(),
    };
    if let Some(range) = bounds::range_at(at) {
        message = format!("{message}; use {range}");
    }
    let key = if at.0.is_empty() {
        String::new()
    } else {
        format!("{at}: ")
    };
    // The key path too: a key may have come from a variable (`"${TOKEN}": 1`).
    let message = hide_substitutions(&format!("{key}{message}"), expanded);
    match offset.map(|offset| position_of(original, offset)) {
        Some((line, column)) => {
            let source_line = original.lines().nth(line - 1).unwrap_or_default();
            let (shown, caret) = without_values(source_line.trim_end(), column);
            ConfigError::new(
                format!("{}:{line}:{column}", path.display()),
                format!("{message}\n      | {shown}\n      | {:>caret$}", "^"),
            )
        }
        None => ConfigError::new(path.display().to_string(), message),
    }
}

/// `text` with every value read from the environment (of 4 bytes or more: shorter ones
/// would replace ordinary words and numbers) shown as the reference it replaced.
fn hide_substitutions(text: &str, expanded: &Expanded) -> String {
    // Longest first, so a value that contains another is hidden whole.
    let mut secrets: Vec<_> = expanded
        .substitutions
        .iter()
        .filter(|s| s.value.len() >= 4)
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
    secrets.into_iter().fold(text.to_owned(), |text, s| {
        text.replace(&s.value, &s.reference)
    })
}

/// Whether a key on `path` may hold a secret: under `headers`, or named like one.
fn is_secret_path(path: &KeyPath) -> bool {
    path.0.iter().any(
        |segment| matches!(segment, Segment::Key(key) if key == "headers" || is_secret_name(key)),
    )
}

/// `line` with every scalar that is not a key (nor only `${VAR}`) replaced by `***`, and where the caret for
/// the 1-based character `column` goes in it. Snippets show only indentation, keys and
/// YAML's punctuation: a value (or a comment) on the line may be a secret.
fn without_values(line: &str, column: usize) -> (String, usize) {
    let chars: Vec<char> = line.chars().collect();
    let mut shown = String::new();
    let mut caret = None;
    let mut flow_depth = 0usize;
    // A key is only the first scalar of a block line, list item or flow entry, so in
    // `token: abc: def` only `token` is shown.
    let mut expect_key = true;
    let mut i = 0;
    let blank_or_end = |at: usize| chars.get(at).is_none_or(|c| c.is_whitespace());
    while i < chars.len() {
        let here = shown.chars().count() + 1;
        let c = chars[i];
        let mut end = i + 1;
        match c {
            ' ' | '\t' => shown.push(c),
            '{' | '[' => {
                flow_depth += 1;
                expect_key = true;
                shown.push(c);
            }
            '}' | ']' => {
                flow_depth = flow_depth.saturating_sub(1);
                shown.push(c);
            }
            ',' if flow_depth > 0 => {
                expect_key = true;
                shown.push(c);
            }
            '-' | '?' if blank_or_end(i + 1) => {
                expect_key = true;
                shown.push(c);
            }
            ':' if ends_key(&chars, i, flow_depth) => {
                expect_key = false;
                shown.push(c);
            }
            '#' if i == 0 || chars[i - 1].is_whitespace() => {
                end = chars.len();
                shown.push_str("# ***");
            }
            _ => {
                end = scalar_end(&chars, i, flow_depth);
                let text: String = chars[i..end].iter().collect();
                let colon = chars[end..].iter().position(|c| *c != ' ').map(|p| end + p);
                let is_key = expect_key
                    && colon.is_some_and(|at| ends_key(&chars, at, flow_depth))
                    && text
                        .trim_matches(['"', '\''])
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
                expect_key = false;
                let shows = is_key || only_references(&text);
                shown.push_str(if shows { &text } else { MASK });
            }
        }
        if caret.is_none() && column <= end {
            caret = Some(here);
        }
        i = end;
    }
    let caret = caret.unwrap_or_else(|| shown.chars().count() + 1);
    (shown, caret)
}

/// Whether a scalar as written is nothing but `${VAR}` references: names, not values.
fn only_references(scalar: &str) -> bool {
    let mut rest = scalar.trim_matches(['"', '\'']);
    if rest.is_empty() {
        return false;
    }
    while let Some(after) = rest.strip_prefix("${") {
        match after.find('}') {
            Some(end) => rest = &after[end + 1..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Where the scalar starting at `start` ends: its closing quote, or for a plain scalar
/// the `: ` or ` #` after it (and in a flow collection a `,`, `[`, `]`, `{` or `}`).
fn scalar_end(chars: &[char], start: usize, flow_depth: usize) -> usize {
    match chars[start] {
        quote @ ('"' | '\'') => {
            let mut i = start + 1;
            while i < chars.len() {
                if quote == '"' && chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == quote {
                    // '' inside single quotes is a quote, not the end.
                    if quote == '\'' && chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    return i + 1;
                }
                i += 1;
            }
            chars.len()
        }
        _ => {
            let mut i = start;
            while i < chars.len() {
                let ends = match chars[i] {
                    ':' => ends_key(chars, i, flow_depth),
                    '#' => i > start && chars[i - 1].is_whitespace(),
                    ',' | '[' | ']' | '{' | '}' => flow_depth > 0,
                    _ => false,
                };
                if ends {
                    break;
                }
                i += 1;
            }
            // Spaces before a `:` or `#` are not the scalar's.
            while i > start + 1 && chars[i - 1] == ' ' {
                i -= 1;
            }
            i.max(start + 1)
        }
    }
}

/// Whether the `:` at `at` ends a key: followed by a blank or the line's end, or in a
/// flow collection by the entry's end (`{a:}`); `http://h:4317` holds no key.
fn ends_key(chars: &[char], at: usize, flow_depth: usize) -> bool {
    chars[at] == ':'
        && match chars.get(at + 1) {
            None => true,
            Some(c) if c.is_whitespace() => true,
            Some(c) => flow_depth > 0 && ",[]{}".contains(*c),
        }
}

/// The scalar written at `offset` of the original text, as written (`${VAR}` included).
fn written_at(original: &str, offset: usize) -> &str {
    let rest = original.get(offset..).unwrap_or_default();
    let end = match rest.chars().next() {
        Some(quote @ ('"' | '\'')) => rest[1..].find(quote).map_or(rest.len(), |i| i + 2),
        _ => rest
            .find([',', '}', ']', '\n'])
            .into_iter()
            .chain(rest.find(" #"))
            .min()
            .unwrap_or(rest.len()),
    };
    rest[..end].trim()
}

/// The byte offset of a 1-based line and character column.
fn offset_of(text: &str, line: u64, column: u64) -> Option<usize> {
    let line = usize::try_from(line).ok()?;
    let column = usize::try_from(column).ok()?;
    let start = if line == 1 {
        0
    } else {
        text.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let within = text[start..]
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(text.len() - start, |(i, _)| i);
    Some(start + within)
}

/// The 1-based line and character column of a byte offset.
fn position_of(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// serde-saphyr ends some messages with its own "at line X column Y"; we print the
/// position in front, as compilers do.
fn strip_location(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
        .trim_end()
}

/// Values that mean "none" or "off" (`key: null`, `threshold: 0s`, `values: []`).
const OFF_VALUES: [&str; 5] = ["null", "0s", "0ns", "[]", "{}"];

/// Writes the config as YAML for a person: a `key: <off value>` line is left out when the
/// YAML without it reads back as the same config, i.e. when it only repeats the default.
/// That keeps `telemetry.endpoint: null` (its default is an address) and drops
/// `key: null` or `threshold: 0s` on a policy that has no use for them.
pub fn to_string(config: &Config) -> String {
    let text = match serde_saphyr::to_string(config) {
        Ok(text) => text,
        Err(e) => return format!("# cannot render the config: {e}\n"),
    };
    // An exporter's `origin` is shown but never read (a file cannot set it): not read back.
    let read = |lines: &[&str]| {
        let kept: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|line| !line.starts_with("    origin: "))
            .collect();
        serde_saphyr::from_str::<Config>(&kept.join("\n")).ok()
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(whole) = read(&lines) else {
        return text;
    };
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        // The first key of a list item carries its `- `; it is never an off value here.
        let off = !line.starts_with('-')
            && line
                .split_once(": ")
                .is_some_and(|(_, value)| OFF_VALUES.contains(&value.trim()));
        if off {
            let mut fewer = lines.clone();
            fewer.remove(i);
            if read(&fewer).as_ref() == Some(&whole) {
                lines = fewer;
                continue;
            }
        }
        i += 1;
    }
    lines.join("\n") + "\n"
}

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Segment {
    /// A key, e.g. `exporters`.
    Key(String),
    /// A position in a list, from 0.
    Index(usize),
}

/// Where a value is in the document, e.g. `processors.sampling.policies[1].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    fn child(&self, segment: Segment) -> Self {
        let mut path = self.clone();
        path.0.push(segment);
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// What one run skips, and where it failed.
struct Tracker<'s> {
    /// Keys whose errors are reported already: their values are read and ignored.
    skip: &'s BTreeSet<KeyPath>,
    /// The innermost key the run failed at; set once, by the first (deepest) to see it.
    failed_at: RefCell<Option<KeyPath>>,
    /// Whether the run failed while skipping a value.
    skipping: Cell<bool>,
}

impl Tracker<'_> {
    fn fail(&self, at: impl FnOnce() -> KeyPath) {
        let mut failed_at = self.failed_at.borrow_mut();
        if failed_at.is_none() {
            *failed_at = Some(at());
        }
    }
}

/// serde-saphyr's deserializer, skipping the keys in the tracker and noting failures.
struct Recover<'t, 's, D> {
    inner: D,
    path: KeyPath,
    tracker: &'t Tracker<'s>,
}

impl<'t, 's, D> Recover<'t, 's, D> {
    fn wrap<V>(&self, visitor: V) -> RecoverVisitor<'t, 's, V> {
        RecoverVisitor {
            inner: visitor,
            path: self.path.clone(),
            tracker: self.tracker,
        }
    }
}

/// Forwards `deserialize_*` methods to the inner deserializer with a wrapped visitor.
macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Recover<'_, '_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any(), deserialize_bool(), deserialize_i8(), deserialize_i16(),
        deserialize_i32(), deserialize_i64(), deserialize_i128(), deserialize_u8(),
        deserialize_u16(), deserialize_u32(), deserialize_u64(), deserialize_u128(),
        deserialize_f32(), deserialize_f64(), deserialize_char(), deserialize_str(),
        deserialize_string(), deserialize_bytes(), deserialize_byte_buf(),
        deserialize_option(), deserialize_unit(), deserialize_seq(), deserialize_map(),
        deserialize_identifier(), deserialize_ignored_any(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Wraps the maps, lists and options a visitor is given; passes everything else on.
struct RecoverVisitor<'t, 's, V> {
    inner: V,
    path: KeyPath,
    tracker: &'t Tracker<'s>,
}

/// Forwards `visit_*` methods that carry a plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, value: $ty) -> Result<V::Value, E> {
            self.inner.$method(value)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for RecoverVisitor<'_, '_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char),
        visit_str(&str), visit_borrowed_str(&'de str), visit_string(String),
        visit_bytes(&[u8]), visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_some(Recover {
            inner,
            path: self.path,
            tracker: self.tracker,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        self.inner.visit_newtype_struct(Recover {
            inner,
            path: self.path,
            tracker: self.tracker,
        })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.inner.visit_enum(data)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let current = RefCell::new(Current::default());
        let result = self.inner.visit_map(RecoverMap {
            inner: map,
            path: &self.path,
            tracker: self.tracker,
            current: &current,
        });
        if result.is_err() {
            self.tracker.fail(|| current.into_inner().at(&self.path));
        }
        result
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let current = RefCell::new(Current::default());
        let result = self.inner.visit_seq(RecoverSeq {
            inner: seq,
            path: &self.path,
            tracker: self.tracker,
            current: &current,
            next: 0,
        });
        if result.is_err() {
            self.tracker.fail(|| current.into_inner().at(&self.path));
        }
        result
    }
}

/// The entry a map or list visitor is at: an error while it is set is that entry's.
/// The flag marks the map serde-saphyr makes for a [`Located`] value, whose keys
/// (`value`, and the positions) are not the user's and add nothing to the path.
#[derive(Debug, Default)]
struct Current(Option<Segment>, bool);

/// How the map serde-saphyr makes for a [`Located`] value begins.
const LOCATED_MARKER: &str = "__serde_saphyr_private";

impl Current {
    fn at(self, path: &KeyPath) -> KeyPath {
        match self.0 {
            Some(segment) => path.child(segment),
            None => path.clone(),
        }
    }
}

/// A mapping whose skipped keys the visitor never sees.
struct RecoverMap<'a, 't, 's, A> {
    inner: A,
    path: &'a KeyPath,
    tracker: &'t Tracker<'s>,
    current: &'a RefCell<Current>,
}

/// A key that is skipped, or the visitor's value for it.
enum Key<T> {
    Skipped,
    Kept(T),
}

/// Reads a key as text, then gives it to the visitor's seed unless it is skipped.
struct KeySeed<'a, 't, 's, S> {
    seed: &'a mut Option<S>,
    path: &'a KeyPath,
    tracker: &'t Tracker<'s>,
    current: &'a RefCell<Current>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, '_, '_, S> {
    type Value = Key<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key.starts_with(LOCATED_MARKER) {
            self.current.borrow_mut().1 = true;
        }
        if self.current.borrow().1 {
            let seed = self
                .seed
                .take()
                .ok_or_else(|| de::Error::custom("a key was read twice"))?;
            return seed.deserialize(key.into_deserializer()).map(Key::Kept);
        }
        let segment = Segment::Key(key.clone());
        if self
            .tracker
            .skip
            .contains(&self.path.child(segment.clone()))
        {
            return Ok(Key::Skipped);
        }
        self.current.borrow_mut().0 = Some(segment);
        let seed = self
            .seed
            .take()
            .ok_or_else(|| de::Error::custom("a key was read twice"))?;
        seed.deserialize(key.into_deserializer()).map(Key::Kept)
    }
}

/// Gives the value's deserializer, wrapped, to the visitor's seed.
struct ValueSeed<'t, 's, S> {
    seed: S,
    path: KeyPath,
    tracker: &'t Tracker<'s>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for ValueSeed<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Recover {
            inner,
            path: self.path,
            tracker: self.tracker,
        })
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for RecoverMap<'_, '_, '_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let mut seed = Some(seed);
        loop {
            self.current.borrow_mut().0 = None;
            let key = self.inner.next_key_seed(KeySeed {
                seed: &mut seed,
                path: self.path,
                tracker: self.tracker,
                current: self.current,
            })?;
            match key {
                None => return Ok(None),
                Some(Key::Kept(key)) => return Ok(Some(key)),
                Some(Key::Skipped) => {
                    self.inner
                        .next_value::<IgnoredAny>()
                        .inspect_err(|_| self.tracker.skipping.set(true))?;
                }
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        let path = self
            .current
            .borrow()
            .0
            .clone()
            .map_or_else(|| self.path.clone(), |segment| self.path.child(segment));
        let value = self.inner.next_value_seed(ValueSeed {
            seed,
            path,
            tracker: self.tracker,
        })?;
        self.current.borrow_mut().0 = None;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A list whose skipped items the visitor never sees (their indexes stay those written).
struct RecoverSeq<'a, 't, 's, A> {
    inner: A,
    path: &'a KeyPath,
    tracker: &'t Tracker<'s>,
    current: &'a RefCell<Current>,
    next: usize,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for RecoverSeq<'_, '_, '_, A> {
    type Error = A::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        loop {
            let segment = Segment::Index(self.next);
            self.next += 1;
            let path = self.path.child(segment.clone());
            if self.tracker.skip.contains(&path) {
                let skipped = self
                    .inner
                    .next_element::<IgnoredAny>()
                    .inspect_err(|_| self.tracker.skipping.set(true))?;
                if skipped.is_none() {
                    return Ok(None);
                }
                continue;
            }
            self.current.borrow_mut().0 = Some(segment);
            let element = self.inner.next_element_seed(ValueSeed {
                seed,
                path,
                tracker: self.tracker,
            })?;
            self.current.borrow_mut().0 = None;
            return Ok(element);
        }
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_keeps_keys_and_punctuation_but_no_value() {
        for (line, expected) in [
            ("    password: hunter2", "    password: ***"),
            ("  - name: slow", "  - name: ***"),
            ("exporters:", "exporters:"),
            (
                "    headers: { authorization: \"Bearer s3cr3t\", x-b: 'it''s' }",
                "    headers: { authorization: ***, x-b: *** }",
            ),
            (
                "    endpoint: https://u:pw@h:4317/x # old: t0ken",
                "    endpoint: *** # ***",
            ),
            ("    token: abc: def", "    token: ***: ***"),
            ("      Bearer abc: def", "      ***: ***"),
            ("  - [a, b]", "  - [***, ***]"),
            ("  {endpoint:http://h:4317}", "  {***}"),
            ("    timeout: ${TIMEOUT}", "    timeout: ${TIMEOUT}"),
            ("    x: \"${A}${B}\"", "    x: \"${A}${B}\""),
            ("    x: \"Bearer ${TOKEN}\"", "    x: ***"),
            ("    x: ${A}tail", "    x: ***"),
        ] {
            assert_eq!(without_values(line, 1).0, expected, "{line}");
        }
    }

    #[test]
    fn the_caret_points_at_the_start_of_what_is_shown_there() {
        let line = "    retry: { multiplier: \"a b\", max_intervall: 1s }";
        let (shown, caret) = without_values(line, 26);
        assert_eq!(shown, "    retry: { multiplier: ***, max_intervall: *** }");
        assert_eq!(&shown[caret - 1..caret + 2], "***");
        let (shown, caret) = without_values(line, 34);
        assert_eq!(&shown[caret - 1..], "max_intervall: *** }");
        assert_eq!(
            without_values("a: b", 99).1,
            7,
            "past the end: after the line"
        );
    }

    #[test]
    fn keys_named_like_secrets_hide_what_is_written() {
        let path =
            |keys: &[&str]| KeyPath(keys.iter().map(|k| Segment::Key((*k).to_owned())).collect());
        assert!(is_secret_path(&path(&[
            "exporters",
            "t",
            "headers",
            "x-org"
        ])));
        assert!(is_secret_path(&path(&[
            "exporters",
            "t",
            "auth",
            "basic",
            "password"
        ])));
        assert!(!is_secret_path(&path(&[
            "exporters",
            "t",
            "retry",
            "multiplier"
        ])));
    }
}

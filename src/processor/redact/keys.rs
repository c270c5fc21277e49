//! Which attribute keys name a secret: normalisation (confusables, invisible characters,
//! surrounding whitespace), words (separators and camelCase), and the count exceptions.

use std::borrow::Cow;
use std::collections::HashSet;

/// Words that make a key describe a secret rather than hold it (its count, size, type,
/// expiry, whether it is on): `token_count`, `password_length`, `cookies.enabled`.
const ABOUT: [&str; 20] = [
    "count",
    "counts",
    "total",
    "num",
    "number",
    "max",
    "min",
    "limit",
    "usage",
    "length",
    "len",
    "size",
    "enabled",
    "rotated",
    "type",
    "ttl",
    "expiry",
    "expires",
    "expired",
    "expiration",
];

/// Words that make a plural `tokens` an LLM token count: `llm.tokens`, `prompt_tokens`,
/// `daena.llm.tokens_in`.
const LLM_COUNT: [&str; 11] = [
    "llm",
    "gen",
    "ai",
    "input",
    "output",
    "prompt",
    "completion",
    "cached",
    "reasoning",
    "in",
    "out",
];

/// Words of an `llm.*`/`gen_ai.*` key that holds prompt or response text.
const LLM_TEXT: [&str; 13] = [
    "prompt",
    "prompts",
    "response",
    "responses",
    "completion",
    "completions",
    "message",
    "messages",
    "content",
    "input",
    "output",
    "instructions",
    "text",
];

/// Names that are secret in `name=value` (URL query parameters) though not as keys.
const QUERY_ONLY: [&str; 3] = ["key", "sig", "signature"];

/// The secret-key rules: the configured key patterns and the keys allowed to stay readable.
pub struct KeyRules {
    /// Each key pattern as its lower-case words.
    patterns: Vec<Vec<String>>,
    /// `allow_keys`, normalised and lower-cased.
    allow: HashSet<String>,
}

impl KeyRules {
    /// Rules from `processors.redact.keys` and `allow_keys`.
    pub fn new(keys: &[String], allow_keys: &[String]) -> Self {
        Self {
            patterns: keys
                .iter()
                .map(|k| words(&normalise(k)))
                .filter(|words| !words.is_empty())
                .collect(),
            allow: allow_keys
                .iter()
                .map(|k| normalise(k).to_lowercase())
                .collect(),
        }
    }

    /// Whether an attribute key names a secret: some pattern's words appear, in order and
    /// whole (the last one also plural), among the key's words, and no word says the key
    /// is about the secret (a count, a size, a type) rather than the secret itself.
    pub fn secret(&self, key: &str) -> bool {
        self.classify(key).0
    }

    /// Whether a key names a secret (see [`KeyRules::secret`]) and whether it holds LLM
    /// prompt or response text: an `llm` word, or `gen_ai` first, and one of the text words.
    pub fn classify(&self, key: &str) -> (bool, bool) {
        let key = normalise(key);
        let key_words = words(&key);
        let llm = key_words.iter().any(|w| w == "llm")
            || key_words.first().is_some_and(|w| w == "gen")
                && key_words.get(1).is_some_and(|w| w == "ai");
        let llm_text = llm && key_words.iter().any(|w| LLM_TEXT.contains(&w.as_str()));
        let allowed = !self.allow.is_empty() && self.allow.contains(&key.to_lowercase());
        (!allowed && self.secret_words(&key_words), llm_text)
    }

    /// Whether `name` in `name=value` (a query parameter, a log field) names a secret:
    /// a secret key, or `key`, `sig`, `signature` (e.g. `X-Amz-Signature`).
    pub fn secret_name(&self, name: &str) -> bool {
        let name_words = words(&normalise(name));
        self.secret_words(&name_words)
            || name_words.iter().any(|w| QUERY_ONLY.contains(&w.as_str()))
    }

    fn secret_words(&self, key_words: &[String]) -> bool {
        if key_words.iter().any(|w| ABOUT.contains(&w.as_str())) {
            return false;
        }
        self.patterns.iter().any(|pattern| {
            key_words
                .windows(pattern.len())
                .enumerate()
                .any(|(at, window)| {
                    let (last, first) = match (window.split_last(), pattern.split_last()) {
                        (Some((w, ws)), Some((p, ps))) => ((w, p), ws.iter().zip(ps)),
                        _ => return false,
                    };
                    let plural = last.0.strip_suffix('s') == Some(last.1.as_str());
                    let whole = first.clone().all(|(w, p)| w == p) && (last.0 == last.1 || plural);
                    // `OAuth` splits into `o`, `auth`: a provider's name, not a credential.
                    let oauth = last.1 == "auth" && at > 0 && key_words[at - 1] == "o";
                    let llm_count = plural
                        && last.1 == "token"
                        && key_words.iter().any(|w| LLM_COUNT.contains(&w.as_str()));
                    whole && !oauth && !llm_count
                })
        })
    }
}

/// Zero-width characters (and the soft hyphen) that render as nothing.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
    )
}

/// A key without surrounding whitespace or invisible characters, its confusable letters
/// folded to Latin ones. Keeps case, which the camelCase split needs.
pub fn normalise(key: &str) -> Cow<'_, str> {
    let trimmed = key.trim_matches(|c: char| c.is_whitespace() || invisible(c));
    if trimmed.is_ascii() {
        return Cow::Borrowed(trimmed);
    }
    Cow::Owned(
        trimmed
            .chars()
            .filter(|c| !invisible(*c))
            .map(fold)
            .collect(),
    )
}

/// The Latin letter a look-alike stands for: fullwidth ASCII, and the common Cyrillic and
/// Greek homoglyphs of Latin letters (a small table, not Unicode's whole confusables list).
fn fold(c: char) -> char {
    if let '\u{FF01}'..='\u{FF5E}' = c {
        return char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c);
    }
    match c {
        'а' | 'α' => 'a',
        'в' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' => 'e',
        'һ' => 'h',
        'і' | 'ι' | 'ı' => 'i',
        'ј' => 'j',
        'к' | 'κ' => 'k',
        'м' => 'm',
        'п' | 'η' => 'n',
        'о' | 'ο' | 'σ' => 'o',
        'р' | 'ρ' => 'p',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' => 'u',
        'ν' => 'v',
        'ѡ' | 'ω' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' => 'y',
        'А' | 'Α' => 'A',
        'В' | 'Β' => 'B',
        'С' => 'C',
        'Е' | 'Ε' => 'E',
        'Н' | 'Η' => 'H',
        'І' | 'Ι' => 'I',
        'Ј' => 'J',
        'К' | 'Κ' => 'K',
        'М' | 'Μ' => 'M',
        'Ν' => 'N',
        'О' | 'Ο' => 'O',
        'Р' | 'Ρ' => 'P',
        'Ѕ' => 'S',
        'Т' | 'Τ' => 'T',
        'Х' | 'Χ' => 'X',
        'Υ' | 'Ү' => 'Y',
        'Ζ' => 'Z',
        _ => c,
    }
}

/// The lower-case words of a (normalised) key: split at every character that is not a
/// letter or digit, and at camelCase humps (`userPassword`, `HTTPHeader` → `http`, `header`).
pub fn words(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = key.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
        } else {
            if c.is_uppercase() && !word.is_empty() {
                let next_lower = chars.peek().is_some_and(|n| n.is_lowercase());
                if prev.is_lowercase() || prev.is_numeric() || (prev.is_uppercase() && next_lower) {
                    out.push(std::mem::take(&mut word));
                }
            }
            word.extend(c.to_lowercase());
        }
        prev = c;
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

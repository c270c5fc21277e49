//! Secrets inside text: `Bearer`/`Basic`/`Token` credentials, known API-key prefixes,
//! JWTs, URL userinfo passwords, `name=value` pairs with a secret name, e-mail addresses.
//!
//! One pass over the text notes which classes of bytes it holds (one table look-up per
//! byte); a pattern is only looked for when the bytes and letters it cannot do without are
//! there, so most values are scanned once, cheaply.
//! Every scan is linear in the text: a run measured once is not measured again from a
//! later start inside it (`sk-sk-sk-…`, `bearer=bearer=…`).

use super::keys::KeyRules;
use super::{REDACTED, work};

/// What was found, the `kind` label of the metric; the index into `KINDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A value whose key names a secret, replaced whole.
    Key,
    /// `Bearer …` or `Token …`.
    BearerToken,
    /// A key with a known prefix (`sk-`, `ghp_`, `AKIA`…) or a configured one.
    ApiKey,
    /// An e-mail address in LLM text.
    Email,
    /// `Basic …`.
    BasicAuth,
    /// A JSON Web Token.
    Jwt,
    /// The password of `scheme://user:password@host`.
    UrlCredentials,
    /// The value of `name=value` or `name: value` whose name is secret.
    KeyValue,
    /// A value nested deeper than the stage looks, replaced whole.
    TooDeep,
}

/// A found secret: its byte range and kind.
pub type Found = (usize, usize, Kind);

/// A known key prefix and what must follow it.
struct Prefix {
    text: &'static [u8],
    /// AWS and Google prefixes are upper/mixed case by definition; the others match any case.
    exact_case: bool,
    body: Body,
}

enum Body {
    /// At least this many key characters (`[A-Za-z0-9_-]`).
    AtLeast(usize),
    /// Exactly 16 upper-case letters or digits (AWS access key ids).
    Aws,
}

const fn prefix(text: &'static [u8], min: usize) -> Prefix {
    Prefix {
        text,
        exact_case: false,
        body: Body::AtLeast(min),
    }
}

/// OpenAI (`sk-`, `sk-proj-`), Anthropic (`sk-ant-`), Stripe secret and restricted keys,
/// GitHub, Slack, AWS, Google. Stripe `pk_…` keys are publishable, meant to be public.
const PREFIXES: [Prefix; 18] = [
    prefix(b"sk-", 16),
    prefix(b"sk_live_", 10),
    prefix(b"sk_test_", 10),
    prefix(b"rk_live_", 10),
    prefix(b"rk_test_", 10),
    prefix(b"ghp_", 20),
    prefix(b"gho_", 20),
    prefix(b"ghu_", 20),
    prefix(b"ghs_", 20),
    prefix(b"ghr_", 20),
    prefix(b"github_pat_", 20),
    prefix(b"xoxb-", 10),
    prefix(b"xoxp-", 10),
    prefix(b"xoxa-", 10),
    prefix(b"xoxr-", 10),
    prefix(b"xapp-", 10),
    Prefix {
        text: b"AKIA",
        exact_case: true,
        body: Body::Aws,
    },
    Prefix {
        text: b"ASIA",
        exact_case: true,
        body: Body::Aws,
    },
];

/// Google API keys: `AIza` and 35 key characters.
const GOOGLE: Prefix = Prefix {
    text: b"AIza",
    exact_case: true,
    body: Body::AtLeast(35),
};

/// The shortest body of a configured prefix.
const PATTERN_BODY: usize = 8;

// Bits of [`CLASS`]: what a byte may take part in. Each pattern is only looked for when
// the text holds every class of byte it cannot do without.
/// A space, a tab or the `%` of `%20`: with `:` and `=`, what follows `Bearer`/`Basic`/`Token`.
const SPACE: u32 = 1;
/// `-` or `_`: every known key prefix but AWS's and Google's holds one.
const KEY_SEPARATOR: u32 = 1 << 1;
/// The `A` that starts `AKIA`, `ASIA` and `AIza`.
const CAPITAL_A: u32 = 1 << 2;
/// The `J` of a JWT's `eyJ`.
const CAPITAL_J: u32 = 1 << 3;
const COLON: u32 = 1 << 4;
const SLASH: u32 = 1 << 5;
const EQUALS: u32 = 1 << 6;
const AT: u32 = 1 << 7;
// Letters in either case, which the scheme words and key prefixes are made of.
const LETTER_B: u32 = 1 << 8;
const LETTER_G: u32 = 1 << 9;
const LETTER_H: u32 = 1 << 10;
const LETTER_K: u32 = 1 << 11;
const LETTER_R: u32 = 1 << 12;
const LETTER_S: u32 = 1 << 13;
const LETTER_T: u32 = 1 << 14;
const LETTER_X: u32 = 1 << 15;

/// The classes of each byte value, looked up once per byte.
const CLASS: [u32; 256] = {
    let mut class = [0; 256];
    class[b' ' as usize] = SPACE;
    class[b'\t' as usize] = SPACE;
    class[b'%' as usize] = SPACE;
    class[b'-' as usize] = KEY_SEPARATOR;
    class[b'_' as usize] = KEY_SEPARATOR;
    class[b'J' as usize] = CAPITAL_J;
    class[b':' as usize] = COLON;
    class[b'/' as usize] = SLASH;
    class[b'=' as usize] = EQUALS;
    class[b'@' as usize] = AT;
    let letters = [
        (b'b', LETTER_B),
        (b'g', LETTER_G),
        (b'h', LETTER_H),
        (b'k', LETTER_K),
        (b'r', LETTER_R),
        (b's', LETTER_S),
        (b't', LETTER_T),
        (b'x', LETTER_X),
    ];
    let mut i = 0;
    while i < letters.len() {
        let (letter, bit) = letters[i];
        class[letter as usize] = bit;
        class[letter.to_ascii_uppercase() as usize] = bit;
        i += 1;
    }
    class[b'A' as usize] = CAPITAL_A;
    class
};

/// The classes of the bytes `bytes` holds: one table look-up per byte.
fn classes(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |seen, &b| seen | CLASS[b as usize])
}

/// What `Bearer`, `Basic` and `Token` hold, at the least.
const SCHEME_NEEDS: [u32; 3] = [
    LETTER_B | LETTER_R,
    LETTER_B | LETTER_S,
    LETTER_T | LETTER_K,
];

/// What the known prefixes with a `-` or `_` hold, at the least (`sk`, `rk`, `gh`, `x`),
/// and the shortest key each family matches (`sk_live_` and 10 characters, `ghp_` and 20,
/// `xoxb-` and 10).
const PREFIX_NEEDS: [(u32, usize); 4] = [
    (KEY_SEPARATOR | LETTER_S | LETTER_K, 18),
    (KEY_SEPARATOR | LETTER_R | LETTER_K, 18),
    (KEY_SEPARATOR | LETTER_G | LETTER_H, 24),
    (KEY_SEPARATOR | LETTER_X, 15),
];

/// The shortest AWS or Google key: `AKIA` and 16 characters.
const SHORTEST_CAPITAL_A_KEY: usize = 20;

/// The most letters and digits a known prefix has before its first `-` or `_` (`github_`).
const LONGEST_WORD: usize = 6;

/// Finds secrets inside text, as configured.
pub struct Scanner {
    /// `Bearer`, `Basic` and `Token` credentials.
    schemes: bool,
    /// Known and configured key prefixes.
    api_keys: bool,
    jwts: bool,
    /// URL userinfo passwords and `name=value` pairs with a secret name.
    credentials: bool,
    /// Configured prefixes, lower-case.
    patterns: Vec<Vec<u8>>,
    /// The first two bytes of each known or configured prefix, lower-case: a word start
    /// without one of them is not compared with the prefixes at all.
    starts: Vec<[u8; 2]>,
}

impl Scanner {
    /// A scanner; `patterns` are extra literal key prefixes, matched in any case.
    pub fn new(
        schemes: bool,
        api_keys: bool,
        jwts: bool,
        credentials: bool,
        patterns: &[String],
    ) -> Self {
        let patterns: Vec<Vec<u8>> = patterns
            .iter()
            .map(|p| p.trim().to_ascii_lowercase().into_bytes())
            .filter(|p| !p.is_empty())
            .collect();
        let mut starts: Vec<[u8; 2]> = PREFIXES
            .iter()
            .chain([&GOOGLE])
            .map(|p| p.text)
            .chain(patterns.iter().map(Vec::as_slice))
            .map(|p| [p.first(), p.get(1)].map(|b| b.map_or(0, u8::to_ascii_lowercase)))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        Self {
            schemes,
            api_keys,
            jwts,
            credentials,
            patterns,
            starts,
        }
    }

    /// Appends the secrets of `text` to `found` (unsorted, possibly overlapping); e-mail
    /// addresses only when `emails`. `rules` decides which `name=value` names are secret.
    pub fn find(&self, text: &str, emails: bool, rules: &KeyRules, found: &mut Vec<Found>) {
        let bytes = text.as_bytes();
        // The shortest secret found (`pwd=x`, `a@b.io`) is five bytes or more.
        if bytes.len() < 5 {
            return;
        }
        work(bytes.len());
        // One pass notes which classes of bytes the text holds: for the short values most
        // attributes have, cheaper than a `memchr` call per pattern.
        let seen = classes(bytes);
        let has = |bits: u32| seen & bits == bits;
        let separator = seen & (SPACE | COLON | EQUALS) != 0;
        // The scans are kept out of line: most texts need none of them, and this function
        // stays small, cheap to enter and leave.
        if self.schemes && bytes.len() >= 12 && separator && SCHEME_NEEDS.into_iter().any(has) {
            schemes(bytes, found);
        }
        let known_key = PREFIX_NEEDS
            .into_iter()
            .any(|(needs, shortest)| bytes.len() >= shortest && has(needs))
            || bytes.len() >= SHORTEST_CAPITAL_A_KEY && has(CAPITAL_A);
        if self.api_keys && (known_key || !self.patterns.is_empty()) {
            self.prefixed(bytes, found);
        }
        if self.jwts && bytes.len() >= 20 && has(CAPITAL_J) {
            jwts(bytes, found);
        }
        if self.credentials {
            if has(COLON | SLASH) {
                userinfo(bytes, found);
            }
            if seen & (COLON | EQUALS) != 0 {
                key_values(text, rules, found);
            }
        }
        if emails && has(AT) {
            emails_in(text, found);
        }
    }

    /// Keys with a known or configured prefix, at the start of a word.
    #[inline(never)] // see `Scanner::find`
    fn prefixed(&self, bytes: &[u8], found: &mut Vec<Found>) {
        // The end of the run of key characters last measured: a prefix inside that run
        // ends where it does.
        let mut run_end = 0;
        let word_start = |i: usize| i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if !self.patterns.is_empty() {
            // A configured prefix may be any text: every word start is compared.
            for i in (0..bytes.len()).filter(|&i| word_start(i)) {
                self.prefix_at(bytes, i, &mut run_end, found);
            }
            return;
        }
        // A known prefix is `A` at a word start (`AKIA`, `ASIA`, `AIza`), or has a `-` or
        // `_` at most six letters or digits after its word start: only the word starts
        // found from these bytes are compared. They come in order, each once.
        let mut next = 0;
        for at in memchr::memchr3_iter(b'-', b'_', b'A', bytes) {
            let start = if bytes[at] == b'A' {
                at
            } else {
                let word = bytes[..at]
                    .iter()
                    .rev()
                    .take(LONGEST_WORD + 1)
                    .take_while(|b| b.is_ascii_alphanumeric())
                    .count();
                work(word);
                if word == 0 || word > LONGEST_WORD {
                    continue;
                }
                at - word
            };
            if start >= next && word_start(start) {
                next = start + 1;
                self.prefix_at(bytes, start, &mut run_end, found);
            }
        }
    }

    /// A key with a known or configured prefix at word start `i`; `run_end` as in
    /// [`Self::prefixed`].
    fn prefix_at(&self, bytes: &[u8], i: usize, run_end: &mut usize, found: &mut Vec<Found>) {
        let pair =
            [bytes[i], bytes.get(i + 1).copied().unwrap_or(0)].map(|b| b.to_ascii_lowercase());
        if !self.starts.contains(&pair) {
            return;
        }
        let rest = &bytes[i..];
        let configured = self.patterns.iter().find_map(|p| {
            (rest.len() > p.len() && rest[..p.len()].eq_ignore_ascii_case(p)).then_some((
                p.len(),
                PATTERN_BODY,
                Kind::ApiKey,
            ))
        });
        let known = PREFIXES.iter().chain([&GOOGLE]).find_map(|p| {
            let n = p.text.len();
            let matches = rest.len() > n
                && if p.exact_case {
                    &rest[..n] == p.text
                } else {
                    rest[..n].eq_ignore_ascii_case(p.text)
                };
            match p.body {
                _ if !matches => None,
                Body::AtLeast(min) => Some((n, min, Kind::ApiKey)),
                Body::Aws => {
                    let body = &rest[n..];
                    let aws = body.len() >= 16
                        && body[..16]
                            .iter()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                        && !body.get(16).is_some_and(u8::is_ascii_alphanumeric);
                    aws.then_some((n, 16, Kind::ApiKey))
                }
            }
        });
        let Some((n, min, kind)) = known.or(configured) else {
            return;
        };
        let start = i + n;
        if *run_end <= start {
            let run = bytes[start..]
                .iter()
                .take_while(|b| is_key_byte(**b))
                .count();
            work(run);
            *run_end = start + run;
        }
        if *run_end - start >= min {
            found.push((i, *run_end, kind));
        }
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'%')
}

/// The credential after `Bearer`, `Basic` or `Token` (any case) and a separator (spaces,
/// tabs, `:`, `=`, `%20`): at least 8 token characters; after `Basic` and `Token` it must
/// also look generated (a digit, an inner capital, or base64 `+/=`), so prose such as
/// "token expired" or "basic information" stays.
#[inline(never)] // see `Scanner::find`
fn schemes(bytes: &[u8], found: &mut Vec<Found>) {
    let mut run_end = 0;
    for i in 0..bytes.len() {
        if !matches!(bytes[i] | 0x20, b'b' | b't') || i > 0 && bytes[i - 1].is_ascii_alphanumeric()
        {
            continue;
        }
        let rest = &bytes[i..];
        let (word, kind, loose) = if rest.len() > 6 && rest[..6].eq_ignore_ascii_case(b"bearer") {
            (6, Kind::BearerToken, true)
        } else if rest.len() > 5 && rest[..5].eq_ignore_ascii_case(b"basic") {
            (5, Kind::BasicAuth, false)
        } else if rest.len() > 5 && rest[..5].eq_ignore_ascii_case(b"token") {
            (5, Kind::BearerToken, false)
        } else {
            continue;
        };
        let mut start = i + word;
        // Separators hold no scheme word, so the runs of them skipped never overlap.
        loop {
            match bytes.get(start..) {
                Some([b' ' | b'\t' | b':' | b'=', ..]) => start += 1,
                Some([b'%', b'2', b'0', ..]) => start += 3,
                _ => break,
            }
        }
        work(start - i);
        if start == i + word {
            continue;
        }
        if run_end <= start {
            let run = bytes[start..]
                .iter()
                .take_while(|b| is_token_byte(**b))
                .count();
            work(run);
            run_end = start + run;
        }
        let credential = &bytes[start..run_end];
        let generated = || {
            credential
                .iter()
                .any(|b| b.is_ascii_digit() || matches!(b, b'+' | b'/' | b'='))
                || credential.iter().skip(1).any(u8::is_ascii_uppercase)
        };
        if credential.len() >= 8 && (loose || generated()) {
            found.push((start, run_end, kind));
        }
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')
}

/// JWTs: `eyJ…` (a base64url JSON header), `.`, a payload, `.`, a signature (possibly empty).
#[inline(never)] // see `Scanner::find`
fn jwts(bytes: &[u8], found: &mut Vec<Found>) {
    let segment = |from: usize| {
        let n = bytes[from..]
            .iter()
            .take_while(|b| is_base64url(**b))
            .count();
        work(n);
        from + n
    };
    // The end of the header run last measured: a later `eyJ` inside it has the same
    // structure after it, only a shorter header.
    let mut header_end = 0;
    for at in memchr::memmem::find_iter(bytes, b"eyJ") {
        if at < header_end || at > 0 && bytes[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        header_end = segment(at);
        if header_end - at < 10 || bytes.get(header_end) != Some(&b'.') {
            continue;
        }
        let payload_end = segment(header_end + 1);
        if payload_end - header_end < 3 || bytes.get(payload_end) != Some(&b'.') {
            continue;
        }
        found.push((at, segment(payload_end + 1), Kind::Jwt));
    }
}

/// The password of `scheme://user:password@host`; the user name stays.
#[inline(never)] // see `Scanner::find`
fn userinfo(bytes: &[u8], found: &mut Vec<Found>) {
    for at in memchr::memmem::find_iter(bytes, b"://") {
        let start = at + 3;
        // The authority ends at a `/`, so it never holds the next `://`.
        let authority = bytes[start..]
            .iter()
            .position(|b| {
                matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>')
                    || b.is_ascii_whitespace()
            })
            .map_or(bytes.len(), |n| start + n);
        work(authority - start);
        let Some(user_end) = memchr::memrchr(b'@', &bytes[start..authority]).map(|n| start + n)
        else {
            continue;
        };
        let Some(colon) = memchr::memchr(b':', &bytes[start..user_end]).map(|n| start + n) else {
            continue;
        };
        let password = &bytes[colon + 1..user_end];
        if !password.is_empty() && password != REDACTED.as_bytes() {
            found.push((colon + 1, user_end, Kind::UrlCredentials));
        }
    }
}

/// Bytes that end the value of `name=value`.
fn ends_value(b: u8) -> bool {
    b.is_ascii_whitespace()
        || matches!(
            b,
            b'&' | b'#' | b';' | b',' | b'"' | b'\'' | b'<' | b'>' | b')' | b']' | b'}'
        )
}

/// The value of `name=value`, `name: value` or `"name": "value"` whose name is secret
/// (`?password=…`, `client_secret=…`, `X-Amz-Signature=…`), up to the first space, `&`,
/// quote or delimiter. A `Bearer`/`Basic`/`Token` value is left to [`schemes`], which
/// masks the credential after it.
#[inline(never)] // see `Scanner::find`
fn key_values(text: &str, rules: &KeyRules, found: &mut Vec<Found>) {
    let bytes = text.as_bytes();
    let mut value_end = 0;
    for at in memchr::memchr2_iter(b'=', b':', bytes) {
        let colon = bytes[at] == b':';
        if colon && bytes[at + 1..].starts_with(b"//") {
            continue;
        }
        let quoted = at > 0 && matches!(bytes[at - 1], b'"' | b'\'');
        // `name:value` without a space or quotes is a label (`auth:login`), not a field.
        if colon && !quoted && !matches!(bytes.get(at + 1), Some(b' ' | b'\t')) {
            continue;
        }
        let name_end = if quoted { at - 1 } else { at };
        // Names are short: looking back at most 64 bytes keeps this linear.
        let name_start = name_end
            - bytes[..name_end]
                .iter()
                .rev()
                .take(65)
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                .count();
        work(name_end - name_start);
        if name_start == name_end || name_end - name_start > 64 {
            continue;
        }
        let name = &text[name_start..name_end];
        let secret = if colon {
            rules.secret(name)
        } else {
            rules.secret_name(name)
        };
        if !secret {
            continue;
        }
        let mut start = at + 1;
        while matches!(bytes.get(start), Some(b' ' | b'\t')) {
            start += 1;
        }
        if matches!(bytes.get(start), Some(b'"' | b'\'')) {
            start += 1;
        }
        if start < value_end {
            continue; // inside a value measured already: masked, or not, with it
        }
        let run = bytes[start..]
            .iter()
            .take_while(|b| !ends_value(**b))
            .count();
        work(run);
        value_end = start + run;
        let value = &bytes[start..value_end];
        let scheme = [&b"bearer"[..], b"basic", b"token"]
            .iter()
            .any(|s| value.eq_ignore_ascii_case(s));
        if !value.is_empty() && !value.starts_with(REDACTED.as_bytes()) && !scheme {
            found.push((start, value_end, Kind::KeyValue));
        }
    }
}

/// E-mail addresses `local@domain.tld`, Unicode (IDN) local parts and domains included;
/// a host without a dot (`user@localhost`) is not one.
#[inline(never)] // see `Scanner::find`
fn emails_in(text: &str, found: &mut Vec<Found>) {
    let bytes = text.as_bytes();
    for at in memchr::memchr_iter(b'@', bytes) {
        // Stopping at ASCII bytes (or the ends) keeps both ranges on character boundaries.
        let local = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| {
                b.is_ascii_alphanumeric()
                    || !b.is_ascii()
                    || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
            })
            .count();
        let domain = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || !b.is_ascii() || matches!(b, b'.' | b'-'))
            .count();
        // Neither part holds an `@`: each stretch between two is scanned at most twice.
        work(local + domain);
        let local_text = text[at - local..at].trim_start_matches(|c: char| !c.is_alphanumeric());
        let domain_text =
            text[at + 1..at + 1 + domain].trim_end_matches(|c: char| !c.is_alphanumeric());
        let tld = domain_text.rsplit_once('.').map(|(_, tld)| tld);
        let valid = !local_text.is_empty()
            && tld.is_some_and(|t| {
                t.starts_with("xn--")
                    || t.chars().count() >= 2 && t.chars().all(char::is_alphabetic)
            });
        if valid {
            found.push((
                at - local_text.len(),
                at + 1 + domain_text.len(),
                Kind::Email,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gates in [`Scanner::find`] must never skip a text a pattern could match: each
    /// scheme word and known prefix, in any case, holds the classes its gate asks for.
    #[test]
    fn every_scheme_word_and_known_prefix_passes_its_gate() {
        let passes = |text: &[u8], needs: &[u32]| {
            let seen = classes(text);
            needs.iter().any(|n| n & !seen == 0)
        };
        for word in [&b"bearer"[..], b"basic", b"token"] {
            for cased in [word.to_ascii_lowercase(), word.to_ascii_uppercase()] {
                assert!(passes(&cased, &SCHEME_NEEDS), "{cased:?}");
            }
        }
        for p in PREFIXES.iter().chain([&GOOGLE]) {
            let shortest = p.text.len()
                + match p.body {
                    Body::AtLeast(min) => min,
                    Body::Aws => 16,
                };
            if p.exact_case {
                assert!(p.text.starts_with(b"A"), "{:?}", p.text);
                assert!(shortest >= SHORTEST_CAPITAL_A_KEY, "{:?}", p.text);
                continue;
            }
            let word = p
                .text
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            assert!(word <= LONGEST_WORD, "{:?}", p.text);
            for cased in [p.text.to_ascii_lowercase(), p.text.to_ascii_uppercase()] {
                let seen = classes(&cased);
                assert!(
                    PREFIX_NEEDS
                        .iter()
                        .any(|&(needs, least)| needs & !seen == 0 && least <= shortest),
                    "{cased:?}"
                );
            }
        }
    }
}

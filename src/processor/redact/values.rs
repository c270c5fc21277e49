//! Secrets inside text: `Bearer`/`Basic`/`Token` credentials, known API-key prefixes,
//! JWTs, URL userinfo passwords, `name=value` pairs with a secret name, e-mail addresses.
//!
//! One pass over the text notes which trigger bytes it holds; a pattern is only looked for
//! when the bytes it cannot do without are there, so most values are scanned once, cheaply.
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

/// Bits of [`triggers`]: a separator after `Bearer`/`Basic`/`Token`.
const SEPARATOR: u8 = 1;
/// A byte every known key prefix holds (`-`, `_`, or the `A` of `AKIA`, `ASIA`, `AIza`).
const KEY_MARK: u8 = 2;
/// The `J` of a JWT's `eyJ`.
const CAPITAL_J: u8 = 4;
const COLON: u8 = 8;
const SLASH: u8 = 16;
const EQUALS: u8 = 32;
const AT: u8 = 64;

/// Which trigger bytes `bytes` holds, as bits. Comparisons without branches, so the
/// compiler checks many bytes at once.
fn triggers(bytes: &[u8]) -> u8 {
    let (mut space, mut key, mut j, mut colon, mut slash, mut equals, mut at) =
        (false, false, false, false, false, false, false);
    for &b in bytes {
        space |= (b == b' ') | (b == b'\t') | (b == b'%');
        key |= (b == b'-') | (b == b'_') | (b == b'A');
        j |= b == b'J';
        colon |= b == b':';
        slash |= b == b'/';
        equals |= b == b'=';
        at |= b == b'@';
    }
    let bit = |on: bool, bit: u8| if on { bit } else { 0 };
    bit(space | colon | equals, SEPARATOR)
        | bit(key, KEY_MARK)
        | bit(j, CAPITAL_J)
        | bit(colon, COLON)
        | bit(slash, SLASH)
        | bit(equals, EQUALS)
        | bit(at, AT)
}

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
        // One pass notes which trigger bytes the text holds: for the short values most
        // attributes have, cheaper than a `memchr` call per pattern.
        let seen = triggers(bytes);
        if seen == 0 && self.patterns.is_empty() {
            return;
        }
        if self.schemes && bytes.len() >= 12 && seen & SEPARATOR != 0 {
            schemes(bytes, found);
        }
        if self.api_keys && (!self.patterns.is_empty() || bytes.len() >= 15 && seen & KEY_MARK != 0)
        {
            self.prefixed(bytes, found);
        }
        if self.jwts && bytes.len() >= 20 && seen & CAPITAL_J != 0 {
            jwts(bytes, found);
        }
        if self.credentials {
            if seen & (COLON | SLASH) == COLON | SLASH {
                userinfo(bytes, found);
            }
            if seen & (COLON | EQUALS) != 0 {
                key_values(text, rules, found);
            }
        }
        if emails && seen & AT != 0 {
            emails_in(text, found);
        }
    }

    /// Keys with a known or configured prefix, at the start of a word.
    fn prefixed(&self, bytes: &[u8], found: &mut Vec<Found>) {
        // The end of the run of key characters last measured: a prefix inside that run
        // ends where it does.
        let mut run_end = 0;
        for i in 0..bytes.len() {
            if i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let pair =
                [bytes[i], bytes.get(i + 1).copied().unwrap_or(0)].map(|b| b.to_ascii_lowercase());
            if !self.starts.contains(&pair) {
                continue;
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
                continue;
            };
            let start = i + n;
            if run_end <= start {
                let run = bytes[start..]
                    .iter()
                    .take_while(|b| is_key_byte(**b))
                    .count();
                work(run);
                run_end = start + run;
            }
            if run_end - start >= min {
                found.push((i, run_end, kind));
            }
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

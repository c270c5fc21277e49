//! [`Secret`]: a config value that is never shown (header values, passwords, tokens).
//!
//! Its `Debug`, `Display` and `Serialize` all write `***` (unless `check`'s masked copy
//! judged it no credential, see [`Config::masked`](super::Config::masked)), so a secret cannot reach a log
//! line, an error, a panic or `check` output by accident; the value leaves only through
//! [`Secret::expose`], so `grep -rn '\.expose()'` lists every place a secret is sent.
//! YAML reads it as a plain string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret looks like wherever it is shown.
pub const MASK: &str = "***";

/// A string that is shown as `***` and given out only by [`expose`](Self::expose).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    value: String,
    /// Judged not to be a credential (a tenant header in `check`'s copy): shown as it is.
    readable: bool,
}

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            readable: false,
        }
    }

    /// A copy shown as it is, for a value [`Config::masked`](super::Config::masked) judged
    /// not to be a credential (`x-scope-orgid: daena`).
    pub(super) fn readable(&self) -> Self {
        Self {
            value: self.value.clone(),
            readable: true,
        }
    }

    /// The value itself, for the one place it is really sent (a request header).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// What is shown of it: `***`, or the value when it is readable.
    fn shown(&self) -> &str {
        if self.readable { &self.value } else { MASK }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.readable {
            write!(f, "{:?}", self.value)
        } else {
            f.write_str(MASK)
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The only YAML the agent writes is for people to read (`check`).
        serializer.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// What to do about a credential that is still a placeholder.
const PLACEHOLDER_ADVICE: &str = "is still a placeholder from the tracing guide; set the real credentials (e.g. Basic base64(instance-id:token))";

/// Whether a credential is still a placeholder copied from a guide instead of a real value:
/// `<...>` (`Basic <base64-encoded-credentials>`), `replace-me`, `changeme`, `your-api-key`,
/// a `${VAR}` left as written, or nothing after `Basic `/`Bearer `. Refusing it at start-up
/// beats a backend answering 401 on every export.
pub(super) fn is_placeholder(value: &str) -> bool {
    let value = value.trim();
    let lower = value.to_ascii_lowercase();
    let squeezed: String = lower.chars().filter(|c| !"-_ ".contains(*c)).collect();
    let angle_brackets = value
        .find('<')
        .is_some_and(|open| value[open..].contains('>'));
    let your_word = lower
        .split_whitespace()
        .any(|word| word.starts_with("your-") || word.starts_with("your_"));
    angle_brackets
        || your_word
        || value.contains("${")
        || ["replaceme", "changeme"]
            .iter()
            .any(|w| squeezed.contains(w))
        || ["basic", "bearer"].contains(&lower.as_str())
}

/// The error for header `name` whose value [`is_placeholder`], for the variable or key
/// naming the headers; it never shows the value.
pub(super) fn placeholder_message(name: &str) -> String {
    format!("the value of {name} {PLACEHOLDER_ADVICE}")
}

/// The error for a URL whose `user:password@` has an empty or placeholder password (or a
/// placeholder user), if it has; it never shows the credentials.
pub(super) fn endpoint_placeholder(url: &str) -> Option<String> {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority = url[authority_start..]
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (user, password) = (decode(user), decode(password));
    (password.is_empty() || is_placeholder(&user) || is_placeholder(&password)).then(|| {
        "the password in the URL's user:password@ is empty or still a placeholder from the tracing guide; set the real credentials (e.g. https://instance-id:token@host)".to_owned()
    })
}

/// The error for a config key (`exporters.tempo.headers.authorization`) whose value
/// [`is_placeholder`]; it never shows the value.
pub(super) fn placeholder_key_message() -> String {
    format!("the value {PLACEHOLDER_ADVICE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_from_guides_are_recognised_and_real_credentials_are_not() {
        let table = [
            ("Basic <base64-encoded-credentials>", true),
            ("Bearer <token>", true),
            ("<your-api-key>", true),
            ("replace-me", true),
            ("REPLACE_ME", true),
            ("Bearer changeme", true),
            ("change-me", true),
            ("your-api-key", true),
            ("Bearer YOUR_TOKEN", true),
            ("Basic ${GRAFANA_CLOUD_AUTH}", true),
            ("Basic ", true),
            ("Bearer", true),
            ("Basic MTIzNDU2OmdsY19leUp2SWpvaU1USXpORFUySW4wPQ==", false),
            (
                "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
                false,
            ),
            ("daena", false),
            ("tenant-1", false),
            ("a<b", false),
        ];
        for (value, placeholder) in table {
            assert_eq!(is_placeholder(value), placeholder, "{value:?}");
        }
    }

    #[test]
    fn an_empty_or_placeholder_password_in_a_url_is_refused_without_showing_it() {
        for url in [
            "https://123456:@otlp.example.net/otlp",
            "https://123456:replace-me@otlp.example.net",
            "https://123456:%3Ctoken%3E@otlp.example.net",
        ] {
            let message = endpoint_placeholder(url).expect(url);
            assert!(
                !message.contains("123456") && !message.contains("replace"),
                "{message}"
            );
        }
        for url in [
            "https://123456:glc_real@otlp.example.net/otlp",
            "https://token@otlp.example.net",
            "http://localhost:4317",
            "http://h:4317/p?email=a:@b",
        ] {
            assert_eq!(endpoint_placeholder(url), None, "{url}");
        }
    }

    #[test]
    fn debug_display_and_yaml_show_the_mask_and_expose_gives_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", Some(&secret)), "Some(***)");
        assert_eq!(secret.expose(), "hunter2");
        let yaml = serde_saphyr::to_string(&secret).expect("serialize");
        assert!(!yaml.contains("hunter2"), "{yaml}");
        assert!(yaml.contains("***"), "{yaml}");
    }

    #[test]
    fn yaml_reads_a_plain_string() {
        let secret: Secret = serde_saphyr::from_str("\"hunter2\"").expect("string");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(secret, Secret::from("hunter2"));
    }
}

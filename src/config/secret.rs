//! [`Secret`]: a config value that is never shown (header values, passwords, tokens).
//!
//! Its `Debug`, `Display` and `Serialize` all write `***`, so a secret cannot reach a log
//! line, an error, a panic or `check` output by accident; the value leaves only through
//! [`Secret::expose`], so `grep -rn '\.expose()'` lists every place a secret is sent.
//! YAML reads it as a plain string.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret looks like wherever it is shown.
pub const MASK: &str = "***";

/// A string that is shown as `***` and given out only by [`expose`](Self::expose).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place it is really sent (a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The only YAML the agent writes is for people to read (`check`).
        serializer.serialize_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

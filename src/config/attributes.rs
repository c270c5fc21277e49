//! `processors.attributes`: ordered actions on span attributes (insert, update, upsert,
//! delete, hash) with the OpenTelemetry Collector's attributes-processor semantics, each
//! optionally limited to span names and resources.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::filter::{MatchValue, validate_values};
use super::yaml::Located;
use super::{ConfigError, Secret};

/// The shortest `hash_key` accepted, in bytes: shorter keys make the hashes guessable.
pub const MIN_HASH_KEY_BYTES: usize = 16;

/// `processors.attributes`; the stage runs when there is at least one action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributesConfig {
    /// The HMAC-SHA256 key of `action: hash` (a secret, never shown); required when an
    /// action hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<Secret>,
    /// The actions, applied in order to every span's attributes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Located<AttributeAction>>,
}

impl AttributesConfig {
    /// Whether nothing is set, so `check` leaves the section out.
    pub fn is_empty(&self) -> bool {
        self.hash_key.is_none() && self.actions.is_empty()
    }
}

/// One action on the span attribute `key`, where its conditions hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeAction {
    /// The attribute's key.
    pub key: String,
    /// What is done to it.
    pub action: ActionKind,
    /// The value written by insert, update and upsert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<AttributeValue>,
    /// Applies only to spans with this name: exact, or a glob with `*` and `?`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_name: Option<String>,
    /// Applies only to spans whose resource attributes match all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, MatchValue>,
}

/// What an action does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Adds the value where the key is absent.
    Insert,
    /// Replaces the value where the key is present.
    Update,
    /// Sets the value whether the key is present or not.
    Upsert,
    /// Removes the key.
    Delete,
    /// Replaces a present value by the hex HMAC-SHA256 of its string form.
    Hash,
}

impl ActionKind {
    /// Every kind, in the order metrics list them.
    pub const ALL: [Self; 5] = [
        Self::Insert,
        Self::Update,
        Self::Upsert,
        Self::Delete,
        Self::Hash,
    ];

    /// The name used in the config and as the `action` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Upsert => "upsert",
            Self::Delete => "delete",
            Self::Hash => "hash",
        }
    }

    /// Whether the action writes a configured `value`.
    pub fn takes_value(self) -> bool {
        matches!(self, Self::Insert | Self::Update | Self::Upsert)
    }
}

/// A scalar attribute value as written in YAML: a boolean, an int, a double or a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttributeValue {
    /// A boolean attribute.
    Bool(bool),
    /// An int attribute.
    Int(i64),
    /// A double attribute.
    Double(f64),
    /// A string attribute.
    Text(String),
}

/// Every problem of `processors.attributes`, each naming its action and the action's line.
pub fn validate(config: &AttributesConfig, errors: &mut Vec<ConfigError>) {
    if let Some(key) = &config.hash_key
        && key.expose().len() < MIN_HASH_KEY_BYTES
    {
        // The key itself is never part of the message.
        errors.push(ConfigError::new(
            "processors.attributes.hash_key",
            format!("is too short to keep hashes from being guessed; set hash_key: ${{VAR}} to a secret of {MIN_HASH_KEY_BYTES} bytes or more"),
        ));
    }
    for (i, action) in config.actions.iter().enumerate() {
        let at = if action.line > 0 {
            format!("processors.attributes.actions[{i}] (line {})", action.line)
        } else {
            format!("processors.attributes.actions[{i}]")
        };
        let action = &action.value;
        let kind = action.action.name();
        if action.key.trim().is_empty() {
            errors.push(ConfigError::new(
                &at,
                "key is empty; name the attribute, e.g. key: user.email",
            ));
        }
        match (&action.value, action.action.takes_value()) {
            (None, true) => errors.push(ConfigError::new(
                &at,
                format!("action {kind} needs a value; add value: (a string, number or boolean)"),
            )),
            (Some(_), false) => errors.push(ConfigError::new(
                &at,
                format!("action {kind} takes no value; remove value:"),
            )),
            (Some(AttributeValue::Double(d)), true) if !d.is_finite() => {
                errors.push(ConfigError::new(&at, "value is not a finite number"))
            }
            _ => {}
        }
        if action.action == ActionKind::Hash && config.hash_key.is_none() {
            errors.push(ConfigError::new(
                &at,
                format!("action hash needs processors.attributes.hash_key; set hash_key: ${{VAR}} to a secret of {MIN_HASH_KEY_BYTES} bytes or more"),
            ));
        }
        if action
            .span_name
            .as_deref()
            .is_some_and(|name| name.is_empty())
        {
            errors.push(ConfigError::new(
                &at,
                "span_name is empty; remove it or give a name or a glob such as \"GET /internal/*\"",
            ));
        }
        validate_values("resource", &action.resource, &at, errors);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// The config `yaml` parses to (with `env`), and its validation errors as `path: message`.
    fn validated(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let config =
            crate::config::yaml::parse(yaml, Path::new("agent.yaml"), env).expect("parses");
        let errors = config
            .validate()
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        (config, errors)
    }

    const KEY: &str = "0123456789abcdef-not-a-real-key";

    fn env(name: &str) -> Option<String> {
        (name == "DAENA_ATTRIBUTES_HASH_KEY").then(|| KEY.to_owned())
    }

    #[test]
    fn actions_read_with_their_values_conditions_and_lines() {
        let (config, errors) = validated(
            "processors:
  attributes:
    hash_key: ${DAENA_ATTRIBUTES_HASH_KEY}
    actions:
      - { key: deployment.environment.name, action: insert, value: production }
      - { key: retries, action: upsert, value: 3 }
      - { key: ratio, action: update, value: 0.5 }
      - { key: sampled, action: upsert, value: true }
      - { key: user.email, action: hash }
      - key: http.request.header.x_debug
        action: delete
        span_name: \"GET /internal/*\"
        resource: { service.name: \"council-*\" }
",
            &env,
        );
        assert_eq!(errors, Vec::<String>::new());
        let attributes = &config.processors.attributes;
        assert_eq!(attributes.hash_key.as_ref().map(Secret::expose), Some(KEY));
        let values: Vec<_> = attributes
            .actions
            .iter()
            .map(|a| a.value.value.clone())
            .collect();
        assert_eq!(
            values,
            [
                Some(AttributeValue::Text("production".into())),
                Some(AttributeValue::Int(3)),
                Some(AttributeValue::Double(0.5)),
                Some(AttributeValue::Bool(true)),
                None,
                None,
            ]
        );
        let last = &attributes.actions[5];
        assert_eq!(last.line, 10);
        assert_eq!(last.value.action, ActionKind::Delete);
        assert_eq!(last.value.span_name.as_deref(), Some("GET /internal/*"));
        assert_eq!(
            last.value.resource.get("service.name"),
            Some(&MatchValue::Text("council-*".into()))
        );
    }

    #[test]
    fn bad_actions_are_reported_with_their_index_and_line() {
        let (_, errors) = validated(
            "processors:
  attributes:
    actions:
      - { key: a, action: insert }
      - { key: b, action: delete, value: x }
      - { key: \" \", action: upsert, value: 1 }
      - { key: user.email, action: hash }
      - { key: c, action: delete, span_name: \"\", resource: { http.status_code: \">= x\" } }
",
            &|_| None,
        );
        let expected = [
            "processors.attributes.actions[0] (line 4): action insert needs a value",
            "processors.attributes.actions[1] (line 5): action delete takes no value",
            "processors.attributes.actions[2] (line 6): key is empty",
            "processors.attributes.actions[3] (line 7): action hash needs processors.attributes.hash_key; set hash_key: ${VAR} to a secret of 16 bytes or more",
            "processors.attributes.actions[4] (line 8): span_name is empty",
            "processors.attributes.actions[4] (line 8): resource.http.status_code: \">= x\" is not a comparison",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(
                error.starts_with(expected),
                "{error} should start with {expected}"
            );
        }
    }

    #[test]
    fn an_unknown_action_or_field_is_refused_by_the_parser() {
        for yaml in [
            "processors:\n  attributes:\n    actions:\n      - { key: a, action: rename }\n",
            "processors:\n  attributes:\n    actions:\n      - { key: a, action: delete, pattern: x }\n",
        ] {
            let parsed = crate::config::yaml::parse(yaml, Path::new("agent.yaml"), &|_| None);
            assert!(parsed.is_err(), "{yaml}");
        }
    }

    #[test]
    fn a_short_hash_key_is_refused_without_being_shown() {
        let (_, errors) = validated(
            "processors:\n  attributes:\n    hash_key: sh0rt-s3cret\n    actions: []\n",
            &|_| None,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("processors.attributes.hash_key: is too short"),
            "{errors:?}"
        );
        assert!(errors[0].contains("16 bytes or more"), "{errors:?}");
        assert!(!errors[0].contains("sh0rt-s3cret"), "{errors:?}");
    }

    #[test]
    fn the_hash_key_never_reaches_check_output_or_debug() {
        let (config, errors) = validated(
            "processors:
  attributes:
    hash_key: ${DAENA_ATTRIBUTES_HASH_KEY}
    actions:
      - { key: user.email, action: hash }
",
            &env,
        );
        assert_eq!(errors, Vec::<String>::new());
        let shown = config.masked().to_yaml();
        assert!(!shown.contains(KEY), "{shown}");
        let line = shown
            .lines()
            .find(|line| line.trim_start().starts_with("hash_key:"))
            .unwrap_or_default();
        assert!(line.contains("***"), "{shown}");
        assert!(!format!("{config:?}").contains(KEY));
    }
}

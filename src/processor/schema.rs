//! The Daena schema as the `daena` stage reads it: the effective rows of
//! [`config::schema`](crate::config::schema) (built-in and from YAML), indexed for lookup.
//!
//! Lookups happen only when a key misses the stage's key cache, so they may be a scan.

use crate::config::schema::{self as rows, DERIVED_MIRRORS, SchemaRow, ValueType};

pub use crate::config::schema::same_key;

/// How a canonical attribute's value is normalised.
#[derive(Debug)]
pub enum ValueRule {
    /// One of these values; each with the other spellings that mean it (compared after
    /// trimming, ignoring ASCII case; an int is compared as its decimal string).
    OneOf(Vec<(String, Vec<String>)>),
    /// A boolean: `true/false` in any case, `1/0` (string or int), `yes/no`.
    Bool,
    /// A double; an int or a numeric string is converted.
    Double,
    /// An int; a numeric string or a whole double is converted.
    Int,
    /// A string identifier; an int becomes its decimal string.
    Id,
    /// A string, trimmed.
    Text,
}

/// One row of the schema.
#[derive(Debug)]
pub struct Field {
    /// The canonical key.
    pub key: String,
    /// What its value must be.
    pub rule: ValueRule,
    /// Other keys that mean the same.
    aliases: Vec<String>,
    /// Its family, an index into [`Schema::families`].
    pub family: usize,
    /// The semconv key given a copy of its value, an index into [`Schema::mirrors`].
    pub mirror: Option<usize>,
}

/// The index in [`Schema::mirrors`] of `messaging.system`.
pub const MIRROR_SYSTEM: usize = 0;
/// The index in [`Schema::mirrors`] of `messaging.operation.type`.
pub const MIRROR_OPERATION_TYPE: usize = 1;

/// The schema in effect, with the rows and families the stage treats specially.
#[derive(Debug)]
pub struct Schema {
    /// The rows, built-in first.
    pub fields: Vec<Field>,
    /// The families, most specific first; a family's name is its `daena.component`.
    pub families: Vec<String>,
    /// The semconv keys the stage may add: the derived ones, then the rows' mirrors.
    pub mirrors: Vec<String>,
    /// Lowercased first bytes of every key and alias: most keys are rejected on one byte.
    first_bytes: [bool; 256],
    /// `council.phase`, `llm.model` and `message_bus.operation`, when the schema has them.
    pub council_phase: Option<usize>,
    /// `llm.model`.
    pub llm_model: Option<usize>,
    /// `message_bus.operation`.
    pub bus_operation: Option<usize>,
    /// The `message_bus` family.
    pub bus_family: usize,
}

impl Schema {
    /// The schema of these (validated) YAML rows over the built-in ones.
    pub fn new(yaml_rows: &[crate::config::Located<SchemaRow>]) -> Self {
        Self::of(&rows::effective(yaml_rows))
    }

    fn of(rows: &[SchemaRow]) -> Self {
        let families = rows::families(rows);
        let mut mirrors: Vec<String> = DERIVED_MIRRORS.iter().map(|m| (*m).to_owned()).collect();
        let mut first_bytes = [false; 256];
        let fields: Vec<Field> = rows
            .iter()
            .map(|row| {
                for name in std::iter::once(&row.key).chain(&row.aliases) {
                    if let Some(first) = name.bytes().next() {
                        first_bytes[usize::from(first.to_ascii_lowercase())] = true;
                    }
                }
                let mirror = row.mirror.as_ref().map(|m| {
                    mirrors.iter().position(|k| k == m).unwrap_or_else(|| {
                        mirrors.push(m.clone());
                        mirrors.len() - 1
                    })
                });
                Field {
                    key: row.key.clone(),
                    rule: rule_of(row),
                    aliases: row.aliases.clone(),
                    family: families
                        .iter()
                        .position(|f| f == row.family())
                        .unwrap_or_default(),
                    mirror,
                }
            })
            .collect();
        let row = |key: &str| fields.iter().position(|f| f.key == key);
        Self {
            council_phase: row("council.phase"),
            llm_model: row("llm.model"),
            bus_operation: row("message_bus.operation"),
            bus_family: families
                .iter()
                .position(|f| f == "message_bus")
                .unwrap_or_default(),
            fields,
            families,
            mirrors,
            first_bytes,
        }
    }

    /// The row `key` names, and whether `key` is exactly the canonical key.
    pub fn lookup(&self, key: &str) -> Option<(usize, bool)> {
        let first = key.as_bytes().first()?.to_ascii_lowercase();
        if !self.first_bytes[usize::from(first)] {
            return None;
        }
        if let Some(i) = self.fields.iter().position(|f| f.key == key) {
            return Some((i, true));
        }
        self.fields
            .iter()
            .position(|f| same_key(&f.key, key) || f.aliases.iter().any(|a| same_key(a, key)))
            .map(|i| (i, false))
    }

    /// The index in [`Self::families`] of the family a key (or span name) starts with.
    pub fn family(&self, key: &str) -> Option<usize> {
        self.families.iter().position(|family| {
            key.len() > family.len()
                && matches!(key.as_bytes()[family.len()], b'.' | b'_' | b'-')
                && same_key(family, &key[..family.len()])
        })
    }
}

impl Default for Schema {
    /// The built-in schema.
    fn default() -> Self {
        Self::of(&rows::built_in())
    }
}

fn rule_of(row: &SchemaRow) -> ValueRule {
    match row.value_type {
        ValueType::OneOf => ValueRule::OneOf(
            row.values
                .iter()
                .map(|value| {
                    let spellings = row
                        .spellings
                        .iter()
                        .filter(|s| s.value == *value)
                        .flat_map(|s| s.spellings.iter().map(|s| s.trim().to_owned()))
                        .collect();
                    (value.clone(), spellings)
                })
                .collect(),
        ),
        ValueType::Bool => ValueRule::Bool,
        ValueType::Double => ValueRule::Double,
        ValueType::Int => ValueRule::Int,
        ValueType::Id => ValueRule::Id,
        ValueType::Text => ValueRule::Text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(schema: &Schema, key: &str) -> Option<String> {
        schema
            .lookup(key)
            .map(|(i, _)| schema.fields[i].key.clone())
    }

    #[test]
    fn keys_match_ignoring_case_and_separators() {
        let schema = Schema::default();
        for key in [
            "council.phase",
            "Council_Phase",
            "council-phase",
            "council.Phase",
            "COUNCIL.PHASE",
        ] {
            assert_eq!(
                key_of(&schema, key).as_deref(),
                Some("council.phase"),
                "{key}"
            );
        }
        assert_eq!(schema.lookup("council.phase").map(|(_, c)| c), Some(true));
        assert_eq!(schema.lookup("Council_Phase").map(|(_, c)| c), Some(false));
        for (key, canonical) in [
            ("message.bus.topic", "message_bus.topic"),
            ("llm.cost", "llm.cost_usd"),
            ("LLM-Cost", "llm.cost_usd"),
            ("Council.Topic", "council.topic"),
            ("message_bus.Sender", "message_bus.sender"),
        ] {
            assert_eq!(key_of(&schema, key).as_deref(), Some(canonical), "{key}");
        }
        for key in [
            "council.phases",
            "council",
            "http.route",
            "",
            "llm.model.name",
            "nbmf.tie",
        ] {
            assert_eq!(schema.lookup(key), None, "{key}");
        }
    }

    #[test]
    fn families_are_found_by_their_first_word() {
        let schema = Schema::default();
        let name = |key| schema.family(key).map(|f| schema.families[f].as_str());
        assert_eq!(name("council.whatever"), Some("council"));
        assert_eq!(name("Message-Bus.sender"), Some("message_bus"));
        assert_eq!(name("LLM_prompt"), Some("llm"));
        assert_eq!(name("nbmf.tier"), Some("nbmf"));
        assert_eq!(schema.family("councilor"), None);
        assert_eq!(schema.family("llm"), None);
        assert_eq!(schema.family("http.route"), None);
    }

    #[test]
    fn the_built_in_mirrors_and_special_rows_are_indexed() {
        let schema = Schema::default();
        let mirror_of = |key: &str| {
            let (row, _) = schema.lookup(key).expect("a schema key");
            schema.fields[row]
                .mirror
                .map(|m| schema.mirrors[m].as_str())
        };
        assert_eq!(mirror_of("llm.model"), Some("gen_ai.request.model"));
        assert_eq!(
            mirror_of("message_bus.topic"),
            Some("messaging.destination.name")
        );
        assert_eq!(mirror_of("council.topic"), None);
        assert_eq!(schema.mirrors[MIRROR_SYSTEM], "messaging.system");
        assert_eq!(
            schema.mirrors[MIRROR_OPERATION_TYPE],
            "messaging.operation.type"
        );
        assert_eq!(schema.families[schema.bus_family], "message_bus");
        let key = |row: Option<usize>| row.map(|r| schema.fields[r].key.as_str());
        assert_eq!(key(schema.council_phase), Some("council.phase"));
        assert_eq!(key(schema.llm_model), Some("llm.model"));
        assert_eq!(key(schema.bus_operation), Some("message_bus.operation"));
    }
}

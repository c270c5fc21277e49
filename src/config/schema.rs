//! `processors.daena.schema`: the Daena attribute schema as data. The built-in rows are
//! the tracing guide's attributes; rows in YAML add keys or replace a built-in row.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::yaml::Located;

/// The built-in families, most specific first: an LLM call made during a council round is
/// an `llm` span. Families that rows in YAML introduce rank before these.
pub const BUILT_IN_FAMILIES: [&str; 4] = ["llm", "nbmf", "message_bus", "council"];

/// Semantic-convention keys the `daena` stage derives itself for message-bus spans, so no
/// row may mirror into them.
pub const DERIVED_MIRRORS: [&str; 2] = ["messaging.system", "messaging.operation.type"];

/// The most rows the schema holds, built-in ones included.
pub const MAX_ROWS: usize = 128;
/// The most families, built-in ones included.
pub const MAX_FAMILIES: usize = 32;
/// The most distinct mirror keys, the derived ones included.
pub const MAX_MIRRORS: usize = 32;

/// One schema row: a canonical key, its value rule, aliases, family and mirror.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRow {
    /// The canonical key, e.g. `council.topic`.
    pub key: String,
    /// What its value must be.
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// For `one_of`: the canonical values, in the order they are documented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// For `one_of`: other spellings of a canonical value (compared trimmed, ignoring
    /// ASCII case; an int is compared as its decimal string).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spellings: Vec<Spellings>,
    /// Other keys that mean the same; every key is matched ignoring case, with `_`, `-`
    /// and `.` alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The family, which is the `daena.component` of spans carrying the key; by default
    /// the key's first word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The semantic-convention key given a copy of the normalised value where absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// Other spellings of one `one_of` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spellings {
    /// The canonical value they mean.
    pub value: String,
    /// The spellings.
    #[serde(rename = "as")]
    pub spellings: Vec<String>,
}

/// How a value is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// One of `values` (or their `spellings`), stored as the canonical string.
    OneOf,
    /// A boolean: `true`/`false` in any case, `1`/`0` (string or int), `yes`/`no`.
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

impl ValueType {
    /// The name written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::OneOf => "one_of",
            Self::Bool => "bool",
            Self::Double => "double",
            Self::Int => "int",
            Self::Id => "id",
            Self::Text => "text",
        }
    }
}

impl SchemaRow {
    /// A row of `key` and `value_type`, with nothing else set.
    pub fn new(key: &str, value_type: ValueType) -> Self {
        Self {
            key: key.to_owned(),
            value_type,
            values: Vec::new(),
            spellings: Vec::new(),
            aliases: Vec::new(),
            family: None,
            mirror: None,
        }
    }

    fn one_of(key: &str, values: &[&str], spellings: &[(&str, &[&str])]) -> Self {
        Self {
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            spellings: spellings
                .iter()
                .map(|(value, spellings)| Spellings {
                    value: (*value).to_owned(),
                    spellings: spellings.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect(),
            ..Self::new(key, ValueType::OneOf)
        }
    }

    fn alias(mut self, alias: &str) -> Self {
        self.aliases.push(alias.to_owned());
        self
    }

    fn mirror(mut self, key: &str) -> Self {
        self.mirror = Some(key.to_owned());
        self
    }

    /// The row's family: `family`, else the key's first word.
    pub fn family(&self) -> &str {
        self.family
            .as_deref()
            .unwrap_or_else(|| self.key.split('.').next().unwrap_or_default())
    }
}

/// The built-in rows: the attributes of Daena's tracing guide.
pub fn built_in() -> Vec<SchemaRow> {
    use ValueType::{Bool, Double, Id, Int, Text};
    vec![
        SchemaRow::one_of("council.phase", &["scout", "debate", "commit"], &[]),
        SchemaRow::new("council.round_id", Id),
        SchemaRow::new("council.department", Text),
        SchemaRow::new("council.topic", Text),
        SchemaRow::one_of("message_bus.operation", &["publish", "subscribe"], &[])
            .mirror("messaging.operation.name"),
        SchemaRow::new("message_bus.topic", Text).mirror("messaging.destination.name"),
        SchemaRow::new("message_bus.message_id", Id).mirror("messaging.message.id"),
        SchemaRow::new("message_bus.sender", Text),
        SchemaRow::new("message_bus.retry_after_ms", Int),
        SchemaRow::one_of("nbmf.operation", &["read", "write"], &[]),
        SchemaRow::new("nbmf.item_id", Id),
        SchemaRow::new("nbmf.class", Text),
        SchemaRow::one_of(
            "nbmf.tier",
            &["l1", "l2", "l3"],
            &[
                ("l1", &["1", "tier1", "tier_1", "tier-1", "tier 1"]),
                ("l2", &["2", "tier2", "tier_2", "tier-2", "tier 2"]),
                ("l3", &["3", "tier3", "tier_3", "tier-3", "tier 3"]),
            ],
        ),
        SchemaRow::new("llm.model", Text).mirror("gen_ai.request.model"),
        SchemaRow::new("llm.cas_hit", Bool),
        SchemaRow::new("llm.near_dup", Bool),
        SchemaRow::new("llm.cost_usd", Double).alias("llm.cost"),
    ]
}

/// The schema in effect: the built-in rows, each replaced by a YAML row with the same
/// key, then the YAML rows that add keys, in their order.
pub fn effective(rows: &[Located<SchemaRow>]) -> Vec<SchemaRow> {
    let mut schema = built_in();
    for row in rows {
        match schema.iter_mut().find(|r| same_key(&r.key, &row.value.key)) {
            Some(built_in) => *built_in = row.value.clone(),
            None => schema.push(row.value.clone()),
        }
    }
    schema
}

/// The families in precedence order: those YAML rows introduce (in row order), then the
/// built-in ones.
pub fn families(schema: &[SchemaRow]) -> Vec<String> {
    let mut families: Vec<String> = Vec::new();
    for row in schema {
        let family = row.family();
        if !BUILT_IN_FAMILIES.contains(&family) && !families.iter().any(|f| f == family) {
            families.push(family.to_owned());
        }
    }
    families.extend(BUILT_IN_FAMILIES.iter().map(|f| (*f).to_owned()));
    families
}

/// Keys equal ignoring ASCII case, with `_`, `-` and `.` treated alike.
pub fn same_key(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'-' | b'.' => b'_',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Every problem of `processors.daena.schema`, each naming its row and the row's line.
pub fn validate(rows: &[Located<SchemaRow>], errors: &mut Vec<ConfigError>) {
    let at = |i: usize| {
        let line = rows[i].line;
        if line > 0 {
            format!("processors.daena.schema[{i}] (line {line})")
        } else {
            format!("processors.daena.schema[{i}]")
        }
    };
    for (i, located) in rows.iter().enumerate() {
        for message in row_problems(&located.value) {
            errors.push(ConfigError::new(at(i), message));
        }
        if let Some(first) = rows[..i]
            .iter()
            .position(|r| same_key(&r.value.key, &located.value.key))
        {
            errors.push(ConfigError::new(
                at(i),
                format!(
                    "repeats the key of schema[{first}] ({:?}); keep one row per key",
                    located.value.key
                ),
            ));
        }
    }
    // Keys, aliases and mirrors of the whole schema must not collide once folded; a
    // clash is reported at the YAML row that brings it.
    let schema = effective(rows);
    let row_of = |key: &str| rows.iter().position(|r| same_key(&r.value.key, key));
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut mirrors: Vec<(&str, &str)> = Vec::new();
    for row in &schema {
        let from_yaml = row_of(&row.key);
        let mut clash = |message: String| {
            if let Some(i) = from_yaml {
                errors.push(ConfigError::new(at(i), message));
            }
        };
        for name in std::iter::once(row.key.as_str()).chain(row.aliases.iter().map(String::as_str))
        {
            if let Some((_, owner)) = names.iter().find(|(n, _)| same_key(n, name)) {
                clash(format!(
                    "{name:?} already names {owner}; a key or alias may name one row only"
                ));
            }
            names.push((name, &row.key));
        }
        if let Some(mirror) = row.mirror.as_deref() {
            if let Some((_, owner)) = mirrors.iter().find(|(m, _)| *m == mirror) {
                clash(format!(
                    "mirror {mirror:?} is already {owner}'s; each semconv key mirrors one row"
                ));
            }
            mirrors.push((mirror, &row.key));
        }
    }
    for (mirror, owner) in &mirrors {
        if names.iter().any(|(name, _)| same_key(name, mirror))
            && let Some(i) = row_of(owner)
        {
            errors.push(ConfigError::new(
                at(i),
                format!("mirror {mirror:?} is itself a schema key; mirror into a semconv key such as gen_ai.request.model"),
            ));
        }
    }
    let over = |what: &str, count: usize, max: usize| {
        (count > max).then(|| {
            ConfigError::new(
                "processors.daena.schema",
                format!("has {count} {what} with the built-in ones; at most {max} are allowed"),
            )
        })
    };
    errors.extend(over("rows", schema.len(), MAX_ROWS));
    errors.extend(over("families", families(&schema).len(), MAX_FAMILIES));
    errors.extend(over(
        "mirror keys",
        mirrors.len() + DERIVED_MIRRORS.len(),
        MAX_MIRRORS,
    ));
}

/// What is wrong with one row on its own.
fn row_problems(row: &SchemaRow) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_key(&row.key) {
        problems.push(format!(
            "key {:?} is not an attribute key; write e.g. council.priority",
            row.key
        ));
    } else if row.key.starts_with("daena.") {
        problems.push(format!(
            "key {:?} is the agent's own (daena.*); choose another key",
            row.key
        ));
    }
    for alias in &row.aliases {
        if !is_key(alias) {
            problems.push(format!(
                "alias {alias:?} is not an attribute key; write e.g. council.prio"
            ));
        }
    }
    match (&row.family, row.key.contains('.')) {
        (Some(family), _) if !is_family(family) => problems.push(format!(
            "family {family:?} is not a lowercase word (letters, digits, _); write e.g. agent"
        )),
        (Some(family), _) if matches!(family.as_str(), "http" | "other" | "daena") => problems
            .push(format!(
                "family {family:?} is a daena.component value the agent derives itself; choose another"
            )),
        (None, false) => problems.push(format!(
            "key {:?} has no first word to take the family from; add family: (e.g. council)",
            row.key
        )),
        (None, true) if !is_family(row.family()) => problems.push(format!(
            "the key's first word {:?} is not a lowercase family name; add family: (e.g. council)",
            row.family()
        )),
        _ => {}
    }
    if let Some(mirror) = &row.mirror
        && (!is_key(mirror)
            || mirror.starts_with("daena.")
            || DERIVED_MIRRORS.contains(&mirror.as_str()))
    {
        problems.push(format!(
            "mirror {mirror:?} is not a semconv key the stage may set; write e.g. gen_ai.request.model (not daena.*, messaging.system or messaging.operation.type)"
        ));
    }
    match row.value_type {
        ValueType::OneOf if row.values.is_empty() => {
            problems.push("type one_of needs values: [the canonical values]".to_owned());
        }
        ValueType::OneOf => {
            for spellings in &row.spellings {
                if !row.values.contains(&spellings.value) {
                    problems.push(format!(
                        "spellings name {:?}, which is not one of values {:?}",
                        spellings.value, row.values
                    ));
                }
            }
            let mut seen: Vec<&str> = Vec::new();
            let all = row
                .values
                .iter()
                .chain(row.spellings.iter().flat_map(|s| &s.spellings));
            for value in all {
                let value = value.trim();
                if value.is_empty() {
                    problems.push("a value or spelling is empty; remove it".to_owned());
                } else if seen.iter().any(|s| s.eq_ignore_ascii_case(value)) {
                    problems.push(format!(
                        "{value:?} is listed twice (spellings ignore case); keep one"
                    ));
                } else {
                    seen.push(value);
                }
            }
        }
        other if !row.values.is_empty() || !row.spellings.is_empty() => problems.push(format!(
            "values and spellings are for type one_of, not {}; remove them or use one_of",
            other.name()
        )),
        _ => {}
    }
    problems
}

/// A plausible attribute key: printable ASCII without spaces, starting with a letter.
fn is_key(key: &str) -> bool {
    key.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && key.bytes().all(|b| b.is_ascii_graphic())
        && key.len() <= 128
}

/// A family name: a lowercase word of letters, digits and `_`, starting with a letter.
fn is_family(family: &str) -> bool {
    family
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_lowercase)
        && family
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests;

//! The canonical Daena attribute schema, as data: key, value rule, key aliases.
//!
//! The `daena` stage reads this table and nothing else about Daena's attributes, so adding a
//! key is one row here (and one in the README's table).

/// How a canonical attribute's value is normalised.
#[derive(Debug)]
pub enum ValueRule {
    /// One of these values; each with the other spellings (compared after trimming,
    /// ignoring ASCII case; an int is compared as its decimal string) that mean it.
    OneOf(&'static [(&'static str, &'static [&'static str])]),
    /// A boolean: `true/false` in any case, `1/0` (string or int), `yes/no`.
    Bool,
    /// A double; an int or a numeric string is converted.
    Double,
    /// A string identifier; an int becomes its decimal string.
    Id,
    /// A string, trimmed.
    Text,
}

/// One row of the schema.
#[derive(Debug)]
pub struct Field {
    /// The canonical key.
    pub key: &'static str,
    /// What its value must be.
    pub rule: ValueRule,
    /// Other keys that mean the same (matched like the canonical key, ignoring case and
    /// treating `_`, `-` and `.` alike).
    pub aliases: &'static [&'static str],
}

const PHASES: ValueRule = ValueRule::OneOf(&[("scout", &[]), ("debate", &[]), ("commit", &[])]);
const BUS_OPERATIONS: ValueRule = ValueRule::OneOf(&[("publish", &[]), ("subscribe", &[])]);
const NBMF_OPERATIONS: ValueRule = ValueRule::OneOf(&[("read", &[]), ("write", &[])]);
const TIERS: ValueRule = ValueRule::OneOf(&[
    ("l1", &["1", "tier1", "tier_1", "tier-1", "tier 1"]),
    ("l2", &["2", "tier2", "tier_2", "tier-2", "tier 2"]),
    ("l3", &["3", "tier3", "tier_3", "tier-3", "tier 3"]),
]);

/// The schema. Indices into it are stable for the life of the process (metrics use the key).
pub const SCHEMA: &[Field] = &[
    field("council.phase", PHASES, &[]),
    field("council.round_id", ValueRule::Id, &[]),
    field("council.department", ValueRule::Text, &[]),
    field("message_bus.operation", BUS_OPERATIONS, &[]),
    field("message_bus.topic", ValueRule::Text, &[]),
    field("message_bus.message_id", ValueRule::Id, &[]),
    field("nbmf.operation", NBMF_OPERATIONS, &[]),
    field("nbmf.item_id", ValueRule::Id, &[]),
    field("nbmf.class", ValueRule::Text, &[]),
    field("nbmf.tier", TIERS, &[]),
    field("llm.model", ValueRule::Text, &[]),
    field("llm.cas_hit", ValueRule::Bool, &[]),
    field("llm.near_dup", ValueRule::Bool, &[]),
    field("llm.cost_usd", ValueRule::Double, &["llm.cost"]),
];

const fn field(key: &'static str, rule: ValueRule, aliases: &'static [&'static str]) -> Field {
    Field { key, rule, aliases }
}

/// Index of a schema row, for per-row bookkeeping arrays.
pub const FIELDS: usize = SCHEMA.len();

/// Rows the stage refers to by name.
pub mod row {
    /// `council.phase`.
    pub const COUNCIL_PHASE: usize = 0;
    /// `message_bus.operation`.
    pub const BUS_OPERATION: usize = 3;
    /// `message_bus.topic`.
    pub const BUS_TOPIC: usize = 4;
    /// `message_bus.message_id`.
    pub const BUS_MESSAGE_ID: usize = 5;
    /// `llm.model`.
    pub const LLM_MODEL: usize = 10;
}

/// The schema row `key` names, and whether `key` is exactly the canonical key.
pub fn lookup(key: &str) -> Option<(usize, bool)> {
    // Every schema key starts with c, m, n or l: most keys are rejected on one byte.
    if !matches!(
        key.as_bytes().first()?.to_ascii_lowercase(),
        b'c' | b'm' | b'n' | b'l'
    ) {
        return None;
    }
    SCHEMA.iter().enumerate().find_map(|(i, field)| {
        if field.key == key {
            Some((i, true))
        } else if same_key(field.key, key) || field.aliases.iter().any(|a| same_key(a, key)) {
            Some((i, false))
        } else {
            None
        }
    })
}

/// Keys equal ignoring ASCII case, with `_`, `-` and `.` treated alike.
pub fn same_key(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'-' | b'.' => b'_',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The Daena attribute families, most specific first: a span carrying several belongs to
/// the first (an LLM call made during a council round is an `llm` span).
pub const FAMILIES: [&str; 4] = ["llm", "nbmf", "message_bus", "council"];

/// The index in [`FAMILIES`] of the family a key (or span name) belongs to, if any.
pub fn family(key: &str) -> Option<usize> {
    FAMILIES.iter().position(|family| {
        key.len() > family.len()
            && matches!(key.as_bytes()[family.len()], b'.' | b'_' | b'-')
            && same_key(family, &key[..family.len()])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_constants_name_their_rows() {
        assert_eq!(SCHEMA[row::BUS_OPERATION].key, "message_bus.operation");
        assert_eq!(SCHEMA[row::BUS_TOPIC].key, "message_bus.topic");
        assert_eq!(SCHEMA[row::BUS_MESSAGE_ID].key, "message_bus.message_id");
        assert_eq!(SCHEMA[row::LLM_MODEL].key, "llm.model");
    }

    #[test]
    fn keys_match_ignoring_case_and_separators() {
        for key in [
            "council.phase",
            "Council_Phase",
            "council-phase",
            "council.Phase",
            "COUNCIL.PHASE",
        ] {
            assert_eq!(
                lookup(key).map(|(i, _)| SCHEMA[i].key),
                Some("council.phase"),
                "{key}"
            );
        }
        assert_eq!(lookup("council.phase"), Some((0, true)));
        assert_eq!(lookup("Council_Phase"), Some((0, false)));
        assert_eq!(
            lookup("message.bus.topic").map(|(i, _)| SCHEMA[i].key),
            Some("message_bus.topic")
        );
        assert_eq!(
            lookup("llm.cost").map(|(i, _)| SCHEMA[i].key),
            Some("llm.cost_usd")
        );
        assert_eq!(
            lookup("LLM-Cost").map(|(i, _)| SCHEMA[i].key),
            Some("llm.cost_usd")
        );
        for key in [
            "council.phases",
            "council",
            "http.route",
            "",
            "llm.model.name",
            "nbmf.tie",
        ] {
            assert_eq!(lookup(key), None, "{key}");
        }
    }

    #[test]
    fn families_are_found_by_their_first_word() {
        let name = |key| family(key).map(|f| FAMILIES[f]);
        assert_eq!(name("council.topic"), Some("council"));
        assert_eq!(name("Message-Bus.sender"), Some("message_bus"));
        assert_eq!(name("LLM_prompt"), Some("llm"));
        assert_eq!(name("nbmf.tier"), Some("nbmf"));
        assert_eq!(family("councilor"), None);
        assert_eq!(family("llm"), None);
        assert_eq!(family("http.route"), None);
    }

    #[test]
    fn every_key_and_alias_is_unique_after_folding() {
        let all: Vec<&str> = SCHEMA
            .iter()
            .flat_map(|f| std::iter::once(f.key).chain(f.aliases.iter().copied()))
            .collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!same_key(a, b), "{a} and {b}");
            }
        }
    }
}

use std::path::Path;

use super::*;
use crate::config::Config;

fn load(yaml: &str) -> Result<Config, Vec<ConfigError>> {
    let config = crate::config::yaml::parse(yaml, Path::new("agent.yaml"), &|_| None)?;
    let errors = config.validate();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

fn errors_of(yaml: &str) -> Vec<String> {
    load(yaml)
        .expect_err("invalid")
        .iter()
        .map(|e| format!("{}: {}", e.path, e.message))
        .collect()
}

#[test]
fn rows_from_yaml_add_keys_and_replace_built_in_rows() {
    let config = load(
        "processors:
  daena:
    schema:
      - key: agent.name
        type: text
      - key: nbmf.tier
        type: one_of
        values: [l1, l2, l3, l4]
        spellings:
          - { value: l4, as: [tier4, cold] }
      - key: council.priority
        type: int
        aliases: [council.prio]
        mirror: daena_x.priority
",
    )
    .expect("valid");
    let schema = effective(&config.processors.daena.schema);
    assert_eq!(schema.len(), built_in().len() + 2, "nbmf.tier was replaced");
    let tier = schema.iter().find(|r| r.key == "nbmf.tier").expect("row");
    assert_eq!(tier.values, ["l1", "l2", "l3", "l4"]);
    assert_eq!(
        schema.last().map(|r| r.key.as_str()),
        Some("council.priority")
    );
    assert_eq!(
        families(&schema),
        ["agent", "llm", "nbmf", "message_bus", "council"],
        "a new family ranks before the built-in ones"
    );
    assert_eq!(
        config.processors.daena.schema[0].line, 4,
        "rows keep their line"
    );
}

#[test]
fn a_bad_row_is_reported_with_its_line_and_every_problem_at_once() {
    let errors = errors_of(
        "processors:
  daena:
    schema:
      - key: agent.name
        type: text
      - key: nbmf.level
        type: one_of
      - key: council.prio
        type: int
        values: [a]
      - key: department
        type: text
      - key: llm.cost_dollars
        type: double
        aliases: [llm.cost]
      - key: llm.prompt_chars
        type: int
        mirror: messaging.system
",
    );
    let expected = [
        "processors.daena.schema[1] (line 6): type one_of needs values",
        "processors.daena.schema[2] (line 8): values and spellings are for type one_of, not int",
        "processors.daena.schema[3] (line 11): key \"department\" has no first word",
        "processors.daena.schema[4] (line 13): \"llm.cost\" already names llm.cost_usd",
        "processors.daena.schema[5] (line 16): mirror \"messaging.system\" is not a semconv key",
    ];
    for want in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn a_misspelt_field_or_type_is_a_yaml_error_with_its_position() {
    let errors = errors_of(
        "processors:
  daena:
    schema:
      - key: agent.name
        type: txt
",
    );
    assert!(
        errors.iter().any(
            |e| e.starts_with("agent.yaml:5:") && e.contains("processors.daena.schema[0].type")
        ),
        "{errors:#?}"
    );
    let errors = errors_of(
        "processors:
  daena:
    schema:
      - key: agent.name
        type: text
        alias: [agent]
",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("agent.yaml:6:") && e.contains("alias")),
        "{errors:#?}"
    );
}

#[test]
fn a_row_may_not_repeat_a_key_or_take_a_derived_name() {
    let errors = errors_of(
        "processors:
  daena:
    schema:
      - { key: agent.name, type: text }
      - { key: Agent_Name, type: id }
      - { key: daena.component, type: text }
      - { key: x.y, type: text, family: http }
      - { key: agent.role, type: text, mirror: agent.name }
      - key: agent.mode
        type: one_of
        values: [fast, Fast]
        spellings: [{ value: slow, as: [s] }]
",
    );
    for want in [
        "schema[1] (line 5): repeats the key of schema[0]",
        "schema[2] (line 6): key \"daena.component\" is the agent's own",
        "schema[3] (line 7): family \"http\" is a daena.component value",
        "schema[4] (line 8): mirror \"agent.name\" is itself a schema key",
        "schema[5] (line 9): spellings name \"slow\"",
        "schema[5] (line 9): \"Fast\" is listed twice",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "missing {want:?} in {errors:#?}"
        );
    }
}

#[test]
fn the_built_in_rows_are_valid_and_name_each_key_once() {
    let mut errors = Vec::new();
    validate(&[], &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let rows = built_in();
    for row in &rows {
        assert!(
            row_problems(row).is_empty(),
            "{row:?}: {:?}",
            row_problems(row)
        );
    }
    let names: Vec<&str> = rows
        .iter()
        .flat_map(|r| std::iter::once(r.key.as_str()).chain(r.aliases.iter().map(String::as_str)))
        .collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            assert!(!same_key(a, b), "{a} and {b}");
        }
    }
    for key in ["council.topic", "message_bus.sender"] {
        assert!(rows.iter().any(|r| r.key == key), "{key} is built in");
    }
}

/// The README's schema table, rendered from the built-in rows.
fn table(rows: &[SchemaRow]) -> String {
    let mut table = String::from(
        "| key | type | values and accepted spellings | aliases | mirror |\n|---|---|---|---|---|\n",
    );
    let code = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for row in rows {
        let values = match row.value_type {
            ValueType::OneOf => {
                let spellings: Vec<String> = row
                    .spellings
                    .iter()
                    .map(|s| format!("{} for `{}`", code(&s.spellings), s.value))
                    .collect();
                if spellings.is_empty() {
                    code(&row.values)
                } else {
                    format!("{}; also {}", code(&row.values), spellings.join("; "))
                }
            }
            ValueType::Bool => {
                "`true`/`false` any case, `\"1\"`/`\"0\"`, `1`/`0`, `yes`/`no`".into()
            }
            ValueType::Double => "an int or a numeric string is converted".into(),
            ValueType::Int => "a numeric string or a whole double is converted".into(),
            ValueType::Id => "an int becomes its decimal string".into(),
            ValueType::Text => "trimmed".into(),
        };
        table.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            row.key,
            row.value_type.name(),
            values,
            code(&row.aliases),
            row.mirror
                .as_ref()
                .map(|m| format!("`{m}`"))
                .unwrap_or_default(),
        ));
    }
    table
}

#[test]
fn the_readme_table_is_the_built_in_schema() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (begin, end) = (
        "<!-- schema table: generated from src/config/schema.rs -->\n",
        "<!-- end of schema table -->",
    );
    let start = readme
        .find(begin)
        .expect("the README marks its schema table")
        + begin.len();
    let stop = start + readme[start..].find(end).expect("the table's end marker");
    let expected = table(&built_in());
    assert!(
        readme[start..stop].trim_end() == expected.trim_end(),
        "the README's schema table differs from the built-in rows; replace it with:\n\n{expected}"
    );
}

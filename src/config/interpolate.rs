//! `${VAR}`, `${VAR:-default}` and `$$` in the raw config text, before YAML parsing.
//!
//! A pure function over a lookup, so tests never touch the process environment.

use std::ops::Range;

/// A substitution made, so errors can show `${VAR}` instead of the (maybe secret) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The text the reference was replaced by.
    pub value: String,
    /// The reference as written, e.g. `${GRAFANA_CLOUD_API_TOKEN}`.
    pub reference: String,
}

/// One place where the expanded text differs from the original: a reference or a `$$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Byte range in the original text.
    pub original: Range<usize>,
    /// Byte range of what replaced it in the expanded text.
    pub expanded: Range<usize>,
}

/// The expanded text, the values that came from the environment, and where the text moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The text with every reference replaced.
    pub text: String,
    /// The values read from the environment, to keep out of messages.
    pub substitutions: Vec<Substitution>,
    /// Every replacement, in order, to map a position in `text` back to the original.
    pub edits: Vec<Edit>,
}

impl Expanded {
    /// The byte offset in the original text of `offset` in the expanded text; a position
    /// inside a replacement maps to the start of what it replaced.
    pub fn original_offset(&self, offset: usize) -> usize {
        let mut original = offset;
        for edit in &self.edits {
            if offset < edit.expanded.start {
                break;
            }
            original = if offset < edit.expanded.end {
                edit.original.start
            } else {
                offset - edit.expanded.end + edit.original.end
            };
        }
        original
    }
}

/// The text with every reference expanded, or the list of problems (one per reference).
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut substitutions = Vec::new();
    let mut edits = Vec::new();
    let mut errors = Vec::new();
    let mut line_start = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        // The original offset of `rest` is `line_start + line.len() - rest.len()`.
        let at = |rest: &str| line_start + line.len() - rest.len();
        // References in comments are documentation, not configuration.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            line_start += line.len();
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                edits.push(Edit {
                    original: at(rest) + pos..at(tail),
                    expanded: out.len()..out.len() + 1,
                });
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    errors.push(format!(
                        "line {}: \"${{\" is not closed; write ${{NAME}}, or $$ for a literal $",
                        index + 1
                    ));
                    out.push_str(&rest[pos..]);
                    rest = "";
                    break;
                };
                let reference = &rest[pos..pos + end + 3];
                let (name, default) = match body[..end].split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (&body[..end], None),
                };
                let valid_name =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let value = env(name).filter(|v| !v.is_empty() || default.is_none());
                let original = at(rest) + pos..at(rest) + pos + reference.len();
                let start = out.len();
                match (valid_name, value, default) {
                    (false, _, _) => errors.push(format!(
                        "line {}: {reference} is not a variable reference; names are letters, digits and _",
                        index + 1
                    )),
                    (true, Some(value), _) => {
                        out.push_str(&value);
                        substitutions.push(Substitution {
                            value,
                            reference: reference.to_owned(),
                        });
                    }
                    (true, None, Some(default)) => out.push_str(default),
                    (true, None, None) => errors.push(format!(
                        "line {}: {reference} is not set; export {name}, or write ${{{name}:-default}}",
                        index + 1
                    )),
                }
                edits.push(Edit {
                    original,
                    expanded: start..out.len(),
                });
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        line_start += line.len();
    }
    if errors.is_empty() {
        Ok(Expanded {
            text: out,
            substitutions,
            edits,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn references_expand_with_defaults_and_escapes() {
        let Expanded {
            text,
            substitutions: subs,
            ..
        } = interpolate(
            "a: \"Basic ${TOKEN}\"\nb: ${UNSET:-dflt}\nc: ${EMPTY:-fallback}\nd: $$HOME\ne: cost$5\n",
            &env,
        )
        .expect("valid");
        assert_eq!(
            text,
            "a: \"Basic s3cret\"\nb: dflt\nc: fallback\nd: $HOME\ne: cost$5\n"
        );
        assert_eq!(
            subs,
            vec![Substitution {
                value: "s3cret".into(),
                reference: "${TOKEN}".into()
            }]
        );
    }

    #[test]
    fn unset_variables_are_reported_with_their_lines() {
        let errors =
            interpolate("a: 1\nb: ${MISSING}\nc: ${ALSO_MISSING}\n", &env).expect_err("unset");
        assert_eq!(errors.len(), 2);
        assert!(
            errors[0].starts_with("line 2: ${MISSING} is not set"),
            "{}",
            errors[0]
        );
        assert!(errors[1].contains("line 3"), "{}", errors[1]);
    }

    #[test]
    fn comment_lines_are_left_alone() {
        let expanded = interpolate("# uses ${NOT_SET}\na: 1\n", &env).expect("valid");
        assert_eq!(expanded.text, "# uses ${NOT_SET}\na: 1\n");
        assert!(expanded.edits.is_empty());
    }

    #[test]
    fn positions_in_the_expanded_text_map_back_to_the_original() {
        let original = "a: ${TOKEN} x\n# ${NOT_SET}\nb: $$${UNSET:-d} y\n";
        let expanded = interpolate(original, &env).expect("valid");
        assert_eq!(expanded.text, "a: s3cret x\n# ${NOT_SET}\nb: $d y\n");
        let back = |needle: &str| {
            let offset = expanded.text.find(needle).expect("in the expanded text");
            &original[expanded.original_offset(offset)..]
        };
        assert!(back("x\n").starts_with("x\n# ${NOT_SET}"));
        assert!(
            back("cret").starts_with("${TOKEN}"),
            "inside a value: its reference"
        );
        assert!(back("b:").starts_with("b: $$"));
        assert!(back("$d").starts_with("$$${UNSET"));
        assert!(back("d y").starts_with("${UNSET:-d} y"));
        assert!(back(" y").starts_with(" y\n"));
    }
}

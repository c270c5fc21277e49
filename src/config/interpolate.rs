//! `${VAR}`, `${VAR:-default}` and `$$` in the raw config text, before YAML parsing.
//!
//! A pure function over a lookup, so tests never touch the process environment.

/// A substitution made, so errors can show `${VAR}` instead of the (maybe secret) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// The text the reference was replaced by.
    pub value: String,
    /// The reference as written, e.g. `${GRAFANA_CLOUD_API_TOKEN}`.
    pub reference: String,
}

/// The text with every reference expanded, or the list of problems (one per reference).
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<Substitution>), Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut substitutions = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        // References in comments are documentation, not configuration.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
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
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok((out, substitutions))
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
        let (text, subs) = interpolate(
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
        let (text, _) = interpolate("# uses ${NOT_SET}\na: 1\n", &env).expect("valid");
        assert_eq!(text, "# uses ${NOT_SET}\na: 1\n");
    }
}

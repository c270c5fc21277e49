//! The one place that parses and writes YAML (serde-saphyr: pure Rust, rejects duplicate keys).

use std::path::Path;

use super::interpolate::interpolate;
use super::{Config, ConfigError};

/// Expands `${VAR}` in `text` and parses it; errors carry `file:line:col` and never a
/// value that came from the environment.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let (expanded, substitutions) = interpolate(text, env).map_err(|problems| {
        problems
            .into_iter()
            .map(|message| ConfigError::new(path.display().to_string(), message))
            .collect::<Vec<_>>()
    })?;
    if expanded.trim().is_empty() {
        return Ok(Config::default());
    }
    // The snippet serde-saphyr can render would show the expanded text; we show the
    // original line ourselves instead.
    let options = serde_saphyr::options! { strict_booleans: true, with_snippet: false };
    serde_saphyr::from_str_with_options::<Config>(&expanded, options).map_err(|error| {
        let mut message = error.without_snippet().to_string();
        // Longest first, so a value that contains another is hidden whole.
        let mut secrets: Vec<_> = substitutions
            .iter()
            .filter(|s| s.value.len() >= 4)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
        for s in secrets {
            message = message.replace(&s.value, &s.reference);
        }
        let (position, source_line) = match error.location() {
            Some(location) if location.line() > 0 => {
                let line = location.line() as usize;
                let original = text.lines().nth(line - 1).unwrap_or_default().trim_end();
                (
                    format!("{}:{line}:{}", path.display(), location.column()),
                    format!("\n      | {original}"),
                )
            }
            _ => (path.display().to_string(), String::new()),
        };
        vec![ConfigError::new(
            position,
            format!("{}{source_line}", strip_location(&message)),
        )]
    })
}

/// serde-saphyr ends some messages with its own "at line X column Y"; we print the
/// position in front, as compilers do.
fn strip_location(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |i| &message[..i])
        .trim_end()
}

/// Writes the config as YAML.
pub fn to_string(config: &Config) -> String {
    serde_saphyr::to_string(config).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
}

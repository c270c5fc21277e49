//! Config errors: each names the key (or `file:line:col`) and says what to change.

use std::fmt;
use std::path::PathBuf;

/// One problem in the config: the key it is about and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, e.g. `exporters.tempo.endpoint` (or a variable name, or `line:col`).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a config, with the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file, if there was one.
    pub file: Option<PathBuf>,
    /// The problems, at least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = self
            .file
            .as_ref()
            .map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
        let count = self.errors.len();
        write!(
            f,
            "{source}: {count} config error{}:",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  - {}: {}", error.path, error.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

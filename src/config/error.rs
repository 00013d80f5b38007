//! Configuration problems: each one names the field path (`routes[2].match.path`), the
//! line and column where the file has them, and what is wrong.

use std::fmt;

use super::locations::Locations;

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field path, like `routes[2].match.path`; empty for the whole file.
    pub path: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<file>"
        } else {
            &self.path
        };
        match self.location {
            Some((line, col)) => write!(f, "{path} (line {line}, column {col}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a configuration, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// One problem with no known location.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            path: path.into(),
            location: None,
            message: message.into(),
        }])
    }

    /// Whether there is no problem.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a configuration is checked or compiled.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<(String, String)>,
}

impl Problems {
    /// Records that the field at `path` is wrong for `message`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push((path.into(), message.into()));
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many problems were recorded.
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Turns the records into errors, with lines looked up in `locations`, sorted by
    /// position in the file.
    pub fn into_errors(self, locations: &Locations) -> ConfigErrors {
        let mut errors: Vec<ConfigError> = self
            .list
            .into_iter()
            .map(|(path, message)| ConfigError {
                location: locations.find(&path),
                path,
                message,
            })
            .collect();
        errors.sort_by_key(|e| e.location.unwrap_or((usize::MAX, 0)));
        errors.dedup();
        ConfigErrors(errors)
    }
}

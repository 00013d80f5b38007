//! Reading a configuration: `${...}` substitution, YAML parsing with field paths and
//! lines, then the semantic checks of [`super::validate`].
//!
//! Substitution happens inside scalar values (never as raw text), so a secret containing
//! `: ` or a newline cannot change the structure of the file:
//! - `${NAME}` with a name in capitals (`API_KEY`, `DB_PASSWORD_2`) is an environment
//!   variable; unset is an error unless a default is given (`${PORT:-8080}`);
//! - `${env:name}` reads any environment variable, whatever its case;
//! - `${file:/run/secrets/key}` reads a file (relative paths start at the config file's
//!   folder); one trailing newline is dropped;
//! - any other `${name}` (lower case: `${request_id}`, `${id}`) is left in place for the
//!   policies that take runtime templates, which reject names they do not know;
//! - `$${` writes a literal `${`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{ConfigError, ConfigErrors};
use super::locations::Locations;
use super::spec::GatewaySpec;
use super::validate::validate;

/// A parsed and checked configuration, with what is needed to report on it later.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub spec: GatewaySpec,
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    /// Values substituted from the environment or files: redacted from `GET /config`.
    pub secrets: Vec<String>,
    /// Field locations, for problems found when compiling.
    pub locations: Locations,
    /// A hash of the file's text, to tell a real change from a touch.
    pub digest: u64,
}

/// Reads, substitutes, parses and checks the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut loaded = load_str(&text, base)?;
    loaded.path = Some(path.to_path_buf());
    Ok(loaded)
}

/// Substitutes, parses and checks configuration text; relative `${file:...}` paths start
/// at `base`.
pub fn load_str(text: &str, base: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let locations = Locations::index(text);
    let subst = prepare_substitution(text, base)?;
    let spec = parse(&subst.text, subst.properties.clone())?;
    validate(&spec).map_err(|p| p.into_errors(&locations))?;
    Ok(LoadedConfig {
        spec,
        path: None,
        secrets: subst.secrets,
        locations,
        digest: crate::upstream::hash::hash64(text.as_bytes()),
    })
}

struct Substitution {
    text: String,
    properties: HashMap<String, String>,
    secrets: Vec<String>,
}

/// Finds every `${...}` reference and prepares the property map serde-saphyr expands
/// inside scalars. `file:` and `env:` references are rewritten to generated names first,
/// since serde-saphyr only accepts identifiers between the braces.
fn prepare_substitution(text: &str, base: &Path) -> Result<Substitution, ConfigErrors> {
    let mut out = String::with_capacity(text.len());
    let mut properties = HashMap::new();
    let mut secrets = Vec::new();
    let mut errors = Vec::new();
    let mut rest = text;
    let mut generated = 0usize;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start + 2]);
            rest = &rest[start + 2..];
            continue;
        }
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + len];
        out.push_str(&rest[..start]);
        let line = text[..text.len() - rest.len() + start]
            .matches('\n')
            .count()
            + 1;
        let resolved = if let Some(file) = inner.strip_prefix("file:") {
            Some(read_secret_file(base, file.trim()).map_err(|e| (line, e)))
        } else if let Some(name) = inner.strip_prefix("env:") {
            Some(std::env::var(name.trim()).map_err(|_| {
                (
                    line,
                    format!("environment variable `{}` is not set", name.trim()),
                )
            }))
        } else {
            None
        };
        match resolved {
            Some(Ok(value)) => {
                generated += 1;
                let key = format!("TURNPIKE_GENERATED_{generated}");
                out.push_str(&format!("${{{key}}}"));
                secrets.push(value.clone());
                properties.insert(key, value);
            }
            Some(Err((line, message))) => {
                errors.push(ConfigError {
                    path: String::new(),
                    location: Some((line, 1)),
                    message,
                });
                out.push_str(&rest[start..start + len + 1]);
            }
            None => {
                let name: String = inner
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if is_env_name(&name) {
                    if let Ok(value) = std::env::var(&name) {
                        secrets.push(value.clone());
                        properties.insert(name, value);
                    }
                } else if !name.is_empty() {
                    properties.insert(name.clone(), format!("${{{name}}}"));
                }
                out.push_str(&rest[start..start + len + 1]);
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    secrets.retain(|s| s.len() >= 4);
    Ok(Substitution {
        text: out,
        properties,
        secrets,
    })
}

/// Names written in capitals, digits and underscores are environment variables.
fn is_env_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn read_secret_file(base: &Path, file: &str) -> Result<String, String> {
    let path = base.join(file);
    let mut value = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

fn parse(text: &str, properties: HashMap<String, String>) -> Result<GatewaySpec, ConfigErrors> {
    let options = serde_saphyr::Options::default().with_properties(properties);
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let location = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize));
        let mut message = e.without_snippet().to_string();
        if let Some(stripped) = message.strip_prefix("error: ") {
            message = stripped.to_string();
        }
        if let Some((_, after)) = message
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line "))
        {
            message = after.to_string();
        }
        let message = message.lines().next().unwrap_or_default().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors(vec![ConfigError {
            path,
            location,
            message,
        }])
    })
}

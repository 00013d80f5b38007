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
//! - `$$` writes one `$` (so `$${` writes a literal `${`); any other `$` is literal
//!   (`^/v1/.*$` stays as is);
//! - comments and map keys are never substituted.

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
    /// Where relative paths in it start (`${file:...}`, TLS files): the file's folder.
    pub base: PathBuf,
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

/// Substitutes, parses and checks configuration text; relative paths (`${file:...}`, TLS
/// files) start at `base`.
pub fn load_str(text: &str, base: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let locations = Locations::index(text);
    let subst = prepare_substitution(text, base)?;
    let spec = parse(&subst.text, subst.properties.clone())?;
    validate(&spec).map_err(|p| p.into_errors(&locations))?;
    Ok(LoadedConfig {
        spec,
        path: None,
        base: base.to_path_buf(),
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

/// Rewrites the `${...}` references inside value scalars (never in comments or keys) and
/// prepares the property map serde-saphyr expands: `file:` and `env:` references become
/// generated names (serde-saphyr only takes identifiers between the braces), an unset
/// capitalised variable without a default is an error, and a bare `$` is escaped as `$$`
/// so that only `${...}` is ever substituted.
fn prepare_substitution(text: &str, base: &Path) -> Result<Substitution, ConfigErrors> {
    let mut sub = Substitution {
        text: String::with_capacity(text.len()),
        properties: HashMap::new(),
        secrets: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut copied = 0;
    for (start, end, at) in value_scalars(text) {
        sub.text.push_str(&text[copied..start]);
        rewrite_scalar(&text[start..end], at, base, &mut sub, &mut errors);
        copied = end;
    }
    sub.text.push_str(&text[copied..]);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    sub.secrets.retain(|s| s.len() >= 4);
    Ok(sub)
}

fn rewrite_scalar(
    scalar: &str,
    at: (usize, usize),
    base: &Path,
    sub: &mut Substitution,
    errors: &mut Vec<ConfigError>,
) {
    let mut rest = scalar;
    while let Some(i) = rest.find('$') {
        sub.text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            sub.text.push_str("$$");
            rest = tail;
            continue;
        }
        let Some(inner_len) = after.strip_prefix('{').and_then(|a| a.find('}')) else {
            sub.text.push_str("$$");
            rest = after;
            continue;
        };
        let inner = &after[1..1 + inner_len];
        let whole = &rest[i..i + 3 + inner_len];
        rest = &after[inner_len + 2..];
        let mut fail = |message: String| {
            errors.push(ConfigError {
                path: String::new(),
                location: Some(at),
                message,
            });
        };
        let generated = if let Some(file) = inner.strip_prefix("file:") {
            read_secret_file(base, file.trim()).map_err(&mut fail).ok()
        } else if let Some(name) = inner.strip_prefix("env:") {
            let name = name.trim();
            std::env::var(name)
                .map_err(|_| fail(format!("environment variable `{name}` is not set")))
                .ok()
        } else {
            let name: String = inner
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let has_default = inner.len() > name.len();
            if is_env_name(&name) {
                match std::env::var(&name) {
                    Ok(value) => {
                        sub.secrets.push(value.clone());
                        sub.properties.insert(name, value);
                    }
                    Err(_) if !has_default => fail(format!(
                        "environment variable `{name}` is not set (give a default with `${{{name}:-value}}`)"
                    )),
                    Err(_) => {}
                }
            } else if name.len() < inner.len() {
                // A runtime reference with a path (`${orders[0].id}`, `${query.q}`,
                // `${header.x-id}`): kept as written, escaped from substitution.
                sub.text.push_str("$$");
                sub.text.push_str(&whole[1..]);
                continue;
            } else if !name.is_empty() {
                sub.properties.insert(name.clone(), format!("${{{name}}}"));
            }
            sub.text.push_str(whole);
            continue;
        };
        if let Some(value) = generated {
            let key = format!("TURNPIKE_GENERATED_{}", sub.properties.len() + 1);
            sub.text.push_str(&format!("${{{key}}}"));
            sub.secrets.push(value.clone());
            sub.properties.insert(key, value);
        } else {
            sub.text.push_str(whole);
        }
    }
    sub.text.push_str(rest);
}

/// Byte ranges and (line, column) of the value scalars of `text` (map keys and comments excluded).
fn value_scalars(text: &str) -> Vec<(usize, usize, (usize, usize))> {
    use serde_saphyr::granit_parser::{Event, Parser};
    // For each open collection: is it a map, and is its next scalar a key?
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = Vec::new();
    for item in Parser::new_from_str(text) {
        let Ok((event, span)) = item else { break };
        let is_key = matches!(stack.last(), Some((true, true)));
        match event {
            Event::Scalar(..) => {
                if !is_key {
                    if let (Some(a), Some(b)) = (span.start.byte_offset(), span.end.byte_offset()) {
                        if a <= b
                            && b <= text.len()
                            && text.is_char_boundary(a)
                            && text.is_char_boundary(b)
                        {
                            out.push((a, b, (span.start.line(), span.start.col() + 1)));
                        }
                    }
                }
                flip(&mut stack);
            }
            Event::MappingStart(..) => stack.push((true, true)),
            Event::SequenceStart(..) => stack.push((false, false)),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                flip(&mut stack);
            }
            Event::Alias(..) => flip(&mut stack),
            _ => {}
        }
    }
    out
}

/// After a node inside a map, the next scalar switches between key and value.
fn flip(stack: &mut [(bool, bool)]) {
    if let Some((true, key_next)) = stack.last_mut() {
        *key_next = !*key_next;
    }
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
    let mut options = serde_saphyr::Options::default().with_properties(properties);
    // Compose syntax expands quoted and block scalars too; unset names and bare `$` were
    // dealt with before (see `prepare_substitution`).
    options.property_syntax = serde_saphyr::PropertySyntax::DockerCompose;
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
        let mut message = message.lines().next().unwrap_or_default().to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        let path = if path == "." { String::new() } else { path };
        ConfigErrors(vec![ConfigError {
            path,
            location,
            message,
        }])
    })
}

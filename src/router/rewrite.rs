//! Path rewrites, compiled once: strip a prefix and/or add one, or build the path from a
//! template of the route's parameters (`/v2/users/{id}`). The query string is kept as is.

use std::borrow::Cow;

use crate::config::{Problems, RewriteSpec};

use super::Params;

/// A compiled rewrite.
#[derive(Debug, Clone, Default)]
pub enum Rewrite {
    /// The path is forwarded unchanged.
    #[default]
    None,
    /// Strip and/or add a prefix.
    Prefix {
        /// Removed when the path starts with it on a segment boundary.
        strip: Option<String>,
        /// Put in front of the result.
        add: Option<String>,
    },
    /// The path is rebuilt from a template.
    Template(Vec<Part>),
}

/// A piece of a path template.
#[derive(Debug, Clone)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// The value of the route's parameter with this index.
    Param(usize),
}

impl Rewrite {
    /// Compiles `spec` for a route whose parameters are `names`.
    pub fn compile(
        path: &str,
        spec: Option<&RewriteSpec>,
        names: &[String],
        p: &mut Problems,
    ) -> Self {
        let Some(spec) = spec else { return Self::None };
        if let Some(template) = &spec.path {
            return match parse_template(template, names) {
                Ok(parts) => Self::Template(parts),
                Err(e) => {
                    p.push(format!("{path}.path"), e);
                    Self::None
                }
            };
        }
        let trim = |s: &Option<String>| {
            s.as_ref()
                .map(|v| v.trim_end_matches('/').to_string())
                .filter(|v| !v.is_empty())
        };
        Self::Prefix {
            strip: trim(&spec.strip_prefix),
            add: trim(&spec.add_prefix),
        }
    }

    /// The path to forward, for a request whose path is `path` and parameters `params`.
    pub fn apply<'p>(&self, path: &'p str, params: &Params) -> Cow<'p, str> {
        match self {
            Self::None => Cow::Borrowed(path),
            Self::Prefix { strip, add } => {
                let mut rest = path;
                if let Some(s) = strip {
                    if let Some(after) = path.strip_prefix(s.as_str()) {
                        if after.is_empty() {
                            rest = "/";
                        } else if after.starts_with('/') {
                            rest = after;
                        }
                    }
                }
                match add {
                    None => Cow::Borrowed(rest),
                    Some(a) if rest == "/" => Cow::Owned(a.clone()),
                    Some(a) => Cow::Owned(format!("{a}{rest}")),
                }
            }
            Self::Template(parts) => {
                let mut out = String::with_capacity(path.len() + 16);
                for part in parts {
                    match part {
                        Part::Lit(s) => out.push_str(s),
                        Part::Param(i) => out.push_str(params.value(*i, path).unwrap_or("")),
                    }
                }
                if out.is_empty() {
                    out.push('/');
                }
                Cow::Owned(out)
            }
        }
    }
}

fn parse_template(template: &str, names: &[String]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_string()));
        }
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        let name = rest[start + 1..start + end].trim_start_matches('*');
        let index = names.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "`{{{name}}}` is not a parameter of this route's path (it has: {})",
                list(names)
            )
        })?;
        parts.push(Part::Param(index));
        rest = &rest[start + end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

//! Path patterns: `/users`, `/users/{id}`, `/files/{*rest}`, and prefixes such as `/api`
//! or `/tenants/{tenant}`. A pattern is a list of segments; parameters take a whole
//! segment, and a catch-all only the last one.

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal this text.
    Static(String),
    /// Any non-empty segment, captured under this name.
    Param(String),
    /// The rest of the path (possibly empty), captured under this name.
    CatchAll(String),
}

/// A parsed path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The segments, without the leading `/`.
    pub segments: Vec<Segment>,
    /// Whether the pattern matches the path and everything below it.
    pub prefix: bool,
}

impl Pattern {
    /// Parses a whole-path pattern (`match.path`).
    pub fn path(text: &str) -> Result<Self, String> {
        Self::parse(text, false)
    }

    /// Parses a prefix (`match.prefix`); a trailing `/` is ignored.
    pub fn prefix(text: &str) -> Result<Self, String> {
        let trimmed = text.trim_end_matches('/');
        Self::parse(if trimmed.is_empty() { "/" } else { trimmed }, true)
    }

    /// Parameter names, in path order.
    pub fn param_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) | Segment::CatchAll(n) => Some(n.clone()),
                Segment::Static(_) => None,
            })
            .collect()
    }

    fn parse(text: &str, prefix: bool) -> Result<Self, String> {
        let Some(body) = text.strip_prefix('/') else {
            return Err("must start with `/`".into());
        };
        if text.contains(['?', '#']) {
            return Err(
                "a path pattern cannot contain `?` or `#`; match queries with `match.query`".into(),
            );
        }
        let mut segments = Vec::new();
        if !(prefix && body.is_empty()) {
            let parts: Vec<&str> = body.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                segments.push(parse_segment(part, last, prefix)?);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for s in &segments {
            if let Segment::Param(n) | Segment::CatchAll(n) = s {
                if !seen.insert(n.as_str()) {
                    return Err(format!("parameter `{n}` appears twice"));
                }
            }
        }
        Ok(Self { segments, prefix })
    }
}

fn parse_segment(part: &str, last: bool, prefix: bool) -> Result<Segment, String> {
    let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) else {
        if part.contains(['{', '}']) {
            return Err(format!(
                "`{part}`: a parameter must be a whole segment, like `/{{id}}`"
            ));
        }
        return Ok(Segment::Static(part.to_string()));
    };
    if let Some(name) = inner.strip_prefix('*') {
        check_param_name(name)?;
        if !last {
            return Err(format!("catch-all `{{*{name}}}` must be the last segment"));
        }
        if prefix {
            return Err(
                "a prefix cannot end in a catch-all: it already matches everything below it".into(),
            );
        }
        return Ok(Segment::CatchAll(name.to_string()));
    }
    check_param_name(inner)?;
    Ok(Segment::Param(inner.to_string()))
}

fn check_param_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a parameter name: use letters, digits and `_`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    #[test]
    fn parses_patterns() {
        let p = Pattern::path("/users/{id}/files/{*rest}").unwrap();
        assert_eq!(
            p.segments,
            vec![
                Static("users".into()),
                Param("id".into()),
                Static("files".into()),
                CatchAll("rest".into())
            ]
        );
        assert_eq!(p.param_names(), vec!["id", "rest"]);
        assert_eq!(
            Pattern::path("/").unwrap().segments,
            vec![Static(String::new())]
        );
        assert!(Pattern::prefix("/").unwrap().segments.is_empty());
        assert_eq!(
            Pattern::prefix("/api/").unwrap().segments,
            vec![Static("api".into())]
        );
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(Pattern::path("users").unwrap_err().contains("start with"));
        assert!(Pattern::path("/a/{*rest}/b")
            .unwrap_err()
            .contains("last segment"));
        assert!(Pattern::path("/a/x{id}")
            .unwrap_err()
            .contains("whole segment"));
        assert!(Pattern::path("/a/{id}/{id}").unwrap_err().contains("twice"));
        assert!(Pattern::path("/a/{1x}")
            .unwrap_err()
            .contains("parameter name"));
        assert!(Pattern::path("/a?b=1").is_err());
        assert!(Pattern::prefix("/a/{*r}").is_err());
    }
}

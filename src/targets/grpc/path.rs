//! `google.api.http` path templates: `/v1/{name=shelves/*}/books/{book.id}:publish`.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! A variable without `=` matches one segment. `**` matches the rest of the path (it
//! must be the last segment). A variable's value is percent-decoded; one that spans
//! several segments keeps `%2F` encoded, so its slashes stay those of the path.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// `*`: any one segment.
    One,
    /// `**`: every remaining segment (zero or more).
    Rest,
}

/// A variable: its field path and the segments it covers, `[start, end)` (`end` is
/// `None` when it runs to the end through `**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    /// The field path, as written (`order.id`).
    pub field: Vec<String>,
    start: usize,
    end: Option<usize>,
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    text: String,
    segs: Vec<Seg>,
    vars: Vec<Var>,
    verb: Option<String>,
}

impl PathTemplate {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| format!("`{text}` must start with `/`"))?;
        // The verb is a `:` after the last `/` and outside braces.
        let (body, verb) = split_verb(rest);
        let mut segs = Vec::new();
        let mut vars = Vec::new();
        let mut chars = body;
        while !chars.is_empty() || segs.is_empty() {
            if let Some(after) = chars.strip_prefix('{') {
                let close = after
                    .find('}')
                    .ok_or_else(|| format!("`{text}`: `{{` without `}}`"))?;
                let inner = &after[..close];
                let (field, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (inner, "*"),
                };
                let field: Vec<String> = field.split('.').map(str::to_string).collect();
                if field.iter().any(|f| {
                    f.is_empty() || !f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                }) {
                    return Err(format!("`{text}`: `{inner}` is not a field path"));
                }
                let start = segs.len();
                for p in pattern.split('/') {
                    segs.push(segment(p, text)?);
                    if p.starts_with('{') {
                        return Err(format!("`{text}`: variables cannot nest"));
                    }
                }
                let end = (!matches!(segs.last(), Some(Seg::Rest))).then_some(segs.len());
                vars.push(Var { field, start, end });
                chars = &after[close + 1..];
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                segs.push(segment(&chars[..end], text)?);
                chars = &chars[end..];
            }
            match chars.strip_prefix('/') {
                Some(r) => chars = r,
                None if chars.is_empty() => break,
                None => return Err(format!("`{text}`: unexpected `{chars}`")),
            }
        }
        if let Some(i) = segs.iter().position(|s| *s == Seg::Rest) {
            if i + 1 != segs.len() {
                return Err(format!("`{text}`: `**` must be the last segment"));
            }
        }
        let mut seen: Vec<&Vec<String>> = Vec::new();
        for v in &vars {
            if seen.contains(&&v.field) {
                return Err(format!("`{text}`: `{}` is bound twice", v.field.join(".")));
            }
            seen.push(&v.field);
        }
        Ok(Self {
            text: text.to_string(),
            segs,
            vars,
            verb: verb.map(str::to_string),
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Matches `path`; on a match, each variable's value in order.
    pub fn matches(&self, path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        let (body, verb) = split_verb(rest);
        if verb != self.verb.as_deref() {
            return None;
        }
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.split('/').collect()
        };
        let rest_at = self.segs.iter().position(|s| *s == Seg::Rest);
        match rest_at {
            None if parts.len() != self.segs.len() => return None,
            Some(i) if parts.len() < i => return None,
            _ => {}
        }
        for (seg, part) in self.segs.iter().zip(&parts) {
            match seg {
                Seg::Lit(l) if l != part => return None,
                Seg::One if part.is_empty() => return None,
                _ => {}
            }
        }
        Some(
            self.vars
                .iter()
                .map(|v| {
                    let end = v.end.unwrap_or(parts.len()).min(parts.len());
                    let covered = &parts[v.start.min(end)..end];
                    if covered.len() == 1 && v.end.is_some() {
                        decode(covered[0], false)
                    } else {
                        covered
                            .iter()
                            .map(|p| decode(p, true))
                            .collect::<Vec<_>>()
                            .join("/")
                    }
                })
                .collect(),
        )
    }
}

fn split_verb(rest: &str) -> (&str, Option<&str>) {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let last = &rest[last_slash..];
    if last.contains('}') && !last.ends_with('}') {
        // `{x}:verb`
        if let Some(i) = last.rfind("}:") {
            let at = last_slash + i + 1;
            return (&rest[..at], Some(&rest[at + 1..]));
        }
    }
    match last.find(':') {
        Some(i) if !last.contains('{') => {
            let at = last_slash + i;
            (&rest[..at], Some(&rest[at + 1..]))
        }
        _ => (rest, None),
    }
}

fn segment(p: &str, text: &str) -> Result<Seg, String> {
    Ok(match p {
        "*" => Seg::One,
        "**" => Seg::Rest,
        "" => return Err(format!("`{text}`: an empty segment")),
        l if l.contains(['{', '}', '*']) => {
            return Err(format!("`{text}`: `{l}` is not a segment"))
        }
        l => Seg::Lit(l.to_string()),
    })
}

/// Percent-decodes one segment; `keep_slash` leaves `%2F` as it is.
fn decode(p: &str, keep_slash: bool) -> String {
    let plain = |x: &str| {
        percent_encoding::percent_decode_str(x)
            .decode_utf8_lossy()
            .into_owned()
    };
    if !keep_slash {
        return plain(p);
    }
    let mut out = String::new();
    let mut rest = p;
    while let Some(i) = rest.to_ascii_lowercase().find("%2f") {
        out.push_str(&plain(&rest[..i]));
        out.push_str("%2F");
        rest = &rest[i + 3..];
    }
    out.push_str(&plain(rest));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, p: &str) -> Option<Vec<String>> {
        PathTemplate::parse(t).unwrap().matches(p)
    }

    #[test]
    fn templates_match_literals_variables_and_wildcards() {
        assert_eq!(
            m("/v1/orders/{id}", "/v1/orders/42"),
            Some(vec!["42".into()])
        );
        assert_eq!(m("/v1/orders/{id}", "/v1/orders/42/x"), None);
        assert_eq!(m("/v1/orders/{id}", "/v1/orders"), None);
        assert_eq!(
            m("/v1/orders/{id}", "/v1/orders/a%20b"),
            Some(vec!["a b".into()])
        );
        assert_eq!(
            m("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec!["shelves/1/books/2".into()])
        );
        assert_eq!(
            m("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/cds/2"),
            None
        );
        assert_eq!(
            m("/v1/files/{path=**}", "/v1/files/a/b/c"),
            Some(vec!["a/b/c".into()])
        );
        assert_eq!(m("/v1/*/x", "/v1/anything/x"), Some(vec![]));
        assert_eq!(
            m("/v1/orders/{order.id}:cancel", "/v1/orders/7:cancel"),
            Some(vec!["7".into()])
        );
        assert_eq!(m("/v1/orders/{order.id}:cancel", "/v1/orders/7"), None);
        assert_eq!(m("/v1/orders:batch", "/v1/orders:batch"), Some(vec![]));
        let t = PathTemplate::parse("/v1/orders/{order.id}").unwrap();
        assert_eq!(t.vars()[0].field, ["order", "id"]);
    }

    #[test]
    fn bad_templates_are_refused() {
        for t in [
            "v1/x",
            "/v1/{id",
            "/v1/**/x",
            "/v1/{a.}",
            "/v1//x",
            "/v1/{a}/{a}",
        ] {
            assert!(PathTemplate::parse(t).is_err(), "{t}");
        }
    }
}

//! The non-path conditions of a route: methods, headers and query parameters, compiled
//! once per snapshot.

use http::header::{HeaderMap, HeaderName};
use http::Method;
use regex::Regex;

use crate::config::{MatchSpec, Problems, ValueMatchSpec};

/// What a value must be.
#[derive(Debug, Clone)]
enum Test {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

impl Test {
    fn compile(path: &str, spec: &ValueMatchSpec, p: &mut Problems) -> Option<Self> {
        if let Some(v) = &spec.exact {
            return Some(Self::Exact(v.clone()));
        }
        if let Some(r) = &spec.regex {
            return match regex::RegexBuilder::new(r).size_limit(1 << 20).build() {
                Ok(re) => Some(Self::Regex(re)),
                Err(e) => {
                    p.push(
                        format!("{path}.regex"),
                        format!("invalid regex: {}", regex_error(&e)),
                    );
                    None
                }
            };
        }
        spec.present.map(Self::Present)
    }

    fn check(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Present(want), v) => *want == v.is_some(),
            (Self::Exact(e), Some(v)) => e == v,
            (Self::Regex(re), Some(v)) => re.is_match(v),
            (_, None) => false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Exact(e) => format!("= {e:?}"),
            Self::Regex(r) => format!("~ /{}/", r.as_str()),
            Self::Present(true) => "present".into(),
            Self::Present(false) => "absent".into(),
        }
    }
}

/// The compiled conditions of one route.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Test)>,
    query: Vec<(String, Test)>,
}

/// Why a route's conditions failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Only the method differs: the route would take one of its methods.
    Method,
    /// A header or query condition failed (described).
    Other(String),
}

impl Conditions {
    /// Compiles `spec`; problems go to `p` with paths under `path`.
    pub fn compile(path: &str, spec: &MatchSpec, p: &mut Problems) -> Self {
        let methods = spec
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let headers = spec
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                Some((name, Test::compile(&format!("{path}.headers[{i}]"), h, p)?))
            })
            .collect();
        let query = spec
            .query
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                Some((
                    q.name.clone(),
                    Test::compile(&format!("{path}.query[{i}]"), q, p)?,
                ))
            })
            .collect();
        Self {
            methods,
            headers,
            query,
        }
    }

    /// How specific these conditions are: a method list counts one, each header and query
    /// condition one. More specific routes are tried first among routes of the same path.
    pub fn weight(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// The methods, empty for any.
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// Checks a request; header and query conditions are checked before the method, so
    /// that a method-only miss can produce 405 with `Allow`.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<(), Miss> {
        for (name, test) in &self.headers {
            let value = headers.get(name).and_then(|v| v.to_str().ok());
            if !test.check(value) {
                return Err(Miss::Other(format!("header {name} {}", test.describe())));
            }
        }
        for (name, test) in &self.query {
            let value = query.and_then(|q| query_value(q, name));
            if !test.check(value.as_deref()) {
                return Err(Miss::Other(format!("query {name} {}", test.describe())));
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return Err(Miss::Method);
        }
        Ok(())
    }
}

/// The one-line reason of a regex error (the crate's message spans several lines).
pub fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("error: "))
        .map_or_else(
            || text.lines().next().unwrap_or_default().to_string(),
            String::from,
        )
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value("a=1&version=2", "version").as_deref(),
            Some("2")
        );
        assert_eq!(query_value("q=a%20b+c", "q").as_deref(), Some("a b c"));
        assert_eq!(query_value("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_value("x=1", "y"), None);
    }
}

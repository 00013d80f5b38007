//! Request routing: host, then path, then methods, headers and query.
//!
//! The priority rule, the same for every request and shown by `turnpike explain`:
//! 1. Host: an exact host beats a wildcard (`*.example.com`; longer suffixes first), which
//!    beats routes without hosts. A less specific host table is tried only when the more
//!    specific one has no route for the request.
//! 2. Path, segment by segment from the left: a static segment beats a `{param}`, which
//!    beats a `{*catch_all}`, which beats a prefix ending there; a whole-path match beats a
//!    prefix at the same place, and a longer prefix beats a shorter one.
//! 3. Among routes with the same path pattern: more conditions first (a method list counts
//!    one, each header or query condition one), then the order in the file.
//!
//! When the best path's routes all fail their conditions, the walk goes on to the next
//! path in that order. When some route matched all but the method, the answer is 405
//! with `Allow`; otherwise 404.
//!
//! matchit was the first choice, but it refuses `{id}` and `{*rest}` at the same position
//! and returns one match without a fallback, and rule 3 needs ordered candidates; this
//! segment trie is small and does exactly the rule above.

pub mod conditions;
pub mod pattern;
pub mod rewrite;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::HeaderMap;
use http::Method;

pub use conditions::Conditions;
use conditions::Miss;
pub use pattern::{Pattern, Segment};

/// A route as the router knows it: its conditions, parameter names, and the value the
/// caller attached (the compiled route and pipeline).
#[derive(Debug)]
pub struct Entry<T> {
    /// The route name.
    pub name: Arc<str>,
    /// Position in the config file (ties are broken by it).
    pub order: usize,
    /// Methods, headers, query.
    pub conditions: Arc<Conditions>,
    /// Parameter names in path order.
    pub params: Arc<[String]>,
    /// The caller's value.
    pub value: T,
}

/// What the router needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The method.
    pub method: &'a Method,
    /// The host, lower case, without port.
    pub host: &'a str,
    /// The path (starts with `/`).
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// Captured parameters: byte ranges into the request path.
#[derive(Debug, Clone, Default)]
pub struct Params {
    names: Option<Arc<[String]>>,
    ranges: Vec<(u32, u32)>,
}

impl Params {
    /// The value of parameter `name` in `path` (the path the route matched).
    pub fn get<'p>(&self, name: &str, path: &'p str) -> Option<&'p str> {
        let names = self.names.as_ref()?;
        let i = names.iter().position(|n| n == name)?;
        self.value(i, path)
    }

    /// The value of the `i`-th parameter in path order.
    pub fn value<'p>(&self, i: usize, path: &'p str) -> Option<&'p str> {
        let (a, b) = *self.ranges.get(i)?;
        path.get(a as usize..b as usize)
    }

    /// `(name, value)` pairs.
    pub fn iter<'s, 'p>(&'s self, path: &'p str) -> impl Iterator<Item = (&'s str, &'p str)> + 's
    where
        'p: 's,
    {
        let names = self.names.as_deref().unwrap_or(&[]);
        names
            .iter()
            .zip(&self.ranges)
            .filter_map(move |(n, (a, b))| Some((n.as_str(), path.get(*a as usize..*b as usize)?)))
    }
}

/// The outcome of routing.
pub enum Found<'r, T> {
    /// A route matched.
    Route {
        /// The matched route.
        entry: &'r Entry<T>,
        /// Its captured parameters.
        params: Params,
    },
    /// Routes matched all but the method; these methods would be accepted.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

type Group<T> = Vec<Arc<Entry<T>>>;

struct Node<T> {
    statics: Vec<(Box<str>, Node<T>)>,
    param: Option<Box<Node<T>>>,
    exact: Group<T>,
    catch_all: Group<T>,
    prefix: Group<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            statics: Vec::new(),
            param: None,
            exact: Vec::new(),
            catch_all: Vec::new(),
            prefix: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn insert(&mut self, pattern: &Pattern, entry: Arc<Entry<T>>) {
        let mut node = self;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Static(s) => {
                    let i = match node.statics.binary_search_by(|(k, _)| k.as_ref().cmp(s)) {
                        Ok(i) => i,
                        Err(i) => {
                            node.statics
                                .insert(i, (s.clone().into_boxed_str(), Node::default()));
                            i
                        }
                    };
                    &mut node.statics[i].1
                }
                Segment::Param(_) => node.param.get_or_insert_with(Box::default),
                Segment::CatchAll(_) => {
                    node.catch_all.push(entry);
                    return;
                }
            };
        }
        if pattern.prefix {
            node.prefix.push(entry);
        } else {
            node.exact.push(entry);
        }
    }

    fn sort(&mut self) {
        for group in [&mut self.exact, &mut self.catch_all, &mut self.prefix] {
            group.sort_by_key(|e| (std::cmp::Reverse(e.conditions.weight()), e.order));
        }
        for (_, child) in &mut self.statics {
            child.sort();
        }
        if let Some(p) = &mut self.param {
            p.sort();
        }
    }

    /// Visits candidate groups in priority order until `visit` returns true.
    fn walk<'a, F>(
        &'a self,
        rest: Option<&str>,
        offset: usize,
        path_len: usize,
        caps: &mut Vec<(u32, u32)>,
        visit: &mut F,
    ) -> bool
    where
        F: FnMut(&'a [Arc<Entry<T>>], &[(u32, u32)]) -> bool,
    {
        match rest {
            None => {
                if !self.exact.is_empty() && visit(&self.exact, caps) {
                    return true;
                }
            }
            Some(r) => {
                let (seg, next, next_offset) = match r.find('/') {
                    Some(i) => (&r[..i], Some(&r[i + 1..]), offset + i + 1),
                    None => (r, None, offset + r.len()),
                };
                if let Ok(i) = self.statics.binary_search_by(|(k, _)| k.as_ref().cmp(seg)) {
                    if self.statics[i]
                        .1
                        .walk(next, next_offset, path_len, caps, visit)
                    {
                        return true;
                    }
                }
                if let Some(param) = &self.param {
                    if !seg.is_empty() {
                        caps.push((offset as u32, (offset + seg.len()) as u32));
                        if param.walk(next, next_offset, path_len, caps, visit) {
                            return true;
                        }
                        caps.pop();
                    }
                }
                if !self.catch_all.is_empty() {
                    caps.push((offset as u32, path_len as u32));
                    if visit(&self.catch_all, caps) {
                        return true;
                    }
                    caps.pop();
                }
            }
        }
        !self.prefix.is_empty() && visit(&self.prefix, caps)
    }
}

/// Collects routes, then builds an immutable [`Router`].
pub struct RouterBuilder<T> {
    exact: HashMap<String, Node<T>>,
    wildcard: Vec<(String, Node<T>)>,
    any: Node<T>,
}

impl<T> Default for RouterBuilder<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: Node::default(),
        }
    }
}

impl<T> RouterBuilder<T> {
    /// Adds `entry` under `host` (`None`: any host; `*.x.com`: wildcard) and `pattern`.
    pub fn insert(&mut self, host: Option<&str>, pattern: &Pattern, entry: Arc<Entry<T>>) {
        let node = match host.map(normalize_pattern) {
            None => &mut self.any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => {
                    let i = match self.wildcard.iter().position(|(s, _)| s == suffix) {
                        Some(i) => i,
                        None => {
                            self.wildcard.push((suffix.to_string(), Node::default()));
                            self.wildcard.len() - 1
                        }
                    };
                    &mut self.wildcard[i].1
                }
                None => self.exact.entry(h).or_default(),
            },
        };
        node.insert(pattern, entry);
    }

    /// Sorts every candidate group and freezes the router.
    pub fn build(mut self) -> Router<T> {
        self.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        for node in self.exact.values_mut() {
            node.sort();
        }
        for (_, node) in &mut self.wildcard {
            node.sort();
        }
        self.any.sort();
        Router {
            exact: self.exact,
            wildcard: self.wildcard,
            any: self.any,
        }
    }
}

fn normalize_pattern(host: &str) -> String {
    host.to_ascii_lowercase().trim_end_matches('.').to_string()
}

/// Strips the port and a trailing dot from a `Host` value and lower-cases it.
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |i| &host[..=i])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = without_port.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// A matched entry with its parameter ranges.
type Hit<'r, T> = (&'r Entry<T>, Vec<(u32, u32)>);

/// An immutable routing table, shared by every request of a snapshot.
pub struct Router<T> {
    exact: HashMap<String, Node<T>>,
    wildcard: Vec<(String, Node<T>)>,
    any: Node<T>,
}

impl<T> Router<T> {
    /// Finds the route for `q`. When `trace` is given, every decision is written to it
    /// (for `turnpike explain`); the decision is the same either way.
    pub fn find<'r>(&'r self, q: &Query<'_>, mut trace: Option<&mut Vec<String>>) -> Found<'r, T> {
        let mut allowed: Vec<Method> = Vec::new();
        for (label, node) in self.tables(q.host) {
            if let Some(t) = trace.as_deref_mut() {
                t.push(match label {
                    Some(suffix) if suffix.starts_with('.') => format!("host table `*{suffix}`"),
                    Some(host) => format!("host table `{host}`"),
                    None => "host table (any host)".to_string(),
                });
            }
            let mut hit: Option<Hit<'r, T>> = None;
            let mut caps = Vec::new();
            let rest = q.path.strip_prefix('/');
            node.walk(rest, 1, q.path.len(), &mut caps, &mut |group, caps| {
                for entry in group {
                    let result = entry.conditions.check(q.method, q.headers, q.query);
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(describe(entry, &result));
                    }
                    match result {
                        Ok(()) => {
                            hit = Some((entry.as_ref(), caps.to_vec()));
                            return true;
                        }
                        Err(Miss::Method) => {
                            for m in entry.conditions.methods() {
                                if !allowed.contains(m) {
                                    allowed.push(m.clone());
                                }
                            }
                        }
                        Err(Miss::Other(_)) => {}
                    }
                }
                false
            });
            if let Some((entry, ranges)) = hit {
                let params = Params {
                    names: (!entry.params.is_empty()).then(|| entry.params.clone()),
                    ranges,
                };
                return Found::Route { entry, params };
            }
        }
        if allowed.is_empty() {
            Found::NotFound
        } else {
            Found::MethodNotAllowed(allowed)
        }
    }

    /// The host tables that apply to `host`, most specific first, each with its label
    /// (`None` for the any-host table).
    fn tables<'s, 'h>(
        &'s self,
        host: &'h str,
    ) -> impl Iterator<Item = (Option<&'s str>, &'s Node<T>)> + use<'s, 'h, T> {
        let exact = self
            .exact
            .get_key_value(host)
            .map(|(k, n)| (Some(k.as_str()), n));
        let wild = self
            .wildcard
            .iter()
            .filter(move |(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(suffix, n)| (Some(suffix.as_str()), n));
        exact
            .into_iter()
            .chain(wild)
            .chain(std::iter::once((None, &self.any)))
    }
}

fn describe<T>(entry: &Entry<T>, result: &Result<(), Miss>) -> String {
    match result {
        Ok(()) => format!(
            "  route `{}`: path and all conditions match -> chosen",
            entry.name
        ),
        Err(Miss::Method) => format!(
            "  route `{}`: path matches, method not in {:?}",
            entry.name,
            entry
                .conditions
                .methods()
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
        ),
        Err(Miss::Other(why)) => format!("  route `{}`: path matches, but {why} fails", entry.name),
    }
}

#[cfg(test)]
mod tests;

/// Helpers for other modules' unit tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// Parameters with these names and byte ranges.
    pub fn params(names: &[&str], ranges: &[(u32, u32)]) -> Params {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Params {
            names: Some(names.into()),
            ranges: ranges.to_vec(),
        }
    }
}

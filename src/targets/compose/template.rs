//! The templates of a call: its path, query values, header values and JSON body.
//!
//! `{param}` (paths only) and `${param}` are the route's path parameters, inserted as
//! the client sent them (the router already normalized them); `${query.NAME}`,
//! `${header.NAME}` and `${claim.NAME}` read the client's request and token;
//! `${consumer}`, `${request_id}` and the other variables of `pipeline::template` work
//! too; `${call.field}`, `${call[0].field}` and `${call}` read another call's result and
//! make this call wait for it. Every inserted value is encoded for where it goes: a path
//! segment or a query component is percent-encoded (a value can never add a `/`, a `?`
//! or a dot segment), a header value must be a valid one, a JSON string is escaped.

use std::fmt::Write as _;

use http::HeaderName;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::pipeline::template::{Escape, Template};
use crate::pipeline::RequestCtx;

/// Everything but RFC 3986's unreserved characters is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One step into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

/// A reference to another call's result.
#[derive(Debug, Clone)]
pub struct Ref {
    /// The index of the call read.
    pub call: usize,
    /// The steps into its result.
    pub path: Vec<Seg>,
    /// The reference as written, for errors.
    pub text: String,
}

impl Ref {
    /// The referenced value in `results` (`None`: the call has no result, or the
    /// field is not there, or it is `null`).
    pub fn resolve<'v>(&self, results: &'v [Option<Value>]) -> Option<&'v Value> {
        let mut v = results.get(self.call)?.as_ref()?;
        for s in &self.path {
            v = match s {
                Seg::Key(k) => v.get(k.as_str())?,
                Seg::Index(i) => v.get(*i)?,
            };
        }
        (!v.is_null()).then_some(v)
    }

    /// The first member name the reference reads (after any leading indexes): what a
    /// `select` or `omit` of the call decides about.
    pub fn first_key(&self) -> Option<&str> {
        self.path.iter().find_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
    }
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Param(String),
    Ctx(Template),
    Query(String),
    Header(HeaderName),
    Claim(String),
    Ref(Ref),
}

/// Where a rendered template goes, which decides how inserted values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A path: values become percent-encoded segments (parameters stay as sent).
    Path,
    /// A query value: percent-encoded.
    Query,
    /// A header value or a JSON string: as is (escaped later, or checked).
    Text,
}

/// A value a template needed and did not find.
#[derive(Debug, Clone)]
pub struct Missing(pub String);

/// What a template may name, besides the builtin variables.
pub struct Names<'a> {
    /// The route's path parameters.
    pub params: &'a [String],
    /// The calls of the composition, by index.
    pub calls: &'a [String],
}

/// A compiled call template.
#[derive(Debug, Clone)]
pub struct CallTemplate {
    pieces: Vec<Piece>,
}

/// Words a call may not be named, because `${word...}` means something else.
pub const RESERVED: [&str; 4] = ["query", "header", "claim", "param"];

impl CallTemplate {
    /// Compiles `text`; `{name}` is a path parameter when `braces` (paths).
    pub fn compile(text: &str, names: &Names<'_>, braces: bool) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            let dollar = rest.starts_with("${");
            if dollar || (braces && rest.starts_with('{')) {
                let open = if dollar { 2 } else { 1 };
                let Some(end) = rest.find('}') else {
                    return Err(format!("`{rest}` opens a variable that never closes"));
                };
                let inner = &rest[open..end];
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(if dollar {
                    parse_var(inner, names)?
                } else if names.params.iter().any(|p| p == inner) {
                    Piece::Param(inner.to_string())
                } else {
                    return Err(format!(
                        "`{{{inner}}}` is not a path parameter of this route (known: {})",
                        list(names.params)
                    ));
                });
                rest = &rest[end + 1..];
                continue;
            }
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                lit.push(c);
            }
            rest = chars.as_str();
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Self { pieces })
    }

    /// The calls this template reads.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            _ => None,
        })
    }

    /// The literal text, when there are no variables.
    pub fn literal(&self) -> Option<&str> {
        match self.pieces.as_slice() {
            [] => Some(""),
            [Piece::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The one reference that makes up the whole template (`"${user.address}"`).
    pub fn whole_ref(&self) -> Option<&Ref> {
        match self.pieces.as_slice() {
            [Piece::Ref(r)] => Some(r),
            _ => None,
        }
    }

    /// Renders the template for `place`.
    pub fn render(
        &self,
        ctx: &RequestCtx,
        req: &http::request::Parts,
        results: &[Option<Value>],
        place: Place,
    ) -> Result<String, Missing> {
        let mut out = String::new();
        for piece in &self.pieces {
            let value: std::borrow::Cow<'_, str> = match piece {
                Piece::Lit(s) => {
                    out.push_str(s);
                    continue;
                }
                Piece::Param(name) => {
                    let v = ctx.param(name).unwrap_or("");
                    if place == Place::Path {
                        // As the router matched it: normalized and percent-encoded.
                        out.push_str(v);
                        continue;
                    }
                    decode(v)
                }
                Piece::Ctx(t) => t.render(ctx).into(),
                Piece::Query(name) => match query_value(req.uri.query(), name) {
                    Some(v) => v,
                    None => return Err(Missing(format!("query parameter `{name}`"))),
                },
                Piece::Header(name) => match req.headers.get(name).map(|v| v.to_str()) {
                    Some(Ok(v)) => v.into(),
                    _ => return Err(Missing(format!("header `{name}`"))),
                },
                Piece::Claim(name) => {
                    let claim = ctx
                        .identity
                        .as_ref()
                        .and_then(|i| i.claims.as_ref())
                        .and_then(|c| c.get(name).cloned());
                    match claim.as_ref().and_then(text) {
                        Some(v) => v.into_owned().into(),
                        None => return Err(Missing(format!("claim `{name}`"))),
                    }
                }
                Piece::Ref(r) => match r.resolve(results).and_then(text) {
                    Some(v) => v,
                    None => return Err(Missing(format!("`${{{}}}`", r.text))),
                },
            };
            match place {
                Place::Text => out.push_str(&value),
                Place::Query => out.extend(utf8_percent_encode(&value, COMPONENT)),
                Place::Path => match value.as_ref() {
                    // A dot segment would move the path; encoded, it is a name.
                    "." => out.push_str("%2E"),
                    ".." => out.push_str("%2E%2E"),
                    v => out.extend(utf8_percent_encode(v, COMPONENT)),
                },
            }
        }
        Ok(out)
    }
}

/// A JSON value as text: strings as they are, numbers and booleans written, objects and
/// arrays as JSON (`None` for `null`).
pub fn text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.as_str().into()),
        other => Some(other.to_string().into()),
    }
}

fn decode(v: &str) -> std::borrow::Cow<'_, str> {
    percent_encoding::percent_decode_str(v).decode_utf8_lossy()
}

/// The first value of query parameter `name`, decoded (`+` is a space).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    let query = query?;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode_form(k) == name {
            return Some(decode_form(v));
        }
    }
    None
}

pub(crate) fn decode_form(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains('+') {
        let spaced = v.replace('+', " ");
        std::borrow::Cow::Owned(decode(&spaced).into_owned())
    } else {
        decode(v)
    }
}

fn parse_var(inner: &str, names: &Names<'_>) -> Result<Piece, String> {
    let inner = inner.trim();
    if let Some((kind, name)) = inner.split_once('.') {
        match kind {
            "query" if !name.is_empty() => return Ok(Piece::Query(name.to_string())),
            "claim" if !name.is_empty() => return Ok(Piece::Claim(name.to_string())),
            "header" => {
                return HeaderName::from_bytes(name.as_bytes())
                    .map(Piece::Header)
                    .map_err(|_| format!("`${{{inner}}}`: `{name}` is not a header name"))
            }
            _ => {}
        }
    }
    let head_len = inner.find(['.', '[']).unwrap_or(inner.len());
    let head = &inner[..head_len];
    if let Some(call) = names.calls.iter().position(|c| c == head) {
        let path = parse_path(&inner[head_len..]).map_err(|e| format!("`${{{inner}}}`: {e}"))?;
        return Ok(Piece::Ref(Ref {
            call,
            path,
            text: inner.to_string(),
        }));
    }
    if names.params.iter().any(|p| p == inner) {
        return Ok(Piece::Param(inner.to_string()));
    }
    match Template::compile(&format!("${{{inner}}}"), names.params, Escape::None) {
        Ok(t) => Ok(Piece::Ctx(t)),
        Err(e) => Err(format!(
            "{e}; `${{query.NAME}}`, `${{header.NAME}}`, `${{claim.NAME}}` and the calls ({}) too",
            list(names.calls)
        )),
    }
}

/// `.a[0].b` into steps.
fn parse_path(mut rest: &str) -> Result<Vec<Seg>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err("an empty field name".into());
            }
            out.push(Seg::Key(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or("`[` without `]`")?;
            let i: usize = r[..end]
                .parse()
                .map_err(|_| format!("`[{}]` is not an array index", &r[..end]))?;
            out.push(Seg::Index(i));
            rest = &r[end + 1..];
        } else {
            return Err(format!("unexpected `{rest}`"));
        }
    }
    Ok(out)
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{n}");
    }
    s
}

/// A JSON body template: constants kept, strings rendered, whole references replaced
/// by the referenced value.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A value without templates.
    Const(Value),
    /// A string with variables.
    Text(CallTemplate),
    /// A string that is one reference: the referenced JSON value.
    Value(Ref),
    /// An array.
    Array(Vec<JsonTemplate>),
    /// An object.
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// Compiles a JSON body.
    pub fn compile(v: &Value, names: &Names<'_>) -> Result<Self, String> {
        Ok(match v {
            Value::String(s) => {
                let t = CallTemplate::compile(s, names, false)?;
                if let Some(r) = t.whole_ref() {
                    JsonTemplate::Value(r.clone())
                } else if t.literal().is_some() {
                    JsonTemplate::Const(v.clone())
                } else {
                    JsonTemplate::Text(t)
                }
            }
            Value::Array(items) => JsonTemplate::Array(
                items
                    .iter()
                    .map(|i| Self::compile(i, names))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => JsonTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile(v, names)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => JsonTemplate::Const(other.clone()),
        })
    }

    /// Every reference in the body.
    pub fn refs(&self, out: &mut Vec<Ref>) {
        match self {
            JsonTemplate::Const(_) => {}
            JsonTemplate::Text(t) => out.extend(t.refs().cloned()),
            JsonTemplate::Value(r) => out.push(r.clone()),
            JsonTemplate::Array(items) => items.iter().for_each(|i| i.refs(out)),
            JsonTemplate::Object(m) => m.iter().for_each(|(_, v)| v.refs(out)),
        }
    }

    /// Renders the body.
    pub fn render(
        &self,
        ctx: &RequestCtx,
        req: &http::request::Parts,
        results: &[Option<Value>],
    ) -> Result<Value, Missing> {
        Ok(match self {
            JsonTemplate::Const(v) => v.clone(),
            JsonTemplate::Text(t) => Value::String(t.render(ctx, req, results, Place::Text)?),
            JsonTemplate::Value(r) => match r.resolve(results) {
                Some(v) => v.clone(),
                None => return Err(Missing(format!("`${{{}}}`", r.text))),
            },
            JsonTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render(ctx, req, results))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTemplate::Object(m) => {
                let mut out = serde_json::Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), v.render(ctx, req, results)?);
                }
                Value::Object(out)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(params: &'a [String], calls: &'a [String]) -> Names<'a> {
        Names { params, calls }
    }

    #[test]
    fn parses_references_params_and_variables() {
        let params = vec!["id".to_string()];
        let calls = vec!["user".to_string(), "orders".to_string()];
        let n = names(&params, &calls);
        let t = CallTemplate::compile("/u/{id}/o/${orders[0].id}/${request_id}", &n, true).unwrap();
        let refs: Vec<_> = t.refs().collect();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].call, 1);
        assert_eq!(refs[0].path, [Seg::Index(0), Seg::Key("id".into())]);
        assert_eq!(refs[0].first_key(), Some("id"));
        assert!(CallTemplate::compile("/{nope}", &n, true)
            .unwrap_err()
            .contains("not a path parameter"));
        let e = CallTemplate::compile("/${nobody.x}", &n, true).unwrap_err();
        assert!(
            e.contains("unknown variable") && e.contains("user, orders"),
            "{e}"
        );
        assert!(CallTemplate::compile("/${user[x]}", &n, true).is_err());
        assert!(CallTemplate::compile("/${user", &n, true).is_err());
        // Braces mean nothing outside paths.
        assert_eq!(
            CallTemplate::compile("{a}", &n, false).unwrap().literal(),
            Some("{a}")
        );
    }

    #[test]
    fn values_are_encoded_for_where_they_go() {
        let params: Vec<String> = Vec::new();
        let calls = vec!["a".to_string()];
        let n = names(&params, &calls);
        let t = CallTemplate::compile("/x/${a.v}", &n, true).unwrap();
        let ctx = RequestCtx::for_test();
        let (parts, _) = http::Request::new(()).into_parts();
        let with = |v: Value| vec![Some(serde_json::json!({ "v": v }))];
        let path = |v: Value| t.render(&ctx, &parts, &with(v), Place::Path).unwrap();
        assert_eq!(path("../admin?x=1#f".into()), "/x/..%2Fadmin%3Fx%3D1%23f");
        assert_eq!(path("..".into()), "/x/%2E%2E");
        assert_eq!(path(7.into()), "/x/7");
        assert_eq!(
            t.render(&ctx, &parts, &with("a b&c".into()), Place::Query)
                .unwrap(),
            "/x/a%20b%26c"
        );
        let missing = t.render(&ctx, &parts, &with(Value::Null), Place::Path);
        assert!(missing.unwrap_err().0.contains("${a.v}"));
        assert!(t.render(&ctx, &parts, &[None], Place::Path).is_err());
    }

    #[test]
    fn json_bodies_keep_types_of_whole_references() {
        let params: Vec<String> = Vec::new();
        let calls = vec!["u".to_string()];
        let n = names(&params, &calls);
        let body = serde_json::json!({"addr": "${u.addr}", "n": "id-${u.id}", "k": 1});
        let t = JsonTemplate::compile(&body, &n).unwrap();
        let ctx = RequestCtx::for_test();
        let (parts, _) = http::Request::new(()).into_parts();
        let results = vec![Some(serde_json::json!({"addr": {"c": "x"}, "id": 5}))];
        let v = t.render(&ctx, &parts, &results).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"addr": {"c": "x"}, "n": "id-5", "k": 1})
        );
    }

    #[test]
    fn query_values_are_read_decoded() {
        assert_eq!(
            query_value(Some("a=1&q=x+y%21"), "q").as_deref(),
            Some("x y!")
        );
        assert_eq!(query_value(Some("a=1"), "q"), None);
    }
}

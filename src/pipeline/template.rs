//! Runtime templates: header values and response bodies with `${...}` variables,
//! compiled once per snapshot into literal pieces and variable references.
//!
//! Variables: `${request_id}`, `${route}`, `${client_ip}`, `${method}`, `${host}`,
//! `${path}`, `${upstream}`, `${tls_version}`, `${tls_sni}`, `${client_cert_subject}`,
//! `${client_cert_fingerprint}`, `${client_cert_san}` (empty without TLS or without a
//! client certificate), and the route's path parameters by name (`${id}`).
//! Environment variables and `${file:...}` were already substituted when the file was
//! loaded.

use std::fmt::Write as _;

use http::HeaderValue;

use super::RequestCtx;

/// What a variable refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Consumer,
    RequestId,
    Route,
    ClientIp,
    Method,
    Host,
    Path,
    Upstream,
    TlsVersion,
    TlsSni,
    CertSubject,
    CertFingerprint,
    CertSan,
    Param(String),
}

const BUILTIN: [&str; 13] = [
    "consumer",
    "request_id",
    "route",
    "client_ip",
    "method",
    "host",
    "path",
    "upstream",
    "tls_version",
    "tls_sni",
    "client_cert_subject",
    "client_cert_fingerprint",
    "client_cert_san",
];

#[derive(Debug, Clone)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// How rendered variables are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As is (header values, text bodies).
    None,
    /// As the inside of a JSON string.
    Json,
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    escape: Escape,
    literal: Option<HeaderValue>,
}

impl Template {
    /// Compiles `text`; `params` are the route's parameter names. Unknown variables are an
    /// error that lists the known ones.
    pub fn compile(text: &str, params: &[String], escape: Escape) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_string()));
            }
            let name = &rest[start + 2..start + len];
            pieces.push(Piece::Var(parse_var(name, params)?));
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        let literal = match pieces.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Piece::Lit(s)] => HeaderValue::from_str(s).ok(),
            _ => None,
        };
        Ok(Self {
            pieces,
            escape,
            literal,
        })
    }

    /// Whether the template has no variables.
    pub fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// Renders the template for one request.
    pub fn render(&self, ctx: &RequestCtx) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(v) => self.push_var(&mut out, v, ctx),
            }
        }
        out
    }

    /// Renders the template as a header value; `None` if the result is not a valid value
    /// (a variable carried a control character).
    pub fn header_value(&self, ctx: &RequestCtx) -> Option<HeaderValue> {
        match &self.literal {
            Some(v) => Some(v.clone()),
            None => HeaderValue::from_str(&self.render(ctx)).ok(),
        }
    }

    fn push_var(&self, out: &mut String, var: &Var, ctx: &RequestCtx) {
        let value: std::borrow::Cow<'_, str> = match var {
            Var::RequestId => ctx.request_id_str().into(),
            Var::Route => ctx.route.as_deref().unwrap_or("").into(),
            Var::ClientIp => {
                let mut s = String::new();
                let _ = write!(s, "{}", ctx.client_ip);
                s.into()
            }
            Var::Method => ctx.method.as_str().into(),
            Var::Host => ctx.host_str().into(),
            Var::Path => ctx.uri.path().into(),
            Var::Upstream => ctx.upstream.as_deref().unwrap_or("").into(),
            Var::Consumer => ctx.consumer_name().into(),
            Var::Param(name) => ctx.param(name).unwrap_or("").into(),
            Var::TlsVersion => ctx.tls.as_ref().map_or("", |t| t.version).into(),
            Var::TlsSni => ctx
                .tls
                .as_ref()
                .and_then(|t| t.sni.as_deref())
                .unwrap_or("")
                .into(),
            Var::CertSubject | Var::CertFingerprint | Var::CertSan => {
                let id = ctx.tls.as_ref().and_then(|t| t.client.as_deref());
                match (var, id) {
                    (_, None) => "".into(),
                    (Var::CertSubject, Some(id)) => id.subject.as_str().into(),
                    (Var::CertFingerprint, Some(id)) => id.fingerprint.as_str().into(),
                    (_, Some(id)) => id
                        .uris
                        .first()
                        .or(id.dns.first())
                        .map_or("", String::as_str)
                        .into(),
                }
            }
        };
        match self.escape {
            Escape::None => out.push_str(&value),
            Escape::Json => {
                let quoted = serde_json::Value::String(value.into_owned()).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
    }
}

fn parse_var(name: &str, params: &[String]) -> Result<Var, String> {
    Ok(match name {
        "request_id" => Var::RequestId,
        "route" => Var::Route,
        "client_ip" => Var::ClientIp,
        "method" => Var::Method,
        "host" => Var::Host,
        "path" => Var::Path,
        "upstream" => Var::Upstream,
        "consumer" => Var::Consumer,
        "tls_version" => Var::TlsVersion,
        "tls_sni" => Var::TlsSni,
        "client_cert_subject" => Var::CertSubject,
        "client_cert_fingerprint" => Var::CertFingerprint,
        "client_cert_san" => Var::CertSan,
        p if params.iter().any(|n| n == p) => Var::Param(p.to_string()),
        other => {
            let mut known: Vec<&str> = BUILTIN.to_vec();
            known.extend(params.iter().map(String::as_str));
            return Err(format!(
                "unknown variable `${{{other}}}`; known here: {}",
                known.join(", ")
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_templates_are_precomputed() {
        let t = Template::compile("static", &[], Escape::None).unwrap();
        assert!(t.is_literal());
        assert_eq!(t.literal.as_ref().unwrap(), "static");
    }

    #[test]
    fn unknown_variables_are_errors() {
        let err = Template::compile("x-${nope}", &["id".into()], Escape::None).unwrap_err();
        assert!(err.contains("unknown variable `${nope}`"), "{err}");
        assert!(err.contains("request_id") && err.contains("id"), "{err}");
        assert!(Template::compile("${id}", &["id".into()], Escape::None).is_ok());
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;

    #[test]
    fn renders_builtins_and_escapes_json() {
        let ctx = RequestCtx::for_test();
        let t = Template::compile(
            "${method} ${host}${path} by ${client_ip} (${request_id}) on ${route}",
            &[],
            Escape::None,
        )
        .unwrap();
        assert_eq!(
            t.render(&ctx),
            "GET api.test/users/7 by 10.0.0.1 (test-id) on users"
        );
        let mut ctx = RequestCtx::for_test();
        ctx.host = HeaderValue::from_static("a\"b");
        let j = Template::compile("{\"h\":\"${host}\"}", &[], Escape::Json).unwrap();
        assert_eq!(j.render(&ctx), "{\"h\":\"a\\\"b\"}");
    }
}

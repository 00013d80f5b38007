//! `respond`: answers from the gateway itself (static content, mocks, maintenance pages).
//! Header values and bodies may use `${...}` variables; in a `json` body they are
//! inserted as JSON string content, escaped.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::StatusCode;

use crate::config::{Problems, RespondSpec};
use crate::http::{Body, Response};
use crate::pipeline::template::{Escape, Template};
use crate::pipeline::RequestCtx;

enum Content {
    Empty,
    Static(Bytes),
    Dynamic(Template),
}

/// A compiled `respond` target.
pub struct Respond {
    status: StatusCode,
    headers: Vec<(HeaderName, Template)>,
    content: Content,
    content_type: Option<HeaderValue>,
}

impl Respond {
    /// Compiles `spec` for a route with parameters `params`.
    pub fn build(
        path: &str,
        spec: &RespondSpec,
        params: &[String],
        p: &mut Problems,
    ) -> Option<Self> {
        let status = StatusCode::from_u16(spec.status).ok()?;
        let mut headers = Vec::new();
        for (name, value) in &spec.headers {
            let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                continue;
            };
            match Template::compile(value, params, Escape::None) {
                Ok(t) => headers.push((n, t)),
                Err(e) => p.push(format!("{path}.headers.{name}"), e),
            }
        }
        let (text, escape, content_type) = match (&spec.body, &spec.json) {
            (Some(b), _) => (Some(b.clone()), Escape::None, "text/plain; charset=utf-8"),
            (None, Some(j)) => (Some(j.to_string()), Escape::Json, "application/json"),
            (None, None) => (None, Escape::None, ""),
        };
        let content = match text {
            None => Content::Empty,
            Some(t) => match Template::compile(&t, params, escape) {
                Ok(tpl) if tpl.is_literal() => Content::Static(Bytes::from(t)),
                Ok(tpl) => Content::Dynamic(tpl),
                Err(e) => {
                    p.push(
                        format!(
                            "{path}.{}",
                            if spec.body.is_some() { "body" } else { "json" }
                        ),
                        e,
                    );
                    Content::Empty
                }
            },
        };
        let has_type = headers.iter().any(|(n, _)| n == CONTENT_TYPE);
        let content_type =
            (!content_type.is_empty() && !has_type).then(|| HeaderValue::from_static(content_type));
        Some(Self {
            status,
            headers,
            content,
            content_type,
        })
    }

    /// The status answered.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// Builds the response for one request.
    pub fn call(&self, ctx: &RequestCtx) -> Response {
        let body = match &self.content {
            Content::Empty => Body::Empty,
            Content::Static(b) => Body::full(b.clone()),
            Content::Dynamic(t) => Body::full(t.render(ctx)),
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(ct) = &self.content_type {
            h.insert(CONTENT_TYPE, ct.clone());
        }
        for (name, t) in &self.headers {
            if let Some(v) = t.header_value(ctx) {
                h.append(name.clone(), v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn build(yaml: &str, params: &[&str]) -> Respond {
        let spec: RespondSpec = serde_saphyr::from_str(yaml).unwrap();
        let params: Vec<String> = params.iter().map(|s| s.to_string()).collect();
        let mut p = Problems::default();
        let r = Respond::build("r", &spec, &params, &mut p).unwrap();
        assert!(p.is_empty());
        r
    }

    #[tokio::test]
    async fn json_bodies_render_escaped_params() {
        let r = build(
            "status: 201\njson:\n  id: \"${id}\"\n  ok: true\nheaders:\n  x-id: \"${id}\"\n",
            &["id"],
        );
        let mut ctx = RequestCtx::for_test();
        ctx.uri = http::Uri::from_static("/users/a%22b");
        ctx.params = crate::router::tests_support::params(&["id"], &[(7, 12)]);
        let resp = r.call(&ctx);
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-id"], "a%22b");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "a%22b");
        assert_eq!(v["ok"], true);
    }

    #[tokio::test]
    async fn static_text_and_explicit_content_type() {
        let r = build("body: hello\nheaders:\n  content-type: text/html\n", &[]);
        let resp = r.call(&RequestCtx::for_test());
        assert_eq!(resp.status(), 200);
        let types: Vec<_> = resp.headers().get_all("content-type").iter().collect();
        assert_eq!(types, ["text/html"]);
        assert_eq!(
            &resp.into_body().collect().await.unwrap().to_bytes()[..],
            b"hello"
        );
    }
}

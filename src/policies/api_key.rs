//! `api_key`: authenticates a request by a key a consumer owns, read from a header
//! (`x-api-key` by default) or, when configured, a query parameter.
//!
//! A missing key and a wrong key are both 401 with `WWW-Authenticate: ApiKey`. The key
//! is removed from the request before it is proxied (`strip`, on by default), so the
//! upstream never sees a credential that is not its own. Keys are compared by SHA-256
//! digest in constant time (see [`super::consumers`]).

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::consumers::{Consumers, Identity};
use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: api_key`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The header holding the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// A query parameter that may hold the key too (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Remove the key from the request before proxying.
    #[serde(default = "yes")]
    pub strip: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

fn yes() -> bool {
    true
}

/// The built `api_key` policy.
#[derive(Debug)]
pub struct ApiKey {
    header: HeaderName,
    query: Option<String>,
    strip: bool,
    consumers: Arc<Consumers>,
}

const CHALLENGE: HeaderValue = HeaderValue::from_static("ApiKey");

fn unauthorized(reason: &'static str) -> GatewayError {
    GatewayError::Unauthorized {
        reason,
        challenge: Some(CHALLENGE),
    }
}

impl ApiKey {
    /// Builds the policy from its spec.
    pub fn build(
        path: &str,
        spec: &ApiKeySpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        let Ok(header) = HeaderName::from_bytes(spec.header.as_bytes()) else {
            p.push(
                format!("{path}.header"),
                format!("`{}` is not a valid header name", spec.header),
            );
            return None;
        };
        if spec.query.as_deref() == Some("") {
            p.push(format!("{path}.query"), "must not be empty");
        }
        Some(Self {
            header,
            query: spec.query.clone(),
            strip: spec.strip,
            consumers: cx.consumers.clone(),
        })
    }

    /// Looks the key up; on success records the consumer and tells the upstream.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let consumer = {
            // The header's bytes are borrowed, not copied; only a query value is decoded.
            let presented: Option<std::borrow::Cow<'_, [u8]>> =
                match req.headers().get(&self.header) {
                    Some(v) => Some(std::borrow::Cow::Borrowed(v.as_bytes())),
                    None => self
                        .query
                        .as_deref()
                        .and_then(|name| query_value(req.uri(), name))
                        .map(std::borrow::Cow::Owned),
                };
            let Some(key) = presented.filter(|k| !k.is_empty()) else {
                return Err(unauthorized("no API key in the request"));
            };
            let Some(consumer) = self.consumers.by_api_key(&key) else {
                return Err(unauthorized("invalid API key"));
            };
            consumer.clone()
        };
        let who = Identity::new(Some(consumer), "api_key");
        if self.strip {
            req.headers_mut().remove(&self.header);
            // What is forwarded is built from the context's target.
            if let Some(uri) = self
                .query
                .as_deref()
                .and_then(|q| without_query_param(&ctx.uri, q))
            {
                ctx.uri = uri.clone();
                *req.uri_mut() = uri;
            }
        }
        self.consumers
            .write_headers(&who, ctx.identity.is_some(), req.headers_mut());
        ctx.identity = Some(who);
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}

/// The percent-decoded value of query parameter `name` (the first one).
pub(crate) fn query_value(uri: &http::Uri, name: &str) -> Option<Vec<u8>> {
    let query = uri.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_encoding::percent_decode_str(k).decode_utf8().ok()?;
        (k == name).then(|| percent_encoding::percent_decode_str(v).collect())
    })
}

/// `uri` without its `name=...` query pairs (`None`: nothing to remove). The path is
/// kept byte for byte, so path parameters (ranges into it) stay valid.
fn without_query_param(uri: &http::Uri, name: &str) -> Option<http::Uri> {
    let query = uri.query()?;
    let is_key = |pair: &&str| {
        let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
        percent_encoding::percent_decode_str(k)
            .decode_utf8()
            .is_ok_and(|k| k == name)
    };
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_key(pair)).collect();
    let mut pq = uri.path().to_string();
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_stripped_alone() {
        let uri: http::Uri = "/p?a=1&apikey=k%2By&b=2".parse().unwrap();
        assert_eq!(query_value(&uri, "apikey").unwrap(), b"k+y");
        assert!(query_value(&uri, "missing").is_none());
        assert_eq!(without_query_param(&uri, "apikey").unwrap(), "/p?a=1&b=2");
        let only: http::Uri = "/p?apikey=x".parse().unwrap();
        assert_eq!(without_query_param(&only, "apikey").unwrap(), "/p");
        assert!(without_query_param(&only, "other").is_none());
    }
}

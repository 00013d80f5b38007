//! A small HTTP client for the gateway's own calls to identity providers (JWKS
//! documents, OAuth2 token introspection): one request per connection, a deadline on the
//! whole exchange, and a cap on the body size, so a slow, hostile or huge answer costs a
//! bounded amount of time and memory. Proxied traffic never goes through here.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::{Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tls::client::UpstreamTls;

/// What one call sends.
pub struct Call<'a> {
    /// `http://` or `https://` URL.
    pub url: &'a Uri,
    /// GET or POST.
    pub method: Method,
    /// Extra request headers.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// The request body (empty for GET).
    pub body: Bytes,
    /// TLS settings for `https://` (the system roots when `None`).
    pub tls: Option<&'a UpstreamTls>,
    /// The deadline of the whole exchange: connect, request, and the body read.
    pub timeout: Duration,
    /// The largest body accepted; a longer one is an error.
    pub max_body: usize,
}

/// Makes `call`; the answer's status and body, or why it failed (for the logs).
pub async fn fetch(call: Call<'_>) -> Result<(http::StatusCode, Bytes), String> {
    match tokio::time::timeout(call.timeout, exchange(&call)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no complete answer within {:?}", call.timeout)),
    }
}

fn default_tls() -> Result<UpstreamTls, String> {
    let spec = crate::config::UpstreamTlsSpec::default();
    UpstreamTls::build(&spec, false, None).map_err(|(_, e)| e)
}

async fn exchange(call: &Call<'_>) -> Result<(http::StatusCode, Bytes), String> {
    let url = call.url;
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
    };
    let host = url.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = url
        .authority()
        .map_or_else(|| host.to_string(), |a| a.as_str().to_string());
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = http::Request::builder()
        .method(call.method.clone())
        .uri(path)
        .body(Full::new(call.body.clone()))
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    h.insert(
        HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    h.insert(USER_AGENT, HeaderValue::from_static("turnpike"));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    for (k, v) in &call.headers {
        h.insert(k.clone(), v.clone());
    }
    if https {
        let owned;
        let tls = match call.tls {
            Some(t) => t,
            None => {
                owned = default_tls()?;
                &owned
            }
        };
        let name = tls
            .name_for(host)
            .ok_or_else(|| format!("`{host}` is not a valid TLS name"))?;
        let stream = tls.connect(name, tcp).await?;
        send(TokioIo::new(stream), req, call.max_body).await
    } else {
        send(TokioIo::new(tcp), req, call.max_body).await
    }
}

async fn send<I>(
    io: I,
    req: http::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(http::StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        if let Some(n) = http_body::Body::size_hint(resp.body()).upper() {
            if n > max_body as u64 {
                return Err(format!(
                    "answer of {n} bytes is over the {max_body}-byte cap"
                ));
            }
        }
        let mut body = resp.into_body();
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the answer failed: {e}"))?;
            if let Some(data) = frame.data_ref() {
                if out.len() + data.len() > max_body {
                    return Err(format!("answer over the {max_body}-byte cap"));
                }
                out.extend_from_slice(data);
            }
        }
        Ok((status, out.freeze()))
    }
    .await;
    driver.abort();
    result
}

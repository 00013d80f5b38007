//! The benchmark upstream of ../shared/reference/benchmarking.md: a tiny hyper server on
//! a current-thread runtime answering every request with `200 {"ok":true,"msg":"hello"}`
//! (25 bytes) over keep-alive HTTP/1.1.
//!
//! Usage: `bench_upstream 127.0.0.1:9100`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"ok":true,"msg":"hello"}"#;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(BODY)));
                    resp.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

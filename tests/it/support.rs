//! Test support: the gateway in-process on port 0, real HTTP upstreams on loopback, a
//! small client, and polling with a deadline (never sleep-and-hope).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use turnpike::config::load_str;
use turnpike::upstream::dns::Resolve;
use turnpike::{Gateway, Options};

/// Starts a gateway from YAML (listeners should use port 0).
pub async fn gateway(yaml: &str) -> Gateway {
    gateway_with(
        yaml,
        Options {
            reload_on_sighup: false,
            watch_config: false,
            ..Options::default()
        },
    )
    .await
}

/// Starts a gateway with a custom resolver.
pub async fn gateway_with_resolver(yaml: &str, resolver: Arc<dyn Resolve>) -> Gateway {
    gateway_with(
        yaml,
        Options {
            resolver,
            reload_on_sighup: false,
            watch_config: false,
        },
    )
    .await
}

pub async fn gateway_with(yaml: &str, options: Options) -> Gateway {
    let loaded = load_str(yaml, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("config:\n{e}\n---\n{yaml}"));
    Gateway::start(loaded, options)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// The base URL of a gateway listener.
pub fn url(gw: &Gateway, listener: &str) -> String {
    format!("http://{}", gw.listener_addr(listener).expect("listener"))
}

/// What an echo upstream saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Echo {
    pub server: String,
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: usize,
}

impl Echo {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
        ) -> std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// An upstream answering every request with `handler`.
pub async fn upstream_fn<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler).await
}

async fn serve_on(listener: TcpListener, handler: Handler) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits, task }
}

/// An upstream that answers with a JSON [`Echo`] of what it received.
pub async fn echo(name: &str) -> Upstream {
    let name = name.to_string();
    upstream_fn(move |req| {
        let name = name.clone();
        async move { echo_response(&name, req).await }
    })
    .await
}

pub async fn echo_response(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let v = serde_json::json!({
        "server": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .header("connection", "x-hop")
        .header("x-hop", "must not reach the client")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn echo(&self) -> Echo {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A pooling HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole response.
pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let resp = client().request(req).await.expect("request failed");
    read(resp).await
}

pub async fn read(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(request("GET", url, headers, "")).await
}

pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Polls `check` until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a metric series (the line of `/metrics` that starts with `series `),
/// read from the gateway's registry in-process.
pub fn metric_value(gw: &Gateway, series: &str) -> Option<i64> {
    let text = gw.runtime().metrics.render();
    text.lines()
        .find(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Sends raw bytes and reads until the peer closes or `within` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], within: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A port that refuses connections for as long as the tests run: bound by a socket that
/// never listens (and is kept), so that no other test's server can take the port over
/// (a freed ephemeral port can be handed to the next `bind(0)`).
pub async fn closed_port() -> SocketAddr {
    static KEPT: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    KEPT.lock().unwrap().push(s);
    addr
}

/// A port free now, for a server the test starts on it.
pub async fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A running `turnpike run`, with the bound addresses read from its startup log.
pub struct Binary {
    pub child: std::process::Child,
    /// The first client listener.
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
}

/// Starts `turnpike run` on `config` and returns it with the bound address of the first
/// listener (and of the admin listener, when `admin` is true), read from its startup log.
pub fn spawn_binary_with(config: &std::path::Path, admin: bool) -> Binary {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(["run", "-c"])
        .arg(config)
        // The bound address is read from the startup log line, whatever the caller's
        // TURNPIKE_LOG says.
        .env("TURNPIKE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnpike");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let (mut addr, mut admin_addr) = (None, None);
    while addr.is_none() || (admin && admin_addr.is_none()) {
        let line = lines
            .next()
            .expect("turnpike exited before listening")
            .unwrap();
        let slot = if line.contains("\"admin listening\"") {
            &mut admin_addr
        } else if line.contains("\"listening\"") {
            &mut addr
        } else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        slot.get_or_insert(v["fields"]["addr"].as_str().unwrap().parse().unwrap());
    }
    std::thread::spawn(move || for _ in lines {});
    Binary {
        child,
        addr: addr.unwrap(),
        admin: admin_addr,
    }
}

/// [`spawn_binary_with`] for the first listener only.
pub fn spawn_binary(config: &std::path::Path) -> (std::process::Child, SocketAddr) {
    let b = spawn_binary_with(config, false);
    (b.child, b.addr)
}

/// Sends `signal` (`-TERM`, `-HUP`) to `child`.
pub fn kill(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Writes `yaml` to a fresh folder of its own and returns the file's path.
pub fn config_file(name: &str, yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    config
}

/// The errors `yaml` is refused with (loading, then compiling as `validate` does), or
/// `None` when it is accepted.
pub fn config_error(yaml: &str) -> Option<String> {
    turnpike::config::load_str(yaml, std::path::Path::new("."))
        .and_then(turnpike::runtime::compile::check)
        .err()
        .map(|e| e.to_string())
}

/// An upstream that hands each accepted connection to `behave`.
pub async fn raw_upstream<F, Fut>(behave: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(behave(s));
        }
    });
    addr
}

/// Reads until the end of a request head (or EOF).
pub async fn read_head(s: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::io::AsyncReadExt::read(s, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

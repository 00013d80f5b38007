//! The access log: one JSON line per request, written off the request path.
//!
//! Requests format their line and hand it to a bounded channel; one writer thread
//! batches lines into a buffered writer and flushes whenever the channel runs dry. When
//! the writer falls behind, lines are dropped and counted
//! (`turnpike_access_log_dropped_total`) rather than slowing requests down.
//! `Authorization`, `Cookie` and the query string (which may hold keys) are never logged.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::metrics::Metrics;

/// Lines buffered before new ones are dropped.
const CAPACITY: usize = 16 * 1024;

/// A running access-log writer.
pub struct AccessLog {
    output: String,
    sender: Option<SyncSender<String>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens `output` (`stdout`, `stderr` or a file, appended to) and starts the writer.
    pub fn open(output: &str, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match output {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(CAPACITY);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink))?;
        Ok(Self {
            output: output.to_string(),
            sender: Some(tx),
            thread: Some(thread),
            metrics,
        })
    }

    /// Where this log writes.
    pub fn output(&self) -> &str {
        &self.output
    }

    /// Queues one line (without its newline). Never blocks.
    pub fn write(&self, line: String) {
        if let Some(Err(TrySendError::Full(_))) = self.sender.as_ref().map(|s| s.try_send(line)) {
            self.metrics.access_log_dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after it wrote what was queued.
        self.sender.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Ok(line) = rx.recv() {
        let _ = w.write_all(line.as_bytes());
        let _ = w.write_all(b"\n");
        while let Ok(line) = rx.try_recv() {
            let _ = w.write_all(line.as_bytes());
            let _ = w.write_all(b"\n");
        }
        let _ = w.flush();
    }
    let _ = w.flush();
}

/// Everything one access-log line says.
pub struct Record<'a> {
    pub request_id: &'a str,
    pub listener: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub client_ip: IpAddr,
    pub user_agent: &'a str,
    /// The authenticated consumer (`""`: none).
    pub consumer: &'a str,
    pub error: &'a str,
    pub completed: bool,
    /// The calls of a `compose` route (empty for other routes).
    pub calls: &'a [CallTrace],
}

/// One call of a `compose` route, as its access-log line lists it.
#[derive(Debug, Clone)]
pub struct CallTrace {
    /// The call's name.
    pub call: Arc<str>,
    /// The upstream called.
    pub upstream: Arc<str>,
    /// The endpoint that answered (or was tried).
    pub endpoint: Option<SocketAddr>,
    /// The upstream's status (0: no answer).
    pub status: u16,
    /// From the call's start to its parsed answer (`None`: not sent).
    pub duration: Option<Duration>,
    /// `ok`, `failed`, `timeout` or `skipped`.
    pub outcome: &'static str,
    /// The failure's code (`""`: none).
    pub error: &'static str,
}

/// The calls of a `compose` route, kept in the request's extensions for its log line.
#[derive(Debug, Clone, Default)]
pub struct CallTraces(pub Vec<CallTrace>);

/// Formats `r` as one JSON object.
pub fn format(r: &Record<'_>) -> String {
    let mut s = String::with_capacity(384);
    s.push_str("{\"ts\":\"");
    push_timestamp(&mut s, SystemTime::now());
    s.push('"');
    field(&mut s, "request_id", r.request_id);
    field(&mut s, "listener", r.listener);
    field(&mut s, "route", r.route);
    field(&mut s, "upstream", r.upstream);
    if let Some(ep) = r.endpoint {
        field(&mut s, "endpoint", &ep.to_string());
    }
    field(&mut s, "method", r.method);
    field(&mut s, "host", r.host);
    field(&mut s, "path", r.path);
    field(&mut s, "protocol", r.protocol);
    number(&mut s, "status", u64::from(r.status));
    number(&mut s, "bytes_in", r.bytes_in);
    number(&mut s, "bytes_out", r.bytes_out);
    millis(&mut s, "duration_ms", r.duration);
    if let Some(d) = r.upstream_duration {
        millis(&mut s, "upstream_ms", d);
    }
    field(&mut s, "client_ip", &r.client_ip.to_string());
    if !r.user_agent.is_empty() {
        field(&mut s, "user_agent", r.user_agent);
    }
    if !r.consumer.is_empty() {
        field(&mut s, "consumer", r.consumer);
    }
    if !r.error.is_empty() {
        field(&mut s, "error", r.error);
    }
    if !r.completed {
        s.push_str(",\"completed\":false");
    }
    if !r.calls.is_empty() {
        s.push_str(",\"calls\":[");
        for (i, c) in r.calls.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"call\":\"");
            escape_into(&mut s, &c.call);
            s.push('"');
            field(&mut s, "upstream", &c.upstream);
            if let Some(ep) = c.endpoint {
                field(&mut s, "endpoint", &ep.to_string());
            }
            if c.status != 0 {
                number(&mut s, "status", u64::from(c.status));
            }
            if let Some(d) = c.duration {
                millis(&mut s, "duration_ms", d);
            }
            field(&mut s, "outcome", c.outcome);
            if !c.error.is_empty() {
                field(&mut s, "error", c.error);
            }
            s.push('}');
        }
        s.push(']');
    }
    s.push('}');
    s
}

fn field(s: &mut String, key: &str, value: &str) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":\"");
    escape_into(s, value);
    s.push('"');
}

fn escape_into(s: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                s.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => s.push(c),
        }
    }
}

fn number(s: &mut String, key: &str, value: u64) {
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    s.push_str(itoa::Buffer::new().format(value));
}

fn millis(s: &mut String, key: &str, d: Duration) {
    let micros = d.as_micros() as u64;
    s.push_str(",\"");
    s.push_str(key);
    s.push_str("\":");
    s.push_str(itoa::Buffer::new().format(micros / 1000));
    s.push('.');
    let frac = micros % 1000;
    s.push(char::from(b'0' + (frac / 100) as u8));
    s.push(char::from(b'0' + (frac / 10 % 10) as u8));
    s.push(char::from(b'0' + (frac % 10) as u8));
}

/// Appends `t` as RFC 3339 UTC with milliseconds: `2026-11-23T10:15:30.123Z`.
pub fn push_timestamp(s: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = civil_from_days(days);
    let _ = std::fmt::Write::write_fmt(
        s,
        format_args!(
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        ),
    );
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let mut s = String::new();
        push_timestamp(
            &mut s,
            UNIX_EPOCH + Duration::from_millis(1_795_436_130_123),
        );
        assert_eq!(s, "2026-11-23T12:15:30.123Z");
        s.clear();
        push_timestamp(&mut s, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_are_valid_json_and_escaped() {
        let line = format(&Record {
            request_id: "id-1",
            listener: "public",
            route: "users",
            upstream: "users-v1",
            endpoint: Some("127.0.0.1:9001".parse().unwrap()),
            method: "GET",
            host: "api.example.com",
            path: "/users/\"7\"\n",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 25,
            duration: Duration::from_micros(1_234),
            upstream_duration: Some(Duration::from_micros(987)),
            client_ip: "10.0.0.1".parse().unwrap(),
            user_agent: "curl/8",
            consumer: "acme",
            error: "",
            completed: true,
            calls: &[],
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/users/\"7\"\n");
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["upstream_ms"], 0.987);
        assert_eq!(v["status"], 200);
        assert_eq!(v["consumer"], "acme");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn writer_flushes_to_a_file_on_drop() {
        let dir = std::env::temp_dir().join(format!("tp-al-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open(path.to_str().unwrap(), Arc::new(Metrics::default())).unwrap();
        log.write("{\"a\":1}".into());
        log.write("{\"a\":2}".into());
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Refusals of a request head by the HTTP/1.1 server ([`super::h1`]): a head that cannot
//! be parsed or framed (400), is too large (414, 431), asks for an unknown expectation
//! (417) or an unsupported version (505), or does not arrive within the header timeout
//! (408). The server answers each with the JSON error body; this module logs and counts
//! it like every other request: an access-log line (route `""`, method `-`),
//! `turnpike_requests_total` under the unmatched route, and
//! `turnpike_http1_parse_errors_total`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::telemetry::access_log::{self, Record};
use crate::telemetry::metrics::METHODS;

use super::handler::Conn;

/// Logs and counts a refusal made on `conn` (see the module docs).
pub fn record(conn: &Conn, status: u16, code: &'static str, age: Duration) {
    let rt = &conn.runtime;
    rt.metrics.http1_parse_errors.fetch_add(1, Relaxed);
    let snap = rt.snapshot();
    snap.unmatched.record(METHODS.len() - 1, status, age);
    let Some(log) = snap.access_log.get() else {
        return;
    };
    let id = crate::telemetry::request_id::generate();
    let line = access_log::format(&Record {
        request_id: id.to_str().unwrap_or(""),
        listener: &conn.listener_name,
        route: "",
        upstream: "",
        endpoint: None,
        method: "-",
        host: "",
        path: "",
        protocol: "HTTP/1.1",
        status,
        bytes_in: 0,
        bytes_out: 0,
        duration: age,
        upstream_duration: None,
        client_ip: crate::http::forwarded::canonical(conn.peer.ip()),
        user_agent: "",
        consumer: "",
        error: code,
        completed: true,
        calls: &[],
    });
    log.write(line);
}

//! Refusals that hyper's HTTP/1.1 parser makes itself, before turnpike sees a request.
//!
//! hyper answers a head it cannot parse on its own (431 for too many headers or a head
//! larger than its buffer, 414 for a target larger than its buffer, 400 for a duplicate
//! or invalid `Content-Length`, a bad `Transfer-Encoding`, or an invalid method, target
//! or header token) with an empty body, then ends the connection with a parse error.
//! There is no hook to give those answers the JSON error body; what turnpike can do is
//! see the error the connection ended with, and log and count the refusal like every
//! other one: an access-log line (route `""`, method `-`) and `turnpike_requests_total`
//! under the unmatched route, plus `turnpike_http1_parse_errors_total`. The own
//! HTTP/1.1 codec (a later change) will answer these with the JSON body too.

use std::error::Error as StdError;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::telemetry::access_log::{self, Record};
use crate::telemetry::metrics::METHODS;

use super::handler::Conn;

/// The status hyper sent and the stable code turnpike logs for it, when `error` is one
/// of hyper's HTTP/1.1 request parse errors.
pub fn classify(error: &(dyn StdError + 'static)) -> Option<(u16, &'static str)> {
    let hyper = find_hyper(error)?;
    if !hyper.is_parse() || hyper.is_parse_status() {
        return None;
    }
    // hyper's own mapping (proto/h1/role.rs, on_error): TooLarge 431, UriTooLong 414,
    // everything else 400. `is_parse_too_large` covers both big ones; the text tells
    // them apart (hyper's descriptions are stable strings).
    Some(if !hyper.is_parse_too_large() {
        (400, "bad_request")
    } else if hyper.to_string().contains("URI") {
        (414, "uri_too_long")
    } else {
        (431, "headers_too_large")
    })
}

fn find_hyper<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a hyper::Error> {
    let mut cur = Some(error);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return Some(h);
        }
        cur = e.source();
    }
    None
}

/// Logs and counts a refusal hyper made on `conn` (see the module docs).
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
    });
    log.write(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_not_refusals() {
        let e = std::io::Error::other("reset");
        assert_eq!(classify(&e), None);
    }
}

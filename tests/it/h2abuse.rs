//! HTTP/2 abuse (section D of bad-inputs.md): tests/h2/abuse.py sends raw frames (rapid
//! reset, CONTINUATION flood, streams over the limit, HPACK bombs, H2.CL, forbidden and
//! malformed headers, :authority/Host mismatch, PING/SETTINGS/empty-DATA floods, invalid
//! prefaces) while a victim connection keeps being served; it exits 0 only if every
//! attack met its expectation. Here it runs against the real gateway in front of a
//! capture upstream, which must not have received anything the attacks smuggled. The
//! gateway runs as its own process (the binary), so its memory can be measured alone.

use std::time::Duration;

use crate::capture::capture;
use crate::support::*;

#[tokio::test]
async fn h2_abuse_is_refused_and_other_clients_keep_being_served() {
    let (up, cap) = capture().await;
    // The victim gateway is its own process, so that the memory abuse.py measures
    // (`--pid`) is the gateway's alone, not this test binary's with every other test in
    // it. The request cap is far away, so that only a reset guard can close the rapid-
    // reset connections (abuse.py checks that the close came before the cap).
    let cap_requests = 100_000;
    let config = config_file(
        "h2abuse",
        &format!(
            r#"
listeners: [{{name: edge, address: "127.0.0.1:0", limits: {{max_requests_per_connection: {cap_requests}}}}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
  cap: {{endpoints: ["{up}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: cap}}
  - {{name: admin, match: {{prefix: /admin}}, respond: {{status: 403, body: admin only}}}}
"#
        ),
    );
    let mut bin = spawn_binary_with(&config, true);
    let target = bin.addr.to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/abuse.py");
    let pid = bin.child.id().to_string();
    let child = tokio::process::Command::new("python3")
        .args([script, "--target", &target, "--pid", &pid])
        .args(["--request-cap", &cap_requests.to_string()])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("abuse.py did not finish in 120 s")
        .expect("python3 with the h2 package is needed (scripts/test installs it)");
    let metrics = get(&format!("http://{}/metrics", bin.admin.unwrap()), &[]).await;
    let _ = bin.child.kill();
    let _ = bin.child.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\"ok\": false"))
        .collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "exit {:?}; failed attacks:\n{}\n--- stderr\n{stderr}",
        out.status.code(),
        failed.join("\n")
    );
    assert!(
        stdout.lines().count() >= 11,
        "not every attack reported:\n{stdout}"
    );
    // turnpike's own reset guard counted the streams the paced phase reset.
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let resets: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("turnpike_premature_resets_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(resets >= 100, "turnpike_premature_resets_total {resets}");
    let seen = cap.text().to_ascii_lowercase();
    for smuggled in [
        "/admin",
        "evil",
        "hello-world",
        "transfer-encoding: chunked\r\ntransfer",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "te: gzip",
        "x-upper",
        "\0",
    ] {
        assert!(
            !seen.contains(smuggled),
            "`{smuggled}` reached the upstream"
        );
    }
    assert!(
        seen.contains("get /api/victim http/1.1\r\n"),
        "the victim's requests were not forwarded"
    );
}

//! HTTP/2 abuse (section D of bad-inputs.md): tests/h2/abuse.py sends raw frames (rapid
//! reset, CONTINUATION flood, streams over the limit, HPACK bombs, H2.CL, forbidden and
//! malformed headers, :authority/Host mismatch, PING/SETTINGS/empty-DATA floods, invalid
//! prefaces) while a victim connection keeps being served; it exits 0 only if every
//! attack met its expectation. Here it runs against the real gateway in front of a
//! capture upstream, which must not have received anything the attacks smuggled.

use std::time::Duration;

use crate::capture::capture;
use crate::support::*;

#[tokio::test]
async fn h2_abuse_is_refused_and_other_clients_keep_being_served() {
    let (up, cap) = capture().await;
    let gw = gateway(&format!(
        r#"
listeners: [{{name: edge, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  cap: {{endpoints: ["{up}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: cap}}
  - {{name: admin, match: {{prefix: /admin}}, respond: {{status: 403, body: admin only}}}}
"#
    ))
    .await;
    let target = gw.listener_addr("edge").unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/abuse.py");
    let pid = std::process::id().to_string();
    let child = tokio::process::Command::new("python3")
        .args([script, "--target", &target, "--pid", &pid])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("abuse.py did not finish in 120 s")
        .expect("python3 with the h2 package is needed (scripts/test installs it)");
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

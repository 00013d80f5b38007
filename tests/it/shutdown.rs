//! Graceful shutdown of the real binary: SIGTERM stops accepting, lets requests in flight
//! finish, and exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Starts `turnpike run` on `config` and returns it with the bound address of the first
/// listener, read from its startup log.
pub fn spawn_binary(config: &std::path::Path) -> (std::process::Child, SocketAddr) {
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
    let addr = loop {
        let line = lines
            .next()
            .expect("turnpike exited before listening")
            .unwrap();
        if line.contains("\"listening\"") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight_then_exits_0() {
    let slow = upstream_fn(|req| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        echo_response("slow", req).await
    })
    .await;
    let dir = std::env::temp_dir().join(format!("tp-it-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{shutdown_grace: 10s}}\nlisteners: [{{name: public, address: \"127.0.0.1:0\"}}]\naccess_log: {{enabled: false}}\nupstreams:\n  slow: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: r, match: {{prefix: /}}, upstream: slow}}\n",
            slow.addr
        ),
    )
    .unwrap();
    let (mut child, addr) = spawn_binary(&config);
    let base = format!("http://{addr}");
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move { get(&format!("{base}/r{i}"), &[]).await })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "three requests at the upstream",
        || async { (slow.hits() == 3).then_some(()) },
    )
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for t in in_flight {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "a request in flight failed during drain");
    }
    // Once drained the process exits 0 and the port no longer accepts.
    let exit = eventually(Duration::from_secs(10), "turnpike exits", || {
        let done = child.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after exit"
    );
}

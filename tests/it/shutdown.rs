//! The real binary's signals and exit codes: SIGTERM stops accepting at once, keeps
//! `/readyz` at 503 while requests in flight finish, and exits 0; SIGHUP reloads; a
//! listener that cannot bind exits 1.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn sigterm_stops_accepting_at_once_drains_requests_in_flight_then_exits_0() {
    // The upstream holds every request until the test releases it, so the requests are
    // provably still in flight while the test checks what the gateway does meanwhile.
    let (release, gate) = tokio::sync::watch::channel(false);
    let slow = upstream_fn(move |req| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            echo_response("slow", req).await
        }
    })
    .await;
    let config = config_file(
        "drain",
        &format!(
            "server: {{shutdown_grace: 30s}}\nlisteners: [{{name: public, address: \"127.0.0.1:0\"}}]\nadmin: {{address: \"127.0.0.1:0\"}}\naccess_log: {{enabled: false}}\nupstreams:\n  slow: {{endpoints: [\"{}\"], timeouts: {{request: 60s}}}}\nroutes:\n  - {{name: r, match: {{prefix: /}}, upstream: slow}}\n",
            slow.addr
        ),
    );
    let mut bin = spawn_binary_with(&config, true);
    let (addr, admin) = (bin.addr, bin.admin.unwrap());
    let base = format!("http://{addr}");
    let ready = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
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
    kill(&bin.child, "-TERM");
    // Accepting stops while the three requests are still held by the upstream.
    eventually(
        Duration::from_secs(5),
        "the listener refuses connections",
        || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "the process exited with requests in flight"
    );
    assert!(in_flight.iter().all(|t| !t.is_finished()));
    // Readiness probes see 503 during the drain (the admin listener is still up).
    let draining = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(draining.status, 503, "{:?}", draining.body);
    assert_eq!(draining.json()["status"], "draining");
    release.send(true).unwrap();
    for t in in_flight {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "a request in flight failed during drain");
    }
    let exit = eventually(Duration::from_secs(10), "turnpike exits", || {
        let done = bin.child.try_wait().unwrap();
        async move { done }
    })
    .await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let up = echo("u").await;
    let yaml = |generation: u32| {
        format!(
            "server: {{watch_config: false}}\nlisteners: [{{name: public, address: \"127.0.0.1:0\"}}]\naccess_log: {{enabled: false}}\nupstreams:\n  svc: {{endpoints: [\"{}\"]}}\nroutes:\n  - name: r\n    match: {{prefix: /}}\n    upstream: svc\n    policies: [{{type: headers, response: {{set: {{x-generation: \"{generation}\"}}}}}}]\n",
            up.addr
        )
    };
    let config = config_file("sighup", &yaml(1));
    let mut bin = spawn_binary_with(&config, false);
    let base = format!("http://{}", bin.addr);
    let generation = || {
        let base = base.clone();
        async move {
            get(&format!("{base}/x"), &[])
                .await
                .header("x-generation")
                .map(String::from)
        }
    };
    assert_eq!(generation().await.as_deref(), Some("1"));
    // The file changes, but the watcher is off: only the signal can reload it.
    std::fs::write(&config, yaml(2)).unwrap();
    kill(&bin.child, "-HUP");
    eventually(
        Duration::from_secs(10),
        "SIGHUP reloads the file",
        || async { (generation().await.as_deref() == Some("2")).then_some(()) },
    )
    .await;
    assert!(
        bin.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the process"
    );
    kill(&bin.child, "-TERM");
    let _ = bin.child.wait();
}

#[test]
fn a_listener_that_cannot_bind_exits_1_and_says_why() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = config_file(
        "bind",
        &format!("listeners: [{{name: public, address: \"{addr}\"}}]\nroutes:\n  - {{name: r, match: {{prefix: /}}, respond: {{status: 200}}}}\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnpike"))
        .args(["run", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot bind {addr}")), "{stderr}");
    drop(taken);
}

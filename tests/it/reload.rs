//! Hot reload: under load with zero failures, rejected configs change nothing, the file
//! watcher and POST /reload, requests in flight keep their snapshot.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use turnpike::config::{load_file, load_str};
use turnpike::Options;

use crate::support::*;

fn versioned(up: std::net::SocketAddr, slow: std::net::SocketAddr, generation: usize) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
  svc: {{endpoints: ["{up}"]}}
  slow: {{endpoints: ["{slow}"]}}
routes:
  - name: slow
    match: {{prefix: /slow}}
    upstream: slow
  - name: api
    match: {{prefix: /}}
    upstream: svc
    policies:
      - type: headers
        response: {{set: {{x-generation: "{generation}"}}}}
"#
    )
}

fn load(yaml: &str) -> turnpike::config::LoadedConfig {
    load_str(yaml, std::path::Path::new(".")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let up = echo("u").await;
    let slow = upstream_fn(|req| async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        echo_response("slow", req).await
    })
    .await;
    let gw = gateway(&versioned(up.addr, slow.addr, 0)).await;
    let base = url(&gw, "public");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (base, stop, ok, failed) = (base.clone(), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let path = if i < 2 { "/slow/stream" } else { "/fast" };
            while !stop.load(Ordering::Relaxed) {
                let r = client()
                    .request(request("GET", &format!("{base}{path}"), &[], ""))
                    .await;
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        read(resp).await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    eventually(Duration::from_secs(5), "load running", || async {
        (ok.load(Ordering::Relaxed) > 10).then_some(())
    })
    .await;
    for generation in 1..=20 {
        gw.runtime()
            .apply(load(&versioned(up.addr, slow.addr, generation)))
            .await
            .unwrap();
        let before = ok.load(Ordering::Relaxed);
        eventually(Duration::from_secs(5), "requests keep flowing", || async {
            (ok.load(Ordering::Relaxed) > before + 3).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} ok",
        ok.load(Ordering::Relaxed)
    );
    let r = get(&format!("{base}/fast"), &[]).await;
    assert_eq!(r.header("x-generation"), Some("20"));
    assert_eq!(gw.runtime().snapshot().generation, 21);
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_snapshot_they_started_with() {
    let up = echo("u").await;
    let slow = upstream_fn(|req| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        echo_response("slow", req).await
    })
    .await;
    let gw = gateway(&versioned(up.addr, slow.addr, 1)).await;
    let base = url(&gw, "public");
    let in_flight = tokio::spawn({
        let base = base.clone();
        async move { get(&format!("{base}/slow/x"), &[]).await }
    });
    eventually(
        Duration::from_secs(5),
        "the slow request reached the upstream",
        || async { (slow.hits() == 1).then_some(()) },
    )
    .await;
    // The new config has no /slow route and points `api` somewhere else.
    let without_slow = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\nadmin: {{address: \"127.0.0.1:0\"}}\naccess_log: {{enabled: false}}\nupstreams:\n  svc: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: only, match: {{path: /only}}, upstream: svc}}\n",
        up.addr
    );
    gw.runtime().apply(load(&without_slow)).await.unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().server, "slow");
    assert_eq!(get(&format!("{base}/slow/x"), &[]).await.status, 404);
}

#[tokio::test]
async fn a_rejected_config_changes_nothing() {
    let up = echo("u").await;
    let gw = gateway(&versioned(up.addr, up.addr, 1)).await;
    // Passes the checks but fails to compile: a bad regex.
    let bad_regex = versioned(up.addr, up.addr, 2).replace(
        "prefix: /slow}",
        "prefix: /slow, headers: [{name: x, regex: \"(\"}]}",
    );
    let err = gw.runtime().apply(load(&bad_regex)).await.unwrap_err();
    assert!(
        err.to_string().contains("routes[0].match.headers[0].regex"),
        "{err}"
    );
    // Listeners are bound once.
    let moved = versioned(up.addr, up.addr, 3).replace("127.0.0.1:0\"}]", "127.0.0.1:1\"}]");
    let err = gw.runtime().apply(load(&moved)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("listener names and addresses cannot change on reload"),
        "{err}"
    );
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.header("x-generation"), Some("1"));
    assert_eq!(gw.runtime().snapshot().generation, 1);
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-it-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn post_reload_reports_problems_and_keeps_serving() {
    let up = echo("u").await;
    let path = temp_config("post", &versioned(up.addr, up.addr, 1));
    let opts = Options {
        reload_on_sighup: false,
        watch_config: false,
        ..Options::default()
    };
    let gw = turnpike::Gateway::start(load_file(&path).unwrap(), opts)
        .await
        .unwrap();
    let admin = format!("http://{}", gw.admin_addr().unwrap());
    let base = url(&gw, "public");

    std::fs::write(
        &path,
        versioned(up.addr, up.addr, 2).replace("prefix: /slow", "prefix: slow"),
    )
    .unwrap();
    let r = send(request("POST", &format!("{admin}/reload"), &[], "")).await;
    assert_eq!(r.status, 422);
    let problems = r.json()["error"]["problems"].to_string();
    assert!(
        problems.contains("routes[0].match.prefix (line 10, column 13): must start with `/`"),
        "{problems}"
    );
    assert_eq!(
        get(&format!("{base}/x"), &[]).await.header("x-generation"),
        Some("1")
    );
    let m = String::from_utf8_lossy(&get(&format!("{admin}/metrics"), &[]).await.body).into_owned();
    assert!(
        m.contains("turnpike_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
    assert_eq!(get(&format!("{admin}/healthz"), &[]).await.status, 200);

    std::fs::write(&path, versioned(up.addr, up.addr, 2)).unwrap();
    let r = send(request("POST", &format!("{admin}/reload"), &[], "")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(
        get(&format!("{base}/x"), &[]).await.header("x-generation"),
        Some("2")
    );
}

#[tokio::test]
async fn editing_the_file_reloads_it() {
    let up = echo("u").await;
    let path = temp_config("watch", &versioned(up.addr, up.addr, 1));
    let opts = Options {
        reload_on_sighup: false,
        watch_config: true,
        ..Options::default()
    };
    let gw = turnpike::Gateway::start(load_file(&path).unwrap(), opts)
        .await
        .unwrap();
    let base = url(&gw, "public");
    // Write a new file and rename it over the old one, as editors and config managers do.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, versioned(up.addr, up.addr, 7)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    eventually(
        Duration::from_secs(10),
        "the edited file takes effect",
        || {
            let base = base.clone();
            async move {
                (get(&format!("{base}/x"), &[]).await.header("x-generation") == Some("7"))
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn rewriting_the_file_with_the_same_text_does_not_reload() {
    let up = echo("u").await;
    let text = versioned(up.addr, up.addr, 1);
    let path = temp_config("unchanged", &text);
    let opts = Options {
        reload_on_sighup: false,
        watch_config: true,
        ..Options::default()
    };
    let gw = turnpike::Gateway::start(load_file(&path).unwrap(), opts)
        .await
        .unwrap();
    let reloads = || metric_value(&gw, "turnpike_config_reloads_total{result=\"success\"}");
    let before = reloads();
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    // The watcher saw the event and compared the text...
    eventually(
        Duration::from_secs(10),
        "the unchanged file is noticed",
        || async {
            (metric_value(&gw, "turnpike_config_unchanged_total") == Some(1)).then_some(())
        },
    )
    .await;
    // ... and reloaded nothing.
    assert_eq!(gw.runtime().snapshot().generation, 1);
    assert_eq!(reloads(), before);
}

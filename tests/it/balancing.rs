//! Load balancing and traffic splitting against real upstreams: each balancer's
//! distribution, canary ratio and stickiness, consistent hashing stability, DNS
//! re-resolution.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use turnpike::upstream::dns::{Resolve, Resolving};

fn cluster_config(endpoints: &[(SocketAddr, u32)], balancer: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{address: \"{a}\", weight: {w}}}"))
        .collect();
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  pool:
    endpoints: [{eps}]
    balancer: {balancer}
routes:
  - {{name: r, match: {{prefix: /}}, upstream: pool}}
"#,
        eps = eps.join(", ")
    )
}

async fn tally(
    base: &str,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let h = headers(i);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = get(&format!("{base}/"), &h).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.header("x-upstream").unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn weighted_round_robin_is_exact_per_cycle() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    let gw = gateway(&cluster_config(
        &[(a.addr, 2), (b.addr, 1), (c.addr, 1)],
        "round_robin",
    ))
    .await;
    let counts = tally(&url(&gw, "public"), 400, |_| vec![]).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (200, 100, 100));
}

#[tokio::test]
async fn random_follows_weights() {
    let (a, b) = (echo("a").await, echo("b").await);
    let gw = gateway(&cluster_config(&[(a.addr, 3), (b.addr, 1)], "random")).await;
    let counts = tally(&url(&gw, "public"), 800, |_| vec![]).await;
    let share = counts["a"] as f64 / 800.0;
    assert!((share - 0.75).abs() < 0.06, "{counts:?}");
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let slow = upstream_fn(|req| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        echo_response("slow", req).await
    })
    .await;
    let fast = echo("fast").await;
    let gw = gateway(&cluster_config(
        &[(slow.addr, 1), (fast.addr, 1)],
        "least_request",
    ))
    .await;
    let base = url(&gw, "public");
    // 8 concurrent clients, 10 requests each: while the slow endpoint holds requests,
    // P2C sends new ones to the idle one.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                assert_eq!(get(&format!("{base}/"), &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        fast.hits() > 4 * slow.hits(),
        "fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test]
async fn consistent_hashing_keeps_keys_and_survives_an_endpoint_leaving() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    for algorithm in ["ring", "maglev"] {
        let balancer =
            format!("{{consistent_hash: {{key: \"header:x-user\", algorithm: {algorithm}}}}}");
        let gw = gateway(&cluster_config(
            &[(a.addr, 1), (b.addr, 1), (c.addr, 1)],
            &balancer,
        ))
        .await;
        let base = url(&gw, "public");
        let mut owner = HashMap::new();
        for user in 0..150 {
            let r = get(&format!("{base}/"), &[("x-user", &format!("user-{user}"))]).await;
            owner.insert(user, r.header("x-upstream").unwrap().to_string());
        }
        let mut per: HashMap<&str, usize> = HashMap::new();
        owner
            .values()
            .for_each(|o| *per.entry(o.as_str()).or_default() += 1);
        // Each of the three endpoints owns a fair share of the 150 keys: an endpoint
        // that gets none is missing from the map, so look each one up by name.
        for name in ["a", "b", "c"] {
            let n = per.get(name).copied().unwrap_or(0);
            assert!(
                (25..=75).contains(&n),
                "{algorithm}: {name} owns {n} keys: {per:?}"
            );
        }
        for user in 0..30 {
            let r = get(&format!("{base}/"), &[("x-user", &format!("user-{user}"))]).await;
            assert_eq!(
                r.header("x-upstream").unwrap(),
                owner[&user],
                "{algorithm}: key moved"
            );
        }
        // Endpoint c leaves (reload): users of a and b stay where they were.
        let cfg = cluster_config(&[(a.addr, 1), (b.addr, 1)], &balancer);
        gw.runtime()
            .apply(turnpike::config::load_str(&cfg, std::path::Path::new(".")).unwrap())
            .await
            .unwrap();
        let mut moved = 0;
        for (user, was) in &owner {
            let now = get(&format!("{base}/"), &[("x-user", &format!("user-{user}"))])
                .await
                .header("x-upstream")
                .unwrap()
                .to_string();
            if was != "c" && &now != was {
                moved += 1;
            }
        }
        let limit = if algorithm == "ring" { 0 } else { 8 };
        assert!(
            moved <= limit,
            "{algorithm}: {moved} keys of surviving endpoints moved"
        );
    }
}

fn split_config(v1: SocketAddr, v2: SocketAddr, sticky: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  v1: {{endpoints: ["{v1}"]}}
  v2: {{endpoints: ["{v2}"]}}
routes:
  - name: canary
    match: {{prefix: /}}
    split:
      {sticky}
      to: [{{upstream: v1, weight: 95}}, {{upstream: v2, weight: 5}}]
"#
    )
}

#[tokio::test]
async fn canary_ratio_is_within_tolerance_over_2000_requests() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let gw = gateway(&split_config(v1.addr, v2.addr, "")).await;
    let counts = tally(&url(&gw, "public"), 2000, |_| vec![]).await;
    let canary = *counts.get("v2").unwrap_or(&0);
    // Binomial(2000, 0.05): mean 100, sd 9.7; 4 sd either side.
    assert!((61..=139).contains(&canary), "{counts:?}");
}

#[tokio::test]
async fn sticky_split_keeps_each_client_on_one_side() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let gw = gateway(&split_config(
        v1.addr,
        v2.addr,
        "sticky: \"cookie:session\"",
    ))
    .await;
    let base = url(&gw, "public");
    let mut sides = HashMap::new();
    for round in 0..4 {
        for user in 0..200 {
            let cookie = format!("theme=dark; session=s{user}");
            let r = get(&format!("{base}/"), &[("cookie", &cookie)]).await;
            let side = r.header("x-upstream").unwrap().to_string();
            let first = sides.entry(user).or_insert_with(|| side.clone());
            assert_eq!(*first, side, "user {user} moved in round {round}");
        }
    }
    let on_canary = sides.values().filter(|s| *s == "v2").count();
    assert!(
        (1..=30).contains(&on_canary),
        "{on_canary} of 200 users on the canary"
    );
}

struct Table(Mutex<Vec<SocketAddr>>);

impl Resolve for Table {
    fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> Resolving<'a> {
        let addrs = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test]
async fn dns_names_are_resolved_again_on_the_interval() {
    let (old, new) = (echo("old").await, echo("new").await);
    let table = Arc::new(Table(Mutex::new(vec![old.addr])));
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
access_log: {enabled: false}
upstreams:
  svc: {endpoints: ["svc.internal:80"], dns_refresh: 100ms}
routes:
  - {name: r, match: {prefix: /}, upstream: svc}
"#;
    let gw = gateway_with_resolver(yaml, table.clone()).await;
    let base = url(&gw, "public");
    assert_eq!(
        get(&format!("{base}/"), &[]).await.header("x-upstream"),
        Some("old")
    );
    *table.0.lock().unwrap() = vec![new.addr];
    eventually(
        Duration::from_secs(5),
        "traffic moves to the new address",
        || {
            let base = base.clone();
            async move {
                (get(&format!("{base}/"), &[]).await.header("x-upstream") == Some("new"))
                    .then_some(())
            }
        },
    )
    .await;
}

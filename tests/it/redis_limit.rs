//! `rate_limit` with `store: redis` against the machine's real Redis (127.0.0.1:6379),
//! and plans. Faults are made by a TCP proxy between the gateway and Redis
//! ([`crate::faults`]), never by stopping the machine's Redis; the restart test runs a
//! private `redis-server` of its own. Every test writes under a key prefix of its own.
//!
//! Items 104 to 109 of the hostile-inputs list: Redis down at start and killed mid-run
//! (local fallback, no 5xx, bounded latency, breaker, metric), slow Redis, an error
//! answer at the key, Redis restarted (counters reset, nothing stuck), a spoofed
//! `X-Forwarded-For` (tests/it/rate_limit.rs), and 429 with `Retry-After` that never
//! reaches the upstream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::faults::{Fault, FaultProxy};
use crate::support::*;

const REDIS: &str = "127.0.0.1:6379";

pub(crate) fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("tp-it:{test}:{}:{nanos}:", std::process::id())
}

pub(crate) async fn redis_at(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {addr} is needed (scripts/test starts it): {e}"))
}

pub(crate) async fn keys(addr: &str, prefix: &str) -> Vec<String> {
    let mut c = redis_at(addr).await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap()
}

fn config(up: SocketAddr, redis: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
redis:
  url: "redis://{redis}/0"
  key_prefix: "{prefix}"
  timeout: 50ms
  breaker: {{failures: 3, open_for: 300ms}}
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: api
    match: {{prefix: /api}}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["5/minute"]
        key: header:x-client
        store: redis
{extra}
"#
    )
}

async fn statuses(base: &str, path: &str, client: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            get(&format!("{base}{path}"), &[("x-client", client)])
                .await
                .status
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn redis_decides_for_every_instance_and_never_lets_a_refusal_through() {
    let up = echo("app").await;
    let p = prefix("shared");
    let yaml = config(up.addr, REDIS, &p, "");
    // Two gateways in one process, one Redis: one bucket.
    let (a, b) = (gateway(&yaml).await, gateway(&yaml).await);
    let (ua, ub) = (url(&a, "public"), url(&b, "public"));
    let mut got = Vec::new();
    for i in 0..10 {
        let base = if i % 2 == 0 { &ua } else { &ub };
        got.push(get(&format!("{base}/api/x"), &[("x-client", "c1")]).await);
    }
    let ok = got.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        5,
        "{:?}",
        got.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let refused = got.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.error_code(), "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    assert!(refused
        .header("ratelimit")
        .unwrap()
        .starts_with("\"5/minute\";r=0;"));
    assert_eq!(up.hits(), 5, "a refused request reached the upstream");
    // The state is in Redis, under the prefix, as one hashed key (no client text).
    let k = keys(REDIS, &p).await;
    assert_eq!(k.len(), 1, "{k:?}");
    assert!(
        !k[0].contains("c1"),
        "the key's text leaked into Redis: {}",
        k[0]
    );
    let ttl: i64 = {
        let mut c = redis_at(REDIS).await;
        redis::cmd("PTTL")
            .arg(&k[0])
            .query_async(&mut c)
            .await
            .unwrap()
    };
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the key expires when full again: {ttl}"
    );
    // Another client has its own bucket.
    assert_eq!(statuses(&ua, "/api/y", "c2", 1).await, [200]);
}

#[tokio::test]
async fn three_gateway_processes_sharing_redis_admit_the_limit_in_total() {
    let up = echo("app").await;
    let p = prefix("three");
    let yaml = config(up.addr, REDIS, &p, "").replace("5/minute", "60/minute");
    let mut procs = Vec::new();
    for i in 0..3 {
        let file = config_file(&format!("redis-three-{i}"), &yaml);
        procs.push(spawn_binary_with(&file, false));
    }
    let started = Instant::now();
    let mut ok = 0;
    let mut other = Vec::new();
    for i in 0..180 {
        let addr = procs[i % 3].addr;
        let r = get(&format!("http://{addr}/api/x"), &[("x-client", "shared")]).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {}
            s => other.push(s),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for p in &procs {
        kill(&p.child, "-TERM");
    }
    for mut p in procs {
        let _ = p.child.wait();
    }
    assert!(other.is_empty(), "answers other than 200/429: {other:?}");
    // The bucket holds 60 and refills 1 per second while the test runs.
    let most = 60.0 + elapsed + 1.0;
    assert!(
        ok >= 60 && (ok as f64) <= most,
        "{ok} admitted in {elapsed:.1}s (limit 60, at most {most:.0})"
    );
}

#[tokio::test]
async fn a_dead_or_slow_redis_costs_little_and_limits_still_apply_locally() {
    let up = echo("app").await;
    let proxy = FaultProxy::start(REDIS.parse().unwrap()).await;
    let p = prefix("faults");
    let gw = gateway(&config(up.addr, &proxy.addr.to_string(), &p, "")).await;
    let base = url(&gw, "public");
    let m = |s: &str| metric_value(&gw, s).unwrap_or(0);
    // Healthy: decided in Redis.
    assert_eq!(statuses(&base, "/api/x", "before", 2).await, [200, 200]);
    assert_eq!(keys(REDIS, &p).await.len(), 1);
    for (phase, fault) in [
        ("drop", Fault::Drop),
        ("stall", Fault::Stall),
        ("slow", Fault::Delay(Duration::from_millis(300))),
        ("reset", Fault::Reset),
    ] {
        proxy.set(fault);
        let errors_before = m("turnpike_ratelimit_store_failures_total{reason=\"timeout\"}")
            + m("turnpike_ratelimit_store_failures_total{reason=\"unreachable\"}")
            + m("turnpike_ratelimit_store_failures_total{reason=\"breaker_open\"}");
        let client = format!("during-{phase}");
        let mut got = Vec::new();
        let mut slowest = Duration::ZERO;
        for _ in 0..8 {
            let t = Instant::now();
            got.push(
                get(&format!("{base}/api/x"), &[("x-client", &client)])
                    .await
                    .status
                    .as_u16(),
            );
            slowest = slowest.max(t.elapsed());
        }
        // The same limit, in this process: 5 of 8, and never a 5xx.
        assert_eq!(got, [200, 200, 200, 200, 200, 429, 429, 429], "{phase}");
        // The decision's deadline is 50 ms; a loaded debug build gets slack, but never
        // the seconds a hung connection would cost.
        assert!(slowest < Duration::from_millis(700), "{phase}: {slowest:?}");
        let errors = m("turnpike_ratelimit_store_failures_total{reason=\"timeout\"}")
            + m("turnpike_ratelimit_store_failures_total{reason=\"unreachable\"}")
            + m("turnpike_ratelimit_store_failures_total{reason=\"breaker_open\"}");
        assert!(errors >= errors_before + 8, "{phase}: failures not counted");
        assert_eq!(
            m("turnpike_redis_breaker_open"),
            1,
            "{phase}: breaker not open"
        );
        assert!(
            m("turnpike_ratelimit_store_failures_total{reason=\"breaker_open\"}") > 0,
            "{phase}: the breaker never spared a call"
        );
        // Recovery is automatic: after open_for, a probe closes the breaker and Redis
        // decides again (the `before` client's Redis bucket has 3 left, the local one 5).
        proxy.set(Fault::Pass);
        eventually(Duration::from_secs(10), "the breaker to close", || {
            let base = base.clone();
            let gw = &gw;
            async move {
                get(&format!("{base}/api/probe"), &[("x-client", "probe")]).await;
                (metric_value(gw, "turnpike_redis_breaker_open") == Some(0)).then_some(())
            }
        })
        .await;
        // The probe client's bucket is in Redis: decided there again.
        assert!(keys(REDIS, &p).await.len() >= 2);
    }
    assert!(m("turnpike_redis_breaker_opened_total") >= 4);
}

#[tokio::test]
async fn an_error_answer_at_the_key_follows_on_store_failure_and_is_not_a_500() {
    let up = echo("app").await;
    let p = prefix("wrongtype");
    let extra = r#"  - name: strict
    match: {prefix: /strict}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["5/minute"]
        key: header:x-client
        store: redis
        on_store_failure: deny
"#;
    let gw = gateway(&config(up.addr, REDIS, &p, extra)).await;
    let base = url(&gw, "public");
    assert_eq!(statuses(&base, "/api/x", "w", 1).await, [200]);
    assert_eq!(statuses(&base, "/strict/x", "w", 1).await, [200]);
    let mut c = redis_at(REDIS).await;
    // A string where a hash belongs (WRONGTYPE), and a hash whose TAT is not a number.
    let k = keys(REDIS, &p).await;
    assert_eq!(k.len(), 2, "{k:?}");
    let _: () = redis::cmd("SET")
        .arg(&k[0])
        .arg("garbage")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&k[1])
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&k[1])
        .arg("12000000")
        .arg("not-a-number")
        .query_async(&mut c)
        .await
        .unwrap();
    let hits = up.hits();
    let a = get(&format!("{base}/api/x"), &[("x-client", "w")]).await;
    let s = get(&format!("{base}/strict/x"), &[("x-client", "w")]).await;
    // One route falls back to local counters (200), the strict one refuses (503), and
    // neither is a 500.
    let mut seen = [a.status.as_u16(), s.status.as_u16()];
    seen.sort();
    assert_eq!(seen, [200, 503], "{:?} {:?}", a.body, s.body);
    let refused = if a.status == 503 { &a } else { &s };
    assert_eq!(refused.error_code(), "rate_limit_store_unavailable");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(up.hits(), hits + 1, "the 503 reached the upstream");
    assert!(
        metric_value(
            &gw,
            "turnpike_ratelimit_store_failures_total{reason=\"error\"}"
        )
        .unwrap()
            >= 2
    );
    // An answer, even an error, says Redis is up: the breaker stays closed.
    assert_eq!(metric_value(&gw, "turnpike_redis_breaker_open"), Some(0));
}

#[tokio::test]
async fn redis_down_at_start_deny_refuses_allow_admits() {
    let up = echo("app").await;
    let dead = closed_port().await;
    let p = prefix("down");
    let extra = r#"  - name: strict
    match: {prefix: /strict}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["5/minute"]
        store: redis
        on_store_failure: deny
  - name: open
    match: {prefix: /open}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["1/minute"]
        store: redis
        on_store_failure: allow
"#;
    // The gateway starts although Redis is down.
    let gw = gateway(&config(up.addr, &dead.to_string(), &p, extra)).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/strict/x"), &[]).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "rate_limit_store_unavailable");
    assert_eq!(up.hits(), 0);
    for _ in 0..3 {
        let r = get(&format!("{base}/open/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit"), None, "no decision, so no headers");
    }
    assert_eq!(
        statuses(&base, "/api/x", "l", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
}

/// A `redis-server` of a test's own (the machine's Redis is never stopped).
pub(crate) struct PrivateRedis {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl PrivateRedis {
    pub(crate) async fn start(port: u16) -> Self {
        Self::start_with(port, &[], &format!("redis://127.0.0.1:{port}/")).await
    }

    /// Starts `redis-server --port PORT ARGS...` and waits until `check` (a URL) answers
    /// PING. With `--sentinel` in `args`, the first argument is its config file.
    pub(crate) async fn start_with(port: u16, args: &[&str], check: &str) -> Self {
        let mut cmd = std::process::Command::new("redis-server");
        if args.first().is_some_and(|a| a.ends_with(".conf")) {
            cmd.arg(args[0]);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
            cmd.args(&args[1..]);
        } else {
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"]);
            cmd.args(["--save", "", "--appendonly", "no"]);
            cmd.args(args);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is needed (scripts/setup installs it)");
        let url = check.to_string();
        eventually(
            Duration::from_secs(10),
            "the private redis to answer",
            || {
                let url = url.clone();
                async move {
                    let c = redis::Client::open(url).ok()?;
                    let mut c = c.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING").query_async::<String>(&mut c).await.ok()
                }
            },
        )
        .await;
        Self { child, port }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn a_script_flush_and_a_redis_restart_leave_nothing_stuck() {
    let up = echo("app").await;
    let port = free_port().await.port();
    let server = PrivateRedis::start(port).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let p = prefix("restart");
    let gw = gateway(&config(up.addr, &addr, &p, "")).await;
    let base = url(&gw, "public");
    assert_eq!(
        statuses(&base, "/api/x", "r", 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    // The script cache emptied (NOSCRIPT): loaded again, and Redis still decides (the
    // local fallback, never used yet, would admit).
    let mut c = redis_at(&addr).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(statuses(&base, "/api/x", "r", 1).await, [429]);
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_ratelimit_store_failures_total{reason=\"error\"}"
        ),
        Some(0)
    );
    // Redis restarts with nothing: counters reset; the gateway reconnects by itself.
    server.stop();
    let server = PrivateRedis::start(port).await;
    let statuses_seen = eventually(Duration::from_secs(10), "Redis to decide again", || {
        let base = base.clone();
        let addr = addr.clone();
        let p = p.clone();
        async move {
            let s = get(&format!("{base}/api/x"), &[("x-client", "fresh")])
                .await
                .status
                .as_u16();
            assert!(s == 200 || s == 429, "{s}");
            (!keys(&addr, &p).await.is_empty()).then_some(s)
        }
    })
    .await;
    assert_eq!(statuses_seen, 200);
    // The old client starts from a full bucket in the new Redis (no stuck state).
    let r = statuses(&base, "/api/x", "r", 1).await;
    assert_eq!(r, [200]);
    assert_eq!(keys(&addr, &p).await.len(), 2);
    drop(server);
}

#[tokio::test]
async fn batching_takes_tokens_a_few_at_a_time_and_never_admits_more_than_the_limit() {
    let up = echo("app").await;
    let p = prefix("batch");
    let yaml = config(up.addr, REDIS, &p, "")
        .replace("5/minute", "40/hour")
        .replace(
            "        store: redis\n",
            "        store: redis\n        batch: {tokens: 5, interval: 1s}\n",
        );
    let (a, b) = (gateway(&yaml).await, gateway(&yaml).await);
    let (ua, ub) = (url(&a, "public"), url(&b, "public"));
    let calls =
        |g: &turnpike::gateway::Gateway| metric_value(g, "turnpike_redis_calls_total").unwrap_or(0);
    // 15 admitted requests on each instance: a call per 5, not per request.
    for base in [&ua, &ub] {
        assert_eq!(statuses(base, "/api/x", "b", 15).await, [200; 15]);
    }
    // (Both gateways of this process share one Redis link, so its calls are counted
    // once, on the first.)
    let total =
        |a: &turnpike::gateway::Gateway, b: &turnpike::gateway::Gateway| calls(a) + calls(b);
    assert!(
        total(&a, &b) <= 8,
        "{} calls for 30 requests",
        total(&a, &b)
    );
    let mut ok = 30;
    for i in 0..40 {
        let base = if i % 2 == 0 { &ua } else { &ub };
        if get(&format!("{base}/api/x"), &[("x-client", "b")])
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    // Never above the limit (one refills every 90 s), never below it by more than
    // 2 instances x (5 - 1) tokens.
    assert!((32..=41).contains(&ok), "{ok} admitted");
    // Over the limit, each instance asks Redis once per interval, not per request.
    let before = total(&a, &b);
    assert_eq!(
        statuses(&ua, "/api/x", "b", 10)
            .await
            .iter()
            .filter(|s| **s == 429)
            .count(),
        10
    );
    let after = total(&a, &b);
    assert!(
        after <= before + 2,
        "refusals went to Redis: {}",
        after - before
    );
}

#[tokio::test]
async fn the_issue_example_validates_and_behaves_as_written() {
    let up = echo("app").await;
    let p = prefix("issue");
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  app: {{endpoints: ["{up}"]}}
consumers:
  - {{name: acme, plan: pro, api_keys: ["acme-key-0123456789abcdef"]}}
  - {{name: tiny, plan: free, api_keys: ["tiny-key-0123456789abcdef"]}}
  - {{name: big, plan: enterprise, api_keys: ["big-key-0123456789abcdef"]}}
  - {{name: none, api_keys: ["none-key-0123456789abcdef"]}}

redis:                                   # shared connection settings, used by every Redis-backed feature
  url: "redis://127.0.0.1:6379/0"        # also rediss:// (TLS), username/password, Sentinel and Cluster forms
  timeout: 50ms                          # deadline of one decision
  key_prefix: "{p}"

plans:
  free: {{limits: ["100/day"]}}
  pro: {{limits: ["50/second", "10000/day"]}}
  enterprise: {{limits: []}}               # unlimited

routes:
  - name: partners
    match: {{prefix: /partners}}
    upstream: app
    policies:
      - type: api_key
      - type: rate_limit
        limits: ["10/second", "1000/hour"]   # all must pass
        burst: 20                            # optional; default: the limit's own size
        key: consumer                        # consumer | credential | client_ip | header:NAME | param:NAME | claim:NAME | route; a list combines them
        plans: true                          # the consumer's plan adds its limits
        store: redis                         # local (default) | redis
        on_store_failure: local              # local (default) | deny | allow
  - name: search
    match: {{prefix: /search}}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["5/second"]
        key: client_ip
        mode: delay                          # queue up to max_delay instead of rejecting
        max_delay: 500ms
      - type: concurrency_limit
        max: 100                             # in flight on this route; 503 when full
"#,
        up = up.addr
    );
    let loaded = turnpike::config::load_str(&yaml, std::path::Path::new(".")).unwrap();
    turnpike::runtime::compile::check(loaded).unwrap();
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    // The pro consumer: the route's limits and the plan's, all in RateLimit-Policy.
    let r = get(
        &format!("{base}/partners/x"),
        &[("x-api-key", "acme-key-0123456789abcdef")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"10/second\";q=10;w=1, \"1000/hour\";q=1000;w=3600, \"50/second\";q=50;w=1, \"10000/day\";q=10000;w=86400")
    );
    // A consumer without a plan: the route's limits only.
    let r = get(
        &format!("{base}/partners/x"),
        &[("x-api-key", "none-key-0123456789abcdef")],
    )
    .await;
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"10/second\";q=10;w=1, \"1000/hour\";q=1000;w=3600")
    );
    // The burst of 20 at 10/second, in Redis: 20 at once, then 429.
    let key = [("x-api-key", "big-key-0123456789abcdef")];
    let started = Instant::now();
    let mut ok = 0;
    for _ in 0..30 {
        if get(&format!("{base}/partners/x"), &key).await.status == 200 {
            ok += 1;
        }
    }
    let refill = (started.elapsed().as_secs_f64() * 10.0).ceil() as usize + 1;
    assert!((20..=20 + refill).contains(&ok), "{ok}");
    assert!(!keys(REDIS, &p).await.is_empty());
}

#[tokio::test]
async fn plans_add_their_limits_and_a_consumer_without_one_gets_the_routes() {
    let up = echo("app").await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  app: {{endpoints: ["{up}"]}}
plans:
  free: {{limits: ["2/minute"]}}
  pro: {{limits: ["4/minute"]}}
  enterprise: {{limits: []}}
consumers:
  - {{name: f, plan: free, api_keys: ["free-key-0123456789abcdef"]}}
  - {{name: p, plan: pro, api_keys: ["pro-key-0123456789abcdef0"]}}
  - {{name: e, plan: enterprise, api_keys: ["ent-key-0123456789abcdef0"]}}
  - {{name: n, api_keys: ["none-key-0123456789abcdef"]}}
routes:
  - name: api
    match: {{prefix: /}}
    upstream: app
    policies:
      - type: api_key
      - type: rate_limit
        limits: ["8/minute"]
        plans: true
"#,
        up = up.addr
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let admitted = |key: &'static str| {
        let base = base.clone();
        async move {
            let mut ok = 0;
            for _ in 0..12 {
                if get(&format!("{base}/x"), &[("x-api-key", key)])
                    .await
                    .status
                    == 200
                {
                    ok += 1;
                }
            }
            ok
        }
    };
    assert_eq!(admitted("free-key-0123456789abcdef").await, 2);
    assert_eq!(admitted("pro-key-0123456789abcdef0").await, 4);
    // An empty plan adds nothing: the route's own limit still holds.
    assert_eq!(admitted("ent-key-0123456789abcdef0").await, 8);
    assert_eq!(admitted("none-key-0123456789abcdef").await, 8);
    // Config errors, with their paths.
    let cases = [
        ("plan: free,", "plan: gold,", "consumers[0].plan"),
        (
            "[\"2/minute\"]}",
            "[\"2/fortnight\"]}",
            "plans.free.limits[0]",
        ),
        (
            "plans:\n  free",
            "unused:\n  free",
            "unknown field `unused`",
        ),
    ];
    for (from, to, want) in cases {
        let bad = yaml.replacen(from, to, 1);
        let e = config_error(&bad).unwrap_or_else(|| panic!("accepted: {to}"));
        assert!(e.contains(want), "{want}: {e}");
    }
    // `plans: true` with no plans at all.
    let bare = yaml
        .replace("plans:\n  free: {limits: [\"2/minute\"]}\n  pro: {limits: [\"4/minute\"]}\n  enterprise: {limits: []}\n", "")
        .replace("plan: free, ", "")
        .replace("plan: pro, ", "")
        .replace("plan: enterprise, ", "");
    let e = config_error(&bare).expect("plans: true without plans was accepted");
    assert!(e.contains("routes[0].policies[1].plans"), "{e}");
    // store: redis without a redis block, and batching without redis.
    for (to, want) in [
        (
            "plans: true\n        store: redis",
            "routes[0].policies[1].store",
        ),
        (
            "plans: true\n        batch: {tokens: 5}",
            "routes[0].policies[1].batch",
        ),
    ] {
        let bad = yaml.replace("plans: true", to);
        let e = config_error(&bad).unwrap_or_else(|| panic!("accepted: {to}"));
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[tokio::test]
async fn bad_redis_blocks_are_config_errors_with_their_paths() {
    let up = echo("app").await;
    let good = config(up.addr, REDIS, "x:", "");
    let cases = [
        (
            "url: \"redis://127.0.0.1:6379/0\"",
            "url: \"http://127.0.0.1:6379\"",
            "redis.url",
        ),
        (
            "url: \"redis://127.0.0.1:6379/0\"",
            "url: \"redis://127.0.0.1:6379/0\"\n  cluster: {nodes: [\"redis://127.0.0.1:7000\"]}",
            "exactly one of",
        ),
        ("timeout: 50ms", "timeout: 0s", "redis.timeout"),
        ("failures: 3", "failures: 0", "redis.breaker.failures"),
        (
            "timeout: 50ms",
            "timeout: 50ms\n  pool: 4",
            "unknown field `pool`",
        ),
    ];
    for (from, to, want) in cases {
        let bad = good.replacen(from, to, 1);
        let e = config_error(&bad).unwrap_or_else(|| panic!("accepted: {to}"));
        assert!(e.contains(want), "{want}: {e}");
    }
}

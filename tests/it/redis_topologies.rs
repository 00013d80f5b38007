//! The shared store over every Redis shape users run: TLS with an ACL user and a
//! password, a three-node Redis Cluster, and a primary found through Sentinel. Each test
//! runs private `redis-server` processes of its own on free ports.

use std::time::Duration;

use crate::redis_limit::{keys, prefix, redis_at, PrivateRedis};
use crate::support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tp-redis-{name}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(up: std::net::SocketAddr, redis: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
redis:
{redis}
  timeout: 200ms
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: api
    match: {{prefix: /}}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["3/minute"]
        key: header:x-client
        store: redis
        on_store_failure: deny
"#
    )
}

/// 3 admitted, then 429, for each client: decided in Redis (a failure would be 503).
async fn three_each(base: &str, clients: &[&str]) {
    for c in clients {
        let mut got = Vec::new();
        for _ in 0..4 {
            let r = get(&format!("{base}/x"), &[("x-client", c)]).await;
            got.push(r.status.as_u16());
        }
        assert_eq!(got, [200, 200, 200, 429], "client {c}");
    }
}

#[tokio::test]
async fn tls_with_an_acl_user_and_password() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = scratch("tls");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let path = |f: &str| dir.join(f).display().to_string();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
    let (plain, tls) = (free_port(), free_port());
    let p = prefix("tls");
    let server = PrivateRedis::start_with(
        plain,
        &[
            "--tls-port",
            &tls.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "gateway",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
        ],
        &format!("redis://gateway:s3cret-pass@127.0.0.1:{plain}/"),
    )
    .await;
    let up = echo("app").await;
    let block = |password: &str| {
        format!(
            "  url: \"rediss://127.0.0.1:{tls}/0\"\n  username: gateway\n  password: \"{password}\"\n  tls: {{ca: \"{}\"}}\n  key_prefix: \"{p}\"",
            path("ca.pem")
        )
    };
    let gw = gateway(&config(up.addr, &block("s3cret-pass"))).await;
    three_each(&url(&gw, "public"), &["a", "b"]).await;
    let inspect = format!("gateway:s3cret-pass@127.0.0.1:{plain}");
    assert_eq!(keys(&inspect, &p).await.len(), 2);
    // A wrong password is a store failure (here: deny), never a 500 or a bypass.
    let wrong = gateway(&config(up.addr, &block("wrong"))).await;
    let r = get(
        &format!("{}/x", url(&wrong, "public")),
        &[("x-client", "c")],
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "rate_limit_store_unavailable");
    // Without the CA, the server is not trusted: the same.
    let untrusted =
        block("s3cret-pass").replace(&format!("\n  tls: {{ca: \"{}\"}}", path("ca.pem")), "");
    let gw = gateway(&config(up.addr, &untrusted)).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[("x-client", "c")]).await;
    assert_eq!(r.status, 503);
    drop(server);
}

#[tokio::test]
async fn a_redis_cluster_keeps_each_key_on_one_slot() {
    let dir = scratch("cluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for port in &ports {
        let conf = dir.join(format!("nodes-{port}.conf")).display().to_string();
        nodes.push(
            PrivateRedis::start_with(
                *port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--dir",
                    &dir.display().to_string(),
                ],
                &format!("redis://127.0.0.1:{port}/"),
            )
            .await,
        );
    }
    let status = std::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli is needed (scripts/setup installs it)");
    assert!(status.success());
    eventually(Duration::from_secs(20), "the cluster to be ok", || {
        let ports = ports.clone();
        async move {
            for p in ports {
                let mut c = redis_at(&format!("127.0.0.1:{p}")).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let p = prefix("cluster");
    let up = echo("app").await;
    let block = format!(
        "  cluster: {{nodes: [\"redis://127.0.0.1:{}\"]}}\n  key_prefix: \"{p}\"",
        ports[0]
    );
    let gw = gateway(&config(up.addr, &block)).await;
    let clients = ["a", "b", "c", "d", "e", "f"];
    three_each(&url(&gw, "public"), &clients).await;
    // Each key is on the node that owns its slot; together, one key per client.
    let mut found = 0;
    for port in &ports {
        found += keys(&format!("127.0.0.1:{port}"), &p).await.len();
    }
    assert_eq!(found, clients.len());
    drop(nodes);
}

#[tokio::test]
async fn sentinel_finds_the_primary() {
    let dir = scratch("sentinel");
    let (primary, sentinel) = (free_port(), free_port());
    let primary_server = PrivateRedis::start(primary).await;
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor tp-primary 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds tp-primary 5000\n"
        ),
    )
    .unwrap();
    let conf = conf.display().to_string();
    let sentinel_server = PrivateRedis::start_with(
        sentinel,
        &[&conf, "--sentinel"],
        &format!("redis://127.0.0.1:{sentinel}/"),
    )
    .await;
    let p = prefix("sentinel");
    let up = echo("app").await;
    let block = format!(
        "  sentinel: {{master: tp-primary, nodes: [\"redis://127.0.0.1:{sentinel}\"]}}\n  key_prefix: \"{p}\""
    );
    let gw = gateway(&config(up.addr, &block)).await;
    three_each(&url(&gw, "public"), &["a", "b"]).await;
    assert_eq!(keys(&format!("127.0.0.1:{primary}"), &p).await.len(), 2);
    drop((sentinel_server, primary_server));
}

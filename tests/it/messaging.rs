//! Messaging against the machine's real RabbitMQ (127.0.0.1:5672) and NATS (4222):
//! publish routes with confirms, mandatory returns, nacks and the outbox; broker faults
//! through the fault proxy (the brokers themselves are never stopped); subscriptions
//! with retries, dead-lettering, prefetch and shutdown. Every test uses its own
//! exchange and queue names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::faults::{Fault, FaultProxy};
use crate::support::*;

const AMQP: &str = "127.0.0.1:5672";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn unique(prefix: &str) -> String {
    format!("tp-{prefix}-{}", uuid::Uuid::now_v7().simple())
}

async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{AMQP}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("RabbitMQ at 127.0.0.1:5672 (scripts/test starts it)");
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

/// A durable exchange of `kind` and a queue bound to it with `key` (with `args`).
async fn bound_queue(ch: &Channel, exchange: &str, key: &str, args: FieldTable) -> String {
    let queue = unique("q");
    ch.exchange_declare(
        ShortString::from(exchange),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        ShortString::from(queue.as_str()),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(exchange),
        ShortString::from(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    queue
}

/// Takes every message of `queue` (acknowledged).
async fn drain(ch: &Channel, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery);
    }
    out
}

/// Waits until `queue` holds `n` messages and takes them.
async fn take(
    ch: &Channel,
    queue: &str,
    n: usize,
    within: Duration,
) -> Vec<lapin::message::Delivery> {
    let got = Arc::new(Mutex::new(Vec::new()));
    eventually(within, &format!("{n} messages in {queue}"), || {
        let got = got.clone();
        let ch = ch.clone();
        let queue = queue.to_string();
        async move {
            let mut more = drain(&ch, &queue).await;
            let mut g = got.lock().unwrap();
            g.append(&mut more);
            (g.len() >= n).then_some(())
        }
    })
    .await;
    let v = std::mem::take(&mut *got.lock().unwrap());
    v
}

fn header(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| match h.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            _ => None,
        })
}

fn broker(addr: &str, extra: &str) -> String {
    format!(
        "brokers:\n  events:\n    amqp: {{url: \"amqp://guest:guest@{addr}/%2f\", confirm_timeout: 500ms, heartbeat: 5s, connect_timeout: 1s, reconnect: {{base: 50ms, max: 200ms}}}}\n{extra}"
    )
}

fn config(addr: &str, routes: &str, tail: &str) -> String {
    format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\n{}routes:\n{routes}{tail}",
        broker(addr, "")
    )
}

async fn connected(gw: &turnpike::Gateway) {
    eventually(Duration::from_secs(10), "the broker connected", || async {
        (metric_value(gw, "turnpike_broker_connected{broker=\"events\"}") == Some(1)).then_some(())
    })
    .await;
}

/// Waits until the gateway saw its broker connection go.
async fn disconnected(gw: &turnpike::Gateway) {
    eventually(Duration::from_secs(5), "the drop seen", || async {
        (metric_value(gw, "turnpike_broker_connected{broker=\"events\"}") == Some(0)).then_some(())
    })
    .await;
}

fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    request("POST", url, &all, body)
}

#[tokio::test]
async fn a_publish_is_answered_after_the_confirm_with_the_message_as_sent() {
    let (_c, ch) = channel().await;
    let exchange = unique("orders");
    let queue = bound_queue(&ch, &exchange, "order.created.acme", FieldTable::default()).await;
    let routes = format!(
        "  - name: order-created\n    match: {{path: /api/orders, methods: [POST]}}\n    publish:\n      broker: events\n      exchange: {exchange}\n      routing_key: \"order.created.${{header.x-tenant}}\"\n      mandatory: true\n      persistent: true\n      headers: [x-tenant]\n      respond: {{status: 202, json: {{accepted: true, message_id: \"${{message_id}}\"}}}}\n"
    );
    let gw = gateway(&config(AMQP, &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    let r = send(post(
        &format!("{base}/api/orders"),
        r#"{"sku":"book-1"}"#,
        &[
            ("x-tenant", "acme"),
            ("x-request-id", "req-42"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    ))
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        r.header("connection"),
        None,
        "the body was read: the connection stays open"
    );
    let id = r.json()["message_id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["accepted"], true);
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "a UUIDv7 by default: {id}"
    );
    let got = take(&ch, &queue, 1, Duration::from_secs(5)).await;
    let m = &got[0];
    assert_eq!(m.data, br#"{"sku":"book-1"}"#, "the body as received");
    assert_eq!(
        m.routing_key.as_str(),
        "order.created.acme",
        "the templated key"
    );
    let p = &m.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "req-42");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert!(p.timestamp().is_some());
    assert_eq!(header(m, "x-request-id").as_deref(), Some("req-42"));
    assert_eq!(header(m, "x-tenant").as_deref(), Some("acme"));
    assert!(header(m, "traceparent")
        .unwrap()
        .starts_with("00-0af7651916cd43dd"));
    // A client's Idempotency-Key is the message id.
    let r = send(post(
        &format!("{base}/api/orders"),
        "{}",
        &[("x-tenant", "acme"), ("idempotency-key", "order-7")],
    ))
    .await;
    assert_eq!(r.json()["message_id"], "order-7");
    let got = take(&ch, &queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got[0].properties.message_id().as_ref().unwrap().as_str(),
        "order-7"
    );
    // A key that needs a header the request lacks: 400, nothing published.
    let r = send(post(&format!("{base}/api/orders"), "{}", &[])).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-tenant"));
    assert!(metric_value(&gw, "turnpike_broker_confirmed_total{broker=\"events\"}").unwrap() >= 2);
}

#[tokio::test]
async fn an_unroutable_message_is_a_502_and_an_oversized_body_a_413() {
    let exchange = unique("nowhere");
    let (_c, ch) = channel().await;
    // An exchange with no queue bound: the broker returns a mandatory message.
    ch.exchange_declare(
        ShortString::from(exchange.as_str()),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let routes = format!(
        "  - name: lost\n    match: {{path: /lost}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: none, max_body: 1KiB}}\n"
    );
    let gw = gateway(&config(AMQP, &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    let r = send(post(&format!("{base}/lost"), "{}", &[])).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.error_code(), "broker_unroutable");
    assert_eq!(
        metric_value(&gw, "turnpike_broker_returned_total{broker=\"events\"}"),
        Some(1)
    );
    let published = metric_value(&gw, "turnpike_broker_published_total{broker=\"events\"}");
    let r = send(post(&format!("{base}/lost"), &"x".repeat(2000), &[])).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");
    // Chunked, so no declared length: refused when it grows past the limit.
    let chunks = futures_util::stream::iter((0..4).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'y'; 600])))
    }));
    let req = Request::post(format!("{base}/lost"))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413, "a chunked body past max_body");
    assert_eq!(
        metric_value(&gw, "turnpike_broker_published_total{broker=\"events\"}"),
        published,
        "refused before publishing"
    );
}

#[tokio::test]
async fn a_nack_is_retried_under_the_same_id_then_503() {
    let (_c, ch) = channel().await;
    let exchange = unique("full");
    // A queue of one message that refuses more: RabbitMQ nacks the publish.
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(1));
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
    let queue = bound_queue(&ch, &exchange, "k", args).await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k, retry: {{attempts: 3, backoff: {{base: 10ms, max: 20ms}}}}}}\n"
    );
    let gw = gateway(&config(AMQP, &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    assert_eq!(send(post(&format!("{base}/p"), "1", &[])).await.status, 202);
    let r = send(post(&format!("{base}/p"), "2", &[])).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "broker_nacked");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        metric_value(&gw, "turnpike_broker_nacked_total{broker=\"events\"}"),
        Some(3),
        "three tries in all"
    );
    let got = drain(&ch, &queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"1");
}

#[tokio::test]
async fn a_broker_down_or_stalled_is_a_503_never_a_2xx() {
    let proxy = FaultProxy::start(AMQP.parse::<SocketAddr>().unwrap()).await;
    let (_c, ch) = channel().await;
    let exchange = unique("faults");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k}}\n"
    );
    let gw = gateway(&config(&proxy.addr.to_string(), &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    assert_eq!(
        send(post(&format!("{base}/p"), "ok", &[])).await.status,
        202
    );
    // Stalled: no confirm within confirm_timeout (500ms).
    proxy.set(Fault::Stall);
    let started = std::time::Instant::now();
    let r = send(post(&format!("{base}/p"), "stalled", &[])).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "broker_timeout");
    assert!(r.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(3));
    // Down: refused at once, and reconnected in the background when it is back.
    proxy.set(Fault::Drop);
    disconnected(&gw).await;
    let r = send(post(&format!("{base}/p"), "down", &[])).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "broker_unavailable");
    proxy.set(Fault::Pass);
    connected(&gw).await;
    assert!(metric_value(&gw, "turnpike_broker_reconnects_total{broker=\"events\"}").unwrap() >= 1);
    assert_eq!(
        send(post(&format!("{base}/p"), "back", &[])).await.status,
        202
    );
    let bodies: Vec<Vec<u8>> = take(&ch, &queue, 2, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    assert!(bodies.contains(&b"ok".to_vec()) && bodies.contains(&b"back".to_vec()));
    assert!(
        !bodies.contains(&b"down".to_vec()),
        "a 503 was never published"
    );
}

#[tokio::test]
async fn a_channel_closed_by_a_broker_error_is_reopened() {
    let (_c, ch) = channel().await;
    let exchange = unique("good");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let missing = unique("missing");
    let routes = format!(
        "  - name: good\n    match: {{path: /good}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k}}\n  - name: bad\n    match: {{path: /bad}}\n    publish: {{broker: events, exchange: {missing}, routing_key: k}}\n"
    );
    let gw = gateway(&config(AMQP, &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    // Publishing to an exchange that does not exist: the broker closes the channel (404),
    // which will not heal by waiting: 502, like an unroutable message.
    let r = send(post(&format!("{base}/bad"), "x", &[])).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.error_code(), "broker_unroutable");
    // The channel is reopened on the same connection; publishing works again.
    eventually(Duration::from_secs(5), "publishing again", || async {
        (send(post(&format!("{base}/good"), "after", &[]))
            .await
            .status
            == 202)
            .then_some(())
    })
    .await;
    assert_eq!(
        metric_value(&gw, "turnpike_broker_reconnects_total{broker=\"events\"}"),
        Some(0)
    );
    assert!(!take(&ch, &queue, 1, Duration::from_secs(5))
        .await
        .is_empty());
}

#[tokio::test]
async fn the_outbox_answers_while_the_broker_is_down_and_relays_in_order() {
    let proxy = FaultProxy::start(AMQP.parse::<SocketAddr>().unwrap()).await;
    let (_c, ch) = channel().await;
    let exchange = unique("outbox");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let dir = std::env::temp_dir().join(unique("outbox"));
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k, outbox: {{path: \"{}\", max_size: 1MiB}}}}\n",
        dir.display()
    );
    let gw = gateway(&config(&proxy.addr.to_string(), &routes, "")).await;
    connected(&gw).await;
    proxy.set(Fault::Drop);
    disconnected(&gw).await;
    let base = url(&gw, "public");
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = send(post(&format!("{base}/p"), &format!("{i}"), &[])).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.json()["message_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        metric_value(&gw, "turnpike_outbox_depth{broker=\"events\"}"),
        Some(20)
    );
    assert!(
        drain(&ch, &queue).await.is_empty(),
        "nothing reached the broker yet"
    );
    // A full outbox refuses: 1 MiB holds one 700 KiB body, not two.
    let big = "y".repeat(700 << 10);
    let r = send(post(&format!("{base}/p"), &big, &[])).await;
    assert!(r.status == 202 || r.status == 413, "{}", r.status);
    proxy.set(Fault::Pass);
    let got = take(&ch, &queue, 20, Duration::from_secs(15)).await;
    let order: Vec<String> = got
        .iter()
        .take(20)
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(order, ids, "relayed in order under the same ids");
    eventually(Duration::from_secs(5), "an empty outbox", || async {
        (metric_value(&gw, "turnpike_outbox_depth{broker=\"events\"}") == Some(0)).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_full_outbox_is_a_503() {
    let dir = std::env::temp_dir().join(unique("outbox-full"));
    let dead = closed_port().await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    max_body: 2MiB\n    publish: {{broker: events, exchange: x, routing_key: k, max_body: 2MiB, outbox: {{path: \"{}\", max_size: 1MiB}}}}\n",
        dir.display()
    );
    let gw = gateway(&config(&dead.to_string(), &routes, "")).await;
    let base = url(&gw, "public");
    let big = "y".repeat(600 << 10);
    assert_eq!(
        send(post(&format!("{base}/p"), &big, &[])).await.status,
        202
    );
    let r = send(post(&format!("{base}/p"), &big, &[])).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "outbox_full");
    assert_eq!(
        metric_value(&gw, "turnpike_outbox_full_total{broker=\"events\"}"),
        Some(1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A notifier that fails the first `fail` tries of each message id, recording every
/// try as (message id, attempt header, request id).
#[derive(Clone, Default)]
struct Notifier {
    tries: Arc<Mutex<Vec<(String, String, String)>>>,
    traceparents: Arc<Mutex<Vec<String>>>,
    sources: Arc<Mutex<Vec<String>>>,
    active: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

async fn notifier(fail: usize, pause: Duration) -> (Upstream, Notifier) {
    let n = Notifier::default();
    let seen = n.clone();
    let up = upstream_fn(move |req: Request<hyper::body::Incoming>| {
        let n = seen.clone();
        async move {
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let id = h("x-message-id");
            let now = n.active.fetch_add(1, Ordering::SeqCst) + 1;
            n.most.fetch_max(now, Ordering::SeqCst);
            let earlier = {
                let mut t = n.tries.lock().unwrap();
                let earlier = t.iter().filter(|(m, _, _)| *m == id).count();
                t.push((id, h("x-delivery-attempt"), h("x-request-id")));
                earlier
            };
            n.traceparents.lock().unwrap().push(h("traceparent"));
            n.sources.lock().unwrap().push(h("x-source"));
            tokio::time::sleep(pause).await;
            n.active.fetch_sub(1, Ordering::SeqCst);
            let status = if earlier < fail { 500 } else { 204 };
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            resp
        }
    })
    .await;
    (up, n)
}

fn subscription(exchange: &str, queue: &str, notifier: SocketAddr, prefetch: u16) -> String {
    let routes = "  - name: health\n    match: {path: /health}\n    respond: {status: 200}\n";
    format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\n{}upstreams:\n  notifier: {{endpoints: [\"{notifier}\"]}}\nroutes:\n{routes}subscriptions:\n  - name: notify\n    broker: events\n    queue: {queue}\n    declare:\n      exchange: {{name: {exchange}, kind: direct}}\n      bindings: [order.created, order.paid]\n      dead_letter: {queue}.dlq\n      arguments: {{x-max-length: 1000}}\n    deliver: {{upstream: notifier, path: /hooks/order, method: POST, timeout: 2s, headers: {{x-source: turnpike}}}}\n    retry: {{attempts: 3, backoff: {{base: 100ms, max: 400ms}}}}\n    prefetch: {prefetch}\n",
        broker(AMQP, "")
    )
}

async fn publish_raw(ch: &Channel, exchange: &str, key: &str, id: &str, body: &[u8]) {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-request-id"),
        AMQPValue::LongString(format!("rid-{id}").into()),
    );
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(TRACEPARENT.into()),
    );
    ch.basic_publish(
        ShortString::from(exchange),
        ShortString::from(key),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_message_id(ShortString::from(id))
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn consuming(gw: &turnpike::Gateway) {
    eventually(
        Duration::from_secs(10),
        "the subscription consuming",
        || async {
            (metric_value(
                gw,
                "turnpike_subscription_consuming{subscription=\"notify\"}",
            ) == Some(1))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_service_that_fails_twice_gets_the_message_on_the_third_try() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("notifications"));
    let (up, n) = notifier(2, Duration::ZERO).await;
    let gw = gateway(&subscription(&exchange, &queue, up.addr, 8)).await;
    consuming(&gw).await;
    publish_raw(&ch, &exchange, "order.created", "m-1", b"{\"order\":1}").await;
    eventually(Duration::from_secs(10), "delivered", || async {
        (metric_value(
            &gw,
            "turnpike_subscription_deliveries_total{subscription=\"notify\",outcome=\"delivered\"}",
        ) == Some(1))
        .then_some(())
    })
    .await;
    let tries = n.tries.lock().unwrap().clone();
    let attempts: Vec<&str> = tries.iter().map(|t| t.1.as_str()).collect();
    assert_eq!(
        attempts,
        ["1", "2", "3"],
        "two retries, then delivered once"
    );
    assert!(
        tries.iter().all(|t| t.0 == "m-1" && t.2 == "rid-m-1"),
        "{tries:?}"
    );
    assert!(
        n.traceparents
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == TRACEPARENT),
        "the message's traceparent travels on every try"
    );
    assert!(
        n.sources.lock().unwrap().iter().all(|s| s == "turnpike"),
        "deliver.headers on every call"
    );
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_subscription_deliveries_total{subscription=\"notify\",outcome=\"retried\"}"
        ),
        Some(2)
    );
    assert!(drain(&ch, &format!("{queue}.dlq")).await.is_empty());
    assert!(drain(&ch, &queue).await.is_empty(), "acknowledged");
}

#[tokio::test]
async fn a_service_that_always_fails_gets_the_message_dead_lettered_with_the_reason() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("notifications"));
    let (up, n) = notifier(usize::MAX, Duration::ZERO).await;
    let gw = gateway(&subscription(&exchange, &queue, up.addr, 8)).await;
    consuming(&gw).await;
    publish_raw(&ch, &exchange, "order.paid", "m-2", b"paid").await;
    let dead = take(&ch, &format!("{queue}.dlq"), 1, Duration::from_secs(10)).await;
    assert_eq!(dead[0].data, b"paid");
    assert_eq!(
        header(&dead[0], "x-turnpike-attempts").as_deref(),
        Some("3")
    );
    assert_eq!(
        header(&dead[0], "x-turnpike-failure-reason").as_deref(),
        Some("the service answered 500")
    );
    assert_eq!(
        header(&dead[0], "x-original-routing-key").as_deref(),
        Some("order.paid")
    );
    assert_eq!(n.tries.lock().unwrap().len(), 3);
    // Counted once the broker confirmed the copy, just after it reached the queue.
    eventually(Duration::from_secs(5), "counted", || async {
        (metric_value(&gw, "turnpike_subscription_deliveries_total{subscription=\"notify\",outcome=\"dead_lettered\"}") == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn prefetch_bounds_the_calls_in_flight() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("notifications"));
    let (up, n) = notifier(0, Duration::from_millis(150)).await;
    let gw = gateway(&subscription(&exchange, &queue, up.addr, 2)).await;
    consuming(&gw).await;
    for i in 0..8 {
        publish_raw(&ch, &exchange, "order.created", &format!("p-{i}"), b"x").await;
    }
    eventually(Duration::from_secs(10), "all delivered", || async {
        (metric_value(
            &gw,
            "turnpike_subscription_deliveries_total{subscription=\"notify\",outcome=\"delivered\"}",
        ) == Some(8))
        .then_some(())
    })
    .await;
    assert_eq!(
        n.most.load(Ordering::SeqCst),
        2,
        "never more than prefetch, and used"
    );
    // declare.arguments reached the broker: a declaration without them is refused.
    let (_c2, other) = channel().await;
    let plain = other
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(plain.is_err(), "x-max-length differs: PRECONDITION_FAILED");
}

#[tokio::test]
async fn shutdown_during_a_delivery_acknowledges_nothing_early() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("notifications"));
    // The service takes longer than the grace period.
    let (up, n) = notifier(0, Duration::from_secs(3)).await;
    let gw = gateway(&subscription(&exchange, &queue, up.addr, 4)).await;
    consuming(&gw).await;
    publish_raw(&ch, &exchange, "order.created", "s-1", b"slow").await;
    eventually(Duration::from_secs(5), "the call started", || async {
        (n.active.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    gw.shutdown(Duration::from_millis(300)).await;
    // Not acknowledged: the broker has it again, for the next consumer.
    let back = take(&ch, &queue, 1, Duration::from_secs(5)).await;
    assert_eq!(back[0].data, b"slow");
    assert!(back[0].redelivered);
}

#[tokio::test]
async fn nats_jetstream_acknowledges_and_drops_a_repeated_message_id() {
    let stream = unique("clicks").replace('-', "_");
    let subject = format!("{stream}.events");
    let yaml = format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\nbrokers:\n  stream:\n    nats: {{url: \"nats://127.0.0.1:4222\", jetstream: true, streams: [{{name: {stream}, subjects: [\"{stream}.>\"]}}]}}\nroutes:\n  - name: clicks\n    match: {{path: /api/clicks, methods: [POST]}}\n    publish: {{broker: stream, subject: \"{stream}.${{header.x-kind}}\"}}\n"
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS at 127.0.0.1:4222");
    let js = async_nats::jetstream::new(client);
    // Wait for the gateway to create its stream.
    let mut st = eventually(Duration::from_secs(10), "the stream", || {
        let js = js.clone();
        let stream = stream.clone();
        async move { js.get_stream(&stream).await.ok() }
    })
    .await;
    let send_click = |key: &'static str| {
        send(post(
            &format!("{base}/api/clicks"),
            "{\"x\":1}",
            &[("x-kind", "events"), ("idempotency-key", key)],
        ))
    };
    let r = eventually(Duration::from_secs(10), "a 202", || async {
        let r = send_click("click-1").await;
        (r.status == 202).then_some(r)
    })
    .await;
    assert_eq!(r.json()["message_id"], "click-1");
    assert_eq!(
        send_click("click-1").await.status,
        202,
        "a duplicate is acknowledged too"
    );
    assert_eq!(send_click("click-2").await.status, 202);
    let info = st.info().await.unwrap();
    assert_eq!(
        info.state.messages, 2,
        "the repeated Nats-Msg-Id was dropped"
    );
    let m = st.get_last_raw_message_by_subject(&subject).await.unwrap();
    assert_eq!(m.headers.get("Nats-Msg-Id").unwrap().as_str(), "click-2");
    let _ = js.delete_stream(&stream).await;
}

#[test]
fn messaging_configs_that_cannot_work_are_refused_with_their_paths() {
    let base = "listeners:\n  - {name: public, address: \"127.0.0.1:0\"}\nbrokers:\n  events:\n    amqp: {url: \"amqp://127.0.0.1\"}\n";
    let e = config_error(&format!("{base}routes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: nope, exchange: x}}\n")).unwrap();
    assert!(
        e.contains("routes[0].publish.broker") && e.contains("no broker named `nope`"),
        "{e}"
    );
    let e = config_error(&format!("{base}routes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, subject: a.b}}\n")).unwrap();
    assert!(e.contains("routes[0].publish.subject"), "{e}");
    let e = config_error(&format!("{base}routes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: x, routing_key: \"${{nope}}\"}}\n")).unwrap();
    assert!(
        e.contains("routes[0].publish.routing_key") && e.contains("unknown variable"),
        "{e}"
    );
    let e = config_error(&format!("{base}routes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: x, respond: {{status: 500}}}}\n")).unwrap();
    assert!(e.contains("routes[0].publish.respond.status"), "{e}");
    let e = config_error(&format!("{base}subscriptions:\n  - name: s\n    broker: events\n    queue: q\n    deliver: {{upstream: none, path: hooks}}\n    retry: {{attempts: 0, backoff: {{base: 1s, max: 10ms}}}}\n")).unwrap();
    for field in [
        "subscriptions[0].deliver.upstream",
        "subscriptions[0].deliver.path",
        "subscriptions[0].retry.attempts",
        "subscriptions[0].retry.backoff.max",
    ] {
        assert!(e.contains(field), "{field} in {e}");
    }
    let e = config_error(
        "listeners:\n  - {name: public, address: \"127.0.0.1:0\"}\nbrokers:\n  b: {}\n",
    )
    .unwrap();
    assert!(
        e.contains("brokers.b") && e.contains("exactly one of `amqp`, `nats` or `kafka`"),
        "{e}"
    );
}

/// A proxy to RabbitMQ that forwards the broker's frames whole and can slip a frame of
/// its own between them (`connection.blocked` and `connection.unblocked`), as a broker
/// under a memory or disk alarm sends them.
async fn injecting_proxy(target: &str) -> (SocketAddr, tokio::sync::broadcast::Sender<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (inject, _) = tokio::sync::broadcast::channel::<Vec<u8>>(8);
    let tx = inject.clone();
    let target = target.to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let mut extra = tx.subscribe();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            tokio::spawn(async move {
                loop {
                    let mut head = [0u8; 7];
                    tokio::select! {
                        r = sr.read_exact(&mut head) => {
                            if r.is_err() { return; }
                            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
                            let mut rest = vec![0u8; size + 1];
                            if sr.read_exact(&mut rest).await.is_err() { return; }
                            if cw.write_all(&head).await.is_err() || cw.write_all(&rest).await.is_err() { return; }
                        }
                        Ok(frame) = extra.recv() => {
                            if cw.write_all(&frame).await.is_err() { return; }
                        }
                    }
                }
            });
        }
    });
    (addr, inject)
}

/// A method frame on channel 0.
fn method_frame(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut f = vec![1u8, 0, 0];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(&payload);
    f.push(0xCE);
    f
}

#[tokio::test]
async fn a_blocked_broker_is_a_503_until_it_unblocks() {
    let (proxy, inject) = injecting_proxy(AMQP).await;
    let (_c, ch) = channel().await;
    let exchange = unique("blocked");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k}}\n"
    );
    let gw = gateway(&config(&proxy.to_string(), &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    assert_eq!(
        send(post(&format!("{base}/p"), "before", &[])).await.status,
        202
    );
    let reason = b"low on memory";
    let mut args = vec![reason.len() as u8];
    args.extend_from_slice(reason);
    inject.send(method_frame(10, 60, &args)).unwrap();
    eventually(Duration::from_secs(5), "blocked seen", || async {
        (metric_value(&gw, "turnpike_broker_blocked{broker=\"events\"}") == Some(1)).then_some(())
    })
    .await;
    let r = send(post(&format!("{base}/p"), "during", &[])).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "broker_blocked");
    assert_eq!(r.header("retry-after"), Some("1"));
    inject.send(method_frame(10, 61, &[])).unwrap();
    eventually(Duration::from_secs(5), "unblocked seen", || async {
        (metric_value(&gw, "turnpike_broker_blocked{broker=\"events\"}") == Some(0)).then_some(())
    })
    .await;
    assert_eq!(
        send(post(&format!("{base}/p"), "after", &[])).await.status,
        202
    );
    let bodies: Vec<Vec<u8>> = take(&ch, &queue, 2, Duration::from_secs(5))
        .await
        .into_iter()
        .map(|d| d.data)
        .collect();
    assert_eq!(bodies, [b"before".to_vec(), b"after".to_vec()]);
}

#[tokio::test]
async fn a_thousand_messages_survive_a_cut_broker_and_a_sigkilled_gateway() {
    let proxy = FaultProxy::start(AMQP.parse::<SocketAddr>().unwrap()).await;
    let (_c, ch) = channel().await;
    let exchange = unique("batch");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let dir = std::env::temp_dir().join(unique("outbox-kill"));
    let yaml = format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\nadmin: {{address: \"127.0.0.1:0\"}}\naccess_log: {{enabled: false}}\n{}routes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k, outbox: {{path: \"{}\"}}}}\n",
        broker(&proxy.addr.to_string(), ""),
        dir.display()
    );
    let file = config_file(&unique("kill"), &yaml);
    let mut bin = spawn_binary_with(&file, true);
    let admin = bin.admin.unwrap();
    let metric = |name: &'static str| async move {
        let text = get(&format!("http://{admin}/metrics"), &[]).await.body;
        let text = String::from_utf8_lossy(&text).into_owned();
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<i64>().ok())
        })
    };
    eventually(Duration::from_secs(10), "connected", || async {
        (metric("turnpike_broker_connected{broker=\"events\"}").await == Some(1)).then_some(())
    })
    .await;
    let base = format!("http://{}", bin.addr);
    let mut ids = std::collections::HashSet::new();
    for i in 0..1000 {
        if i == 400 {
            // The broker goes away mid-batch.
            proxy.set(Fault::Drop);
        }
        let r = send(post(&format!("{base}/p"), &i.to_string(), &[])).await;
        assert_eq!(r.status, 202, "message {i}: {:?}", r.body);
        ids.insert(r.json()["message_id"].as_str().unwrap().to_string());
    }
    assert!(
        metric("turnpike_outbox_depth{broker=\"events\"}")
            .await
            .unwrap()
            > 0
    );
    // SIGKILL: no shutdown, no flush, whatever was in flight is cut.
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
    proxy.set(Fault::Pass);
    let gw = gateway(&yaml).await;
    let got = take(&ch, &queue, 1000, Duration::from_secs(30)).await;
    let seen: std::collections::HashSet<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        seen.len(),
        1000,
        "every answered message arrived (duplicates allowed)"
    );
    assert!(ids.is_subset(&seen));
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn subscriptions_follow_reloads_and_a_refused_declaration_does_not_crash_loop() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("notifications"));
    let (up, n) = notifier(0, Duration::ZERO).await;
    // No subscription at first.
    let without = format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\n{}upstreams:\n  notifier: {{endpoints: [\"{}\"]}}\nroutes:\n  - name: health\n    match: {{path: /health}}\n    respond: {{status: 200}}\n",
        broker(AMQP, ""),
        up.addr
    );
    let gw = gateway(&without).await;
    let with = subscription(&exchange, &queue, up.addr, 4);
    gw.runtime()
        .apply(turnpike::config::load_str(&with, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    consuming(&gw).await;
    publish_raw(&ch, &exchange, "order.created", "r-1", b"one").await;
    eventually(Duration::from_secs(10), "delivered", || async {
        (n.tries.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    // Removed on reload: it stops consuming, and messages wait in the queue.
    gw.runtime()
        .apply(turnpike::config::load_str(&without, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "stopped", || async {
        (metric_value(
            &gw,
            "turnpike_subscription_consuming{subscription=\"notify\"}",
        ) == Some(0))
        .then_some(())
    })
    .await;
    publish_raw(&ch, &exchange, "order.created", "r-2", b"two").await;
    let waiting = take(&ch, &queue, 1, Duration::from_secs(5)).await;
    assert_eq!(waiting[0].data, b"two");
    assert_eq!(n.tries.lock().unwrap().len(), 1);
    // A queue that exists with other arguments: the declaration is refused by the broker
    // (PRECONDITION_FAILED); the subscription retries with backoff, the gateway serves on.
    let other = unique("clash");
    ch.queue_declare(
        ShortString::from(other.as_str()),
        QueueDeclareOptions {
            durable: false,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let clash = subscription(&exchange, &other, up.addr, 4);
    gw.runtime()
        .apply(turnpike::config::load_str(&clash, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the refusal counted", || async {
        (metric_value(
            &gw,
            "turnpike_subscription_declare_failures_total{subscription=\"notify\"}",
        )
        .unwrap_or(0)
            >= 2)
            .then_some(())
    })
    .await;
    let failures = metric_value(
        &gw,
        "turnpike_subscription_declare_failures_total{subscription=\"notify\"}",
    )
    .unwrap();
    assert!(failures < 10, "backoff, not a hot loop: {failures}");
    assert_eq!(
        get(&format!("{}/health", url(&gw, "public")), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        metric_value(&gw, "turnpike_broker_connected{broker=\"events\"}"),
        Some(1)
    );
}

#[tokio::test]
async fn quorum_queues_take_the_same_retries() {
    let (_c, ch) = channel().await;
    let (exchange, queue) = (unique("sub"), unique("quorum"));
    let (up, n) = notifier(1, Duration::ZERO).await;
    let yaml = subscription(&exchange, &queue, up.addr, 4).replace(
        &format!("      dead_letter: {queue}.dlq\n"),
        &format!("      dead_letter: {queue}.dlq\n      quorum: true\n"),
    );
    assert!(yaml.contains("quorum: true"));
    let gw = gateway(&yaml).await;
    consuming(&gw).await;
    publish_raw(&ch, &exchange, "order.created", "q-1", b"q").await;
    eventually(Duration::from_secs(10), "delivered", || async {
        (metric_value(
            &gw,
            "turnpike_subscription_deliveries_total{subscription=\"notify\",outcome=\"delivered\"}",
        ) == Some(1))
        .then_some(())
    })
    .await;
    assert_eq!(
        n.tries.lock().unwrap().len(),
        2,
        "one retry through the quorum delay queue"
    );
    // The queue really is a quorum queue: a classic redeclaration is refused.
    let (_c2, other) = channel().await;
    let classic = other
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        classic.is_err(),
        "x-queue-type differs: PRECONDITION_FAILED"
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_broker_connection_and_replaces_a_changed_one() {
    let proxy = FaultProxy::start(AMQP.parse::<SocketAddr>().unwrap()).await;
    let (_c, ch) = channel().await;
    let exchange = unique("reload");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: k}}\n"
    );
    let yaml = config(&proxy.addr.to_string(), &routes, "");
    let gw = gateway(&yaml).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    let load = |y: &str| turnpike::config::load_str(y, std::path::Path::new(".")).unwrap();
    for i in 0..3 {
        gw.runtime().apply(load(&yaml)).await.unwrap();
        let r = send(post(&format!("{base}/p"), &format!("same-{i}"), &[])).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    assert_eq!(proxy.accepted(), 1, "the same connection across reloads");
    // Another broker spec: a new connection; the old one is closed, and the gauge is the
    // new one's.
    let changed = yaml.replace("confirm_timeout: 500ms", "confirm_timeout: 700ms");
    assert_ne!(changed, yaml);
    gw.runtime().apply(load(&changed)).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "published on the new connection",
        || async {
            (send(post(&format!("{base}/p"), "changed", &[]))
                .await
                .status
                == 202)
                .then_some(())
        },
    )
    .await;
    assert_eq!(proxy.accepted(), 2);
    // The replaced link's task ends (it polls for that every second) without resetting
    // the gauge its successor set.
    let settled = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < settled {
        assert_eq!(
            metric_value(&gw, "turnpike_broker_connected{broker=\"events\"}"),
            Some(1)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = take(&ch, &queue, 4, Duration::from_secs(5)).await;
    assert!(got.len() >= 4);
}

#[tokio::test]
async fn priority_expiration_and_the_consumer_travel_with_the_message() {
    let (_c, ch) = channel().await;
    let exchange = unique("props");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let yaml = format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\n{}consumers:\n  - {{name: acme, api_keys: [\"acme-demo-key-0001\"]}}\nroutes:\n  - name: p\n    match: {{path: /p}}\n    policies: [{{type: api_key}}]\n    publish: {{broker: events, exchange: {exchange}, routing_key: k, priority: 7, expiration: 90s, persistent: false, respond: {{status: 201, headers: {{x-message: \"${{message_id}}\"}}, body: \"queued ${{message_id}}\"}}}}\n",
        broker(AMQP, "")
    );
    let gw = gateway(&yaml).await;
    connected(&gw).await;
    let r = send(post(
        &format!("{}/p", url(&gw, "public")),
        "x",
        &[
            ("x-api-key", "acme-demo-key-0001"),
            ("idempotency-key", "k-9"),
        ],
    ))
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("x-message"), Some("k-9"));
    assert_eq!(r.body, b"queued k-9".as_slice());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let got = take(&ch, &queue, 1, Duration::from_secs(5)).await;
    let p = &got[0].properties;
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.expiration().as_ref().map(|e| e.as_str()), Some("90000"));
    assert_eq!(*p.delivery_mode(), None, "persistent: false");
    assert_eq!(header(&got[0], "x-consumer").as_deref(), Some("acme"));
    assert_eq!(p.app_id().as_ref().map(|a| a.as_str()), Some("turnpike"));
}

#[tokio::test]
async fn values_too_long_for_amqp_are_a_400_never_a_crash() {
    let (_c, ch) = channel().await;
    let exchange = unique("long");
    let queue = bound_queue(&ch, &exchange, "k", FieldTable::default()).await;
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: \"${{header.x-key}}\"}}\n"
    );
    let gw = gateway(&config(AMQP, &routes, "")).await;
    connected(&gw).await;
    let base = url(&gw, "public");
    let long = "a".repeat(300);
    let ct = format!("application/{long}");
    let r = send(request(
        "POST",
        &format!("{base}/p"),
        &[("content-type", &ct), ("x-key", "k")],
        "x",
    ))
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("content-type"));
    let r = send(request(
        "POST",
        &format!("{base}/p"),
        &[("x-key", &long)],
        "x",
    ))
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("routing key"));
    // The gateway and its connection are fine.
    let r = send(request(
        "POST",
        &format!("{base}/p"),
        &[("x-key", "k")],
        "ok",
    ))
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        take(&ch, &queue, 1, Duration::from_secs(5)).await[0].data,
        b"ok"
    );
}

#[tokio::test]
async fn an_unroutable_message_in_a_relayed_batch_is_parked_and_only_it() {
    let proxy = FaultProxy::start(AMQP.parse::<SocketAddr>().unwrap()).await;
    let (_c, ch) = channel().await;
    let exchange = unique("parked");
    let queue = bound_queue(&ch, &exchange, "good", FieldTable::default()).await;
    let dir = std::env::temp_dir().join(unique("outbox-parked"));
    let routes = format!(
        "  - name: p\n    match: {{path: /p}}\n    publish: {{broker: events, exchange: {exchange}, routing_key: \"${{header.x-key}}\", outbox: {{path: \"{}\"}}}}\n",
        dir.display()
    );
    let gw = gateway(&config(&proxy.addr.to_string(), &routes, "")).await;
    connected(&gw).await;
    proxy.set(Fault::Drop);
    disconnected(&gw).await;
    let base = url(&gw, "public");
    let mut ids = Vec::new();
    for (i, key) in ["good", "good", "nowhere", "good", "good"]
        .iter()
        .enumerate()
    {
        let r = send(post(
            &format!("{base}/p"),
            &i.to_string(),
            &[("x-key", key)],
        ))
        .await;
        assert_eq!(r.status, 202);
        ids.push(r.json()["message_id"].as_str().unwrap().to_string());
    }
    proxy.set(Fault::Pass);
    // Relayed in one window: the return is matched to its message by id.
    let got = take(&ch, &queue, 4, Duration::from_secs(15)).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [b"0".as_slice(), b"1", b"3", b"4"]);
    let parked = eventually(Duration::from_secs(5), "unroutable.log", || {
        let dir = dir.clone();
        async move { std::fs::read_to_string(dir.join("unroutable.log")).ok() }
    })
    .await;
    assert_eq!(parked.lines().count(), 1, "{parked}");
    assert!(parked.contains(&ids[2]), "{parked}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn core_nats_publishes_are_flushed_to_the_server() {
    let subject = format!("tp.core.{}", uuid::Uuid::now_v7().simple());
    let client = async_nats::connect("127.0.0.1:4222")
        .await
        .expect("NATS at 127.0.0.1:4222");
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    let yaml = format!(
        "listeners:\n  - {{name: public, address: \"127.0.0.1:0\"}}\nbrokers:\n  core:\n    nats: {{url: \"nats://127.0.0.1:4222\"}}\nroutes:\n  - name: p\n    match: {{path: /p}}\n    publish: {{broker: core, subject: \"{subject}\"}}\n"
    );
    let gw = gateway(&yaml).await;
    let r = eventually(Duration::from_secs(10), "a 202", || async {
        let r = send(post(
            &format!("{}/p", url(&gw, "public")),
            "hello",
            &[("x-request-id", "core-1")],
        ))
        .await;
        (r.status == 202).then_some(r)
    })
    .await;
    let id = r.json()["message_id"].as_str().unwrap().to_string();
    let m = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut sub),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(m.payload.as_ref(), b"hello");
    let h = m.headers.unwrap();
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), id);
    assert_eq!(h.get("x-request-id").unwrap().as_str(), "core-1");
}

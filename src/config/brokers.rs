//! Messaging: the `brokers` a gateway talks to (RabbitMQ over AMQP 0-9-1, NATS with
//! JetStream), the `publish` target of a route (a request becomes a message), and
//! `subscriptions` (messages of a queue delivered to an HTTP service, with retries and a
//! dead-letter queue).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::RespondSpec;
use super::units::{Dur, Size};
use super::Problems;

/// One named broker: exactly one of `amqp` or `nats`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// RabbitMQ (AMQP 0-9-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp: Option<AmqpSpec>,
    /// NATS (with JetStream for acknowledged publishing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    /// Kafka (an idempotent producer with `acks=all`; the `kafka` cargo feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
}

/// A Kafka producer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSpec {
    /// `host:port` of one or more brokers to bootstrap from.
    pub bootstrap: Vec<String>,
    /// How long a publish waits for the leader and all in-sync replicas to have it.
    #[serde(default = "five_seconds")]
    pub ack_timeout: Dur,
    /// Extra librdkafka producer settings (`compression.type: lz4`, `security.protocol`,
    /// ...). `acks` and `enable.idempotence` are fixed: `all` and `true`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// A RabbitMQ connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSpec {
    /// `amqp://user:password@host:port/vhost` (the vhost percent-encoded: `%2f` is `/`).
    pub url: String,
    /// How long a publish waits for the broker's confirm before it counts as failed.
    #[serde(default = "two_seconds")]
    pub confirm_timeout: Dur,
    /// The AMQP heartbeat: a silent broker is given up on after about twice this.
    #[serde(default = "thirty_seconds")]
    pub heartbeat: Dur,
    /// How long connecting (TCP and the AMQP handshake) may take.
    #[serde(default = "five_seconds")]
    pub connect_timeout: Dur,
    /// Waits between reconnection attempts: doubled from `base` up to `max`, with jitter.
    #[serde(default = "reconnect")]
    pub reconnect: BackoffSpec,
}

/// A NATS connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    /// `nats://host:port` (`nats://user:password@host:port` with credentials).
    pub url: String,
    /// Publish through JetStream and wait for its acknowledgement (with `Nats-Msg-Id`
    /// de-duplication). Without it a 2xx only means the message was flushed to the
    /// server: core NATS keeps nothing for a subscriber that is not there.
    #[serde(default)]
    pub jetstream: bool,
    /// How long a publish waits for JetStream's acknowledgement.
    #[serde(default = "two_seconds")]
    pub ack_timeout: Dur,
    /// How long connecting may take.
    #[serde(default = "five_seconds")]
    pub connect_timeout: Dur,
    /// JetStream streams created (or updated to these subjects) when connecting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<NatsStreamSpec>,
}

/// A JetStream stream the gateway makes sure exists.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsStreamSpec {
    /// The stream's name.
    pub name: String,
    /// The subjects it stores (`clicks.>`).
    pub subjects: Vec<String>,
    /// The window in which a repeated `Nats-Msg-Id` is dropped as a duplicate.
    #[serde(default = "two_minutes")]
    pub duplicate_window: Dur,
}

/// Exponential backoff.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSpec {
    /// The first wait.
    pub base: Dur,
    /// The longest wait.
    pub max: Dur,
}

impl BackoffSpec {
    /// The wait before try `n + 1` after `n` failures (n ≥ 1): `base * 2^(n-1)`, at most `max`.
    pub fn delay(&self, n: u32) -> std::time::Duration {
        let shift = n.saturating_sub(1).min(30);
        self.base
            .0
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max.0)
            .min(self.max.0)
    }
}

/// The `publish` target: the request becomes one message.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// The broker (a key of `brokers`).
    pub broker: String,
    /// AMQP: the exchange (`""` is the default exchange, which routes by queue name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// AMQP: the routing key; templated (`${id}`, `${header.x-tenant}`, `${consumer}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// NATS: the subject; templated like `routing_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Kafka: the topic; templated like `routing_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Kafka: the record key (the partition, and the order within it); templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// AMQP: a message no queue takes is returned by the broker and answered 502
    /// `broker_unroutable`, never dropped.
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// AMQP: delivery mode 2 (written to disk by durable queues).
    #[serde(default = "yes")]
    pub persistent: bool,
    /// A local durable queue used while the broker cannot take messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<OutboxSpec>,
    /// The answer once the message is accepted (default: 202 with
    /// `{"accepted": true, "message_id": "..."}`). May use `${message_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    /// Request headers copied into the message's headers (lower-cased names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// The largest body published; a longer one is a 413 (default 1 MiB).
    #[serde(default = "one_mib")]
    pub max_body: Size,
    /// AMQP: the message priority (0-255; queues need `x-max-priority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// AMQP: the message expires unconsumed after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Dur>,
    /// A negative acknowledgement (`basic.nack`) is retried this many times in all, with
    /// backoff, under the same `message_id`.
    #[serde(default = "nack_retry")]
    pub retry: RetrySpec,
}

/// The durable outbox of a publish route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSpec {
    /// The folder of its files (relative to the configuration file).
    pub path: String,
    /// Past this many bytes of undelivered messages, publishing answers 503.
    #[serde(default = "one_gib")]
    pub max_size: Size,
}

/// How many tries and how long between them.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Tries in all (the first included).
    pub attempts: u32,
    /// The wait between tries.
    pub backoff: BackoffSpec,
}

/// A queue whose messages are delivered to an HTTP service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// A unique name (logs, metrics).
    pub name: String,
    /// The broker (a key of `brokers`; AMQP).
    pub broker: String,
    /// The queue consumed.
    pub queue: String,
    /// What is declared before consuming (idempotently, on every connect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declare: Option<DeclareSpec>,
    /// The HTTP call each message becomes.
    pub deliver: DeliverSpec,
    /// Tries in all before the message is dead-lettered, and the waits between them.
    #[serde(default = "delivery_retry")]
    pub retry: RetrySpec,
    /// Messages in flight at most (unacknowledged deliveries).
    #[serde(default = "sixteen")]
    pub prefetch: u16,
}

/// Declarations of a subscription.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareSpec {
    /// The exchange the queue is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeSpec>,
    /// Routing keys binding the queue to the exchange.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<String>,
    /// A queue for messages that failed every try (declared, durable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// Declare the queues as quorum queues (replicated; RabbitMQ 3.8+).
    #[serde(default)]
    pub quorum: bool,
    /// Extra queue arguments (`x-max-length: 100000`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, serde_json::Value>,
}

/// An exchange.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSpec {
    /// Its name.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(default = "direct")]
    pub kind: String,
    /// Survives a broker restart.
    #[serde(default = "yes")]
    pub durable: bool,
}

/// The HTTP call a message becomes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverSpec {
    /// The upstream called.
    pub upstream: String,
    /// The path (and query) called.
    pub path: String,
    /// The method.
    #[serde(default = "post")]
    pub method: String,
    /// The whole call, connecting included; past it the try failed.
    #[serde(default = "ten_seconds")]
    pub timeout: Dur,
    /// Headers added to the call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}
fn direct() -> String {
    "direct".into()
}
fn post() -> String {
    "POST".into()
}
fn sixteen() -> u16 {
    16
}
fn two_seconds() -> Dur {
    Dur::secs(2)
}
fn five_seconds() -> Dur {
    Dur::secs(5)
}
fn ten_seconds() -> Dur {
    Dur::secs(10)
}
fn thirty_seconds() -> Dur {
    Dur::secs(30)
}
fn two_minutes() -> Dur {
    Dur::secs(120)
}
fn one_mib() -> Size {
    Size(1 << 20)
}
fn one_gib() -> Size {
    Size(1 << 30)
}
fn reconnect() -> BackoffSpec {
    BackoffSpec {
        base: Dur(std::time::Duration::from_millis(100)),
        max: Dur::secs(10),
    }
}
fn nack_retry() -> RetrySpec {
    RetrySpec {
        attempts: 3,
        backoff: BackoffSpec {
            base: Dur(std::time::Duration::from_millis(50)),
            max: Dur(std::time::Duration::from_millis(500)),
        },
    }
}
fn delivery_retry() -> RetrySpec {
    RetrySpec {
        attempts: 3,
        backoff: BackoffSpec {
            base: Dur::secs(1),
            max: Dur::secs(30),
        },
    }
}

/// The broker kinds, for messages.
impl BrokerSpec {
    /// `amqp` or `nats`.
    pub fn kind(&self) -> &'static str {
        if self.nats.is_some() {
            "nats"
        } else if self.kafka.is_some() {
            "kafka"
        } else {
            "amqp"
        }
    }
}

/// Checks `brokers`.
pub fn check_brokers(brokers: &BTreeMap<String, BrokerSpec>, p: &mut Problems) {
    for (name, b) in brokers {
        let at = format!("brokers.{name}");
        if !is_label(name) {
            p.push(
                at.clone(),
                "a broker name is letters, digits, `_`, `-` and `.`",
            );
        }
        match (&b.amqp, &b.nats, &b.kafka) {
            (None, None, Some(k)) => {
                if !cfg!(feature = "kafka") {
                    p.push(
                        format!("{at}.kafka"),
                        "this build has no Kafka support: build with `--features kafka`",
                    );
                }
                if k.bootstrap.is_empty() {
                    p.push(format!("{at}.kafka.bootstrap"), "at least one `host:port`");
                }
                if k.ack_timeout.0.is_zero() {
                    p.push(format!("{at}.kafka.ack_timeout"), "must be more than 0");
                }
                for key in ["acks", "enable.idempotence", "bootstrap.servers"] {
                    if k.properties.contains_key(key) {
                        p.push(
                            format!("{at}.kafka.properties.{key}"),
                            "set by turnpike (acks=all, idempotence on, `bootstrap`)",
                        );
                    }
                }
            }
            (Some(a), None, None) => {
                if !(a.url.starts_with("amqp://") || a.url.starts_with("amqps://")) {
                    p.push(
                        format!("{at}.amqp.url"),
                        "must start with amqp:// or amqps://",
                    );
                }
                for (field, d) in [
                    ("confirm_timeout", a.confirm_timeout),
                    ("connect_timeout", a.connect_timeout),
                ] {
                    if d.0.is_zero() {
                        p.push(format!("{at}.amqp.{field}"), "must be more than 0");
                    }
                }
                if a.heartbeat.0.as_secs() > u16::MAX as u64 {
                    p.push(format!("{at}.amqp.heartbeat"), "at most 65535s");
                }
                check_backoff(&format!("{at}.amqp.reconnect"), &a.reconnect, p);
            }
            (None, Some(n), None) => {
                if !(n.url.starts_with("nats://") || n.url.starts_with("tls://")) {
                    p.push(
                        format!("{at}.nats.url"),
                        "must start with nats:// or tls://",
                    );
                }
                for (field, d) in [
                    ("ack_timeout", n.ack_timeout),
                    ("connect_timeout", n.connect_timeout),
                ] {
                    if d.0.is_zero() {
                        p.push(format!("{at}.nats.{field}"), "must be more than 0");
                    }
                }
                for (i, s) in n.streams.iter().enumerate() {
                    if s.name.is_empty() || s.name.contains(['.', '*', '>', ' ']) {
                        p.push(
                            format!("{at}.nats.streams[{i}].name"),
                            "a stream name is not empty and has no `.`, `*`, `>` or space",
                        );
                    }
                    if s.subjects.is_empty() {
                        p.push(
                            format!("{at}.nats.streams[{i}].subjects"),
                            "at least one subject",
                        );
                    }
                }
                if !n.streams.is_empty() && !n.jetstream {
                    p.push(
                        format!("{at}.nats.streams"),
                        "streams are JetStream's: set `jetstream: true`",
                    );
                }
            }
            _ => p.push(at, "give exactly one of `amqp`, `nats` or `kafka`"),
        }
    }
}

/// Safe as a metric label and a log field.
fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_backoff(at: &str, b: &BackoffSpec, p: &mut Problems) {
    if b.base.0.is_zero() {
        p.push(format!("{at}.base"), "must be more than 0");
    }
    if b.max.0 < b.base.0 {
        p.push(format!("{at}.max"), "must be at least `base`");
    }
}

/// Checks a route's `publish` block.
pub fn check_publish(
    at: &str,
    spec: &PublishSpec,
    brokers: &BTreeMap<String, BrokerSpec>,
    p: &mut Problems,
) {
    let Some(b) = brokers.get(&spec.broker) else {
        p.push(
            format!("{at}.broker"),
            format!("no broker named `{}` in `brokers`", spec.broker),
        );
        return;
    };
    match b.kind() {
        "amqp" => {
            for (field, set) in [("topic", spec.topic.is_some()), ("key", spec.key.is_some())] {
                if set {
                    p.push(
                        format!("{at}.{field}"),
                        "an AMQP broker takes `exchange` and `routing_key`",
                    );
                }
            }
            if spec.subject.is_some() {
                p.push(
                    format!("{at}.subject"),
                    "an AMQP broker takes `exchange` and `routing_key`, not `subject`",
                );
            }
            if spec.exchange.is_none() && spec.routing_key.is_none() {
                p.push(
                    at.to_string(),
                    "give `exchange` and/or `routing_key` (the default exchange routes by queue name)",
                );
            }
        }
        "kafka" => {
            for (field, set) in [
                ("exchange", spec.exchange.is_some()),
                ("routing_key", spec.routing_key.is_some()),
                ("subject", spec.subject.is_some()),
                ("priority", spec.priority.is_some()),
                ("expiration", spec.expiration.is_some()),
            ] {
                if set {
                    p.push(
                        format!("{at}.{field}"),
                        "a Kafka broker takes `topic` and `key`",
                    );
                }
            }
            if spec.topic.as_deref().is_none_or(str::is_empty) {
                p.push(format!("{at}.topic"), "a Kafka publish needs a `topic`");
            }
        }
        _ => {
            for (field, set) in [
                ("topic", spec.topic.is_some()),
                ("key", spec.key.is_some()),
                ("exchange", spec.exchange.is_some()),
                ("routing_key", spec.routing_key.is_some()),
                ("priority", spec.priority.is_some()),
                ("expiration", spec.expiration.is_some()),
            ] {
                if set {
                    p.push(
                        format!("{at}.{field}"),
                        "a NATS broker takes `subject`; this is an AMQP setting",
                    );
                }
            }
            if spec.subject.as_deref().is_none_or(str::is_empty) {
                p.push(format!("{at}.subject"), "a NATS publish needs a `subject`");
            }
        }
    }
    if spec.max_body.0 == 0 {
        p.push(format!("{at}.max_body"), "must be more than 0");
    }
    if spec.retry.attempts == 0 {
        p.push(format!("{at}.retry.attempts"), "at least 1 (the first try)");
    }
    check_backoff(&format!("{at}.retry.backoff"), &spec.retry.backoff, p);
    if let Some(o) = &spec.outbox {
        if o.path.is_empty() {
            p.push(format!("{at}.outbox.path"), "must not be empty");
        }
        if o.max_size.0 < 1 << 20 {
            p.push(format!("{at}.outbox.max_size"), "at least 1MiB");
        }
    }
    if let Some(r) = &spec.respond {
        super::validate::check_respond(&format!("{at}.respond"), r, p);
        if !(200..300).contains(&r.status) {
            p.push(
                format!("{at}.respond.status"),
                "the answer to an accepted message is a 2xx",
            );
        }
    }
    for (i, h) in spec.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.push(format!("{at}.headers[{i}]"), "not a header name");
        }
    }
}

/// Checks `subscriptions`.
pub fn check_subscriptions(
    subs: &[SubscriptionSpec],
    brokers: &BTreeMap<String, BrokerSpec>,
    upstreams: &dyn Fn(&str) -> bool,
    p: &mut Problems,
) {
    let mut names = std::collections::HashSet::new();
    for (i, s) in subs.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        if !is_label(&s.name) {
            p.push(
                format!("{at}.name"),
                "a subscription name is letters, digits, `_`, `-` and `.`",
            );
        } else if !names.insert(s.name.as_str()) {
            p.push(
                format!("{at}.name"),
                format!("duplicate subscription `{}`", s.name),
            );
        }
        match brokers.get(&s.broker).map(BrokerSpec::kind) {
            None => p.push(
                format!("{at}.broker"),
                format!("no broker named `{}` in `brokers`", s.broker),
            ),
            Some("amqp") => {}
            Some(_) => p.push(
                format!("{at}.broker"),
                "subscriptions consume RabbitMQ (amqp) queues",
            ),
        }
        if s.queue.is_empty() {
            p.push(format!("{at}.queue"), "must not be empty");
        }
        if let Some(d) = &s.declare {
            if let Some(x) = &d.exchange {
                if !["direct", "fanout", "topic", "headers"].contains(&x.kind.as_str()) {
                    p.push(
                        format!("{at}.declare.exchange.kind"),
                        "one of direct, fanout, topic, headers",
                    );
                }
                if x.name.is_empty() {
                    p.push(
                        format!("{at}.declare.exchange.name"),
                        "the default exchange cannot be declared; leave `exchange` out",
                    );
                }
            } else if !d.bindings.is_empty() {
                p.push(
                    format!("{at}.declare.bindings"),
                    "bindings need the `exchange` they bind to",
                );
            }
            if d.dead_letter.as_deref() == Some(s.queue.as_str()) {
                p.push(
                    format!("{at}.declare.dead_letter"),
                    "the dead-letter queue cannot be the queue itself",
                );
            }
            for (k, v) in &d.arguments {
                if !(v.is_string() || v.is_i64() || v.is_u64() || v.is_boolean()) {
                    p.push(
                        format!("{at}.declare.arguments.{k}"),
                        "a string, an integer or a boolean",
                    );
                }
            }
        }
        if !upstreams(&s.deliver.upstream) {
            p.push(
                format!("{at}.deliver.upstream"),
                format!("no upstream named `{}`", s.deliver.upstream),
            );
        }
        if !s.deliver.path.starts_with('/') {
            p.push(format!("{at}.deliver.path"), "must start with `/`");
        } else if s.deliver.path.parse::<http::Uri>().is_err() {
            p.push(format!("{at}.deliver.path"), "not a valid path and query");
        }
        if http::Method::from_bytes(s.deliver.method.as_bytes()).is_err() {
            p.push(format!("{at}.deliver.method"), "not a method");
        }
        if s.deliver.timeout.0.is_zero() {
            p.push(format!("{at}.deliver.timeout"), "must be more than 0");
        }
        for (k, v) in &s.deliver.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                p.push(format!("{at}.deliver.headers.{k}"), "not a valid header");
            }
        }
        if s.retry.attempts == 0 {
            p.push(format!("{at}.retry.attempts"), "at least 1 (the first try)");
        }
        if s.retry.attempts > 20 {
            p.push(format!("{at}.retry.attempts"), "at most 20");
        }
        check_backoff(&format!("{at}.retry.backoff"), &s.retry.backoff, p);
        if s.prefetch == 0 {
            p.push(format!("{at}.prefetch"), "at least 1");
        }
    }
}

//! Messaging: the `brokers` a gateway talks to (RabbitMQ over AMQP 0-9-1, NATS with
//! JetStream, Kafka with the `kafka` feature), the `publish` target of a route (a request
//! becomes a message), and `subscriptions` (messages of a queue delivered to an HTTP
//! service, with retries and a dead-letter queue). Their checks are in
//! `validate_brokers.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::route::RespondSpec;
use super::units::{Dur, Size};

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

/// Exponential backoff (`{base, max}`): the same spec as an upstream's `retry.backoff`.
pub use super::resilience::BackoffSpec;

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
impl RetrySpec {
    /// A publish's default: 3 tries, 50 ms then 100 ms apart (at most 500 ms).
    pub fn nack_default() -> Self {
        nack_retry()
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

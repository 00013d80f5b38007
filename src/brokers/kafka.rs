//! The Kafka producer of one `brokers.NAME.kafka` block (rdkafka, the `kafka` feature).
//!
//! One idempotent producer per broker spec (`enable.idempotence=true`, which implies
//! `acks=all` and ordered, de-duplicated retries within a partition). librdkafka connects
//! and reconnects by itself; a publish waits for the delivery report (the leader and
//! every in-sync replica have the record) at most `ack_timeout`, which is also the
//! producer's `message.timeout.ms`, so a record that was not confirmed in time is never
//! delivered later by a retry. A topic that does not exist is an unroutable message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::message::{Destination, Message};
use super::PublishError;
use crate::config::brokers::KafkaSpec;
use crate::telemetry::broker_metrics::BrokerStats;

/// The producer of one Kafka cluster.
pub struct KafkaLink {
    /// The broker's name.
    pub name: Arc<str>,
    spec: KafkaSpec,
    producer: OnceLock<Result<FutureProducer, String>>,
    started: AtomicBool,
    /// Counters.
    pub stats: Arc<BrokerStats>,
}

impl KafkaLink {
    /// A link whose producer is made by [`KafkaLink::start`].
    pub fn new(name: &str, spec: KafkaSpec, stats: Arc<BrokerStats>) -> Self {
        Self {
            name: Arc::from(name),
            spec,
            producer: OnceLock::new(),
            started: AtomicBool::new(false),
            stats,
        }
    }

    /// Makes the producer (it connects in the background).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.spec.bootstrap.join(","))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                self.spec.ack_timeout.0.as_millis().max(1).to_string(),
            )
            .set("client.id", format!("turnpike-{}", self.name))
            // A topic that does not appear within half the ack timeout is reported as
            // unknown (502), not left to time out (librdkafka waits 30 s by default).
            .set(
                "topic.metadata.propagation.max.ms",
                (self.spec.ack_timeout.0.as_millis() / 2).max(1).to_string(),
            );
        for (k, v) in &self.spec.properties {
            config.set(k, v);
        }
        let made = config.create::<FutureProducer>().map_err(|e| e.to_string());
        if let Err(e) = &made {
            tracing::error!(broker = %self.name, error = %e, "cannot create the Kafka producer");
        }
        let _ = self.producer.set(made);
    }

    /// Produces `m` and waits for its delivery report.
    pub async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        let Destination::Kafka { topic, key } = &m.to else {
            return Err(PublishError::Unavailable(
                "a Kafka broker takes only Kafka messages".into(),
            ));
        };
        let Some(Ok(producer)) = self.producer.get() else {
            return Err(PublishError::Unavailable("no producer".into()));
        };
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 3)
            .insert(Header {
                key: "message-id",
                value: Some(m.id.as_str()),
            })
            .insert(Header {
                key: "correlation-id",
                value: Some(m.correlation_id.as_str()),
            });
        if let Some(ct) = &m.content_type {
            headers = headers.insert(Header {
                key: "content-type",
                value: Some(ct.as_str()),
            });
        }
        for (k, v) in &m.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(v.as_str()),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(m.body.as_ref())
            .headers(headers)
            .timestamp((m.timestamp as i64).saturating_mul(1000));
        if let Some(k) = key {
            record = record.key(k.as_str());
        }
        let deadline = self.spec.ack_timeout.0 + Duration::from_millis(500);
        match tokio::time::timeout(deadline, producer.send(record, Duration::ZERO)).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Ok(_)) => {
                self.stats.connected.set(1);
                Ok(())
            }
            Ok(Err((e, _))) => Err(classify(e)),
        }
    }
}

fn classify(e: KafkaError) -> PublishError {
    use RDKafkaErrorCode as C;
    match e {
        KafkaError::MessageProduction(
            C::UnknownTopicOrPartition | C::UnknownTopic | C::TopicAuthorizationFailed,
        ) => PublishError::Unroutable(e.to_string()),
        KafkaError::MessageProduction(C::MessageTimedOut | C::RequestTimedOut) => {
            PublishError::Timeout
        }
        KafkaError::MessageProduction(C::MessageSizeTooLarge | C::InvalidMessageSize) => {
            PublishError::Unroutable(e.to_string())
        }
        KafkaError::MessageProduction(C::QueueFull) => PublishError::Blocked,
        other => PublishError::Unavailable(other.to_string()),
    }
}

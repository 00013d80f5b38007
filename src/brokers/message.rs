//! A message as the gateway publishes it: what a request became (body, content type,
//! ids, headers) and where it goes. The same value is written to the outbox and relayed
//! from it, so a relayed message is the one the client was answered for, under the same
//! `message_id`.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// AMQP: an exchange and a routing key.
    Amqp {
        /// The exchange (`""`: the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
        /// Return the message when no queue takes it.
        mandatory: bool,
        /// Delivery mode 2.
        persistent: bool,
        /// Priority, when configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
        /// Per-message TTL in milliseconds, when configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expiration_ms: Option<u64>,
    },
    /// NATS: a subject.
    Nats {
        /// The subject.
        subject: String,
    },
    /// Kafka: a topic and an optional record key.
    Kafka {
        /// The topic.
        topic: String,
        /// The record key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The message id: a UUIDv7, or the client's `Idempotency-Key`.
    pub id: String,
    /// The request id of the request it came from.
    pub correlation_id: String,
    /// The request's `content-type`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Unix time in seconds when the gateway accepted it.
    pub timestamp: u64,
    /// Headers: `x-request-id`, `traceparent`, `x-consumer`, and the chosen request
    /// headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Where it goes.
    pub to: Destination,
    /// The body, as received.
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
}

impl Message {
    /// The routing key or subject: the unit of ordering.
    pub fn key(&self) -> &str {
        match &self.to {
            Destination::Amqp { routing_key, .. } => routing_key,
            Destination::Nats { subject } => subject,
            Destination::Kafka { topic, key } => key.as_deref().unwrap_or(topic),
        }
    }

    /// The bytes written to the outbox.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, integers and bytes always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A message read back from the outbox.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

mod base64_bytes {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_outbox_encoding() {
        let m = Message {
            id: "0190-abc".into(),
            correlation_id: "req-1".into(),
            content_type: Some("application/json".into()),
            timestamp: 1_780_000_000,
            headers: vec![("x-request-id".into(), "req-1".into())],
            to: Destination::Amqp {
                exchange: "orders".into(),
                routing_key: "order.created".into(),
                mandatory: true,
                persistent: true,
                priority: Some(3),
                expiration_ms: None,
            },
            body: Bytes::from_static(b"{\"a\":1}\x00\xff"),
        };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(Message::decode(b"{\"id\":").is_err());
    }
}

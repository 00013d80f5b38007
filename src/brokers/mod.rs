//! Message brokers: the connections the gateway keeps to RabbitMQ, NATS and Kafka, the
//! messages it publishes, the durable outbox that holds them while a broker cannot take
//! them, and the subscriptions that deliver queued messages to HTTP services.
//!
//! A connection is long-lived state: one per broker spec, found again by a reload that
//! keeps the spec, connected (and re-connected, with backoff) by a background task that
//! ends when no snapshot uses the broker any more. A request never waits for a connection
//! to be made: a broker that is not connected answers at once.

pub mod amqp;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod message;
pub mod nats;
pub mod outbox;
pub mod subscribe;
pub mod topology;

use std::sync::Arc;

use http::StatusCode;

pub use message::Message;

use crate::config::brokers::{BrokerSpec, RetrySpec};
use crate::http::GatewayError;
use crate::telemetry::broker_metrics::BrokerStats;

/// Why a message was not accepted by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// Not connected (down, refused, reconnecting).
    Unavailable(String),
    /// No confirm or acknowledgement within the configured time.
    Timeout,
    /// The broker blocked publishing (a memory or disk alarm).
    Blocked,
    /// The broker refused the message (`basic.nack`).
    Nacked,
    /// No queue or stream takes the message (`basic.return`, no JetStream stream).
    Unroutable(String),
    /// The channel or connection failed while publishing.
    Closed(String),
}

impl PublishError {
    /// Whether the outbox should keep the message for later: every failure but an
    /// unroutable message, which would never route by waiting.
    pub fn outbox_may_keep(&self) -> bool {
        !matches!(self, Self::Unroutable(_))
    }

    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "broker_unavailable",
            Self::Timeout => "broker_timeout",
            Self::Blocked => "broker_blocked",
            Self::Nacked => "broker_nacked",
            Self::Unroutable(_) => "broker_unroutable",
            Self::Closed(_) => "broker_unavailable",
        }
    }

    /// The error the client receives: 502 for an unroutable message (the configuration
    /// or the broker's topology is wrong, waiting will not help), else 503 with
    /// `Retry-After`.
    pub fn into_gateway(self, broker: &str) -> GatewayError {
        let cause = match &self {
            Self::Unavailable(c) | Self::Unroutable(c) | Self::Closed(c) => {
                format!("broker `{broker}`: {c}")
            }
            other => format!("broker `{broker}`: {}", other.code()),
        };
        let unroutable = matches!(self, Self::Unroutable(_));
        GatewayError::Publish {
            code: self.code(),
            status: if unroutable {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            retry_after: if unroutable { 0 } else { 1 },
            cause,
        }
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(c) => write!(f, "not connected: {c}"),
            Self::Timeout => f.write_str("no confirm in time"),
            Self::Blocked => f.write_str("the broker blocked publishing"),
            Self::Nacked => f.write_str("the broker refused the message (nack)"),
            Self::Unroutable(c) => write!(f, "unroutable: {c}"),
            Self::Closed(c) => write!(f, "channel closed: {c}"),
        }
    }
}

/// A live broker connection.
#[derive(Clone)]
pub enum Link {
    /// RabbitMQ.
    Amqp(Arc<amqp::AmqpLink>),
    /// NATS.
    Nats(Arc<nats::NatsLink>),
    /// Kafka.
    #[cfg(feature = "kafka")]
    Kafka(Arc<kafka::KafkaLink>),
}

impl Link {
    /// The connection of broker `name` with `spec`: the live one when a snapshot already
    /// uses the same spec, else a new one (not connected until [`Link::start`]). `None`
    /// for a spec without a kind (which validation refuses). `scope` tells apart the
    /// gateways of one process (tests run several).
    pub fn shared(
        scope: &str,
        name: &str,
        spec: &BrokerSpec,
        stats: Arc<BrokerStats>,
    ) -> Option<Link> {
        let id = format!(
            "broker:{scope}:{name}:{}",
            serde_json::to_string(spec).unwrap_or_default()
        );
        Some(match (&spec.amqp, &spec.nats, &spec.kafka) {
            (Some(a), _, _) => Link::Amqp(crate::policies::state::shared(id, || {
                amqp::AmqpLink::new(name, a.clone(), stats)
            })),
            (None, Some(n), _) => Link::Nats(crate::policies::state::shared(id, || {
                nats::NatsLink::new(name, n.clone(), stats)
            })),
            #[cfg(feature = "kafka")]
            (None, None, Some(k)) => Link::Kafka(crate::policies::state::shared(id, || {
                kafka::KafkaLink::new(name, k.clone(), stats)
            })),
            _ => return None,
        })
    }

    /// Starts connecting in the background (once; later calls do nothing).
    pub fn start(&self) {
        match self {
            Link::Amqp(l) => l.start(),
            Link::Nats(l) => l.start(),
            #[cfg(feature = "kafka")]
            Link::Kafka(l) => l.start(),
        }
    }

    /// The broker's name.
    pub fn name(&self) -> &str {
        match self {
            Link::Amqp(l) => &l.name,
            Link::Nats(l) => &l.name,
            #[cfg(feature = "kafka")]
            Link::Kafka(l) => &l.name,
        }
    }

    /// The broker's counters.
    pub fn stats(&self) -> &Arc<BrokerStats> {
        match self {
            Link::Amqp(l) => &l.stats,
            Link::Nats(l) => &l.stats,
            #[cfg(feature = "kafka")]
            Link::Kafka(l) => &l.stats,
        }
    }

    /// Publishes one message and waits for the broker to take it (confirm, JetStream
    /// acknowledgement).
    pub async fn publish_once(&self, m: &Message) -> Result<(), PublishError> {
        match self {
            Link::Amqp(l) => l.publish(m).await,
            Link::Nats(l) => l.publish(m).await,
            #[cfg(feature = "kafka")]
            Link::Kafka(l) => l.publish(m).await,
        }
    }

    /// Publishes `ms` in order, confirmed together where the broker allows it (AMQP: one
    /// channel, one round trip), one by one otherwise; a nack is tried again as in
    /// [`Link::publish`]. The results are in the order of `ms`.
    pub async fn publish_all(
        &self,
        ms: &[&Message],
        retry: &RetrySpec,
    ) -> Vec<Result<(), PublishError>> {
        let stats = self.stats();
        let first = match self {
            Link::Amqp(l) => {
                stats.published.add(ms.len() as u64);
                l.publish_window(ms).await
            }
            _ => {
                let mut out = Vec::with_capacity(ms.len());
                for m in ms {
                    let r = self.publish(m, retry).await;
                    let stop = r
                        .as_ref()
                        .is_err_and(|e| !matches!(e, PublishError::Unroutable(_)));
                    out.push(r);
                    if stop {
                        break;
                    }
                }
                return out;
            }
        };
        let mut out = Vec::with_capacity(ms.len());
        for (m, r) in ms.iter().zip(first) {
            stats.record(&r);
            out.push(match r {
                Err(PublishError::Nacked) if retry.attempts > 1 => {
                    tokio::time::sleep(retry.backoff.delay(1)).await;
                    let again = RetrySpec {
                        attempts: retry.attempts - 1,
                        backoff: retry.backoff,
                    };
                    self.publish(m, &again).await
                }
                other => other,
            });
        }
        out
    }

    /// Publishes with `retry`: a nack is tried again after the backoff, under the same
    /// message id, up to `retry.attempts` tries in all; other failures return at once.
    pub async fn publish(&self, m: &Message, retry: &RetrySpec) -> Result<(), PublishError> {
        let stats = self.stats();
        let mut tries = 0;
        loop {
            tries += 1;
            stats.published.inc();
            let result = self.publish_once(m).await;
            stats.record(&result);
            match result {
                Err(PublishError::Nacked) if tries < retry.attempts => {
                    tokio::time::sleep(retry.backoff.delay(tries)).await;
                }
                other => return other,
            }
        }
    }
}

/// A wait with ±20% jitter, so that many gateways do not reconnect in step.
pub(crate) fn jitter(d: std::time::Duration) -> std::time::Duration {
    let f = 0.8 + fastrand::f64() * 0.4;
    d.mul_f64(f)
}

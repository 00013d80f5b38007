//! The declarations of a subscription, made on every (re)connect and idempotent: the
//! exchange, the queue and its bindings, the dead-letter queue, and one delay queue per
//! retry (`QUEUE.retry.N`, whose `x-message-ttl` is the N-th backoff and whose expired
//! messages dead-letter back to QUEUE through the default exchange). Delays by TTL queues
//! work on every RabbitMQ without a plugin, and one queue per delay avoids the
//! head-of-line blocking of per-message TTLs.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::brokers::SubscriptionSpec;

/// The delay queue of retry `n` (1-based) of `queue`.
pub fn retry_queue(queue: &str, n: u32) -> String {
    format!("{queue}.retry.{n}")
}

fn base_args(spec: &SubscriptionSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if spec.declare.as_ref().is_some_and(|d| d.quorum) {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// Declares everything `spec` needs. An error names the declaration and the broker's
/// reply (a `PRECONDITION_FAILED` when a queue exists with other arguments, say).
pub async fn declare(channel: &Channel, spec: &SubscriptionSpec) -> Result<(), String> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut main = base_args(spec);
    if let Some(d) = &spec.declare {
        for (k, v) in &d.arguments {
            let value = match v {
                serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
                serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
                other => AMQPValue::LongLongInt(other.as_i64().unwrap_or(0)),
            };
            main.insert(ShortString::from(k.as_str()), value);
        }
        if let Some(x) = &d.exchange {
            let kind = match x.kind.as_str() {
                "fanout" => ExchangeKind::Fanout,
                "topic" => ExchangeKind::Topic,
                "headers" => ExchangeKind::Headers,
                _ => ExchangeKind::Direct,
            };
            let options = ExchangeDeclareOptions {
                durable: x.durable,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    ShortString::from(x.name.as_str()),
                    kind,
                    options,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| format!("declaring exchange `{}`: {e}", x.name))?;
        }
    }
    channel
        .queue_declare(ShortString::from(spec.queue.as_str()), durable, main)
        .await
        .map_err(|e| format!("declaring queue `{}`: {e}", spec.queue))?;
    if let Some(d) = &spec.declare {
        if let Some(x) = &d.exchange {
            let keys: Vec<&str> = if d.bindings.is_empty() {
                vec![""]
            } else {
                d.bindings.iter().map(String::as_str).collect()
            };
            for key in keys {
                channel
                    .queue_bind(
                        ShortString::from(spec.queue.as_str()),
                        ShortString::from(x.name.as_str()),
                        ShortString::from(key),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| {
                        format!("binding `{}` to `{}` with `{key}`: {e}", spec.queue, x.name)
                    })?;
            }
        }
        if let Some(dlq) = &d.dead_letter {
            channel
                .queue_declare(ShortString::from(dlq.as_str()), durable, base_args(spec))
                .await
                .map_err(|e| format!("declaring dead-letter queue `{dlq}`: {e}"))?;
        }
    }
    for n in 1..spec.retry.attempts {
        let name = retry_queue(&spec.queue, n);
        let mut args = base_args(spec);
        let ttl = spec.retry.backoff.delay(n).as_millis() as i64;
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(ttl),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(spec.queue.as_str())),
        );
        if spec.declare.as_ref().is_some_and(|d| d.quorum) {
            // A quorum queue dead-letters at most once by default: a message could be
            // lost on its way back. At least once needs overflow reject-publish.
            args.insert(
                ShortString::from("x-dead-letter-strategy"),
                AMQPValue::LongString(LongString::from("at-least-once")),
            );
            args.insert(
                ShortString::from("x-overflow"),
                AMQPValue::LongString(LongString::from("reject-publish")),
            );
        }
        channel
            .queue_declare(ShortString::from(name.as_str()), durable, args)
            .await
            .map_err(|e| format!("declaring retry queue `{name}`: {e}"))?;
    }
    Ok(())
}

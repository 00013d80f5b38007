//! The RabbitMQ connection of one `brokers.NAME.amqp` block (lapin).
//!
//! A background task connects and then watches the connection: on an error event or a
//! closed connection it connects again after a backoff (doubling from `reconnect.base`
//! up to `reconnect.max`, with jitter: never a hot loop). Publishing uses a pool of
//! channels in confirm mode, each carrying one publish at a time (so a `basic.return` is
//! always the return of that publish), opened when first used; a channel the broker
//! closes (publishing to an exchange that does not exist, say) or one whose confirm did
//! not come in time is dropped and replaced on next use. The heartbeat (`heartbeat`)
//! makes a silent broker an error within about twice its period.
//!
//! Publishing never waits for a connection: not connected is a [`PublishError`] at once;
//! `connection.blocked` (a memory or disk alarm) is refused at once too, since a blocked
//! broker stops reading its socket. A publish waits for the broker's confirm at most
//! `confirm_timeout`. With `mandatory`, a message no queue takes comes back
//! (`basic.return`) and is an error, never a silent drop.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{watch, Notify};

use super::message::{Destination, Message};
use super::PublishError;
use crate::config::brokers::AmqpSpec;
use crate::telemetry::broker_metrics::BrokerStats;

/// How often a connected link checks that its connection and channel are alive, besides
/// reacting to their events.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Publishing channels per connection. Each carries one publish at a time: lapin hands a
/// `basic.return` to whichever confirm resolves next, so with two mandatory publishes in
/// flight on one channel a return could be reported for the wrong message.
const CHANNELS: usize = 32;

/// An open connection with its publishing channels (opened when first used).
pub struct Live {
    /// The connection (subscriptions open their own channels on it).
    pub conn: Connection,
    channels: Vec<tokio::sync::Mutex<Option<Channel>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Live {
    /// A publishing channel of this connection, held alone until the guard is dropped.
    async fn channel(&self) -> tokio::sync::MutexGuard<'_, Option<Channel>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.channels.len() {
            if let Ok(g) = self.channels[(start + i) % self.channels.len()].try_lock() {
                return g;
            }
        }
        self.channels[start % self.channels.len()].lock().await
    }
}

/// `s` as an AMQP short string (at most 255 bytes).
pub(crate) fn short(s: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(s).map_err(|_| {
        PublishError::Unroutable(format!(
            "`{}...` is over 255 bytes",
            s.chars().take(32).collect::<String>()
        ))
    })
}

/// The connection to one RabbitMQ broker.
pub struct AmqpLink {
    /// The broker's name (a key of `brokers`).
    pub name: Arc<str>,
    spec: AmqpSpec,
    /// The URL with its password hidden, for logs.
    target: String,
    live: ArcSwapOption<Live>,
    /// Bumped at every new connection; subscriptions wait on it.
    generation: watch::Sender<u64>,
    started: AtomicBool,
    wake: Notify,
    /// Counters.
    pub stats: Arc<BrokerStats>,
}

impl AmqpLink {
    /// A link that is not connected yet.
    pub fn new(name: &str, spec: AmqpSpec, stats: Arc<BrokerStats>) -> Self {
        Self {
            name: Arc::from(name),
            target: redact(&spec.url),
            spec,
            live: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
            started: AtomicBool::new(false),
            wake: Notify::new(),
            stats,
        }
    }

    /// Starts the connection task (once).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(run(Arc::downgrade(self)));
    }

    /// The live connection, if connected.
    pub fn live(&self) -> Option<Arc<Live>> {
        self.live
            .load_full()
            .filter(|l| l.conn.status().connected())
    }

    /// Changes whenever a new connection is made.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Publishes `m` and waits for the broker's confirm: a window of one.
    pub async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        self.publish_window(&[m])
            .await
            .pop()
            .unwrap_or(Err(PublishError::Timeout))
    }

    /// Publishes `ms` in order on one channel, all before waiting for their confirms (the
    /// outbox's relay: one round trip for a batch, and the broker keeps the order of one
    /// channel). With several in flight, a `basic.return` is matched to its message by
    /// `message_id`, not by lapin's order. The results are in the order of `ms`.
    pub async fn publish_window(&self, ms: &[&Message]) -> Vec<Result<(), PublishError>> {
        let all = |e: PublishError| ms.iter().map(|_| Err(e.clone())).collect();
        let Some(live) = self.live() else {
            return all(PublishError::Unavailable("not connected".into()));
        };
        if live.conn.status().blocked() {
            self.stats.blocked_refusals.inc();
            return all(PublishError::Blocked);
        }
        let deadline = tokio::time::Instant::now() + self.spec.confirm_timeout.0;
        let Ok(mut slot) = tokio::time::timeout_at(deadline, live.channel()).await else {
            return all(PublishError::Timeout);
        };
        if slot.as_ref().is_none_or(|c| !c.status().connected()) {
            *slot = None;
            match tokio::time::timeout_at(deadline, publishing_channel(&live.conn)).await {
                Ok(Ok(c)) => *slot = Some(c),
                Ok(Err(e)) => return all(PublishError::Unavailable(e)),
                Err(_) => return all(PublishError::Timeout),
            }
        }
        let Some(channel) = slot.as_ref() else {
            return all(PublishError::Unavailable("no channel".into()));
        };
        let mut results: Vec<Result<(), PublishError>> = Vec::with_capacity(ms.len());
        let mut pending = Vec::with_capacity(ms.len());
        for m in ms {
            let Destination::Amqp {
                exchange,
                routing_key,
                mandatory,
                ..
            } = &m.to
            else {
                results.push(Err(PublishError::Unroutable("not an AMQP message".into())));
                pending.push(None);
                continue;
            };
            let parts = (|| Ok((short(exchange)?, short(routing_key)?, properties(m)?)))();
            let (x, k, p) = match parts {
                Ok(v) => v,
                Err(e) => {
                    results.push(Err(e));
                    pending.push(None);
                    continue;
                }
            };
            let options = BasicPublishOptions {
                mandatory: *mandatory,
                immediate: false,
            };
            match tokio::time::timeout_at(
                deadline,
                channel.basic_publish(x, k, options, &m.body, p),
            )
            .await
            {
                Ok(Ok(confirm)) => {
                    results.push(Ok(()));
                    pending.push(Some(confirm));
                }
                Ok(Err(e)) => {
                    results.push(Err(closed(&e)));
                    pending.push(None);
                    break;
                }
                Err(_) => {
                    results.push(Err(PublishError::Timeout));
                    pending.push(None);
                    break;
                }
            }
        }
        // Messages after a failed send are not sent: the same error.
        while results.len() < ms.len() {
            let e = results
                .last()
                .and_then(|r| r.clone().err())
                .unwrap_or(PublishError::Timeout);
            results.push(Err(e));
            pending.push(None);
        }
        let mut returned = std::collections::HashMap::new();
        let mut failed_channel = false;
        for (i, confirm) in pending.into_iter().enumerate() {
            let Some(confirm) = confirm else { continue };
            let outcome = match tokio::time::timeout_at(deadline, confirm).await {
                Err(_) => Err(PublishError::Timeout),
                Ok(Err(e)) => Err(closed(&e)),
                Ok(Ok(c)) => {
                    let nacked = c.is_nack();
                    if let Some(r) = c.take_message() {
                        if let Some(id) = r.delivery.properties.message_id() {
                            let why = format!("{} {}", r.reply_code, r.reply_text.as_str());
                            returned.insert(id.to_string(), why);
                        }
                    }
                    if nacked {
                        Err(PublishError::Nacked)
                    } else {
                        Ok(())
                    }
                }
            };
            if matches!(
                outcome,
                Err(PublishError::Timeout | PublishError::Closed(_))
            ) {
                failed_channel = true;
            }
            results[i] = outcome;
        }
        for (m, r) in ms.iter().zip(results.iter_mut()) {
            if let Some(why) = returned.remove(&m.id) {
                *r = Err(PublishError::Unroutable(why));
            }
        }
        if failed_channel || !channel.status().connected() {
            // A confirm still owed, or a failed channel: never reused (dropping closes it).
            *slot = None;
            self.stats.channel_reopens.inc();
            tracing::warn!(broker = %self.name, "publishing channel dropped; a new one is opened on next use");
        }
        results
    }

    async fn connect(&self) -> Result<Live, String> {
        let mut uri = lapin::uri::AMQPUri::from_str(&self.spec.url)?;
        uri.query.heartbeat = Some(self.spec.heartbeat.0.as_secs().min(u16::MAX as u64) as u16);
        uri.query.connection_timeout = Some(self.spec.connect_timeout.0.as_millis() as u64);
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("turnpike {}", self.name)));
        let conn = tokio::time::timeout(
            self.spec.connect_timeout.0,
            Connection::connect_uri(uri, props),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.to_string())?;
        Ok(Live {
            conn,
            channels: (0..CHANNELS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

/// A channel the broker closed: a missing exchange (404) or a refused permission (403)
/// will not heal by waiting, so the message is unroutable (502; the outbox parks it);
/// anything else is a transient failure.
fn closed(e: &lapin::Error) -> PublishError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        if matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND | AMQPSoftError::ACCESSREFUSED)
        ) {
            return PublishError::Unroutable(e.to_string());
        }
    }
    PublishError::Closed(e.to_string())
}

async fn publishing_channel(conn: &Connection) -> Result<Channel, String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(channel)
}

/// The AMQP properties of `m`; a value too long for AMQP makes the message unroutable.
fn properties(m: &Message) -> Result<BasicProperties, PublishError> {
    let mut headers = FieldTable::default();
    for (k, v) in &m.headers {
        headers.insert(
            short(k)?,
            AMQPValue::LongString(LongString::from(v.as_bytes())),
        );
    }
    let mut p = BasicProperties::default()
        .with_message_id(short(&m.id)?)
        .with_correlation_id(short(&m.correlation_id)?)
        .with_timestamp(m.timestamp)
        .with_app_id(ShortString::from("turnpike"))
        .with_headers(headers);
    if let Some(ct) = &m.content_type {
        p = p.with_content_type(short(ct)?);
    }
    if let Destination::Amqp {
        persistent,
        priority,
        expiration_ms,
        ..
    } = &m.to
    {
        if *persistent {
            p = p.with_delivery_mode(2);
        }
        if let Some(pr) = priority {
            p = p.with_priority(*pr);
        }
        if let Some(ms) = expiration_ms {
            p = p.with_expiration(ShortString::from(ms.to_string()));
        }
    }
    Ok(p)
}

/// Connects, watches, reconnects, until no snapshot holds the link.
async fn run(weak: Weak<AmqpLink>) {
    let mut failures: u32 = 0;
    loop {
        let Some(link) = weak.upgrade() else { return };
        let delay = match link.connect().await {
            Ok(live) => {
                if failures > 0 || link.stats.reconnects.get() > 0 {
                    tracing::info!(broker = %link.name, target = %link.target, "broker connected again");
                } else {
                    tracing::info!(broker = %link.name, target = %link.target, "broker connected");
                }
                failures = 0;
                let live = Arc::new(live);
                link.live.store(Some(live.clone()));
                link.stats.connected.set(1);
                link.generation.send_modify(|g| *g += 1);
                let reason = watch_live(&link, &live, &weak).await;
                link.live.store(None);
                if weak.strong_count() <= 1 {
                    // Replaced or removed by a reload: the counters are the broker's
                    // name's, and a successor may be connected under them.
                    let _ = live.conn.close(200, ShortString::from("bye")).await;
                    return;
                }
                link.stats.connected.set(0);
                link.stats.reconnects.inc();
                tracing::warn!(broker = %link.name, target = %link.target, %reason, "broker connection lost; reconnecting");
                link.spec.reconnect.base.0
            }
            Err(e) => {
                failures += 1;
                link.stats.connect_failures.inc();
                if failures == 1 {
                    tracing::warn!(broker = %link.name, target = %link.target, error = %e, "cannot connect to the broker; retrying with backoff");
                } else {
                    tracing::debug!(broker = %link.name, error = %e, failures, "still cannot connect to the broker");
                }
                link.spec.reconnect.delay(failures)
            }
        };
        drop(link);
        tokio::time::sleep(super::jitter(delay)).await;
    }
}

/// Waits until the connection fails (or nobody holds the link), following
/// `connection.blocked`. Returns why it stopped.
async fn watch_live(link: &AmqpLink, live: &Live, weak: &Weak<AmqpLink>) -> String {
    let mut events = live.conn.events_listener();
    let mut last_error = String::from("connection closed");
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return last_error,
                // A channel's error comes here too: the checks below tell which failed.
                Some(Event::Error(e)) => last_error = e.to_string(),
                Some(Event::ConnectionBlocked(reason)) => {
                    link.stats.blocked.set(1);
                    tracing::warn!(broker = %link.name, %reason, "broker blocked publishing (connection.blocked)");
                }
                Some(Event::ConnectionUnblocked) => {
                    link.stats.blocked.set(0);
                    tracing::info!(broker = %link.name, "broker unblocked publishing");
                }
                Some(_) => {}
            },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = link.wake.notified() => {}
        }
        if weak.strong_count() <= 1 {
            return "no longer used".into();
        }
        let status = live.conn.status();
        if !status.connected() {
            return last_error;
        }
        link.stats.blocked.set(i64::from(status.blocked()));
    }
}

/// `amqp://user:secret@host/vhost` as `amqp://user:***@host/vhost`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}

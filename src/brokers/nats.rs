//! The NATS connection of one `brokers.NAME.nats` block (async-nats).
//!
//! The client connects in the background and reconnects by itself; a publish while it is
//! not connected is refused at once (async-nats would otherwise buffer it, and a 2xx
//! would promise nothing). With `jetstream: true` a publish waits for JetStream's
//! acknowledgement (at most `ack_timeout`) and carries `Nats-Msg-Id`, so a retried
//! message is dropped as a duplicate within the stream's `duplicate_window`; a subject no
//! stream stores is an unroutable message. Without JetStream a publish is flushed to the
//! server, which keeps nothing for subscribers that are not there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use async_nats::connection::State;
use async_nats::jetstream;

use super::message::{Destination, Message};
use super::PublishError;
use crate::config::brokers::NatsSpec;
use crate::telemetry::broker_metrics::BrokerStats;

/// The connection to one NATS server (or cluster).
pub struct NatsLink {
    /// The broker's name.
    pub name: Arc<str>,
    spec: NatsSpec,
    client: OnceLock<(async_nats::Client, jetstream::Context)>,
    started: AtomicBool,
    /// The configured streams exist (until then a missing stream is not unroutable).
    streams_ready: AtomicBool,
    /// Counters.
    pub stats: Arc<BrokerStats>,
}

impl NatsLink {
    /// A link that is not connected yet.
    pub fn new(name: &str, spec: NatsSpec, stats: Arc<BrokerStats>) -> Self {
        let no_streams = spec.streams.is_empty();
        Self {
            name: Arc::from(name),
            spec,
            client: OnceLock::new(),
            started: AtomicBool::new(false),
            streams_ready: AtomicBool::new(no_streams),
            stats,
        }
    }

    /// Starts connecting (once).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(connect(Arc::downgrade(self)));
    }

    /// Publishes `m`; with JetStream, waits for its acknowledgement.
    pub async fn publish(&self, m: &Message) -> Result<(), PublishError> {
        let Destination::Nats { subject } = &m.to else {
            return Err(PublishError::Unavailable(
                "a NATS broker cannot take an AMQP message".into(),
            ));
        };
        let Some((client, js)) = self.client.get() else {
            return Err(PublishError::Unavailable("not connected".into()));
        };
        if client.connection_state() != State::Connected {
            return Err(PublishError::Unavailable("not connected".into()));
        }
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &m.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        headers.insert("Nats-Msg-Id", m.id.as_str());
        headers.insert("x-correlation-id", m.correlation_id.as_str());
        if let Some(ct) = &m.content_type {
            headers.insert("content-type", ct.as_str());
        }
        let deadline = self.spec.ack_timeout.0;
        if !self.spec.jetstream {
            let sent = async {
                client
                    .publish_with_headers(subject.clone(), headers, m.body.clone())
                    .await
                    .map_err(|e| PublishError::Closed(e.to_string()))?;
                client
                    .flush()
                    .await
                    .map_err(|e| PublishError::Closed(e.to_string()))
            };
            return tokio::time::timeout(deadline, sent)
                .await
                .unwrap_or(Err(PublishError::Timeout));
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(m.body.clone())
            .headers(headers)
            .message_id(&m.id);
        let acked = async {
            let ack = js
                .send_publish(subject.clone(), publish)
                .await
                .map_err(js_error)?;
            ack.await.map_err(js_error)
        };
        match tokio::time::timeout(deadline, acked).await {
            Err(_) => Err(PublishError::Timeout),
            Ok(Err(PublishError::Unroutable(_))) if !self.streams_ready.load(Ordering::Acquire) => {
                Err(PublishError::Unavailable(
                    "the configured streams are not created yet".into(),
                ))
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(_ack)) => Ok(()),
        }
    }
}

fn js_error(e: jetstream::context::PublishError) -> PublishError {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::StreamNotFound => {
            PublishError::Unroutable("no JetStream stream stores this subject".into())
        }
        K::TimedOut => PublishError::Timeout,
        K::MaxPayloadExceeded => PublishError::Unroutable(e.to_string()),
        _ => PublishError::Closed(e.to_string()),
    }
}

async fn connect(weak: Weak<NatsLink>) {
    let Some(link) = weak.upgrade() else { return };
    let name = link.name.clone();
    let events = link.stats.clone();
    let alive = weak.clone();
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(link.spec.connect_timeout.0)
        .max_reconnects(None)
        .event_callback(move |ev| {
            let stats = events.clone();
            // A link a reload replaced says nothing: its successor owns the counters.
            let current = alive.strong_count() > 0;
            async move {
                if !current {
                    return;
                }
                match ev {
                    async_nats::Event::Connected => stats.connected.set(1),
                    async_nats::Event::Disconnected => {
                        stats.connected.set(0);
                        stats.reconnects.inc();
                    }
                    _ => {}
                }
            }
        });
    let client = match options.connect(link.spec.url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            // Only a malformed address fails here: connecting itself is retried.
            tracing::error!(broker = %name, error = %e, "cannot use the NATS address");
            return;
        }
    };
    let js = jetstream::new(client.clone());
    let streams = link.spec.streams.clone();
    let _ = link.client.set((client, js.clone()));
    let ready = Arc::downgrade(&link);
    drop(link);
    // Streams are the server's state: made once, retried until they are.
    let mut failures = 0u32;
    let backoff = crate::config::brokers::BackoffSpec {
        base: crate::config::Dur::ms(200),
        max: crate::config::Dur::secs(10),
    };
    let mut pending = streams;
    while !pending.is_empty() {
        if weak.strong_count() == 0 {
            return;
        }
        let mut left = Vec::new();
        for s in pending {
            let config = jetstream::stream::Config {
                name: s.name.clone(),
                subjects: s.subjects.clone(),
                duplicate_window: s.duplicate_window.0,
                ..Default::default()
            };
            if let Err(e) = js.create_or_update_stream(config).await {
                if failures == 0 {
                    tracing::warn!(broker = %name, stream = %s.name, error = %e, "cannot create the JetStream stream; retrying");
                }
                left.push(s);
            }
        }
        pending = left;
        if pending.is_empty() {
            if let Some(l) = ready.upgrade() {
                l.streams_ready.store(true, Ordering::Release);
            }
        } else {
            failures += 1;
            tokio::time::sleep(super::jitter(backoff.delay(failures))).await;
        }
    }
}

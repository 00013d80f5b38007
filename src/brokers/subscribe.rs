//! Subscriptions: a RabbitMQ queue consumed and each message delivered to an HTTP
//! service through the gateway's own upstream (pooling, balancing, health checks and
//! timeouts as for any route).
//!
//! A message is acknowledged only after the service answered 2xx. A failed try (an
//! answer that is not 2xx, no answer within `deliver.timeout`, no connection) is
//! republished, with confirms, to the delay queue of that try (`QUEUE.retry.N`, see
//! `topology`), and only then acknowledged; the broker moves it back to the queue when
//! its delay expires. After `retry.attempts` tries the message is published to the
//! `dead_letter` queue with the reason in headers (`x-turnpike-failure-reason`,
//! `x-turnpike-attempts`), then acknowledged; without a `dead_letter` queue it is
//! rejected, and the queue's own policy decides. When republishing fails, the message
//! is returned to the queue (`nack` with requeue), never acknowledged.
//!
//! `prefetch` bounds the unacknowledged deliveries, so at most that many calls run at
//! once. Stopping (a reload that drops or changes the subscription, or shutdown) cancels
//! the consumer first, lets the calls in flight finish within the grace period, then
//! closes the channel: whatever is still unacknowledged goes back to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Method, Uri};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::amqp::AmqpLink;
use super::topology::{declare, retry_queue};
use crate::config::brokers::SubscriptionSpec;
use crate::http::Body;
use crate::pipeline::RequestCtx;
use crate::targets::{Binding, Forward};
use crate::telemetry::broker_metrics::SubscriptionStats;

/// The header counting tries of a message (1 on the first).
const ATTEMPTS: &str = "x-turnpike-attempts";
/// The header naming why the last try failed.
const REASON: &str = "x-turnpike-failure-reason";

/// The HTTP call a message becomes.
pub struct Deliver {
    /// How the call is made.
    pub forward: Forward,
    /// The upstream.
    pub binding: Binding,
    /// Method and target.
    pub method: Method,
    /// Path and query.
    pub uri: Uri,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole call's deadline.
    pub timeout: Duration,
}

/// One running (or ready to run) subscription.
pub struct Subscription {
    name: Arc<str>,
    spec: SubscriptionSpec,
    link: Arc<AmqpLink>,
    deliver: Arc<Deliver>,
    stats: Arc<SubscriptionStats>,
    started: AtomicBool,
    stop: watch::Sender<Option<Duration>>,
    stopped: watch::Sender<bool>,
    /// How long deliveries in flight may take when a reload drops the subscription.
    grace: Duration,
}

impl Subscription {
    /// A subscription that does not consume until [`Subscription::start`].
    pub fn new(
        spec: SubscriptionSpec,
        link: Arc<AmqpLink>,
        deliver: Deliver,
        stats: Arc<SubscriptionStats>,
        grace: Duration,
    ) -> Self {
        Self {
            name: Arc::from(spec.name.as_str()),
            spec,
            link,
            deliver: Arc::new(deliver),
            stats,
            started: AtomicBool::new(false),
            stop: watch::channel(None).0,
            stopped: watch::channel(false).0,
            grace,
        }
    }

    /// Starts consuming (once).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.link.start();
        let run = Runner {
            name: self.name.clone(),
            spec: self.spec.clone(),
            link: self.link.clone(),
            deliver: self.deliver.clone(),
            stats: self.stats.clone(),
            stop: self.stop.subscribe(),
        };
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            run.run().await;
            stopped.send_replace(true);
        });
    }

    /// Stops consuming and waits until the deliveries in flight finished (at most
    /// `grace`, then they are returned to the queue).
    pub async fn stop(&self, grace: Duration) {
        self.stop.send_replace(Some(grace));
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        let mut done = self.stopped.subscribe();
        let _ = tokio::time::timeout(grace + Duration::from_secs(1), done.wait_for(|d| *d)).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A reload dropped or changed it: stop, letting calls in flight finish.
        if self.stop.borrow().is_none() {
            self.stop.send_replace(Some(self.grace));
        }
    }
}

struct Runner {
    name: Arc<str>,
    spec: SubscriptionSpec,
    link: Arc<AmqpLink>,
    deliver: Arc<Deliver>,
    stats: Arc<SubscriptionStats>,
    stop: watch::Receiver<Option<Duration>>,
}

impl Runner {
    async fn run(mut self) {
        let mut generations = self.link.generations();
        let mut failures = 0u32;
        loop {
            if self.stop.borrow().is_some() {
                return;
            }
            let Some(live) = self.link.live() else {
                tokio::select! {
                    _ = generations.changed() => {}
                    _ = self.stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let channel = match self.open(&live.conn).await {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    self.stats.declare_failures.inc();
                    if failures == 1 {
                        tracing::error!(subscription = %self.name, error = %e, "subscription cannot start; retrying with backoff");
                    }
                    self.pause(failures).await;
                    continue;
                }
            };
            failures = 0;
            let tag = format!("turnpike-{}-{}", self.name, uuid::Uuid::now_v7());
            let consumer = match channel
                .basic_consume(
                    ShortString::from(self.spec.queue.as_str()),
                    ShortString::from(tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(subscription = %self.name, error = %e, "cannot consume the queue");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(subscription = %self.name, queue = %self.spec.queue, "consuming");
            self.stats.consuming.set(1);
            let stopping = self.consume(&channel, consumer, &tag).await;
            self.stats.consuming.set(0);
            if !stopping {
                // The consumer ended (cancelled by the broker, channel closed): a short
                // wait before resubscribing, so that a broker that keeps refusing is not
                // asked in a hot loop.
                failures += 1;
                self.pause(failures).await;
            }
            if stopping {
                // Whatever is unacknowledged now goes back to the queue.
                let _ = channel.close(200, ShortString::from("stopping")).await;
                tracing::info!(subscription = %self.name, "stopped consuming");
                return;
            }
        }
    }

    /// Waits the backoff for `failures` (at most 30 s), or until a stop is asked.
    async fn pause(&mut self, failures: u32) {
        let wait = self.spec.retry.backoff.delay(failures);
        let wait = super::jitter(wait.min(Duration::from_secs(30)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.stop.changed() => {}
        }
    }

    async fn open(&self, conn: &lapin::Connection) -> Result<Channel, String> {
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        declare(&channel, &self.spec).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        channel
            .basic_qos(self.spec.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(channel)
    }

    /// Delivers until the consumer ends (`false`: resubscribe) or a stop is asked
    /// (`true`, once the deliveries in flight finished or the grace ran out).
    async fn consume(
        &mut self,
        channel: &Channel,
        mut consumer: lapin::Consumer,
        tag: &str,
    ) -> bool {
        let mut tasks = JoinSet::new();
        let republishing = Arc::new(tokio::sync::Mutex::new(()));
        let republish_failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        loop {
            tokio::select! {
                _ = self.stop.changed() => {
                    let grace = (*self.stop.borrow()).unwrap_or_default();
                    // No new deliveries; the ones in flight finish (or go back).
                    let _ = channel
                        .basic_cancel(ShortString::from(tag), BasicCancelOptions::default())
                        .await;
                    let drain = async { while tasks.join_next().await.is_some() {} };
                    if tokio::time::timeout(grace, drain).await.is_err() {
                        tracing::warn!(subscription = %self.name, "grace period over; unfinished deliveries go back to the queue");
                        tasks.abort_all();
                    }
                    return true;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let job = Job {
                            name: self.name.clone(),
                            spec_queue: self.spec.queue.clone(),
                            attempts: self.spec.retry.attempts,
                            dead_letter: self.spec.declare.as_ref().and_then(|d| d.dead_letter.clone()),
                            deliver: self.deliver.clone(),
                            stats: self.stats.clone(),
                            channel: channel.clone(),
                            republishing: republishing.clone(),
                            republish_failures: republish_failures.clone(),
                        };
                        tasks.spawn(job.handle(delivery));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(subscription = %self.name, error = %e, "consumer failed; resubscribing");
                        return false;
                    }
                    None => return false,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

struct Job {
    name: Arc<str>,
    spec_queue: String,
    attempts: u32,
    dead_letter: Option<String>,
    deliver: Arc<Deliver>,
    stats: Arc<SubscriptionStats>,
    channel: Channel,
    /// One republish at a time on the channel: lapin hands a `basic.return` to whichever
    /// confirm resolves next, so two in flight could swap their outcomes.
    republishing: Arc<tokio::sync::Mutex<()>>,
    /// Failed republishes in a row, for the backoff before a message goes back.
    republish_failures: Arc<std::sync::atomic::AtomicU32>,
}

/// Counts a delivery in flight until dropped (also when its task is aborted).
struct InFlight(Arc<SubscriptionStats>);

impl InFlight {
    fn new(stats: &Arc<SubscriptionStats>) -> Self {
        stats.in_flight.add(1);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.add(-1);
    }
}

impl Job {
    async fn handle(self, d: Delivery) {
        let _counted = InFlight::new(&self.stats);
        let attempt = attempt_of(&d);
        let outcome = self.call(&d, attempt).await;
        let done = match outcome {
            Ok(()) => {
                self.stats.delivered.inc();
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Err(reason) if attempt < self.attempts => {
                tracing::info!(subscription = %self.name, attempt, %reason, "delivery failed; retrying later");
                let queue = retry_queue(&self.spec_queue, attempt);
                self.republish(&d, &queue, attempt + 1, &reason, &self.stats.retried)
                    .await
            }
            Err(reason) => match &self.dead_letter {
                Some(dlq) => {
                    tracing::warn!(subscription = %self.name, attempts = attempt, %reason, dead_letter = %dlq, "delivery failed every try; dead-lettered");
                    self.republish(&d, dlq, attempt, &reason, &self.stats.dead_lettered)
                        .await
                }
                None => {
                    tracing::warn!(subscription = %self.name, attempts = attempt, %reason, "delivery failed every try; rejected");
                    self.stats.dead_lettered.inc();
                    d.acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            },
        };
        if let Err(e) = done {
            tracing::warn!(subscription = %self.name, error = %e, "cannot settle a delivery; the broker will redeliver it");
        }
    }

    /// Publishes a copy of `d` to `queue` (through the default exchange) with the try
    /// count and reason, waits for the confirm, then acknowledges `d`. If the copy is
    /// not confirmed, `d` goes back to the queue instead.
    async fn republish(
        &self,
        d: &Delivery,
        queue: &str,
        attempts: u32,
        reason: &str,
        counter: &crate::telemetry::broker_metrics::Counter,
    ) -> Result<(), String> {
        let mut headers = d.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(ATTEMPTS),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        headers.insert(
            ShortString::from(REASON),
            AMQPValue::LongString(LongString::from(reason)),
        );
        if !headers.inner().contains_key("x-original-routing-key") {
            headers.insert(
                ShortString::from("x-original-exchange"),
                AMQPValue::LongString(LongString::from(d.exchange.as_str())),
            );
            headers.insert(
                ShortString::from("x-original-routing-key"),
                AMQPValue::LongString(LongString::from(d.routing_key.as_str())),
            );
        }
        let props: BasicProperties = d
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        let Ok(target) = ShortString::try_new(queue) else {
            return Err(format!("`{queue}` is not a queue name"));
        };
        let one_at_a_time = self.republishing.lock().await;
        let sent = async {
            self.channel
                .basic_publish(
                    ShortString::from(""),
                    target,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &d.data,
                    props,
                )
                .await?
                .await
        };
        let confirmed = matches!(
            tokio::time::timeout(Duration::from_secs(5), sent).await,
            Ok(Ok(Confirmation::Ack(None)))
        );
        drop(one_at_a_time);
        if confirmed {
            self.republish_failures.store(0, Ordering::Relaxed);
            counter.inc();
            d.acker
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            // Back off before the message comes straight back: the service is not called
            // again in a hot loop while the delay queue cannot be written.
            let n = self.republish_failures.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::time::sleep(crate::brokers::jitter(
                Duration::from_millis(200)
                    .saturating_mul(1 << n.min(6))
                    .min(Duration::from_secs(10)),
            ))
            .await;
            self.stats.requeued.inc();
            d.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .map_err(|e| e.to_string())?;
            Err(format!(
                "could not move the message to `{queue}`; returned it to the queue"
            ))
        }
    }

    /// One try: the HTTP call. `Err` says why it failed.
    async fn call(&self, d: &Delivery, attempt: u32) -> Result<(), String> {
        let props = &d.properties;
        let header = |name: &str| -> Option<String> {
            props
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get(name)? {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                    _ => None,
                })
        };
        let request_id = header("x-request-id")
            .or_else(|| {
                props
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_string())
            })
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let rid = HeaderValue::from_str(&request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"));
        let mut req = http::Request::builder()
            .method(self.deliver.method.clone())
            .uri(self.deliver.uri.clone())
            .body(Body::full(Bytes::from(d.data.clone())))
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        for (k, v) in &self.deliver.headers {
            h.insert(k.clone(), v.clone());
        }
        h.insert(HeaderName::from_static("x-request-id"), rid.clone());
        if let Some(ct) = props.content_type() {
            if let Ok(v) = HeaderValue::from_str(ct.as_str()) {
                h.insert(http::header::CONTENT_TYPE, v);
            }
        }
        if let Some(tp) = header("traceparent").and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert(HeaderName::from_static("traceparent"), tp);
        }
        if let Some(id) = props.message_id() {
            if let Ok(v) = HeaderValue::from_str(id.as_str()) {
                h.insert(HeaderName::from_static("x-message-id"), v);
            }
        }
        h.insert(
            HeaderName::from_static("x-delivery-attempt"),
            HeaderValue::from(attempt),
        );
        let mut ctx = RequestCtx::internal(
            rid,
            Arc::from(format!("subscription:{}", self.name)),
            self.deliver.method.clone(),
            self.deliver.uri.clone(),
        );
        let call = async {
            let resp = self
                .deliver
                .forward
                .forward(&mut ctx, req, &self.deliver.binding)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            // The body is read (and dropped) so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the service answered {}", status.as_u16()))
            }
        };
        match tokio::time::timeout(self.deliver.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer within {}",
                crate::config::units::format_duration(self.deliver.timeout)
            )),
        }
    }
}

/// The try a delivery is: 1, or what an earlier retry wrote in its headers.
fn attempt_of(d: &Delivery) -> u32 {
    let v = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS).cloned());
    let n = match v {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::ShortInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        _ => 1,
    };
    n.clamp(1, 1000) as u32
}

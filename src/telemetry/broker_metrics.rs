//! Counters of the message brokers (publishing, confirms, connection state, the outbox)
//! and of the subscriptions (deliveries by outcome), in the Prometheus text format.
//! Registered by name when a snapshot is compiled; updated with relaxed atomics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::brokers::PublishError;

/// A monotonically increasing count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// The counters of one broker.
#[derive(Default, Debug)]
pub struct BrokerStats {
    /// Publish attempts (retries of a nack included).
    pub published: Counter,
    /// Messages the broker confirmed (acknowledged).
    pub confirmed: Counter,
    /// Messages the broker refused (`basic.nack`).
    pub nacked: Counter,
    /// Messages no queue took (`basic.return`, no JetStream stream).
    pub returned: Counter,
    /// Publishes without a confirm in time.
    pub timeouts: Counter,
    /// Publishes refused because the broker was not connected or the channel failed.
    pub unavailable: Counter,
    /// Publishes refused because the broker blocked publishing.
    pub blocked_refusals: Counter,
    /// 1 while connected.
    pub connected: Gauge,
    /// 1 while the broker blocks publishing (`connection.blocked`).
    pub blocked: Gauge,
    /// Connections lost and re-established.
    pub reconnects: Counter,
    /// Failed connection attempts.
    pub connect_failures: Counter,
    /// Publishing channels reopened after the broker closed one.
    pub channel_reopens: Counter,
    /// Messages waiting in outboxes.
    pub outbox_depth: Gauge,
    /// Bytes of outbox files not yet delivered and removed.
    pub outbox_bytes: Gauge,
    /// Messages written to an outbox.
    pub outbox_written: Counter,
    /// Messages relayed from an outbox to the broker.
    pub outbox_relayed: Counter,
    /// Publishes refused because the outbox was full.
    pub outbox_full: Counter,
}

impl BrokerStats {
    /// Counts the outcome of one publish attempt.
    pub fn record(&self, r: &Result<(), PublishError>) {
        match r {
            Ok(()) => self.confirmed.inc(),
            Err(PublishError::Nacked) => self.nacked.inc(),
            Err(PublishError::Unroutable(_)) => self.returned.inc(),
            Err(PublishError::Timeout) => self.timeouts.inc(),
            Err(PublishError::Blocked) => {}
            Err(PublishError::Unavailable(_) | PublishError::Closed(_)) => self.unavailable.inc(),
        }
    }
}

/// Deliveries of one subscription.
#[derive(Default, Debug)]
pub struct SubscriptionStats {
    /// Messages delivered (the service answered 2xx) and acknowledged.
    pub delivered: Counter,
    /// Failed tries sent to wait for another.
    pub retried: Counter,
    /// Messages that failed every try, moved to the dead-letter queue.
    pub dead_lettered: Counter,
    /// Messages given back to the queue (shutdown, a retry that could not be scheduled).
    pub requeued: Counter,
    /// Deliveries in progress.
    pub in_flight: Gauge,
    /// 1 while consuming.
    pub consuming: Gauge,
    /// Declarations the broker refused (a precondition failed, say).
    pub declare_failures: Counter,
}

/// A broker series: name, help, reader.
type BrokerCounter = (&'static str, &'static str, fn(&BrokerStats) -> u64);
/// A broker gauge: name, help, reader.
type BrokerGauge = (&'static str, &'static str, fn(&BrokerStats) -> i64);
/// A subscription series: name, type, help, reader.
type SubscriptionRow = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SubscriptionStats) -> i64,
);

/// The registries of broker and subscription counters.
#[derive(Default)]
pub struct BrokerMetrics {
    brokers: Mutex<HashMap<Arc<str>, Arc<BrokerStats>>>,
    subscriptions: Mutex<HashMap<Arc<str>, Arc<SubscriptionStats>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BrokerMetrics {
    /// The counters of broker `name` (kept across reloads).
    pub fn broker(&self, name: &str) -> Arc<BrokerStats> {
        lock(&self.brokers)
            .entry(Arc::from(name))
            .or_default()
            .clone()
    }

    /// The counters of subscription `name` (kept across reloads).
    pub fn subscription(&self, name: &str) -> Arc<SubscriptionStats> {
        lock(&self.subscriptions)
            .entry(Arc::from(name))
            .or_default()
            .clone()
    }

    /// Appends the Prometheus text of every broker and subscription.
    pub fn render(&self, out: &mut String) {
        let mut brokers: Vec<_> = lock(&self.brokers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        brokers.sort_by(|a, b| a.0.cmp(&b.0));
        if !brokers.is_empty() {
            let counters: [BrokerCounter; 11] = [
                (
                    "turnpike_broker_published_total",
                    "Publish attempts.",
                    |s| s.published.get(),
                ),
                (
                    "turnpike_broker_confirmed_total",
                    "Messages the broker confirmed.",
                    |s| s.confirmed.get(),
                ),
                (
                    "turnpike_broker_nacked_total",
                    "Messages the broker refused (basic.nack).",
                    |s| s.nacked.get(),
                ),
                (
                    "turnpike_broker_returned_total",
                    "Messages no queue took (basic.return or no stream).",
                    |s| s.returned.get(),
                ),
                (
                    "turnpike_broker_confirm_timeouts_total",
                    "Publishes without a confirm in time.",
                    |s| s.timeouts.get(),
                ),
                (
                    "turnpike_broker_unavailable_total",
                    "Publishes refused: not connected or the channel failed.",
                    |s| s.unavailable.get(),
                ),
                (
                    "turnpike_broker_blocked_refusals_total",
                    "Publishes refused while the broker blocked publishing.",
                    |s| s.blocked_refusals.get(),
                ),
                (
                    "turnpike_broker_reconnects_total",
                    "Connections lost and re-established.",
                    |s| s.reconnects.get(),
                ),
                (
                    "turnpike_broker_connect_failures_total",
                    "Failed connection attempts.",
                    |s| s.connect_failures.get(),
                ),
                (
                    "turnpike_outbox_written_total",
                    "Messages written to an outbox.",
                    |s| s.outbox_written.get(),
                ),
                (
                    "turnpike_outbox_relayed_total",
                    "Messages relayed from an outbox to the broker.",
                    |s| s.outbox_relayed.get(),
                ),
            ];
            for (name, help, read) in counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (b, s) in &brokers {
                    let _ = writeln!(out, "{name}{{broker=\"{b}\"}} {}", read(s));
                }
            }
            let gauges: [BrokerGauge; 4] = [
                (
                    "turnpike_broker_connected",
                    "1 while connected to the broker.",
                    |s| s.connected.get(),
                ),
                (
                    "turnpike_broker_blocked",
                    "1 while the broker blocks publishing.",
                    |s| s.blocked.get(),
                ),
                (
                    "turnpike_outbox_depth",
                    "Messages waiting in outboxes.",
                    |s| s.outbox_depth.get(),
                ),
                (
                    "turnpike_outbox_bytes",
                    "Bytes of outbox files not yet delivered.",
                    |s| s.outbox_bytes.get(),
                ),
            ];
            for (name, help, read) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (b, s) in &brokers {
                    let _ = writeln!(out, "{name}{{broker=\"{b}\"}} {}", read(s));
                }
            }
            let _ = writeln!(out, "# HELP turnpike_outbox_full_total Publishes refused because the outbox was full.\n# TYPE turnpike_outbox_full_total counter");
            for (b, s) in &brokers {
                let _ = writeln!(
                    out,
                    "turnpike_outbox_full_total{{broker=\"{b}\"}} {}",
                    s.outbox_full.get()
                );
            }
        }
        let mut subs: Vec<_> = lock(&self.subscriptions)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        subs.sort_by(|a, b| a.0.cmp(&b.0));
        if subs.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP turnpike_subscription_deliveries_total Messages of a subscription by outcome: delivered (2xx, acknowledged), retried, dead_lettered, requeued.\n# TYPE turnpike_subscription_deliveries_total counter");
        for (n, s) in &subs {
            for (outcome, c) in [
                ("delivered", &s.delivered),
                ("retried", &s.retried),
                ("dead_lettered", &s.dead_lettered),
                ("requeued", &s.requeued),
            ] {
                let _ = writeln!(
                    out,
                    "turnpike_subscription_deliveries_total{{subscription=\"{n}\",outcome=\"{outcome}\"}} {}",
                    c.get()
                );
            }
        }
        let rows: [SubscriptionRow; 3] = [
            (
                "turnpike_subscription_in_flight",
                "gauge",
                "Deliveries in progress.",
                |s| s.in_flight.get(),
            ),
            (
                "turnpike_subscription_consuming",
                "gauge",
                "1 while the subscription consumes its queue.",
                |s| s.consuming.get(),
            ),
            (
                "turnpike_subscription_declare_failures_total",
                "counter",
                "Declarations the broker refused.",
                |s| s.declare_failures.get() as i64,
            ),
        ];
        for (name, kind, help, read) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (n, s) in &subs {
                let _ = writeln!(out, "{name}{{subscription=\"{n}\"}} {}", read(s));
            }
        }
    }
}

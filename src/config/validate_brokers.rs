//! Checks of `brokers`, the `publish` target and `subscriptions`: every problem with its
//! field path. Kinds that need a cargo feature (`kafka`) are refused with a message that
//! says which.

use std::collections::BTreeMap;

use super::brokers::{BackoffSpec, BrokerSpec, PublishSpec, SubscriptionSpec};
use super::Problems;

/// Checks `brokers`.
pub(super) fn check_brokers(brokers: &BTreeMap<String, BrokerSpec>, p: &mut Problems) {
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
pub(super) fn check_publish(
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
pub(super) fn check_subscriptions(
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
        } else if s.queue.len() > 200 {
            p.push(
                format!("{at}.queue"),
                "at most 200 bytes (its retry queues add `.retry.N`)",
            );
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

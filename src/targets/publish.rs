//! The `publish` target: the request becomes one message on a broker, and the client
//! is answered once the broker confirmed it, or once the outbox holds it durably.
//!
//! The body is read whole (at most `max_body`, else 413 before anything is published).
//! The message carries the body as received, its `content-type`, a `message_id` (the
//! client's `Idempotency-Key`, or a new UUIDv7), the request id as `correlation_id` and
//! `x-request-id`, `traceparent`, the consumer's name (`x-consumer`), the chosen request
//! headers and a timestamp. Without an outbox every failure is a 5xx (503 with
//! `Retry-After`, 502 for an unroutable message). With one, a message the broker cannot
//! take now goes to the outbox, and so does every message while the outbox still holds
//! older ones, so that the order per routing key is kept.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::Value;

use super::compose::template::{CallTemplate, JsonTemplate, Names, Place};
use crate::brokers::message::{Destination, Message};
use crate::brokers::outbox::{Outbox, OutboxError};
use crate::brokers::Link;
use crate::config::brokers::{PublishSpec, RetrySpec};
use crate::config::Problems;
use crate::http::{Body, GatewayError, Request, Response};
use crate::pipeline::RequestCtx;

/// The `Idempotency-Key` a client may send to name its message.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The outbox of a publish route: opened when the snapshot is activated (so `validate`
/// and `explain` never lock the folder).
pub struct OutboxSlot {
    /// The folder.
    pub dir: PathBuf,
    max_size: u64,
    retry: RetrySpec,
    link: Link,
    open: OnceLock<Arc<Outbox>>,
}

impl OutboxSlot {
    /// Opens the folder, or finds it open from an earlier snapshot. Nothing changes for
    /// the outbox's relay until [`OutboxSlot::attach`].
    pub fn open(&self) -> Result<(), String> {
        if self.open.get().is_none() {
            let o = Outbox::shared(&self.dir, self.max_size)?;
            let _ = self.open.set(o);
        }
        Ok(())
    }

    /// Points the opened outbox's relay at this snapshot's broker connection (once every
    /// outbox of the snapshot opened).
    pub fn attach(&self) {
        if let Some(o) = self.open.get() {
            o.attach(self.link.clone(), self.max_size, self.retry);
        }
    }
}

enum Dest {
    Amqp {
        exchange: String,
        routing_key: CallTemplate,
        mandatory: bool,
        persistent: bool,
        priority: Option<u8>,
        expiration_ms: Option<u64>,
    },
    Nats {
        subject: CallTemplate,
    },
    Kafka {
        topic: CallTemplate,
        key: Option<CallTemplate>,
    },
}

enum Answer {
    Json(JsonTemplate),
    Text(CallTemplate),
}

/// A compiled `publish` block.
pub struct Publish {
    link: Link,
    /// The broker's name, as the access log's `upstream`.
    broker: Arc<str>,
    dest: Dest,
    headers: Vec<HeaderName>,
    max_body: u64,
    retry: RetrySpec,
    outbox: Option<Arc<OutboxSlot>>,
    status: StatusCode,
    answer_headers: Vec<(HeaderName, CallTemplate)>,
    answer: Answer,
}

const MESSAGE_ID: &str = "message_id";

impl Publish {
    /// Compiles `spec` at `path` for `link`; `base` resolves a relative outbox folder.
    pub fn build(
        path: &str,
        spec: &PublishSpec,
        params: &[String],
        link: Link,
        base: Option<&std::path::Path>,
        p: &mut Problems,
    ) -> Option<Self> {
        let calls = [MESSAGE_ID.to_string()];
        let names = Names {
            params,
            calls: &calls,
        };
        let key_names = Names { params, calls: &[] };
        let mut template = |field: &str, text: &str, names: &Names<'_>| {
            CallTemplate::compile(text, names, false)
                .map_err(|e| p.push(format!("{path}.{field}"), e))
                .ok()
        };
        let dest = match (&spec.subject, &spec.topic) {
            (Some(s), _) => Dest::Nats {
                subject: template("subject", s, &key_names)?,
            },
            (None, Some(t)) => Dest::Kafka {
                topic: template("topic", t, &key_names)?,
                key: match &spec.key {
                    Some(k) => Some(template("key", k, &key_names)?),
                    None => None,
                },
            },
            (None, None) => Dest::Amqp {
                exchange: spec.exchange.clone().unwrap_or_default(),
                routing_key: template(
                    "routing_key",
                    spec.routing_key.as_deref().unwrap_or(""),
                    &key_names,
                )?,
                mandatory: spec.mandatory,
                persistent: spec.persistent,
                priority: spec.priority,
                expiration_ms: spec.expiration.map(|d| d.0.as_millis() as u64),
            },
        };
        let (status, answer_headers, answer) = match &spec.respond {
            None => (
                StatusCode::ACCEPTED,
                Vec::new(),
                Answer::Json(
                    JsonTemplate::compile(
                        &serde_json::json!({"accepted": true, "message_id": "${message_id}"}),
                        &names,
                    )
                    .ok()?,
                ),
            ),
            Some(r) => {
                let mut hs = Vec::new();
                for (k, v) in &r.headers {
                    let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
                    hs.push((name, template(&format!("respond.headers.{k}"), v, &names)?));
                }
                let answer = match (&r.json, &r.body) {
                    (Some(j), _) => match JsonTemplate::compile(j, &names) {
                        Ok(t) => Answer::Json(t),
                        Err(e) => {
                            p.push(format!("{path}.respond.json"), e);
                            return None;
                        }
                    },
                    (None, Some(b)) => Answer::Text(template("respond.body", b, &names)?),
                    (None, None) => Answer::Text(template("respond.body", "", &names)?),
                };
                (StatusCode::from_u16(r.status).ok()?, hs, answer)
            }
        };
        let outbox = spec.outbox.as_ref().map(|o| {
            let dir = PathBuf::from(&o.path);
            let dir = match base {
                Some(b) if dir.is_relative() => b.join(dir),
                _ => dir,
            };
            Arc::new(OutboxSlot {
                dir: std::path::absolute(&dir).unwrap_or(dir),
                max_size: o.max_size.0,
                retry: spec.retry,
                link: link.clone(),
                open: OnceLock::new(),
            })
        });
        Some(Self {
            broker: Arc::from(link.name()),
            link,
            dest,
            headers: spec
                .headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            max_body: spec.max_body.0,
            retry: spec.retry,
            outbox,
            status,
            answer_headers,
            answer,
        })
    }

    /// The outbox to open when the snapshot is activated.
    pub fn outbox(&self) -> Option<&Arc<OutboxSlot>> {
        self.outbox.as_ref()
    }

    /// The broker connection.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// For `explain` and `GET /routes`.
    pub fn describe(&self) -> String {
        let to = match &self.dest {
            Dest::Amqp { exchange, .. } => format!("exchange `{exchange}`"),
            Dest::Nats { .. } => "a subject".to_string(),
            Dest::Kafka { .. } => "a topic".to_string(),
        };
        let outbox = if self.outbox.is_some() {
            " (with outbox)"
        } else {
            ""
        };
        format!("publish to broker `{}`, {to}{outbox}", self.link.name())
    }

    /// Publishes the request and answers.
    pub async fn call(&self, ctx: &mut RequestCtx, req: Request) -> Result<Response, GatewayError> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(GatewayError::PayloadTooLarge);
        }
        // Over the route's limit is a 413 too, a stalled body a 408.
        let body = super::grpc::read_all(body, self.max_body).await?;
        let message = self.message(ctx, &parts, body)?;
        let results = [Some(Value::String(message.id.clone()))];
        // Rendered first: once the message is handed over, nothing may turn into a 4xx.
        let answer = self.answer(ctx, &parts, &results)?;
        // The broker's time is this route's upstream time (access log, and the server
        // knows the body was read: the connection stays open).
        let started = tokio::time::Instant::now();
        let outcome = self.hand_over(&message).await;
        ctx.upstream_time = Some(started.elapsed());
        ctx.upstream = Some(self.broker.clone());
        outcome?;
        Ok(answer)
    }

    /// Gives `message` to the broker, or to the outbox when it has one and the broker
    /// cannot take the message now (or older messages still wait there).
    async fn hand_over(&self, message: &Message) -> Result<(), GatewayError> {
        match self.outbox.as_ref().and_then(|o| o.open.get()) {
            Some(outbox) => {
                let direct = if outbox.depth() > 0 {
                    // Older messages wait in the outbox: this one goes behind them.
                    None
                } else {
                    Some(self.link.publish(message, &self.retry).await)
                };
                match direct {
                    Some(Ok(())) => {}
                    Some(Err(e)) if !e.outbox_may_keep() => {
                        return Err(e.into_gateway(self.link.name()))
                    }
                    _ => match outbox.append(message).await {
                        Ok(()) => {}
                        Err(OutboxError::TooLarge) => return Err(GatewayError::PayloadTooLarge),
                        Err(OutboxError::Full) => {
                            self.link.stats().outbox_full.inc();
                            return Err(GatewayError::Publish {
                                code: "outbox_full",
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                retry_after: 5,
                                cause: format!("broker `{}`: the outbox is full", self.link.name()),
                            });
                        }
                        Err(OutboxError::Io(e)) => {
                            return Err(GatewayError::Publish {
                                code: "outbox_unavailable",
                                status: StatusCode::SERVICE_UNAVAILABLE,
                                retry_after: 1,
                                cause: format!(
                                    "broker `{}`: outbox write failed: {e}",
                                    self.link.name()
                                ),
                            });
                        }
                    },
                }
            }
            None => self
                .link
                .publish(message, &self.retry)
                .await
                .map_err(|e| e.into_gateway(self.link.name()))?,
        }
        Ok(())
    }

    fn message(
        &self,
        ctx: &RequestCtx,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Message, GatewayError> {
        let missing = |what: &str, m: super::compose::template::Missing| {
            GatewayError::InvalidRequest(format!("{what}: {} is missing", m.0))
        };
        let to = match &self.dest {
            Dest::Amqp {
                exchange,
                routing_key,
                mandatory,
                persistent,
                priority,
                expiration_ms,
            } => Destination::Amqp {
                exchange: exchange.clone(),
                routing_key: routing_key
                    .render(ctx, parts, &[], Place::Text)
                    .map_err(|m| missing("routing key", m))?,
                mandatory: *mandatory,
                persistent: *persistent,
                priority: *priority,
                expiration_ms: *expiration_ms,
            },
            Dest::Nats { subject } => {
                let s = subject
                    .render(ctx, parts, &[], Place::Text)
                    .map_err(|m| missing("subject", m))?;
                if s.is_empty()
                    || s.contains([' ', '\t', '\r', '\n'])
                    || s.split('.').any(str::is_empty)
                {
                    return Err(GatewayError::InvalidRequest(format!(
                        "`{s}` is not a NATS subject (a variable of `subject` may have rendered empty)"
                    )));
                }
                Destination::Nats { subject: s }
            }
            Dest::Kafka { topic, key } => {
                let t = topic
                    .render(ctx, parts, &[], Place::Text)
                    .map_err(|m| missing("topic", m))?;
                let valid = !t.is_empty()
                    && t.len() <= 249
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !valid {
                    return Err(GatewayError::InvalidRequest(format!(
                        "`{t}` is not a Kafka topic"
                    )));
                }
                let key = match key {
                    Some(k) => Some(
                        k.render(ctx, parts, &[], Place::Text)
                            .map_err(|m| missing("key", m))?,
                    ),
                    None => None,
                };
                Destination::Kafka { topic: t, key }
            }
        };
        if let Destination::Amqp { routing_key, .. } = &to {
            if routing_key.len() > 255 {
                return Err(GatewayError::InvalidRequest(
                    "the routing key is over 255 bytes".into(),
                ));
            }
        }
        let id = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty() && k.len() <= 200)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let rid = ctx.request_id_str().to_string();
        let mut headers = vec![("x-request-id".to_string(), rid.clone())];
        let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(tp) = text("traceparent") {
            headers.push(("traceparent".into(), tp.into()));
        }
        if !ctx.consumer_name().is_empty() {
            headers.push(("x-consumer".into(), ctx.consumer_name().into()));
        }
        for h in &self.headers {
            for v in parts.headers.get_all(h) {
                if let Ok(v) = v.to_str() {
                    headers.push((h.as_str().to_string(), v.to_string()));
                }
            }
        }
        Ok(Message {
            id,
            correlation_id: rid,
            content_type: match text(CONTENT_TYPE.as_str()) {
                Some(ct) if ct.len() > 255 => {
                    return Err(GatewayError::InvalidRequest(
                        "the content-type is over 255 bytes".into(),
                    ))
                }
                ct => ct.map(str::to_string),
            },
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            headers,
            to,
            body,
        })
    }

    fn answer(
        &self,
        ctx: &RequestCtx,
        parts: &http::request::Parts,
        results: &[Option<Value>],
    ) -> Result<Response, GatewayError> {
        let internal = |m: super::compose::template::Missing| {
            GatewayError::InvalidRequest(format!("the answer needs {}", m.0))
        };
        let (body, json) = match &self.answer {
            Answer::Json(t) => (
                Bytes::from(t.render(ctx, parts, results).map_err(internal)?.to_string()),
                true,
            ),
            Answer::Text(t) => (
                Bytes::from(
                    t.render(ctx, parts, results, Place::Text)
                        .map_err(internal)?,
                ),
                false,
            ),
        };
        let empty = body.is_empty();
        let mut resp = http::Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if json {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        } else if !empty {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        for (name, t) in &self.answer_headers {
            let v = t
                .render(ctx, parts, results, Place::Text)
                .map_err(internal)?;
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name.clone(), v);
            }
        }
        Ok(resp)
    }
}

//! Compiling and activating the messaging parts of a configuration: one connection per
//! broker (kept across reloads that keep its spec), the `publish` targets, their
//! outboxes, and the subscriptions. Compiling starts nothing (so `validate` and
//! `explain` never connect or lock a folder); activation opens the outboxes, starts the
//! connections and starts consuming.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method, Uri};

use super::compile::{make_binding, CompileEnv};
use super::Snapshot;
use crate::brokers::subscribe::{Deliver, Subscription};
use crate::brokers::Link;
use crate::config::brokers::PublishSpec;
use crate::config::upstream::TimeoutsSpec;
use crate::config::{ConfigErrors, Dur, GatewaySpec, Problems};
use crate::targets::publish::{OutboxSlot, Publish};
use crate::targets::{Forward, ProxySettings, Target};
use crate::upstream::Cluster;

/// The brokers of one configuration being compiled.
pub struct Messaging {
    links: HashMap<String, Link>,
    outboxes: RefCell<Vec<Arc<OutboxSlot>>>,
    /// One gateway's live state apart from another's in the same process.
    scope: String,
}

impl Messaging {
    /// A connection per broker of `spec` (the live one where the spec is unchanged).
    pub fn new(spec: &GatewaySpec, env: &CompileEnv<'_>) -> Self {
        let scope = format!("{:p}", Arc::as_ptr(env.metrics));
        let links = spec
            .brokers
            .iter()
            .filter_map(|(name, b)| {
                let stats = env.metrics.brokers.broker(name);
                Some((name.clone(), Link::shared(&scope, name, b, stats)?))
            })
            .collect();
        Self {
            links,
            outboxes: RefCell::new(Vec::new()),
            scope,
        }
    }

    /// Compiles a route's `publish` block at `path`.
    pub fn publish(
        &self,
        path: &str,
        spec: &PublishSpec,
        params: &[String],
        base: Option<&std::path::Path>,
        p: &mut Problems,
    ) -> Option<Target> {
        let link = self.links.get(&spec.broker)?.clone();
        let publish = Publish::build(path, spec, params, link, base, p)?;
        if let Some(o) = publish.outbox() {
            self.outboxes.borrow_mut().push(o.clone());
        }
        Some(Target::Publish(publish))
    }

    /// Compiles `subscriptions`: each found again when its spec, its broker's and its
    /// upstream's are unchanged (so a reload does not restart it).
    pub fn subscriptions(
        &self,
        spec: &GatewaySpec,
        clusters: &HashMap<String, Arc<Cluster>>,
        settings: &Arc<ProxySettings>,
        env: &CompileEnv<'_>,
        p: &mut Problems,
    ) -> Vec<Arc<Subscription>> {
        let mut out = Vec::new();
        for (i, s) in spec.subscriptions.iter().enumerate() {
            let at = format!("subscriptions[{i}]");
            let Some(Link::Amqp(link)) = self.links.get(&s.broker) else {
                continue;
            };
            let Some(cluster) = clusters.get(&s.deliver.upstream) else {
                continue;
            };
            let (Ok(method), Ok(uri)) = (
                Method::from_bytes(s.deliver.method.as_bytes()),
                s.deliver.path.parse::<Uri>(),
            ) else {
                p.push(format!("{at}.deliver"), "not a valid method and path");
                continue;
            };
            let headers = s
                .deliver
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect();
            let identity = format!(
                "subscription:{}:{}:{}:{}",
                self.scope,
                serde_json::to_string(s).unwrap_or_default(),
                serde_json::to_string(&spec.brokers.get(&s.broker)).unwrap_or_default(),
                serde_json::to_string(cluster.spec()).unwrap_or_default(),
            );
            let owner = format!("subscription:{}", s.name);
            let timeouts = TimeoutsSpec {
                request: Some(Dur(s.deliver.timeout.0)),
                ..TimeoutsSpec::default()
            };
            let sub = crate::policies::state::shared(identity, || {
                let deliver = Deliver {
                    forward: Forward::for_calls(settings.clone()),
                    binding: make_binding(&owner, timeouts, cluster.clone(), spec, env),
                    method,
                    uri,
                    headers,
                    timeout: s.deliver.timeout.0,
                };
                Subscription::new(
                    s.clone(),
                    link.clone(),
                    deliver,
                    env.metrics.brokers.subscription(&s.name),
                    spec.server.shutdown_grace.0,
                )
            });
            out.push(sub);
        }
        out
    }

    /// The connections and outboxes, for the snapshot.
    pub fn into_parts(self) -> (Vec<Link>, Vec<Arc<OutboxSlot>>) {
        (
            self.links.into_values().collect(),
            self.outboxes.into_inner(),
        )
    }
}

/// Opens the snapshot's outboxes, starts its connections and subscriptions. An outbox
/// that cannot be opened (locked by another process, not writable) fails the (re)load.
pub fn activate(snap: &Snapshot) -> Result<(), ConfigErrors> {
    // Every outbox opens before any is re-pointed: a reload that fails here leaves the
    // active snapshot's relays as they were.
    for o in &snap.outboxes {
        o.open().map_err(|e| {
            ConfigErrors::one(
                "publish.outbox.path",
                format!("cannot open the outbox {}: {e}", o.dir.display()),
            )
        })?;
    }
    for l in &snap.brokers {
        l.start();
    }
    for o in &snap.outboxes {
        o.attach();
    }
    for s in &snap.subscriptions {
        s.start();
    }
    Ok(())
}

/// Stops every subscription of `snap`, letting deliveries in flight finish within
/// `grace` (shutdown).
pub async fn stop_subscriptions(snap: &Snapshot, grace: std::time::Duration) {
    futures_util::future::join_all(snap.subscriptions.iter().map(|s| s.stop(grace))).await;
}

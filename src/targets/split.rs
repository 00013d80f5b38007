//! Weighted split between upstreams (canary releases, A/B tests).
//!
//! Each upstream owns a slice of `0..total` in config order. Without `sticky`, each
//! request draws at random. With it, the key's stable hash picks the slice, so one client
//! stays on one side; moving weight from one side to the other (95/5 to 90/10) only moves
//! the clients in the slice that changed hands.

use http::HeaderMap;

use crate::config::validate::KeySource;
use crate::pipeline::RequestCtx;
use crate::upstream::hash::{hash64, request_key};

use super::Binding;

/// A compiled split.
pub struct Split {
    sides: Vec<(u64, Binding)>,
    weights: Vec<u32>,
    total: u64,
    sticky: Option<KeySource>,
}

impl Split {
    /// A split between `sides` (binding, weight); at least one weight is positive.
    pub fn new(sides: Vec<(Binding, u32)>, sticky: Option<KeySource>) -> Self {
        let mut total = 0u64;
        let weights = sides.iter().map(|(_, w)| *w).collect();
        let sides = sides
            .into_iter()
            .map(|(b, w)| {
                total += u64::from(w);
                (total, b)
            })
            .collect();
        Self {
            sides,
            weights,
            total: total.max(1),
            sticky,
        }
    }

    /// The side for this request.
    pub fn choose(&self, ctx: &RequestCtx, headers: &HeaderMap) -> &Binding {
        let point = self
            .sticky
            .as_ref()
            .and_then(|k| request_key(k, headers, ctx.client_ip))
            .map_or_else(
                || fastrand::u64(..self.total),
                |key| hash64(&key) % self.total,
            );
        let i = self.sides.partition_point(|(end, _)| *end <= point);
        &self.sides[i.min(self.sides.len() - 1)].1
    }

    /// `users-v1 95%, users-v2 5% (sticky on header:x-user)`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .sides
            .iter()
            .zip(&self.weights)
            .map(|((_, b), w)| {
                format!(
                    "`{}` {:.1}%",
                    b.cluster.name,
                    f64::from(*w) * 100.0 / self.total as f64
                )
            })
            .collect();
        match &self.sticky {
            Some(k) => format!("{} (sticky on {k})", parts.join(", ")),
            None => parts.join(", "),
        }
    }
}

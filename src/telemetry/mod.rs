//! Observability: correlation ids, the JSON access log, Prometheus metrics (lock-free
//! counters on the request path) and process metrics.

pub mod access_log;
pub mod broker_metrics;
pub mod exchange;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod request_id;

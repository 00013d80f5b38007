//! turnpike: an API gateway in one binary.
//!
//! One YAML file in ([`config`]), a compiled, immutable [`runtime::Snapshot`] out, served
//! by [`server`] through each route's [`pipeline`] of [`policies`] to a [`targets`]
//! (an [`upstream`] cluster, a weighted split, or a local answer), observed by
//! [`telemetry`] and operated through [`admin`]. See docs/architecture.md.

#![forbid(unsafe_code)]

pub mod admin;
pub mod brokers;
pub mod config;
pub mod explain;
pub mod gateway;
pub mod h1;
pub mod http;
pub mod pipeline;
pub mod policies;
pub mod router;
pub mod runtime;
pub mod server;
pub mod store;
pub mod targets;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use gateway::{Gateway, Options, StartError};

//! HTTP building blocks shared by every room of the gateway: the one body type that
//! travels through the pipeline, the one error type with its JSON rendering, and the
//! proxy header rules (hop-by-hop removal, internal headers, `X-Forwarded-*`, `Forwarded`, `Via`).

pub mod body;
pub mod error;
pub mod fetch;
pub mod forwarded;
pub mod hop;
pub mod internal;

pub use body::{Body, BodyError};
pub use error::GatewayError;

/// A request as policies and targets see it.
pub type Request = http::Request<Body>;
/// A response as policies and targets produce it.
pub type Response = http::Response<Body>;

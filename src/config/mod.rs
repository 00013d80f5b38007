//! What the user writes: the `*Spec` types (serde, unknown keys refused), loading with
//! `${ENV}` and `${file:...}` substitution, and checks that report every problem with its
//! field path and line. Nothing here opens a socket or builds a live object: `runtime`
//! turns a spec into a running snapshot.

pub mod brokers;
pub mod compose;
pub mod consumers;
pub mod error;
pub mod grpc;
pub mod load;
pub mod locations;
pub mod redis;
pub mod resilience;
pub mod route;
pub mod spec;
pub mod tls;
pub mod units;
pub mod upstream;
pub mod validate;
mod validate_brokers;
mod validate_resilience;

pub use compose::{CallSpec, ComposeSpec};
pub use consumers::*;
pub use error::{ConfigError, ConfigErrors, Problems};
pub use load::{load_file, load_str, LoadedConfig};
pub use resilience::*;
pub use route::*;
pub use spec::*;
pub use tls::*;
pub use units::{Dur, Percent, Size};
pub use upstream::*;

//! End-to-end tests: the real gateway in-process on port 0, against real HTTP servers on
//! loopback. One binary, so it links once.

#![allow(unreachable_pub)]

mod support;

mod auth;
mod balancing;
mod capture;
mod cli;
mod compose;
mod edge;
mod failures;
mod faults;
mod fixtures;
mod fuzz_corpus;
mod grpc;
mod h1server;
mod h2abuse;
mod jwt;
#[cfg(feature = "kafka")]
mod kafka;
mod messaging;
mod proxy;
mod rate_limit;
mod redis_limit;
mod redis_topologies;
mod reload;
mod resilience;
mod routing;
mod shutdown;
mod telemetry;
mod tls;
mod transcode;

//! The IAFactory platform API: the service every tenant runs.
//!
//! - [`app`]: the router; [`server`]: serving it.
//! - [`auth`]: passwords, JWTs, API keys; [`ratelimit`], [`usage`]: limits and logs.
//! - [`db`]: the pool and the tenant-scoped transactions under row-level security.
//! - [`rag`]: documents, retrieval and answers; [`workflows`]: multi-agent workflows.
//! - [`console`]: the web console served at `/`.

pub mod app;
pub mod auth;
pub mod client_address;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod operator_guard;
pub mod probe;
pub mod rag;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod sources;
pub mod state;
pub mod usage;
pub mod workflows;

//! The IAFactory appliance: the whole platform on one server, driving Docker directly.
//!
//! The binary `iafactory` is a thin clap front over these modules.

pub mod app;
pub mod backup;
pub mod backup_schedule;
pub mod bundle;
pub mod certs;
pub mod cli;
pub mod egress;
pub mod engine;
pub mod gateway;
pub mod metrics;
pub mod models;
pub mod monitoring;
pub mod registrations;
pub mod serve;
pub mod settings;
pub mod store;

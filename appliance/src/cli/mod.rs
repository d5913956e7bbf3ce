//! The commands of `iafactory`, one module each.

pub mod delete;
pub mod plan;
pub mod progress;
pub mod secret;

use clap::ValueEnum;

/// How a command prints what it reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Yaml,
    Json,
}

/// `status -o`: a table for people, JSON for scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    #[default]
    Table,
    Json,
}

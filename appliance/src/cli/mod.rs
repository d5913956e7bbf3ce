//! The commands of `iafactory`, one module each.

pub mod plan;

use clap::ValueEnum;

/// How a command prints what it reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Yaml,
    Json,
}

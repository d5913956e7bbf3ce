//! `iafactory plan -f FILE...`: what the appliance (or the operator) would run for
//! these manifests, decided by the same pure plan, without touching anything.

use std::io::Write;
use std::path::PathBuf;

use iafactory_crds::PlatformConfig;
use iafactory_crds::manifest::{self, ManifestError};
use iafactory_crds::plan::{PlanError, ResourcePlan, plan_manifest};

use super::OutputFormat;

#[derive(Debug, thiserror::Error)]
pub enum PlanCommandError {
    #[error("{}", render_manifest_errors(.0))]
    Manifests(Vec<ManifestError>),
    #[error("{at}: cannot plan it: {error}")]
    Plan {
        at: Box<manifest::Location>,
        error: Box<PlanError>,
    },
    #[error("no manifest given: use -f FILE (a file, a directory, or - for stdin)")]
    NothingToPlan,
    #[error("cannot write the plan: {0}")]
    Output(#[from] std::io::Error),
}

fn render_manifest_errors(errors: &[ManifestError]) -> String {
    let mut text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    text.push_str(&format!(
        "\n{} problem(s) in the manifests; nothing was planned",
        errors.len()
    ));
    text
}

/// Plans every resource of `files`; all-or-nothing, like `kubectl apply --dry-run`.
pub fn plan_files(
    files: &[PathBuf],
    config: &PlatformConfig,
) -> Result<Vec<ResourcePlan>, PlanCommandError> {
    if files.is_empty() {
        return Err(PlanCommandError::NothingToPlan);
    }
    let loaded = manifest::load_paths(files).map_err(PlanCommandError::Manifests)?;
    if loaded.is_empty() {
        return Err(PlanCommandError::NothingToPlan);
    }
    loaded
        .iter()
        .map(|l| {
            plan_manifest(&l.manifest, config).map_err(|error| PlanCommandError::Plan {
                at: Box::new(l.at.clone()),
                error: Box::new(error),
            })
        })
        .collect()
}

pub fn write_plans(
    plans: &[ResourcePlan],
    format: OutputFormat,
    mut out: impl Write,
) -> Result<(), PlanCommandError> {
    match format {
        OutputFormat::Yaml => {
            for (i, plan) in plans.iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                let yaml = serde_yaml::to_string(plan).map_err(std::io::Error::other)?;
                out.write_all(yaml.as_bytes())?;
            }
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut out, plans).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

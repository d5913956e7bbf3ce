use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iafactory_appliance::cli::{self, OutputFormat};
use iafactory_crds::PlatformConfig;

/// IAFactory on one server: the sovereign AI platform, driven through Docker.
#[derive(Parser)]
#[command(name = "iafactory", version, about)]
struct Cli {
    /// Platform configuration layered over the built-in default.
    #[arg(long, global = true, env = "IAF_PLATFORM_CONFIG")]
    platform_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what these manifests would run, decided by the shared pure plan.
    Plan {
        /// Manifest files or directories (multi-document YAML), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t)]
        output: OutputFormat,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = PlatformConfig::load(cli.platform_config.as_deref())?;
    match cli.command {
        Command::Plan { files, output } => {
            let plans = cli::plan::plan_files(&files, &config)?;
            cli::plan::write_plans(&plans, output, std::io::stdout().lock())?;
        }
    }
    Ok(())
}

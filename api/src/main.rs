use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use iafactory_api::config::{Config, MigrateConfig};
use iafactory_api::{db, server};
use tracing_subscriber::EnvFilter;

/// The IAFactory platform API.
#[derive(Parser)]
#[command(name = "iafactory-api", version, about)]
struct Cli {
    /// A TOML file layered between the defaults and the IAF_* environment.
    #[arg(long, env = "IAF_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// As the database owner (IAF_DATABASE_URL): apply the migrations, let the serving
    /// role log in with IAF_DATABASE_APP_PASSWORD, and exit. Run before `serve`.
    Migrate,
    /// Exit 0 when the local API is ready (for container healthchecks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8180/readyz")]
        url: String,
    },
    /// Internal: parse one document from stdin in a process the API has bounded
    /// (see rag::sandbox). Not for people.
    #[command(hide = true)]
    Parse {
        #[arg(long)]
        content_type: String,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    // The document parser runs alone: no runtime, no threads, no logging set up, so
    // that the memory it is allowed goes to the document.
    if let Some(Command::Parse { content_type }) = &cli.command {
        return Ok(iafactory_api::rag::sandbox::child_main(content_type));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("IAF_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .json()
        .init();
    tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")?
        .block_on(run(cli))?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Parse { .. } => unreachable!("handled before the runtime starts"),
        Command::Healthcheck { url } => {
            let response = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .with_context(|| format!("{url} does not answer"))?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url} answered {}",
                response.status()
            );
            Ok(())
        }
        Command::Migrate => {
            // The owner's URL and the serving role's password, nothing else (no JWT
            // key): the drivers run this as an init step with only those.
            let config = MigrateConfig::load(cli.config.as_deref())?;
            db::migrate(&config.database_url).await?;
            db::provision_app_role(&config.database_url, config.database_app_password.expose())
                .await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Serve => {
            let config = Config::load(cli.config.as_deref())?;
            let (listen, internal_listen) = (config.listen, config.internal_listen);
            let state = server::prepare(config).await?;
            let listener = server::bind(listen).await?;
            let internal = server::bind(internal_listen).await?;
            tracing::info!(%listen, %internal_listen, "serving");
            server::serve(state, listener, internal, server::shutdown_signal()).await?;
            Ok(())
        }
    }
}

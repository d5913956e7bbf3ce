//! `iafactory-operator`: run the controllers, or print the ClusterRoles they need.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use iafactory_crds::PlatformConfig;
use iafactory_operator::run::{Settings, run};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    name = "iafactory-operator",
    version,
    about = "Reconciles IAFactory tenants into isolated namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Platform configuration layered over the embedded default (then IAF_PLATFORM__*).
    #[arg(long, env = "IAF_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "IAF_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Each tenant's API, on its internal port (the platform config's
    /// `api.internal_port`, where `/internal/*` is served); `{tenant}` and
    /// `{namespace}` are replaced.
    #[arg(
        long,
        env = "IAF_OPERATOR_TENANT_API_URL",
        default_value = "http://api.{namespace}.svc:9180"
    )]
    tenant_api_url: String,
    /// Timeout of each call to a tenant's API, in seconds. A KnowledgeBase's
    /// registration fetches its `url` sources (each within the API's
    /// `IAF_SOURCE_FETCH_TIMEOUT_SECONDS`, 30 by default), one after the other.
    #[arg(long, default_value_t = 120)]
    tenant_api_timeout_seconds: u64,
    /// Run without a Lease: only for a single replica.
    #[arg(long)]
    no_leader_election: bool,
    /// The operator's own namespace: where the leader-election Lease lives, and its
    /// ServiceAccount (the chart passes it through the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "iafactory-system")]
    lease_namespace: String,
    /// The operator's ServiceAccount: each tenant namespace gets a RoleBinding of the
    /// tenant role (`iafactory-tenant-workloads`) to it, in that namespace only.
    #[arg(
        long,
        env = "IAF_OPERATOR_SERVICE_ACCOUNT",
        default_value = "iafactory-operator"
    )]
    service_account: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How many objects of one kind are reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Log filter (RUST_LOG syntax); changeable at run time with PUT /log-filter.
    #[arg(long, env = "RUST_LOG", default_value = "info,kube=warn")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print the least-privilege ClusterRoles the operator needs: its own, bound
    /// cluster-wide, and the tenant role it binds in each tenant namespace.
    Rbac,
}

fn init_tracing(
    filter: &str,
    json: bool,
) -> anyhow::Result<iafactory_operator::run::LogFilterReload> {
    let filter = EnvFilter::try_new(filter).context("the log filter is invalid")?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(tracing_subscriber::fmt::layer().json())
            .init();
    } else {
        registry.with(tracing_subscriber::fmt::layer()).init();
    }
    Ok(Arc::new(move |directives: &str| {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Rbac) = cli.command {
        print!("{}", iafactory_operator::rbac::cluster_role_yaml());
        println!("---");
        print!("{}", iafactory_operator::rbac::tenant_role_yaml());
        return Ok(());
    }
    let reload = init_tracing(&cli.log, cli.log_json)?;
    let config = PlatformConfig::load(cli.config.as_deref())
        .context("loading the platform configuration")?;
    let identity = cli.identity.unwrap_or_else(|| {
        format!(
            "iafactory-operator-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        )
    });
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing the reconciles in flight");
        signal.cancel();
    });
    run(
        Settings {
            config,
            metrics_addr: cli.metrics_addr,
            tenant_api_url: cli.tenant_api_url,
            tenant_api_timeout: Duration::from_secs(cli.tenant_api_timeout_seconds),
            leader_election: !cli.no_leader_election,
            lease_namespace: cli.lease_namespace,
            service_account: cli.service_account,
            identity,
            concurrency: cli.concurrency,
        },
        reload,
        shutdown,
    )
    .await?;
    Ok(())
}

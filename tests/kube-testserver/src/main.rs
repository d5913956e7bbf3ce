//! `kube-testserver --kubeconfig PATH [--port N] [--ready-delay-ms N]`: serves the in-memory
//! API server on 127.0.0.1, prints `ready` once serving, and runs until SIGTERM or Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kube_testserver::{Options, TestServer};

#[derive(Debug, Parser)]
#[command(version, about = "An in-memory Kubernetes API server for tests")]
struct Args {
    /// Where to write the kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How long workloads take to become ready.
    #[arg(long, default_value_t = 200)]
    ready_delay_ms: u64,
    /// How many watch events the server keeps for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    history_window: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let server = TestServer::start(Options {
        port: args.port,
        ready_delay: Duration::from_millis(args.ready_delay_ms),
        kubeconfig: Some(args.kubeconfig),
        history_window: args.history_window,
        ..Options::default()
    })
    .await?;
    eprintln!("kube-testserver serving on {}", server.url());
    println!("ready");
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(server);
    Ok(())
}

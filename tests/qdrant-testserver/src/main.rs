//! A Qdrant gRPC server for tests: the subset of Qdrant's API the platform API calls,
//! served by `qdrant-client`'s generated tonic traits over Qdrant's own engine,
//! `qdrant-edge`, one shard per collection. No Qdrant server binary can be installed
//! here; with this, the real client talks real gRPC to the real engine.
//!
//! Prints `listening on ADDRESS` once it accepts connections. Collections persist under
//! `--storage`: a server restarted on the same directory finds them again, as Qdrant
//! does.

mod collections;
mod convert;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use qdrant_client::qdrant::collections_server::CollectionsServer;
use qdrant_client::qdrant::points_server::PointsServer;
use qdrant_client::qdrant::qdrant_server::QdrantServer;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "Qdrant's gRPC API (a subset) over qdrant-edge, for tests")]
struct Args {
    /// Where to listen; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where collections live. Created if missing.
    #[arg(long)]
    storage: PathBuf,
    /// When set, every call must carry it in the `api-key` header, as with Qdrant's
    /// `service.api_key`.
    #[arg(long, env = "QDRANT__SERVICE__API_KEY")]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "qdrant_testserver=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let registry = Arc::new(
        collections::Registry::open(&args.storage)
            .with_context(|| format!("opening the storage {}", args.storage.display()))?,
    );
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    let auth = service::ApiKeyCheck::new(args.api_key);
    let server = tonic::transport::Server::builder()
        .add_service(QdrantServer::with_interceptor(
            service::Health,
            auth.clone(),
        ))
        .add_service(CollectionsServer::with_interceptor(
            service::CollectionsApi::new(registry.clone()),
            auth.clone(),
        ))
        .add_service(PointsServer::with_interceptor(
            service::PointsApi::new(registry.clone()),
            auth,
        ))
        // Without TCP_NODELAY, a small gRPC reply waits for the client's delayed ACK:
        // 40 ms added to one search in three.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        );
    println!("listening on {address}");
    server.await.context("serving gRPC")?;
    registry.flush_all();
    Ok(())
}

//! The stack scripts/bench-gateway measures: a small upstream HTTP API and the TLS
//! gateway in front of it (certificate from a local CA), in one release-built process.
//! It prints `{"https_port", "upstream_port", "ca_pem", "host"}` as one JSON line, then
//! serves until stdin closes.
//!
//!   cargo bench -p iafactory-appliance --bench gateway_stack -- CERT_DIR

use std::sync::Arc;

use iafactory_appliance::certs::{
    CertManager, CertResolver, CertSettings, CertSource, ChallengeStore,
};
use iafactory_appliance::gateway::{Gateway, GatewaySettings, RouteTable, SharedRoutes, Upstream};
use prometheus_client::registry::Registry;
use tokio::io::AsyncReadExt;

const HOST: &str = "bench.example.test";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` with no arguments passes only flags: say how to run it, and succeed.
    let Some(cert_dir) = std::env::args().skip(1).find(|arg| !arg.starts_with('-')) else {
        eprintln!(
            "gateway_stack is driven by scripts/bench-gateway (usage: gateway_stack CERT_DIR)"
        );
        return Ok(());
    };

    // The upstream answers like a small JSON API endpoint.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_port = upstream.local_addr()?.port();
    let app = axum::Router::new()
        .fallback(|| async { axum::Json(serde_json::json!({"status": "ok", "tenant": "bench"})) });
    tokio::spawn(axum::serve(upstream, app).into_future());

    let mut registry = Registry::default();
    let resolver = Arc::new(CertResolver::default());
    let challenges = ChallengeStore::default();
    let manager = CertManager::new(
        CertSettings {
            dir: cert_dir.into(),
            source: CertSource::LocalCa,
            renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
        },
        resolver.clone(),
        challenges.clone(),
        &mut registry,
    )?;
    manager.ensure(HOST).await?;
    let routes = SharedRoutes::new(RouteTable::new("example.test").with_tenant(
        "bench",
        Upstream::http(&format!("127.0.0.1:{upstream_port}"))?,
    ));
    let gateway = Gateway::start(
        GatewaySettings::new("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?),
        routes,
        resolver,
        challenges,
        &mut registry,
    )
    .await?;
    let ca_pem = manager
        .local_ca()
        .map(|ca| ca.cert_path().display().to_string())
        .unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "https_port": gateway.https_addr().port(),
            "upstream_port": upstream_port,
            "ca_pem": ca_pem,
            "host": HOST,
        })
    );
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    gateway.shutdown().await;
    Ok(())
}

//! `iafactory serve`: the daemon. It reconciles on a timer and whenever a stored
//! manifest changes, rewrites the Prometheus scrape configuration, and serves
//! /metrics, /status and /healthz on localhost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iafactory_crds::plan::ComponentKind;

use crate::app::App;
use crate::metrics::{Snapshot, scrape_config};
use crate::store::write_atomically;

/// How often the manifests directory is looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {source}; another process holds that port (`ss -ltnp`): stop it, or set appliance.listen (IAF_APPLIANCE__LISTEN) to a free port"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the status server stopped: {0}")]
    Server(std::io::Error),
}

/// What the manifests directory holds now: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    entries
}

/// Binds first, so a taken port fails at once, then serves and reconciles forever.
pub async fn serve(app: App) -> Result<(), ServeError> {
    let addr = app.config.appliance.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Server)?;
    tracing::info!(%local, "serving /metrics and /status");
    let app = Arc::new(app);
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app.clone());
    let reconciler = tokio::spawn(reconcile_forever(app, local));
    let served = axum::serve(listener, router).await;
    reconciler.abort();
    served.map_err(ServeError::Server)
}

async fn reconcile_forever(app: Arc<App>, listen: SocketAddr) {
    let interval = Duration::from_secs(app.config.appliance.reconcile_interval_seconds.max(1));
    let dir = app.store.tenants_dir();
    let mut seen = None;
    let mut last = tokio::time::Instant::now() - interval;
    loop {
        let now = fingerprint(&dir);
        let changed = seen.as_ref() != Some(&now);
        if changed || last.elapsed() >= interval {
            if changed {
                tracing::info!("the stored manifests changed: reconciling");
            }
            seen = Some(now);
            last = tokio::time::Instant::now();
            let log = |line: &str| tracing::info!("{line}");
            let (report, result) = app.up(&log).await;
            match result {
                Ok(()) if report.actions.is_empty() => {
                    tracing::debug!("converged, nothing to change")
                }
                Ok(()) => tracing::info!(changes = report.actions.len(), "converged"),
                Err(error) => tracing::error!("{error}"),
            }
            write_scrape_config(&app, listen);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

fn write_scrape_config(app: &App, listen: SocketAddr) {
    let Ok(desired) = app.desired() else { return };
    let port = app.config.platform.api.port;
    let apis: BTreeMap<String, Vec<String>> = desired
        .iter()
        .map(|state| {
            let targets = state
                .containers
                .iter()
                .filter(|c| c.component == ComponentKind::Api.name())
                .map(|c| format!("{}:{port}", c.name))
                .collect();
            (state.tenant.clone(), targets)
        })
        .collect();
    let dir = app.config.appliance.data_dir.join("prometheus");
    let text = scrape_config(&listen.to_string(), &apis);
    let path = dir.join("scrape.yml");
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return;
    }
    if let Err(error) = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| write_atomically(&path, text.as_bytes(), 0o644).map_err(|e| e.to_string()))
    {
        tracing::error!("cannot write {}: {error}", path.display());
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match Snapshot::take(&app).await {
        Ok(snapshot) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            snapshot.encode(),
        )
            .into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn status(State(app): State<Arc<App>>) -> Response {
    match app.status().await {
        Ok(statuses) => axum::Json(statuses).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

//! Serving: migrations, the listener, graceful shutdown.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::state::{AppState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Migrates, then builds the state. Readiness turns on once both succeeded.
pub async fn prepare(config: Config) -> Result<AppState, ServeError> {
    db::migrate(&config.database_url).await?;
    let pool = db::connect(&config.database_url, config.database_max_connections).await?;
    let state = AppState::new(config, pool).await?;
    state.mark_migrated();
    Ok(state)
}

/// Serves until `shutdown` resolves, then drains in-flight requests and flushes the
/// usage log.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let usage = state.usage.clone();
    let stop_workers = tokio_util::sync::CancellationToken::new();
    let workers = crate::rag::ingest::spawn_workers(
        state.clone(),
        state.config.ingestion_workers,
        stop_workers.clone(),
    );
    let listener_task = crate::workflows::events::spawn_listener(
        state.db.clone(),
        state.workflows.clone(),
        stop_workers.clone(),
    );
    let scheduler =
        crate::workflows::schedule::spawn_scheduler(state.clone(), stop_workers.clone());
    let probes = crate::probe::spawn(state.clone(), stop_workers.clone());
    let workflows = state.workflows.clone();
    let app = crate::app::app(state);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(ServeError::Serve);
    // Workers hand their jobs back; the next start picks them up at once.
    stop_workers.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    // Executions still running are recorded as cancelled, not left open.
    workflows.cancel_all();
    let _ = listener_task.await;
    let _ = probes.await;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    for _ in 0..100 {
        if workflows.running_count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    usage.flush().await;
    served
}

pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen { address, source })
}

/// Resolves on SIGTERM (Kubernetes, Docker) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: draining requests");
}

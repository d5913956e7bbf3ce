//! Serving: the database (migrated here only in a single-process setup), the listener,
//! graceful shutdown.

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

/// Builds the state on a pool of the serving role. With `database_app_url` (what both
/// drivers give): no migration, the owner's credentials never seen, and a schema that
/// lacks a migration this API embeds is refused by name. With the owner's
/// `database_url` alone (a single-process setup): migrates as the owner and lets the
/// serving role log in first. Readiness turns on once all succeeded.
pub async fn prepare(config: Config) -> Result<AppState, ServeError> {
    let pool = if config.database_app_url.expose().is_empty() {
        db::migrate(&config.database_url).await?;
        let app_password = config.database_app_password.expose();
        db::provision_app_role(&config.database_url, app_password).await?;
        db::connect(
            &config.database_url,
            app_password,
            config.database_max_connections,
        )
        .await?
    } else {
        let pool = db::connect_app(
            config.database_app_url.expose(),
            config.database_max_connections,
        )
        .await?;
        db::check_schema(&pool).await?;
        pool
    };
    let state = AppState::new(config, pool).await?;
    state.mark_migrated();
    Ok(state)
}

/// Serves the public routes on `listener` and the internal ones (`/internal/*`,
/// `/metrics`) on `internal`, until `shutdown` resolves; then both drain their in-flight
/// requests, and the usage log is flushed.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    internal: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let usage = state.usage.clone();
    let stop_workers = tokio_util::sync::CancellationToken::new();
    let workers = crate::rag::ingest::spawn_workers(
        state.clone(),
        state.config.ingestion_workers,
        stop_workers.clone(),
    );
    let reembedding = crate::rag::reembed::spawn_worker(state.clone(), stop_workers.clone());
    let listener_task = crate::workflows::events::spawn_listener(
        state.db.clone(),
        state.workflows.clone(),
        stop_workers.clone(),
    );
    let scheduler =
        crate::workflows::schedule::spawn_scheduler(state.clone(), stop_workers.clone());
    let probes = crate::probe::spawn(state.clone(), stop_workers.clone());
    let workflows = state.workflows.clone();
    let internal_app = crate::app::internal_app(state.clone());
    let app = crate::app::app(state);
    // One signal stops both listeners.
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_on_signal = stop.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });
    let public = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let internal = axum::serve(
        internal,
        internal_app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned());
    let (public, internal) = tokio::join!(
        async {
            let served = public.await;
            // A listener that fails takes the other down with it.
            stop.cancel();
            served
        },
        async {
            let served = internal.await;
            stop.cancel();
            served
        }
    );
    signal.abort();
    let served = public.and(internal).map_err(ServeError::Serve);
    // Workers hand their jobs back; the next start picks them up at once.
    stop_workers.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    let _ = reembedding.await;
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

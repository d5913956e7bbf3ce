//! Liveness, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// Liveness: the process answers. Nothing else, so a database outage does not get
/// every replica restarted.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// A vector store outside PostgreSQL (Qdrant) answers; pgvector is the database.
async fn vector_store_ready(state: &AppState) -> bool {
    let store = &state.rag.store;
    if store.kind() == "pgvector" {
        return true;
    }
    let ready = tokio::time::timeout(std::time::Duration::from_secs(3), store.ready())
        .await
        .unwrap_or(false);
    if !ready {
        tracing::warn!(store = store.kind(), "readiness: vector store unreachable");
    }
    ready
}

/// Readiness: migrations applied, the database and the vector store reachable.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.is_migrated() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "migrations not applied" })),
        )
            .into_response();
    }
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.db)
        .await
    {
        Ok(_) if !vector_store_ready(&state).await => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "vector store unreachable" })),
        )
            .into_response(),
        Ok(_) => Json(json!({ "status": "ready" })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not ready", "reason": "database unreachable" })),
            )
                .into_response()
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.observe_pool(&state.db);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

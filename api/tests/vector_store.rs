//! The pgvector store against the real PostgreSQL: what ingestion workers do at once.

mod common;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use iafactory_api::rag::store::Scope;
use serde_json::json;
use uuid::Uuid;

/// A knowledge base's HNSW index is created by its first ingestion. Several workers
/// ingesting its first documents at once all ask for it: none may fail.
#[tokio::test]
async fn concurrent_first_ingestions_create_the_index_once() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let tenant = app.register("index-race").await;
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(&tenant.token),
            Some(json!({"name": "raced"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let knowledge_base_id: Uuid = reply.body["data"]["id"].as_str().unwrap().parse().unwrap();
    let scope = Scope {
        tenant_id: tenant.tenant_id,
        knowledge_base_id,
    };

    let attempts = (0..8).map(|_| {
        let store = app.state.rag.store.clone();
        tokio::spawn(async move { store.ensure_collection(scope, 384).await })
    });
    for outcome in futures::future::join_all(attempts).await {
        outcome
            .unwrap()
            .expect("every concurrent ensure_collection succeeds");
    }
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'chunks' AND indexname = $1",
    )
    .bind(format!("chunks_hnsw_{}", knowledge_base_id.simple()))
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(indexes, 1);
}

//! Passages written straight into the tables, as ingestion would write them (the same
//! normalised `search_text`), for ranking tests that need exact control of the corpus.

use axum::http::{Method, StatusCode};
use iafactory_api::rag::search;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Auth, TestApp};

/// A knowledge base of the caller's tenant, made through the API.
pub async fn knowledge_base(app: &TestApp, token: &str, name: &str) -> Uuid {
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(token),
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["data"]["id"].as_str().unwrap().parse().unwrap()
}

/// One passage: its text, and optionally its vector and language.
pub struct Passage<'a> {
    pub text: String,
    pub vector: Option<Vec<f32>>,
    pub language: Option<&'a str>,
}

impl Passage<'_> {
    pub fn text(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            vector: None,
            language: None,
        }
    }
}

/// One document in `status` holding these passages, written as the owner. Returns the
/// document's id and the chunks' ids in order.
pub async fn write(
    owner: &PgPool,
    tenant: Uuid,
    kb: Uuid,
    status: &str,
    passages: &[Passage<'_>],
) -> (Uuid, Vec<Uuid>) {
    let document: Uuid = sqlx::query_scalar(
        "INSERT INTO documents (tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes, status)
         VALUES ($1, $2, 'passages', 'text/plain', $3, 10, $4) RETURNING id",
    )
    .bind(tenant)
    .bind(kb)
    .bind(Uuid::new_v4().to_string())
    .bind(status)
    .fetch_one(owner)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (ordinal, passage) in passages.iter().enumerate() {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO chunks (tenant_id, knowledge_base_id, document_id, ordinal, content, search_text, language, embedding)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(tenant)
        .bind(kb)
        .bind(document)
        .bind(ordinal as i32)
        .bind(&passage.text)
        .bind(search::search_text(&passage.text))
        .bind(passage.language)
        .bind(passage.vector.clone().map(pgvector::Vector::from))
        .fetch_one(owner)
        .await
        .unwrap();
        ids.push(id);
    }
    (document, ids)
}

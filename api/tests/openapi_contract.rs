//! What the fuzzer of scripts/checks/40-schemathesis.sh found, kept as plain tests:
//! the document served is the generated one, and text PostgreSQL cannot store (U+0000)
//! is the client's 422, not a 500.

mod common;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn the_served_document_is_the_generated_one() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let served = app
        .request(Method::GET, "/openapi.json", Auth::None, None)
        .await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.body, iafactory_api::openapi::document());
    let schemas = served.body["components"]["schemas"].as_object().unwrap();
    for name in ["ErrorEnvelope", "EmbeddingSpec", "WorkflowSpec", "Language"] {
        assert!(schemas.contains_key(name), "{name}");
    }
}

#[tokio::test]
async fn nul_characters_are_refused_as_invalid() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let admin = app.register("nul").await;
    let token = admin.token.as_str();

    // text columns (character_not_in_repertoire)
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(token),
            Some(json!({"name": "a\u{0}b"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "validation_failed");

    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(token),
            Some(json!({"name": "reglements"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["data"]["id"].as_str().unwrap().to_owned();

    let reply = app
        .request(
            Method::PATCH,
            &format!("/api/knowledge-bases/{id}"),
            Auth::Bearer(token),
            Some(json!({"description": "\u{0}"})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );

    // jsonb columns (untranslatable_character)
    let reply = app
        .request(
            Method::POST,
            &format!("/api/knowledge-bases/{id}/documents"),
            Auth::Bearer(token),
            Some(json!({"title": "t", "text": "du texte", "metadata": {"k": "\u{0}"}})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "validation_failed");
}

/// Schemathesis found it: a metadata number near f64::MAX was stored, and jsonb printed
/// it back in 309 digits that serde_json cannot read, so listing the document was a 500.
#[tokio::test]
async fn metadata_numbers_that_would_not_read_back_are_refused() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let admin = app.register("huge-number").await;
    let token = admin.token.as_str();
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(token),
            Some(json!({"name": "numbers"})),
        )
        .await;
    let id = reply.body["data"]["id"].as_str().unwrap().to_owned();
    let documents = format!("/api/knowledge-bases/{id}/documents");
    let reply = app
        .request(
            Method::POST,
            &documents,
            Auth::Bearer(token),
            Some(json!({"title": "t", "text": "du texte", "metadata": {"k": [f64::MAX]}})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["fields"][0]["field"], "metadata");
    // An ordinary number is kept, and the list reads it back.
    let reply = app
        .request(
            Method::POST,
            &documents,
            Auth::Bearer(token),
            Some(json!({"title": "t", "text": "du texte", "metadata": {"k": 1.5e30}})),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.body);
    let listed = app
        .request(Method::GET, &documents, Auth::Bearer(token), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.body["data"][0]["metadata"]["k"], 1.5e30);
}

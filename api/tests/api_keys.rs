//! API keys: shown once, hashed, scoped, expiring, revocable, counted and logged.

mod common;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;

#[tokio::test]
async fn a_key_is_shown_once_and_stored_hashed() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("keys").await;
    let (secret, id) = app
        .create_key(&admin.token, json!({"name": "ci", "scopes": ["query"]}))
        .await;
    assert!(secret.starts_with("iaf_"));

    let listed = app
        .request(Method::GET, "/api/keys", Auth::Bearer(&admin.token), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["data"][0]["id"], id);
    assert!(
        listed.body["data"][0].get("key").is_none(),
        "no secret in a list"
    );
    assert!(
        !listed.body.to_string().contains(&secret[10..]),
        "not even part of it"
    );

    // As the database owner, the row holds the SHA-256 of the key and nothing more.
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let row: (Vec<u8>, String) = sqlx::query_as(
        "SELECT key_hash, row_to_json(api_keys)::text FROM api_keys WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&owner)
    .await
    .unwrap();
    use sha2::Digest;
    assert_eq!(row.0, sha2::Sha256::digest(secret.as_bytes()).to_vec());
    assert!(!row.1.contains(&secret[10..]), "the secret is not stored");
    owner.close().await;
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&secret), None)
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["data"]["key_id"], id);
    assert_eq!(me.body["data"]["scopes"], json!(["query"]));
}

#[tokio::test]
async fn scopes_are_enforced_and_cannot_be_escalated() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("scopes").await;
    let (query_key, _) = app
        .create_key(&admin.token, json!({"name": "reader", "scopes": ["query"]}))
        .await;
    let forbidden = app
        .request(Method::GET, "/api/keys", Auth::Key(&query_key), None)
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.error_code(), "forbidden");

    let (admin_key, _) = app
        .create_key(
            &admin.token,
            json!({"name": "ops", "scopes": ["admin", "query"]}),
        )
        .await;
    let allowed = app
        .request(Method::GET, "/api/keys", Auth::Key(&admin_key), None)
        .await;
    assert_eq!(allowed.status, StatusCode::OK);
    // A key-authenticated caller cannot mint a key with a scope it lacks.
    let escalation = app
        .request(
            Method::POST,
            "/api/keys",
            Auth::Key(&admin_key),
            Some(json!({"name": "more", "scopes": ["ingest"]})),
        )
        .await;
    assert_eq!(
        escalation.status,
        StatusCode::FORBIDDEN,
        "{}",
        escalation.body
    );
    let unknown_scope = app
        .request(
            Method::POST,
            "/api/keys",
            Auth::Bearer(&admin.token),
            Some(json!({"name": "x", "scopes": ["root"]})),
        )
        .await;
    assert_eq!(unknown_scope.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn expired_and_revoked_keys_stop_working() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("lifecycle").await;
    let (key, id) = app
        .create_key(&admin.token, json!({"name": "temp", "scopes": ["query"]}))
        .await;
    assert_eq!(
        app.request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
            .await
            .status,
        StatusCode::OK
    );

    let revoked = app
        .request(
            Method::DELETE,
            &format!("/api/keys/{id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert!(revoked.body["data"]["revoked_at"].is_string());
    let after = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
        .await;
    assert_eq!(
        after.status,
        StatusCode::UNAUTHORIZED,
        "revocation applies at once, cache or not"
    );
    assert!(
        after.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let refused = app
        .request(
            Method::POST,
            "/api/keys",
            Auth::Bearer(&admin.token),
            Some(json!({"name": "old", "scopes": ["query"], "expires_at": past})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (short_lived, _) = app
        .create_key(
            &admin.token,
            json!({"name": "short", "scopes": ["query"], "expires_at": soon}),
        )
        .await;
    assert_eq!(
        app.request(Method::GET, "/api/auth/me", Auth::Key(&short_lived), None)
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let expired = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&short_lived), None)
        .await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(
        expired.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let wrong = app
        .request(
            Method::GET,
            "/api/auth/me",
            Auth::Key("iaf_not-a-real-key"),
            None,
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn each_use_is_counted_and_logged() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("usage").await;
    let (key, id) = app
        .create_key(
            &admin.token,
            json!({"name": "counted", "scopes": ["query", "admin"]}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(
            app.request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        app.request(
            Method::GET,
            "/api/keys/00000000-0000-0000-0000-000000000000",
            Auth::Key(&key),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    app.state.usage.flush().await;

    let one = app
        .request(
            Method::GET,
            &format!("/api/keys/{id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(one.body["data"]["usage_count"], 4, "{}", one.body);
    assert!(one.body["data"]["last_used_at"].is_string());
    app.state.usage.flush().await;

    let usage = app
        .request(Method::GET, "/api/usage", Auth::Bearer(&admin.token), None)
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.body);
    let top = usage.body["data"]["top_endpoints"].as_array().unwrap();
    let me = top
        .iter()
        .find(|e| e["endpoint"] == "/api/auth/me")
        .expect("the route is logged by its pattern");
    assert_eq!(me["requests"], 3);
    let not_found = top
        .iter()
        .find(|e| e["endpoint"] == "/api/keys/{id}")
        .unwrap();
    assert!(not_found["requests"].as_i64().unwrap() >= 1);

    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, admin.tenant_id)
        .await
        .unwrap();
    let statuses: Vec<i16> =
        sqlx::query_scalar("SELECT status FROM api_usage_logs WHERE key_id = $1::uuid ORDER BY id")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(statuses, vec![200, 200, 200, 404]);
}

#[tokio::test]
async fn a_key_limited_to_knowledge_bases_must_name_the_tenants_own() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("kb-a").await;
    let b = app.register("kb-b").await;
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, b.tenant_id)
        .await
        .unwrap();
    let b_kb: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO knowledge_bases (tenant_id, name, embedding, chunking) VALUES ($1, 'secret', '{}', '{}') RETURNING id",
    )
    .bind(b.tenant_id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let reply = app
        .request(
            Method::POST,
            "/api/keys",
            Auth::Bearer(&a.token),
            Some(json!({"name": "x", "scopes": ["query"], "knowledge_base_ids": [b_kb]})),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "another tenant's knowledge base does not exist for A"
    );
}

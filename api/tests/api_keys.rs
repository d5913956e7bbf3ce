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

/// Two knowledge bases of the tenant, inserted directly (no embedding is needed here).
async fn two_knowledge_bases(app: &TestApp, tenant_id: uuid::Uuid) -> (uuid::Uuid, uuid::Uuid) {
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, tenant_id)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for name in ["alpha", "beta"] {
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO knowledge_bases (tenant_id, name, embedding, chunking) VALUES ($1, $2, '{}', '{}') RETURNING id",
        )
        .bind(tenant_id)
        .bind(name)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    (ids[0], ids[1])
}

#[tokio::test]
async fn a_key_mints_only_keys_no_broader_than_itself() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("minting").await;
    let (alpha, beta) = two_knowledge_bases(&app, admin.tenant_id).await;
    let expires = chrono::Utc::now() + chrono::Duration::days(1);
    let (parent, parent_id) = app
        .create_key(
            &admin.token,
            json!({"name": "parent", "scopes": ["admin", "query"], "knowledge_base_ids": [alpha],
                   "rate_limit_per_minute": 10, "expires_at": expires.to_rfc3339()}),
        )
        .await;
    let mint = |body: serde_json::Value| {
        let app = &app;
        let parent = parent.clone();
        async move {
            app.request(Method::POST, "/api/keys", Auth::Key(&parent), Some(body))
                .await
        }
    };
    // Each broader field is refused with a 403 that names it.
    for (body, names) in [
        (
            json!({"name": "c", "scopes": ["query", "ingest"]}),
            "\"ingest\"".to_owned(),
        ),
        (
            json!({"name": "c", "scopes": ["query"], "knowledge_base_ids": [alpha, beta]}),
            beta.to_string(),
        ),
        (
            json!({"name": "c", "scopes": ["query"], "expires_at": (expires + chrono::Duration::days(1)).to_rfc3339()}),
            "expires_at".to_owned(),
        ),
        (
            json!({"name": "c", "scopes": ["query"], "rate_limit_per_minute": 11}),
            "rate_limit_per_minute: 11 is above this key's 10".to_owned(),
        ),
    ] {
        let reply = mint(body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{body}: {}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&names), "{body}: {message}");
    }
    // What the child leaves out it inherits: never unrestricted, never unlimited.
    let child = mint(json!({"name": "child", "scopes": ["query"]})).await;
    assert_eq!(child.status, StatusCode::CREATED, "{}", child.body);
    let child = &child.body["data"];
    assert_eq!(child["knowledge_base_ids"], json!([alpha]));
    assert_eq!(child["rate_limit_per_minute"], 10);
    let child_expiry: chrono::DateTime<chrono::Utc> =
        child["expires_at"].as_str().unwrap().parse().unwrap();
    assert!((child_expiry - expires).num_milliseconds().abs() < 1000);
    assert_eq!(child["created_by_key_id"], json!(parent_id));
    assert_eq!(child["user_id"], json!(admin.user_id));
    // Narrower in every way is fine.
    let narrower = mint(json!({"name": "narrow", "scopes": ["query"], "knowledge_base_ids": [alpha],
        "rate_limit_per_minute": 5, "expires_at": (expires - chrono::Duration::hours(1)).to_rfc3339()}))
    .await;
    assert_eq!(narrower.status, StatusCode::CREATED, "{}", narrower.body);
    // A signed-in tenant admin is not bound by any key.
    let (_, by_user) = app
        .create_key(
            &admin.token,
            json!({"name": "wide", "scopes": ["admin", "query", "ingest"]}),
        )
        .await;
    let listed = app
        .request(
            Method::GET,
            &format!("/api/keys/{by_user}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(
        listed.body["data"]["created_by_key_id"],
        serde_json::Value::Null
    );
}

async fn mint_with_key(app: &TestApp, key: &str, body: serde_json::Value) -> (String, String) {
    let reply = app
        .request(Method::POST, "/api/keys", Auth::Key(key), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    (
        reply.body["data"]["key"].as_str().unwrap().to_owned(),
        reply.body["data"]["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn revoking_a_key_revokes_what_it_minted() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("lineage").await;
    let (parent, parent_id) = app
        .create_key(
            &admin.token,
            json!({"name": "parent", "scopes": ["admin", "query"]}),
        )
        .await;
    let (child, child_id) = mint_with_key(
        &app,
        &parent,
        json!({"name": "child", "scopes": ["admin", "query"]}),
    )
    .await;
    let (grandchild, _) = mint_with_key(
        &app,
        &child,
        json!({"name": "grandchild", "scopes": ["query"]}),
    )
    .await;
    let (sibling, _) = app
        .create_key(
            &admin.token,
            json!({"name": "unrelated", "scopes": ["query"]}),
        )
        .await;
    for key in [&parent, &child, &grandchild, &sibling] {
        let me = app
            .request(Method::GET, "/api/auth/me", Auth::Key(key), None)
            .await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    }
    let revoked = app
        .request(
            Method::DELETE,
            &format!("/api/keys/{parent_id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    for key in [&parent, &child, &grandchild] {
        let me = app
            .request(Method::GET, "/api/auth/me", Auth::Key(key), None)
            .await;
        assert_eq!(
            me.status,
            StatusCode::UNAUTHORIZED,
            "cached or not: {}",
            me.body
        );
    }
    let child_view = app
        .request(
            Method::GET,
            &format!("/api/keys/{child_id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert!(
        child_view.body["data"]["revoked_at"].is_string(),
        "{}",
        child_view.body
    );
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&sibling), None)
        .await;
    assert_eq!(
        me.status,
        StatusCode::OK,
        "a key the revoked one did not mint still works"
    );

    // A key ends only its own lineage: the surviving sibling, an admin key, cannot cut
    // off the tenant's other keys, yet it can end a key it minted, and itself.
    let (admin_key, admin_key_id) = app
        .create_key(
            &admin.token,
            json!({"name": "delegated admin", "scopes": ["admin", "query"]}),
        )
        .await;
    let (other_admin_key, other_admin_key_id) = app
        .create_key(
            &admin.token,
            json!({"name": "other admin", "scopes": ["admin", "query"]}),
        )
        .await;
    let refused = app
        .request(
            Method::DELETE,
            &format!("/api/keys/{other_admin_key_id}"),
            Auth::Key(&admin_key),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let me = app
        .request(
            Method::GET,
            "/api/auth/me",
            Auth::Key(&other_admin_key),
            None,
        )
        .await;
    assert_eq!(
        me.status,
        StatusCode::OK,
        "a sibling key survives: {}",
        me.body
    );
    let (_, own_child_id) = mint_with_key(
        &app,
        &admin_key,
        json!({"name": "delegated child", "scopes": ["query"]}),
    )
    .await;
    for own in [&own_child_id, &admin_key_id] {
        let ended = app
            .request(
                Method::DELETE,
                &format!("/api/keys/{own}"),
                Auth::Key(&admin_key),
                None,
            )
            .await;
        assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    }

    // A key minted while its maker was being revoked (the revocation's update did not
    // see it) is refused too: authentication checks the whole lineage.
    let late = iafactory_api::auth::generate_api_key();
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO api_keys (tenant_id, user_id, name, key_prefix, key_hash, scopes, rate_limit_per_minute, created_by_key_id)
         VALUES ($1, $2, 'late', 'iaf_late', $3, '{query}', 10, $4::uuid)",
    )
    .bind(admin.tenant_id)
    .bind(admin.user_id)
    .bind(iafactory_api::auth::hash_api_key(&late))
    .bind(&child_id)
    .execute(&owner)
    .await
    .unwrap();
    owner.close().await;
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&late), None)
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
}

#[tokio::test]
async fn user_management_needs_a_signed_in_tenant_admin_not_a_key() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("no-key-admins").await;
    let (key, _) = app
        .create_key(
            &admin.token,
            json!({"name": "ops", "scopes": ["admin", "query", "ingest"]}),
        )
        .await;
    let created = app
        .request(Method::POST, "/api/users", Auth::Key(&key),
            Some(json!({"email": "evil@no-key-admins.dz", "password": "a password of its choosing", "role": "tenant_admin"})))
        .await;
    assert_eq!(created.status, StatusCode::FORBIDDEN, "{}", created.body);
    assert!(
        created.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("signed-in tenant administrator"),
        "{}",
        created.body
    );
    let user = app
        .request(
            Method::POST,
            "/api/users",
            Auth::Bearer(&admin.token),
            Some(json!({"email": "prof@no-key-admins.dz", "password": "another long password"})),
        )
        .await;
    assert_eq!(user.status, StatusCode::CREATED, "{}", user.body);
    let user_id = user.body["data"]["id"].as_str().unwrap().to_owned();
    let promoted = app
        .request(
            Method::PATCH,
            &format!("/api/users/{user_id}"),
            Auth::Key(&key),
            Some(json!({"role": "tenant_admin"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::FORBIDDEN, "{}", promoted.body);
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/api/users/{user_id}"),
            Auth::Key(&key),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::FORBIDDEN, "{}", deleted.body);
    let password = app
        .request(
            Method::POST,
            "/api/auth/password",
            Auth::Key(&key),
            Some(json!({"current_password": "x", "new_password": "a password of its choosing"})),
        )
        .await;
    assert_eq!(password.status, StatusCode::FORBIDDEN, "{}", password.body);
    // Reading the users stays open to an admin key.
    let listed = app
        .request(Method::GET, "/api/users", Auth::Key(&key), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    // The signed-in admin can do all of it.
    let promoted = app
        .request(
            Method::PATCH,
            &format!("/api/users/{user_id}"),
            Auth::Bearer(&admin.token),
            Some(json!({"role": "tenant_admin"})),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    assert_eq!(promoted.body["data"]["role"], "tenant_admin");
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/api/users/{user_id}"),
            Auth::Bearer(&admin.token),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
}

#[tokio::test]
async fn a_key_follows_its_owner_demoted_or_suspended() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let admin = app.register("owners").await;
    let created = app
        .request(Method::POST, "/api/users", Auth::Bearer(&admin.token),
            Some(json!({"email": "second@owners.dz", "password": "another long password", "role": "tenant_admin"})))
        .await;
    let second_id = created.body["data"]["id"].as_str().unwrap().to_owned();
    let login = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": "second@owners.dz", "password": "another long password"})),
        )
        .await;
    let second = login.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (key, _) = app
        .create_key(
            &second,
            json!({"name": "theirs", "scopes": ["admin", "query"]}),
        )
        .await;
    assert_eq!(
        app.request(Method::GET, "/api/keys", Auth::Key(&key), None)
            .await
            .status,
        StatusCode::OK
    );
    let demoted = app
        .request(
            Method::PATCH,
            &format!("/api/users/{second_id}"),
            Auth::Bearer(&admin.token),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{}", demoted.body);
    // Evicted on this replica: at once.
    let listed = app
        .request(Method::GET, "/api/keys", Auth::Key(&key), None)
        .await;
    assert_eq!(
        listed.status,
        StatusCode::FORBIDDEN,
        "a user's key has no admin scope: {}",
        listed.body
    );
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
        .await;
    assert_eq!(me.body["data"]["scopes"], json!(["query"]));
    let suspended = app
        .request(
            Method::PATCH,
            &format!("/api/users/{second_id}"),
            Auth::Bearer(&admin.token),
            Some(json!({"status": "suspended"})),
        )
        .await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.body);
    let me = app
        .request(Method::GET, "/api/auth/me", Auth::Key(&key), None)
        .await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{}", me.body);
}

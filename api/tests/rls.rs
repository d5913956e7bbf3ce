//! Tenant isolation at the SQL level: under the request role, one tenant's context
//! cannot read or write another tenant's rows, whatever the query says.

mod common;

use axum::http::{Method, StatusCode};
use common::{Auth, TestApp, TestDb};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

#[tokio::test]
async fn a_tenant_context_cannot_touch_another_tenants_rows() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("tenant-a").await;
    let b = app.register("tenant-b").await;
    let pool = &app.state.db;

    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(role, "iafactory_app", "requests run as the non-owner role");
    let bypass: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        !bypass,
        "the request role neither is a superuser nor bypasses RLS"
    );

    let mut tx = iafactory_api::db::tenant_tx(pool, a.tenant_id)
        .await
        .unwrap();
    // Reading: only A's rows exist, even when asked for B's by id.
    let tenants: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![a.tenant_id]);
    let users: Vec<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(users, vec![a.tenant_id]);
    let b_user: Option<Uuid> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
        .bind(b.user_id)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert_eq!(b_user, None);

    // Writing: updates and deletes of B's rows touch nothing.
    let updated = sqlx::query("UPDATE users SET role = 'user' WHERE id = $1")
        .bind(b.user_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(b.tenant_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 0);

    // Inserting a row for B from A's context violates the policy.
    let insert = sqlx::query("INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, 'mole@b.dz', 'x', 'admin')")
        .bind(b.tenant_id)
        .execute(&mut *tx)
        .await;
    let error = insert.expect_err("the policy's WITH CHECK refuses it");
    assert!(error.to_string().contains("row-level security"), "{error}");
    tx.rollback().await.unwrap();

    // Moving one of A's rows into B is refused too.
    let mut tx = iafactory_api::db::tenant_tx(pool, a.tenant_id)
        .await
        .unwrap();
    let moved = sqlx::query("UPDATE users SET tenant_id = $1 WHERE id = $2")
        .bind(b.tenant_id)
        .bind(a.user_id)
        .execute(&mut *tx)
        .await;
    assert!(moved.is_err(), "WITH CHECK applies to updates");
    tx.rollback().await.unwrap();

    // No context at all: nothing is visible.
    let mut connection = pool.acquire().await.unwrap();
    let visible: i64 = sqlx::query("SELECT count(*) FROM users")
        .fetch_one(&mut *connection)
        .await
        .unwrap()
        .get(0);
    assert_eq!(visible, 0, "without a tenant context no row is visible");

    // And B still has its admin, untouched.
    let mut tx = iafactory_api::db::tenant_tx(pool, b.tenant_id)
        .await
        .unwrap();
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(b.user_id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(role, "tenant_admin");
}

#[tokio::test]
async fn the_request_role_cannot_escape_its_tenant_by_resetting_the_context() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("ctx-a").await;
    app.register("ctx-b").await;
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, a.tenant_id)
        .await
        .unwrap();
    // Even a query that rewrites the setting only ever sees the tenant it names, and
    // the table owner's bypass does not apply to this role.
    sqlx::query("SELECT set_config('app.current_tenant_id', '', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

/// Full-text ranking runs in a SECURITY DEFINER function so that its GIN index can be
/// used (see migration 20261126000005): the function must confine itself exactly as the
/// policy would.
#[tokio::test]
async fn text_search_sees_only_the_current_tenants_chunks() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut knowledge_bases = Vec::new();
    for slug in ["text-a", "text-b"] {
        let tenant = app.register(slug).await;
        let reply = app
            .request(
                Method::POST,
                "/api/knowledge-bases",
                Auth::Bearer(&tenant.token),
                Some(json!({"name": "shared words"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        let kb: Uuid = reply.body["data"]["id"].as_str().unwrap().parse().unwrap();
        let chunk: Uuid = sqlx::query_scalar(
            "WITH d AS (
                 INSERT INTO documents (tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes, status)
                 VALUES ($1, $2, 'oasis', 'text/plain', $3, 10, 'ready') RETURNING id)
             INSERT INTO chunks (tenant_id, knowledge_base_id, document_id, ordinal, content, search_text)
             SELECT $1, $2, d.id, 0, 'the oasis well', 'the oasis well' FROM d RETURNING id",
        )
        .bind(tenant.tenant_id)
        .bind(kb)
        .bind(slug)
        .fetch_one(&owner)
        .await
        .unwrap();
        knowledge_bases.push((tenant.tenant_id, kb, chunk));
    }
    let [(a, a_kb, a_chunk), (_, b_kb, _)] = knowledge_bases[..] else {
        unreachable!()
    };

    let search = |kb: Uuid| {
        sqlx::query_scalar::<_, Uuid>(
            "SELECT id FROM search_chunks_text($1, to_tsquery('simple', 'oasis | well'), 10, NULL, NULL)",
        )
        .bind(kb)
    };
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, a)
        .await
        .unwrap();
    let own = search(a_kb).fetch_all(&mut *tx).await.unwrap();
    assert_eq!(own, vec![a_chunk], "a tenant finds its own chunk");
    let other = search(b_kb).fetch_all(&mut *tx).await.unwrap();
    assert!(
        other.is_empty(),
        "another tenant's knowledge base yields nothing: {other:?}"
    );
    tx.rollback().await.unwrap();

    let mut no_tenant = app.state.db.begin().await.unwrap();
    let unscoped = search(a_kb).fetch_all(&mut *no_tenant).await.unwrap();
    assert!(
        unscoped.is_empty(),
        "no tenant context, no rows: {unscoped:?}"
    );
}

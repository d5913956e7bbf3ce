//! Tenant isolation at the SQL level: under the request role, one tenant's context
//! cannot read or write another tenant's rows, whatever the query says.

mod common;

use common::{TestApp, TestDb};
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

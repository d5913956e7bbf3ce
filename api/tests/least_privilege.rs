//! Least privilege below the API (#19 item 7): the request pool logs in as
//! `iafactory_app`, so a statement that `RESET ROLE`s, `SET ROLE`s or alters a table
//! (say, through an injection) gains nothing. Each test runs on a connection of the
//! served pool, exactly as a request's query would.

mod common;

use common::{TestApp, TestDb};
use sqlx::pool::PoolConnection;
use sqlx::{Executor, Postgres};
use uuid::Uuid;

/// A connection of the request pool that has already `RESET ROLE`: what an injected
/// statement would start from.
async fn reset_connection(app: &TestApp) -> PoolConnection<Postgres> {
    let mut connection = app.state.db.acquire().await.unwrap();
    connection.execute("RESET ROLE").await.unwrap();
    connection
}

/// The owner's pool, to write what the serving role may not (another tenant's rows).
async fn owner(db: &TestDb) -> sqlx::PgPool {
    sqlx::PgPool::connect(&db.url).await.unwrap()
}

async fn insert_document(owner: &sqlx::PgPool, tenant: Uuid) -> Uuid {
    let kb: Uuid = sqlx::query_scalar(
        "INSERT INTO knowledge_bases (tenant_id, name, embedding, chunking) VALUES ($1, 'private', '{}', '{}') RETURNING id",
    )
    .bind(tenant)
    .fetch_one(owner)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO documents (tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes)
         VALUES ($1, $2, 'secret plans', 'text/plain', 'h', 1) RETURNING id",
    )
    .bind(tenant)
    .bind(kb)
    .fetch_one(owner)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_serving_login_is_neither_a_superuser_nor_the_tables_owner() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let mut connection = reset_connection(&app).await;
    let (session, current): (String, String) =
        sqlx::query_as("SELECT session_user::text, current_user::text")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
    assert_eq!(
        session,
        iafactory_api::db::APP_ROLE,
        "the pool logs in as the app role"
    );
    assert_eq!(current, session, "RESET ROLE lands on the app role itself");
    let (superuser, bypass, create_role, create_db): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    assert!(!superuser && !bypass && !create_role && !create_db);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    assert_eq!(owned, 0, "the serving role owns no table");
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'documents'")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
    assert_ne!(owner, current);
    // It is a member of no role with more rights (the owner among them).
    let memberships: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
         WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    assert_eq!(memberships, 0);
}

#[tokio::test]
async fn reset_role_sees_no_other_tenants_documents() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let a = app.register("priv-a").await;
    let b = app.register("priv-b").await;
    let owner = owner(&db).await;
    let secret = insert_document(&owner, b.tenant_id).await;

    // Outside any tenant context.
    let mut connection = reset_connection(&app).await;
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert_eq!(visible, 0);
    drop(connection);

    // Inside tenant A's transaction, resetting the role and asking for B's row by id.
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, a.tenant_id)
        .await
        .unwrap();
    tx.execute("RESET ROLE").await.unwrap();
    let seen: Option<String> = sqlx::query_scalar("SELECT title FROM documents WHERE id = $1")
        .bind(secret)
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        seen, None,
        "A's context, role reset, still cannot read B's document"
    );
    let deleted = sqlx::query("DELETE FROM documents")
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 0);
    tx.commit().await.unwrap();
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE id = $1")
        .bind(secret)
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(still, 1);
}

#[tokio::test]
async fn the_serving_login_cannot_switch_role_or_lift_row_level_security() {
    let db = TestDb::new().await;
    let app = TestApp::new(&db).await;
    let b = app.register("priv-c").await;
    let owner_pool = owner(&db).await;
    insert_document(&owner_pool, b.tenant_id).await;
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'documents'")
            .fetch_one(&owner_pool)
            .await
            .unwrap();
    let mut connection = reset_connection(&app).await;

    let switched = connection
        .execute(format!("SET ROLE \"{owner}\"").as_str())
        .await;
    let error = switched.expect_err("SET ROLE to the owner must be refused");
    assert!(error.to_string().contains("permission denied"), "{error}");

    for statement in [
        "ALTER TABLE documents DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE documents NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON documents",
        "CREATE POLICY everything ON documents USING (true)",
        "CREATE TABLE stolen (id int)",
        "CREATE FUNCTION sneak() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER ROLE iafactory_app BYPASSRLS",
        "SET session_authorization = 'postgres'",
    ] {
        let result = connection.execute(statement).await;
        let error = result.expect_err(statement);
        let text = error.to_string();
        assert!(
            text.contains("must be owner")
                || text.contains("permission denied")
                || text.contains("must have")
                || text.contains("not allowed"),
            "{statement}: {text}"
        );
    }
    // The one document is still invisible to the serving role.
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert_eq!(visible, 0);
}

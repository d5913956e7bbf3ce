//! The database: the pool, the migrations, and the tenant-scoped transaction every
//! tenant-owned query goes through.
//!
//! Two roles: the owner (`IAF_DATABASE_URL`) applies the migrations and gives the
//! serving role its password, on one connection at start-up that is then closed; every
//! request and background job runs on the pool, logged in as [`APP_ROLE`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The login role requests are served as: it owns nothing, is no superuser, cannot
/// bypass row-level security and is a member of no other role, so neither `RESET ROLE`
/// nor `SET ROLE` gives a query more than the policies allow.
pub const APP_ROLE: &str = "iafactory_app";

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("IAF_DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("applying the database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "cannot let the serving role {APP_ROLE} log in with IAF_DATABASE_APP_PASSWORD (the role in IAF_DATABASE_URL needs CREATEROLE, or create {APP_ROLE} as LOGIN with that password yourself): {0}"
    )]
    AppRole(#[source] sqlx::Error),
    #[error("the serving role {APP_ROLE} cannot connect with IAF_DATABASE_APP_PASSWORD: {0}")]
    AppConnect(#[source] sqlx::Error),
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = url.parse().map_err(DbError::BadUrl)?;
    Ok(options
        .log_statements(tracing::log::LevelFilter::Trace)
        .application_name("iafactory-api"))
}

/// Applies the embedded migrations as the connecting role (the database owner).
pub async fn migrate(url: &str) -> Result<(), DbError> {
    let mut connection = options(url)?.connect().await.map_err(DbError::Connect)?;
    MIGRATOR.run(&mut connection).await?;
    Ok(())
}

/// The serving role's options: the host and database of the owner's URL, logged in as
/// [`APP_ROLE`] with its own password.
fn app_options(owner_url: &str, app_password: &str) -> Result<PgConnectOptions, DbError> {
    Ok(options(owner_url)?
        .username(APP_ROLE)
        .password(app_password))
}

/// As the owner, lets [`APP_ROLE`] log in with `app_password`, unless it already can.
/// The role's other attributes (no superuser, no BYPASSRLS, no membership) come from the
/// migrations; restores recreate it from the dump's roles, without passwords, and the
/// next start gives it its password again.
pub async fn provision_app_role(owner_url: &str, app_password: &str) -> Result<(), DbError> {
    if let Ok(connection) = app_options(owner_url, app_password)?.connect().await {
        let _ = connection.close().await;
        return Ok(());
    }
    // The password never goes to the log, not even at trace level.
    let mut owner = options(owner_url)?
        .disable_statement_logging()
        .connect()
        .await
        .map_err(DbError::Connect)?;
    // ALTER ROLE takes no bind parameters: the server quotes the password itself.
    let statement: String = sqlx::query_scalar(
        "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
    )
    .bind(APP_ROLE)
    .bind(app_password)
    .fetch_one(&mut owner)
    .await
    .map_err(DbError::AppRole)?;
    // Roles are cluster-wide: API replicas (or databases of one cluster) starting at
    // once may update the role together, which PostgreSQL refuses as a concurrent
    // update. The value is the same, so trying again is enough.
    let mut attempt = 0;
    loop {
        match owner.execute(statement.as_str()).await {
            Ok(_) => break,
            Err(e) if attempt < 5 && e.to_string().contains("concurrently") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(DbError::AppRole(e)),
        }
    }
    let _ = owner.close().await;
    Ok(())
}

/// The request pool, logged in as [`APP_ROLE`] (never the owner), so row-level
/// security applies to every query the API makes, and no statement can switch back to
/// a role that it does not.
pub async fn connect(
    owner_url: &str,
    app_password: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(app_options(owner_url, app_password)?)
        .await
        .map_err(DbError::AppConnect)
}

/// Opens a transaction bound to one tenant: `app.current_tenant_id` is set for this
/// transaction only (`SET LOCAL`), and the RLS policies read it.
pub async fn tenant_tx(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(tenant_id.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

//! The database: the pool, the migrations, and the tenant-scoped transaction every
//! tenant-owned query goes through.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The role requests run as: it owns nothing and cannot bypass row-level security.
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

/// The request pool. Every connection drops to [`APP_ROLE`], so row-level security
/// applies to every query the API makes, whatever role the URL names.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection
                    .execute(format!("SET ROLE {APP_ROLE}").as_str())
                    .await?;
                Ok(())
            })
        })
        .connect_with(options(url)?)
        .await
        .map_err(DbError::Connect)
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

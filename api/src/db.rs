//! The database: the pool, the migrations, and the tenant-scoped transaction every
//! tenant-owned query goes through.
//!
//! Two roles: the owner (`IAF_DATABASE_URL`) applies the migrations and gives the
//! serving role its password (`iafactory-api migrate`, which both drivers run before the
//! API starts; or, in a single-process setup, on one connection at start-up that is then
//! closed); every request and background job runs on the pool, logged in as
//! [`APP_ROLE`]. Served from `IAF_DATABASE_APP_URL`, the API never sees the owner's
//! credentials: it checks the role it logged in as and that the schema has every
//! migration it embeds ([`check_schema`]), and refuses to start otherwise.

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
    #[error("IAF_DATABASE_APP_URL is not a valid PostgreSQL URL: {0}")]
    BadAppUrl(#[source] sqlx::Error),
    #[error("cannot connect with IAF_DATABASE_APP_URL: {0}")]
    AppUrlConnect(#[source] sqlx::Error),
    #[error(
        "IAF_DATABASE_APP_URL logs in as {role:?}, which {why}: requests must be served by a login role that is neither the database owner nor a superuser ({APP_ROLE})"
    )]
    PrivilegedServingRole { role: String, why: &'static str },
    #[error("cannot read which migrations are applied: {0}")]
    SchemaCheck(#[source] sqlx::Error),
    #[error(
        "the database schema is behind this API: {} not applied ({}); run `iafactory-api migrate` with the owner's IAF_DATABASE_URL first (both drivers run it before the API starts)",
        if .0.len() == 1 { "migration" } else { "migrations" },
        .0.join(", ")
    )]
    SchemaBehind(Vec<String>),
    #[error(
        "migration {0} was applied with other content than this API embeds: the schema and the API do not match; restore the migration file or the database"
    )]
    SchemaDiverged(String),
}

/// The migration from which [`APP_ROLE`] may read `_sqlx_migrations`: a schema where it
/// may not lacks at least this one.
pub const READ_VERSIONS_MIGRATION: i64 = 20261208010000;

/// One row of `_sqlx_migrations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedVersion {
    pub version: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// The embedded migrations the schema lacks, as `VERSION (description)`, in order; a
/// failed one counts as missing. A version applied that this API does not embed (a
/// newer API migrated it) is not an error: migrations only add.
pub fn missing_migrations(
    migrator: &sqlx::migrate::Migrator,
    applied: &[AppliedVersion],
) -> Result<Vec<String>, DbError> {
    let mut missing = Vec::new();
    for migration in migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        let named = format!("{} ({})", migration.version, migration.description);
        match applied.iter().find(|a| a.version == migration.version) {
            Some(a) if a.success && a.checksum.as_slice() != &*migration.checksum => {
                return Err(DbError::SchemaDiverged(named));
            }
            Some(a) if a.success => {}
            _ => missing.push(named),
        }
    }
    Ok(missing)
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

/// The request pool from the serving role's own URL (`IAF_DATABASE_APP_URL`), for an
/// API that never holds the owner's credentials. Refuses a superuser, a role that
/// bypasses row-level security, and the database's owner.
pub async fn connect_app(app_url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions = app_url.parse().map_err(DbError::BadAppUrl)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(
            options
                .log_statements(tracing::log::LevelFilter::Trace)
                .application_name("iafactory-api"),
        )
        .await
        .map_err(DbError::AppUrlConnect)?;
    let (role, superuser, bypass, owner): (String, bool, bool, bool) = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls, d.datdba = r.oid
         FROM pg_roles r, pg_database d
         WHERE r.rolname = session_user AND d.datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .map_err(DbError::AppUrlConnect)?;
    let why = if superuser {
        Some("is a superuser")
    } else if bypass {
        Some("bypasses row-level security")
    } else if owner {
        Some("owns the database")
    } else {
        None
    };
    if let Some(why) = why {
        return Err(DbError::PrivilegedServingRole { role, why });
    }
    Ok(pool)
}

/// Refuses to serve on a schema that lacks a migration this API embeds, naming each:
/// the serving role cannot migrate, so the `migrate` step must have run.
pub async fn check_schema(pool: &PgPool) -> Result<(), DbError> {
    let applied: Vec<(i64, bool, Vec<u8>)> =
        match sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P01") | Some("42501")) =>
            {
                // No table (never migrated), or one this role may not read yet (the
                // schema predates READ_VERSIONS_MIGRATION): every migration from the
                // first it cannot see is missing.
                let floor = if e.code().as_deref() == Some("42501") {
                    READ_VERSIONS_MIGRATION
                } else {
                    i64::MIN
                };
                let missing: Vec<String> = MIGRATOR
                    .iter()
                    .filter(|m| !m.migration_type.is_down_migration() && m.version >= floor)
                    .map(|m| format!("{} ({})", m.version, m.description))
                    .collect();
                return Err(DbError::SchemaBehind(missing));
            }
            Err(e) => return Err(DbError::SchemaCheck(e)),
        };
    let applied: Vec<AppliedVersion> = applied
        .into_iter()
        .map(|(version, success, checksum)| AppliedVersion {
            version,
            success,
            checksum,
        })
        .collect();
    let missing = missing_migrations(&MIGRATOR, &applied)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DbError::SchemaBehind(missing))
    }
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

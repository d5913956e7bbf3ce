//! Migrations as a step of their own (#19 item 7): `iafactory-api migrate` runs as the
//! database owner with nothing but the owner's URL and the serving role's password, and
//! `serve` given only the serving role's URL (`IAF_DATABASE_APP_URL`, what both drivers
//! give it) never migrates, refuses the owner or a superuser, and refuses a schema that
//! lacks a migration it embeds, naming it.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{DATABASE_APP_PASSWORD, JWT_SECRET, TestDb, config};
use iafactory_api::config::{Config, Secret};
use iafactory_api::db::{APP_ROLE, MIGRATOR, READ_VERSIONS_MIGRATION};

/// The same host and database as `owner_url`, logged in as `user:password`.
fn url_as(owner_url: &str, user: &str, password: &str) -> String {
    let (_, rest) = owner_url.split_once("://").unwrap();
    let (_, host_and_db) = rest.rsplit_once('@').unwrap();
    format!("postgres://{user}:{password}@{host_and_db}")
}

/// Runs the real binary with only `env` (and PATH): nothing leaks in from the test's
/// environment. Killed after a minute.
fn run_api(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_iafactory-api"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("IAF_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `serve` as the drivers run it: the app role's URL, no owner URL.
fn served_config(db: &TestDb) -> Config {
    Config {
        database_url: String::new(),
        database_app_password: Secret::default(),
        database_app_url: Secret(url_as(&db.url, APP_ROLE, DATABASE_APP_PASSWORD)),
        ..config(db)
    }
}

fn named(version: i64) -> String {
    let migration = MIGRATOR.iter().find(|m| m.version == version).unwrap();
    format!("{} ({})", migration.version, migration.description)
}

#[tokio::test]
async fn serve_from_the_app_url_runs_on_a_migrated_schema_and_refuses_one_that_is_behind() {
    let db = TestDb::new().await;
    // The init step: the owner's URL and the app role's password, and nothing else
    // (no JWT key, no listener).
    let migrated = run_api(
        &["migrate"],
        &[
            ("IAF_DATABASE_URL", &db.url),
            ("IAF_DATABASE_APP_PASSWORD", DATABASE_APP_PASSWORD),
        ],
    );
    assert!(migrated.status.success(), "{}", text(&migrated));

    // Serving from the app URL alone works, as the app role, without migrating.
    let state = iafactory_api::server::prepare(served_config(&db))
        .await
        .expect("serve starts on a migrated schema");
    let session: String = sqlx::query_scalar("SELECT session_user::text")
        .fetch_one(&state.db)
        .await
        .unwrap();
    assert_eq!(session, APP_ROLE);
    state.db.close().await;

    // A migration goes missing (one that applying again changes nothing): serve
    // refuses, naming it, and applies nothing.
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let newest = READ_VERSIONS_MIGRATION;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&owner)
        .await
        .unwrap();
    let refused = match iafactory_api::server::prepare(served_config(&db)).await {
        Ok(_) => panic!("serve started on a schema without migration {newest}"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("schema is behind") && refused.contains(&named(newest)),
        "{refused}"
    );
    assert!(refused.contains("iafactory-api migrate"), "{refused}");
    let still_missing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
            .bind(newest)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(still_missing, 0, "serve never migrates");

    // The real binary, as a driver starts it, exits at start with the same message.
    let app_url = url_as(&db.url, APP_ROLE, DATABASE_APP_PASSWORD);
    let served = run_api(
        &["serve"],
        &[
            ("IAF_DATABASE_APP_URL", &app_url),
            ("IAF_JWT_SECRET", JWT_SECRET),
            ("IAF_LISTEN", "127.0.0.1:0"),
            ("IAF_INTERNAL_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(!served.status.success(), "{}", text(&served));
    assert!(text(&served).contains(&named(newest)), "{}", text(&served));

    // A schema from before the app role could read the versions: every migration
    // from that one on is named.
    sqlx::query("REVOKE SELECT ON _sqlx_migrations FROM iafactory_app")
        .execute(&owner)
        .await
        .unwrap();
    let refused = match iafactory_api::server::prepare(served_config(&db)).await {
        Ok(_) => panic!("serve started on a schema it cannot check"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains(&named(READ_VERSIONS_MIGRATION)),
        "{refused}"
    );

    // `migrate` brings it back, and serve starts again.
    let migrated = run_api(
        &["migrate"],
        &[
            ("IAF_DATABASE_URL", &db.url),
            ("IAF_DATABASE_APP_PASSWORD", DATABASE_APP_PASSWORD),
        ],
    );
    assert!(migrated.status.success(), "{}", text(&migrated));
    let state = iafactory_api::server::prepare(served_config(&db))
        .await
        .expect("serve starts once migrated");
    state.db.close().await;
    owner.close().await;
}

#[tokio::test]
async fn serve_from_the_app_url_refuses_the_owner_and_a_superuser() {
    let db = TestDb::new().await;
    // The test server's owner is its superuser: given as the app URL, it is refused.
    let superuser = Config {
        database_app_url: Secret(db.url.clone()),
        ..served_config(&db)
    };
    let refused = match iafactory_api::server::prepare(superuser).await {
        Ok(_) => panic!("serve started as a superuser"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("is a superuser"), "{refused}");

    // Both URLs at once: refused before anything connects.
    let both = run_api(
        &["serve"],
        &[
            ("IAF_DATABASE_URL", &db.url),
            (
                "IAF_DATABASE_APP_URL",
                &url_as(&db.url, APP_ROLE, DATABASE_APP_PASSWORD),
            ),
            ("IAF_JWT_SECRET", JWT_SECRET),
        ],
    );
    assert!(!both.status.success());
    assert!(
        text(&both).contains("must not hold the owner's credentials"),
        "{}",
        text(&both)
    );
}

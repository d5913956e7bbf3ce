//! Copies one knowledge base's vectors from PostgreSQL (pgvector) into Qdrant, through
//! the platform's own Qdrant backend, and waits until Qdrant has indexed them: so that
//! `scripts/bench-rag` measures both stores on the same data in one run.
//!
//!   IAF_DATABASE_URL=... IAF_QDRANT_URL=... cargo run --release --example qdrant_load -- KB_ID

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use iafactory_api::rag::qdrant::{QdrantSettings, QdrantStore, UPSERT_BATCH, collection_name};
use iafactory_api::rag::store::{Scope, VectorPoint, VectorStore};
use iafactory_crds::Language;
use qdrant_client::qdrant::CollectionStatus;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let knowledge_base_id: Uuid = std::env::args()
        .nth(1)
        .context("usage: qdrant_load KNOWLEDGE_BASE_ID")?
        .parse()?;
    let database_url = std::env::var("IAF_DATABASE_URL").context("IAF_DATABASE_URL")?;
    let qdrant_url = std::env::var("IAF_QDRANT_URL").context("IAF_QDRANT_URL")?;
    let pool = sqlx::PgPool::connect(&database_url).await?;
    let tenant_id: Uuid = sqlx::query_scalar("SELECT tenant_id FROM knowledge_bases WHERE id = $1")
        .bind(knowledge_base_id)
        .fetch_one(&pool)
        .await?;
    let scope = Scope {
        tenant_id,
        knowledge_base_id,
    };
    let store = QdrantStore::new(&QdrantSettings {
        url: qdrant_url.clone(),
        api_key: std::env::var("IAF_QDRANT_API_KEY").ok(),
        timeout: Duration::from_secs(60),
    })?;

    let started = Instant::now();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.current_tenant_id', $1, true)")
        .bind(tenant_id.to_string())
        .execute(&mut *tx)
        .await?;
    let mut rows = sqlx::query_as::<_, (Uuid, Uuid, Option<String>, pgvector::Vector)>(
        "SELECT id, document_id, language, embedding FROM chunks
         WHERE knowledge_base_id = $1 AND embedding IS NOT NULL",
    )
    .bind(knowledge_base_id)
    .fetch(&mut *tx);
    let mut batch = Vec::with_capacity(UPSERT_BATCH);
    let mut copied = 0usize;
    let mut ensured = false;
    while let Some((chunk_id, document_id, language, vector)) = rows.try_next().await? {
        let vector = vector.to_vec();
        if !ensured {
            store.ensure_collection(scope, vector.len()).await?;
            ensured = true;
        }
        batch.push(VectorPoint {
            chunk_id,
            document_id,
            language: language
                .and_then(|code| serde_json::from_value::<Language>(code.into()).ok()),
            vector,
        });
        if batch.len() == UPSERT_BATCH {
            store.upsert(scope, &batch).await?;
            copied += batch.len();
            batch.clear();
        }
    }
    store.upsert(scope, &batch).await?;
    copied += batch.len();
    drop(rows);
    tx.commit().await?;
    eprintln!(
        "copied {copied} vectors into Qdrant in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Qdrant indexes in the background; searching before it is done would measure a
    // brute-force scan.
    let client = qdrant_client::Qdrant::from_url(&qdrant_url)
        .api_key(std::env::var("IAF_QDRANT_API_KEY").ok())
        .skip_compatibility_check()
        .build()?;
    // Qdrant reports `Green` once its optimizers are done (the HNSW index built);
    // searching earlier would measure a brute-force scan.
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let info = client
            .collection_info(collection_name(knowledge_base_id))
            .await?
            .result
            .context("no collection info")?;
        let points = info.points_count.unwrap_or(0);
        let indexed = info.indexed_vectors_count.unwrap_or(0);
        if points as usize == copied && info.status == CollectionStatus::Green as i32 {
            eprintln!(
                "indexed {indexed} of {points} vectors ({} segments; smaller ones stay unindexed by design) in {:.1} s",
                info.segments_count,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Qdrant indexed {indexed} of {points} vectors within the deadline");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

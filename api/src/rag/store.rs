//! Vector storage behind one trait. pgvector is the default: the vectors live in the
//! `chunks` rows, each knowledge base with its own HNSW index. The trait is shaped for
//! Qdrant as well (see [`VectorStore`] for how each call maps onto it).

use async_trait::async_trait;
use iafactory_crds::Language;
use pgvector::Vector;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::db::tenant_tx;

/// Whose vectors: every operation is confined to one tenant's knowledge base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub tenant_id: Uuid,
    pub knowledge_base_id: Uuid,
}

/// One chunk's vector and the payload searches filter on.
#[derive(Debug, Clone)]
pub struct VectorPoint {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub language: Option<Language>,
    /// Unit length: the embedders normalise, so cosine is a dot product.
    pub vector: Vec<f32>,
}

/// What a search may return within its scope. Empty: the whole knowledge base.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VectorFilter {
    /// Only chunks of these documents.
    pub document_ids: Option<Vec<Uuid>>,
    /// Only chunks in this language.
    pub language: Option<Language>,
}

impl VectorFilter {
    pub fn is_empty(&self) -> bool {
        self.document_ids.is_none() && self.language.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub chunk_id: Uuid,
    /// Cosine similarity, 1 for identical directions.
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the {store} vector store is unavailable during {operation}: {reason}")]
    Unavailable {
        store: &'static str,
        operation: &'static str,
        reason: String,
    },
    #[error("the {store} vector store refused {operation}: {reason}")]
    Rejected {
        store: &'static str,
        operation: &'static str,
        reason: String,
    },
}

impl StoreError {
    /// Worth retrying later: the store is down or overloaded, not the request wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    fn pgvector(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |error| match error {
            sqlx::Error::Database(db) => StoreError::Rejected {
                store: "pgvector",
                operation,
                reason: db.to_string(),
            },
            other => StoreError::Unavailable {
                store: "pgvector",
                operation,
                reason: other.to_string(),
            },
        }
    }
}

/// Where a knowledge base's vectors live.
///
/// The contract, for every implementation:
/// - Every call names its [`Scope`], and touches nothing outside it. A search returns
///   only points of that tenant's knowledge base, whatever the filter says.
/// - A point is identified by its chunk id: upserting it again replaces it.
/// - Deletions are idempotent: deleting what is not there succeeds.
/// - Scores are cosine similarities (higher is better); results come best first.
/// - Errors say whether they are transient ([`StoreError::is_transient`]): ingestion
///   retries those with backoff, and search falls back to full text.
///
/// How it maps onto the two stores:
///
/// | call                | pgvector (default)                                   | Qdrant                                                      |
/// |---------------------|------------------------------------------------------|-------------------------------------------------------------|
/// | `ensure_collection` | a partial HNSW index (cosine) on the knowledge base's rows | create the collection (size, `Distance::Cosine`) and payload indexes on `tenant_id`, `knowledge_base_id`, `document_id`, `language` |
/// | `upsert`            | set `chunks.embedding` of rows already inserted      | upsert points: id = chunk id, payload = tenant, knowledge base, document, language |
/// | `delete_document`   | clear the document's vectors                         | delete by filter `document_id`, in the live and next collections |
/// | `delete_collection` | drop the index                                       | delete the live and next collections                        |
/// | `search`            | `ORDER BY embedding <=> $q` in the tenant's RLS transaction, `WHERE tenant_id AND knowledge_base_id` | query with a `must` filter on `tenant_id` and `knowledge_base_id` (always, even in a per-knowledge-base collection), plus the [`VectorFilter`] |
/// | `next_collection`   | None: re-embedding writes `chunk_embeddings_next`    | the next generation's collection, which replaces the live one at the switch |
///
/// Chunk text, titles and full-text search stay in PostgreSQL whatever the vector
/// store: it returns chunk ids and scores only.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// `pgvector` or `qdrant`, for logs and metrics.
    fn kind(&self) -> &'static str;
    /// Prepares a knowledge base's collection for vectors of this size. Idempotent.
    async fn ensure_collection(&self, scope: Scope, dimensions: usize) -> Result<(), StoreError>;
    /// Stores points, in one batch, replacing those with the same chunk ids.
    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError>;
    /// Removes a document's points.
    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError>;
    /// Removes the knowledge base's collection and every point in it.
    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError>;
    /// The `limit` chunks nearest to `vector` in the knowledge base, best first.
    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, StoreError>;
    /// Whether the store answers (readiness).
    async fn ready(&self) -> bool;
    /// How this store re-embeds a knowledge base (`rag::reembed`): None, in PostgreSQL's
    /// `chunk_embeddings_next` (pgvector, whose vectors are rows); Some, into a next
    /// collection that replaces the live one at the switch (Qdrant).
    fn next_collection(&self) -> Option<&dyn NextCollection> {
        None
    }
}

/// A knowledge base's next collection, for a store whose vectors live outside
/// PostgreSQL: re-embedding fills it with the pending model's vectors while searches,
/// ingestion and [`VectorStore`]'s calls keep using the live collection, until
/// [`NextCollection::promote`] makes it the live one. Deleting a document or the
/// knowledge base through [`VectorStore`] deletes from both.
#[async_trait]
pub trait NextCollection: Send + Sync {
    /// Whether the knowledge base has a next collection.
    async fn exists(&self, scope: Scope) -> Result<bool, StoreError>;
    /// Starts the next collection afresh for vectors of `dimensions`, dropping an
    /// earlier one. A missing live collection is created first, for `live_dimensions`,
    /// so that the next one never serves searches before [`NextCollection::promote`].
    async fn create(
        &self,
        scope: Scope,
        live_dimensions: usize,
        dimensions: usize,
    ) -> Result<(), StoreError>;
    /// Stores points in the next collection, replacing those with the same chunk ids.
    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError>;
    /// How many points of the scope the next collection holds (exact).
    async fn count(&self, scope: Scope) -> Result<u64, StoreError>;
    /// Drops the next collection (a re-embedding cancelled). Idempotent.
    async fn discard(&self, scope: Scope) -> Result<(), StoreError>;
    /// Makes the next collection the live one: the earlier ones are dropped, in one
    /// call that every API replica sees at once.
    async fn promote(&self, scope: Scope) -> Result<(), StoreError>;
}

pub struct PgVectorStore {
    pool: PgPool,
}

impl PgVectorStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The index that serves a knowledge base's searches (see the migrations'
    /// `ensure_vector_index`).
    pub fn index_name(knowledge_base_id: Uuid) -> String {
        format!("chunks_hnsw_{}", knowledge_base_id.simple())
    }

    /// A transaction in the tenant's RLS context, with the search settings, in one
    /// round trip.
    async fn search_tx(
        &self,
        tenant_id: Uuid,
        filtered: bool,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // ef_search 100 keeps recall up; a filtered search scans the graph further
        // until it has enough matching rows (pgvector's iterative scans).
        sqlx::query(
            "SELECT set_config('app.current_tenant_id', $1, true),
                    set_config('hnsw.ef_search', '100', true),
                    set_config('hnsw.iterative_scan', $2, true)",
        )
        .bind(tenant_id.to_string())
        .bind(if filtered { "relaxed_order" } else { "off" })
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }
}

#[async_trait]
impl VectorStore for PgVectorStore {
    fn kind(&self) -> &'static str {
        "pgvector"
    }

    async fn ensure_collection(&self, scope: Scope, dimensions: usize) -> Result<(), StoreError> {
        let failed = || StoreError::pgvector("ensure_collection");
        let mut tx = tenant_tx(&self.pool, scope.tenant_id)
            .await
            .map_err(failed())?;
        sqlx::query("SELECT ensure_vector_index($1, $2)")
            .bind(scope.knowledge_base_id)
            .bind(dimensions as i32)
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        tx.commit().await.map_err(failed())
    }

    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let failed = || StoreError::pgvector("upsert");
        let ids: Vec<Uuid> = points.iter().map(|p| p.chunk_id).collect();
        let vectors: Vec<Vector> = points
            .iter()
            .map(|p| Vector::from(p.vector.clone()))
            .collect();
        let mut tx = tenant_tx(&self.pool, scope.tenant_id)
            .await
            .map_err(failed())?;
        let updated = sqlx::query(
            "UPDATE chunks SET embedding = v.embedding
             FROM UNNEST($1::uuid[], $2::vector[]) AS v(id, embedding)
             WHERE chunks.id = v.id AND chunks.tenant_id = $3 AND chunks.knowledge_base_id = $4",
        )
        .bind(&ids)
        .bind(&vectors)
        .bind(scope.tenant_id)
        .bind(scope.knowledge_base_id)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        if updated.rows_affected() != points.len() as u64 {
            return Err(StoreError::Rejected {
                store: "pgvector",
                operation: "upsert",
                reason: format!(
                    "{} of {} chunks are not in knowledge base {}",
                    points.len() as u64 - updated.rows_affected(),
                    points.len(),
                    scope.knowledge_base_id
                ),
            });
        }
        tx.commit().await.map_err(failed())
    }

    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError> {
        let failed = || StoreError::pgvector("delete_document");
        let mut tx = tenant_tx(&self.pool, scope.tenant_id)
            .await
            .map_err(failed())?;
        sqlx::query(
            "UPDATE chunks SET embedding = NULL
             WHERE document_id = $1 AND tenant_id = $2 AND knowledge_base_id = $3",
        )
        .bind(document_id)
        .bind(scope.tenant_id)
        .bind(scope.knowledge_base_id)
        .execute(&mut *tx)
        .await
        .map_err(failed())?;
        tx.commit().await.map_err(failed())
    }

    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError> {
        let failed = || StoreError::pgvector("delete_collection");
        let mut tx = tenant_tx(&self.pool, scope.tenant_id)
            .await
            .map_err(failed())?;
        sqlx::query("SELECT drop_vector_index($1)")
            .bind(scope.knowledge_base_id)
            .execute(&mut *tx)
            .await
            .map_err(failed())?;
        tx.commit().await.map_err(failed())
    }

    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let failed = || StoreError::pgvector("search");
        // The knowledge base's index is partial (`WHERE knowledge_base_id = '<id>'`) and
        // on `embedding::vector(<dimensions>)`: the query names both as literals so the
        // planner can use it whatever plan it caches. The dimensions are the query
        // vector's: a knowledge base holds vectors of one size only, the embedder's.
        let dimensions = vector.len();
        let mut tx = self
            .search_tx(scope.tenant_id, !filter.is_empty())
            .await
            .map_err(failed())?;
        let mut rows: Vec<(Uuid, f64)> = sqlx::query_as(&format!(
            "SELECT id, 1 - (embedding::vector({dimensions}) <=> $1::vector({dimensions})) AS score
             FROM chunks
             WHERE tenant_id = $2 AND knowledge_base_id = '{knowledge_base}' AND embedding IS NOT NULL
               AND ($4::uuid[] IS NULL OR document_id = ANY($4))
               AND ($5::text IS NULL OR language = $5)
             ORDER BY embedding::vector({dimensions}) <=> $1::vector({dimensions})
             LIMIT $3",
            knowledge_base = scope.knowledge_base_id,
        ))
        .bind(Vector::from(vector.to_vec()))
        .bind(scope.tenant_id)
        .bind(limit as i64)
        .bind(filter.document_ids.as_deref())
        .bind(filter.language.map(|l| l.code()))
        .fetch_all(&mut *tx)
        .await
        .map_err(failed())?;
        tx.commit().await.map_err(failed())?;
        // Iterative scans return rows in roughly, not strictly, increasing distance.
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(rows
            .into_iter()
            .map(|(chunk_id, score)| VectorHit {
                chunk_id,
                score: score as f32,
            })
            .collect())
    }

    async fn ready(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

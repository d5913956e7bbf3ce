//! Vector storage behind one trait. pgvector is the default: the vectors live in the
//! `chunks` rows, each knowledge base with its own HNSW index. The trait is shaped for
//! Qdrant as well: a collection per knowledge base, points carrying the tenant and
//! knowledge base as payload, and every search filtered by both.

use async_trait::async_trait;
use pgvector::Vector;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::tenant_tx;

/// Whose vectors: every operation is confined to one tenant's knowledge base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub tenant_id: Uuid,
    pub knowledge_base_id: Uuid,
}

#[derive(Debug, Clone)]
pub struct VectorPoint {
    pub chunk_id: Uuid,
    pub document_id: Uuid,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub chunk_id: Uuid,
    /// Cosine similarity, 1 for identical directions.
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the vector store is unavailable: {0}")]
    Unavailable(String),
    #[error("the vector store refused the request: {0}")]
    Rejected(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(db) => StoreError::Rejected(db.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

#[async_trait]
pub trait VectorStore: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Prepares a knowledge base's collection for vectors of this size.
    async fn ensure_collection(&self, scope: Scope, dimensions: usize) -> Result<(), StoreError>;
    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError>;
    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError>;
    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError>;
    /// The nearest chunks of the knowledge base, best first, optionally among some
    /// documents only.
    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        documents: Option<&[Uuid]>,
    ) -> Result<Vec<VectorHit>, StoreError>;
    /// Whether the store answers (readiness).
    async fn ready(&self) -> bool;
}

pub struct PgVectorStore {
    pool: PgPool,
}

impl PgVectorStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn dimensions(&self, scope: Scope) -> Result<Option<i32>, StoreError> {
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        let dimensions: Option<i32> = sqlx::query_scalar(
            "SELECT (embedding->>'dimensions')::int FROM knowledge_bases WHERE id = $1",
        )
        .bind(scope.knowledge_base_id)
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        tx.commit().await?;
        Ok(dimensions)
    }
}

#[async_trait]
impl VectorStore for PgVectorStore {
    fn kind(&self) -> &'static str {
        "pgvector"
    }

    async fn ensure_collection(&self, scope: Scope, dimensions: usize) -> Result<(), StoreError> {
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        sqlx::query("SELECT ensure_vector_index($1, $2)")
            .bind(scope.knowledge_base_id)
            .bind(dimensions as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        let ids: Vec<Uuid> = points.iter().map(|p| p.chunk_id).collect();
        let vectors: Vec<Vector> = points
            .iter()
            .map(|p| Vector::from(p.vector.clone()))
            .collect();
        let updated = sqlx::query(
            "UPDATE chunks SET embedding = v.embedding
             FROM UNNEST($1::uuid[], $2::vector[]) AS v(id, embedding)
             WHERE chunks.id = v.id AND chunks.knowledge_base_id = $3",
        )
        .bind(&ids)
        .bind(&vectors)
        .bind(scope.knowledge_base_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != points.len() as u64 {
            return Err(StoreError::Rejected(format!(
                "{} of {} chunks are not in knowledge base {}",
                points.len() as u64 - updated.rows_affected(),
                points.len(),
                scope.knowledge_base_id
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError> {
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        sqlx::query(
            "UPDATE chunks SET embedding = NULL WHERE document_id = $1 AND knowledge_base_id = $2",
        )
        .bind(document_id)
        .bind(scope.knowledge_base_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError> {
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        sqlx::query("SELECT drop_vector_index($1)")
            .bind(scope.knowledge_base_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        documents: Option<&[Uuid]>,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let Some(dimensions) = self.dimensions(scope).await? else {
            return Ok(Vec::new());
        };
        if dimensions as usize != vector.len() {
            return Err(StoreError::Rejected(format!(
                "the query vector has {} dimensions, the knowledge base {}",
                vector.len(),
                dimensions
            )));
        }
        let mut tx = tenant_tx(&self.pool, scope.tenant_id).await?;
        // A larger candidate list than the default keeps recall up for filtered
        // searches; the expression matches the knowledge base's partial index.
        sqlx::query("SET LOCAL hnsw.ef_search = 100")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<(Uuid, f64)> = sqlx::query_as(&format!(
            "SELECT id, 1 - (embedding::vector({dimensions}) <=> $1::vector({dimensions})) AS score
             FROM chunks
             WHERE knowledge_base_id = $2 AND embedding IS NOT NULL AND ($4::uuid[] IS NULL OR document_id = ANY($4))
             ORDER BY embedding::vector({dimensions}) <=> $1::vector({dimensions})
             LIMIT $3"
        ))
        .bind(Vector::from(vector.to_vec()))
        .bind(scope.knowledge_base_id)
        .bind(limit as i64)
        .bind(documents)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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

//! Re-embedding a knowledge base whose embedding model changed declaratively (its
//! resource's `spec.embedding`, registered through `/internal` by the operator or the
//! appliance). The API path (`PATCH /api/knowledge-bases/{id}`) still refuses such a
//! change with a 409.
//!
//! - On registration ([`register`]), the knowledge base keeps its `embedding`, the model
//!   of the vectors in `chunks`, and the new model becomes its `pending_embedding`
//!   ([`decide`] says when). Searches keep using the previous model's vectors.
//! - A worker ([`spawn_worker`], one per API process, any number of replicas: a
//!   knowledge base is leased to one worker at a time) embeds every chunk again with the
//!   pending model, in batches, through the embedding cache, into
//!   `chunk_embeddings_next`, and records its progress.
//! - When every chunk has its next vector and no document is being ingested, one
//!   transaction, holding the knowledge base's row, drops its HNSW index (its
//!   expression has the previous dimensions), copies the next vectors into `chunks`,
//!   and makes the pending model the knowledge base's. The index for the new
//!   dimensions is built right after.
//! - Documents ingested meanwhile are embedded with the previous model (ingestion reads
//!   the knowledge base's row `FOR SHARE`), and the worker catches their chunks before
//!   the switch: a document being ingested holds the switch back, so no chunk is
//!   written with the previous model after it.
//!
//! Only pgvector is built: on a Qdrant store a change is recorded as the re-embedding's
//! error ([`UNSUPPORTED`]) and the previous model stays.

use std::time::Duration;

use iafactory_crds::knowledgebase::EmbeddingSpec;
use iafactory_crds::tenant_api::ReembedProgress;
use pgvector::Vector;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::embed::EmbedError;
use super::ingest::{IngestError, embed_cached};
use super::store::{Scope, StoreError};
use crate::db::tenant_tx;
use crate::state::AppState;

/// Chunks embedded per step; progress is written after each.
const BATCH: i64 = 64;
/// How long a worker holds a knowledge base without renewing its lease.
const LEASE_SECONDS: i32 = 60;
/// How often an idle worker looks for a knowledge base to re-embed.
const POLL: Duration = Duration::from_secs(1);

/// What a Qdrant store says to an embedding change.
pub const UNSUPPORTED: &str = "re-embedding is supported for pgvector knowledge bases; this API stores vectors in Qdrant, so the knowledge base keeps its previous embedding model (delete and re-create it to change the model)";

#[derive(Debug, thiserror::Error)]
pub enum ReembedError {
    #[error("the database failed while re-embedding: {0}")]
    Database(#[from] sqlx::Error),
    #[error("re-embedding: {0}")]
    Embed(#[from] EmbedError),
    #[error("re-embedding: {0}")]
    Ingest(#[from] IngestError),
    #[error("re-embedding: {0}")]
    Store(#[from] StoreError),
    #[error(
        "the embedding model returns {actual} dimensions, but the knowledge base declares {declared}"
    )]
    Dimensions { declared: usize, actual: usize },
    #[error("the knowledge base's embedding settings are not readable: {0}")]
    Settings(#[from] serde_json::Error),
}

impl ReembedError {
    /// How long before the next attempt: soon for a server that is down, later for a
    /// configuration that is wrong (it only changes with the spec or the API's).
    fn retry_in(&self) -> Duration {
        let transient = match self {
            ReembedError::Database(_) => true,
            ReembedError::Embed(e) => e.is_transient(),
            ReembedError::Ingest(e) => e.is_transient(),
            ReembedError::Store(e) => e.is_transient(),
            ReembedError::Dimensions { .. } | ReembedError::Settings(_) => false,
        };
        Duration::from_secs(if transient { 10 } else { 60 })
    }
}

/// What a registration does to the knowledge base's embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the model asked for is the stored one, or the one being re-embedded.
    Keep,
    /// The stored model becomes the new one at once: there is nothing to re-embed.
    Switch,
    /// The new model becomes pending, and every chunk is embedded again with it.
    Reembed,
    /// The stored model is asked for again: the re-embedding under way is dropped.
    Cancel,
    /// The store cannot re-embed: the change is recorded, with [`UNSUPPORTED`] as its
    /// error, and the stored model stays.
    Unsupported,
}

/// Decides what registering `desired` does, for a knowledge base whose vectors are
/// `current`'s, with `pending` under way, holding documents or not (pure).
pub fn decide(
    current: &EmbeddingSpec,
    pending: Option<&EmbeddingSpec>,
    desired: &EmbeddingSpec,
    has_documents: bool,
    store_reembeds: bool,
) -> Change {
    if pending == Some(desired) {
        return Change::Keep;
    }
    if desired == current {
        return if pending.is_some() {
            Change::Cancel
        } else {
            Change::Keep
        };
    }
    if !has_documents {
        Change::Switch
    } else if store_reembeds {
        Change::Reembed
    } else {
        Change::Unsupported
    }
}

/// Whether this store's knowledge bases can be re-embedded.
fn store_reembeds(state: &AppState) -> bool {
    state.rag.store.kind() == "pgvector"
}

/// Applies a registration's embedding, `desired`, to the knowledge base `name` of the
/// transaction's tenant (registered in this transaction, with its stored embedding
/// left as it was): switched, made pending, or left alone, as [`decide`] says.
/// Returns the knowledge base's id and what was done; after a [`Change::Switch`], call
/// [`after_switch`] once the transaction is committed.
pub async fn register(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    name: &str,
    desired: &EmbeddingSpec,
) -> Result<(Uuid, Change), ReembedError> {
    let (id, current, pending, has_documents): (
        Uuid,
        serde_json::Value,
        Option<serde_json::Value>,
        bool,
    ) = sqlx::query_as(
        "SELECT kb.id, kb.embedding, kb.pending_embedding,
                    EXISTS (SELECT 1 FROM documents d WHERE d.knowledge_base_id = kb.id)
             FROM knowledge_bases kb WHERE kb.name = $1 FOR NO KEY UPDATE",
    )
    .bind(name)
    .fetch_one(&mut **tx)
    .await?;
    let current: EmbeddingSpec = serde_json::from_value(current)?;
    // An unreadable pending model is replaced like any other.
    let pending: Option<EmbeddingSpec> = pending.and_then(|p| serde_json::from_value(p).ok());
    let change = decide(
        &current,
        pending.as_ref(),
        desired,
        has_documents,
        store_reembeds(state),
    );
    let desired_json = serde_json::to_value(desired)?;
    let cleared =
        "pending_embedding = NULL, reembed_done = 0, reembed_total = 0, reembed_error = NULL,
                   reembed_started_at = NULL, reembed_leased_until = NULL, updated_at = now()";
    match change {
        Change::Keep => return Ok((id, change)),
        Change::Switch => {
            sqlx::query(&format!(
                "UPDATE knowledge_bases SET embedding = $2, {cleared} WHERE id = $1"
            ))
            .bind(id)
            .bind(&desired_json)
            .execute(&mut **tx)
            .await?;
        }
        Change::Cancel => {
            sqlx::query(&format!(
                "UPDATE knowledge_bases SET {cleared} WHERE id = $1"
            ))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Change::Reembed | Change::Unsupported => {
            sqlx::query(
                "UPDATE knowledge_bases SET pending_embedding = $2, reembed_done = 0,
                     reembed_total = (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1),
                     reembed_error = $3, reembed_started_at = now(), reembed_leased_until = NULL,
                     updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&desired_json)
            .bind((change == Change::Unsupported).then_some(UNSUPPORTED))
            .execute(&mut **tx)
            .await?;
        }
    }
    // Vectors of another model than the one now pending are of no use.
    sqlx::query("DELETE FROM chunk_embeddings_next WHERE knowledge_base_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    tracing::info!(knowledge_base = %id, ?change, model = %desired.model, "embedding registered");
    Ok((id, change))
}

/// After a [`Change::Switch`] of a knowledge base without documents: its collection
/// (pgvector's index, Qdrant's collection) was sized for the previous model; the next
/// ingestion creates it again for the new one.
pub async fn after_switch(state: &AppState, scope: Scope) -> Result<(), ReembedError> {
    state.rag.store.delete_collection(scope).await?;
    Ok(())
}

/// The re-embedding under way, for the knowledge base's record; None when there is
/// none.
pub async fn progress(
    tx: &mut Transaction<'static, Postgres>,
    knowledge_base_id: Uuid,
) -> Result<Option<ReembedProgress>, sqlx::Error> {
    type Row = (
        Option<serde_json::Value>,
        i32,
        i32,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT pending_embedding, reembed_done, reembed_total, reembed_error, reembed_started_at
         FROM knowledge_bases WHERE id = $1",
    )
    .bind(knowledge_base_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.and_then(|(pending, done, total, error, started_at)| {
        Some(ReembedProgress {
            embedding: serde_json::from_value(pending?).ok()?,
            done: i64::from(done),
            total: i64::from(total),
            error,
            started_at: started_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        })
    }))
}

/// Starts this process's re-embedding worker, when its store can re-embed; it stops
/// when `stop` is cancelled.
pub fn spawn_worker(
    state: AppState,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    store_reembeds(&state).then(|| tokio::spawn(worker(state, stop)))
}

async fn worker(state: AppState, stop: CancellationToken) {
    loop {
        if stop.is_cancelled() {
            return;
        }
        let claimed: Result<Option<(Uuid, Uuid)>, sqlx::Error> =
            sqlx::query_as("SELECT * FROM claim_reembedding($1)")
                .bind(LEASE_SECONDS)
                .fetch_optional(&state.db)
                .await;
        match claimed {
            Ok(Some((tenant_id, knowledge_base_id))) => {
                let scope = Scope {
                    tenant_id,
                    knowledge_base_id,
                };
                let heartbeat = async {
                    loop {
                        tokio::time::sleep(Duration::from_secs(LEASE_SECONDS as u64 / 3)).await;
                        if let Err(error) =
                            hold(&state, scope, Duration::from_secs(LEASE_SECONDS as u64)).await
                        {
                            tracing::warn!(%error, "re-embedding: cannot renew the lease");
                        }
                    }
                };
                let outcome = tokio::select! {
                    outcome = reembed(&state, scope, &stop) => outcome,
                    _ = heartbeat => unreachable!("the heartbeat loops forever"),
                    _ = stop.cancelled() => Ok(Duration::ZERO),
                };
                let next = match outcome {
                    Ok(next) => hold(&state, scope, next).await,
                    Err(error) => {
                        tracing::warn!(%error, knowledge_base = %knowledge_base_id, "re-embedding failed; retrying later");
                        failed(&state, scope, &error).await
                    }
                };
                if let Err(error) = next {
                    tracing::warn!(%error, "re-embedding: cannot record the outcome");
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "re-embedding: cannot look for work; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL * 2) => {}
                }
            }
        }
    }
}

/// Keeps the knowledge base leased for `duration` from now (zero hands it back).
async fn hold(state: &AppState, scope: Scope, duration: Duration) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    sqlx::query(
        "UPDATE knowledge_bases SET reembed_leased_until = now() + make_interval(secs => $2)
         WHERE id = $1 AND pending_embedding IS NOT NULL",
    )
    .bind(scope.knowledge_base_id)
    .bind(duration.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn failed(state: &AppState, scope: Scope, error: &ReembedError) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    sqlx::query(
        "UPDATE knowledge_bases SET reembed_error = $2, reembed_leased_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND pending_embedding IS NOT NULL",
    )
    .bind(scope.knowledge_base_id)
    .bind(error.to_string())
    .bind(error.retry_in().as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Embeds the knowledge base's chunks that lack their next vector, batch by batch, then
/// switches. Returns how long to wait before the next attempt (zero when done, or when
/// the pending model changed under it).
#[tracing::instrument(skip_all, fields(tenant_id = %scope.tenant_id, knowledge_base = %scope.knowledge_base_id))]
async fn reembed(
    state: &AppState,
    scope: Scope,
    stop: &CancellationToken,
) -> Result<Duration, ReembedError> {
    loop {
        if stop.is_cancelled() {
            return Ok(Duration::ZERO);
        }
        let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
        let pending: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT pending_embedding FROM knowledge_bases WHERE id = $1")
                .bind(scope.knowledge_base_id)
                .fetch_optional(&mut *tx)
                .await?
                .flatten();
        let Some(pending_json) = pending else {
            return Ok(Duration::ZERO);
        };
        let batch: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT c.id, c.content FROM chunks c
             WHERE c.knowledge_base_id = $1
               AND NOT EXISTS (SELECT 1 FROM chunk_embeddings_next n WHERE n.chunk_id = c.id)
             ORDER BY c.id LIMIT $2",
        )
        .bind(scope.knowledge_base_id)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if batch.is_empty() {
            return switch(state, scope, &pending_json).await;
        }
        let pending: EmbeddingSpec = serde_json::from_value(pending_json.clone())?;
        let embedder = state
            .rag
            .embedders
            .resolve(&pending.provider, &pending.model)?;
        let texts: Vec<String> = batch.iter().map(|(_, text)| text.clone()).collect();
        let vectors = embed_cached(state, scope.tenant_id, embedder.as_ref(), &texts).await?;
        let declared = pending.dimensions as usize;
        if let Some(actual) = vectors.iter().map(Vec::len).find(|n| *n != declared) {
            return Err(ReembedError::Dimensions { declared, actual });
        }
        let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
        // The registration that changes or cancels the pending model takes this row
        // too: vectors of a model that is no longer pending are never written.
        let still: Option<Option<serde_json::Value>> = sqlx::query_scalar(
            "SELECT pending_embedding FROM knowledge_bases WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(scope.knowledge_base_id)
        .fetch_optional(&mut *tx)
        .await?;
        if still.flatten().as_ref() != Some(&pending_json) {
            return Ok(Duration::ZERO);
        }
        // Chunks deleted meanwhile (their document re-ingested or deleted) are skipped.
        sqlx::query(
            "INSERT INTO chunk_embeddings_next (chunk_id, tenant_id, knowledge_base_id, embedding)
             SELECT v.id, $2, $3, v.embedding
             FROM UNNEST($1::uuid[], $4::vector[]) AS v(id, embedding)
             JOIN chunks c ON c.id = v.id AND c.knowledge_base_id = $3
             ON CONFLICT (chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding",
        )
        .bind(batch.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(scope.tenant_id)
        .bind(scope.knowledge_base_id)
        .bind(vectors.into_iter().map(Vector::from).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        record_progress(&mut tx, scope.knowledge_base_id).await?;
        tx.commit().await?;
    }
}

async fn record_progress(
    tx: &mut Transaction<'static, Postgres>,
    knowledge_base_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE knowledge_bases SET
             reembed_done = (SELECT count(*) FROM chunk_embeddings_next n WHERE n.knowledge_base_id = $1),
             reembed_total = (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1),
             reembed_error = NULL
         WHERE id = $1",
    )
    .bind(knowledge_base_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The switch, in one transaction that holds the knowledge base's row: when every
/// chunk has its next vector and no document is being ingested, the next vectors
/// replace the previous ones and the pending model becomes the knowledge base's.
/// Otherwise nothing changes, and the worker comes back shortly.
async fn switch(
    state: &AppState,
    scope: Scope,
    pending_json: &serde_json::Value,
) -> Result<Duration, ReembedError> {
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    let kb = scope.knowledge_base_id;
    let still: Option<Option<serde_json::Value>> = sqlx::query_scalar(
        "SELECT pending_embedding FROM knowledge_bases WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(kb)
    .fetch_optional(&mut *tx)
    .await?;
    if still.flatten().as_ref() != Some(pending_json) {
        return Ok(Duration::ZERO);
    }
    // Read after the row lock: a document whose ingestion began before it is seen as
    // processing, one that begins after it waits for this transaction and then reads
    // the new model.
    let (missing, ingesting): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1
                   AND NOT EXISTS (SELECT 1 FROM chunk_embeddings_next n WHERE n.chunk_id = c.id)),
                (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = $1 AND d.status = 'processing')",
    )
    .bind(kb)
    .fetch_one(&mut *tx)
    .await?;
    if missing > 0 || ingesting > 0 {
        record_progress(&mut tx, kb).await?;
        tx.commit().await?;
        return Ok(if missing > 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        });
    }
    // The index's expression casts to the previous dimensions: it cannot hold the new
    // vectors. Dropping it locks `chunks` until the commit, which follows at once.
    sqlx::query("SELECT drop_vector_index($1)")
        .bind(kb)
        .execute(&mut *tx)
        .await?;
    let switched = sqlx::query(
        "UPDATE chunks c SET embedding = n.embedding FROM chunk_embeddings_next n
         WHERE n.chunk_id = c.id AND c.knowledge_base_id = $1",
    )
    .bind(kb)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM chunk_embeddings_next WHERE knowledge_base_id = $1")
        .bind(kb)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE knowledge_bases SET embedding = pending_embedding, pending_embedding = NULL,
             reembed_done = 0, reembed_total = 0, reembed_error = NULL, reembed_started_at = NULL,
             reembed_leased_until = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(kb)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let pending: EmbeddingSpec = serde_json::from_value(pending_json.clone())?;
    tracing::info!(knowledge_base = %kb, chunks = switched, model = %pending.model, "re-embedded; searches use the new model");
    if switched > 0 {
        state
            .rag
            .store
            .ensure_collection(scope, pending.dimensions as usize)
            .await?;
    }
    Ok(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, dimensions: i32) -> EmbeddingSpec {
        EmbeddingSpec {
            provider: "ollama".into(),
            model: name.into(),
            dimensions,
        }
    }

    #[test]
    fn a_new_model_is_re_embedded_only_when_there_are_documents() {
        let (old, new) = (model("minilm", 384), model("smollm2", 576));
        assert_eq!(decide(&old, None, &new, true, true), Change::Reembed);
        assert_eq!(decide(&old, None, &new, false, true), Change::Switch);
        assert_eq!(decide(&old, None, &new, false, false), Change::Switch);
        // The same name with other dimensions is another model for the vectors.
        assert_eq!(
            decide(&old, None, &model("minilm", 768), true, true),
            Change::Reembed
        );
    }

    #[test]
    fn registering_again_changes_nothing_and_the_old_model_cancels() {
        let (old, new) = (model("minilm", 384), model("smollm2", 576));
        assert_eq!(decide(&old, None, &old, true, true), Change::Keep);
        assert_eq!(decide(&old, Some(&new), &new, true, true), Change::Keep);
        assert_eq!(decide(&old, Some(&old), &old, true, true), Change::Keep);
        assert_eq!(decide(&old, Some(&new), &old, true, true), Change::Cancel);
        assert_eq!(decide(&old, Some(&new), &old, false, true), Change::Cancel);
        // A third model replaces the pending one.
        let third = model("bge-m3", 1024);
        assert_eq!(
            decide(&old, Some(&new), &third, true, true),
            Change::Reembed
        );
        assert_eq!(
            decide(&old, Some(&new), &third, false, true),
            Change::Switch
        );
    }

    #[test]
    fn a_store_that_cannot_re_embed_keeps_the_old_model() {
        let (old, new) = (model("minilm", 384), model("smollm2", 576));
        assert_eq!(decide(&old, None, &new, true, false), Change::Unsupported);
        // Asked again, the refusal stands as recorded; the old model clears it.
        assert_eq!(decide(&old, Some(&new), &new, true, false), Change::Keep);
        assert_eq!(decide(&old, Some(&new), &old, true, false), Change::Cancel);
    }
}

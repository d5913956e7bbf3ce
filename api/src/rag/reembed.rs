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
//!   pending model, in batches, through the embedding cache, and records its progress.
//!   A row of `chunk_embeddings_next` marks each chunk done. Where the vectors go
//!   depends on the store ([`super::store::VectorStore::next_collection`]):
//!   - pgvector: into that row;
//!   - Qdrant: into the knowledge base's next collection (the row holds no vector).
//! - When every chunk has its next vector and no document is being ingested, one
//!   transaction, holding the knowledge base's row, makes the pending model the
//!   knowledge base's, and:
//!   - pgvector: drops its HNSW index (its expression has the previous dimensions) and
//!     copies the next vectors into `chunks`. The index for the new dimensions is built
//!     right after.
//!   - Qdrant: checks that the next collection holds exactly one point per chunk (else
//!     it starts over), then drops the live collection, before the commit, so that the
//!     next one takes its place.
//! - Documents ingested meanwhile are embedded with the previous model (ingestion reads
//!   the knowledge base's row `FOR SHARE`), and the worker catches their chunks before
//!   the switch: a document being ingested holds the switch back, so no chunk is
//!   written with the previous model after it.

use std::time::Duration;

use iafactory_crds::Language;
use iafactory_crds::knowledgebase::EmbeddingSpec;
use iafactory_crds::tenant_api::ReembedProgress;
use pgvector::Vector;
use sqlx::{Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::embed::EmbedError;
use super::ingest::{IngestError, embed_cached};
use super::store::{NextCollection, Scope, StoreError, VectorPoint};
use crate::db::tenant_tx;
use crate::state::AppState;

/// Chunks embedded per step; progress is written after each.
const BATCH: i64 = 64;
/// How long a worker holds a knowledge base without renewing its lease.
const LEASE_SECONDS: i32 = 60;
/// How often an idle worker looks for a knowledge base to re-embed.
const POLL: Duration = Duration::from_secs(1);

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
}

/// Decides what registering `desired` does, for a knowledge base whose vectors are
/// `current`'s, with `pending` under way, holding documents or not (pure).
pub fn decide(
    current: &EmbeddingSpec,
    pending: Option<&EmbeddingSpec>,
    desired: &EmbeddingSpec,
    has_documents: bool,
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
    if has_documents {
        Change::Reembed
    } else {
        Change::Switch
    }
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
    let (id, tenant_id, current, pending, has_documents): (
        Uuid,
        Uuid,
        serde_json::Value,
        Option<serde_json::Value>,
        bool,
    ) = sqlx::query_as(
        "SELECT kb.id, kb.tenant_id, kb.embedding, kb.pending_embedding,
                    EXISTS (SELECT 1 FROM documents d WHERE d.knowledge_base_id = kb.id)
             FROM knowledge_bases kb WHERE kb.name = $1 FOR NO KEY UPDATE",
    )
    .bind(name)
    .fetch_one(&mut **tx)
    .await?;
    let current: EmbeddingSpec = serde_json::from_value(current)?;
    // An unreadable pending model is replaced like any other.
    let pending: Option<EmbeddingSpec> = pending.and_then(|p| serde_json::from_value(p).ok());
    let change = decide(&current, pending.as_ref(), desired, has_documents);
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
        Change::Reembed => {
            sqlx::query(
                "UPDATE knowledge_bases SET pending_embedding = $2, reembed_done = 0,
                     reembed_total = (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1),
                     reembed_error = NULL, reembed_started_at = now(), reembed_leased_until = NULL,
                     updated_at = now()
                 WHERE id = $1",
            )
            .bind(id)
            .bind(&desired_json)
            .execute(&mut **tx)
            .await?;
        }
    }
    if change == Change::Cancel
        && let Some(next) = state.rag.store.next_collection()
    {
        let scope = Scope {
            tenant_id,
            knowledge_base_id: id,
        };
        // Left behind, it would only take room: the live collection is the lowest
        // generation, and the next re-embedding starts its own afresh.
        if let Err(error) = next.discard(scope).await {
            tracing::warn!(%error, knowledge_base = %id, "cannot drop the cancelled re-embedding's collection");
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

/// Starts this process's re-embedding worker; it stops when `stop` is cancelled.
pub fn spawn_worker(state: AppState, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(worker(state, stop))
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
                    _ = stop.cancelled() => Ok(Some(Duration::ZERO)),
                };
                let next = match outcome {
                    Ok(Some(next)) => hold(&state, scope, next).await,
                    // Another worker may hold the knowledge base for the run that
                    // replaced this one: its lease is not this worker's to change.
                    Ok(None) => Ok(()),
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

/// When the re-embedding under way was started: with its model, it tells one run from
/// the next.
type Started = chrono::DateTime<chrono::Utc>;

/// Embeds the knowledge base's chunks that lack their next vector, batch by batch, then
/// switches. Returns how long to wait before the next attempt (zero when done), or None
/// when the run it worked on is over (the pending model changed, cancelled or started
/// again).
#[tracing::instrument(skip_all, fields(tenant_id = %scope.tenant_id, knowledge_base = %scope.knowledge_base_id))]
async fn reembed(
    state: &AppState,
    scope: Scope,
    stop: &CancellationToken,
) -> Result<Option<Duration>, ReembedError> {
    let next = state.rag.store.next_collection();
    let mut prepared = false;
    loop {
        if stop.is_cancelled() {
            return Ok(Some(Duration::ZERO));
        }
        let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
        type Row = (
            serde_json::Value,
            Option<serde_json::Value>,
            Option<Started>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT embedding, pending_embedding, reembed_started_at FROM knowledge_bases WHERE id = $1",
        )
        .bind(scope.knowledge_base_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((current_json, Some(pending_json), started)) = row else {
            return Ok(None);
        };
        let pending: EmbeddingSpec = serde_json::from_value(pending_json.clone())?;
        if let Some(next) = next
            && !prepared
        {
            let current: EmbeddingSpec = serde_json::from_value(current_json)?;
            prepare(&mut tx, scope, next, &current, &pending).await?;
            prepared = true;
        }
        type Batch = (Uuid, String, Uuid, Option<String>);
        let batch: Vec<Batch> = sqlx::query_as(
            "SELECT c.id, c.content, c.document_id, c.language FROM chunks c
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
            return switch(state, scope, &pending_json, started).await;
        }
        let embedder = state
            .rag
            .embedders
            .resolve(&pending.provider, &pending.model)?;
        let texts: Vec<String> = batch.iter().map(|(_, text, _, _)| text.clone()).collect();
        let vectors = embed_cached(state, scope.tenant_id, embedder.as_ref(), &texts).await?;
        let declared = pending.dimensions as usize;
        if let Some(actual) = vectors.iter().map(Vec::len).find(|n| *n != declared) {
            return Err(ReembedError::Dimensions { declared, actual });
        }
        let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
        // The registration that changes, cancels or restarts the re-embedding takes
        // this row too: vectors of a run that is over are never written (a restarted
        // run may have started its next collection afresh).
        let still: Option<(Option<serde_json::Value>, Option<Started>)> = sqlx::query_as(
            "SELECT pending_embedding, reembed_started_at FROM knowledge_bases WHERE id = $1
             FOR NO KEY UPDATE",
        )
        .bind(scope.knowledge_base_id)
        .fetch_optional(&mut *tx)
        .await?;
        if still != Some((Some(pending_json.clone()), started)) {
            return Ok(None);
        }
        let ids: Vec<Uuid> = batch.iter().map(|(id, ..)| *id).collect();
        match next {
            // Chunks deleted meanwhile (their document re-ingested or deleted) are skipped.
            None => {
                sqlx::query(
                    "INSERT INTO chunk_embeddings_next (chunk_id, tenant_id, knowledge_base_id, embedding)
                     SELECT v.id, $2, $3, v.embedding
                     FROM UNNEST($1::uuid[], $4::vector[]) AS v(id, embedding)
                     JOIN chunks c ON c.id = v.id AND c.knowledge_base_id = $3
                     ON CONFLICT (chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding",
                )
                .bind(&ids)
                .bind(scope.tenant_id)
                .bind(scope.knowledge_base_id)
                .bind(vectors.into_iter().map(Vector::from).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
            Some(next) => {
                // The chunks still there, held until the commit: a deletion that comes
                // later waits, then deletes their points from both collections.
                let present: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM chunks WHERE id = ANY($1) AND knowledge_base_id = $2 FOR SHARE",
                )
                .bind(&ids)
                .bind(scope.knowledge_base_id)
                .fetch_all(&mut *tx)
                .await?;
                let points: Vec<VectorPoint> = batch
                    .into_iter()
                    .zip(vectors)
                    .filter(|((id, ..), _)| present.contains(id))
                    .map(
                        |((chunk_id, _, document_id, language), vector)| VectorPoint {
                            chunk_id,
                            document_id,
                            language: language.as_deref().and_then(language_of),
                            vector,
                        },
                    )
                    .collect();
                next.upsert(scope, &points).await?;
                sqlx::query(
                    "INSERT INTO chunk_embeddings_next (chunk_id, tenant_id, knowledge_base_id)
                     SELECT id, $2, $3 FROM UNNEST($1::uuid[]) AS v(id)
                     ON CONFLICT (chunk_id) DO NOTHING",
                )
                .bind(&present)
                .bind(scope.tenant_id)
                .bind(scope.knowledge_base_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        record_progress(&mut tx, scope.knowledge_base_id).await?;
        tx.commit().await?;
    }
}

/// Before the first batch of a worker's turn, for a store with a next collection: the
/// chunks marked done are kept only if the next collection is there to hold their
/// vectors; otherwise the next collection starts afresh, and so do the marks.
async fn prepare(
    tx: &mut Transaction<'static, Postgres>,
    scope: Scope,
    next: &dyn NextCollection,
    current: &EmbeddingSpec,
    pending: &EmbeddingSpec,
) -> Result<(), ReembedError> {
    let marked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM chunk_embeddings_next WHERE knowledge_base_id = $1)",
    )
    .bind(scope.knowledge_base_id)
    .fetch_one(&mut **tx)
    .await?;
    if marked && next.exists(scope).await? {
        return Ok(());
    }
    sqlx::query("DELETE FROM chunk_embeddings_next WHERE knowledge_base_id = $1")
        .bind(scope.knowledge_base_id)
        .execute(&mut **tx)
        .await?;
    next.create(
        scope,
        current.dimensions as usize,
        pending.dimensions as usize,
    )
    .await?;
    Ok(())
}

/// A chunk's language, from its stored code.
fn language_of(code: &str) -> Option<Language> {
    iafactory_crds::common::all_languages()
        .into_iter()
        .find(|l| l.code() == code)
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
    started: Option<Started>,
) -> Result<Option<Duration>, ReembedError> {
    let mut tx = tenant_tx(&state.db, scope.tenant_id).await?;
    let kb = scope.knowledge_base_id;
    let still: Option<(Option<serde_json::Value>, Option<Started>)> = sqlx::query_as(
        "SELECT pending_embedding, reembed_started_at FROM knowledge_bases WHERE id = $1
         FOR NO KEY UPDATE",
    )
    .bind(kb)
    .fetch_optional(&mut *tx)
    .await?;
    if still != Some((Some(pending_json.clone()), started)) {
        return Ok(None);
    }
    // Read after the row lock: a document whose ingestion began before it is seen as
    // processing, one that begins after it waits for this transaction and then reads
    // the new model.
    let (missing, ingesting, chunks): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1
                   AND NOT EXISTS (SELECT 1 FROM chunk_embeddings_next n WHERE n.chunk_id = c.id)),
                (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = $1 AND d.status = 'processing'),
                (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = $1)",
    )
    .bind(kb)
    .fetch_one(&mut *tx)
    .await?;
    if missing > 0 || ingesting > 0 {
        record_progress(&mut tx, kb).await?;
        tx.commit().await?;
        return Ok(Some(if missing > 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        }));
    }
    let switched = match state.rag.store.next_collection() {
        None => switch_rows(&mut tx, kb).await?,
        Some(next) => {
            // Every chunk is marked, so each has its point; more points are those of
            // chunks deleted while their batch was being written (a deletion removes
            // the points before the rows), fewer a collection that lost some. Either
            // way, the next collection is not the knowledge base's: start it over.
            let points = next.count(scope).await?;
            if points != chunks as u64 {
                tracing::warn!(knowledge_base = %kb, points, chunks, "the next collection does not match the chunks; re-embedding again");
                sqlx::query("DELETE FROM chunk_embeddings_next WHERE knowledge_base_id = $1")
                    .bind(kb)
                    .execute(&mut *tx)
                    .await?;
                record_progress(&mut tx, kb).await?;
                tx.commit().await?;
                next.discard(scope).await?;
                return Ok(Some(Duration::ZERO));
            }
            // Before the commit, under the row lock: if the commit fails, the worker
            // switches again (the live collection is already gone, the rest follows).
            next.promote(scope).await?;
            chunks as u64
        }
    };
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
    if switched > 0 && state.rag.store.next_collection().is_none() {
        state
            .rag
            .store
            .ensure_collection(scope, pending.dimensions as usize)
            .await?;
    }
    Ok(Some(Duration::ZERO))
}

/// pgvector's switch: the next vectors replace the previous ones in `chunks`. Returns
/// how many chunks it switched.
async fn switch_rows(
    tx: &mut Transaction<'static, Postgres>,
    kb: Uuid,
) -> Result<u64, sqlx::Error> {
    // The index's expression casts to the previous dimensions: it cannot hold the new
    // vectors. Dropping it locks `chunks` until the commit, which follows at once.
    sqlx::query("SELECT drop_vector_index($1)")
        .bind(kb)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query(
        "UPDATE chunks c SET embedding = n.embedding FROM chunk_embeddings_next n
         WHERE n.chunk_id = c.id AND c.knowledge_base_id = $1",
    )
    .bind(kb)
    .execute(&mut **tx)
    .await?
    .rows_affected())
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
        assert_eq!(decide(&old, None, &new, true), Change::Reembed);
        assert_eq!(decide(&old, None, &new, false), Change::Switch);
        // The same name with other dimensions is another model for the vectors.
        assert_eq!(
            decide(&old, None, &model("minilm", 768), true),
            Change::Reembed
        );
    }

    #[test]
    fn registering_again_changes_nothing_and_the_old_model_cancels() {
        let (old, new) = (model("minilm", 384), model("smollm2", 576));
        assert_eq!(decide(&old, None, &old, true), Change::Keep);
        assert_eq!(decide(&old, Some(&new), &new, true), Change::Keep);
        assert_eq!(decide(&old, Some(&old), &old, true), Change::Keep);
        assert_eq!(decide(&old, Some(&new), &old, true), Change::Cancel);
        assert_eq!(decide(&old, Some(&new), &old, false), Change::Cancel);
        // A third model replaces the pending one.
        let third = model("bge-m3", 1024);
        assert_eq!(decide(&old, Some(&new), &third, true), Change::Reembed);
        assert_eq!(decide(&old, Some(&new), &third, false), Change::Switch);
    }
}

//! The ingestion queue: a durable job per document in PostgreSQL, claimed with
//! `FOR UPDATE SKIP LOCKED`, leased while it runs (a heartbeat renews the lease, so a
//! crashed worker's job is picked up again when it lapses), retried with exponential
//! backoff on transient failures, and failed for good, with a readable error, when the
//! document itself is at fault.
//!
//! Every claim counts as an attempt, and a job that has had [`MAX_ATTEMPTS`] is failed
//! instead of claimed, even when its last worker died with the job still running:
//! a document that crashes whatever runs it cannot loop through restarts for ever.
//! Documents are parsed in a bounded child process (`rag::sandbox`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::embed::{EmbedError, Embedder};
use super::parse::{self, Format, ParseError, ParsedDocument};
use super::sandbox::{self, ParserLimits, SandboxError};
use super::search::search_text;
use super::store::{Scope, StoreError, VectorPoint};
use super::text;
use crate::db::tenant_tx;
use crate::state::AppState;

/// After this many attempts a job fails for good.
pub const MAX_ATTEMPTS: i32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{document:?}: {source}")]
    Parse {
        document: String,
        #[source]
        source: SandboxError,
    },
    #[error("{0}")]
    Embed(#[from] EmbedError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the database failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the embedding model returns {actual} dimensions, but the knowledge base declares {declared}"
    )]
    Dimensions { declared: usize, actual: usize },
    #[error("the document or its knowledge base was deleted")]
    Gone,
}

impl IngestError {
    /// Transient failures are retried; the others fail the document at once.
    pub fn is_transient(&self) -> bool {
        match self {
            IngestError::Embed(e) => e.is_transient(),
            IngestError::Store(e) => e.is_transient(),
            IngestError::Database(_) => true,
            IngestError::Parse { source, .. } => source.is_transient(),
            IngestError::Dimensions { .. } | IngestError::Gone => false,
        }
    }
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Claimed {
    job_id: Uuid,
    tenant_id: Uuid,
    document_id: Uuid,
    attempts: i32,
}

/// Starts `workers` ingestion workers; they stop when `stop` is cancelled.
pub fn spawn_workers(
    state: AppState,
    workers: usize,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|_| {
            let state = state.clone();
            let stop = stop.clone();
            tokio::spawn(async move { worker(state, stop).await })
        })
        .collect()
}

async fn worker(state: AppState, stop: CancellationToken) {
    let wake: Arc<Notify> = state.rag.jobs.clone();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match claim(&state).await {
            Ok(Some(job)) => run(&state, job, &stop).await,
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "ingestion: cannot claim a job; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

async fn claim(state: &AppState) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM claim_ingestion_job($1, $2)")
        .bind(state.config.ingestion_lease_seconds as i32)
        .bind(MAX_ATTEMPTS)
        .fetch_optional(&state.db)
        .await
}

#[tracing::instrument(skip_all, fields(document_id = %job.document_id, tenant_id = %job.tenant_id, attempt = job.attempts))]
async fn run(state: &AppState, job: Claimed, stop: &CancellationToken) {
    let started = Instant::now();
    let lease = Duration::from_secs(state.config.ingestion_lease_seconds.max(3));
    let heartbeat = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            if let Err(error) = renew_lease(state, job).await {
                tracing::warn!(%error, "ingestion: cannot renew the lease");
            }
        }
    };
    let outcome = tokio::select! {
        outcome = ingest(state, job) => outcome,
        _ = heartbeat => unreachable!("the heartbeat loops forever"),
        _ = stop.cancelled() => {
            // Shutting down: hand the job back at once rather than wait for the lease,
            // with its attempt (the document did not use it up).
            if let Err(error) = release(state, job).await {
                tracing::warn!(%error, "ingestion: cannot release the job; it is retried when its lease lapses");
            }
            return;
        }
    };
    let result = match &outcome {
        Ok(chunks) => {
            tracing::info!(
                chunks,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "document ingested"
            );
            state
                .rag
                .metrics
                .documents_ingested
                .get_or_create(&StatusLabel {
                    status: "ready".into(),
                })
                .inc();
            finish(state, job, "done", None, None).await
        }
        Err(error) if error.is_transient() && job.attempts < MAX_ATTEMPTS => {
            let delay = backoff(job.attempts);
            tracing::warn!(%error, retry_in_s = delay.as_secs(), "ingestion failed; retrying");
            finish(state, job, "queued", Some(error.to_string()), Some(delay)).await
        }
        Err(error) => {
            tracing::warn!(%error, "ingestion failed for good");
            state
                .rag
                .metrics
                .documents_ingested
                .get_or_create(&StatusLabel {
                    status: "failed".into(),
                })
                .inc();
            finish(state, job, "failed", Some(error.to_string()), None).await
        }
    };
    state
        .rag
        .metrics
        .ingestion_duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(error) = result {
        tracing::error!(%error, "ingestion: cannot record the job's outcome");
    }
}

/// 2, 4, 8 ... seconds, at most five minutes.
pub fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(attempts.clamp(1, 16) as u32).min(300))
}

async fn renew_lease(state: &AppState, job: Claimed) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    sqlx::query("UPDATE ingestion_jobs SET leased_until = now() + make_interval(secs => $2) WHERE id = $1 AND state = 'running'")
        .bind(job.job_id)
        .bind(state.config.ingestion_lease_seconds as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Hands a job back to the queue, attempt and all.
async fn release(state: &AppState, job: Claimed) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    sqlx::query("UPDATE ingestion_jobs SET attempts = greatest(attempts - 1, 0) WHERE id = $1")
        .bind(job.job_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    finish(state, job, "queued", None, Some(Duration::ZERO)).await
}

async fn finish(
    state: &AppState,
    job: Claimed,
    job_state: &str,
    error: Option<String>,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    sqlx::query(
        "UPDATE ingestion_jobs SET state = $2, last_error = $3, leased_until = NULL,
             run_after = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1",
    )
    .bind(job.job_id)
    .bind(job_state)
    .bind(&error)
    .bind(retry_in.map_or(0.0, |d| d.as_secs_f64()))
    .execute(&mut *tx)
    .await?;
    let document_status = match job_state {
        "done" => None,
        "queued" => Some("pending"),
        _ => Some("failed"),
    };
    if let Some(status) = document_status {
        sqlx::query(
            "UPDATE documents SET status = $2, error = $3, updated_at = now() WHERE id = $1",
        )
        .bind(job.document_id)
        .bind(status)
        .bind(&error)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    state.observe_queue().await;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Work {
    knowledge_base_id: Uuid,
    content_type: String,
    embedding: serde_json::Value,
    chunking: serde_json::Value,
    filename: String,
    content: Vec<u8>,
}

/// Parses, chunks, embeds and stores one document; returns its number of chunks.
async fn ingest(state: &AppState, job: Claimed) -> Result<usize, IngestError> {
    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    let work: Option<Work> = sqlx::query_as(
        "SELECT d.knowledge_base_id, d.content_type, kb.embedding, kb.chunking, b.filename, b.content
         FROM documents d JOIN knowledge_bases kb ON kb.id = d.knowledge_base_id
              JOIN document_blobs b ON b.document_id = d.id
         WHERE d.id = $1
         FOR SHARE OF kb",
    )
    .bind(job.document_id)
    .fetch_optional(&mut *tx)
    .await?;
    let work = work.ok_or(IngestError::Gone)?;
    // The knowledge base's row is held until the document is `processing`: a
    // re-embedding's switch (`rag::reembed`) either sees it processing and waits, or
    // commits first and this reads the new model.
    sqlx::query("UPDATE documents SET status = 'processing', error = NULL, updated_at = now() WHERE id = $1")
        .bind(job.document_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let parse_started = Instant::now();
    let format = Format::from_content_type(&work.content_type).unwrap_or(Format::Text);
    let chunking: iafactory_crds::knowledgebase::ChunkingSpec =
        serde_json::from_value(work.chunking).unwrap_or_default();
    let parse_error = |source| IngestError::Parse {
        document: work.filename.clone(),
        source,
    };
    let limits = ParserLimits::from_config(&state.config).map_err(parse_error)?;
    let parsed = sandbox::extract(&limits, format, work.content)
        .await
        .map_err(parse_error)?;
    let prepared = tokio::task::spawn_blocking(move || prepare_parsed(parsed, &chunking))
        .await
        .map_err(|_| {
            parse_error(SandboxError::Crashed {
                status: "chunking panicked".into(),
            })
        })?;
    state
        .rag
        .metrics
        .ingestion_stage("parse", parse_started.elapsed());
    let Prepared {
        chunks,
        language,
        pages,
    } = prepared;

    let embedding: iafactory_crds::knowledgebase::EmbeddingSpec =
        serde_json::from_value(work.embedding)
            .map_err(|_| EmbedError::UnknownProvider("(invalid embedding settings)".into()))?;
    let embedder = state
        .rag
        .embedders
        .resolve(&embedding.provider, &embedding.model)?;
    let texts: Vec<String> = chunks.iter().map(|c| c.chunk.text.clone()).collect();
    let embed_started = Instant::now();
    let vectors = embed_cached(state, job.tenant_id, embedder.as_ref(), &texts).await?;
    state
        .rag
        .metrics
        .ingestion_stage("embed", embed_started.elapsed());
    let declared = embedding.dimensions as usize;
    if let Some(actual) = vectors.first().map(Vec::len).filter(|n| *n != declared) {
        return Err(IngestError::Dimensions { declared, actual });
    }

    let scope = Scope {
        tenant_id: job.tenant_id,
        knowledge_base_id: work.knowledge_base_id,
    };
    let store_started = Instant::now();
    state.rag.store.ensure_collection(scope, declared).await?;
    // A retried job's earlier vectors go too: in a store outside PostgreSQL (Qdrant)
    // they outlive the chunk rows deleted below.
    state
        .rag
        .store
        .delete_document(scope, job.document_id)
        .await?;
    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    // A retried job starts over: its earlier chunks go.
    sqlx::query("DELETE FROM chunks WHERE document_id = $1")
        .bind(job.document_id)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<Uuid> = chunks.iter().map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO chunks (id, tenant_id, knowledge_base_id, document_id, ordinal, content, language, search_text, metadata)
         SELECT id, $1, $2, $3, ordinal, content, language, search_text, metadata
         FROM UNNEST($4::uuid[], $5::int[], $6::text[], $7::text[], $8::text[], $9::jsonb[])
              AS c(id, ordinal, content, language, search_text, metadata)",
    )
    .bind(job.tenant_id)
    .bind(work.knowledge_base_id)
    .bind(job.document_id)
    .bind(&ids)
    .bind(chunks.iter().map(|c| c.chunk.ordinal as i32).collect::<Vec<_>>())
    .bind(&texts)
    .bind(
        chunks
            .iter()
            .map(|c| c.chunk.language.map(|l| l.code().to_owned()))
            .collect::<Vec<_>>(),
    )
    .bind(chunks.iter().map(|c| c.search_text.as_str()).collect::<Vec<_>>())
    .bind(chunks.iter().map(|c| c.metadata()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let points: Vec<VectorPoint> = ids
        .iter()
        .zip(vectors)
        .zip(&chunks)
        .map(|((id, vector), chunk)| VectorPoint {
            chunk_id: *id,
            document_id: job.document_id,
            language: chunk.chunk.language,
            vector,
        })
        .collect();
    state.rag.store.upsert(scope, &points).await?;

    let mut tx = tenant_tx(&state.db, job.tenant_id).await?;
    sqlx::query(
        "UPDATE documents SET status = 'ready', error = NULL, chunk_count = $2, language = $3, pages = $4, updated_at = now() WHERE id = $1",
    )
    .bind(job.document_id)
    .bind(chunks.len() as i32)
    .bind(language.map(|l| l.code()))
    .bind(pages.map(|p| p as i32))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    state
        .rag
        .metrics
        .ingestion_stage("store", store_started.elapsed());
    Ok(chunks.len())
}

/// A chunk ready to store: its text, where it comes from, and its search form.
pub struct PreparedChunk {
    pub chunk: text::Chunk,
    pub search_text: String,
}

impl PreparedChunk {
    /// What `chunks.metadata` records: the pages and the section, for citations.
    pub fn metadata(&self) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some((first, last)) = self.chunk.pages {
            metadata.insert("page".into(), first.into());
            if last != first {
                metadata.insert("page_end".into(), last.into());
            }
        }
        if let Some(heading) = &self.chunk.heading {
            metadata.insert("section".into(), heading.clone().into());
        }
        serde_json::Value::Object(metadata)
    }
}

/// A document parsed and chunked: everything ingestion does before embedding.
pub struct Prepared {
    pub chunks: Vec<PreparedChunk>,
    pub language: Option<iafactory_crds::Language>,
    pub pages: Option<u32>,
}

/// Parses and chunks a document in this process (CPU only: run it off the async
/// workers). Ingestion parses in a bounded child process instead
/// ([`sandbox::extract`]), then calls [`prepare_parsed`].
pub fn prepare(
    format: Format,
    content: &[u8],
    chunking: &iafactory_crds::knowledgebase::ChunkingSpec,
) -> Result<Prepared, ParseError> {
    Ok(prepare_parsed(parse::extract(format, content)?, chunking))
}

/// Chunks a parsed document (CPU only: run it off the async workers).
pub fn prepare_parsed(
    parsed: ParsedDocument,
    chunking: &iafactory_crds::knowledgebase::ChunkingSpec,
) -> Prepared {
    let language = text::detect_language(&parsed.text());
    let chunks = text::chunk_sections(
        &parsed.sections,
        chunking.size as usize,
        chunking.overlap as usize,
        language,
    );
    Prepared {
        chunks: chunks
            .into_iter()
            .map(|chunk| PreparedChunk {
                search_text: search_text(&chunk.text),
                chunk,
            })
            .collect(),
        language,
        pages: parsed.pages(),
    }
}

/// Embeds `texts`, reusing the tenant's cached vectors of identical texts.
pub async fn embed_cached(
    state: &AppState,
    tenant_id: Uuid,
    embedder: &dyn Embedder,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, IngestError> {
    let model = embedder.id();
    let hashes: Vec<Vec<u8>> = texts
        .iter()
        .map(|t| Sha256::digest(t.as_bytes()).to_vec())
        .collect();
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let cached: Vec<(Vec<u8>, pgvector::Vector)> = sqlx::query_as(
        "SELECT content_hash, embedding FROM embedding_cache WHERE model = $1 AND content_hash = ANY($2)",
    )
    .bind(&model)
    .bind(&hashes)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let cached: std::collections::HashMap<Vec<u8>, Vec<f32>> = cached
        .into_iter()
        .map(|(hash, vector)| (hash, vector.to_vec()))
        .collect();

    let missing: Vec<usize> = (0..texts.len())
        .filter(|i| !cached.contains_key(&hashes[*i]))
        .collect();
    let fresh = if missing.is_empty() {
        Vec::new()
    } else {
        let missing_texts: Vec<String> = missing.iter().map(|i| texts[*i].clone()).collect();
        embedder.embed(&missing_texts).await?
    };
    if !fresh.is_empty() {
        let mut tx = tenant_tx(&state.db, tenant_id).await?;
        sqlx::query(
            "INSERT INTO embedding_cache (tenant_id, model, content_hash, embedding)
             SELECT $1, $2, hash, embedding FROM UNNEST($3::bytea[], $4::vector[]) AS c(hash, embedding)
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant_id)
        .bind(&model)
        .bind(missing.iter().map(|i| hashes[*i].clone()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|v| pgvector::Vector::from(v.clone())).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let mut fresh = fresh.into_iter();
    Ok((0..texts.len())
        .map(|i| match cached.get(&hashes[i]) {
            Some(vector) => vector.clone(),
            None => fresh.next().unwrap_or_default(),
        })
        .collect())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

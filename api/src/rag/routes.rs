//! The RAG pipeline's HTTP API: knowledge bases, documents, search and answers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::Instant;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use iafactory_crds::knowledgebase::{ChunkingSpec, EmbeddingSpec, GenerationSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::generate::{self, ChatClient, GenerateError, ProviderError, ProviderView, Providers};
use super::grounding::{self, ExtractiveReason};
use super::parse::Format;
use super::search::{self, SearchFilters, SearchResult};
use super::store::Scope;
use crate::auth::{Auth, Scope as AuthScope};
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult};
use crate::http::{
    ApiJson, ApiPath, ApiQuery, Counted, Envelope, PageQuery, accepted, counted_page, created, ok,
};
use crate::state::AppState;

// ---- knowledge bases ---------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKnowledgeBase {
    #[schema(min_length = 1, max_length = 253)]
    pub name: String,
    pub description: Option<String>,
    /// `ar`, `fr`, `en`; all three by default.
    #[schema(value_type = Option<Vec<crate::openapi::crd::Language>>, min_items = 1)]
    pub languages: Option<Vec<String>>,
    /// `{provider, model, dimensions}`; the platform's model by default.
    #[schema(value_type = Option<crate::openapi::crd::Embedding>)]
    pub embedding: Option<EmbeddingSpec>,
    /// `{size, overlap}` in characters; 800 and 120 by default.
    #[schema(value_type = Option<crate::openapi::crd::Chunking>)]
    pub chunking: Option<ChunkingSpec>,
    /// `{provider, model}`: what answers queries over this knowledge base when they
    /// name no provider; the tenant's own model server when absent.
    #[schema(value_type = Option<crate::openapi::crd::Generation>)]
    pub generation: Option<GenerationSpec>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKnowledgeBase {
    pub description: Option<String>,
    #[schema(value_type = Option<Vec<crate::openapi::crd::Language>>, min_items = 1)]
    pub languages: Option<Vec<String>>,
    #[schema(value_type = Option<crate::openapi::crd::Chunking>)]
    pub chunking: Option<ChunkingSpec>,
    /// Only while the knowledge base holds no document: its vectors would not match.
    #[schema(value_type = Option<crate::openapi::crd::Embedding>)]
    pub embedding: Option<EmbeddingSpec>,
    /// `{provider, model}` sets the default model; `null` removes it; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::openapi::crd::Generation>)]
    pub generation: Option<Option<GenerationSpec>>,
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or set.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A knowledge base's default model: well formed, and one the tenant may call.
pub(crate) fn check_generation(
    providers: &Providers,
    generation: &GenerationSpec,
) -> Result<(), ApiError> {
    check_garde("generation", garde::Validate::validate(generation))?;
    providers
        .check(&generation.provider)
        .map_err(|e| ApiError::validation("generation.provider", e.to_string()))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KnowledgeBaseView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub languages: Vec<String>,
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
    #[schema(value_type = Object)]
    pub chunking: serde_json::Value,
    /// `{provider, model}`, or null: the tenant's own model server.
    #[schema(value_type = Option<Object>)]
    pub generation: Option<serde_json::Value>,
    pub vector_store: String,
    pub managed_by: String,
    pub documents: i64,
    pub chunks: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const KB_COLUMNS: &str = "kb.id, kb.name, kb.description, kb.languages, kb.embedding, kb.chunking, kb.generation, kb.vector_store, kb.managed_by,
     (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = kb.id) AS documents,
     (SELECT coalesce(sum(d.chunk_count), 0)::bigint FROM documents d WHERE d.knowledge_base_id = kb.id) AS chunks,
     kb.created_at, kb.updated_at";

fn check_languages(languages: &[String]) -> Result<(), ApiError> {
    if languages.is_empty()
        || languages
            .iter()
            .any(|l| !["ar", "fr", "en"].contains(&l.as_str()))
    {
        return Err(ApiError::validation(
            "languages",
            "give one or more of ar, fr, en",
        ));
    }
    Ok(())
}

fn check_garde(field: &str, result: Result<(), garde::Report>) -> Result<(), ApiError> {
    result.map_err(|report| {
        let message = report
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::validation(field, message)
    })
}

#[utoipa::path(post, path = "/api/knowledge-bases", tag = "knowledge bases", request_body = CreateKnowledgeBase,
    responses((status = 201, description = "created", body = Envelope<KnowledgeBaseView>),
              (status = 409, description = "the name is taken", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_knowledge_base(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateKnowledgeBase>,
) -> ApiResult<Response> {
    auth.require(AuthScope::Admin)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 253 {
        return Err(ApiError::validation("name", "must be 1 to 253 characters"));
    }
    let languages = body
        .languages
        .unwrap_or_else(|| vec!["ar".into(), "fr".into(), "en".into()]);
    check_languages(&languages)?;
    let embedding = body
        .embedding
        .unwrap_or_else(|| state.rag.default_embedding.clone());
    check_garde("embedding", garde::Validate::validate(&embedding))?;
    state
        .rag
        .embedders
        .resolve(&embedding.provider, &embedding.model)
        .map_err(|e| ApiError::validation("embedding.provider", e.to_string()))?;
    let chunking = body.chunking.unwrap_or_default();
    check_garde("chunking", garde::Validate::validate(&chunking))?;
    if chunking.overlap >= chunking.size {
        return Err(ApiError::validation(
            "chunking.overlap",
            "must be smaller than chunking.size",
        ));
    }
    if let Some(generation) = &body.generation {
        check_generation(&state.rag.providers, generation)?;
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO knowledge_bases (tenant_id, name, description, languages, embedding, chunking, generation)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(auth.tenant_id)
    .bind(name)
    .bind(&body.description)
    .bind(&languages)
    .bind(serde_json::to_value(&embedding).map_err(|e| ApiError::internal("encoding settings", e))?)
    .bind(serde_json::to_value(&chunking).map_err(|e| ApiError::internal("encoding settings", e))?)
    .bind(body.generation.as_ref().map(serde_json::to_value).transpose().map_err(|e| ApiError::internal("encoding settings", e))?)
    .fetch_one(&mut *tx)
    .await?;
    let view = fetch_knowledge_base(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("knowledge base"))?;
    tx.commit().await?;
    Ok(created(view))
}

async fn fetch_knowledge_base(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    id: Uuid,
) -> Result<Option<KnowledgeBaseView>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {KB_COLUMNS} FROM knowledge_bases kb WHERE kb.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The knowledge base, if the caller may use it: another tenant's (invisible under
/// RLS) and one outside an API key's restriction are both "not found".
async fn visible_knowledge_base(
    state: &AppState,
    auth: &Auth,
    id: Uuid,
) -> Result<KnowledgeBaseView, ApiError> {
    if !auth.may_use_knowledge_base(id) {
        return Err(ApiError::NotFound("knowledge base"));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let view = fetch_knowledge_base(&mut tx, id).await?;
    tx.commit().await?;
    view.ok_or(ApiError::NotFound("knowledge base"))
}

/// What a search needs of its knowledge bases, in one query: their ids and embedding
/// settings (not the document counts of [`KnowledgeBaseView`], which cost a scan of
/// the documents on every search).
#[derive(sqlx::FromRow)]
struct Searchable {
    id: Uuid,
    embedding: serde_json::Value,
    generation: Option<serde_json::Value>,
}

async fn searchable_knowledge_bases(
    state: &AppState,
    auth: &Auth,
    ids: &[Uuid],
) -> Result<Vec<Searchable>, ApiError> {
    if !ids.iter().all(|id| auth.may_use_knowledge_base(*id)) {
        return Err(ApiError::NotFound("knowledge base"));
    }
    // One round trip: the function sets the tenant for its statement's transaction
    // (migration 20261208020000), under row-level security as `tenant_tx` would.
    let mut found: Vec<Searchable> =
        sqlx::query_as("SELECT id, embedding, generation FROM searchable_knowledge_bases($1, $2)")
            .bind(auth.tenant_id)
            .bind(ids)
            .fetch_all(&state.db)
            .await?;
    let mut ordered = Vec::with_capacity(ids.len());
    for id in ids {
        if ordered.iter().any(|kb: &Searchable| kb.id == *id) {
            continue;
        }
        let position = found
            .iter()
            .position(|kb| kb.id == *id)
            .ok_or(ApiError::NotFound("knowledge base"))?;
        ordered.push(found.swap_remove(position));
    }
    Ok(ordered)
}

#[utoipa::path(get, path = "/api/knowledge-bases", tag = "knowledge bases", params(PageQuery),
    responses((status = 200, description = "the tenant's knowledge bases", body = Envelope<Vec<KnowledgeBaseView>>), crate::openapi::responses::Secured, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_knowledge_bases(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<KnowledgeBaseView>>>> {
    auth.require(AuthScope::Query)?;
    let page_request = query.validate(&["created_at", "name", "updated_at"])?;
    let allowed: Option<Vec<Uuid>> = auth.key.as_ref().and_then(|k| k.knowledge_base_ids.clone());
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let rows: Vec<Counted<KnowledgeBaseView>> = sqlx::query_as(&format!(
        "SELECT {KB_COLUMNS}, count(*) OVER () AS total FROM knowledge_bases kb
         WHERE ($3::uuid[] IS NULL OR kb.id = ANY($3))
         ORDER BY kb.{}, kb.id LIMIT $1 OFFSET $2",
        page_request.order_by()
    ))
    .bind(i64::from(page_request.limit))
    .bind(page_request.offset())
    .bind(&allowed)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counted_page(rows, &page_request))
}

#[utoipa::path(get, path = "/api/knowledge-bases/{id}", tag = "knowledge bases", params(("id" = Uuid, Path, description = "the knowledge base")),
    responses((status = 200, description = "the knowledge base", body = Envelope<KnowledgeBaseView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_knowledge_base(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<KnowledgeBaseView>>> {
    auth.require(AuthScope::Query)?;
    Ok(ok(visible_knowledge_base(&state, &auth, id).await?))
}

#[utoipa::path(patch, path = "/api/knowledge-bases/{id}", tag = "knowledge bases", params(("id" = Uuid, Path, description = "the knowledge base")), request_body = UpdateKnowledgeBase,
    responses((status = 200, description = "updated", body = Envelope<KnowledgeBaseView>),
              (status = 409, description = "an embedding change while it holds documents", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn update_knowledge_base(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateKnowledgeBase>,
) -> ApiResult<Json<Envelope<KnowledgeBaseView>>> {
    auth.require(AuthScope::Admin)?;
    let current = visible_knowledge_base(&state, &auth, id).await?;
    if let Some(languages) = &body.languages {
        check_languages(languages)?;
    }
    if let Some(chunking) = &body.chunking {
        check_garde("chunking", garde::Validate::validate(chunking))?;
        if chunking.overlap >= chunking.size {
            return Err(ApiError::validation(
                "chunking.overlap",
                "must be smaller than chunking.size",
            ));
        }
    }
    if let Some(embedding) = &body.embedding {
        check_garde("embedding", garde::Validate::validate(embedding))?;
        if current.documents > 0 {
            return Err(ApiError::Conflict(
                "the embedding cannot change while the knowledge base holds documents: its vectors would not match".into(),
            ));
        }
    }
    if let Some(Some(generation)) = &body.generation {
        check_generation(&state.rag.providers, generation)?;
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    sqlx::query(
        "UPDATE knowledge_bases SET description = coalesce($2, description), languages = coalesce($3, languages),
             chunking = coalesce($4, chunking), embedding = coalesce($5, embedding),
             generation = CASE WHEN $6 THEN $7 ELSE generation END, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&body.description)
    .bind(&body.languages)
    .bind(body.chunking.as_ref().map(serde_json::to_value).transpose().map_err(|e| ApiError::internal("encoding settings", e))?)
    .bind(body.embedding.as_ref().map(serde_json::to_value).transpose().map_err(|e| ApiError::internal("encoding settings", e))?)
    .bind(body.generation.is_some())
    .bind(body.generation.as_ref().and_then(Option::as_ref).map(serde_json::to_value).transpose().map_err(|e| ApiError::internal("encoding settings", e))?)
    .execute(&mut *tx)
    .await?;
    let view = fetch_knowledge_base(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("knowledge base"))?;
    tx.commit().await?;
    Ok(ok(view))
}

#[utoipa::path(delete, path = "/api/knowledge-bases/{id}", tag = "knowledge bases", params(("id" = Uuid, Path, description = "the knowledge base")),
    responses((status = 200, description = "deleted with its documents and vectors", body = Envelope<crate::openapi::bodies::Deleted>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_knowledge_base(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    auth.require(AuthScope::Admin)?;
    visible_knowledge_base(&state, &auth, id).await?;
    // Vectors first: if the store fails, nothing is deleted and the call can be repeated.
    state
        .rag
        .store
        .delete_collection(Scope {
            tenant_id: auth.tenant_id,
            knowledge_base_id: id,
        })
        .await
        .map_err(|e| ApiError::internal("deleting the vectors", e))?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    sqlx::query("DELETE FROM knowledge_bases WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok(serde_json::json!({ "id": id, "deleted": true })))
}

// ---- documents ---------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextDocument {
    #[schema(min_length = 1, max_length = 500)]
    pub title: String,
    #[schema(min_length = 1)]
    pub text: String,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: Uuid,
    pub knowledge_base_id: Uuid,
    pub title: String,
    pub content_type: String,
    pub size_bytes: i64,
    /// `pending`, `processing`, `ready` or `failed`.
    pub status: String,
    /// Why ingestion failed, in words.
    pub error: Option<String>,
    pub language: Option<String>,
    pub chunk_count: i32,
    /// How many pages a paged document (PDF) has.
    pub pages: Option<i32>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadAccepted {
    pub id: Uuid,
    pub status: String,
    /// True when the same content was already in this knowledge base: nothing new was stored.
    pub duplicate: bool,
}

const DOCUMENT_COLUMNS: &str = "id, knowledge_base_id, title, content_type, size_bytes, status, error, language, chunk_count, pages, metadata, created_at, updated_at";

struct Upload {
    title: String,
    filename: String,
    format: Format,
    bytes: Vec<u8>,
    metadata: serde_json::Value,
}

/// Whether every number in `value` comes back from PostgreSQL readable: jsonb keeps a
/// number as `numeric` and prints it in full (1.7976931348623157e308 becomes 309
/// digits), which serde_json refuses to read as an f64 near its limit, so such a
/// document could be stored and never listed again.
fn numbers_read_back(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|x| x.abs() < 1e300),
        serde_json::Value::Array(items) => items.iter().all(numbers_read_back),
        serde_json::Value::Object(fields) => fields.values().all(numbers_read_back),
        _ => true,
    }
}

/// Reads a multipart `file` field or a JSON `{title, text, metadata}` body.
async fn read_upload(state: &AppState, request: Request) -> Result<Upload, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let limit = state.config.max_upload_bytes;
    if content_type.starts_with("application/json") {
        let ApiJson(body) = ApiJson::<TextDocument>::from_request(request, state).await?;
        let title = body.title.trim().to_owned();
        if title.is_empty() || title.chars().count() > 500 {
            return Err(ApiError::validation("title", "must be 1 to 500 characters"));
        }
        if body.text.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit: Some(limit) });
        }
        if body.text.trim().is_empty() {
            return Err(ApiError::validation("text", "is empty"));
        }
        let metadata = serde_json::Value::Object(body.metadata.unwrap_or_default());
        if !numbers_read_back(&metadata) {
            return Err(ApiError::validation(
                "metadata",
                "numbers must lie between -1e300 and 1e300",
            ));
        }
        return Ok(Upload {
            filename: format!("{title}.txt"),
            title,
            format: Format::Text,
            bytes: body.text.into_bytes(),
            metadata,
        });
    }
    if !content_type.starts_with("multipart/form-data") {
        return Err(ApiError::UnsupportedMediaType(
            "upload a file as multipart/form-data (field \"file\"), or send JSON {title, text, metadata}".into(),
        ));
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut title = None;
    let mut file = None;
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                let filename = field.file_name().unwrap_or("document").to_owned();
                let declared = field.content_type().map(str::to_owned);
                let Some(format) = Format::detect(&filename, declared.as_deref()) else {
                    return Err(ApiError::UnsupportedMediaType(format!(
                        "{filename:?} is not a supported document: upload .txt, .md, .html, .pdf, .docx or .csv"
                    )));
                };
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if bytes.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge { limit: Some(limit) });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((filename, format, bytes));
            }
            Some("title") => title = Some(field.text().await.map_err(multipart_error)?),
            _ => {}
        }
    }
    let (filename, format, bytes) = file
        .ok_or_else(|| ApiError::validation("file", "the multipart body has no \"file\" field"))?;
    if bytes.is_empty() {
        return Err(ApiError::validation("file", "the file is empty"));
    }
    let title = title.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| {
        filename
            .rsplit_once('.')
            .map_or(filename.clone(), |(stem, _)| stem.to_owned())
    });
    Ok(Upload {
        title,
        filename,
        format,
        bytes,
        metadata: serde_json::json!({}),
    })
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: None }
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", error.body_text()))
    }
}

#[utoipa::path(post, path = "/api/knowledge-bases/{id}/documents", tag = "documents", params(("id" = Uuid, Path, description = "the knowledge base")),
    request_body(description = "a file (multipart, field `file`), or a text as JSON",
        content((crate::openapi::bodies::UploadForm = "multipart/form-data"), (TextDocument = "application/json"))),
    responses((status = 202, description = "accepted for ingestion", body = Envelope<UploadAccepted>),
              (status = 200, description = "the same content was already there (data.duplicate)", body = Envelope<UploadAccepted>),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::JsonBody,
              (status = 413, description = "over the upload limit (`IAF_MAX_UPLOAD_BYTES`)", body = crate::error::ErrorEnvelope),
              (status = 415, description = "neither multipart nor JSON, or a file of an unsupported type", body = crate::error::ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn upload_document(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(knowledge_base_id): ApiPath<Uuid>,
    request: Request,
) -> ApiResult<Response> {
    auth.require(AuthScope::Ingest)?;
    visible_knowledge_base(&state, &auth, knowledge_base_id).await?;
    let upload = read_upload(&state, request).await?;
    let hash = hex::encode(Sha256::digest(&upload.bytes));
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let existing: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT id, status FROM documents WHERE knowledge_base_id = $1 AND content_hash = $2 AND source_id IS NULL",
    )
    .bind(knowledge_base_id)
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, status)) = existing {
        tx.commit().await?;
        return Ok(ok(UploadAccepted {
            id,
            status,
            duplicate: true,
        })
        .into_response());
    }
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO documents (tenant_id, knowledge_base_id, title, content_type, content_hash, size_bytes, metadata)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(auth.tenant_id)
    .bind(knowledge_base_id)
    .bind(&upload.title)
    .bind(upload.format.content_type())
    .bind(&hash)
    .bind(upload.bytes.len() as i64)
    .bind(&upload.metadata)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO document_blobs (document_id, tenant_id, filename, content) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(auth.tenant_id)
        .bind(&upload.filename)
        .bind(&upload.bytes)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO ingestion_jobs (tenant_id, document_id) VALUES ($1, $2)")
        .bind(auth.tenant_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    state.rag.jobs.notify_one();
    Ok(accepted(UploadAccepted {
        id,
        status: "pending".into(),
        duplicate: false,
    }))
}

#[utoipa::path(get, path = "/api/knowledge-bases/{id}/documents", tag = "documents", params(("id" = Uuid, Path, description = "the knowledge base"), PageQuery),
    responses((status = 200, description = "documents with their status", body = Envelope<Vec<DocumentView>>), crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_documents(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(knowledge_base_id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<DocumentView>>>> {
    auth.require(AuthScope::Query)?;
    visible_knowledge_base(&state, &auth, knowledge_base_id).await?;
    let page_request = query.validate(&["created_at", "title", "status", "updated_at"])?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let rows: Vec<Counted<DocumentView>> = sqlx::query_as(&format!(
        "SELECT {DOCUMENT_COLUMNS}, count(*) OVER () AS total FROM documents WHERE knowledge_base_id = $3
         ORDER BY {}, id LIMIT $1 OFFSET $2",
        page_request.order_by()
    ))
    .bind(i64::from(page_request.limit))
    .bind(page_request.offset())
    .bind(knowledge_base_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counted_page(rows, &page_request))
}

#[utoipa::path(get, path = "/api/knowledge-bases/{id}/documents/{doc_id}", tag = "documents", params(("id" = Uuid, Path, description = "the knowledge base"), ("doc_id" = Uuid, Path, description = "the document")),
    responses((status = 200, description = "data.status and, when it failed, data.error", body = Envelope<DocumentView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_document(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((knowledge_base_id, document_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Json<Envelope<DocumentView>>> {
    auth.require(AuthScope::Query)?;
    if !auth.may_use_knowledge_base(knowledge_base_id) {
        return Err(ApiError::NotFound("document"));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let document: Option<DocumentView> = sqlx::query_as(&format!(
        "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = $1 AND knowledge_base_id = $2"
    ))
    .bind(document_id)
    .bind(knowledge_base_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    document.map(ok).ok_or(ApiError::NotFound("document"))
}

#[utoipa::path(delete, path = "/api/knowledge-bases/{id}/documents/{doc_id}", tag = "documents", params(("id" = Uuid, Path, description = "the knowledge base"), ("doc_id" = Uuid, Path, description = "the document")),
    responses((status = 200, description = "deleted with its chunks and vectors", body = Envelope<crate::openapi::bodies::Deleted>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_document(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((knowledge_base_id, document_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    auth.require(AuthScope::Ingest)?;
    if !auth.may_use_knowledge_base(knowledge_base_id) {
        return Err(ApiError::NotFound("document"));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let exists: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM documents WHERE id = $1 AND knowledge_base_id = $2")
            .bind(document_id)
            .bind(knowledge_base_id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    exists.ok_or(ApiError::NotFound("document"))?;
    state
        .rag
        .store
        .delete_document(
            Scope {
                tenant_id: auth.tenant_id,
                knowledge_base_id,
            },
            document_id,
        )
        .await
        .map_err(|e| ApiError::internal("deleting the vectors", e))?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    sqlx::query("DELETE FROM documents WHERE id = $1")
        .bind(document_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok(
        serde_json::json!({ "id": document_id, "deleted": true }),
    ))
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChunkView {
    pub id: Uuid,
    pub document_id: Uuid,
    pub knowledge_base_id: Uuid,
    pub title: String,
    pub ordinal: i32,
    pub content: String,
    pub language: Option<String>,
}

/// One passage, in full: what a citation opens.
#[utoipa::path(get, path = "/api/chunks/{id}", tag = "documents", params(("id" = Uuid, Path, description = "the passage (a citation's chunk_id)")),
    responses((status = 200, description = "the passage", body = Envelope<ChunkView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_chunk(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<ChunkView>>> {
    auth.require(AuthScope::Query)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let chunk: Option<ChunkView> = sqlx::query_as(
        "SELECT c.id, c.document_id, c.knowledge_base_id, d.title, c.ordinal, c.content, c.language
         FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    chunk
        .filter(|c| auth.may_use_knowledge_base(c.knowledge_base_id))
        .map(ok)
        .ok_or(ApiError::NotFound("passage"))
}

// ---- search and answers ------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    #[schema(min_length = 1, max_length = 2000)]
    pub query: String,
    #[schema(min_items = 1, max_items = 20)]
    pub knowledge_base_ids: Vec<Uuid>,
    /// 1 to 50; 5 by default.
    #[schema(minimum = 1, maximum = 50)]
    pub top_k: Option<usize>,
    pub filters: Option<SearchFilters>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    #[schema(min_length = 1, max_length = 2000)]
    pub query: String,
    #[schema(min_items = 1, max_items = 20)]
    pub knowledge_base_ids: Vec<Uuid>,
    /// 1 to 50; 5 by default.
    #[schema(minimum = 1, maximum = 50)]
    pub top_k: Option<usize>,
    /// Stream the answer over server-sent events.
    #[serde(default)]
    pub stream: bool,
    pub filters: Option<SearchFilters>,
    /// Who answers: `ollama` (the tenant's model server) or one of the tenant's
    /// providers (`GET /api/providers`). By default, the first of the knowledge bases
    /// with a `generation` default names it, else `ollama`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = "^[A-Za-z0-9][A-Za-z0-9-]*$"
    )]
    pub provider: Option<String>,
    /// The model at that provider. By default, the knowledge base's default model (when
    /// its provider is the one answering), else the tenant's model for `ollama`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:/+-]*$"
    )]
    pub model: Option<String>,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub embed_ms: u64,
    pub search_ms: u64,
    pub generate_ms: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    pub timings: Timings,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Citation {
    pub n: usize,
    pub document_id: Uuid,
    pub title: String,
    pub chunk_id: Uuid,
    pub snippet: String,
    pub score: f32,
    pub language: Option<String>,
    pub page: Option<i32>,
    pub section: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryResponse {
    pub answer: String,
    pub citations: Vec<Citation>,
    pub timings: Timings,
    /// True when the answer is made of the passages: no model answered, or its answer
    /// was replaced (see `extractive_reason`).
    pub extractive: bool,
    /// Why the answer is extractive; null when the model's answer is returned.
    pub extractive_reason: Option<ExtractiveReason>,
    /// The share of the generated answer's content words found in its passages or the
    /// question (see docs/rag.md, "Grounded answers"); null when nothing was generated.
    pub grounded_share: Option<f32>,
    /// The language the question was detected in.
    pub language: Option<String>,
    /// The provider and model asked to answer (null when none was configured); with
    /// `extractive`, they did not answer.
    pub provider: Option<String>,
    pub model: Option<String>,
}

pub(crate) struct Retrieved {
    pub(crate) results: Vec<SearchResult>,
    pub(crate) timings: Timings,
    /// The default model of the first knowledge base (in the order asked) that has one.
    pub(crate) generation: Option<GenerationSpec>,
}

/// Embeds the query (once per distinct embedding model), ranks every knowledge base,
/// fuses and returns the best `top_k`.
pub(crate) async fn retrieve(
    state: &AppState,
    auth: &Auth,
    query: &str,
    knowledge_base_ids: &[Uuid],
    top_k: Option<usize>,
    filters: &SearchFilters,
) -> Result<Retrieved, ApiError> {
    auth.require(AuthScope::Query)?;
    let query = query.trim();
    if query.is_empty() || query.chars().count() > 2000 {
        return Err(ApiError::validation(
            "query",
            "must be 1 to 2000 characters",
        ));
    }
    if knowledge_base_ids.is_empty() || knowledge_base_ids.len() > 20 {
        return Err(ApiError::validation(
            "knowledge_base_ids",
            "give 1 to 20 knowledge bases",
        ));
    }
    let top_k = top_k.unwrap_or(5);
    if !(1..=50).contains(&top_k) {
        return Err(ApiError::validation("top_k", "must be between 1 and 50"));
    }
    // Another tenant's id is never searched: it is a 404 before anything runs.
    let lookup_started = Instant::now();
    let knowledge_bases = searchable_knowledge_bases(state, auth, knowledge_base_ids).await?;
    state
        .rag
        .metrics
        .stage("search_lookup", lookup_started.elapsed());

    let mut timings = Timings::default();
    let embed_started = Instant::now();
    let mut vectors: BTreeMap<String, Option<std::sync::Arc<Vec<f32>>>> = BTreeMap::new();
    for kb in &knowledge_bases {
        let key = kb.embedding.to_string();
        if vectors.contains_key(&key) {
            continue;
        }
        let vector = match serde_json::from_value::<EmbeddingSpec>(kb.embedding.clone())
            .ok()
            .and_then(|spec| {
                state
                    .rag
                    .embedders
                    .resolve(&spec.provider, &spec.model)
                    .ok()
            }) {
            Some(embedder) => match state
                .rag
                .query_vectors
                .embed(embedder.as_ref(), query)
                .await
            {
                Ok(vector) => Some(vector),
                Err(error) => {
                    // Full-text search still answers while the embedding server is down.
                    tracing::warn!(%error, "query embedding failed; searching text only");
                    None
                }
            },
            None => None,
        };
        vectors.insert(key, vector);
    }
    timings.embed_ms = embed_started.elapsed().as_millis() as u64;
    state.rag.metrics.stage("embed", embed_started.elapsed());

    let search_started = Instant::now();
    let candidates = (top_k * 4).max(20);
    let mut lists = Vec::new();
    // With the pgvector store, both rankings and the ranked rows' details come from one
    // statement per knowledge base; the other stores rank vectors themselves, and the
    // details are read after the fusion.
    let in_database = state.rag.store.kind() == "pgvector";
    let mut details = HashMap::new();
    for kb in &knowledge_bases {
        let vector = vectors.get(&kb.embedding.to_string()).cloned().flatten();
        let scope = Scope {
            tenant_id: auth.tenant_id,
            knowledge_base_id: kb.id,
        };
        if in_database {
            let query_vector = vector.as_deref().map(Vec::as_slice);
            let ranked = match search::rank_in_database(
                &state.db,
                scope,
                query,
                query_vector,
                candidates,
                filters,
            )
            .await
            {
                Ok(ranked) => ranked,
                Err(error) if query_vector.is_some() => {
                    // As with the other stores: a failing vector branch (say, a query
                    // vector of another size) leaves the full-text results.
                    tracing::warn!(%error, "vector search failed; using full-text results only");
                    search::rank_in_database(&state.db, scope, query, None, candidates, filters)
                        .await
                        .map_err(|e| ApiError::internal("searching", e))?
                }
                Err(error) => return Err(ApiError::internal("searching", error)),
            };
            lists.extend(ranked.lists);
            details.extend(ranked.details);
            continue;
        }
        match search::rank(
            &state.db,
            state.rag.store.as_ref(),
            scope,
            query,
            vector.as_deref().map(Vec::as_slice),
            candidates,
            filters,
        )
        .await
        {
            Ok(mut ranked) => lists.append(&mut ranked),
            Err(search::SearchError::Store(error)) => {
                tracing::warn!(%error, "vector search failed; using full-text results only");
                let fallback = search::rank(
                    &state.db,
                    state.rag.store.as_ref(),
                    scope,
                    query,
                    None,
                    candidates,
                    filters,
                )
                .await
                .map_err(|e| ApiError::internal("searching", e))?;
                lists.extend(fallback);
            }
            Err(error) => return Err(ApiError::internal("searching", error)),
        }
    }
    state
        .rag
        .metrics
        .stage("search_rank", search_started.elapsed());
    let fused = search::reciprocal_rank_fusion(&lists);
    let wanted = if state.rag.reranker.is_some() {
        top_k.max(20)
    } else {
        top_k
    };
    let mut results = if in_database {
        search::present(&fused, details, query, wanted)
    } else {
        search::results(&state.db, auth.tenant_id, &fused, query, filters, wanted)
            .await
            .map_err(|e| ApiError::internal("reading the results", e))?
    };
    if let Some(reranker) = &state.rag.reranker {
        match reranker.rerank(query, results.clone()).await {
            Ok(reranked) => results = reranked,
            // The fused order is a good answer on its own.
            Err(error) => tracing::warn!(%error, "reranking failed; keeping the fused order"),
        }
        results.truncate(top_k);
    }
    timings.search_ms = search_started.elapsed().as_millis() as u64;
    state.rag.metrics.stage("search", search_started.elapsed());
    let generation = knowledge_bases
        .iter()
        .filter_map(|kb| kb.generation.clone())
        .find_map(|g| serde_json::from_value(g).ok());
    Ok(Retrieved {
        results,
        timings,
        generation,
    })
}

#[utoipa::path(post, path = "/api/search", tag = "search", request_body = SearchRequest,
    responses((status = 200, description = "the best passages", body = Envelope<SearchResponse>),
              (status = 404, description = "a knowledge base that is not the tenant's", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn search_route(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<SearchRequest>,
) -> ApiResult<Json<Envelope<SearchResponse>>> {
    let filters = body.filters.unwrap_or_default();
    let retrieved = retrieve(
        &state,
        &auth,
        &body.query,
        &body.knowledge_base_ids,
        body.top_k,
        &filters,
    )
    .await?;
    Ok(ok(SearchResponse {
        results: retrieved.results,
        timings: retrieved.timings,
    }))
}

pub(crate) fn citations(results: &[SearchResult]) -> Vec<Citation> {
    results
        .iter()
        .enumerate()
        .map(|(i, r)| Citation {
            n: i + 1,
            document_id: r.document_id,
            title: r.title.clone(),
            chunk_id: r.chunk_id,
            snippet: r.snippet.clone(),
            score: r.score,
            language: r.language.clone(),
            page: r.page,
            section: r.section.clone(),
        })
        .collect()
}

const MAX_ANSWER_TOKENS: u32 = 512;

/// The model that answers, and under which names.
struct Answerer {
    provider: String,
    client: ChatClient,
}

/// Who answers a query: the provider it names, else the knowledge bases' default,
/// else the tenant's model server with its default model. `Ok(None)`: no model is
/// configured at all, and the answer is extractive.
fn choose_answerer(
    providers: &Providers,
    provider: Option<&str>,
    model: Option<&str>,
    default: Option<&GenerationSpec>,
) -> Result<Option<Answerer>, ProviderError> {
    let Some(provider) = provider.or(default.map(|d| d.provider.as_str())) else {
        return Ok(match model {
            Some(model) => Some(Answerer {
                provider: generate::OLLAMA.to_owned(),
                client: providers.client(generate::OLLAMA, model)?,
            }),
            None => providers.default_client().map(|client| Answerer {
                provider: generate::OLLAMA.to_owned(),
                client,
            }),
        });
    };
    providers.check(provider)?;
    let model = model
        .or(default
            .filter(|d| d.provider == provider)
            .map(|d| d.model.as_str()))
        .or(providers.default_model(provider))
        .ok_or_else(|| ProviderError::NoModel {
            name: provider.to_owned(),
        })?;
    Ok(Some(Answerer {
        provider: provider.to_owned(),
        client: providers.client(provider, model)?,
    }))
}

/// The request's own choice, checked before any search runs.
fn check_choice(state: &AppState, body: &QueryRequest) -> Result<(), ApiError> {
    let name_pattern = |value: &str, max: usize, extra: &[char]| {
        !value.is_empty()
            && value.len() <= max
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if let Some(provider) = &body.provider {
        if !name_pattern(provider, 63, &['-']) {
            return Err(ApiError::validation(
                "provider",
                "a provider name: lowercase letters, digits and '-'",
            ));
        }
        state
            .rag
            .providers
            .check(provider)
            .map_err(|e| ApiError::validation("provider", e.to_string()))?;
    }
    if let Some(model) = &body.model
        && !name_pattern(model, 128, &['.', '_', ':', '/', '+', '-'])
    {
        return Err(ApiError::validation(
            "model",
            "1 to 128 letters, digits or . _ : / + -",
        ));
    }
    Ok(())
}

/// The tenant's providers: which a query (or a knowledge base's default) may name.
#[utoipa::path(get, path = "/api/providers", tag = "search",
    responses((status = 200, description = "the providers a query may name", body = Envelope<Vec<ProviderView>>), crate::openapi::responses::Secured),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_providers(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Envelope<Vec<ProviderView>>>> {
    auth.require(AuthScope::Query)?;
    Ok(ok(state.rag.providers.views()))
}

#[utoipa::path(post, path = "/api/query", tag = "search", request_body = QueryRequest,
    responses((status = 200, description = "the answer with its citations; with `stream: true`, server-sent events: `token` events (text), a `replace` event (text) when the streamed answer failed the grounding checks and is replaced by the passages, then one `done` event (JSON: citations, timings, extractive, extractive_reason, grounded_share, language, provider, model)",
               content((Envelope<QueryResponse> = "application/json"), (String = "text/event-stream"))),
              (status = 404, description = "a knowledge base that is not the tenant's", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn query_route(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<QueryRequest>,
) -> ApiResult<Response> {
    check_choice(&state, &body)?;
    let filters = body.filters.clone().unwrap_or_default();
    let Retrieved {
        results,
        mut timings,
        generation,
    } = retrieve(
        &state,
        &auth,
        &body.query,
        &body.knowledge_base_ids,
        body.top_k,
        &filters,
    )
    .await?;
    let answerer = choose_answerer(
        &state.rag.providers,
        body.provider.as_deref(),
        body.model.as_deref(),
        generation.as_ref(),
    )
    .map_err(|e| {
        let message = if body.provider.is_none() {
            format!("the knowledge base's default model (generation): {e}")
        } else {
            e.to_string()
        };
        ApiError::validation("provider", message)
    })?;
    let language = super::text::detect_language(&body.query).map(|l| l.code().to_owned());
    let citations = citations(&results);
    let messages = generate::prompt(&body.query, &results);

    if body.stream {
        return Ok(stream_answer(
            state, body.query, results, citations, messages, timings, language, answerer,
        )
        .into_response());
    }

    let generate_started = Instant::now();
    let generated = match (&answerer, results.is_empty()) {
        (Some(answerer), false) => answerer
            .client
            .complete(&messages, MAX_ANSWER_TOKENS)
            .await
            .map(|(text, _)| text),
        (Some(_), true) => Err(GenerateError::Protocol {
            url: String::new(),
            reason: "nothing to ground an answer on".into(),
        }),
        (None, _) => Err(GenerateError::NotConfigured),
    };
    timings.generate_ms = generate_started.elapsed().as_millis() as u64;
    state
        .rag
        .metrics
        .stage("generate", generate_started.elapsed());
    let (generated, extractive_reason) = match generated {
        Ok(text) if !text.trim().is_empty() => (Some(text.trim().to_owned()), None),
        Ok(_) => (None, Some(ExtractiveReason::GenerationFailed)),
        Err(GenerateError::NotConfigured) => (None, Some(ExtractiveReason::NoModel)),
        Err(_) if results.is_empty() => (None, Some(ExtractiveReason::NoPassages)),
        Err(error) => {
            tracing::warn!(provider = answerer.as_ref().map(|a| a.provider.as_str()), %error, "generation failed; answering with the passages");
            (None, Some(ExtractiveReason::GenerationFailed))
        }
    };
    let (answer, extractive_reason, grounded_share) = match generated {
        Some(text) => {
            let assessment = grounding::assess(&body.query, &text, &results);
            match assessment.rejected {
                None => (text, None, Some(assessment.grounded_share)),
                Some(reason) => {
                    replaced(&state, reason, &assessment);
                    (
                        generate::extractive_answer(&body.query, &results),
                        Some(reason),
                        Some(assessment.grounded_share),
                    )
                }
            }
        }
        None => (
            generate::extractive_answer(&body.query, &results),
            extractive_reason,
            None,
        ),
    };
    let extractive = extractive_reason.is_some();
    if extractive {
        state.rag.metrics.extractive_answers.inc();
    }
    Ok(ok(QueryResponse {
        answer,
        citations,
        timings,
        extractive,
        extractive_reason,
        grounded_share,
        language,
        provider: answerer.as_ref().map(|a| a.provider.clone()),
        model: answerer.map(|a| a.client.model),
    })
    .into_response())
}

/// A generated answer failed the grounding checks: counted and logged (without its
/// text, which may quote the tenant's documents).
fn replaced(state: &AppState, reason: ExtractiveReason, assessment: &grounding::Assessment) {
    let label = reason.as_str().to_owned();
    tracing::info!(reason = %label, grounded_share = assessment.grounded_share, content_words = assessment.content_words, "the model's answer was replaced by the passages");
    state
        .rag
        .metrics
        .replaced_answers
        .get_or_create(&super::ReasonLabel { reason: label })
        .inc();
}

/// SSE: `token` events as the model writes, then one `done` event with the citations,
/// the timings, whether the answer was extractive (and why), the grounded share, and
/// the provider and model asked. Without a model, or when it fails before its first
/// token, the extractive answer comes as one token. When the streamed answer fails the
/// grounding checks, a `replace` event carries the extractive answer, which replaces
/// everything streamed before it.
#[allow(clippy::too_many_arguments)]
fn stream_answer(
    state: AppState,
    question: String,
    results: Vec<SearchResult>,
    citations: Vec<Citation>,
    messages: Vec<generate::Message>,
    mut timings: Timings,
    language: Option<String>,
    answerer: Option<Answerer>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let started = Instant::now();
        let mut extractive = true;
        let mut reason = match (&answerer, results.is_empty()) {
            (None, _) => Some(ExtractiveReason::NoModel),
            (Some(_), true) => Some(ExtractiveReason::NoPassages),
            (Some(_), false) => Some(ExtractiveReason::GenerationFailed),
        };
        let mut streamed = String::new();
        let mut grounded_share = None;
        if let (Some(answerer), false) = (&answerer, results.is_empty()) {
            match answerer.client.stream(&messages, MAX_ANSWER_TOKENS).await {
                Ok(mut tokens) => {
                    while let Some(token) = tokens.next().await {
                        match token {
                            Ok(text) => {
                                extractive = false;
                                reason = None;
                                streamed.push_str(&text);
                                if sender
                                    .send(Event::default().event("token").data(text))
                                    .await
                                    .is_err()
                                {
                                    return; // the client left
                                }
                            }
                            Err(error) => {
                                tracing::warn!(provider = %answerer.provider, %error, "the model's stream broke off");
                                break;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(provider = %answerer.provider, %error, "generation failed; streaming the passages")
                }
            }
        }
        if !extractive {
            let assessment = grounding::assess(&question, streamed.trim(), &results);
            grounded_share = Some(assessment.grounded_share);
            if let Some(rejected) = assessment.rejected {
                replaced(&state, rejected, &assessment);
                extractive = true;
                reason = Some(rejected);
                let answer = generate::extractive_answer(&question, &results);
                let _ = sender
                    .send(Event::default().event("replace").data(answer))
                    .await;
            }
        } else {
            let answer = generate::extractive_answer(&question, &results);
            let _ = sender
                .send(Event::default().event("token").data(answer))
                .await;
        }
        if extractive {
            state.rag.metrics.extractive_answers.inc();
        }
        timings.generate_ms = started.elapsed().as_millis() as u64;
        state.rag.metrics.stage("generate", started.elapsed());
        let done = serde_json::json!({
            "citations": citations, "timings": timings, "extractive": extractive,
            "extractive_reason": reason, "grounded_share": grounded_share, "language": language,
            "provider": answerer.as_ref().map(|a| a.provider.as_str()),
            "model": answerer.as_ref().map(|a| a.client.model.as_str()),
        });
        let _ = sender
            .send(Event::default().event("done").data(done.to_string()))
            .await;
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok))
        .keep_alive(KeepAlive::default())
}

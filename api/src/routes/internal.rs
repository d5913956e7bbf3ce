//! `/internal/*`: how the operator and the appliance register a tenant's resources.
//! Authenticated by the per-tenant operator token (`IAF_OPERATOR_TOKEN`), compared in
//! constant time. The bodies are the resources' plans (`iafactory_crds::plan`), as the
//! drivers computed them with the platform configuration: a KnowledgeBase without an
//! embedding arrives with the platform's `api.default_embedding`, not the API's own.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use garde::Validate;
use iafactory_crds::plan::WorkflowPlan;
use iafactory_crds::tenant_api::{
    KnowledgeBaseRegistration, ReembedProgress, SourceRecord, TenantUpsert,
};
use iafactory_crds::workflow::WorkflowSpec;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::auth;
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult, FieldProblem};
use crate::http::{ApiJson, ApiPath, Envelope, ok};
use crate::routes::accounts::{UserView, check_email, hash_off_thread};
use crate::state::AppState;

/// The operator (or the appliance), proven by the operator token.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let expected = state.config.operator_token.expose();
        if expected.is_empty() {
            return Err(ApiError::NotFound(
                "internal API (IAF_OPERATOR_TOKEN is not set)",
            ));
        }
        // The internal listener has no proxy in front of it: the peer is the client.
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let refused = |wait: std::time::Duration| {
            tracing::warn!(%client, "operator-token attempts refused: too many failures");
            ApiError::RateLimited {
                retry_after_seconds: wait.as_secs_f64().ceil() as u64,
            }
        };
        state.operator_guard.check(client).map_err(refused)?;
        let presented = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Operator)
        } else {
            state.operator_guard.failed(client).map_err(refused)?;
            Err(ApiError::Unauthorized(
                "the operator token is missing or wrong",
            ))
        }
    }
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TenantRecord {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub status: String,
}

/// A spec's refusal, each field named as in the manifest (`chunking.size`,
/// `llmProviders[0].baseUrl`), not in Rust's spelling.
fn invalid(report: garde::Report) -> ApiError {
    let fields: Vec<FieldProblem> = report
        .iter()
        .map(|(path, error)| FieldProblem {
            field: iafactory_crds::validation::manifest_spelling(&path.to_string()),
            message: error.to_string(),
        })
        .collect();
    let message = fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError::Validation { message, fields }
}

/// A plan is for the resource its path names: a driver that sends another tenant's
/// plan, or another resource's, has a bug that must not register anything.
fn check_plan_names(
    tenant: (&str, &str, &str),
    resource: (&str, &str, &str),
) -> Result<(), ApiError> {
    for (field, planned, in_path) in [tenant, resource] {
        if planned != in_path {
            return Err(ApiError::Validation {
                message: format!(
                    "{field}: the plan is for {planned:?}, the path names {in_path:?}"
                ),
                fields: vec![FieldProblem {
                    field: field.to_owned(),
                    message: format!("the plan is for {planned:?}, the path names {in_path:?}"),
                }],
            });
        }
    }
    Ok(())
}

async fn tenant_id(state: &AppState, slug: &str) -> Result<Uuid, ApiError> {
    sqlx::query_scalar::<_, Option<Uuid>>("SELECT tenant_id_by_slug($1)")
        .bind(slug)
        .fetch_one(&state.db)
        .await?
        .ok_or(ApiError::NotFound("tenant"))
}

/// Creates or updates a tenant by slug.
#[utoipa::path(put, path = "/internal/tenants/{slug}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug")), request_body = crate::openapi::crd::TenantRegistration,
    responses((status = 200, description = "the tenant")), security(("operator_token" = [])))]
pub async fn upsert_tenant(
    State(state): State<AppState>,
    _: Operator,
    ApiPath(slug): ApiPath<String>,
    ApiJson(body): ApiJson<TenantUpsert>,
) -> ApiResult<Json<Envelope<TenantRecord>>> {
    if !iafactory_crds::validation::is_dns_label(&slug) {
        return Err(ApiError::validation("slug", "must be a DNS label"));
    }
    let id = match sqlx::query_scalar::<_, Option<Uuid>>("SELECT tenant_id_by_slug($1)")
        .bind(&slug)
        .fetch_one(&state.db)
        .await?
    {
        Some(id) => id,
        None => Uuid::new_v4(),
    };
    let mut tx = tenant_tx(&state.db, id).await?;
    // The operator and the appliance send every tenant at every reconcile: a row is
    // rewritten (and its updated_at moved) only when something in it changed.
    let written = sqlx::query(
        "INSERT INTO tenants (id, slug, name, plan, status) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, plan = EXCLUDED.plan, status = EXCLUDED.status,
             updated_at = now()
         WHERE (tenants.name, tenants.plan, tenants.status) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.plan, EXCLUDED.status)",
    )
    .bind(id)
    .bind(&slug)
    .bind(&body.name)
    .bind(body.plan.as_str())
    .bind(if body.suspended { "suspended" } else { "active" })
    .execute(&mut *tx)
    .await?;
    let changed = written.rows_affected() > 0;
    let record: TenantRecord =
        sqlx::query_as("SELECT id, slug, name, plan, status FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    if changed && body.suspended {
        // This replica's sessions stop at once; the others' within their cache's TTL.
        state.sessions.clear().await;
    }
    Ok(ok(record))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct AdminPassword {
    pub password: String,
}

/// Creates the tenant's administrator, or gives an existing user of this tenant the
/// administrator role and this password. It is how the appliance bootstraps a tenant
/// whose API has self-registration closed, and how a lost admin password is reset. An
/// address that belongs to another tenant is refused, never moved.
#[utoipa::path(put, path = "/internal/tenants/{slug}/admins/{email}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug"), ("email" = String, Path, description = "the administrator's address")),
    request_body = AdminPassword,
    responses((status = 200, description = "the administrator"), (status = 404, description = "no such tenant"),
              (status = 409, description = "the address belongs to another tenant"), (status = 422, description = "invalid field")),
    security(("operator_token" = [])))]
pub async fn upsert_admin(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, email)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<AdminPassword>,
) -> ApiResult<Json<Envelope<UserView>>> {
    let tenant = tenant_id(&state, &slug).await?;
    let email = check_email(&email)?;
    auth::check_password_strength(&body.password)?;
    let password_hash = hash_off_thread(body.password).await?;
    let mut tx = tenant_tx(&state.db, tenant).await?;
    // Row-level security shows only this tenant's users: another tenant's address is
    // not found here, and its INSERT below fails on the unique index (409).
    let existing: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
    let user: UserView = match existing {
        Some(id) => {
            sqlx::query_as(
                "UPDATE users SET password_hash = $2, role = 'tenant_admin', updated_at = now() WHERE id = $1
                 RETURNING id, tenant_id, email, role, created_at",
            )
            .bind(id)
            .bind(&password_hash)
            .fetch_one(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, 'tenant_admin')
                 RETURNING id, tenant_id, email, role, created_at",
            )
            .bind(tenant)
            .bind(&email)
            .bind(&password_hash)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    tracing::info!(%tenant, user = %user.id, "tenant administrator set through the internal API");
    Ok(ok(user))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KnowledgeBaseRecord {
    pub id: Uuid,
    pub name: String,
    pub documents: i64,
    pub chunks: i64,
    pub last_ingestion: Option<DateTime<Utc>>,
    /// Each source of the spec, in order: `{id, documents, last_error}`. The id is
    /// `inline:<title>`, `configMap:<name>[/<key>]` or `url:<url>` (`#2`, `#3` for
    /// repeats).
    #[schema(value_type = Vec<Object>)]
    pub sources: Vec<SourceRecord>,
    /// The re-embedding under way after a change of the embedding model:
    /// `{embedding, done, total, error, started_at}` (see `rag::reembed`); absent when
    /// the vectors are the registered model's.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reembedding: Option<ReembedProgress>,
}

async fn knowledge_base_record(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    name: &str,
) -> Result<Option<KnowledgeBaseRecord>, ApiError> {
    let row: Option<(Uuid, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT kb.id,
                (SELECT count(*) FROM documents d WHERE d.knowledge_base_id = kb.id),
                (SELECT count(*) FROM chunks c WHERE c.knowledge_base_id = kb.id),
                (SELECT max(d.updated_at) FROM documents d WHERE d.knowledge_base_id = kb.id AND d.status = 'ready')
         FROM knowledge_bases kb WHERE kb.name = $1",
    )
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((id, documents, chunks, last_ingestion)) = row else {
        return Ok(None);
    };
    Ok(Some(KnowledgeBaseRecord {
        id,
        name: name.to_owned(),
        documents,
        chunks,
        last_ingestion,
        sources: Vec::new(),
        reembedding: crate::rag::reembed::progress(tx, id).await?,
    }))
}

/// Registers a `KnowledgeBase` resource: creates or updates it by name, then brings
/// its source documents in line with `spec.sources` (see [`crate::sources`]). The body
/// is the spec, plus `configMaps`: the content of its `configMap` sources, read by the
/// driver.
#[utoipa::path(put, path = "/internal/tenants/{slug}/knowledge-bases/{name}", tag = "internal",
    request_body = crate::openapi::crd::KnowledgeBaseRegistration,
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the knowledge base's resource name")),
    responses((status = 200, description = "registered, with its document and chunk counts and each source's documents and last error"), (status = 404, description = "no such tenant"),
              (status = 422, description = "invalid spec, or a generation provider the tenant may not call")), security(("operator_token" = [])))]
pub async fn upsert_knowledge_base(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
    ApiJson(registration): ApiJson<KnowledgeBaseRegistration>,
) -> ApiResult<Json<Envelope<KnowledgeBaseRecord>>> {
    let KnowledgeBaseRegistration { plan, config_maps } = registration;
    check_plan_names(("tenant", &plan.tenant, &slug), ("name", &plan.name, &name))?;
    let spec = plan.resolved_spec();
    spec.validate().map_err(invalid)?;
    if let Some(generation) = &spec.generation {
        crate::rag::routes::check_generation(&state.rag.providers, generation)?;
    }
    let tenant_id = tenant_id(&state, &slug).await?;
    let embedding = &plan.embedding;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    sqlx::query(
        "INSERT INTO knowledge_bases (tenant_id, name, description, languages, embedding, chunking, vector_store, generation, managed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'operator')
         ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description, languages = EXCLUDED.languages,
             chunking = EXCLUDED.chunking, vector_store = EXCLUDED.vector_store,
             generation = EXCLUDED.generation, managed_by = 'operator', updated_at = now()
         WHERE (knowledge_bases.description, knowledge_bases.languages,
                knowledge_bases.chunking, knowledge_bases.vector_store, knowledge_bases.generation, knowledge_bases.managed_by)
             IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.languages,
                EXCLUDED.chunking, EXCLUDED.vector_store, EXCLUDED.generation, 'operator')",
    )
    .bind(tenant_id)
    .bind(&name)
    .bind(&spec.description)
    .bind(spec.languages.iter().map(|l| l.code()).collect::<Vec<_>>())
    .bind(serde_json::to_value(embedding).map_err(|e| ApiError::internal("encoding a spec", e))?)
    .bind(serde_json::to_value(&spec.chunking).map_err(|e| ApiError::internal("encoding a spec", e))?)
    .bind(serde_json::to_value(spec.vector_store).map_err(|e| ApiError::internal("encoding a spec", e))?.as_str().unwrap_or("inherit"))
    .bind(spec.generation.as_ref().map(serde_json::to_value).transpose().map_err(|e| ApiError::internal("encoding a spec", e))?)
    .execute(&mut *tx)
    .await?;
    // A new model is not written over the stored one: the chunks are re-embedded with
    // it in the background, and searches switch when they all are (`rag::reembed`).
    let (_, change) = crate::rag::reembed::register(&state, &mut tx, &name, embedding)
        .await
        .map_err(|e| ApiError::internal("registering the embedding model", e))?;
    let record = knowledge_base_record(&mut tx, &name)
        .await?
        .ok_or(ApiError::NotFound("knowledge base"))?;
    tx.commit().await?;
    if change == crate::rag::reembed::Change::Switch {
        let scope = crate::rag::store::Scope {
            tenant_id,
            knowledge_base_id: record.id,
        };
        if let Err(error) = crate::rag::reembed::after_switch(&state, scope).await {
            tracing::warn!(%error, "the previous model's vector index stays; searches scan instead");
        }
    }
    let sources = crate::sources::reconcile(&state, tenant_id, record.id, &spec, &config_maps)
        .await
        .map_err(|e| ApiError::internal("ingesting the knowledge base's sources", e))?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let record = knowledge_base_record(&mut tx, &name)
        .await?
        .ok_or(ApiError::NotFound("knowledge base"))?;
    tx.commit().await?;
    Ok(ok(KnowledgeBaseRecord { sources, ..record }))
}

#[utoipa::path(get, path = "/internal/tenants/{slug}/knowledge-bases/{name}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the knowledge base's resource name")),
    responses((status = 200, description = "document and chunk counts"), (status = 404, description = "not registered")),
    security(("operator_token" = [])))]
pub async fn get_knowledge_base(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Envelope<KnowledgeBaseRecord>>> {
    let tenant_id = tenant_id(&state, &slug).await?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let record = knowledge_base_record(&mut tx, &name)
        .await?
        .ok_or(ApiError::NotFound("knowledge base"))?;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT source_id FROM knowledge_base_sources WHERE knowledge_base_id = $1 ORDER BY source_id")
            .bind(record.id)
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let sources = crate::sources::records(&state, tenant_id, record.id, &ids)
        .await
        .map_err(|e| ApiError::internal("reading the knowledge base's sources", e))?;
    Ok(ok(KnowledgeBaseRecord { sources, ..record }))
}

#[utoipa::path(delete, path = "/internal/tenants/{slug}/knowledge-bases/{name}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the knowledge base's resource name")),
    responses((status = 200, description = "deleted with its documents and vectors")), security(("operator_token" = [])))]
pub async fn delete_knowledge_base(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    let tenant_id = tenant_id(&state, &slug).await?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let deleted = sqlx::query("DELETE FROM knowledge_bases WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok(
        serde_json::json!({ "name": name, "deleted": deleted.rows_affected() > 0 }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowRecord {
    pub id: Uuid,
    pub name: String,
    pub valid_dag: bool,
    pub agents: usize,
    pub last_execution: Option<ExecutionSummary>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ExecutionSummary {
    pub id: Uuid,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub failed_agent: Option<String>,
}

/// Checks a workflow's spec: bounds, then the agent graph; each failure names the agent.
pub fn validate_workflow(spec: &WorkflowSpec) -> Result<(), ApiError> {
    spec.validate().map_err(invalid)?;
    iafactory_crds::dag::validate(&spec.agents).map_err(|errors| {
        let fields: Vec<FieldProblem> = errors
            .iter()
            .map(|e| FieldProblem {
                field: format!("agents.{}", e.agent()),
                message: e.to_string(),
            })
            .collect();
        ApiError::Validation {
            message: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            fields,
        }
    })?;
    Ok(())
}

/// Registers a `Workflow` resource: creates or updates it by name.
#[utoipa::path(put, path = "/internal/tenants/{slug}/workflows/{name}", tag = "internal",
    request_body = crate::openapi::crd::WorkflowRegistration,
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the workflow's resource name")),
    responses((status = 200, description = "registered"), (status = 422, description = "invalid graph, naming the agent")),
    security(("operator_token" = [])))]
pub async fn upsert_workflow(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
    ApiJson(plan): ApiJson<WorkflowPlan>,
) -> ApiResult<Json<Envelope<WorkflowRecord>>> {
    check_plan_names(("tenant", &plan.tenant, &slug), ("name", &plan.name, &name))?;
    let spec = plan.resolved_spec();
    validate_workflow(&spec)?;
    let tenant_id = tenant_id(&state, &slug).await?;
    let definition =
        serde_json::to_value(&spec).map_err(|e| ApiError::internal("encoding a spec", e))?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    sqlx::query(
        "INSERT INTO workflows (tenant_id, name, description, definition, managed_by) VALUES ($1, $2, $3, $4, 'operator')
         ON CONFLICT (tenant_id, name) DO UPDATE SET description = EXCLUDED.description, definition = EXCLUDED.definition,
             managed_by = 'operator', updated_at = now()
         WHERE (workflows.description, workflows.definition, workflows.managed_by)
             IS DISTINCT FROM (EXCLUDED.description, EXCLUDED.definition, 'operator')",
    )
    .bind(tenant_id)
    .bind(&name)
    .bind(&spec.description)
    .bind(definition)
    .execute(&mut *tx)
    .await?;
    let id: Uuid =
        sqlx::query_scalar("SELECT id FROM workflows WHERE tenant_id = $1 AND name = $2")
            .bind(tenant_id)
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?;
    let last_execution = last_execution(&mut tx, id).await?;
    tx.commit().await?;
    Ok(ok(WorkflowRecord {
        id,
        name,
        valid_dag: true,
        agents: spec.agents.len(),
        last_execution,
    }))
}

async fn last_execution(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    workflow_id: Uuid,
) -> Result<Option<ExecutionSummary>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, status, started_at, finished_at, failed_agent FROM workflow_executions
         WHERE workflow_id = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(workflow_id)
    .fetch_optional(&mut **tx)
    .await?)
}

#[utoipa::path(get, path = "/internal/tenants/{slug}/workflows/{name}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the workflow's resource name")),
    responses((status = 200, description = "validity and last execution"), (status = 404, description = "not registered")),
    security(("operator_token" = [])))]
pub async fn get_workflow(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Envelope<WorkflowRecord>>> {
    let tenant_id = tenant_id(&state, &slug).await?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let row: Option<(Uuid, serde_json::Value)> =
        sqlx::query_as("SELECT id, definition FROM workflows WHERE name = $1")
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, definition)) = row else {
        return Err(ApiError::NotFound("workflow"));
    };
    let spec: Option<WorkflowSpec> = serde_json::from_value(definition).ok();
    let last_execution = last_execution(&mut tx, id).await?;
    tx.commit().await?;
    Ok(ok(WorkflowRecord {
        id,
        name,
        valid_dag: spec.as_ref().is_some_and(|s| validate_workflow(s).is_ok()),
        agents: spec.map_or(0, |s| s.agents.len()),
        last_execution,
    }))
}

#[utoipa::path(delete, path = "/internal/tenants/{slug}/workflows/{name}", tag = "internal",
    params(("slug" = String, Path, description = "the tenant's slug"), ("name" = String, Path, description = "the workflow's resource name")),
    responses((status = 200, description = "deleted")), security(("operator_token" = [])))]
pub async fn delete_workflow(
    State(state): State<AppState>,
    _: Operator,
    ApiPath((slug, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    let tenant_id = tenant_id(&state, &slug).await?;
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    let deleted = sqlx::query("DELETE FROM workflows WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok(
        serde_json::json!({ "name": name, "deleted": deleted.rows_affected() > 0 }),
    ))
}

//! `/api/workflows`: definitions, executions, live status (SSE), and `/ws`.

use std::collections::BTreeSet;
use std::convert::Infallible;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use iafactory_crds::WorkflowSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::engine::{self, ExecutionRequest};
use super::events::{CANCEL_CHANNEL, ExecutionEvent, SocketSlot, follow, serve_socket};
use crate::auth::{Auth, Scope};
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult, FieldProblem};
use crate::http::{
    ApiJson, ApiPath, ApiQuery, Counted, Envelope, PageQuery, accepted, counted_page, created, ok,
    page,
};
use crate::routes::internal::validate_workflow;
use crate::state::AppState;

/// A workflow as written: a name and the same fields as the `Workflow` resource's spec.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WorkflowBody {
    #[schema(min_length = 1, max_length = 253, pattern = "^[a-z0-9.-]+$")]
    pub name: String,
    #[serde(flatten)]
    #[schema(value_type = crate::openapi::crd::Workflow)]
    pub spec: WorkflowSpec,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    pub id: Uuid,
    pub name: String,
    #[serde(flatten)]
    #[schema(value_type = crate::openapi::crd::Workflow)]
    pub spec: WorkflowSpec,
    /// `api`, or `operator` for a Workflow resource (change those with kubectl).
    pub managed_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct WorkflowRow {
    id: Uuid,
    name: String,
    definition: serde_json::Value,
    managed_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl WorkflowRow {
    fn view(self) -> Result<WorkflowView, ApiError> {
        Ok(WorkflowView {
            spec: serde_json::from_value(self.definition)
                .map_err(|e| ApiError::internal("reading a workflow definition", e))?,
            id: self.id,
            name: self.name,
            managed_by: self.managed_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const WORKFLOW_COLUMNS: &str =
    "w.id, w.name, w.definition, w.managed_by, w.created_at, w.updated_at";

fn problems(problems: Vec<FieldProblem>) -> ApiError {
    ApiError::Validation {
        message: problems
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join("; "),
        fields: problems,
    }
}

/// Everything a definition must satisfy before it is stored; each failure names the
/// agent.
async fn validate(
    state: &AppState,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    name: &str,
    spec: &WorkflowSpec,
) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(ApiError::validation(
            "name",
            "1 to 253 lowercase letters, digits, '-' or '.'",
        ));
    }
    validate_workflow(spec)?;
    let mut found = Vec::new();
    for agent in &spec.agents {
        if let Err(message) = state.workflows.check_provider(&agent.provider) {
            found.push(FieldProblem {
                field: format!("agents.{}.provider", agent.name),
                message: format!("agent {:?}: {message}", agent.name),
            });
        }
    }
    let wanted: BTreeSet<String> = spec
        .agents
        .iter()
        .filter_map(|a| a.knowledge_base.clone())
        .collect();
    if !wanted.is_empty() {
        let existing: BTreeSet<String> = sqlx::query_scalar::<_, String>(
            "SELECT name FROM knowledge_bases WHERE name = ANY($1)",
        )
        .bind(wanted.iter().cloned().collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        for agent in &spec.agents {
            if let Some(kb) = &agent.knowledge_base
                && !existing.contains(kb)
            {
                found.push(FieldProblem {
                    field: format!("agents.{}.knowledgeBase", agent.name),
                    message: format!(
                        "agent {:?}: knowledge base {kb:?} does not exist in this tenant",
                        agent.name
                    ),
                });
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(problems(found))
    }
}

/// A unique-name violation is the caller's conflict; anything else is ours.
fn name_taken(error: sqlx::Error, name: &str) -> ApiError {
    match &error {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("23505") => {
            ApiError::Conflict(format!("a workflow named {name:?} already exists"))
        }
        _ => error.into(),
    }
}

#[utoipa::path(post, path = "/api/workflows", tag = "workflows", request_body = WorkflowBody,
    responses((status = 201, description = "created", body = Envelope<WorkflowView>),
              (status = 409, description = "the name is taken", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_workflow(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<WorkflowBody>,
) -> ApiResult<Response> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    validate(&state, &mut tx, &body.name, &body.spec).await?;
    let definition = serde_json::to_value(&body.spec)
        .map_err(|e| ApiError::internal("encoding a workflow", e))?;
    let row: WorkflowRow = sqlx::query_as(&format!(
        "INSERT INTO workflows AS w (tenant_id, name, description, definition) VALUES ($1, $2, $3, $4) RETURNING {WORKFLOW_COLUMNS}"
    ))
    .bind(auth.tenant_id)
    .bind(&body.name)
    .bind(&body.spec.description)
    .bind(definition)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| name_taken(e, &body.name))?;
    tx.commit().await?;
    Ok(created(row.view()?))
}

#[utoipa::path(get, path = "/api/workflows", tag = "workflows", params(PageQuery),
    responses((status = 200, description = "the tenant's workflows", body = Envelope<Vec<WorkflowView>>), crate::openapi::responses::Secured, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_workflows(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<WorkflowView>>>> {
    auth.require(Scope::Query)?;
    let request = query.validate(&["created_at", "name", "updated_at"])?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let rows: Vec<Counted<WorkflowRow>> = sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS}, count(*) OVER () AS total FROM workflows w ORDER BY w.{}, w.id LIMIT $1 OFFSET $2",
        request.order_by()
    ))
    .bind(i64::from(request.limit))
    .bind(request.offset())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let total = rows.first().map_or(0, |r| r.total);
    let views = rows
        .into_iter()
        .map(|r| r.row.view())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page(views, request.meta(total)))
}

async fn fetch_workflow(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    id: Uuid,
) -> Result<WorkflowRow, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE w.id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ApiError::NotFound("workflow"))
}

#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow")),
    responses((status = 200, description = "the workflow", body = Envelope<WorkflowView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_workflow(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<WorkflowView>>> {
    auth.require(Scope::Query)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let row = fetch_workflow(&mut tx, id).await?;
    tx.commit().await?;
    Ok(ok(row.view()?))
}

#[utoipa::path(put, path = "/api/workflows/{id}", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow")), request_body = WorkflowBody,
    responses((status = 200, description = "replaced", body = Envelope<WorkflowView>),
              (status = 409, description = "managed by a Workflow resource, or the name is taken", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn replace_workflow(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<WorkflowBody>,
) -> ApiResult<Json<Envelope<WorkflowView>>> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let existing = fetch_workflow(&mut tx, id).await?;
    if existing.managed_by == "operator" {
        return Err(ApiError::Conflict(format!(
            "workflow {:?} is managed by a Workflow resource: change it with kubectl",
            existing.name
        )));
    }
    validate(&state, &mut tx, &body.name, &body.spec).await?;
    let definition = serde_json::to_value(&body.spec)
        .map_err(|e| ApiError::internal("encoding a workflow", e))?;
    let row: WorkflowRow = sqlx::query_as(&format!(
        "UPDATE workflows w SET name = $2, description = $3, definition = $4, updated_at = now() WHERE w.id = $1 RETURNING {WORKFLOW_COLUMNS}"
    ))
    .bind(id)
    .bind(&body.name)
    .bind(&body.spec.description)
    .bind(definition)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| name_taken(e, &body.name))?;
    tx.commit().await?;
    Ok(ok(row.view()?))
}

#[utoipa::path(delete, path = "/api/workflows/{id}", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow")),
    responses((status = 200, description = "deleted with its executions", body = Envelope<crate::openapi::bodies::Deleted>),
              (status = 409, description = "managed by a Workflow resource", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_workflow(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let existing = fetch_workflow(&mut tx, id).await?;
    if existing.managed_by == "operator" {
        return Err(ApiError::Conflict(format!(
            "workflow {:?} is managed by a Workflow resource: delete it with kubectl",
            existing.name
        )));
    }
    sqlx::query("DELETE FROM workflows WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok(serde_json::json!({ "id": id, "deleted": true })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartExecution {
    /// What `{{input}}` becomes.
    #[schema(max_length = 20_000)]
    pub input: String,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StepView {
    pub agent: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub status: String,
    /// The prompt as sent.
    pub input: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    #[schema(value_type = Object)]
    pub citations: serde_json::Value,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ExecutionView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub failed_agent: Option<String>,
    /// `manual` or `schedule`.
    pub trigger: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub steps: Vec<StepView>,
}

const EXECUTION_COLUMNS: &str =
    "e.id, e.workflow_id, e.status, e.input, e.output, e.error, e.failed_agent, e.trigger,
    e.prompt_tokens, e.completion_tokens, e.created_at, e.started_at, e.finished_at";

const MAX_INPUT_CHARS: usize = 20_000;

#[utoipa::path(post, path = "/api/workflows/{id}/executions", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow")), request_body = StartExecution,
    responses((status = 202, description = "started; follow it at .../events", body = Envelope<ExecutionView>),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn start_execution(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<StartExecution>,
) -> ApiResult<Response> {
    auth.require(Scope::Query)?;
    if body.input.chars().count() > MAX_INPUT_CHARS {
        return Err(ApiError::validation(
            "input",
            format!("at most {MAX_INPUT_CHARS} characters"),
        ));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let row = fetch_workflow(&mut tx, id).await?;
    let spec: WorkflowSpec = serde_json::from_value(row.definition)
        .map_err(|e| ApiError::internal("reading a workflow definition", e))?;
    // A key limited to some knowledge bases runs only workflows that read no others;
    // the run keeps the key's restriction too (engine::workflow_principal).
    if let Some(allowed) = auth
        .key
        .as_ref()
        .and_then(|k| k.knowledge_base_ids.as_deref())
        && let Some((agent, knowledge_base)) =
            engine::knowledge_base_outside(&mut tx, &spec, allowed).await?
    {
        return Err(ApiError::Forbidden(format!(
            "this API key is restricted to some knowledge bases: agent {agent:?} reads knowledge base {knowledge_base:?}, which is not among them"
        )));
    }
    let request = ExecutionRequest {
        tenant_id: auth.tenant_id,
        workflow_id: id,
        spec,
        input: body.input,
        trigger: "manual",
        key: auth.key.clone(),
    };
    let execution_id = engine::create(&mut tx, &request).await?;
    let view = execution_view(&mut tx, id, execution_id).await?;
    tx.commit().await?;
    engine::spawn(state, request, execution_id);
    Ok(accepted(view))
}

async fn execution_view(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    workflow_id: Uuid,
    execution_id: Uuid,
) -> Result<ExecutionView, ApiError> {
    let mut view: ExecutionView = sqlx::query_as(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM workflow_executions e WHERE e.id = $1 AND e.workflow_id = $2"
    ))
    .bind(execution_id)
    .bind(workflow_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ApiError::NotFound("execution"))?;
    view.steps = sqlx::query_as(
        "SELECT agent, status, input, output, error, attempts, prompt_tokens, completion_tokens, citations,
                started_at, finished_at, duration_ms
         FROM workflow_steps WHERE execution_id = $1 ORDER BY started_at NULLS LAST, agent",
    )
    .bind(execution_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(view)
}

#[utoipa::path(get, path = "/api/workflows/{id}/executions", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow"), PageQuery),
    responses((status = 200, description = "past executions, newest first by default", body = Envelope<Vec<ExecutionView>>),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_executions(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<ExecutionView>>>> {
    auth.require(Scope::Query)?;
    let mut request = query.validate(&["created_at", "finished_at", "status"])?;
    if query.order.is_none() {
        request.descending = true;
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    fetch_workflow(&mut tx, id).await?;
    let rows: Vec<Counted<ExecutionView>> = sqlx::query_as(&format!(
        "SELECT {EXECUTION_COLUMNS}, count(*) OVER () AS total FROM workflow_executions e
         WHERE e.workflow_id = $3 ORDER BY e.{}, e.id LIMIT $1 OFFSET $2",
        request.order_by()
    ))
    .bind(i64::from(request.limit))
    .bind(request.offset())
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(counted_page(rows, &request))
}

#[utoipa::path(get, path = "/api/workflows/{id}/executions/{execution_id}", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow"), ("execution_id" = Uuid, Path, description = "the execution")),
    responses((status = 200, description = "the execution with its steps", body = Envelope<ExecutionView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_execution(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((id, execution_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Json<Envelope<ExecutionView>>> {
    auth.require(Scope::Query)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let view = execution_view(&mut tx, id, execution_id).await?;
    tx.commit().await?;
    Ok(ok(view))
}

#[utoipa::path(post, path = "/api/workflows/{id}/executions/{execution_id}/cancel", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow"), ("execution_id" = Uuid, Path, description = "the execution")),
    responses((status = 202, description = "cancelling", body = Envelope<crate::openapi::bodies::Cancelling>),
              (status = 409, description = "already finished", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cancel_execution(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((id, execution_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Response> {
    auth.require(Scope::Query)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let view = execution_view(&mut tx, id, execution_id).await?;
    if !matches!(view.status.as_str(), "pending" | "running") {
        return Err(ApiError::Conflict(format!(
            "the execution already finished: {}",
            view.status
        )));
    }
    // The replica that runs it may be another one: tell them all.
    if !state.workflows.cancel_local(execution_id) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CANCEL_CHANNEL)
            .bind(execution_id.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(accepted(
        serde_json::json!({ "id": execution_id, "status": "cancelling" }),
    ))
}

#[utoipa::path(get, path = "/api/workflows/{id}/executions/{execution_id}/events", tag = "workflows", params(("id" = Uuid, Path, description = "the workflow"), ("execution_id" = Uuid, Path, description = "the execution")),
    responses((status = 200, description = "server-sent events: one `status` event per transition (its `id` is the sequence number, its data an ExecutionEvent as JSON), in order, from the first; the stream ends after execution.finished",
               content((String = "text/event-stream"))),
              crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn execution_events(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((id, execution_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    auth.require(Scope::Query)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    execution_view(&mut tx, id, execution_id).await?;
    tx.commit().await?;
    let (sender, receiver) = mpsc::channel::<ExecutionEvent>(64);
    tokio::spawn(follow(state, auth.tenant_id, execution_id, sender));
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver).map(|event| {
        Ok(Event::default()
            .event("status")
            .id(event.seq.to_string())
            .data(serde_json::to_string(&event).unwrap_or_default()))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    /// A browser's WebSocket cannot set headers: the JWT may come here instead.
    pub token: Option<String>,
}

/// `GET /ws`: `{"type":"subscribe","channel":"agent_status"}`, then
/// `{"type":"agent_status","execution_id":...,"event":{...}}` for each transition.
pub async fn websocket(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> ApiResult<Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or(query.token)
        .ok_or(ApiError::Unauthorized(
            "a JWT is required: Authorization: Bearer <token> or ?token=<token>",
        ))?;
    // The session check too: a signed-out or suspended user's token opens no socket.
    let caller = crate::auth::authenticate_bearer(&state, token.trim()).await?;
    // Capped per user; subscriptions per socket are capped in events::serve_socket.
    let slot = match SocketSlot::acquire(caller.user_id) {
        Ok(slot) => slot,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    Ok(upgrade
        .on_upgrade(move |socket| serve_socket(state, caller.tenant_id, slot, socket))
        .into_response())
}

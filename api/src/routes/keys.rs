//! API keys: created with scopes and limits, shown once, stored hashed, revoked.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{self, Auth, Scope};
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiJson, ApiPath, ApiQuery, Counted, Envelope, PageQuery, created, ok, page};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    /// Some of `query`, `ingest`, `admin`; never more than the caller has.
    pub scopes: Vec<Scope>,
    /// Restricts the key to these knowledge bases.
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    pub rate_limit_per_minute: Option<u32>,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    /// The key's first characters, to recognise it; the secret is never shown again.
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    pub rate_limit_per_minute: i32,
    pub usage_count: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    /// The secret, shown this once.
    pub key: String,
    #[serde(flatten)]
    pub details: KeyView,
}

const KEY_COLUMNS: &str = "id, name, key_prefix, scopes, knowledge_base_ids, rate_limit_per_minute, usage_count, last_used_at, expires_at, revoked_at, created_at";

#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, description = "the key, with its secret shown once"), (status = 403, description = "a scope beyond the caller's"),
              (status = 404, description = "a knowledge base that is not the tenant's"), (status = 422, description = "invalid field")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> ApiResult<Response> {
    auth.require(Scope::Admin)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "must be 1 to 100 characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::validation(
            "scopes",
            "give at least one of query, ingest, admin",
        ));
    }
    if let Some(beyond) = body.scopes.iter().find(|s| !auth.scopes.contains(s)) {
        return Err(ApiError::Forbidden(format!(
            "you cannot grant the {:?} scope, which you do not have",
            beyond.as_str()
        )));
    }
    let rate_limit = body
        .rate_limit_per_minute
        .unwrap_or(state.config.rate_limit.default_key_per_minute);
    if !(1..=100_000).contains(&rate_limit) {
        return Err(ApiError::validation(
            "rate_limit_per_minute",
            "must be between 1 and 100000",
        ));
    }
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::validation("expires_at", "must be in the future"));
    }
    let mut scopes: Vec<&str> = body.scopes.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();

    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    if let Some(ids) = &body.knowledge_base_ids {
        // Under RLS another tenant's knowledge base is simply not there.
        let found: i64 =
            sqlx::query_scalar("SELECT count(*) FROM knowledge_bases WHERE id = ANY($1)")
                .bind(ids)
                .fetch_one(&mut *tx)
                .await?;
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        if found != unique.len() as i64 {
            return Err(ApiError::NotFound("knowledge base"));
        }
    }
    let key = auth::generate_api_key();
    let details: KeyView = sqlx::query_as(&format!(
        "INSERT INTO api_keys (tenant_id, user_id, name, key_prefix, key_hash, scopes, knowledge_base_ids, rate_limit_per_minute, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {KEY_COLUMNS}"
    ))
    .bind(auth.tenant_id)
    .bind(auth.user_id)
    .bind(name)
    .bind(&key[..auth::KEY_PREFIX.len() + 6])
    .bind(auth::hash_api_key(&key))
    .bind(&scopes)
    .bind(&body.knowledge_base_ids)
    .bind(rate_limit as i32)
    .bind(body.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created(CreatedKey {
        id: details.id,
        key,
        details,
    }))
}

#[utoipa::path(get, path = "/api/keys", tag = "keys", params(PageQuery),
    responses((status = 200, description = "the tenant's keys, without secrets")), security(("bearer" = []), ("api_key" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<KeyView>>>> {
    auth.require(Scope::Admin)?;
    let page_request = query.validate(&["created_at", "name", "usage_count", "last_used_at"])?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let rows: Vec<Counted<KeyView>> = sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS}, count(*) OVER () AS total FROM api_keys ORDER BY {} NULLS LAST, id LIMIT $1 OFFSET $2",
        page_request.order_by()
    ))
    .bind(i64::from(page_request.limit))
    .bind(page_request.offset())
    .fetch_all(&mut *tx)
    .await?;
    let total = match rows.first() {
        Some(row) => row.total,
        // Past the last page the window count is unknown: ask for it.
        None => {
            sqlx::query_scalar("SELECT count(*) FROM api_keys")
                .fetch_one(&mut *tx)
                .await?
        }
    };
    tx.commit().await?;
    let keys: Vec<KeyView> = rows.into_iter().map(|r| r.row).collect();
    Ok(page(keys, page_request.meta(total)))
}

#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys",
    responses((status = 200, description = "one key, without its secret"), (status = 404, description = "not this tenant's key")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<KeyView>>> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let key: Option<KeyView> =
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    key.map(ok).ok_or(ApiError::NotFound("API key"))
}

/// Revokes a key at once; it stays listed, marked revoked.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
    responses((status = 200, description = "revoked"), (status = 404, description = "not this tenant's key")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<KeyView>>> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let key: Option<KeyView> = sqlx::query_as(&format!(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING {KEY_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let key = key.ok_or(ApiError::NotFound("API key"))?;
    state.key_cache.evict_key(id).await;
    Ok(ok(key))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    pub since: DateTime<Utc>,
    pub requests: i64,
    pub errors: i64,
    pub top_endpoints: Vec<EndpointUsage>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointUsage {
    pub method: String,
    pub endpoint: String,
    pub requests: i64,
    pub p95_ms: Option<f64>,
}

/// Requests and top endpoints of the last 7 days (tenant admins).
#[utoipa::path(get, path = "/api/usage", tag = "keys",
    responses((status = 200, description = "requests and top endpoints")), security(("bearer" = []), ("api_key" = [])))]
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Envelope<UsageSummary>>> {
    auth.require(Scope::Admin)?;
    let since = Utc::now() - chrono::Duration::days(7);
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let (requests, errors): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status >= 500) FROM api_usage_logs WHERE created_at >= $1",
    )
    .bind(since)
    .fetch_one(&mut *tx)
    .await?;
    let top_endpoints: Vec<EndpointUsage> = sqlx::query_as(
        "SELECT method, endpoint, count(*) AS requests,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY response_time_ms) AS p95_ms
         FROM api_usage_logs WHERE created_at >= $1
         GROUP BY method, endpoint ORDER BY requests DESC LIMIT 10",
    )
    .bind(since)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ok(UsageSummary {
        since,
        requests,
        errors,
        top_endpoints,
    }))
}

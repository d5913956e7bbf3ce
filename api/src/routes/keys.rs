//! API keys: created with scopes and limits, shown once, stored hashed, revoked.
//!
//! A key that mints a key can only make one no broader than itself (scopes,
//! knowledge bases, expiry, rate limit); what it leaves out it passes on. The new key
//! records its maker, and revoking a key revokes what it minted, transitively.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{self, Auth, KeyIdentity, Scope};
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiJson, ApiPath, ApiQuery, Counted, Envelope, PageQuery, created, ok, page};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Some of `query`, `ingest`, `admin`; never more than the caller has.
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Restricts the key to these knowledge bases. Minted by a restricted key: a subset
    /// of its own, which it inherits when omitted.
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    /// Minted by a key: at most the key's own, which it inherits when omitted.
    #[schema(minimum = 1, maximum = 100_000)]
    pub rate_limit_per_minute: Option<u32>,
    /// Minted by an expiring key: no later than it, which it inherits when omitted.
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
    /// The user the key acts for: who created it, or whose key did.
    pub user_id: Uuid,
    /// The key that minted this one; none when a signed-in user did.
    pub created_by_key_id: Option<Uuid>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    /// The secret, shown this once.
    pub key: String,
    #[serde(flatten)]
    pub details: KeyView,
}

const KEY_COLUMNS: &str = "id, name, key_prefix, scopes, knowledge_base_ids, rate_limit_per_minute, usage_count, last_used_at, expires_at, revoked_at, created_at, user_id, created_by_key_id";

/// What a key-minted key gets: the request, with what it leaves out taken from the
/// minting key.
#[derive(Debug, Clone, PartialEq)]
struct Limits {
    knowledge_base_ids: Option<Vec<Uuid>>,
    rate_limit_per_minute: u32,
    expires_at: Option<DateTime<Utc>>,
}

/// The limits of a key minted by `parent`, or what in them is broader than `parent`.
fn limits_under_key(
    parent: &KeyIdentity,
    requested: Limits,
    rate_limit_given: bool,
) -> Result<Limits, String> {
    let mut limits = requested;
    if limits.knowledge_base_ids.is_none() {
        limits.knowledge_base_ids = parent.knowledge_base_ids.clone();
    }
    if limits.expires_at.is_none() {
        limits.expires_at = parent.expires_at;
    }
    if !rate_limit_given {
        limits.rate_limit_per_minute = limits
            .rate_limit_per_minute
            .min(parent.rate_limit_per_minute);
    }
    let mut broader = Vec::new();
    if let (Some(allowed), Some(asked)) = (&parent.knowledge_base_ids, &limits.knowledge_base_ids) {
        let outside: Vec<String> = asked
            .iter()
            .filter(|id| !allowed.contains(id))
            .map(Uuid::to_string)
            .collect();
        if !outside.is_empty() {
            broader.push(format!(
                "knowledge_base_ids: {} outside this key's knowledge bases",
                outside.join(", ")
            ));
        }
    }
    if let Some(parent_expiry) = parent.expires_at
        && limits.expires_at.is_none_or(|at| at > parent_expiry)
    {
        broader.push(format!(
            "expires_at: this key expires at {}, and a key it mints must expire no later",
            parent_expiry.to_rfc3339()
        ));
    }
    if limits.rate_limit_per_minute > parent.rate_limit_per_minute {
        broader.push(format!(
            "rate_limit_per_minute: {} is above this key's {}",
            limits.rate_limit_per_minute, parent.rate_limit_per_minute
        ));
    }
    if broader.is_empty() {
        Ok(limits)
    } else {
        Err(format!(
            "an API key cannot mint a key broader than itself: {}",
            broader.join("; ")
        ))
    }
}

#[utoipa::path(post, path = "/api/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 201, description = "the key, with its secret shown once", body = Envelope<CreatedKey>),
              (status = 404, description = "a knowledge base that is not the tenant's", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
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
    let requested = Limits {
        knowledge_base_ids: body.knowledge_base_ids,
        rate_limit_per_minute: rate_limit,
        expires_at: body.expires_at,
    };
    let limits = match &auth.key {
        Some(parent) => limits_under_key(parent, requested, body.rate_limit_per_minute.is_some())
            .map_err(ApiError::Forbidden)?,
        None => requested,
    };
    let mut scopes: Vec<&str> = body.scopes.iter().map(|s| s.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();

    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    if let Some(parent) = &auth.key {
        // The maker must still be unrevoked when its child is committed; a revocation
        // racing this one is caught at authentication, which checks the whole lineage.
        let revoked: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1 FOR SHARE")
                .bind(parent.id)
                .fetch_optional(&mut *tx)
                .await?;
        if !matches!(revoked, Some(None)) {
            return Err(ApiError::Unauthorized("the API key has been revoked"));
        }
    }
    if let Some(ids) = &limits.knowledge_base_ids {
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
        "INSERT INTO api_keys (tenant_id, user_id, name, key_prefix, key_hash, scopes, knowledge_base_ids, rate_limit_per_minute, expires_at, created_by_key_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {KEY_COLUMNS}"
    ))
    .bind(auth.tenant_id)
    .bind(auth.user_id)
    .bind(name)
    .bind(&key[..auth::KEY_PREFIX.len() + 6])
    .bind(auth::hash_api_key(&key))
    .bind(&scopes)
    .bind(&limits.knowledge_base_ids)
    .bind(limits.rate_limit_per_minute as i32)
    .bind(limits.expires_at)
    .bind(auth.key.as_ref().map(|k| k.id))
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
    responses((status = 200, description = "the tenant's keys, without secrets", body = Envelope<Vec<KeyView>>), crate::openapi::responses::Secured, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
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

#[utoipa::path(get, path = "/api/keys/{id}", tag = "keys", params(("id" = Uuid, Path, description = "the key")),
    responses((status = 200, description = "one key, without its secret", body = Envelope<KeyView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
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

/// Revokes a key at once, and every key it minted, transitively; they stay listed,
/// marked revoked.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys", params(("id" = Uuid, Path, description = "the key")),
    responses((status = 200, description = "revoked", body = Envelope<KeyView>), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<KeyView>>> {
    auth.require(Scope::Admin)?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    // A key may end itself and what it minted, never a sibling or its maker: an `admin`
    // key limited to one knowledge base must not be able to cut off the tenant's other
    // keys. Signed-in admins revoke any key of their tenant.
    if let Some(caller) = &auth.key {
        let within_lineage: bool = sqlx::query_scalar(
            "WITH RECURSIVE minted AS (
                 SELECT id FROM api_keys WHERE id = $1
                 UNION
                 SELECT k.id FROM api_keys k JOIN minted m ON k.created_by_key_id = m.id
             )
             SELECT EXISTS (SELECT 1 FROM minted WHERE id = $2)",
        )
        .bind(caller.id)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if !within_lineage {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Err(if exists {
                ApiError::Forbidden(
                    "an API key can revoke only itself and the keys it minted: sign in as a tenant admin to revoke other keys".into(),
                )
            } else {
                ApiError::NotFound("API key")
            });
        }
    }
    let revoked: Vec<Uuid> = sqlx::query_scalar(
        "WITH RECURSIVE minted AS (
             SELECT id FROM api_keys WHERE id = $1
             UNION
             SELECT k.id FROM api_keys k JOIN minted m ON k.created_by_key_id = m.id
         )
         UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE id IN (SELECT id FROM minted) RETURNING id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let key: Option<KeyView> =
        sqlx::query_as(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let key = key.ok_or(ApiError::NotFound("API key"))?;
    state.key_cache.evict_keys(&revoked).await;
    if revoked.len() > 1 {
        tracing::info!(key = %id, minted = revoked.len() - 1, "revoked a key and the keys it minted");
    }
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
    responses((status = 200, description = "requests and top endpoints", body = Envelope<UsageSummary>), crate::openapi::responses::Secured),
    security(("bearer" = []), ("api_key" = [])))]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(kbs: Option<Vec<Uuid>>, rate: u32, expires: Option<DateTime<Utc>>) -> KeyIdentity {
        KeyIdentity {
            id: Uuid::new_v4(),
            knowledge_base_ids: kbs,
            rate_limit_per_minute: rate,
            expires_at: expires,
        }
    }

    fn asked(kbs: Option<Vec<Uuid>>, rate: u32, expires: Option<DateTime<Utc>>) -> Limits {
        Limits {
            knowledge_base_ids: kbs,
            rate_limit_per_minute: rate,
            expires_at: expires,
        }
    }

    #[test]
    fn what_a_minted_key_leaves_out_it_inherits() {
        let (a, soon) = (Uuid::new_v4(), Utc::now() + chrono::Duration::hours(1));
        let key = parent(Some(vec![a]), 10, Some(soon));
        assert_eq!(
            limits_under_key(&key, asked(None, 60, None), false),
            Ok(asked(Some(vec![a]), 10, Some(soon)))
        );
        // An unrestricted parent leaves the defaults.
        let open = parent(None, 100, None);
        assert_eq!(
            limits_under_key(&open, asked(None, 60, None), false),
            Ok(asked(None, 60, None))
        );
    }

    #[test]
    fn anything_broader_is_refused_by_name() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let soon = Utc::now() + chrono::Duration::hours(1);
        let key = parent(Some(vec![a]), 10, Some(soon));
        let error = limits_under_key(&key, asked(Some(vec![a, b]), 10, None), true).unwrap_err();
        assert!(
            error.contains(&b.to_string()) && !error.contains(&format!("{a},")),
            "{error}"
        );
        let later = soon + chrono::Duration::hours(1);
        let error = limits_under_key(&key, asked(None, 10, Some(later)), true).unwrap_err();
        assert!(error.contains("expires_at"), "{error}");
        let error = limits_under_key(&key, asked(None, 11, None), true).unwrap_err();
        assert!(
            error.contains("rate_limit_per_minute: 11 is above this key's 10"),
            "{error}"
        );
        assert!(limits_under_key(&key, asked(Some(vec![a]), 10, Some(soon)), true).is_ok());
    }
}

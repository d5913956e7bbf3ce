//! Registration, login, the current user, and a tenant's users.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{self, Auth, Role, Scope};
use crate::db::tenant_tx;
use crate::error::{ApiError, ApiResult};
use crate::http::{ApiJson, ApiPath, ApiQuery, Envelope, PageQuery, created, ok, page};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    /// The organisation's name, in any script.
    pub tenant_name: String,
    /// DNS label, unique on the platform.
    pub tenant_slug: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds.
    pub expires_in: i64,
    pub user: UserView,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TenantView {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub plan: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MeResponse {
    pub user: UserView,
    pub tenant: TenantView,
    /// `query`, `ingest`, `admin`: what this credential may do.
    pub scopes: Vec<Scope>,
    /// Set when the request used an API key.
    pub key_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateUserRequest {
    pub email: String,
    pub password: String,
    /// `user` (the default) or `tenant_admin`.
    pub role: Option<String>,
}

pub(crate) fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let valid = email.len() <= 320
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email.to_owned())
    } else {
        Err(ApiError::validation(
            "email",
            "is not a valid e-mail address",
        ))
    }
}

fn check_slug(slug: &str) -> Result<(), ApiError> {
    if iafactory_crds::validation::is_dns_label(slug) && slug.len() <= 63 {
        Ok(())
    } else {
        Err(ApiError::validation(
            "tenant_slug",
            "use lower-case letters, digits and '-' (a DNS label), at most 63 characters",
        ))
    }
}

/// Creates a tenant and its first administrator, and logs them in.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, description = "tenant and admin created, with a token"),
              (status = 409, description = "the slug or e-mail address is taken"),
              (status = 422, description = "invalid field")))]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> ApiResult<Response> {
    if !state.config.allow_registration {
        return Err(ApiError::Forbidden(
            "registration is closed on this platform: ask its operator".into(),
        ));
    }
    let name = body.tenant_name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation(
            "tenant_name",
            "must be 1 to 200 characters",
        ));
    }
    check_slug(&body.tenant_slug)?;
    let email = check_email(&body.email)?;
    auth::check_password_strength(&body.password)?;
    let password_hash = hash_off_thread(body.password).await?;

    let tenant_id = Uuid::new_v4();
    let mut tx = tenant_tx(&state.db, tenant_id).await?;
    sqlx::query("INSERT INTO tenants (id, name, slug) VALUES ($1, $2, $3)")
        .bind(tenant_id)
        .bind(name)
        .bind(&body.tenant_slug)
        .execute(&mut *tx)
        .await?;
    let user: UserView = sqlx::query_as(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, 'tenant_admin')
         RETURNING id, tenant_id, email, role, created_at",
    )
    .bind(tenant_id)
    .bind(&email)
    .bind(&password_hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%tenant_id, slug = %body.tenant_slug, "tenant registered");
    let access_token = state.jwt.issue(user.id, tenant_id, Role::TenantAdmin)?;
    Ok(created(TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: state.jwt.ttl_seconds,
        user,
    }))
}

pub(crate) async fn hash_off_thread(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("hashing a password", e))?
}

#[derive(sqlx::FromRow)]
struct LoginRow {
    id: Uuid,
    tenant_id: Uuid,
    password_hash: String,
    role: String,
    tenant_status: String,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "a bearer token"), (status = 401, description = "wrong e-mail or password")))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> ApiResult<Json<Envelope<TokenResponse>>> {
    let row: Option<LoginRow> = sqlx::query_as("SELECT * FROM auth_user_by_email($1)")
        .bind(body.email.trim())
        .fetch_optional(&state.db)
        .await?;
    let hash = row.as_ref().map_or_else(
        || auth::dummy_password_hash().to_owned(),
        |r| r.password_hash.clone(),
    );
    let password = body.password;
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|e| ApiError::internal("verifying a password", e))?;
    let Some(row) = row.filter(|_| matches) else {
        return Err(ApiError::Unauthorized("wrong e-mail address or password"));
    };
    if row.tenant_status != "active" {
        return Err(ApiError::Forbidden("the tenant is suspended".into()));
    }
    let role = Role::parse(&row.role).unwrap_or(Role::User);
    let access_token = state.jwt.issue(row.id, row.tenant_id, role)?;
    let mut tx = tenant_tx(&state.db, row.tenant_id).await?;
    let user: UserView =
        sqlx::query_as("SELECT id, tenant_id, email, role, created_at FROM users WHERE id = $1")
            .bind(row.id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(ok(TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: state.jwt.ttl_seconds,
        user,
    }))
}

#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    responses((status = 200, description = "the caller, its tenant and scopes"), (status = 401, description = "no valid credential")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn me(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Envelope<MeResponse>>> {
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    // One round trip for both: this is the API's most frequent call.
    let row: Option<MeRow> = sqlx::query_as(
        "SELECT u.id, u.tenant_id, u.email, u.role, u.created_at,
                t.name AS tenant_name, t.slug, t.plan, t.status, t.created_at AS tenant_created_at
         FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE u.id = $1",
    )
    .bind(auth.user_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    // A token may outlive its user: it then stops working.
    let Some(row) = row else {
        return Err(ApiError::Unauthorized("the account no longer exists"));
    };
    Ok(ok(MeResponse {
        tenant: TenantView {
            id: row.tenant_id,
            name: row.tenant_name,
            slug: row.slug,
            plan: row.plan,
            status: row.status,
            created_at: row.tenant_created_at,
        },
        user: UserView {
            id: row.id,
            tenant_id: row.tenant_id,
            email: row.email,
            role: row.role,
            created_at: row.created_at,
        },
        scopes: auth.scopes.clone(),
        key_id: auth.key.as_ref().map(|k| k.id),
    }))
}

#[derive(sqlx::FromRow)]
struct MeRow {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    role: String,
    created_at: DateTime<Utc>,
    tenant_name: String,
    slug: String,
    plan: String,
    status: String,
    tenant_created_at: DateTime<Utc>,
}

/// Adds a user to the caller's tenant (tenant admins only).
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, description = "user created"), (status = 403, description = "not an admin"), (status = 409, description = "e-mail taken")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> ApiResult<Response> {
    auth.require(Scope::Admin)?;
    let email = check_email(&body.email)?;
    let role = match body.role.as_deref().unwrap_or("user") {
        "user" => Role::User,
        "tenant_admin" => Role::TenantAdmin,
        _ => return Err(ApiError::validation("role", "must be user or tenant_admin")),
    };
    auth::check_password_strength(&body.password)?;
    let password_hash = hash_off_thread(body.password).await?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let user: UserView = sqlx::query_as(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, $4)
         RETURNING id, tenant_id, email, role, created_at",
    )
    .bind(auth.tenant_id)
    .bind(&email)
    .bind(&password_hash)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(created(user))
}

#[utoipa::path(get, path = "/api/users", tag = "users", params(PageQuery),
    responses((status = 200, description = "the tenant's users, paginated")), security(("bearer" = []), ("api_key" = [])))]
pub async fn list_users(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Envelope<Vec<UserView>>>> {
    auth.require(Scope::Admin)?;
    let page_request = query.validate(&["created_at", "email", "role"])?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    let users: Vec<UserView> = sqlx::query_as(&format!(
        "SELECT id, tenant_id, email, role, created_at FROM users ORDER BY {}, id LIMIT $1 OFFSET $2",
        page_request.order_by()
    ))
    .bind(i64::from(page_request.limit))
    .bind(page_request.offset())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(page(users, page_request.meta(total)))
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users",
    responses((status = 200, description = "user deleted"), (status = 404, description = "no such user in this tenant")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    auth.require(Scope::Admin)?;
    if id == auth.user_id {
        return Err(ApiError::Conflict(
            "you cannot delete your own account".into(),
        ));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if deleted.rows_affected() == 0 {
        return Err(ApiError::NotFound("user"));
    }
    Ok(ok(serde_json::json!({ "id": id, "deleted": true })))
}

//! Registration, login and sign-out, the current user, and a tenant's users.
//!
//! Managing users (create, delete, role and status) and changing a password need a
//! signed-in user, never an API key. Sign-out, a password change, and deleting,
//! demoting or suspending a user end the user's existing tokens (see
//! [`crate::auth::authenticate_bearer`]).

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
    #[schema(min_length = 1, max_length = 200)]
    pub tenant_name: String,
    /// DNS label, unique on the platform.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    )]
    pub tenant_slug: String,
    #[schema(max_length = 320, pattern = r"^[^@\s]+@[^\s.][^\s]*\.[^\s]*[^\s.]$")]
    pub email: String,
    /// 10 characters at least.
    #[schema(min_length = 10, max_length = 1024)]
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
    /// `active` or `suspended`; absent where a route does not read it.
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

const USER_COLUMNS: &str = "id, tenant_id, email, role, created_at, status";

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
    #[schema(max_length = 320, pattern = r"^[^@\s]+@[^\s.][^\s]*\.[^\s]*[^\s.]$")]
    pub email: String,
    #[schema(min_length = 10, max_length = 1024)]
    pub password: String,
    /// `user` (the default) or `tenant_admin`.
    #[schema(pattern = "^(user|tenant_admin)$")]
    pub role: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// `user` or `tenant_admin`.
    #[schema(pattern = "^(user|tenant_admin)$")]
    pub role: Option<String>,
    /// `active` or `suspended`. A suspended user cannot log in, and their tokens and
    /// API keys stop working.
    #[schema(pattern = "^(active|suspended)$")]
    pub status: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignedOut {
    /// Always `true`.
    pub signed_out: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
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
    responses((status = 201, description = "tenant and admin created, with a token", body = Envelope<TokenResponse>),
              (status = 403, description = "registration is closed on this platform", body = crate::error::ErrorEnvelope),
              (status = 409, description = "the slug or e-mail address is taken", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Anonymous, crate::openapi::responses::JsonBody))]
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
    let user: UserView = sqlx::query_as(&format!(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, 'tenant_admin')
         RETURNING {USER_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(&email)
    .bind(&password_hash)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%tenant_id, slug = %body.tenant_slug, "tenant registered");
    // A new user starts at token version 0 (the column's default).
    let access_token = state.jwt.issue(user.id, tenant_id, Role::TenantAdmin, 0)?;
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
    user_status: String,
    token_version: i64,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, description = "a bearer token", body = Envelope<TokenResponse>),
              (status = 401, description = "wrong e-mail or password", body = crate::error::ErrorEnvelope),
              (status = 403, description = "the tenant or the user is suspended", body = crate::error::ErrorEnvelope),
              crate::openapi::responses::Anonymous, crate::openapi::responses::JsonBody))]
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
    if row.user_status != "active" {
        return Err(ApiError::Forbidden("this account is suspended".into()));
    }
    let role = Role::parse(&row.role).unwrap_or(Role::User);
    let access_token = state
        .jwt
        .issue(row.id, row.tenant_id, role, row.token_version)?;
    let mut tx = tenant_tx(&state.db, row.tenant_id).await?;
    let user: UserView = sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
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
    responses((status = 200, description = "the caller, its tenant and scopes", body = Envelope<MeResponse>), crate::openapi::responses::Secured),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn me(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Envelope<MeResponse>>> {
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    // One round trip for both: this is the API's most frequent call.
    let row: Option<MeRow> = sqlx::query_as(
        "SELECT u.id, u.tenant_id, u.email, u.role, u.created_at, u.status AS status_of_user,
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
            status: Some(row.status_of_user),
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
    status_of_user: String,
    tenant_name: String,
    slug: String,
    plan: String,
    status: String,
    tenant_created_at: DateTime<Utc>,
}

/// Adds a user to the caller's tenant (a signed-in tenant admin; never an API key).
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, description = "user created", body = Envelope<UserView>),
              (status = 409, description = "e-mail taken", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> ApiResult<Response> {
    auth.require_signed_in_admin()?;
    let email = check_email(&body.email)?;
    let role = match body.role.as_deref().unwrap_or("user") {
        "user" => Role::User,
        "tenant_admin" => Role::TenantAdmin,
        _ => return Err(ApiError::validation("role", "must be user or tenant_admin")),
    };
    auth::check_password_strength(&body.password)?;
    let password_hash = hash_off_thread(body.password).await?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let user: UserView = sqlx::query_as(&format!(
        "INSERT INTO users (tenant_id, email, password_hash, role) VALUES ($1, $2, $3, $4)
         RETURNING {USER_COLUMNS}"
    ))
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
    responses((status = 200, description = "the tenant's users, paginated", body = Envelope<Vec<UserView>>), crate::openapi::responses::Secured, crate::openapi::responses::Paged),
    security(("bearer" = []), ("api_key" = [])))]
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
        "SELECT {USER_COLUMNS} FROM users ORDER BY {}, id LIMIT $1 OFFSET $2",
        page_request.order_by()
    ))
    .bind(i64::from(page_request.limit))
    .bind(page_request.offset())
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(page(users, page_request.meta(total)))
}

/// Deletes a user, their API keys with them; their tokens stop working.
#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(("id" = Uuid, Path, description = "the user")),
    responses((status = 200, description = "user deleted", body = Envelope<crate::openapi::bodies::Deleted>),
              (status = 409, description = "your own account", body = crate::error::ErrorEnvelope), crate::openapi::responses::Secured, crate::openapi::responses::ById),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Envelope<serde_json::Value>>> {
    auth.require_signed_in_admin()?;
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
    forget_user(&state, id).await;
    Ok(ok(serde_json::json!({ "id": id, "deleted": true })))
}

/// This replica stops trusting what it cached of the user at once; the others within
/// their cache TTL (5 s at most).
async fn forget_user(state: &AppState, user_id: Uuid) {
    state.sessions.evict(user_id).await;
    state.key_cache.evict_user(user_id).await;
}

/// Changes a user's role or status. Either change ends the user's existing tokens.
#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", request_body = UpdateUserRequest,
    params(("id" = Uuid, Path, description = "the user")),
    responses((status = 200, description = "the user, changed", body = Envelope<UserView>),
              (status = 409, description = "your own account"),
              crate::openapi::responses::Secured, crate::openapi::responses::ById, crate::openapi::responses::JsonBody),
    security(("bearer" = [])))]
pub async fn update_user(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<UpdateUserRequest>,
) -> ApiResult<Json<Envelope<UserView>>> {
    auth.require_signed_in_admin()?;
    let role = match body.role.as_deref() {
        None => None,
        Some("user") => Some(Role::User),
        Some("tenant_admin") => Some(Role::TenantAdmin),
        Some(_) => return Err(ApiError::validation("role", "must be user or tenant_admin")),
    };
    let status = match body.status.as_deref() {
        None | Some("active" | "suspended") => body.status.as_deref(),
        Some(_) => {
            return Err(ApiError::validation(
                "status",
                "must be active or suspended",
            ));
        }
    };
    if id == auth.user_id {
        return Err(ApiError::Conflict(
            "you cannot change your own role or status: ask another tenant administrator".into(),
        ));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    // A platform admin's account is not the tenant's to change.
    let user: Option<UserView> = sqlx::query_as(&format!(
        "UPDATE users SET role = coalesce($2, role), status = coalesce($3, status), updated_at = now()
         WHERE id = $1 AND role <> 'admin' RETURNING {USER_COLUMNS}"
    ))
    .bind(id)
    .bind(role.map(Role::as_str))
    .bind(status)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let user = user.ok_or(ApiError::NotFound("user"))?;
    forget_user(&state, id).await;
    Ok(ok(user))
}

/// Ends the caller's sessions: every token issued to them so far stops working (on
/// this replica at once, on the others within 5 s).
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses((status = 200, description = "signed out: every token issued to the caller so far stops working", body = Envelope<SignedOut>),
              crate::openapi::responses::Secured),
    security(("bearer" = [])))]
pub async fn logout(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Envelope<SignedOut>>> {
    if auth.key.is_some() {
        return Err(ApiError::Forbidden(
            "an API key has no session to end: revoke the key instead (DELETE /api/keys/{id})"
                .into(),
        ));
    }
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    sqlx::query("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
        .bind(auth.user_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    forget_user(&state, auth.user_id).await;
    Ok(ok(SignedOut { signed_out: true }))
}

/// Changes the caller's password. Every token issued before stops working; the reply
/// carries a new one.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", request_body = ChangePasswordRequest,
    responses((status = 200, description = "changed, with a new token; earlier tokens stop working", body = Envelope<TokenResponse>),
              crate::openapi::responses::Secured, crate::openapi::responses::JsonBody),
    security(("bearer" = [])))]
pub async fn change_password(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<ChangePasswordRequest>,
) -> ApiResult<Json<Envelope<TokenResponse>>> {
    if auth.key.is_some() {
        return Err(ApiError::Forbidden(
            "an API key cannot change a password: sign in".into(),
        ));
    }
    auth::check_password_strength(&body.new_password)
        .map_err(|_| ApiError::validation("new_password", "must be 10 to 1024 characters"))?;
    let mut tx = tenant_tx(&state.db, auth.tenant_id).await?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1 FOR UPDATE")
            .bind(auth.user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let current = current.ok_or(ApiError::Unauthorized("the account no longer exists"))?;
    let password = body.current_password;
    let matches = tokio::task::spawn_blocking(move || auth::verify_password(&password, &current))
        .await
        .map_err(|e| ApiError::internal("verifying a password", e))?;
    if !matches {
        return Err(ApiError::validation(
            "current_password",
            "is not your current password",
        ));
    }
    let password_hash = hash_off_thread(body.new_password).await?;
    // The users_token_version trigger moves the version on with the hash.
    let (user, version): (UserView, i64) = {
        let row: UserWithVersion = sqlx::query_as(&format!(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1
             RETURNING {USER_COLUMNS}, token_version"
        ))
        .bind(auth.user_id)
        .bind(&password_hash)
        .fetch_one(&mut *tx)
        .await?;
        (row.user, row.token_version)
    };
    tx.commit().await?;
    forget_user(&state, auth.user_id).await;
    let role = Role::parse(&user.role).unwrap_or(Role::User);
    let access_token = state.jwt.issue(user.id, user.tenant_id, role, version)?;
    Ok(ok(TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in: state.jwt.ttl_seconds,
        user,
    }))
}

#[derive(sqlx::FromRow)]
struct UserWithVersion {
    #[sqlx(flatten)]
    user: UserView,
    token_version: i64,
}

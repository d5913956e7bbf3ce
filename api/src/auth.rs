//! Who is calling: passwords (argon2), JWTs (HS256) and API keys, and the extractor
//! that turns a request's credential into an [`Auth`] with its tenant and scopes.
//!
//! A JWT is only as good as its session: the bearer path checks the user's current
//! token version, role and status and the tenant's status ([`authenticate_bearer`],
//! cached at most [`MAX_SESSION_CACHE`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ratelimit::Principal;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operates the platform.
    Admin,
    /// Manages one tenant: its users, keys and knowledge bases.
    TenantAdmin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::TenantAdmin => "tenant_admin",
            Role::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "tenant_admin" => Some(Role::TenantAdmin),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    /// What a user of this role may do; an API key carries a subset.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Role::Admin | Role::TenantAdmin => &[Scope::Query, Scope::Ingest, Scope::Admin],
            Role::User => &[Scope::Query, Scope::Ingest],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Search and ask.
    Query,
    /// Upload and delete documents.
    Ingest,
    /// Manage users, keys and knowledge bases.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Query => "query",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "query" => Some(Scope::Query),
            "ingest" => Some(Scope::Ingest),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Auth {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub scopes: Vec<Scope>,
    /// Set when the caller used an API key.
    pub key: Option<KeyIdentity>,
}

#[derive(Debug, Clone)]
pub struct KeyIdentity {
    pub id: Uuid,
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    pub rate_limit_per_minute: u32,
    /// A key it mints expires no later than this.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Auth {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this credential lacks the {:?} scope",
                scope.as_str()
            )))
        }
    }

    /// User management (create, delete, role or status changes) and password changes:
    /// only a signed-in tenant administrator, never an API key, whatever its scopes.
    pub fn require_signed_in_admin(&self) -> Result<(), ApiError> {
        if self.key.is_some() {
            return Err(ApiError::Forbidden(
                "managing users needs a signed-in tenant administrator (Authorization: Bearer <token>): an API key cannot create, delete or change users, whatever its scopes".into(),
            ));
        }
        if !matches!(self.role, Role::TenantAdmin | Role::Admin) {
            return Err(ApiError::Forbidden(
                "only a tenant administrator can manage users".into(),
            ));
        }
        Ok(())
    }

    /// Whom this caller's requests count against (see [`crate::ratelimit`]).
    pub fn principal(&self) -> Principal {
        match &self.key {
            Some(key) => Principal::Key {
                id: key.id,
                per_minute: key.rate_limit_per_minute,
            },
            None => Principal::User(self.user_id),
        }
    }

    /// Whether a key restricted to some knowledge bases may use this one.
    pub fn may_use_knowledge_base(&self, id: Uuid) -> bool {
        match self
            .key
            .as_ref()
            .and_then(|k| k.knowledge_base_ids.as_ref())
        {
            Some(allowed) => allowed.contains(&id),
            None => true,
        }
    }
}

// ---- passwords -------------------------------------------------------------------

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| ApiError::internal("hashing a password", std::io::Error::other(e.to_string())))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Verifying against this when the user does not exist keeps a wrong e-mail address
/// as slow as a wrong password, so response times do not reveal who has an account.
pub fn dummy_password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a real password").unwrap_or_default())
}

pub fn check_password_strength(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < 10 {
        return Err(ApiError::validation(
            "password",
            "must be at least 10 characters long",
        ));
    }
    if password.len() > 1024 {
        return Err(ApiError::validation(
            "password",
            "must be at most 1024 bytes",
        ));
    }
    Ok(())
}

// ---- JWT -------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
    pub exp: i64,
    pub iat: i64,
    /// The user's token version when this token was issued: once the version moves on
    /// (sign-out, a password, role or status change) the token is refused.
    pub ver: i64,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl_seconds: i64,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_seconds: i64) -> Self {
        // Only HS256: a token claiming `alg: none` or any other algorithm is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_seconds,
        }
    }

    /// A token for this user at their current `token_version`.
    pub fn issue(
        &self,
        user_id: Uuid,
        tenant_id: Uuid,
        role: Role,
        token_version: i64,
    ) -> Result<String, ApiError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            user_id,
            tenant_id,
            role,
            exp: now + self.ttl_seconds,
            iat: now,
            ver: token_version,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::internal("signing a token", e))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("the token has expired: log in again")
                }
                _ => ApiError::Unauthorized("the token is invalid"),
            })
    }
}

// ---- API keys --------------------------------------------------------------------

pub const KEY_PREFIX: &str = "iaf_";

/// A new key: `iaf_` and 256 random bits, base64url. Returned once, stored hashed.
pub fn generate_api_key() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    )
}

pub fn hash_api_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A verified key, cached briefly so a key-authenticated request costs no lookup.
#[derive(Clone)]
struct CachedKey {
    auth: Auth,
    expires_at: Option<DateTime<Utc>>,
    cached_at: Instant,
}

/// Verified keys by hash. Revocation evicts locally at once; other replicas trust a
/// cached key for at most the configured TTL (5 s by default).
#[derive(Clone)]
pub struct KeyCache {
    entries: Arc<RwLock<HashMap<Vec<u8>, CachedKey>>>,
    ttl: Duration,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Arc::default(),
            ttl,
        }
    }

    pub async fn evict_key(&self, key_id: Uuid) {
        self.evict_keys(&[key_id]).await;
    }

    /// Evicts these keys (a revoked key and what it minted).
    pub async fn evict_keys(&self, key_ids: &[Uuid]) {
        self.entries.write().await.retain(|_, cached| {
            cached
                .auth
                .key
                .as_ref()
                .is_none_or(|k| !key_ids.contains(&k.id))
        });
    }

    /// Evicts every key of this user (deleted, demoted or suspended).
    pub async fn evict_user(&self, user_id: Uuid) {
        self.entries
            .write()
            .await
            .retain(|_, cached| cached.auth.user_id != user_id);
    }

    async fn get(&self, hash: &[u8]) -> Option<Auth> {
        let entries = self.entries.read().await;
        let cached = entries.get(hash)?;
        let fresh = cached.cached_at.elapsed() < self.ttl;
        let unexpired = cached.expires_at.is_none_or(|at| at > Utc::now());
        (fresh && unexpired).then(|| cached.auth.clone())
    }

    async fn put(&self, hash: Vec<u8>, auth: Auth, expires_at: Option<DateTime<Utc>>) {
        let mut entries = self.entries.write().await;
        if entries.len() > 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, cached| cached.cached_at.elapsed() < ttl);
        }
        entries.insert(
            hash,
            CachedKey {
                auth,
                expires_at,
                cached_at: Instant::now(),
            },
        );
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    scopes: Vec<String>,
    knowledge_base_ids: Option<Vec<Uuid>>,
    rate_limit_per_minute: i32,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    tenant_status: String,
    owner_role: String,
    owner_status: String,
    /// A key in the chain that minted this one is revoked.
    lineage_revoked: bool,
}

async fn authenticate_key(state: &AppState, key: &str) -> Result<Auth, ApiError> {
    if !key.starts_with(KEY_PREFIX) || key.len() > 200 {
        return Err(ApiError::Unauthorized("the API key is invalid"));
    }
    let hash = hash_api_key(key);
    if let Some(auth) = state.key_cache.get(&hash).await {
        return Ok(auth);
    }
    let row: Option<KeyRow> = sqlx::query_as("SELECT * FROM auth_api_key($1)")
        .bind(&hash)
        .fetch_optional(&state.db)
        .await?;
    let Some(row) = row else {
        return Err(ApiError::Unauthorized("the API key is invalid"));
    };
    if row.revoked_at.is_some() || row.lineage_revoked {
        return Err(ApiError::Unauthorized("the API key has been revoked"));
    }
    if row.owner_status != "active" {
        return Err(ApiError::Unauthorized("the API key's owner is suspended"));
    }
    if row.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::Unauthorized("the API key has expired"));
    }
    if row.tenant_status != "active" {
        return Err(ApiError::Forbidden("the tenant is suspended".into()));
    }
    let owner_role = Role::parse(&row.owner_role).unwrap_or(Role::User);
    let auth = Auth {
        tenant_id: row.tenant_id,
        user_id: row.user_id,
        role: Role::User,
        // Never more than its owner may do now: a demoted owner's key loses `admin`.
        scopes: row
            .scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .filter(|s| owner_role.scopes().contains(s))
            .collect(),
        key: Some(KeyIdentity {
            id: row.id,
            knowledge_base_ids: row.knowledge_base_ids,
            rate_limit_per_minute: u32::try_from(row.rate_limit_per_minute).unwrap_or(1),
            expires_at: row.expires_at,
        }),
    };
    state
        .key_cache
        .put(hash, auth.clone(), row.expires_at)
        .await;
    Ok(auth)
}

// ---- sessions ----------------------------------------------------------------------

/// The longest a replica trusts what it last read of a user's session.
pub const MAX_SESSION_CACHE: Duration = Duration::from_secs(5);

/// What a bearer token's user is now.
#[derive(Debug, Clone, sqlx::FromRow)]
struct SessionRow {
    tenant_id: Uuid,
    role: String,
    status: String,
    token_version: i64,
    tenant_status: String,
}

/// Users' session state by user id, read at most [`MAX_SESSION_CACHE`] ago. Changes made
/// through this replica evict at once; other replicas see them within the TTL.
#[derive(Clone)]
pub struct SessionCache {
    entries: Arc<RwLock<HashMap<Uuid, CachedSession>>>,
    ttl: Duration,
}

/// `row: None`: the user does not exist.
struct CachedSession {
    row: Option<SessionRow>,
    read_at: Instant,
}

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Arc::default(),
            ttl: ttl.min(MAX_SESSION_CACHE),
        }
    }

    pub async fn evict(&self, user_id: Uuid) {
        self.entries.write().await.remove(&user_id);
    }

    /// Evicts every user (a tenant suspended through this replica).
    pub async fn clear(&self) {
        self.entries.write().await.clear();
    }

    /// The user's session, from the cache unless it is older than the TTL or older
    /// than a token of version `seen` (versions only go up: a token newer than the
    /// cache, issued at a log-in on another replica, means the cache is stale). A user
    /// found missing stays missing (ids are never reused).
    async fn load(
        &self,
        db: &sqlx::PgPool,
        user_id: Uuid,
        seen: i64,
    ) -> Result<Option<SessionRow>, ApiError> {
        if let Some(cached) = self.entries.read().await.get(&user_id)
            && cached.read_at.elapsed() < self.ttl
            && cached.row.as_ref().is_none_or(|r| r.token_version >= seen)
        {
            return Ok(cached.row.clone());
        }
        let row: Option<SessionRow> = sqlx::query_as("SELECT * FROM auth_session($1)")
            .bind(user_id)
            .fetch_optional(db)
            .await?;
        let mut entries = self.entries.write().await;
        if entries.len() > 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, cached| cached.read_at.elapsed() < ttl);
        }
        entries.insert(
            user_id,
            CachedSession {
                row: row.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(row)
    }
}

/// Checks a JWT and that its session still holds: the user exists in the token's
/// tenant, is active, has the token's role and token version, and the tenant is active.
pub async fn authenticate_bearer(state: &AppState, token: &str) -> Result<Auth, ApiError> {
    let claims = state.jwt.verify(token)?;
    let Some(session) = state
        .sessions
        .load(&state.db, claims.user_id, claims.ver)
        .await?
    else {
        return Err(ApiError::Unauthorized("the account no longer exists"));
    };
    if session.tenant_id != claims.tenant_id {
        return Err(ApiError::Unauthorized("the token is invalid"));
    }
    if session.tenant_status != "active" {
        return Err(ApiError::Unauthorized("the tenant is suspended"));
    }
    if session.status != "active" {
        return Err(ApiError::Unauthorized("the account is suspended"));
    }
    if session.token_version != claims.ver || session.role != claims.role.as_str() {
        return Err(ApiError::Unauthorized(
            "the session has ended (signed out, or the account changed): log in again",
        ));
    }
    Ok(Auth {
        tenant_id: claims.tenant_id,
        user_id: claims.user_id,
        role: claims.role,
        scopes: claims.role.scopes().to_vec(),
        key: None,
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.extensions.get::<Auth>().cloned() {
            // Authenticated already by the rate limiter, which runs before the usage
            // log sets up its attribution: attribute the caller now.
            state.usage.attribute(parts, &auth);
            return Ok(auth);
        }
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .ok_or(())
            });
        let api_key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let auth = match (bearer, api_key) {
            (Some(Ok(token)), _) => authenticate_bearer(state, token.trim()).await?,
            (Some(Err(())), _) => {
                return Err(ApiError::Unauthorized("use Authorization: Bearer <token>"));
            }
            (None, Some(key)) => authenticate_key(state, key.trim()).await?,
            (None, None) => {
                return Err(ApiError::Unauthorized(
                    "authentication required: Authorization: Bearer <token> or X-API-Key: <key>",
                ));
            }
        };
        state.usage.attribute(parts, &auth);
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[test]
    fn tokens_round_trip_and_other_keys_are_refused() {
        let keys = JwtKeys::new(&[7; 32], 60);
        let (user, tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(user, tenant, Role::TenantAdmin, 3).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(
            (claims.user_id, claims.tenant_id, claims.role, claims.ver),
            (user, tenant, Role::TenantAdmin, 3)
        );
        assert!(JwtKeys::new(&[8; 32], 60).verify(&token).is_err());
    }

    #[test]
    fn api_keys_are_long_random_and_hashed() {
        let (a, b) = (generate_api_key(), generate_api_key());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43);
        assert_eq!(hash_api_key(&a).len(), 32);
    }
}

//! The one HTTP error type: every failure becomes the seed's envelope
//! `{"status":"error","error":{"code","message"}}` with the right status code.
//! Internal errors are logged (with the request id, from the tracing span) and never
//! shown to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub type ApiResult<T, E = ApiError> = Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// Another tenant's object is "not found" too: a 403 would confirm it exists.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than this endpoint accepts{}", .limit.map(|l| format!(" ({l} bytes)")).unwrap_or_default())]
    PayloadTooLarge { limit: Option<usize> },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    Validation {
        message: String,
        fields: Vec<FieldProblem>,
    },
    #[error("too many requests: retry in {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    #[error("the service is not ready: {0}")]
    Unavailable(&'static str),
    #[error("internal error while {context}")]
    Internal {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl ApiError {
    pub fn internal(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Internal {
            context,
            source: Box::new(source),
        }
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::Validation {
            message: format!("{field}: {message}"),
            fields: vec![FieldProblem {
                field: field.into(),
                message,
            }],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal { .. } => "internal_error",
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// Always `error`.
    pub status: &'static str,
    pub error: ErrorBody,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal { context, source } => {
                tracing::error!(error = %source, context, "internal error");
                "an internal error occurred; it has been logged with this request's id".to_owned()
            }
            other => other.to_string(),
        };
        let fields = match &self {
            ApiError::Validation { fields, .. } => fields.clone(),
            _ => Vec::new(),
        };
        let body = ErrorEnvelope {
            status: "error",
            error: ErrorBody {
                code: self.code(),
                message,
                fields,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited {
            retry_after_seconds,
        } = self
        {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds.max(1)),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            // Constraint violations are the client's doing, said in its terms.
            if db.is_unique_violation() {
                return ApiError::Conflict(match db.constraint() {
                    Some("tenants_slug_key") => "a tenant with this slug already exists".into(),
                    Some("users_email_key") => {
                        "a user with this e-mail address already exists".into()
                    }
                    Some(other) if other.ends_with("_name_key") => {
                        "an object with this name already exists".into()
                    }
                    _ => "this object already exists".into(),
                });
            }
            if db.is_foreign_key_violation() {
                return ApiError::NotFound("referenced object");
            }
            if db.is_check_violation() {
                return ApiError::validation(db.constraint().unwrap_or("value"), "is not allowed");
            }
            // character_not_in_repertoire (text) and untranslatable_character (jsonb):
            // PostgreSQL cannot store U+0000, which JSON can carry (`\u0000`); the value
            // is the client's, so is the refusal.
            if matches!(db.code().as_deref(), Some("22021" | "22P05")) {
                return ApiError::validation(
                    "body",
                    "text may not contain the NUL character (\\u0000)",
                );
            }
        }
        if matches!(error, sqlx::Error::PoolTimedOut) {
            return ApiError::Unavailable("the database is not answering");
        }
        ApiError::internal("querying the database", error)
    }
}

//! The shape of the HTTP API: the success envelope, the JSON extractor whose failures
//! use the error envelope, and pagination.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// `{"status":"success","data":...,"meta":...}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Envelope<T: Serialize> {
    /// Always `success`.
    pub status: &'static str,
    pub data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<PageMeta>,
}

pub fn ok<T: Serialize>(data: T) -> Json<Envelope<T>> {
    Json(Envelope {
        status: "success",
        data,
        meta: None,
    })
}

pub fn page<T: Serialize>(data: T, meta: PageMeta) -> Json<Envelope<T>> {
    Json(Envelope {
        status: "success",
        data,
        meta: Some(meta),
    })
}

/// A page of rows read with their total (`count(*) OVER () AS total`).
pub fn counted_page<T: Serialize>(rows: Vec<Counted<T>>, request: &Page) -> Json<Envelope<Vec<T>>> {
    let total = rows.first().map_or(0, |r| r.total);
    page(
        rows.into_iter().map(|r| r.row).collect(),
        request.meta(total),
    )
}

pub fn created<T: Serialize>(data: T) -> Response {
    (StatusCode::CREATED, ok(data)).into_response()
}

pub fn accepted<T: Serialize>(data: T) -> Response {
    (StatusCode::ACCEPTED, ok(data)).into_response()
}

/// JSON bodies whose every failure is an [`ApiError`]: 400 for malformed JSON, 415
/// without `Content-Type: application/json`, 413 over the limit, 422 for a body of the
/// wrong shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let detail = e.body_text();
            ApiError::Validation {
                message: detail.clone(),
                fields: vec![crate::error::FieldProblem {
                    field: "body".into(),
                    message: detail,
                }],
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "send the body as JSON, with Content-Type: application/json".into(),
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { limit: None }
        }
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// `?page=&limit=&sort=&order=`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based.
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// At most 100.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// A column of the list (each list says which).
    pub sort: Option<String>,
    /// `asc` or `desc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PageMeta {
    pub page: u32,
    pub limit: u32,
    pub total: i64,
}

/// A row of a list with the list's total, from `count(*) OVER () AS total`: one round
/// trip for a page and its count.
#[derive(Debug)]
pub struct Counted<T> {
    pub row: T,
    pub total: i64,
}

impl<'r, T> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Counted<T>
where
    T: sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            row: T::from_row(row)?,
            total: row.try_get("total")?,
        })
    }
}

/// A validated page request: the sort column is one of the resource's whitelist,
/// so it can be written into SQL.
#[derive(Debug, Clone)]
pub struct Page {
    pub page: u32,
    pub limit: u32,
    pub sort: &'static str,
    pub descending: bool,
}

impl Page {
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.limit)
    }

    pub fn order_by(&self) -> String {
        format!(
            "{} {}",
            self.sort,
            if self.descending { "DESC" } else { "ASC" }
        )
    }

    pub fn meta(&self, total: i64) -> PageMeta {
        PageMeta {
            page: self.page,
            limit: self.limit,
            total,
        }
    }
}

impl PageQuery {
    /// `sortable` lists the allowed sort columns; the first is the default.
    pub fn validate(&self, sortable: &[&'static str]) -> Result<Page, ApiError> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(ApiError::validation("page", "starts at 1"));
        }
        let limit = self.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::validation("limit", "must be between 1 and 100"));
        }
        let sort = match &self.sort {
            None => sortable[0],
            Some(wanted) => sortable
                .iter()
                .copied()
                .find(|s| s == wanted)
                .ok_or_else(|| {
                    ApiError::validation("sort", format!("must be one of {}", sortable.join(", ")))
                })?,
        };
        let descending = match self.order.as_deref() {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(_) => return Err(ApiError::validation("order", "must be asc or desc")),
        };
        Ok(Page {
            page,
            limit,
            sort,
            descending,
        })
    }
}

/// Query strings whose failures are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::BadRequest(e.body_text()))
    }
}

/// Path parameters whose failures are [`ApiError`]s: a malformed id is a 400 in the
/// envelope, not axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

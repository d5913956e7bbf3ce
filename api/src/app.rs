//! The router and its middleware. `app(state)` is separate from serving, so tests
//! drive the router directly.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::rag::routes as rag;
use crate::routes::{accounts, internal, keys, ops};
use crate::state::AppState;
use crate::workflows::routes as workflows;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public listener's routes (`IAF_LISTEN`): `/api`, `/ws`, the console, the probes
/// and the OpenAPI document. `/internal/*` and `/metrics` are not among them: they
/// answer 404 here, and are served by [`internal_app`] only. Other areas (RAG,
/// workflows, the console) merge theirs in through [`api_routes`].
pub fn app(state: AppState) -> Router {
    api_routes(Router::new(), &state).with_state(state)
}

/// The internal listener's routes (`IAF_INTERNAL_LISTEN`): `/internal/*` (the operator
/// token) and `/metrics`, for the operator, the appliance and monitoring; and the
/// probes, so that a check may use either port.
pub fn internal_app(state: AppState) -> Router {
    internal_routes(Router::new(), &state).with_state(state)
}

pub fn internal_routes(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let internal = Router::new()
        .route("/internal/tenants/{slug}", put(internal::upsert_tenant))
        .route(
            "/internal/tenants/{slug}/admins/{email}",
            put(internal::upsert_admin),
        )
        .route(
            "/internal/tenants/{slug}/knowledge-bases/{name}",
            // The registration carries the content of its configMap sources.
            put(internal::upsert_knowledge_base)
                .layer(DefaultBodyLimit::max(
                    state.config.max_upload_bytes.saturating_add(1024 * 1024),
                ))
                .get(internal::get_knowledge_base)
                .delete(internal::delete_knowledge_base),
        )
        .route(
            "/internal/tenants/{slug}/workflows/{name}",
            put(internal::upsert_workflow)
                .get(internal::get_workflow)
                .delete(internal::delete_workflow),
        )
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz));
    common_layers(router.merge(internal), state)
}

pub fn api_routes(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let limited = Router::new()
        .route("/api/auth/register", post(accounts::register))
        .route("/api/auth/login", post(accounts::login))
        .route("/api/auth/me", get(accounts::me))
        .route("/api/auth/logout", post(accounts::logout))
        .route("/api/auth/password", post(accounts::change_password))
        .route(
            "/api/users",
            post(accounts::create_user).get(accounts::list_users),
        )
        .route(
            "/api/users/{id}",
            axum::routing::delete(accounts::delete_user).patch(accounts::update_user),
        )
        .route("/api/keys", post(keys::create_key).get(keys::list_keys))
        .route(
            "/api/keys/{id}",
            get(keys::get_key).delete(keys::revoke_key),
        )
        .route("/api/usage", get(keys::usage))
        .route(
            "/api/knowledge-bases",
            post(rag::create_knowledge_base).get(rag::list_knowledge_bases),
        )
        .route(
            "/api/knowledge-bases/{id}",
            get(rag::get_knowledge_base)
                .patch(rag::update_knowledge_base)
                .delete(rag::delete_knowledge_base),
        )
        .route(
            "/api/knowledge-bases/{id}/documents",
            // Uploads have their own, larger limit; read_upload enforces it exactly.
            post(rag::upload_document)
                .layer(DefaultBodyLimit::max(
                    state.config.max_upload_bytes.saturating_add(1024 * 1024),
                ))
                .get(rag::list_documents),
        )
        .route(
            "/api/knowledge-bases/{id}/documents/{doc_id}",
            get(rag::get_document).delete(rag::delete_document),
        )
        .route("/api/chunks/{id}", get(rag::get_chunk))
        .route("/api/search", post(rag::search_route))
        .route("/api/query", post(rag::query_route))
        .route("/api/providers", get(rag::list_providers))
        .route(
            "/api/workflows",
            post(workflows::create_workflow).get(workflows::list_workflows),
        )
        .route(
            "/api/workflows/{id}",
            get(workflows::get_workflow)
                .put(workflows::replace_workflow)
                .delete(workflows::delete_workflow),
        )
        .route(
            "/api/workflows/{id}/executions",
            post(workflows::start_execution).get(workflows::list_executions),
        )
        .route(
            "/api/workflows/{id}/executions/{execution_id}",
            get(workflows::get_execution),
        )
        .route(
            "/api/workflows/{id}/executions/{execution_id}/cancel",
            post(workflows::cancel_execution),
        )
        .route(
            "/api/workflows/{id}/executions/{execution_id}/events",
            get(workflows::execution_events),
        )
        .route("/ws", get(workflows::websocket))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::usage::record_usage,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_by_caller,
        ));
    let operations = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi));

    let router = router
        .merge(limited)
        .merge(operations)
        .merge(crate::console::routes(&state.config));
    common_layers(router, state)
}

/// What both listeners share: the 404 envelope for unknown routes, the body limit,
/// request metrics, CORS and request ids.
fn common_layers(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(cors(&state.config.cors_origins))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, GenerateRequestId))
        .layer(middleware::map_request(drop_malformed_request_id))
}

/// A fresh id when the request brings none: a well-formed incoming `X-Request-Id` is
/// kept, so one id follows a request through the gateway and the API.
#[derive(Clone, Copy)]
struct GenerateRequestId;

impl MakeRequestId for GenerateRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// An overlong or binary `X-Request-Id` would end up in every log line: drop it, and a
/// fresh one is generated.
async fn drop_malformed_request_id(mut request: Request) -> Request {
    if request
        .headers()
        .get(&REQUEST_ID)
        .is_some_and(|id| !well_formed_request_id(id))
    {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

fn well_formed_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID, axum::http::header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Metrics for every request, by matched route (never by raw path: ids would explode
/// the label set).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    state.metrics.requests_in_flight.inc();
    // Decremented on drop: a request whose client left still ends here.
    let _in_flight = InFlight(&state.metrics.requests_in_flight);
    let response = next.run(request).await;
    state.metrics.observe_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Rate limits, before the handler: a request that authenticates counts against its
/// user or key (and its address's ceiling); any other against its address's anonymous
/// bucket. So failed sign-ins exhaust only the anonymous bucket, and never lock out the
/// signed-in people behind the same address. A credential that fails here counts as
/// anonymous, and its handler answers 401 as usual.
async fn limit_by_caller(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let client = client_address(&state, &request);
    let (mut parts, body) = request.into_parts();
    let carries_credential = parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
        || parts.headers.contains_key("x-api-key");
    let authenticated = if carries_credential {
        Auth::from_request_parts(&mut parts, &state).await.ok()
    } else {
        None
    };
    let verdict = match (client, &authenticated) {
        (Some(client), Some(auth)) => {
            state
                .rate_limiter
                .check_authenticated(client, auth.principal())
                .await
        }
        (Some(client), None) => state.rate_limiter.check_anonymous(client).await,
        // No peer address: only in-process callers (tests driving the router).
        (None, _) => Ok(()),
    };
    if let Err(limited) = verdict {
        return limited.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

fn client_address(state: &AppState, request: &Request) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())?;
    let forwarded_for = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    Some(
        state
            .config
            .trusted_proxies
            .client_address(peer, forwarded_for),
    )
}

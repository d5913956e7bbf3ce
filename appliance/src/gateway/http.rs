//! The plain-HTTP listener: ACME HTTP-01 answers, and a redirect to HTTPS for the rest.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use super::conn::Listener;
use super::routes::normalise_host;
use crate::certs::ChallengeStore;

#[derive(Clone)]
struct HttpState {
    challenges: ChallengeStore,
    https_port: u16,
}

pub(super) fn app(challenges: ChallengeStore, https_port: u16) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .fallback(redirect)
        .with_state(HttpState {
            challenges,
            https_port,
        })
}

pub(super) async fn serve(
    listener: TcpListener,
    challenges: ChallengeStore,
    https_port: u16,
    conns: Arc<Listener>,
) {
    let app = app(challenges, https_port);
    loop {
        let (tcp, peer) = tokio::select! {
            () = conns.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = conns.admit(peer) else {
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let conns = conns.clone();
        tokio::spawn(async move { conns.serve(admitted, peer, tcp, service).await });
    }
    drop(listener);
    conns.drain().await;
}

async fn challenge(State(state): State<HttpState>, Path(token): Path<String>) -> Response {
    match state.challenges.response(&token) {
        Some(key_authorization) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            key_authorization,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "no ACME challenge is pending for this token\n",
        )
            .into_response(),
    }
}

async fn redirect(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .map(normalise_host)
        .filter(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        });
    let Some(host) = host else {
        return (
            StatusCode::BAD_REQUEST,
            "use https://<tenant>.<domain>/ (this request names no valid host)\n",
        )
            .into_response();
    };
    let port = match state.https_port {
        443 => String::new(),
        port => format!(":{port}"),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = format!("https://{host}{port}{path}");
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

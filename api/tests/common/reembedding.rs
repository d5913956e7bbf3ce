//! Shared by the re-embedding tests (pgvector and Qdrant): the two real embedding
//! configurations, a proxy that pauses the second one, and the operator-side calls.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Auth, TestApp};

pub const MINILM: &str = r#"{"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": 384}"#;
pub const SMOLLM2: &str = r#"{"provider": "ollama", "model": "smollm2", "dimensions": 576}"#;

/// A TCP proxy to `upstream`: while paused, connections are accepted but not passed on
/// until it resumes.
pub struct Proxy {
    pub address: SocketAddr,
    paused: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (paused, watching) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = watching.clone();
                tokio::spawn(async move {
                    while *watching.borrow_and_update() {
                        if watching.changed().await.is_err() {
                            return;
                        }
                    }
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { address, paused }
    }

    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

pub fn spec(embedding: &str, sources: &[(&str, &str)]) -> Value {
    json!({
        "languages": ["en"],
        "embedding": serde_json::from_str::<Value>(embedding).unwrap(),
        "sources": sources.iter().map(|(title, text)| json!({"inline": {"title": title, "text": text}})).collect::<Vec<_>>(),
    })
}

pub async fn register_kb(app: &TestApp, slug: &str, name: &str, spec: Value) -> Value {
    let reply = app
        .request(
            Method::PUT,
            &format!("/internal/tenants/{slug}/knowledge-bases/{name}"),
            Auth::Bearer(super::OPERATOR_TOKEN),
            Some(super::kb_registration(slug, name, spec)),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"].clone()
}

pub async fn record(app: &TestApp, slug: &str, name: &str) -> Value {
    let reply = app
        .request(
            Method::GET,
            &format!("/internal/tenants/{slug}/knowledge-bases/{name}"),
            Auth::Bearer(super::OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"].clone()
}

/// The tenant, and a bearer token of its administrator.
pub async fn tenant(app: &TestApp, slug: &str) -> String {
    let reply = app
        .request(
            Method::PUT,
            &format!("/internal/tenants/{slug}"),
            Auth::Bearer(super::OPERATOR_TOKEN),
            Some(json!({"name": slug, "plan": "pro"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let password = "a long enough password";
    let reply = app
        .request(
            Method::PUT,
            &format!("/internal/tenants/{slug}/admins/admin@{slug}.dz"),
            Auth::Bearer(super::OPERATOR_TOKEN),
            Some(json!({ "password": password })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = app
        .request(
            Method::POST,
            "/api/auth/login",
            Auth::None,
            Some(json!({"email": format!("admin@{slug}.dz"), "password": password})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The titles of a search's results. The query shares no word with the documents, so
/// only the vector search can find anything.
pub async fn search(app: &TestApp, token: &str, kb: &str) -> Vec<String> {
    let reply = app
        .request(
            Method::POST,
            "/api/search",
            Auth::Bearer(token),
            Some(json!({"query": "When does the reading room welcome visitors?", "knowledge_base_ids": [kb], "top_k": 3})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn ingested(owner: &sqlx::PgPool, kb: &str, documents: i64) {
    eventually("the documents are ingested", async || {
        let ready: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM documents WHERE knowledge_base_id = $1::uuid AND status = 'ready'",
        )
        .bind(kb)
        .fetch_one(owner)
        .await
        .unwrap();
        (ready == documents).then_some(())
    })
    .await;
}

/// What a registration may write to the knowledge base's row and re-embedding.
pub async fn written(owner: &sqlx::PgPool, kb: &str) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object('updated_at', updated_at, 'embedding', embedding,
                'pending', pending_embedding, 'started', reembed_started_at,
                'next', (SELECT count(*) FROM chunk_embeddings_next n WHERE n.knowledge_base_id = kb.id))
         FROM knowledge_bases kb WHERE id = $1::uuid",
    )
    .bind(kb)
    .fetch_one(owner)
    .await
    .unwrap()
}

//! Test fixtures: a fresh database per test on the real PostgreSQL, and a client for
//! the router.
#![allow(dead_code)]

pub mod corpus;
pub mod passages;
pub mod qdrant_server;
pub mod reembedding;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use iafactory_api::config::{Config, Secret};
use iafactory_api::state::AppState;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests";
/// The serving role's password. Roles are cluster-wide, so every test gives it the same.
pub const DATABASE_APP_PASSWORD: &str = "app-password-for-tests";

/// A database of its own, dropped at the end of the test.
pub struct TestDb {
    pub url: String,
    admin_url: String,
    name: String,
}

pub fn engine_url(variable: &str, engine: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/test, or scripts/engines.sh up {engine} && source /tmp/iafactory-engines/env")
    })
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = engine_url("IAF_TEST_DATABASE_URL", "postgres");
        let name = format!("iaf_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("the test PostgreSQL answers");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("the URL names a database");
        Self {
            url: format!("{base}/{name}"),
            admin_url,
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn config(db: &TestDb) -> Config {
    config_for_url(&db.url)
}

/// The test configuration for a database the test runs itself.
pub fn config_for_url(database_url: &str) -> Config {
    Config {
        database_url: database_url.to_owned(),
        database_app_password: Secret(DATABASE_APP_PASSWORD.into()),
        jwt_secret: Secret(JWT_SECRET.into()),
        operator_token: Secret(OPERATOR_TOKEN.into()),
        database_max_connections: 8,
        // The API runs inside the test binary: documents are parsed by the real one.
        parser_executable: Some(env!("CARGO_BIN_EXE_iafactory-api").into()),
        ..Config::default()
    }
}

/// The real embedding model (MiniLM with candle) and the real llama.cpp generator.
pub fn rag_config(db: &TestDb) -> Config {
    Config {
        embedding_model_dir: Some(engine_url("IAF_TEST_EMBEDDING_MODEL_DIR", "minilm")),
        llm_base_url: Some(engine_url("IAF_TEST_LLM_BASE_URL", "llama")),
        llm_model: Some(engine_url("IAF_TEST_LLM_MODEL", "llama")),
        rate_limit: iafactory_api::config::RateLimitConfig {
            per_ip_per_minute: 100_000,
            per_ip_per_hour: 1_000_000,
            default_key_per_minute: 100_000,
            per_user_per_minute: 100_000,
            per_ip_ceiling_per_minute: 1_000_000,
        },
        ..config(db)
    }
}

pub async fn state(config: Config) -> AppState {
    iafactory_api::server::prepare(config)
        .await
        .expect("the API starts")
}

pub struct TestApp {
    /// The public listener's router.
    pub router: Router,
    /// The internal listener's router (`/internal/*`, `/metrics`).
    pub internal: Router,
    pub state: AppState,
    /// Stops the ingestion workers, if any, when the test ends.
    workers: Option<tokio_util::sync::DropGuard>,
}

impl TestApp {
    pub async fn new(db: &TestDb) -> Self {
        Self::with_config(config(db)).await
    }

    pub async fn with_config(config: Config) -> Self {
        let state = state(config).await;
        let peer = axum::Extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40000))));
        let router = iafactory_api::app::app(state.clone()).layer(peer);
        let internal = iafactory_api::app::internal_app(state.clone()).layer(peer);
        Self {
            router,
            internal,
            state,
            workers: None,
        }
    }

    /// With ingestion workers running, as in a served API.
    pub async fn with_workers(config: Config) -> Self {
        let mut app = Self::with_config(config).await;
        let stop = tokio_util::sync::CancellationToken::new();
        iafactory_api::rag::ingest::spawn_workers(app.state.clone(), 2, stop.clone());
        app.workers = Some(stop.drop_guard());
        app
    }

    /// With the workflow event listener running, as in a served API.
    pub async fn with_workflows(config: Config) -> Self {
        let mut app = Self::with_config(config).await;
        let stop = tokio_util::sync::CancellationToken::new();
        iafactory_api::workflows::events::spawn_listener(
            app.state.db.clone(),
            app.state.workflows.clone(),
            stop.clone(),
        );
        app.workers = Some(stop.drop_guard());
        app
    }

    /// Waits until every listed document is `ready` or `failed`; returns them.
    pub async fn wait_for_documents(
        &self,
        token: &str,
        knowledge_base: &str,
        ids: &[String],
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let mut documents = Vec::new();
            for id in ids {
                let reply = self
                    .request(
                        Method::GET,
                        &format!("/api/knowledge-bases/{knowledge_base}/documents/{id}"),
                        Auth::Bearer(token),
                        None,
                    )
                    .await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                documents.push(reply.body["data"].clone());
            }
            if documents
                .iter()
                .all(|d| d["status"] == "ready" || d["status"] == "failed")
            {
                return documents;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "documents still not ingested: {documents:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(path);
        builder = match auth {
            Auth::None => builder,
            Auth::Bearer(token) => builder.header("authorization", format!("Bearer {token}")),
            Auth::Key(key) => builder.header("x-api-key", key),
        };
        let body = match body {
            Some(value) => {
                builder = builder.header("content-type", "application/json");
                Body::from(serde_json::to_vec(&value).unwrap())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    /// To the listener that serves the path, as the operator and Prometheus do:
    /// `/internal/*` and `/metrics` to the internal one, the rest to the public one.
    /// [`TestApp::send_public`] sends anything to the public one.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let path = request.uri().path();
        let internal = path.starts_with("/internal/") || path == "/metrics";
        let router = if internal {
            &self.internal
        } else {
            &self.router
        };
        Self::reply(router.clone().oneshot(request).await.unwrap()).await
    }

    /// To the public listener, whatever the path.
    pub async fn send_public(&self, request: Request<Body>) -> Reply {
        Self::reply(self.router.clone().oneshot(request).await.unwrap()).await
    }

    async fn reply(response: axum::response::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Registers a tenant; returns (token, tenant id, user id).
    pub async fn register(&self, slug: &str) -> Registered {
        let reply = self
            .request(
                Method::POST,
                "/api/auth/register",
                Auth::None,
                Some(json!({"tenant_name": format!("Tenant {slug}"), "tenant_slug": slug, "email": format!("admin@{slug}.dz"), "password": "a long enough password"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        Registered {
            token: reply.body["data"]["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
            tenant_id: reply.body["data"]["user"]["tenant_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            user_id: reply.body["data"]["user"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        }
    }

    /// Creates an API key; returns (secret, id).
    pub async fn create_key(&self, token: &str, body: Value) -> (String, String) {
        let reply = self
            .request(Method::POST, "/api/keys", Auth::Bearer(token), Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        (
            reply.body["data"]["key"].as_str().unwrap().to_owned(),
            reply.body["data"]["id"].as_str().unwrap().to_owned(),
        )
    }
}

pub struct Registered {
    pub token: String,
    pub tenant_id: uuid::Uuid,
    pub user_id: uuid::Uuid,
}

#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Key(&'a str),
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        assert_eq!(self.body["status"], "error", "{}", self.body);
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// The body a driver sends to register a knowledge base: the plan of `spec` (the
/// manifest's spec as JSON, plus an optional `configMaps` list) under the default
/// platform configuration. Built directly rather than through
/// `plan::plan_knowledge_base`, so a test can send a spec the driver would refuse and
/// see the API refuse it too.
pub fn kb_registration(tenant: &str, name: &str, spec: Value) -> Value {
    use iafactory_crds::plan::KnowledgeBasePlan;
    use iafactory_crds::tenant_api::KnowledgeBaseRegistration;
    let mut spec = spec;
    let config_maps = spec
        .as_object_mut()
        .and_then(|s| s.remove("configMaps"))
        .map(|c| serde_json::from_value(c).expect("configMaps as the drivers send them"))
        .unwrap_or_default();
    let spec: iafactory_crds::KnowledgeBaseSpec =
        serde_json::from_value(spec).expect("a KnowledgeBase spec");
    let registration = KnowledgeBaseRegistration {
        plan: KnowledgeBasePlan {
            tenant: tenant.to_owned(),
            namespace: format!("iaf-{tenant}"),
            name: name.to_owned(),
            description: spec.description,
            languages: spec.languages,
            embedding: spec.embedding.unwrap_or_else(|| {
                iafactory_crds::PlatformConfig::default()
                    .api
                    .default_embedding
            }),
            chunking: spec.chunking,
            generation: spec.generation,
            vector_store: spec.vector_store,
            sources: spec.sources,
        },
        config_maps,
    };
    serde_json::to_value(registration).unwrap()
}

/// The body a driver sends to register a workflow: the plan of `spec` (the manifest's
/// spec as JSON). The waves are left empty: the API checks the graph itself.
pub fn workflow_registration(tenant: &str, name: &str, spec: Value) -> Value {
    let spec: iafactory_crds::WorkflowSpec = serde_json::from_value(spec).expect("a Workflow spec");
    let plan = iafactory_crds::plan::WorkflowPlan {
        tenant: tenant.to_owned(),
        namespace: format!("iaf-{tenant}"),
        name: name.to_owned(),
        description: spec.description,
        agents: spec.agents,
        waves: Vec::new(),
        schedule: spec.trigger.and_then(|t| t.schedule),
        timezone: "Africa/Algiers".to_owned(),
        timeout_seconds: spec.timeout_seconds,
    };
    serde_json::to_value(plan).unwrap()
}

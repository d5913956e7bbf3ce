//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use crate::auth::{JwtKeys, KeyCache, SessionCache};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::rag::qdrant::{QdrantSettings, QdrantStore};
use crate::rag::store::{PgVectorStore, StoreError, VectorStore};
use crate::rag::{Rag, RagError, RagMetrics};
use crate::ratelimit::{RateLimitError, RateLimiter};
use crate::usage::UsageRecorder;
use crate::workflows::{WorkflowError, WorkflowMetrics, Workflows};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub jwt: JwtKeys,
    pub key_cache: KeyCache,
    /// Users' token versions and status, for the bearer path (at most 5 s old).
    pub sessions: SessionCache,
    pub rate_limiter: RateLimiter,
    /// Failed operator-token attempts per client address (`/internal/*`).
    pub operator_guard: Arc<crate::operator_guard::OperatorGuard>,
    pub usage: UsageRecorder,
    pub metrics: Metrics,
    pub rag: Arc<Rag>,
    pub workflows: Arc<Workflows>,
    /// Set once the migrations are applied; `/readyz` reports it.
    pub migrated: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    Rag(#[from] RagError),
    #[error(transparent)]
    Workflows(#[from] WorkflowError),
    #[error(transparent)]
    VectorStore(#[from] StoreError),
}

impl AppState {
    /// Builds the state around an open pool. With `redis_url` configured, rate limits
    /// are shared through Redis; otherwise they are kept in this process.
    pub async fn new(config: Config, db: PgPool) -> Result<Self, StateError> {
        let mut rag_metrics = None;
        let mut workflow_metrics = None;
        let metrics = Metrics::new(|registry| {
            rag_metrics = Some(RagMetrics::register(registry));
            workflow_metrics = Some(WorkflowMetrics::register(registry));
        });
        let rag_metrics = rag_metrics.expect("Metrics::new calls its extension once");
        let workflow_metrics = workflow_metrics.expect("Metrics::new calls its extension once");
        let workflows = Arc::new(Workflows::new(&config, workflow_metrics)?);
        let store: Arc<dyn VectorStore> = match config.vector_store.as_str() {
            "qdrant" => Arc::new(QdrantStore::new(&QdrantSettings {
                url: config.qdrant_url.clone().unwrap_or_default(),
                api_key: Some(config.qdrant_api_key.expose().to_owned()),
                timeout: Duration::from_secs(config.qdrant_timeout_seconds),
            })?),
            _ => Arc::new(PgVectorStore::new(db.clone())),
        };
        let rag = Arc::new(Rag::new(&config, store, rag_metrics)?);
        let rate_limiter = match &config.redis_url {
            Some(url) if !url.is_empty() => {
                RateLimiter::redis(
                    url,
                    Duration::from_millis(config.redis_timeout_ms),
                    config.rate_limit.clone(),
                    metrics.clone(),
                )
                .await?
            }
            _ => RateLimiter::in_process(config.rate_limit.clone(), metrics.clone()),
        };
        Ok(Self {
            jwt: JwtKeys::new(
                config.jwt_secret.expose().as_bytes(),
                config.jwt_ttl_seconds,
            ),
            key_cache: KeyCache::new(Duration::from_secs(config.api_key_cache_seconds)),
            sessions: SessionCache::new(Duration::from_secs(config.api_key_cache_seconds)),
            usage: UsageRecorder::start(db.clone(), metrics.clone()),
            rate_limiter,
            operator_guard: Arc::new(crate::operator_guard::OperatorGuard::new(
                config.operator_token_failures_per_minute,
            )),
            metrics,
            rag,
            workflows,
            migrated: Arc::new(AtomicBool::new(false)),
            config: Arc::new(config),
            db,
        })
    }

    pub fn mark_migrated(&self) {
        self.migrated.store(true, Ordering::Release);
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// Refreshes the ingestion queue gauge.
    pub async fn observe_queue(&self) {
        if let Ok(depth) = sqlx::query_scalar::<_, i64>("SELECT ingestion_queue_depth()")
            .fetch_one(&self.db)
            .await
        {
            self.rag.metrics.queue_depth.set(depth);
        }
    }
}

//! What every handler shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;

use crate::auth::{JwtKeys, KeyCache};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ratelimit::{RateLimitError, RateLimiter};
use crate::usage::UsageRecorder;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: PgPool,
    pub jwt: JwtKeys,
    pub key_cache: KeyCache,
    pub rate_limiter: RateLimiter,
    pub usage: UsageRecorder,
    pub metrics: Metrics,
    /// Set once the migrations are applied; `/readyz` reports it.
    pub migrated: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
}

impl AppState {
    /// Builds the state around an open pool. With `redis_url` configured, rate limits
    /// are shared through Redis; otherwise they are kept in this process.
    pub async fn new(config: Config, db: PgPool) -> Result<Self, StateError> {
        let metrics = Metrics::new(|_| {});
        let rate_limiter = match &config.redis_url {
            Some(url) if !url.is_empty() => {
                RateLimiter::redis(url, config.rate_limit.clone(), metrics.clone()).await?
            }
            _ => RateLimiter::in_process(config.rate_limit.clone(), metrics.clone()),
        };
        Ok(Self {
            jwt: JwtKeys::new(
                config.jwt_secret.expose().as_bytes(),
                config.jwt_ttl_seconds,
            ),
            key_cache: KeyCache::new(Duration::from_secs(config.api_key_cache_seconds)),
            usage: UsageRecorder::start(db.clone(), metrics.clone()),
            rate_limiter,
            metrics,
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
}

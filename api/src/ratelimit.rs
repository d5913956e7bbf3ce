//! Rate limits per client address and per API key: in-process (governor's GCRA) for a
//! single replica, or in Redis (one atomic script per request) so that the limits hold
//! across replicas.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::config::RateLimitConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("IAF_REDIS_URL is not a valid Redis URL: {0}")]
    BadRedisUrl(#[source] redis::RedisError),
    #[error("cannot connect to Redis: {0}")]
    RedisConnect(#[source] redis::RedisError),
}

#[derive(Clone)]
pub struct RateLimiter {
    backend: Backend,
    config: RateLimitConfig,
    metrics: Metrics,
}

#[derive(Clone)]
enum Backend {
    InProcess(Arc<InProcess>),
    Redis(redis::aio::ConnectionManager),
}

struct InProcess {
    per_ip_minute: DefaultKeyedRateLimiter<IpAddr>,
    per_ip_hour: DefaultKeyedRateLimiter<IpAddr>,
    /// Keys differ in their limits, so each has its own limiter.
    per_key: Mutex<HashMap<Uuid, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

/// One window to count in: (redis key, window length, allowed hits).
type Window = (String, Duration, u32);

/// Counts a hit in every window at once; returns 0 when all allow it, otherwise the
/// milliseconds until the first exceeded window resets. Atomic, one round trip.
const REDIS_SCRIPT: &str = r"
local wait = 0
for i, key in ipairs(KEYS) do
    local window_ms = tonumber(ARGV[2 * i - 1])
    local limit = tonumber(ARGV[2 * i])
    local count = redis.call('INCR', key)
    if count == 1 then redis.call('PEXPIRE', key, window_ms) end
    if count > limit then
        local ttl = redis.call('PTTL', key)
        if ttl < 0 then ttl = window_ms end
        if ttl > wait then wait = ttl end
    end
end
return wait
";

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimiter {
    pub fn in_process(config: RateLimitConfig, metrics: Metrics) -> Self {
        let backend = Backend::InProcess(Arc::new(InProcess {
            per_ip_minute: DefaultKeyedRateLimiter::keyed(Quota::per_minute(nonzero(
                config.per_ip_per_minute,
            ))),
            per_ip_hour: DefaultKeyedRateLimiter::keyed(Quota::per_hour(nonzero(
                config.per_ip_per_hour,
            ))),
            per_key: Mutex::default(),
        }));
        Self {
            backend,
            config,
            metrics,
        }
    }

    pub async fn redis(
        url: &str,
        config: RateLimitConfig,
        metrics: Metrics,
    ) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url).map_err(RateLimitError::BadRedisUrl)?;
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(RateLimitError::RedisConnect)?;
        Ok(Self {
            backend: Backend::Redis(manager),
            config,
            metrics,
        })
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The client address's limits: per minute and per hour.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        let wait = match &self.backend {
            Backend::InProcess(limits) => {
                let now = DefaultClock::default().now();
                [&limits.per_ip_minute, &limits.per_ip_hour]
                    .iter()
                    .filter_map(|l| l.check_key(&ip).err().map(|n| n.wait_time_from(now)))
                    .max()
            }
            Backend::Redis(connection) => {
                self.redis_check(
                    connection.clone(),
                    &[
                        (
                            format!("iaf:rl:ip:m:{ip}"),
                            Duration::from_secs(60),
                            self.config.per_ip_per_minute,
                        ),
                        (
                            format!("iaf:rl:ip:h:{ip}"),
                            Duration::from_secs(3600),
                            self.config.per_ip_per_hour,
                        ),
                    ],
                )
                .await
            }
        };
        self.verdict("ip", wait)
    }

    /// An API key's own per-minute limit.
    pub async fn check_key(&self, key: Uuid, per_minute: u32) -> Result<(), ApiError> {
        let wait = match &self.backend {
            Backend::InProcess(limits) => {
                let limiter = {
                    let mut per_key = limits.per_key.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = per_key.entry(key).or_insert_with(|| {
                        (
                            per_minute,
                            Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(
                                nonzero(per_minute),
                            ))),
                        )
                    });
                    if entry.0 != per_minute {
                        *entry = (
                            per_minute,
                            Arc::new(DefaultDirectRateLimiter::direct(Quota::per_minute(
                                nonzero(per_minute),
                            ))),
                        );
                    }
                    entry.1.clone()
                };
                limiter
                    .check()
                    .err()
                    .map(|n| n.wait_time_from(DefaultClock::default().now()))
            }
            Backend::Redis(connection) => {
                self.redis_check(
                    connection.clone(),
                    &[(
                        format!("iaf:rl:key:{key}"),
                        Duration::from_secs(60),
                        per_minute,
                    )],
                )
                .await
            }
        };
        self.verdict("key", wait)
    }

    fn verdict(&self, scope: &'static str, wait: Option<Duration>) -> Result<(), ApiError> {
        match wait {
            None => Ok(()),
            Some(wait) => {
                self.metrics.rate_limited(scope);
                Err(ApiError::RateLimited {
                    retry_after_seconds: wait.as_secs_f64().ceil() as u64,
                })
            }
        }
    }

    async fn redis_check(
        &self,
        mut connection: redis::aio::ConnectionManager,
        windows: &[Window],
    ) -> Option<Duration> {
        let script = redis::Script::new(REDIS_SCRIPT);
        let mut invocation = script.prepare_invoke();
        for (key, window, limit) in windows {
            invocation
                .key(key)
                .arg(window.as_millis() as u64)
                .arg(*limit);
        }
        match invocation.invoke_async::<u64>(&mut connection).await {
            Ok(0) => None,
            Ok(wait_ms) => Some(Duration::from_millis(wait_ms)),
            Err(error) => {
                // Availability over strictness: a Redis outage must not take the API
                // down with it. It is logged and counted, and alerts fire on the metric.
                tracing::warn!(%error, "rate limiter: Redis unavailable, letting the request through");
                self.metrics.rate_limiter_errors.inc();
                None
            }
        }
    }
}

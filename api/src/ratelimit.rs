//! Rate limits, in three kinds of bucket (see [`RateLimitConfig`]): per client address
//! for requests without a valid credential, and per user or per key (under a per-address
//! ceiling) for authenticated ones. In-process (governor's GCRA) for a single replica, or
//! in Redis (one atomic script per request) so that the limits hold across replicas.

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
    #[error("cannot connect to Redis within {0:?}; is it running and reachable?")]
    RedisConnectTimeout(Duration),
}

/// Whom an authenticated request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    User(Uuid),
    Key { id: Uuid, per_minute: u32 },
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
    Redis {
        connection: redis::aio::ConnectionManager,
        /// The whole check, reconnection included: a paused or unreachable Redis
        /// must cost a request this much at most.
        timeout: Duration,
    },
}

struct InProcess {
    anonymous_minute: DefaultKeyedRateLimiter<IpAddr>,
    anonymous_hour: DefaultKeyedRateLimiter<IpAddr>,
    ceiling_minute: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<Uuid>,
    /// Keys differ in their limits, so each has its own limiter.
    per_key: Mutex<HashMap<Uuid, (u32, Arc<DefaultDirectRateLimiter>)>>,
}

/// One window to count in: which limit it is (the metric's scope), its Redis key, its
/// length and the hits it allows.
struct Window {
    scope: &'static str,
    key: String,
    length: Duration,
    limit: u32,
}

/// Counts a hit in every window at once. Returns `{0, 0}` when all allow it, otherwise
/// `{milliseconds until the longest-blocking window resets, its 1-based index}`.
/// Atomic, one round trip.
const REDIS_SCRIPT: &str = r"
local wait, which = 0, 0
for i, key in ipairs(KEYS) do
    local window_ms = tonumber(ARGV[2 * i - 1])
    local limit = tonumber(ARGV[2 * i])
    local count = redis.call('INCR', key)
    if count == 1 then redis.call('PEXPIRE', key, window_ms) end
    if count > limit then
        local ttl = redis.call('PTTL', key)
        if ttl < 0 then ttl = window_ms end
        if ttl > wait then wait, which = ttl, i end
    end
end
return {wait, which}
";

/// Hashed once: `Script::new` computes the SHA-1 that EVALSHA sends on every check.
static COUNTING_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REDIS_SCRIPT));

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn keyed<K: std::hash::Hash + Eq + Clone>(quota: Quota) -> DefaultKeyedRateLimiter<K> {
    DefaultKeyedRateLimiter::keyed(quota)
}

/// The refusal that makes the client wait longest, if any.
fn longest<'a>(
    refusals: impl IntoIterator<Item = (&'a str, Duration)>,
) -> Option<(&'a str, Duration)> {
    refusals.into_iter().max_by_key(|(_, wait)| *wait)
}

impl RateLimiter {
    pub fn in_process(config: RateLimitConfig, metrics: Metrics) -> Self {
        let backend = Backend::InProcess(Arc::new(InProcess {
            anonymous_minute: keyed(Quota::per_minute(nonzero(config.per_ip_per_minute))),
            anonymous_hour: keyed(Quota::per_hour(nonzero(config.per_ip_per_hour))),
            ceiling_minute: keyed(Quota::per_minute(nonzero(config.per_ip_ceiling_per_minute))),
            per_user: keyed(Quota::per_minute(nonzero(config.per_user_per_minute))),
            per_key: Mutex::default(),
        }));
        Self {
            backend,
            config,
            metrics,
        }
    }

    /// Limits shared through Redis. `timeout` bounds connecting now, and every check
    /// later; a check that runs past it lets the request through.
    pub async fn redis(
        url: &str,
        timeout: Duration,
        config: RateLimitConfig,
        metrics: Metrics,
    ) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url).map_err(RateLimitError::BadRedisUrl)?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            // Reconnection happens in the background of later checks, which the
            // outer timeout bounds anyway: a few quick attempts, then the next check
            // tries again.
            .set_number_of_retries(2)
            .set_max_delay(timeout.as_millis() as u64);
        let connection = tokio::time::timeout(
            timeout * 4,
            redis::aio::ConnectionManager::new_with_config(client, settings),
        )
        .await
        .map_err(|_| RateLimitError::RedisConnectTimeout(timeout * 4))?
        .map_err(RateLimitError::RedisConnect)?;
        Ok(Self {
            backend: Backend::Redis {
                connection,
                timeout,
            },
            config,
            metrics,
        })
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    /// A request with no valid credential (sign-in, sign-up, a wrong key): its client
    /// address's limits, per minute and per hour.
    pub async fn check_anonymous(&self, client: IpAddr) -> Result<(), ApiError> {
        let refused = match &self.backend {
            Backend::InProcess(limits) => {
                let now = DefaultClock::default().now();
                longest(
                    [
                        ("anonymous", &limits.anonymous_minute),
                        ("anonymous", &limits.anonymous_hour),
                    ]
                    .into_iter()
                    .filter_map(|(scope, limiter)| {
                        limiter
                            .check_key(&client)
                            .err()
                            .map(|n| (scope, n.wait_time_from(now)))
                    }),
                )
            }
            Backend::Redis { .. } => {
                self.redis_check(&[
                    Window {
                        scope: "anonymous",
                        key: format!("iaf:rl:anon:m:{client}"),
                        length: Duration::from_secs(60),
                        limit: self.config.per_ip_per_minute,
                    },
                    Window {
                        scope: "anonymous",
                        key: format!("iaf:rl:anon:h:{client}"),
                        length: Duration::from_secs(3600),
                        limit: self.config.per_ip_per_hour,
                    },
                ])
                .await
            }
        };
        self.verdict(refused)
    }

    /// An authenticated request: its user's or key's own limit, and its client
    /// address's ceiling.
    pub async fn check_authenticated(
        &self,
        client: IpAddr,
        principal: Principal,
    ) -> Result<(), ApiError> {
        let refused = match &self.backend {
            Backend::InProcess(limits) => {
                let now = DefaultClock::default().now();
                let ceiling = limits
                    .ceiling_minute
                    .check_key(&client)
                    .err()
                    .map(|n| ("ip_ceiling", n.wait_time_from(now)));
                let own = match principal {
                    Principal::User(user) => limits
                        .per_user
                        .check_key(&user)
                        .err()
                        .map(|n| ("user", n.wait_time_from(now))),
                    Principal::Key { id, per_minute } => limits
                        .key_limiter(id, per_minute)
                        .check()
                        .err()
                        .map(|n| ("key", n.wait_time_from(now))),
                };
                longest(ceiling.into_iter().chain(own))
            }
            Backend::Redis { .. } => {
                let own = match principal {
                    Principal::User(user) => Window {
                        scope: "user",
                        key: format!("iaf:rl:user:{user}"),
                        length: Duration::from_secs(60),
                        limit: self.config.per_user_per_minute,
                    },
                    Principal::Key { id, per_minute } => Window {
                        scope: "key",
                        key: format!("iaf:rl:key:{id}"),
                        length: Duration::from_secs(60),
                        limit: per_minute,
                    },
                };
                self.redis_check(&[
                    Window {
                        scope: "ip_ceiling",
                        key: format!("iaf:rl:ip:m:{client}"),
                        length: Duration::from_secs(60),
                        limit: self.config.per_ip_ceiling_per_minute,
                    },
                    own,
                ])
                .await
            }
        };
        self.verdict(refused)
    }

    fn verdict(&self, refused: Option<(&str, Duration)>) -> Result<(), ApiError> {
        match refused {
            None => Ok(()),
            Some((scope, wait)) => {
                self.metrics.rate_limited(scope);
                Err(ApiError::RateLimited {
                    retry_after_seconds: (wait.as_secs_f64().ceil() as u64).max(1),
                })
            }
        }
    }

    async fn redis_check(&self, windows: &[Window]) -> Option<(&'static str, Duration)> {
        let Backend::Redis {
            connection,
            timeout,
        } = &self.backend
        else {
            return None;
        };
        let mut connection = connection.clone();
        let mut invocation = COUNTING_SCRIPT.prepare_invoke();
        for window in windows {
            invocation
                .key(&window.key)
                .arg(window.length.as_millis() as u64)
                .arg(window.limit);
        }
        let outcome = tokio::time::timeout(
            *timeout,
            invocation.invoke_async::<(u64, usize)>(&mut connection),
        )
        .await;
        match outcome {
            Ok(Ok((0, _))) => None,
            Ok(Ok((wait_ms, which))) => Some((
                windows
                    .get(which.saturating_sub(1))
                    .map_or("unknown", |w| w.scope),
                Duration::from_millis(wait_ms),
            )),
            // Availability over strictness: a Redis outage, or a Redis too slow to
            // answer, must not take the API down with it. It is logged and counted, and
            // alerts fire on the metric.
            Ok(Err(error)) => {
                tracing::warn!(%error, "rate limiter: Redis failed, letting the request through");
                self.metrics.rate_limiter_errors.inc();
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "rate limiter: Redis did not answer in time, letting the request through"
                );
                self.metrics.rate_limiter_errors.inc();
                None
            }
        }
    }
}

impl InProcess {
    fn key_limiter(&self, key: Uuid, per_minute: u32) -> Arc<DefaultDirectRateLimiter> {
        let mut per_key = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
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
    }
}

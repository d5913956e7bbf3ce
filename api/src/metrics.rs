//! `/metrics`, with prometheus-client: requests, latency, rate limiting, the pool.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

/// Every metric of the API. Clones share the same series.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    /// Requests being served right now.
    pub requests_in_flight: Gauge,
    pub rate_limited: Family<ScopeLabels, Counter>,
    pub rate_limiter_errors: Counter,
    pub db_pool_connections: Family<PoolLabels, Gauge>,
    /// 1 while a dependency answers (postgres, vector_store, ollama), from a probe.
    pub dependency_up: Family<DependencyLabels, Gauge>,
    pub db_pool_max_connections: Gauge,
    pub usage_events_dropped: Counter,
}

impl Metrics {
    /// Registers the core metrics; `extend` adds other modules' metrics
    /// before the registry is shared.
    pub fn new(extend: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("iafactory_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 16 s.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route and method",
            request_duration.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served",
            requests_in_flight.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused by a rate limit (scope: anonymous, ip_ceiling, user or key)",
            rate_limited.clone(),
        );
        let rate_limiter_errors = Counter::default();
        registry.register(
            "rate_limiter_errors",
            "Rate-limit checks that failed open because Redis failed or did not answer in time",
            rate_limiter_errors.clone(),
        );
        let db_pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections by state (idle, in_use)",
            db_pool_connections.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 while a dependency answers its probe (postgres, vector_store, ollama)",
            dependency_up.clone(),
        );
        let db_pool_max_connections = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "The database pool's size limit",
            db_pool_max_connections.clone(),
        );
        let usage_events_dropped = Counter::default();
        registry.register(
            "usage_events_dropped",
            "API usage log events dropped because the writer fell behind",
            usage_events_dropped.clone(),
        );
        extend(&mut registry);
        Self {
            registry: Arc::new(registry),
            requests,
            request_duration,
            requests_in_flight,
            rate_limited,
            rate_limiter_errors,
            db_pool_connections,
            dependency_up,
            db_pool_max_connections,
            usage_events_dropped,
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn rate_limited(&self, scope: &str) {
        self.rate_limited
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .inc();
    }

    pub fn observe_pool(&self, pool: &sqlx::PgPool) {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.db_pool_connections
            .get_or_create(&PoolLabels {
                state: "idle".into(),
            })
            .set(idle);
        self.db_pool_connections
            .get_or_create(&PoolLabels {
                state: "in_use".into(),
            })
            .set(size - idle);
        self.db_pool_max_connections
            .set(i64::from(pool.options().get_max_connections()));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

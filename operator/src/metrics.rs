//! Prometheus metrics, per controller: runs, failures by error, and durations.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    /// Writes the operator made, by verb: a steady state makes none.
    pub writes: Family<WriteLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            writes: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("iafactory_operator");
        registry.register(
            "reconcile_runs",
            "Reconciles started",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by error",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            metrics.duration.clone(),
        );
        registry.register(
            "writes",
            "Writes to the API server, by verb",
            metrics.writes.clone(),
        );
        metrics
    }

    pub fn observe(
        &self,
        controller: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&FailureLabels { controller, error })
                .inc();
        }
    }

    pub fn wrote(&self, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { verb }).inc();
    }
}

//! Prometheus metrics, per controller: runs, failures by error, and durations.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub tenant: String,
    pub condition: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    /// Writes the operator made, by verb: a steady state makes none.
    pub writes: Family<WriteLabels, Counter>,
    /// kube-state-metrics style: one series per status, 1 on the current one.
    pub tenant_condition: Family<ConditionLabels, Gauge>,
    pub tenant_suspended: Family<TenantLabel, Gauge>,
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
            tenant_condition: Family::default(),
            tenant_suspended: Family::default(),
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
        registry.register(
            "tenant_condition",
            "Each Tenant condition: 1 on its current status (True, False or Unknown)",
            metrics.tenant_condition.clone(),
        );
        registry.register(
            "tenant_suspended",
            "1 for a suspended Tenant",
            metrics.tenant_suspended.clone(),
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

    /// Records a Tenant's conditions as they were just computed.
    pub fn tenant_status(&self, tenant: &str, conditions: &[(String, String)], suspended: bool) {
        for (condition, current) in conditions {
            for status in CONDITION_STATUSES {
                self.tenant_condition
                    .get_or_create(&ConditionLabels {
                        tenant: tenant.to_owned(),
                        condition: condition.clone(),
                        status,
                    })
                    .set(i64::from(current == status));
            }
        }
        self.tenant_suspended
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .set(i64::from(suspended));
    }

    /// Forgets a deleted Tenant's series.
    pub fn forget_tenant(&self, tenant: &str, conditions: &[String]) {
        for condition in conditions {
            for status in CONDITION_STATUSES {
                self.tenant_condition.remove(&ConditionLabels {
                    tenant: tenant.to_owned(),
                    condition: condition.clone(),
                    status,
                });
            }
        }
        self.tenant_suspended.remove(&TenantLabel {
            tenant: tenant.to_owned(),
        });
    }

    pub fn wrote(&self, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { verb }).inc();
    }
}

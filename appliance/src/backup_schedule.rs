//! Scheduled backups in `iafactory serve`: each stored Tenant with `backup: {schedule,
//! retention}` is backed up on its schedule, in the platform's timezone, into
//! `<data_dir>/backups/<tenant>/<timestamp>` ([`crate::backup::scheduled_backup`]), and
//! the `retention` newest are kept.
//!
//! The decision is [`iafactory_crds::schedule::Schedule::decide`], a pure function of
//! the clock; [`BackupScheduler::tick`] takes `now` as a parameter, so that tests drive
//! it with an injected clock while the backups themselves are real. A failed backup is
//! logged, counted (`iafactory_appliance_backup_failures_total`) and retried at the
//! next tick of the schedule, not at every tick of the daemon.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use iafactory_crds::plan::plan;
use iafactory_crds::schedule::{Decision, Schedule};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::backup::{last_scheduled_backup, scheduled_backup};

/// How often `serve` asks whether a backup is due.
pub const TICK: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// `iafactory_appliance_backup_failures_total{tenant}` and
/// `iafactory_appliance_backup_last_success_timestamp_seconds{tenant}`.
#[derive(Debug, Clone, Default)]
pub struct BackupMetrics {
    failures: Family<TenantLabel, Counter>,
    last_success: Family<TenantLabel, Gauge>,
}

impl BackupMetrics {
    pub const FAILURES_METRIC: &'static str = "iafactory_appliance_backup_failures";
    pub const LAST_SUCCESS_METRIC: &'static str =
        "iafactory_appliance_backup_last_success_timestamp_seconds";

    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            Self::FAILURES_METRIC,
            "Scheduled backups that failed, by tenant",
            metrics.failures.clone(),
        );
        registry.register(
            Self::LAST_SUCCESS_METRIC,
            "When the newest complete scheduled backup of the tenant was taken, in seconds since the epoch",
            metrics.last_success.clone(),
        );
        metrics
    }

    fn label(tenant: &str) -> TenantLabel {
        TenantLabel {
            tenant: tenant.to_owned(),
        }
    }
}

/// What one tick did for one tenant.
#[derive(Debug)]
pub enum Outcome {
    Backed {
        tenant: String,
        dir: PathBuf,
        pruned: Vec<PathBuf>,
    },
    Failed {
        tenant: String,
        error: String,
    },
}

/// The scheduler's memory between ticks: when it first saw each tenant (a new tenant
/// waits for its first tick) and its last attempt (a failure waits for the next tick).
#[derive(Debug)]
pub struct BackupScheduler {
    metrics: BackupMetrics,
    since: BTreeMap<String, DateTime<Utc>>,
    attempted: BTreeMap<String, DateTime<Utc>>,
}

impl BackupScheduler {
    pub fn new(metrics: BackupMetrics) -> Self {
        Self {
            metrics,
            since: BTreeMap::new(),
            attempted: BTreeMap::new(),
        }
    }

    /// Backs up every tenant whose backup is due at `now`.
    pub async fn tick(&mut self, app: &App, now: DateTime<Utc>) -> Vec<Outcome> {
        let tenants = match app.store.tenants() {
            Ok(tenants) => tenants,
            Err(error) => {
                tracing::error!("cannot read the stored tenants for their backups: {error}");
                return Vec::new();
            }
        };
        let mut outcomes = Vec::new();
        for tenant in tenants {
            let name = tenant.metadata.name.clone().unwrap_or_default();
            // A tenant that cannot be planned is reported by the reconcile loop.
            let Ok(planned) = plan(&tenant, &app.config.platform) else {
                continue;
            };
            let Some(backup) = planned.backup else {
                continue;
            };
            // At 0 from the start, so that the first failure is an increase.
            drop(
                self.metrics
                    .failures
                    .get_or_create(&BackupMetrics::label(&name)),
            );
            let last = last_scheduled_backup(app, &name);
            if let Some(last) = last {
                self.metrics
                    .last_success
                    .get_or_create(&BackupMetrics::label(&name))
                    .set(last.timestamp());
            }
            // A suspended tenant's database is stopped: nothing to dump.
            if planned.suspended {
                continue;
            }
            let schedule = match Schedule::new(&backup.schedule, &backup.timezone) {
                Ok(schedule) => schedule,
                Err(error) => {
                    tracing::error!(tenant = name, "{error}");
                    continue;
                }
            };
            let since = *self.since.entry(name.clone()).or_insert(now);
            let reference = match (last, self.attempted.get(&name).copied()) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            match schedule.decide(now, reference, since) {
                Ok(Decision::Wait(_)) => continue,
                Ok(Decision::Run(_)) => {}
                Err(error) => {
                    tracing::error!(tenant = name, "{error}");
                    continue;
                }
            }
            self.attempted.insert(name.clone(), now);
            let retention = usize::try_from(backup.retention).unwrap_or(1);
            let log = |line: &str| tracing::info!(tenant = name, "{line}");
            match scheduled_backup(app, &name, now, retention, &log).await {
                Ok(done) => {
                    tracing::info!(tenant = name, dir = %done.dir.display(), pruned = done.pruned.len(), "scheduled backup written");
                    self.metrics
                        .last_success
                        .get_or_create(&BackupMetrics::label(&name))
                        .set(now.timestamp());
                    outcomes.push(Outcome::Backed {
                        tenant: name,
                        dir: done.dir,
                        pruned: done.pruned,
                    });
                }
                Err(error) => {
                    tracing::error!(
                        tenant = name,
                        "the scheduled backup failed: {error}; retrying at the next tick of its schedule"
                    );
                    self.metrics
                        .failures
                        .get_or_create(&BackupMetrics::label(&name))
                        .inc();
                    outcomes.push(Outcome::Failed {
                        tenant: name,
                        error: error.to_string(),
                    });
                }
            }
        }
        outcomes
    }
}

/// `serve`'s backup task: a tick every [`TICK`] on the wall clock, until `cancel`.
pub async fn run_forever(app: &App, mut scheduler: BackupScheduler, cancel: CancellationToken) {
    loop {
        scheduler.tick(app, Utc::now()).await;
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = cancel.cancelled() => return,
        }
    }
}

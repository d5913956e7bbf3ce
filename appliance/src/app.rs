//! What the commands do, over the data directory and the Docker Engine: the CLI,
//! `serve` and the tests call these.

use std::path::PathBuf;

use iafactory_crds::Tenant;
use iafactory_crds::manifest::{self, Manifest, ManifestError};
use iafactory_crds::plan::{PlanError, TenantPlan, plan};
use iafactory_crds::tenant::Retention;
use serde::Serialize;

use crate::engine::converge::{ConvergeError, Converger, Report, health_word};
use crate::engine::desired::{DesiredError, RenderSettings, TenantState, tenant_state};
use crate::engine::docker::{DockerError, Engine};
use crate::monitoring::{self, MonitoringError};
use crate::settings::Config;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Monitoring(#[from] MonitoringError),
    #[error("{}\nnothing was applied; fix the manifests and run `iafactory apply` again", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Manifests(Vec<ManifestError>),
    #[error(
        "{at}: {kind} {name:?}: the appliance stores only Tenants for now (knowledge bases and workflows go to the tenant's API); nothing was applied"
    )]
    Unsupported {
        at: String,
        kind: &'static str,
        name: String,
    },
    #[error("{at}: cannot plan tenant {tenant:?}: {error}; nothing was applied")]
    Plan {
        at: String,
        tenant: String,
        error: Box<PlanError>,
    },
    #[error(
        "the stored tenant {tenant:?} cannot be planned with this configuration: {error}; fix the configuration or re-apply the tenant"
    )]
    StoredPlan {
        tenant: String,
        error: Box<PlanError>,
    },
    #[error("no tenant {tenant:?} on this appliance (known: {}); `iafactory status` lists them, `iafactory apply -f` adds one", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownTenant { tenant: String, known: Vec<String> },
    #[error("no manifest given: use -f FILE (a file, a directory, or - for stdin)")]
    NothingToApply,
}

pub struct App {
    pub config: Config,
    pub store: Store,
    pub engine: Engine,
}

/// One component of one tenant, as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ComponentStatus {
    pub component: String,
    pub image: String,
    pub containers: Vec<String>,
    pub health: &'static str,
    pub up_to_date: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    pub tenant: String,
    pub healthy: bool,
    pub components: Vec<ComponentStatus>,
}

impl App {
    pub async fn open(config: Config) -> Result<Self, AppError> {
        let store = Store::open(&config.appliance.data_dir)?;
        let engine = Engine::connect().await?;
        Ok(Self {
            config,
            store,
            engine,
        })
    }

    pub fn render_settings(&self) -> RenderSettings {
        RenderSettings {
            instance: self.config.appliance.instance.clone(),
            healthcheck_interval_ms: self.config.appliance.healthcheck_interval_ms,
        }
    }

    pub fn converger<'a>(&'a self, progress: &'a (dyn Fn(&str) + Sync)) -> Converger<'a> {
        Converger {
            engine: &self.engine,
            settings: self.render_settings(),
            health_timeout: self.config.appliance.health_timeout(),
            progress,
        }
    }

    fn plan_stored(&self, tenant: &Tenant) -> Result<TenantPlan, AppError> {
        plan(tenant, &self.config.platform).map_err(|error| AppError::StoredPlan {
            tenant: tenant.metadata.name.clone().unwrap_or_default(),
            error: Box::new(error),
        })
    }

    /// The desired state of every stored tenant (secrets generated on first use).
    pub fn desired(&self) -> Result<Vec<TenantState>, AppError> {
        let settings = self.render_settings();
        self.store
            .tenants()?
            .iter()
            .map(|tenant| {
                let plan = self.plan_stored(tenant)?;
                let secrets = self.store.secrets(&plan)?;
                Ok(tenant_state(&plan, &secrets, &settings)?)
            })
            .collect()
    }

    /// Validates and plans every manifest in `files`, then stores the Tenants:
    /// all or nothing. Returns the names stored and whether each changed.
    pub fn apply(&self, files: &[PathBuf]) -> Result<Vec<(String, bool)>, AppError> {
        if files.is_empty() {
            return Err(AppError::NothingToApply);
        }
        let loaded = manifest::load_paths(files).map_err(AppError::Manifests)?;
        if loaded.is_empty() {
            return Err(AppError::NothingToApply);
        }
        let mut tenants = Vec::new();
        for l in loaded {
            match l.manifest {
                Manifest::Tenant(tenant) => {
                    let name = tenant.metadata.name.clone().unwrap_or_default();
                    plan(&tenant, &self.config.platform).map_err(|error| AppError::Plan {
                        at: l.at.to_string(),
                        tenant: name,
                        error: Box::new(error),
                    })?;
                    tenants.push(*tenant);
                }
                other => {
                    return Err(AppError::Unsupported {
                        at: l.at.to_string(),
                        kind: other.kind(),
                        name: other.name().to_owned(),
                    });
                }
            }
        }
        tenants
            .iter()
            .map(|t| {
                let changed = self.store.put_tenant(t)?;
                Ok((t.metadata.name.clone().unwrap_or_default(), changed))
            })
            .collect()
    }

    /// Converges the engine to every stored tenant.
    pub async fn up(&self, progress: &(dyn Fn(&str) + Sync)) -> (Report, Result<(), AppError>) {
        let mut report = Report::default();
        let _lock = match self.store.lock() {
            Ok(lock) => lock,
            Err(e) => return (report, Err(e.into())),
        };
        let result = match self.desired() {
            Ok(desired) => self
                .converger(progress)
                .converge_all(&desired, &mut report)
                .await
                .map_err(AppError::from),
            Err(e) => Err(e),
        };
        // The shared monitoring stack, whatever became of the tenants.
        let stack = match self.monitoring_to_converge(progress).await {
            Ok(stack) => self
                .converger(progress)
                .converge_stack(monitoring::STACK, stack.as_ref(), &mut report)
                .await
                .map_err(AppError::from),
            Err(e) => Err(e.into()),
        };
        (report, result.and(stack))
    }

    pub async fn down(&self, progress: &(dyn Fn(&str) + Sync)) -> (Report, Result<(), AppError>) {
        let mut report = Report::default();
        let _lock = match self.store.lock() {
            Ok(lock) => lock,
            Err(e) => return (report, Err(e.into())),
        };
        let result = self
            .converger(progress)
            .down(&mut report)
            .await
            .map_err(AppError::from);
        (report, result)
    }

    fn known_tenants(&self) -> Vec<String> {
        self.store
            .tenants()
            .map(|ts| ts.iter().filter_map(|t| t.metadata.name.clone()).collect())
            .unwrap_or_default()
    }

    pub fn require_tenant(&self, name: &str) -> Result<Tenant, AppError> {
        self.store
            .tenant(name)?
            .ok_or_else(|| AppError::UnknownTenant {
                tenant: name.to_owned(),
                known: self.known_tenants(),
            })
    }

    /// Removes the tenant: its data goes too only under `retention: Delete`.
    pub async fn delete(
        &self,
        name: &str,
        progress: &(dyn Fn(&str) + Sync),
    ) -> (Report, Result<Retention, AppError>) {
        let mut report = Report::default();
        let tenant = match self.require_tenant(name) {
            Ok(t) => t,
            Err(e) => return (report, Err(e)),
        };
        let retention = tenant.spec.retention;
        let delete_data = retention == Retention::Delete;
        let result = async {
            let _lock = self.store.lock()?;
            self.store.remove_tenant(name)?;
            self.converger(progress)
                .remove_tenant(name, delete_data, &mut report)
                .await?;
            if delete_data {
                self.store.remove_secrets(name)?;
            }
            Ok(retention)
        }
        .await;
        (report, result)
    }

    /// The images the stored tenants run, and those the configuration names that are
    /// on this box: what an offline bundle carries.
    pub async fn wanted_images(&self) -> Result<Vec<String>, AppError> {
        let mut images: Vec<String> = self
            .desired()?
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.image.clone()))
            .collect();
        let configured = &self.config.platform.images;
        let monitoring = self.monitoring_images();
        for image in [
            &configured.api.image,
            &configured.postgres.image,
            &configured.qdrant.image,
            &configured.ollama.image,
        ]
        .into_iter()
        .chain(&monitoring)
        {
            let image = self.config.platform.resolve_image(image);
            if self.engine.docker().inspect_image(&image).await.is_ok() {
                images.push(image);
            }
        }
        images.sort();
        images.dedup();
        Ok(images)
    }

    /// Every stored tenant, component by component, as the engine runs it now.
    pub async fn status(&self) -> Result<Vec<TenantStatus>, AppError> {
        let observed = self
            .engine
            .containers(&crate::engine::desired::instance_labels(
                &self.render_settings(),
            ))
            .await?;
        let mut statuses = Vec::new();
        for state in self.desired()? {
            let mut components: Vec<ComponentStatus> = Vec::new();
            for spec in &state.containers {
                let current = observed.iter().find(|o| o.name == spec.name);
                let up_to_date = current.is_some_and(|o| o.spec_hash == spec.spec_hash);
                let health = health_word(current.map(|o| o.health));
                match components
                    .iter_mut()
                    .find(|c| c.component == spec.component)
                {
                    Some(c) => {
                        c.containers.push(spec.name.clone());
                        if c.health != health {
                            c.health = "degraded";
                        }
                        c.up_to_date &= up_to_date;
                    }
                    None => components.push(ComponentStatus {
                        component: spec.component.clone(),
                        image: spec.image.clone(),
                        containers: vec![spec.name.clone()],
                        health,
                        up_to_date,
                    }),
                }
            }
            statuses.push(TenantStatus {
                healthy: components
                    .iter()
                    .all(|c| matches!(c.health, "healthy" | "running") && c.up_to_date),
                tenant: state.tenant,
                components,
            });
        }
        Ok(statuses)
    }
}

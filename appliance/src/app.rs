//! What the commands do, over the data directory and the Docker Engine: the CLI,
//! `serve` and the tests call these.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use iafactory_crds::manifest::{self, Manifest, ManifestError};
use iafactory_crds::plan::{
    ComponentKind, LABEL_COMPONENT, PlanError, TenantPlan, plan, plan_knowledge_base, plan_workflow,
};
use iafactory_crds::support::{FieldWarning, appliance_warnings};
use iafactory_crds::tenant::Retention;
use iafactory_crds::{KnowledgeBase, Tenant, Workflow, admission};
use serde::Serialize;

use crate::engine::converge::{
    ConvergeError, Converger, Report, health_word, is_current, is_draining,
};
use crate::engine::desired::{
    DesiredError, NeededSecret, RenderSettings, TenantState, instance_labels, missing_user_secrets,
    tenant_state,
};
use crate::engine::docker::{DockerError, Engine, Target};
use crate::monitoring::{self, MonitoringError};
use crate::registrations::RegistrationStatus;
use crate::settings::Config;
use crate::store::{RegisteredKind, Store, StoreError};

/// The stored tenants' desired states ([`App::desired_each`]).
#[derive(Debug, Default)]
pub struct DesiredTenants {
    pub states: Vec<TenantState>,
    /// The tenants whose state cannot be worked out, with why; left as they are.
    pub held: Vec<(String, AppError)>,
}

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
    #[error("{}\nnothing was applied", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    IngressHosts(Vec<crate::gateway::HostConflict>),
    #[error("{}\nthe other tenants were converged", .0.iter().map(|(tenant, error)| format!("tenant {tenant} was left as it is: {error}")).collect::<Vec<_>>().join("\n"))]
    TenantsHeld(Vec<(String, AppError)>),
    #[error(
        "{at}: {kind} {name:?} is in namespace {namespace:?}, which is no tenant's: use iafactory-style namespaces, iaf-<tenant>; nothing was applied"
    )]
    NotATenantNamespace {
        at: String,
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error("{at}: {kind} {name:?} belongs to tenant {tenant:?} (namespace iaf-{tenant}), which is not on this appliance (known: {}); apply the Tenant first, or in the same files; nothing was applied", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    NoSuchTenant {
        at: String,
        kind: &'static str,
        name: String,
        tenant: String,
        known: Vec<String>,
    },
    #[error("{at}: {kind} {name:?} of tenant {tenant:?} is invalid: {reason}; nothing was applied")]
    InvalidRegistration {
        at: String,
        kind: &'static str,
        name: String,
        tenant: String,
        reason: String,
    },
    #[error("tenant {tenant:?} has no {} {name:?} (it has: {}); `iafactory status` lists them", .kind.word(), if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownRegistration {
        tenant: String,
        kind: RegisteredKind,
        name: String,
        known: Vec<String>,
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
    #[error("tenant {tenant:?}: {reason}; run `iafactory up`, then try again")]
    TenantApiUnreachable { tenant: String, reason: String },
    #[error("tenant {tenant:?}: the administrator {email:?} was not set: {error}")]
    Administrator {
        tenant: String,
        email: String,
        error: iafactory_crds::tenant_api::TenantApiError,
    },
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
    /// Its KnowledgeBases and Workflows, with the tenant API's record of each.
    pub registrations: Vec<RegistrationStatus>,
    /// When its newest complete scheduled backup (`iafactory serve`) was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<chrono::DateTime<chrono::Utc>>,
}

/// One running API container of a tenant, as [`App::api_replicas`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiReplica {
    /// `ip:port` on the tenant's network: the public listener, what the gateway routes to.
    pub address: String,
    /// `ip:internal_port`: the internal listener, where Prometheus scrapes `/metrics`.
    pub metrics_address: String,
    /// Docker's healthcheck passes (or the container has none).
    pub healthy: bool,
    /// On its way out: the gateway sends it no new request.
    pub draining: bool,
}

/// One object `apply` stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// `tenant`, `knowledgebase` or `workflow`.
    pub kind: &'static str,
    pub tenant: String,
    pub name: String,
    /// False when the same manifest was stored already.
    pub changed: bool,
    /// The fields of a Tenant the appliance accepts but does not act on
    /// (`iafactory_crds::support`); empty for the other kinds.
    pub warnings: Vec<FieldWarning>,
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
            image_ids: Default::default(),
        }
    }

    pub(crate) fn plan_stored(&self, tenant: &Tenant) -> Result<TenantPlan, AppError> {
        plan(tenant, &self.config.platform).map_err(|error| AppError::StoredPlan {
            tenant: tenant.metadata.name.clone().unwrap_or_default(),
            error: Box::new(error),
        })
    }

    /// The desired state of every stored tenant (secrets generated on first use).
    pub fn desired(&self) -> Result<Vec<TenantState>, AppError> {
        let DesiredTenants { states, mut held } = self.desired_each()?;
        match held.pop() {
            None => Ok(states),
            Some((_, error)) => Err(error),
        }
    }

    /// The desired state of each stored tenant that has one, and, apart, each tenant
    /// whose state cannot be worked out (a secret not set, a plan the platform
    /// configuration now refuses) with why: one such tenant must not stop the others.
    pub fn desired_each(&self) -> Result<DesiredTenants, AppError> {
        let settings = self.render_settings();
        let mut states = Vec::new();
        let mut held = Vec::new();
        for tenant in self.store.tenants()? {
            let state = self.plan_stored(&tenant).and_then(|plan| {
                let secrets = self.store.secrets(&plan)?;
                Ok(tenant_state(&plan, &secrets, &settings)?)
            });
            match state {
                Ok(state) => states.push(state),
                Err(error) => held.push((tenant.metadata.name.clone().unwrap_or_default(), error)),
            }
        }
        Ok(DesiredTenants { states, held })
    }

    /// The secrets stored tenants refer to (providers' API keys) that nobody set yet
    /// with `iafactory secret set`: `up` cannot start those tenants, so `apply` says
    /// which to set instead of failing later.
    pub fn missing_secrets(&self) -> Result<Vec<NeededSecret>, AppError> {
        let mut missing = Vec::new();
        for tenant in self.store.tenants()? {
            let plan = self.plan_stored(&tenant)?;
            let secrets = self.store.secrets(&plan)?;
            missing.extend(missing_user_secrets(&plan, &secrets));
        }
        Ok(missing)
    }

    /// Each tenant's own host (`spec.ingress.host`), which the gateway serves beside
    /// `<tenant>.<domain>`, must be outside the domain and no other tenant's: checked
    /// over the stored tenants with `applied` in place of their stored versions.
    fn check_ingress_hosts(&self, applied: &BTreeMap<String, Tenant>) -> Result<(), AppError> {
        let stored = self.store.tenants()?;
        let tenants = stored
            .iter()
            .filter(|t| !applied.contains_key(t.metadata.name.as_deref().unwrap_or_default()))
            .chain(applied.values());
        let (_, conflicts) = crate::gateway::ingress_aliases(
            &self.config.platform.domain,
            tenants.filter_map(|t| {
                Some((
                    t.metadata.name.as_deref()?,
                    t.spec.ingress.as_ref()?.host.as_str(),
                ))
            }),
        );
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(AppError::IngressHosts(conflicts))
        }
    }

    /// Validates and plans every manifest in `files`, then stores them: all or
    /// nothing. KnowledgeBases and Workflows belong to the tenant of their namespace
    /// (`iaf-<tenant>`, as under the operator), stored already or applied with them,
    /// and must agree with it (providers, vector store, knowledge base references).
    pub fn apply(&self, files: &[PathBuf]) -> Result<Vec<Applied>, AppError> {
        if files.is_empty() {
            return Err(AppError::NothingToApply);
        }
        let loaded = manifest::load_paths(files).map_err(AppError::Manifests)?;
        if loaded.is_empty() {
            return Err(AppError::NothingToApply);
        }
        let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
        let mut knowledge_bases = Vec::new();
        let mut workflows = Vec::new();
        for l in loaded {
            let at = l.at.to_string();
            match l.manifest {
                Manifest::Tenant(tenant) => {
                    let name = tenant.metadata.name.clone().unwrap_or_default();
                    plan(&tenant, &self.config.platform).map_err(|error| AppError::Plan {
                        at,
                        tenant: name.clone(),
                        error: Box::new(error),
                    })?;
                    tenants.insert(name, *tenant);
                }
                Manifest::KnowledgeBase(kb) => knowledge_bases.push((at, *kb)),
                Manifest::Workflow(workflow) => workflows.push((at, *workflow)),
            }
        }
        self.check_ingress_hosts(&tenants)?;
        // The tenant a KnowledgeBase or Workflow names: applied now, or stored.
        let tenant_of = |at: &str, kind, name: &str, namespace: Option<&str>| {
            let namespace = namespace.unwrap_or_default();
            let tenant = namespace
                .strip_prefix(iafactory_crds::plan::NAMESPACE_PREFIX)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| AppError::NotATenantNamespace {
                    at: at.to_owned(),
                    kind,
                    name: name.to_owned(),
                    namespace: namespace.to_owned(),
                })?;
            match tenants.get(tenant) {
                Some(tenant) => Ok(tenant.clone()),
                None => self
                    .store
                    .tenant(tenant)?
                    .ok_or_else(|| AppError::NoSuchTenant {
                        at: at.to_owned(),
                        kind,
                        name: name.to_owned(),
                        tenant: tenant.to_owned(),
                        known: self.known_tenants(),
                    }),
            }
        };
        let invalid = |at: &str, kind, name: &str, tenant: &Tenant, reason: String| {
            AppError::InvalidRegistration {
                at: at.to_owned(),
                kind,
                name: name.to_owned(),
                tenant: tenant.metadata.name.clone().unwrap_or_default(),
                reason,
            }
        };
        let mut checked_kbs: Vec<(String, &KnowledgeBase)> = Vec::new();
        // Per tenant: the knowledge bases its workflows may name.
        let mut kb_names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (at, kb) in &knowledge_bases {
            let (kind, name) = (
                "KnowledgeBase",
                kb.metadata.name.as_deref().unwrap_or_default(),
            );
            let tenant = tenant_of(at, kind, name, kb.metadata.namespace.as_deref())?;
            plan_knowledge_base(kb, &self.config.platform)
                .map_err(|e| invalid(at, kind, name, &tenant, e.to_string()))?;
            admission::check_knowledge_base(kb, &tenant)
                .map_err(|reason| invalid(at, kind, name, &tenant, reason))?;
            let tenant_name = tenant.metadata.name.clone().unwrap_or_default();
            kb_names
                .entry(tenant_name.clone())
                .or_default()
                .insert(name.to_owned());
            checked_kbs.push((tenant_name, kb));
        }
        let mut checked_workflows: Vec<(String, &Workflow)> = Vec::new();
        for (at, workflow) in &workflows {
            let (kind, name) = (
                "Workflow",
                workflow.metadata.name.as_deref().unwrap_or_default(),
            );
            let tenant = tenant_of(at, kind, name, workflow.metadata.namespace.as_deref())?;
            let tenant_name = tenant.metadata.name.clone().unwrap_or_default();
            plan_workflow(workflow, &self.config.platform)
                .map_err(|e| invalid(at, kind, name, &tenant, e.to_string()))?;
            let mut known = kb_names.get(&tenant_name).cloned().unwrap_or_default();
            known.extend(
                self.store
                    .registrations(&tenant_name)?
                    .knowledge_bases
                    .iter()
                    .filter_map(|kb| kb.metadata.name.clone()),
            );
            admission::check_workflow(workflow, &tenant, &known)
                .map_err(|reason| invalid(at, kind, name, &tenant, reason))?;
            checked_workflows.push((tenant_name, workflow));
        }
        let mut applied = Vec::new();
        for (name, tenant) in &tenants {
            let changed = self.store.put_tenant(tenant)?;
            applied.push(Applied {
                kind: "tenant",
                tenant: name.clone(),
                name: name.clone(),
                changed,
                warnings: appliance_warnings(&tenant.spec),
            });
        }
        for (tenant, kb) in checked_kbs {
            let changed = self.store.put_knowledge_base(&tenant, kb)?;
            applied.push(Applied {
                kind: RegisteredKind::KnowledgeBase.word(),
                name: kb.metadata.name.clone().unwrap_or_default(),
                tenant,
                changed,
                warnings: Vec::new(),
            });
        }
        for (tenant, workflow) in checked_workflows {
            let changed = self.store.put_workflow(&tenant, workflow)?;
            applied.push(Applied {
                kind: RegisteredKind::Workflow.word(),
                name: workflow.metadata.name.clone().unwrap_or_default(),
                tenant,
                changed,
                warnings: Vec::new(),
            });
        }
        Ok(applied)
    }

    /// Deletes a stored KnowledgeBase or Workflow; the tenant's API forgets it at the
    /// next registration (at once when it is healthy: see [`App::register_tenant`]).
    pub fn delete_registration(
        &self,
        tenant: &str,
        kind: RegisteredKind,
        name: &str,
    ) -> Result<Tenant, AppError> {
        let stored = self.require_tenant(tenant)?;
        if !self.store.remove_registration(tenant, kind, name)? {
            let registrations = self.store.registrations(tenant)?;
            let known = match kind {
                RegisteredKind::KnowledgeBase => registrations
                    .knowledge_bases
                    .iter()
                    .filter_map(|kb| kb.metadata.name.clone())
                    .collect(),
                RegisteredKind::Workflow => registrations
                    .workflows
                    .iter()
                    .filter_map(|wf| wf.metadata.name.clone())
                    .collect(),
            };
            return Err(AppError::UnknownRegistration {
                tenant: tenant.to_owned(),
                kind,
                name: name.to_owned(),
                known,
            });
        }
        Ok(stored)
    }

    /// Converges the engine to every stored tenant.
    pub async fn up(&self, progress: &(dyn Fn(&str) + Sync)) -> (Report, Result<(), AppError>) {
        let mut report = Report::default();
        let _lock = match self.store.lock() {
            Ok(lock) => lock,
            Err(e) => return (report, Err(e.into())),
        };
        let result = match self.desired_each() {
            Ok(DesiredTenants {
                states: desired,
                held,
            }) => {
                let held_names = held.iter().map(|(name, _)| name.clone()).collect();
                let converged = self
                    .converger(progress)
                    .converge_all(&desired, &held_names, &mut report)
                    .await
                    .map_err(AppError::from);
                if held.is_empty() {
                    converged
                } else {
                    for (tenant, error) in &held {
                        progress(&format!("tenant {tenant}: left as it is: {error}"));
                    }
                    converged.and(Err(AppError::TenantsHeld(held)))
                }
            }
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

    /// The stored tenant's desired Docker objects (its secrets generated if new).
    pub fn desired_state_of(&self, tenant: &str) -> Result<TenantState, AppError> {
        let planned = self.plan_stored(&self.require_tenant(tenant)?)?;
        let secrets = self.store.secrets(&planned)?;
        Ok(tenant_state(&planned, &secrets, &self.render_settings())?)
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
                // The tenant's database, where they were registered, is gone too.
                self.store.remove_registrations(name)?;
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
            &configured.redis.image,
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

    /// Each desired tenant's network, where its API replicas are reached.
    pub(crate) fn api_networks(desired: &[TenantState]) -> BTreeMap<String, String> {
        desired
            .iter()
            .map(|state| (state.tenant.clone(), state.network.name.clone()))
            .collect()
    }

    /// Each tenant's running API replicas, `ip:port` on the tenant's network (the host
    /// reaches bridge networks directly, internal or not), each with whether Docker's
    /// healthcheck passes: Prometheus scrapes them all, the gateway routes to the healthy
    /// ones that are not draining. One listing of the engine, whatever the number of
    /// tenants, because `serve` asks every [`crate::gateway::ROUTE_REFRESH`]. A replica
    /// superseded by a new one (same name, new image content) is still listed until it
    /// drains. A tenant with none has an empty list; a failed listing is logged and gives
    /// no replica at all, and the next look asks again.
    pub(crate) async fn api_replicas(
        &self,
        networks: &BTreeMap<String, String>,
    ) -> BTreeMap<String, Vec<ApiReplica>> {
        let port = self.config.platform.api.port;
        let internal_port = self.config.platform.api.internal_port;
        let mut labels = instance_labels(&self.render_settings());
        labels.insert(LABEL_COMPONENT.into(), ComponentKind::Api.name().to_owned());
        let mut replicas: BTreeMap<String, Vec<ApiReplica>> = networks
            .keys()
            .map(|tenant| (tenant.clone(), Vec::new()))
            .collect();
        let listed = match self.engine.containers(&labels).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!("{error}");
                return replicas;
            }
        };
        for container in listed.into_iter().filter(|c| c.running) {
            let (Some(found), Some(network)) = (
                replicas.get_mut(&container.tenant),
                networks.get(&container.tenant),
            ) else {
                continue;
            };
            if let Some(ip) = container.addresses.get(network) {
                found.push(ApiReplica {
                    address: format!("{ip}:{port}"),
                    metrics_address: format!("{ip}:{internal_port}"),
                    healthy: container.health.is_healthy(),
                    draining: is_draining(&container.name),
                });
            }
        }
        for found in replicas.values_mut() {
            found.sort_by(|a, b| a.address.cmp(&b.address));
        }
        replicas
    }

    /// The image ID each image of `states` names on the box (None: not here).
    pub(crate) async fn local_images(
        &self,
        states: &[TenantState],
    ) -> Result<BTreeMap<String, Option<String>>, AppError> {
        let mut ids = BTreeMap::new();
        for state in states {
            for spec in &state.containers {
                if !ids.contains_key(&spec.image) {
                    let target = Target::component(&state.tenant, &spec.component);
                    ids.insert(
                        spec.image.clone(),
                        self.engine.image_id(&target, &spec.image).await?,
                    );
                }
            }
        }
        Ok(ids)
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
        let tenants = self.store.tenants()?;
        let desired = self.desired()?;
        let local = self.local_images(&desired).await?;
        for state in desired {
            let mut components: Vec<ComponentStatus> = Vec::new();
            for spec in &state.containers {
                let current = observed.iter().find(|o| o.name == spec.name);
                let local_image = local.get(&spec.image).and_then(|id| id.as_deref());
                let up_to_date = current.is_some_and(|o| is_current(o, spec, local_image));
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
            let registrations = match tenants
                .iter()
                .find(|t| t.metadata.name.as_deref() == Some(&state.tenant))
            {
                Some(tenant) => self.registration_status(tenant).await?,
                None => Vec::new(),
            };
            statuses.push(TenantStatus {
                registrations,
                last_backup: crate::backup::last_scheduled_backup(self, &state.tenant),
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

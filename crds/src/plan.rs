//! The tenant plan: every deployment decision, made once, as a pure function.
//!
//! `plan(&Tenant, &PlatformConfig)` decides names, images, environment, ports, volumes,
//! probes, start order, resources, quotas, egress, secrets, ingress and backups. The
//! operator renders the result as Kubernetes objects and the appliance as Docker
//! containers; neither makes a decision of its own.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::common::{Language, ResourceRequirements};
use crate::config::{CpuMemory, ImageSettings, PlatformConfig, TierPolicy};
use crate::quantity::Quantity;
use crate::tenant::{
    LlmProviderKind, PlanTier, Retention, Sovereignty, Tenant, TlsMode, VectorStoreKind,
};
use crate::validation::{ValidationErrors, validate_tenant};

/// The prefix of every tenant's namespace and Docker network.
pub const NAMESPACE_PREFIX: &str = "iaf-";
/// Labels every object we own carries. `managed-by` is added by each driver.
pub const LABEL_TENANT: &str = "iafactory.dz/tenant";
pub const LABEL_COMPONENT: &str = "iafactory.dz/component";
pub const LABEL_SPEC_HASH: &str = "iafactory.dz/spec-hash";
pub const LABEL_MANAGED_BY: &str = "iafactory.dz/managed-by";

/// The database the API uses, and the role that owns it (the API drops to a
/// non-owner role for requests; see docs/api.md).
pub const DATABASE_NAME: &str = "iafactory";
pub const DATABASE_USER: &str = "iafactory";
/// The login role the API serves requests as: neither the owner nor a superuser. The
/// API's `migrate` step (the owner) gives it its password; the serving container gets
/// only this role's URL, never the owner's credentials.
pub const DATABASE_APP_USER: &str = "iafactory_app";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("the Tenant is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
    #[error(
        "tenant {tenant:?} lists llmProviders ({}) but its sovereignty is strict: set sovereignty: open to allow them, or remove them",
        providers.join(", ")
    )]
    SovereigntyConflict {
        tenant: String,
        providers: Vec<String>,
    },
    #[error("tenant name {name:?} is not usable: {reason}")]
    BadName { name: String, reason: String },
    #[error(
        "tenant {tenant:?} asks for {requested} GPU(s) for Ollama, but the {tier} plan allows {allowed}; upgrade the plan or set components.ollama.gpu to {allowed}"
    )]
    GpuNotAllowed {
        tenant: String,
        tier: &'static str,
        requested: i32,
        allowed: i32,
    },
    #[error(
        "tenant {tenant:?} asks for {requested} API replicas, but the {tier} plan allows {allowed}"
    )]
    TooManyReplicas {
        tenant: String,
        tier: &'static str,
        requested: i32,
        allowed: i32,
    },
    #[error(
        "tenant {tenant:?} needs {requested} of {resource}, more than the {tier} plan's quota of {quota}; lower the components' sizes or upgrade the plan"
    )]
    OverQuota {
        tenant: String,
        tier: &'static str,
        resource: &'static str,
        requested: String,
        quota: String,
    },
    #[error(
        "llmProvider {provider:?} of tenant {tenant:?} has an unusable baseUrl {url:?}: {reason}"
    )]
    BadProviderUrl {
        tenant: String,
        provider: String,
        url: String,
        reason: String,
    },
    #[error("backup.schedule {schedule:?} of tenant {tenant:?} cannot be scheduled: {reason}")]
    BadSchedule {
        tenant: String,
        schedule: String,
        reason: String,
    },
    #[error(
        "component {component} of tenant {tenant:?} requests more {resource} ({requested}) than its limit ({limit})"
    )]
    RequestOverLimit {
        tenant: String,
        component: ComponentKind,
        resource: &'static str,
        requested: String,
        limit: String,
    },
}

/// Everything a driver needs to run one tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantPlan {
    pub tenant: String,
    /// `iaf-<tenant>`: the Kubernetes namespace or the Docker network.
    pub namespace: String,
    pub tier: PlanTier,
    pub suspended: bool,
    pub sovereignty: Sovereignty,
    pub languages: Vec<Language>,
    pub retention: Retention,
    pub timezone: String,
    /// Labels for every object of the tenant (drivers add `managed-by`).
    pub labels: BTreeMap<String, String>,
    pub quota: QuotaPlan,
    pub limit_range: LimitRangePlan,
    pub egress: EgressPlan,
    /// Secrets the driver generates once (CSPRNG) and never overwrites.
    pub secrets: Vec<SecretPlan>,
    /// In start order: every component's dependencies come before it.
    pub components: Vec<ComponentPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_preload: Option<ModelPreloadPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressPlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupPlan>,
    pub monitoring: MonitoringPlan,
}

impl TenantPlan {
    pub fn component(&self, kind: ComponentKind) -> Option<&ComponentPlan> {
        self.components.iter().find(|c| c.kind == kind)
    }

    /// Labels of one component's objects.
    pub fn component_labels(&self, component: &ComponentPlan) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("app.kubernetes.io/component".into(), component.name.clone());
        labels.insert(LABEL_COMPONENT.into(), component.name.clone());
        labels.insert(
            "app.kubernetes.io/version".into(),
            image_tag(&component.image).into(),
        );
        labels
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    Database,
    VectorStore,
    Ollama,
    /// The rate-limit store shared by the API's replicas, when it has more than one.
    Redis,
    Api,
}

impl ComponentKind {
    /// The component's object name (Service, StatefulSet, container alias) and label.
    pub fn name(self) -> &'static str {
        match self {
            ComponentKind::Database => "postgres",
            ComponentKind::VectorStore => "qdrant",
            ComponentKind::Ollama => "ollama",
            ComponentKind::Redis => "redis",
            ComponentKind::Api => "api",
        }
    }

    /// The per-component condition type in the Tenant's status.
    pub fn condition_type(self) -> &'static str {
        match self {
            ComponentKind::Database => "DatabaseReady",
            ComponentKind::VectorStore => "VectorStoreReady",
            ComponentKind::Ollama => "OllamaReady",
            ComponentKind::Redis => "RedisReady",
            ComponentKind::Api => "ApiReady",
        }
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentPlan {
    pub kind: ComponentKind,
    pub name: String,
    pub image: String,
    /// 0 when the tenant is suspended.
    pub replicas: i32,
    /// Stateful components keep a volume and are replaced by stopping first.
    pub stateful: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// In order: a template may only refer to variables defined before it.
    pub env: Vec<EnvVarPlan>,
    pub ports: Vec<PortPlan>,
    pub volumes: Vec<VolumePlan>,
    pub probes: ProbesPlan,
    /// The command Docker runs as a healthcheck (empty: running means healthy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub healthcheck: Vec<String>,
    pub resources: ResourcesPlan,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpu: i32,
    pub security: SecurityPlan,
    /// Components that must be healthy before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<ComponentKind>,
    /// Runs to completion, in the component's image, before the component serves: the
    /// API's database migrations, the only step given the owner's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitPlan>,
    /// The only components that may connect to this one (a NetworkPolicy on
    /// Kubernetes); empty: any component of the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<ComponentKind>,
    /// A stable hash of everything above; drivers replace what drifted from it.
    pub spec_hash: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl ComponentPlan {
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.port)
    }
}

/// A one-shot step in the component's image, with an environment of its own (a
/// Kubernetes initContainer of every pod; on the appliance, a container run to its end
/// each time the component's containers are created or replaced, then removed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitPlan {
    /// The init container's name (`migrate`).
    pub name: String,
    /// Arguments to the image's entrypoint.
    pub args: Vec<String>,
    /// In order, as the component's: a template refers only to earlier variables.
    pub env: Vec<EnvVarPlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarPlan {
    pub name: String,
    pub value: EnvValue,
}

/// An environment value. `Template` uses Kubernetes' `$(VAR)` syntax over variables
/// defined earlier, so the operator passes it through and the appliance expands it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "camelCase")]
pub enum EnvValue {
    Literal { value: String },
    Secret { secret: String, key: String },
    Template { template: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPlan {
    pub name: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumePlan {
    pub name: String,
    pub mount_path: String,
    pub kind: VolumeKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum VolumeKind {
    /// Data that outlives the container: a PVC or a named Docker volume.
    Persistent { size: Quantity },
    /// Writable scratch space on a read-only root filesystem: emptyDir or tmpfs.
    Scratch,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbesPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<ProbePlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbePlan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbePlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub period_seconds: i32,
    pub timeout_seconds: i32,
    pub failure_threshold: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ProbeAction {
    Http { path: String, port: u16 },
    Tcp { port: u16 },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesPlan {
    pub requests: CpuMemory,
    pub limits: CpuMemory,
}

/// Pod Security `restricted` for everything: non-root, no privilege escalation, all
/// capabilities dropped, seccomp RuntimeDefault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPlan {
    pub run_as_user: i64,
    pub run_as_group: i64,
    pub fs_group: i64,
    pub read_only_root_filesystem: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaPlan {
    pub requests_cpu: Quantity,
    pub requests_memory: Quantity,
    pub storage: Quantity,
    pub pods: i32,
    pub pvcs: i32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitRangePlan {
    pub default_request: CpuMemory,
    pub default_limit: CpuMemory,
    pub max: CpuMemory,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPlan {
    /// Traffic to the internet at large. Never under strict sovereignty; under open,
    /// only towards `providers`.
    pub internet: bool,
    pub providers: Vec<ProviderEgress>,
    /// Namespaces that may reach the API's public port: the ingress controller's.
    pub api_ingress_from_namespaces: Vec<String>,
    /// The only namespaces that may reach the API's internal port (`/internal/*`,
    /// `/metrics`): the operator's, and monitoring's when the tenant has monitoring.
    pub api_internal_from_namespaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderEgress {
    pub name: String,
    pub kind: LlmProviderKind,
    pub base_url: String,
    pub host: String,
    pub port: u16,
    /// Where the host may be reached; empty means "public addresses on `port`".
    pub cidrs: Vec<String>,
    /// The API key, in the tenant's namespace.
    pub secret: String,
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretPlan {
    pub name: String,
    pub keys: Vec<SecretKeyPlan>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyPlan {
    pub key: String,
    /// Random bytes, written hex-encoded (so the value is safe in URLs and shells).
    pub random_bytes: usize,
}

/// The API's public port is `http`; its internal one (`/internal/*`, `/metrics`) is
/// this, in the plan, the Service and the NetworkPolicies.
pub const API_INTERNAL_PORT_NAME: &str = "internal";

pub const SECRET_JWT: &str = "api-jwt";
pub const SECRET_DATABASE: &str = "postgres-credentials";
/// The password of the API's serving login role (`iafactory_app`), which is neither
/// the database owner nor a superuser. A Secret of its own, so that tenants created
/// before it get it generated (an existing Secret is never rewritten).
pub const SECRET_DATABASE_APP: &str = "postgres-app-credentials";
pub const SECRET_OPERATOR_TOKEN: &str = "operator-token";
pub const SECRET_QDRANT: &str = "qdrant-api-key";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelPreloadPlan {
    /// `ollama-models-<hash>`: a new list gives a new Job; an upgrade does not.
    pub name: String,
    pub image: String,
    pub models: Vec<String>,
    /// The Ollama server the job pulls into.
    pub ollama_url: String,
    pub models_hash: String,
    /// Where the models come from; under strict sovereignty never the internet.
    pub source: ModelSourcePlan,
}

/// Where a tenant's preloaded models come from (`ollama.model_source` of the
/// platform configuration, decided against the tenant's sovereignty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ModelSourcePlan {
    /// Ollama's public registry: the model server pulls over HTTPS from public
    /// addresses. Only for `sovereignty: open`.
    Public,
    /// A registry on the site's network: the model server pulls `<registry>/<model>`
    /// from `cidrs` on `port`, then names it as the tenant wrote it.
    #[serde(rename_all = "camelCase")]
    Mirror {
        registry: String,
        port: u16,
        cidrs: Vec<String>,
        insecure: bool,
    },
    /// An Ollama models directory on the claim `claim` (at `path`), copied into the
    /// model server's volume by a Job with no network.
    #[serde(rename_all = "camelCase")]
    Bundle { claim: String, path: String },
    /// Nothing is preloaded: the only configured source is the internet and the
    /// tenant's sovereignty is strict. The driver reports `reason` (the tenant's
    /// `ModelsReady` condition) and runs no Job.
    Forbidden { reason: String },
}

impl ModelSourcePlan {
    /// The source for one tenant: the configured one, except that a strict tenant
    /// never uses the public registry.
    pub fn decide(source: &crate::config::ModelSource, sovereignty: Sovereignty) -> Self {
        use crate::config::ModelSource;
        match source {
            ModelSource::Public if sovereignty == Sovereignty::Strict => ModelSourcePlan::Forbidden {
                reason: "components.ollama.models are not preloaded: the tenant's sovereignty is strict and the platform's only model source is the public registry (ollama.model_source kind \"public\"); configure a site mirror or a bundle (docs/operator.md, \"Models under strict sovereignty\")".into(),
            },
            ModelSource::Public => ModelSourcePlan::Public,
            ModelSource::Mirror {
                registry,
                cidrs,
                insecure,
            } => ModelSourcePlan::Mirror {
                registry: registry.clone(),
                port: ModelSource::mirror_port(registry, *insecure).unwrap_or(443),
                cidrs: cidrs.clone(),
                insecure: *insecure,
            },
            ModelSource::Bundle { claim, path } => ModelSourcePlan::Bundle {
                claim: claim.clone(),
                path: path.clone(),
            },
        }
    }
}

/// `model` as it is named on a mirror: the mirror's host in place of any registry,
/// and Ollama's `library/` namespace when the name has none (`llama3.2:3b` →
/// `models.dz:5000/library/llama3.2:3b`).
pub fn mirror_reference(registry: &str, model: &str) -> String {
    let parts: Vec<&str> = model.split('/').collect();
    let path = match parts.as_slice() {
        [name] => format!("library/{name}"),
        [first, rest @ ..] if rest.len() >= 2 || first.contains('.') || first.contains(':') => {
            rest.join("/")
        }
        _ => model.to_owned(),
    };
    let path = if path.contains('/') {
        path
    } else {
        format!("library/{path}")
    };
    format!("{registry}/{path}")
}

/// Where Ollama keeps the manifest of `model`, under its models directory
/// (`llama3.2:3b` → `manifests/registry.ollama.ai/library/llama3.2/3b`).
pub fn ollama_manifest_path(model: &str) -> String {
    let (name, tag) = match model.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (model, "latest"),
    };
    let parts: Vec<&str> = name.split('/').collect();
    let (host, namespace, model) = match parts.as_slice() {
        [model] => ("registry.ollama.ai", "library".to_owned(), *model),
        [namespace, model] => ("registry.ollama.ai", (*namespace).to_owned(), *model),
        [host, rest @ .., model] => (*host, rest.join("/"), *model),
        [] => ("registry.ollama.ai", "library".to_owned(), name),
    };
    format!("manifests/{host}/{namespace}/{model}/{tag}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPlan {
    pub host: String,
    pub tls: TlsPlan,
    pub service: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum TlsPlan {
    /// A certificate from ACME (cert-manager's issuer on Kubernetes, the appliance's
    /// own client on a box), kept in `secret`.
    Acme {
        issuer: String,
        secret: String,
    },
    /// A certificate the user provides.
    Secret {
        secret: String,
    },
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupPlan {
    pub schedule: String,
    pub retention: i32,
    pub timezone: String,
    /// The longest wait between two ticks of the schedule: no successful backup
    /// within twice this is a late backup (`TenantBackupLate`).
    pub interval_seconds: u64,
    /// The tenant's own database image, whose pg_dump matches its server.
    pub image: String,
    /// The database image's user: the backup runs as it, never as root.
    pub uid: i64,
    /// Where the Kubernetes CronJob writes (the appliance writes under its data directory).
    pub target: crate::config::BackupTarget,
    /// The Qdrant server whose snapshot goes with the dump; None for pgvector tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qdrant_url: Option<String>,
}

/// The object name (CronJob, its pods' component label, the PVC prefix) of backups.
pub const BACKUP_NAME: &str = "backup";

fn backup_plan(
    tenant: &str,
    spec: &crate::TenantSpec,
    config: &PlatformConfig,
    components: &[ComponentPlan],
) -> Result<Option<BackupPlan>, PlanError> {
    let Some(backup) = &spec.backup else {
        return Ok(None);
    };
    let bad = |reason: String| PlanError::BadSchedule {
        tenant: tenant.to_owned(),
        schedule: backup.schedule.clone(),
        reason,
    };
    let interval = crate::schedule::Schedule::new(&backup.schedule, &config.timezone)
        .and_then(|s| s.longest_interval())
        .map_err(|e| bad(e.to_string()))?;
    let database = components
        .iter()
        .find(|c| c.kind == ComponentKind::Database)
        .expect("every tenant has a database");
    let qdrant_url = components
        .iter()
        .find(|c| c.kind == ComponentKind::VectorStore)
        .map(|q| format!("http://{}:{QDRANT_HTTP_PORT}", q.name));
    Ok(Some(BackupPlan {
        schedule: backup.schedule.clone(),
        retention: backup.retention,
        timezone: config.timezone.clone(),
        interval_seconds: interval.as_secs(),
        image: database.image.clone(),
        uid: config.images.postgres.uid,
        target: config.backup.target.clone(),
        qdrant_url,
    }))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringPlan {
    pub enabled: bool,
    pub targets: Vec<ScrapeTarget>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeTarget {
    pub component: ComponentKind,
    pub port: String,
    pub path: String,
}

/// Decides everything about one tenant. Pure: the same inputs give the same plan.
pub fn plan(tenant: &Tenant, config: &PlatformConfig) -> Result<TenantPlan, PlanError> {
    let name = tenant.metadata.name.clone().unwrap_or_default();
    check_name(&name)?;
    let spec = &tenant.spec;
    if spec.sovereignty == Sovereignty::Strict && !spec.llm_providers.is_empty() {
        return Err(PlanError::SovereigntyConflict {
            tenant: name,
            providers: spec.llm_providers.iter().map(|p| p.name.clone()).collect(),
        });
    }
    validate_tenant(tenant)?;

    let tier = config.plans.tier(spec.plan);
    let namespace = format!("{NAMESPACE_PREFIX}{name}");
    let ollama_enabled = spec.components.ollama.enabled;
    let qdrant = spec.components.vector_store.kind == VectorStoreKind::Qdrant;

    let gpu = spec.components.ollama.gpu.unwrap_or(0);
    if gpu > tier.max_gpu {
        return Err(PlanError::GpuNotAllowed {
            tenant: name,
            tier: spec.plan.as_str(),
            requested: gpu,
            allowed: tier.max_gpu,
        });
    }
    let api_replicas = spec
        .components
        .api
        .replicas
        .unwrap_or(tier.defaults.api.replicas);
    if api_replicas > tier.max_api_replicas {
        return Err(PlanError::TooManyReplicas {
            tenant: name,
            tier: spec.plan.as_str(),
            requested: api_replicas,
            allowed: tier.max_api_replicas,
        });
    }
    let providers = provider_egress(&name, tenant)?;

    let mut components = vec![database(spec, tier, config, &name)?];
    if qdrant {
        components.push(vector_store(spec, tier, config, &name)?);
    }
    if ollama_enabled {
        components.push(ollama(spec, tier, config, &name, gpu)?);
    }
    // Each API replica counts requests on its own unless they share a store: with more
    // than one, the documented limits would be multiplied. Suspending scales it to zero
    // like everything else, so that resuming replaces nothing (the API's hash would
    // change if its IAF_REDIS_URL came and went with the suspension).
    let shared_limits = api_replicas > 1;
    if shared_limits {
        components.push(redis(tier, config, &name)?);
    }
    components.push(api(
        tenant,
        tier,
        config,
        &name,
        api_replicas,
        &providers,
        shared_limits,
    )?);
    for component in &mut components {
        let settings = image_settings(config, component.kind);
        // The image's arguments, when configured, replace the plan's own.
        if !settings.args.is_empty() {
            component.args = settings.args.clone();
        }
        for (name, value) in &settings.env {
            set_literal(&mut component.env, name, value);
        }
        if spec.suspended {
            component.replicas = 0;
        }
        component.spec_hash = spec_hash(component);
    }

    let mut secrets = vec![
        SecretPlan {
            name: SECRET_JWT.into(),
            keys: vec![SecretKeyPlan {
                key: "secret".into(),
                random_bytes: 48,
            }],
        },
        SecretPlan {
            name: SECRET_DATABASE.into(),
            keys: vec![SecretKeyPlan {
                key: "password".into(),
                random_bytes: 24,
            }],
        },
        SecretPlan {
            name: SECRET_DATABASE_APP.into(),
            keys: vec![SecretKeyPlan {
                key: "password".into(),
                random_bytes: 24,
            }],
        },
        SecretPlan {
            name: SECRET_OPERATOR_TOKEN.into(),
            keys: vec![SecretKeyPlan {
                key: "token".into(),
                random_bytes: 32,
            }],
        },
    ];
    if qdrant {
        secrets.push(SecretPlan {
            name: SECRET_QDRANT.into(),
            keys: vec![SecretKeyPlan {
                key: "apiKey".into(),
                random_bytes: 32,
            }],
        });
    }

    let model_preload = (ollama_enabled
        && config.ollama.pull_models
        && !spec.suspended
        && !spec.components.ollama.models.is_empty())
    .then(|| {
        let models = spec.components.ollama.models.clone();
        let models_hash = short_hash(models.join("\n").as_bytes(), 10);
        ModelPreloadPlan {
            name: format!("ollama-models-{models_hash}"),
            image: ollama_image(spec, config),
            models,
            ollama_url: format!("http://{}:{OLLAMA_PORT}", ComponentKind::Ollama.name()),
            models_hash,
            source: ModelSourcePlan::decide(&config.ollama.model_source, spec.sovereignty),
        }
    });

    let ingress = spec.ingress.as_ref().map(|ingress| IngressPlan {
        host: ingress.host.clone(),
        tls: match (&ingress.secret_name, ingress.tls.unwrap_or_default()) {
            (Some(secret), _) => TlsPlan::Secret {
                secret: secret.clone(),
            },
            (None, TlsMode::Acme) => TlsPlan::Acme {
                issuer: config.network.cert_manager_issuer.clone(),
                secret: "api-tls".into(),
            },
            (None, TlsMode::None) => TlsPlan::None,
        },
        service: ComponentKind::Api.name().into(),
        port: config.api.port,
        class: config.network.ingress_class.clone(),
    });

    let mut targets = vec![ScrapeTarget {
        component: ComponentKind::Api,
        // `/metrics` is served on the internal listener only.
        port: API_INTERNAL_PORT_NAME.into(),
        path: "/metrics".into(),
    }];
    if qdrant {
        targets.push(ScrapeTarget {
            component: ComponentKind::VectorStore,
            port: "http".into(),
            path: "/metrics".into(),
        });
    }

    let backup = backup_plan(&name, spec, config, &components)?;
    let plan = TenantPlan {
        labels: BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "iafactory".to_owned()),
            ("app.kubernetes.io/instance".to_owned(), name.clone()),
            (
                "app.kubernetes.io/part-of".to_owned(),
                "iafactory".to_owned(),
            ),
            (LABEL_TENANT.to_owned(), name.clone()),
        ]),
        quota: QuotaPlan {
            requests_cpu: tier.quota.cpu.clone(),
            requests_memory: tier.quota.memory.clone(),
            storage: tier.quota.storage.clone(),
            pods: tier.quota.pods,
            pvcs: tier.quota.pvcs,
            gpus: tier.max_gpu,
        },
        limit_range: LimitRangePlan {
            default_request: tier.container.default_request.clone(),
            default_limit: tier.container.default_limit.clone(),
            max: tier.container.max.clone(),
        },
        egress: EgressPlan {
            internet: false,
            providers,
            api_ingress_from_namespaces: api_ingress_namespaces(config),
            api_internal_from_namespaces: api_internal_namespaces(spec, config),
        },
        secrets,
        components,
        model_preload,
        ingress,
        backup,
        monitoring: MonitoringPlan {
            enabled: spec.components.monitoring.enabled,
            targets,
        },
        tenant: name,
        namespace,
        tier: spec.plan,
        suspended: spec.suspended,
        sovereignty: spec.sovereignty,
        languages: spec.languages.clone(),
        retention: spec.retention,
        timezone: config.timezone.clone(),
    };
    check_quota(&plan, tier)?;
    Ok(plan)
}

const POSTGRES_PORT: u16 = 5432;
const QDRANT_HTTP_PORT: u16 = 6333;
const QDRANT_GRPC_PORT: u16 = 6334;
const OLLAMA_PORT: u16 = 11434;
const REDIS_PORT: u16 = 6379;

fn image_settings(config: &PlatformConfig, kind: ComponentKind) -> &ImageSettings {
    match kind {
        ComponentKind::Database => &config.images.postgres,
        ComponentKind::VectorStore => &config.images.qdrant,
        ComponentKind::Ollama => &config.images.ollama,
        ComponentKind::Redis => &config.images.redis,
        ComponentKind::Api => &config.images.api,
    }
}

/// Sets `name` to a literal, in place if the plan defines it already (so templates
/// that read it still come after it), at the end otherwise.
fn set_literal(env: &mut Vec<EnvVarPlan>, name: &str, value: &str) {
    match env.iter_mut().find(|var| var.name == name) {
        Some(var) => {
            var.value = EnvValue::Literal {
                value: value.to_owned(),
            }
        }
        None => env.push(literal(name, value)),
    }
}

/// The ingress controller's namespaces, and Prometheus' when the tenant is monitored.
/// Who may reach the API's public port from outside the tenant's namespace: the
/// ingress controller only. The operator and monitoring use the internal port alone
/// (registration, `/metrics`), so they are not admitted here.
fn api_ingress_namespaces(config: &PlatformConfig) -> Vec<String> {
    let mut namespaces = config.network.ingress_namespaces.clone();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

/// Who may reach the API's internal port: the operator registers resources there, and
/// Prometheus scrapes `/metrics` there. Never the ingress controller.
fn api_internal_namespaces(spec: &crate::TenantSpec, config: &PlatformConfig) -> Vec<String> {
    let mut namespaces: Vec<String> = config.network.operator_namespace.iter().cloned().collect();
    if spec.components.monitoring.enabled {
        namespaces.push(config.network.monitoring_namespace.clone());
    }
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

fn check_name(name: &str) -> Result<(), PlanError> {
    let reason = if name.is_empty() {
        Some("a Tenant needs metadata.name".to_owned())
    } else if !crate::validation::is_dns_label(name) {
        Some("use a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a letter or digit".to_owned())
    } else if name.len() + NAMESPACE_PREFIX.len() > 63 {
        Some(format!(
            "its namespace {NAMESPACE_PREFIX}{name} would exceed 63 characters"
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PlanError::BadName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn resources(
    tenant: &str,
    kind: ComponentKind,
    wanted: Option<&ResourceRequirements>,
    default: &ResourceRequirements,
) -> Result<ResourcesPlan, PlanError> {
    let pick = |wanted: Option<&crate::common::ResourceList>,
                default: Option<&crate::common::ResourceList>| {
        let wanted_cpu = wanted.and_then(|r| r.cpu.clone());
        let wanted_memory = wanted.and_then(|r| r.memory.clone());
        let default_cpu = default.and_then(|r| r.cpu.clone());
        let default_memory = default.and_then(|r| r.memory.clone());
        CpuMemory {
            cpu: wanted_cpu.or(default_cpu).unwrap_or_else(|| q("100m")),
            memory: wanted_memory
                .or(default_memory)
                .unwrap_or_else(|| q("128Mi")),
        }
    };
    let requests = pick(
        wanted.and_then(|w| w.requests.as_ref()),
        default.requests.as_ref(),
    );
    let limits = pick(
        wanted.and_then(|w| w.limits.as_ref()),
        default.limits.as_ref(),
    );
    for (resource, request, limit) in [
        ("cpu", &requests.cpu, &limits.cpu),
        ("memory", &requests.memory, &limits.memory),
    ] {
        if request.value() > limit.value() {
            return Err(PlanError::RequestOverLimit {
                tenant: tenant.to_owned(),
                component: kind,
                resource,
                requested: request.to_string(),
                limit: limit.to_string(),
            });
        }
    }
    Ok(ResourcesPlan { requests, limits })
}

fn q(text: &str) -> Quantity {
    Quantity::parse(text).expect("a built-in quantity is valid")
}

fn security(uid: i64, read_only_root_filesystem: bool) -> SecurityPlan {
    SecurityPlan {
        run_as_user: uid,
        run_as_group: uid,
        fs_group: uid,
        read_only_root_filesystem,
    }
}

fn probe(action: ProbeAction, period_seconds: i32, failure_threshold: i32) -> ProbePlan {
    ProbePlan {
        action,
        period_seconds,
        timeout_seconds: 5,
        failure_threshold,
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVarPlan {
    EnvVarPlan {
        name: name.into(),
        value: EnvValue::Literal {
            value: value.into(),
        },
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVarPlan {
    EnvVarPlan {
        name: name.into(),
        value: EnvValue::Secret {
            secret: secret.into(),
            key: key.into(),
        },
    }
}

fn database(
    spec: &crate::TenantSpec,
    tier: &TierPolicy,
    config: &PlatformConfig,
    tenant: &str,
) -> Result<ComponentPlan, PlanError> {
    let wanted = &spec.components.database;
    let ready = ProbeAction::Exec {
        command: config.images.postgres.healthcheck.clone(),
    };
    Ok(ComponentPlan {
        kind: ComponentKind::Database,
        name: ComponentKind::Database.name().into(),
        image: config.resolve_image(
            wanted
                .image
                .as_deref()
                .unwrap_or(&config.images.postgres.image),
        ),
        replicas: 1,
        stateful: true,
        args: vec![],
        env: vec![
            literal("POSTGRES_USER", DATABASE_USER),
            literal("POSTGRES_DB", DATABASE_NAME),
            from_secret("POSTGRES_PASSWORD", SECRET_DATABASE, "password"),
            literal("PGDATA", "/var/lib/postgresql/data/pgdata"),
            literal("TZ", &config.timezone),
        ],
        ports: vec![PortPlan {
            name: "postgres".into(),
            port: POSTGRES_PORT,
        }],
        volumes: vec![
            VolumePlan {
                name: "data".into(),
                mount_path: "/var/lib/postgresql/data".into(),
                kind: VolumeKind::Persistent {
                    size: wanted
                        .storage
                        .clone()
                        .unwrap_or_else(|| tier.defaults.database.storage.clone()),
                },
            },
            VolumePlan {
                name: "run".into(),
                mount_path: "/var/run/postgresql".into(),
                kind: VolumeKind::Scratch,
            },
            VolumePlan {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                kind: VolumeKind::Scratch,
            },
        ],
        probes: ProbesPlan {
            startup: Some(probe(ready.clone(), 2, 60)),
            readiness: Some(probe(ready, 10, 3)),
            liveness: Some(probe(
                ProbeAction::Tcp {
                    port: POSTGRES_PORT,
                },
                20,
                6,
            )),
        },
        healthcheck: config.images.postgres.healthcheck.clone(),
        resources: resources(
            tenant,
            ComponentKind::Database,
            wanted.resources.as_ref(),
            &tier.defaults.database.resources,
        )?,
        gpu: 0,
        security: security(config.images.postgres.uid, true),
        depends_on: vec![],
        init: None,
        clients: vec![],
        spec_hash: String::new(),
    })
}

fn vector_store(
    spec: &crate::TenantSpec,
    tier: &TierPolicy,
    config: &PlatformConfig,
    tenant: &str,
) -> Result<ComponentPlan, PlanError> {
    let wanted = &spec.components.vector_store;
    Ok(ComponentPlan {
        kind: ComponentKind::VectorStore,
        name: ComponentKind::VectorStore.name().into(),
        image: config.resolve_image(
            wanted
                .image
                .as_deref()
                .unwrap_or(&config.images.qdrant.image),
        ),
        replicas: 1,
        stateful: true,
        args: vec![],
        env: vec![
            from_secret("QDRANT__SERVICE__API_KEY", SECRET_QDRANT, "apiKey"),
            literal("QDRANT__TELEMETRY_DISABLED", "true"),
        ],
        ports: vec![
            PortPlan {
                name: "http".into(),
                port: QDRANT_HTTP_PORT,
            },
            PortPlan {
                name: "grpc".into(),
                port: QDRANT_GRPC_PORT,
            },
        ],
        volumes: vec![
            VolumePlan {
                name: "storage".into(),
                mount_path: "/qdrant/storage".into(),
                kind: VolumeKind::Persistent {
                    size: wanted
                        .storage
                        .clone()
                        .unwrap_or_else(|| tier.defaults.vector_store.storage.clone()),
                },
            },
            VolumePlan {
                name: "snapshots".into(),
                mount_path: "/qdrant/snapshots".into(),
                kind: VolumeKind::Scratch,
            },
        ],
        probes: ProbesPlan {
            startup: Some(probe(
                ProbeAction::Http {
                    path: "/readyz".into(),
                    port: QDRANT_HTTP_PORT,
                },
                2,
                60,
            )),
            readiness: Some(probe(
                ProbeAction::Http {
                    path: "/readyz".into(),
                    port: QDRANT_HTTP_PORT,
                },
                10,
                3,
            )),
            liveness: Some(probe(
                ProbeAction::Http {
                    path: "/livez".into(),
                    port: QDRANT_HTTP_PORT,
                },
                20,
                6,
            )),
        },
        healthcheck: config.images.qdrant.healthcheck.clone(),
        resources: resources(
            tenant,
            ComponentKind::VectorStore,
            wanted.resources.as_ref(),
            &tier.defaults.vector_store.resources,
        )?,
        gpu: 0,
        security: security(config.images.qdrant.uid, true),
        depends_on: vec![],
        init: None,
        clients: vec![],
        spec_hash: String::new(),
    })
}

fn ollama_image(spec: &crate::TenantSpec, config: &PlatformConfig) -> String {
    config.resolve_image(
        spec.components
            .ollama
            .image
            .as_deref()
            .unwrap_or(&config.images.ollama.image),
    )
}

fn ollama(
    spec: &crate::TenantSpec,
    tier: &TierPolicy,
    config: &PlatformConfig,
    tenant: &str,
    gpu: i32,
) -> Result<ComponentPlan, PlanError> {
    let wanted = &spec.components.ollama;
    let models_ready = ProbeAction::Http {
        path: "/v1/models".into(),
        port: OLLAMA_PORT,
    };
    Ok(ComponentPlan {
        kind: ComponentKind::Ollama,
        name: ComponentKind::Ollama.name().into(),
        image: ollama_image(spec, config),
        replicas: 1,
        stateful: true,
        args: vec![],
        env: vec![
            literal("OLLAMA_HOST", format!("0.0.0.0:{OLLAMA_PORT}")),
            literal("OLLAMA_MODELS", "/models"),
            // The image expects a writable home; the root filesystem is read-only.
            literal("HOME", "/home/ollama"),
            literal("OLLAMA_KEEP_ALIVE", &config.ollama.keep_alive),
        ],
        ports: vec![PortPlan {
            name: "http".into(),
            port: OLLAMA_PORT,
        }],
        volumes: vec![
            VolumePlan {
                name: "models".into(),
                mount_path: "/models".into(),
                kind: VolumeKind::Persistent {
                    size: wanted
                        .storage
                        .clone()
                        .unwrap_or_else(|| tier.defaults.ollama.storage.clone()),
                },
            },
            VolumePlan {
                name: "home".into(),
                mount_path: "/home/ollama".into(),
                kind: VolumeKind::Scratch,
            },
            VolumePlan {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                kind: VolumeKind::Scratch,
            },
        ],
        probes: ProbesPlan {
            // Loading a large model can take minutes on CPU: up to 10 minutes to start.
            startup: Some(probe(models_ready.clone(), 5, 120)),
            readiness: Some(probe(models_ready, 10, 3)),
            liveness: Some(probe(ProbeAction::Tcp { port: OLLAMA_PORT }, 20, 6)),
        },
        healthcheck: config.images.ollama.healthcheck.clone(),
        resources: resources(
            tenant,
            ComponentKind::Ollama,
            wanted.resources.as_ref(),
            &tier.defaults.ollama.resources,
        )?,
        gpu,
        security: security(config.images.ollama.uid, true),
        depends_on: vec![],
        init: None,
        clients: vec![],
        spec_hash: String::new(),
    })
}

/// Redis for the rate-limit counters the API's replicas share. The counters expire
/// within the hour, so nothing is persisted (no volume, no snapshot, no append-only
/// file) and a restart only forgets the current windows. Memory is capped below the
/// container's limit, evicting the keys nearest expiry, so that a flood of clients
/// cannot get it killed.
fn redis(
    tier: &TierPolicy,
    config: &PlatformConfig,
    tenant: &str,
) -> Result<ComponentPlan, PlanError> {
    let resources = resources(
        tenant,
        ComponentKind::Redis,
        None,
        &tier.defaults.redis.resources,
    )?;
    let max_memory = (resources.limits.memory.bytes() / 4 * 3).max(1 << 20);
    let ping = ProbeAction::Exec {
        command: config.images.redis.healthcheck.clone(),
    };
    let ready = if config.images.redis.healthcheck.is_empty() {
        ProbeAction::Tcp { port: REDIS_PORT }
    } else {
        ping
    };
    Ok(ComponentPlan {
        kind: ComponentKind::Redis,
        name: ComponentKind::Redis.name().into(),
        image: config.resolve_image(&config.images.redis.image),
        replicas: 1,
        stateful: false,
        // One argument per directive (redis-server splits "--name value" itself): a
        // bare `no` would read as a boolean to YAML 1.1 tools such as kubectl's.
        // Reached from the API's pods with no password: the network decides who may
        // connect (see `clients`).
        args: vec![
            format!("--port {REDIS_PORT}"),
            "--protected-mode no".into(),
            "--save ''".into(),
            "--appendonly no".into(),
            format!("--maxmemory {max_memory}"),
            "--maxmemory-policy volatile-ttl".into(),
        ],
        env: vec![],
        ports: vec![PortPlan {
            name: "redis".into(),
            port: REDIS_PORT,
        }],
        volumes: vec![],
        probes: ProbesPlan {
            startup: Some(probe(ready.clone(), 1, 30)),
            readiness: Some(probe(ready, 5, 3)),
            liveness: Some(probe(ProbeAction::Tcp { port: REDIS_PORT }, 10, 6)),
        },
        healthcheck: config.images.redis.healthcheck.clone(),
        resources,
        gpu: 0,
        security: security(config.images.redis.uid, true),
        depends_on: vec![],
        init: None,
        clients: vec![ComponentKind::Api],
        spec_hash: String::new(),
    })
}

fn api(
    tenant: &Tenant,
    tier: &TierPolicy,
    config: &PlatformConfig,
    name: &str,
    replicas: i32,
    providers: &[ProviderEgress],
    shared_limits: bool,
) -> Result<ComponentPlan, PlanError> {
    let spec = &tenant.spec;
    let wanted = &spec.components.api;
    let port = config.api.port;
    let qdrant = spec.components.vector_store.kind == VectorStoreKind::Qdrant;
    let db = ComponentKind::Database.name();
    let mut env = vec![
        literal("IAF_LISTEN", format!("0.0.0.0:{port}")),
        literal(
            "IAF_INTERNAL_LISTEN",
            format!("0.0.0.0:{}", config.api.internal_port),
        ),
        literal("IAF_TENANT", name),
        literal(
            "IAF_SOVEREIGNTY",
            match spec.sovereignty {
                Sovereignty::Strict => "strict",
                Sovereignty::Open => "open",
            },
        ),
        literal(
            "IAF_LANGUAGES",
            spec.languages
                .iter()
                .map(|l| l.code())
                .collect::<Vec<_>>()
                .join(","),
        ),
        literal("IAF_TIMEZONE", &config.timezone),
        literal(
            "IAF_TRUSTED_PROXIES",
            config.network.trusted_proxies.join(","),
        ),
        // The serving role only: the owner's credentials go to the `migrate` step.
        from_secret("IAF_DATABASE_APP_PASSWORD", SECRET_DATABASE_APP, "password"),
        EnvVarPlan {
            name: "IAF_DATABASE_APP_URL".into(),
            value: EnvValue::Template {
                template: format!(
                    "postgres://{DATABASE_APP_USER}:$(IAF_DATABASE_APP_PASSWORD)@{db}:{POSTGRES_PORT}/{DATABASE_NAME}"
                ),
            },
        },
        from_secret("IAF_JWT_SECRET", SECRET_JWT, "secret"),
        from_secret("IAF_OPERATOR_TOKEN", SECRET_OPERATOR_TOKEN, "token"),
        literal(
            "IAF_ALLOW_REGISTRATION",
            config.api.self_registration.to_string(),
        ),
        literal(
            "IAF_VECTOR_STORE",
            if qdrant { "qdrant" } else { "pgvector" },
        ),
    ];
    if qdrant {
        env.push(literal(
            "IAF_QDRANT_URL",
            format!(
                "http://{}:{QDRANT_GRPC_PORT}",
                ComponentKind::VectorStore.name()
            ),
        ));
        env.push(from_secret("IAF_QDRANT_API_KEY", SECRET_QDRANT, "apiKey"));
    }
    if spec.components.ollama.enabled {
        env.push(literal(
            "IAF_LLM_BASE_URL",
            format!("http://{}:{OLLAMA_PORT}/v1", ComponentKind::Ollama.name()),
        ));
        let model = spec
            .components
            .ollama
            .models
            .first()
            .unwrap_or(&config.api.default_llm_model);
        env.push(literal("IAF_LLM_MODEL", model.as_str()));
    }
    if let Some(dir) = &config.api.embedding_model_dir {
        env.push(literal("IAF_EMBEDDING_MODEL_DIR", dir.as_str()));
    }
    if !providers.is_empty() {
        let described: Vec<serde_json::Value> = providers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "kind": p.kind,
                    "base_url": p.base_url,
                    "api_key_env": provider_key_env(&p.name),
                })
            })
            .collect();
        env.push(literal(
            "IAF_LLM_PROVIDERS",
            serde_json::Value::Array(described).to_string(),
        ));
        for provider in providers {
            env.push(from_secret(
                &provider_key_env(&provider.name),
                &provider.secret,
                &provider.key,
            ));
        }
    }

    if shared_limits {
        env.push(literal(
            "IAF_REDIS_URL",
            format!("redis://{}:{REDIS_PORT}", ComponentKind::Redis.name()),
        ));
    }

    // Migrations run as the database owner, before the API serves, and set the
    // serving role's password (`iafactory-api migrate`).
    let migrate = InitPlan {
        name: "migrate".into(),
        args: vec!["migrate".into()],
        env: vec![
            from_secret("IAF_DB_PASSWORD", SECRET_DATABASE, "password"),
            EnvVarPlan {
                name: "IAF_DATABASE_URL".into(),
                value: EnvValue::Template {
                    template: format!(
                        "postgres://{DATABASE_USER}:$(IAF_DB_PASSWORD)@{db}:{POSTGRES_PORT}/{DATABASE_NAME}"
                    ),
                },
            },
            from_secret("IAF_DATABASE_APP_PASSWORD", SECRET_DATABASE_APP, "password"),
        ],
    };

    let mut depends_on = vec![ComponentKind::Database];
    if qdrant {
        depends_on.push(ComponentKind::VectorStore);
    }
    if shared_limits {
        depends_on.push(ComponentKind::Redis);
    }
    Ok(ComponentPlan {
        kind: ComponentKind::Api,
        name: ComponentKind::Api.name().into(),
        image: config.resolve_image(wanted.image.as_deref().unwrap_or(&config.images.api.image)),
        replicas,
        stateful: false,
        args: vec![],
        env,
        ports: vec![
            PortPlan {
                name: "http".into(),
                port,
            },
            PortPlan {
                name: API_INTERNAL_PORT_NAME.into(),
                port: config.api.internal_port,
            },
        ],
        volumes: vec![VolumePlan {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            kind: VolumeKind::Scratch,
        }],
        probes: ProbesPlan {
            startup: Some(probe(
                ProbeAction::Http {
                    path: "/healthz".into(),
                    port,
                },
                2,
                30,
            )),
            readiness: Some(probe(
                ProbeAction::Http {
                    path: "/readyz".into(),
                    port,
                },
                5,
                3,
            )),
            liveness: Some(probe(
                ProbeAction::Http {
                    path: "/healthz".into(),
                    port,
                },
                10,
                6,
            )),
        },
        healthcheck: config.images.api.healthcheck.clone(),
        resources: resources(
            name,
            ComponentKind::Api,
            wanted.resources.as_ref(),
            &tier.defaults.api.resources,
        )?,
        gpu: 0,
        security: security(config.images.api.uid, true),
        depends_on,
        init: Some(migrate),
        clients: vec![],
        spec_hash: String::new(),
    })
}

/// `IAF_PROVIDER_<NAME>_API_KEY`, the variable holding a provider's key.
pub fn provider_key_env(provider: &str) -> String {
    format!(
        "IAF_PROVIDER_{}_API_KEY",
        provider.to_ascii_uppercase().replace('-', "_")
    )
}

fn provider_egress(tenant_name: &str, tenant: &Tenant) -> Result<Vec<ProviderEgress>, PlanError> {
    if tenant.spec.sovereignty == Sovereignty::Strict {
        return Ok(Vec::new());
    }
    tenant
        .spec
        .llm_providers
        .iter()
        .map(|provider| {
            let bad = |reason: &str| PlanError::BadProviderUrl {
                tenant: tenant_name.to_owned(),
                provider: provider.name.clone(),
                url: provider.base_url.clone(),
                reason: reason.to_owned(),
            };
            let (scheme, rest) = provider
                .base_url
                .split_once("://")
                .ok_or_else(|| bad("it has no scheme (https://...)"))?;
            let default_port = match scheme {
                "https" => 443,
                "http" => 80,
                _ => return Err(bad("only http and https are supported")),
            };
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let authority = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            let (host, port) = split_host_port(authority, default_port)
                .ok_or_else(|| bad("its port is not a number"))?;
            if host.is_empty() {
                return Err(bad("it has no host"));
            }
            let mut cidrs = provider.cidrs.clone();
            if cidrs.is_empty()
                && let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            {
                cidrs.push(match ip {
                    IpAddr::V4(v4) => format!("{v4}/32"),
                    IpAddr::V6(v6) => format!("{v6}/128"),
                });
            }
            Ok(ProviderEgress {
                name: provider.name.clone(),
                kind: provider.kind,
                base_url: provider.base_url.clone(),
                host: host.to_owned(),
                port,
                cidrs,
                secret: provider.secret_ref.name.clone(),
                key: provider.secret_ref.key.clone(),
            })
        })
        .collect()
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, port.parse().ok()?)),
            None => Some((host, default_port)),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, default_port)),
    }
}

/// The namespace must fit its workloads: requests of every replica (plus one surge
/// replica of the API during a rolling update) and every volume.
fn check_quota(plan: &TenantPlan, tier: &TierPolicy) -> Result<(), PlanError> {
    let mut cpu = 0.0;
    let mut memory = 0.0;
    let mut storage = 0.0;
    for component in &plan.components {
        let replicas = if component.stateful {
            1
        } else {
            component.replicas.max(1) + 1
        };
        cpu += component.resources.requests.cpu.value() * f64::from(replicas);
        memory += component.resources.requests.memory.value() * f64::from(replicas);
        for volume in &component.volumes {
            if let VolumeKind::Persistent { size } = &volume.kind {
                storage += size.value();
            }
        }
    }
    // The backup volume counts against the same quota.
    if let Some(BackupPlan {
        target: crate::config::BackupTarget::Pvc { size, .. },
        ..
    }) = &plan.backup
    {
        storage += size.value();
    }
    let over = |resource: &'static str, requested: String, quota: &Quantity| PlanError::OverQuota {
        tenant: plan.tenant.clone(),
        tier: plan.tier.as_str(),
        resource,
        requested,
        quota: quota.to_string(),
    };
    if cpu > tier.quota.cpu.value() + 1e-9 {
        return Err(over(
            "cpu requests",
            format!("{}m", (cpu * 1000.0).round()),
            &tier.quota.cpu,
        ));
    }
    if memory > tier.quota.memory.value() {
        return Err(over(
            "memory requests",
            format!("{}Mi", (memory / 1048576.0).ceil()),
            &tier.quota.memory,
        ));
    }
    if storage > tier.quota.storage.value() {
        return Err(over(
            "storage",
            format!("{}Gi", (storage / 1073741824.0).ceil()),
            &tier.quota.storage,
        ));
    }
    Ok(())
}

/// A stable hash of what one replica of a component runs: serde_json writes struct
/// fields in declaration order and our maps are BTreeMaps, so equal plans hash
/// equally. The replica count is left out: scaling, suspending and resuming replace
/// nothing that runs.
fn spec_hash(component: &ComponentPlan) -> String {
    let mut unhashed = component.clone();
    unhashed.spec_hash = String::new();
    unhashed.replicas = 0;
    let bytes = serde_json::to_vec(&unhashed).expect("a plan always serialises");
    short_hash(&bytes, 16)
}

fn short_hash(bytes: &[u8], len: usize) -> String {
    let digest = Sha256::digest(bytes);
    let mut text = hex::encode(digest);
    text.truncate(len);
    text
}

fn image_tag(image: &str) -> &str {
    let name = image.rsplit('/').next().unwrap_or(image);
    let tag = name.split_once('@').map_or(name, |(n, _)| n);
    tag.split_once(':').map_or("latest", |(_, t)| t)
}

/// What a KnowledgeBase becomes once its defaults are resolved: the registration the
/// drivers send to the tenant's API (`tenant_api::KnowledgeBaseRegistration`), so the
/// API stores the embedding the platform configuration chose, not its own default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBasePlan {
    pub tenant: String,
    pub namespace: String,
    pub name: String,
    pub description: Option<String>,
    pub languages: Vec<Language>,
    /// The spec's, or the platform's `api.default_embedding` when the spec names none.
    pub embedding: crate::knowledgebase::EmbeddingSpec,
    pub chunking: crate::knowledgebase::ChunkingSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<crate::knowledgebase::GenerationSpec>,
    pub vector_store: crate::knowledgebase::KnowledgeBaseVectorStore,
    pub sources: Vec<crate::knowledgebase::Source>,
}

impl KnowledgeBasePlan {
    /// The spec the plan stands for, with every default filled in: what the API
    /// validates and stores.
    pub fn resolved_spec(&self) -> crate::KnowledgeBaseSpec {
        crate::KnowledgeBaseSpec {
            description: self.description.clone(),
            languages: self.languages.clone(),
            embedding: Some(self.embedding.clone()),
            chunking: self.chunking.clone(),
            generation: self.generation.clone(),
            vector_store: self.vector_store,
            sources: self.sources.clone(),
        }
    }
}

/// A Workflow once its graph is checked: the waves of agents that may run together,
/// and what the tenant's API registers (the body of its registration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPlan {
    pub tenant: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub agents: Vec<crate::workflow::AgentSpec>,
    pub waves: Vec<Vec<String>>,
    pub schedule: Option<String>,
    /// The platform's timezone, which `schedule` is read in.
    pub timezone: String,
    pub timeout_seconds: i32,
}

impl WorkflowPlan {
    /// The spec the plan stands for: what the API validates and stores.
    pub fn resolved_spec(&self) -> crate::WorkflowSpec {
        crate::WorkflowSpec {
            description: self.description.clone(),
            agents: self.agents.clone(),
            trigger: self
                .schedule
                .clone()
                .map(|schedule| crate::workflow::TriggerSpec {
                    schedule: Some(schedule),
                }),
            timeout_seconds: self.timeout_seconds,
        }
    }
}

/// The plan of any resource of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ResourcePlan {
    #[serde(rename = "TenantPlan")]
    Tenant(Box<TenantPlan>),
    #[serde(rename = "KnowledgeBasePlan")]
    KnowledgeBase(Box<KnowledgeBasePlan>),
    #[serde(rename = "WorkflowPlan")]
    Workflow(Box<WorkflowPlan>),
}

pub fn plan_knowledge_base(
    kb: &crate::KnowledgeBase,
    config: &PlatformConfig,
) -> Result<KnowledgeBasePlan, PlanError> {
    crate::validation::validate_knowledge_base(kb)?;
    let namespace = kb.metadata.namespace.clone().unwrap_or_default();
    Ok(KnowledgeBasePlan {
        tenant: namespace
            .strip_prefix(NAMESPACE_PREFIX)
            .unwrap_or_default()
            .to_owned(),
        name: kb.metadata.name.clone().unwrap_or_default(),
        namespace,
        description: kb.spec.description.clone(),
        languages: kb.spec.languages.clone(),
        embedding: kb
            .spec
            .embedding
            .clone()
            .unwrap_or_else(|| config.api.default_embedding.clone()),
        chunking: kb.spec.chunking.clone(),
        generation: kb.spec.generation.clone(),
        vector_store: kb.spec.vector_store,
        sources: kb.spec.sources.clone(),
    })
}

pub fn plan_workflow(
    workflow: &crate::Workflow,
    config: &PlatformConfig,
) -> Result<WorkflowPlan, PlanError> {
    crate::validation::validate_workflow(workflow)?;
    let dag = crate::dag::validate(&workflow.spec.agents).map_err(|errors| {
        PlanError::Invalid(ValidationErrors(
            errors
                .into_iter()
                .map(|e| crate::validation::FieldError {
                    path: "spec.agents".into(),
                    message: e.to_string(),
                })
                .collect(),
        ))
    })?;
    let namespace = workflow.metadata.namespace.clone().unwrap_or_default();
    Ok(WorkflowPlan {
        tenant: namespace
            .strip_prefix(NAMESPACE_PREFIX)
            .unwrap_or_default()
            .to_owned(),
        name: workflow.metadata.name.clone().unwrap_or_default(),
        namespace,
        description: workflow.spec.description.clone(),
        agents: workflow.spec.agents.clone(),
        waves: dag.waves,
        schedule: workflow
            .spec
            .trigger
            .as_ref()
            .and_then(|t| t.schedule.clone()),
        timezone: config.timezone.clone(),
        timeout_seconds: workflow.spec.timeout_seconds,
    })
}

pub fn plan_manifest(
    manifest: &crate::manifest::Manifest,
    config: &PlatformConfig,
) -> Result<ResourcePlan, PlanError> {
    use crate::manifest::Manifest;
    Ok(match manifest {
        Manifest::Tenant(tenant) => ResourcePlan::Tenant(Box::new(plan(tenant, config)?)),
        Manifest::KnowledgeBase(kb) => {
            ResourcePlan::KnowledgeBase(Box::new(plan_knowledge_base(kb, config)?))
        }
        Manifest::Workflow(wf) => ResourcePlan::Workflow(Box::new(plan_workflow(wf, config)?)),
    })
}

/// A Secret value an environment variable needs but the driver could not find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {variable} needs key {key:?} of Secret {secret:?}, which is missing")]
pub struct MissingSecret {
    pub variable: String,
    pub secret: String,
    pub key: String,
}

/// Resolves an environment to plain values, as the kubelet does: secrets looked up,
/// `$(VAR)` expanded from variables defined earlier, `$$` an escaped `$`, and an
/// unknown reference left as written. Drivers without a kubelet (the appliance) use it.
pub fn resolve_env(
    env: &[EnvVarPlan],
    mut secret: impl FnMut(&str, &str) -> Option<String>,
) -> Result<Vec<(String, String)>, MissingSecret> {
    let mut resolved: Vec<(String, String)> = Vec::with_capacity(env.len());
    for var in env {
        let value = match &var.value {
            EnvValue::Literal { value } => value.clone(),
            EnvValue::Secret { secret: name, key } => {
                secret(name, key).ok_or_else(|| MissingSecret {
                    variable: var.name.clone(),
                    secret: name.clone(),
                    key: key.clone(),
                })?
            }
            EnvValue::Template { template } => expand(template, &resolved),
        };
        resolved.push((var.name.clone(), value));
    }
    Ok(resolved)
}

fn expand(template: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&rest[at..at + 1 + 1 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_like_the_kubelet() {
        let env = vec![
            from_secret("PASSWORD", "db", "password"),
            EnvVarPlan {
                name: "URL".into(),
                value: EnvValue::Template {
                    template: "postgres://u:$(PASSWORD)@db/x?a=$$(PASSWORD)&b=$(LATER)&c=$".into(),
                },
            },
            literal("LATER", "too late"),
        ];
        let resolved = resolve_env(&env, |secret, key| {
            (secret == "db" && key == "password").then(|| "s3cret".into())
        })
        .unwrap();
        assert_eq!(
            resolved[1].1,
            "postgres://u:s3cret@db/x?a=$(PASSWORD)&b=$(LATER)&c=$"
        );
    }

    fn tenant(spec: &str) -> Tenant {
        serde_yaml::from_str(&format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {{name: acme}}\nspec: {spec}\n"
        ))
        .unwrap()
    }

    #[test]
    fn more_than_one_api_replica_shares_its_limits_through_redis() {
        let config = PlatformConfig::default();
        let plan = plan(
            &tenant("{plan: pro, components: {api: {replicas: 2}}}"),
            &config,
        )
        .unwrap();
        let redis = plan
            .component(ComponentKind::Redis)
            .expect("a redis component");
        assert_eq!(redis.name, "redis");
        assert_eq!(redis.image, config.images.redis.image);
        assert_eq!(redis.replicas, 1);
        assert!(!redis.stateful && redis.volumes.is_empty());
        assert!(redis.security.read_only_root_filesystem);
        assert!(redis.security.run_as_user > 0);
        assert_eq!(redis.healthcheck, config.images.redis.healthcheck);
        assert_eq!(redis.port("redis"), Some(6379));
        assert_eq!(redis.clients, vec![ComponentKind::Api]);
        for arg in [
            "--save ''",
            "--appendonly no",
            "--maxmemory-policy volatile-ttl",
        ] {
            assert!(redis.args.contains(&arg.to_owned()), "{:?}", redis.args);
        }
        // 256Mi limit on the pro plan: capped at three quarters of it.
        assert!(redis.args.contains(&"--maxmemory 201326592".to_owned()));
        assert_eq!(
            redis.resources.limits.memory,
            config
                .plans
                .pro
                .defaults
                .redis
                .resources
                .limits
                .as_ref()
                .unwrap()
                .memory
                .clone()
                .unwrap()
        );
        let api = plan.component(ComponentKind::Api).unwrap();
        assert!(api.depends_on.contains(&ComponentKind::Redis));
        assert!(
            api.env
                .contains(&literal("IAF_REDIS_URL", "redis://redis:6379"))
        );
        let order: Vec<_> = plan.components.iter().map(|c| c.kind).collect();
        let position = |kind| order.iter().position(|k| *k == kind).unwrap();
        assert!(position(ComponentKind::Redis) < position(ComponentKind::Api));
    }

    #[test]
    fn one_replica_has_no_redis_and_a_suspended_tenant_runs_none() {
        let config = PlatformConfig::default();
        for spec in [
            "{plan: pro, components: {api: {replicas: 1}}}",
            "{plan: free}",
        ] {
            let plan = plan(&tenant(spec), &config).unwrap();
            assert!(plan.component(ComponentKind::Redis).is_none(), "{spec}");
            let api = plan.component(ComponentKind::Api).unwrap();
            assert!(!api.depends_on.contains(&ComponentKind::Redis), "{spec}");
            assert!(!api.env.iter().any(|e| e.name == "IAF_REDIS_URL"), "{spec}");
        }
        let running = plan(
            &tenant("{plan: pro, components: {api: {replicas: 2}}}"),
            &config,
        )
        .unwrap();
        let suspended = plan(
            &tenant("{plan: pro, suspended: true, components: {api: {replicas: 2}}}"),
            &config,
        )
        .unwrap();
        let redis = suspended.component(ComponentKind::Redis).unwrap();
        assert_eq!(redis.replicas, 0, "a suspended tenant runs no redis");
        for kind in [ComponentKind::Redis, ComponentKind::Api] {
            assert_eq!(
                running.component(kind).unwrap().spec_hash,
                suspended.component(kind).unwrap().spec_hash,
                "resuming replaces no {kind}"
            );
        }
    }

    #[test]
    fn a_missing_secret_is_named() {
        let env = vec![from_secret("TOKEN", "operator-token", "token")];
        let error = resolve_env(&env, |_, _| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "environment variable TOKEN needs key \"token\" of Secret \"operator-token\", which is missing"
        );
    }
}

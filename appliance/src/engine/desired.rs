//! What Docker should run for one tenant, decided from its plan alone (pure): the
//! network, the named volumes, and every container with its labels, healthcheck,
//! limits and hash.

use std::collections::BTreeMap;

use iafactory_crds::plan::{
    ComponentKind, ComponentPlan, EnvValue, EnvVarPlan, LABEL_COMPONENT, LABEL_MANAGED_BY,
    LABEL_SPEC_HASH, LABEL_TENANT, TenantPlan, VolumeKind,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::Secrets;

/// The `managed-by` value of everything the appliance creates.
pub const MANAGED_BY: &str = "iafactory-appliance";
/// Which appliance (settings `instance`) owns an object.
pub const LABEL_INSTANCE: &str = "iafactory.dz/appliance";
/// The plan's name for a named volume (`data`, `storage`, ...).
pub const LABEL_VOLUME: &str = "iafactory.dz/volume";
/// Marks an object shared by every tenant (value: the stack, `monitoring`). Such an
/// object carries no tenant label: it is never a tenant's orphan.
pub const LABEL_STACK: &str = "iafactory.dz/stack";
/// Docker's network of the host's own namespace: always there, never created.
pub const HOST_NETWORK: &str = "host";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DesiredError {
    #[error(
        "component {component} of tenant {tenant:?} reads secret {secret}/{key}, which was never generated; this is a bug in the plan, report it"
    )]
    MissingSecret {
        tenant: String,
        component: String,
        secret: String,
        key: String,
    },
    #[error(
        "component {component} of tenant {tenant:?} needs key {key:?} of secret {secret:?} (a secretRef of its manifest), which is not set; run `{}` with the value on stdin, then `iafactory up`", set_command(.tenant, .secret, .key)
    )]
    MissingUserSecret {
        tenant: String,
        component: String,
        secret: String,
        key: String,
    },
}

/// The command that stores a secret a manifest refers to.
pub fn set_command(tenant: &str, secret: &str, key: &str) -> String {
    format!("iafactory secret set {tenant} {secret} {key}")
}

/// A secret the plan refers to but does not generate, which a person must provide.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NeededSecret {
    pub tenant: String,
    pub secret: String,
    pub key: String,
}

impl NeededSecret {
    pub fn set_command(&self) -> String {
        set_command(&self.tenant, &self.secret, &self.key)
    }
}

/// Every secret key the plan's components read that the plan does not generate
/// (providers' API keys), sorted, each once.
pub fn user_secrets(plan: &TenantPlan) -> Vec<NeededSecret> {
    let mut needed: Vec<NeededSecret> = plan
        .components
        .iter()
        .flat_map(|c| &c.env)
        .filter_map(|var| match &var.value {
            EnvValue::Secret { secret, key } if !generates(plan, secret) => Some(NeededSecret {
                tenant: plan.tenant.clone(),
                secret: secret.clone(),
                key: key.clone(),
            }),
            _ => None,
        })
        .collect();
    needed.sort();
    needed.dedup();
    needed
}

/// Those of [`user_secrets`] that `secrets` lacks.
pub fn missing_user_secrets(plan: &TenantPlan, secrets: &Secrets) -> Vec<NeededSecret> {
    user_secrets(plan)
        .into_iter()
        .filter(|n| secrets.get(&n.secret).and_then(|s| s.get(&n.key)).is_none())
        .collect()
}

fn generates(plan: &TenantPlan, secret: &str) -> bool {
    plan.secrets.iter().any(|s| s.name == secret)
}

/// How the appliance renders plans, independent of any tenant.
#[derive(Clone, Debug)]
pub struct RenderSettings {
    pub instance: String,
    pub healthcheck_interval_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TenantState {
    pub tenant: String,
    pub network: NetworkSpec,
    pub volumes: Vec<VolumeSpec>,
    /// In start order: a container's dependencies come before it.
    pub containers: Vec<ContainerSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Internal: no route out, so no tenant reaches another or the internet.
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VolumeSpec {
    pub name: String,
    pub component: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerSpec {
    pub name: String,
    pub component: String,
    pub image: String,
    pub stateful: bool,
    /// Arguments to the image's entrypoint (empty: the image's own command).
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    /// DNS names on the tenant network: the component's name, as the plan's URLs use.
    pub aliases: Vec<String>,
    pub user: String,
    pub read_only: bool,
    /// Mount path → tmpfs options, for the plan's scratch volumes.
    pub tmpfs: BTreeMap<String, String>,
    /// Named volume → mount path.
    pub mounts: Vec<(String, String)>,
    /// Host directories, as Docker binds (`/host/dir:/container/dir:ro`). Left out of
    /// the hash when empty, so tenants' hashes do not depend on this field existing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// Host names that resolve, inside the container, to its network's gateway
    /// address (`extra_hosts`, filled in when the container is created, once Docker
    /// chose the address): the egress proxy of an open tenant's API. Left out of the
    /// hash when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateway_hosts: Vec<String>,
    pub healthcheck: Option<HealthcheckSpec>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// Components (by name) that must be healthy before this one starts.
    pub depends_on: Vec<String>,
    /// The plan's init step (the API's `migrate`): run once, to its end, before this
    /// component's containers are created or replaced, never on a run that changes
    /// nothing. Left out of the hash when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSpec>,
    /// Runs once to its end (an init step): no restart policy. Left out of the hash
    /// when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub one_shot: bool,
    pub spec_hash: String,
}

/// A one-shot container in the component's image, on its network, with an environment
/// of its own (the only one given the database owner's credentials).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InitSpec {
    /// `iaf-<tenant>-<component>-<step>`.
    pub name: String,
    /// The plan's step name (`migrate`).
    pub step: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
}

impl ContainerSpec {
    /// The container that runs `init`: this one's image, user, network, limits and
    /// read-only root, with the step's command and environment, no alias (it never
    /// answers as the component), no healthcheck, and a component label of its own
    /// (`<component>-<step>`), so that neither the gateway nor Prometheus ever sees it
    /// and a leftover is removed as no component of the plan.
    pub fn init_container(&self, init: &InitSpec) -> ContainerSpec {
        let component = format!("{}-{}", self.component, init.step);
        let mut labels = self.labels.clone();
        labels.insert(LABEL_COMPONENT.into(), component.clone());
        labels.remove(LABEL_SPEC_HASH);
        ContainerSpec {
            name: init.name.clone(),
            component,
            cmd: init.cmd.clone(),
            env: init.env.clone(),
            labels,
            aliases: Vec::new(),
            gateway_hosts: Vec::new(),
            healthcheck: None,
            depends_on: Vec::new(),
            init: None,
            one_shot: true,
            spec_hash: String::new(),
            ..self.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    pub interval_ns: i64,
    pub timeout_ns: i64,
    pub retries: i64,
    pub start_period_ns: i64,
}

pub fn network_name(tenant: &str) -> String {
    format!("{}{tenant}", iafactory_crds::plan::NAMESPACE_PREFIX)
}

pub fn volume_name(tenant: &str, component: &str, volume: &str) -> String {
    format!("iaf-{tenant}-{component}-{volume}")
}

/// Labels that select every object of one appliance.
pub fn instance_labels(settings: &RenderSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_INSTANCE.to_owned(), settings.instance.clone()),
    ])
}

/// The whole desired state of one tenant.
pub fn tenant_state(
    plan: &TenantPlan,
    secrets: &Secrets,
    settings: &RenderSettings,
) -> Result<TenantState, DesiredError> {
    // Every field of the plan, without `..`: a new one fails to compile here until the
    // appliance decides about it. What it cannot honour is in
    // `iafactory_crds::support::TENANT_FIELDS`, from which `apply` warns.
    let TenantPlan {
        // Rendered below: the network, the volumes and the containers.
        tenant: _,
        components: _,
        // Docker network `iaf-<tenant>` (`network_name`), the same name.
        namespace: _,
        // Decided in the plan already: sizes, replica and GPU caps, the quota check,
        // zero replicas when suspended, the API's environment (languages, timezone).
        tier: _,
        suspended: _,
        languages: _,
        timezone: _,
        // Kubernetes' labels; the appliance labels by `component_labels` and its own.
        labels: _,
        // Docker has no namespace quota or LimitRange: each container gets its limits.
        quota: _,
        limit_range: _,
        // Strict: the network is internal, no route out. Open: the API's providers
        // through the tenant's egress proxy (`egress_proxy`).
        sovereignty: _,
        egress: _,
        // Generated by the store (`Store::secrets`) and read by `environment`.
        secrets: _,
        // `iafactory delete` reads the Tenant's retention.
        retention: _,
        // Not pulled: `iafactory models import` loads models (apply warns).
        model_preload: _,
        // The gateway serves `<tenant>.<domain>` with its own certificates; a host,
        // a Secret or `tls: none` are not honoured (apply warns).
        ingress: _,
        // Run by `iafactory serve` on the Tenant's schedule.
        backup: _,
        // The appliance's Prometheus scrapes every tenant's API (apply warns when a
        // Tenant turns monitoring off).
        monitoring: _,
    } = plan;
    let mut base = instance_labels(settings);
    base.insert(LABEL_TENANT.into(), plan.tenant.clone());
    let network = NetworkSpec {
        name: network_name(&plan.tenant),
        internal: true,
        labels: base.clone(),
    };
    let mut volumes = Vec::new();
    let mut containers = Vec::new();
    for component in &plan.components {
        for volume in &component.volumes {
            if let VolumeKind::Persistent { .. } = volume.kind {
                let mut labels = base.clone();
                labels.insert(LABEL_COMPONENT.into(), component.name.clone());
                labels.insert(LABEL_VOLUME.into(), volume.name.clone());
                volumes.push(VolumeSpec {
                    name: volume_name(&plan.tenant, &component.name, &volume.name),
                    component: component.name.clone(),
                    labels,
                });
            }
        }
        containers.extend(component_containers(plan, component, secrets, settings)?);
    }
    Ok(TenantState {
        tenant: plan.tenant.clone(),
        network,
        volumes,
        containers,
    })
}

fn component_containers(
    plan: &TenantPlan,
    component: &ComponentPlan,
    secrets: &Secrets,
    settings: &RenderSettings,
) -> Result<Vec<ContainerSpec>, DesiredError> {
    let mut env = environment(plan, &component.name, &component.env, secrets)?;
    let init = match &component.init {
        Some(step) => Some(InitSpec {
            name: format!("iaf-{}-{}-{}", plan.tenant, component.name, step.name),
            step: step.name.clone(),
            cmd: step.args.clone(),
            env: environment(plan, &component.name, &step.env, secrets)?,
        }),
        None => None,
    };
    let gateway_hosts = egress_proxy(plan, component, &mut env);
    let mut labels = plan.component_labels(component);
    labels.extend(instance_labels(settings));
    // Owned by the component's user: this engine ignores a tmpfs `mode`, and the
    // root filesystem is read-only, so scratch space is only writable this way.
    let scratch_options = format!(
        "rw,nosuid,nodev,uid={},gid={}",
        component.security.run_as_user, component.security.fs_group
    );
    let tmpfs = component
        .volumes
        .iter()
        .filter(|v| matches!(v.kind, VolumeKind::Scratch))
        .map(|v| (v.mount_path.clone(), scratch_options.clone()))
        .collect();
    let mounts = component
        .volumes
        .iter()
        .filter(|v| matches!(v.kind, VolumeKind::Persistent { .. }))
        .map(|v| {
            (
                volume_name(&plan.tenant, &component.name, &v.name),
                v.mount_path.clone(),
            )
        })
        .collect();
    let seconds = |s: i32| i64::from(s) * 1_000_000_000;
    let healthcheck = (!component.healthcheck.is_empty()).then(|| {
        let readiness = component.probes.readiness.as_ref();
        let startup = component.probes.startup.as_ref();
        HealthcheckSpec {
            test: std::iter::once("CMD".to_owned())
                .chain(component.healthcheck.iter().cloned())
                .collect(),
            // Docker 20.10 has no faster start interval: one short interval throughout
            // keeps `up` quick, at a cost of one cheap command every couple of seconds.
            interval_ns: settings.healthcheck_interval_ms as i64 * 1_000_000,
            timeout_ns: seconds(readiness.map_or(5, |p| p.timeout_seconds)),
            retries: i64::from(readiness.map_or(3, |p| p.failure_threshold)),
            start_period_ns: seconds(startup.map_or(0, |p| p.period_seconds * p.failure_threshold)),
        }
    });
    let template = ContainerSpec {
        name: String::new(),
        component: component.name.clone(),
        image: component.image.clone(),
        stateful: component.stateful,
        cmd: component.args.clone(),
        env,
        labels,
        network: network_name(&plan.tenant),
        aliases: vec![component.name.clone()],
        user: format!(
            "{}:{}",
            component.security.run_as_user, component.security.run_as_group
        ),
        read_only: component.security.read_only_root_filesystem,
        tmpfs,
        mounts,
        binds: Vec::new(),
        gateway_hosts,
        healthcheck,
        nano_cpus: (component.resources.limits.cpu.value() * 1e9) as i64,
        memory_bytes: component.resources.limits.memory.bytes() as i64,
        depends_on: component
            .depends_on
            .iter()
            .map(|k| k.name().to_owned())
            .collect(),
        init,
        one_shot: false,
        spec_hash: String::new(),
    };
    let hash = spec_hash(&template);
    let mut template = template;
    template.labels.insert(LABEL_SPEC_HASH.into(), hash.clone());
    template.spec_hash = hash.clone();
    Ok((0..component.replicas.max(0))
        .map(|replica| {
            let mut spec = template.clone();
            // A stateful component keeps its name: it is replaced by stopping first.
            // A stateless one's name carries its hash, so the new container can run
            // beside the old one until it is healthy.
            spec.name = if component.stateful {
                format!("iaf-{}-{}", plan.tenant, component.name)
            } else {
                format!(
                    "iaf-{}-{}-{}-{replica}",
                    plan.tenant,
                    component.name,
                    &hash[..8]
                )
            };
            spec
        })
        .collect())
}

/// Expands the plan's environment: secrets from the store (generated, or set with
/// `iafactory secret set`), `$(VAR)` templates over the variables defined before them
/// (Kubernetes' rule).
fn environment(
    plan: &TenantPlan,
    component: &str,
    vars: &[EnvVarPlan],
    secrets: &Secrets,
) -> Result<Vec<String>, DesiredError> {
    let mut values: Vec<(String, String)> = Vec::new();
    for var in vars {
        let value = match &var.value {
            EnvValue::Literal { value } => value.clone(),
            EnvValue::Secret { secret, key } => secrets
                .get(secret)
                .and_then(|s| s.get(key))
                .cloned()
                .ok_or_else(|| {
                    let (tenant, component, secret, key) = (
                        plan.tenant.clone(),
                        component.to_owned(),
                        secret.clone(),
                        key.clone(),
                    );
                    // Generated ones exist once `Store::secrets` ran; the others are
                    // the person's to provide.
                    if generates(plan, &secret) {
                        DesiredError::MissingSecret {
                            tenant,
                            component,
                            secret,
                            key,
                        }
                    } else {
                        DesiredError::MissingUserSecret {
                            tenant,
                            component,
                            secret,
                            key,
                        }
                    }
                })?,
            EnvValue::Template { template } => {
                values.iter().fold(template.clone(), |text, (name, value)| {
                    text.replace(&format!("$({name})"), value)
                })
            }
        };
        values.retain(|(name, _)| name != &var.name);
        values.push((var.name.clone(), value));
    }
    Ok(values
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect())
}

/// Egress of an open tenant: its API, the only component that calls providers, goes
/// out through the tenant's egress proxy (`crate::egress`, run by `serve` on the
/// network's gateway address, which admits only the plan's providers). The network
/// stays internal. Its own components are reached directly (`NO_PROXY`). Returns the
/// host names to map to the gateway; a strict tenant, or an open one without
/// providers, gets none and no proxy: no way out.
fn egress_proxy(
    plan: &TenantPlan,
    component: &ComponentPlan,
    env: &mut Vec<String>,
) -> Vec<String> {
    if plan.egress.providers.is_empty() || component.kind != ComponentKind::Api {
        return Vec::new();
    }
    let proxy = format!(
        "http://{}:{}",
        crate::egress::PROXY_HOST,
        crate::egress::PROXY_PORT
    );
    let mut direct: Vec<&str> = plan.components.iter().map(|c| c.name.as_str()).collect();
    direct.extend(["localhost", "127.0.0.1", "::1"]);
    let direct = direct.join(",");
    // reqwest reads both spellings; other tools read only one or the other.
    for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        env.push(format!("{name}={proxy}"));
    }
    for name in ["NO_PROXY", "no_proxy"] {
        env.push(format!("{name}={direct}"));
    }
    vec![crate::egress::PROXY_HOST.to_owned()]
}

pub(crate) fn spec_hash(spec: &ContainerSpec) -> String {
    let bytes = serde_json::to_vec(spec).expect("a container spec serializes");
    hex::encode(&Sha256::digest(&bytes)[..10])
}

#[cfg(test)]
mod tests {
    use super::*;
    use iafactory_crds::PlatformConfig;
    use iafactory_crds::plan::plan;

    fn tenant(yaml: &str) -> iafactory_crds::Tenant {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn settings() -> RenderSettings {
        RenderSettings {
            instance: "test".into(),
            healthcheck_interval_ms: 1000,
        }
    }

    fn secrets_for(plan: &TenantPlan) -> Secrets {
        plan.secrets
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.keys
                        .iter()
                        .map(|k| (k.key.clone(), format!("{}-{}", s.name, k.key)))
                        .collect(),
                )
            })
            .collect()
    }

    const TENANT: &str =
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {}\n";

    #[test]
    fn renders_the_plan_as_an_internal_network_volumes_and_ordered_containers() {
        let plan = plan(&tenant(TENANT), &PlatformConfig::default()).unwrap();
        let state = tenant_state(&plan, &secrets_for(&plan), &settings()).unwrap();
        assert_eq!(state.network.name, "iaf-acme");
        assert!(state.network.internal);
        assert_eq!(state.volumes[0].name, "iaf-acme-postgres-data");
        let names: Vec<_> = state
            .containers
            .iter()
            .map(|c| c.component.as_str())
            .collect();
        assert_eq!(names.first(), Some(&"postgres"));
        assert_eq!(names.last(), Some(&"api"));
        let api = state.containers.last().unwrap();
        assert!(api.depends_on.contains(&"postgres".to_owned()));
        assert_eq!(api.labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(api.labels[LABEL_TENANT], "acme");
        assert_eq!(api.labels[LABEL_SPEC_HASH], api.spec_hash);
        assert!(api.name.starts_with("iaf-acme-api-"));
        // Requests are served by the non-owner login role, from its own URL; the
        // owner's credentials are only in the one-shot `migrate` step.
        assert!(api.env.iter().any(|e| e
            == "IAF_DATABASE_APP_URL=postgres://iafactory_app:postgres-app-credentials-password@postgres:5432/iafactory"));
        assert!(
            !api.env.iter().any(|e| e.starts_with("IAF_DATABASE_URL=")
                || e.contains("postgres-credentials-password")),
            "{:?}",
            api.env
        );
        let migrate = api.init.as_ref().expect("the API migrates first");
        assert_eq!(migrate.name, "iaf-acme-api-migrate");
        assert_eq!(migrate.cmd, ["migrate"]);
        assert!(migrate.env.iter().any(|e| e
            == "IAF_DATABASE_URL=postgres://iafactory:postgres-credentials-password@postgres:5432/iafactory"));
        let step = api.init_container(migrate);
        assert!(step.one_shot && step.aliases.is_empty() && step.healthcheck.is_none());
        assert_eq!(step.labels[LABEL_COMPONENT], "api-migrate");
        assert!(!step.labels.contains_key(LABEL_SPEC_HASH));
        assert_eq!(
            (step.image.as_str(), step.network.as_str()),
            (api.image.as_str(), "iaf-acme")
        );
        assert!(
            state
                .containers
                .iter()
                .filter(|c| c.component != "api")
                .all(|c| c.init.is_none())
        );
        assert!(api.memory_bytes > 0 && api.nano_cpus > 0);
        let db = &state.containers[0];
        assert_eq!(db.name, "iaf-acme-postgres");
        assert_eq!(db.user, "999:999");
        assert!(db.healthcheck.as_ref().unwrap().test[0] == "CMD");
        assert!(db.tmpfs.contains_key("/tmp"));
    }

    #[test]
    fn the_hash_is_stable_and_follows_the_image() {
        let config = PlatformConfig::default();
        let one = plan(&tenant(TENANT), &config).unwrap();
        let a = tenant_state(&one, &secrets_for(&one), &settings()).unwrap();
        let b = tenant_state(&one, &secrets_for(&one), &settings()).unwrap();
        assert_eq!(a, b);
        let mut other = config.clone();
        other.images.api.image = "iafactory/api:0.2.0".into();
        let two = plan(&tenant(TENANT), &other).unwrap();
        let c = tenant_state(&two, &secrets_for(&two), &settings()).unwrap();
        assert_eq!(a.containers[0].spec_hash, c.containers[0].spec_hash);
        assert_ne!(
            a.containers.last().unwrap().spec_hash,
            c.containers.last().unwrap().spec_hash
        );
    }

    const OPEN: &str = "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec:\n  sovereignty: open\n  llmProviders:\n  - {name: deepseek, kind: openai-compatible, baseUrl: \"https://api.deepseek.com/v1\", secretRef: {name: deepseek-key, key: apiKey}}\n";

    #[test]
    fn a_provider_key_comes_from_the_set_secrets_or_names_the_command_to_set_it() {
        let plan = plan(&tenant(OPEN), &PlatformConfig::default()).unwrap();
        let mut secrets = secrets_for(&plan);
        let needed = NeededSecret {
            tenant: "acme".into(),
            secret: "deepseek-key".into(),
            key: "apiKey".into(),
        };
        assert_eq!(user_secrets(&plan), std::slice::from_ref(&needed));
        assert_eq!(missing_user_secrets(&plan, &secrets), [needed]);
        let error = tenant_state(&plan, &secrets, &settings()).unwrap_err();
        assert!(matches!(error, DesiredError::MissingUserSecret { .. }));
        let message = error.to_string();
        assert!(
            message.contains("`iafactory secret set acme deepseek-key apiKey`"),
            "{message}"
        );
        assert!(!message.contains("bug"), "{message}");

        secrets.insert(
            "deepseek-key".into(),
            BTreeMap::from([("apiKey".into(), "sk-test".into())]),
        );
        assert!(missing_user_secrets(&plan, &secrets).is_empty());
        let state = tenant_state(&plan, &secrets, &settings()).unwrap();
        let api = state.containers.last().unwrap();
        assert!(
            api.env
                .iter()
                .any(|e| e == "IAF_PROVIDER_DEEPSEEK_API_KEY=sk-test"),
            "{:?}",
            api.env
        );
    }

    #[test]
    fn two_api_replicas_get_a_read_only_redis_on_the_tenant_network() {
        let config = PlatformConfig::default();
        let plan = plan(
            &tenant(
                "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {plan: pro, components: {api: {replicas: 2}}}\n",
            ),
            &config,
        )
        .unwrap();
        let state = tenant_state(&plan, &secrets_for(&plan), &settings()).unwrap();
        let redis: Vec<_> = state
            .containers
            .iter()
            .filter(|c| c.component == "redis")
            .collect();
        assert_eq!(redis.len(), 1);
        let redis = redis[0];
        assert!(redis.name.starts_with("iaf-acme-redis-"), "{}", redis.name);
        assert_eq!(redis.aliases, ["redis"]);
        assert_eq!(redis.user, "999:999");
        assert!(redis.read_only && redis.mounts.is_empty() && redis.tmpfs.is_empty());
        assert_eq!(redis.cmd[0], "--port 6379");
        assert_eq!(
            redis.healthcheck.as_ref().unwrap().test,
            ["CMD", "redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"]
        );
        assert_eq!(redis.memory_bytes, 256 * 1024 * 1024);
        let apis: Vec<_> = state
            .containers
            .iter()
            .filter(|c| c.component == "api")
            .collect();
        assert_eq!(apis.len(), 2);
        for api in apis {
            assert!(api.depends_on.contains(&"redis".to_owned()));
            assert!(
                api.env
                    .contains(&"IAF_REDIS_URL=redis://redis:6379".to_owned())
            );
        }
        let position = |component: &str| {
            state
                .containers
                .iter()
                .position(|c| c.component == component)
                .unwrap()
        };
        assert!(
            position("redis") < position("api"),
            "started before the API"
        );
    }

    #[test]
    fn only_an_open_tenants_api_goes_out_and_only_through_its_egress_proxy() {
        let config = PlatformConfig::default();
        let open = plan(&tenant(OPEN), &config).unwrap();
        let mut secrets = secrets_for(&open);
        secrets.insert(
            "deepseek-key".into(),
            BTreeMap::from([("apiKey".into(), "sk-test".into())]),
        );
        let state = tenant_state(&open, &secrets, &settings()).unwrap();
        assert!(
            state.network.internal,
            "the network stays without a route out"
        );
        for container in &state.containers {
            let proxied: Vec<&String> = container
                .env
                .iter()
                .filter(|e| e.to_ascii_uppercase().contains("PROXY="))
                .collect();
            if container.component == "api" {
                assert_eq!(container.gateway_hosts, ["iaf-egress"]);
                for name in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
                    let line = format!("{name}=http://iaf-egress:3128");
                    assert!(container.env.contains(&line), "{line}: {proxied:?}");
                }
                let direct = container
                    .env
                    .iter()
                    .find_map(|e| e.strip_prefix("NO_PROXY="))
                    .unwrap();
                for name in open.components.iter().map(|c| c.name.as_str()) {
                    assert!(direct.split(',').any(|d| d == name), "{name}: {direct}");
                }
                assert!(direct.split(',').any(|d| d == "127.0.0.1"), "{direct}");
            } else {
                assert!(container.gateway_hosts.is_empty(), "{}", container.name);
                assert!(proxied.is_empty(), "{}: {proxied:?}", container.name);
            }
        }

        // Strict: no proxy, no name for one, and the hash as before this field existed.
        let strict = plan(&tenant(TENANT), &config).unwrap();
        let state = tenant_state(&strict, &secrets_for(&strict), &settings()).unwrap();
        for container in &state.containers {
            assert!(container.gateway_hosts.is_empty());
            assert!(
                !container
                    .env
                    .iter()
                    .any(|e| e.to_ascii_uppercase().contains("PROXY")),
                "{:?}",
                container.env
            );
            let json = serde_json::to_string(container).unwrap();
            assert!(!json.contains("gateway_hosts"), "{json}");
        }
    }

    #[test]
    fn a_missing_secret_names_tenant_and_component() {
        let plan = plan(&tenant(TENANT), &PlatformConfig::default()).unwrap();
        let error = tenant_state(&plan, &Secrets::new(), &settings()).unwrap_err();
        assert!(
            error.to_string().contains("postgres of tenant \"acme\""),
            "{error}"
        );
    }
}

//! Build: from a [`TenantPlan`] to typed Kubernetes objects. Pure: no I/O, no clock,
//! no randomness (secret values are filled in at the apply edge), so the same plan
//! always gives byte-identical objects, which is what makes "nothing changed, write
//! nothing" decidable by a hash.

use std::collections::BTreeMap;

use iafactory_crds::config::BackupTarget;
use iafactory_crds::plan::{BACKUP_NAME, BackupPlan};
use iafactory_crds::plan::{
    ComponentKind, ComponentPlan, EnvValue, IngressPlan, ModelPreloadPlan, ModelSourcePlan,
    ProbeAction, ProbePlan, TenantPlan, TlsPlan, VolumeKind,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TCPSocketAction, Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::labels::{ANNOTATION_APPLIED_HASH, FIELD_MANAGER, LABEL_COMPONENT, LABEL_MANAGED_BY};

/// Where the GPU resource and its taint are named, for `gpu > 0`.
const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Private and link-local ranges that provider egress never opens up, so that
/// `sovereignty: open` cannot be used to reach the rest of the cluster or the LAN.
const PRIVATE_RANGES: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
];

/// What the build needs besides the plan: facts about the cluster and the owner.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The Tenant, as the controller owner of every namespaced child.
    pub owner: OwnerReference,
    /// Whether `monitoring.coreos.com/v1` ServiceMonitors exist (found at start-up).
    pub service_monitors: bool,
    /// The operator's own ServiceAccount, which each tenant namespace's RoleBinding
    /// grants the tenant role to.
    pub operator: OperatorAccount,
}

/// The ServiceAccount the operator runs as (the chart passes it through the
/// downward API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorAccount {
    pub name: String,
    pub namespace: String,
}

impl Default for OperatorAccount {
    /// The chart's defaults: `iafactory-operator` in `iafactory-system`.
    fn default() -> Self {
        OperatorAccount {
            name: "iafactory-operator".into(),
            namespace: "iafactory-system".into(),
        }
    }
}

/// One object to apply, kind-erased so that applying, hashing and RBAC checks treat
/// every kind alike.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub object: DynamicObject,
    /// Created when missing, never updated: a Job's template is immutable, and an
    /// upgrade must not re-run a model preload whose list did not change.
    pub create_only: bool,
}

impl Child {
    fn new<K>(mut typed: K) -> Self
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let resource = ApiResource::erase::<K>(&());
        let namespaced = typed.meta().namespace.is_some();
        let hash = applied_hash(&typed);
        typed
            .annotations_mut()
            .insert(ANNOTATION_APPLIED_HASH.into(), hash);
        let object =
            serde_json::from_value(serde_json::to_value(&typed).expect("typed objects serialise"))
                .expect("a typed object is a valid dynamic object");
        Child {
            resource,
            namespaced,
            object,
            create_only: false,
        }
    }

    fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }

    pub fn name(&self) -> String {
        self.object.name_any()
    }

    /// The hash recorded in the applied-hash annotation.
    pub fn hash(&self) -> &str {
        self.object
            .annotations()
            .get(ANNOTATION_APPLIED_HASH)
            .map_or("", String::as_str)
    }

    /// `Kind/name`, for logs, events and errors.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind, self.name())
    }
}

fn applied_hash<K: Serialize>(object: &K) -> String {
    let bytes = serde_json::to_vec(object).expect("typed objects serialise");
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// A Secret the apply edge creates once, with random values, and never overwrites.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretToCreate {
    /// Everything but `data`.
    pub template: k8s_openapi::api::core::v1::Secret,
    /// Keys and the number of random bytes each gets (written hex-encoded).
    pub keys: Vec<(String, usize)>,
}

/// Everything one Tenant becomes.
#[derive(Clone, Debug)]
pub struct TenantObjects {
    pub namespace: Child,
    /// The RoleBinding that lets the operator write in the namespace (the tenant role,
    /// [`crate::rbac::TENANT_ROLE`]): applied right after the namespace, before anything
    /// else in it, since without it every other write there is forbidden.
    pub access: Child,
    /// Applied in order: policy and limits first, so nothing runs unconfined.
    pub children: Vec<Child>,
    pub secrets: Vec<SecretToCreate>,
}

impl TenantObjects {
    pub fn all(&self) -> impl Iterator<Item = &Child> {
        [&self.namespace, &self.access]
            .into_iter()
            .chain(&self.children)
    }
}

/// Labels every object of the tenant carries, ours included.
fn base_labels(plan: &TenantPlan) -> BTreeMap<String, String> {
    let mut labels = plan.labels.clone();
    labels.insert(LABEL_MANAGED_BY.into(), FIELD_MANAGER.into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

fn component_labels(plan: &TenantPlan, component: &ComponentPlan) -> BTreeMap<String, String> {
    let mut labels = plan.component_labels(component);
    labels.insert(LABEL_MANAGED_BY.into(), FIELD_MANAGER.into());
    labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    labels
}

/// The pod selector of a component: stable across upgrades (no version label).
fn selector_labels(plan: &TenantPlan, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            iafactory_crds::plan::LABEL_TENANT.to_owned(),
            plan.tenant.clone(),
        ),
        (LABEL_COMPONENT.to_owned(), name.to_owned()),
    ])
}

fn meta(
    plan: &TenantPlan,
    ctx: &BuildContext,
    name: &str,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![ctx.owner.clone()]),
        ..ObjectMeta::default()
    }
}

pub fn build(plan: &TenantPlan, ctx: &BuildContext) -> TenantObjects {
    let mut children = vec![resource_quota(plan, ctx), limit_range(plan, ctx)];
    children.extend(network_policies(plan, ctx));
    for component in &plan.components {
        children.push(Child::new(ServiceAccount {
            metadata: meta(
                plan,
                ctx,
                &component.name,
                component_labels(plan, component),
            ),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }));
    }
    for component in &plan.components {
        children.extend(component_objects(plan, ctx, component));
    }
    if let Some(preload) = &plan.model_preload
        && let Some(job) = model_preload_job(plan, ctx, preload)
    {
        children.push(job);
    }
    if let Some(ingress) = &plan.ingress {
        children.push(ingress_object(plan, ctx, ingress));
    }
    if let Some(backup) = &plan.backup {
        children.extend(backup_objects(plan, ctx, backup));
    }
    if plan.monitoring.enabled && ctx.service_monitors {
        children.push(service_monitor(plan, ctx));
    }
    TenantObjects {
        namespace: namespace(plan),
        access: operator_access(plan, ctx),
        children,
        secrets: secrets(plan),
    }
}

fn namespace(plan: &TenantPlan) -> Child {
    let mut labels = base_labels(plan);
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    // A Namespace cannot have an owner: it is found again by its tenant label.
    Child::new(Namespace {
        metadata: ObjectMeta {
            name: Some(plan.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    })
}

/// The operator's write access to the tenant namespace: the tenant role, bound to its
/// own ServiceAccount in this namespace only.
pub fn operator_access(plan: &TenantPlan, ctx: &BuildContext) -> Child {
    Child::new(RoleBinding {
        metadata: meta(plan, ctx, crate::rbac::TENANT_BINDING, base_labels(plan)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: crate::rbac::TENANT_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: ctx.operator.name.clone(),
            namespace: Some(ctx.operator.namespace.clone()),
            api_group: None,
        }]),
    })
}

fn secrets(plan: &TenantPlan) -> Vec<SecretToCreate> {
    plan.secrets
        .iter()
        .map(|secret| SecretToCreate {
            // No owner reference: deleting a Tenant with `retention: Retain` must
            // keep the credentials that open its retained volumes.
            template: k8s_openapi::api::core::v1::Secret {
                metadata: ObjectMeta {
                    name: Some(secret.name.clone()),
                    namespace: Some(plan.namespace.clone()),
                    labels: Some(base_labels(plan)),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                ..Default::default()
            },
            keys: secret
                .keys
                .iter()
                .map(|k| (k.key.clone(), k.random_bytes))
                .collect(),
        })
        .collect()
}

fn quantity(value: impl Into<String>) -> Quantity {
    Quantity(value.into())
}

fn resource_quota(plan: &TenantPlan, ctx: &BuildContext) -> Child {
    let q = &plan.quota;
    let mut hard = BTreeMap::from([
        ("requests.cpu".to_owned(), q.requests_cpu.to_k8s()),
        ("requests.memory".to_owned(), q.requests_memory.to_k8s()),
        ("requests.storage".to_owned(), q.storage.to_k8s()),
        ("pods".to_owned(), quantity(q.pods.to_string())),
        (
            "persistentvolumeclaims".to_owned(),
            quantity(q.pvcs.to_string()),
        ),
    ]);
    hard.insert(
        format!("requests.{GPU_RESOURCE}"),
        quantity(q.gpus.to_string()),
    );
    Child::new(ResourceQuota {
        metadata: meta(plan, ctx, "tenant-quota", base_labels(plan)),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    })
}

fn cpu_memory(value: &iafactory_crds::config::CpuMemory) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), value.cpu.to_k8s()),
        ("memory".to_owned(), value.memory.to_k8s()),
    ])
}

fn limit_range(plan: &TenantPlan, ctx: &BuildContext) -> Child {
    let l = &plan.limit_range;
    Child::new(LimitRange {
        metadata: meta(plan, ctx, "tenant-limits", base_labels(plan)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(cpu_memory(&l.default_limit)),
                default_request: Some(cpu_memory(&l.default_request)),
                max: Some(cpu_memory(&l.max)),
                ..LimitRangeItem::default()
            }],
        }),
    })
}

fn namespace_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn tcp_port(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    }
}

fn policy(plan: &TenantPlan, ctx: &BuildContext, name: &str, spec: NetworkPolicySpec) -> Child {
    Child::new(NetworkPolicy {
        metadata: meta(plan, ctx, name, base_labels(plan)),
        spec: Some(spec),
    })
}

fn pods_of(plan: &TenantPlan, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(plan, component)),
        ..LabelSelector::default()
    }
}

fn network_policies(plan: &TenantPlan, ctx: &BuildContext) -> Vec<Child> {
    let everyone = LabelSelector::default();
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    };
    // Components that admit only some clients are left out of the namespace-wide
    // allowance (policies add up, so one that selected them would admit everyone);
    // each gets its own policy below.
    let restricted: Vec<&ComponentPlan> = plan
        .components
        .iter()
        .filter(|c| !c.clients.is_empty())
        .collect();
    // The backup job's pods get only what `backup_policy` admits.
    let mut confined: Vec<String> = restricted.iter().map(|c| c.name.clone()).collect();
    if plan.backup.is_some() {
        confined.push(BACKUP_NAME.to_owned());
    }
    // The API's pods too: the namespace reaches their public port only (in
    // `allow-api-ingress`), never the internal one, which only the operator and
    // monitoring reach. Their egress inside the namespace is `allow-api-egress`.
    let api = plan.component(ComponentKind::Api);
    if let Some(api) = api {
        confined.push(api.name.clone());
    }
    let unrestricted = if confined.is_empty() {
        everyone.clone()
    } else {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.to_owned(),
                operator: "NotIn".into(),
                values: Some(confined),
            }]),
            ..LabelSelector::default()
        }
    };
    let mut policies = vec![
        policy(
            plan,
            ctx,
            "default-deny",
            NetworkPolicySpec {
                pod_selector: Some(everyone.clone()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..NetworkPolicySpec::default()
            },
        ),
        policy(
            plan,
            ctx,
            "allow-same-namespace",
            NetworkPolicySpec {
                pod_selector: Some(unrestricted),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![same_namespace.clone()]),
                    ..NetworkPolicyIngressRule::default()
                }]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![same_namespace.clone()]),
                    ..NetworkPolicyEgressRule::default()
                }]),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            },
        ),
        policy(
            plan,
            ctx,
            "allow-dns",
            NetworkPolicySpec {
                pod_selector: Some(everyone),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "k8s-app".to_owned(),
                                "kube-dns".to_owned(),
                            )])),
                            ..LabelSelector::default()
                        }),
                        ..namespace_peer("kube-system")
                    }]),
                    ports: Some(
                        ["UDP", "TCP"]
                            .into_iter()
                            .map(|protocol| NetworkPolicyPort {
                                port: Some(IntOrString::Int(53)),
                                protocol: Some(protocol.into()),
                                ..NetworkPolicyPort::default()
                            })
                            .collect(),
                    ),
                }]),
                policy_types: Some(vec!["Egress".into()]),
                ..NetworkPolicySpec::default()
            },
        ),
    ];
    for component in restricted {
        policies.push(policy(
            plan,
            ctx,
            &format!("allow-{}-clients", component.name),
            NetworkPolicySpec {
                pod_selector: Some(pods_of(plan, &component.name)),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(
                        component
                            .clients
                            .iter()
                            .map(|client| NetworkPolicyPeer {
                                pod_selector: Some(pods_of(plan, client.name())),
                                ..NetworkPolicyPeer::default()
                            })
                            .collect(),
                    ),
                    ports: Some(component.ports.iter().map(|p| tcp_port(p.port)).collect()),
                }]),
                policy_types: Some(vec!["Ingress".into()]),
                ..NetworkPolicySpec::default()
            },
        ));
    }
    if let Some(api) = api {
        // The public port from the ingress controller and the tenant's own pods; the
        // internal one (`/internal/*`, `/metrics`) from the operator and monitoring
        // only.
        let internal = iafactory_crds::plan::API_INTERNAL_PORT_NAME;
        let (internal_ports, public_ports): (Vec<_>, Vec<_>) =
            api.ports.iter().partition(|p| p.name == internal);
        let rule = |namespaces: &[String], ports: Vec<&iafactory_crds::plan::PortPlan>| {
            NetworkPolicyIngressRule {
                from: Some(namespaces.iter().map(|ns| namespace_peer(ns)).collect()),
                ports: Some(ports.into_iter().map(|p| tcp_port(p.port)).collect()),
            }
        };
        let public = |from: Vec<NetworkPolicyPeer>| NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(public_ports.iter().map(|p| tcp_port(p.port)).collect()),
        };
        let mut rules = Vec::new();
        // An empty `from` would admit every source: no rule when no namespace is listed.
        if !plan.egress.api_ingress_from_namespaces.is_empty() {
            rules.push(public(
                plan.egress
                    .api_ingress_from_namespaces
                    .iter()
                    .map(|ns| namespace_peer(ns))
                    .collect(),
            ));
        }
        // The tenant's own pods: the public port, and no other.
        rules.push(public(vec![same_namespace.clone()]));
        if !internal_ports.is_empty() && !plan.egress.api_internal_from_namespaces.is_empty() {
            rules.push(rule(
                &plan.egress.api_internal_from_namespaces,
                internal_ports,
            ));
        }
        policies.push(policy(
            plan,
            ctx,
            "allow-api-ingress",
            NetworkPolicySpec {
                pod_selector: Some(pods_of(plan, &api.name)),
                ingress: Some(rules),
                policy_types: Some(vec!["Ingress".into()]),
                ..NetworkPolicySpec::default()
            },
        ));
        // What `allow-same-namespace` gave the API before it was confined: its stores,
        // its model server, Redis.
        policies.push(policy(
            plan,
            ctx,
            "allow-api-egress",
            NetworkPolicySpec {
                pod_selector: Some(pods_of(plan, &api.name)),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![same_namespace.clone()]),
                    ..NetworkPolicyEgressRule::default()
                }]),
                policy_types: Some(vec!["Egress".into()]),
                ..NetworkPolicySpec::default()
            },
        ));
        // Only under `sovereignty: open` does the plan list providers; each opens its
        // own addresses (or the public internet, never private ranges) on its port.
        if !plan.egress.providers.is_empty() {
            let rules = plan
                .egress
                .providers
                .iter()
                .map(|provider| NetworkPolicyEgressRule {
                    to: Some(if provider.cidrs.is_empty() {
                        vec![NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: "0.0.0.0/0".into(),
                                except: Some(
                                    PRIVATE_RANGES.iter().map(|r| (*r).to_owned()).collect(),
                                ),
                            }),
                            ..NetworkPolicyPeer::default()
                        }]
                    } else {
                        provider
                            .cidrs
                            .iter()
                            .map(|cidr| NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: cidr.clone(),
                                    except: None,
                                }),
                                ..NetworkPolicyPeer::default()
                            })
                            .collect()
                    }),
                    ports: Some(vec![tcp_port(provider.port)]),
                })
                .collect();
            policies.push(policy(
                plan,
                ctx,
                "allow-llm-providers",
                NetworkPolicySpec {
                    pod_selector: Some(pods_of(plan, &api.name)),
                    egress: Some(rules),
                    policy_types: Some(vec!["Egress".into()]),
                    ..NetworkPolicySpec::default()
                },
            ));
        }
    }
    if let Some(policy) = model_pull_policy(plan, ctx) {
        policies.push(policy);
    }
    policies
}

/// Egress for the model preload. The tenant's model server does the download (the
/// Job only asks it, `ollama pull` against `OLLAMA_HOST`), so the policy selects the
/// server's pods, for as long as the tenant has models to preload:
/// - the public registry (open tenants only): HTTPS to public addresses, never
///   private ranges;
/// - a site mirror: its addresses on its port, and nothing else;
/// - a bundle, or a strict tenant with no usable source: no policy, no packet out.
fn model_pull_policy(plan: &TenantPlan, ctx: &BuildContext) -> Option<Child> {
    let preload = plan.model_preload.as_ref()?;
    let ollama = plan.component(ComponentKind::Ollama)?;
    let (peers, port) = match &preload.source {
        ModelSourcePlan::Public => (
            vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: Some(PRIVATE_RANGES.iter().map(|r| (*r).to_owned()).collect()),
                }),
                ..NetworkPolicyPeer::default()
            }],
            443,
        ),
        ModelSourcePlan::Mirror { cidrs, port, .. } => (
            cidrs
                .iter()
                .map(|cidr| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: cidr.clone(),
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                })
                .collect(),
            *port,
        ),
        ModelSourcePlan::Bundle { .. } | ModelSourcePlan::Forbidden { .. } => return None,
    };
    Some(policy(
        plan,
        ctx,
        "allow-model-pull",
        NetworkPolicySpec {
            pod_selector: Some(pods_of(plan, &ollama.name)),
            egress: Some(vec![NetworkPolicyEgressRule {
                to: Some(peers),
                ports: Some(vec![tcp_port(port)]),
            }]),
            policy_types: Some(vec!["Egress".into()]),
            ..NetworkPolicySpec::default()
        },
    ))
}

fn probe(plan: &ProbePlan) -> Probe {
    let mut probe = Probe {
        period_seconds: Some(plan.period_seconds),
        timeout_seconds: Some(plan.timeout_seconds),
        failure_threshold: Some(plan.failure_threshold),
        ..Probe::default()
    };
    match &plan.action {
        ProbeAction::Http { path, port } => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(i32::from(*port)),
                ..HTTPGetAction::default()
            });
        }
        ProbeAction::Tcp { port } => {
            probe.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(*port)),
                ..TCPSocketAction::default()
            });
        }
        ProbeAction::Exec { command } => {
            probe.exec = Some(ExecAction {
                command: Some(command.clone()),
            });
        }
    }
    probe
}

fn env_var(name: &str, value: &EnvValue) -> EnvVar {
    match value {
        EnvValue::Literal { value } => EnvVar {
            name: name.to_owned(),
            value: Some(value.clone()),
            ..EnvVar::default()
        },
        // Kubernetes expands `$(VAR)` over the variables defined before it.
        EnvValue::Template { template } => EnvVar {
            name: name.to_owned(),
            value: Some(template.clone()),
            ..EnvVar::default()
        },
        EnvValue::Secret { secret, key } => EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    }
}

fn restricted_container_security(read_only_root_filesystem: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(read_only_root_filesystem),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

fn restricted_pod_security(
    run_as_user: i64,
    run_as_group: i64,
    fs_group: i64,
) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as_user),
        run_as_group: Some(run_as_group),
        fs_group: Some(fs_group),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

fn pvc_name(component: &ComponentPlan, volume: &str) -> String {
    format!("{}-{}", component.name, volume)
}

fn pod_template(
    plan: &TenantPlan,
    ctx: &BuildContext,
    component: &ComponentPlan,
) -> PodTemplateSpec {
    let mut requests = cpu_memory(&component.resources.requests);
    let mut limits = cpu_memory(&component.resources.limits);
    let mut tolerations = None;
    if component.gpu > 0 {
        let gpus = quantity(component.gpu.to_string());
        requests.insert(GPU_RESOURCE.into(), gpus.clone());
        limits.insert(GPU_RESOURCE.into(), gpus);
        tolerations = Some(vec![Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
    }
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for volume in &component.volumes {
        mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: volume.mount_path.clone(),
            ..VolumeMount::default()
        });
        match &volume.kind {
            VolumeKind::Scratch => volumes.push(Volume {
                name: volume.name.clone(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }),
            // A StatefulSet gets it from its claim templates.
            VolumeKind::Persistent { .. } if component.stateful => {}
            VolumeKind::Persistent { .. } => volumes.push(Volume {
                name: volume.name.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name(component, &volume.name),
                    read_only: None,
                }),
                ..Volume::default()
            }),
        }
    }
    let mut labels = component_labels(plan, component);
    labels.insert(
        iafactory_crds::plan::LABEL_SPEC_HASH.into(),
        component.spec_hash.clone(),
    );
    let mut annotations = BTreeMap::new();
    if plan.monitoring.enabled
        && !ctx.service_monitors
        && let Some(target) = plan
            .monitoring
            .targets
            .iter()
            .find(|t| t.component == component.kind)
        && let Some(port) = component.port(&target.port)
    {
        annotations.insert("prometheus.io/scrape".to_owned(), "true".to_owned());
        annotations.insert("prometheus.io/port".to_owned(), port.to_string());
        annotations.insert("prometheus.io/path".to_owned(), target.path.clone());
    }
    let sec = &component.security;
    // The API's `migrate` step: the only container given the database owner's
    // credentials; it must succeed before the serving container starts.
    let init_containers = component.init.as_ref().map(|init| {
        vec![Container {
            name: init.name.clone(),
            image: Some(component.image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            args: Some(init.args.clone()),
            env: Some(
                init.env
                    .iter()
                    .map(|e| env_var(&e.name, &e.value))
                    .collect(),
            ),
            resources: Some(ResourceRequirements {
                requests: Some(requests.clone()),
                limits: Some(limits.clone()),
                ..ResourceRequirements::default()
            }),
            security_context: Some(restricted_container_security(sec.read_only_root_filesystem)),
            ..Container::default()
        }]
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(component.name.clone()),
            automount_service_account_token: Some(false),
            security_context: Some(restricted_pod_security(
                sec.run_as_user,
                sec.run_as_group,
                sec.fs_group,
            )),
            tolerations,
            init_containers,
            containers: vec![Container {
                name: component.name.clone(),
                image: Some(component.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                args: (!component.args.is_empty()).then(|| component.args.clone()),
                env: Some(
                    component
                        .env
                        .iter()
                        .map(|e| env_var(&e.name, &e.value))
                        .collect(),
                ),
                ports: Some(
                    component
                        .ports
                        .iter()
                        .map(|p| ContainerPort {
                            name: Some(p.name.clone()),
                            container_port: i32::from(p.port),
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        })
                        .collect(),
                ),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: Some(limits),
                    ..ResourceRequirements::default()
                }),
                startup_probe: component.probes.startup.as_ref().map(probe),
                readiness_probe: component.probes.readiness.as_ref().map(probe),
                liveness_probe: component.probes.liveness.as_ref().map(probe),
                security_context: Some(restricted_container_security(
                    sec.read_only_root_filesystem,
                )),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                ..Container::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    }
}

fn claim_spec(size: &iafactory_crds::Quantity) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".into()]),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".to_owned(), size.to_k8s())])),
            ..VolumeResourceRequirements::default()
        }),
        ..PersistentVolumeClaimSpec::default()
    }
}

fn component_objects(
    plan: &TenantPlan,
    ctx: &BuildContext,
    component: &ComponentPlan,
) -> Vec<Child> {
    let labels = component_labels(plan, component);
    // Claim templates are immutable: their labels must not carry the version.
    let mut claim_labels = base_labels(plan);
    claim_labels.extend(selector_labels(plan, &component.name));
    let selector = LabelSelector {
        match_labels: Some(selector_labels(plan, &component.name)),
        ..LabelSelector::default()
    };
    let template = pod_template(plan, ctx, component);
    let mut objects = Vec::new();
    if component.stateful {
        let claims: Vec<PersistentVolumeClaim> = component
            .volumes
            .iter()
            .filter_map(|v| match &v.kind {
                VolumeKind::Persistent { size } => Some(PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(v.name.clone()),
                        labels: Some(claim_labels.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claim_spec(size)),
                    ..PersistentVolumeClaim::default()
                }),
                VolumeKind::Scratch => None,
            })
            .collect();
        objects.push(Child::new(StatefulSet {
            metadata: meta(plan, ctx, &component.name, labels.clone()),
            spec: Some(StatefulSetSpec {
                replicas: Some(component.replicas),
                service_name: Some(component.name.clone()),
                selector,
                template,
                volume_claim_templates: (!claims.is_empty()).then_some(claims),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }));
    } else {
        for volume in &component.volumes {
            if let VolumeKind::Persistent { size } = &volume.kind {
                objects.push(Child::new(PersistentVolumeClaim {
                    metadata: meta(
                        plan,
                        ctx,
                        &pvc_name(component, &volume.name),
                        labels.clone(),
                    ),
                    spec: Some(claim_spec(size)),
                    status: None,
                }));
            }
        }
        objects.push(Child::new(Deployment {
            metadata: meta(plan, ctx, &component.name, labels.clone()),
            spec: Some(DeploymentSpec {
                replicas: Some(component.replicas),
                selector: selector.clone(),
                template,
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    ..DeploymentStrategy::default()
                }),
                ..DeploymentSpec::default()
            }),
            status: None,
        }));
        // One replica cannot be protected without blocking node drains forever.
        if component.replicas > 1 {
            objects.push(Child::new(PodDisruptionBudget {
                metadata: meta(plan, ctx, &component.name, labels.clone()),
                spec: Some(PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(1)),
                    selector: Some(selector),
                    ..PodDisruptionBudgetSpec::default()
                }),
                status: None,
            }));
        }
    }
    let mut service_meta = meta(plan, ctx, &component.name, labels);
    if plan.monitoring.enabled
        && !ctx.service_monitors
        && let Some(target) = plan
            .monitoring
            .targets
            .iter()
            .find(|t| t.component == component.kind)
        && let Some(port) = component.port(&target.port)
    {
        service_meta.annotations = Some(BTreeMap::from([
            ("prometheus.io/scrape".to_owned(), "true".to_owned()),
            ("prometheus.io/port".to_owned(), port.to_string()),
            ("prometheus.io/path".to_owned(), target.path.clone()),
        ]));
    }
    objects.push(Child::new(Service {
        metadata: service_meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(plan, &component.name)),
            ports: Some(
                component
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: i32::from(p.port),
                        target_port: Some(IntOrString::String(p.name.clone())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }));
    objects
}

/// The Job that preloads the tenant's models, by its source (none when the source is
/// forbidden). Model names arrive as positional arguments: none is ever parsed by a
/// shell as code.
fn model_preload_job(
    plan: &TenantPlan,
    ctx: &BuildContext,
    preload: &ModelPreloadPlan,
) -> Option<Child> {
    use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAffinityTerm};

    let ollama = plan.component(ComponentKind::Ollama);
    let security = ollama.map(|o| o.security.clone());
    let (uid, gid, fs_group) = security.map_or((65532, 65532, 65532), |s| {
        (s.run_as_user, s.run_as_group, s.fs_group)
    });
    let mut labels = base_labels(plan);
    labels.insert("app.kubernetes.io/component".into(), "model-preload".into());
    labels.extend(selector_labels(plan, "model-preload"));
    let mut env = Vec::new();
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }];
    let mut affinity = None;
    let ollama_host = EnvVar {
        name: "OLLAMA_HOST".into(),
        value: Some(preload.ollama_url.clone()),
        ..EnvVar::default()
    };
    let (script, arguments): (&str, Vec<String>) = match &preload.source {
        ModelSourcePlan::Forbidden { .. } => return None,
        // The tenant's model server downloads; the Job asks it to.
        ModelSourcePlan::Public => {
            env.push(ollama_host);
            (
                r#"for model in "$@"; do echo "pulling $model"; ollama pull "$model" || exit 1; done"#,
                preload.models.clone(),
            )
        }
        // Pulled from the mirror under the mirror's name, then named as the tenant
        // wrote it (what the API asks for).
        ModelSourcePlan::Mirror {
            registry, insecure, ..
        } => {
            env.push(ollama_host);
            (
                if *insecure {
                    r#"while [ $# -gt 1 ]; do echo "pulling $1 as $2"; ollama pull --insecure "$1" && ollama cp "$1" "$2" || exit 1; shift 2; done"#
                } else {
                    r#"while [ $# -gt 1 ]; do echo "pulling $1 as $2"; ollama pull "$1" && ollama cp "$1" "$2" || exit 1; shift 2; done"#
                },
                preload
                    .models
                    .iter()
                    .flat_map(|model| {
                        [
                            iafactory_crds::plan::mirror_reference(registry, model),
                            model.clone(),
                        ]
                    })
                    .collect(),
            )
        }
        // No network: every blob of the bundle is checked against its name, every
        // listed model must be in it, then the directory is copied into the model
        // server's volume (on the server's node: the volume is ReadWriteOnce).
        ModelSourcePlan::Bundle { claim, path } => {
            let ollama = ollama?;
            let models_volume = ollama
                .volumes
                .iter()
                .find(|v| matches!(v.kind, VolumeKind::Persistent { .. }))?;
            mounts.push(VolumeMount {
                name: "bundle".into(),
                mount_path: "/bundle".into(),
                sub_path: (!path.is_empty()).then(|| path.clone()),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            mounts.push(VolumeMount {
                name: "models".into(),
                mount_path: "/models".into(),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "bundle".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
            volumes.push(Volume {
                name: "models".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    // The StatefulSet's claim of its only replica.
                    claim_name: format!("{}-{}-0", models_volume.name, ollama.name),
                    read_only: None,
                }),
                ..Volume::default()
            });
            affinity = Some(Affinity {
                pod_affinity: Some(PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(pods_of(plan, &ollama.name)),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..PodAffinityTerm::default()
                        },
                    ]),
                    ..PodAffinity::default()
                }),
                ..Affinity::default()
            });
            (
                r#"cd /bundle || exit 1
for blob in blobs/sha256-*; do
  [ "sha256-$(sha256sum "$blob" | cut -d ' ' -f 1)" = "${blob#blobs/}" ] || { echo "corrupt blob $blob in the bundle"; exit 1; }
done
for manifest in "$@"; do
  [ -f "$manifest" ] || { echo "the bundle has no $manifest"; exit 1; }
done
cp -R manifests blobs /models/ && echo "copied $# model(s) from the bundle""#,
                preload
                    .models
                    .iter()
                    .map(|model| iafactory_crds::plan::ollama_manifest_path(model))
                    .collect(),
            )
        }
    };
    env.push(EnvVar {
        name: "HOME".into(),
        value: Some("/tmp".into()),
        ..EnvVar::default()
    });
    let mut args = vec!["-c".to_owned(), script.to_owned(), "preload".to_owned()];
    args.extend(arguments);
    Some(
        Child::new(Job {
            metadata: meta(plan, ctx, &preload.name, labels.clone()),
            spec: Some(JobSpec {
                backoff_limit: Some(6),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("OnFailure".into()),
                        automount_service_account_token: Some(false),
                        security_context: Some(restricted_pod_security(uid, gid, fs_group)),
                        affinity,
                        containers: vec![Container {
                            name: "pull".into(),
                            image: Some(preload.image.clone()),
                            image_pull_policy: Some("IfNotPresent".into()),
                            command: Some(vec!["/bin/sh".into()]),
                            args: Some(args),
                            env: Some(env),
                            security_context: Some(restricted_container_security(true)),
                            volume_mounts: Some(mounts),
                            resources: Some(ResourceRequirements {
                                requests: Some(cpu_memory(&plan.limit_range.default_request)),
                                limits: Some(cpu_memory(&plan.limit_range.default_request)),
                                ..ResourceRequirements::default()
                            }),
                            ..Container::default()
                        }],
                        volumes: Some(volumes),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        })
        .create_only(),
    )
}

/// Where the backup volume is mounted in the backup job's pods.
pub const BACKUP_DIR: &str = "/backups";
/// The PersistentVolumeClaim the backups are written to.
pub const BACKUP_CLAIM: &str = "backups";

/// The backup job's script, for the busybox shell of the tenant's database image
/// (images/postgres: PostgreSQL's client tools, a static busybox). Each run writes
/// `$BACKUP_DIR/<UTC timestamp>/` (`postgres.dump`, pg_dump's custom format, one
/// snapshot; `qdrant.snapshot` for Qdrant tenants) through a `.partial-` directory
/// renamed at the end, so a failed run never counts as a backup; then it keeps the
/// `$RETENTION` newest and removes the rest.
pub const BACKUP_SCRIPT: &str = r#"set -eu
umask 077
dir="$BACKUP_DIR"
stamp="$(busybox date -u +%Y%m%dT%H%M%SZ)"
work="$dir/.partial-$stamp"
rm -rf "$dir"/.partial-*
mkdir -p "$work"
pg_dump --format=custom --no-owner --file="$work/postgres.dump"
if [ -n "${QDRANT_URL:-}" ]; then
  reply="$(busybox wget -q -O - --header "api-key: $QDRANT_API_KEY" --post-data '' "$QDRANT_URL/snapshots?wait=true")"
  name="$(printf '%s' "$reply" | busybox sed -n 's/.*"name":"\([^"]*\)".*/\1/p')"
  if [ -z "$name" ]; then echo "the Qdrant snapshot failed: $reply" >&2; exit 1; fi
  busybox wget -q -O "$work/qdrant.snapshot" --header "api-key: $QDRANT_API_KEY" "$QDRANT_URL/snapshots/$name"
  # busybox wget cannot send DELETE: the request that frees Qdrant's copy is written out.
  server="${QDRANT_URL#http://}"
  printf 'DELETE /snapshots/%s HTTP/1.0\r\nHost: %s\r\napi-key: %s\r\n\r\n' "$name" "$server" "$QDRANT_API_KEY" \
    | busybox nc "${server%:*}" "${server##*:}" >/dev/null
fi
busybox mv "$work" "$dir/$stamp"
echo "wrote the backup $dir/$stamp"
set -- $(busybox ls -1 "$dir" | busybox grep -E '^[0-9]{8}T[0-9]{6}Z$' | busybox sort)
extra=$(($# - RETENTION))
while [ "$extra" -gt 0 ]; do
  rm -rf "${dir:?}/$1"
  echo "removed the old backup $1"
  shift
  extra=$((extra - 1))
done
"#;

fn literal_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The backup: its volume, a CronJob running [`BACKUP_SCRIPT`] on the tenant's
/// schedule and timezone, and the NetworkPolicy that lets its pods reach the
/// database (and Qdrant) and nothing else.
fn backup_objects(plan: &TenantPlan, ctx: &BuildContext, backup: &BackupPlan) -> Vec<Child> {
    let mut labels = base_labels(plan);
    labels.insert("app.kubernetes.io/component".into(), BACKUP_NAME.into());
    labels.extend(selector_labels(plan, BACKUP_NAME));
    let mut objects = Vec::new();
    let BackupTarget::Pvc {
        size,
        storage_class,
    } = &backup.target
    else {
        // PlatformConfig::extract refuses every other target.
        unreachable!("only the pvc backup target is built");
    };
    objects.push(Child::new(PersistentVolumeClaim {
        metadata: meta(plan, ctx, BACKUP_CLAIM, labels.clone()),
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: storage_class.clone(),
            ..claim_spec(size)
        }),
        status: None,
    }));
    let secret = |name: &str, secret: &str, key: &str| {
        env_var(
            name,
            &EnvValue::Secret {
                secret: secret.to_owned(),
                key: key.to_owned(),
            },
        )
    };
    let database = plan.component(ComponentKind::Database);
    let mut env = vec![
        literal_env(
            "PGHOST",
            database.map_or(ComponentKind::Database.name(), |d| d.name.as_str()),
        ),
        literal_env(
            "PGPORT",
            database
                .and_then(|d| d.ports.first())
                .map_or(5432, |p| p.port)
                .to_string(),
        ),
        literal_env("PGUSER", iafactory_crds::plan::DATABASE_USER),
        literal_env("PGDATABASE", iafactory_crds::plan::DATABASE_NAME),
        secret(
            "PGPASSWORD",
            iafactory_crds::plan::SECRET_DATABASE,
            "password",
        ),
        literal_env("HOME", "/tmp"),
        literal_env("TZ", backup.timezone.clone()),
        literal_env("BACKUP_DIR", BACKUP_DIR),
        literal_env("RETENTION", backup.retention.to_string()),
    ];
    if let Some(url) = &backup.qdrant_url {
        env.push(literal_env("QDRANT_URL", url.clone()));
        env.push(secret(
            "QDRANT_API_KEY",
            iafactory_crds::plan::SECRET_QDRANT,
            "apiKey",
        ));
    }
    let pod = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            security_context: Some(restricted_pod_security(backup.uid, backup.uid, backup.uid)),
            containers: vec![Container {
                name: BACKUP_NAME.into(),
                image: Some(backup.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    BACKUP_SCRIPT.into(),
                    BACKUP_NAME.into(),
                ]),
                env: Some(env),
                security_context: Some(restricted_container_security(true)),
                volume_mounts: Some(vec![
                    VolumeMount {
                        name: BACKUP_CLAIM.into(),
                        mount_path: BACKUP_DIR.into(),
                        ..VolumeMount::default()
                    },
                    VolumeMount {
                        name: "tmp".into(),
                        mount_path: "/tmp".into(),
                        ..VolumeMount::default()
                    },
                ]),
                resources: Some(ResourceRequirements {
                    requests: Some(cpu_memory(&plan.limit_range.default_request)),
                    limits: Some(cpu_memory(&plan.limit_range.default_limit)),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            volumes: Some(vec![
                Volume {
                    name: BACKUP_CLAIM.into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: BACKUP_CLAIM.into(),
                        read_only: None,
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
    };
    objects.push(Child::new(CronJob {
        metadata: meta(plan, ctx, BACKUP_NAME, labels.clone()),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            time_zone: Some(backup.timezone.clone()),
            // A slow backup is not overlapped by the next one.
            concurrency_policy: Some("Forbid".into()),
            // A missed tick (the controller was down) still runs within the interval.
            starting_deadline_seconds: Some(
                i64::try_from(backup.interval_seconds.min(86_400)).unwrap_or(86_400),
            ),
            suspend: Some(plan.suspended),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    template: pod,
                    ..JobSpec::default()
                }),
            },
        }),
        status: None,
    }));
    objects.push(backup_policy(plan, ctx, backup));
    objects
}

/// The backup pods reach the database (and Qdrant) on their ports, and DNS
/// (`allow-dns`); nothing reaches them.
fn backup_policy(plan: &TenantPlan, ctx: &BuildContext, backup: &BackupPlan) -> Child {
    let mut to = Vec::new();
    for kind in [ComponentKind::Database, ComponentKind::VectorStore] {
        let Some(component) = plan.component(kind) else {
            continue;
        };
        if kind == ComponentKind::VectorStore && backup.qdrant_url.is_none() {
            continue;
        }
        let ports: Vec<NetworkPolicyPort> = match kind {
            // Qdrant's snapshots are on its HTTP port only.
            ComponentKind::VectorStore => component
                .ports
                .iter()
                .filter(|p| p.name == "http")
                .map(|p| tcp_port(p.port))
                .collect(),
            _ => component.ports.iter().map(|p| tcp_port(p.port)).collect(),
        };
        to.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(pods_of(plan, &component.name)),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(ports),
        });
    }
    policy(
        plan,
        ctx,
        "allow-backup",
        NetworkPolicySpec {
            pod_selector: Some(pods_of(plan, BACKUP_NAME)),
            egress: Some(to),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..NetworkPolicySpec::default()
        },
    )
}

fn ingress_object(plan: &TenantPlan, ctx: &BuildContext, ingress: &IngressPlan) -> Child {
    let mut metadata = meta(plan, ctx, "api", base_labels(plan));
    let tls = match &ingress.tls {
        TlsPlan::Acme { issuer, secret } => {
            metadata.annotations = Some(BTreeMap::from([(
                "cert-manager.io/cluster-issuer".to_owned(),
                issuer.clone(),
            )]));
            Some(secret.clone())
        }
        TlsPlan::Secret { secret } => Some(secret.clone()),
        TlsPlan::None => None,
    };
    Child::new(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class.clone(),
            tls: tls.map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![ingress.host.clone()]),
                    secret_name: Some(secret),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(ingress.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: ingress.service.clone(),
                                port: Some(ServiceBackendPort {
                                    number: Some(i32::from(ingress.port)),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    })
}

/// `monitoring.coreos.com/v1`, which k8s-openapi does not type.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

fn service_monitor(plan: &TenantPlan, ctx: &BuildContext) -> Child {
    let resource = service_monitor_resource();
    let endpoints: Vec<serde_json::Value> = plan
        .monitoring
        .targets
        .iter()
        .map(|t| {
            serde_json::json!({
                "port": t.port,
                "path": t.path,
                "interval": "30s",
                // Dashboards and alerts group by tenant.
                "relabelings": [{ "action": "replace", "targetLabel": "tenant", "replacement": plan.tenant }],
            })
        })
        .collect();
    let mut object = DynamicObject::new("tenant", &resource).within(&plan.namespace);
    object.metadata = meta(plan, ctx, "tenant", base_labels(plan));
    object.data = serde_json::json!({
        "spec": {
            "selector": { "matchLabels": { iafactory_crds::plan::LABEL_TENANT: plan.tenant } },
            "namespaceSelector": { "matchNames": [plan.namespace] },
            "endpoints": endpoints,
        }
    });
    let hash = applied_hash(&object);
    object
        .annotations_mut()
        .insert(ANNOTATION_APPLIED_HASH.into(), hash);
    Child {
        resource,
        namespaced: true,
        object,
        create_only: false,
    }
}

/// Kinds the operator deletes when a Tenant is retained: everything that runs or
/// routes, never what holds data (PVCs, Secrets) or the namespace itself.
pub fn workload_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<Ingress>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
    ]
}

/// Every namespaced kind the build can produce, for orphan collection and RBAC.
pub fn owned_kinds(service_monitors: bool) -> Vec<ApiResource> {
    let mut kinds = vec![
        ApiResource::erase::<ResourceQuota>(&()),
        ApiResource::erase::<LimitRange>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
        ApiResource::erase::<Ingress>(&()),
        ApiResource::erase::<RoleBinding>(&()),
    ];
    if service_monitors {
        kinds.push(service_monitor_resource());
    }
    kinds
}

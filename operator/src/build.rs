//! Build: from a [`TenantPlan`] to typed Kubernetes objects. Pure: no I/O, no clock,
//! no randomness (secret values are filled in at the apply edge), so the same plan
//! always gives byte-identical objects, which is what makes "nothing changed, write
//! nothing" decidable by a hash.

use std::collections::BTreeMap;

use iafactory_crds::plan::{
    ComponentKind, ComponentPlan, EnvValue, IngressPlan, ModelPreloadPlan, ProbeAction, ProbePlan,
    TenantPlan, TlsPlan, VolumeKind,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
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
    /// Applied in order: policy and limits first, so nothing runs unconfined.
    pub children: Vec<Child>,
    pub secrets: Vec<SecretToCreate>,
}

impl TenantObjects {
    pub fn all(&self) -> impl Iterator<Item = &Child> {
        std::iter::once(&self.namespace).chain(&self.children)
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
    if let Some(preload) = &plan.model_preload {
        children.push(model_preload_job(plan, ctx, preload));
    }
    if let Some(ingress) = &plan.ingress {
        children.push(ingress_object(plan, ctx, ingress));
    }
    if plan.monitoring.enabled && ctx.service_monitors {
        children.push(service_monitor(plan, ctx));
    }
    TenantObjects {
        namespace: namespace(plan),
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
    let unrestricted = if restricted.is_empty() {
        everyone.clone()
    } else {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.to_owned(),
                operator: "NotIn".into(),
                values: Some(restricted.iter().map(|c| c.name.clone()).collect()),
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
                    to: Some(vec![same_namespace]),
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
    if let Some(api) = plan.component(ComponentKind::Api) {
        let ports: Vec<NetworkPolicyPort> = api.ports.iter().map(|p| tcp_port(p.port)).collect();
        policies.push(policy(
            plan,
            ctx,
            "allow-api-ingress",
            NetworkPolicySpec {
                pod_selector: Some(pods_of(plan, &api.name)),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(
                        plan.egress
                            .api_ingress_from_namespaces
                            .iter()
                            .map(|ns| namespace_peer(ns))
                            .collect(),
                    ),
                    ports: Some(ports),
                }]),
                policy_types: Some(vec!["Ingress".into()]),
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
    // Pulling models downloads weights; no tenant data leaves. Only the preload Job
    // gets HTTPS out, and only while it runs.
    if plan.model_preload.is_some() {
        policies.push(policy(
            plan,
            ctx,
            "allow-model-pull",
            NetworkPolicySpec {
                pod_selector: Some(pods_of(plan, "model-preload")),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "0.0.0.0/0".into(),
                            except: Some(PRIVATE_RANGES.iter().map(|r| (*r).to_owned()).collect()),
                        }),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![tcp_port(443)]),
                }]),
                policy_types: Some(vec!["Egress".into()]),
                ..NetworkPolicySpec::default()
            },
        ));
    }
    policies
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

fn model_preload_job(plan: &TenantPlan, ctx: &BuildContext, preload: &ModelPreloadPlan) -> Child {
    let ollama = plan.component(ComponentKind::Ollama);
    let security = ollama.map(|o| o.security.clone());
    let (uid, gid, fs_group) = security.map_or((65532, 65532, 65532), |s| {
        (s.run_as_user, s.run_as_group, s.fs_group)
    });
    let mut labels = base_labels(plan);
    labels.insert("app.kubernetes.io/component".into(), "model-preload".into());
    labels.extend(selector_labels(plan, "model-preload"));
    // The models arrive as positional arguments: no model name is ever parsed by a
    // shell as code.
    let mut args = vec![
        "-c".to_owned(),
        r#"for model in "$@"; do echo "pulling $model"; ollama pull "$model" || exit 1; done"#
            .to_owned(),
        "preload".to_owned(),
    ];
    args.extend(preload.models.iter().cloned());
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
                    containers: vec![Container {
                        name: "pull".into(),
                        image: Some(preload.image.clone()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        command: Some(vec!["/bin/sh".into()]),
                        args: Some(args),
                        env: Some(vec![
                            EnvVar {
                                name: "OLLAMA_HOST".into(),
                                value: Some(preload.ollama_url.clone()),
                                ..EnvVar::default()
                            },
                            EnvVar {
                                name: "HOME".into(),
                                value: Some("/tmp".into()),
                                ..EnvVar::default()
                            },
                        ]),
                        security_context: Some(restricted_container_security(true)),
                        volume_mounts: Some(vec![VolumeMount {
                            name: "tmp".into(),
                            mount_path: "/tmp".into(),
                            ..VolumeMount::default()
                        }]),
                        resources: Some(ResourceRequirements {
                            requests: Some(cpu_memory(&plan.limit_range.default_request)),
                            limits: Some(cpu_memory(&plan.limit_range.default_request)),
                            ..ResourceRequirements::default()
                        }),
                        ..Container::default()
                    }],
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
    .create_only()
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
        ApiResource::erase::<Ingress>(&()),
    ];
    if service_monitors {
        kinds.push(service_monitor_resource());
    }
    kinds
}

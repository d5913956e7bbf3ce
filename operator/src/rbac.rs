//! The operator's least-privilege RBAC, in one place: `config/rbac/` is generated from
//! it (a test fails on drift), the chart renders those files, and tests check that
//! everything the operator builds, watches or writes is covered and nothing more is
//! asked.
//!
//! Two ClusterRoles:
//! - [`CLUSTER_ROLE`], bound cluster-wide (the chart's ClusterRoleBinding): the
//!   custom resources, reading the kinds the operator watches, creating namespaces,
//!   and binding [`TENANT_ROLE`] with a RoleBinding. No Secret is listed or watched,
//!   and no workload is written, in any namespace.
//! - [`TENANT_ROLE`], never bound cluster-wide: the operator binds it to its own
//!   ServiceAccount in each tenant namespace it creates, by the RoleBinding
//!   [`TENANT_BINDING`] that it applies right after the Namespace, before anything
//!   else there. Every workload, Service, NetworkPolicy and Secret write happens
//!   through it, so only in those namespaces.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The operator's own ClusterRole (the chart names it after the release).
pub const CLUSTER_ROLE: &str = "iafactory-operator";
/// The ClusterRole the operator binds in each tenant namespace; a fixed name, since
/// the operator's ClusterRole may `bind` this one only.
pub const TENANT_ROLE: &str = "iafactory-tenant-workloads";
/// The RoleBinding of [`TENANT_ROLE`] to the operator in each tenant namespace.
pub const TENANT_BINDING: &str = "iafactory-operator";

const READ: &[&str] = &["get", "list", "watch"];
/// Server-side apply creates with `patch`, and the API server also checks `create`.
const WRITE: &[&str] = &["create", "patch", "delete"];

/// One rule: an API group, its resources, the verbs, and the object names it is
/// limited to (empty: any).
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub names: &'static [&'static str],
}

const fn rule(
    group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
) -> Rule {
    Rule {
        group,
        resources,
        verbs,
        names: &[],
    }
}

/// The namespaced kinds the operator builds in a tenant namespace.
const CORE_OWNED: &[&str] = &[
    "serviceaccounts",
    "services",
    "persistentvolumeclaims",
    "resourcequotas",
    "limitranges",
];
const APPS_OWNED: &[&str] = &["deployments", "statefulsets"];
const BATCH_OWNED: &[&str] = &["jobs", "cronjobs"];
const NETWORKING_OWNED: &[&str] = &["networkpolicies", "ingresses"];
const POLICY_OWNED: &[&str] = &["poddisruptionbudgets"];
const MONITORING_OWNED: &[&str] = &["servicemonitors"];

/// The operator's ClusterRole: what it may do in every namespace.
pub const CLUSTER_RULES: &[Rule] = &[
    rule(
        "iafactory.dz",
        &["tenants", "knowledgebases", "workflows"],
        &["get", "list", "watch", "patch"],
    ),
    rule(
        "iafactory.dz",
        &[
            "tenants/status",
            "knowledgebases/status",
            "workflows/status",
        ],
        &["get", "patch"],
    ),
    // Tenant namespaces are created (by server-side apply) and labelled here; deleting
    // one goes through the tenant role, bound inside it.
    rule(
        "",
        &["namespaces"],
        &["get", "list", "watch", "create", "patch"],
    ),
    // The watches that feed the caches (label-selected on `managed-by`): reading only.
    rule("", CORE_OWNED, READ),
    rule("apps", APPS_OWNED, READ),
    rule("batch", BATCH_OWNED, READ),
    rule("networking.k8s.io", NETWORKING_OWNED, READ),
    rule("policy", POLICY_OWNED, READ),
    rule("monitoring.coreos.com", MONITORING_OWNED, READ),
    // The operator's access to each tenant namespace: a RoleBinding of the tenant role,
    // created as the namespace is. `create` cannot be limited by name in RBAC; `patch`
    // can, and `bind` limits what any RoleBinding it creates may grant.
    rule(
        "rbac.authorization.k8s.io",
        &["rolebindings"],
        &["get", "list", "watch", "create"],
    ),
    Rule {
        group: "rbac.authorization.k8s.io",
        resources: &["rolebindings"],
        verbs: &["patch"],
        names: &[TENANT_BINDING],
    },
    Rule {
        group: "rbac.authorization.k8s.io",
        resources: &["clusterroles"],
        verbs: &["bind"],
        names: &[TENANT_ROLE],
    },
    rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "list", "watch", "create", "update", "patch"],
    ),
    rule("events.k8s.io", &["events"], &["create", "patch"]),
    // The start-up check that our CRDs exist, and whether ServiceMonitors do.
    rule("apiextensions.k8s.io", &["customresourcedefinitions"], READ),
];

/// The tenant role: what the operator may do inside a tenant namespace, once it has
/// bound this role there.
pub const TENANT_RULES: &[Rule] = &[
    // Only the namespace the binding lives in: Kubernetes authorizes a request on a
    // Namespace object within that namespace (retention `Delete`).
    rule("", &["namespaces"], &["delete"]),
    // Generated once and never changed: created, and read back by name (the operator
    // token). No list, no watch.
    rule("", &["secrets"], &["get", "create"]),
    // Read (one by name) for the `configMap` sources of KnowledgeBases.
    rule("", &["configmaps"], &["get"]),
    rule("", CORE_OWNED, WRITE),
    rule("apps", APPS_OWNED, WRITE),
    rule("batch", BATCH_OWNED, WRITE),
    rule("networking.k8s.io", NETWORKING_OWNED, WRITE),
    rule("policy", POLICY_OWNED, WRITE),
    rule("monitoring.coreos.com", MONITORING_OWNED, WRITE),
];

/// Whether `rules` allow `verb` on `group/resource` (named `name`, if the request
/// names an object).
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
    rules.iter().any(|rule| {
        rule.group == group
            && rule.resources.contains(&resource)
            && rule.verbs.contains(&verb)
            && (rule.names.is_empty() || name.is_some_and(|n| rule.names.contains(&n)))
    })
}

fn role(name: &str, rules: &[Rule]) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/name".to_owned(),
                        "iafactory-operator".to_owned(),
                    ),
                    (
                        "app.kubernetes.io/part-of".to_owned(),
                        "iafactory".to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        rules: Some(
            rules
                .iter()
                .map(|rule| PolicyRule {
                    api_groups: Some(vec![rule.group.to_owned()]),
                    resources: Some(rule.resources.iter().map(|r| (*r).to_owned()).collect()),
                    verbs: rule.verbs.iter().map(|v| (*v).to_owned()).collect(),
                    resource_names: (!rule.names.is_empty())
                        .then(|| rule.names.iter().map(|n| (*n).to_owned()).collect()),
                    ..PolicyRule::default()
                })
                .collect(),
        ),
        aggregation_rule: None,
    }
}

/// The operator's ClusterRole, bound cluster-wide.
pub fn cluster_role() -> ClusterRole {
    role(CLUSTER_ROLE, CLUSTER_RULES)
}

/// The tenant role, bound by the operator in each tenant namespace.
pub fn tenant_role() -> ClusterRole {
    role(TENANT_ROLE, TENANT_RULES)
}

fn generated(role: &ClusterRole) -> String {
    let mut yaml = String::from(
        "# Generated by `iafactory-operator rbac` from operator/src/rbac.rs: do not edit.\n",
    );
    yaml.push_str(&serde_yaml::to_string(role).expect("a ClusterRole serialises"));
    yaml
}

/// The YAML committed at `config/rbac/clusterrole.yaml`.
pub fn cluster_role_yaml() -> String {
    generated(&cluster_role())
}

/// The YAML committed at `config/rbac/tenant-role.yaml`.
pub fn tenant_role_yaml() -> String {
    generated(&tenant_role())
}

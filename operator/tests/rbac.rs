//! The operator's RBAC (operator/src/rbac.rs), pure: its ClusterRole reads Secrets
//! nowhere and writes no workload cluster-wide; the tenant role it binds in each tenant
//! namespace covers every write there; both cover everything built, watched or written,
//! and nothing else; config/rbac/ is generated from them.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::{PlatformConfig, Tenant};
use iafactory_operator::build::{OperatorAccount, TenantObjects, owned_kinds};
use iafactory_operator::rbac::{
    self, CLUSTER_RULES, Rule, TENANT_BINDING, TENANT_ROLE, TENANT_RULES,
};

use common::{build_objects, repo_root};
use kube::ResourceExt;

const RBAC: &str = "rbac.authorization.k8s.io";
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn tenant_samples() -> Vec<Tenant> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("config/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut tenants = Vec::new();
    for file in files {
        for loaded in manifest::load_paths(std::slice::from_ref(&file)).unwrap() {
            if let Manifest::Tenant(tenant) = loaded.manifest {
                tenants.push(*tenant);
            }
        }
    }
    assert!(
        tenants.len() >= 3,
        "the samples hold at least three Tenants"
    );
    tenants
}

fn built() -> Vec<TenantObjects> {
    tenant_samples()
        .iter()
        .map(|t| build_objects(t, &PlatformConfig::default(), true).1)
        .collect()
}

/// Whether `rules` grant `verb` on `group/resource` for some object name.
fn grants_any(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resources.contains(&resource) && r.verbs.contains(&verb))
}

#[test]
fn the_cluster_role_lists_no_secret_and_writes_no_workload() {
    // Secrets: no verb at all, in any namespace.
    for verb in [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ] {
        assert!(
            !grants_any(CLUSTER_RULES, "", "secrets", verb),
            "the operator's ClusterRole grants {verb} on Secrets in every namespace"
        );
    }
    // Every namespaced kind the operator builds, and ConfigMaps: read-only cluster-wide.
    let mut kinds: Vec<(String, String)> = owned_kinds(true)
        .iter()
        .map(|r| (r.group.clone(), r.plural.clone()))
        .collect();
    kinds.push((String::new(), "configmaps".into()));
    for (group, resource) in &kinds {
        for verb in WRITES {
            let granted = grants_any(CLUSTER_RULES, group, resource, verb);
            if group == RBAC && resource == "rolebindings" && verb == "create" {
                // How the operator gets into a namespace it creates; see below.
                assert!(granted);
                continue;
            }
            if group == RBAC && resource == "rolebindings" && verb == "patch" {
                // Only its own binding, by name.
                assert!(granted);
                assert!(rbac::allows(
                    CLUSTER_RULES,
                    RBAC,
                    "rolebindings",
                    "patch",
                    Some(TENANT_BINDING)
                ));
                assert!(!rbac::allows(
                    CLUSTER_RULES,
                    RBAC,
                    "rolebindings",
                    "patch",
                    Some("admin")
                ));
                continue;
            }
            assert!(
                !granted,
                "the operator's ClusterRole grants {verb} on {group}/{resource} in every namespace"
            );
        }
    }
    // The bindings it creates can grant the tenant role and nothing else.
    assert!(rbac::allows(
        CLUSTER_RULES,
        RBAC,
        "clusterroles",
        "bind",
        Some(TENANT_ROLE)
    ));
    for other in ["cluster-admin", "admin", "edit", rbac::CLUSTER_ROLE] {
        assert!(!rbac::allows(
            CLUSTER_RULES,
            RBAC,
            "clusterroles",
            "bind",
            Some(other)
        ));
    }
    for verb in ["bind", "escalate", "create", "patch", "update"] {
        assert!(!grants_any(CLUSTER_RULES, RBAC, "roles", verb));
        assert!(!grants_any(
            CLUSTER_RULES,
            RBAC,
            "clusterrolebindings",
            verb
        ));
    }
    assert!(!grants_any(CLUSTER_RULES, RBAC, "clusterroles", "escalate"));
    // Deleting a namespace goes through the tenant role, bound inside it.
    assert!(!grants_any(CLUSTER_RULES, "", "namespaces", "delete"));
}

#[test]
fn the_tenant_role_covers_every_write_in_a_tenant_namespace() {
    for objects in built() {
        let namespace = objects.namespace.name();
        for verb in ["get", "list", "watch", "create", "patch"] {
            assert!(rbac::allows(
                CLUSTER_RULES,
                "",
                "namespaces",
                verb,
                Some(&namespace)
            ));
        }
        assert!(rbac::allows(
            TENANT_RULES,
            "",
            "namespaces",
            "delete",
            Some(&namespace)
        ));

        // The binding: created and patched by the ClusterRole, before anything else.
        let access = &objects.access;
        assert_eq!(access.resource.group, RBAC);
        assert_eq!(access.resource.kind, "RoleBinding");
        assert_eq!(access.name(), TENANT_BINDING);
        assert_eq!(
            access.object.metadata.namespace.as_deref(),
            Some(&*namespace)
        );
        assert_eq!(
            access.object.data["roleRef"],
            serde_json::json!({"apiGroup": RBAC, "kind": "ClusterRole", "name": TENANT_ROLE})
        );
        let account = OperatorAccount::default();
        assert_eq!(
            access.object.data["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": account.name, "namespace": account.namespace}])
        );
        assert_eq!(
            access
                .object
                .labels()
                .get("iafactory.dz/managed-by")
                .map(String::as_str),
            Some("iafactory-operator"),
            "the binding is labelled as owned"
        );
        for verb in ["get", "list", "watch", "create", "patch"] {
            assert!(rbac::allows(
                CLUSTER_RULES,
                RBAC,
                "rolebindings",
                verb,
                Some(TENANT_BINDING)
            ));
        }
        let order: Vec<String> = objects.all().map(|c| c.describe()).collect();
        assert_eq!(
            order[..2],
            [
                format!("Namespace/{namespace}"),
                format!("RoleBinding/{TENANT_BINDING}")
            ]
        );

        // Everything else in the namespace: read cluster-wide, written only through
        // the tenant role.
        for child in &objects.children {
            let (group, plural) = (&child.resource.group, &child.resource.plural);
            assert_eq!(
                child.object.metadata.namespace.as_deref(),
                Some(&*namespace)
            );
            for verb in ["get", "list", "watch"] {
                assert!(
                    rbac::allows(CLUSTER_RULES, group, plural, verb, Some(&child.name())),
                    "the ClusterRole does not allow {verb} on {}",
                    child.describe()
                );
            }
            for verb in ["create", "patch", "delete"] {
                assert!(
                    rbac::allows(TENANT_RULES, group, plural, verb, Some(&child.name())),
                    "the tenant role does not allow {verb} on {}",
                    child.describe()
                );
                assert!(
                    !rbac::allows(CLUSTER_RULES, group, plural, verb, Some(&child.name())),
                    "the ClusterRole allows {verb} on {} in every namespace",
                    child.describe()
                );
            }
        }
        // Generated Secrets: created by name and read back, never listed or changed.
        for secret in &objects.secrets {
            let name = secret.template.metadata.name.as_deref();
            assert!(rbac::allows(TENANT_RULES, "", "secrets", "create", name));
            assert!(rbac::allows(TENANT_RULES, "", "secrets", "get", name));
        }
    }
    for verb in ["list", "watch", "update", "patch", "delete"] {
        assert!(
            !grants_any(TENANT_RULES, "", "secrets", verb),
            "the tenant role grants {verb} on Secrets"
        );
    }
    // The tenant role holds no RBAC power: a binding cannot be widened from inside.
    assert!(TENANT_RULES.iter().all(|r| r.group != RBAC));
}

/// `(group, plural)` of everything the operator builds, watches or writes.
fn used_resources() -> BTreeSet<(String, String)> {
    let mut used: BTreeSet<(String, String)> = owned_kinds(true)
        .iter()
        .map(|r| (r.group.clone(), r.plural.clone()))
        .collect();
    for objects in built() {
        used.extend(
            objects
                .all()
                .map(|c| (c.resource.group.clone(), c.resource.plural.clone())),
        );
    }
    for (group, plural) in [
        ("", "secrets"),
        ("iafactory.dz", "tenants"),
        ("iafactory.dz", "knowledgebases"),
        ("iafactory.dz", "workflows"),
        ("iafactory.dz", "tenants/status"),
        ("iafactory.dz", "knowledgebases/status"),
        // KnowledgeBase configMap sources (controller/knowledge_base.rs).
        ("", "configmaps"),
        ("iafactory.dz", "workflows/status"),
        ("coordination.k8s.io", "leases"),
        ("events.k8s.io", "events"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        // `bind` on the tenant role, for the RoleBinding in each tenant namespace.
        (RBAC, "clusterroles"),
    ] {
        used.insert((group.into(), plural.into()));
    }
    used
}

#[test]
fn the_roles_ask_for_nothing_unused_and_no_wildcard() {
    let used = used_resources();
    for rule in CLUSTER_RULES.iter().chain(TENANT_RULES) {
        for resource in rule.resources {
            assert!(
                used.contains(&(rule.group.to_owned(), (*resource).to_owned())),
                "{}/{resource} is granted but never used",
                rule.group
            );
        }
        assert!(
            !rule.verbs.contains(&"*") && !rule.resources.contains(&"*") && rule.group != "*",
            "no wildcards"
        );
    }
}

#[test]
fn config_rbac_is_generated_from_the_rules() {
    for (file, generated) in [
        ("clusterrole.yaml", rbac::cluster_role_yaml()),
        ("tenant-role.yaml", rbac::tenant_role_yaml()),
    ] {
        let path = repo_root().join("config/rbac").join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            generated,
            "{} drifted from operator/src/rbac.rs: run `UPDATE_GOLDEN=1 cargo test -p iafactory-operator --test rbac`",
            path.display()
        );
    }
}

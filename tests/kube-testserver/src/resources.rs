//! The resource types the server serves: built-in kinds and CRD-registered ones.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::{ApiError, Result, Subject};

/// A group and a plural resource name: the version-agnostic key of a resource type.
pub type GroupResource = (String, String);

/// One served resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    pub group: String,
    /// The served versions, the preferred (storage) one first.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub namespaced: bool,
    /// Whether it has a `status` subresource.
    pub status: bool,
    /// The structural schema of each version, for defaulting (CRDs only).
    pub schemas: BTreeMap<String, Value>,
}

impl ResourceInfo {
    pub fn group_resource(&self) -> GroupResource {
        (self.group.clone(), self.plural.clone())
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject {
            group: &self.group,
            resource: &self.plural,
            name,
        }
    }

    /// Whether writes to the main resource keep the stored status.
    pub fn has_status_subresource(&self) -> bool {
        self.status
    }

    fn discovery(&self) -> Vec<Value> {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if self.plural == "namespaces" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": verbs,
            "shortNames": self.short_names,
        })];
        if self.short_names.is_empty() {
            out[0].as_object_mut().map(|o| o.remove("shortNames"));
        }
        if self.group == "apps" {
            out.push(json!({
                "name": format!("{}/scale", self.plural),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if self.status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// The resource types, keyed by group and plural.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: BTreeMap<GroupResource, ResourceInfo>,
    /// Built-in groups in discovery order; CRD groups follow, sorted.
    builtin_groups: Vec<String>,
}

#[allow(clippy::type_complexity)]
const BUILTIN: &[(&str, &str, &str, &str, bool, bool, &[&str])] = &[
    // (group, version, kind, plural, namespaced, status subresource, short names)
    ("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
    ("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
    ("", "v1", "Secret", "secrets", true, false, &[]),
    ("", "v1", "Service", "services", true, true, &["svc"]),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        false,
        &["sa"],
    ),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        true,
        &["pvc"],
    ),
    ("", "v1", "Event", "events", true, false, &["ev"]),
    ("", "v1", "Pod", "pods", true, true, &["po"]),
    (
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        true,
        true,
        &["quota"],
    ),
    (
        "",
        "v1",
        "LimitRange",
        "limitranges",
        true,
        false,
        &["limits"],
    ),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        true,
        &["deploy"],
    ),
    (
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        true,
        &["sts"],
    ),
    ("batch", "v1", "Job", "jobs", true, true, &[]),
    ("batch", "v1", "CronJob", "cronjobs", true, true, &["cj"]),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        false,
        &["netpol"],
    ),
    (
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        true,
        true,
        &["ing"],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        false,
        &[],
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        false,
        &[],
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        true,
        &["pdb"],
    ),
    (
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        false,
        &[],
    ),
    (
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        false,
        &["ev"],
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        true,
        &["crd", "crds"],
    ),
];

impl Registry {
    /// The built-in kinds.
    pub fn builtin() -> Self {
        let mut reg = Self::default();
        for (group, version, kind, plural, namespaced, status, short) in BUILTIN {
            if !group.is_empty() && !reg.builtin_groups.iter().any(|g| g == group) {
                reg.builtin_groups.push((*group).to_string());
            }
            reg.types.insert(
                ((*group).to_string(), (*plural).to_string()),
                ResourceInfo {
                    group: (*group).to_string(),
                    versions: vec![(*version).to_string()],
                    kind: (*kind).to_string(),
                    plural: (*plural).to_string(),
                    singular: kind.to_lowercase(),
                    short_names: short.iter().map(|s| (*s).to_string()).collect(),
                    namespaced: *namespaced,
                    status: *status,
                    schemas: BTreeMap::new(),
                },
            );
        }
        reg
    }

    /// The type served at `group`/`version` under `plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .filter(|info| info.versions.iter().any(|v| v == version))
    }

    pub fn get(&self, gr: &GroupResource) -> Option<&ResourceInfo> {
        self.types.get(gr)
    }

    /// Each non-core group with its versions, preferred first, in discovery order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut crd_groups: Vec<String> = self
            .types
            .values()
            .map(|i| i.group.clone())
            .filter(|g| !g.is_empty() && !self.builtin_groups.contains(g))
            .collect();
        crd_groups.sort();
        crd_groups.dedup();
        self.builtin_groups
            .iter()
            .chain(crd_groups.iter())
            .map(|group| {
                let mut versions: Vec<String> = Vec::new();
                for info in self.types.values().filter(|i| &i.group == group) {
                    for v in &info.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                (group.clone(), versions)
            })
            .filter(|(_, versions)| !versions.is_empty())
            .collect()
    }

    /// The `APIResourceList` of one group version, if the server serves it.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let infos: Vec<&ResourceInfo> = self
            .types
            .values()
            .filter(|i| i.group == group && i.versions.iter().any(|v| v == version))
            .collect();
        if infos.is_empty() {
            return None;
        }
        let resources: Vec<Value> = infos.iter().flat_map(|i| i.discovery()).collect();
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }

    /// Registers (or re-registers) the custom resource a CRD object defines.
    pub fn register_crd(&mut self, crd: &Value) -> Result<ResourceInfo> {
        let info = crd_info(crd)?;
        if let Some(existing) = self.types.get(&info.group_resource())
            && existing.schemas.is_empty()
        {
            return Err(ApiError::bad_request(format!(
                "{}.{} is a built-in resource",
                info.plural, info.group
            )));
        }
        self.types.insert(info.group_resource(), info.clone());
        Ok(info)
    }

    pub fn unregister(&mut self, gr: &GroupResource) {
        if self.types.get(gr).is_some_and(|i| !i.schemas.is_empty()) {
            self.types.remove(gr);
        }
    }
}

/// The resource type a CRD defines, or why the CRD is invalid.
pub fn crd_info(crd: &Value) -> Result<ResourceInfo> {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, why: &str| {
        ApiError::invalid(
            Subject {
                group: "apiextensions.k8s.io",
                resource: "customresourcedefinitions",
                name,
            },
            "CustomResourceDefinition",
            field,
            why,
        )
    };
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .filter(|g| !g.is_empty())
        .ok_or_else(|| invalid("spec.group", "Required value"))?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("spec.names.plural", "Required value"))?;
    let kind = names["kind"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("spec.names.kind", "Required value"))?;
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            "metadata.name",
            &format!("must be spec.names.plural+\".\"+spec.group: {plural}.{group}"),
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(invalid(
                "spec.scope",
                "Unsupported value: supported values: \"Cluster\", \"Namespaced\"",
            ));
        }
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("spec.versions", "Required value"))?;
    let mut served = Vec::new();
    let mut status = false;
    let mut schemas = BTreeMap::new();
    let mut storage_count = 0;
    for v in versions {
        let vname = v["name"]
            .as_str()
            .ok_or_else(|| invalid("spec.versions[].name", "Required value"))?;
        if v["storage"].as_bool() == Some(true) {
            storage_count += 1;
        }
        if v["served"].as_bool() != Some(true) {
            continue;
        }
        if v["subresources"]["status"].is_object() {
            status = true;
        }
        schemas.insert(vname.to_string(), v["schema"]["openAPIV3Schema"].clone());
        if v["storage"].as_bool() == Some(true) {
            served.insert(0, vname.to_string());
        } else {
            served.push(vname.to_string());
        }
    }
    if storage_count != 1 {
        return Err(invalid(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let str_list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ResourceInfo {
        group: group.to_string(),
        versions: served,
        kind: kind.to_string(),
        plural: plural.to_string(),
        singular: names["singular"]
            .as_str()
            .map_or_else(|| kind.to_lowercase(), str::to_string),
        short_names: str_list(&names["shortNames"]),
        namespaced,
        status,
        // An empty map would read as "built-in": keep a marker entry.
        schemas: if schemas.is_empty() {
            BTreeMap::from([(String::new(), Value::Null)])
        } else {
            schemas
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lookup_and_groups() {
        let reg = Registry::builtin();
        assert!(reg.lookup("apps", "v1", "deployments").is_some());
        assert!(reg.lookup("apps", "v2", "deployments").is_none());
        let groups = reg.groups();
        assert_eq!(groups[0].0, "apps");
        assert!(groups.iter().any(|(g, _)| g == "apiextensions.k8s.io"));
        let list = reg.resource_list("apps", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/status"));
    }

    #[test]
    fn crd_registration() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}
                ]}
        });
        let mut reg = Registry::builtin();
        let info = reg.register_crd(&crd).unwrap();
        assert_eq!(info.versions, vec!["v1", "v1beta1"]);
        assert!(info.status);
        assert!(reg.lookup("example.com", "v1beta1", "widgets").is_some());
        assert_eq!(reg.groups().last().unwrap().1, vec!["v1", "v1beta1"]);
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("nope");
        assert_eq!(reg.register_crd(&bad).unwrap_err().code, 422);
    }
}

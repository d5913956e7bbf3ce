//! What each driver does with each Tenant field: honours it, accepts it with a warning
//! naming the field and the reason, or refuses it. One table: `iafactory apply` warns
//! from it, and `docs/resources.md` prints it (`crate::crdgen`), so the two cannot
//! differ; a test holds it to the schema, so a new field cannot be left out of it.
//!
//! Every field the schema has is covered by a row for itself or for a field above it
//! (`spec.components.api.resources` covers its `limits` and `requests`, unless they
//! have rows of their own).

use crate::tenant::{TenantSpec, TlsMode};

/// What one driver does with one field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Acted on as documented. The note, when not empty, says how.
    Honoured(&'static str),
    /// Accepted but not acted on: `apply` says so, naming the field and this reason.
    Warned(&'static str),
    /// Refused, with this reason: the manifest is not applied.
    Refused(&'static str),
}

impl Support {
    pub fn word(self) -> &'static str {
        match self {
            Support::Honoured(_) => "honoured",
            Support::Warned(_) => "warned",
            Support::Refused(_) => "refused",
        }
    }

    pub fn note(self) -> &'static str {
        match self {
            Support::Honoured(note) | Support::Warned(note) | Support::Refused(note) => note,
        }
    }
}

/// One row: a field (camelCase, as in the manifest) and what each driver does with it.
pub struct FieldSupport {
    pub path: &'static str,
    pub kubernetes: Support,
    pub appliance: Support,
    /// Whether a manifest sets the field to something a driver that warns about it
    /// would not do anyway: `apply` warns only then.
    pub set: fn(&TenantSpec) -> bool,
}

const HONOURED: Support = Support::Honoured("");

fn always(_: &TenantSpec) -> bool {
    true
}

fn requests_set(resources: Option<&crate::common::ResourceRequirements>) -> bool {
    resources.is_some_and(|r| r.requests.is_some())
}

/// Every Tenant field, in the order of docs/resources.md.
pub static TENANT_FIELDS: &[FieldSupport] = &[
    FieldSupport {
        path: "spec.backup",
        kubernetes: Support::Honoured("a CronJob in the tenant's namespace"),
        appliance: Support::Honoured("`iafactory serve` runs the schedule"),
        set: |s| s.backup.is_some(),
    },
    FieldSupport {
        path: "spec.components.api.image",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.api.replicas",
        kubernetes: HONOURED,
        appliance: Support::Honoured("one container per replica, balanced by the gateway"),
        set: always,
    },
    FieldSupport {
        path: "spec.components.api.resources.limits",
        kubernetes: HONOURED,
        appliance: Support::Honoured("Docker's CPU and memory limits"),
        set: always,
    },
    FieldSupport {
        path: "spec.components.api.resources.requests",
        kubernetes: HONOURED,
        appliance: REQUESTS,
        set: |s| requests_set(s.components.api.resources.as_ref()),
    },
    FieldSupport {
        path: "spec.components.database.image",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.database.resources.limits",
        kubernetes: HONOURED,
        appliance: Support::Honoured("Docker's CPU and memory limits"),
        set: always,
    },
    FieldSupport {
        path: "spec.components.database.resources.requests",
        kubernetes: HONOURED,
        appliance: REQUESTS,
        set: |s| requests_set(s.components.database.resources.as_ref()),
    },
    FieldSupport {
        path: "spec.components.database.storage",
        kubernetes: Support::Honoured("the PersistentVolumeClaim's size"),
        appliance: STORAGE,
        set: |s| s.components.database.storage.is_some(),
    },
    FieldSupport {
        path: "spec.components.monitoring.enabled",
        kubernetes: Support::Honoured(
            "a ServiceMonitor when the cluster has its CRD, and the monitoring namespace's access to the metrics",
        ),
        appliance: Support::Warned(
            "the appliance's Prometheus scrapes every tenant's API; `[appliance.monitoring] enabled` turns it off for all",
        ),
        set: |s| !s.components.monitoring.enabled,
    },
    FieldSupport {
        path: "spec.components.ollama.enabled",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.ollama.gpu",
        kubernetes: Support::Honoured("`nvidia.com/gpu` requests and limits, and its toleration"),
        appliance: Support::Warned("the appliance gives containers no GPU"),
        set: |s| s.components.ollama.gpu.unwrap_or(0) > 0,
    },
    FieldSupport {
        path: "spec.components.ollama.image",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.ollama.models",
        kubernetes: Support::Honoured(
            "a preload Job from the platform's `ollama.model_source`; under strict sovereignty never the public registry: with no other source, nothing is preloaded and `ModelsReady` and `Degraded` say so",
        ),
        appliance: Support::Warned(
            "the appliance never pulls models: load them with `iafactory models import <tenant> <dir>` (the first model is still the API's default chat model)",
        ),
        set: |s| !s.components.ollama.models.is_empty(),
    },
    FieldSupport {
        path: "spec.components.ollama.resources.limits",
        kubernetes: HONOURED,
        appliance: Support::Honoured("Docker's CPU and memory limits"),
        set: always,
    },
    FieldSupport {
        path: "spec.components.ollama.resources.requests",
        kubernetes: HONOURED,
        appliance: REQUESTS,
        set: |s| requests_set(s.components.ollama.resources.as_ref()),
    },
    FieldSupport {
        path: "spec.components.ollama.storage",
        kubernetes: Support::Honoured("the PersistentVolumeClaim's size"),
        appliance: STORAGE,
        set: |s| s.components.ollama.storage.is_some(),
    },
    FieldSupport {
        path: "spec.components.vectorStore.image",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.vectorStore.kind",
        kubernetes: HONOURED,
        appliance: HONOURED,
        set: always,
    },
    FieldSupport {
        path: "spec.components.vectorStore.resources.limits",
        kubernetes: HONOURED,
        appliance: Support::Honoured("Docker's CPU and memory limits"),
        set: always,
    },
    FieldSupport {
        path: "spec.components.vectorStore.resources.requests",
        kubernetes: HONOURED,
        appliance: REQUESTS,
        set: |s| requests_set(s.components.vector_store.resources.as_ref()),
    },
    FieldSupport {
        path: "spec.components.vectorStore.storage",
        kubernetes: Support::Honoured("the PersistentVolumeClaim's size"),
        appliance: STORAGE,
        set: |s| s.components.vector_store.storage.is_some(),
    },
    FieldSupport {
        path: "spec.displayName",
        kubernetes: Support::Honoured("the tenant's name in its API and console"),
        appliance: Support::Honoured("the tenant's name in its API and console"),
        set: always,
    },
    FieldSupport {
        path: "spec.ingress.host",
        kubernetes: Support::Honoured("an Ingress rule for the host"),
        appliance: Support::Honoured(
            "the gateway serves the tenant at this host as well as at `<tenant>.<domain>`, with a certificate from `[appliance.gateway] certificates`; `apply` refuses a host under the domain or another tenant's",
        ),
        set: |s| s.ingress.is_some(),
    },
    FieldSupport {
        path: "spec.ingress.secretName",
        kubernetes: Support::Honoured("the Ingress serves this TLS Secret"),
        appliance: Support::Warned(
            "the appliance has no Secrets to read it from: the gateway's certificate comes from `[appliance.gateway] certificates` (ACME, a local CA, or provided files)",
        ),
        set: |s| s.ingress.as_ref().is_some_and(|i| i.secret_name.is_some()),
    },
    FieldSupport {
        path: "spec.ingress.tls",
        kubernetes: Support::Honoured("`acme`: a cert-manager certificate; `none`: plain HTTP"),
        appliance: Support::Warned(
            "the gateway always serves HTTPS, with its own certificates; `none` does not turn TLS off",
        ),
        set: |s| {
            s.ingress
                .as_ref()
                .is_some_and(|i| i.tls == Some(TlsMode::None))
        },
    },
    FieldSupport {
        path: "spec.languages",
        kubernetes: Support::Honoured("the API's `IAF_LANGUAGES`"),
        appliance: Support::Honoured("the API's `IAF_LANGUAGES`"),
        set: always,
    },
    FieldSupport {
        path: "spec.llmProviders",
        kubernetes: Support::Honoured(
            "under `sovereignty: open`, the API's keys and an egress NetworkPolicy to each provider; refused under strict",
        ),
        appliance: Support::Honoured(
            "under `sovereignty: open`, the API's keys and an egress allow-list to each provider; refused under strict",
        ),
        set: always,
    },
    FieldSupport {
        path: "spec.plan",
        kubernetes: Support::Honoured("sizes, replica and GPU caps, ResourceQuota and LimitRange"),
        appliance: Support::Honoured(
            "sizes and replica and GPU caps; the quota is checked when planned (Docker has no namespace quota)",
        ),
        set: always,
    },
    FieldSupport {
        path: "spec.retention",
        kubernetes: HONOURED,
        appliance: Support::Honoured("`iafactory delete` keeps or removes the volumes"),
        set: always,
    },
    FieldSupport {
        path: "spec.sovereignty",
        kubernetes: Support::Honoured(
            "default-deny NetworkPolicies; no egress to 0.0.0.0/0 under strict",
        ),
        appliance: Support::Honoured(
            "an internal Docker network per tenant, with no route out under strict",
        ),
        set: always,
    },
    FieldSupport {
        path: "spec.suspended",
        kubernetes: Support::Honoured("every workload scaled to zero"),
        appliance: Support::Honoured("no container runs; volumes are kept"),
        set: always,
    },
];

const REQUESTS: Support =
    Support::Warned("Docker enforces limits only: a request reserves nothing on the appliance");
const STORAGE: Support =
    Support::Warned("Docker volumes have no size: the data disk bounds them, not this value");

/// A field the appliance accepts but does not act on, as `apply` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldWarning {
    pub path: &'static str,
    pub reason: &'static str,
}

impl std::fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not honoured here: {}", self.path, self.reason)
    }
}

/// What the appliance will not do of what `spec` asks, field by field.
pub fn appliance_warnings(spec: &TenantSpec) -> Vec<FieldWarning> {
    warnings(spec, |row| row.appliance)
}

/// What the operator will not do of what `spec` asks (none today: kept so that a
/// `Warned` in the Kubernetes column reaches the user too).
pub fn kubernetes_warnings(spec: &TenantSpec) -> Vec<FieldWarning> {
    warnings(spec, |row| row.kubernetes)
}

fn warnings(spec: &TenantSpec, driver: fn(&FieldSupport) -> Support) -> Vec<FieldWarning> {
    TENANT_FIELDS
        .iter()
        .filter_map(|row| match driver(row) {
            Support::Warned(reason) if (row.set)(spec) => Some(FieldWarning {
                path: row.path,
                reason,
            }),
            _ => None,
        })
        .collect()
}

/// The table in docs/resources.md.
pub fn markdown() -> String {
    let mut table = String::from(
        "What each driver does with each field: **honoured**, **warned** (accepted; `iafactory apply` names the field and the reason), or **refused**. A row covers the fields under it.\n\n\
         | field | Kubernetes | appliance |\n| --- | --- | --- |\n",
    );
    let cell = |support: Support| {
        if support.note().is_empty() {
            support.word().to_owned()
        } else {
            format!("{}: {}", support.word(), support.note().replace('|', "\\|"))
        }
    };
    for row in TENANT_FIELDS {
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            row.path,
            cell(row.kubernetes),
            cell(row.appliance)
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `spec.*` field of the Tenant schema, as `a.b`, and `a.b[]` for list items.
    fn schema_paths(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
        let Some(properties) = schema["properties"].as_object() else {
            return;
        };
        for (name, field) in properties {
            let field_path = format!("{path}.{name}");
            out.push(field_path.clone());
            schema_paths(&field_path, field, out);
            if field["type"] == "array" {
                schema_paths(&format!("{field_path}[]"), &field["items"], out);
            }
        }
    }

    fn tenant_paths() -> Vec<String> {
        let schema = crate::validation::openapi_schema::<crate::Tenant>();
        let mut paths = Vec::new();
        schema_paths("spec", &schema["properties"]["spec"], &mut paths);
        paths
    }

    fn covers(row: &str, path: &str) -> bool {
        path == row
            || path
                .strip_prefix(row)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    }

    #[test]
    fn every_field_of_the_schema_has_a_row() {
        let missing: Vec<String> = tenant_paths()
            .into_iter()
            .filter(|path| {
                // A field with rows under it is decided by them.
                let decided_below = TENANT_FIELDS.iter().any(|row| covers(path, row.path));
                !decided_below && !TENANT_FIELDS.iter().any(|row| covers(row.path, path))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "decide what each driver does with {missing:?}: add rows to TENANT_FIELDS"
        );
    }

    #[test]
    fn every_row_is_a_field_of_the_schema() {
        let paths = tenant_paths();
        for row in TENANT_FIELDS {
            assert!(
                paths.iter().any(|p| p == row.path),
                "{} is not a Tenant field",
                row.path
            );
        }
    }

    #[test]
    fn the_appliance_warns_only_about_what_a_manifest_sets() {
        let plain = TenantSpec::default();
        assert_eq!(appliance_warnings(&plain), []);
        let spec: TenantSpec = serde_yaml::from_str(
            "ingress: {host: rag.univ.dz, tls: none}\ncomponents: {monitoring: {enabled: false}, ollama: {models: [llama3.2], gpu: 1, storage: 40Gi}, api: {resources: {requests: {cpu: 500m}}}}",
        )
        .unwrap();
        let paths: Vec<&str> = appliance_warnings(&spec).iter().map(|w| w.path).collect();
        assert_eq!(
            paths,
            [
                "spec.components.api.resources.requests",
                "spec.components.monitoring.enabled",
                "spec.components.ollama.gpu",
                "spec.components.ollama.models",
                "spec.components.ollama.storage",
                "spec.ingress.tls",
            ]
        );
        assert_eq!(kubernetes_warnings(&spec), []);
    }
}

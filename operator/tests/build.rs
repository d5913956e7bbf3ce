//! The pure build: each sample Tenant gives the committed objects, every built-in
//! object passes `kubernetes-validate --strict`, and the properties the issue asks for
//! hold (isolation, restricted pods, owner references, preload job naming; RBAC in rbac.rs).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::{PlatformConfig, Tenant, TenantPlan};
use iafactory_operator::build::{BuildContext, Child, TenantObjects, build};

use common::{build_objects, owner, repo_root};

fn tenant_samples() -> Vec<(String, Tenant)> {
    let mut samples = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("config/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        for loaded in manifest::load_paths(std::slice::from_ref(&file)).unwrap() {
            if let Manifest::Tenant(tenant) = loaded.manifest {
                let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
                samples.push((stem, *tenant));
            }
        }
    }
    assert!(
        samples.len() >= 3,
        "the samples hold at least three Tenants"
    );
    samples
}

fn build_sample(tenant: &Tenant, service_monitors: bool) -> (TenantPlan, TenantObjects) {
    build_objects(tenant, &PlatformConfig::default(), service_monitors)
}

fn to_yaml(objects: &TenantObjects) -> String {
    let mut documents: Vec<String> = objects
        .all()
        .map(|c| serde_yaml::to_string(&c.object).unwrap())
        .collect();
    for secret in &objects.secrets {
        documents.push(serde_yaml::to_string(&secret.template).unwrap());
    }
    documents.join("---\n")
}

fn find<'a>(objects: &'a TenantObjects, kind: &str, name: &str) -> &'a Child {
    objects
        .all()
        .find(|c| c.resource.kind == kind && c.name() == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} was built"))
}

fn field<'a>(child: &'a Child, pointer: &str) -> &'a serde_json::Value {
    child
        .object
        .data
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{} has no {pointer}", child.describe()))
}

#[test]
fn samples_build_the_committed_objects() {
    for (stem, tenant) in tenant_samples() {
        let (_, objects) = build_sample(&tenant, true);
        let path = repo_root().join(format!("operator/tests/golden/{stem}.objects.yaml"));
        let actual = to_yaml(&objects);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            let diff = similar::TextDiff::from_lines(expected.as_str(), actual.as_str());
            panic!(
                "{} is out of date.\nRegenerate it with: UPDATE_GOLDEN=1 cargo test -p iafactory-operator --test build\n\n{}",
                path.display(),
                diff.unified_diff().header("committed", "built")
            );
        }
    }
}

#[test]
fn every_built_object_passes_kubernetes_validate_strict_for_1_33() {
    let validate = std::env::var("IAF_TEST_KUBERNETES_VALIDATE").expect(
        "IAF_TEST_KUBERNETES_VALIDATE is unset: run scripts/engines.sh up kubevalidate and source /tmp/iafactory-engines/env",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (stem, tenant) in tenant_samples() {
        // Without ServiceMonitors every object is a built-in kind the validator knows.
        let (_, objects) = build_sample(&tenant, false);
        let path = dir.path().join(format!("{stem}.yaml"));
        std::fs::write(&path, to_yaml(&objects)).unwrap();
        files.push(path);
    }
    let output = std::process::Command::new(&validate)
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kubernetes-validate rejected the built objects:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_namespace_enforces_pod_security_restricted_and_is_found_by_label() {
    for (_, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let labels = objects.namespace.object.metadata.labels.clone().unwrap();
        assert_eq!(objects.namespace.name(), format!("iaf-{}", plan.tenant));
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        assert_eq!(labels["iafactory.dz/tenant"], plan.tenant);
        assert_eq!(labels["iafactory.dz/managed-by"], "iafactory-operator");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "iafactory-operator");
        assert!(objects.namespace.object.metadata.owner_references.is_none());
    }
}

#[test]
fn every_namespaced_child_has_the_tenant_as_controller_owner() {
    for (_, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, true);
        for child in &objects.children {
            let owners = child
                .object
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default();
            assert_eq!(owners, vec![owner(&plan.tenant)], "{}", child.describe());
            assert_eq!(
                child.object.metadata.namespace.as_deref(),
                Some(plan.namespace.as_str())
            );
        }
        // Secrets outlive a retained Tenant: no owner, found by label.
        for secret in &objects.secrets {
            assert!(secret.template.metadata.owner_references.is_none());
            assert_eq!(
                secret.template.metadata.labels.as_ref().unwrap()["iafactory.dz/tenant"],
                plan.tenant
            );
        }
    }
}

#[test]
fn pods_are_restricted_and_never_mount_a_token() {
    for (_, tenant) in tenant_samples() {
        let (_, objects) = build_sample(&tenant, false);
        for child in objects.all().filter(|c| {
            matches!(
                c.resource.kind.as_str(),
                "Deployment" | "StatefulSet" | "Job"
            )
        }) {
            let pod = field(child, "/spec/template/spec");
            assert_eq!(
                pod["automountServiceAccountToken"],
                false,
                "{}",
                child.describe()
            );
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            for container in pod["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["allowPrivilegeEscalation"], false);
                assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
            }
        }
        for account in objects
            .all()
            .filter(|c| c.resource.kind == "ServiceAccount")
        {
            assert_eq!(account.object.data["automountServiceAccountToken"], false);
        }
        let api = find(&objects, "Deployment", "api");
        let container = &field(api, "/spec/template/spec/containers")[0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
}

#[test]
fn network_policies_deny_by_default_and_open_only_what_sovereignty_allows() {
    for (_, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let deny = find(&objects, "NetworkPolicy", "default-deny");
        assert_eq!(field(deny, "/spec/podSelector"), &serde_json::json!({}));
        assert_eq!(
            field(deny, "/spec/policyTypes"),
            &serde_json::json!(["Ingress", "Egress"])
        );
        assert!(
            field(deny, "/spec").get("ingress").is_none()
                && field(deny, "/spec").get("egress").is_none()
        );
        find(&objects, "NetworkPolicy", "allow-same-namespace");
        find(&objects, "NetworkPolicy", "allow-dns");
        let ingress = find(&objects, "NetworkPolicy", "allow-api-ingress");
        let from: Vec<String> = field(ingress, "/spec/ingress/0/from")
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert!(from.contains(&"ingress-nginx".to_owned()));
        // Monitoring scrapes the internal port only: the public one never admits it.
        assert!(!from.contains(&"monitoring".to_owned()));
        let _ = &plan;

        let llm = objects.all().find(|c| c.name() == "allow-llm-providers");
        match tenant.spec.sovereignty {
            iafactory_crds::tenant::Sovereignty::Strict => {
                assert!(llm.is_none(), "strict sovereignty opens no provider egress");
            }
            iafactory_crds::tenant::Sovereignty::Open => {
                let llm = llm.expect("open sovereignty with providers opens their egress");
                let rules = field(llm, "/spec/egress").as_array().unwrap();
                assert_eq!(rules.len(), tenant.spec.llm_providers.len());
                for rule in rules {
                    assert_eq!(
                        rule["ports"],
                        serde_json::json!([{"port": 443, "protocol": "TCP"}])
                    );
                    let except = &rule["to"][0]["ipBlock"]["except"];
                    assert!(except.as_array().unwrap().iter().any(|r| r == "10.0.0.0/8"));
                }
                // Only the API talks to providers.
                assert_eq!(
                    field(llm, "/spec/podSelector/matchLabels/iafactory.dz~1component"),
                    "api"
                );
            }
        }
    }
}

#[test]
fn quota_and_limits_follow_the_plan_tier() {
    for (_, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let quota = find(&objects, "ResourceQuota", "tenant-quota");
        assert_eq!(
            field(quota, "/spec/hard/requests.cpu"),
            plan.quota.requests_cpu.as_str()
        );
        assert_eq!(
            field(quota, "/spec/hard/pods"),
            &serde_json::json!(plan.quota.pods.to_string())
        );
        let limits = find(&objects, "LimitRange", "tenant-limits");
        assert_eq!(
            field(limits, "/spec/limits/0/max/memory"),
            plan.limit_range.max.memory.as_str()
        );
    }
}

#[test]
fn gpus_bring_requests_and_tolerations_and_replicas_bring_a_budget() {
    let (_, tenant) = tenant_samples()
        .into_iter()
        .find(|(stem, _)| stem == "tenant-enterprise-qdrant-gpu")
        .unwrap();
    let (_, objects) = build_sample(&tenant, false);
    let ollama = find(&objects, "StatefulSet", "ollama");
    let pod = field(ollama, "/spec/template/spec");
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    assert!(
        pod["containers"][0]["startupProbe"].is_object(),
        "Ollama has a startup probe"
    );
    find(&objects, "StatefulSet", "qdrant");
    let budget = find(&objects, "PodDisruptionBudget", "api");
    assert_eq!(field(budget, "/spec/maxUnavailable"), 1);

    let mut single = tenant.clone();
    single.spec.components.api.replicas = Some(1);
    single.spec.components.ollama.gpu = Some(0);
    let (_, objects) = build_sample(&single, false);
    assert!(
        objects
            .all()
            .all(|c| c.resource.kind != "PodDisruptionBudget")
    );
    let pod = field(
        find(&objects, "StatefulSet", "ollama"),
        "/spec/template/spec",
    );
    assert!(pod.get("tolerations").is_none());
}

#[test]
fn the_preload_job_is_renamed_by_a_new_model_list_and_not_by_an_upgrade() {
    let (_, tenant) = tenant_samples()
        .into_iter()
        .find(|(stem, _)| stem == "tenant-enterprise-qdrant-gpu")
        .unwrap();
    let job_of = |tenant: &Tenant| {
        let (_, objects) = build_sample(tenant, false);
        let job = objects
            .all()
            .find(|c| c.resource.kind == "Job")
            .cloned()
            .expect("a preload Job");
        assert!(job.create_only, "a Job is never updated in place");
        job
    };
    let original = job_of(&tenant);
    let args = field(&original, "/spec/template/spec/containers/0/args");
    assert!(args.as_array().unwrap().iter().any(|a| a == "bge-m3"));

    let mut upgraded = tenant.clone();
    upgraded.spec.components.ollama.image = Some("ollama/ollama:0.13.0".into());
    assert_eq!(job_of(&upgraded).name(), original.name());

    let mut more_models = tenant.clone();
    more_models
        .spec
        .components
        .ollama
        .models
        .push("qwen2.5:7b".into());
    assert_ne!(job_of(&more_models).name(), original.name());
}

#[test]
fn suspending_scales_to_zero_and_keeps_the_volumes() {
    for (_, tenant) in tenant_samples() {
        let (_, running) = build_sample(&tenant, false);
        let mut suspended = tenant.clone();
        suspended.spec.suspended = true;
        let (_, asleep) = build_sample(&suspended, false);
        for child in asleep
            .all()
            .filter(|c| matches!(c.resource.kind.as_str(), "Deployment" | "StatefulSet"))
        {
            assert_eq!(field(child, "/spec/replicas"), 0, "{}", child.describe());
            let awake = find(&running, &child.resource.kind, &child.name());
            // Claim templates are immutable: suspending must not touch them.
            assert_eq!(
                child.object.data.pointer("/spec/volumeClaimTemplates"),
                awake.object.data.pointer("/spec/volumeClaimTemplates")
            );
        }
    }
}

#[test]
fn ingress_tls_follows_the_tenant() {
    for (_, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let ingress = objects.all().find(|c| c.resource.kind == "Ingress");
        let Some(ingress_plan) = &plan.ingress else {
            assert!(ingress.is_none());
            continue;
        };
        let ingress = ingress.unwrap();
        assert_eq!(
            field(ingress, "/spec/rules/0/host"),
            ingress_plan.host.as_str()
        );
        match &ingress_plan.tls {
            iafactory_crds::plan::TlsPlan::Acme { issuer, secret } => {
                assert_eq!(
                    ingress.object.metadata.annotations.as_ref().unwrap()["cert-manager.io/cluster-issuer"],
                    *issuer
                );
                assert_eq!(field(ingress, "/spec/tls/0/secretName"), secret.as_str());
            }
            iafactory_crds::plan::TlsPlan::Secret { secret } => {
                assert_eq!(field(ingress, "/spec/tls/0/secretName"), secret.as_str());
            }
            iafactory_crds::plan::TlsPlan::None => {
                assert!(ingress.object.data["spec"].get("tls").is_none())
            }
        }
    }
}

#[test]
fn monitoring_uses_a_service_monitor_when_the_crd_exists_and_annotations_otherwise() {
    let monitored: Vec<_> = tenant_samples()
        .into_iter()
        .filter(|(_, t)| t.spec.components.monitoring.enabled)
        .collect();
    assert!(!monitored.is_empty(), "a sample enables monitoring");
    for (_, tenant) in monitored {
        let (_, with_crd) = build_sample(&tenant, true);
        assert!(with_crd.all().any(|c| c.resource.kind == "ServiceMonitor"));
        let api = find(&with_crd, "Service", "api");
        assert!(
            api.object
                .metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key("prometheus.io/scrape"))
        );
        let (_, without) = build_sample(&tenant, false);
        assert!(without.all().all(|c| c.resource.kind != "ServiceMonitor"));
        let api = find(&without, "Service", "api");
        assert_eq!(
            api.object.metadata.annotations.as_ref().unwrap()["prometheus.io/scrape"],
            "true"
        );
    }
}

/// Whether a label selector (matchLabels, matchExpressions) selects `labels`.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    let label = |key: &str| labels.get(key).and_then(|v| v.as_str());
    let labels_match = selector["matchLabels"]
        .as_object()
        .is_none_or(|wanted| wanted.iter().all(|(k, v)| label(k) == v.as_str()));
    let expressions_match = selector["matchExpressions"].as_array().is_none_or(|all| {
        all.iter().all(|e| {
            let key = e["key"].as_str().unwrap();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap() {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                other => panic!("unknown selector operator {other}"),
            }
        })
    });
    labels_match && expressions_match
}

/// Every source that some NetworkPolicy selecting pods with `pod_labels` admits on
/// `port`: a namespace's name when the peer is that namespace (any of its pods), and
/// a description of anything else (the whole namespace, all sources, an ipBlock).
fn internal_port_admitted_from(
    objects: &TenantObjects,
    pod_labels: &serde_json::Value,
    port: u16,
) -> BTreeSet<String> {
    let mut sources = BTreeSet::new();
    for policy in objects.all().filter(|c| c.resource.kind == "NetworkPolicy") {
        let spec = &policy.object.data["spec"];
        if !selects(&spec["podSelector"], pod_labels) {
            continue;
        }
        for rule in spec["ingress"].as_array().into_iter().flatten() {
            let ports = rule["ports"].as_array().filter(|p| !p.is_empty());
            let covers = ports.is_none_or(|ports| {
                ports.iter().any(|p| {
                    let number = p["port"].as_u64();
                    let end = p["endPort"].as_u64().or(number);
                    p.get("port").is_none()
                        || p["port"] == "internal"
                        || number.is_some_and(|n| {
                            n <= u64::from(port) && u64::from(port) <= end.unwrap()
                        })
                })
            });
            if !covers {
                continue;
            }
            let from = rule["from"].as_array().filter(|f| !f.is_empty());
            let Some(from) = from else {
                sources.insert(format!("every source ({})", policy.name()));
                continue;
            };
            for peer in from {
                let named = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str();
                match named {
                    Some(namespace)
                        if peer["namespaceSelector"].as_object().unwrap().len() == 1 =>
                    {
                        sources.insert(namespace.to_owned());
                    }
                    _ => {
                        sources.insert(format!("{peer} ({})", policy.name()));
                    }
                }
            }
        }
    }
    sources
}

/// The API's internal listener (`/internal/*`, `/metrics`) is a Service port of its
/// own, admitted only from the operator's and monitoring's namespaces, and scraped;
/// the Ingress and the ingress controller get the public port only.
#[test]
fn the_internal_port_admits_only_the_operator_and_monitoring() {
    let config = PlatformConfig::default();
    let (public, internal) = (config.api.port, config.api.internal_port);
    let operator = config.network.operator_namespace.clone().unwrap();
    let namespaces = |rule: &serde_json::Value| -> Vec<String> {
        rule["from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    for (_, tenant) in tenant_samples() {
        let monitored = tenant.spec.components.monitoring.enabled;
        let (_, objects) = build_sample(&tenant, true);
        let service = find(&objects, "Service", "api");
        assert_eq!(
            field(service, "/spec/ports"),
            &serde_json::json!([
                {"name": "http", "port": public, "protocol": "TCP", "targetPort": "http"},
                {"name": "internal", "port": internal, "protocol": "TCP", "targetPort": "internal"},
            ])
        );
        let policy = find(&objects, "NetworkPolicy", "allow-api-ingress");
        let rules = field(policy, "/spec/ingress").as_array().unwrap();
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert_eq!(
            rules[0]["ports"],
            serde_json::json!([{"port": public, "protocol": "TCP"}])
        );
        assert_eq!(
            namespaces(&rules[0]),
            ["ingress-nginx"],
            "the operator and monitoring use the internal port only"
        );
        // The tenant's own pods reach the public port, and only it.
        assert_eq!(rules[1]["from"], serde_json::json!([{"podSelector": {}}]));
        assert_eq!(
            rules[1]["ports"],
            serde_json::json!([{"port": public, "protocol": "TCP"}])
        );
        assert_eq!(
            rules[2]["ports"],
            serde_json::json!([{"port": internal, "protocol": "TCP"}])
        );
        let mut expected = vec![operator.clone()];
        if monitored {
            expected.push(config.network.monitoring_namespace.clone());
        }
        expected.sort();
        assert_eq!(
            namespaces(&rules[2]),
            expected,
            "never the ingress controller"
        );
        // NetworkPolicies add up: no policy at all that selects the API's pods may
        // admit the internal port from anyone else (the namespace-wide allowance
        // included).
        let api = find(&objects, "Deployment", "api");
        let pod_labels = field(api, "/spec/template/metadata/labels");
        let admitted = internal_port_admitted_from(&objects, pod_labels, internal);
        assert!(
            admitted.iter().all(|peer| expected.contains(peer)),
            "the internal port is admitted from {admitted:?}, not only {expected:?}"
        );
        // And the API still reaches its stores within the namespace.
        let egress = find(&objects, "NetworkPolicy", "allow-api-egress");
        assert_eq!(
            field(egress, "/spec/egress"),
            &serde_json::json!([{"to": [{"podSelector": {}}]}])
        );
        if let Some(ingress) = objects.all().find(|c| c.resource.kind == "Ingress") {
            assert_eq!(
                field(
                    ingress,
                    "/spec/rules/0/http/paths/0/backend/service/port/number"
                ),
                &serde_json::json!(public)
            );
        }
        if monitored {
            let monitor = objects
                .all()
                .find(|c| c.resource.kind == "ServiceMonitor")
                .unwrap();
            assert_eq!(field(monitor, "/spec/endpoints/0/port"), "internal");
            let (_, annotated) = build_sample(&tenant, false);
            let api = find(&annotated, "Service", "api");
            assert_eq!(
                api.object.metadata.annotations.as_ref().unwrap()["prometheus.io/port"],
                internal.to_string()
            );
        }
    }
}

/// The serving container never holds the database owner's credentials: only the
/// `migrate` init container, which runs before it, does (#19 item 7).
#[test]
fn only_the_migrate_init_container_holds_the_database_owner() {
    let owner_secret = iafactory_crds::plan::SECRET_DATABASE;
    let secrets_of = |container: &serde_json::Value| -> Vec<String> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
            .map(str::to_owned)
            .collect()
    };
    let names_of = |container: &serde_json::Value| -> Vec<String> {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for (_, tenant) in tenant_samples() {
        let (_, objects) = build_sample(&tenant, false);
        let api = find(&objects, "Deployment", "api");
        let containers = field(api, "/spec/template/spec/containers")
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        let serving = &containers[0];
        assert!(
            !secrets_of(serving).iter().any(|s| s == owner_secret),
            "the API container reads {owner_secret}: {serving}"
        );
        let names = names_of(serving);
        assert!(
            !names
                .iter()
                .any(|n| n == "IAF_DATABASE_URL" || n == "IAF_DB_PASSWORD")
        );
        let app_url = serving["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "IAF_DATABASE_APP_URL")
            .expect("the API serves from the app role's URL");
        assert_eq!(
            app_url["value"],
            "postgres://iafactory_app:$(IAF_DATABASE_APP_PASSWORD)@postgres:5432/iafactory"
        );
        let init = field(api, "/spec/template/spec/initContainers")
            .as_array()
            .unwrap();
        assert_eq!(init.len(), 1);
        let migrate = &init[0];
        assert_eq!(migrate["name"], "migrate");
        assert_eq!(migrate["args"], serde_json::json!(["migrate"]));
        assert_eq!(migrate["image"], serving["image"]);
        assert_eq!(
            migrate["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(
            secrets_of(migrate),
            [owner_secret, iafactory_crds::plan::SECRET_DATABASE_APP]
        );
        assert_eq!(
            names_of(migrate),
            [
                "IAF_DB_PASSWORD",
                "IAF_DATABASE_URL",
                "IAF_DATABASE_APP_PASSWORD"
            ]
        );
        // No other workload gets an init step.
        for child in objects
            .all()
            .filter(|c| matches!(c.resource.kind.as_str(), "Deployment" | "StatefulSet"))
            .filter(|c| c.name() != "api")
        {
            assert!(
                child.object.data["spec"]["template"]["spec"]
                    .get("initContainers")
                    .is_none(),
                "{}",
                child.describe()
            );
        }
    }
}

#[test]
fn the_build_is_deterministic_and_hashes_change_with_the_spec() {
    let (_, tenant) = tenant_samples()
        .into_iter()
        .find(|(_, t)| t.spec.plan != iafactory_crds::tenant::PlanTier::Enterprise)
        .unwrap();
    let (_, first) = build_sample(&tenant, true);
    let (_, second) = build_sample(&tenant, true);
    let hashes = |o: &TenantObjects| {
        o.all()
            .map(|c| (c.describe(), c.hash().to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(hashes(&first), hashes(&second));
    assert!(first.all().all(|c| c.hash().len() == 24));

    let mut bigger = tenant.clone();
    bigger.spec.plan = iafactory_crds::tenant::PlanTier::Enterprise;
    let (_, third) = build_sample(&bigger, true);
    assert_ne!(
        find(&first, "ResourceQuota", "tenant-quota").hash(),
        find(&third, "ResourceQuota", "tenant-quota").hash()
    );
}

#[test]
fn redis_runs_beside_replicated_apis_and_admits_only_the_api() {
    for (name, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let same_namespace = find(&objects, "NetworkPolicy", "allow-same-namespace");
        let Some(redis) = plan.component(iafactory_crds::plan::ComponentKind::Redis) else {
            assert!(
                objects.all().all(|c| c.name() != "redis"),
                "{name}: one API replica, no redis object"
            );
            // Backup pods get only their own policy (allow-backup), the API's its own
            // (allow-api-ingress, allow-api-egress).
            let expected = if plan.backup.is_some() {
                serde_json::json!({"matchExpressions": [{"key": "iafactory.dz/component", "operator": "NotIn", "values": ["backup", "api"]}]})
            } else {
                serde_json::json!({"matchExpressions": [{"key": "iafactory.dz/component", "operator": "NotIn", "values": ["api"]}]})
            };
            assert_eq!(
                field(same_namespace, "/spec/podSelector"),
                &expected,
                "{name}"
            );
            continue;
        };
        assert!(
            plan.component(iafactory_crds::plan::ComponentKind::Api)
                .unwrap()
                .replicas
                > 1
        );
        let deployment = find(&objects, "Deployment", "redis");
        assert_eq!(field(deployment, "/spec/replicas"), 1, "{name}");
        let container = field(deployment, "/spec/template/spec/containers/0");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["image"], redis.image.as_str());
        assert_eq!(container["args"], serde_json::json!(redis.args));
        let service = find(&objects, "Service", "redis");
        assert_eq!(field(service, "/spec/ports/0/port"), 6379, "{name}");
        // The namespace-wide allowance leaves redis, the backup pods and the API out:
        // their own policies decide.
        let confined = if plan.backup.is_some() {
            serde_json::json!(["redis", "backup", "api"])
        } else {
            serde_json::json!(["redis", "api"])
        };
        assert_eq!(
            field(same_namespace, "/spec/podSelector"),
            &serde_json::json!({"matchExpressions": [{"key": "iafactory.dz/component", "operator": "NotIn", "values": confined}]}),
            "{name}"
        );
        let admits = find(&objects, "NetworkPolicy", "allow-redis-clients");
        assert_eq!(
            field(
                admits,
                "/spec/podSelector/matchLabels/iafactory.dz~1component"
            ),
            "redis"
        );
        assert_eq!(
            field(admits, "/spec/ingress"),
            &serde_json::json!([{
                "from": [{"podSelector": {"matchLabels": {
                    "iafactory.dz/component": "api",
                    "iafactory.dz/tenant": plan.tenant,
                }}}],
                "ports": [{"port": 6379, "protocol": "TCP"}],
            }]),
            "{name}: only the tenant's API pods, only on Redis's port"
        );
        let api = find(&objects, "Deployment", "api");
        let env = field(api, "/spec/template/spec/containers/0/env")
            .as_array()
            .unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"] == "IAF_REDIS_URL" && e["value"] == "redis://redis:6379"),
            "{name}"
        );
    }
}

#[test]
fn a_backup_is_a_restricted_cron_job_in_the_platform_timezone_that_reaches_only_its_stores() {
    let mut with_backup = 0;
    for (name, tenant) in tenant_samples() {
        let (plan, objects) = build_sample(&tenant, false);
        let Some(backup) = &plan.backup else {
            assert!(
                objects.all().all(|c| c.resource.kind != "CronJob"
                    && c.name() != "allow-backup"
                    && c.name() != "backups"),
                "{name}: no backup, no backup objects"
            );
            continue;
        };
        with_backup += 1;
        let cron_job = find(&objects, "CronJob", "backup");
        let spec = &tenant.spec.backup.as_ref().unwrap();
        assert_eq!(field(cron_job, "/spec/schedule"), spec.schedule.as_str());
        assert_eq!(
            field(cron_job, "/spec/timeZone"),
            "Africa/Algiers",
            "{name}"
        );
        assert_eq!(field(cron_job, "/spec/concurrencyPolicy"), "Forbid");
        let labels = cron_job.object.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["iafactory.dz/managed-by"], "iafactory-operator");
        assert_eq!(labels["iafactory.dz/tenant"], plan.tenant);
        assert_eq!(
            cron_job.object.metadata.owner_references.as_ref().unwrap()[0].uid,
            "00000000-0000-4000-8000-000000000001"
        );
        let pod = field(cron_job, "/spec/jobTemplate/spec/template/spec");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        let container = &pod["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        // The tenant's own database image: its pg_dump matches the server.
        let database = plan
            .component(iafactory_crds::plan::ComponentKind::Database)
            .unwrap();
        assert_eq!(container["image"], database.image.as_str());
        let env: Vec<&str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            env.contains(&"PGPASSWORD") && env.contains(&"RETENTION"),
            "{env:?}"
        );
        assert_eq!(
            env.contains(&"QDRANT_URL"),
            backup.qdrant_url.is_some(),
            "{name}"
        );
        let claim = find(&objects, "PersistentVolumeClaim", "backups");
        assert_eq!(field(claim, "/spec/resources/requests/storage"), "5Gi");

        // Out: the database's port, Qdrant's HTTP port for a Qdrant tenant; nothing in.
        let policy = find(&objects, "NetworkPolicy", "allow-backup");
        assert_eq!(
            field(
                policy,
                "/spec/podSelector/matchLabels/iafactory.dz~1component"
            ),
            "backup"
        );
        assert_eq!(
            field(policy, "/spec/policyTypes"),
            &serde_json::json!(["Ingress", "Egress"])
        );
        assert!(policy.object.data.pointer("/spec/ingress").is_none());
        let mut expected = vec![serde_json::json!({
            "to": [{"podSelector": {"matchLabels": {"iafactory.dz/component": "postgres", "iafactory.dz/tenant": plan.tenant}}}],
            "ports": [{"port": 5432, "protocol": "TCP"}],
        })];
        if backup.qdrant_url.is_some() {
            expected.push(serde_json::json!({
                "to": [{"podSelector": {"matchLabels": {"iafactory.dz/component": "qdrant", "iafactory.dz/tenant": plan.tenant}}}],
                "ports": [{"port": 6333, "protocol": "TCP"}],
            }));
        }
        assert_eq!(
            field(policy, "/spec/egress"),
            &serde_json::json!(expected),
            "{name}"
        );
    }
    assert!(with_backup >= 2, "the samples have backups");

    // The platform configuration's timezone is the CronJob's.
    let (_, tenant) = tenant_samples()
        .into_iter()
        .find(|(_, t)| t.spec.backup.is_some())
        .unwrap();
    let figment = PlatformConfig::figment().merge(figment::providers::Serialized::default(
        "timezone",
        "Europe/Paris",
    ));
    let config = PlatformConfig::extract(figment).unwrap();
    let plan = iafactory_crds::plan(&tenant, &config).unwrap();
    let objects = build(
        &plan,
        &BuildContext {
            owner: owner(&plan.tenant),
            service_monitors: false,
            operator: Default::default(),
        },
    );
    assert_eq!(
        field(find(&objects, "CronJob", "backup"), "/spec/timeZone"),
        "Europe/Paris"
    );
}

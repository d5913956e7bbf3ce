//! The Helm chart `charts/iafactory-operator`, rendered by the real helm (TESTBED.md):
//! its ClusterRoles are the operator's own RBAC (nothing cluster-wide on Secrets or
//! workloads), its CRDs are the generated ones, its
//! appVersion is the workspace version, it keeps the values contract, every value set
//! renders what it should, the pod passes the `restricted` profile, wrong values are
//! refused, and every flag it passes exists in the operator binary.
//! scripts/checks/20-helm.sh lints it and validates the output against the Kubernetes
//! schemas.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use iafactory_e2e::{root, workspace_binary};

fn chart() -> PathBuf {
    root().join("charts/iafactory-operator")
}

fn helm() -> PathBuf {
    std::env::var_os("IAF_TEST_HELM").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "IAF_TEST_HELM is not set: run scripts/test, or scripts/engines.sh up helm && source /tmp/iafactory-engines/env"
        )
    })
}

/// `helm template` with these extra arguments: every object, or helm's error.
fn try_render(args: &[&str]) -> Result<Vec<Value>, String> {
    let output = Command::new(helm())
        .args(["template", "iafactory"])
        .arg(chart())
        .args(["--namespace", "iafactory-system", "--include-crds"])
        .args(args)
        .output()
        .expect("helm runs");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).expect("helm prints UTF-8");
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("helm rendered invalid YAML ({e}):\n{text}"));
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn render(args: &[&str]) -> Vec<Value> {
    try_render(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

fn render_values(set: &str) -> Vec<Value> {
    let file = chart().join(format!("ci/{set}-values.yaml"));
    render(&["-f", file.to_str().expect("a UTF-8 path")])
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            o["kind"]
                .as_str()
                .expect("every object has a kind")
                .to_owned()
        })
        .collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn container(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .expect("the operator has args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_owned())
        .collect()
}

fn env(objects: &[Value], name: &str) -> Option<Value> {
    container(objects)["env"]
        .as_array()
        .expect("the operator has env")
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

#[test]
fn app_version_is_the_workspace_version() {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let chart: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion must be the workspace version in the root Cargo.toml"
    );
    // The image tag defaults to it.
    let objects = render(&[]);
    assert_eq!(
        container(&objects)["image"],
        format!("iafactory/operator:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let yaml_files = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let generated = yaml_files(&root().join("crds"));
    let in_chart = yaml_files(&chart().join("crds"));
    assert!(!generated.is_empty());
    assert_eq!(
        in_chart, generated,
        "charts/iafactory-operator/crds/ must hold the files of crds/: cp crds/*.yaml charts/iafactory-operator/crds/"
    );
    for name in &generated {
        let a = std::fs::read(root().join("crds").join(name)).unwrap();
        let b = std::fs::read(chart().join("crds").join(name)).unwrap();
        assert!(
            a == b,
            "charts/iafactory-operator/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/iafactory-operator/crds/"
        );
    }
    // helm installs them: they are in the rendered output, unchanged.
    let objects = render(&[]);
    let crds: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from([
            "knowledgebases.iafactory.dz".to_owned(),
            "tenants.iafactory.dz".to_owned(),
            "workflows.iafactory.dz".to_owned(),
        ])
    );
}

#[test]
fn cluster_role_is_the_operators_rbac() {
    // One source: operator/src/rbac.rs -> config/rbac/clusterrole.yaml (the operator's
    // tests check that) -> the chart, through its files/rbac link.
    let link = std::fs::read_link(chart().join("files/rbac")).expect("files/rbac is a link");
    assert_eq!(link, Path::new("../../../config/rbac"));
    let objects = render(&[]);
    let role = operator_role(&objects);
    let expected = serde_json::to_value(iafactory_operator::rbac::cluster_role().rules).unwrap();
    assert_eq!(
        role["rules"], expected,
        "the chart's ClusterRole must carry exactly the rules of operator/src/rbac.rs (regenerate config/rbac/ with `UPDATE_GOLDEN=1 cargo test -p iafactory-operator --test rbac`)"
    );
    // The tenant role, under the one name the operator may bind, and bound by nothing
    // in the chart: the operator binds it in each tenant namespace.
    let tenant = tenant_role(&objects);
    assert_eq!(
        tenant["rules"],
        serde_json::to_value(iafactory_operator::rbac::tenant_role().rules).unwrap()
    );
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["name"],
        one(&objects, "ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(binding["subjects"][0]["namespace"], "iafactory-system");
    assert_ne!(binding["roleRef"]["name"], tenant["metadata"]["name"]);
    // The operator learns its ServiceAccount, which the tenant RoleBindings name, from
    // the downward API.
    assert_eq!(
        env(&objects, "IAF_OPERATOR_SERVICE_ACCOUNT").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    // No other RBAC object widens it.
    for kind in ["Role", "RoleBinding"] {
        assert!(
            !kinds(&objects).contains(kind),
            "the chart renders a {kind}"
        );
    }
}

fn cluster_roles(objects: &[Value]) -> Vec<&Value> {
    let roles: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .collect();
    assert_eq!(
        roles.len(),
        2,
        "the operator's ClusterRole and the tenant role"
    );
    roles
}

fn tenant_role(objects: &[Value]) -> &Value {
    cluster_roles(objects)
        .into_iter()
        .find(|r| r["metadata"]["name"] == iafactory_operator::rbac::TENANT_ROLE)
        .expect("the chart renders the tenant role")
}

/// The ClusterRole the chart binds cluster-wide.
fn operator_role(objects: &[Value]) -> &Value {
    let bound = &one(objects, "ClusterRoleBinding")["roleRef"]["name"];
    cluster_roles(objects)
        .into_iter()
        .find(|r| &r["metadata"]["name"] == bound)
        .expect("the ClusterRoleBinding binds a rendered ClusterRole")
}

/// Issue #19, item 7: what the chart grants cluster-wide, read from the rendered
/// output: no Secret listed or watched anywhere, no workload written anywhere; writes
/// go through the tenant role, which only the operator's per-namespace RoleBindings bind.
#[test]
fn the_cluster_wide_grant_reads_no_secret_and_writes_no_workload() {
    let objects = render(&[]);
    let role = operator_role(&objects);
    let writes = [
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "*",
    ];
    let workloads = [
        ("", "secrets"),
        ("", "configmaps"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("", "persistentvolumeclaims"),
        ("", "resourcequotas"),
        ("", "limitranges"),
        ("", "pods"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("networking.k8s.io", "networkpolicies"),
        ("networking.k8s.io", "ingresses"),
        ("policy", "poddisruptionbudgets"),
        ("monitoring.coreos.com", "servicemonitors"),
    ];
    let names = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for rule in role["rules"].as_array().unwrap() {
        let (groups, resources, verbs) = (
            names(&rule["apiGroups"]),
            names(&rule["resources"]),
            names(&rule["verbs"]),
        );
        assert!(
            !groups.contains(&"*".to_owned()) && !resources.contains(&"*".to_owned()),
            "a wildcard: {rule}"
        );
        for (group, resource) in workloads {
            if !groups.iter().any(|g| g == group) || !resources.iter().any(|r| r == resource) {
                continue;
            }
            if resource == "secrets" {
                panic!("the operator may touch Secrets in every namespace: {rule}");
            }
            for verb in writes {
                assert!(
                    !verbs.iter().any(|v| v == verb),
                    "the operator may {verb} {group}/{resource} in every namespace: {rule}"
                );
            }
        }
        // RBAC objects: its own bindings (patched by name only), and `bind` on the
        // tenant role only.
        if groups.iter().any(|g| g == "rbac.authorization.k8s.io") {
            for resource in &resources {
                match resource.as_str() {
                    "rolebindings" if verbs.iter().any(|v| v == "patch") => {
                        assert_eq!(names(&rule["resourceNames"]), ["iafactory-operator"]);
                        assert_eq!(verbs, ["patch"]);
                    }
                    "rolebindings" => assert_eq!(verbs, ["get", "list", "watch", "create"]),
                    "clusterroles" => {
                        assert_eq!(verbs, ["bind"]);
                        assert_eq!(
                            names(&rule["resourceNames"]),
                            [iafactory_operator::rbac::TENANT_ROLE]
                        );
                    }
                    other => panic!("the operator may touch {other}: {rule}"),
                }
            }
        }
    }
    // Nothing in the chart binds the tenant role.
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        assert_ne!(
            binding["roleRef"]["name"],
            iafactory_operator::rbac::TENANT_ROLE
        );
    }
}

#[test]
fn defaults_render_the_operator_and_nothing_optional() {
    let objects = render_values("defaults");
    let expected: BTreeSet<String> = [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "NetworkPolicy",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(kinds(&objects), expected);
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let args = args(&objects);
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8080".to_owned()));
    assert!(!args.contains(&"--no-leader-election".to_owned()));
    assert_eq!(
        env(&objects, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env(&objects, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(env(&objects, "IAF_PLATFORM__REGISTRY").is_none());
    // The tenants' NetworkPolicies admit the operator from the release's namespace.
    assert_eq!(
        env(&objects, "IAF_PLATFORM__NETWORK__OPERATOR_NAMESPACE").unwrap()["value"],
        "iafactory-system"
    );
    // The metrics Service selects the operator's pods on the probes' port.
    let service = one(&objects, "Service");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[key], value, "the Service selects {key}");
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    let container = container(&objects);
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
}

#[test]
fn the_pod_passes_the_restricted_profile() {
    for set in ["defaults", "monitoring", "ha", "airgapped"] {
        let objects = render_values(set);
        let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{set}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{set}"
        );
        assert_ne!(pod["securityContext"]["runAsUser"], 0, "{set}");
        assert!(
            pod["hostNetwork"].is_null() && pod["hostPID"].is_null(),
            "{set}"
        );
        let security = &pod["containers"][0]["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false, "{set}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{set}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{set}");
        assert!(security["capabilities"]["add"].is_null(), "{set}");
        assert!(
            pod["containers"][0]["resources"]["limits"]["memory"].is_string(),
            "{set}: the operator has a memory limit"
        );
    }
}

#[test]
fn monitoring_embeds_the_rules_and_dashboards_of_config() {
    let objects = render_values("monitoring");
    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let service = one(&objects, "Service");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the metrics Service by {key}"
        );
    }

    // The PrometheusRule holds every group of config/prometheus/*rules*.yml, unchanged.
    let rule = one(&objects, "PrometheusRule");
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let mut expected_groups = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("config/prometheus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.contains("rules") && name.ends_with(".yml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in &files {
        let value: Value = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        expected_groups.extend(value["groups"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(rule["spec"]["groups"], Value::Array(expected_groups));

    // The dashboards ConfigMap holds each config/grafana/dashboards/*.json, byte for
    // byte, labelled for the Grafana sidecar.
    let dashboards = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboards ConfigMap");
    assert_eq!(
        dashboards["metadata"]["annotations"]["grafana_folder"],
        "IAFactory"
    );
    let data = dashboards["data"].as_object().unwrap();
    let mut count = 0;
    for entry in std::fs::read_dir(root().join("config/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !name.ends_with(".json") {
            continue;
        }
        count += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            data[name].as_str().map(str::trim_end),
            Some(text.trim_end()),
            "{name} in the ConfigMap"
        );
    }
    assert_eq!(
        data.len(),
        count,
        "the ConfigMap holds exactly the dashboards"
    );

    // The NetworkPolicy lets the monitoring namespace scrape.
    let policy = one(&objects, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
}

#[test]
fn ha_runs_two_replicas_under_leader_election_and_a_pdb() {
    let objects = render_values("ha");
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(!args(&objects).contains(&"--no-leader-election".to_owned()));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(
        pod["tolerations"][0]["key"],
        "node-role.kubernetes.io/control-plane"
    );
    assert!(pod["topologySpreadConstraints"].is_array());
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn airgapped_pulls_everything_through_the_mirror() {
    let objects = render_values("airgapped");
    let container = container(&objects);
    assert_eq!(
        container["image"],
        "registry.univ-tlemcen.dz/iafactory/iafactory/operator:0.1.0"
    );
    // The tenants' images go through the same mirror.
    assert_eq!(
        env(&objects, "IAF_PLATFORM__REGISTRY").unwrap()["value"],
        "registry.univ-tlemcen.dz/iafactory"
    );
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["imagePullSecrets"],
        json!([{"name": "mirror-credentials"}, {"name": "local-extra-secret"}])
    );
    // The platform configuration is mounted and named by IAF_OPERATOR_CONFIG.
    let config = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the platform config ConfigMap");
    assert!(
        config["data"]["iafactory.toml"]
            .as_str()
            .unwrap()
            .contains("ia.univ-tlemcen.dz")
    );
    assert_eq!(
        env(&objects, "IAF_OPERATOR_CONFIG").unwrap()["value"],
        "/etc/iafactory/iafactory.toml"
    );
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/iafactory");
}

/// The keys outside checks render the chart with (issue #9's values contract).
#[test]
fn the_values_contract_holds() {
    let objects = render(&[
        "--set",
        "replicaCount=3",
        "--set",
        "image.repository=example/op",
        "--set",
        "image.tag=9.9.9",
        "--set",
        "global.imageRegistry=mirror.example.dz:5000",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboards.enabled=true",
        "--set",
        "resources.limits.memory=1Gi",
        "--set",
        "nodeSelector.disktype=ssd",
        "--set",
        "tolerations[0].key=dedicated",
        "--set",
        "tolerations[0].operator=Exists",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
        "--set",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ]);
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        pod["containers"][0]["image"],
        "mirror.example.dz:5000/example/op:9.9.9"
    );
    assert_eq!(pod["containers"][0]["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(pod["nodeSelector"]["disktype"], "ssd");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object());
    let kinds = kinds(&objects);
    for kind in ["ServiceMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(kinds.contains(kind), "{kind} is rendered");
    }
}

#[test]
fn wrong_values_are_refused() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=two"], "replicaCount"),
        (&["--set", "notAValue=1"], "notAValue"),
        (&["--set", "image.digest=sha256:short"], "digest"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "metrics.port=70000"], "port"),
        (
            &["--set-string", "metrics.serviceMonitor.enabled=yes"],
            "enabled",
        ),
        (
            &["--set", "metrics.serviceMonitor.interval=often"],
            "interval",
        ),
        (
            &["--set", "global.imageRegistry=https://mirror"],
            "imageRegistry",
        ),
        (&["--set", "resources.limits.memory=lots"], "memory"),
        (
            &[
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "leaderElection",
        ),
        (
            &[
                "--set",
                "serviceAccount.create=false",
                "--set",
                "serviceAccount.name=",
            ],
            "serviceAccount.name",
        ),
    ];
    for (args, mentions) in cases {
        match try_render(args) {
            Ok(_) => panic!("helm template {args:?} should fail"),
            Err(error) => assert!(
                error.contains(mentions),
                "helm template {args:?} failed without naming {mentions}:\n{error}"
            ),
        }
    }
}

#[test]
fn notes_tell_how_to_create_a_first_tenant() {
    let output = Command::new(helm())
        .args(["install", "iafactory"])
        .arg(chart())
        .args(["--dry-run=client", "--namespace", "iafactory-system"])
        .args(["--set", "prometheusRule.enabled=true"])
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let notes = text.split("NOTES:").nth(1).expect("helm prints the NOTES");
    for needle in [
        "kind: Tenant",
        "apiVersion: iafactory.dz/v1alpha1",
        "kubectl get tenant demo",
        "PrometheusRule",
    ] {
        assert!(
            notes.contains(needle),
            "NOTES.txt lacks {needle:?}:\n{notes}"
        );
    }
    // The Tenant in the NOTES is a valid one: it parses as our type.
    let manifest: String = notes
        .split("kubectl apply -f -\n")
        .nth(1)
        .expect("the NOTES hold a Tenant between heredoc markers")
        .lines()
        .take_while(|l| l.trim() != "YAML")
        .map(|l| format!("{}\n", l.strip_prefix("     ").unwrap_or(l)))
        .collect();
    let tenant: Value = serde_yaml::from_str(&manifest).unwrap();
    assert_eq!(tenant["kind"], "Tenant");
    assert_eq!(tenant["spec"]["plan"], "free");
}

/// Every flag the chart passes exists in the operator binary built from this tree.
#[test]
fn the_chart_passes_flags_the_operator_has() {
    let binary = workspace_binary("iafactory-operator", &["operator/src", "crds/src"]);
    let help = Command::new(&binary).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let mut rendered = args(&render_values("ha"));
    rendered.extend(args(&render(&[
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "operator.logJson=true",
    ])));
    for arg in rendered {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "the chart passes {flag}, which iafactory-operator --help does not list"
        );
    }
    for variable in [
        "POD_NAME",
        "POD_NAMESPACE",
        "RUST_LOG",
        "IAF_OPERATOR_CONFIG",
        "IAF_OPERATOR_SERVICE_ACCOUNT",
    ] {
        assert!(
            help.contains(variable),
            "iafactory-operator reads {variable}"
        );
    }
}

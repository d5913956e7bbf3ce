//! End to end: the real `iafactory-operator` process against the in-memory API server
//! (`kube-testserver`), driven with the machine's `kubectl` and with kube-rs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use iafactory_crds::{PlatformConfig, Tenant};
use iafactory_operator::build::{BuildContext, build};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use kube_testserver::{Options, TestServer};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const KUBECTL: &str = "/usr/bin/kubectl";
const LEASE_NAMESPACE: &str = "iafactory-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Cluster {
    server: TestServer,
    client: Client,
}

async fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            // kubectl caches discovery per host and port: a port reused by another
            // test's server would serve it a stale list of kinds.
            .arg("--cache-dir")
            .arg(kubeconfig.with_extension("kubectl-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .current_dir(repo())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("kubectl finishes")
    .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl Cluster {
    /// A server with the CRDs applied by kubectl and the operator's namespace.
    async fn start() -> Self {
        let server = TestServer::start(Options {
            ready_delay: Duration::from_millis(300),
            ..Options::default()
        })
        .await
        .expect("the test server starts");
        let client = server.client();
        let cluster = Cluster { server, client };
        cluster.kubectl(&["apply", "-f", "crds/"]).await;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
            Api::all(cluster.client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}})).unwrap(),
            )
            .await
            .expect("the operator's namespace is created");
        cluster
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        kubectl(self.server.kubeconfig_path(), args).await
    }

    fn object(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.server.get(group, resource, namespace, name)
    }

    fn tenant(&self, name: &str) -> Option<Value> {
        self.object("iafactory.dz", "tenants", "", name)
    }
}

/// Waits until `check` gives a value, or fails with what it last saw.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("{what}: not within {limit:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn condition(object: &Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

async fn wait_condition(
    cluster: &Cluster,
    tenant: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    limit: Duration,
) -> Value {
    eventually(&format!("Tenant {tenant} {type_}={status}"), limit, || {
        let object = cluster.tenant(tenant).ok_or("no tenant")?;
        match condition(&object, type_) {
            Some((s, r, _)) if s == status && reason.is_none_or(|want| want == r) => Ok(object),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Operator {
    child: Child,
    metrics: String,
}

impl Operator {
    async fn start(cluster: &Cluster, identity: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_iafactory-operator"))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--lease-namespace", LEASE_NAMESPACE, "--identity", identity])
            .args(["--log", "info,kube=warn"])
            .args(extra)
            .env("KUBECONFIG", cluster.server.kubeconfig_path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the operator starts");
        let operator = Operator {
            child,
            metrics: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/readyz", operator.metrics)).await
                && response.status() == 200
            {
                return operator;
            }
            assert!(Instant::now() < deadline, "the operator never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of one metric's samples whose labels contain `labels`.
    async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

async fn apply_sample(cluster: &Cluster, file: &str) {
    cluster
        .kubectl(&["apply", "-f", &format!("config/samples/{file}")])
        .await;
}

fn names(cluster: &Cluster, group: &str, resource: &str, namespace: &str) -> BTreeSet<String> {
    cluster
        .server
        .list(group, resource, Some(namespace))
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_tenant_becomes_ready_and_a_second_reconcile_writes_nothing() {
    let cluster = Cluster::start().await;
    let operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-univ-tlemcen.yaml").await;
    let tenant = wait_condition(
        &cluster,
        "univ-tlemcen",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let ns = "iaf-univ-tlemcen";

    assert_eq!(
        tenant["status"]["observedGeneration"],
        tenant["metadata"]["generation"]
    );
    assert_eq!(tenant["status"]["namespace"], ns);
    assert_eq!(
        tenant["status"]["endpoints"]["api"],
        format!("http://api.{ns}.svc:8180")
    );
    let namespace = cluster
        .object("", "namespaces", "", ns)
        .expect("the namespace exists");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(labels["iafactory.dz/tenant"], "univ-tlemcen");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "iafactory-operator");
    let policies = names(&cluster, "networking.k8s.io", "networkpolicies", ns);
    for policy in [
        "default-deny",
        "allow-same-namespace",
        "allow-dns",
        "allow-api-ingress",
    ] {
        assert!(
            policies.contains(policy),
            "{policy} missing from {policies:?}"
        );
    }
    assert!(
        !policies.contains("allow-llm-providers"),
        "strict sovereignty opens no provider egress"
    );
    assert!(
        cluster
            .object("", "resourcequotas", ns, "tenant-quota")
            .is_some()
    );
    assert!(
        cluster
            .object("", "limitranges", ns, "tenant-limits")
            .is_some()
    );
    let secrets = names(&cluster, "", "secrets", ns);
    for secret in ["api-jwt", "postgres-credentials", "operator-token"] {
        assert!(
            secrets.contains(secret),
            "{secret} missing from {secrets:?}"
        );
    }
    assert!(
        cluster
            .object("apps", "statefulsets", ns, "postgres")
            .is_some()
    );
    assert!(cluster.object("apps", "deployments", ns, "api").is_some());
    let jwt = cluster.object("", "secrets", ns, "api-jwt").unwrap();
    let jwt_value = jwt["data"]["secret"].as_str().unwrap().to_owned();

    // A claim as the StatefulSet controller creates it from a claim template: our
    // labels, no owner, not built by us. It holds data: never an orphan.
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(cluster.client.clone(), ns);
    let claim_labels = cluster
        .object("apps", "statefulsets", ns, "postgres")
        .unwrap()["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
        .clone();
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "data-postgres-0", "labels": claim_labels},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // Settled: a full reconcile (forced by touching the Tenant) writes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs_before = operator
        .metric(
            "iafactory_operator_reconcile_runs_total",
            "controller=\"tenant\"",
        )
        .await;
    cluster.server.reset_counts();
    let tenants: Api<Tenant> = Api::all(cluster.client.clone());
    tenants
        .patch(
            "univ-tlemcen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": "1"}}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while operator
        .metric(
            "iafactory_operator_reconcile_runs_total",
            "controller=\"tenant\"",
        )
        .await
        <= runs_before
    {
        assert!(
            Instant::now() < deadline,
            "the touch never caused a reconcile"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = cluster.server.counts();
    assert_eq!(counts.writes(), 1, "only the test's own patch: {counts:?}");
    assert!(
        cluster
            .object("", "persistentvolumeclaims", ns, "data-postgres-0")
            .is_some(),
        "a claim is never collected"
    );
    // The Secret was generated once and kept.
    assert_eq!(
        cluster.object("", "secrets", ns, "api-jwt").unwrap()["data"]["secret"],
        jwt_value.as_str()
    );
    operator.kill().await;
}

#[tokio::test]
async fn plan_changes_follow_and_suspend_keeps_the_data() {
    let cluster = Cluster::start().await;
    let _operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-small-firm.yaml").await;
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let ns = "iaf-cabinet-benali";
    let config = PlatformConfig::default();
    let pro = &config.plans.pro;

    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"plan":"pro"}}"#,
        ])
        .await;
    eventually(
        "the quota follows the plan",
        Duration::from_secs(30),
        || {
            let quota = cluster
                .object("", "resourcequotas", ns, "tenant-quota")
                .ok_or("no quota")?;
            let cpu = quota["spec"]["hard"]["requests.cpu"].clone();
            (cpu == pro.quota.cpu.as_str())
                .then_some(())
                .ok_or(format!("{cpu}"))
        },
    )
    .await;
    let small_firm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("config/samples/tenant-small-firm.yaml")).unwrap(),
    )
    .unwrap();
    if small_firm["spec"]["components"]["api"]["replicas"].is_null() {
        eventually(
            "the API replicas follow the plan",
            Duration::from_secs(30),
            || {
                let api = cluster
                    .object("apps", "deployments", ns, "api")
                    .ok_or("no api")?;
                (api["spec"]["replicas"] == pro.defaults.api.replicas)
                    .then_some(())
                    .ok_or(format!("{}", api["spec"]["replicas"]))
            },
        )
        .await;
        // Applied after the Deployment in the same pass: a moment later.
        eventually("two replicas get a budget", Duration::from_secs(30), || {
            cluster
                .object("policy", "poddisruptionbudgets", ns, "api")
                .map(|_| ())
                .ok_or_else(|| "no budget yet".to_owned())
        })
        .await;
    }
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;

    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspended":true}}"#,
        ])
        .await;
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "False",
        Some("Suspended"),
        Duration::from_secs(30),
    )
    .await;
    for (resource, name) in [("deployments", "api"), ("statefulsets", "postgres")] {
        let workload = cluster.object("apps", resource, ns, name).unwrap();
        assert_eq!(workload["spec"]["replicas"], 0, "{resource}/{name}");
    }
    assert!(
        names(&cluster, "", "secrets", ns).contains("postgres-credentials"),
        "the data's credentials stay"
    );
    let claims_before = cluster
        .object("apps", "statefulsets", ns, "postgres")
        .unwrap()["spec"]["volumeClaimTemplates"]
        .clone();

    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspended":false}}"#,
        ])
        .await;
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let postgres = cluster
        .object("apps", "statefulsets", ns, "postgres")
        .unwrap();
    assert_eq!(postgres["spec"]["replicas"], 1);
    assert_eq!(postgres["spec"]["volumeClaimTemplates"], claims_before);
}

#[tokio::test]
async fn deletion_honours_retention() {
    let cluster = Cluster::start().await;
    let _operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-small-firm.yaml").await;
    apply_sample(&cluster, "tenant-univ-tlemcen.yaml").await;
    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"retention":"Retain"}}"#,
        ])
        .await;
    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "univ-tlemcen",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"retention":"Delete"}}"#,
        ])
        .await;
    for tenant in ["cabinet-benali", "univ-tlemcen"] {
        wait_condition(
            &cluster,
            tenant,
            "Ready",
            "True",
            None,
            Duration::from_secs(60),
        )
        .await;
    }

    // kubectl delete waits for the finalizer.
    cluster
        .kubectl(&["delete", "iaft", "cabinet-benali", "--timeout=60s"])
        .await;
    assert!(cluster.tenant("cabinet-benali").is_none());
    let ns = "iaf-cabinet-benali";
    let namespace = cluster
        .object("", "namespaces", "", ns)
        .expect("a retained namespace stays");
    assert_eq!(
        namespace["metadata"]["labels"]["iafactory.dz/retained"],
        "true"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // garbage collection's turn
    assert!(names(&cluster, "apps", "deployments", ns).is_empty());
    assert!(names(&cluster, "apps", "statefulsets", ns).is_empty());
    assert!(names(&cluster, "", "secrets", ns).contains("postgres-credentials"));
    let policies = cluster
        .server
        .list("networking.k8s.io", "networkpolicies", Some(ns));
    assert!(!policies.is_empty(), "the retained namespace stays closed");
    assert!(policies.iter().all(|p| {
        p["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty)
    }));

    cluster
        .kubectl(&["delete", "iaft", "univ-tlemcen", "--timeout=60s"])
        .await;
    eventually(
        "the namespace of a deleted tenant goes",
        Duration::from_secs(30),
        || {
            cluster
                .object("", "namespaces", "", "iaf-univ-tlemcen")
                .map_or(Ok(()), |n| Err(format!("{}", n["status"])))
        },
    )
    .await;
}

#[tokio::test]
async fn an_invalid_tenant_gets_a_condition_and_the_operator_stays_up() {
    let cluster = Cluster::start().await;
    let operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    let invalid = json!({
        "apiVersion": "iafactory.dz/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "too-greedy"},
        "spec": {"plan": "free", "components": {"ollama": {"enabled": true, "gpu": 2}}}
    });
    let tenants: Api<Tenant> = Api::all(cluster.client.clone());
    tenants
        .create(
            &PostParams::default(),
            &serde_json::from_value(invalid).unwrap(),
        )
        .await
        .unwrap();
    let tenant = wait_condition(
        &cluster,
        "too-greedy",
        "Ready",
        "False",
        Some("InvalidSpec"),
        Duration::from_secs(30),
    )
    .await;
    let (_, _, message) = condition(&tenant, "Ready").unwrap();
    assert!(message.contains("GPU"), "{message}");
    assert_eq!(condition(&tenant, "Degraded").unwrap().0, "True");
    assert!(
        cluster
            .object("", "namespaces", "", "iaf-too-greedy")
            .is_none(),
        "nothing is built for an invalid spec"
    );
    let failures = operator
        .metric(
            "iafactory_operator_reconcile_failures_total",
            "controller=\"tenant\"",
        )
        .await;
    assert_eq!(
        failures, 0.0,
        "an invalid spec waits for a change; it is not an error to retry"
    );

    // The operator carries on with valid tenants.
    assert_eq!(
        reqwest::get(format!("{}/healthz", operator.metrics))
            .await
            .unwrap()
            .status(),
        200
    );
    apply_sample(&cluster, "tenant-small-firm.yaml").await;
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    // Fixing the spec is picked up.
    tenants
        .patch(
            "too-greedy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"components": {"ollama": {"gpu": 0}}}})),
        )
        .await
        .unwrap();
    wait_condition(
        &cluster,
        "too-greedy",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn a_failing_workload_makes_the_tenant_degraded() {
    let cluster = Cluster::start().await;
    let _operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    cluster
        .server
        .set_failing("iaf-cabinet-benali", "api", true);
    apply_sample(&cluster, "tenant-small-firm.yaml").await;
    // Degraded by the failure, not only by its models (strict, with no source allowed).
    let tenant = wait_condition(
        &cluster,
        "cabinet-benali",
        "Degraded",
        "True",
        Some("ComponentFailed"),
        Duration::from_secs(30),
    )
    .await;
    let (_, reason, message) = condition(&tenant, "ApiReady").unwrap();
    assert_eq!(reason, "Failed", "{message}");
    assert_eq!(condition(&tenant, "Ready").unwrap().1, "ComponentFailed");
    cluster
        .server
        .set_failing("iaf-cabinet-benali", "api", false);
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
}

/// What the operator should have built for a stored Tenant: `Kind/name` and hash.
fn expected_objects(cluster: &Cluster, name: &str) -> BTreeSet<(String, String)> {
    let tenant: Tenant = serde_json::from_value(cluster.tenant(name).unwrap()).unwrap();
    let plan = iafactory_crds::plan(&tenant, &PlatformConfig::default()).unwrap();
    let objects = build(
        &plan,
        &BuildContext {
            owner: tenant.controller_owner_ref(&()).unwrap(),
            service_monitors: false,
            operator: Default::default(),
        },
    );
    objects
        .all()
        .map(|c| (c.describe(), c.hash().to_owned()))
        .collect()
}

fn stored_objects(cluster: &Cluster, name: &str) -> BTreeSet<(String, String)> {
    let ns = format!("iaf-{name}");
    let mut found = BTreeSet::new();
    for (group, resource, kind) in [
        ("", "namespaces", "Namespace"),
        ("", "resourcequotas", "ResourceQuota"),
        ("", "limitranges", "LimitRange"),
        ("networking.k8s.io", "networkpolicies", "NetworkPolicy"),
        ("", "serviceaccounts", "ServiceAccount"),
        ("apps", "deployments", "Deployment"),
        ("apps", "statefulsets", "StatefulSet"),
        ("", "services", "Service"),
        ("policy", "poddisruptionbudgets", "PodDisruptionBudget"),
        ("batch", "jobs", "Job"),
        ("batch", "cronjobs", "CronJob"),
        ("", "persistentvolumeclaims", "PersistentVolumeClaim"),
        ("networking.k8s.io", "ingresses", "Ingress"),
        ("rbac.authorization.k8s.io", "rolebindings", "RoleBinding"),
    ] {
        let objects = if resource == "namespaces" {
            cluster
                .server
                .list(group, resource, None)
                .into_iter()
                .filter(|o| o["metadata"]["name"] == ns.as_str())
                .collect()
        } else {
            cluster.server.list(group, resource, Some(&ns))
        };
        for object in objects {
            if object["metadata"]["labels"]["iafactory.dz/tenant"] != name {
                continue;
            }
            // Claims made from a StatefulSet's templates are not built by us.
            if kind == "PersistentVolumeClaim"
                && object["metadata"]["annotations"]["iafactory.dz/applied-hash"].is_null()
            {
                continue;
            }
            let hash = object["metadata"]["annotations"]["iafactory.dz/applied-hash"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            found.insert((
                format!("{kind}/{}", object["metadata"]["name"].as_str().unwrap()),
                hash,
            ));
        }
    }
    found
}

#[tokio::test]
async fn killed_mid_reconcile_and_restarted_it_converges_to_the_same_objects() {
    let cluster = Cluster::start().await;
    let operator = Operator::start(&cluster, "first", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-enterprise-qdrant-gpu.yaml").await;
    // Somewhere in the middle of the first apply pass.
    eventually("the first objects appear", Duration::from_secs(20), || {
        (stored_objects(&cluster, "sonatrach-rd").len() >= 3)
            .then_some(())
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    operator.kill().await;
    let partial = stored_objects(&cluster, "sonatrach-rd");

    let _second = Operator::start(&cluster, "second", &["--no-leader-election"]).await;
    wait_condition(
        &cluster,
        "sonatrach-rd",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let expected = expected_objects(&cluster, "sonatrach-rd");
    assert!(
        partial.len() < expected.len() || partial == expected,
        "the kill came mid-reconcile or after it"
    );
    assert_eq!(stored_objects(&cluster, "sonatrach-rd"), expected);
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let cluster = Cluster::start().await;
    let first = Operator::start(&cluster, "replica-a", &[]).await;
    let second = Operator::start(&cluster, "replica-b", &[]).await;
    apply_sample(&cluster, "tenant-small-firm.yaml").await;
    wait_condition(
        &cluster,
        "cabinet-benali",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;

    let lease = cluster
        .object(
            "coordination.k8s.io",
            "leases",
            LEASE_NAMESPACE,
            "iafactory-operator",
        )
        .expect("the Lease exists");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    let (leader, follower) = if holder == "replica-a" {
        (first, second)
    } else {
        (second, first)
    };
    assert!(leader.metric("iafactory_operator_writes_total", "").await > 0.0);
    assert_eq!(
        follower.metric("iafactory_operator_writes_total", "").await,
        0.0
    );
    assert_eq!(
        follower
            .metric("iafactory_operator_reconcile_runs_total", "")
            .await,
        0.0
    );

    // The follower takes over when the leader dies.
    leader.kill().await;
    cluster
        .kubectl(&[
            "patch",
            "iaft",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"plan":"pro"}}"#,
        ])
        .await;
    let pro_cpu = PlatformConfig::default()
        .plans
        .pro
        .quota
        .cpu
        .as_str()
        .to_owned();
    eventually("the new leader reconciles", Duration::from_secs(60), || {
        let quota = cluster
            .object("", "resourcequotas", "iaf-cabinet-benali", "tenant-quota")
            .ok_or("no quota")?;
        (quota["spec"]["hard"]["requests.cpu"] == pro_cpu.as_str())
            .then_some(())
            .ok_or(format!("{}", quota["spec"]["hard"]))
    })
    .await;
    assert!(follower.metric("iafactory_operator_writes_total", "").await > 0.0);
}

#[tokio::test]
async fn without_the_crds_it_fails_fast_with_an_install_hint() {
    let server = TestServer::start(Options::default()).await.unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(env!("CARGO_BIN_EXE_iafactory-operator"))
            .args(["--metrics-addr", "127.0.0.1:0", "--no-leader-election"])
            .env("KUBECONFIG", server.kubeconfig_path())
            .output(),
    )
    .await
    .expect("it exits at once")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("kubectl apply -f crds/"), "{stderr}");
}

/// A database of its own on the test PostgreSQL.
async fn tenant_database() -> String {
    let admin = std::env::var("IAF_TEST_DATABASE_URL")
        .expect("IAF_TEST_DATABASE_URL is not set: run scripts/test, or scripts/engines.sh up postgres && source /tmp/iafactory-engines/env");
    common::fresh_database(&admin, &format!("iaf_operator_e2e_{}", std::process::id())).await
}

#[tokio::test]
async fn knowledge_bases_and_workflows_are_registered_with_the_real_tenant_api() {
    use base64::Engine as _;
    let cluster = Cluster::start().await;
    let api_port = free_port();
    // A platform whose default embedding is not the API's built-in one: a
    // KnowledgeBase that names none must be registered with this one.
    let platform = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        platform.path(),
        "[api]\ndefault_embedding = { provider = \"ollama\", model = \"nomic-embed-text\", dimensions = 768 }\n",
    )
    .unwrap();
    let _operator = Operator::start(
        &cluster,
        "solo",
        &[
            "--no-leader-election",
            "--config",
            platform.path().to_str().unwrap(),
            "--tenant-api-url",
            &format!("http://127.0.0.1:{api_port}"),
        ],
    )
    .await;
    apply_sample(&cluster, "tenant-univ-tlemcen.yaml").await;
    wait_condition(
        &cluster,
        "univ-tlemcen",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let ns = "iaf-univ-tlemcen";

    // The tenant's API, with the operator token the operator generated for it.
    let secret = cluster.object("", "secrets", ns, "operator-token").unwrap();
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let database_url = tenant_database().await;
    let config = iafactory_api::config::Config {
        database_url: database_url.clone(),
        jwt_secret: iafactory_api::config::Secret(
            "operator-e2e-secret-operator-e2e-secret-00".into(),
        ),
        operator_token: iafactory_api::config::Secret(token.clone()),
        workflow_scheduler_tick_seconds: 0,
        ..iafactory_api::config::Config::default()
    };
    let state = iafactory_api::server::prepare(config)
        .await
        .expect("the tenant API starts");
    // The operator registers on the API's internal listener; the public one is not
    // used here.
    let public = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let internal = tokio::net::TcpListener::bind(("127.0.0.1", api_port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(iafactory_api::server::serve(
        state,
        public,
        internal,
        async {
            let _ = stopped.await;
        },
    ));

    apply_sample(&cluster, "knowledgebase-reglements.yaml").await;
    apply_sample(&cluster, "workflow-synthese.yaml").await;
    let kb = eventually(
        "the KnowledgeBase is registered",
        Duration::from_secs(60),
        || {
            let kb = cluster
                .object("iafactory.dz", "knowledgebases", ns, "reglements")
                .ok_or("no kb")?;
            match condition(&kb, "Ready") {
                Some((s, r, _)) if s == "True" && r == "Registered" => Ok(kb),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(kb["status"]["apiId"].is_string());
    // Its two inline sources are ingested, one document each.
    assert_eq!(kb["status"]["documents"], 2, "{}", kb["status"]);
    assert_eq!(
        kb["status"]["sources"],
        json!([
            {"id": "inline:Calendrier des examens", "documents": 1},
            {"id": "inline:التسجيل في الماستر", "documents": 1},
        ])
    );
    assert_eq!(
        condition(&kb, "SourcesReady").map(|c| c.0),
        Some("True".to_owned())
    );

    // ConfigMap sources: the operator reads the ConfigMap (every key, or one) and
    // sends it; a missing ConfigMap is a condition that names it.
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(cluster.client.clone(), ns);
    let mut programmes: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "programmes"},
        "data": {"licence.md": "# Licence\n\nTrois années.", "master.txt": "Deux années."},
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &programmes)
        .await
        .unwrap();
    let kbs: Api<iafactory_crds::KnowledgeBase> = Api::namespaced(cluster.client.clone(), ns);
    let mut from_config_maps: iafactory_crds::KnowledgeBase = serde_json::from_value(json!({
        "apiVersion": "iafactory.dz/v1alpha1", "kind": "KnowledgeBase",
        "metadata": {"name": "programmes", "namespace": ns},
        "spec": {"languages": ["fr"], "embedding": {"provider": "ollama", "model": "bge-m3", "dimensions": 1024},
                 "sources": [{"configMap": {"name": "programmes"}},
                             {"configMap": {"name": "programmes", "key": "master.txt"}},
                             {"configMap": {"name": "absente"}}]},
    }))
    .unwrap();
    kbs.create(&PostParams::default(), &from_config_maps)
        .await
        .unwrap();
    let sources_of = |kb: &Value| -> Vec<(String, i64, bool)> {
        kb["status"]["sources"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|s| {
                        (
                            s["id"].as_str().unwrap_or_default().to_owned(),
                            s["documents"].as_i64().unwrap_or(-1),
                            s["lastError"].is_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let kb = eventually(
        "the ConfigMap sources are ingested, the missing one named",
        Duration::from_secs(60),
        || {
            let kb = cluster
                .object("iafactory.dz", "knowledgebases", ns, "programmes")
                .ok_or("no kb")?;
            match condition(&kb, "SourcesReady") {
                Some((s, r, m)) if s == "False" && r == "SourceFailed" => Ok((kb, m)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let (kb, message) = kb;
    assert!(
        message.contains("configMap:absente")
            && message.contains("ConfigMap iaf-univ-tlemcen/absente does not exist"),
        "{message}"
    );
    assert_eq!(
        sources_of(&kb),
        [
            ("configMap:programmes".to_owned(), 2, false),
            ("configMap:programmes/master.txt".to_owned(), 1, false),
            ("configMap:absente".to_owned(), 0, true),
        ]
    );
    assert_eq!(
        condition(&kb, "Ready").map(|c| c.0),
        Some("True".to_owned())
    );

    // A changed ConfigMap is read again at the next reconcile (here a spec change;
    // otherwise the minute's refresh): its documents are replaced; the removed
    // source's documents go.
    programmes
        .data
        .as_mut()
        .unwrap()
        .insert("master.txt".into(), "Deux années, en français.".into());
    programmes.metadata.resource_version = None;
    config_maps
        .replace("programmes", &PostParams::default(), &programmes)
        .await
        .unwrap();
    from_config_maps.spec.sources.truncate(2);
    from_config_maps.spec.description = Some("programmes, modifiés".into());
    kbs.patch(
        "programmes",
        &PatchParams::apply("e2e-test").force(),
        &Patch::Apply(&from_config_maps),
    )
    .await
    .unwrap();
    let owner = sqlx::PgPool::connect(&database_url).await.unwrap();
    eventually(
        "the changed ConfigMap is re-ingested",
        Duration::from_secs(60),
        || {
            let kb = cluster
                .object("iafactory.dz", "knowledgebases", ns, "programmes")
                .ok_or("no kb")?;
            match condition(&kb, "SourcesReady") {
                Some((s, _, _)) if s == "True" && sources_of(&kb).len() == 2 => Ok(()),
                other => Err(format!("{other:?} {:?}", sources_of(&kb))),
            }
        },
    )
    .await;
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT convert_from(b.content, 'UTF8') FROM document_blobs b JOIN documents d ON d.id = b.document_id
         WHERE d.source_id LIKE 'configMap:programmes%' ORDER BY 1",
    )
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        texts,
        [
            "# Licence\n\nTrois années.",
            "Deux années, en français.",
            "Deux années, en français."
        ]
    );
    let absent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM knowledge_base_sources WHERE source_id = 'configMap:absente'",
    )
    .fetch_one(&owner)
    .await
    .unwrap();
    assert_eq!(absent, 0);
    let workflow = eventually(
        "the Workflow is registered",
        Duration::from_secs(60),
        || {
            let wf = cluster
                .object("iafactory.dz", "workflows", ns, "synthese")
                .ok_or("no workflow")?;
            match condition(&wf, "Ready") {
                Some((s, _, _)) if s == "True" => Ok(wf),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(workflow["status"]["validDag"], true);
    assert_eq!(workflow["status"]["agents"], 3);

    // The API holds them, and answers the operator's token only.
    let http = reqwest::Client::new();
    let internal = format!(
        "http://127.0.0.1:{api_port}/internal/tenants/univ-tlemcen/knowledge-bases/reglements"
    );
    assert_eq!(
        http.get(&internal)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(&internal)
            .bearer_auth("forged")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // A knowledge base the tenant cannot serve waits with a reason.
    let mut invalid: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("config/samples/knowledgebase-reglements.yaml"))
            .unwrap(),
    )
    .unwrap();
    invalid["metadata"]["name"] = json!("needs-qdrant");
    invalid["spec"]["vectorStore"] = json!("qdrant");
    kbs.create(
        &PostParams::default(),
        &serde_json::from_value(invalid).unwrap(),
    )
    .await
    .unwrap();
    eventually(
        "the invalid KnowledgeBase says why",
        Duration::from_secs(30),
        || {
            let kb = cluster
                .object("iafactory.dz", "knowledgebases", ns, "needs-qdrant")
                .ok_or("no kb")?;
            match condition(&kb, "Ready") {
                Some((s, r, m)) if s == "False" && r == "InvalidSpec" && m.contains("Qdrant") => {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // The operator sends the plan: a KnowledgeBase that names no embedding gets the
    // platform's default_embedding, which the API stores (it used to store its own).
    kbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "iafactory.dz/v1alpha1",
            "kind": "KnowledgeBase",
            "metadata": {"name": "defaults", "namespace": ns},
            "spec": {"languages": ["fr"]},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    eventually(
        "the KnowledgeBase without an embedding is registered",
        Duration::from_secs(60),
        || {
            let kb = cluster
                .object("iafactory.dz", "knowledgebases", ns, "defaults")
                .ok_or("no kb")?;
            match condition(&kb, "Ready") {
                Some((s, r, _)) if s == "True" && r == "Registered" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let stored: Value =
        sqlx::query_scalar("SELECT embedding FROM knowledge_bases WHERE name = 'defaults'")
            .fetch_one(&sqlx::PgPool::connect(&database_url).await.unwrap())
            .await
            .unwrap();
    assert_eq!(
        stored,
        json!({"provider": "ollama", "model": "nomic-embed-text", "dimensions": 768})
    );

    // Deleting the resource unregisters it (the finalizer), then it goes.
    cluster
        .kubectl(&["delete", "kb", "reglements", "-n", ns, "--timeout=60s"])
        .await;
    assert_eq!(
        http.get(&internal)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let _ = stop.send(());
    api.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_backup_cron_job_is_applied_and_its_last_success_shows_in_the_tenant_status() {
    let cluster = Cluster::start().await;
    let operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-univ-tlemcen.yaml").await;
    wait_condition(
        &cluster,
        "univ-tlemcen",
        "Ready",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let ns = "iaf-univ-tlemcen";
    let cron_job = cluster
        .object("batch", "cronjobs", ns, "backup")
        .expect("the backup CronJob is applied");
    assert_eq!(cron_job["spec"]["schedule"], "30 1 * * *");
    assert_eq!(cron_job["spec"]["timeZone"], "Africa/Algiers");
    assert_eq!(
        cron_job["metadata"]["managedFields"][0]["manager"], "iafactory-operator",
        "server-side applied by the one field manager"
    );
    assert!(
        cluster
            .object("", "persistentvolumeclaims", ns, "backups")
            .is_some()
    );
    assert!(names(&cluster, "networking.k8s.io", "networkpolicies", ns).contains("allow-backup"));
    // No backup has run yet.
    let tenant = cluster.tenant("univ-tlemcen").unwrap();
    assert!(
        tenant["status"]["backup"]["lastSuccessfulTime"].is_null(),
        "{}",
        tenant["status"]
    );

    // The CronJob controller records a successful run; the Tenant shows it.
    let cron_jobs: Api<k8s_openapi::api::batch::v1::CronJob> =
        Api::namespaced(cluster.client.clone(), ns);
    cron_jobs
        .patch_status(
            "backup",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "lastScheduleTime": "2026-03-10T00:30:00Z",
                "lastSuccessfulTime": "2026-03-10T00:31:12Z",
            }})),
        )
        .await
        .unwrap();
    let tenants: Api<Tenant> = Api::all(cluster.client.clone());
    tenants
        .patch(
            "univ-tlemcen",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/touch": "backup"}}})),
        )
        .await
        .unwrap();
    eventually(
        "status.backup.lastSuccessfulTime",
        Duration::from_secs(20),
        || {
            let tenant = cluster.tenant("univ-tlemcen").ok_or("no tenant")?;
            let backup = &tenant["status"]["backup"];
            if backup["lastSuccessfulTime"] == "2026-03-10T00:31:12Z"
                && backup["lastScheduleTime"] == "2026-03-10T00:30:00Z"
            {
                Ok(())
            } else {
                Err(backup.to_string())
            }
        },
    )
    .await;

    // Without spec.backup the CronJob and its policy go; the volume claim stays.
    tenants
        .patch(
            "univ-tlemcen",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": null}})),
        )
        .await
        .unwrap();
    eventually(
        "the CronJob is removed",
        Duration::from_secs(20),
        || match cluster.object("batch", "cronjobs", ns, "backup") {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        },
    )
    .await;
    assert!(
        cluster
            .object("", "persistentvolumeclaims", ns, "backups")
            .is_some(),
        "the backups are data: their claim is kept"
    );
    assert!(!names(&cluster, "networking.k8s.io", "networkpolicies", ns).contains("allow-backup"));
    operator.kill().await;
}

/// Issue #19, item 7. The in-memory API server has no RBAC, so its request log stands in
/// for it: over two tenants' lives (created, settled, one retained and one deleted), the
/// operator never lists or watches a Secret, and each of its writes in a namespace
/// lands in a tenant namespace it created and had already bound the tenant role in
/// (operator/src/rbac.rs). Events are the one namespaced write the ClusterRole allows.
#[tokio::test]
async fn the_operator_reads_no_secret_list_and_writes_only_where_it_bound_itself() {
    use iafactory_operator::rbac::{TENANT_BINDING, TENANT_ROLE};

    let cluster = Cluster::start().await;
    let setup = cluster.server.requests().len();
    let operator = Operator::start(&cluster, "solo", &["--no-leader-election"]).await;
    apply_sample(&cluster, "tenant-small-firm.yaml").await; // retention: Delete
    apply_sample(&cluster, "tenant-univ-tlemcen.yaml").await; // retention: Retain
    for tenant in ["cabinet-benali", "univ-tlemcen"] {
        wait_condition(
            &cluster,
            tenant,
            "Ready",
            "True",
            None,
            Duration::from_secs(60),
        )
        .await;
    }
    // The binding names the operator's ServiceAccount (the defaults: the chart's).
    let binding = cluster
        .object(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "iaf-univ-tlemcen",
            TENANT_BINDING,
        )
        .expect("the tenant namespace has the operator's RoleBinding");
    assert_eq!(binding["roleRef"]["name"], TENANT_ROLE);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "iafactory-operator", "namespace": LEASE_NAMESPACE}])
    );
    assert_eq!(
        binding["metadata"]["labels"]["iafactory.dz/managed-by"],
        "iafactory-operator"
    );
    for tenant in ["cabinet-benali", "univ-tlemcen"] {
        cluster
            .kubectl(&["delete", "iaft", tenant, "--timeout=60s"])
            .await;
    }
    eventually(
        "the namespace of the deleted tenant goes",
        Duration::from_secs(30),
        || {
            cluster
                .object("", "namespaces", "", "iaf-cabinet-benali")
                .map_or(Ok(()), |n| Err(format!("{}", n["status"])))
        },
    )
    .await;
    operator.kill().await;

    let requests = cluster.server.requests();
    let requests = &requests[setup..];
    assert!(requests.len() > 100, "{} requests", requests.len());
    let secret_reads: Vec<_> = requests
        .iter()
        .filter(|r| r.resource == "secrets" && matches!(r.verb, "list" | "watch"))
        .collect();
    assert!(
        secret_reads.is_empty(),
        "the operator lists or watches Secrets: {secret_reads:?}"
    );
    let is_write = |verb: &str| {
        matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    };
    let ok = |code: u16| (200..300).contains(&code);
    let mut checked = 0;
    for (at, request) in requests.iter().enumerate() {
        if !is_write(request.verb) || request.resource == "events" {
            continue;
        }
        let before = &requests[..at];
        let applied = |resource: &str, namespace: Option<&str>, name: &str| {
            before.iter().any(|r| {
                ok(r.code)
                    && matches!(r.verb, "create" | "patch")
                    && r.resource == resource
                    && r.namespace.as_deref() == namespace
                    && r.name.as_deref() == Some(name)
            })
        };
        // A request on a Namespace object is authorized within that namespace.
        let namespace = match (&request.namespace, request.resource.as_str()) {
            (Some(namespace), _) => namespace.clone(),
            (None, "namespaces") if request.verb == "delete" => {
                request.name.clone().expect("a named delete")
            }
            (None, resource) => {
                // Cluster-scoped writes: the custom resources (the test's kubectl, the
                // operator's finalizer and status) and the tenant namespaces.
                assert!(
                    matches!(resource, "tenants" | "tenants/status" | "namespaces"),
                    "a cluster-scoped write outside the tenant namespaces: {request:?}"
                );
                if resource == "namespaces" {
                    let name = request.name.as_deref().unwrap_or_default();
                    assert!(name.starts_with("iaf-"), "{request:?}");
                }
                continue;
            }
        };
        assert!(
            applied("namespaces", None, &namespace),
            "a write in {namespace}, which the operator had not created: {request:?}"
        );
        if request.resource == "rolebindings" && request.name.as_deref() == Some(TENANT_BINDING) {
            continue;
        }
        assert!(
            applied("rolebindings", Some(&namespace), TENANT_BINDING),
            "a write in {namespace} before the operator's RoleBinding there: {request:?}"
        );
        checked += 1;
    }
    assert!(
        checked > 20,
        "only {checked} namespaced writes were checked"
    );
    // The retained namespace still carries the operator's label.
    let retained = cluster
        .object("", "namespaces", "", "iaf-univ-tlemcen")
        .expect("a retained namespace stays");
    assert_eq!(
        retained["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "iafactory-operator"
    );
}

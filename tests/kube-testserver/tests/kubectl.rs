//! The real `kubectl` (`/usr/bin/kubectl`) against the test server and its binary:
//! `apply -f crds/` then the samples, `get -o yaml`, `get -w`, `delete` waiting for
//! finalizers, `label`, `patch --type merge` and `apply --server-side`.
//!
//! Without validation flags: the server serves enough OpenAPI v3 for kubectl to validate
//! on the server side (which accepts everything; see the crate docs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kube_testserver::{Options, TestServer};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

const KUBECTL: &str = "/usr/bin/kubectl";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kubectl_cmd(kubeconfig: &Path, args: &[&str]) -> Command {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: these tests need the machine's kubectl (see shared/TESTBED.md)"
    );
    let mut cmd = Command::new(KUBECTL);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        // kubectl caches discovery per host and port: a port reused by another test's
        // server would serve it a stale list of kinds.
        .arg("--cache-dir")
        .arg(kubeconfig.with_extension("kubectl-cache"))
        .args(args)
        .env_remove("KUBECONFIG")
        .current_dir(repo())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs kubectl to completion; returns whether it succeeded, stdout and stderr.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        kubectl_cmd(kubeconfig, args).output(),
    )
    .await
    .expect("kubectl finishes")
    .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = kubectl(kubeconfig, args).await;
    assert!(success, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: iaf-univ-tlemcen\n";

/// The CRDs, the namespace the namespaced samples live in, then the samples.
async fn apply_repo_manifests(kc: &Path) {
    let out = ok(kc, &["apply", "-f", "crds/"]).await;
    assert!(out.contains("tenants.iafactory.dz created"), "{out}");
    let ns_file = kc.with_file_name("namespace.yaml");
    std::fs::write(&ns_file, NAMESPACE).unwrap();
    ok(kc, &["apply", "-f", ns_file.to_str().unwrap()]).await;
    let out = ok(kc, &["apply", "-f", "config/samples/"]).await;
    assert!(
        out.contains("tenant.iafactory.dz/cabinet-benali created"),
        "{out}"
    );
    assert!(
        out.contains("knowledgebase.iafactory.dz/reglements created"),
        "{out}"
    );
    // Applying again changes nothing.
    let out = ok(kc, &["apply", "-f", "config/samples/"]).await;
    assert!(
        out.contains("tenant.iafactory.dz/cabinet-benali unchanged"),
        "{out}"
    );
}

async fn start() -> TestServer {
    TestServer::start(Options::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_samples_and_get_yaml() {
    let server = start().await;
    let kc = server.kubeconfig_path().to_path_buf();
    apply_repo_manifests(&kc).await;

    let yaml = ok(&kc, &["get", "tenant", "cabinet-benali", "-o", "yaml"]).await;
    let tenant: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(tenant["kind"], "Tenant");
    assert_eq!(tenant["spec"]["plan"], "free");
    assert!(tenant["metadata"]["uid"].is_string());
    assert!(
        tenant["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    let names = ok(&kc, &["get", "kb", "-n", "iaf-univ-tlemcen", "-o", "name"]).await;
    assert_eq!(names.trim(), "knowledgebase.iafactory.dz/reglements");
    let table = ok(&kc, &["get", "tenants"]).await;
    assert!(table.contains("univ-tlemcen"), "{table}");
    let crds = ok(&kc, &["get", "crds", "-o", "name"]).await;
    assert_eq!(crds.lines().count(), 3, "{crds}");

    // The CRD schema is enforced: an unsupported enum value is rejected.
    let bad = kc.with_file_name("bad-tenant.yaml");
    std::fs::write(
        &bad,
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: bad\nspec:\n  displayName: Bad\n  plan: gold\n",
    )
    .unwrap();
    let (success, _, stderr) = kubectl(&kc, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!success);
    assert!(
        stderr.contains("spec.plan") && stderr.contains("Unsupported value"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_patch_and_server_side_apply() {
    let server = start().await;
    let kc = server.kubeconfig_path().to_path_buf();
    apply_repo_manifests(&kc).await;
    let tenant = || {
        server
            .get("iafactory.dz", "tenants", "", "cabinet-benali")
            .unwrap()
    };

    ok(&kc, &["label", "tenant", "cabinet-benali", "team=finance"]).await;
    assert_eq!(tenant()["metadata"]["labels"]["team"], "finance");
    let generation = tenant()["metadata"]["generation"].clone();

    ok(
        &kc,
        &[
            "patch",
            "tenant",
            "cabinet-benali",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"suspended":true}}"#,
        ],
    )
    .await;
    assert_eq!(tenant()["spec"]["suspended"], true);
    assert_eq!(
        tenant()["metadata"]["generation"].as_i64(),
        generation.as_i64().map(|g| g + 1),
        "a spec change bumps the generation, a label does not"
    );

    // Server-side apply of the sample, after kubectl-patch took spec.suspended.
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "-f",
            "config/samples/tenant-small-firm.yaml",
        ],
    )
    .await;
    // The sample does not set suspended: no conflict, and the patch's value stays.
    assert_eq!(tenant()["spec"]["suspended"], true);
    let managers: Vec<String> = tenant()["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        managers.contains(&"kubectl/Apply".to_string()),
        "{managers:?}"
    );

    // A conflicting server-side apply fails without --force-conflicts and wins with it.
    let file = kc.with_file_name("tenant-plan.yaml");
    std::fs::write(
        &file,
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: cabinet-benali\nspec:\n  suspended: false\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (success, _, stderr) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "-f",
            file,
        ],
    )
    .await;
    assert!(!success, "expected a conflict");
    assert!(stderr.contains("conflict"), "{stderr}");
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "other",
            "--force-conflicts",
            "-f",
            file,
        ],
    )
    .await;
    assert_eq!(tenant()["spec"]["suspended"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_a_later_change() {
    let server = start().await;
    let kc = server.kubeconfig_path().to_path_buf();
    apply_repo_manifests(&kc).await;
    let mut child = kubectl_cmd(&kc, &["get", "tenants", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Lines are `EVENT NAME AGE`, after a header.
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("kubectl prints a watch event")
            .unwrap()
            .expect("kubectl keeps watching");
        let cols: Vec<&str> = line.split_whitespace().take(2).collect();
        cols.join(" ")
    };
    assert_eq!(next().await, "EVENT NAME");
    let mut initial = Vec::new();
    for _ in 0..3 {
        initial.push(next().await);
    }
    initial.sort();
    assert_eq!(
        initial,
        [
            "ADDED cabinet-benali",
            "ADDED sonatrach-rd",
            "ADDED univ-tlemcen"
        ]
    );
    ok(&kc, &["label", "tenant", "univ-tlemcen", "seen=yes"]).await;
    assert_eq!(next().await, "MODIFIED univ-tlemcen");
    ok(&kc, &["delete", "tenant", "sonatrach-rd"]).await;
    assert_eq!(next().await, "DELETED sonatrach-rd");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_for_finalizers() {
    let server = start().await;
    let kc = server.kubeconfig_path().to_path_buf();
    apply_repo_manifests(&kc).await;
    ok(
        &kc,
        &[
            "patch",
            "tenant",
            "univ-tlemcen",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":["iafactory.dz/cleanup"]}}"#,
        ],
    )
    .await;
    let mut delete = kubectl_cmd(&kc, &["delete", "tenant", "univ-tlemcen", "--timeout=20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        delete.try_wait().unwrap().is_none(),
        "kubectl delete waits for the finalizer"
    );
    let held = server
        .get("iafactory.dz", "tenants", "", "univ-tlemcen")
        .unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());

    ok(
        &kc,
        &[
            "patch",
            "tenant",
            "univ-tlemcen",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    )
    .await;
    let status = tokio::time::timeout(Duration::from_secs(10), delete.wait())
        .await
        .expect("kubectl delete returns once the finalizer is gone")
        .unwrap();
    assert!(status.success());
    assert!(
        server
            .get("iafactory.dz", "tenants", "", "univ-tlemcen")
            .is_none()
    );
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: 'nginx:1', env: [{name: A, value: '1'}]}
      - {name: side, image: busybox}
";

/// Client-side apply of a built-in kind sends a strategic merge patch; the simulated node
/// makes the rollout finish; `kubectl scale` goes through the scale subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_apply_rollout_and_scale() {
    let server = TestServer::start(Options {
        ready_delay: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .unwrap();
    let kc = server.kubeconfig_path().to_path_buf();
    let file = kc.with_file_name("deployment.yaml");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let file = file.to_str().unwrap();
    ok(&kc, &["apply", "-f", file]).await;
    std::fs::write(
        file,
        DEPLOYMENT
            .replace("nginx:1", "nginx:2")
            .replace("'1'", "'2'"),
    )
    .unwrap();
    let out = ok(&kc, &["apply", "-f", file]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = server.get("apps", "deployments", "default", "web").unwrap();
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "nginx:2");
    assert_eq!(containers[0]["env"][0]["value"], "2");
    assert_eq!(containers[1]["name"], "side");
    assert_eq!(d["metadata"]["generation"], 2);

    let all = ok(&kc, &["get", "all", "-o", "name"]).await;
    assert_eq!(all.trim(), "deployment.apps/web", "discovery categories");
    let out = ok(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=10s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    ok(&kc, &["scale", "deployment", "web", "--replicas=3"]).await;
    let d = server.get("apps", "deployments", "default", "web").unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
}

/// The binary: `ready` on stdout, a kubeconfig kubectl uses, and a clean exit on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let mut server = Command::new(env!("CARGO_BIN_EXE_kube-testserver"))
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["--ready-delay-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the server says ready")
        .unwrap();
    assert_eq!(first.as_deref(), Some("ready"));

    apply_repo_manifests(&kc).await;
    let version = ok(&kc, &["version", "-o", "json"]).await;
    assert!(version.contains("v1.33.0+kube-testserver"), "{version}");

    let pid = server.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the server exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

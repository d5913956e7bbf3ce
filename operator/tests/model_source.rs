//! `strict` means no packet out, model downloads included: for every sovereignty and
//! every model source, what the preload builds (the Job and the NetworkPolicies), with
//! the invariant that no NetworkPolicy of a strict tenant allows 0.0.0.0/0 or ::/0.

mod common;

use std::path::Path;

use iafactory_crds::config::ModelSource;
use iafactory_crds::plan::ModelSourcePlan;
use iafactory_crds::tenant::{PlanTier, Sovereignty};
use iafactory_crds::{PlatformConfig, Tenant, TenantPlan};
use iafactory_operator::build::{Child, TenantObjects};
use iafactory_operator::status::{TenantObservation, WorkloadObservation, tenant_conditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use common::{build_objects, repo_root, sample_tenant};

fn mirror(cidrs: &[&str], registry: &str, insecure: bool) -> ModelSource {
    ModelSource::Mirror {
        registry: registry.into(),
        cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        insecure,
    }
}

fn bundle() -> ModelSource {
    ModelSource::Bundle {
        claim: "model-bundle".into(),
        path: "ollama".into(),
    }
}

fn config_with(source: &ModelSource, pull_models: bool) -> PlatformConfig {
    let mut config = PlatformConfig::default();
    config.ollama.model_source = source.clone();
    config.ollama.pull_models = pull_models;
    config
}

fn build_with(tenant: &Tenant, config: &PlatformConfig) -> (TenantPlan, TenantObjects) {
    build_objects(tenant, config, false)
}

fn policies(objects: &TenantObjects) -> Vec<&Child> {
    objects
        .all()
        .filter(|c| c.resource.kind == "NetworkPolicy")
        .collect()
}

/// Every `ipBlock.cidr` any NetworkPolicy allows, with the policy's name.
fn allowed_cidrs(objects: &TenantObjects) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for policy in policies(objects) {
        let spec = serde_json::to_value(&policy.object).unwrap();
        for direction in ["egress", "ingress"] {
            for rule in spec["spec"][direction].as_array().into_iter().flatten() {
                let peers = rule["to"]
                    .as_array()
                    .into_iter()
                    .chain(rule["from"].as_array())
                    .flatten();
                for peer in peers {
                    if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
                        found.push((policy.name(), cidr.to_owned()));
                    }
                }
            }
        }
    }
    found
}

fn is_everywhere(cidr: &str) -> bool {
    cidr.split_once('/')
        .is_some_and(|(_, prefix)| prefix.parse::<u8>() == Ok(0))
}

fn job(objects: &TenantObjects) -> Option<&Child> {
    objects.all().find(|c| c.resource.kind == "Job")
}

fn field(child: &Child, pointer: &str) -> serde_json::Value {
    let value = serde_json::to_value(&child.object).unwrap();
    value.pointer(pointer).cloned().unwrap_or_default()
}

/// The property, over the whole space: sovereignty × model source (public, mirrors
/// of several shapes, bundle) × models listed or not × pull_models × suspended ×
/// plan tier. A strict tenant never gets a policy to 0.0.0.0/0 or ::/0; the model
/// server's egress is exactly what its source needs; a forbidden source runs no Job.
#[test]
fn strict_tenants_never_allow_the_whole_internet_whatever_the_model_source() {
    let sources = [
        ModelSource::Public,
        mirror(&["10.20.0.5/32"], "models.univ-tlemcen.dz:5000", false),
        mirror(&["192.168.4.0/24", "fd00::5/128"], "mirror.local", true),
        mirror(&["172.16.9.9"], "mirror.local", false),
        bundle(),
    ];
    let base = sample_tenant("tenant-univ-tlemcen.yaml");
    let mut checked = 0;
    for sovereignty in [Sovereignty::Strict, Sovereignty::Open] {
        for source in &sources {
            for models in [vec![], vec!["llama3.2:3b".to_owned(), "bge-m3".to_owned()]] {
                for pull_models in [true, false] {
                    for suspended in [false, true] {
                        for tier in [PlanTier::Free, PlanTier::Pro, PlanTier::Enterprise] {
                            let mut tenant = base.clone();
                            tenant.spec.sovereignty = sovereignty;
                            tenant.spec.components.ollama.models = models.clone();
                            tenant.spec.suspended = suspended;
                            tenant.spec.plan = tier;
                            // The free plan has no GPU and one API replica.
                            tenant.spec.components.api.replicas = Some(1);
                            tenant.spec.components.ollama.gpu = Some(0);
                            tenant.spec.components.database.storage = None;
                            tenant.spec.components.vector_store.storage = None;
                            tenant.spec.components.ollama.storage = None;
                            let config = config_with(source, pull_models);
                            let (plan, objects) = build_with(&tenant, &config);
                            let case = format!(
                                "{sovereignty:?} {source:?} models={} pull={pull_models} suspended={suspended} {tier:?}",
                                models.len()
                            );
                            check_case(&case, sovereignty, source, &plan, &objects);
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 5 * 2 * 2 * 2 * 3);
}

fn check_case(
    case: &str,
    sovereignty: Sovereignty,
    source: &ModelSource,
    plan: &TenantPlan,
    objects: &TenantObjects,
) {
    let cidrs = allowed_cidrs(objects);
    if sovereignty == Sovereignty::Strict {
        let everywhere: Vec<_> = cidrs.iter().filter(|(_, c)| is_everywhere(c)).collect();
        assert!(
            everywhere.is_empty(),
            "{case}: a strict tenant's policy allows the whole internet: {everywhere:?}"
        );
    }
    let pull = objects.all().find(|c| c.name() == "allow-model-pull");
    let Some(preload) = &plan.model_preload else {
        assert!(pull.is_none() && job(objects).is_none(), "{case}");
        return;
    };
    match (&preload.source, source) {
        (ModelSourcePlan::Forbidden { reason }, ModelSource::Public) => {
            assert_eq!(sovereignty, Sovereignty::Strict, "{case}");
            assert!(reason.contains("strict"), "{case}: {reason}");
            assert!(pull.is_none(), "{case}: no egress for a forbidden source");
            assert!(
                job(objects).is_none(),
                "{case}: no Job for a forbidden source"
            );
        }
        (ModelSourcePlan::Public, ModelSource::Public) => {
            assert_eq!(sovereignty, Sovereignty::Open, "{case}");
            let pull = pull.expect("an open tenant pulls from the public registry");
            assert_eq!(field(pull, "/spec/egress/0/ports/0/port"), 443, "{case}");
            assert_eq!(
                field(pull, "/spec/egress/0/to/0/ipBlock/except/0"),
                "10.0.0.0/8",
                "{case}: never private ranges"
            );
            assert_server_selected(case, pull);
            assert!(job(objects).is_some(), "{case}");
        }
        (
            ModelSourcePlan::Mirror { port, .. },
            ModelSource::Mirror {
                cidrs: wanted,
                registry,
                ..
            },
        ) => {
            let pull = pull.expect("a mirror opens its own addresses");
            let to: Vec<String> = field(pull, "/spec/egress/0/to")
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["ipBlock"]["cidr"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(&to, wanted, "{case}: the mirror's addresses, and only them");
            assert!(
                field(pull, "/spec/egress/0/to/0/ipBlock")
                    .get("except")
                    .is_none()
            );
            assert_eq!(field(pull, "/spec/egress/0/ports/0/port"), *port, "{case}");
            assert_server_selected(case, pull);
            let job = job(objects).expect("a mirror pull runs a Job");
            let args = field(job, "/spec/template/spec/containers/0/args");
            assert!(
                args.as_array().unwrap().iter().any(|a| a
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{registry}/library/"))),
                "{case}: {args}"
            );
        }
        (ModelSourcePlan::Bundle { claim, .. }, ModelSource::Bundle { .. }) => {
            assert!(pull.is_none(), "{case}: a bundle needs no egress at all");
            let job = job(objects).expect("a bundle is copied by a Job");
            let volumes = field(job, "/spec/template/spec/volumes");
            assert!(
                volumes
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == claim.as_str()),
                "{case}: {volumes}"
            );
            // It asks no server: no OLLAMA_HOST.
            let env = field(job, "/spec/template/spec/containers/0/env");
            assert!(!env.to_string().contains("OLLAMA_HOST"), "{case}: {env}");
        }
        (decided, configured) => panic!("{case}: {configured:?} was planned as {decided:?}"),
    }
}

/// The model server downloads (the Job only asks it): the egress is the server's.
fn assert_server_selected(case: &str, pull: &Child) {
    assert_eq!(
        field(
            pull,
            "/spec/podSelector/matchLabels/iafactory.dz~1component"
        ),
        "ollama",
        "{case}"
    );
}

/// A strict tenant whose only source is the public registry works without its models,
/// and says so: ModelsReady and Degraded name the reason; Ready follows its components.
#[test]
fn a_forbidden_source_degrades_the_tenant_with_a_condition_naming_it() {
    let tenant = sample_tenant("tenant-univ-tlemcen.yaml");
    let (plan, objects) = build_with(&tenant, &PlatformConfig::default());
    assert!(job(&objects).is_none());
    let mut observed = TenantObservation::default();
    for component in &plan.components {
        observed.workloads.insert(
            component.name.clone(),
            WorkloadObservation {
                desired: component.replicas,
                ready: component.replicas,
                up_to_date: true,
                failure: None,
            },
        );
    }
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let conditions = tenant_conditions(&plan, &observed, &[], Some(1), &now);
    let get = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap();
    let models = get("ModelsReady");
    assert_eq!(
        (models.status.as_str(), models.reason.as_str()),
        ("False", "ModelSourceForbidden")
    );
    assert!(
        models.message.contains("components.ollama.models"),
        "{}",
        models.message
    );
    assert!(models.message.contains("strict"), "{}", models.message);
    let degraded = get("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ModelSourceForbidden")
    );
    assert_eq!(get("Ready").status, "True", "its components are ready");
}

fn model_objects_yaml(objects: &TenantObjects) -> String {
    objects
        .all()
        .filter(|c| {
            c.resource.kind == "Job"
                || (c.resource.kind == "NetworkPolicy" && c.name() == "allow-model-pull")
        })
        .map(|c| serde_yaml::to_string(&c.object).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The Job and the policy of each source, committed: a site mirror and a bundle for
/// the strict sample (the public registry is in the samples' own goldens, for the
/// open one).
#[test]
fn each_model_source_builds_the_committed_objects() {
    let tenant = sample_tenant("tenant-univ-tlemcen.yaml");
    let validate = std::env::var("IAF_TEST_KUBERNETES_VALIDATE").expect(
        "IAF_TEST_KUBERNETES_VALIDATE is unset: run scripts/engines.sh up kubevalidate and source /tmp/iafactory-engines/env",
    );
    for (name, source) in [
        (
            "mirror",
            mirror(&["10.20.0.5/32"], "models.univ-tlemcen.dz:5000", false),
        ),
        ("bundle", bundle()),
    ] {
        let (_, objects) = build_with(&tenant, &config_with(&source, true));
        let actual = model_objects_yaml(&objects);
        let path = repo_root().join(format!(
            "operator/tests/golden/model-source-{name}.objects.yaml"
        ));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &actual).unwrap();
        } else {
            let expected = std::fs::read_to_string(&path).unwrap_or_default();
            if expected != actual {
                let diff = similar::TextDiff::from_lines(expected.as_str(), actual.as_str());
                panic!(
                    "{} is out of date.\nRegenerate it with: UPDATE_GOLDEN=1 cargo test -p iafactory-operator --test model_source\n\n{}",
                    path.display(),
                    diff.unified_diff().header("committed", "built")
                );
            }
        }
        let output = std::process::Command::new(&validate)
            .args(["--strict", "-k", "1.33.0"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kubernetes-validate rejected {}:\n{}\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `iafactory-test/busybox-sh:<hash>`: busybox with its applets on the PATH, standing
/// in for the Ollama image's shell and coreutils (sh, sha256sum, cut, cp).
fn busybox_image() -> String {
    use sha2::Digest;
    let busybox = std::env::var("IAF_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    let binary = std::fs::read(&busybox)
        .unwrap_or_else(|e| panic!("{busybox}: {e}; run scripts/engines.sh up busybox"));
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";
    let mut hash = sha2::Sha256::new();
    hash.update(&binary);
    hash.update(dockerfile);
    let tag = format!("iafactory-test/busybox-sh:{}", &hex(&hash.finalize())[..12]);
    let exists = std::process::Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .expect("the docker CLI runs (scripts/engines.sh up docker)")
        .status
        .success();
    if !exists {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("busybox"), &binary).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            context.path().join("busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        let output = std::process::Command::new("docker")
            .args(["build", "-q", "-t", &tag, context.path().to_str().unwrap()])
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "building {tag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    tag
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ollama models directory holding `models`, each with one layer and a config.
fn write_bundle(dir: &Path, models: &[&str]) {
    use sha2::Digest;
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    for model in models {
        let mut layers = Vec::new();
        for part in ["weights", "config"] {
            let content = format!("{part} of {model}");
            let digest = hex(&sha2::Sha256::digest(content.as_bytes()));
            std::fs::write(dir.join(format!("blobs/sha256-{digest}")), &content).unwrap();
            layers.push(format!("sha256:{digest}"));
        }
        let manifest = dir.join(iafactory_crds::plan::ollama_manifest_path(model));
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        std::fs::write(
            &manifest,
            serde_json::json!({
                "config": {"digest": layers[1]},
                "layers": [{"digest": layers[0]}],
            })
            .to_string(),
        )
        .unwrap();
    }
}

/// Runs the bundle Job's container as built (its command, arguments and user), with
/// no network, the bundle read-only on /bundle and a models volume on /models.
fn run_bundle_job(image: &str, bundle: &Path, models: &Path) -> std::process::Output {
    let tenant = sample_tenant("tenant-univ-tlemcen.yaml");
    let config = config_with(
        &ModelSource::Bundle {
            claim: "model-bundle".into(),
            path: String::new(),
        },
        true,
    );
    let (_, objects) = build_with(&tenant, &config);
    let job = job(&objects).expect("a bundle Job");
    let container = field(job, "/spec/template/spec/containers/0");
    let user = format!(
        "{}:{}",
        field(job, "/spec/template/spec/securityContext/runAsUser"),
        field(job, "/spec/template/spec/securityContext/runAsGroup")
    );
    let mut command = std::process::Command::new("docker");
    command.args([
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--user",
        &user,
    ]);
    command.args(["--tmpfs", "/tmp"]);
    command.args([
        "-v",
        &format!("{}:/bundle:ro", bundle.display()),
        "-v",
        &format!("{}:/models", models.display()),
        "--entrypoint",
        container["command"][0].as_str().unwrap(),
        image,
    ]);
    for arg in container["args"].as_array().unwrap() {
        command.arg(arg.as_str().unwrap());
    }
    command.output().unwrap()
}

/// The bundle Job's script, run for real in a container with no network: a good
/// bundle is copied; a corrupt blob or a missing model copies nothing and fails,
/// saying which.
#[test]
fn the_bundle_job_copies_a_verified_bundle_with_no_network() {
    use std::os::unix::fs::PermissionsExt;
    let image = busybox_image();
    let scratch = tempfile::tempdir().unwrap();
    let fresh_models = |name: &str| {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // The Job runs as the model server's user, who owns its volume.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        dir
    };
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let good = scratch.path().join("good");
    write_bundle(&good, &["llama3.2:3b", "bge-m3", "an-extra:1b"]);
    let models = fresh_models("models-good");
    let output = run_bundle_job(&image, &good, &models);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("copied 2 model(s)"), "{stdout}");
    for model in ["llama3.2:3b", "bge-m3"] {
        let manifest = models.join(iafactory_crds::plan::ollama_manifest_path(model));
        assert!(manifest.is_file(), "{} was copied", manifest.display());
    }
    assert_eq!(
        std::fs::read_dir(models.join("blobs")).unwrap().count(),
        std::fs::read_dir(good.join("blobs")).unwrap().count()
    );

    let corrupt = scratch.path().join("corrupt");
    write_bundle(&corrupt, &["llama3.2:3b", "bge-m3"]);
    let victim = std::fs::read_dir(corrupt.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&victim, "tampered").unwrap();
    let models = fresh_models("models-corrupt");
    let output = run_bundle_job(&image, &corrupt, &models);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(stdout.contains("corrupt blob"), "{stdout}");
    assert!(
        stdout.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(&models).unwrap().count(),
        0,
        "nothing copied"
    );

    let partial = scratch.path().join("partial");
    write_bundle(&partial, &["llama3.2:3b"]);
    let models = fresh_models("models-partial");
    let output = run_bundle_job(&image, &partial, &models);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("the bundle has no manifests/registry.ollama.ai/library/bge-m3/latest"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(&models).unwrap().count(),
        0,
        "nothing copied"
    );
}

/// The mirror Job's script, run for real with an `ollama` that records its calls:
/// each model is pulled under the mirror's name and copied to the tenant's name, in
/// order; a failed pull stops the Job with an error.
#[test]
fn the_mirror_job_pulls_from_the_mirror_and_names_models_as_written() {
    use std::os::unix::fs::PermissionsExt;
    let image = busybox_image();
    let tenant = sample_tenant("tenant-univ-tlemcen.yaml");
    let source = mirror(&["10.20.0.5/32"], "models.univ-tlemcen.dz:5000", true);
    let (_, objects) = build_with(&tenant, &config_with(&source, true));
    let job = job(&objects).expect("a mirror Job");
    let container = field(job, "/spec/template/spec/containers/0");
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let fake = scratch.path().join("ollama");
    for (fail_on, expect_success) in [("never", true), ("bge-m3", false)] {
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> /fake/calls\ncase \"$*\" in pull*{fail_on}*) exit 1;; esac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_file(scratch.path().join("calls"));
        let mut command = std::process::Command::new("docker");
        command.args(["run", "--rm", "--network", "none", "--user", "1000:1000"]);
        command.args(["-e", "PATH=/fake:/bin", "-v"]);
        command.arg(format!("{}:/fake", scratch.path().display()));
        command.args([
            "--entrypoint",
            container["command"][0].as_str().unwrap(),
            &image,
        ]);
        for arg in container["args"].as_array().unwrap() {
            command.arg(arg.as_str().unwrap());
        }
        let output = command.output().unwrap();
        let calls = std::fs::read_to_string(scratch.path().join("calls")).unwrap_or_default();
        assert_eq!(output.status.success(), expect_success, "{calls}");
        let expected = if expect_success {
            "pull --insecure models.univ-tlemcen.dz:5000/library/llama3.2:3b\n\
             cp models.univ-tlemcen.dz:5000/library/llama3.2:3b llama3.2:3b\n\
             pull --insecure models.univ-tlemcen.dz:5000/library/bge-m3\n\
             cp models.univ-tlemcen.dz:5000/library/bge-m3 bge-m3\n"
        } else {
            "pull --insecure models.univ-tlemcen.dz:5000/library/llama3.2:3b\n\
             cp models.univ-tlemcen.dz:5000/library/llama3.2:3b llama3.2:3b\n\
             pull --insecure models.univ-tlemcen.dz:5000/library/bge-m3\n"
        };
        assert_eq!(calls, expected);
    }
}

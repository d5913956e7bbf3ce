//! KnowledgeBases and Workflows through `iafactory apply`, against the real Docker
//! Engine, the real PostgreSQL image and the real platform API image: they are stored,
//! registered with the tenant's API through its internal endpoints, changed, deleted,
//! held while the API is down, and bad input changes nothing, on disk or in the API;
//! `serve` registers what is stored while it runs.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{
    TestAppliance, docker_ok, free_port, get, psql, random_suffix, stderr, stdout, wait_for,
};

fn tenant_yaml(tenant: &str) -> String {
    format!(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: {tenant}\nspec:\n  languages: [fr, ar, en]\n"
    )
}

fn kb_yaml(tenant: &str, name: &str, description: &str, chunk_size: u32) -> String {
    format!(
        "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: {name}\n  namespace: iaf-{tenant}\nspec:\n  description: \"{description}\"\n  languages: [fr, ar]\n  chunking: {{size: {chunk_size}, overlap: 120}}\n"
    )
}

/// A researcher searching `kb`, then a writer; `extra_agent` adds a checker.
fn workflow_yaml(tenant: &str, name: &str, kb: &str, extra_agent: bool) -> String {
    let mut text = format!(
        r#"apiVersion: iafactory.dz/v1alpha1
kind: Workflow
metadata:
  name: {name}
  namespace: iaf-{tenant}
spec:
  description: "weekly summary"
  agents:
    - name: collect
      role: researcher
      provider: ollama
      model: "llama3.2:3b"
      knowledgeBase: {kb}
      prompt: "Collect the facts about {{{{input}}}}."
    - name: write
      role: writer
      provider: ollama
      model: "llama3.2:3b"
      dependsOn: [collect]
      prompt: "Summarise {{{{agents.collect.output}}}}."
"#
    );
    if extra_agent {
        text.push_str(
            r#"    - name: check
      role: analyzer
      provider: ollama
      model: "llama3.2:3b"
      dependsOn: [write]
      prompt: "Check {{agents.write.output}}."
"#,
        );
    }
    text
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file under the data directory's manifests, with its content.
fn stored(box_: &TestAppliance) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, into: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&box_.data_dir().join("manifests"), &mut files);
    files
}

/// The tenant's API, as the test reaches it: the API container's address on the
/// tenant's network, and the operator token from the tenant's secrets.
struct TenantApi {
    tenant: String,
    /// The public listener (`/api`, `/readyz`).
    base: String,
    /// The internal listener (`/internal/*`), where the appliance registers.
    internal: String,
    token: String,
    http: reqwest::Client,
}

impl TenantApi {
    fn of(box_: &TestAppliance, tenant: &str) -> Self {
        let ip = docker_ok(&[
            "inspect",
            &api_container(box_, tenant),
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"iaf-{tenant}\").IPAddress}}}}"),
        ]);
        let secrets: Value = serde_json::from_slice(
            &std::fs::read(box_.data_dir().join(format!("secrets/{tenant}.json"))).unwrap(),
        )
        .unwrap();
        Self {
            tenant: tenant.to_owned(),
            base: format!("http://{ip}:8180"),
            internal: format!("http://{ip}:9180"),
            token: secrets["operator-token"]["token"]
                .as_str()
                .unwrap()
                .to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The internal record of `collection/name`, or None on 404.
    async fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!(
                "{}/internal/tenants/{}/{collection}/{name}",
                self.internal, self.tenant
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(response.status().is_success(), "{response:?}");
        Some(response.json::<Value>().await.unwrap()["data"].clone())
    }
}

/// The tenant's (first) API container, by label.
fn api_container(box_: &TestAppliance, tenant: &str) -> String {
    let names = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=iafactory.dz/appliance={}", box_.instance),
        "--filter",
        &format!("label=iafactory.dz/tenant={tenant}"),
        "--filter",
        "label=iafactory.dz/component=api",
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    names.first().expect("an API container").to_string()
}

/// A knowledge base's settings as the API stored them (the internal record carries
/// only counts): read from the tenant's database, never written.
fn kb_settings(tenant: &str, name: &str) -> String {
    psql(
        &format!("iaf-{tenant}-postgres"),
        &format!(
            "SELECT description || '|' || array_to_string(languages, ',') || '|' || (chunking->>'size') FROM knowledge_bases WHERE name = '{name}'"
        ),
    )
}

fn succeeds(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

fn fails(output: &std::process::Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure; stdout:\n{}",
        stdout(output)
    );
    stderr(output)
}

#[tokio::test]
async fn knowledge_bases_and_workflows_are_registered_changed_and_deleted_through_apply() {
    let box_ = TestAppliance::with_real_api();
    let tenant = format!("r{}", random_suffix());
    let dir = box_.dir.path();

    // A tenant, its knowledge base and a workflow searching it, in one file.
    let all = write(
        dir,
        "all.yaml",
        &[
            tenant_yaml(&tenant),
            kb_yaml(&tenant, "docs", "Règlements v1", 800),
            workflow_yaml(&tenant, "weekly", "docs", false),
        ]
        .join("---\n"),
    );
    let out = succeeds(&box_.iafactory(&["apply", "-f", all.to_str().unwrap()]));
    assert!(out.contains(&format!("tenant/{tenant} stored")), "{out}");
    assert!(
        out.contains(&format!("knowledgebase/docs (tenant {tenant}) stored")),
        "{out}"
    );
    // `apply` converged the tenant to healthy, then registered both at once.
    assert!(
        out.contains(&format!(
            "knowledgebase/docs (tenant {tenant}) registered with the tenant's API"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "workflow/weekly (tenant {tenant}) registered with the tenant's API"
        )),
        "{out}"
    );
    let api = TenantApi::of(&box_, &tenant);
    let kb = api
        .get("knowledge-bases", "docs")
        .await
        .expect("docs registered");
    assert_eq!(kb["documents"], 0);
    assert_eq!(kb_settings(&tenant, "docs"), "Règlements v1|fr,ar|800");
    let workflow = api
        .get("workflows", "weekly")
        .await
        .expect("weekly registered");
    assert_eq!(workflow["valid_dag"], true);
    assert_eq!(workflow["agents"], 2);

    // Re-applying the same file changes nothing, on disk or in the API.
    let before = stored(&box_);
    let out = succeeds(&box_.iafactory(&["apply", "-f", all.to_str().unwrap()]));
    assert!(
        out.contains(&format!("knowledgebase/docs (tenant {tenant}) unchanged")),
        "{out}"
    );
    assert_eq!(stored(&box_), before);
    assert_eq!(
        api.get("knowledge-bases", "docs").await.unwrap()["id"],
        kb["id"]
    );

    // A change lands.
    let changed = write(
        dir,
        "changed.yaml",
        &[
            kb_yaml(&tenant, "docs", "Règlements v2", 600),
            workflow_yaml(&tenant, "weekly", "docs", true),
        ]
        .join("---\n"),
    );
    let out = succeeds(&box_.iafactory(&["apply", "-f", changed.to_str().unwrap()]));
    assert!(
        out.contains(&format!("workflow/weekly (tenant {tenant}) stored")),
        "{out}"
    );
    assert_eq!(kb_settings(&tenant, "docs"), "Règlements v2|fr,ar|600");
    assert_eq!(
        api.get("knowledge-bases", "docs").await.unwrap()["id"],
        kb["id"]
    );
    assert_eq!(api.get("workflows", "weekly").await.unwrap()["agents"], 3);

    // `status` shows them with the API's record, for people and for scripts.
    let table = succeeds(&box_.iafactory(&["status"]));
    assert!(
        table.contains("knowledgebase/docs") && table.contains("0 documents, 0 chunks"),
        "{table}"
    );
    assert!(
        table.contains("workflow/weekly") && table.contains("3 agents, valid DAG"),
        "{table}"
    );
    let json: Value =
        serde_json::from_str(&succeeds(&box_.iafactory(&["status", "-o", "json"]))).unwrap();
    let ours = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == tenant.as_str())
        .unwrap();
    let registrations = ours["registrations"].as_array().unwrap();
    let weekly = registrations
        .iter()
        .find(|r| r["name"] == "weekly")
        .unwrap();
    assert_eq!(weekly["kind"], "Workflow");
    assert_eq!(weekly["api"]["state"], "workflow");
    assert_eq!(weekly["api"]["agents"], 3);
    assert_eq!(weekly["api"]["valid_dag"], true);
    let docs = registrations.iter().find(|r| r["name"] == "docs").unwrap();
    assert_eq!(docs["api"]["state"], "knowledge_base");
    assert_eq!(docs["api"]["chunks"], 0);

    // Bad input: a clear error, and nothing changes, on disk or in the API.
    let before = stored(&box_);
    let containers = box_.container_ids();
    let cyclic = write(
        dir,
        "cyclic.yaml",
        &format!(
            r#"apiVersion: iafactory.dz/v1alpha1
kind: Workflow
metadata: {{name: loop, namespace: iaf-{tenant}}}
spec:
  agents:
    - {{name: a, role: writer, provider: ollama, model: m, dependsOn: [b], prompt: "x"}}
    - {{name: b, role: writer, provider: ollama, model: m, dependsOn: [a], prompt: "y"}}
"#
        ),
    );
    let error = fails(&box_.iafactory(&["apply", "-f", cyclic.to_str().unwrap()]));
    assert!(
        error.contains("cycle") && error.contains("\"loop\""),
        "{error}"
    );
    assert!(error.contains("nothing was applied"), "{error}");

    let stranger = write(
        dir,
        "stranger.yaml",
        &kb_yaml("nosuch", "docs", "for nobody", 800),
    );
    let error = fails(&box_.iafactory(&["apply", "-f", stranger.to_str().unwrap()]));
    assert!(
        error.contains("tenant \"nosuch\"") && error.contains("not on this appliance"),
        "{error}"
    );

    // A good document, then a malformed one: neither is stored.
    let mixed = write(
        dir,
        "mixed.yaml",
        &[
            kb_yaml(&tenant, "other", "fine on its own", 800),
            format!(
                "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: broken, namespace: iaf-{tenant}}}\nspec:\n  chunking: {{size: big}}\n"
            ),
        ]
        .join("---\n"),
    );
    let error = fails(&box_.iafactory(&["apply", "-f", mixed.to_str().unwrap()]));
    assert!(
        error.contains("document 2") && error.contains("spec.chunking.size"),
        "{error}"
    );

    // A workflow naming a knowledge base the tenant does not have.
    let dangling = write(
        dir,
        "dangling.yaml",
        &workflow_yaml(&tenant, "dangling", "missing", false),
    );
    let error = fails(&box_.iafactory(&["apply", "-f", dangling.to_str().unwrap()]));
    assert!(
        error.contains("knowledge base \"missing\" does not exist"),
        "{error}"
    );

    assert_eq!(stored(&box_), before, "bad input changed the store");
    assert_eq!(box_.container_ids(), containers);
    for (collection, name) in [
        ("workflows", "loop"),
        ("knowledge-bases", "other"),
        ("knowledge-bases", "broken"),
        ("workflows", "dangling"),
    ] {
        assert_eq!(api.get(collection, name).await, None, "{collection}/{name}");
    }
    assert_eq!(api.get("workflows", "weekly").await.unwrap()["agents"], 3);
    assert_eq!(kb_settings(&tenant, "docs"), "Règlements v2|fr,ar|600");

    // Deleting a knowledge base: gone from the store and from the API.
    let out = succeeds(&box_.iafactory(&["delete", "knowledgebase", "docs", "-n", &tenant]));
    assert!(
        out.contains(&format!(
            "knowledgebase/docs (tenant {tenant}) deleted from the tenant's API"
        )),
        "{out}"
    );
    assert_eq!(api.get("knowledge-bases", "docs").await, None);
    assert_eq!(kb_settings(&tenant, "docs"), "");
    let left: Vec<String> = stored(&box_)
        .keys()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|f| f.starts_with("knowledgebase-docs")),
        "{left:?}"
    );
    let error = fails(&box_.iafactory(&["delete", "kb", "docs", "-n", &tenant]));
    assert!(error.contains("has no knowledgebase \"docs\""), "{error}");

    // With the API down, a deletion waits for the next reconcile instead of failing.
    docker_ok(&["stop", &api_container(&box_, &tenant)]);
    let out = succeeds(&box_.iafactory(&[
        "delete",
        "workflow",
        "weekly",
        "-n",
        &format!("iaf-{tenant}"),
    ]));
    assert!(
        out.contains(&format!(
            "workflow/weekly (tenant {tenant}) deleted from the tenant's API on next reconcile"
        )),
        "{out}"
    );
    let table = succeeds(&box_.iafactory(&["status"]));
    assert!(
        table.contains("workflow/weekly") && table.contains("unregistered on next reconcile"),
        "{table}"
    );
    // `up` restarts the API, then settles what was owed.
    let out = succeeds(&box_.iafactory(&["up"]));
    assert!(
        out.contains(&format!(
            "workflow/weekly (tenant {tenant}) deleted from the tenant's API"
        )),
        "{out}"
    );
    let api = TenantApi::of(&box_, &tenant);
    wait_for("the restarted API to answer", 120, || async {
        reqwest::get(format!("{}/readyz", api.base))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert_eq!(api.get("workflows", "weekly").await, None);
    assert!(
        !stored(&box_)
            .keys()
            .any(|p| p.to_string_lossy().contains("weekly")),
        "the pending deletion was settled"
    );
}

/// The daemon registers what `apply --no-up` stored while it runs: its watch of the
/// manifests sees the new file (the timer is an hour away), and /status shows it.
#[tokio::test]
async fn serve_registers_a_knowledge_base_stored_while_it_runs() {
    let box_ = TestAppliance::with_real_api();
    let tenant = format!("s{}", random_suffix());
    let dir = box_.dir.path();
    let file = write(dir, "tenant.yaml", &tenant_yaml(&tenant));
    succeeds(&box_.iafactory(&["apply", "-f", file.to_str().unwrap()]));

    let port = free_port();
    box_.set_serve(port, 3600);
    let _daemon = box_.serve(port).await;

    let kb = write(dir, "kb.yaml", &kb_yaml(&tenant, "handbook", "Guide", 500));
    let out = succeeds(&box_.iafactory(&["apply", "--no-up", "-f", kb.to_str().unwrap()]));
    assert!(out.contains("not registered yet"), "{out}");
    let api = TenantApi::of(&box_, &tenant);
    wait_for("serve registers the knowledge base", 120, || async {
        api.get("knowledge-bases", "handbook").await.is_some()
    })
    .await;
    assert_eq!(kb_settings(&tenant, "handbook"), "Guide|fr,ar|500");
    let status: Value = serde_json::from_str(&get(port, "/status").await.unwrap()).unwrap();
    assert_eq!(status[0]["registrations"][0]["name"], "handbook");
    assert_eq!(
        status[0]["registrations"][0]["api"]["state"],
        "knowledge_base"
    );
}

/// `iafactory admin`, with `input` on its stdin.
fn admin(box_: &TestAppliance, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_iafactory"))
        .args(["--config", box_.config_file.to_str().unwrap(), "admin"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The tenant's public API, as a user reaches it (the API container's address).
async fn public_post(api: &TenantApi, path: &str, body: Value) -> reqwest::StatusCode {
    api.http
        .post(format!("{}{path}", api.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_tenant_gets_its_administrator_from_iafactory_admin_and_strangers_cannot_sign_up() {
    let box_ = TestAppliance::with_real_api();
    let tenant = format!("a{}", random_suffix());
    let file = write(box_.dir.path(), "tenant.yaml", &tenant_yaml(&tenant));
    succeeds(&box_.iafactory(&["apply", "-f", file.to_str().unwrap()]));
    let api = TenantApi::of(&box_, &tenant);
    let login = |email: &'static str, password: &'static str| {
        public_post(
            &api,
            "/api/auth/login",
            serde_json::json!({"email": email, "password": password}),
        )
    };

    // Self-registration is closed on the appliance's tenant APIs.
    let signup = public_post(
        &api,
        "/api/auth/register",
        serde_json::json!({"tenant_name": "Intrus", "tenant_slug": "intrus", "email": "x@intrus.dz", "password": "a long enough password"}),
    )
    .await;
    assert_eq!(signup, reqwest::StatusCode::FORBIDDEN);

    // Bad input: an unknown tenant, a password the API refuses. Nobody can log in.
    let unknown = fails(&admin(
        &box_,
        &["nobody", "--email", "dsi@x.dz", "--password-stdin"],
        "a long enough password\n",
    ));
    assert!(unknown.contains("no tenant \"nobody\""), "{unknown}");
    let weak = fails(&admin(
        &box_,
        &[&tenant, "--email", "dsi@univ.dz", "--password-stdin"],
        "short\n",
    ));
    assert!(weak.contains("was not set"), "{weak}");
    assert!(weak.contains("password"), "{weak}");
    assert_eq!(
        login("dsi@univ.dz", "short").await,
        reqwest::StatusCode::UNAUTHORIZED
    );

    let out = succeeds(&admin(
        &box_,
        &[&tenant, "--email", "dsi@univ.dz", "--password-stdin"],
        "a long enough password\n",
    ));
    assert!(
        out.contains("dsi@univ.dz is an administrator (tenant_admin)"),
        "{out}"
    );
    assert!(
        !out.contains("password"),
        "a given password is not echoed: {out}"
    );
    assert_eq!(
        login("dsi@univ.dz", "a long enough password").await,
        reqwest::StatusCode::OK
    );

    // A lost password: `admin` again, with none given, generates and shows a new one.
    let out = succeeds(&admin(&box_, &[&tenant, "--email", "dsi@univ.dz"], ""));
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once, keep it safe): "))
        .unwrap_or_else(|| panic!("no generated password in {out}"))
        .to_owned();
    assert_eq!(generated.len(), 20);
    assert_eq!(
        login("dsi@univ.dz", "a long enough password").await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    let status = api
        .http
        .post(format!("{}/api/auth/login", api.base))
        .json(&serde_json::json!({"email": "dsi@univ.dz", "password": generated}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);
}

#[tokio::test]
async fn a_backup_carries_the_knowledge_bases_and_a_restore_registers_them_again() {
    let first = TestAppliance::with_real_api();
    let tenant = format!("b{}", random_suffix());
    let file = write(
        first.dir.path(),
        "all.yaml",
        &[
            // Deleted with its data below, so the fresh box's restore meets no volume.
            format!("{}  retention: Delete\n", tenant_yaml(&tenant)),
            kb_yaml(&tenant, "docs", "Règlements v2", 700),
        ]
        .join("---\n"),
    );
    succeeds(&first.iafactory(&["apply", "-f", file.to_str().unwrap()]));
    let backups = tempfile::tempdir().unwrap();
    succeeds(&first.iafactory(&["backup", &tenant, "--to", backups.path().to_str().unwrap()]));
    let saved =
        std::fs::read_to_string(backups.path().join(&tenant).join("registrations.yaml")).unwrap();
    assert!(
        saved.contains("kind: KnowledgeBase") && saved.contains("name: docs"),
        "{saved}"
    );
    succeeds(&first.iafactory(&["delete", &tenant]));

    // A damaged copy is refused before anything is stored.
    let fresh = TestAppliance::with_real_api();
    let damaged = tempfile::tempdir().unwrap();
    let copy = damaged.path().join(&tenant);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(backups.path().join(&tenant)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        copy.join("registrations.yaml"),
        saved.replace("Règlements v2", "Règlements v3"),
    )
    .unwrap();
    let refused = fails(&fresh.restore(&tenant, damaged.path().to_str().unwrap()));
    assert!(refused.contains("registrations.yaml"), "{refused}");
    assert!(
        !fresh
            .data_dir()
            .join("manifests/tenants")
            .join(format!("{tenant}.yaml"))
            .exists()
    );

    let out = succeeds(&fresh.restore(&tenant, backups.path().to_str().unwrap()));
    assert!(out.contains("1 knowledge base(s) and workflow(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "knowledgebase/docs (tenant {tenant}) registered with the tenant's API"
        )),
        "{out}"
    );
    assert!(
        fresh
            .data_dir()
            .join(format!(
                "manifests/tenants/{tenant}/knowledgebase-docs.yaml"
            ))
            .exists()
    );
    assert_eq!(kb_settings(&tenant, "docs"), "Règlements v2|fr,ar|700");
    let api = TenantApi::of(&fresh, &tenant);
    assert!(api.get("knowledge-bases", "docs").await.is_some());
    succeeds(&fresh.iafactory(&["delete", &tenant]));
}

#[tokio::test]
async fn configmap_sources_are_files_in_the_data_directory_and_reach_the_api() {
    let box_ = TestAppliance::with_real_api();
    let tenant = format!("f{}", random_suffix());
    let dir = box_.dir.path();
    // `configMap: {name: programmes}` on the appliance: the files of
    // <data_dir>/sources/<tenant>/programmes/.
    let files = box_.data_dir().join(format!("sources/{tenant}/programmes"));
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("licence.md"), "# Licence\n\nTrois années.").unwrap();
    std::fs::write(files.join("master.txt"), "Deux années.").unwrap();
    let kb = |extra_source: &str| {
        format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: programmes\n  namespace: iaf-{tenant}\nspec:\n  languages: [fr]\n  sources:\n    - inline: {{title: Contact, text: \"Écrire au décanat.\"}}\n    - configMap: {{name: programmes}}\n{extra_source}"
        )
    };
    let all = write(
        dir,
        "all.yaml",
        &[
            tenant_yaml(&tenant),
            kb("    - configMap: {name: absente, key: a.txt}\n"),
        ]
        .join("---\n"),
    );
    let out = succeeds(&box_.iafactory(&["apply", "-f", all.to_str().unwrap()]));
    assert!(
        out.contains(&format!(
            "knowledgebase/programmes (tenant {tenant}) registered with the tenant's API, but sources cannot be read: configMap:absente/a.txt"
        )),
        "{out}"
    );
    let api = TenantApi::of(&box_, &tenant);
    let record = api.get("knowledge-bases", "programmes").await.unwrap();
    assert_eq!(record["documents"], 3, "{record}");
    // The internal GET lists the sources by id.
    let sources: BTreeMap<&str, &Value> = record["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s))
        .collect();
    assert_eq!(sources.len(), 3, "{record}");
    assert_eq!(sources["configMap:programmes"]["documents"], 2);
    assert_eq!(sources["inline:Contact"]["documents"], 1);
    assert!(
        sources["configMap:absente/a.txt"]["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("sources/{tenant}/absente/a.txt")),
        "{record}"
    );
    let table = succeeds(&box_.iafactory(&["status"]));
    assert!(
        table.contains("3 sources, failing: configMap:absente/a.txt"),
        "{table}"
    );

    // A changed file and a removed source: the file's documents are replaced, the
    // removed source's deleted, the rest untouched.
    let contents = |source: &str| {
        psql(
            &format!("iaf-{tenant}-postgres"),
            &format!(
                "SELECT string_agg(c, '|' ORDER BY c) FROM (SELECT convert_from(b.content, 'UTF8') AS c FROM document_blobs b JOIN documents d ON d.id = b.document_id WHERE d.source_id = '{source}') s"
            ),
        )
    };
    let inline_before = psql(
        &format!("iaf-{tenant}-postgres"),
        "SELECT id FROM documents WHERE source_id = 'inline:Contact'",
    );
    std::fs::write(files.join("master.txt"), "Deux années, en français.").unwrap();
    let changed = write(dir, "changed.yaml", &kb(""));
    let out = succeeds(&box_.iafactory(&["apply", "-f", changed.to_str().unwrap()]));
    assert!(
        out.contains(&format!(
            "knowledgebase/programmes (tenant {tenant}) registered with the tenant's API"
        )) && !out.contains("cannot be read"),
        "{out}"
    );
    assert_eq!(
        contents("configMap:programmes"),
        "# Licence\n\nTrois années.|Deux années, en français."
    );
    assert_eq!(
        psql(
            &format!("iaf-{tenant}-postgres"),
            "SELECT id FROM documents WHERE source_id = 'inline:Contact'",
        ),
        inline_before
    );
    let record = api.get("knowledge-bases", "programmes").await.unwrap();
    assert_eq!(record["documents"], 3, "{record}");
    assert_eq!(record["sources"].as_array().unwrap().len(), 2, "{record}");
    succeeds(&box_.iafactory(&["delete", &tenant]));
}

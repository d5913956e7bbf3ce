//! A KnowledgeBase whose `spec.embedding` changes: the real operator process (against
//! kube-testserver) registers the change with the real tenant API (on real PostgreSQL),
//! and the re-embedding's progress lands in the KnowledgeBase's status, with the
//! `Reindexing` condition, until the API has switched to the new model (SmolLM2 on the
//! real llama.cpp server).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_testserver::{Options, TestServer};
use serde_json::{Value, json};
use tokio::process::Command;

const NAMESPACE: &str = "iaf-univ-tlemcen";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn engine(variable: &str, engine: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/test, or scripts/engines.sh up {engine} && source /tmp/iafactory-engines/env")
    })
}

async fn kubectl(server: &TestServer, args: &[&str]) {
    let kubeconfig = server.kubeconfig_path();
    let output = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(kubeconfig.with_extension("kubectl-cache"))
        .args(args)
        .env_remove("KUBECONFIG")
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => panic!("{what}: last seen {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn condition(object: &Value, type_: &str) -> Option<(String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

#[tokio::test]
async fn a_re_embedding_shows_in_the_knowledge_base_status_until_it_is_done() {
    let admin_url = engine("IAF_TEST_DATABASE_URL", "postgres");
    let llm = engine("IAF_TEST_LLM_BASE_URL", "llama");
    let server = TestServer::start(Options {
        ready_delay: Duration::from_millis(300),
        ..Options::default()
    })
    .await
    .unwrap();
    kubectl(&server, &["apply", "-f", "crds/"]).await;
    let client = server.client();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "iafactory-system"}})).unwrap(),
        )
        .await
        .unwrap();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _operator = Command::new(env!("CARGO_BIN_EXE_iafactory-operator"))
        .args(["--metrics-addr", "127.0.0.1:0", "--no-leader-election"])
        .args(["--log", "info,kube=warn"])
        .args(["--tenant-api-url", &format!("http://127.0.0.1:{api_port}")])
        .env("KUBECONFIG", server.kubeconfig_path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    kubectl(
        &server,
        &["apply", "-f", "config/samples/tenant-univ-tlemcen.yaml"],
    )
    .await;
    eventually("the Tenant is Ready", || {
        let tenant = server
            .get("iafactory.dz", "tenants", "", "univ-tlemcen")
            .ok_or("no tenant")?;
        match condition(&tenant, "Ready") {
            Some((s, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let secret = eventually("the operator token", || {
        server
            .get("", "secrets", NAMESPACE, "operator-token")
            .ok_or("no secret".to_owned())
    })
    .await;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();

    // The tenant's API on a database of its own, without workers for now: the
    // re-embedding waits.
    let name = format!("iaf_operator_reembed_{}", std::process::id());
    let database_url = common::fresh_database(&admin_url, &name).await;
    let config = iafactory_api::config::Config {
        database_url: database_url.clone(),
        database_app_password: iafactory_api::config::Secret("app-password-for-tests".into()),
        jwt_secret: iafactory_api::config::Secret(
            "operator-reembed-secret-operator-reembed-0".into(),
        ),
        operator_token: iafactory_api::config::Secret(token),
        llm_base_url: Some(llm),
        workflow_scheduler_tick_seconds: 0,
        ..iafactory_api::config::Config::default()
    };
    let state = iafactory_api::server::prepare(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", api_port))
        .await
        .unwrap();
    let internal = iafactory_api::app::internal_app(state.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            internal.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let owner = sqlx::PgPool::connect(&database_url).await.unwrap();

    let kbs: Api<iafactory_crds::KnowledgeBase> = Api::namespaced(client.clone(), NAMESPACE);
    kbs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "iafactory.dz/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "guide", "namespace": NAMESPACE},
            "spec": {
                "languages": ["en"],
                "embedding": {"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": 384},
                "sources": [{"inline": {"title": "Horaires", "text": "The library opens at eight."}}],
            },
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let kb = || server.get("iafactory.dz", "knowledgebases", NAMESPACE, "guide");
    eventually("the KnowledgeBase is registered", || {
        let kb = kb().ok_or("no kb")?;
        match condition(&kb, "Ready") {
            Some((s, r)) if s == "True" && r == "Registered" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Its document's chunks, as ingestion would have written them.
    sqlx::query(
        "INSERT INTO chunks (tenant_id, knowledge_base_id, document_id, ordinal, content)
         SELECT tenant_id, knowledge_base_id, id, n, 'The library opens at eight, part ' || n
         FROM documents, generate_series(0, 1) AS n",
    )
    .execute(&owner)
    .await
    .unwrap();

    kbs.patch(
        "guide",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"embedding": {"provider": "ollama", "model": "smollm2", "dimensions": 576}}})),
    )
    .await
    .unwrap();
    let status = eventually("the re-embedding shows in the status", || {
        let kb = kb().ok_or("no kb")?;
        match condition(&kb, "Reindexing") {
            Some((s, r)) if s == "True" && r == "Reembedding" => Ok(kb["status"].clone()),
            other => Err(format!("{other:?} {}", kb["status"])),
        }
    })
    .await;
    assert_eq!(
        status["reembedding"]["embedding"],
        json!({"provider": "ollama", "model": "smollm2", "dimensions": 576})
    );
    assert_eq!(
        (
            &status["reembedding"]["done"],
            &status["reembedding"]["total"]
        ),
        (&json!(0), &json!(2)),
        "{status}"
    );
    assert!(status["reembedding"]["startedAt"].is_string(), "{status}");
    let stored: Value =
        sqlx::query_scalar("SELECT embedding FROM knowledge_bases WHERE name = 'guide'")
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(stored["model"], "all-MiniLM-L6-v2");

    // The API's worker re-embeds and switches; the status follows.
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    iafactory_api::rag::reembed::spawn_worker(state.clone(), stop);
    let status = eventually("the re-embedding is done", || {
        let kb = kb().ok_or("no kb")?;
        match condition(&kb, "Reindexing") {
            Some((s, r)) if s == "False" && r == "Reembedded" => Ok(kb["status"].clone()),
            other => Err(format!("{other:?} {}", kb["status"])),
        }
    })
    .await;
    assert!(status.get("reembedding").is_none(), "{status}");
    let dimensions: Vec<i32> = sqlx::query_scalar("SELECT vector_dims(embedding) FROM chunks")
        .fetch_all(&owner)
        .await
        .unwrap();
    assert_eq!(dimensions, [576, 576]);
}

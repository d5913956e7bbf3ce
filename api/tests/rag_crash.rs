//! Killing the real `iafactory-api` process in the middle of an ingestion loses no
//! document: the next process picks the job up when its lease lapses.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use serde_json::{Value, json};

struct Api {
    child: Child,
    base: String,
}

impl Api {
    fn start(db: &TestDb, llm_base_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_iafactory-api"))
            .env_clear()
            .env("IAF_DATABASE_URL", &db.url)
            .env("IAF_DATABASE_APP_PASSWORD", common::DATABASE_APP_PASSWORD)
            .env("IAF_JWT_SECRET", common::JWT_SECRET)
            .env("IAF_LISTEN", format!("127.0.0.1:{port}"))
            // Not used here; port 0 so that parallel tests never collide on 9180.
            .env("IAF_INTERNAL_LISTEN", "127.0.0.1:0")
            .env("IAF_LLM_BASE_URL", llm_base_url)
            .env(
                "IAF_LLM_MODEL",
                common::engine_url("IAF_TEST_LLM_MODEL", "llama"),
            )
            .env("IAF_INGESTION_LEASE_SECONDS", "3")
            .env("IAF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iafactory-api starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/readyz", self.base))
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "the API did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn status(http: &reqwest::Client, api: &Api, token: &str, kb: &str, document: &str) -> Value {
    http.get(format!(
        "{}/api/knowledge-bases/{kb}/documents/{document}",
        api.base
    ))
    .bearer_auth(token)
    .send()
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap()["data"]
        .clone()
}

#[tokio::test]
async fn a_killed_service_loses_no_document() {
    let real_llm = common::engine_url("IAF_TEST_LLM_BASE_URL", "llama");
    let db = TestDb::new().await;
    // An embedding server that accepts connections and never answers: ingestion
    // hangs there, mid-flight, when the process is killed.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}/v1", hanging.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            connections.push(socket);
        }
    });

    let http = reqwest::Client::new();
    let first = Api::start(&db, &hanging_url);
    first.ready().await;
    let registered: Value = http
        .post(format!("{}/api/auth/register", first.base))
        .json(&json!({"tenant_name": "Crash", "tenant_slug": "crash", "email": "a@crash.dz", "password": "a long enough password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = registered["data"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Embedded by the tenant's OpenAI-compatible server (llama.cpp: 576 dimensions).
    let kb: Value = http
        .post(format!("{}/api/knowledge-bases", first.base))
        .bearer_auth(&token)
        .json(&json!({"name": "crash", "embedding": {"provider": "ollama", "model": "smollm2", "dimensions": 576}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kb = kb["data"]["id"]
        .as_str()
        .expect("knowledge base created")
        .to_owned();
    let upload: Value = http
        .post(format!("{}/api/knowledge-bases/{kb}/documents", first.base))
        .bearer_auth(&token)
        .json(&json!({"title": "Survivor", "text": "Ce document doit survivre à un arrêt brutal du service."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let document = upload["data"]["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = status(&http, &first, &token, &kb, &document).await;
        if current["status"] == "processing" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingestion never started: {current}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL: no shutdown, no cleanup, the job stays leased to a dead worker.
    drop(first);

    let second = Api::start(&db, &real_llm);
    second.ready().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let current = status(&http, &second, &token, &kb, &document).await;
        if current["status"] == "ready" {
            break current;
        }
        assert_ne!(current["status"], "failed", "{current}");
        assert!(
            Instant::now() < deadline,
            "the document was not ingested after the restart: {current}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["chunk_count"], 1);
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM ingestion_jobs WHERE document_id = $1::uuid")
            .bind(&document)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(
        attempts, 2,
        "the first attempt died with the process, the second succeeded"
    );
    held.abort();
}

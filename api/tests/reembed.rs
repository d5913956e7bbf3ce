//! A registered KnowledgeBase whose embedding model changes is re-embedded in the
//! background, on real PostgreSQL with two real models of different dimensions: MiniLM
//! in the process (384) and SmolLM2 served by llama.cpp (576), reached through a proxy
//! the test can pause. While it is paused, searches answer from the previous vectors and
//! the record shows the progress; once resumed, the knowledge base switches to 576
//! dimensions at once, documents ingested meanwhile included.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::reembedding::{
    MINILM, Proxy, SMOLLM2, eventually, ingested, record, register_kb, search, spec, tenant,
    written,
};
use common::{TestApp, TestDb};
use serde_json::Value;

const SLUG: &str = "reembed";
/// Each dimension count of the knowledge base's chunks, with how many chunks have it
/// (NULL: no vector).
async fn dimensions(owner: &sqlx::PgPool, kb: &str) -> Vec<(Option<i32>, i64)> {
    sqlx::query_as(
        "SELECT vector_dims(embedding), count(*) FROM chunks WHERE knowledge_base_id = $1::uuid
         GROUP BY 1 ORDER BY 1",
    )
    .bind(kb)
    .fetch_all(owner)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_new_embedding_model_is_re_embedded_in_the_background_and_switched_at_once() {
    let llm = common::engine_url("IAF_TEST_LLM_BASE_URL", "llama");
    let upstream: SocketAddr = llm
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let db = TestDb::new().await;
    let config = iafactory_api::config::Config {
        llm_base_url: Some(format!("http://{}/v1", proxy.address)),
        ..common::rag_config(&db)
    };
    let app = TestApp::with_workers(config).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    iafactory_api::rag::reembed::spawn_worker(app.state.clone(), stop);
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let token = tenant(&app, SLUG).await;

    let documents = [
        (
            "Horaires",
            "The library opens at eight in the morning and closes at six in the evening.",
        ),
        (
            "Inscription",
            "Students enrol in the master programme online before the end of September.",
        ),
        (
            "Restaurant",
            "The university restaurant serves lunch from noon to two o'clock.",
        ),
    ];
    let registered = register_kb(&app, SLUG, "guide", spec(MINILM, &documents)).await;
    let kb = registered["id"].as_str().unwrap().to_owned();
    assert!(registered.get("reembedding").is_none(), "{registered}");
    ingested(&owner, &kb, 3).await;
    let chunks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chunks WHERE knowledge_base_id = $1::uuid")
            .bind(&kb)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert_eq!(dimensions(&owner, &kb).await, [(Some(384), chunks)]);
    assert!(!search(&app, &token, &kb).await.is_empty());

    // The new model, with llama.cpp out of reach: the change is recorded, nothing else.
    proxy.pause(true);
    let registered = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    let progress = &registered["reembedding"];
    assert_eq!(
        progress["embedding"],
        serde_json::from_str::<Value>(SMOLLM2).unwrap()
    );
    assert_eq!(
        (progress["done"].as_i64(), progress["total"].as_i64()),
        (Some(0), Some(chunks)),
        "{registered}"
    );
    assert!(progress["error"].is_null(), "{progress}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Still answering from the previous model's vectors.
    assert!(!search(&app, &token, &kb).await.is_empty());
    assert_eq!(dimensions(&owner, &kb).await, [(Some(384), chunks)]);
    let before = written(&owner, &kb).await;
    assert_eq!(
        before["embedding"],
        serde_json::from_str::<Value>(MINILM).unwrap()
    );
    assert_eq!(before["next"], 0, "{before}");
    assert_eq!(record(&app, SLUG, "guide").await["reembedding"]["done"], 0);

    // Registering the same spec again during the re-embedding writes nothing.
    let again = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    assert_eq!(again["reembedding"], registered["reembedding"]);
    assert_eq!(written(&owner, &kb).await, before);
    // The stored model, asked for again, cancels it; the new one starts it over.
    let cancelled = register_kb(&app, SLUG, "guide", spec(MINILM, &documents)).await;
    assert!(cancelled.get("reembedding").is_none(), "{cancelled}");
    assert!(written(&owner, &kb).await["pending"].is_null());
    let restarted = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    assert_eq!(restarted["reembedding"]["total"], chunks, "{restarted}");

    // A document ingested meanwhile gets the previous model's vectors, then the new
    // model's with the others.
    let mut more = documents.to_vec();
    more.push((
        "Parking",
        "Cars may be left in the car park behind the faculty of sciences.",
    ));
    register_kb(&app, SLUG, "guide", spec(SMOLLM2, &more)).await;
    ingested(&owner, &kb, 4).await;
    let all: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chunks WHERE knowledge_base_id = $1::uuid")
            .bind(&kb)
            .fetch_one(&owner)
            .await
            .unwrap();
    assert!(all > chunks);
    assert_eq!(dimensions(&owner, &kb).await, [(Some(384), all)]);
    assert!(!search(&app, &token, &kb).await.is_empty());

    // Resumed: every chunk is embedded again, then the knowledge base switches.
    proxy.pause(false);
    eventually("the knowledge base switches", async || {
        let pending: Option<Value> =
            sqlx::query_scalar("SELECT pending_embedding FROM knowledge_bases WHERE id = $1::uuid")
                .bind(&kb)
                .fetch_one(&owner)
                .await
                .unwrap();
        pending.is_none().then_some(())
    })
    .await;
    assert_eq!(dimensions(&owner, &kb).await, [(Some(576), all)]);
    let after = written(&owner, &kb).await;
    assert_eq!(
        after["embedding"],
        serde_json::from_str::<Value>(SMOLLM2).unwrap()
    );
    assert_eq!(after["next"], 0, "{after}");
    let index: String = sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE indexname = $1")
        .bind(format!("chunks_hnsw_{}", kb.replace('-', "")))
        .fetch_one(&owner)
        .await
        .unwrap();
    assert!(index.contains("vector(576)"), "{index}");
    let recorded = record(&app, SLUG, "guide").await;
    assert!(recorded.get("reembedding").is_none(), "{recorded}");
    // Searches embed the query with the new model and find the new vectors.
    assert!(!search(&app, &token, &kb).await.is_empty());

    // A knowledge base without documents switches at once.
    let empty = register_kb(&app, SLUG, "empty", spec(MINILM, &[])).await;
    let empty_id = empty["id"].as_str().unwrap();
    register_kb(&app, SLUG, "empty", spec(SMOLLM2, &[])).await;
    assert_eq!(
        written(&owner, empty_id).await["embedding"],
        serde_json::from_str::<Value>(SMOLLM2).unwrap()
    );
}

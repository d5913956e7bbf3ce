//! A registered KnowledgeBase of a Qdrant tenant whose embedding model changes is
//! re-embedded in the background into a second Qdrant collection, then switched: real
//! PostgreSQL, the real qdrant-client over gRPC to Qdrant's own engine
//! (tests/qdrant-testserver), and two real models of different dimensions: MiniLM in
//! the process (384) and SmolLM2 served by llama.cpp (576), reached through a proxy the
//! test can pause. While it is paused, searches answer from the live collection and the
//! record shows no progress; once resumed, the next collection replaces it, with every
//! chunk and none of a document deleted meanwhile.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::qdrant_server::QdrantServer;
use common::reembedding::{
    MINILM, Proxy, SMOLLM2, eventually, ingested, record, register_kb, search, spec, tenant,
    written,
};
use common::{Auth, TestApp, TestDb};
use iafactory_api::config::{Config, Secret};
use iafactory_api::rag::qdrant::{
    QdrantSettings, QdrantStore, collection_name, generation_name, generations,
};
use iafactory_api::rag::store::{Scope, VectorPoint, VectorStore};
use iafactory_crds::Language;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{Condition, CountPointsBuilder, Filter, vectors_config::Config as Vc};
use serde_json::{Value, json};
use uuid::Uuid;

const SLUG: &str = "reembed-qdrant";

async fn chunk_count(owner: &sqlx::PgPool, kb: &str) -> u64 {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chunks WHERE knowledge_base_id = $1::uuid")
            .bind(kb)
            .fetch_one(owner)
            .await
            .unwrap();
    count as u64
}

/// The knowledge base's collections in Qdrant, lowest generation first, each with its
/// vector size and point count.
async fn collections(client: &Qdrant, kb: &str) -> Vec<(String, u64, u64)> {
    let kb: Uuid = kb.parse().unwrap();
    let names: Vec<String> = client
        .list_collections()
        .await
        .unwrap()
        .collections
        .into_iter()
        .map(|c| c.name)
        .collect();
    let mut found = Vec::new();
    for (_, name) in generations(kb, &names) {
        let info = client.collection_info(&name).await.unwrap().result.unwrap();
        let size = match info
            .config
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
        {
            Some(Vc::Params(params)) => params.size,
            other => panic!("unexpected vectors config {other:?}"),
        };
        let points = count(client, &name, Filter::default()).await;
        found.push((name, size, points));
    }
    found
}

async fn count(client: &Qdrant, collection: &str, filter: Filter) -> u64 {
    client
        .count(
            CountPointsBuilder::new(collection)
                .filter(filter)
                .exact(true),
        )
        .await
        .unwrap()
        .result
        .unwrap()
        .count
}

#[tokio::test]
async fn a_qdrant_knowledge_base_is_re_embedded_into_a_next_collection_and_switched() {
    let llm = common::engine_url("IAF_TEST_LLM_BASE_URL", "llama");
    let upstream: SocketAddr = llm
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let qdrant = server.client();
    let db = TestDb::new().await;
    let config = Config {
        vector_store: "qdrant".into(),
        qdrant_url: Some(server.url()),
        qdrant_api_key: Secret(String::new()),
        qdrant_timeout_seconds: 5,
        llm_base_url: Some(format!("http://{}/v1", proxy.address)),
        ..common::rag_config(&db)
    };
    let app = TestApp::with_workers(config).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    // Two workers, as two API replicas would run: a knowledge base is leased to one.
    iafactory_api::rag::reembed::spawn_worker(app.state.clone(), stop.clone());
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
    let kb_id: Uuid = kb.parse().unwrap();
    assert!(registered.get("reembedding").is_none(), "{registered}");
    ingested(&owner, &kb, 3).await;
    // A document uploaded through the API, not a source: deleted during the
    // re-embedding below, it stays deleted when the KnowledgeBase is registered again.
    let reply = app
        .request(
            Method::POST,
            &format!("/api/knowledge-bases/{kb}/documents"),
            Auth::Bearer(&token),
            Some(json!({"title": "Cantine", "text": "The canteen of the residence hall serves dinner until nine at night."})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let deleted = reply.body["data"]["id"].as_str().unwrap().to_owned();
    ingested(&owner, &kb, 4).await;
    let chunks = chunk_count(&owner, &kb).await;
    let live = collection_name(kb_id);
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 384, chunks)]
    );
    let of_deleted = || Filter::must([Condition::matches("document_id", deleted.clone())]);
    assert!(count(&qdrant, &live, of_deleted()).await > 0);
    assert!(!search(&app, &token, &kb).await.is_empty());

    // The new model, with llama.cpp out of reach: the change is recorded, and the next
    // collection is made for it, empty.
    proxy.pause(true);
    let registered = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    let progress = &registered["reembedding"];
    assert_eq!(
        progress["embedding"],
        serde_json::from_str::<Value>(SMOLLM2).unwrap()
    );
    assert_eq!(
        (progress["done"].as_u64(), progress["total"].as_u64()),
        (Some(0), Some(chunks)),
        "{registered}"
    );
    assert!(progress["error"].is_null(), "{progress}");
    let next = generation_name(kb_id, 1);
    eventually("the next collection is made", async || {
        (collections(&qdrant, &kb).await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Still answering from the live collection, with the previous model.
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 384, chunks), (next.clone(), 576, 0)]
    );
    assert!(!search(&app, &token, &kb).await.is_empty());
    let before = written(&owner, &kb).await;
    assert_eq!(
        before["embedding"],
        serde_json::from_str::<Value>(MINILM).unwrap()
    );
    assert_eq!(before["next"], 0, "{before}");
    let progress = record(&app, SLUG, "guide").await["reembedding"].clone();
    assert_eq!(
        (progress["done"].as_u64(), progress["total"].as_u64()),
        (Some(0), Some(chunks)),
        "{progress}"
    );

    // Registering the same spec again during the re-embedding writes nothing.
    let again = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    assert_eq!(again["reembedding"], registered["reembedding"]);
    assert_eq!(written(&owner, &kb).await, before);
    // The stored model, asked for again, cancels it and drops the next collection; the
    // new one starts it over.
    let cancelled = register_kb(&app, SLUG, "guide", spec(MINILM, &documents)).await;
    assert!(cancelled.get("reembedding").is_none(), "{cancelled}");
    assert!(written(&owner, &kb).await["pending"].is_null());
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 384, chunks)]
    );
    let restarted = register_kb(&app, SLUG, "guide", spec(SMOLLM2, &documents)).await;
    assert_eq!(restarted["reembedding"]["total"], chunks, "{restarted}");
    // The worker still waiting on the cancelled run's batch holds the knowledge base no
    // more: the other one takes the new run, makes its next collection, reads its
    // first batch and waits on the embedding server too.
    eventually("the new run's next collection is made", async || {
        (collections(&qdrant, &kb).await.len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A document deleted meanwhile: its points go from the live collection, and never
    // reach the next one, though its chunks were read for embedding before.
    let reply = app
        .request(
            Method::DELETE,
            &format!("/api/knowledge-bases/{kb}/documents/{deleted}"),
            Auth::Bearer(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(count(&qdrant, &live, of_deleted()).await, 0);
    // A document ingested meanwhile gets the previous model's vectors in the live
    // collection, then the new model's in the next one, with the others.
    let mut more = documents.to_vec();
    more.push((
        "Parking",
        "Cars may be left in the car park behind the faculty of sciences.",
    ));
    register_kb(&app, SLUG, "guide", spec(SMOLLM2, &more)).await;
    ingested(&owner, &kb, 4).await;
    let all = chunk_count(&owner, &kb).await;
    assert_eq!(collections(&qdrant, &kb).await[0], (live.clone(), 384, all));
    assert!(!search(&app, &token, &kb).await.is_empty());
    assert!(written(&owner, &kb).await["pending"].is_object());

    // Resumed: every chunk is embedded again into the next collection, which then
    // replaces the live one.
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
    assert_eq!(chunk_count(&owner, &kb).await, all);
    assert_eq!(collections(&qdrant, &kb).await, [(next.clone(), 576, all)]);
    assert_eq!(count(&qdrant, &next, of_deleted()).await, 0);
    let after = written(&owner, &kb).await;
    assert_eq!(
        after["embedding"],
        serde_json::from_str::<Value>(SMOLLM2).unwrap()
    );
    assert_eq!(after["next"], 0, "{after}");
    let recorded = record(&app, SLUG, "guide").await;
    assert!(recorded.get("reembedding").is_none(), "{recorded}");
    // Searches embed the query with the new model and find the new vectors (the query
    // shares no word with the documents: full text alone finds nothing).
    assert!(!search(&app, &token, &kb).await.is_empty());

    // Registering the new model again writes nothing, in PostgreSQL or Qdrant.
    register_kb(&app, SLUG, "guide", spec(SMOLLM2, &more)).await;
    assert_eq!(written(&owner, &kb).await, after);
    assert_eq!(collections(&qdrant, &kb).await, [(next.clone(), 576, all)]);

    // Deleting the knowledge base deletes its collections.
    let reply = app
        .request(
            Method::DELETE,
            &format!("/api/knowledge-bases/{kb}"),
            Auth::Bearer(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(collections(&qdrant, &kb).await, []);
}

/// The store's side, alone: deleting a document or the knowledge base reaches the next
/// collection too, and promoting it drops the live one.
#[tokio::test]
async fn deletions_reach_the_next_collection_and_promotion_drops_the_live_one() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let qdrant = server.client();
    let store = QdrantStore::new(&QdrantSettings {
        url: server.url(),
        api_key: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let scope = Scope {
        tenant_id: Uuid::new_v4(),
        knowledge_base_id: Uuid::new_v4(),
    };
    let kb = scope.knowledge_base_id.to_string();
    let (kept, deleted) = (Uuid::new_v4(), Uuid::new_v4());
    let point = |document_id: Uuid, dimensions: usize| VectorPoint {
        chunk_id: Uuid::new_v4(),
        document_id,
        language: Some(Language::En),
        vector: (0..dimensions)
            .map(|i| if i == 0 { 1.0 } else { 0.0 })
            .collect(),
    };
    let next = store
        .next_collection()
        .expect("Qdrant re-embeds into a next collection");
    assert!(!next.exists(scope).await.unwrap());
    // No live collection yet: it is made first, so that the next one is not taken for it.
    next.create(scope, 3, 5).await.unwrap();
    assert!(next.exists(scope).await.unwrap());
    let (live, second) = (
        collection_name(scope.knowledge_base_id),
        generation_name(scope.knowledge_base_id, 1),
    );
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 3, 0), (second.clone(), 5, 0)]
    );
    store
        .upsert(scope, &[point(kept, 3), point(deleted, 3)])
        .await
        .unwrap();
    next.upsert(
        scope,
        &[point(kept, 5), point(deleted, 5), point(deleted, 5)],
    )
    .await
    .unwrap();
    assert_eq!(next.count(scope).await.unwrap(), 3);
    // The next collection's vectors are not searched before the switch.
    let hits = store
        .search(scope, &[1.0, 0.0, 0.0], 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);
    // Another replica's store, which sees the live collection too.
    let replica = QdrantStore::new(&QdrantSettings {
        url: server.url(),
        api_key: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let hits = replica
        .search(scope, &[1.0, 0.0, 0.0], 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(hits.len(), 2);

    store.delete_document(scope, deleted).await.unwrap();
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 3, 1), (second.clone(), 5, 1)]
    );
    // Started afresh: the earlier next collection goes.
    next.create(scope, 3, 5).await.unwrap();
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(live.clone(), 3, 1), (second.clone(), 5, 0)]
    );
    next.upsert(scope, &[point(kept, 5)]).await.unwrap();
    next.promote(scope).await.unwrap();
    assert_eq!(collections(&qdrant, &kb).await, [(second.clone(), 5, 1)]);
    assert!(!next.exists(scope).await.unwrap());
    // The other replica had the previous collection in mind: it gets NotFound, looks
    // again, and searches the promoted one.
    let hits = replica
        .search(scope, &[1.0, 0.0, 0.0, 0.0, 0.0], 10, &Default::default())
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    // The next re-embedding's collection is the third generation.
    next.create(scope, 5, 3).await.unwrap();
    let third = generation_name(scope.knowledge_base_id, 2);
    assert_eq!(
        collections(&qdrant, &kb).await,
        [(second.clone(), 5, 1), (third.clone(), 3, 0)]
    );
    next.discard(scope).await.unwrap();
    assert_eq!(collections(&qdrant, &kb).await, [(second.clone(), 5, 1)]);
    next.create(scope, 5, 3).await.unwrap();
    store.delete_collection(scope).await.unwrap();
    assert_eq!(collections(&qdrant, &kb).await, []);
}

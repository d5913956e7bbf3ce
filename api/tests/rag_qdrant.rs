//! The Qdrant vector store, with the real qdrant-client over real gRPC to Qdrant's own
//! engine (qdrant-edge) in tests/qdrant-testserver: each test starts its own server,
//! on a free port, with its own storage.

mod common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::qdrant_server::QdrantServer;
use common::{Auth, TestApp, TestDb};
use iafactory_api::config::{Config, Secret};
use iafactory_api::rag::qdrant::{QdrantStore, collection_name};
use iafactory_api::rag::store::{Scope, StoreError, VectorFilter, VectorPoint, VectorStore};
use iafactory_crds::Language;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{Condition, CountPointsBuilder, Filter};
use serde_json::json;
use uuid::Uuid;

fn scope() -> Scope {
    Scope {
        tenant_id: Uuid::new_v4(),
        knowledge_base_id: Uuid::new_v4(),
    }
}

/// A unit vector along `axis`, nudged towards `towards` so neighbours are ordered.
fn unit(dimensions: usize, axis: usize, towards: usize, nudge: f32) -> Vec<f32> {
    let mut v = vec![0.0; dimensions];
    v[axis] = 1.0;
    v[towards] += nudge;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn points(document_id: Uuid, count: usize, dimensions: usize) -> Vec<VectorPoint> {
    (0..count)
        .map(|i| VectorPoint {
            chunk_id: Uuid::new_v4(),
            document_id,
            language: Some(Language::Fr),
            vector: unit(dimensions, i % dimensions, (i + 1) % dimensions, 0.1),
        })
        .collect()
}

async fn count(client: &Qdrant, scope: Scope, filter: Filter) -> u64 {
    client
        .count(CountPointsBuilder::new(collection_name(scope.knowledge_base_id)).filter(filter))
        .await
        .unwrap()
        .result
        .unwrap()
        .count
}

/// The tenant's chunks in PostgreSQL (row-level security hides them otherwise).
async fn chunk_count(app: &TestApp, tenant_id: Uuid, condition: &str) -> u64 {
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, tenant_id)
        .await
        .unwrap();
    let count: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM chunks WHERE true {condition}"
    ))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    count as u64
}

fn qdrant_config(db: &TestDb, server: &QdrantServer) -> Config {
    Config {
        vector_store: "qdrant".into(),
        qdrant_url: Some(server.url()),
        qdrant_api_key: Secret(server.api_key.clone().unwrap_or_default()),
        qdrant_timeout_seconds: 5,
        ..common::rag_config(db)
    }
}

#[tokio::test]
async fn a_search_sees_only_its_tenant_and_knowledge_base() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let store = server.store();
    let ours = scope();
    // Another tenant's points in our collection: a mistake elsewhere must not leak them.
    let theirs = Scope {
        tenant_id: Uuid::new_v4(),
        knowledge_base_id: ours.knowledge_base_id,
    };
    let other_kb = Scope {
        tenant_id: ours.tenant_id,
        knowledge_base_id: Uuid::new_v4(),
    };
    let dimensions = 8;
    for scope in [ours, theirs, other_kb] {
        store.ensure_collection(scope, dimensions).await.unwrap();
    }
    let our_points = points(Uuid::new_v4(), 4, dimensions);
    let their_points = points(Uuid::new_v4(), 4, dimensions);
    let other_points = points(Uuid::new_v4(), 4, dimensions);
    store.upsert(ours, &our_points).await.unwrap();
    store.upsert(theirs, &their_points).await.unwrap();
    store.upsert(other_kb, &other_points).await.unwrap();

    let hits = store
        .search(ours, &our_points[0].vector, 50, &VectorFilter::default())
        .await
        .unwrap();
    let mut found: Vec<Uuid> = hits.iter().map(|h| h.chunk_id).collect();
    found.sort();
    let mut expected: Vec<Uuid> = our_points.iter().map(|p| p.chunk_id).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "only our tenant's points of our knowledge base"
    );
    assert_eq!(
        hits[0].chunk_id, our_points[0].chunk_id,
        "the nearest first"
    );
    assert!(
        (hits[0].score - 1.0).abs() < 1e-4,
        "cosine of a vector with itself: {hits:?}"
    );
    assert!(
        hits.windows(2).all(|w| w[0].score >= w[1].score),
        "best first: {hits:?}"
    );

    let theirs_found = store
        .search(theirs, &our_points[0].vector, 50, &VectorFilter::default())
        .await
        .unwrap();
    assert_eq!(theirs_found.len(), their_points.len());
    assert!(
        theirs_found
            .iter()
            .all(|h| their_points.iter().any(|p| p.chunk_id == h.chunk_id))
    );

    // The caller's filters narrow within the scope.
    let narrowed = store
        .search(
            ours,
            &our_points[0].vector,
            50,
            &VectorFilter {
                document_ids: Some(vec![their_points[0].document_id]),
                language: None,
            },
        )
        .await
        .unwrap();
    assert!(
        narrowed.is_empty(),
        "another tenant's document is not reachable: {narrowed:?}"
    );
    let arabic = store
        .search(
            ours,
            &our_points[0].vector,
            50,
            &VectorFilter {
                document_ids: None,
                language: Some(Language::Ar),
            },
        )
        .await
        .unwrap();
    assert!(arabic.is_empty(), "no Arabic points: {arabic:?}");
}

#[tokio::test]
async fn deleting_removes_the_points_and_repeats_safely() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let store = server.store();
    let client = server.client();
    let scope = scope();
    let dimensions = 16;
    store.ensure_collection(scope, dimensions).await.unwrap();
    let kept = points(Uuid::new_v4(), 5, dimensions);
    // More than one batch, to see batching store everything.
    let deleted = points(
        Uuid::new_v4(),
        iafactory_api::rag::qdrant::UPSERT_BATCH + 30,
        dimensions,
    );
    store.upsert(scope, &kept).await.unwrap();
    store.upsert(scope, &deleted).await.unwrap();
    let of =
        |document: Uuid| Filter::must([Condition::matches("document_id", document.to_string())]);
    assert_eq!(
        count(&client, scope, of(deleted[0].document_id)).await,
        deleted.len() as u64
    );

    store
        .delete_document(scope, deleted[0].document_id)
        .await
        .unwrap();
    assert_eq!(count(&client, scope, of(deleted[0].document_id)).await, 0);
    assert_eq!(
        count(&client, scope, of(kept[0].document_id)).await,
        kept.len() as u64
    );
    store
        .delete_document(scope, deleted[0].document_id)
        .await
        .unwrap();

    // Upserting the same chunk ids again replaces, never duplicates.
    store.upsert(scope, &kept).await.unwrap();
    assert_eq!(
        count(&client, scope, Filter::default()).await,
        kept.len() as u64
    );

    store.delete_collection(scope).await.unwrap();
    assert!(
        !client
            .collection_exists(collection_name(scope.knowledge_base_id))
            .await
            .unwrap()
    );
    store.delete_collection(scope).await.unwrap();
}

#[tokio::test]
async fn a_missing_collection_is_empty_for_reads_and_recreated_for_writes() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let store = server.store();
    let scope = scope();
    let dimensions = 8;
    let hits = store
        .search(
            scope,
            &unit(dimensions, 0, 1, 0.0),
            5,
            &VectorFilter::default(),
        )
        .await
        .unwrap();
    assert!(hits.is_empty());
    store.delete_document(scope, Uuid::new_v4()).await.unwrap();
    store.delete_collection(scope).await.unwrap();

    // Dropped behind the store's back after it was ensured: the write fails as
    // transient (the ingestion job retries), and the retry recreates the collection.
    store.ensure_collection(scope, dimensions).await.unwrap();
    server
        .client()
        .delete_collection(collection_name(scope.knowledge_base_id))
        .await
        .unwrap();
    let batch = points(Uuid::new_v4(), 3, dimensions);
    let error = store.upsert(scope, &batch).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
    store.ensure_collection(scope, dimensions).await.unwrap();
    store.upsert(scope, &batch).await.unwrap();
    assert_eq!(
        count(&server.client(), scope, Filter::default()).await,
        batch.len() as u64
    );
}

#[tokio::test]
async fn wrong_dimensions_are_refused_with_a_clear_error() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let store = server.store();
    let scope = scope();
    store.ensure_collection(scope, 8).await.unwrap();

    let error = store
        .upsert(scope, &points(Uuid::new_v4(), 2, 3))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Rejected { .. }), "{error}");
    assert!(
        error.to_string().contains("expected dim: 8, got 3"),
        "{error}"
    );
    assert_eq!(
        count(&server.client(), scope, Filter::default()).await,
        0,
        "nothing stored"
    );

    let error = store
        .search(scope, &[1.0, 0.0, 0.0], 3, &VectorFilter::default())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Rejected { .. }), "{error}");

    // The same knowledge base with another model's size: refused, not recreated.
    let fresh = server.store();
    let error = fresh.ensure_collection(scope, 16).await.unwrap_err();
    assert!(matches!(error, StoreError::Rejected { .. }), "{error}");
    assert!(error.to_string().contains("16"), "{error}");
}

#[tokio::test]
async fn the_api_key_comes_from_configuration() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), Some("the-right-key"));
    assert!(server.store().ready().await);
    let scope = scope();
    server.store().ensure_collection(scope, 4).await.unwrap();

    let wrong = server.store_with_key(Some("a-wrong-key"));
    assert!(!wrong.ready().await);
    let error = wrong
        .ensure_collection(
            Scope {
                knowledge_base_id: Uuid::new_v4(),
                ..scope
            },
            4,
        )
        .await
        .unwrap_err();
    // The deployment's fault, not the document's: retried, never failing documents.
    assert!(error.is_transient(), "{error}");
    assert!(
        error.to_string().contains("api-key") || error.to_string().contains("API key"),
        "{error}"
    );
    assert!(!server.store_with_key(None).ready().await);
}

/// Qdrant stops in the middle of ingestion: the API turns not ready, the documents wait
/// (pending, with the reason), and once Qdrant is back every one is stored, once.
#[tokio::test]
async fn qdrant_down_mid_ingestion_loses_no_document() {
    let storage = tempfile::tempdir().unwrap();
    let mut server = QdrantServer::start(storage.path(), None);
    let db = TestDb::new().await;
    let app = TestApp::with_workers(qdrant_config(&db, &server)).await;
    let admin = app.register("qdrant-outage").await;
    let kb = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(&admin.token),
            Some(json!({"name": "outage"})),
        )
        .await
        .body["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let upload = |title: &'static str, text: &'static str| {
        let (app, token, kb) = (&app, admin.token.clone(), kb.clone());
        async move {
            let reply = app
                .request(
                    Method::POST,
                    &format!("/api/knowledge-bases/{kb}/documents"),
                    Auth::Bearer(&token),
                    Some(json!({"title": title, "text": text})),
                )
                .await;
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
            reply.body["data"]["id"].as_str().unwrap().to_owned()
        }
    };
    let before = upload(
        "Examens",
        "La session de rattrapage des examens a lieu au mois de juin.",
    )
    .await;
    let documents = app
        .wait_for_documents(&admin.token, &kb, std::slice::from_ref(&before))
        .await;
    assert_eq!(documents[0]["status"], "ready", "{}", documents[0]);
    let ready = app.request(Method::GET, "/readyz", Auth::None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    let scope = Scope {
        tenant_id: admin.tenant_id,
        knowledge_base_id: kb.parse().unwrap(),
    };
    server.kill();
    let during = vec![
        upload(
            "Bibliothèque",
            "La bibliothèque universitaire ouvre de huit heures à dix-huit heures.",
        )
        .await,
        upload(
            "Stage",
            "Le stage de fin d'études dure six mois en entreprise.",
        )
        .await,
        upload(
            "Bourse",
            "La bourse est versée chaque trimestre aux étudiants inscrits.",
        )
        .await,
    ];
    let ready = app.request(Method::GET, "/readyz", Auth::None, None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    assert_eq!(ready.body["reason"], "vector store unreachable");
    // Each waits for a retry, with the reason, and none fails for good.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut waiting = 0;
        for id in &during {
            let reply = app
                .request(
                    Method::GET,
                    &format!("/api/knowledge-bases/{kb}/documents/{id}"),
                    Auth::Bearer(&admin.token),
                    None,
                )
                .await;
            let document = &reply.body["data"];
            assert_ne!(document["status"], "failed", "{document}");
            assert_ne!(
                document["status"], "ready",
                "stored while Qdrant is down? {document}"
            );
            if document["status"] == "pending"
                && document["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("qdrant"))
            {
                waiting += 1;
            }
        }
        if waiting == during.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the documents did not wait for a retry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.restart();
    let mut all = during.clone();
    all.push(before.clone());
    let documents = app.wait_for_documents(&admin.token, &kb, &all).await;
    for document in &documents {
        assert_eq!(document["status"], "ready", "{document}");
    }
    let ready = app.request(Method::GET, "/readyz", Auth::None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    // Every chunk in PostgreSQL has its point, and there is no other point: the
    // retries left no stale vectors behind.
    let chunks = chunk_count(&app, admin.tenant_id, "").await;
    assert!(chunks >= all.len() as u64);
    assert_eq!(
        count(&server.client(), scope, Filter::default()).await,
        chunks
    );
    for (query, expected) in [
        ("Quand a lieu la session de rattrapage ?", &before),
        ("Combien de temps dure le stage ?", &during[1]),
    ] {
        let reply = app
            .request(
                Method::POST,
                "/api/search",
                Auth::Bearer(&admin.token),
                Some(json!({"query": query, "knowledge_base_ids": [kb], "top_k": 1})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            reply.body["data"]["results"][0]["document_id"],
            expected.as_str(),
            "{query}: {}",
            reply.body
        );
    }
}

/// #4's acceptance bar on the Qdrant backend: the trilingual corpus, the right
/// document in the top 3 for at least 90% of the questions.
#[tokio::test]
async fn hybrid_retrieval_on_qdrant_finds_the_right_document_in_three_languages() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), Some("corpus-key"));
    let db = TestDb::new().await;
    let app = TestApp::with_workers(qdrant_config(&db, &server)).await;
    let admin = app.register("corpus-qdrant").await;
    let kb = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(&admin.token),
            Some(json!({"name": "corpus"})),
        )
        .await
        .body["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let corpus = common::corpus::corpus();
    let mut key_of = std::collections::HashMap::new();
    let mut ids = Vec::new();
    for document in &corpus.documents {
        let reply = app
            .request(
                Method::POST,
                &format!("/api/knowledge-bases/{kb}/documents"),
                Auth::Bearer(&admin.token),
                Some(json!({"title": document.title, "text": document.text})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        let id = reply.body["data"]["id"].as_str().unwrap().to_owned();
        key_of.insert(id.clone(), document.key.clone());
        ids.push(id);
    }
    for document in app.wait_for_documents(&admin.token, &kb, &ids).await {
        assert_eq!(document["status"], "ready", "{document}");
    }
    let scope = Scope {
        tenant_id: admin.tenant_id,
        knowledge_base_id: kb.parse().unwrap(),
    };
    let chunks = chunk_count(&app, admin.tenant_id, "").await;
    assert!(chunks >= corpus.documents.len() as u64);
    assert_eq!(
        count(&server.client(), scope, Filter::default()).await,
        chunks,
        "every chunk's vector is in Qdrant"
    );
    assert_eq!(
        chunk_count(&app, admin.tenant_id, "AND embedding IS NOT NULL").await,
        0,
        "with Qdrant, no vector is kept in PostgreSQL"
    );

    common::corpus::assert_top3_hit_rate(
        &app,
        &admin.token,
        &kb,
        &corpus,
        &key_of,
        "Qdrant",
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn a_restarted_qdrant_keeps_what_it_acknowledged() {
    let storage = tempfile::tempdir().unwrap();
    let mut server = QdrantServer::start(storage.path(), None);
    let scope = scope();
    let dimensions = 16;
    let stored = points(Uuid::new_v4(), 6, dimensions);
    {
        let store = server.store();
        store.ensure_collection(scope, dimensions).await.unwrap();
        store.upsert(scope, &stored).await.unwrap();
    }
    assert_eq!(count(&server.client(), scope, Filter::default()).await, 6);
    server.restart();
    assert_eq!(
        count(&server.client(), scope, Filter::default()).await,
        6,
        "after a kill and a restart"
    );
    let store = server.store();
    store.delete_document(scope, Uuid::new_v4()).await.unwrap();
    assert_eq!(count(&server.client(), scope, Filter::default()).await, 6);
    let mut more = points(Uuid::new_v4(), 3, dimensions);
    for (i, point) in more.iter_mut().enumerate() {
        point.vector = unit(dimensions, 8 + i, 12, 0.1);
    }
    store.upsert(scope, &more).await.unwrap();
    assert_eq!(count(&server.client(), scope, Filter::default()).await, 9);
    let hits = store
        .search(scope, &stored[0].vector, 3, &VectorFilter::default())
        .await
        .unwrap();
    assert_eq!(hits[0].chunk_id, stored[0].chunk_id);
}

/// Ingestion workers (and API replicas) ensure a new knowledge base's collection at
/// the same moment: one creates it, the others find it, and it works.
#[tokio::test]
async fn racing_creations_leave_one_working_collection() {
    let storage = tempfile::tempdir().unwrap();
    let server = QdrantServer::start(storage.path(), None);
    let scope = scope();
    let dimensions = 8;
    let stores: Vec<QdrantStore> = (0..6).map(|_| server.store()).collect();
    let results = futures::future::join_all(
        stores
            .iter()
            .map(|s| s.ensure_collection(scope, dimensions)),
    )
    .await;
    for result in results {
        result.unwrap();
    }
    let batch = points(Uuid::new_v4(), 5, dimensions);
    stores[3].upsert(scope, &batch).await.unwrap();
    assert_eq!(count(&server.client(), scope, Filter::default()).await, 5);
    let hits = stores[0]
        .search(scope, &batch[2].vector, 1, &VectorFilter::default())
        .await
        .unwrap();
    assert_eq!(hits[0].chunk_id, batch[2].chunk_id);
}

//! A registered KnowledgeBase's `spec.sources`, ingested on real PostgreSQL: inline
//! text, ConfigMap content sent by the driver, and `url`s fetched from a local HTTP
//! server. Change, removal, refusal (link-local always, loopback outside the tenant's
//! networks under strict), the redirect cap, the size limit, and a re-registration of
//! an unchanged KnowledgeBase that writes nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use common::{Auth, TestApp, TestDb};
use serde_json::{Value, json};

/// The documents' server: `/doc.md` serves what the test puts in it.
#[derive(Clone, Default)]
struct Served {
    doc: Arc<Mutex<String>>,
}

async fn serve() -> (String, Served) {
    let served = Served::default();
    *served.doc.lock().unwrap() = "# Horaires\n\nLa bibliothèque ouvre à 8 h.".into();
    let app = Router::new()
        .route(
            "/doc.md",
            get(|State(s): State<Served>| async move { s.doc.lock().unwrap().clone() }),
        )
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<p>Bonjour</p>") }),
        )
        .route(
            "/blob",
            get(|| async { ([(header::CONTENT_TYPE, "application/octet-stream")], "x") }),
        )
        .route("/big.txt", get(|| async { "x".repeat(5000) }))
        .route(
            "/hops/{n}",
            get(|Path(n): Path<u32>| async move {
                if n == 0 {
                    (
                        [(header::CONTENT_TYPE, "text/plain")],
                        "au bout des redirections",
                    )
                        .into_response()
                } else {
                    Redirect::to(&format!("/hops/{}", n - 1)).into_response()
                }
            }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(header::LOCATION, "http://169.254.169.254/latest/meta-data/")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        )
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), served)
}

/// A strict tenant's API whose networks include loopback (where the test server is),
/// fetching on every registration, with a 4 KiB upload limit.
fn config(db: &TestDb, networks: &str) -> iafactory_api::config::Config {
    iafactory_api::config::Config {
        sovereignty: "strict".into(),
        source_networks: iafactory_api::sources::SourceNetworks::parse(networks).unwrap(),
        source_refetch_seconds: 0,
        source_fetch_timeout_seconds: 5,
        max_upload_bytes: 4096,
        ..common::config(db)
    }
}

async fn register_tenant(app: &TestApp, slug: &str) {
    let reply = app
        .request(
            Method::PUT,
            &format!("/internal/tenants/{slug}"),
            Auth::Bearer(common::OPERATOR_TOKEN),
            Some(json!({"name": slug, "plan": "pro"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

async fn register_kb(app: &TestApp, slug: &str, name: &str, body: Value) -> Value {
    let reply = app
        .request(
            Method::PUT,
            &format!("/internal/tenants/{slug}/knowledge-bases/{name}"),
            Auth::Bearer(common::OPERATOR_TOKEN),
            Some(common::kb_registration(slug, name, body)),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body["data"].clone()
}

/// Each source's (documents, last error), by id.
fn by_id(record: &Value) -> BTreeMap<String, (i64, Option<String>)> {
    record["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                (
                    s["documents"].as_i64().unwrap(),
                    s["last_error"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect()
}

/// Everything a registration could write: documents (with their timestamps), blobs,
/// ingestion jobs, and the sources' content hashes and update times.
async fn written(owner: &sqlx::PgPool) -> Vec<String> {
    let documents: Vec<(String, String)> = sqlx::query_as(
        "SELECT id::text || ' ' || coalesce(source_id, '') || ' ' || title, updated_at::text FROM documents ORDER BY 1",
    )
    .fetch_all(owner)
    .await
    .unwrap_or_default();
    let sources: Vec<(String, String)> = sqlx::query_as(
        "SELECT source_id || ' ' || coalesce(content_hash, '-') || ' ' || coalesce(last_error, '-'), updated_at::text
         FROM knowledge_base_sources ORDER BY 1",
    )
    .fetch_all(owner)
    .await
    .unwrap_or_default();
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM document_blobs), (SELECT count(*) FROM ingestion_jobs)",
    )
    .fetch_one(owner)
    .await
    .unwrap();
    documents
        .into_iter()
        .chain(sources)
        .map(|(a, b)| format!("{a} @ {b}"))
        .chain([format!("blobs={} jobs={}", counts.0, counts.1)])
        .collect()
}

#[tokio::test]
async fn sources_are_ingested_replaced_and_removed_and_an_unchanged_registration_writes_nothing() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(config(&db, "127.0.0.0/8")).await;
    // The table owner, past row-level security: sees what every registration wrote.
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (server, served) = serve().await;
    register_tenant(&app, "sources").await;
    let doc = format!("{server}/doc.md");
    let mut config_map = json!({"name": "reglements", "data": {
        "reglement.md": "# Règlement\n\nLes examens ont lieu en juin.",
        "horaires": "Ouvert de 8 h à 17 h.",
    }});
    let body = |config_map: &Value, with_removed: bool| {
        let mut sources = vec![
            json!({"configMap": {"name": "reglements"}}),
            json!({"url": {"url": doc}}),
            json!({"url": {"url": format!("{server}/hops/5")}}),
            // By name: resolved here, every address checked, the connection pinned.
            json!({"url": {"url": doc.replace("127.0.0.1", "localhost").replace("doc.md", "hops/0")}}),
            json!({"url": {"url": format!("{server}/hops/6")}}),
            json!({"url": {"url": format!("{server}/big.txt")}}),
            json!({"url": {"url": format!("{server}/blob")}}),
            json!({"url": {"url": format!("{server}/to-metadata")}}),
            json!({"url": {"url": "http://169.254.169.254/latest/meta-data/"}}),
            json!({"configMap": {"name": "absent", "key": "a.txt"}}),
        ];
        if with_removed {
            sources.insert(
                0,
                json!({"inline": {"title": "Contact", "text": "Écrire au décanat."}}),
            );
            sources.push(json!({"url": {"url": format!("{server}/page")}}));
        }
        json!({"languages": ["fr"], "sources": sources, "configMaps": [config_map]})
    };

    let record = register_kb(&app, "sources", "docs", body(&config_map, true)).await;
    let sources = by_id(&record);
    let ok = |id: &str, documents: i64| {
        assert_eq!(sources[id], (documents, None), "{id}: {record}");
    };
    ok("inline:Contact", 1);
    ok("configMap:reglements", 2);
    ok(&format!("url:{doc}"), 1);
    ok(&format!("url:{server}/hops/5"), 1);
    ok(
        &format!("url:{}/hops/0", server.replace("127.0.0.1", "localhost")),
        1,
    );
    ok(&format!("url:{server}/page"), 1);
    let error = |id: &str| {
        let (documents, error) = &sources[id];
        assert_eq!(*documents, 0, "{id}: {record}");
        error
            .clone()
            .unwrap_or_else(|| panic!("{id} has no error: {record}"))
    };
    assert!(
        error(&format!("url:{server}/hops/6")).contains("more than 5 redirects"),
        "{record}"
    );
    assert!(
        error(&format!("url:{server}/big.txt")).contains("over the upload limit of 4096 bytes"),
        "{record}"
    );
    assert!(
        error(&format!("url:{server}/blob")).contains("not a supported document"),
        "{record}"
    );
    // A redirect is checked like the first address: link-local is never fetched.
    for id in [
        format!("url:{server}/to-metadata"),
        "url:http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let error = error(&id);
        assert!(
            error.contains("169.254.169.254")
                && error.contains("refused")
                && error.contains("link-local"),
            "{error}"
        );
    }
    assert!(
        error("configMap:absent/a.txt").contains("was not sent"),
        "{record}"
    );
    assert_eq!(record["documents"], 7, "{record}");

    // The same KnowledgeBase again: nothing is ingested, nothing rewritten.
    let before = written(&owner).await;
    let again = register_kb(&app, "sources", "docs", body(&config_map, true)).await;
    assert_eq!(by_id(&again), sources);
    assert_eq!(written(&owner).await, before);

    // A changed url and a changed ConfigMap key: their documents are replaced, the
    // others stay as they were.
    let documents_of = |source: String| {
        let db = owner.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT id::text FROM documents WHERE source_id = $1 ORDER BY 1",
            )
            .bind(source)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    let url_before = documents_of(format!("url:{doc}")).await;
    let inline_before = documents_of("inline:Contact".into()).await;
    *served.doc.lock().unwrap() = "# Horaires\n\nLa bibliothèque ouvre à 9 h.".into();
    config_map["data"]["horaires"] = json!("Ouvert de 9 h à 17 h.");
    let changed = register_kb(&app, "sources", "docs", body(&config_map, true)).await;
    assert_eq!(by_id(&changed)[&format!("url:{doc}")], (1, None));
    assert_eq!(by_id(&changed)["configMap:reglements"], (2, None));
    let url_after = documents_of(format!("url:{doc}")).await;
    assert_ne!(
        url_after, url_before,
        "the changed url's document is replaced"
    );
    assert_eq!(documents_of("inline:Contact".into()).await, inline_before);
    let text: String = sqlx::query_scalar(
        "SELECT convert_from(b.content, 'UTF8') FROM document_blobs b JOIN documents d ON d.id = b.document_id WHERE d.source_id = $1",
    )
    .bind(format!("url:{doc}"))
    .fetch_one(&owner)
    .await
    .unwrap();
    assert!(text.contains("9 h"), "{text}");

    // Removed sources take their documents with them.
    let removed = register_kb(&app, "sources", "docs", body(&config_map, false)).await;
    let ids = by_id(&removed);
    assert!(!ids.contains_key("inline:Contact"));
    assert!(documents_of("inline:Contact".into()).await.is_empty());
    assert!(documents_of(format!("url:{server}/page")).await.is_empty());
    assert_eq!(removed["documents"], 5, "{removed}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM knowledge_base_sources")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(rows as usize, ids.len());

    // The internal GET reports the same sources.
    let reply = app
        .request(
            Method::GET,
            "/internal/tenants/sources/knowledge-bases/docs",
            Auth::Bearer(common::OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(by_id(&reply.body["data"]), ids);

    // No sources left: no source documents left.
    let emptied = register_kb(&app, "sources", "docs", json!({"languages": ["fr"]})).await;
    assert_eq!(emptied["documents"], 0, "{emptied}");
    assert_eq!(emptied["sources"], json!([]));
}

#[tokio::test]
async fn under_strict_sovereignty_an_address_outside_the_tenants_networks_is_refused() {
    let db = TestDb::new().await;
    // The default networks: the private ranges, not loopback.
    let app = TestApp::with_config(config(&db, "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16")).await;
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (server, _) = serve().await;
    register_tenant(&app, "strict").await;
    let doc = format!("{server}/doc.md");
    let record = register_kb(
        &app,
        "strict",
        "docs",
        json!({"sources": [{"url": {"url": doc}}, {"inline": {"title": "A", "text": "a"}}]}),
    )
    .await;
    let sources = by_id(&record);
    let (documents, error) = &sources[&format!("url:{doc}")];
    assert_eq!(*documents, 0);
    let error = error.as_deref().unwrap();
    assert!(
        error.contains(&doc) && error.contains("refused") && error.contains("127.0.0.1"),
        "{error}"
    );
    assert_eq!(sources["inline:A"], (1, None));
    // Nothing was requested from the server: the refusal comes before connecting.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&owner)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn an_uploaded_document_and_a_source_may_hold_the_same_content() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(config(&db, "127.0.0.0/8")).await;
    let user = app.register("both").await;
    let body = json!({"sources": [
        {"inline": {"title": "A", "text": "même texte"}},
        {"inline": {"title": "A", "text": "même texte"}},
    ]});
    let record = register_kb(&app, "both", "docs", body).await;
    // Two sources naming the same thing get distinct ids.
    let sources = by_id(&record);
    assert_eq!(sources["inline:A"], (1, None));
    assert_eq!(sources["inline:A#2"], (1, None));
    assert_eq!(record["documents"], 2, "{record}");
    // An upload of the same text is a document of its own, not a duplicate of a
    // source's (which goes when its source goes).
    let kb = record["id"].as_str().unwrap();
    let reply = app
        .request(
            Method::POST,
            &format!("/api/knowledge-bases/{kb}/documents"),
            Auth::Bearer(&user.token),
            Some(json!({"title": "A", "text": "même texte"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["data"]["duplicate"], false, "{}", reply.body);
    let emptied = register_kb(&app, "both", "docs", json!({})).await;
    assert_eq!(emptied["documents"], 1, "the upload stays: {emptied}");
}

/// Source documents go through the same ingestion as uploads: chunked, embedded by the
/// real model, searchable, with their source in the metadata.
#[tokio::test]
async fn source_documents_are_ingested_and_searchable() {
    let db = TestDb::new().await;
    let app = TestApp::with_workers(iafactory_api::config::Config {
        source_networks: iafactory_api::sources::SourceNetworks::parse("127.0.0.0/8").unwrap(),
        ..common::rag_config(&db)
    })
    .await;
    let (server, _) = serve().await;
    let user = app.register("searched").await;
    let record = register_kb(
        &app,
        "searched",
        "docs",
        json!({"languages": ["fr"], "embedding": {"provider": "local", "model": "all-MiniLM-L6-v2", "dimensions": 384},
               "sources": [
                   {"inline": {"title": "Restaurant", "text": "Le restaurant universitaire sert le déjeuner de midi à quatorze heures."}},
                   {"url": {"url": format!("{server}/doc.md")}},
               ]}),
    )
    .await;
    let kb = record["id"].as_str().unwrap().to_owned();
    let reply = app
        .request(
            Method::GET,
            &format!("/api/knowledge-bases/{kb}/documents"),
            Auth::Bearer(&user.token),
            None,
        )
        .await;
    let documents = reply.body["data"].as_array().unwrap().clone();
    assert_eq!(documents.len(), 2, "{}", reply.body);
    let ids: Vec<String> = documents
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let ingested = app.wait_for_documents(&user.token, &kb, &ids).await;
    assert!(
        ingested.iter().all(|d| d["status"] == "ready"),
        "{ingested:?}"
    );
    assert!(
        ingested
            .iter()
            .any(|d| d["metadata"]["source"] == format!("url:{server}/doc.md")),
        "{ingested:?}"
    );
    let found = app
        .request(
            Method::POST,
            "/api/search",
            Auth::Bearer(&user.token),
            Some(json!({"query": "à quelle heure déjeuner au restaurant", "knowledge_base_ids": [kb]})),
        )
        .await;
    assert_eq!(
        found.body["data"]["results"][0]["title"], "Restaurant",
        "{}",
        found.body
    );
}

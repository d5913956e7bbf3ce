//! The trilingual RAG corpus (fixtures/rag/corpus.json) and #4's acceptance bar over it,
//! shared by the pgvector and the Qdrant tests.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{Auth, TestApp};

#[derive(serde::Deserialize)]
pub struct Corpus {
    pub documents: Vec<CorpusDocument>,
    pub questions: Vec<Question>,
}

#[derive(serde::Deserialize)]
pub struct CorpusDocument {
    pub key: String,
    pub language: String,
    pub title: String,
    pub text: String,
}

#[derive(serde::Deserialize)]
pub struct Question {
    pub q: String,
    pub expect: String,
}

pub fn corpus() -> Corpus {
    serde_json::from_str(include_str!("../fixtures/rag/corpus.json")).unwrap()
}

/// Asks every question of the corpus (`/api/search`, top 3) and asserts that the right
/// document is among the three for at least 90% of them, and that an Arabic question's
/// best passage is Arabic. `key_of` maps a document id to its corpus key; `check` sees
/// every result.
pub async fn assert_top3_hit_rate(
    app: &TestApp,
    token: &str,
    kb: &str,
    corpus: &Corpus,
    key_of: &HashMap<String, String>,
    backend: &str,
    check: impl Fn(&Value),
) {
    let mut hits = 0;
    let mut misses = Vec::new();
    for question in &corpus.questions {
        let reply = app
            .request(
                Method::POST,
                "/api/search",
                Auth::Bearer(token),
                Some(json!({"query": question.q, "knowledge_base_ids": [kb], "top_k": 3})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let results = reply.body["data"]["results"].as_array().unwrap();
        let found: Vec<&str> = results
            .iter()
            .map(|r| key_of[r["document_id"].as_str().unwrap()].as_str())
            .collect();
        if found.contains(&question.expect.as_str()) {
            hits += 1;
        } else {
            misses.push(format!(
                "{} -> {found:?} (expected {})",
                question.q, question.expect
            ));
        }
        if question.expect.starts_with("ar-") {
            let first = results.first().expect("an Arabic question finds something");
            assert_eq!(
                first["language"], "ar",
                "{}: the best passage is Arabic",
                question.q
            );
        }
        results.iter().for_each(&check);
    }
    let rate = hits as f64 / corpus.questions.len() as f64;
    eprintln!(
        "{backend} top-3 hit rate: {hits}/{} = {:.1}%",
        corpus.questions.len(),
        rate * 100.0
    );
    assert!(
        rate >= 0.9,
        "top-3 hit rate {:.1}% < 90% on {backend}; misses:\n{}",
        rate * 100.0,
        misses.join("\n")
    );
}

//! The RAG pipeline: documents in Arabic, French and English become searchable
//! passages, and questions get answers grounded in them, with citations.
//!
//! parse -> chunk (language-aware) -> embed -> store, asynchronously through a durable
//! queue; then hybrid retrieval (vectors and full text, fused) and generation.

pub mod arabic;
pub mod embed;
pub mod generate;
pub mod grounding;
pub mod ingest;
pub mod parse;
pub mod qdrant;
pub mod reembed;
pub mod routes;
pub mod sandbox;
pub mod search;
pub mod store;
pub mod text;

use std::sync::Arc;
use std::time::Duration;

use iafactory_crds::knowledgebase::EmbeddingSpec;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;

use crate::config::Config;
use embed::{EmbedError, EmbeddingProviders, LocalEmbedder, QueryVectorCache};
use generate::{Providers, ProvidersConfigError};
use store::VectorStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `embed`, `search` or `generate` for requests; `parse`, `embed` or `store` for
    /// ingestion.
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `wrong_script`, `ungrounded` or `repetitive` (see [`grounding::ExtractiveReason`]).
    pub reason: String,
}

/// The pipeline's metrics, on `/metrics` with the rest.
#[derive(Clone)]
pub struct RagMetrics {
    pub stage_duration: Family<StageLabel, Histogram>,
    pub documents_ingested: Family<ingest::StatusLabel, Counter>,
    pub ingestion_duration: Histogram,
    pub ingestion_stage_duration: Family<StageLabel, Histogram>,
    pub queue_depth: Gauge,
    pub extractive_answers: Counter,
    pub replaced_answers: Family<ReasonLabel, Counter>,
}

impl RagMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            stage_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            documents_ingested: Family::default(),
            ingestion_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            ingestion_stage_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 18))
            }),
            queue_depth: Gauge::default(),
            extractive_answers: Counter::default(),
            replaced_answers: Family::default(),
        };
        registry.register(
            "rag_stage_duration_seconds",
            "Time spent per request in each RAG stage: search_lookup (the knowledge bases), embed, search (search_rank: its rankings), generate",
            metrics.stage_duration.clone(),
        );
        registry.register(
            "rag_documents_ingested",
            "Documents whose ingestion finished, by outcome (ready, failed)",
            metrics.documents_ingested.clone(),
        );
        registry.register(
            "rag_ingestion_duration_seconds",
            "Time to parse, chunk, embed and store one document",
            metrics.ingestion_duration.clone(),
        );
        registry.register(
            "rag_ingestion_stage_duration_seconds",
            "Time per document in each ingestion stage: parse (with chunking), embed, store",
            metrics.ingestion_stage_duration.clone(),
        );
        registry.register(
            "rag_ingestion_queue_depth",
            "Documents waiting for or under ingestion",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "rag_extractive_answers",
            "Answers given as passages: no language model answered, or its answer was replaced",
            metrics.extractive_answers.clone(),
        );
        registry.register(
            "rag_replaced_answers",
            "Generated answers replaced by the passages, by reason: wrong_script (not in the question's script), ungrounded (too few of its words in the passages) or repetitive (a model looping)",
            metrics.replaced_answers.clone(),
        );
        metrics
    }

    pub fn ingestion_stage(&self, stage: &str, elapsed: Duration) {
        self.ingestion_stage_duration
            .get_or_create(&StageLabel {
                stage: stage.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn stage(&self, stage: &str, elapsed: Duration) {
        self.stage_duration
            .get_or_create(&StageLabel {
                stage: stage.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// What the pipeline needs at run time.
pub struct Rag {
    pub embedders: EmbeddingProviders,
    /// Vectors of recent queries.
    pub query_vectors: QueryVectorCache,
    pub store: Arc<dyn VectorStore>,
    /// The models that may answer: the tenant's Ollama, and the external providers
    /// its sovereignty allows.
    pub providers: Providers,
    /// For knowledge bases created without embedding settings.
    pub default_embedding: EmbeddingSpec,
    /// Reorders the fused candidates, when configured.
    pub reranker: Option<search::Reranker>,
    /// Wakes the ingestion workers when a document arrives.
    pub jobs: Arc<Notify>,
    pub metrics: RagMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum RagError {
    #[error(transparent)]
    Embedding(#[from] EmbedError),
    #[error(transparent)]
    Providers(#[from] ProvidersConfigError),
    #[error("building the language models' HTTP client: {0}")]
    Http(String),
}

impl Rag {
    pub fn new(
        config: &Config,
        store: Arc<dyn VectorStore>,
        metrics: RagMetrics,
    ) -> Result<Self, RagError> {
        let local = match &config.embedding_model_dir {
            Some(dir) if !dir.is_empty() => {
                Some(Arc::new(LocalEmbedder::load(std::path::Path::new(dir))?))
            }
            _ => None,
        };
        // One answer is bounded as a whole, streamed or not.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.llm_timeout_seconds))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| RagError::Http(e.to_string()))?;
        let providers = Providers::from_config(config, http)?;
        let default_embedding = match &local {
            Some(local) => EmbeddingSpec {
                provider: "local".into(),
                model: config.embedding_model.clone(),
                dimensions: local.dimensions().unwrap_or(384) as i32,
            },
            None => EmbeddingSpec {
                provider: "ollama".into(),
                model: "bge-m3".into(),
                dimensions: 1024,
            },
        };
        Ok(Self {
            embedders: EmbeddingProviders::new(
                local,
                config.llm_base_url.clone().filter(|u| !u.is_empty()),
                providers.embedding_sources(),
            ),
            query_vectors: QueryVectorCache::new(4096),
            store,
            providers,
            reranker: config
                .reranker_url
                .as_deref()
                .filter(|url| !url.is_empty())
                .map(|url| search::Reranker::new(url, &config.reranker_model)),
            default_embedding,
            jobs: Arc::new(Notify::new()),
            metrics,
        })
    }
}

use embed::Embedder as _;

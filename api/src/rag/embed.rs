//! Embeddings behind one trait: an OpenAI-compatible `/v1/embeddings` server (Ollama
//! exposes the same API; so do hosted providers), or a sentence-transformers model
//! running inside the process with candle, the offline default.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("the embedding model in {dir} cannot be loaded: {reason}")]
    Load { dir: PathBuf, reason: String },
    #[error("the local embedding model failed: {0}")]
    Inference(String),
    #[error("the embedding server {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the embedding server {url} answered {status}: {body}")]
    Server {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the embedding server {url} answered something unexpected: {reason}")]
    Protocol { url: String, reason: String },
    #[error("no embedding provider {0:?} is configured")]
    UnknownProvider(String),
}

impl EmbedError {
    /// Worth retrying later (a server down or overloaded), as opposed to a fault of
    /// the document or the configuration.
    pub fn is_transient(&self) -> bool {
        match self {
            EmbedError::Unreachable { .. } => true,
            EmbedError::Server { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

#[async_trait]
pub trait Embedder: Send + Sync {
    /// Identifies the vectors: two embedders with the same id give the same vectors.
    fn id(&self) -> String;
    fn dimensions(&self) -> Option<usize>;
    /// Unit-length vectors, one per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// sentence-transformers (BERT family) in the process: mean pooling over the tokens,
/// then L2 normalisation, as the model was trained.
pub struct LocalEmbedder {
    inner: Arc<LocalModel>,
}

struct LocalModel {
    name: String,
    model: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
}

#[derive(Deserialize)]
struct HiddenSize {
    hidden_size: usize,
}

impl LocalEmbedder {
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let fail = |reason: String| EmbedError::Load {
            dir: dir.to_owned(),
            reason,
        };
        let read =
            |name: &str| std::fs::read(dir.join(name)).map_err(|e| fail(format!("{name}: {e}")));
        let config_bytes = read("config.json")?;
        let config: BertConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| fail(format!("config.json: {e}")))?;
        let hidden: HiddenSize =
            serde_json::from_slice(&config_bytes).map_err(|e| fail(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| fail(format!("tokenizer: {e}")))?;
        let weights = read("model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| fail(e.to_string()))?;
        let model = BertModel::load(vb, &config).map_err(|e| fail(e.to_string()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        Ok(Self {
            inner: Arc::new(LocalModel {
                name,
                model,
                tokenizer,
                dimensions: hidden.hidden_size,
            }),
        })
    }
}

impl LocalModel {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let failed = |e: &dyn std::fmt::Display| EmbedError::Inference(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| failed(&e))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(|e| failed(&e))?;
        let masks: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(|e| failed(&e))?;
        let input_ids = Tensor::stack(&ids, 0).map_err(|e| failed(&e))?;
        let attention_mask = Tensor::stack(&masks, 0).map_err(|e| failed(&e))?;
        let token_type_ids = input_ids.zeros_like().map_err(|e| failed(&e))?;
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&attention_mask))
            .map_err(|e| failed(&e))?;
        // Mean over real tokens only: padding must not dilute short texts.
        let mask = attention_mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(|e| failed(&e))?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|h| h.sum(1))
            .map_err(|e| failed(&e))?;
        let counts = mask.sum(1).map_err(|e| failed(&e))?;
        let mean = summed.broadcast_div(&counts).map_err(|e| failed(&e))?;
        let norms = mean
            .sqr()
            .and_then(|s| s.sum_keepdim(1))
            .and_then(|s| s.sqrt())
            .map_err(|e| failed(&e))?;
        let normalized = mean.broadcast_div(&norms).map_err(|e| failed(&e))?;
        normalized.to_vec2::<f32>().map_err(|e| failed(&e))
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn id(&self) -> String {
        format!("local:{}", self.inner.name)
    }

    fn dimensions(&self) -> Option<usize> {
        Some(self.inner.dimensions)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.inner.clone();
        let texts = texts.to_vec();
        // Inference is CPU-bound: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut vectors = Vec::with_capacity(texts.len());
            for batch in texts.chunks(16) {
                vectors.extend(model.embed_batch(batch)?);
            }
            Ok(vectors)
        })
        .await
        .map_err(|e| EmbedError::Inference(e.to_string()))?
    }
}

/// `POST {base_url}/embeddings` with `{model, input: [...]}`.
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    base_url: String,
    model: String,
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbedder {
    pub fn new(base_url: &str, model: &str, api_key: Option<String>) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("a TLS backend is compiled in"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
        }
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let url = format!("{}/embeddings", self.base_url);
        let mut request = self
            .client
            .post(&url)
            .json(&serde_json::json!({ "model": self.model, "input": texts }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| EmbedError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        if !status.is_success() {
            let body: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(EmbedError::Server {
                url,
                status: status.as_u16(),
                body,
            });
        }
        let mut parsed: EmbeddingsResponse =
            response.json().await.map_err(|e| EmbedError::Protocol {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if parsed.data.len() != texts.len() {
            return Err(EmbedError::Protocol {
                url,
                reason: format!("{} vectors for {} texts", parsed.data.len(), texts.len()),
            });
        }
        parsed.data.sort_by_key(|item| item.index);
        Ok(parsed
            .data
            .into_iter()
            .map(|item| unit(item.embedding))
            .collect())
    }
}

fn unit(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn id(&self) -> String {
        format!("openai:{}:{}", self.base_url, self.model)
    }

    fn dimensions(&self) -> Option<usize> {
        None
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(32) {
            vectors.extend(self.embed_batch(batch).await?);
        }
        Ok(vectors)
    }
}

/// The embedders a tenant's API can use, by the provider names of a knowledge base's
/// `embedding` settings. Server-backed embedders are built once per (provider, model)
/// and share one HTTP client, so connections are reused across requests.
#[derive(Clone, Default)]
pub struct EmbeddingProviders {
    pub local: Option<Arc<LocalEmbedder>>,
    /// The tenant's Ollama (or any OpenAI-compatible server) at `IAF_LLM_BASE_URL`.
    pub ollama_base_url: Option<String>,
    /// Providers allowed under open sovereignty: name, base URL, API key.
    pub external: Vec<(String, String, Option<String>)>,
    built: Arc<Mutex<HashMap<ProviderModel, Arc<dyn Embedder>>>>,
}

/// A provider name and a model name.
type ProviderModel = (String, String);

impl EmbeddingProviders {
    pub fn new(
        local: Option<Arc<LocalEmbedder>>,
        ollama_base_url: Option<String>,
        external: Vec<(String, String, Option<String>)>,
    ) -> Self {
        Self {
            local,
            ollama_base_url,
            external,
            built: Arc::default(),
        }
    }

    pub fn resolve(&self, provider: &str, model: &str) -> Result<Arc<dyn Embedder>, EmbedError> {
        if provider == "local" {
            return self
                .local
                .clone()
                .map(|e| e as Arc<dyn Embedder>)
                .ok_or_else(|| {
                    EmbedError::UnknownProvider("local (set IAF_EMBEDDING_MODEL_DIR)".into())
                });
        }
        let key = (provider.to_owned(), model.to_owned());
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(embedder) = built.get(&key) {
            return Ok(embedder.clone());
        }
        let (base_url, api_key) = match provider {
            "ollama" => (
                self.ollama_base_url.clone().ok_or_else(|| {
                    EmbedError::UnknownProvider("ollama (set IAF_LLM_BASE_URL)".into())
                })?,
                None,
            ),
            other => self
                .external
                .iter()
                .find(|(name, _, _)| name == other)
                .map(|(_, url, key)| (url.clone(), key.clone()))
                .ok_or_else(|| EmbedError::UnknownProvider(other.to_owned()))?,
        };
        let embedder: Arc<dyn Embedder> = Arc::new(OpenAiEmbedder::new(&base_url, model, api_key));
        built.insert(key, embedder.clone());
        Ok(embedder)
    }
}

/// An embedder id and the SHA-256 of a text.
type QueryKey = (String, [u8; 32]);

/// The cached vectors, and their keys oldest first.
type CachedVectors = (HashMap<QueryKey, Arc<Vec<f32>>>, VecDeque<QueryKey>);

/// Vectors of recent queries, by embedder and text: people ask the same questions
/// again, and a query's vector costs more than the search it serves.
pub struct QueryVectorCache {
    capacity: usize,
    entries: Mutex<CachedVectors>,
}

impl QueryVectorCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::default(),
        }
    }

    /// The query's vector, from the cache or from the embedder.
    pub async fn embed(
        &self,
        embedder: &dyn Embedder,
        query: &str,
    ) -> Result<Arc<Vec<f32>>, EmbedError> {
        let key = (
            embedder.id(),
            <[u8; 32]>::from(Sha256::digest(query.as_bytes())),
        );
        if let Some(vector) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(&key)
        {
            return Ok(vector.clone());
        }
        let vector = Arc::new(
            embedder
                .embed(&[query.to_owned()])
                .await?
                .pop()
                .ok_or_else(|| EmbedError::Inference("no vector for the query".into()))?,
        );
        if self.capacity > 0 {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let (map, order) = &mut *entries;
            if map.insert(key.clone(), vector.clone()).is_none() {
                order.push_back(key);
                // The oldest entry goes first: a FIFO is enough for repeated questions.
                while order.len() > self.capacity {
                    if let Some(oldest) = order.pop_front() {
                        map.remove(&oldest);
                    }
                }
            }
        }
        Ok(vector)
    }
}

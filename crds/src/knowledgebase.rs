//! `KnowledgeBase`: a searchable collection of a tenant's documents.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Language, all_languages};

// Cross-field rules, in CEL for the API server and in Rust (the garde `custom` checks
// below) for everyone else; `tests/rule_mirrors.rs` keeps the two in agreement.
const CHUNK_OVERLAP_RULE: &str = "!has(self.spec.chunking) || !has(self.spec.chunking.overlap) || !has(self.spec.chunking.size) || self.spec.chunking.overlap < self.spec.chunking.size";
const CHUNK_OVERLAP_MESSAGE: &str = "chunking.overlap must be smaller than chunking.size";
const ONE_SOURCE_KIND_RULE: &str = "!has(self.spec.sources) || self.spec.sources.all(s, (has(s.inline) ? 1 : 0) + (has(s.configMap) ? 1 : 0) + (has(s.url) ? 1 : 0) == 1)";
const ONE_SOURCE_KIND_MESSAGE: &str = "each source sets exactly one of inline, configMap or url";

/// A knowledge base in a tenant's namespace (`iaf-<tenant>`), managed by a tenant
/// admin. The operator registers it with the tenant's API, which owns the documents.
#[derive(
    CustomResource,
    Clone,
    Debug,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    JsonSchema,
    garde::Validate,
)]
#[kube(
    group = "iafactory.dz",
    version = "v1alpha1",
    kind = "KnowledgeBase",
    derive = "PartialEq",
    doc = "A knowledge base in a tenant namespace, registered with the tenant API.",
    plural = "knowledgebases",
    shortname = "kb",
    namespaced,
    status = "KnowledgeBaseStatus",
    cel,
    printcolumn = r#"{"name":"Documents","type":"integer","jsonPath":".status.documents"}"#,
    printcolumn = r#"{"name":"Chunks","type":"integer","jsonPath":".status.chunks"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(CHUNK_OVERLAP_RULE).message(CHUNK_OVERLAP_MESSAGE).field_path(".spec.chunking.overlap"),
    validation = Rule::new(ONE_SOURCE_KIND_RULE).message(ONE_SOURCE_KIND_MESSAGE).field_path(".spec.sources"),
)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, max = 1000))]
    pub description: Option<String>,

    /// Languages of the documents; Arabic enables Arabic normalisation for search.
    #[serde(default = "all_languages")]
    #[garde(length(min = 1, max = 3), custom(crate::validation::unique_items))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub languages: Vec<Language>,

    /// How passages are embedded. Defaults to the platform's embedding model. A change
    /// re-embeds every chunk with the new model in the background; searches use the
    /// previous model's vectors until all are done, then switch at once
    /// (`status.reembedding` shows the progress), on pgvector and Qdrant vector stores
    /// alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub embedding: Option<EmbeddingSpec>,

    #[serde(default)]
    #[garde(dive)]
    pub chunking: ChunkingSpec,

    /// The model that answers questions over this knowledge base when a query names
    /// none. The tenant's API refuses (422) a provider the tenant may not call. Without
    /// it, the tenant's own model server answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub generation: Option<GenerationSpec>,

    /// `inherit` uses the tenant's vector store.
    #[serde(default)]
    #[garde(skip)]
    pub vector_store: KnowledgeBaseVectorStore,

    /// Documents the tenant's API ingests when the knowledge base is registered, and
    /// again at each registration (the operator's refresh, about every minute; each
    /// `iafactory apply` and reconcile on an appliance): an unchanged source ingests
    /// nothing, a changed one has its documents replaced, a removed one its documents
    /// deleted. `status.sources` reports each by its id, with its documents and last
    /// error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[garde(length(max = 100), dive, custom(one_kind_per_source))]
    pub sources: Vec<Source>,
}

/// `provider` is `local` (the embedding model inside the API), `ollama` (the tenant's
/// model server), or the name of one of the tenant's llmProviders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingSpec {
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,
    #[garde(
        length(min = 1, max = 128),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")
    )]
    pub model: String,
    #[garde(range(min = 8, max = 8192))]
    pub dimensions: i32,
}

/// `provider` is `ollama` (the model server in the tenant's namespace, the only one
/// allowed under strict sovereignty) or the name of one of the tenant's llmProviders.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct GenerationSpec {
    /// `ollama` (the model server in the tenant's namespace, the only one allowed under
    /// strict sovereignty) or the name of one of the tenant's llmProviders.
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,
    /// The model at that provider.
    #[garde(
        length(min = 1, max = 128),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")
    )]
    pub model: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct ChunkingSpec {
    /// Target passage size, in characters.
    #[serde(default = "default_chunk_size")]
    #[garde(range(min = 100, max = 8000))]
    pub size: i32,
    /// Characters shared by consecutive passages; smaller than `size`.
    #[serde(default = "default_chunk_overlap")]
    #[garde(range(min = 0, max = 2000), custom(smaller_than_size(self.size)))]
    pub overlap: i32,
}

fn smaller_than_size(size: i32) -> impl FnOnce(&i32, &()) -> garde::Result {
    move |overlap, _| {
        if *overlap < size {
            Ok(())
        } else {
            Err(garde::Error::new(CHUNK_OVERLAP_MESSAGE))
        }
    }
}

impl Default for ChunkingSpec {
    fn default() -> Self {
        Self {
            size: default_chunk_size(),
            overlap: default_chunk_overlap(),
        }
    }
}

fn default_chunk_size() -> i32 {
    800
}

fn default_chunk_overlap() -> i32 {
    120
}

fn one_kind_per_source(sources: &[Source], _: &()) -> garde::Result {
    let one_kind = |s: &Source| {
        [s.inline.is_some(), s.config_map.is_some(), s.url.is_some()]
            .into_iter()
            .filter(|set| *set)
            .count()
            == 1
    };
    if sources.iter().all(one_kind) {
        Ok(())
    } else {
        Err(garde::Error::new(ONE_SOURCE_KIND_MESSAGE))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KnowledgeBaseVectorStore {
    #[default]
    Inherit,
    Pgvector,
    Qdrant,
}

/// One document source: exactly one of `inline`, `configMap` or `url`. Its id is
/// `inline:<title>`, `configMap:<name>` (or `configMap:<name>/<key>`) or `url:<url>`,
/// with `#2`, `#3` for a repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub inline: Option<InlineSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub config_map: Option<ConfigMapSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub url: Option<UrlSource>,
}

impl Source {
    /// What the source names, as its id's stem: `inline:<title>`,
    /// `configMap:<name>` (every key) or `configMap:<name>/<key>`, `url:<url>`.
    fn identity(&self) -> String {
        match (&self.inline, &self.config_map, &self.url) {
            (Some(inline), _, _) => format!("inline:{}", inline.title),
            (
                _,
                Some(ConfigMapSource {
                    name,
                    key: Some(key),
                }),
                _,
            ) => {
                format!("configMap:{name}/{key}")
            }
            (_, Some(ConfigMapSource { name, key: None }), _) => format!("configMap:{name}"),
            (_, _, Some(url)) => format!("url:{}", url.url),
            (None, None, None) => "empty".into(),
        }
    }
}

/// The stable id of each source, in order: what it names (see [`Source`]), so that
/// reordering the list changes nothing; a second source naming the same thing gets
/// `#2`, a third `#3`. The tenant's API keys each source's documents by it, and the
/// status reports each source under it.
pub fn source_ids(sources: &[Source]) -> Vec<String> {
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    sources
        .iter()
        .map(|source| {
            let identity = source.identity();
            let count = seen.entry(identity.clone()).or_default();
            *count += 1;
            if *count == 1 {
                identity
            } else {
                format!("{identity}#{count}")
            }
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    #[garde(length(chars, min = 1, max = 500))]
    pub title: String,
    #[garde(length(min = 1, max = 262144))]
    pub text: String,
}

/// Every key of the ConfigMap (or only `key`) becomes a document, its type from the
/// key's extension (plain text without one; a `binaryData` key needs pdf, docx, txt,
/// md, html or csv). On Kubernetes the operator reads the ConfigMap in the
/// KnowledgeBase's namespace; on an appliance the files of
/// `<data_dir>/sources/<tenant>/<name>/` (or `<name>/<key>`, or the single file
/// `<name>`). A missing ConfigMap or key is that source's error, not a failed
/// registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    #[garde(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// Fetched by the tenant's API over http or https: its type from the extension or the
/// Content-Type, as for uploads, within the upload size limit, at most 5 redirects and
/// 30 s. Every address the host resolves to is checked, and the connection goes to the
/// checked one; each redirect is checked again. Link-local addresses (169.254.0.0/16,
/// fe80::/10) are never fetched; loopback and private addresses only when the API's
/// `IAF_SOURCE_NETWORKS` lists them (by default the private ranges); under strict
/// sovereignty nothing else is. A refused or failed fetch is the source's error (its
/// documents from before stay). A URL fetched successfully is not fetched again for 5
/// minutes (the API's `IAF_SOURCE_REFETCH_SECONDS`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    #[garde(length(min = 1, max = 2048), url)]
    pub url: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ingestion: Option<Time>,
    /// The id the tenant's API gave this knowledge base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    /// Each source of `spec.sources`, by its id: the documents ingested from it and
    /// the last error reading it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub sources: Vec<SourceStatus>,
    /// The re-embedding under way since `spec.embedding` changed: every chunk is
    /// embedded again with the new model in the background, searches keep using the
    /// previous model's vectors until all are done, then switch at once. Absent when
    /// the vectors are the spec's model's. The `Reindexing` condition says the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reembedding: Option<ReembeddingStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One source of a KnowledgeBase, as its tenant's API last ingested it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `inline:<title>`, `configMap:<name>[/<key>]` or `url:<url>`, with `#2`, `#3` for
    /// repeats.
    pub id: String,
    /// Documents ingested from this source.
    pub documents: i64,
    /// Why the source could not be read last time (its documents from before stay);
    /// absent when the last read succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A KnowledgeBase being embedded again with a new model, as its tenant's API reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReembeddingStatus {
    /// The model the chunks are being embedded with.
    pub embedding: EmbeddingSpec,
    /// Chunks that have their new vector.
    pub done: i64,
    /// All the knowledge base's chunks.
    pub total: i64,
    /// Why the last attempt failed (it is retried); absent while it goes well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

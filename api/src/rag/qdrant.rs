//! The Qdrant vector store, through qdrant-client over gRPC: for tenants that outgrow
//! pgvector. Chunk text and full-text search stay in PostgreSQL; Qdrant holds the
//! vectors and the payload searches filter on.
//!
//! - One collection per knowledge base (`iaf_kb_<id>`), sized by its embedding
//!   settings, cosine distance, with keyword payload indexes on `tenant_id`,
//!   `knowledge_base_id`, `document_id` and `language`.
//! - Every search and deletion filters on the tenant and the knowledge base, though the
//!   collection is the knowledge base's and the Qdrant the tenant's: a mistake in one
//!   layer does not leak another tenant's passages.
//! - Unavailable, timed out, overloaded or refusing our key: transient, so ingestion
//!   retries and readiness turns false. A wrong request (bad dimensions): rejected.
//!   The client reconnects by itself on the next call.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, Filter, PointStruct, QueryPointsBuilder, SearchParamsBuilder,
    UpsertPointsBuilder, Value, VectorParamsBuilder, point_id::PointIdOptions,
    vectors_config::Config as VectorsConfig,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use tonic::Code;
use uuid::Uuid;

use super::store::{Scope, StoreError, VectorFilter, VectorHit, VectorPoint, VectorStore};

/// Points per upsert request: large enough to amortise the round trip, small enough to
/// stay far below gRPC's 4 MiB message limit with 1024-dimension vectors (~4 KiB each).
pub const UPSERT_BATCH: usize = 256;

/// The payload fields every point carries and searches filter on.
pub const INDEXED_FIELDS: [&str; 4] = ["tenant_id", "knowledge_base_id", "document_id", "language"];

/// How far the HNSW search looks: the same as pgvector's `hnsw.ef_search`, so the two
/// stores trade recall for speed alike.
const SEARCH_EF: u64 = 100;

/// Where and how to reach the tenant's Qdrant.
#[derive(Debug, Clone)]
pub struct QdrantSettings {
    /// The gRPC endpoint, `http://qdrant:6334`.
    pub url: String,
    pub api_key: Option<String>,
    /// Per request; connecting has the same limit.
    pub timeout: Duration,
}

pub struct QdrantStore {
    client: Qdrant,
    url: String,
    /// Collections known to exist with their indexes, so ingestion does not ask again
    /// for every document. Forgotten when Qdrant says a collection is missing.
    known: KnownCollections,
}

/// The collection holding a knowledge base's vectors.
pub fn collection_name(knowledge_base_id: Uuid) -> String {
    format!("iaf_kb_{}", knowledge_base_id.simple())
}

/// The filter every call applies: the tenant and the knowledge base, always.
pub fn scope_filter(scope: Scope) -> Vec<Condition> {
    vec![
        Condition::matches("tenant_id", scope.tenant_id.to_string()),
        Condition::matches("knowledge_base_id", scope.knowledge_base_id.to_string()),
    ]
}

/// The scope's conditions and the caller's, all required.
pub fn search_filter(scope: Scope, filter: &VectorFilter) -> Filter {
    let mut must = scope_filter(scope);
    if let Some(documents) = &filter.document_ids {
        must.push(Condition::matches(
            "document_id",
            documents.iter().map(Uuid::to_string).collect::<Vec<_>>(),
        ));
    }
    if let Some(language) = filter.language {
        must.push(Condition::matches("language", language.code().to_owned()));
    }
    Filter::must(must)
}

/// A chunk as a point: id = chunk id; the payload names whose it is.
pub fn point(scope: Scope, point: &VectorPoint) -> PointStruct {
    let mut payload = Payload::new();
    payload.insert("tenant_id", Value::from(scope.tenant_id.to_string()));
    payload.insert(
        "knowledge_base_id",
        Value::from(scope.knowledge_base_id.to_string()),
    );
    payload.insert("document_id", Value::from(point.document_id.to_string()));
    if let Some(language) = point.language {
        payload.insert("language", Value::from(language.code().to_owned()));
    }
    PointStruct::new(point.chunk_id.to_string(), point.vector.clone(), payload)
}

/// What the error means for the caller: retry later, or the request is wrong.
fn classify(operation: &'static str, error: QdrantError) -> StoreError {
    let reason = error.to_string();
    let transient = match &error {
        QdrantError::ResponseError { status } => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                | Code::ResourceExhausted
                // A wrong or rotated key is the deployment's fault, not the
                // document's: retry once it is fixed rather than fail documents.
                | Code::PermissionDenied
                | Code::Unauthenticated
        ),
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
        _ => false,
    };
    if transient {
        StoreError::Unavailable {
            store: "qdrant",
            operation,
            reason,
        }
    } else {
        StoreError::Rejected {
            store: "qdrant",
            operation,
            reason,
        }
    }
}

fn is_not_found(error: &QdrantError) -> bool {
    matches!(error, QdrantError::ResponseError { status } if status.code() == Code::NotFound)
}

fn is_already_exists(error: &QdrantError) -> bool {
    matches!(error, QdrantError::ResponseError { status } if status.code() == Code::AlreadyExists)
}

impl QdrantStore {
    /// Connects lazily: the first call opens the connection, so the API starts (not
    /// ready) while Qdrant is still starting.
    pub fn new(settings: &QdrantSettings) -> Result<Self, StoreError> {
        let client = Qdrant::from_url(&settings.url)
            .api_key(settings.api_key.clone().filter(|k| !k.is_empty()))
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .keep_alive_while_idle()
            // No version check: it blocks `new` on a health call, printing to stdout.
            .skip_compatibility_check()
            .build()
            .map_err(|e| StoreError::Rejected {
                store: "qdrant",
                operation: "connect",
                reason: format!("{}: {e}", settings.url),
            })?;
        Ok(Self {
            client,
            url: settings.url.clone(),
            known: KnownCollections::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates the collection if needed; checks an existing one has the right size.
    async fn create_collection(&self, name: &str, dimensions: usize) -> Result<(), StoreError> {
        let failed = |e| classify("ensure_collection", e);
        let exists = self.client.collection_exists(name).await.map_err(failed)?;
        if exists {
            let info = self.client.collection_info(name).await.map_err(failed)?;
            let size = info
                .result
                .and_then(|i| i.config)
                .and_then(|c| c.params)
                .and_then(|p| p.vectors_config)
                .and_then(|v| v.config)
                .and_then(|c| match c {
                    VectorsConfig::Params(params) => Some(params.size),
                    VectorsConfig::ParamsMap(_) => None,
                });
            if size != Some(dimensions as u64) {
                return Err(StoreError::Rejected {
                    store: "qdrant",
                    operation: "ensure_collection",
                    reason: format!(
                        "collection {name} holds vectors of {size:?} dimensions, the embedding model gives {dimensions}"
                    ),
                });
            }
        } else {
            let created = self
                .client
                .create_collection(CreateCollectionBuilder::new(name).vectors_config(
                    VectorParamsBuilder::new(dimensions as u64, Distance::Cosine),
                ))
                .await;
            match created {
                // Another worker created it first.
                Err(error) if is_already_exists(&error) => {}
                other => {
                    other.map_err(failed)?;
                }
            }
        }
        // Idempotent in Qdrant: an index that exists is left as it is.
        for field in INDEXED_FIELDS {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(name, field, FieldType::Keyword)
                        .wait(true),
                )
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantStore {
    fn kind(&self) -> &'static str {
        "qdrant"
    }

    async fn ensure_collection(&self, scope: Scope, dimensions: usize) -> Result<(), StoreError> {
        if self.known.contains(scope.knowledge_base_id) {
            return Ok(());
        }
        let name = collection_name(scope.knowledge_base_id);
        self.create_collection(&name, dimensions).await?;
        self.known.insert(scope.knowledge_base_id);
        Ok(())
    }

    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError> {
        let name = collection_name(scope.knowledge_base_id);
        for batch in points.chunks(UPSERT_BATCH) {
            let batch: Vec<PointStruct> = batch.iter().map(|p| point(scope, p)).collect();
            let result = self
                .client
                .upsert_points(UpsertPointsBuilder::new(&name, batch).wait(true))
                .await;
            if let Err(error) = result {
                if is_not_found(&error) {
                    // Deleted behind our back (or Qdrant lost its volume): the retry
                    // creates it again and stores the whole document.
                    self.known.remove(scope.knowledge_base_id);
                    return Err(StoreError::Unavailable {
                        store: "qdrant",
                        operation: "upsert",
                        reason: format!("collection {name} is missing: {error}"),
                    });
                }
                return Err(classify("upsert", error));
            }
        }
        Ok(())
    }

    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError> {
        let name = collection_name(scope.knowledge_base_id);
        let mut must = scope_filter(scope);
        must.push(Condition::matches("document_id", document_id.to_string()));
        match self
            .client
            .delete_points(
                DeletePointsBuilder::new(&name)
                    .points(Filter::must(must))
                    .wait(true),
            )
            .await
        {
            Ok(_) => Ok(()),
            // No collection, no points: deleting is idempotent.
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify("delete_document", error)),
        }
    }

    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError> {
        let name = collection_name(scope.knowledge_base_id);
        self.known.remove(scope.knowledge_base_id);
        match self.client.delete_collection(&name).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify("delete_collection", error)),
        }
    }

    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, StoreError> {
        let name = collection_name(scope.knowledge_base_id);
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&name)
                    .query(vector.to_vec())
                    .filter(search_filter(scope, filter))
                    .params(SearchParamsBuilder::default().hnsw_ef(SEARCH_EF))
                    .limit(limit as u64),
            )
            .await;
        let response = match response {
            Ok(response) => response,
            // A knowledge base with no document stored yet has no collection.
            Err(error) if is_not_found(&error) => return Ok(Vec::new()),
            Err(error) => return Err(classify("search", error)),
        };
        response
            .result
            .into_iter()
            .map(|hit| {
                let chunk_id = match hit.id.and_then(|id| id.point_id_options) {
                    Some(PointIdOptions::Uuid(text)) => Uuid::parse_str(&text).ok(),
                    _ => None,
                };
                chunk_id
                    .map(|chunk_id| VectorHit {
                        chunk_id,
                        score: hit.score,
                    })
                    .ok_or_else(|| StoreError::Rejected {
                        store: "qdrant",
                        operation: "search",
                        reason: format!(
                            "collection {name} holds a point whose id is not a chunk id"
                        ),
                    })
            })
            .collect()
    }

    async fn ready(&self) -> bool {
        self.client.health_check().await.is_ok()
    }
}

/// A small set behind a mutex: one lookup per ingested document.
#[derive(Default)]
struct KnownCollections(std::sync::Mutex<HashSet<Uuid>>);

impl KnownCollections {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn contains(&self, id: Uuid) -> bool {
        self.set().contains(&id)
    }
    fn insert(&self, id: Uuid) {
        self.set().insert(id);
    }
    fn remove(&self, id: Uuid) {
        self.set().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iafactory_crds::Language;
    use qdrant_client::qdrant::condition::ConditionOneOf;
    use qdrant_client::qdrant::r#match::MatchValue;

    fn keys(filter: &Filter) -> Vec<(String, MatchValue)> {
        filter
            .must
            .iter()
            .map(|c| match &c.condition_one_of {
                Some(ConditionOneOf::Field(f)) => (
                    f.key.clone(),
                    f.r#match.clone().unwrap().match_value.unwrap(),
                ),
                other => panic!("unexpected condition {other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_search_is_confined_to_the_tenant_and_knowledge_base() {
        let scope = Scope {
            tenant_id: Uuid::from_u128(1),
            knowledge_base_id: Uuid::from_u128(2),
        };
        let plain = keys(&search_filter(scope, &VectorFilter::default()));
        assert_eq!(
            plain,
            vec![
                (
                    "tenant_id".into(),
                    MatchValue::Keyword(Uuid::from_u128(1).to_string())
                ),
                (
                    "knowledge_base_id".into(),
                    MatchValue::Keyword(Uuid::from_u128(2).to_string())
                ),
            ]
        );
        let narrowed = keys(&search_filter(
            scope,
            &VectorFilter {
                document_ids: Some(vec![Uuid::from_u128(3)]),
                language: Some(Language::Ar),
            },
        ));
        assert_eq!(narrowed.len(), 4);
        assert_eq!(narrowed[..2], plain[..]);
        assert_eq!(
            narrowed[3],
            ("language".into(), MatchValue::Keyword("ar".into()))
        );
    }

    #[test]
    fn transient_and_rejected_errors_are_told_apart() {
        let status = |code| QdrantError::ResponseError {
            status: tonic::Status::new(code, "x"),
        };
        assert!(classify("search", status(Code::Unavailable)).is_transient());
        assert!(classify("search", status(Code::DeadlineExceeded)).is_transient());
        assert!(classify("search", status(Code::PermissionDenied)).is_transient());
        assert!(!classify("search", status(Code::InvalidArgument)).is_transient());
        assert!(!classify("search", status(Code::NotFound)).is_transient());
    }
}

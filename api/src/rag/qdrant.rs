//! The Qdrant vector store, through qdrant-client over gRPC: for tenants that outgrow
//! pgvector. Chunk text and full-text search stay in PostgreSQL; Qdrant holds the
//! vectors and the payload searches filter on.
//!
//! - One live collection per knowledge base, sized by its embedding settings, cosine
//!   distance, with keyword payload indexes on `tenant_id`, `knowledge_base_id`,
//!   `document_id` and `language`.
//! - A knowledge base's collections are generations: `iaf_kb_<id>` (0), then
//!   `iaf_kb_<id>_g<n>`. The live one is the lowest that exists. Re-embedding
//!   (`rag::reembed`) fills the next one ([`NextCollection`]) and the switch drops the
//!   live one: one Qdrant call, which every API replica sees at once without asking
//!   PostgreSQL (a replica that still names the dropped collection gets NotFound, looks
//!   again and retries). Deleting a document or the knowledge base deletes from every
//!   generation.
//! - Every search and deletion filters on the tenant and the knowledge base, though the
//!   collection is the knowledge base's and the Qdrant the tenant's: a mistake in one
//!   layer does not leak another tenant's passages.
//! - Unavailable, timed out, overloaded or refusing our key: transient, so ingestion
//!   retries and readiness turns false. A wrong request (bad dimensions): rejected.
//!   The client reconnects by itself on the next call.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, PointStruct, QueryPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, Value, VectorParamsBuilder, point_id::PointIdOptions,
    vectors_config::Config as VectorsConfig,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use tonic::Code;
use uuid::Uuid;

use super::store::{
    NextCollection, Scope, StoreError, VectorFilter, VectorHit, VectorPoint, VectorStore,
};

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
    /// Each knowledge base's live collection, as last seen, so that ingestion and
    /// searches do not list the collections for every call. Forgotten when Qdrant says
    /// the collection is missing (another replica switched, or it was deleted).
    known: KnownCollections,
}

/// A knowledge base's first collection (generation 0).
pub fn collection_name(knowledge_base_id: Uuid) -> String {
    generation_name(knowledge_base_id, 0)
}

/// A knowledge base's collection of `generation`: 0 is [`collection_name`], each
/// re-embedding adds one.
pub fn generation_name(knowledge_base_id: Uuid, generation: u32) -> String {
    let base = format!("iaf_kb_{}", knowledge_base_id.simple());
    if generation == 0 {
        base
    } else {
        format!("{base}_g{generation}")
    }
}

/// Which generation of the knowledge base's collections `name` is, if it is one.
pub fn generation_of(knowledge_base_id: Uuid, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(&collection_name(knowledge_base_id))?;
    if rest.is_empty() {
        return Some(0);
    }
    let generation: u32 = rest.strip_prefix("_g")?.parse().ok()?;
    // `_g01` is nobody's name: only the canonical spelling counts.
    (generation > 0 && generation_name(knowledge_base_id, generation) == name).then_some(generation)
}

/// The knowledge base's collections among `names`, lowest generation (the live one)
/// first.
pub fn generations(knowledge_base_id: Uuid, names: &[String]) -> Vec<(u32, String)> {
    let mut found: Vec<(u32, String)> = names
        .iter()
        .filter_map(|name| generation_of(knowledge_base_id, name).map(|g| (g, name.clone())))
        .collect();
    found.sort();
    found
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

    /// The knowledge base's collections in Qdrant now, lowest generation first.
    async fn collections(
        &self,
        operation: &'static str,
        knowledge_base_id: Uuid,
    ) -> Result<Vec<(u32, String)>, StoreError> {
        let listed = self
            .client
            .list_collections()
            .await
            .map_err(|e| classify(operation, e))?;
        let names: Vec<String> = listed.collections.into_iter().map(|c| c.name).collect();
        Ok(generations(knowledge_base_id, &names))
    }

    /// The live collection: as last seen, or the lowest generation there is. None when
    /// the knowledge base has no collection.
    async fn live(
        &self,
        operation: &'static str,
        knowledge_base_id: Uuid,
    ) -> Result<Option<String>, StoreError> {
        if let Some(name) = self.known.get(knowledge_base_id) {
            return Ok(Some(name));
        }
        let live = self
            .collections(operation, knowledge_base_id)
            .await?
            .into_iter()
            .next()
            .map(|(_, name)| name);
        if let Some(name) = &live {
            self.known.insert(knowledge_base_id, name.clone());
        }
        Ok(live)
    }

    /// Deletes a collection; one that is not there is deleted already.
    async fn drop_collection(&self, operation: &'static str, name: &str) -> Result<(), StoreError> {
        match self.client.delete_collection(name).await {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(classify(operation, error)),
        }
    }

    async fn upsert_into(
        &self,
        scope: Scope,
        name: &str,
        points: &[VectorPoint],
    ) -> Result<(), StoreError> {
        for batch in points.chunks(UPSERT_BATCH) {
            let batch: Vec<PointStruct> = batch.iter().map(|p| point(scope, p)).collect();
            let result = self
                .client
                .upsert_points(UpsertPointsBuilder::new(name, batch).wait(true))
                .await;
            if let Err(error) = result {
                if is_not_found(&error) {
                    // Deleted behind our back (or Qdrant lost its volume, or another
                    // replica switched): the retry looks again, creates it if need
                    // be, and stores the whole document.
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

    async fn search_in(
        &self,
        scope: Scope,
        name: &str,
        vector: &[f32],
        limit: usize,
        filter: &VectorFilter,
    ) -> Result<qdrant_client::qdrant::QueryResponse, QdrantError> {
        self.client
            .query(
                QueryPointsBuilder::new(name)
                    .query(vector.to_vec())
                    .filter(search_filter(scope, filter))
                    .params(SearchParamsBuilder::default().hnsw_ef(SEARCH_EF))
                    .limit(limit as u64),
            )
            .await
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
        if self.known.get(scope.knowledge_base_id).is_some() {
            return Ok(());
        }
        let name = self
            .collections("ensure_collection", scope.knowledge_base_id)
            .await?
            .into_iter()
            .next()
            .map_or_else(
                || collection_name(scope.knowledge_base_id),
                |(_, name)| name,
            );
        self.create_collection(&name, dimensions).await?;
        self.known.insert(scope.knowledge_base_id, name);
        Ok(())
    }

    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let name = self
            .live("upsert", scope.knowledge_base_id)
            .await?
            .ok_or_else(|| StoreError::Unavailable {
                store: "qdrant",
                operation: "upsert",
                reason: format!(
                    "knowledge base {} has no collection",
                    scope.knowledge_base_id
                ),
            })?;
        self.upsert_into(scope, &name, points).await
    }

    async fn delete_document(&self, scope: Scope, document_id: Uuid) -> Result<(), StoreError> {
        let mut must = scope_filter(scope);
        must.push(Condition::matches("document_id", document_id.to_string()));
        let filter = Filter::must(must);
        // The live collection and, during a re-embedding, the next one.
        for (_, name) in self
            .collections("delete_document", scope.knowledge_base_id)
            .await?
        {
            match self
                .client
                .delete_points(
                    DeletePointsBuilder::new(&name)
                        .points(filter.clone())
                        .wait(true),
                )
                .await
            {
                // Gone meanwhile, with its points: deleting is idempotent.
                Ok(_) => {}
                Err(error) if is_not_found(&error) => {}
                Err(error) => return Err(classify("delete_document", error)),
            }
        }
        Ok(())
    }

    async fn delete_collection(&self, scope: Scope) -> Result<(), StoreError> {
        self.known.remove(scope.knowledge_base_id);
        for (_, name) in self
            .collections("delete_collection", scope.knowledge_base_id)
            .await?
        {
            self.drop_collection("delete_collection", &name).await?;
        }
        Ok(())
    }

    async fn search(
        &self,
        scope: Scope,
        vector: &[f32],
        limit: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, StoreError> {
        // A knowledge base with no document stored yet has no collection.
        let Some(mut name) = self.live("search", scope.knowledge_base_id).await? else {
            return Ok(Vec::new());
        };
        let mut response = self.search_in(scope, &name, vector, limit, filter).await;
        if matches!(&response, Err(error) if is_not_found(error)) {
            // Switched by a re-embedding (or deleted) since this replica looked: look
            // again, once.
            self.known.remove(scope.knowledge_base_id);
            match self.live("search", scope.knowledge_base_id).await? {
                Some(live) if live != name => {
                    name = live;
                    response = self.search_in(scope, &name, vector, limit, filter).await;
                }
                _ => return Ok(Vec::new()),
            }
        }
        let response = match response {
            Ok(response) => response,
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

    fn next_collection(&self) -> Option<&dyn NextCollection> {
        Some(self)
    }
}

/// The next collection is the highest generation above the live one.
#[async_trait]
impl NextCollection for QdrantStore {
    async fn exists(&self, scope: Scope) -> Result<bool, StoreError> {
        Ok(self
            .collections("next_collection", scope.knowledge_base_id)
            .await?
            .len()
            > 1)
    }

    async fn create(
        &self,
        scope: Scope,
        live_dimensions: usize,
        dimensions: usize,
    ) -> Result<(), StoreError> {
        let kb = scope.knowledge_base_id;
        let mut found = self.collections("create_next_collection", kb).await?;
        if found.is_empty() {
            // Else the next collection, alone, would be taken for the live one.
            let live = collection_name(kb);
            self.create_collection(&live, live_dimensions).await?;
            found.push((0, live));
        }
        let live = found[0].0;
        for (_, name) in &found[1..] {
            self.drop_collection("create_next_collection", name).await?;
        }
        self.create_collection(&generation_name(kb, live + 1), dimensions)
            .await
    }

    async fn upsert(&self, scope: Scope, points: &[VectorPoint]) -> Result<(), StoreError> {
        let found = self
            .collections("upsert_next", scope.knowledge_base_id)
            .await?;
        let Some((_, name)) = found.get(1..).and_then(<[_]>::last) else {
            return Err(StoreError::Unavailable {
                store: "qdrant",
                operation: "upsert_next",
                reason: format!(
                    "knowledge base {} has no next collection",
                    scope.knowledge_base_id
                ),
            });
        };
        self.upsert_into(scope, name, points).await
    }

    async fn count(&self, scope: Scope) -> Result<u64, StoreError> {
        let found = self
            .collections("count_next", scope.knowledge_base_id)
            .await?;
        let Some((_, name)) = found.get(1..).and_then(<[_]>::last) else {
            return Ok(0);
        };
        match self
            .client
            .count(
                CountPointsBuilder::new(name)
                    .filter(Filter::must(scope_filter(scope)))
                    .exact(true),
            )
            .await
        {
            Ok(counted) => Ok(counted.result.map_or(0, |r| r.count)),
            Err(error) if is_not_found(&error) => Ok(0),
            Err(error) => Err(classify("count_next", error)),
        }
    }

    async fn discard(&self, scope: Scope) -> Result<(), StoreError> {
        let found = self
            .collections("discard_next", scope.knowledge_base_id)
            .await?;
        for (_, name) in found.iter().skip(1) {
            self.drop_collection("discard_next", name).await?;
        }
        Ok(())
    }

    async fn promote(&self, scope: Scope) -> Result<(), StoreError> {
        let found = self
            .collections("promote_next", scope.knowledge_base_id)
            .await?;
        if found.len() < 2 {
            return Err(StoreError::Rejected {
                store: "qdrant",
                operation: "promote_next",
                reason: format!(
                    "knowledge base {} has no next collection",
                    scope.knowledge_base_id
                ),
            });
        }
        self.known.remove(scope.knowledge_base_id);
        for (_, name) in &found[..found.len() - 1] {
            self.drop_collection("promote_next", name).await?;
        }
        Ok(())
    }
}

/// A small map behind a mutex: one lookup per ingested document or search.
#[derive(Default)]
struct KnownCollections(std::sync::Mutex<HashMap<Uuid, String>>);

impl KnownCollections {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    fn get(&self, id: Uuid) -> Option<String> {
        self.map().get(&id).cloned()
    }
    fn insert(&self, id: Uuid, name: String) {
        self.map().insert(id, name);
    }
    fn remove(&self, id: Uuid) {
        self.map().remove(&id);
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
    fn the_live_collection_is_the_lowest_generation_of_its_own_knowledge_base() {
        let kb = Uuid::from_u128(7);
        let other = Uuid::from_u128(8);
        assert_eq!(generation_of(kb, &collection_name(kb)), Some(0));
        assert_eq!(generation_of(kb, &generation_name(kb, 3)), Some(3));
        let base = collection_name(kb);
        for name in [
            format!("{base}_g0"),
            format!("{base}_g03"),
            format!("{base}_gx"),
            format!("{base}x"),
            collection_name(other),
        ] {
            assert_eq!(generation_of(kb, &name), None, "{name}");
        }
        let names = vec![
            generation_name(kb, 2),
            collection_name(other),
            generation_name(kb, 1),
            generation_name(other, 1),
        ];
        assert_eq!(
            generations(kb, &names),
            vec![(1, generation_name(kb, 1)), (2, generation_name(kb, 2))]
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

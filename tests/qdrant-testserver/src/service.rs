//! The gRPC services. Status codes and messages follow Qdrant's own mapping of its
//! storage errors (NotFound for a missing collection, InvalidArgument for bad input,
//! AlreadyExists, PermissionDenied for a wrong API key); what the platform never calls
//! answers `Unimplemented`.

use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as grpc;
use qdrant_client::qdrant::collections_server::Collections;
use qdrant_client::qdrant::points_server::Points;
use qdrant_client::qdrant::qdrant_server::Qdrant;
use qdrant_edge::{
    CountRequest, CreateIndex, FieldIndexOperations, JsonPath, NamedQuery, OperationError,
    PayloadFieldSchema, PointId, PointOperations, PointStruct, QueryEnum, SearchParams,
    SearchRequest, UpdateOperation, WithPayloadInterface,
};
use tonic::{Request, Response, Status};

use crate::collections::{Collection, CollectionError, Registry, VectorSettings};
use crate::convert;

type Reply<T> = Result<Response<T>, Status>;

impl From<CollectionError> for Status {
    fn from(error: CollectionError) -> Self {
        match error {
            CollectionError::NotFound(_) => Status::not_found(format!("Not found: {error}")),
            CollectionError::AlreadyExists(_) => {
                Status::already_exists(format!("Wrong input: {error}"))
            }
            CollectionError::BadInput(_) => {
                Status::invalid_argument(format!("Wrong input: {error}"))
            }
            CollectionError::Engine(engine) => engine_status(engine),
            CollectionError::Worker(_) | CollectionError::Io(_) => {
                Status::internal(format!("Service internal error: {error}"))
            }
        }
    }
}

fn engine_status(error: OperationError) -> Status {
    match error {
        OperationError::WrongVectorDimension { .. }
        | OperationError::VectorNameNotExists { .. }
        | OperationError::TypeError { .. }
        | OperationError::TypeInferenceError { .. }
        | OperationError::ValidationError { .. }
        | OperationError::WrongSparse
        | OperationError::WrongMulti
        | OperationError::MissingRangeIndexForOrderBy { .. }
        | OperationError::MissingMapIndexForFacet { .. } => {
            Status::invalid_argument(format!("Wrong input: {error}"))
        }
        OperationError::PointIdError { .. } => Status::not_found(format!("Not found: {error}")),
        OperationError::Timeout { .. } => {
            Status::deadline_exceeded(format!("Timeout error: {error}"))
        }
        OperationError::Cancelled { .. } => Status::cancelled(error.to_string()),
        other => Status::internal(format!("Service internal error: {other}")),
    }
}

/// Qdrant's static API key: the `api-key` header, or `authorization: Bearer`.
#[derive(Clone)]
pub struct ApiKeyCheck {
    key: Option<Arc<str>>,
}

impl ApiKeyCheck {
    pub fn new(key: Option<String>) -> Self {
        Self {
            key: key.filter(|k| !k.is_empty()).map(Arc::from),
        }
    }
}

impl tonic::service::Interceptor for ApiKeyCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.key else {
            return Ok(request);
        };
        let metadata = request.metadata();
        let given = metadata
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                metadata
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            });
        match given {
            Some(given) if given == &**expected => Ok(request),
            Some(_) => Err(Status::permission_denied("Invalid api-key")),
            None => Err(Status::permission_denied(
                "Must provide an API key or an Authorization bearer token",
            )),
        }
    }
}

fn elapsed(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Methods the platform never calls. `#[async_trait]` rewrites the impl before this
/// macro expands, so it writes the rewritten signature itself.
macro_rules! not_implemented {
    ($($method:ident($request:ident) -> $response:ident;)*) => {
        $(
            fn $method<'life0, 'async_trait>(
                &'life0 self,
                _: Request<grpc::$request>,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply<grpc::$response>> + Send + 'async_trait>>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async {
                    Err(Status::unimplemented(concat!(
                        "qdrant-testserver: ", stringify!($method), " is not implemented"
                    )))
                })
            }
        )*
    };
}

pub struct Health;

#[tonic::async_trait]
impl Qdrant for Health {
    async fn health_check(
        &self,
        _: Request<grpc::HealthCheckRequest>,
    ) -> Reply<grpc::HealthCheckReply> {
        Ok(Response::new(grpc::HealthCheckReply {
            title: "qdrant - vector search engine".into(),
            version: "qdrant-edge 0.9 (qdrant-testserver)".into(),
            commit: None,
        }))
    }
}

pub struct CollectionsApi {
    registry: Arc<Registry>,
}

impl CollectionsApi {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl Collections for CollectionsApi {
    async fn get(
        &self,
        request: Request<grpc::GetCollectionInfoRequest>,
    ) -> Reply<grpc::GetCollectionInfoResponse> {
        let started = Instant::now();
        let collection = self.registry.get(&request.get_ref().collection_name)?;
        let info = collection.with_shard(|shard| shard.info()).await?;
        let vectors = collection.vectors;
        let payload_schema = info
            .payload_schema
            .iter()
            .map(|(key, index)| {
                (
                    key.to_string(),
                    grpc::PayloadSchemaInfo {
                        data_type: convert::grpc_schema_type(index.data_type) as i32,
                        params: None,
                        points: Some(index.points as u64),
                    },
                )
            })
            .collect();
        Ok(Response::new(grpc::GetCollectionInfoResponse {
            result: Some(grpc::CollectionInfo {
                status: if collection.optimizing() {
                    grpc::CollectionStatus::Yellow
                } else {
                    grpc::CollectionStatus::Green
                } as i32,
                optimizer_status: Some(grpc::OptimizerStatus {
                    ok: true,
                    error: String::new(),
                }),
                segments_count: info.segments_count as u64,
                config: Some(grpc::CollectionConfig {
                    params: Some(grpc::CollectionParams {
                        shard_number: 1,
                        vectors_config: Some(grpc::VectorsConfig {
                            config: Some(grpc::vectors_config::Config::Params(
                                grpc::VectorParams {
                                    size: vectors.size as u64,
                                    distance: convert::grpc_distance(vectors.distance) as i32,
                                    ..Default::default()
                                },
                            )),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                payload_schema,
                points_count: Some(info.points_count as u64),
                indexed_vectors_count: Some(info.indexed_vectors_count as u64),
                ..Default::default()
            }),
            time: elapsed(started),
        }))
    }

    async fn list(
        &self,
        _: Request<grpc::ListCollectionsRequest>,
    ) -> Reply<grpc::ListCollectionsResponse> {
        let started = Instant::now();
        Ok(Response::new(grpc::ListCollectionsResponse {
            collections: self
                .registry
                .names()
                .into_iter()
                .map(|name| grpc::CollectionDescription { name })
                .collect(),
            time: elapsed(started),
        }))
    }

    async fn create(
        &self,
        request: Request<grpc::CreateCollection>,
    ) -> Reply<grpc::CollectionOperationResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let params = match request.vectors_config.and_then(|c| c.config) {
            Some(grpc::vectors_config::Config::Params(params)) => params,
            Some(grpc::vectors_config::Config::ParamsMap(_)) => {
                return Err(Status::unimplemented(
                    "qdrant-testserver: named vectors are not implemented; give one unnamed vector",
                ));
            }
            None => {
                return Err(Status::unimplemented(
                    "qdrant-testserver: collections without a dense vector are not implemented",
                ));
            }
        };
        let vectors = VectorSettings {
            size: params.size as usize,
            distance: convert::distance(params.distance)?,
        };
        self.registry
            .create(&request.collection_name, vectors)
            .await?;
        tracing::info!(collection = %request.collection_name, size = vectors.size, "created");
        Ok(Response::new(grpc::CollectionOperationResponse {
            result: true,
            time: elapsed(started),
        }))
    }

    async fn delete(
        &self,
        request: Request<grpc::DeleteCollection>,
    ) -> Reply<grpc::CollectionOperationResponse> {
        let started = Instant::now();
        // Qdrant answers `false`, not an error, for a collection that is not there.
        let existed = self
            .registry
            .delete(&request.get_ref().collection_name)
            .await?;
        Ok(Response::new(grpc::CollectionOperationResponse {
            result: existed,
            time: elapsed(started),
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<grpc::CollectionExistsRequest>,
    ) -> Reply<grpc::CollectionExistsResponse> {
        let started = Instant::now();
        Ok(Response::new(grpc::CollectionExistsResponse {
            result: Some(grpc::CollectionExists {
                exists: self.registry.exists(&request.get_ref().collection_name),
            }),
            time: elapsed(started),
        }))
    }

    not_implemented! {
        update(UpdateCollection) -> CollectionOperationResponse;
        update_aliases(ChangeAliases) -> CollectionOperationResponse;
        list_collection_aliases(ListCollectionAliasesRequest) -> ListAliasesResponse;
        list_aliases(ListAliasesRequest) -> ListAliasesResponse;
        collection_cluster_info(CollectionClusterInfoRequest) -> CollectionClusterInfoResponse;
        update_collection_cluster_setup(UpdateCollectionClusterSetupRequest) -> UpdateCollectionClusterSetupResponse;
        create_shard_key(CreateShardKeyRequest) -> CreateShardKeyResponse;
        delete_shard_key(DeleteShardKeyRequest) -> DeleteShardKeyResponse;
        list_shard_keys(ListShardKeysRequest) -> ListShardKeysResponse;
    }
}

pub struct PointsApi {
    registry: Arc<Registry>,
}

impl PointsApi {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// Applies an update and answers as Qdrant does: `Completed`, with an operation id.
    /// Updates are applied before the answer even with `wait: false` (Qdrant would
    /// answer `Acknowledged` first); the platform always waits.
    async fn update(
        &self,
        collection: Arc<Collection>,
        operation: UpdateOperation,
        started: Instant,
    ) -> Reply<grpc::PointsOperationResponse> {
        collection
            .with_shard(move |shard| shard.update(operation))
            .await?;
        collection.updated();
        Ok(Response::new(grpc::PointsOperationResponse {
            result: Some(grpc::UpdateResult {
                operation_id: None,
                status: grpc::UpdateStatus::Completed as i32,
            }),
            time: elapsed(started),
            usage: None,
        }))
    }

    async fn nearest(&self, nearest: Nearest<'_>) -> Result<Vec<grpc::ScoredPoint>, Status> {
        let Nearest {
            collection_name,
            vector,
            filter,
            limit,
            offset,
            with_payload,
            params,
            score_threshold,
        } = nearest;
        let collection = self.registry.get(collection_name)?;
        check_dimensions(&collection, vector.len())?;
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery::default_dense(vector)),
            filter: convert::filter(filter)?,
            params: params.map(|p| SearchParams {
                hnsw_ef: p.hnsw_ef.map(|ef| ef as usize),
                exact: p.exact.unwrap_or(false),
                ..Default::default()
            }),
            limit,
            offset,
            with_payload: Some(WithPayloadInterface::Bool(with_payload)),
            with_vector: None,
            score_threshold,
        };
        let found = collection
            .with_shard(move |shard| shard.search(request))
            .await?;
        Ok(found
            .into_iter()
            .map(|point| grpc::ScoredPoint {
                id: Some(convert::grpc_point_id(point.id)),
                payload: point
                    .payload
                    .map(|payload| {
                        payload
                            .0
                            .iter()
                            .map(|(k, v)| (k.clone(), convert::json_to_value(v)))
                            .collect()
                    })
                    .unwrap_or_default(),
                score: point.score,
                version: point.version,
                ..Default::default()
            })
            .collect())
    }
}

/// A nearest-neighbour search, from `Search` or `Query`.
struct Nearest<'a> {
    collection_name: &'a str,
    vector: Vec<f32>,
    filter: Option<&'a grpc::Filter>,
    limit: usize,
    offset: usize,
    with_payload: bool,
    params: Option<&'a grpc::SearchParams>,
    score_threshold: Option<f32>,
}

fn check_dimensions(collection: &Collection, given: usize) -> Result<(), Status> {
    let expected = collection.vectors.size;
    if given != expected {
        return Err(engine_status(OperationError::WrongVectorDimension {
            expected_dim: expected,
            received_dim: given,
        }));
    }
    Ok(())
}

fn with_payload(selector: Option<&grpc::WithPayloadSelector>) -> Result<bool, Status> {
    use grpc::with_payload_selector::SelectorOptions;
    match selector.and_then(|s| s.selector_options.as_ref()) {
        None => Ok(false),
        Some(SelectorOptions::Enable(enable)) => Ok(*enable),
        Some(_) => Err(Status::unimplemented(
            "qdrant-testserver: payload include/exclude selectors are not implemented",
        )),
    }
}

#[tonic::async_trait]
impl Points for PointsApi {
    async fn upsert(
        &self,
        request: Request<grpc::UpsertPoints>,
    ) -> Reply<grpc::PointsOperationResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let collection = self.registry.get(&request.collection_name)?;
        if request.update_filter.is_some() || request.shard_key_selector.is_some() {
            return Err(Status::unimplemented(
                "qdrant-testserver: conditional upserts and shard keys are not implemented",
            ));
        }
        let mut points = Vec::with_capacity(request.points.len());
        for point in &request.points {
            let id = convert::point_id(point.id.as_ref())?;
            let vector = convert::point_vector(point.vectors.as_ref())?;
            check_dimensions(&collection, vector.len())?;
            points.push(
                PointStruct::new(id, vector, convert::payload_to_json(&point.payload)).into(),
            );
        }
        let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            qdrant_edge::PointInsertOperations::PointsList(points),
        ));
        self.update(collection, operation, started).await
    }

    async fn delete(
        &self,
        request: Request<grpc::DeletePoints>,
    ) -> Reply<grpc::PointsOperationResponse> {
        use grpc::points_selector::PointsSelectorOneOf;
        let started = Instant::now();
        let request = request.into_inner();
        let collection = self.registry.get(&request.collection_name)?;
        let operation = match request.points.and_then(|p| p.points_selector_one_of) {
            Some(PointsSelectorOneOf::Points(list)) => PointOperations::DeletePoints {
                ids: list
                    .ids
                    .iter()
                    .map(|id| convert::point_id(Some(id)))
                    .collect::<Result<Vec<PointId>, _>>()?,
            },
            Some(PointsSelectorOneOf::Filter(filter)) => PointOperations::DeletePointsByFilter(
                convert::filter(Some(&filter))?.expect("a filter was given"),
            ),
            None => {
                return Err(Status::invalid_argument(
                    "Validation error: points selector is missing",
                ));
            }
        };
        self.update(
            collection,
            UpdateOperation::PointOperation(operation),
            started,
        )
        .await
    }

    async fn create_field_index(
        &self,
        request: Request<grpc::CreateFieldIndexCollection>,
    ) -> Reply<grpc::PointsOperationResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let collection = self.registry.get(&request.collection_name)?;
        if request.field_index_params.is_some() {
            return Err(Status::unimplemented(
                "qdrant-testserver: field index parameters are not implemented; give a field type",
            ));
        }
        let field_type = request
            .field_type
            .ok_or_else(|| Status::invalid_argument("Wrong input: the field type is required"))?;
        let field_name: JsonPath = request.field_name.parse().map_err(|()| {
            Status::invalid_argument(format!(
                "Wrong input: invalid field name {:?}",
                request.field_name
            ))
        })?;
        let operation =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(PayloadFieldSchema::FieldType(convert::schema_type(
                    field_type,
                )?)),
            }));
        self.update(collection, operation, started).await
    }

    async fn search(&self, request: Request<grpc::SearchPoints>) -> Reply<grpc::SearchResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        if request
            .vector_name
            .as_deref()
            .is_some_and(|name| !name.is_empty())
            || request.sparse_indices.is_some()
        {
            return Err(Status::unimplemented(
                "qdrant-testserver: named and sparse vectors are not implemented",
            ));
        }
        let result = self
            .nearest(Nearest {
                collection_name: &request.collection_name,
                vector: request.vector,
                filter: request.filter.as_ref(),
                limit: request.limit as usize,
                offset: request.offset.unwrap_or(0) as usize,
                with_payload: with_payload(request.with_payload.as_ref())?,
                params: request.params.as_ref(),
                score_threshold: request.score_threshold,
            })
            .await?;
        Ok(Response::new(grpc::SearchResponse {
            result,
            time: elapsed(started),
            usage: None,
        }))
    }

    async fn query(&self, request: Request<grpc::QueryPoints>) -> Reply<grpc::QueryResponse> {
        use grpc::query::Variant;
        use grpc::vector_input::Variant as Input;
        let started = Instant::now();
        let request = request.into_inner();
        if !request.prefetch.is_empty()
            || request
                .using
                .as_deref()
                .is_some_and(|name| !name.is_empty())
            || request.lookup_from.is_some()
        {
            return Err(Status::unimplemented(
                "qdrant-testserver: prefetch, named vectors and lookups are not implemented",
            ));
        }
        let vector = match request.query.and_then(|q| q.variant) {
            Some(Variant::Nearest(grpc::VectorInput {
                variant: Some(Input::Dense(dense)),
            })) => dense.data,
            _ => {
                return Err(Status::unimplemented(
                    "qdrant-testserver: only nearest-neighbour queries by a dense vector are implemented",
                ));
            }
        };
        // Qdrant's default page, when the request gives no limit.
        let limit = request.limit.unwrap_or(10) as usize;
        let result = self
            .nearest(Nearest {
                collection_name: &request.collection_name,
                vector,
                filter: request.filter.as_ref(),
                limit,
                offset: request.offset.unwrap_or(0) as usize,
                with_payload: with_payload(request.with_payload.as_ref())?,
                params: request.params.as_ref(),
                score_threshold: request.score_threshold,
            })
            .await?;
        Ok(Response::new(grpc::QueryResponse {
            result,
            time: elapsed(started),
            usage: None,
        }))
    }

    async fn count(&self, request: Request<grpc::CountPoints>) -> Reply<grpc::CountResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let collection = self.registry.get(&request.collection_name)?;
        let count = CountRequest {
            filter: convert::filter(request.filter.as_ref())?,
            exact: request.exact.unwrap_or(true),
        };
        let count = collection
            .with_shard(move |shard| shard.count(count))
            .await?;
        Ok(Response::new(grpc::CountResponse {
            result: Some(grpc::CountResult {
                count: count as u64,
            }),
            time: elapsed(started),
            usage: None,
        }))
    }

    not_implemented! {
        get(GetPoints) -> GetResponse;
        update_vectors(UpdatePointVectors) -> PointsOperationResponse;
        delete_vectors(DeletePointVectors) -> PointsOperationResponse;
        set_payload(SetPayloadPoints) -> PointsOperationResponse;
        overwrite_payload(SetPayloadPoints) -> PointsOperationResponse;
        delete_payload(DeletePayloadPoints) -> PointsOperationResponse;
        clear_payload(ClearPayloadPoints) -> PointsOperationResponse;
        delete_field_index(DeleteFieldIndexCollection) -> PointsOperationResponse;
        create_vector_name(CreateVectorNameRequest) -> PointsOperationResponse;
        delete_vector_name(DeleteVectorNameRequest) -> PointsOperationResponse;
        search_batch(SearchBatchPoints) -> SearchBatchResponse;
        search_groups(SearchPointGroups) -> SearchGroupsResponse;
        scroll(ScrollPoints) -> ScrollResponse;
        recommend(RecommendPoints) -> RecommendResponse;
        recommend_batch(RecommendBatchPoints) -> RecommendBatchResponse;
        recommend_groups(RecommendPointGroups) -> RecommendGroupsResponse;
        discover(DiscoverPoints) -> DiscoverResponse;
        discover_batch(DiscoverBatchPoints) -> DiscoverBatchResponse;
        update_batch(UpdateBatchPoints) -> UpdateBatchResponse;
        query_batch(QueryBatchPoints) -> QueryBatchResponse;
        query_groups(QueryPointGroups) -> QueryGroupsResponse;
        facet(FacetCounts) -> FacetResponse;
        search_matrix_pairs(SearchMatrixPoints) -> SearchMatrixPairsResponse;
        search_matrix_offsets(SearchMatrixPoints) -> SearchMatrixOffsetsResponse;
    }
}

//! The OpenAPI document, generated from the handlers' annotations.
//!
//! - The failures every route shares are declared once, in [`responses`], with the
//!   error envelope's schema; each handler lists the groups that apply to it, and
//!   `tests::every_operation_declares_its_failures` checks that none is missing.
//! - The settings shared with the custom resources (embedding, chunking, generation,
//!   a workflow's spec) are described by the schema schemars derives from the same
//!   types, with their garde rules ([`crd`]), so the document and the validation cannot
//!   drift apart.
//! - `/ws` (a WebSocket) is not in the document: OpenAPI cannot describe it.

use std::borrow::Cow;

use serde::Serialize;
use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use uuid::Uuid;

use crate::rag::routes as rag;
use crate::routes::{accounts, internal, keys};
use crate::workflows::routes as workflows;

#[derive(OpenApi)]
#[openapi(
    info(title = "IAFactory platform API", description = "Multi-tenant RAG: documents in Arabic, French and English, hybrid search, answers with citations."),
    paths(
        accounts::register, accounts::login, accounts::me, accounts::logout, accounts::change_password,
        accounts::create_user, accounts::list_users, accounts::update_user, accounts::delete_user,
        keys::create_key, keys::list_keys, keys::get_key, keys::revoke_key, keys::usage,
        internal::upsert_tenant, internal::upsert_admin, internal::upsert_knowledge_base, internal::get_knowledge_base,
        internal::delete_knowledge_base, internal::upsert_workflow, internal::get_workflow, internal::delete_workflow,
        rag::create_knowledge_base, rag::list_knowledge_bases, rag::get_knowledge_base, rag::update_knowledge_base,
        rag::delete_knowledge_base, rag::upload_document, rag::list_documents, rag::get_document, rag::delete_document,
        rag::get_chunk, rag::search_route, rag::query_route, rag::list_providers,
        workflows::create_workflow, workflows::list_workflows, workflows::get_workflow, workflows::replace_workflow,
        workflows::delete_workflow, workflows::start_execution, workflows::list_executions, workflows::get_execution,
        workflows::cancel_execution, workflows::execution_events,
    ),
    components(schemas(crate::error::ErrorEnvelope)),
    tags((name = "internal", description = "Served on the internal listener only (`IAF_INTERNAL_LISTEN`, port 9180 by default), for the operator and the appliance; the public listener answers 404 to these paths.")),
    modifiers(&SecuritySchemes),
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document served at `/openapi.json`: utoipa's, with the custom resources'
/// schemas (from schemars) in `components.schemas`.
pub fn document() -> serde_json::Value {
    let mut document =
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is plain JSON");
    let schemas = document
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
        .expect("the document has component schemas");
    for (name, schema) in crd::schemas() {
        schemas.insert(name, schema);
    }
    document
}

/// The failures routes share, each group declared once with the error envelope.
/// A handler lists the groups that apply to it in its `responses(...)`.
pub mod responses {
    use crate::error::ErrorEnvelope;

    /// Every route that needs a credential (a bearer token or an `X-API-Key`), and
    /// goes through the rate limiter and the database.
    #[derive(utoipa::IntoResponses)]
    pub enum Secured {
        /// No credential, or an expired, forged or revoked one.
        #[response(status = 401, headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
        Unauthorized(ErrorEnvelope),
        /// The credential lacks the scope the route needs, or the tenant is suspended.
        #[response(status = 403)]
        Forbidden(ErrorEnvelope),
        /// A rate limit: per user, per API key, or per client address.
        #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
        RateLimited(ErrorEnvelope),
        /// The database does not answer.
        #[response(status = 503)]
        Unavailable(ErrorEnvelope),
    }

    /// Routes anyone may call (sign-up, sign-in): rate limited per client address.
    #[derive(utoipa::IntoResponses)]
    pub enum Anonymous {
        /// The client address's rate limit.
        #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds to wait")))]
        RateLimited(ErrorEnvelope),
        /// The database does not answer.
        #[response(status = 503)]
        Unavailable(ErrorEnvelope),
    }

    /// Routes with ids in their path.
    #[derive(utoipa::IntoResponses)]
    pub enum ById {
        /// An id in the path that is not a UUID.
        #[response(status = 400)]
        MalformedId(ErrorEnvelope),
        /// No such object in the caller's tenant (another tenant's is not found either).
        #[response(status = 404)]
        NotFound(ErrorEnvelope),
    }

    /// Routes that read a JSON body.
    #[derive(utoipa::IntoResponses)]
    pub enum JsonBody {
        /// Malformed JSON.
        #[response(status = 400)]
        MalformedJson(ErrorEnvelope),
        /// A body over the limit (`IAF_BODY_LIMIT_BYTES`).
        #[response(status = 413)]
        TooLarge(ErrorEnvelope),
        /// A body without `Content-Type: application/json`.
        #[response(status = 415)]
        NotJson(ErrorEnvelope),
        /// A field of the wrong type or that breaks a rule; `error.fields` names it.
        #[response(status = 422)]
        Invalid(ErrorEnvelope),
    }

    /// Lists: `?page=&limit=&sort=&order=`.
    #[derive(utoipa::IntoResponses)]
    pub enum Paged {
        /// A query string that does not parse (`page=x`).
        #[response(status = 400)]
        MalformedQuery(ErrorEnvelope),
        /// `page`, `limit`, `sort` or `order` out of range; `error.fields` names it.
        #[response(status = 422)]
        Invalid(ErrorEnvelope),
    }
}

/// What the handlers that answer with `serde_json::json!` send, for the document.
pub mod bodies {
    use super::*;

    /// `{"id", "deleted": true}`.
    #[derive(Serialize, utoipa::ToSchema)]
    pub struct Deleted {
        pub id: Uuid,
        pub deleted: bool,
    }

    /// `{"id", "status": "cancelling"}`.
    #[derive(Serialize, utoipa::ToSchema)]
    pub struct Cancelling {
        pub id: Uuid,
        pub status: String,
    }

    /// The liveness answer.
    #[derive(Serialize, utoipa::ToSchema)]
    pub struct Status {
        pub status: String,
    }

    /// A multipart upload: the file, and optionally its title (the file's name
    /// without its extension by default). The file's name (or declared type) says
    /// its format: `.txt`, `.md`, `.html`, `.pdf`, `.docx` or `.csv`.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct UploadForm {
        #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
        pub file: Vec<u8>,
        pub title: Option<String>,
    }
}

/// Schemas of the custom resources' types the API shares: named in the handlers'
/// annotations through the marker types below, and filled in by [`document`] with the
/// schema schemars derives from the types themselves (their garde rules included).
pub mod crd {
    use super::*;
    use iafactory_crds::knowledgebase::{ChunkingSpec, EmbeddingSpec, GenerationSpec};
    use schemars::generate::SchemaSettings;
    use utoipa::openapi::{ObjectBuilder, RefOr, schema::Schema};

    macro_rules! marker {
        ($marker:ident, $name:literal) => {
            #[doc = concat!("`", $name, "`, as the custom resources define it.")]
            pub struct $marker;
            impl utoipa::PartialSchema for $marker {
                fn schema() -> RefOr<Schema> {
                    // Replaced by schemars' schema in `document()`.
                    ObjectBuilder::new().into()
                }
            }
            impl utoipa::ToSchema for $marker {
                fn name() -> Cow<'static, str> {
                    Cow::Borrowed($name)
                }
            }
        };
    }
    marker!(Embedding, "EmbeddingSpec");
    marker!(Chunking, "ChunkingSpec");
    marker!(Generation, "GenerationSpec");
    marker!(Workflow, "WorkflowSpec");
    marker!(Language, "Language");
    marker!(TenantRegistration, "TenantUpsert");
    marker!(KnowledgeBaseRegistration, "KnowledgeBaseRegistration");
    marker!(WorkflowRegistration, "WorkflowPlan");

    /// The schemas, by name, with their references pointing into `components.schemas`.
    pub fn schemas() -> serde_json::Map<String, serde_json::Value> {
        let mut generator = SchemaSettings::draft2020_12()
            .with(|s| s.definitions_path = "/components/schemas".into())
            .into_generator();
        for (name, schema) in [
            ("EmbeddingSpec", generator.subschema_for::<EmbeddingSpec>()),
            ("ChunkingSpec", generator.subschema_for::<ChunkingSpec>()),
            (
                "GenerationSpec",
                generator.subschema_for::<GenerationSpec>(),
            ),
            (
                "Language",
                generator.subschema_for::<iafactory_crds::Language>(),
            ),
            (
                "WorkflowSpec",
                generator.subschema_for::<iafactory_crds::WorkflowSpec>(),
            ),
            (
                "TenantUpsert",
                generator.subschema_for::<iafactory_crds::tenant_api::TenantUpsert>(),
            ),
            (
                "KnowledgeBaseRegistration",
                generator.subschema_for::<iafactory_crds::tenant_api::KnowledgeBaseRegistration>(),
            ),
            (
                "WorkflowPlan",
                generator.subschema_for::<iafactory_crds::plan::WorkflowPlan>(),
            ),
        ] {
            let reference = schema.get("$ref").and_then(serde_json::Value::as_str);
            assert_eq!(
                reference,
                Some(format!("#/components/schemas/{name}").as_str()),
                "schemars names {name} as the marker does"
            );
        }
        generator.take_definitions(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn operations(document: &Value) -> Vec<(String, String, &Value)> {
        let mut found = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    found.push((method.clone(), path.clone(), operation));
                }
            }
        }
        found
    }

    fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => document
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("{reference} resolves")),
            None => schema,
        }
    }

    /// Every public route: its path ids declared (UUIDs), and each failure it can
    /// answer with declared, with the error envelope.
    #[test]
    fn every_operation_declares_its_failures() {
        let document = document();
        let mut problems = Vec::new();
        for (method, path, operation) in operations(&document) {
            if path.starts_with("/internal/") {
                continue;
            }
            let responses = operation["responses"].as_object().unwrap();
            let mut wanted: Vec<(&str, &str)> = Vec::new();
            let secured = operation.get("security").is_some();
            wanted.push(("429", "every /api route"));
            wanted.push(("503", "every /api route"));
            if secured {
                wanted.push(("401", "a credential"));
                wanted.push(("403", "a scope"));
            }
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let in_path: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for name in &in_path {
                let declared = parameters
                    .iter()
                    .find(|p| p["in"] == "path" && p["name"] == *name);
                match declared {
                    None => problems.push(format!("{method} {path}: {{{name}}} not declared")),
                    Some(p) if p["schema"]["format"] != "uuid" || p["required"] != true => problems
                        .push(format!(
                            "{method} {path}: {{{name}}} is not a required uuid"
                        )),
                    Some(_) => {}
                }
            }
            if !in_path.is_empty() {
                wanted.push(("400", "a malformed id"));
                wanted.push(("404", "an id of no object"));
            }
            if parameters.iter().any(|p| p["in"] == "query") {
                wanted.push(("400", "a malformed query string"));
                wanted.push(("422", "a query value out of range"));
            }
            if operation.get("requestBody").is_some() {
                wanted.push(("400", "a malformed body"));
                wanted.push(("413", "a body over the limit"));
                wanted.push(("415", "another content type"));
                wanted.push(("422", "an invalid field"));
            }
            for (status, why) in wanted {
                match responses.get(status) {
                    None => problems.push(format!("{method} {path}: no {status} ({why})")),
                    Some(response) => {
                        let schema = &response["content"]["application/json"]["schema"];
                        if schema["$ref"] != "#/components/schemas/ErrorEnvelope" {
                            problems.push(format!(
                                "{method} {path}: {status} without the error envelope"
                            ));
                        }
                    }
                }
            }
            for (status, response) in responses {
                if status.starts_with('2') && response.get("content").is_none() {
                    problems.push(format!("{method} {path}: {status} has no body schema"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// Path parameters match the path template, on every operation, /internal too: a
    /// query struct without `parameter_in = Query` lands in the path, and a generated
    /// client then drops the operation.
    #[test]
    fn path_parameters_match_the_template() {
        let document = document();
        let mut problems = Vec::new();
        for (method, path, operation) in operations(&document) {
            let templated: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let declared: Vec<&str> = parameters
                .iter()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for name in &declared {
                if !templated.contains(name) {
                    problems.push(format!("{method} {path}: {name} is declared in the path"));
                }
            }
            for name in &templated {
                if !declared.contains(name) {
                    problems.push(format!("{method} {path}: {{{name}}} is not declared"));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn uploads_and_streams_are_described() {
        let document = document();
        let upload = &document["paths"]["/api/knowledge-bases/{id}/documents"]["post"];
        let form = resolve(
            &document,
            &upload["requestBody"]["content"]["multipart/form-data"]["schema"],
        );
        assert_eq!(form["required"], serde_json::json!(["file"]));
        assert_eq!(form["properties"]["file"]["format"], "binary");
        assert!(upload["requestBody"]["content"]["application/json"].is_object());
        for (path, method) in [
            ("/api/query", "post"),
            (
                "/api/workflows/{id}/executions/{execution_id}/events",
                "get",
            ),
        ] {
            let ok = &document["paths"][path][method]["responses"]["200"]["content"];
            assert!(ok["text/event-stream"].is_object(), "{path}: {ok}");
        }
    }

    /// The knowledge base settings' schemas say what garde checks: a value at each
    /// bound validates, one past it does not.
    #[test]
    fn crd_schemas_carry_the_garde_rules() {
        use garde::Validate;
        use iafactory_crds::knowledgebase::{ChunkingSpec, EmbeddingSpec, GenerationSpec};

        let document = document();
        let schema = |name: &str| document["components"]["schemas"][name].clone();
        let length = |s: &Value, field: &str| {
            let p = &s["properties"][field];
            (
                p["minLength"].as_u64().unwrap() as usize,
                p["maxLength"].as_u64().unwrap() as usize,
                p["pattern"].as_str().unwrap().to_owned(),
            )
        };
        let range = |s: &Value, field: &str| {
            let p = &s["properties"][field];
            (
                p["minimum"].as_f64().unwrap() as i32,
                p["maximum"].as_f64().unwrap() as i32,
            )
        };

        let embedding = schema("EmbeddingSpec");
        let (min, max) = range(&embedding, "dimensions");
        let (pmin, pmax, ppattern) = length(&embedding, "provider");
        let (mmin, mmax, mpattern) = length(&embedding, "model");
        assert_eq!(ppattern, "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
        assert_eq!(mpattern, "^[A-Za-z0-9][A-Za-z0-9._:/+-]*$");
        let spec = |provider: String, model: String, dimensions: i32| EmbeddingSpec {
            provider,
            model,
            dimensions,
        };
        let ok = || spec("ollama".into(), "bge-m3".into(), 1024);
        for (value, valid) in [
            (spec("a".repeat(pmin), "m".into(), min), true),
            (spec("a".repeat(pmax), "m".repeat(mmax), max), true),
            (spec("a".repeat(pmax + 1), "m".into(), 1024), false),
            (spec(String::new(), "m".into(), 1024), pmin == 0),
            (spec("ollama".into(), "m".repeat(mmax + 1), 1024), false),
            (spec("ollama".into(), "m".repeat(mmin), min - 1), false),
            (spec("ollama".into(), "m".into(), max + 1), false),
            (spec("Ollama".into(), "m".into(), 1024), false),
            (spec("ollama".into(), "-m".into(), 1024), false),
            (ok(), true),
        ] {
            assert_eq!(value.validate().is_ok(), valid, "{value:?}");
        }

        let generation = schema("GenerationSpec");
        let (pmin, pmax, _) = length(&generation, "provider");
        let (mmin, mmax, _) = length(&generation, "model");
        let spec = |provider: String, model: String| GenerationSpec { provider, model };
        for (value, valid) in [
            (spec("a".repeat(pmin), "m".repeat(mmin)), true),
            (spec("a".repeat(pmax), "m".repeat(mmax)), true),
            (spec("a".repeat(pmax + 1), "m".into()), false),
            (spec("a".into(), "m".repeat(mmax + 1)), false),
        ] {
            assert_eq!(value.validate().is_ok(), valid, "{value:?}");
        }

        let chunking = schema("ChunkingSpec");
        let (smin, smax) = range(&chunking, "size");
        let (omin, omax) = range(&chunking, "overlap");
        let spec = |size: i32, overlap: i32| ChunkingSpec { size, overlap };
        for (value, valid) in [
            (spec(smin, omin), true),
            (spec(smax, omax), true),
            (spec(smin - 1, omin), false),
            (spec(smax + 1, omin), false),
            (spec(smax, omin - 1), false),
            (spec(smax, omax + 1), false),
        ] {
            assert_eq!(value.validate().is_ok(), valid, "{value:?}");
        }
    }

    /// A property of an object schema, or of one of its `allOf` parts (a flattened
    /// field makes those).
    fn property<'a>(schema: &'a Value, field: &str) -> &'a Value {
        let direct = &schema["properties"][field];
        if !direct.is_null() {
            return direct;
        }
        schema["allOf"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|part| &part["properties"][field])
            .find(|p| !p.is_null())
            .unwrap_or(&Value::Null)
    }

    /// The request schemas say what the handlers check by hand.
    #[test]
    fn request_schemas_carry_the_handlers_rules() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let pattern = |schema: &str, field: &str| {
            regex::Regex::new(
                schemas[schema]["properties"][field]["pattern"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap()
        };
        let email = pattern("RegisterRequest", "email");
        for sample in [
            "a@b.dz",
            "x.y@mail.univ-tlemcen.dz",
            "a@b",
            "@b.dz",
            "a@.dz",
            "a@b.",
            "a b@c.dz",
            "a@b@c.dz",
        ] {
            assert_eq!(
                email.is_match(sample),
                accounts::check_email(sample).is_ok(),
                "{sample}"
            );
        }
        let slug = pattern("RegisterRequest", "tenant_slug");
        for sample in ["acme", "a", "a-b", "-a", "a-", "A", "a_b", "1a"] {
            assert_eq!(
                slug.is_match(sample),
                iafactory_crds::validation::is_dns_label(sample),
                "{sample}"
            );
        }
        let password = &schemas["RegisterRequest"]["properties"]["password"];
        assert_eq!(password["minLength"], 10);
        for long in ["a".repeat(9), "a".repeat(10)] {
            assert_eq!(
                crate::auth::check_password_strength(&long).is_ok(),
                long.len() >= 10
            );
        }
        for (schema, field, min, max) in [
            ("RegisterRequest", "tenant_name", 1, 200),
            ("RegisterRequest", "tenant_slug", 1, 63),
            ("RegisterRequest", "email", 0, 320),
            ("CreateUserRequest", "email", 0, 320),
            ("CreateKeyRequest", "name", 1, 100),
            ("CreateKnowledgeBase", "name", 1, 253),
            ("TextDocument", "title", 1, 500),
            ("TextDocument", "text", 1, usize::MAX),
            ("SearchRequest", "query", 1, 2000),
            ("QueryRequest", "query", 1, 2000),
            ("QueryRequest", "provider", 1, 63),
            ("QueryRequest", "model", 1, 128),
            ("WorkflowBody", "name", 1, 253),
            ("StartExecution", "input", 0, 20_000),
        ] {
            let property = property(&schemas[schema], field);
            assert_eq!(
                property["minLength"].as_u64().unwrap_or(0) as usize,
                min,
                "{schema}.{field}: {property}"
            );
            assert_eq!(
                property["maxLength"]
                    .as_u64()
                    .map_or(usize::MAX, |m| m as usize),
                max,
                "{schema}.{field}: {property}"
            );
        }
        for (schema, field, min, max) in [
            ("CreateKeyRequest", "rate_limit_per_minute", 1, 100_000),
            ("SearchRequest", "top_k", 1, 50),
            ("QueryRequest", "top_k", 1, 50),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(
                property["minimum"].as_f64(),
                Some(min as f64),
                "{schema}.{field}"
            );
            assert_eq!(
                property["maximum"].as_f64(),
                Some(max as f64),
                "{schema}.{field}"
            );
        }
        for (schema, field, min, max) in [
            ("SearchRequest", "knowledge_base_ids", 1, 20),
            ("QueryRequest", "knowledge_base_ids", 1, 20),
            ("CreateKeyRequest", "scopes", 1, u64::MAX),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["minItems"].as_u64(), Some(min), "{schema}.{field}");
            assert_eq!(
                property["maxItems"].as_u64().unwrap_or(u64::MAX),
                max,
                "{schema}.{field}"
            );
        }
    }
}

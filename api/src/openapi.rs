//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::Modify;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};

use crate::rag::routes as rag;
use crate::routes::{accounts, internal, keys};

#[derive(OpenApi)]
#[openapi(
    info(title = "IAFactory platform API", description = "Multi-tenant RAG: documents in Arabic, French and English, hybrid search, answers with citations."),
    paths(
        accounts::register, accounts::login, accounts::me,
        accounts::create_user, accounts::list_users, accounts::delete_user,
        keys::create_key, keys::list_keys, keys::get_key, keys::revoke_key, keys::usage,
        internal::upsert_tenant, internal::upsert_admin, internal::upsert_knowledge_base, internal::get_knowledge_base,
        internal::delete_knowledge_base, internal::upsert_workflow, internal::get_workflow, internal::delete_workflow,
        rag::create_knowledge_base, rag::list_knowledge_bases, rag::get_knowledge_base, rag::update_knowledge_base,
        rag::delete_knowledge_base, rag::upload_document, rag::list_documents, rag::get_document, rag::delete_document,
        rag::get_chunk, rag::search_route, rag::query_route, rag::list_providers,
    ),
    components(schemas(crate::error::ErrorEnvelope)),
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

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

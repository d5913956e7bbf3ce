//! The tenant's platform API, on its internal endpoints: how KnowledgeBases and
//! Workflows are registered, by the operator and by the appliance alike.
//! Authenticated by the per-tenant operator token. The contract types are shared with
//! the API; the client is behind the `tenant-api` feature, so the crates that only need
//! the resources do not build an HTTP client.

use std::collections::BTreeMap;
#[cfg(feature = "tenant-api")]
use std::time::Duration;

#[cfg(feature = "tenant-api")]
use crate::plan::WorkflowPlan;
#[cfg(feature = "tenant-api")]
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::TenantSpec;
use crate::plan::KnowledgeBasePlan;
use crate::tenant::PlanTier;

/// What a driver sends to register a Tenant: what the API keeps of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpsert {
    /// The display name (`spec.displayName`, or the Tenant's name).
    pub name: String,
    /// The commercial plan, which sets the API's quotas.
    pub plan: PlanTier,
    /// A suspended tenant's users cannot sign in, and its tokens and keys stop working.
    #[serde(default)]
    pub suspended: bool,
}

impl TenantUpsert {
    pub fn of(tenant: &str, spec: &TenantSpec) -> Self {
        Self {
            name: spec
                .display_name
                .clone()
                .unwrap_or_else(|| tenant.to_owned()),
            plan: spec.plan,
            suspended: spec.suspended,
        }
    }
}

/// What a driver sends to register a KnowledgeBase: its plan (the spec with the
/// platform's defaults resolved, `plan::plan_knowledge_base`), and the content of its
/// `configMap` sources, which only the driver can read (the operator from the
/// ConfigMaps in the KnowledgeBase's namespace, the appliance from files in its data
/// directory). A Workflow is registered with its `plan::WorkflowPlan` alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseRegistration {
    #[serde(flatten)]
    pub plan: KnowledgeBasePlan,
    /// One entry per `configMap` source of the spec (matched by name and key); a
    /// source without an entry is reported as not sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_maps: Vec<ConfigMapContent>,
}

/// A `configMap` source as the driver read it: the keys it selects (every key, or the
/// one it names), or why it could not be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapContent {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Text keys: each becomes a document, its type detected from the key's extension
    /// (plain text without one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Binary keys, base64-encoded (as in a ConfigMap's `binaryData`): PDFs, DOCX; the
    /// key's extension must name a supported type.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, String>,
    /// Why the driver could not read it (a missing ConfigMap or key): the source's
    /// error, its documents from before are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One source of a registered KnowledgeBase, as the API reports it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SourceRecord {
    /// The source's id (`iafactory_crds::knowledgebase::source_ids`).
    pub id: String,
    /// Documents ingested from it.
    pub documents: i64,
    /// Why it could not be read, last time; None when it was.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[cfg(feature = "tenant-api")]
#[derive(Debug, thiserror::Error)]
pub enum TenantApiError {
    /// Not reached, or an answer that is not the API's (a 5xx, an unexpected body).
    #[error("the tenant's API at {url}: {message}")]
    Unavailable { url: String, message: String },
    /// The API answered and refused: the spec or the request is wrong, retrying will
    /// not help.
    #[error("the tenant's API refused the {kind} ({status}): {message}")]
    Rejected {
        kind: &'static str,
        status: u16,
        message: String,
    },
}

#[cfg(feature = "tenant-api")]
type Result<T, E = TenantApiError> = std::result::Result<T, E>;

/// Where each tenant's API answers. `{tenant}` and `{namespace}` are replaced.
#[cfg(feature = "tenant-api")]
#[derive(Clone, Debug)]
pub struct TenantApi {
    http: reqwest::Client,
    url_template: String,
}

#[cfg(feature = "tenant-api")]
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
/// Timestamps stay RFC 3339 text, which is what `metav1.Time` parses.
pub struct KnowledgeBaseRecord {
    pub id: String,
    pub documents: i64,
    pub chunks: i64,
    pub last_ingestion: Option<String>,
    /// Each source of the spec, in the spec's order.
    #[serde(default)]
    pub sources: Vec<SourceRecord>,
    /// The re-embedding under way after a change of `spec.embedding`; None when the
    /// vectors are the registered model's. Absent from APIs that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reembedding: Option<ReembedProgress>,
}

/// A knowledge base being embedded again with a new model, in the background: its
/// searches keep using the previous model's vectors until every chunk has its new
/// vector, then switch at once.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ReembedProgress {
    /// The model the chunks are being embedded with.
    pub embedding: crate::knowledgebase::EmbeddingSpec,
    /// Chunks that have their new vector.
    pub done: i64,
    /// All the knowledge base's chunks.
    pub total: i64,
    /// Why the last attempt failed (it is retried), or why it cannot happen on this
    /// tenant's vector store; None while it is going well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct WorkflowRecord {
    pub id: String,
    pub valid_dag: bool,
    pub agents: i32,
    pub last_execution: Option<ExecutionRecord>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ExecutionRecord {
    pub id: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub failed_agent: Option<String>,
}

/// A tenant administrator, as the internal endpoint returns it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AdministratorRecord {
    pub id: String,
    pub email: String,
    pub role: String,
}

#[cfg(feature = "tenant-api")]
impl TenantApi {
    pub fn new(url_template: impl Into<String>, timeout: Duration) -> Self {
        TenantApi {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("a plain HTTP client builds"),
            url_template: url_template.into(),
        }
    }

    pub fn base_url(&self, tenant: &str) -> String {
        self.url_template
            .replace("{tenant}", tenant)
            .replace(
                "{namespace}",
                &format!("{}{tenant}", crate::plan::NAMESPACE_PREFIX),
            )
            .trim_end_matches('/')
            .to_owned()
    }

    async fn send<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        request: reqwest::RequestBuilder,
        url: &str,
        token: &str,
    ) -> Result<Option<T>> {
        let response =
            request
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| TenantApiError::Unavailable {
                    url: url.to_owned(),
                    message: e.to_string(),
                })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| TenantApiError::Unavailable {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        if status.is_client_error() {
            // The API explains itself in `error.message`; keep the whole body otherwise.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(TenantApiError::Rejected {
                kind,
                status: status.as_u16(),
                message,
            });
        }
        if !status.is_success() {
            return Err(TenantApiError::Unavailable {
                url: url.to_owned(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            });
        }
        if body.is_empty() {
            return Ok(None);
        }
        let envelope: Envelope<T> =
            serde_json::from_slice(&body).map_err(|e| TenantApiError::Unavailable {
                url: url.to_owned(),
                message: format!("an unexpected answer: {e}"),
            })?;
        Ok(Some(envelope.data))
    }

    pub async fn upsert_tenant(&self, tenant: &str, spec: &TenantSpec, token: &str) -> Result<()> {
        let url = format!("{}/internal/tenants/{tenant}", self.base_url(tenant));
        let body = TenantUpsert::of(tenant, spec);
        self.send::<serde_json::Value>("tenant", self.http.put(&url).json(&body), &url, token)
            .await?;
        Ok(())
    }

    pub async fn upsert_knowledge_base(
        &self,
        tenant: &str,
        name: &str,
        registration: &KnowledgeBaseRegistration,
        token: &str,
    ) -> Result<KnowledgeBaseRecord> {
        let url = format!(
            "{}/internal/tenants/{tenant}/knowledge-bases/{name}",
            self.base_url(tenant)
        );
        self.send(
            "knowledge base",
            self.http.put(&url).json(registration),
            &url,
            token,
        )
        .await?
        .ok_or_else(|| TenantApiError::Unavailable {
            url,
            message: "the tenant is not registered".into(),
        })
    }

    pub async fn upsert_workflow(
        &self,
        tenant: &str,
        name: &str,
        plan: &WorkflowPlan,
        token: &str,
    ) -> Result<WorkflowRecord> {
        let url = format!(
            "{}/internal/tenants/{tenant}/workflows/{name}",
            self.base_url(tenant)
        );
        self.send("workflow", self.http.put(&url).json(plan), &url, token)
            .await?
            .ok_or_else(|| TenantApiError::Unavailable {
                url,
                message: "the tenant is not registered".into(),
            })
    }

    /// A registered knowledge base's record, or None when it is not registered (or the
    /// tenant is not).
    pub async fn knowledge_base(
        &self,
        tenant: &str,
        name: &str,
        token: &str,
    ) -> Result<Option<KnowledgeBaseRecord>> {
        let url = format!(
            "{}/internal/tenants/{tenant}/knowledge-bases/{name}",
            self.base_url(tenant)
        );
        self.send("knowledge base", self.http.get(&url), &url, token)
            .await
    }

    /// A registered workflow's record, or None when it is not registered.
    pub async fn workflow(
        &self,
        tenant: &str,
        name: &str,
        token: &str,
    ) -> Result<Option<WorkflowRecord>> {
        let url = format!(
            "{}/internal/tenants/{tenant}/workflows/{name}",
            self.base_url(tenant)
        );
        self.send("workflow", self.http.get(&url), &url, token)
            .await
    }

    /// Sets the tenant's administrator: created, or an existing user of this tenant
    /// given the role and this password. The tenant must be registered first.
    pub async fn upsert_administrator(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
        token: &str,
    ) -> Result<AdministratorRecord> {
        // The address goes into the path: encoded as a path segment, whatever it holds.
        let base = self.base_url(tenant);
        let mut url = reqwest::Url::parse(&base).map_err(|e| TenantApiError::Unavailable {
            url: base.clone(),
            message: e.to_string(),
        })?;
        url.path_segments_mut()
            .map_err(|()| TenantApiError::Unavailable {
                url: base.clone(),
                message: "not a URL with a path".into(),
            })?
            .pop_if_empty()
            .extend(["internal", "tenants", tenant, "admins", email]);
        let url = url.to_string();
        let body = serde_json::json!({ "password": password });
        self.send(
            "administrator",
            self.http.put(&url).json(&body),
            &url,
            token,
        )
        .await?
        .ok_or_else(|| TenantApiError::Rejected {
            kind: "administrator",
            status: 404,
            message: "the tenant is not registered".into(),
        })
    }

    /// Deletes a registration; one that is already gone is fine.
    pub async fn delete(
        &self,
        tenant: &str,
        collection: &str,
        name: &str,
        token: &str,
    ) -> Result<()> {
        let url = format!(
            "{}/internal/tenants/{tenant}/{collection}/{name}",
            self.base_url(tenant)
        );
        self.send::<serde_json::Value>("deletion", self.http.delete(&url), &url, token)
            .await?;
        Ok(())
    }
}

//! The tenant's platform API, on its internal endpoints: how KnowledgeBases and
//! Workflows are registered. Authenticated by the per-tenant operator token.

use std::time::Duration;

use iafactory_crds::{KnowledgeBaseSpec, TenantSpec, WorkflowSpec};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Where each tenant's API answers. `{tenant}` and `{namespace}` are replaced.
#[derive(Clone, Debug)]
pub struct TenantApi {
    http: reqwest::Client,
    url_template: String,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    data: T,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
/// Timestamps stay RFC 3339 text, which is what `metav1.Time` parses.
pub struct KnowledgeBaseRecord {
    pub id: String,
    pub documents: i64,
    pub chunks: i64,
    pub last_ingestion: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct WorkflowRecord {
    pub id: String,
    pub valid_dag: bool,
    pub agents: i32,
    pub last_execution: Option<ExecutionRecord>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ExecutionRecord {
    pub id: String,
    pub status: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub failed_agent: Option<String>,
}

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
                &format!("{}{tenant}", iafactory_crds::plan::NAMESPACE_PREFIX),
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
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::TenantApi {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = response.bytes().await.map_err(|e| Error::TenantApi {
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
            return Err(Error::Rejected {
                kind,
                status: status.as_u16(),
                message,
            });
        }
        if !status.is_success() {
            return Err(Error::TenantApi {
                url: url.to_owned(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body)),
            });
        }
        if body.is_empty() {
            return Ok(None);
        }
        let envelope: Envelope<T> =
            serde_json::from_slice(&body).map_err(|e| Error::TenantApi {
                url: url.to_owned(),
                message: format!("an unexpected answer: {e}"),
            })?;
        Ok(Some(envelope.data))
    }

    pub async fn upsert_tenant(&self, tenant: &str, spec: &TenantSpec, token: &str) -> Result<()> {
        let url = format!("{}/internal/tenants/{tenant}", self.base_url(tenant));
        let body = serde_json::json!({
            "name": spec.display_name.clone().unwrap_or_else(|| tenant.to_owned()),
            "plan": spec.plan.as_str(),
            "suspended": spec.suspended,
        });
        self.send::<serde_json::Value>("tenant", self.http.put(&url).json(&body), &url, token)
            .await?;
        Ok(())
    }

    pub async fn upsert_knowledge_base(
        &self,
        tenant: &str,
        name: &str,
        spec: &KnowledgeBaseSpec,
        token: &str,
    ) -> Result<KnowledgeBaseRecord> {
        let url = format!(
            "{}/internal/tenants/{tenant}/knowledge-bases/{name}",
            self.base_url(tenant)
        );
        self.send(
            "knowledge base",
            self.http.put(&url).json(spec),
            &url,
            token,
        )
        .await?
        .ok_or_else(|| Error::TenantApi {
            url,
            message: "the tenant is not registered".into(),
        })
    }

    pub async fn upsert_workflow(
        &self,
        tenant: &str,
        name: &str,
        spec: &WorkflowSpec,
        token: &str,
    ) -> Result<WorkflowRecord> {
        let url = format!(
            "{}/internal/tenants/{tenant}/workflows/{name}",
            self.base_url(tenant)
        );
        self.send("workflow", self.http.put(&url).json(spec), &url, token)
            .await?
            .ok_or_else(|| Error::TenantApi {
                url,
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

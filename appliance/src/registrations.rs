//! KnowledgeBases and Workflows: the appliance stores them and registers them with the
//! tenant's API through its internal endpoints (the operator's client, shared through
//! `iafactory_crds::tenant_api`), with the tenant's operator token. The API alone owns
//! their data; the appliance never writes to a tenant's database.
//!
//! A tenant whose API is not healthy yet is not an error: its objects wait for the
//! next reconcile, and each outcome says so.
//!
//! A KnowledgeBase's `configMap` sources name files here: `<data_dir>/sources/<tenant>/
//! <name>` is a directory whose every regular file is a key (as in a ConfigMap), or a
//! single file (its name is the key); with `key`, the file `<name>/<key>`. Their content
//! is sent with the registration, as the operator sends a ConfigMap's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use iafactory_crds::Tenant;
use iafactory_crds::plan::{
    ComponentKind, KnowledgeBasePlan, SECRET_OPERATOR_TOKEN, plan_knowledge_base, plan_workflow,
};
use iafactory_crds::tenant_api::{
    AdministratorRecord, ConfigMapContent, KnowledgeBaseRecord, KnowledgeBaseRegistration,
    TenantApi, TenantApiError, WorkflowRecord,
};
use serde::Serialize;

use crate::app::{App, AppError};
use crate::engine::docker::Target;
use crate::store::{RegisteredKind, Registrations};

/// How long one call to a tenant's API may take (a registration fetches its `url`
/// sources).
const API_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest file a `configMap` source sends: the API's default upload limit.
pub const MAX_SOURCE_FILE_BYTES: u64 = 20 * 1024 * 1024;

/// Where the appliance reads the `configMap` sources of a tenant's KnowledgeBases.
pub fn sources_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("sources").join(tenant)
}

/// A `configMap` source read from `<sources_dir>/<name>[/<key>]`: every regular file
/// of the directory (not recursive), or the one `key` names, or the file `<name>`
/// itself. UTF-8 files are sent as text, others base64-encoded. Anything missing or
/// unreadable is the source's error, never the registration's.
pub fn read_config_map_source(dir: &Path, name: &str, key: Option<&str>) -> ConfigMapContent {
    let mut content = ConfigMapContent {
        name: name.to_owned(),
        key: key.map(str::to_owned),
        ..ConfigMapContent::default()
    };
    let shown = |path: &Path| path.display().to_string();
    // The spec's patterns allow no `/` in either; `.` and `..` would leave the directory.
    if [Some(name), key]
        .into_iter()
        .flatten()
        .any(|part| part == "." || part == "..")
    {
        content.error = Some(format!("{name:?}/{key:?} is not a file name"));
        return content;
    }
    let base = dir.join(name);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    match key {
        Some(key) => files.push((key.to_owned(), base.join(key))),
        None if base.is_file() => files.push((name.to_owned(), base.clone())),
        None => match std::fs::read_dir(&base) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_file() {
                        files.push((entry.file_name().to_string_lossy().into_owned(), path));
                    }
                }
            }
            Err(error) => {
                content.error = Some(format!(
                    "{} cannot be read ({error}): put the source's files there",
                    shown(&base)
                ));
                return content;
            }
        },
    }
    for (key, path) in files {
        let read = std::fs::metadata(&path).and_then(|meta| {
            if meta.len() > MAX_SOURCE_FILE_BYTES {
                Err(std::io::Error::other(format!(
                    "over {MAX_SOURCE_FILE_BYTES} bytes"
                )))
            } else {
                std::fs::read(&path)
            }
        });
        match read {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    content.data.insert(key, text);
                }
                Err(binary) => {
                    let encoded =
                        base64::engine::general_purpose::STANDARD.encode(binary.as_bytes());
                    content.binary_data.insert(key, encoded);
                }
            },
            Err(error) => {
                content.error = Some(format!("{} cannot be read: {error}", shown(&path)));
                return content;
            }
        }
    }
    content
}

/// The registration of a KnowledgeBase: its plan, and its `configMap` sources read
/// from the tenant's sources directory.
pub fn registration(sources: &Path, plan: KnowledgeBasePlan) -> KnowledgeBaseRegistration {
    KnowledgeBaseRegistration {
        config_maps: plan
            .sources
            .iter()
            .filter_map(|s| s.config_map.as_ref())
            .map(|c| read_config_map_source(sources, &c.name, c.key.as_deref()))
            .collect(),
        plan,
    }
}

/// What happened to one KnowledgeBase or Workflow in a reconcile.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Registered,
    /// Registered, but some of its sources cannot be read (their documents from
    /// before stay): each named with why.
    SourcesFailed {
        reason: String,
    },
    /// Deleted from the tenant's API.
    Unregistered,
    /// The tenant's API cannot be reached now; the next reconcile registers it.
    Pending {
        reason: String,
    },
    /// Deleted here; the tenant's API cannot be reached now, the next reconcile
    /// deletes it there.
    DeletionPending {
        reason: String,
    },
    /// The tenant's API refused it: the manifest must change.
    Rejected {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Registration {
    pub tenant: String,
    pub kind: RegisteredKind,
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl std::fmt::Display for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let object = format!(
            "{}/{} (tenant {})",
            self.kind.word(),
            self.name,
            self.tenant
        );
        match &self.outcome {
            Outcome::Registered => write!(f, "{object} registered with the tenant's API"),
            Outcome::SourcesFailed { reason } => write!(
                f,
                "{object} registered with the tenant's API, but sources cannot be read: {reason}"
            ),
            Outcome::Unregistered => write!(f, "{object} deleted from the tenant's API"),
            Outcome::Pending { reason } => {
                write!(f, "{object} registered on next reconcile: {reason}")
            }
            Outcome::DeletionPending { reason } => write!(
                f,
                "{object} deleted from the tenant's API on next reconcile: {reason}"
            ),
            Outcome::Rejected { reason } => write!(
                f,
                "{object} rejected: {reason}; fix the manifest and apply it again"
            ),
        }
    }
}

/// A registered object as the tenant's API knows it, for `status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Recorded {
    KnowledgeBase(KnowledgeBaseRecord),
    Workflow(WorkflowRecord),
    /// Stored, but the tenant's API does not know it yet.
    NotRegistered,
    /// Deleted, but the tenant's API still has to forget it.
    DeletionPending,
    /// The tenant's API could not be asked.
    Unknown {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegistrationStatus {
    pub kind: RegisteredKind,
    pub name: String,
    pub api: Recorded,
}

impl RegistrationStatus {
    /// One line for the `status` table.
    pub fn summary(&self) -> String {
        match &self.api {
            Recorded::KnowledgeBase(kb) => {
                let mut line = format!(
                    "registered: {} documents, {} chunks, last ingestion {}",
                    kb.documents,
                    kb.chunks,
                    kb.last_ingestion.as_deref().unwrap_or("never")
                );
                if !kb.sources.is_empty() {
                    let failing = failing_sources(kb);
                    line.push_str(&format!("; {} sources", kb.sources.len()));
                    if let Some(failing) = failing {
                        line.push_str(&format!(", failing: {failing}"));
                    }
                }
                if let Some(progress) = &kb.reembedding {
                    line.push_str(&format!(
                        "; re-embedding with {}/{} ({} dimensions): {} of {} chunks, searches use the previous model until done",
                        progress.embedding.provider,
                        progress.embedding.model,
                        progress.embedding.dimensions,
                        progress.done,
                        progress.total
                    ));
                    if let Some(error) = &progress.error {
                        line.push_str(&format!(", held up: {error}"));
                    }
                }
                line
            }
            Recorded::Workflow(wf) => format!(
                "registered: {} agents, {}, last execution {}",
                wf.agents,
                if wf.valid_dag {
                    "valid DAG"
                } else {
                    "INVALID DAG"
                },
                wf.last_execution
                    .as_ref()
                    .map(|e| format!(
                        "{} ({})",
                        e.status,
                        e.finished_at
                            .as_deref()
                            .or(e.started_at.as_deref())
                            .unwrap_or("not started")
                    ))
                    .unwrap_or_else(|| "none".into())
            ),
            Recorded::NotRegistered => "not registered yet: registered on next reconcile".into(),
            Recorded::DeletionPending => "deleted: unregistered on next reconcile".into(),
            Recorded::Unknown { reason } => format!("unknown: {reason}"),
        }
    }
}

/// A client of one tenant's API, with its operator token.
struct Connection {
    api: TenantApi,
    token: String,
}

impl App {
    /// The tenant's API, reachable and healthy, at its address on the tenant's internal
    /// network (as the gateway reaches it); Err says why not, for the outcomes.
    async fn tenant_api(&self, tenant: &Tenant) -> Result<Connection, String> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let plan = self.plan_stored(tenant).map_err(|e| e.to_string())?;
        let secrets = self.store.secrets(&plan).map_err(|e| e.to_string())?;
        let token = secrets
            .get(SECRET_OPERATOR_TOKEN)
            .and_then(|s| s.get("token"))
            .cloned()
            .ok_or_else(|| format!("tenant {name:?} has no operator token yet"))?;
        let state = crate::engine::desired::tenant_state(&plan, &secrets, &self.render_settings())
            .map_err(|e| e.to_string())?;
        let api = ComponentKind::Api.name();
        let target = Target::component(&name, api);
        // `/internal/*` is served on the API's internal listener only.
        let port = self.config.platform.api.internal_port;
        for spec in state.containers.iter().filter(|c| c.component == api) {
            let Some(attachment) = self
                .engine
                .attachment(&target, &spec.name, &spec.network)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            if let (true, Some(ip)) = (attachment.healthy, attachment.ip) {
                return Ok(Connection {
                    api: TenantApi::new(format!("http://{ip}:{port}"), API_TIMEOUT),
                    token,
                });
            }
        }
        Err(format!(
            "the API of tenant {name:?} is not healthy yet (`iafactory status`)"
        ))
    }

    /// Sets the stored tenant's administrator through its API (the tenant itself is
    /// registered first, as for its knowledge bases), so that a tenant whose API has
    /// self-registration closed gets its first user; it also resets a lost password.
    pub async fn set_administrator(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
    ) -> Result<AdministratorRecord, AppError> {
        let stored = self.require_tenant(tenant)?;
        let connection =
            self.tenant_api(&stored)
                .await
                .map_err(|reason| AppError::TenantApiUnreachable {
                    tenant: tenant.to_owned(),
                    reason,
                })?;
        let refused = |error| AppError::Administrator {
            tenant: tenant.to_owned(),
            email: email.to_owned(),
            error,
        };
        connection
            .api
            .upsert_tenant(tenant, &stored.spec, &connection.token)
            .await
            .map_err(refused)?;
        connection
            .api
            .upsert_administrator(tenant, email, password, &connection.token)
            .await
            .map_err(refused)
    }

    /// Registers every stored KnowledgeBase and Workflow of every stored tenant with
    /// its API, and deletes from it those that were deleted here. Never fails as a
    /// whole: each object's outcome says what happened.
    pub async fn register_all(&self) -> Result<Vec<Registration>, AppError> {
        let mut outcomes = Vec::new();
        for tenant in self.store.tenants()? {
            outcomes.extend(self.register_tenant(&tenant).await?);
        }
        Ok(outcomes)
    }

    /// The same, for one tenant. A tenant with nothing to register costs nothing (not
    /// even a Docker call).
    pub async fn register_tenant(&self, tenant: &Tenant) -> Result<Vec<Registration>, AppError> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let stored = self.store.registrations(&name)?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let outcome_of = |kind, object: &str, outcome| Registration {
            tenant: name.clone(),
            kind,
            name: object.to_owned(),
            outcome,
        };
        let connection = match self.tenant_api(tenant).await {
            Ok(connection) => connection,
            Err(reason) => return Ok(without_the_tenant(&name, &stored, reason, false)),
        };
        let Connection { api, token } = &connection;
        // The API keeps registrations per tenant: the tenant comes first, as the
        // operator does it.
        if let Err(error) = api.upsert_tenant(&name, &tenant.spec, token).await {
            // None of its objects can be registered before it is.
            let rejected = matches!(error, TenantApiError::Rejected { .. });
            return Ok(without_the_tenant(
                &name,
                &stored,
                error.to_string(),
                rejected,
            ));
        }
        let mut outcomes = Vec::new();
        for (kind, object) in &stored.deleted {
            let outcome = match api.delete(&name, kind.collection(), object, token).await {
                Ok(()) => {
                    self.store.forget_deletion(&name, *kind, object)?;
                    Outcome::Unregistered
                }
                Err(error @ TenantApiError::Rejected { .. }) => failure(error),
                Err(error) => Outcome::DeletionPending {
                    reason: error.to_string(),
                },
            };
            outcomes.push(outcome_of(*kind, object, outcome));
        }
        // Knowledge bases before the workflows whose agents search them.
        let sources = sources_dir(&self.config.appliance.data_dir, &name);
        for kb in &stored.knowledge_bases {
            let object = kb.metadata.name.as_deref().unwrap_or_default();
            // `apply` planned it already; a platform configuration changed since then
            // can still make it fail.
            let outcome = match plan_knowledge_base(kb, &self.config.platform) {
                Err(error) => Outcome::Rejected {
                    reason: error.to_string(),
                },
                Ok(plan) => match api
                    .upsert_knowledge_base(&name, object, &registration(&sources, plan), token)
                    .await
                {
                    Ok(record) => match failing_sources(&record) {
                        None => Outcome::Registered,
                        Some(reason) => Outcome::SourcesFailed { reason },
                    },
                    Err(error) => failure(error),
                },
            };
            outcomes.push(outcome_of(RegisteredKind::KnowledgeBase, object, outcome));
        }
        for workflow in &stored.workflows {
            let object = workflow.metadata.name.as_deref().unwrap_or_default();
            let outcome = match plan_workflow(workflow, &self.config.platform) {
                Err(error) => Outcome::Rejected {
                    reason: error.to_string(),
                },
                Ok(plan) => match api.upsert_workflow(&name, object, &plan, token).await {
                    Ok(_) => Outcome::Registered,
                    Err(error) => failure(error),
                },
            };
            outcomes.push(outcome_of(RegisteredKind::Workflow, object, outcome));
        }
        Ok(outcomes)
    }

    /// Each stored KnowledgeBase and Workflow of the tenant, with the API's record.
    pub async fn registration_status(
        &self,
        tenant: &Tenant,
    ) -> Result<Vec<RegistrationStatus>, AppError> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let stored = self.store.registrations(&name)?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let connection = self.tenant_api(tenant).await;
        let mut statuses = Vec::new();
        for (kind, object) in objects(&stored) {
            let api = if stored
                .deleted
                .iter()
                .any(|(k, n)| *k == kind && n == object)
            {
                Recorded::DeletionPending
            } else {
                match &connection {
                    Err(reason) => Recorded::Unknown {
                        reason: reason.clone(),
                    },
                    Ok(Connection { api, token }) => {
                        let recorded = match kind {
                            RegisteredKind::KnowledgeBase => api
                                .knowledge_base(&name, object, token)
                                .await
                                .map(|r| r.map(Recorded::KnowledgeBase)),
                            RegisteredKind::Workflow => api
                                .workflow(&name, object, token)
                                .await
                                .map(|r| r.map(Recorded::Workflow)),
                        };
                        match recorded {
                            Ok(Some(recorded)) => recorded,
                            Ok(None) => Recorded::NotRegistered,
                            Err(error) => Recorded::Unknown {
                                reason: error.to_string(),
                            },
                        }
                    }
                }
            };
            statuses.push(RegistrationStatus {
                kind,
                name: object.to_owned(),
                api,
            });
        }
        Ok(statuses)
    }
}

/// Each source that cannot be read, with why; None when every one was read.
fn failing_sources(record: &KnowledgeBaseRecord) -> Option<String> {
    let failing: Vec<String> = record
        .sources
        .iter()
        .filter_map(|s| s.last_error.as_ref().map(|e| format!("{}: {e}", s.id)))
        .collect();
    (!failing.is_empty()).then(|| failing.join("; "))
}

fn failure(error: TenantApiError) -> Outcome {
    match error {
        TenantApiError::Rejected { .. } => Outcome::Rejected {
            reason: error.to_string(),
        },
        TenantApiError::Unavailable { .. } => Outcome::Pending {
            reason: error.to_string(),
        },
    }
}

/// Every object of the tenant, stored or deleted, in registration order.
/// The outcome of every stored object when the tenant itself could not be registered:
/// pending when its API was unreachable (the next reconcile retries), rejected when
/// the API refused the tenant (retrying changes nothing until its manifest does).
/// Deletions wait either way.
fn without_the_tenant(
    tenant: &str,
    stored: &Registrations,
    reason: String,
    tenant_rejected: bool,
) -> Vec<Registration> {
    objects(stored)
        .map(|(kind, object)| {
            let deleted = stored
                .deleted
                .iter()
                .any(|(k, n)| *k == kind && n == object);
            let outcome = if deleted {
                Outcome::DeletionPending {
                    reason: reason.clone(),
                }
            } else if tenant_rejected {
                Outcome::Rejected {
                    reason: format!("tenant {tenant:?} itself was refused: {reason}"),
                }
            } else {
                Outcome::Pending {
                    reason: reason.clone(),
                }
            };
            Registration {
                tenant: tenant.to_owned(),
                kind,
                name: object.to_owned(),
                outcome,
            }
        })
        .collect()
}

fn objects(stored: &Registrations) -> impl Iterator<Item = (RegisteredKind, &str)> {
    stored
        .deleted
        .iter()
        .map(|(kind, name)| (*kind, name.as_str()))
        .chain(stored.knowledge_bases.iter().map(|kb| {
            (
                RegisteredKind::KnowledgeBase,
                kb.metadata.name.as_deref().unwrap_or_default(),
            )
        }))
        .chain(stored.workflows.iter().map(|wf| {
            (
                RegisteredKind::Workflow,
                wf.metadata.name.as_deref().unwrap_or_default(),
            )
        }))
}

/// For the daemon: a refusal is an error, a tenant API not up yet is news.
pub fn log_outcomes(outcomes: Result<Vec<Registration>, AppError>) {
    match outcomes {
        Ok(outcomes) => {
            for outcome in outcomes {
                match outcome.outcome {
                    Outcome::Rejected { .. } => tracing::error!("{outcome}"),
                    Outcome::Pending { .. } | Outcome::DeletionPending { .. } => {
                        tracing::info!("{outcome}")
                    }
                    Outcome::SourcesFailed { .. } => tracing::warn!("{outcome}"),
                    // Registering again what is registered is the steady state.
                    Outcome::Registered => tracing::debug!("{outcome}"),
                    Outcome::Unregistered => tracing::info!("{outcome}"),
                }
            }
        }
        Err(error) => tracing::error!("registering knowledge bases and workflows: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Registrations {
        let kb: iafactory_crds::KnowledgeBase = serde_yaml::from_str(
            "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: docs, namespace: iaf-acme}\nspec: {}\n",
        )
        .unwrap();
        Registrations {
            knowledge_bases: vec![kb],
            workflows: Vec::new(),
            deleted: vec![(RegisteredKind::Workflow, "old".to_owned())],
        }
    }

    fn outcomes(rejected: bool) -> Vec<(String, Outcome)> {
        without_the_tenant("acme", &stored(), "why".to_owned(), rejected)
            .into_iter()
            .map(|r| (r.name, r.outcome))
            .collect()
    }

    #[test]
    fn config_map_sources_are_files_under_the_tenants_sources_directory() {
        let dir = tempfile::tempdir().unwrap();
        let docs = dir.path().join("reglements");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("a.md"), "# A").unwrap();
        std::fs::write(docs.join("b.pdf"), [0x25, 0x50, 0xff, 0xfe]).unwrap();
        std::fs::create_dir(docs.join("nested")).unwrap();
        std::fs::write(dir.path().join("single.txt"), "one").unwrap();

        let all = read_config_map_source(dir.path(), "reglements", None);
        assert_eq!(all.error, None);
        assert_eq!(all.data.keys().collect::<Vec<_>>(), ["a.md"]);
        assert_eq!(all.binary_data["b.pdf"], "JVD//g==");
        let one = read_config_map_source(dir.path(), "reglements", Some("a.md"));
        assert_eq!(one.data["a.md"], "# A");
        assert!(one.binary_data.is_empty());
        let file = read_config_map_source(dir.path(), "single.txt", None);
        assert_eq!(file.data["single.txt"], "one");
        let missing = read_config_map_source(dir.path(), "absent", None);
        assert!(
            missing.error.as_deref().unwrap().contains("absent"),
            "{missing:?}"
        );
        let missing_key = read_config_map_source(dir.path(), "reglements", Some("z.md"));
        assert!(missing_key.error.is_some());
        let escaping = read_config_map_source(dir.path(), "reglements", Some(".."));
        assert!(escaping.error.is_some() && escaping.data.is_empty());
    }

    #[test]
    fn an_unreachable_api_leaves_everything_pending() {
        assert_eq!(
            outcomes(false),
            [
                (
                    "old".to_owned(),
                    Outcome::DeletionPending {
                        reason: "why".into()
                    }
                ),
                (
                    "docs".to_owned(),
                    Outcome::Pending {
                        reason: "why".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_refused_tenant_rejects_its_objects_and_its_deletions_wait() {
        assert_eq!(
            outcomes(true),
            [
                (
                    "old".to_owned(),
                    Outcome::DeletionPending {
                        reason: "why".into()
                    }
                ),
                (
                    "docs".to_owned(),
                    Outcome::Rejected {
                        reason: "tenant \"acme\" itself was refused: why".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn status_shows_a_re_embedding_under_way() {
        let record: KnowledgeBaseRecord = serde_json::from_value(serde_json::json!({
            "id": "k", "documents": 3, "chunks": 12, "last_ingestion": null,
            "reembedding": {"embedding": {"provider": "ollama", "model": "smollm2", "dimensions": 576},
                            "done": 4, "total": 12, "error": "the embedding server is unreachable"},
        }))
        .unwrap();
        let status = RegistrationStatus {
            kind: RegisteredKind::KnowledgeBase,
            name: "docs".into(),
            api: Recorded::KnowledgeBase(record),
        };
        let line = status.summary();
        assert!(
            line.contains("re-embedding with ollama/smollm2 (576 dimensions): 4 of 12 chunks"),
            "{line}"
        );
        assert!(
            line.contains("held up: the embedding server is unreachable"),
            "{line}"
        );
        // An API that predates re-embedding sends no such field.
        let old: KnowledgeBaseRecord = serde_json::from_value(serde_json::json!({
            "id": "k", "documents": 3, "chunks": 12, "last_ingestion": null,
        }))
        .unwrap();
        assert_eq!(old.reembedding, None);
    }
}

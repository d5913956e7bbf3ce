//! KnowledgeBase: checked against its Tenant, registered with the tenant's API (with
//! the content of its `configMap` sources, read here), and the API's counts and each
//! source's documents and last error mirrored into the status.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use iafactory_crds::knowledgebase::{KnowledgeBaseSpec, ReembeddingStatus, SourceStatus};
use iafactory_crds::tenant_api::{
    ConfigMapContent, KnowledgeBaseRegistration, ReembedProgress, SourceRecord, TenantApiError,
};
use iafactory_crds::{KnowledgeBase, KnowledgeBaseStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::registered::{self, owning_tenant, publish, waiting};
use super::{Context, RETRY, now, operator_token};
use crate::error::Result;
use crate::status::{ConditionSet, READY, invalid_conditions, is_ready};

pub const CONTROLLER: &str = "knowledgebase";
/// How often the KnowledgeBase is registered again: document and chunk counts
/// refreshed, and its ConfigMaps read again (a changed ConfigMap is re-ingested
/// within this; ConfigMaps are not watched).
const REFRESH: Duration = Duration::from_secs(60);
/// The condition on a KnowledgeBase's sources: True when every source was read.
pub const SOURCES_READY: &str = "SourcesReady";
/// The condition on a KnowledgeBase's vectors: True while its chunks are embedded again
/// with a new model (`spec.embedding` changed).
pub const REINDEXING: &str = "Reindexing";
/// How often the progress of a re-embedding is refreshed.
const REINDEX_REFRESH: Duration = Duration::from_secs(10);

/// The content of each `configMap` source, from the ConfigMaps in the KnowledgeBase's
/// namespace: every key, or the one it names. A missing ConfigMap or key, or one the
/// operator may not read, is that source's error, sent along for the API to report.
async fn read_config_maps(
    ctx: &Context,
    namespace: &str,
    spec: &KnowledgeBaseSpec,
) -> Vec<ConfigMapContent> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let mut contents = Vec::new();
    for source in spec.sources.iter().filter_map(|s| s.config_map.as_ref()) {
        let found = api.get_opt(&source.name).await;
        contents.push(config_map_content(
            namespace,
            &source.name,
            source.key.as_deref(),
            found.map_err(|e| e.to_string()),
        ));
    }
    contents
}

/// What is sent for one `configMap` source, from what reading it gave (pure).
pub fn config_map_content(
    namespace: &str,
    name: &str,
    key: Option<&str>,
    found: std::result::Result<Option<ConfigMap>, String>,
) -> ConfigMapContent {
    let mut content = ConfigMapContent {
        name: name.to_owned(),
        key: key.map(str::to_owned),
        ..ConfigMapContent::default()
    };
    let config_map = match found {
        Ok(Some(config_map)) => config_map,
        Ok(None) => {
            content.error = Some(format!("ConfigMap {namespace}/{name} does not exist"));
            return content;
        }
        Err(error) => {
            content.error = Some(format!(
                "ConfigMap {namespace}/{name} cannot be read: {error}"
            ));
            return content;
        }
    };
    let data = config_map.data.unwrap_or_default();
    let binary = config_map.binary_data.unwrap_or_default();
    let encode = |bytes: &Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    match key {
        Some(key) => {
            if let Some(text) = data.get(key) {
                content.data.insert(key.to_owned(), text.clone());
            } else if let Some(bytes) = binary.get(key) {
                content.binary_data.insert(key.to_owned(), encode(&bytes.0));
            } else {
                content.error = Some(format!("ConfigMap {namespace}/{name} has no key {key:?}"));
            }
        }
        None => {
            content.data = data.into_iter().collect();
            content.binary_data = binary.into_iter().map(|(k, v)| (k, encode(&v.0))).collect();
        }
    }
    content
}

/// The sources' status, and the SourcesReady condition's (status, reason, message),
/// from the API's records (pure). The message names each failing source.
pub fn sources_status(records: &[SourceRecord]) -> (Vec<SourceStatus>, bool, &'static str, String) {
    let sources: Vec<SourceStatus> = records
        .iter()
        .map(|r| SourceStatus {
            id: r.id.clone(),
            documents: r.documents,
            last_error: r.last_error.clone(),
        })
        .collect();
    let failed: Vec<String> = records
        .iter()
        .filter_map(|r| r.last_error.as_ref().map(|e| format!("{}: {e}", r.id)))
        .collect();
    if failed.is_empty() {
        let documents: i64 = records.iter().map(|r| r.documents).sum();
        let message = format!("{} sources read, {documents} documents", records.len());
        (sources, true, "SourcesRead", message)
    } else {
        let message = format!(
            "{} of {} sources cannot be read (their documents from before stay): {}",
            failed.len(),
            records.len(),
            failed.join("; ")
        );
        (sources, false, "SourceFailed", message)
    }
}

/// The re-embedding's status, and the Reindexing condition's (status, reason, message)
/// (pure): set while one is under way, and False once it is done if it was set before.
pub fn reindexing(
    progress: Option<&ReembedProgress>,
    previous: &[Condition],
) -> (
    Option<ReembeddingStatus>,
    Option<(bool, &'static str, String)>,
) {
    let Some(progress) = progress else {
        let was = previous.iter().any(|c| c.type_ == REINDEXING);
        let done = (
            false,
            "Reembedded",
            "the vectors are the spec's embedding model's".into(),
        );
        return (None, was.then_some(done));
    };
    let model = format!(
        "{}/{} ({} dimensions)",
        progress.embedding.provider, progress.embedding.model, progress.embedding.dimensions
    );
    let status = ReembeddingStatus {
        embedding: progress.embedding.clone(),
        done: progress.done,
        total: progress.total,
        last_error: progress.error.clone(),
        started_at: progress
            .started_at
            .as_deref()
            .and_then(|t| t.parse().ok())
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
    };
    let condition = match &progress.error {
        None => (
            true,
            "Reembedding",
            format!(
                "embedding {} of {} chunks again with {model}; searches use the previous model until all are",
                progress.done, progress.total
            ),
        ),
        Some(error) => (
            true,
            "ReembeddingBlocked",
            format!(
                "re-embedding with {model} is held up: {error}; searches use the previous model"
            ),
        ),
    };
    (Some(status), Some(condition))
}

pub async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    registered::reconcile(CONTROLLER, kb, ctx, |kb, ctx| async move {
        apply(&kb, &ctx).await
    })
    .await
}

/// Waits for a change, with a condition that says why.
async fn wait(
    ctx: &Context,
    kb: &KnowledgeBase,
    previous: &KnowledgeBaseStatus,
    conditions: Vec<Condition>,
) -> Result<Action> {
    let status = KnowledgeBaseStatus {
        conditions,
        observed_generation: kb.metadata.generation,
        ..previous.clone()
    };
    publish(ctx, kb, &status).await?;
    Ok(Action::await_change())
}

async fn apply(kb: &KnowledgeBase, ctx: &Context) -> Result<Action> {
    let previous = kb.status.clone().unwrap_or_default();
    let generation = kb.metadata.generation;
    let namespace = kb.namespace().unwrap_or_default();
    let name = kb.name_any();
    let Some(tenant) = owning_tenant(ctx, &namespace) else {
        let message =
            format!("no Tenant owns namespace {namespace}: KnowledgeBases live in iaf-<tenant>");
        return wait(
            ctx,
            kb,
            &previous,
            waiting("TenantNotFound", &message, &previous.conditions, generation),
        )
        .await;
    };
    let planned = iafactory_crds::plan::plan_knowledge_base(kb, &ctx.config)
        .map_err(|e| e.to_string())
        .and_then(|plan| crate::admission::check_knowledge_base(kb, &tenant).map(|()| plan));
    let plan = match planned {
        Ok(plan) => plan,
        Err(message) => {
            return wait(
                ctx,
                kb,
                &previous,
                invalid_conditions(
                    "InvalidSpec",
                    &message,
                    &previous.conditions,
                    generation,
                    &now(),
                ),
            )
            .await;
        }
    };
    if !tenant
        .status
        .as_ref()
        .is_some_and(|s| is_ready(&s.conditions))
    {
        let message = format!("waiting for Tenant {} to be Ready", tenant.name_any());
        return wait(
            ctx,
            kb,
            &previous,
            waiting("TenantNotReady", &message, &previous.conditions, generation),
        )
        .await;
    }
    let tenant_name = tenant.name_any();
    let token = operator_token(ctx, &namespace).await?;
    let registration = KnowledgeBaseRegistration {
        plan,
        config_maps: read_config_maps(ctx, &namespace, &kb.spec).await,
    };
    let registered = async {
        ctx.tenant_api
            .upsert_tenant(&tenant_name, &tenant.spec, &token)
            .await?;
        ctx.tenant_api
            .upsert_knowledge_base(&tenant_name, &name, &registration, &token)
            .await
    }
    .await;
    let record = match registered {
        Ok(record) => record,
        Err(TenantApiError::Rejected { message, .. }) => {
            let message = format!("the tenant's API rejected it: {message}");
            return wait(
                ctx,
                kb,
                &previous,
                invalid_conditions(
                    "Rejected",
                    &message,
                    &previous.conditions,
                    generation,
                    &now(),
                ),
            )
            .await;
        }
        Err(error) => {
            let message = error.to_string();
            let status = KnowledgeBaseStatus {
                conditions: waiting("ApiUnavailable", &message, &previous.conditions, generation),
                observed_generation: generation,
                ..previous.clone()
            };
            publish(ctx, kb, &status).await?;
            return Ok(Action::requeue(RETRY));
        }
    };
    let stamp = now();
    let mut conditions = ConditionSet::new(&previous.conditions, generation, &stamp);
    conditions.set(
        READY,
        true,
        "Registered",
        format!(
            "registered with the tenant's API: {} documents, {} chunks",
            record.documents, record.chunks
        ),
    );
    let (sources, sources_ready, reason, message) = sources_status(&record.sources);
    if !record.sources.is_empty() {
        conditions.set(SOURCES_READY, sources_ready, reason, message);
    }
    let (reembedding, reindexing) = reindexing(record.reembedding.as_ref(), &previous.conditions);
    if let Some((status, reason, message)) = reindexing {
        conditions.set(REINDEXING, status, reason, message);
    }
    let refresh = if reembedding.is_some() {
        REINDEX_REFRESH
    } else {
        REFRESH
    };
    let status = KnowledgeBaseStatus {
        documents: Some(record.documents),
        chunks: Some(record.chunks),
        last_ingestion: record
            .last_ingestion
            .and_then(|t| t.parse().ok())
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        api_id: Some(record.id),
        sources,
        reembedding,
        conditions: conditions.into_vec(),
        observed_generation: generation,
    };
    publish(ctx, kb, &status).await?;
    Ok(Action::requeue(refresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn config_map(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_config_map_source_sends_every_key_or_the_one_it_names() {
        let found = || {
            Ok(Some(config_map(
                &[("a.md", "# A"), ("b.txt", "B")],
                &[("c.pdf", b"%PDF")],
            )))
        };
        let all = config_map_content("iaf-x", "docs", None, found());
        assert_eq!(all.data.len(), 2);
        assert_eq!(all.binary_data["c.pdf"], "JVBERg==");
        assert_eq!(all.error, None);
        let one = config_map_content("iaf-x", "docs", Some("b.txt"), found());
        assert_eq!(one.data.keys().collect::<Vec<_>>(), ["b.txt"]);
        assert!(one.binary_data.is_empty());
        let missing_key = config_map_content("iaf-x", "docs", Some("z.txt"), found());
        assert_eq!(
            missing_key.error.as_deref(),
            Some("ConfigMap iaf-x/docs has no key \"z.txt\"")
        );
        let missing = config_map_content("iaf-x", "docs", None, Ok(None));
        assert_eq!(
            missing.error.as_deref(),
            Some("ConfigMap iaf-x/docs does not exist")
        );
    }

    #[test]
    fn a_re_embedding_is_a_condition_until_it_is_done() {
        let progress = ReembedProgress {
            embedding: iafactory_crds::knowledgebase::EmbeddingSpec {
                provider: "ollama".into(),
                model: "smollm2".into(),
                dimensions: 576,
            },
            done: 64,
            total: 100,
            error: None,
            started_at: Some("2026-12-06T01:00:00Z".into()),
        };
        let (status, condition) = reindexing(Some(&progress), &[]);
        let status = status.unwrap();
        assert_eq!((status.done, status.total), (64, 100));
        assert!(status.started_at.is_some());
        let (on, reason, message) = condition.unwrap();
        assert!(on);
        assert_eq!(reason, "Reembedding");
        assert!(
            message.contains("64 of 100 chunks again with ollama/smollm2 (576 dimensions)"),
            "{message}"
        );
        let blocked = ReembedProgress {
            error: Some("the embedding server is unreachable".into()),
            ..progress
        };
        let (status, condition) = reindexing(Some(&blocked), &[]);
        assert_eq!(
            status.unwrap().last_error.as_deref(),
            Some("the embedding server is unreachable")
        );
        assert_eq!(condition.unwrap().1, "ReembeddingBlocked");
        // Done: False if it was shown, absent if it never was.
        assert_eq!(reindexing(None, &[]), (None, None));
        let shown = Condition {
            type_: REINDEXING.into(),
            status: "True".into(),
            reason: "Reembedding".into(),
            message: String::new(),
            last_transition_time: crate::controller::now(),
            observed_generation: None,
        };
        let (status, condition) = reindexing(None, &[shown]);
        assert!(status.is_none());
        assert_eq!(condition.map(|c| (c.0, c.1)), Some((false, "Reembedded")));
    }

    #[test]
    fn a_failing_source_is_a_condition_that_names_it() {
        let records = [
            SourceRecord {
                id: "inline:A".into(),
                documents: 1,
                last_error: None,
            },
            SourceRecord {
                id: "url:http://1.2.3.4/x.md".into(),
                documents: 0,
                last_error: Some("http://1.2.3.4/x.md is refused: outside".into()),
            },
        ];
        let (sources, ready, reason, message) = sources_status(&records);
        assert_eq!(sources.len(), 2);
        assert!(!ready);
        assert_eq!(reason, "SourceFailed");
        assert!(
            message.contains("url:http://1.2.3.4/x.md: http://1.2.3.4/x.md is refused"),
            "{message}"
        );
        let (_, ready, _, message) = sources_status(&records[..1]);
        assert!(ready, "{message}");
    }
}

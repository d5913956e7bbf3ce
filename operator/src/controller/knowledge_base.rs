//! KnowledgeBase: checked against its Tenant, registered with the tenant's API, and
//! the API's counts mirrored into the status.

use std::sync::Arc;
use std::time::Duration;

use iafactory_crds::tenant_api::TenantApiError;
use iafactory_crds::{KnowledgeBase, KnowledgeBaseStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::registered::{self, owning_tenant, publish, waiting};
use super::{Context, RETRY, now, operator_token};
use crate::error::Result;
use crate::status::{ConditionSet, READY, invalid_conditions, is_ready};

pub const CONTROLLER: &str = "knowledgebase";
/// How often document and chunk counts are refreshed from the API.
const REFRESH: Duration = Duration::from_secs(60);

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
    let checked = iafactory_crds::plan::plan_knowledge_base(kb, &ctx.config)
        .map_err(|e| e.to_string())
        .and_then(|_| crate::admission::check_knowledge_base(kb, &tenant));
    if let Err(message) = checked {
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
    let registered = async {
        ctx.tenant_api
            .upsert_tenant(&tenant_name, &tenant.spec, &token)
            .await?;
        ctx.tenant_api
            .upsert_knowledge_base(&tenant_name, &name, &kb.spec, &token)
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
    let status = KnowledgeBaseStatus {
        documents: Some(record.documents),
        chunks: Some(record.chunks),
        last_ingestion: record
            .last_ingestion
            .and_then(|t| t.parse().ok())
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        api_id: Some(record.id),
        conditions: conditions.into_vec(),
        observed_generation: generation,
    };
    publish(ctx, kb, &status).await?;
    Ok(Action::requeue(REFRESH))
}

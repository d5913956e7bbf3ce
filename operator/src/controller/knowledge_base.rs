//! KnowledgeBase: checked against its Tenant, registered with the tenant's API, and
//! the API's counts mirrored into the status.

use std::sync::Arc;
use std::time::Duration;

use iafactory_crds::tenant_api::TenantApiError;
use iafactory_crds::{KnowledgeBase, KnowledgeBaseStatus, Tenant};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;

use super::{
    Context, RETRY, announce, measured, now, operator_token, patch_status, tenant_of_namespace,
};
use crate::error::Result;
use crate::status::{ConditionSet, READY, invalid_conditions, is_ready};

pub const CONTROLLER: &str = "knowledgebase";
pub const FINALIZER: &str = "iafactory.dz/unregister";
/// How often document and chunk counts are refreshed from the API.
const REFRESH: Duration = Duration::from_secs(60);

pub async fn reconcile(kb: Arc<KnowledgeBase>, ctx: Arc<Context>) -> Result<Action> {
    measured(CONTROLLER, &ctx.metrics, async {
        let namespace = kb.namespace().unwrap_or_default();
        let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), &namespace);
        finalizer(&api, FINALIZER, kb, |event| async {
            match event {
                Finalizer::Apply(kb) => apply(&kb, &ctx).await,
                Finalizer::Cleanup(kb) => cleanup(&kb, &ctx).await,
            }
        })
        .await
        .map_err(super::finalizer_error)
    })
    .await
}

/// The Tenant a namespaced resource belongs to, if it exists.
pub fn owning_tenant(ctx: &Context, namespace: &str) -> Option<Arc<Tenant>> {
    tenant_of_namespace(namespace).and_then(|name| ctx.tenants.get(&ObjectRef::new(name)))
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
    announce(ctx, kb, &previous.conditions, &status.conditions, READY).await;
    patch_status(
        ctx,
        &Api::<KnowledgeBase>::namespaced(ctx.client.clone(), &kb.namespace().unwrap_or_default()),
        kb,
        kb.status.as_ref(),
        &status,
    )
    .await?;
    Ok(Action::await_change())
}

fn waiting(
    reason: &str,
    message: &str,
    previous: &[Condition],
    generation: Option<i64>,
) -> Vec<Condition> {
    let stamp = now();
    let mut conditions = ConditionSet::new(previous, generation, &stamp);
    conditions.set(READY, false, reason, message);
    conditions.into_vec()
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
            announce(ctx, kb, &previous.conditions, &status.conditions, READY).await;
            patch_status(
                ctx,
                &Api::<KnowledgeBase>::namespaced(
                    ctx.client.clone(),
                    &kb.namespace().unwrap_or_default(),
                ),
                kb,
                kb.status.as_ref(),
                &status,
            )
            .await?;
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
    announce(ctx, kb, &previous.conditions, &status.conditions, READY).await;
    patch_status(
        ctx,
        &Api::<KnowledgeBase>::namespaced(ctx.client.clone(), &kb.namespace().unwrap_or_default()),
        kb,
        kb.status.as_ref(),
        &status,
    )
    .await?;
    Ok(Action::requeue(REFRESH))
}

async fn cleanup(kb: &KnowledgeBase, ctx: &Context) -> Result<Action> {
    let namespace = kb.namespace().unwrap_or_default();
    // With its Tenant gone, or its namespace going, there is no API left to tell.
    let Some(tenant) = owning_tenant(ctx, &namespace) else {
        return Ok(Action::await_change());
    };
    if tenant.metadata.deletion_timestamp.is_some()
        || super::namespace_terminating(ctx, &namespace)
        || kb.status.as_ref().and_then(|s| s.api_id.as_ref()).is_none()
    {
        return Ok(Action::await_change());
    }
    let token = operator_token(ctx, &namespace).await?;
    ctx.tenant_api
        .delete(
            &tenant.name_any(),
            "knowledge-bases",
            &kb.name_any(),
            &token,
        )
        .await?;
    Ok(Action::await_change())
}

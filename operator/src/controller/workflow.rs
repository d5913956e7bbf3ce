//! Workflow: its agent graph and providers checked against its Tenant, registered with
//! the tenant's API, and validity and last execution mirrored into the status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use iafactory_crds::tenant_api::TenantApiError;
use iafactory_crds::workflow::LastExecution;
use iafactory_crds::{Workflow, WorkflowStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::registered::{self, owning_tenant, publish, waiting};
use super::{Context, RETRY, now, operator_token};
use crate::error::Result;
use crate::status::{ConditionSet, READY, invalid_conditions, is_ready};

pub const CONTROLLER: &str = "workflow";
/// How often the last execution is refreshed from the API.
const REFRESH: Duration = Duration::from_secs(60);

pub async fn reconcile(workflow: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action> {
    registered::reconcile(CONTROLLER, workflow, ctx, |workflow, ctx| async move {
        apply(&workflow, &ctx).await
    })
    .await
}

async fn wait(
    ctx: &Context,
    workflow: &Workflow,
    previous: &WorkflowStatus,
    conditions: Vec<Condition>,
    valid_dag: Option<bool>,
) -> Result<Action> {
    let status = WorkflowStatus {
        conditions,
        observed_generation: workflow.metadata.generation,
        valid_dag: valid_dag.or(previous.valid_dag),
        agents: Some(i32::try_from(workflow.spec.agents.len()).unwrap_or(i32::MAX)),
        ..previous.clone()
    };
    publish(ctx, workflow, &status).await?;
    Ok(Action::await_change())
}

fn parse_time(text: Option<String>) -> Option<Time> {
    text.and_then(|t| t.parse().ok()).map(Time)
}

async fn apply(workflow: &Workflow, ctx: &Context) -> Result<Action> {
    let previous = workflow.status.clone().unwrap_or_default();
    let generation = workflow.metadata.generation;
    let namespace = workflow.namespace().unwrap_or_default();
    let name = workflow.name_any();
    let plan = match iafactory_crds::plan::plan_workflow(workflow, &ctx.config) {
        Ok(plan) => plan,
        Err(error) => {
            let conditions = invalid_conditions(
                "InvalidSpec",
                &error.to_string(),
                &previous.conditions,
                generation,
                &now(),
            );
            return wait(ctx, workflow, &previous, conditions, Some(false)).await;
        }
    };
    let Some(tenant) = owning_tenant(ctx, &namespace) else {
        let message =
            format!("no Tenant owns namespace {namespace}: Workflows live in iaf-<tenant>");
        return wait(
            ctx,
            workflow,
            &previous,
            waiting("TenantNotFound", &message, &previous.conditions, generation),
            Some(true),
        )
        .await;
    };
    let knowledge_bases: BTreeSet<String> = ctx
        .knowledge_bases
        .state()
        .iter()
        .filter(|kb| kb.namespace().as_deref() == Some(namespace.as_str()))
        .map(|kb| kb.name_any())
        .collect();
    if let Err(message) = crate::admission::check_workflow(workflow, &tenant, &knowledge_bases) {
        let conditions = invalid_conditions(
            "InvalidSpec",
            &message,
            &previous.conditions,
            generation,
            &now(),
        );
        return wait(ctx, workflow, &previous, conditions, Some(true)).await;
    }
    if !tenant
        .status
        .as_ref()
        .is_some_and(|s| is_ready(&s.conditions))
    {
        let message = format!("waiting for Tenant {} to be Ready", tenant.name_any());
        return wait(
            ctx,
            workflow,
            &previous,
            waiting("TenantNotReady", &message, &previous.conditions, generation),
            Some(true),
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
            .upsert_workflow(&tenant_name, &name, &plan, &token)
            .await
    }
    .await;
    let record = match registered {
        Ok(record) => record,
        Err(TenantApiError::Rejected { message, .. }) => {
            let message = format!("the tenant's API rejected it: {message}");
            let conditions = invalid_conditions(
                "Rejected",
                &message,
                &previous.conditions,
                generation,
                &now(),
            );
            return wait(ctx, workflow, &previous, conditions, None).await;
        }
        Err(error) => {
            let status = WorkflowStatus {
                conditions: waiting(
                    "ApiUnavailable",
                    &error.to_string(),
                    &previous.conditions,
                    generation,
                ),
                observed_generation: generation,
                ..previous.clone()
            };
            publish(ctx, workflow, &status).await?;
            return Ok(Action::requeue(RETRY));
        }
    };
    let stamp = now();
    let mut conditions = ConditionSet::new(&previous.conditions, generation, &stamp);
    conditions.set(
        READY,
        true,
        "Registered",
        format!("registered with the tenant's API, {} agents", record.agents),
    );
    let status = WorkflowStatus {
        valid_dag: Some(record.valid_dag),
        agents: Some(record.agents),
        last_execution: record.last_execution.map(|e| LastExecution {
            id: e.id,
            status: e.status,
            started_at: parse_time(e.started_at),
            finished_at: parse_time(e.finished_at),
            failed_agent: e.failed_agent,
        }),
        api_id: Some(record.id),
        conditions: conditions.into_vec(),
        observed_generation: generation,
    };
    publish(ctx, workflow, &status).await?;
    Ok(Action::requeue(REFRESH))
}

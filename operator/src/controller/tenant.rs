//! Tenant: a namespace with everything the tenant runs, and its retention on delete.

use std::sync::Arc;

use iafactory_crds::plan::{BACKUP_NAME, ComponentKind, NAMESPACE_PREFIX, TenantPlan};
use iafactory_crds::tenant::{Retention, TenantBackupStatus, TenantEndpoints};
use iafactory_crds::{Tenant, TenantStatus};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{Context, RESYNC, RETRY, announce, measured, now, patch_status};
use crate::apply::kind_key;
use crate::build::{build, operator_access, workload_kinds};
use crate::error::{Error, Result};
use crate::labels::{LABEL_RETAINED, TENANT_FINALIZER};
use crate::status::{
    JobObservation, READY, TenantObservation, WorkloadObservation, invalid_conditions, is_ready,
    tenant_conditions,
};

pub const CONTROLLER: &str = "tenant";

pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action> {
    measured(CONTROLLER, &ctx.metrics, async {
        let api: Api<Tenant> = Api::all(ctx.client.clone());
        finalizer(&api, TENANT_FINALIZER, tenant, |event| async {
            match event {
                Finalizer::Apply(tenant) => apply(&tenant, &ctx).await,
                Finalizer::Cleanup(tenant) => cleanup(&tenant, &ctx).await,
            }
        })
        .await
        .map_err(super::finalizer_error)
    })
    .await
}

/// What the cluster reports for the tenant's workloads, from the watch caches.
fn observe(plan: &TenantPlan, ctx: &Context) -> TenantObservation {
    let mut observation = TenantObservation::default();
    for component in &plan.components {
        let observed = if component.stateful {
            ctx.caches
                .stateful_sets
                .get(&ObjectRef::new(&component.name).within(&plan.namespace))
                .map(|s| WorkloadObservation::of_stateful_set(&s))
        } else {
            ctx.caches
                .deployments
                .get(&ObjectRef::new(&component.name).within(&plan.namespace))
                .map(|d| WorkloadObservation::of_deployment(&d))
        };
        if let Some(observed) = observed {
            observation
                .workloads
                .insert(component.name.clone(), observed);
        }
    }
    if let Some(preload) = &plan.model_preload
        && !matches!(
            preload.source,
            iafactory_crds::plan::ModelSourcePlan::Forbidden { .. }
        )
    {
        observation.model_preload = Some(
            ctx.caches
                .jobs
                .get(&ObjectRef::new(&preload.name).within(&plan.namespace))
                .map_or(JobObservation::Missing, |job| JobObservation::of_job(&job)),
        );
    }
    observation
}

fn endpoints(plan: &TenantPlan) -> TenantEndpoints {
    let api = plan.component(ComponentKind::Api).map(|api| {
        let port = api.ports.first().map_or(80, |p| p.port);
        format!("http://{}.{}.svc:{port}", api.name, plan.namespace)
    });
    let public = plan.ingress.as_ref().map(|ingress| {
        let scheme = match ingress.tls {
            iafactory_crds::plan::TlsPlan::None => "http",
            _ => "https",
        };
        format!("{scheme}://{}", ingress.host)
    });
    TenantEndpoints { api, public }
}

async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    ctx.caches.ready().await?;
    let previous = tenant.status.clone().unwrap_or_default();
    let generation = tenant.metadata.generation;
    let stamp = now();
    let plan = match iafactory_crds::plan(tenant, &ctx.config) {
        Ok(plan) => plan,
        Err(error) => {
            // A spec that cannot be planned waits for the user to change it: no retry.
            let conditions = invalid_conditions(
                "InvalidSpec",
                &error.to_string(),
                &previous.conditions,
                generation,
                &stamp,
            );
            let status = TenantStatus {
                conditions,
                observed_generation: generation,
                ..previous.clone()
            };
            record_conditions(ctx, tenant, &status.conditions);
            announce(ctx, tenant, &previous.conditions, &status.conditions, READY).await;
            patch_status(
                ctx,
                &Api::<Tenant>::all(ctx.client.clone()),
                tenant,
                tenant.status.as_ref(),
                &status,
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let owner = tenant
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Dependency("the Tenant has no uid yet".into()))?;
    let objects = build(&plan, &ctx.build_context(owner));
    let report = ctx.applier().apply_tenant(&objects, &plan.tenant).await?;
    if report.wrote() {
        tracing::info!(tenant = %plan.tenant, applied = ?report.applied, secrets = ?report.created_secrets, orphans = ?report.deleted_orphans, "applied");
    }
    let conditions = tenant_conditions(
        &plan,
        &observe(&plan, ctx),
        &previous.conditions,
        generation,
        &stamp,
    );
    let ready = is_ready(&conditions);
    let backup = match &plan.backup {
        Some(_) => Some(backup_status(ctx, &plan.namespace).await?),
        None => None,
    };
    let status = TenantStatus {
        conditions,
        observed_generation: generation,
        namespace: Some(plan.namespace.clone()),
        endpoints: Some(endpoints(&plan)),
        backup,
    };
    record_conditions(ctx, tenant, &status.conditions);
    announce(ctx, tenant, &previous.conditions, &status.conditions, READY).await;
    patch_status(
        ctx,
        &Api::<Tenant>::all(ctx.client.clone()),
        tenant,
        tenant.status.as_ref(),
        &status,
    )
    .await?;
    // Workload status changes arrive through the watches; the requeue is a safety net.
    Ok(Action::requeue(if ready || plan.suspended {
        RESYNC
    } else {
        RETRY
    }))
}

/// The backup CronJob's last run and last success, as the cluster reports them.
async fn backup_status(ctx: &Context, namespace: &str) -> Result<TenantBackupStatus> {
    let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), namespace);
    let cron_job = api
        .get_opt(BACKUP_NAME)
        .await
        .map_err(|e| Error::kube("reading", format!("CronJob/{BACKUP_NAME}"), e))?;
    let status = cron_job.and_then(|c| c.status).unwrap_or_default();
    Ok(TenantBackupStatus {
        last_successful_time: status.last_successful_time,
        last_schedule_time: status.last_schedule_time,
    })
}

fn record_conditions(
    ctx: &Context,
    tenant: &Tenant,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let pairs: Vec<(String, String)> = conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    ctx.metrics
        .tenant_status(&tenant.name_any(), &pairs, tenant.spec.suspended);
}

/// Applies the operator's RoleBinding in the tenant's namespace, if that namespace is
/// there and live: cleaning up writes in it through the tenant role, and a namespace
/// made by an operator version before the RoleBinding existed may lack it. A cached,
/// unchanged binding costs no request.
async fn ensure_access(tenant: &Tenant, ctx: &Context) -> Result<()> {
    let Ok(plan) = iafactory_crds::plan(tenant, &ctx.config) else {
        return Ok(());
    };
    let live = ctx
        .caches
        .namespaces
        .get(&ObjectRef::new(&plan.namespace))
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none());
    let Some(owner) = tenant.controller_owner_ref(&()).filter(|_| live) else {
        return Ok(());
    };
    // Only the binding: cleanup needs the write access, not the tenant's other objects.
    let access = operator_access(&plan, &ctx.build_context(owner));
    ctx.applier()
        .apply_child(&access, &mut Default::default())
        .await?;
    Ok(())
}

async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action> {
    ctx.caches.ready().await?;
    ensure_access(tenant, ctx).await?;
    let name = tenant.name_any();
    let known: Vec<String> = tenant
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().map(|c| c.type_.clone()))
        .collect();
    ctx.metrics.forget_tenant(&name, &known);
    let namespace = format!("{NAMESPACE_PREFIX}{name}");
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let (reason, note) = match tenant.spec.retention {
        Retention::Delete => {
            match namespaces
                .delete(&namespace, &DeleteParams::foreground())
                .await
            {
                Ok(_) => ctx.metrics.wrote("delete"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(Error::kube("deleting", format!("Namespace/{namespace}"), e)),
            }
            (
                "Deleted",
                format!("deleted namespace {namespace} with everything in it"),
            )
        }
        Retention::Retain => {
            retain(ctx, &name, &namespace).await?;
            (
                "Retained",
                format!(
                    "retention is Retain: workloads removed; namespace {namespace} is kept with its volumes and Secrets, labelled {LABEL_RETAINED}=true"
                ),
            )
        }
    };
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Cleanup".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &tenant.object_ref(&())).await {
        tracing::warn!(%error, "publishing the cleanup event failed");
    }
    Ok(Action::await_change())
}

/// Removes what runs, keeps what holds data, and lets the rest outlive the Tenant by
/// dropping its owner reference (garbage collection would take it otherwise).
async fn retain(ctx: &Context, tenant: &str, namespace: &str) -> Result<()> {
    let workloads: Vec<String> = workload_kinds().iter().map(kind_key).collect();
    for key in ctx.caches.owned.keys() {
        for (resource, name) in ctx.caches.owned_in(key, namespace, tenant) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), namespace, &resource);
            let described = format!("{}/{name}", resource.kind);
            let result = if workloads.contains(key) {
                api.delete(
                    &name,
                    &DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..DeleteParams::default()
                    },
                )
                .await
                .map(|_| ())
            } else {
                let unowned = serde_json::json!({ "metadata": { "ownerReferences": null } });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&unowned))
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => ctx.metrics.wrote("retain"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(Error::kube("retaining", described, e)),
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let label = serde_json::json!({ "metadata": { "labels": { LABEL_RETAINED: "true" } } });
    match namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&label))
        .await
    {
        Ok(_) => ctx.metrics.wrote("retain"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            return Err(Error::kube(
                "labelling",
                format!("Namespace/{namespace}"),
                e,
            ));
        }
    }
    Ok(())
}

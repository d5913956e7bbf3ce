//! The three controllers. Each reconcile runs the same steps: dereference, validate,
//! plan (pure, in `crds`), build (pure, in [`crate::build`]), apply, status.

pub mod knowledge_base;
pub mod registered;
pub mod tenant;
pub mod workflow;

use std::sync::Arc;
use std::time::{Duration, Instant};

use iafactory_crds::{KnowledgeBase, PlatformConfig, Tenant, Workflow};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apply::Caches;
use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::tenant_api::TenantApi;

/// Everything a reconcile needs, shared by the three controllers.
pub struct Context {
    pub client: Client,
    pub config: PlatformConfig,
    pub caches: Caches,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub tenant_api: TenantApi,
    /// Whether ServiceMonitors exist in this cluster (found at start-up).
    pub service_monitors: bool,
    /// The operator's ServiceAccount, bound to the tenant role in each tenant namespace.
    pub operator: crate::build::OperatorAccount,
    pub tenants: Store<Tenant>,
    pub knowledge_bases: Store<KnowledgeBase>,
    pub workflows: Store<Workflow>,
}

impl Context {
    /// What the builders need besides the plan: the owner and this cluster's facts.
    pub fn build_context(
        &self,
        owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> crate::build::BuildContext {
        crate::build::BuildContext {
            owner,
            service_monitors: self.service_monitors,
            operator: self.operator.clone(),
        }
    }

    pub fn applier(&self) -> crate::apply::Applier<'_> {
        crate::apply::Applier {
            client: &self.client,
            caches: &self.caches,
            metrics: &self.metrics,
        }
    }
}

/// How long a settled object waits before it is looked at again: a safety net
/// only, since every change that matters arrives through a watch.
pub const RESYNC: Duration = Duration::from_secs(600);
/// A resource waiting on something outside the cluster (the tenant's API).
pub const RETRY: Duration = Duration::from_secs(15);

pub fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// The reconcile's own error, or what went wrong around it (adding or removing the
/// finalizer).
pub fn finalizer_error(error: kube::runtime::finalizer::Error<Error>) -> Error {
    match error {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    }
}

/// Runs one reconcile and records its metrics.
pub async fn measured<F>(controller: &'static str, metrics: &Metrics, run: F) -> Result<Action>
where
    F: Future<Output = Result<Action>>,
{
    let started = Instant::now();
    let result = run.await;
    metrics.observe(
        controller,
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

/// Writes `.status` through the status subresource, unless it already says that.
pub async fn patch_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    desired: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(desired) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            "updating the status of",
            format!("{}/{}", K::kind(&()), object.name_any()),
            e,
        )
    })?;
    ctx.metrics.wrote("status");
    Ok(true)
}

/// Publishes an Event when a condition changes; never in a steady state, which
/// must write nothing.
pub async fn announce<K>(
    ctx: &Context,
    object: &K,
    previous: &[Condition],
    now: &[Condition],
    condition: &str,
) where
    K: Resource<DynamicType = ()>,
{
    let before = previous.iter().find(|c| c.type_ == condition);
    let Some(after) = now.iter().find(|c| c.type_ == condition) else {
        return;
    };
    if before.is_some_and(|b| b.status == after.status && b.reason == after.reason) {
        return;
    }
    let event = Event {
        type_: if after.status == "True" || after.reason == "Suspended" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: after.reason.clone(),
        note: Some(after.message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, "publishing an event failed");
    } else {
        ctx.metrics.wrote("event");
    }
}

/// The operator's token for the tenant's API, from the Secret it generated.
pub async fn operator_token(ctx: &Context, namespace: &str) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let name = iafactory_crds::plan::SECRET_OPERATOR_TOKEN;
    let secret = api
        .get(name)
        .await
        .map_err(|e| Error::kube("reading", format!("Secret/{name}"), e))?;
    secret
        .data
        .and_then(|d| d.get("token").cloned())
        .and_then(|v| String::from_utf8(v.0).ok())
        .ok_or_else(|| Error::Dependency(format!("Secret {namespace}/{name} has no key \"token\"")))
}

/// Whether a namespace is being deleted, from the watch cache.
pub fn namespace_terminating(ctx: &Context, namespace: &str) -> bool {
    ctx.caches
        .namespaces
        .get(&kube::runtime::reflector::ObjectRef::new(namespace))
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
}

/// The tenant a namespaced resource belongs to: `iaf-<tenant>`.
pub fn tenant_of_namespace(namespace: &str) -> Option<&str> {
    namespace
        .strip_prefix(iafactory_crds::plan::NAMESPACE_PREFIX)
        .filter(|t| !t.is_empty())
}

/// `metav1.Time` of now; the only clock the controllers read.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

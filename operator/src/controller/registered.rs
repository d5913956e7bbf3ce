//! What the KnowledgeBase and Workflow controllers share. Each is a namespaced resource
//! of the Tenant whose namespace it lives in, registered with that tenant's API, its
//! API record mirrored into its status, and deleted from the API by a finalizer.

use std::sync::Arc;

use iafactory_crds::{KnowledgeBase, Tenant, Workflow};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, announce, measured, now, operator_token, patch_status, tenant_of_namespace};
use crate::error::Result;
use crate::status::{ConditionSet, READY};

pub const FINALIZER: &str = "iafactory.dz/unregister";

/// A resource registered with its tenant's API.
pub trait Registered:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    type Status: Serialize + PartialEq;
    /// Its collection in the tenant's API: `/internal/tenants/{slug}/{COLLECTION}/{name}`.
    const COLLECTION: &'static str;
    fn current_status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    /// The API's ID of it, once registered.
    fn api_id(status: &Self::Status) -> Option<&str>;
}

/// Both resources keep the same status fields under the same names.
macro_rules! registered {
    ($kind:ty, $status:ty, $collection:literal) => {
        impl Registered for $kind {
            type Status = $status;
            const COLLECTION: &'static str = $collection;

            fn current_status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }

            fn conditions(status: &Self::Status) -> &[Condition] {
                &status.conditions
            }

            fn api_id(status: &Self::Status) -> Option<&str> {
                status.api_id.as_deref()
            }
        }
    };
}

registered!(
    KnowledgeBase,
    iafactory_crds::KnowledgeBaseStatus,
    "knowledge-bases"
);
registered!(Workflow, iafactory_crds::WorkflowStatus, "workflows");

/// One reconcile of a registered resource, measured: `apply` while it exists, then
/// [`unregister`] behind the finalizer.
pub async fn reconcile<K, F, Fut>(
    controller: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    apply: F,
) -> Result<Action>
where
    K: Registered + Serialize,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    measured(controller, &ctx.metrics, async {
        let namespace = object.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        finalizer(&api, FINALIZER, object, |event| async {
            match event {
                Finalizer::Apply(object) => apply(object, ctx.clone()).await,
                Finalizer::Cleanup(object) => unregister(object.as_ref(), &ctx).await,
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

/// Ready=False with `reason`: the resource waits on something.
pub fn waiting(
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

/// Writes `status` (when it differs) and announces a change of Ready.
pub async fn publish<K: Registered>(ctx: &Context, object: &K, status: &K::Status) -> Result<()> {
    let previous = object
        .current_status()
        .map(K::conditions)
        .unwrap_or_default();
    announce(ctx, object, previous, K::conditions(status), READY).await;
    let api = Api::<K>::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    patch_status(ctx, &api, object, object.current_status(), status).await?;
    Ok(())
}

/// The finalizer's cleanup: deletes the resource from its tenant's API.
pub async fn unregister<K: Registered>(object: &K, ctx: &Context) -> Result<Action> {
    let namespace = object.namespace().unwrap_or_default();
    // With its Tenant gone, or its namespace going, there is no API left to tell.
    let Some(tenant) = owning_tenant(ctx, &namespace) else {
        return Ok(Action::await_change());
    };
    if tenant.metadata.deletion_timestamp.is_some()
        || super::namespace_terminating(ctx, &namespace)
        || object.current_status().and_then(K::api_id).is_none()
    {
        return Ok(Action::await_change());
    }
    let token = operator_token(ctx, &namespace).await?;
    ctx.tenant_api
        .delete(
            &tenant.name_any(),
            K::COLLECTION,
            &object.name_any(),
            &token,
        )
        .await?;
    Ok(Action::await_change())
}

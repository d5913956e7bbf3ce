//! Apply: the thin I/O edge that makes the cluster match what `build` produced.
//!
//! Every write is a server-side apply with one field manager and `force`. What the
//! cluster already holds is known from watch caches, never from reads per reconcile:
//! an object whose applied-hash annotation equals the built one is skipped, so a
//! steady state costs no request at all.
//!
//! Secrets are the exception: the operator may not list or watch them (see
//! [`crate::rbac`]), so it creates each generated Secret by name and remembers, per
//! namespace uid, that it exists ([`SecretMemo`]). The memory is trusted for
//! [`SECRET_RECHECK`] only: a Secret deleted behind the operator's back is created
//! again at the next reconcile after that, at the latest on the periodic resync,
//! rather than at once on a watch event.
//!
//! Order matters for RBAC: the namespace first, then the RoleBinding that gives the
//! operator write access inside it, then everything else.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
    PostParams, PropagationPolicy,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use rand::TryRngCore;

use crate::build::{Child, SecretToCreate, TenantObjects};
use crate::error::{Error, Result};
use crate::labels::{ANNOTATION_APPLIED_HASH, FIELD_MANAGER, LABEL_TENANT};
use crate::metrics::Metrics;

pub type MetaStore = Store<PartialObjectMeta<DynamicObject>>;

/// `group/kind`: how caches of owned kinds are keyed.
pub fn kind_key(resource: &ApiResource) -> String {
    format!("{}/{}", resource.group, resource.kind)
}

/// The names of one kind's owned objects, per namespace, kept from the same watch
/// events as its store: a reconcile looks at its own namespace, not at every
/// tenant's objects (which would make each reconcile cost grow with the cluster).
#[derive(Clone, Default)]
pub struct NamespaceIndex(Arc<Mutex<IndexState>>);

#[derive(Default)]
struct IndexState {
    live: HashMap<String, BTreeSet<String>>,
    /// A relist in progress: it replaces `live` once complete, as the store does.
    relisting: Option<HashMap<String, BTreeSet<String>>>,
}

impl NamespaceIndex {
    pub fn observe<K: Resource>(&self, event: &watcher::Event<K>) {
        let mut state = self.0.lock().expect("the index lock is never poisoned");
        let key = |o: &K| {
            (
                o.meta().namespace.clone().unwrap_or_default(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Apply(o) => {
                let (namespace, name) = key(o);
                state.live.entry(namespace).or_default().insert(name);
            }
            watcher::Event::Delete(o) => {
                let (namespace, name) = key(o);
                if let Some(names) = state.live.get_mut(&namespace) {
                    names.remove(&name);
                }
            }
            watcher::Event::Init => state.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (namespace, name) = key(o);
                state
                    .relisting
                    .get_or_insert_with(HashMap::new)
                    .entry(namespace)
                    .or_default()
                    .insert(name);
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = state.relisting.take() {
                    state.live = relisted;
                }
            }
        }
    }

    pub fn names(&self, namespace: &str) -> Vec<String> {
        let state = self.0.lock().expect("the index lock is never poisoned");
        state
            .live
            .get(namespace)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One owned kind's cache: its metadata and its per-namespace index.
#[derive(Clone)]
pub struct OwnedCache {
    pub resource: ApiResource,
    pub store: MetaStore,
    pub index: NamespaceIndex,
}

/// How long the operator trusts its memory that a generated Secret exists: half the
/// resync period, so that every periodic resync looks again.
pub const SECRET_RECHECK: Duration = Duration::from_secs(crate::controller::RESYNC.as_secs() / 2);

/// The generated Secrets known to exist, by namespace uid and name, and since when.
/// Keyed by uid, so a namespace deleted and created again starts empty.
#[derive(Clone, Default)]
pub struct SecretMemo(Arc<Mutex<HashMap<(String, String), Instant>>>);

impl SecretMemo {
    fn knows(&self, namespace_uid: &str, name: &str) -> bool {
        let memo = self.0.lock().expect("the memo lock is never poisoned");
        memo.get(&(namespace_uid.to_owned(), name.to_owned()))
            .is_some_and(|since| since.elapsed() < SECRET_RECHECK)
    }

    fn remember(&self, namespace_uid: &str, name: &str) {
        let mut memo = self.0.lock().expect("the memo lock is never poisoned");
        memo.retain(|_, since| since.elapsed() < SECRET_RECHECK);
        memo.insert((namespace_uid.to_owned(), name.to_owned()), Instant::now());
    }
}

/// What the operator's watches know of the cluster.
#[derive(Clone)]
pub struct Caches {
    /// Every namespaced kind the operator owns, by [`kind_key`], metadata only.
    pub owned: Arc<HashMap<String, OwnedCache>>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Not a watch: Secrets are neither listed nor watched (see [`SecretMemo`]).
    pub secrets: SecretMemo,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub jobs: Store<Job>,
}

impl Caches {
    /// Waits until every watch has listed once: before that, "not in the cache"
    /// does not mean "not in the cluster".
    pub async fn ready(&self) -> Result<()> {
        let not_ready = |_| Error::Dependency("a watch cache stopped before it was ready".into());
        for cache in self.owned.values() {
            cache.store.wait_until_ready().await.map_err(not_ready)?;
        }
        self.namespaces
            .wait_until_ready()
            .await
            .map_err(not_ready)?;
        self.deployments
            .wait_until_ready()
            .await
            .map_err(not_ready)?;
        self.stateful_sets
            .wait_until_ready()
            .await
            .map_err(not_ready)?;
        self.jobs.wait_until_ready().await.map_err(not_ready)?;
        Ok(())
    }

    fn cached_hash(&self, child: &Child) -> Option<Option<String>> {
        let name = child.name();
        if !child.namespaced {
            let object = self.namespaces.get(&ObjectRef::new(&name))?;
            return Some(object.annotations().get(ANNOTATION_APPLIED_HASH).cloned());
        }
        let namespace = child.object.namespace().unwrap_or_default();
        let cache = self.owned.get(&kind_key(&child.resource))?;
        let object = cache
            .store
            .get(&ObjectRef::new_with(&name, cache.resource.clone()).within(&namespace))?;
        Some(object.annotations().get(ANNOTATION_APPLIED_HASH).cloned())
    }

    /// Owned objects of one kind in one tenant's namespace.
    pub fn owned_in(&self, key: &str, namespace: &str, tenant: &str) -> Vec<(ApiResource, String)> {
        let Some(cache) = self.owned.get(key) else {
            return Vec::new();
        };
        cache
            .index
            .names(namespace)
            .into_iter()
            .filter(|name| {
                cache
                    .store
                    .get(&ObjectRef::new_with(name, cache.resource.clone()).within(namespace))
                    .is_some_and(|o| {
                        o.labels().get(LABEL_TENANT).map(String::as_str) == Some(tenant)
                    })
            })
            .map(|name| (cache.resource.clone(), name))
            .collect()
    }
}

/// How one apply pass went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: Vec<String>,
    pub created_secrets: Vec<String>,
    pub deleted_orphans: Vec<String>,
}

impl ApplyReport {
    pub fn wrote(&self) -> bool {
        !(self.applied.is_empty()
            && self.created_secrets.is_empty()
            && self.deleted_orphans.is_empty())
    }
}

pub struct Applier<'a> {
    pub client: &'a Client,
    pub caches: &'a Caches,
    pub metrics: &'a Metrics,
}

impl Applier<'_> {
    fn api(&self, child: &Child) -> Api<DynamicObject> {
        match child.object.namespace() {
            Some(namespace) if child.namespaced => {
                Api::namespaced_with(self.client.clone(), &namespace, &child.resource)
            }
            _ => Api::all_with(self.client.clone(), &child.resource),
        }
    }

    /// Applies `child` unless the cache shows it as built; what the server answered,
    /// if it wrote.
    pub async fn apply_child(
        &self,
        child: &Child,
        report: &mut ApplyReport,
    ) -> Result<Option<DynamicObject>> {
        match self.caches.cached_hash(child) {
            Some(_) if child.create_only => return Ok(None),
            Some(Some(hash)) if hash == child.hash() => return Ok(None),
            _ => {}
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = self
            .api(child)
            .patch(&child.name(), &params, &Patch::Apply(&child.object))
            .await
            .map_err(|e| Error::kube("applying", child.describe(), e))?;
        self.metrics.wrote("apply");
        report.applied.push(child.describe());
        Ok(Some(applied))
    }

    /// Creates a generated Secret unless it is known to exist: by name, never by a
    /// list, and never overwriting one that is there.
    async fn ensure_secret(
        &self,
        secret: &SecretToCreate,
        namespace_uid: Option<&str>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let name = secret.template.name_any();
        let namespace = secret.template.namespace().unwrap_or_default();
        if namespace_uid.is_some_and(|uid| self.caches.secrets.knows(uid, &name)) {
            return Ok(());
        }
        let remember = || {
            if let Some(uid) = namespace_uid {
                self.caches.secrets.remember(uid, &name);
            }
        };
        let mut object = secret.template.clone();
        let mut data = std::collections::BTreeMap::new();
        for (key, bytes) in &secret.keys {
            let mut buffer = vec![0_u8; *bytes];
            rand::rngs::OsRng.try_fill_bytes(&mut buffer).map_err(|e| {
                Error::Dependency(format!("the system's random source failed: {e}"))
            })?;
            data.insert(
                key.clone(),
                k8s_openapi::ByteString(hex::encode(buffer).into_bytes()),
            );
        }
        object.data = Some(data);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        // Create, never apply: an existing Secret (say, from a retained namespace) is
        // kept as it is, whatever a stale cache says.
        match api
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                },
                &object,
            )
            .await
        {
            Ok(_) => {
                self.metrics.wrote("create");
                report.created_secrets.push(format!("Secret/{name}"));
                remember();
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                remember();
                Ok(())
            }
            Err(e) => Err(Error::kube("creating", format!("Secret/{name}"), e)),
        }
    }

    /// Applies everything, in order, then deletes what carries the tenant's labels
    /// but was not built this time.
    pub async fn apply_tenant(&self, objects: &TenantObjects, tenant: &str) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let namespace = objects.namespace.name();
        let applied = self.apply_child(&objects.namespace, &mut report).await?;
        let namespace_uid = applied.and_then(|ns| ns.metadata.uid).or_else(|| {
            self.caches
                .namespaces
                .get(&ObjectRef::new(&namespace))
                .and_then(|ns| ns.metadata.uid.clone())
        });
        // The operator's write access to the namespace, before any write in it.
        self.apply_child(&objects.access, &mut report).await?;
        for secret in &objects.secrets {
            self.ensure_secret(secret, namespace_uid.as_deref(), &mut report)
                .await?;
        }
        for child in &objects.children {
            self.apply_child(child, &mut report).await?;
        }
        let wanted: BTreeSet<(String, String)> = std::iter::once(&objects.access)
            .chain(&objects.children)
            .map(|c| (kind_key(&c.resource), c.name()))
            .collect();
        // Claims hold the data: the StatefulSet controller creates them with our labels
        // from the claim templates, and nothing but the namespace's deletion removes them.
        let claims = kind_key(&ApiResource::erase::<PersistentVolumeClaim>(&()));
        for key in self.caches.owned.keys().filter(|k| **k != claims) {
            for (resource, name) in self.caches.owned_in(key, &namespace, tenant) {
                if wanted.contains(&(key.clone(), name.clone())) {
                    continue;
                }
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &namespace, &resource);
                let described = format!("{}/{name}", resource.kind);
                match api
                    .delete(
                        &name,
                        &DeleteParams {
                            propagation_policy: Some(PropagationPolicy::Background),
                            ..DeleteParams::default()
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        self.metrics.wrote("delete");
                        report.deleted_orphans.push(described);
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(Error::kube("deleting the orphan", described, e)),
                }
            }
        }
        Ok(report)
    }
}

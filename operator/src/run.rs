//! Wiring: the start-up checks, the watches, the three controllers, leader election,
//! the operations server and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use futures::StreamExt;
use iafactory_crds::{KnowledgeBase, PlatformConfig, Tenant, Workflow};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::apply::{Caches, MetaStore, NamespaceIndex, OwnedCache, SecretMemo, kind_key};
use crate::build::{OperatorAccount, owned_kinds};
use crate::controller::{self, Context};
use crate::labels::{self, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::tenant_api::TenantApi;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the IAFactory CRDs are not installed ({missing}): install them with `kubectl apply -f crds/` or the Helm chart, then start the operator again"
    )]
    CrdsMissing { missing: String },
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serving operations on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election: {0}")]
    Lease(String),
}

/// Changes the log filter at run time, e.g. to `debug` while troubleshooting.
pub type LogFilterReload = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

pub struct Settings {
    pub config: PlatformConfig,
    pub metrics_addr: SocketAddr,
    pub tenant_api_url: String,
    pub tenant_api_timeout: Duration,
    pub leader_election: bool,
    /// The operator's own namespace: where its Lease lives, and its ServiceAccount.
    pub lease_namespace: String,
    /// The operator's ServiceAccount, which each tenant namespace's RoleBinding names.
    pub service_account: String,
    pub identity: String,
    pub concurrency: u16,
}

const CRDS: [&str; 3] = [
    "tenants.iafactory.dz",
    "knowledgebases.iafactory.dz",
    "workflows.iafactory.dz",
];

async fn check_crds(client: &Client) -> Result<bool, RunError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in CRDS {
        if api.get_opt(name).await?.is_none() {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(RunError::CrdsMissing {
            missing: missing.join(", "),
        });
    }
    Ok(api
        .get_opt("servicemonitors.monitoring.coreos.com")
        .await?
        .is_some())
}

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    reload: LogFilterReload,
}

async fn serve_metrics(
    State(ops): State<Ops>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn readyz(State(ops): State<Ops>) -> (StatusCode, &'static str) {
    if ops.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn set_log_filter(State(ops): State<Ops>, body: String) -> (StatusCode, String) {
    match (ops.reload)(body.trim()) {
        Ok(()) => (
            StatusCode::OK,
            format!("log filter set to {}\n", body.trim()),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

type Outcome<K> = Result<
    (ObjectRef<K>, kube::runtime::controller::Action),
    kube::runtime::controller::Error<crate::error::Error, watcher::Error>,
>;

fn log_outcome<K>(controller: &'static str, outcome: Outcome<K>)
where
    K: Resource,
    K::DynamicType: std::fmt::Debug + Clone + Eq + std::hash::Hash,
    ObjectRef<K>: std::fmt::Display,
{
    match outcome {
        Ok((object, _)) => tracing::debug!(controller, object = %object, "reconciled"),
        Err(kube::runtime::controller::Error::ReconcilerFailed(error, object)) => {
            tracing::warn!(controller, object = %object, %error, "reconcile failed");
        }
        Err(error) => tracing::warn!(controller, %error, "controller"),
    }
}

/// The tenant an owned object belongs to, as a reconcile request.
fn tenant_request<K: Resource>(object: &K) -> Option<ObjectRef<Tenant>> {
    labels::tenant_of(object.meta().labels.as_ref()).map(ObjectRef::new)
}

fn owned_config() -> watcher::Config {
    watcher::Config::default().labels(&labels::managed_selector())
}

pub async fn run(
    settings: Settings,
    reload: LogFilterReload,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let service_monitors = check_crds(&client).await?;
    tracing::info!(service_monitors, "the CRDs are installed");

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let ops = Ops {
        registry: Arc::new(registry),
        ready: ready.clone(),
        reload,
    };
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/log-filter", put(set_log_filter))
        .with_state(ops);
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .map_err(|source| RunError::Serve {
            addr: settings.metrics_addr,
            source,
        })?;
    tracing::info!(addr = %settings.metrics_addr, "serving /metrics, /healthz and /readyz");
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await
    });

    // Only the leader reconciles; a replica that loses the lease exits, to come back
    // as a follower, rather than keep writing beside the new leader.
    let mut lease = None;
    if settings.leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "iafactory-operator")
                .with_namespace(&settings.lease_namespace)
                .with_identity(&settings.identity)
                .with_field_manager(FIELD_MANAGER)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .map_err(|e| RunError::Lease(e.to_string()))?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(identity = %settings.identity, "waiting to become the leader");
        ready.store(true, Ordering::Relaxed);
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => changed.map_err(|_| RunError::Lease("the lease task stopped".into()))?,
                () = shutdown.cancelled() => {
                    drop(leader);
                    let _ = task.await;
                    return Ok(());
                }
            }
        }
        tracing::info!(identity = %settings.identity, "leading");
        lease = Some((leader, task));
    }

    let result = run_controllers(
        &settings,
        client,
        metrics,
        service_monitors,
        &ready,
        shutdown.clone(),
        lease.as_mut().map(|(leader, _)| leader),
    )
    .await;
    shutdown.cancel();
    if let Some((leader, task)) = lease {
        drop(leader);
        let _ = task.await;
    }
    let _ = server.await;
    result
}

async fn run_controllers(
    settings: &Settings,
    client: Client,
    metrics: Metrics,
    service_monitors: bool,
    ready: &AtomicBool,
    shutdown: CancellationToken,
    leader: Option<&mut tokio::sync::watch::Receiver<bool>>,
) -> Result<(), RunError> {
    let controller_config = ControllerConfig::default().concurrency(settings.concurrency);
    let mut tenants = Controller::new(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config.clone());

    let mut owned = HashMap::new();
    for resource in owned_kinds(service_monitors) {
        let writer =
            reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(resource.clone());
        let store: MetaStore = writer.as_reader();
        let index = NamespaceIndex::default();
        let indexing = index.clone();
        let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &resource);
        let events = watcher(api, owned_config())
            .default_backoff()
            .modify(|o| o.metadata.managed_fields = None)
            .inspect(move |event| {
                if let Ok(event) = event {
                    indexing.observe(event);
                }
            });
        let stream = reflector::reflector(writer, events).touched_objects();
        tenants = tenants.watches_stream_with(stream, |o| tenant_request(&o), resource.clone());
        owned.insert(
            kind_key(&resource),
            OwnedCache {
                resource,
                store,
                index,
            },
        );
    }
    // Workloads are cached for their status: what else they carry (managed fields, the
    // pod template) is dropped on arrival, which keeps memory flat with tenants.
    macro_rules! typed_cache {
        ($kind:ty, $strip:expr) => {{
            let (store, writer) = reflector::store::<$kind>();
            let api = Api::<$kind>::all(client.clone());
            let events = watcher(api, owned_config())
                .default_backoff()
                .modify($strip);
            let stream = reflector::reflector(writer, events).touched_objects();
            tenants = tenants.watches_stream(stream, |o| tenant_request(&o));
            store
        }};
    }
    let deployments: Store<Deployment> = typed_cache!(Deployment, |d: &mut Deployment| {
        d.metadata.managed_fields = None;
        if let Some(spec) = d.spec.as_mut() {
            spec.template = Default::default();
        }
    });
    let stateful_sets: Store<StatefulSet> = typed_cache!(StatefulSet, |s: &mut StatefulSet| {
        s.metadata.managed_fields = None;
        if let Some(spec) = s.spec.as_mut() {
            spec.template = Default::default();
            spec.volume_claim_templates = None;
        }
    });
    let jobs: Store<Job> = typed_cache!(Job, |j: &mut Job| {
        j.metadata.managed_fields = None;
        if let Some(spec) = j.spec.as_mut() {
            spec.template = Default::default();
        }
    });
    let namespaces: Store<PartialObjectMeta<Namespace>> =
        typed_cache!(PartialObjectMeta<Namespace>, |o: &mut PartialObjectMeta<
            Namespace,
        >| {
            o.metadata.managed_fields = None;
        });
    // No watch of Secrets: the operator may not list them (see rbac.rs); it creates
    // the ones it generates by name and remembers that they exist.

    let knowledge_bases = Controller::new(
        Api::<KnowledgeBase>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config.clone());
    let workflows = Controller::new(
        Api::<Workflow>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller_config);
    let tenant_store = tenants.store();
    let kb_store = knowledge_bases.store();
    let workflow_store = workflows.store();

    // A Tenant's change (say, it became Ready) is news for what lives in its namespace.
    let in_namespace_of = |store: Store<KnowledgeBase>| {
        move |tenant: Tenant| {
            let namespace = format!(
                "{}{}",
                iafactory_crds::plan::NAMESPACE_PREFIX,
                tenant.name_any()
            );
            store
                .state()
                .iter()
                .filter(|kb| kb.namespace().as_deref() == Some(namespace.as_str()))
                .map(|kb| ObjectRef::from_obj(kb.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let knowledge_bases = knowledge_bases.watches(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
        in_namespace_of(kb_store.clone()),
    );
    let workflows_of_tenant = {
        let store = workflow_store.clone();
        move |tenant: Tenant| {
            let namespace = format!(
                "{}{}",
                iafactory_crds::plan::NAMESPACE_PREFIX,
                tenant.name_any()
            );
            store
                .state()
                .iter()
                .filter(|w| w.namespace().as_deref() == Some(namespace.as_str()))
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let workflows_of_kb = {
        let store = workflow_store.clone();
        move |kb: KnowledgeBase| {
            let name = kb.name_any();
            store
                .state()
                .iter()
                .filter(|w| {
                    w.namespace() == kb.namespace()
                        && w.spec
                            .agents
                            .iter()
                            .any(|a| a.knowledge_base.as_deref() == Some(name.as_str()))
                })
                .map(|w| ObjectRef::from_obj(w.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let workflows = workflows
        .watches(
            Api::<Tenant>::all(client.clone()),
            watcher::Config::default(),
            workflows_of_tenant,
        )
        .watches(
            Api::<KnowledgeBase>::all(client.clone()),
            watcher::Config::default(),
            workflows_of_kb,
        );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        config: settings.config.clone(),
        caches: Caches {
            owned: Arc::new(owned),
            namespaces,
            secrets: SecretMemo::default(),
            deployments,
            stateful_sets,
            jobs,
        },
        metrics,
        recorder,
        tenant_api: TenantApi::new(settings.tenant_api_url.clone(), settings.tenant_api_timeout),
        operator: OperatorAccount {
            name: settings.service_account.clone(),
            namespace: settings.lease_namespace.clone(),
        },
        service_monitors,
        tenants: tenant_store,
        knowledge_bases: kb_store,
        workflows: workflow_store,
    });
    ready.store(true, Ordering::Relaxed);

    let tenants = tenants
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            controller::tenant::reconcile,
            controller::error_policy,
            ctx.clone(),
        )
        .for_each(|outcome| async move { log_outcome(controller::tenant::CONTROLLER, outcome) });
    let knowledge_bases = knowledge_bases
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            controller::knowledge_base::reconcile,
            controller::error_policy,
            ctx.clone(),
        )
        .for_each(
            |outcome| async move { log_outcome(controller::knowledge_base::CONTROLLER, outcome) },
        );
    let workflows = workflows
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            controller::workflow::reconcile,
            controller::error_policy,
            ctx.clone(),
        )
        .for_each(|outcome| async move { log_outcome(controller::workflow::CONTROLLER, outcome) });
    let controllers = futures::future::join3(tenants, knowledge_bases, workflows);
    match leader {
        Some(leader) => {
            let lost = async {
                while leader.changed().await.is_ok() {
                    if !*leader.borrow() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = controllers => Ok(()),
                () = lost => {
                    shutdown.cancel();
                    Err(RunError::Lease("lost the lease to another replica; exiting to rejoin as a follower".into()))
                }
            }
        }
        None => {
            controllers.await;
            Ok(())
        }
    }
}

//! An in-memory Kubernetes API server double for tests, faithful to the protocol.
//!
//! [`TestServer::start`] serves plain HTTP on `127.0.0.1` (a random port unless one is
//! given), writes a kubeconfig for it, and returns a [`TestServer`] handle that gives a
//! [`kube::Client`], the stored objects, per-verb request counters and test hooks. The
//! `kube-testserver` binary wraps the same server for `kubectl` and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, Patch, PatchParams};
//! use kube_testserver::{Options, TestServer};
//!
//! let server = TestServer::start(Options::default()).await?;
//! let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
//! let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "c"}, "data": {"k": "v"}});
//! api.patch("c", &PatchParams::apply("op"), &Patch::Apply(&cm)).await?;
//! server.reset_counts();
//! api.patch("c", &PatchParams::apply("op"), &Patch::Apply(&cm)).await?; // a "reconcile"
//! assert_eq!(server.counts().patch, 1);
//! assert!(server.get("", "configmaps", "default", "c").is_some());
//! // `kubectl --kubeconfig` works too:
//! println!("{}", server.kubeconfig_path().display());
//! # Ok(())
//! # }
//! ```
//!
//! # What it implements
//! - **Discovery:** `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>` and
//!   `/apis/<group>/<version>` for the built-in kinds in [`resources`] and for every
//!   CustomResourceDefinition created through the API (served versions, scope, short names,
//!   `status` subresource). Deleting a CRD deletes its objects and unregisters it.
//! - **CRUD:** get, list (label selectors with `=`, `==`, `!=`, `in`, `notin`, exists and
//!   `!`; field selectors with `=`, `==` and `!=` on any dotted path such as `metadata.name`;
//!   `limit`/`continue`), create (with `generateName`), update, delete, deletecollection, and
//!   patch as JSON patch, merge patch, strategic merge patch (approximated, see below) and
//!   server-side apply. `dryRun=All` is honoured.
//! - **Server-side apply:** `managedFields` per manager (`Apply` and `Update` operations, per
//!   subresource), `force`, 409 conflicts naming the other manager and the field when a
//!   field it owns would get a different value, and removal of fields a manager applied
//!   before and no longer applies (unless another manager still owns them), down to items of
//!   associative lists (containers by name, CRD `map` lists). Updates, patches and creates
//!   record the writer as owner of the fields they changed.
//! - **Metadata:** one monotonic `resourceVersion` across the store; a stale
//!   `resourceVersion` on update or patch gets 409; `uid`, `creationTimestamp`;
//!   `generation` bumps only when something other than metadata and status changes (and
//!   when deletion starts); no-op writes change nothing, not even the `resourceVersion`.
//! - **Status subresource** for Deployments, StatefulSets, Jobs, CronJobs, Services, PVCs,
//!   Namespaces, Pods, ResourceQuotas, PDBs, Ingresses, CRDs, and custom resources that
//!   declare it: `/status` writes only status, main-resource writes keep the stored status.
//!   Deployments and StatefulSets also serve `/scale` (`autoscaling/v1` Scale) for
//!   `kubectl scale`.
//! - **Admission and defaults:** namespaced writes need an existing namespace (404) that is
//!   not terminating (403); Secret `stringData` is folded into `data`; Services get a
//!   cluster IP and port defaults; `replicas` defaults to 1; Job completions, parallelism
//!   and backoffLimit defaults; CRDs get `Established` and `NamesAccepted` conditions at once.
//! - **CRD schemas** ([`schema`]): custom resources get the `default`s of their version's
//!   schema, unknown fields are pruned (unless `x-kubernetes-preserve-unknown-fields`), and
//!   types, `nullable`, `required`, `enum`, bounds, lengths, `pattern`s and item counts are
//!   validated (422 Invalid, one cause per field).
//! - **Watch:** `watch=true|1` with `resourceVersion`, `allowWatchBookmarks` (periodic
//!   BOOKMARKs), `timeoutSeconds`, label and field selectors, and `sendInitialEvents` (with
//!   the `k8s.io/initial-events-end` bookmark). Objects that start or stop matching a
//!   selector are sent as ADDED or DELETED. A bounded event window
//!   ([`Options::history_window`]); an older `resourceVersion`, or a watcher that falls
//!   behind (more than [`store::WATCH_BUFFER`] events pending), gets an ERROR event with a
//!   410 `Expired` Status. Events are filtered per watch when they are stored, so a write
//!   only wakes the watches that will send it.
//! - **Deletion:** finalizers (a delete sets `deletionTimestamp` and the object stays until
//!   its finalizers are gone, by update, patch or apply); `propagationPolicy` Background,
//!   Foreground (the `foregroundDeletion` finalizer) and Orphan (`orphan` finalizer, or
//!   `orphanDependents`); a background garbage collector deletes objects whose owners are
//!   all gone; deleting a Namespace marks it Terminating, deletes its contents, and removes
//!   it once they are gone. Delete preconditions (`uid`, `resourceVersion`) are checked.
//! - **Errors** are `Status` objects: NotFound 404, AlreadyExists 409, Conflict 409,
//!   Invalid 422, BadRequest 400, Forbidden 403, MethodNotAllowed 405, Expired 410,
//!   UnsupportedMediaType 415.
//! - **Simulated node:** Deployments, StatefulSets and Jobs get the status their
//!   controllers would write: at once a "progressing" status (a rolling update of a ready
//!   workload stays Available with its previous ready replicas), and after
//!   [`Options::ready_delay`] ready replicas and Available conditions (Deployments), ready
//!   replicas and revisions (StatefulSets), or `succeeded` and `Complete` (Jobs).
//!   [`TestServer::set_unready`] keeps a workload progressing but never ready;
//!   [`TestServer::set_failing`] makes it degrade (`ProgressDeadlineExceeded`, or
//!   a `Failed` Job).
//! - **Test hooks:** [`TestServer::get`] and [`TestServer::list`] read the store,
//!   [`TestServer::counts`] and [`TestServer::reset_counts`] count requests per verb,
//!   [`TestServer::requests`] lists every resource request in order (verb, group,
//!   resource, namespace, name, status code), and
//!   [`TestServer::compact`] and [`TestServer::close_watches`] force watchers to relist.
//!
//! # What it does not implement
//! - Authentication, authorization, TLS, and protobuf and CBOR request bodies (415): JSON
//!   and YAML only. `kubectl create namespace|configmap|secret ...` (the typed generators)
//!   send protobuf, so they fail; `kubectl create -f` and `kubectl apply -f` send JSON and work.
//! - Aggregated discovery (clients fall back to the legacy endpoints). OpenAPI v2 answers
//!   404; OpenAPI v3 serves stub documents that only list PATCH operations and their query
//!   parameters, so that kubectl sees the server validates fields itself and skips its
//!   client-side schema validation. `kubectl explain` does not work. `fieldValidation` is
//!   accepted and ignored: unknown fields are kept, never reported.
//! - Table output: `kubectl get` falls back to its client-side columns.
//! - CEL rules (`x-kubernetes-validations`), `format`s, list-type uniqueness and
//!   conversion webhooks; every version of a custom resource is stored and served as is,
//!   only `apiVersion` changes. Built-in kinds are neither pruned nor validated beyond names
//!   and namespaces.
//! - Strategic merge patch is merge patch plus element-wise merging of the usual keyed
//!   lists (containers, volumes and env by name, volume mounts by path, conditions by type,
//!   owner references by uid), union of finalizers, and the `$patch`, `$setElementOrder`
//!   and `$deleteFromPrimitiveList` directives.
//! - Server-side apply tracks associative lists item by item only for CRD lists with
//!   `x-kubernetes-list-type: map`, owner references (by uid), and the built-in lists keyed
//!   by one field: containers, init and ephemeral containers, volumes, env and image pull
//!   secrets (by name), volume mounts (by mount path) and conditions (by type). Other lists,
//!   including container and Service ports and `set` lists, are atomic. `fieldsV1` records
//!   leaves only (no `.` entries for owned maps), and apply does not reorder list items.
//! - `resourceVersion` and `resourceVersionMatch` on lists are ignored (lists are always
//!   current); continue tokens never expire.
//! - `core/v1` Events and `events.k8s.io/v1` Events are stored separately.
//! - No pods, ReplicaSets or controllers beyond the simulated node's status writes; no
//!   graceful deletion periods; no admission webhooks, quotas or limit ranges enforced.

#![forbid(unsafe_code)]

pub mod error;
pub mod fields;
pub mod gc;
pub mod node;
pub mod ops;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use server::{RequestCounts, RequestRecord};

use crate::node::Failing;
use crate::resources::Registry;
use crate::server::{Counters, Shared};
use crate::store::{ObjectKey, Store};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// How long a workload's spec must stand before the simulated node reports it ready.
    pub ready_delay: Duration,
    /// Where to write the kubeconfig; a temporary file when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// How many events the watch window keeps.
    pub history_window: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 0,
            ready_delay: Duration::from_millis(200),
            kubeconfig: None,
            history_window: 10_000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("writing the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running server. Dropping it stops the server.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    failing: Failing,
    node_wake: Arc<Notify>,
    kubeconfig: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kubeconfig for a server URL.
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-testserver
  cluster:
    server: {url}
contexts:
- name: kube-testserver
  context:
    cluster: kube-testserver
    user: kube-testserver
    namespace: default
current-context: kube-testserver
users:
- name: kube-testserver
  user: {{}}
preferences: {{}}
"
    )
}

fn seed_namespaces(store: &mut Store) {
    let info = store
        .registry
        .lookup("", "v1", "namespaces")
        .cloned()
        .expect("namespaces are built in");
    let opts = ops::WriteOpts {
        default_manager: "kube-apiserver".into(),
        ..Default::default()
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let _ = ops::create(
            store,
            &info,
            "v1",
            None,
            serde_json::json!({"metadata": {"name": ns}}),
            &opts,
        );
    }
}

impl TestServer {
    /// Starts a server. Must be called inside a Tokio runtime.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
            .await
            .map_err(|source| StartError::Bind {
                port: options.port,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            port: options.port,
            source,
        })?;
        let gc_wake = Arc::new(Notify::new());
        let node_wake = Arc::new(Notify::new());
        let mut store = Store::new(Registry::builtin(), options.history_window);
        seed_namespaces(&mut store);
        store.wake = vec![gc_wake.clone(), node_wake.clone()];
        let store = Arc::new(Mutex::new(store));
        let (close_watches, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: store.clone(),
            counters: Counters::default(),
            requests: Default::default(),
            bookmark_interval: options.bookmark_interval,
            close_watches,
        });
        let (kubeconfig, tempdir) = match options.kubeconfig {
            Some(p) => (p, None),
            None => {
                let dir = tempfile::tempdir().map_err(|source| StartError::Kubeconfig {
                    path: std::env::temp_dir(),
                    source,
                })?;
                (dir.path().join("kubeconfig"), Some(dir))
            }
        };
        let url = format!("http://{addr}");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url)).map_err(|source| {
            StartError::Kubeconfig {
                path: kubeconfig.clone(),
                source,
            }
        })?;
        let failing: Failing = Arc::default();
        let app = server::app(shared.clone());
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "kube-testserver stopped");
                }
            }),
            tokio::spawn(gc::run(store.clone(), gc_wake)),
            tokio::spawn(node::run(
                store,
                node_wake.clone(),
                node::Node::new(options.ready_delay, failing.clone()),
            )),
        ];
        Ok(Self {
            addr,
            shared,
            failing,
            node_wake,
            kubeconfig,
            _tempdir: tempdir,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig file written for this server.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A client for this server, with `default` as its namespace.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("the server URL is a valid URI");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("a plain-HTTP client needs no TLS")
    }

    /// A stored object: `group` is empty for the core group, `resource` is the plural,
    /// `namespace` is empty for cluster-scoped objects.
    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjectKey::new((group.into(), resource.into()), namespace, name);
        self.shared.lock().get(&key).cloned()
    }

    /// The stored objects of a type, in one namespace or all.
    pub fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let gr = (group.to_string(), resource.to_string());
        self.shared
            .lock()
            .list(&gr, namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The store's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().current_rv()
    }

    /// Requests served per verb since the start or the last [`reset_counts`](Self::reset_counts).
    pub fn counts(&self) -> RequestCounts {
        self.shared.counters.snapshot()
    }

    pub fn reset_counts(&self) {
        self.shared.counters.reset();
    }

    /// Every request on a resource path since the start, in the order served: verb,
    /// group, resource, namespace, name and the status code answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes the workload (Deployment, StatefulSet or Job) `namespace/name` fail (a
    /// Deployment's progress deadline is exceeded, a Job fails), or heal.
    pub fn set_failing(&self, namespace: &str, name: &str, failing: bool) {
        self.set_health(namespace, name, failing.then_some(node::Health::Failing));
    }

    /// Keeps the workload `namespace/name` from becoming ready (it stays progressing and
    /// unavailable), or lets it.
    pub fn set_unready(&self, namespace: &str, name: &str, unready: bool) {
        self.set_health(namespace, name, unready.then_some(node::Health::Unready));
    }

    fn set_health(&self, namespace: &str, name: &str, health: Option<node::Health>) {
        {
            let mut map = self.failing.lock().unwrap_or_else(|e| e.into_inner());
            let key = (namespace.to_string(), name.to_string());
            match health {
                Some(h) => {
                    map.insert(key, h);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        self.node_wake.notify_one();
    }

    /// Forgets the watch event window, as an etcd compaction does: watches that resume
    /// from an older resourceVersion get 410 Gone.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Ends every open watch, as an API server restart does.
    pub fn close_watches(&self) {
        self.shared.close_watches.send_modify(|n| *n += 1);
    }
}

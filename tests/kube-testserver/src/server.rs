//! The HTTP edge: routing of API paths, query parameters, watches and request counters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::watch;

use crate::error::{ApiError, Result};
use crate::ops::{self, DeleteOpts, Deleted, PatchKind, Propagation, Sub, WriteOpts};
use crate::resources::{Registry, ResourceInfo};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{Event, EventKind, ObjectKey, Store, Subscription, rv_of};

/// Requests served per verb, since the start or the last reset.
#[derive(Debug, Default)]
pub struct Counters {
    pub get: AtomicU64,
    pub list: AtomicU64,
    pub watch: AtomicU64,
    pub create: AtomicU64,
    pub update: AtomicU64,
    pub patch: AtomicU64,
    pub delete: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    pub get: u64,
    pub list: u64,
    pub watch: u64,
    pub create: u64,
    pub update: u64,
    pub patch: u64,
    pub delete: u64,
}

impl RequestCounts {
    /// Creates, updates, patches and deletes.
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.patch + self.delete
    }

    /// Gets, lists and watches.
    pub fn reads(&self) -> u64 {
        self.get + self.list + self.watch
    }
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 7] {
        [
            &self.get,
            &self.list,
            &self.watch,
            &self.create,
            &self.update,
            &self.patch,
            &self.delete,
        ]
    }

    pub fn snapshot(&self) -> RequestCounts {
        let [get, list, watch, create, update, patch, delete] =
            self.all().map(|c| c.load(Ordering::Relaxed));
        RequestCounts {
            get,
            list,
            watch,
            create,
            update,
            patch,
            delete,
        }
    }

    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// One request on a resource path, as [`crate::TestServer::requests`] reports it, in the
/// order the store served them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`
    /// or `deletecollection`.
    pub verb: &'static str,
    /// The API group, empty for the core group.
    pub group: String,
    /// The plural, with `/status`, `/scale` or `/finalize` for a subresource.
    pub resource: String,
    /// `None` for a cluster-scoped object, or a request across every namespace.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The HTTP status answered (200 for a watch that started).
    pub code: u16,
}

/// What every request handler shares.
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub counters: Counters,
    /// Every resource request served, in order.
    pub requests: Mutex<Vec<RequestRecord>>,
    pub bookmark_interval: Duration,
    /// Bumped to end every open watch (a test hook, like an API server restart).
    pub close_watches: watch::Sender<u64>,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// The router: every path goes through one dispatcher, as API paths are not a fixed set.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).with_state(shared)
}

type Params = HashMap<String, String>;

#[tracing::instrument(skip_all, fields(method = %method, path = %uri.path()))]
async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params: Params = Query::try_from_uri(&uri)
        .map(|Query(p)| p)
        .unwrap_or_default();
    match route(&shared, &method, &uri, &headers, &params, &body) {
        Ok(Routed::Response(r)) => r,
        Ok(Routed::Watch(w)) => watch_response(&shared, *w),
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            e.into_response()
        }
    }
}

enum Routed {
    Response(Response),
    Watch(Box<WatchRequest>),
}

fn ok(code: StatusCode, v: &Value) -> Result<Routed> {
    Ok(Routed::Response(json_response(code, v)))
}

fn route(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    params: &Params,
    body: &Bytes,
) -> Result<Routed> {
    let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["version"] => ok(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0+kube-testserver",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        ["healthz"] | ["readyz"] | ["livez"] => {
            Ok(Routed::Response((StatusCode::OK, "ok").into_response()))
        }
        ["api"] => ok(
            StatusCode::OK,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        ["apis"] => {
            let groups: Vec<Value> = shared
                .lock()
                .registry
                .groups()
                .into_iter()
                .map(|(g, versions)| {
                    let vs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
                })
                .collect();
            ok(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            )
        }
        ["apis", group] => {
            let found = shared
                .lock()
                .registry
                .groups()
                .into_iter()
                .find(|(g, _)| g == group);
            let (g, versions) = found.ok_or_else(ApiError::no_route)?;
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            ok(
                StatusCode::OK,
                &json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": vs,
                    "preferredVersion": vs[0]}),
            )
        }
        ["openapi", "v3"] => ok(StatusCode::OK, &openapi_index(&shared.lock().registry)),
        ["openapi", "v3", "api", version] => openapi_doc(shared, "", version),
        ["openapi", "v3", "apis", group, version] => openapi_doc(shared, group, version),
        ["api", version] => discovery(shared, "", version),
        ["apis", group, version] => discovery(shared, group, version),
        ["api", version, rest @ ..] => {
            resource_request(shared, method, "", version, rest, headers, params, body)
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, method, group, version, rest, headers, params, body)
        }
        _ => Err(ApiError::no_route()),
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI v3 index. The documents only describe PATCH operations and their query
/// parameters, enough for kubectl to see that the server validates fields itself.
fn openapi_index(registry: &Registry) -> Value {
    use std::hash::{Hash as _, Hasher as _};
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".to_string())];
    for (g, versions) in registry.groups() {
        for v in versions {
            gvs.push((g.clone(), v));
        }
    }
    let mut paths = serde_json::Map::new();
    for (g, v) in gvs {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        registry
            .resource_list(&g, &v)
            .map(|l| l.to_string())
            .hash(&mut h);
        let path = gv_path(&g, &v);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", h.finish())}),
        );
    }
    json!({"paths": paths})
}

fn openapi_doc(shared: &Shared, group: &str, version: &str) -> Result<Routed> {
    let store = shared.lock();
    let list = store
        .registry
        .resource_list(group, version)
        .ok_or_else(ApiError::no_route)?;
    let mut paths = serde_json::Map::new();
    let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    for r in list["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        if name.contains('/') {
            continue;
        }
        let ns = if r["namespaced"] == json!(true) {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        paths.insert(
            format!("/{}{ns}/{name}/{{name}}", gv_path(group, version)),
            json!({"patch": {
                "operationId": format!("patch{}", r["kind"].as_str().unwrap_or_default()),
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r["kind"]},
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    ok(
        StatusCode::OK,
        &json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": {}}}),
    )
}

fn discovery(shared: &Shared, group: &str, version: &str) -> Result<Routed> {
    let list = shared
        .lock()
        .registry
        .resource_list(group, version)
        .ok_or_else(ApiError::no_route)?;
    ok(StatusCode::OK, &list)
}

/// A resource path, resolved: `[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]`.
struct Target {
    info: ResourceInfo,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Sub,
}

fn resolve(store: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target> {
    let lookup = |plural: &str| store.registry.lookup(group, version, plural).cloned();
    let (namespace, info, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if lookup(plural).is_some_and(|i| i.namespaced) => {
            (Some((*ns).to_string()), lookup(plural), tail)
        }
        [plural, tail @ ..] => (None, lookup(plural), tail),
        [] => return Err(ApiError::no_route()),
    };
    let info = info.ok_or_else(ApiError::no_route)?;
    let (name, sub) = match tail {
        [] => (None, Sub::Main),
        [name] => (Some((*name).to_string()), Sub::Main),
        [name, "status"] if info.status => (Some((*name).to_string()), Sub::Status),
        [name, "scale"] if info.group == "apps" => (Some((*name).to_string()), Sub::Scale),
        [name, "finalize"] if info.plural == "namespaces" => {
            (Some((*name).to_string()), Sub::Finalize)
        }
        _ => return Err(ApiError::no_route()),
    };
    Ok(Target {
        info,
        version: version.to_string(),
        namespace,
        name,
        sub,
    })
}

fn flag(params: &Params, key: &str) -> bool {
    params
        .get(key)
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty())
}

fn selectors(params: &Params) -> Result<Selectors> {
    Ok(Selectors {
        labels: LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(params.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn write_opts(params: &Params, headers: &HeaderMap) -> WriteOpts {
    let agent = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    WriteOpts {
        field_manager: params.get("fieldManager").cloned(),
        default_manager: agent.to_string(),
        force: flag(params, "force"),
        dry_run: params.get("dryRun").is_some_and(|v| v == "All"),
    }
}

#[allow(clippy::too_many_arguments)]
fn resource_request(
    shared: &Shared,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    headers: &HeaderMap,
    params: &Params,
    body: &Bytes,
) -> Result<Routed> {
    let mut store = shared.lock();
    let t = resolve(&store, group, version, rest)?;
    let verb = match (method, t.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if flag(params, "watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    };
    let resource = match t.sub {
        Sub::Main => t.info.plural.clone(),
        Sub::Status => format!("{}/status", t.info.plural),
        Sub::Scale => format!("{}/scale", t.info.plural),
        Sub::Finalize => format!("{}/finalize", t.info.plural),
    };
    let result = serve_resource(
        shared, &mut store, &t, method, version, headers, params, body,
    );
    let code = match &result {
        Ok(Routed::Response(r)) => r.status().as_u16(),
        Ok(Routed::Watch(_)) => 200,
        Err(e) => e.code,
    };
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(RequestRecord {
            verb,
            group: t.info.group.clone(),
            resource,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            code,
        });
    result
}

#[allow(clippy::too_many_arguments)]
fn serve_resource(
    shared: &Shared,
    store: &mut Store,
    t: &Target,
    method: &Method,
    version: &str,
    headers: &HeaderMap,
    params: &Params,
    body: &Bytes,
) -> Result<Routed> {
    let info = &t.info;
    if t.namespace.is_some() && !info.namespaced {
        return Err(ApiError::no_route());
    }
    let ns = t.namespace.as_deref();
    let c = &shared.counters;
    let count = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
    let present = |v: Value| ops::present(info, &t.version, v);
    let opts = write_opts(params, headers);
    if matches!(*method, Method::POST | Method::PUT) {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        if ct.contains("protobuf") || ct.contains("cbor") {
            return Err(ApiError::unsupported_media_type(ct));
        }
    }
    let needs_ns = |name: &str| -> Result<()> {
        if info.namespaced && ns.is_none() {
            return Err(ApiError::not_found(info.subject(name)));
        }
        Ok(())
    };
    match (method, t.name.as_deref()) {
        (&Method::GET, Some(name)) if t.sub == Sub::Scale => {
            count(&c.get);
            ok(
                StatusCode::OK,
                &ops::scale_of(&ops::get(store, info, ns, name)?),
            )
        }
        (&Method::PUT | &Method::PATCH, Some(name)) if t.sub == Sub::Scale => {
            let kind = if *method == Method::PUT {
                count(&c.update);
                None
            } else {
                count(&c.patch);
                let ct = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                Some(
                    PatchKind::from_content_type(ct)
                        .ok_or_else(|| ApiError::unsupported_media_type(ct))?,
                )
            };
            let scale = ops::write_scale(store, info, version, ns, name, kind, body, &opts)?;
            ok(StatusCode::OK, &scale)
        }
        (&Method::GET, Some(name)) => {
            count(&c.get);
            needs_ns(name)?;
            ok(StatusCode::OK, &present(ops::get(store, info, ns, name)?))
        }
        (&Method::GET, None) if flag(params, "watch") => {
            count(&c.watch);
            let w = watch_request(store, t, params)?;
            Ok(Routed::Watch(Box::new(w)))
        }
        (&Method::GET, None) => {
            count(&c.list);
            ok(StatusCode::OK, &list(store, t, params)?)
        }
        (&Method::POST, None) => {
            count(&c.create);
            let obj = ops::parse_body(body, false)?;
            let created = ops::create(store, info, version, ns, obj, &opts)?;
            ok(StatusCode::CREATED, &present(created))
        }
        (&Method::PUT, Some(name)) => {
            count(&c.update);
            needs_ns(name)?;
            let obj = ops::parse_body(body, false)?;
            let updated = ops::update(store, info, version, ns, name, obj, t.sub, &opts)?;
            ok(StatusCode::OK, &present(updated))
        }
        (&Method::PATCH, Some(name)) => {
            count(&c.patch);
            needs_ns(name)?;
            let ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(ct)
                .ok_or_else(|| ApiError::unsupported_media_type(ct))?;
            let (obj, created) =
                ops::patch(store, info, version, ns, name, kind, body, t.sub, &opts)?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok(code, &present(obj))
        }
        (&Method::DELETE, Some(name)) => {
            count(&c.delete);
            needs_ns(name)?;
            let dopts = delete_opts(params, body)?;
            match ops::delete(store, info, ns, name, &dopts)? {
                Deleted::Pending(obj) => ok(StatusCode::OK, &present(obj)),
                Deleted::Gone(obj) => ok(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": {"name": name, "group": info.group,
                        "kind": info.plural, "uid": obj["metadata"]["uid"]}}),
                ),
            }
        }
        (&Method::DELETE, None) => {
            count(&c.delete);
            let dopts = delete_opts(params, body)?;
            let sel = selectors(params)?;
            let names: Vec<(String, String)> = store
                .list(&info.group_resource(), ns)
                .filter(|(_, v)| sel.matches(v))
                .map(|(k, _)| k.clone())
                .collect();
            let mut items = Vec::new();
            for (item_ns, name) in names {
                let item_ns = (!item_ns.is_empty()).then_some(item_ns.as_str());
                match ops::delete(store, info, item_ns, &name, &dopts)? {
                    Deleted::Pending(v) | Deleted::Gone(v) => items.push(present(v)),
                }
            }
            ok(
                StatusCode::OK,
                &json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(version),
                    "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": items}),
            )
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {m}"
        ))),
    }
}

fn delete_opts(params: &Params, body: &Bytes) -> Result<DeleteOpts> {
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        ops::parse_body(body, false)?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| params.get("propagationPolicy").cloned());
    let propagation = match policy.as_deref() {
        None => {
            let orphan = body["orphanDependents"].as_bool() == Some(true)
                || params.get("orphanDependents").is_some_and(|v| v == "true");
            orphan.then_some(Propagation::Orphan)
        }
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some("Orphan") => Some(Propagation::Orphan),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )));
        }
    };
    let dry_run = body["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"))
        || params.get("dryRun").is_some_and(|v| v == "All");
    Ok(DeleteOpts {
        propagation,
        uid: body["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: body["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        dry_run,
    })
}

/// Continue tokens: the last (namespace, name) served, base64url-encoded JSON.
fn encode_continue(ns: &str, name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!([ns, name]).to_string())
}

fn decode_continue(token: &str) -> Result<(String, String)> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    serde_json::from_slice::<(String, String)>(&raw).map_err(|_| bad())
}

fn list(store: &Store, t: &Target, params: &Params) -> Result<Value> {
    let info = &t.info;
    let sel = selectors(params)?;
    let limit: usize = match params.get("limit").map(|l| l.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => usize::try_from(n).unwrap_or(0),
        Some(_) => {
            return Err(ApiError::bad_request(
                "limit must be a non-negative integer",
            ));
        }
    };
    let after = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => Some(decode_continue(token)?),
        None => None,
    };
    let matching: Vec<(&(String, String), &Value)> = store
        .list(&info.group_resource(), t.namespace.as_deref())
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(_, v)| sel.matches(v))
        .collect();
    let mut metadata = json!({"resourceVersion": store.current_rv().to_string()});
    let take = if limit == 0 { matching.len() } else { limit };
    if take < matching.len() {
        let (ns, name) = matching[take - 1].0;
        metadata["continue"] = json!(encode_continue(ns, name));
        metadata["remainingItemCount"] = json!(matching.len() - take);
    }
    let items: Vec<Value> = matching
        .into_iter()
        .take(take)
        .map(|(_, v)| ops::present(info, &t.version, v.clone()))
        .collect();
    Ok(json!({
        "kind": format!("{}List", info.kind),
        "apiVersion": info.api_version(&t.version),
        "metadata": metadata,
        "items": items,
    }))
}

/// A watch, resolved under the store lock: what to send first, and where to go on from.
struct WatchRequest {
    info: ResourceInfo,
    version: String,
    namespace: Option<String>,
    selectors: Selectors,
    bookmarks: bool,
    timeout: Option<Duration>,
    /// Events and bookmarks to send before live ones.
    initial: Vec<Bytes>,
    /// Live events at or below this version were already covered by `initial`.
    covered: u64,
    rx: Option<Subscription>,
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(info: &ResourceInfo, version: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": info.kind, "apiVersion": info.api_version(version), "metadata": meta}),
    )
}

fn watch_request(store: &mut Store, t: &Target, params: &Params) -> Result<WatchRequest> {
    let sel = selectors(params)?;
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let send_initial = params.get("sendInitialEvents").map(|v| v == "true");
    let bookmarks = flag(params, "allowWatchBookmarks");
    if send_initial == Some(true) && !bookmarks {
        return Err(ApiError::invalid(
            t.info.subject(""),
            "ListOptions",
            "allowWatchBookmarks",
            "Required value: allowWatchBookmarks must be true if sendInitialEvents = true",
        ));
    }
    let timeout = match params.get("timeoutSeconds") {
        Some(s) => Some(Duration::from_secs(s.parse().map_err(|_| {
            ApiError::bad_request("timeoutSeconds must be an integer")
        })?)),
        None => None,
    };
    let mut w = WatchRequest {
        info: t.info.clone(),
        version: t.version.clone(),
        namespace: t.namespace.clone(),
        selectors: sel,
        bookmarks,
        timeout,
        initial: Vec::new(),
        covered: store.current_rv(),
        rx: None,
    };
    let gr = t.info.group_resource();
    let initial_state = match send_initial {
        Some(v) => v,
        None => rv_param.is_empty() || rv_param == "0",
    };
    if initial_state {
        for (_, obj) in store.list(&gr, t.namespace.as_deref()) {
            if w.selectors.matches(obj) {
                w.initial.push(line(
                    "ADDED",
                    &ops::present(&t.info, &t.version, obj.clone()),
                ));
            }
        }
        if send_initial == Some(true) {
            w.initial
                .push(bookmark(&t.info, &t.version, store.current_rv(), true));
        }
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}")))?;
        match store.events_since(rv) {
            Ok(events) => {
                for e in events {
                    if let Some(b) = render_event(&w, &e) {
                        w.initial.push(b);
                    }
                }
            }
            Err(_) => {
                let err = ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    store.oldest_watchable()
                ));
                w.initial.push(line("ERROR", &err.status()));
                return Ok(w);
            }
        }
    }
    w.rx = Some(store.subscribe(gr, w.namespace.clone(), w.selectors.clone()));
    Ok(w)
}

/// An event as one watcher sees it, after its namespace and selectors.
fn render_event(w: &WatchRequest, e: &Event) -> Option<Bytes> {
    if e.key.gr.1 != w.info.plural
        || e.key.gr.0 != w.info.group
        || w.namespace
            .as_ref()
            .is_some_and(|ns| *ns != e.key.namespace)
    {
        return None;
    }
    let now = w.selectors.matches(&e.object);
    let kind = match e.kind {
        EventKind::Added | EventKind::Deleted if now => e.kind.as_str(),
        EventKind::Modified => {
            let before = e.previous.as_ref().is_some_and(|p| w.selectors.matches(p));
            match (before, now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            }
        }
        _ => return None,
    };
    if kind == e.kind.as_str() {
        let (version, bytes) = e.rendered.get_or_init(|| {
            let obj = ops::present(&w.info, &w.version, e.object.clone());
            (w.version.clone(), line(kind, &obj))
        });
        if *version == w.version {
            return Some(bytes.clone());
        }
    }
    Some(line(
        kind,
        &ops::present(&w.info, &w.version, e.object.clone()),
    ))
}

/// An open watch, polled directly by the connection that streams it.
struct WatchStream {
    w: WatchRequest,
    rx: Option<Subscription>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ticker: tokio::time::Interval,
    closed: watch::Receiver<u64>,
    store: Arc<Mutex<Store>>,
    last_rv: u64,
    started: bool,
    done: bool,
}

/// What one wait on a watch gave.
enum Step {
    Send(Bytes),
    SendAndEnd(Bytes),
    End,
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            let initial: Vec<u8> = std::mem::take(&mut self.w.initial).concat();
            if self.rx.is_none() {
                self.done = true;
            }
            if !initial.is_empty() {
                return Some(Bytes::from(initial));
            }
        }
        loop {
            let step = {
                let Self {
                    w,
                    rx,
                    deadline,
                    ticker,
                    closed,
                    last_rv,
                    store,
                    ..
                } = self;
                let events = rx.as_mut()?;
                tokio::select! {
                    ev = events.events.recv() => {
                        // Send every event already queued in one chunk: fewer writes.
                        let mut buf: Vec<u8> = Vec::new();
                        let mut next = ev.ok_or(TryRecvError::Disconnected);
                        let mut end = None;
                        loop {
                            match next {
                                Ok(e) => {
                                    if e.rv > w.covered {
                                        *last_rv = e.rv;
                                        if let Some(b) = render_event(w, &e) {
                                            buf.extend_from_slice(&b);
                                        }
                                    }
                                }
                                Err(TryRecvError::Disconnected) => {
                                    end = Some(if events.lagged() {
                                        let err = ApiError::gone(
                                            "the watch fell behind the event window; restart it",
                                        );
                                        line("ERROR", &err.status())
                                    } else {
                                        Bytes::new()
                                    });
                                    break;
                                }
                                Err(TryRecvError::Empty) => break,
                            }
                            if buf.len() > 256 * 1024 {
                                break;
                            }
                            next = events.events.try_recv();
                        }
                        match end {
                            Some(last) => {
                                buf.extend_from_slice(&last);
                                if buf.is_empty() {
                                    Step::End
                                } else {
                                    Step::SendAndEnd(Bytes::from(buf))
                                }
                            }
                            None if buf.is_empty() => continue,
                            None => Step::Send(Bytes::from(buf)),
                        }
                    }
                    _ = ticker.tick(), if w.bookmarks => {
                        // Every event up to the store's version is already queued for this
                        // watch (the store queues under its lock): send those, then a
                        // bookmark at that version, so that resuming skips unrelated writes.
                        let current = store.lock().unwrap_or_else(|e| e.into_inner()).current_rv();
                        let mut buf: Vec<u8> = Vec::new();
                        while let Ok(e) = events.events.try_recv() {
                            if e.rv > w.covered {
                                *last_rv = e.rv;
                                if let Some(b) = render_event(w, &e) {
                                    buf.extend_from_slice(&b);
                                }
                            }
                        }
                        *last_rv = (*last_rv).max(current);
                        buf.extend_from_slice(&bookmark(&w.info, &w.version, *last_rv, false));
                        Step::Send(Bytes::from(buf))
                    }
                    () = deadline.as_mut() => Step::End,
                    _ = closed.changed() => Step::End,
                }
            };
            return match step {
                Step::Send(b) => Some(b),
                Step::SendAndEnd(b) => {
                    self.done = true;
                    Some(b)
                }
                Step::End => None,
            };
        }
    }
}

fn watch_response(shared: &Arc<Shared>, mut w: WatchRequest) -> Response {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = w.timeout.unwrap_or(Duration::from_secs(3600 * 24));
    let state = WatchStream {
        rx: w.rx.take(),
        last_rv: w.covered,
        w,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        ticker,
        closed: shared.close_watches.subscribe(),
        store: shared.store.clone(),
        started: false,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        st.next_chunk().await.map(|b| (Ok::<_, Infallible>(b), st))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The stored object at a key, for test assertions.
pub fn stored(store: &Store, key: &ObjectKey) -> Option<Value> {
    store.get(key).cloned()
}

#[allow(dead_code)]
fn object_rv(v: &Value) -> u64 {
    rv_of(v).unwrap_or_default()
}

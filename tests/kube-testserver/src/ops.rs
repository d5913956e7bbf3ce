//! The API verbs over the store: create, update, patch (merge, JSON, strategic, apply),
//! delete, with the metadata rules of the real API server. Synchronous: callers hold the lock.

use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::fields::{self, Writer};
use crate::resources::ResourceInfo;
use crate::store::{ObjectKey, Store, rv_of};

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    /// `/scale` of Deployments and StatefulSets: an `autoscaling/v1` Scale view.
    Scale,
    /// `/finalize` of Namespaces: only `spec.finalizers` changes.
    Finalize,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Finalize => "finalize",
        }
    }
}

/// The query parameters that shape a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    pub field_manager: Option<String>,
    /// The manager to record when the request names none (from the user agent).
    pub default_manager: String,
    pub force: bool,
    pub dry_run: bool,
}

impl WriteOpts {
    fn manager(&self) -> &str {
        self.field_manager
            .as_deref()
            .unwrap_or(&self.default_manager)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// What a delete did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// The object waits for finalizers; this is its state now.
    Pending(Value),
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn object_key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::new(
        info.group_resource(),
        if info.namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        },
        name,
    )
}

/// The object as served at `version`.
pub fn present(info: &ResourceInfo, version: &str, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(info.api_version(version));
    obj["kind"] = json!(info.kind);
    obj
}

pub fn get(
    store: &Store,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value> {
    store
        .get(&object_key(info, namespace, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(info.subject(name)))
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks the namespace a namespaced write goes to exists and is not terminating.
fn check_namespace(store: &Store, namespace: &str) -> Result<()> {
    let key = ObjectKey::new((String::new(), "namespaces".into()), "", namespace);
    match store.get(&key) {
        None => Err(ApiError::not_found(crate::error::Subject {
            group: "",
            resource: "namespaces",
            name: namespace,
        })),
        Some(ns) if !ns["metadata"]["deletionTimestamp"].is_null() => {
            Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )))
        }
        Some(_) => Ok(()),
    }
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn set_finalizers(obj: &mut Value, list: &[String]) {
    if list.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("finalizers");
        }
    } else {
        obj["metadata"]["finalizers"] = json!(list);
    }
}

pub fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

pub fn is_namespace(key: &ObjectKey) -> bool {
    key.gr.0.is_empty() && key.gr.1 == "namespaces"
}

/// Whether a marked object has no finalizer left (for namespaces, `spec.finalizers` too).
pub fn deletion_complete(key: &ObjectKey, obj: &Value) -> bool {
    is_deleting(obj)
        && finalizers(obj).is_empty()
        && (!is_namespace(key)
            || obj["spec"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty))
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

/// Defaults and conversions the built-in admission and storage layers apply.
fn builtin_defaults(store: &mut Store, info: &ResourceInfo, obj: &mut Value, creating: bool) {
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "secrets") => {
            if let Some(Value::Object(string_data)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                use base64::Engine as _;
                for (k, v) in string_data {
                    let raw = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(raw));
                }
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "namespaces") => {
            if creating {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
                obj["status"] = json!({"phase": "Active"});
            }
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
        ("", "services") => {
            if obj["spec"]["type"].is_null() {
                obj["spec"]["type"] = json!("ClusterIP");
            }
            if obj["spec"]["clusterIP"].is_null() && obj["spec"]["type"] != "ExternalName" {
                let ip = store.allocate_ip();
                obj["spec"]["clusterIP"] = json!(ip);
                obj["spec"]["clusterIPs"] = json!([ip]);
            }
            if obj["spec"]["sessionAffinity"].is_null() {
                obj["spec"]["sessionAffinity"] = json!("None");
            }
            if let Some(ports) = obj["spec"]["ports"].as_array_mut() {
                for p in ports {
                    if p["protocol"].is_null() {
                        p["protocol"] = json!("TCP");
                    }
                    if p["targetPort"].is_null() {
                        p["targetPort"] = p["port"].clone();
                    }
                }
            }
            if creating {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        ("apps", "deployments") | ("apps", "statefulsets") if obj["spec"]["replicas"].is_null() => {
            obj["spec"]["replicas"] = json!(1);
        }
        ("batch", "jobs") => {
            for (k, v) in [("completions", 1), ("parallelism", 1), ("backoffLimit", 6)] {
                if obj["spec"][k].is_null() {
                    obj["spec"][k] = json!(v);
                }
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let stored: Vec<Value> = obj["spec"]["versions"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .filter(|v| v["storage"].as_bool() == Some(true))
                        .map(|v| v["name"].clone())
                        .collect()
                })
                .unwrap_or_default();
            let t = now();
            obj["status"] = json!({
                "acceptedNames": obj["spec"]["names"].clone(),
                "storedVersions": stored,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            });
        }
        _ => {}
    }
}

/// Defaults, prunes and validates a custom resource against its CRD schema (422 if invalid).
fn admit_custom(info: &ResourceInfo, obj: &mut Value) -> Result<()> {
    let version = obj["apiVersion"]
        .as_str()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("")
        .to_string();
    let Some(schema) = info
        .schemas
        .get(&version)
        .or_else(|| info.versions.first().and_then(|v| info.schemas.get(v)))
        .filter(|s| s.is_object())
    else {
        return Ok(());
    };
    let violations = crate::schema::admit(obj, schema);
    if violations.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let causes: Vec<Value> = violations
        .iter()
        .map(|v| json!({"reason": v.reason, "message": v.message, "field": v.field}))
        .collect();
    let listed: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.message))
        .collect();
    let qualified = format!("{}.{}", info.kind, info.group);
    Err(ApiError::new(
        422,
        "Invalid",
        format!("{qualified} \"{name}\" is invalid: [{}]", listed.join(", ")),
    )
    .with_details(json!({"name": name, "group": info.group, "kind": info.kind, "causes": causes})))
}

fn writer<'a>(opts: &'a WriteOpts, sub: Sub, api_version: &'a str, now: &'a str) -> Writer<'a> {
    Writer {
        manager: opts.manager(),
        subresource: sub.name(),
        api_version,
        now,
    }
}

fn generate_suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.chars()
        .filter(|c| !matches!(c, 'a' | 'e' | 'i' | 'o' | 'u'))
        .take(5)
        .collect()
}

/// POST: creates an object.
pub fn create(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    namespace: Option<&str>,
    mut obj: Value,
    opts: &WriteOpts,
) -> Result<Value> {
    create_inner(store, info, version, namespace, &mut obj, opts, false)
}

fn create_inner(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    namespace: Option<&str>,
    obj: &mut Value,
    opts: &WriteOpts,
    applied: bool,
) -> Result<Value> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    if let Some(kind) = obj["kind"].as_str()
        && kind != info.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the body does not match the resource {:?}",
            info.kind
        )));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if info.namespaced {
        let ns = namespace.ok_or_else(|| {
            ApiError::method_not_allowed("a namespaced resource is created in a namespace")
        })?;
        match obj["metadata"]["namespace"].as_str() {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
    } else if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    let mut name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        && let Some(prefix) = obj["metadata"]["generateName"].as_str()
    {
        name = format!("{prefix}{}", generate_suffix());
        obj["metadata"]["name"] = json!(name);
    }
    if name.is_empty() {
        return Err(ApiError::invalid(
            info.subject(""),
            &info.kind,
            "metadata.name",
            "Required value: name or generateName is required",
        ));
    }
    if !is_dns_subdomain(&name) {
        return Err(ApiError::invalid(
            info.subject(&name),
            &info.kind,
            "metadata.name",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    if !obj["metadata"]["resourceVersion"].is_null()
        && obj["metadata"]["resourceVersion"] != json!("")
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let key = object_key(info, namespace, &name);
    if info.namespaced {
        check_namespace(store, &key.namespace)?;
    }
    if store.get(&key).is_some() {
        return Err(ApiError::already_exists(info.subject(&name)));
    }
    if info.group == "apiextensions.k8s.io" {
        crate::resources::crd_info(obj)?;
    }
    if let Some(m) = obj["metadata"].as_object_mut() {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            m.remove(k);
        }
        if !applied {
            m.remove("managedFields");
        }
    }
    if info.status
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    obj["apiVersion"] = json!(info.api_version(version));
    obj["kind"] = json!(info.kind);
    builtin_defaults(store, info, obj, true);
    admit_custom(info, obj)?;
    let t = now();
    if !applied {
        let api_version = info.api_version(version);
        let skeleton = json!({"metadata": {}});
        fields::record_update(&skeleton, obj, &writer(opts, Sub::Main, &api_version, &t));
    }
    drop_empty_metadata(obj);
    obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    obj["metadata"]["creationTimestamp"] = json!(t);
    obj["metadata"]["generation"] = json!(1);
    if opts.dry_run {
        return Ok(obj.clone());
    }
    if info.group == "apiextensions.k8s.io" {
        store.registry.register_crd(obj)?;
    }
    Ok(store.insert(key, obj.clone()))
}

/// Whether an update's body names the object's current version (or none).
fn check_precondition(info: &ResourceInfo, old: &Value, new: &Value, name: &str) -> Result<()> {
    match new["metadata"]["resourceVersion"].as_str() {
        None | Some("") => Ok(()),
        Some(rv) if Some(rv) == old["metadata"]["resourceVersion"].as_str() => Ok(()),
        Some(rv) if rv.parse::<u64>().is_err() => Err(ApiError::bad_request(format!(
            "invalid resourceVersion {rv:?}"
        ))),
        Some(_) => Err(ApiError::modified(info.subject(name))),
    }
}

/// How managed fields are maintained by a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Managed {
    /// Record the writer as an updater of every field it changed.
    Update,
    /// Already computed by server-side apply.
    Applied,
}

/// The common tail of PUT and PATCH.
#[allow(clippy::too_many_arguments)]
fn commit_update(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    key: &ObjectKey,
    old: &Value,
    mut new: Value,
    sub: Sub,
    opts: &WriteOpts,
    managed: Managed,
) -> Result<Value> {
    if !new.is_object() || (!new["metadata"].is_null() && !new["metadata"].is_object()) {
        return Err(ApiError::bad_request("the object is not a JSON object"));
    }
    check_precondition(info, old, &new, &key.name)?;
    if let Some(body_name) = new["metadata"]["name"].as_str()
        && body_name != key.name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            key.name
        )));
    }
    if info.namespaced
        && let Some(body_ns) = new["metadata"]["namespace"].as_str()
        && !body_ns.is_empty()
        && body_ns != key.namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if sub == Sub::Status {
        let mut merged = old.clone();
        match new.get("status") {
            Some(s) if !s.is_null() => merged["status"] = s.clone(),
            _ => {
                if let Some(m) = merged.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        if managed == Managed::Applied {
            merged["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
        }
        new = merged;
    } else if sub == Sub::Finalize {
        let mut merged = old.clone();
        merged["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
        new = merged;
    } else if info.status {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    for k in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        match old["metadata"].get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();
    admit_custom(info, &mut new)?;
    if sub == Sub::Main {
        builtin_defaults(store, info, &mut new, false);
        if info.plural == "namespaces" {
            new["spec"] = old["spec"].clone();
        }
    }
    let t = now();
    let api_version = info.api_version(version);
    match managed {
        Managed::Update => {
            if new["metadata"]["managedFields"].is_null() {
                new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
            }
            let mut before = old.clone();
            before["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
            fields::record_update(&before, &mut new, &writer(opts, sub, &api_version, &t));
        }
        Managed::Applied => {}
    }
    drop_empty_metadata(&mut new);
    if spec_part(old) != spec_part(&new) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    if new == *old {
        return Ok(old.clone());
    }
    if info.group == "apiextensions.k8s.io" {
        crate::resources::crd_info(&new)?;
    }
    if opts.dry_run {
        return Ok(new);
    }
    if deletion_complete(key, &new) {
        return Ok(finish_delete(store, key).unwrap_or(new));
    }
    if info.group == "apiextensions.k8s.io" && sub == Sub::Main {
        store.registry.register_crd(&new)?;
    }
    Ok(store.replace(key.clone(), new))
}

/// Removes an object for good, with what that implies for CRDs.
pub fn finish_delete(store: &mut Store, key: &ObjectKey) -> Option<Value> {
    let removed = store.remove(key)?;
    if key.gr.0 == "apiextensions.k8s.io"
        && let Ok(info) = crate::resources::crd_info(&removed)
    {
        let gr = info.group_resource();
        let keys: Vec<ObjectKey> = store.keys().into_iter().filter(|k| k.gr == gr).collect();
        for k in keys {
            store.remove(&k);
        }
        store.registry.unregister(&gr);
    }
    Some(removed)
}

/// PUT: replaces an object (or its status).
#[allow(clippy::too_many_arguments)]
pub fn update(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    namespace: Option<&str>,
    name: &str,
    body: Value,
    sub: Sub,
    opts: &WriteOpts,
) -> Result<Value> {
    let key = object_key(info, namespace, name);
    let old = store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(info.subject(name)))?;
    if let Some(kind) = body["kind"].as_str()
        && kind != info.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind {kind:?} of the body does not match the resource {:?}",
            info.kind
        )));
    }
    commit_update(
        store,
        info,
        version,
        &key,
        &old,
        body,
        sub,
        opts,
        Managed::Update,
    )
}

/// Parses a request body as JSON, or YAML for apply.
pub fn parse_body(bytes: &[u8], yaml: bool) -> Result<Value> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) if !yaml => Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
        Err(_) => serde_yaml::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}"))),
    }
}

/// PATCH. Returns the object and whether an apply created it.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    namespace: Option<&str>,
    name: &str,
    kind: PatchKind,
    body: &[u8],
    sub: Sub,
    opts: &WriteOpts,
) -> Result<(Value, bool)> {
    let key = object_key(info, namespace, name);
    let live = store.get(&key).cloned();
    let patch = parse_body(body, kind == PatchKind::Apply)?;
    if kind == PatchKind::Apply {
        return server_side_apply(store, info, version, &key, live, patch, sub, opts);
    }
    let live = live.ok_or_else(|| ApiError::not_found(info.subject(name)))?;
    let mut doc = live.clone();
    match kind {
        PatchKind::Merge => json_patch::merge(&mut doc, &patch),
        PatchKind::Strategic => strategic_merge(&mut doc, &patch),
        PatchKind::Json => json_patch_lenient(&mut doc, patch)?,
        PatchKind::Apply => unreachable!("handled above"),
    }
    if !doc.is_object() {
        return Err(ApiError::bad_request(
            "the patched object is not a JSON object",
        ));
    }
    if doc["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"] {
        // The patch did not set a precondition: none applies.
        if let Some(m) = doc["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
    }
    commit_update(
        store,
        info,
        version,
        &key,
        &live,
        doc,
        sub,
        opts,
        Managed::Update,
    )
    .map(|v| (v, false))
}

/// RFC 6902 JSON patch, as the API server applies it: a `test` of `null` against a missing
/// path passes (kube-runtime's finalizer helper relies on it).
fn json_patch_lenient(doc: &mut Value, patch: Value) -> Result<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    for op in ops.0 {
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none_or(Value::is_null)
        {
            continue;
        }
        json_patch::patch(doc, &[op]).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the JSON patch could not be applied: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Drops empty metadata collections, as the API's `omitempty` does.
fn drop_empty_metadata(obj: &mut Value) {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.retain(|k, v| {
            let collection = matches!(
                k.as_str(),
                "labels" | "annotations" | "finalizers" | "ownerReferences" | "managedFields"
            );
            !(collection
                && (v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(serde_json::Map::is_empty)))
        });
    }
}

/// The part of an applied configuration a subresource may set, without server-set fields.
fn applicable(info: &ResourceInfo, applied: &Value, sub: Sub) -> Value {
    let mut v = applied.clone();
    match sub {
        Sub::Status => json!({"status": v.get("status").cloned().unwrap_or(Value::Null)}),
        Sub::Main | Sub::Scale | Sub::Finalize => {
            if let Some(m) = v.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
                if info.status {
                    m.remove("status");
                }
            }
            if let Some(m) = v["metadata"].as_object_mut() {
                for k in [
                    "name",
                    "namespace",
                    "uid",
                    "resourceVersion",
                    "generation",
                    "creationTimestamp",
                    "managedFields",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "selfLink",
                ] {
                    m.remove(k);
                }
            }
            v
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    key: &ObjectKey,
    live: Option<Value>,
    applied: Value,
    sub: Sub,
    opts: &WriteOpts,
) -> Result<(Value, bool)> {
    let Some(manager) = opts.field_manager.as_deref().filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad_request(
            "PATCH requests for server-side apply need a fieldManager",
        ));
    };
    if !applied.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration is not an object",
        ));
    }
    if applied["apiVersion"].as_str().is_none_or(str::is_empty)
        || applied["kind"].as_str().is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an applied configuration",
        ));
    }
    if applied["kind"] != json!(info.kind) {
        return Err(ApiError::bad_request(format!(
            "the kind {} of the body does not match the resource {:?}",
            applied["kind"], info.kind
        )));
    }
    if let Some(n) = applied["metadata"]["name"].as_str()
        && n != key.name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({})",
            key.name
        )));
    }
    let t = now();
    let api_version = info.api_version(version);
    let w = Writer {
        manager,
        subresource: sub.name(),
        api_version: &api_version,
        now: &t,
    };
    let config = applicable(info, &applied, sub);
    let conflict = |conflicts: Vec<fields::Conflict>| {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| {
                json!({"reason": "FieldManagerConflict",
                    "message": format!("conflict with {:?}", c.manager), "field": c.field})
            })
            .collect();
        let listed: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with {:?}: {}", c.manager, c.field))
            .collect();
        let mut details = json!({"name": key.name, "group": info.group, "kind": info.plural});
        details["causes"] = json!(causes);
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                listed.join("\n")
            ),
        )
        .with_details(details)
    };
    match live {
        None => {
            if sub == Sub::Status {
                return Err(ApiError::not_found(info.subject(&key.name)));
            }
            let mut skeleton = json!({"metadata": {"name": key.name}});
            if info.namespaced {
                skeleton["metadata"]["namespace"] = json!(key.namespace);
            }
            let mut obj = fields::apply(&skeleton, &config, &w, opts.force).map_err(conflict)?;
            let ns = info.namespaced.then_some(key.namespace.as_str());
            create_inner(store, info, version, ns, &mut obj, opts, true).map(|v| (v, true))
        }
        Some(live) => {
            let mut obj = fields::apply(&live, &config, &w, opts.force).map_err(conflict)?;
            if let Some(rv) = applied["metadata"]["resourceVersion"].as_str() {
                obj["metadata"]["resourceVersion"] = json!(rv);
            } else if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            commit_update(
                store,
                info,
                version,
                key,
                &live,
                obj,
                sub,
                opts,
                Managed::Applied,
            )
            .map(|v| (v, false))
        }
    }
}

/// Merge keys of the lists strategic merge patch merges element by element, by field name.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "volumeClaimTemplates" => "name",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        _ => return None,
    })
}

/// Strategic merge patch, approximated: JSON merge patch, plus element-wise merging of the
/// well-known keyed lists and union for `finalizers`, and the `$patch`/`$setElementOrder`
/// directives kubectl sends.
pub fn strategic_merge(doc: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *doc = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        strip_directives(&mut replacement);
        *doc = replacement;
        return;
    }
    if !doc.is_object() {
        *doc = json!({});
    }
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        let Some(map) = doc.as_object_mut() else {
            return;
        };
        if pv.is_null() {
            map.remove(k);
            continue;
        }
        match (map.get_mut(k), pv) {
            (Some(dv @ Value::Object(_)), Value::Object(_)) => strategic_merge(dv, pv),
            (Some(Value::Array(items)), Value::Array(patch_items)) if k == "finalizers" => {
                for item in patch_items {
                    if !items.contains(item) {
                        items.push(item.clone());
                    }
                }
            }
            (Some(Value::Array(items)), Value::Array(patch_items))
                if merge_key(k).is_some() && patch_items.iter().all(Value::is_object) =>
            {
                let mk = merge_key(k).unwrap_or("name");
                for pi in patch_items {
                    let pos = items.iter().position(|i| i.get(mk) == pi.get(mk));
                    let delete = pi.get("$patch").and_then(Value::as_str) == Some("delete");
                    match (pos, delete) {
                        (Some(i), true) => {
                            items.remove(i);
                        }
                        (Some(i), false) => strategic_merge(&mut items[i], pi),
                        (None, true) => {}
                        (None, false) => {
                            let mut fresh = pi.clone();
                            strip_directives(&mut fresh);
                            items.push(fresh);
                        }
                    }
                }
            }
            _ => {
                let mut fresh = pv.clone();
                strip_directives(&mut fresh);
                map.insert(k.clone(), fresh);
            }
        }
    }
    // Deletions from primitive lists, e.g. `$deleteFromPrimitiveList/finalizers`.
    for (k, pv) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(items)), Value::Array(gone)) = (doc.get_mut(field), pv)
        {
            items.retain(|i| !gone.contains(i));
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// The `autoscaling/v1` Scale view of a Deployment or StatefulSet.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector.join(",")},
    })
}

/// PUT (`patch` is `None`) or PATCH of `/scale`: sets `spec.replicas`.
#[allow(clippy::too_many_arguments)]
pub fn write_scale(
    store: &mut Store,
    info: &ResourceInfo,
    version: &str,
    namespace: Option<&str>,
    name: &str,
    patch: Option<PatchKind>,
    body: &[u8],
    opts: &WriteOpts,
) -> Result<Value> {
    let key = object_key(info, namespace, name);
    let live = store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(info.subject(name)))?;
    let mut scale = scale_of(&live);
    let input = parse_body(body, false)?;
    match patch {
        None => scale = input,
        Some(PatchKind::Merge) => json_patch::merge(&mut scale, &input),
        Some(PatchKind::Strategic) => strategic_merge(&mut scale, &input),
        Some(PatchKind::Json) => json_patch_lenient(&mut scale, input)?,
        Some(PatchKind::Apply) => {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml on /scale",
            ));
        }
    }
    let replicas = scale["spec"]["replicas"]
        .as_i64()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                info.subject(name),
                "Scale",
                "spec.replicas",
                "Invalid value: must be a non-negative integer",
            )
        })?;
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(replicas);
    match scale["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => new["metadata"]["resourceVersion"] = json!(rv),
        _ => {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
    }
    let stored = commit_update(
        store,
        info,
        version,
        &key,
        &live,
        new,
        Sub::Main,
        opts,
        Managed::Update,
    )?;
    Ok(scale_of(&stored))
}

/// The preconditions a DELETE may carry.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<Propagation>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

/// DELETE: removes the object, or marks it for deletion while finalizers remain.
pub fn delete(
    store: &mut Store,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Deleted> {
    let key = object_key(info, namespace, name);
    let obj = store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(info.subject(name)))?;
    if let Some(uid) = &opts.uid
        && obj["metadata"]["uid"].as_str() != Some(uid)
    {
        return Err(ApiError::conflict(
            info.subject(name),
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                obj["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = &opts.resource_version
        && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return Err(ApiError::conflict(
            info.subject(name),
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            ),
        ));
    }
    if opts.dry_run {
        return Ok(Deleted::Gone(obj));
    }
    Ok(mark_deleted(
        store,
        &key,
        opts.propagation.unwrap_or(Propagation::Background),
    ))
}

/// Deletes by key with a propagation policy: used by requests and by the garbage collector.
pub fn mark_deleted(store: &mut Store, key: &ObjectKey, propagation: Propagation) -> Deleted {
    let Some(mut obj) = store.get(key).cloned() else {
        return Deleted::Gone(Value::Null);
    };
    let mut fins = finalizers(&obj);
    let extra = match propagation {
        Propagation::Foreground => Some(FOREGROUND),
        Propagation::Orphan => Some(ORPHAN),
        Propagation::Background => None,
    };
    if let Some(f) = extra
        && !fins.iter().any(|x| x == f)
    {
        fins.push(f.to_string());
    }
    let namespace = key.gr.0.is_empty() && key.gr.1 == "namespaces";
    if fins.is_empty() && !namespace {
        return Deleted::Gone(finish_delete(store, key).unwrap_or(obj));
    }
    let before = obj.clone();
    set_finalizers(&mut obj, &fins);
    if !is_deleting(&obj) {
        obj["metadata"]["deletionTimestamp"] = json!(now());
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let generation = obj["metadata"]["generation"].as_i64().unwrap_or(0);
        obj["metadata"]["generation"] = json!(generation + 1);
        if namespace {
            obj["status"]["phase"] = json!("Terminating");
        }
    }
    if obj == before {
        return Deleted::Pending(obj);
    }
    Deleted::Pending(store.replace(key.clone(), obj))
}

/// A store-internal write (garbage collector, simulated node): no managers are recorded,
/// owned fields that disappear are dropped, and an emptied finalizer list completes a deletion.
pub fn internal_update(store: &mut Store, key: &ObjectKey, f: impl FnOnce(&mut Value)) {
    let Some(old) = store.get(key).cloned() else {
        return;
    };
    let mut new = old.clone();
    f(&mut new);
    if new == old {
        return;
    }
    let mut managers = fields::read_managers(&new);
    for m in &mut managers {
        m.fields.retain(|p| fields::get_path(&new, p).is_some());
    }
    fields::write_managers(&mut new, &managers);
    if deletion_complete(key, &new) {
        finish_delete(store, key);
    } else {
        store.replace(key.clone(), new);
    }
}

/// The resourceVersion of an object, for responses.
pub fn resource_version(obj: &Value) -> u64 {
    rv_of(obj).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_keyed_lists() {
        let mut doc = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"finalizers": ["x"]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "a:2"}, {"name": "c", "image": "c:1"},
                           {"name": "b", "$patch": "delete"}]},
            "metadata": {"finalizers": ["y"], "labels": {"l": "1"}}});
        strategic_merge(&mut doc, &patch);
        assert_eq!(doc["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            doc["spec"]["containers"][0]["ports"][0]["containerPort"],
            80
        );
        assert_eq!(doc["spec"]["containers"][1]["name"], "c");
        assert_eq!(doc["spec"]["containers"].as_array().unwrap().len(), 2);
        assert_eq!(doc["metadata"]["finalizers"], json!(["x", "y"]));
        strategic_merge(
            &mut doc,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "labels": {"l": null}}}),
        );
        assert_eq!(doc["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(doc["metadata"]["labels"], json!({}));
    }
}

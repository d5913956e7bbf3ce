//! kube-rs against the test server: typed CRUD, server-side apply, status, watch, deletion
//! semantics, the simulated node and the request counters.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube_testserver::{Options, TestServer};
use serde_json::{Value, json};

async fn start() -> TestServer {
    TestServer::start(Options {
        ready_delay: Duration::from_millis(100),
        ..Options::default()
    })
    .await
    .expect("server starts")
}

/// Polls until `check` holds, for background work (garbage collection, the node).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
}

#[tokio::test]
async fn typed_crud_and_errors() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();

    let created = api
        .create(&pp, &cm("one", json!({"a": "1"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some());
    assert!(meta.creation_timestamp.is_some());
    let rv1: u64 = meta.resource_version.as_ref().unwrap().parse().unwrap();

    let (code, reason) = api_error(api.create(&pp, &cm("one", json!({}))).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let (code, reason) = api_error(api.get("missing").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, reason) = api_error(
        api.create(&pp, &cm("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let other_ns: Api<ConfigMap> = Api::namespaced(server.client(), "nowhere");
    let (code, _) = api_error(other_ns.create(&pp, &cm("x", json!({}))).await.unwrap_err());
    assert_eq!(code, 404, "creating in a missing namespace");

    // Update with the current version, then with a stale one.
    let mut fresh = api.get("one").await.unwrap();
    fresh.data = Some([("a".to_string(), "2".to_string())].into());
    let updated = api.replace("one", &pp, &fresh).await.unwrap();
    let rv2: u64 = updated
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "resourceVersion is monotonic");
    let (code, reason) = api_error(api.replace("one", &pp, &fresh).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Merge patch and JSON patch.
    let p = api
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.data.as_ref().unwrap()["b"], "x");
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/data/a"}])).unwrap();
    let p = api
        .patch("one", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    assert!(!p.data.as_ref().unwrap().contains_key("a"));

    // A no-op write changes nothing.
    let before = api.get("one").await.unwrap().metadata.resource_version;
    api.patch(
        "one",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"b": "x"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        api.get("one").await.unwrap().metadata.resource_version,
        before
    );

    // Label selectors, field selectors and paging.
    for (i, tier) in ["web", "web", "db", "cache"].iter().enumerate() {
        let mut c = cm(&format!("sel-{i}"), json!({}));
        c.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        api.create(&pp, &c).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let l = api
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(names(l), ["sel-0", "sel-1"]);
    let l = api
        .list(&ListParams::default().labels("tier in (db,cache)"))
        .await
        .unwrap();
    assert_eq!(names(l), ["sel-2", "sel-3"]);
    let l = api
        .list(&ListParams::default().labels("tier notin (web),tier"))
        .await
        .unwrap();
    assert_eq!(names(l), ["sel-2", "sel-3"]);
    let l = api
        .list(&ListParams::default().labels("tier!=web"))
        .await
        .unwrap();
    assert_eq!(names(l), ["one", "sel-2", "sel-3"]);
    let l = api
        .list(&ListParams::default().labels("!tier"))
        .await
        .unwrap();
    assert_eq!(names(l), ["one"]);
    let l = api
        .list(&ListParams::default().fields("metadata.name=sel-3"))
        .await
        .unwrap();
    assert_eq!(names(l), ["sel-3"]);
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(page.clone()), ["one", "sel-0"]);
    let token = page.metadata.continue_.clone().unwrap();
    let page2 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(page2.clone()), ["sel-1", "sel-2"]);
    let token = page2.metadata.continue_.clone().unwrap();
    let page3 = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(page3.clone()), ["sel-3"]);
    assert!(page3.metadata.continue_.is_none_or(|c| c.is_empty()));
    let all: Api<ConfigMap> = Api::all(server.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        5
    );

    // Delete: the object is gone at once without finalizers.
    let deleted = api.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "immediate deletion returns a Status");
    assert_eq!(api_error(api.get("one").await.unwrap_err()).0, 404);
    assert_eq!(
        api_error(
            api.delete("one", &DeleteParams::default())
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn secret_string_data_and_generate_name() {
    let server = start().await;
    let api: Api<Secret> = Api::namespaced(server.client(), "default");
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"generateName": "tok-"}, "stringData": {"k": "v"}}))
    .unwrap();
    let created = api.create(&PostParams::default(), &s).await.unwrap();
    let name = created.metadata.name.unwrap();
    assert!(name.starts_with("tok-") && name.len() == 9, "{name}");
    assert_eq!(created.data.unwrap()["k"].0, b"v");
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
}

#[tokio::test]
async fn server_side_apply_conflict_force_and_removal() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let apply = |mgr: &'static str, force: bool| {
        let mut pp = PatchParams::apply(mgr);
        pp.force = force;
        pp
    };
    let cfg = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});

    // Apply creates the object.
    let obj = api
        .patch(
            "ssa",
            &apply("alice", false),
            &Patch::Apply(cfg(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    let mf = obj.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        mf[0].fields_v1.as_ref().unwrap().0,
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );

    // Bob applying a different value for a field Alice owns conflicts.
    let err = api
        .patch(
            "ssa",
            &apply("bob", false),
            &Patch::Apply(cfg(json!({"a": "bob"}))),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a Status")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status.message.contains("conflict with \"alice\""),
        "{}",
        status.message
    );
    assert!(status.message.contains(".data.a"), "{}", status.message);

    // With force, Bob takes the field.
    let obj = api
        .patch(
            "ssa",
            &apply("bob", true),
            &Patch::Apply(cfg(json!({"a": "bob"}))),
        )
        .await
        .unwrap();
    assert_eq!(obj.data.as_ref().unwrap()["a"], "bob");
    let owners: Vec<(String, Value)> = obj
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.fields_v1.unwrap().0))
        .collect();
    assert_eq!(
        owners,
        [
            ("alice".to_string(), json!({"f:data": {"f:b": {}}})),
            ("bob".to_string(), json!({"f:data": {"f:a": {}}})),
        ]
    );

    // Alice drops b from her configuration: she owned it alone, so it goes. Bob's a stays.
    let obj = api
        .patch(
            "ssa",
            &apply("alice", false),
            &Patch::Apply(cfg(json!({"c": "3"}))),
        )
        .await
        .unwrap();
    assert_eq!(
        obj.data.unwrap(),
        [
            ("a".to_string(), "bob".to_string()),
            ("c".to_string(), "3".to_string())
        ]
        .into()
    );

    // An updater (merge patch) owns what it changed, and a later apply conflicts with it.
    api.patch(
        "ssa",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"c": "edited"}})),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "ssa",
            &apply("alice", false),
            &Patch::Apply(cfg(json!({"c": "3"}))),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 409);

    // Apply without a field manager is a bad request.
    let err = api
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Apply(cfg(json!({}))),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 400);
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "default": 3},
                        "color": {"type": "string"}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}
            }]
        }
    }))
    .unwrap()
}

fn widgets(server: &TestServer) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    Api::namespaced_with(server.client(), "default", &ar)
}

#[tokio::test]
async fn crd_registration_discovery_and_status_subresource() {
    let server = start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let crd = crds
        .create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let discovery = kube::Discovery::new(server.client()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"))
        .expect("the CRD's kind is discovered");
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        discovery
            .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "StatefulSet"))
            .is_some()
    );

    let api = widgets(&server);
    let w: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"color": "red"}, "status": {"phase": "ignored"}}))
    .unwrap();
    let created = api.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"color": "red", "size": 3}),
        "schema defaults"
    );
    assert!(
        created.data.get("status").is_none(),
        "status is dropped on create"
    );
    assert_eq!(created.metadata.generation, Some(1));

    // The schema prunes unknown fields and rejects invalid values with 422.
    let odd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "odd"}, "spec": {"color": "red", "shape": "round"}}))
    .unwrap();
    let odd = api.create(&PostParams::default(), &odd).await.unwrap();
    assert!(
        odd.data["spec"].get("shape").is_none(),
        "unknown fields are pruned"
    );
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "bad"}, "spec": {"size": "big"}}))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a Status")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("spec.size"), "{}", status.message);
    let err = api
        .patch(
            "odd",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": -1.5}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err).0, 422);

    // /status writes only status.
    let s = api
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"color": "blue"}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["phase"], "Ready");
    assert_eq!(s.data["spec"]["color"], "red");
    assert_eq!(
        s.metadata.generation,
        Some(1),
        "status writes keep the generation"
    );

    // Status by server-side apply on /status, under its own manager.
    let s = api
        .patch_status(
            "w",
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "status": {"phase": "Applied", "observed": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"], json!({"phase": "Applied", "observed": 1}));
    let mf = s.metadata.managed_fields.unwrap();
    assert!(mf.iter().any(
        |m| m.manager.as_deref() == Some("ctrl") && m.subresource.as_deref() == Some("status")
    ));

    // Main-resource writes ignore status; spec changes bump the generation, labels don't.
    let m = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Hacked"}, "metadata": {"labels": {"l": "1"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(m.data["status"]["phase"], "Applied");
    assert_eq!(m.metadata.generation, Some(1));
    let m = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(m.metadata.generation, Some(2));

    // Deleting the CRD removes its objects and its API.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        server
            .get("example.com", "widgets", "default", "w")
            .is_none()
    );
    assert_eq!(api_error(api.get("w").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn deployment_status_subresource() {
    let server = start().await;
    let api: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    let s = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().observed_generation, Some(99));

    // The scale subresource reads and writes spec.replicas.
    let scale = api.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    let scale = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    let d = api.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(4));
    assert_eq!(d.metadata.generation, Some(2));
}

#[tokio::test]
async fn simulated_node_makes_workloads_ready_or_failing() {
    let server = start().await;
    let deployments: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    let available = |d: &Deployment| {
        d.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            })
    };
    eventually("the deployment becomes available", || async {
        let d = deployments.get("web").await.unwrap();
        let s = d.status.clone().unwrap_or_default();
        available(&d) && s.ready_replicas == Some(3) && s.observed_generation == Some(1)
    })
    .await;

    server.set_failing("default", "web", true);
    eventually("the deployment degrades", || async {
        let d = deployments.get("web").await.unwrap();
        !available(&d) && d.status.unwrap().ready_replicas.is_none()
    })
    .await;
    server.set_failing("default", "web", false);
    eventually("the deployment recovers", || async {
        available(&deployments.get("web").await.unwrap())
    })
    .await;

    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    let j: Job = serde_json::from_value(json!({
        "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "m", "image": "busybox"}]}}}}))
    .unwrap();
    jobs.create(&PostParams::default(), &j).await.unwrap();
    eventually("the job completes", || async {
        let s = jobs
            .get("migrate")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        s.succeeded == Some(1)
            && s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
    })
    .await;
}

#[tokio::test]
async fn raw_watch_events_and_gone() {
    let server = TestServer::start(Options {
        history_window: 5,
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let start_rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().labels("w=1").timeout(10), &start_rv)
        .await
        .unwrap()
        .boxed();
    let mut c = cm("watched", json!({}));
    c.metadata.labels = Some([("w".to_string(), "1".to_string())].into());
    api.create(&PostParams::default(), &c).await.unwrap();
    api.create(&PostParams::default(), &cm("unlabelled", json!({})))
        .await
        .unwrap();
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    // Dropping the label makes the object leave the selection: DELETED.
    api.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": null}}})),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => kinds.push(("ADDED", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => kinds.push(("MODIFIED", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => kinds.push(("DELETED", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    let w = "watched".to_string();
    assert_eq!(
        kinds,
        [
            ("ADDED", w.clone()),
            ("MODIFIED", w.clone()),
            ("DELETED", w)
        ]
    );

    // A version older than the window gets an ERROR event with 410.
    for i in 0..10 {
        api.create(&PostParams::default(), &cm(&format!("fill-{i}"), json!({})))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default(), &start_rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // Bookmarks carry the current version.
    let server = TestServer::start(Options {
        bookmark_interval: Duration::from_millis(50),
        ..Options::default()
    })
    .await
    .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Writes the watch does not select still move its bookmarks on.
    let secrets: Api<Secret> = Api::namespaced(server.client(), "default");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let now = server.resource_version().to_string();
    let mut advanced = false;
    for _ in 0..20 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == now => {
                advanced = true;
                break;
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected a bookmark, got {other:?}"),
        }
    }
    assert!(advanced, "the bookmarks reach the store's version {now}");
}

#[tokio::test]
async fn watcher_sees_later_events_and_relists_after_gone() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("before", json!({})))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = watcher(api.clone(), watcher::Config::default());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let line = match ev {
                Ok(watcher::Event::Apply(o)) => format!("apply {}", o.metadata.name.unwrap()),
                Ok(watcher::Event::Delete(o)) => format!("delete {}", o.metadata.name.unwrap()),
                Ok(watcher::Event::Init) => "init".into(),
                Ok(watcher::Event::InitApply(o)) => {
                    format!("initapply {}", o.metadata.name.unwrap())
                }
                Ok(watcher::Event::InitDone) => "initdone".into(),
                Err(watcher::Error::WatchError(s)) => format!("error {}", s.code),
                Err(e) => format!("other error {e}"),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut expect = async |want: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {want:?}"))
                .unwrap();
            if line == want {
                return;
            }
        }
    };
    expect("initapply before").await;
    expect("initdone").await;

    api.create(&PostParams::default(), &cm("later", json!({})))
        .await
        .unwrap();
    expect("apply later").await;
    api.delete("later", &DeleteParams::default()).await.unwrap();
    expect("delete later").await;

    // Compact the window and cut the watch: the watcher resumes from an old version,
    // gets 410 Gone, and relists.
    let secrets: Api<Secret> = Api::namespaced(server.client(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap(),
        )
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("during", json!({})))
        .await
        .unwrap();
    expect("apply during").await;
    server.compact();
    secrets.delete("s", &DeleteParams::default()).await.unwrap();
    server.compact();
    server.close_watches();
    expect("error 410").await;
    expect("init").await;
    expect("initapply during").await;
    expect("initdone").await;
    api.create(&PostParams::default(), &cm("after", json!({})))
        .await
        .unwrap();
    expect("apply after").await;
    task.abort();
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut c = cm("held", json!({}));
    c.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    api.create(&PostParams::default(), &c).await.unwrap();
    let pending = api.delete("held", &DeleteParams::default()).await.unwrap();
    let obj = pending.left().expect("deletion waits for the finalizer");
    assert!(obj.metadata.deletion_timestamp.is_some());
    let still = api.get("held").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // Deleting again changes nothing.
    assert!(
        api.delete("held", &DeleteParams::default())
            .await
            .unwrap()
            .is_left()
    );

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(api.get("held").await.unwrap_err()).0, 404);

    // Removing the last finalizer by server-side apply completes a deletion too.
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held2", "finalizers": ["example.com/cleanup"]}});
    api.patch("held2", &PatchParams::apply("op"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    api.delete("held2", &DeleteParams::default()).await.unwrap();
    assert!(server.get("", "configmaps", "default", "held2").is_some());
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held2"}});
    api.patch("held2", &PatchParams::apply("op"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert!(server.get("", "configmaps", "default", "held2").is_none());
}

fn owned_by(name: &str, owner: &ConfigMap) -> ConfigMap {
    let mut c = cm(name, json!({}));
    c.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "name": owner.metadata.name, "uid": owner.metadata.uid, "controller": true,
            "blockOwnerDeletion": true}))
        .unwrap(),
    ]);
    c
}

#[tokio::test]
async fn owner_references_cascade() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();
    let gone = |name: &'static str| {
        let server = &server;
        move || async move { server.get("", "configmaps", "default", name).is_none() }
    };

    // Background: the owner goes at once, then its dependents.
    let owner = api.create(&pp, &cm("bg-owner", json!({}))).await.unwrap();
    let child = api
        .create(&pp, &owned_by("bg-child", &owner))
        .await
        .unwrap();
    api.create(&pp, &owned_by("bg-grandchild", &child))
        .await
        .unwrap();
    api.delete("bg-owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("background cascade", gone("bg-child")).await;
    eventually("background cascade, second level", gone("bg-grandchild")).await;

    // Foreground: the owner waits, with the foregroundDeletion finalizer, for its dependents.
    let owner = api.create(&pp, &cm("fg-owner", json!({}))).await.unwrap();
    let mut child = owned_by("fg-child", &owner);
    child.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&pp, &child).await.unwrap();
    let pending = api
        .delete("fg-owner", &DeleteParams::foreground())
        .await
        .unwrap();
    let o = pending.left().expect("foreground deletion is pending");
    assert!(
        o.metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    eventually("the dependent is being deleted", || async {
        api.get("fg-child")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    })
    .await;
    assert!(
        api.get("fg-owner").await.is_ok(),
        "the owner waits for its dependent"
    );
    api.patch(
        "fg-child",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("foreground owner deleted last", gone("fg-owner")).await;

    // Orphan: the dependents stay, without the owner reference.
    let owner = api.create(&pp, &cm("or-owner", json!({}))).await.unwrap();
    api.create(&pp, &owned_by("or-child", &owner))
        .await
        .unwrap();
    api.delete("or-owner", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("orphaning owner deleted", gone("or-owner")).await;
    let child = api.get("or-child").await.unwrap();
    assert!(child.metadata.owner_references.is_none_or(|r| r.is_empty()));
}

#[tokio::test]
async fn namespace_deletion_deletes_contents() {
    let server = start().await;
    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "tenant"}})).unwrap();
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "tenant");
    api.create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let mut held = cm("held", json!({}));
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();

    let pending = namespaces
        .delete("tenant", &DeleteParams::default())
        .await
        .unwrap();
    let ns = pending.left().expect("namespace deletion is pending");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    eventually("contents deleted", || async {
        server.get("", "configmaps", "tenant", "a").is_none()
    })
    .await;
    // No new content in a terminating namespace.
    let (code, reason) = api_error(
        api.create(&PostParams::default(), &cm("new", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(
        namespaces.get("tenant").await.is_ok(),
        "waits for the held object"
    );

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    eventually("namespace removed", || async {
        server.get("", "namespaces", "", "tenant").is_none()
    })
    .await;
}

#[tokio::test]
async fn request_counters_show_idle_reconciles() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"k": "v"}});
    api.patch("c", &PatchParams::apply("op"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    let rv = server.resource_version();
    server.reset_counts();
    assert_eq!(server.counts().writes(), 0);

    // A "reconcile" that reads and re-applies the same configuration.
    api.get("c").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    api.patch("c", &PatchParams::apply("op"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    let counts = server.counts();
    assert_eq!((counts.get, counts.list, counts.patch), (1, 1, 1));
    assert_eq!(counts.writes(), 1);
    assert_eq!(
        server.resource_version(),
        rv,
        "an identical apply stores nothing"
    );

    server.reset_counts();
    api.create(&PostParams::default(), &cm("d", json!({})))
        .await
        .unwrap();
    api.replace("d", &PostParams::default(), &api.get("d").await.unwrap())
        .await
        .unwrap();
    api.delete("d", &DeleteParams::default()).await.unwrap();
    let counts = server.counts();
    assert_eq!(
        (counts.create, counts.update, counts.delete, counts.get),
        (1, 1, 1, 1)
    );
    assert_eq!(server.counts().reads(), 1);
}

#[tokio::test]
async fn kube_client_from_the_written_kubeconfig() {
    let server = start().await;
    let kubeconfig = kube::config::Kubeconfig::read_from(server.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    let client = kube::Client::try_from(config).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let ns: Api<Namespace> = Api::all(client);
    assert!(ns.get("default").await.is_ok());
}

/// A kube-runtime `Controller` (watcher, reflector, owned objects) runs on the server: it
/// reconciles a ConfigMap into an owned Secret by server-side apply, re-applying the same
/// configuration stores nothing, and the Secret is collected with its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_and_idles() {
    use kube::Resource as _;
    use kube::runtime::controller::{Action, Controller};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Ctx {
        client: kube::Client,
        runs: AtomicU64,
    }
    async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let name = format!("{}-secret", cm.metadata.name.as_deref().unwrap_or_default());
        let owner = cm
            .controller_owner_ref(&())
            .expect("a stored object has a uid");
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "ownerReferences": [owner]},
            "stringData": {"from": cm.metadata.name}});
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), "default");
        api.patch(
            &name,
            &PatchParams::apply("ctrl").force(),
            &Patch::Apply(&secret),
        )
        .await?;
        ctx.runs.fetch_add(1, Ordering::SeqCst);
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let server = start().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        runs: AtomicU64::new(0),
    });
    let controller = Controller::new(cms.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    cms.create(&PostParams::default(), &cm("app", json!({"k": "v"})))
        .await
        .unwrap();
    eventually("the controller creates the secret", || async {
        server.get("", "secrets", "default", "app-secret").is_some()
    })
    .await;
    let secret = secrets.get("app-secret").await.unwrap();
    assert_eq!(secret.data.unwrap()["from"].0, b"app");
    let secret_rv = secret.metadata.resource_version;

    // A change to the ConfigMap triggers a reconcile whose apply changes nothing.
    let runs = ctx.runs.load(Ordering::SeqCst);
    cms.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "w"}})),
    )
    .await
    .unwrap();
    server.reset_counts();
    eventually("a second reconcile", || async {
        ctx.runs.load(Ordering::SeqCst) > runs
    })
    .await;
    let counts = server.counts();
    assert_eq!((counts.create, counts.update, counts.delete), (0, 0, 0));
    assert_eq!(
        secrets
            .get("app-secret")
            .await
            .unwrap()
            .metadata
            .resource_version,
        secret_rv,
        "the second reconcile stored nothing"
    );

    cms.delete("app", &DeleteParams::default()).await.unwrap();
    eventually("the secret is collected with its owner", || async {
        server.get("", "secrets", "default", "app-secret").is_none()
    })
    .await;
    task.abort();
}

/// kube-runtime's finalizer helper: it adds its finalizer with a JSON patch that tests for
/// `null`, and removes it by index after cleanup, which completes the deletion.
#[tokio::test]
async fn kube_runtime_finalizer_helper() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};
    use std::sync::Arc;

    let server = start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("fin", json!({})))
        .await
        .unwrap();
    let step = async |expect: &'static str| {
        let obj = Arc::new(api.get("fin").await.unwrap());
        finalizer(&api, "example.com/fin", obj, |event| async move {
            let got = match event {
                Event::Apply(_) => "apply",
                Event::Cleanup(_) => "cleanup",
            };
            assert_eq!(got, expect);
            Ok::<_, kube::Error>(Action::await_change())
        })
        .await
        .unwrap();
    };
    // The first run only adds the finalizer; the second reconciles.
    step("none").await;
    assert_eq!(
        api.get("fin").await.unwrap().metadata.finalizers,
        Some(vec!["example.com/fin".to_string()])
    );
    step("apply").await;
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    step("cleanup").await;
    assert!(server.get("", "configmaps", "default", "fin").is_none());
}

/// A namespace whose `spec.finalizers` are cleared through `/finalize` goes once empty.
#[tokio::test]
async fn namespace_finalize_subresource() {
    let server = start().await;
    let client = server.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "stuck"}})).unwrap();
    let created = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    // A main-resource write cannot change spec.finalizers.
    let mut edited = namespaces.get("stuck").await.unwrap();
    edited.spec = Some(serde_json::from_value(json!({"finalizers": []})).unwrap());
    let kept = namespaces
        .replace("stuck", &PostParams::default(), &edited)
        .await
        .unwrap();
    assert_eq!(
        kept.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );

    let mut body = namespaces.get("stuck").await.unwrap();
    body.spec = Some(serde_json::from_value(json!({"finalizers": ["example.com/ns"]})).unwrap());
    let req = http::Request::put("/api/v1/namespaces/stuck/finalize")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    let ns: Namespace = client.request(req).await.unwrap();
    assert_eq!(
        ns.spec.unwrap().finalizers,
        Some(vec!["example.com/ns".to_string()])
    );

    namespaces
        .delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        namespaces.get("stuck").await.is_ok(),
        "held by example.com/ns"
    );
    let mut body = namespaces.get("stuck").await.unwrap();
    body.spec = Some(serde_json::from_value(json!({"finalizers": []})).unwrap());
    let req = http::Request::put("/api/v1/namespaces/stuck/finalize")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client.request::<Namespace>(req).await.unwrap();
    assert!(server.get("", "namespaces", "", "stuck").is_none());
}

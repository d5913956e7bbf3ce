//! The garbage collector: owner references (background, foreground, orphan) and namespace
//! deletion. It runs in the background after writes, as the real controller manager does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

use crate::ops::{
    self, Deleted, FOREGROUND, ORPHAN, Propagation, finalizers, is_deleting, is_namespace,
};
use crate::store::{ObjectKey, Store};

fn owner_uids(obj: &Value) -> Vec<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn without_finalizer(obj: &mut Value, name: &str) {
    let mut fins = finalizers(obj);
    fins.retain(|f| f != name);
    ops::set_finalizers(obj, &fins);
}

/// One collection pass. Returns whether it changed anything.
pub fn gc_pass(store: &mut Store) -> bool {
    let start = store.current_rv();
    let keys = store.gc_candidates();
    if keys.is_empty() {
        return false;
    }
    let mut dependents: HashMap<String, Vec<ObjectKey>> = HashMap::new();
    for k in &keys {
        if let Some(obj) = store.get(k) {
            for uid in owner_uids(obj) {
                dependents.entry(uid).or_default().push(k.clone());
            }
        }
    }

    for k in keys.iter().filter(|k| is_namespace(k)) {
        if !store.get(k).is_some_and(is_deleting) {
            continue;
        }
        let contents: Vec<ObjectKey> = store
            .keys()
            .into_iter()
            .filter(|c| c.namespace == k.name)
            .collect();
        if contents.is_empty() {
            // The namespace controller removes only its own finalizer.
            ops::internal_update(store, k, |ns| {
                if let Some(fins) = ns["spec"]["finalizers"].as_array_mut() {
                    fins.retain(|f| f != "kubernetes");
                    if fins.is_empty()
                        && let Some(m) = ns["spec"].as_object_mut()
                    {
                        m.remove("finalizers");
                    }
                }
            });
        } else {
            for c in contents {
                if !store.get(&c).is_some_and(is_deleting) {
                    ops::mark_deleted(store, &c, Propagation::Background);
                }
            }
        }
    }

    for k in &keys {
        let Some(obj) = store.get(k) else { continue };
        if !is_deleting(obj) {
            continue;
        }
        let fins = finalizers(obj);
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let deps: Vec<ObjectKey> = dependents
            .get(&uid)
            .map(|d| {
                d.iter()
                    .filter(|d| store.get(d).is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if fins.iter().any(|f| f == ORPHAN) {
            for d in &deps {
                ops::internal_update(store, d, |dep| {
                    if let Some(refs) = dep["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(&uid));
                        if refs.is_empty() {
                            dep["metadata"]
                                .as_object_mut()
                                .map(|m| m.remove("ownerReferences"));
                        }
                    }
                });
            }
            ops::internal_update(store, k, |o| without_finalizer(o, ORPHAN));
        } else if fins.iter().any(|f| f == FOREGROUND) {
            if deps.is_empty() {
                ops::internal_update(store, k, |o| without_finalizer(o, FOREGROUND));
            } else {
                for d in &deps {
                    if !store.get(d).is_some_and(is_deleting) {
                        ops::mark_deleted(store, d, Propagation::Foreground);
                    }
                }
            }
        }
    }

    for k in &keys {
        let Some(obj) = store.get(k) else { continue };
        let owners = owner_uids(obj);
        if owners.is_empty() || is_deleting(obj) {
            continue;
        }
        if owners.iter().all(|u| store.key_of_uid(u).is_none()) {
            let _: Deleted = ops::mark_deleted(store, k, Propagation::Background);
        }
    }
    store.current_rv() != start
}

/// Runs collection passes whenever the store changes.
pub async fn run(store: Arc<Mutex<Store>>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        for _ in 0..100 {
            let changed = {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                gc_pass(&mut s)
            };
            if !changed {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    fn cm(name: &str, uid: &str, owner: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": name, "namespace": "default", "uid": uid}});
        if let Some(o) = owner {
            v["metadata"]["ownerReferences"] =
                json!([{"uid": o, "name": "x", "kind": "ConfigMap", "apiVersion": "v1"}]);
        }
        v
    }

    fn settle(store: &mut Store) {
        while gc_pass(store) {}
    }

    #[test]
    fn background_and_foreground_cascade() {
        let mut store = Store::new(Registry::builtin(), 100);
        let gr = (String::new(), "configmaps".to_string());
        let k = |n: &str| ObjectKey::new(gr.clone(), "default", n);
        store.insert(k("owner"), cm("owner", "o", None));
        store.insert(k("child"), cm("child", "c", Some("o")));
        store.insert(k("grandchild"), cm("grandchild", "g", Some("c")));
        settle(&mut store);
        assert!(store.get(&k("grandchild")).is_some());
        ops::mark_deleted(&mut store, &k("owner"), Propagation::Background);
        settle(&mut store);
        assert!(store.get(&k("child")).is_none());
        assert!(store.get(&k("grandchild")).is_none());

        store.insert(k("owner"), cm("owner", "o2", None));
        let mut child = cm("child", "c2", Some("o2"));
        child["metadata"]["finalizers"] = json!(["keep"]);
        store.insert(k("child"), child);
        ops::mark_deleted(&mut store, &k("owner"), Propagation::Foreground);
        settle(&mut store);
        // The owner waits for its dependent, which waits for its finalizer.
        assert!(is_deleting(store.get(&k("owner")).unwrap()));
        assert!(is_deleting(store.get(&k("child")).unwrap()));
        ops::internal_update(&mut store, &k("child"), |c| ops::set_finalizers(c, &[]));
        settle(&mut store);
        assert!(store.get(&k("child")).is_none());
        assert!(store.get(&k("owner")).is_none());
    }

    #[test]
    fn orphan_keeps_dependents() {
        let mut store = Store::new(Registry::builtin(), 100);
        let gr = (String::new(), "configmaps".to_string());
        let k = |n: &str| ObjectKey::new(gr.clone(), "default", n);
        store.insert(k("owner"), cm("owner", "o", None));
        store.insert(k("child"), cm("child", "c", Some("o")));
        ops::mark_deleted(&mut store, &k("owner"), Propagation::Orphan);
        settle(&mut store);
        assert!(store.get(&k("owner")).is_none());
        let child = store.get(&k("child")).unwrap();
        assert!(child["metadata"]["ownerReferences"].is_null());
    }
}

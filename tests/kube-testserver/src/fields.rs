//! Field ownership for server-side apply: field sets at leaf granularity over JSON paths,
//! their `FieldsV1` encoding, and the apply and update rules over `managedFields`.
//!
//! A leaf is a scalar, a list (lists are atomic) or an empty map. Pure functions only.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A path of map keys from the object root.
pub type Path = Vec<String>;
/// A set of owned leaf paths.
pub type FieldSet = BTreeSet<Path>;

/// Paths the server sets itself, which no manager owns.
fn untracked(path: &[String]) -> bool {
    match path {
        [] => true,
        [top] if top == "apiVersion" || top == "kind" || top == "metadata" => true,
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The tracked leaf paths of an object. Nulls are not leaves.
pub fn leaves(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v {
            Value::Null => {}
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !untracked(path) {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The value at a path.
pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Removes the value at a path, then any maps it leaves empty (but never a top-level field).
pub fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *v;
    for k in parents {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(map) = cur.as_object_mut() {
        map.remove(last);
    }
    if parents.len() > 1
        && get_path(v, parents).is_some_and(|p| p.as_object().is_some_and(Map::is_empty))
    {
        remove_path(v, parents);
    }
}

/// Whether one path is a prefix of the other.
pub fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// Leaf paths whose value differs between two objects: changed, added and removed ones.
pub fn changed_leaves(old: &Value, new: &Value) -> FieldSet {
    let old_leaves = leaves(old);
    let new_leaves = leaves(new);
    old_leaves
        .symmetric_difference(&new_leaves)
        .cloned()
        .chain(
            new_leaves
                .intersection(&old_leaves)
                .filter(|p| get_path(old, p) != get_path(new, p))
                .cloned(),
        )
        .collect()
}

/// Merges an applied configuration into an object: maps merge, everything else replaces.
pub fn merge_applied(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && av.is_object() => merge_applied(tv, av),
                    _ => {
                        t.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// Encodes a field set as `FieldsV1`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for k in path {
            cur = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

/// Decodes `FieldsV1`: a node without children is a leaf. Non-`f:` keys are kept verbatim.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.as_str() != ".").collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k.strip_prefix("f:").unwrap_or(k).to_string());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Renders a path as the API server names fields in conflicts: `.spec.replicas`.
pub fn path_string(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Manager {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// Empty for the main resource, else e.g. `status`.
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Manager {
    fn same_entry(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// Reads `metadata.managedFields`.
pub fn read_managers(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| Manager {
                    manager: e["manager"].as_str().unwrap_or_default().to_string(),
                    operation: e["operation"].as_str().unwrap_or("Update").to_string(),
                    subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
                    api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                    time: e["time"].as_str().unwrap_or_default().to_string(),
                    fields: from_fields_v1(&e["fieldsV1"]),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `metadata.managedFields`, dropping empty entries.
pub fn write_managers(obj: &mut Value, managers: &[Manager]) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.fields.is_empty())
        .map(|m| {
            let mut e = json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&m.fields),
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    let meta = &mut obj["metadata"];
    if entries.is_empty() {
        if let Some(m) = meta.as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        meta["managedFields"] = Value::Array(entries);
    }
}

/// Who is writing, for field ownership.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

/// Server-side apply of `applied` (already reduced to the fields this subresource may set)
/// onto `live` (the stored object, or a skeleton when creating). Returns the merged object
/// with updated managed fields, or the conflicts when `force` is false.
pub fn apply(
    live: &Value,
    applied: &Value,
    writer: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut managers = read_managers(live);
    let new_set = leaves(applied);
    let mut conflicts = Vec::new();
    for m in managers.iter_mut().filter(|m| m.manager != writer.manager) {
        let mut lost = Vec::new();
        for owned in &m.fields {
            for p in new_set.iter().filter(|p| overlaps(p, owned)) {
                let differs = get_path(applied, p) != get_path(live, p);
                let empty_map = get_path(applied, p).is_some_and(|v| v == &json!({}));
                if differs && !empty_map {
                    conflicts.push(Conflict {
                        manager: m.manager.clone(),
                        field: path_string(p),
                    });
                    lost.push(owned.clone());
                }
            }
        }
        if force {
            for p in lost {
                m.fields.remove(&p);
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.dedup();
        return Err(conflicts);
    }
    let mut obj = live.clone();
    let previous = managers
        .iter()
        .find(|m| m.same_entry(writer.manager, "Apply", writer.subresource))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for dropped in previous.difference(&new_set) {
        let still_owned = managers
            .iter()
            .filter(|m| !m.same_entry(writer.manager, "Apply", writer.subresource))
            .any(|m| m.fields.iter().any(|f| overlaps(f, dropped)))
            || new_set.iter().any(|p| p.starts_with(dropped));
        if !still_owned {
            remove_path(&mut obj, dropped);
        }
    }
    merge_applied(&mut obj, applied);
    match managers
        .iter_mut()
        .find(|m| m.same_entry(writer.manager, "Apply", writer.subresource))
    {
        Some(m) => {
            if m.fields != new_set {
                m.time = writer.now.to_string();
            }
            m.fields = new_set;
            m.api_version = writer.api_version.to_string();
        }
        None => managers.push(Manager {
            manager: writer.manager.to_string(),
            operation: "Apply".into(),
            subresource: writer.subresource.to_string(),
            api_version: writer.api_version.to_string(),
            time: writer.now.to_string(),
            fields: new_set,
        }),
    }
    prune_missing(&obj, &mut managers);
    write_managers(&mut obj, &managers);
    Ok(obj)
}

/// Records a non-apply write (create, update, patch): the writer takes every field it changed.
pub fn record_update(old: &Value, new: &mut Value, writer: &Writer<'_>) {
    let mut managers = read_managers(old);
    let changed = changed_leaves(old, new);
    if changed.is_empty() {
        write_managers(new, &managers);
        return;
    }
    for m in managers
        .iter_mut()
        .filter(|m| !m.same_entry(writer.manager, "Update", writer.subresource))
    {
        m.fields.retain(|f| !changed.iter().any(|c| overlaps(c, f)));
    }
    let taken: FieldSet = changed
        .into_iter()
        .filter(|p| get_path(new, p).is_some())
        .collect();
    match managers
        .iter_mut()
        .find(|m| m.same_entry(writer.manager, "Update", writer.subresource))
    {
        Some(m) => {
            m.fields.extend(taken);
            m.time = writer.now.to_string();
            m.api_version = writer.api_version.to_string();
        }
        None => managers.push(Manager {
            manager: writer.manager.to_string(),
            operation: "Update".into(),
            subresource: writer.subresource.to_string(),
            api_version: writer.api_version.to_string(),
            time: writer.now.to_string(),
            fields: taken,
        }),
    }
    prune_missing(new, &mut managers);
    write_managers(new, &managers);
}

/// Drops owned paths that no longer exist in the object.
fn prune_missing(obj: &Value, managers: &mut [Manager]) {
    for m in managers {
        m.fields.retain(|p| get_path(obj, p).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            subresource: "",
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
        }
    }

    fn owned(obj: &Value, manager: &str) -> Vec<String> {
        read_managers(obj)
            .into_iter()
            .filter(|m| m.manager == manager)
            .flat_map(|m| m.fields.into_iter().map(|p| path_string(&p)))
            .collect()
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"apiVersion": "v1", "metadata": {"name": "x", "labels": {"a": "1"}},
            "data": {"k": "v", "l": ""}, "spec": {"list": [1, 2], "empty": {}}});
        let set = leaves(&obj);
        assert_eq!(set.len(), 5);
        let encoded = to_fields_v1(&set);
        assert_eq!(encoded["f:metadata"]["f:labels"]["f:a"], json!({}));
        assert_eq!(from_fields_v1(&encoded), set);
    }

    #[test]
    fn apply_conflict_force_and_removal() {
        let live = json!({"metadata": {"name": "x"}});
        let a1 = json!({"data": {"a": "1", "b": "2"}});
        let obj = apply(&live, &a1, &w("one"), false).unwrap();
        assert_eq!(owned(&obj, "one"), vec![".data.a", ".data.b"]);

        // Same value from another manager: shared ownership, no conflict.
        let obj = apply(&obj, &json!({"data": {"a": "1"}}), &w("two"), false).unwrap();
        assert_eq!(owned(&obj, "two"), vec![".data.a"]);

        // A different value conflicts.
        let err = apply(&obj, &json!({"data": {"b": "3"}}), &w("two"), false).unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "one".into(),
                field: ".data.b".into()
            }]
        );
        // Force takes it.
        let obj = apply(
            &obj,
            &json!({"data": {"a": "1", "b": "3"}}),
            &w("two"),
            true,
        )
        .unwrap();
        assert_eq!(obj["data"]["b"], "3");
        assert_eq!(owned(&obj, "one"), vec![".data.a"]);

        // "one" drops a (still owned by two: kept) and c it never had.
        let obj = apply(&obj, &json!({"data": {"c": "9"}}), &w("one"), false).unwrap();
        assert_eq!(obj["data"]["a"], "1");
        // "two" drops b: nobody else owns it, so it goes.
        let obj = apply(&obj, &json!({"data": {"a": "1"}}), &w("two"), false).unwrap();
        assert_eq!(obj["data"], json!({"a": "1", "c": "9"}));
    }

    #[test]
    fn update_takes_changed_fields() {
        let old = apply(
            &json!({"metadata": {"name": "x"}}),
            &json!({"spec": {"replicas": 1, "image": "a"}}),
            &w("applier"),
            false,
        )
        .unwrap();
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(3);
        record_update(&old, &mut new, &w("scaler"));
        assert_eq!(owned(&new, "applier"), vec![".spec.image"]);
        assert_eq!(owned(&new, "scaler"), vec![".spec.replicas"]);
        // Re-applying the old value now conflicts with the updater.
        let err = apply(
            &new,
            &json!({"spec": {"replicas": 1, "image": "a"}}),
            &w("applier"),
            false,
        )
        .unwrap_err();
        assert_eq!(err[0].manager, "scaler");
    }

    #[test]
    fn remove_path_prunes_empty_maps() {
        let mut v = json!({"spec": {"a": {"b": {"c": 1}}, "d": 2}});
        remove_path(&mut v, &["spec".into(), "a".into(), "b".into(), "c".into()]);
        assert_eq!(v, json!({"spec": {"d": 2}}));
    }
}

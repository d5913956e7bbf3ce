//! The object store: JSON objects keyed by group, resource, namespace and name, one global
//! `resourceVersion` counter, and a bounded history of watch events.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::selector::Selectors;

use crate::resources::{GroupResource, Registry};

/// Where an object lives. `namespace` is empty for cluster-scoped objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub gr: GroupResource,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(gr: GroupResource, namespace: &str, name: &str) -> Self {
        Self {
            gr,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change to the store.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub key: ObjectKey,
    pub rv: u64,
    /// The object after the change (for `Deleted`, its last state at the deletion's version).
    pub object: Value,
    /// The object before the change, for `Modified`.
    pub previous: Option<Value>,
    /// The watch line most watchers send for this event, rendered once: the served
    /// version it was rendered for, and the line.
    pub rendered: OnceLock<(String, Bytes)>,
}

/// How many events a watch may have pending before it is cut with 410 Gone.
pub const WATCH_BUFFER: usize = 16 * 1024;

/// A registered watch, as the store sees it: the events are filtered here, so that a watch
/// is only woken for the events it will send.
struct WatchSlot {
    gr: GroupResource,
    namespace: Option<String>,
    selectors: Selectors,
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

impl WatchSlot {
    /// Hands an event to the watch if it is in its selection; false once the watch is gone.
    fn offer(&self, event: &Arc<Event>) -> bool {
        if event.key.gr != self.gr
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != event.key.namespace)
        {
            return !self.tx.is_closed();
        }
        let selected = self.selectors.matches(&event.object)
            || event
                .previous
                .as_ref()
                .is_some_and(|p| self.selectors.matches(p));
        if !selected {
            return !self.tx.is_closed();
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The receiving end of a watch registration.
pub struct Subscription {
    pub events: mpsc::Receiver<Arc<Event>>,
    pub lagged: Arc<AtomicBool>,
}

impl Subscription {
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }
}

/// A watch asked to start before the history window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

pub struct Store {
    pub registry: Registry,
    objects: HashMap<GroupResource, BTreeMap<(String, String), Value>>,
    uids: HashMap<String, ObjectKey>,
    /// Objects the garbage collector must look at: with owners, or being deleted.
    gc_interest: BTreeSet<ObjectKey>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Every event with a version above this one is still in `history`.
    compacted: u64,
    watchers: Vec<WatchSlot>,
    /// Woken on every change, for the garbage collector and the simulated node.
    pub wake: Vec<Arc<Notify>>,
    next_ip: u32,
}

pub fn rv_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

impl Store {
    pub fn new(registry: Registry, history_cap: usize) -> Self {
        Self {
            registry,
            objects: HashMap::new(),
            uids: HashMap::new(),
            gc_interest: BTreeSet::new(),
            rv: 1,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 1,
            watchers: Vec::new(),
            wake: Vec::new(),
            next_ip: 1,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects
            .get(&key.gr)?
            .get(&(key.namespace.clone(), key.name.clone()))
    }

    /// Objects of a type, in one namespace or all, ordered by namespace and name.
    pub fn list<'a>(
        &'a self,
        gr: &GroupResource,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a (String, String), &'a Value)> + 'a {
        self.objects
            .get(gr)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((ns, _), _)| namespace.is_none_or(|n| n == ns))
    }

    /// Every key of every object, for the garbage collector.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.objects
            .iter()
            .flat_map(|(gr, m)| m.keys().map(|(ns, n)| ObjectKey::new(gr.clone(), ns, n)))
            .collect()
    }

    /// Objects with owner references or a deletion timestamp.
    pub fn gc_candidates(&self) -> Vec<ObjectKey> {
        self.gc_interest.iter().cloned().collect()
    }

    fn track(&mut self, key: &ObjectKey, obj: &Value) {
        let meta = &obj["metadata"];
        let owned = meta["ownerReferences"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        if owned || !meta["deletionTimestamp"].is_null() {
            self.gc_interest.insert(key.clone());
        } else {
            self.gc_interest.remove(key);
        }
    }

    pub fn key_of_uid(&self, uid: &str) -> Option<&ObjectKey> {
        self.uids.get(uid)
    }

    fn bump(&mut self, obj: &mut Value) -> u64 {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.rv
    }

    fn emit(&mut self, event: Event) {
        let event = Arc::new(event);
        self.history.push_back(event.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.watchers.retain(|w| w.offer(&event));
        for w in &self.wake {
            w.notify_one();
        }
    }

    /// Stores a new object under the next resourceVersion.
    pub fn insert(&mut self, key: ObjectKey, mut obj: Value) -> Value {
        let rv = self.bump(&mut obj);
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            self.uids.insert(uid.to_string(), key.clone());
        }
        self.track(&key, &obj);
        self.objects
            .entry(key.gr.clone())
            .or_default()
            .insert((key.namespace.clone(), key.name.clone()), obj.clone());
        self.emit(Event {
            kind: EventKind::Added,
            key,
            rv,
            object: obj.clone(),
            previous: None,
            rendered: OnceLock::new(),
        });
        obj
    }

    /// Replaces a stored object under the next resourceVersion.
    pub fn replace(&mut self, key: ObjectKey, mut obj: Value) -> Value {
        let rv = self.bump(&mut obj);
        self.track(&key, &obj);
        let previous = self
            .objects
            .entry(key.gr.clone())
            .or_default()
            .insert((key.namespace.clone(), key.name.clone()), obj.clone());
        self.emit(Event {
            kind: EventKind::Modified,
            key,
            rv,
            object: obj.clone(),
            previous,
            rendered: OnceLock::new(),
        });
        obj
    }

    /// Removes an object; the returned last state carries the deletion's resourceVersion.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(&key.gr)?
            .remove(&(key.namespace.clone(), key.name.clone()))?;
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            self.uids.remove(uid);
        }
        self.gc_interest.remove(key);
        let rv = self.bump(&mut obj);
        self.emit(Event {
            kind: EventKind::Deleted,
            key: key.clone(),
            rv,
            object: obj.clone(),
            previous: None,
            rendered: OnceLock::new(),
        });
        Some(obj)
    }

    /// Registers a watch: it gets the events of its type, namespace and selection, from
    /// the next change on. `lagged` is set if it fell `WATCH_BUFFER` events behind.
    pub fn subscribe(
        &mut self,
        gr: GroupResource,
        namespace: Option<String>,
        selectors: Selectors,
    ) -> Subscription {
        let (tx, events) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        self.watchers.push(WatchSlot {
            gr,
            namespace,
            selectors,
            tx,
            lagged: lagged.clone(),
        });
        Subscription { events, lagged }
    }

    /// The events after `rv`, or `TooOld` when some of them have left the window.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, TooOld> {
        if rv < self.compacted {
            return Err(TooOld);
        }
        Ok(self.history.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    /// Forgets the event window: watches must start from now on.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.compacted
    }

    /// A fresh service cluster IP in 10.96.0.0/12.
    pub fn allocate_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.96.{}.{}", (n / 250) % 256, n % 250 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_window_and_versions() {
        let mut store = Store::new(Registry::builtin(), 2);
        let gr = (String::new(), "configmaps".to_string());
        let k = |n: &str| ObjectKey::new(gr.clone(), "default", n);
        let a = store.insert(k("a"), json!({"metadata": {"name": "a", "uid": "u1"}}));
        let start = rv_of(&a).unwrap();
        store.insert(k("b"), json!({"metadata": {"name": "b"}}));
        assert_eq!(store.events_since(start).unwrap().len(), 1);
        store.remove(&k("a"));
        assert!(store.key_of_uid("u1").is_none());
        assert_eq!(store.events_since(start).unwrap().len(), 2);
        assert_eq!(store.events_since(start - 1).err(), Some(TooOld));
        assert_eq!(store.current_rv(), start + 2);
        assert_eq!(store.list(&gr, Some("default")).count(), 1);
    }
}

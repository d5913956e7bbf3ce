//! The simulated node: Deployments, StatefulSets and Jobs get the status their controllers
//! would write, once a configurable delay has passed since their spec last changed. A test
//! can mark a workload failing, and it then never becomes ready.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::ops::{self, is_deleting, now};
use crate::store::{ObjectKey, Store};

/// Workloads marked failing, by namespace and name.
pub type Failing = Arc<Mutex<HashSet<(String, String)>>>;

const WORKLOADS: [(&str, &str); 3] = [
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("batch", "jobs"),
];

/// The phase a workload is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its spec changed less than the ready delay ago.
    Starting,
    Ready,
    Failing,
}

fn int(v: &Value, default: i64) -> i64 {
    v.as_i64().unwrap_or(default)
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, t: &str) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": t, "lastUpdateTime": t})
}

/// Drops zero counters, as the API's `omitempty` does.
fn counters(status: &mut Map<String, Value>, pairs: &[(&str, i64)]) {
    for (k, v) in pairs {
        if *v != 0 {
            status.insert((*k).to_string(), json!(v));
        }
    }
}

/// The status a workload's controller would write in a phase.
pub fn desired_status(resource: &str, obj: &Value, phase: Phase, t: &str) -> Value {
    let spec = &obj["spec"];
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let generation = int(&obj["metadata"]["generation"], 1);
    let mut s = Map::new();
    match resource {
        "deployments" => {
            let r = int(&spec["replicas"], 1);
            s.insert("observedGeneration".into(), json!(generation));
            let ready = if phase == Phase::Ready { r } else { 0 };
            counters(
                &mut s,
                &[
                    ("replicas", r),
                    ("updatedReplicas", r),
                    ("readyReplicas", ready),
                    ("availableReplicas", ready),
                    ("unavailableReplicas", r - ready),
                ],
            );
            let rs = format!("ReplicaSet \"{name}-7d4b9c8f5\"");
            let conditions = match phase {
                Phase::Ready => vec![
                    condition(
                        "Available",
                        "True",
                        "MinimumReplicasAvailable",
                        "Deployment has minimum availability.",
                        t,
                    ),
                    condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &format!("{rs} has successfully progressed."),
                        t,
                    ),
                ],
                Phase::Starting => vec![
                    condition(
                        "Available",
                        "False",
                        "MinimumReplicasUnavailable",
                        "Deployment does not have minimum availability.",
                        t,
                    ),
                    condition(
                        "Progressing",
                        "True",
                        "ReplicaSetUpdated",
                        &format!("{rs} is progressing."),
                        t,
                    ),
                ],
                Phase::Failing => vec![
                    condition(
                        "Available",
                        "False",
                        "MinimumReplicasUnavailable",
                        "Deployment does not have minimum availability.",
                        t,
                    ),
                    condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &format!("{rs} has timed out progressing."),
                        t,
                    ),
                ],
            };
            s.insert("conditions".into(), json!(conditions));
        }
        "statefulsets" => {
            let r = int(&spec["replicas"], 1);
            let ready = if phase == Phase::Ready { r } else { 0 };
            let revision = format!("{name}-5c8d7f9b6d");
            s.insert("observedGeneration".into(), json!(generation));
            s.insert("replicas".into(), json!(r));
            counters(
                &mut s,
                &[
                    ("readyReplicas", ready),
                    ("availableReplicas", ready),
                    ("currentReplicas", r),
                    ("updatedReplicas", r),
                ],
            );
            s.insert("currentRevision".into(), json!(revision));
            s.insert("updateRevision".into(), json!(revision));
            s.insert("collisionCount".into(), json!(0));
        }
        "jobs" => {
            let start = obj["status"]["startTime"].as_str().unwrap_or(t).to_string();
            s.insert("startTime".into(), json!(start));
            match phase {
                Phase::Starting => {
                    s.insert("active".into(), json!(int(&spec["parallelism"], 1)));
                    s.insert("ready".into(), json!(0));
                }
                Phase::Ready => {
                    s.insert("succeeded".into(), json!(int(&spec["completions"], 1)));
                    s.insert("ready".into(), json!(0));
                    s.insert("completionTime".into(), json!(t));
                    s.insert(
                        "conditions".into(),
                        json!([
                            condition(
                                "SuccessCriteriaMet",
                                "True",
                                "CompletionsReached",
                                "Reached expected number of succeeded pods",
                                t
                            ),
                            condition(
                                "Complete",
                                "True",
                                "CompletionsReached",
                                "Reached expected number of succeeded pods",
                                t
                            ),
                        ]),
                    );
                }
                Phase::Failing => {
                    s.insert("failed".into(), json!(int(&spec["backoffLimit"], 6) + 1));
                    s.insert("ready".into(), json!(0));
                    s.insert(
                        "conditions".into(),
                        json!([
                            condition(
                                "FailureTarget",
                                "True",
                                "BackoffLimitExceeded",
                                "Job has reached the specified backoff limit",
                                t
                            ),
                            condition(
                                "Failed",
                                "True",
                                "BackoffLimitExceeded",
                                "Job has reached the specified backoff limit",
                                t
                            ),
                        ]),
                    );
                }
            }
        }
        _ => {}
    }
    Value::Object(s)
}

/// A status without its timestamps, to tell real changes from clock ticks.
fn timeless(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(m) = s.as_object_mut() {
        m.remove("completionTime");
        m.remove("startTime");
    }
    if let Some(conds) = s["conditions"].as_array_mut() {
        for c in conds {
            if let Some(m) = c.as_object_mut() {
                m.remove("lastTransitionTime");
                m.remove("lastUpdateTime");
            }
        }
    }
    s
}

/// The simulated node's bookkeeping: when each workload's generation was first seen.
pub struct Node {
    pub ready_delay: Duration,
    pub failing: Failing,
    seen: HashMap<ObjectKey, (i64, Instant)>,
}

impl Node {
    pub fn new(ready_delay: Duration, failing: Failing) -> Self {
        Self {
            ready_delay,
            failing,
            seen: HashMap::new(),
        }
    }

    /// Brings every workload's status up to date; returns when to look again.
    pub fn sync(&mut self, store: &mut Store) -> Option<Instant> {
        let now_i = Instant::now();
        let mut next: Option<Instant> = None;
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut live = HashSet::new();
        let mut updates: Vec<(ObjectKey, Value)> = Vec::new();
        for (group, resource) in WORKLOADS {
            let gr = (group.to_string(), resource.to_string());
            for ((ns, name), obj) in store.list(&gr, None) {
                let key = ObjectKey::new(gr.clone(), ns, name);
                live.insert(key.clone());
                if is_deleting(obj) {
                    continue;
                }
                let generation = int(&obj["metadata"]["generation"], 1);
                let entry = self.seen.entry(key.clone()).or_insert((generation, now_i));
                if entry.0 != generation {
                    *entry = (generation, now_i);
                }
                let due = entry.1 + self.ready_delay;
                let phase = if failing.contains(&(key.namespace.clone(), key.name.clone())) {
                    Phase::Failing
                } else if now_i >= due {
                    Phase::Ready
                } else {
                    next = Some(next.map_or(due, |n: Instant| n.min(due)));
                    Phase::Starting
                };
                let t = now();
                let mut desired = desired_status(resource, obj, phase, &t);
                let current = &obj["status"];
                if timeless(&desired) == timeless(current) {
                    continue;
                }
                // Keep transition times of conditions that did not change.
                if let (Some(new), Some(old)) = (
                    desired["conditions"].as_array_mut(),
                    current["conditions"].as_array(),
                ) {
                    for c in new.iter_mut() {
                        if let Some(o) = old
                            .iter()
                            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                        {
                            c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                        }
                    }
                }
                updates.push((key, desired));
            }
        }
        for (key, desired) in updates {
            ops::internal_update(store, &key, |o| o["status"] = desired);
        }
        self.seen.retain(|k, _| live.contains(k));
        next
    }
}

/// Runs the node whenever the store changes or a workload becomes due.
pub async fn run(store: Arc<Mutex<Store>>, wake: Arc<Notify>, mut node: Node) {
    loop {
        let next = {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            node.sync(&mut s)
        };
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_phases() {
        let d = json!({"metadata": {"name": "web", "generation": 3}, "spec": {"replicas": 2}});
        let ready = desired_status("deployments", &d, Phase::Ready, "t");
        assert_eq!(ready["readyReplicas"], 2);
        assert_eq!(ready["availableReplicas"], 2);
        assert_eq!(ready["observedGeneration"], 3);
        assert_eq!(ready["conditions"][0]["status"], "True");
        let failing = desired_status("deployments", &d, Phase::Failing, "t");
        assert!(failing["readyReplicas"].is_null());
        assert_eq!(failing["unavailableReplicas"], 2);
        assert_eq!(
            failing["conditions"][1]["reason"],
            "ProgressDeadlineExceeded"
        );
        let job = desired_status("jobs", &json!({"spec": {}}), Phase::Ready, "t");
        assert_eq!(job["succeeded"], 1);
        assert_eq!(job["conditions"][1]["type"], "Complete");
    }
}

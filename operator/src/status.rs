//! Status: conditions computed from what the cluster reports, as pure functions.
//!
//! A condition keeps its `lastTransitionTime` while its status stays the same, so a
//! reconcile that observes nothing new computes an identical status and writes nothing.

use iafactory_crds::plan::{ComponentPlan, TenantPlan};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const MODELS_READY: &str = "ModelsReady";

/// What one Deployment or StatefulSet reports.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadObservation {
    pub desired: i32,
    pub ready: i32,
    /// Whether the controller has seen the latest spec (`observedGeneration`).
    pub up_to_date: bool,
    /// A failure the workload's controller reports, in its own words.
    pub failure: Option<String>,
}

impl WorkloadObservation {
    pub fn of_deployment(deployment: &Deployment) -> Self {
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        let failure = conditions.iter().find_map(|c| {
            let failed = (c.type_ == "Progressing" && c.status == "False")
                || (c.type_ == "ReplicaFailure" && c.status == "True");
            failed.then(|| {
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                    c.message.clone().unwrap_or_default()
                )
            })
        });
        WorkloadObservation {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            up_to_date: status.observed_generation >= deployment.metadata.generation,
            failure,
        }
    }

    pub fn of_stateful_set(set: &StatefulSet) -> Self {
        let desired = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = set.status.clone().unwrap_or_default();
        let failure = status.conditions.unwrap_or_default().iter().find_map(|c| {
            (c.status == "True" && (c.type_ == "Failed" || c.type_ == "ReplicaFailure")).then(
                || {
                    format!(
                        "{}: {}",
                        c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                        c.message.clone().unwrap_or_default()
                    )
                },
            )
        });
        WorkloadObservation {
            desired,
            ready: status.ready_replicas.unwrap_or(0),
            up_to_date: status.observed_generation >= set.metadata.generation,
            failure,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum JobObservation {
    Missing,
    Running,
    Succeeded,
    Failed(String),
}

impl JobObservation {
    pub fn of_job(job: &Job) -> Self {
        let status = job.status.clone().unwrap_or_default();
        for condition in status.conditions.unwrap_or_default() {
            if condition.status != "True" {
                continue;
            }
            match condition.type_.as_str() {
                "Complete" => return JobObservation::Succeeded,
                "Failed" => {
                    return JobObservation::Failed(
                        condition.message.or(condition.reason).unwrap_or_default(),
                    );
                }
                _ => {}
            }
        }
        if status.succeeded.unwrap_or(0) > 0 {
            JobObservation::Succeeded
        } else {
            JobObservation::Running
        }
    }
}

/// What the cluster reports for one tenant, component by component.
#[derive(Clone, Debug, Default)]
pub struct TenantObservation {
    /// Per component name; missing means the workload does not exist (yet).
    pub workloads: std::collections::BTreeMap<String, WorkloadObservation>,
    pub model_preload: Option<JobObservation>,
}

/// Conditions being computed, against the ones already recorded.
pub struct ConditionSet<'a> {
    list: Vec<Condition>,
    previous: &'a [Condition],
    generation: Option<i64>,
    now: &'a Time,
}

impl<'a> ConditionSet<'a> {
    pub fn new(previous: &'a [Condition], generation: Option<i64>, now: &'a Time) -> Self {
        ConditionSet {
            list: Vec::new(),
            previous,
            generation,
            now,
        }
    }

    /// Sets one condition, keeping its transition time when its status is unchanged.
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }

    pub fn into_vec(self) -> Vec<Condition> {
        self.list
    }
}

enum ComponentState {
    Ready,
    Waiting,
    Failed,
}

fn component_condition(
    component: &ComponentPlan,
    observed: Option<&WorkloadObservation>,
    suspended: bool,
) -> (ComponentState, &'static str, String) {
    let kind = if component.stateful {
        "StatefulSet"
    } else {
        "Deployment"
    };
    let Some(observed) = observed else {
        return (
            ComponentState::Waiting,
            "Creating",
            format!("waiting for the {kind} {} to be created", component.name),
        );
    };
    if suspended {
        return (
            ComponentState::Waiting,
            "Suspended",
            format!(
                "{} is scaled to zero while the tenant is suspended; its data is kept",
                component.name
            ),
        );
    }
    if let Some(failure) = &observed.failure {
        return (
            ComponentState::Failed,
            "Failed",
            format!("{kind} {} is failing: {failure}", component.name),
        );
    }
    if !observed.up_to_date {
        return (
            ComponentState::Waiting,
            "RollingOut",
            format!("the {kind} {} is rolling out a new spec", component.name),
        );
    }
    if observed.ready < component.replicas {
        return (
            ComponentState::Waiting,
            "NotReady",
            format!(
                "{}/{} replicas of {} are ready; if this lasts, check `kubectl -n <namespace> describe pods -l iafactory.dz/component={}`",
                observed.ready, component.replicas, component.name, component.name
            ),
        );
    }
    (
        ComponentState::Ready,
        "Ready",
        format!("{}/{} replicas ready", observed.ready, component.replicas),
    )
}

/// The Tenant's conditions: one per component, then Ready, Progressing and Degraded.
pub fn tenant_conditions(
    plan: &TenantPlan,
    observed: &TenantObservation,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut conditions = ConditionSet::new(previous, generation, now);
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    // Degrades the tenant without making it unready.
    let mut degraded: Vec<String> = Vec::new();
    for component in &plan.components {
        let (state, reason, message) = component_condition(
            component,
            observed.workloads.get(&component.name),
            plan.suspended,
        );
        let ready = matches!(state, ComponentState::Ready);
        match state {
            ComponentState::Ready => {}
            ComponentState::Waiting => waiting.push(message.clone()),
            ComponentState::Failed => failed.push(message.clone()),
        }
        conditions.set(component.kind.condition_type(), ready, reason, message);
    }
    if let Some(iafactory_crds::plan::ModelPreloadPlan {
        source: iafactory_crds::plan::ModelSourcePlan::Forbidden { reason },
        ..
    }) = &plan.model_preload
    {
        // No Job runs. The tenant works, without the models it listed: degraded, and
        // still Ready when its components are.
        degraded.push(reason.clone());
        conditions.set(MODELS_READY, false, "ModelSourceForbidden", reason.clone());
    } else if plan.model_preload.is_some() {
        let preload = observed
            .model_preload
            .clone()
            .unwrap_or(JobObservation::Missing);
        let (ok, reason, message) = match &preload {
            JobObservation::Succeeded => {
                (true, "Pulled", "the tenant's models are pulled".to_owned())
            }
            JobObservation::Missing | JobObservation::Running => (
                false,
                "Pulling",
                "the model preload Job is pulling the tenant's models".to_owned(),
            ),
            JobObservation::Failed(why) => {
                let message = format!("the model preload Job failed: {why}");
                failed.push(message.clone());
                (false, "PullFailed", message)
            }
        };
        conditions.set(MODELS_READY, ok, reason, message);
    }

    let (ready, reason, message) = if plan.suspended {
        (
            false,
            "Suspended",
            "the tenant is suspended: workloads are scaled to zero and data is kept".to_owned(),
        )
    } else if !failed.is_empty() {
        (false, "ComponentFailed", failed.join("; "))
    } else if !waiting.is_empty() {
        (false, "Progressing", waiting.join("; "))
    } else {
        (
            true,
            "AllComponentsReady",
            "every component is ready".to_owned(),
        )
    };
    conditions.set(READY, ready, reason, message);
    let progressing = !plan.suspended && failed.is_empty() && !waiting.is_empty();
    conditions.set(
        PROGRESSING,
        progressing,
        if progressing {
            "Reconciling"
        } else {
            "Settled"
        },
        if progressing {
            waiting.join("; ")
        } else {
            "nothing is rolling out".to_owned()
        },
    );
    let (is_degraded, reason, message) = if !failed.is_empty() {
        (
            true,
            "ComponentFailed",
            failed
                .iter()
                .chain(&degraded)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else if !degraded.is_empty() {
        (true, "ModelSourceForbidden", degraded.join("; "))
    } else {
        (
            false,
            "Healthy",
            "no component reports a failure".to_owned(),
        )
    };
    conditions.set(DEGRADED, is_degraded, reason, message);
    conditions.into_vec()
}

/// The conditions of a resource whose spec cannot be acted on: it waits for a change.
pub fn invalid_conditions(
    reason: &str,
    message: &str,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut conditions = ConditionSet::new(previous, generation, now);
    conditions.set(READY, false, reason, message);
    conditions.set(PROGRESSING, false, reason, "waiting for the spec to change");
    conditions.set(DEGRADED, true, reason, message);
    conditions.into_vec()
}

pub fn is_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True")
}

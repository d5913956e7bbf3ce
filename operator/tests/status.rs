//! Conditions from observed workloads, and the checks a KnowledgeBase or Workflow
//! must pass against its Tenant.

use std::collections::BTreeSet;

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::{KnowledgeBase, PlatformConfig, Tenant, TenantPlan, Workflow};
use iafactory_operator::admission::{check_knowledge_base, check_workflow};
use iafactory_operator::status::{
    JobObservation, TenantObservation, WorkloadObservation, is_ready, tenant_conditions,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

fn load(file: &str) -> Manifest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples")
        .join(file);
    manifest::load_paths(&[path]).unwrap().remove(0).manifest
}

fn tenant(file: &str) -> Tenant {
    match load(file) {
        Manifest::Tenant(t) => *t,
        _ => panic!("{file} is a Tenant"),
    }
}

fn plan_of(tenant: &Tenant) -> TenantPlan {
    iafactory_crds::plan(tenant, &PlatformConfig::default()).unwrap()
}

fn time(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn all_ready(plan: &TenantPlan) -> TenantObservation {
    let mut observed = TenantObservation::default();
    for component in &plan.components {
        observed.workloads.insert(
            component.name.clone(),
            WorkloadObservation {
                desired: component.replicas,
                ready: component.replicas,
                up_to_date: true,
                failure: None,
            },
        );
    }
    observed.model_preload = plan
        .model_preload
        .as_ref()
        .map(|_| JobObservation::Succeeded);
    observed
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

#[test]
fn ready_when_every_component_is_and_one_condition_per_component() {
    let plan = plan_of(&tenant("tenant-enterprise-qdrant-gpu.yaml"));
    let conditions = tenant_conditions(&plan, &all_ready(&plan), &[], Some(3), &time(0));
    assert!(is_ready(&conditions));
    for type_ in [
        "DatabaseReady",
        "VectorStoreReady",
        "OllamaReady",
        "ApiReady",
        "ModelsReady",
    ] {
        assert_eq!(condition(&conditions, type_).status, "True", "{type_}");
    }
    assert_eq!(condition(&conditions, "Progressing").status, "False");
    assert_eq!(condition(&conditions, "Degraded").status, "False");
    assert!(conditions.iter().all(|c| c.observed_generation == Some(3)));
}

#[test]
fn a_component_short_of_replicas_is_progressing_with_a_message_that_names_it() {
    let plan = plan_of(&tenant("tenant-enterprise-qdrant-gpu.yaml"));
    let mut observed = all_ready(&plan);
    observed.workloads.get_mut("api").unwrap().ready = 1;
    let conditions = tenant_conditions(&plan, &observed, &[], Some(1), &time(0));
    assert!(!is_ready(&conditions));
    let api = condition(&conditions, "ApiReady");
    assert_eq!(
        (api.status.as_str(), api.reason.as_str()),
        ("False", "NotReady")
    );
    assert!(
        api.message.contains("1/3 replicas of api"),
        "{}",
        api.message
    );
    assert_eq!(condition(&conditions, "Progressing").status, "True");
    assert_eq!(condition(&conditions, "Degraded").status, "False");

    observed.workloads.remove("postgres");
    let conditions = tenant_conditions(&plan, &observed, &[], Some(1), &time(0));
    assert_eq!(condition(&conditions, "DatabaseReady").reason, "Creating");
}

#[test]
fn a_failing_deployment_makes_the_tenant_degraded() {
    let plan = plan_of(&tenant("tenant-small-firm.yaml"));
    let deployment = Deployment {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            replicas: Some(1),
            ..Default::default()
        }),
        status: Some(DeploymentStatus {
            observed_generation: Some(2),
            ready_replicas: Some(0),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"api-5d\" has timed out progressing.".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let mut observed = all_ready(&plan);
    observed.workloads.insert(
        "api".into(),
        WorkloadObservation::of_deployment(&deployment),
    );
    let conditions = tenant_conditions(&plan, &observed, &[], Some(2), &time(0));
    let degraded = condition(&conditions, "Degraded");
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("ProgressDeadlineExceeded"),
        "{}",
        degraded.message
    );
    assert_eq!(condition(&conditions, "Ready").reason, "ComponentFailed");
    assert_eq!(condition(&conditions, "Progressing").status, "False");
}

#[test]
fn transition_times_move_only_when_a_status_changes() {
    let plan = plan_of(&tenant("tenant-small-firm.yaml"));
    let mut observed = all_ready(&plan);
    observed.workloads.get_mut("api").unwrap().ready = 0;
    let first = tenant_conditions(&plan, &observed, &[], Some(1), &time(0));
    let again = tenant_conditions(&plan, &observed, &first, Some(1), &time(30));
    assert_eq!(
        first, again,
        "nothing new observed: an identical status, so no write"
    );

    let ready = tenant_conditions(&plan, &all_ready(&plan), &again, Some(1), &time(60));
    assert_eq!(condition(&ready, "Ready").last_transition_time, time(60));
    assert_eq!(
        condition(&ready, "DatabaseReady").last_transition_time,
        time(0)
    );
}

#[test]
fn a_suspended_tenant_says_so() {
    let mut suspended = tenant("tenant-small-firm.yaml");
    suspended.spec.suspended = true;
    let plan = plan_of(&suspended);
    let conditions = tenant_conditions(&plan, &all_ready(&plan), &[], Some(1), &time(0));
    let ready = condition(&conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Suspended")
    );
    assert_eq!(condition(&conditions, "Degraded").status, "False");
}

#[test]
fn a_failed_model_pull_is_degraded() {
    let plan = plan_of(&tenant("tenant-enterprise-qdrant-gpu.yaml"));
    let mut observed = all_ready(&plan);
    observed.model_preload = Some(JobObservation::Failed("BackoffLimitExceeded".into()));
    let conditions = tenant_conditions(&plan, &observed, &[], Some(1), &time(0));
    assert_eq!(condition(&conditions, "ModelsReady").reason, "PullFailed");
    assert_eq!(condition(&conditions, "Degraded").status, "True");
}

fn knowledge_base() -> KnowledgeBase {
    match load("knowledgebase-reglements.yaml") {
        Manifest::KnowledgeBase(kb) => *kb,
        _ => panic!("a KnowledgeBase"),
    }
}

fn workflow() -> Workflow {
    match load("workflow-synthese.yaml") {
        Manifest::Workflow(w) => *w,
        _ => panic!("a Workflow"),
    }
}

#[test]
fn a_knowledge_base_may_not_ask_for_what_its_tenant_does_not_run_or_allow() {
    let strict = tenant("tenant-univ-tlemcen.yaml");
    let kb = knowledge_base();
    check_knowledge_base(&kb, &strict).unwrap();

    let mut qdrant = kb.clone();
    qdrant.spec.vector_store = iafactory_crds::knowledgebase::KnowledgeBaseVectorStore::Qdrant;
    let error = check_knowledge_base(&qdrant, &strict).unwrap_err();
    assert!(error.contains("runs no Qdrant"), "{error}");
    check_knowledge_base(&qdrant, &tenant("tenant-enterprise-qdrant-gpu.yaml")).unwrap();

    let mut external = kb.clone();
    external.spec.embedding = Some(iafactory_crds::knowledgebase::EmbeddingSpec {
        provider: "deepseek".into(),
        model: "embed".into(),
        dimensions: 1024,
    });
    let error = check_knowledge_base(&external, &strict).unwrap_err();
    assert!(error.contains("sovereignty is strict"), "{error}");
    check_knowledge_base(&external, &tenant("tenant-enterprise-qdrant-gpu.yaml")).unwrap();
}

#[test]
fn a_workflow_names_the_agent_whose_provider_or_knowledge_base_is_wrong() {
    let strict = tenant("tenant-univ-tlemcen.yaml");
    let workflow = workflow();
    let kbs: BTreeSet<String> = workflow
        .spec
        .agents
        .iter()
        .filter_map(|a| a.knowledge_base.clone())
        .collect();
    check_workflow(&workflow, &strict, &kbs).unwrap();

    let mut external = workflow.clone();
    external.spec.agents[1].provider = "openai".into();
    let error = check_workflow(&external, &strict, &kbs).unwrap_err();
    assert!(
        error.contains(&format!("agent {:?}", external.spec.agents[1].name)),
        "{error}"
    );

    if !kbs.is_empty() {
        let error = check_workflow(&workflow, &strict, &BTreeSet::new()).unwrap_err();
        assert!(
            error.contains("does not exist in this namespace"),
            "{error}"
        );
    }
}

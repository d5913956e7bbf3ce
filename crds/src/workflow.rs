//! `Workflow`: a graph of agents (researcher, then analyzer, then writer...), each an
//! LLM call that can read its dependencies' outputs and search a knowledge base.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// What CEL can say about the graph (unique names come from the list-map key); cycles
// and template variables need a real graph walk and are checked by `crate::dag`, in
// the operator, the appliance and the API. The Rust mirror of these rules is
// `crate::dag::check_membership`; `tests/rule_mirrors.rs` keeps them in agreement.
const DEPENDS_ON_EXIST_RULE: &str = "self.spec.agents.all(a, !has(a.dependsOn) || a.dependsOn.all(d, self.spec.agents.exists(b, b.name == d)))";
pub(crate) const DEPENDS_ON_EXIST_MESSAGE: &str =
    "every dependsOn must name an agent of this workflow";
const NO_SELF_DEPENDENCY_RULE: &str =
    "self.spec.agents.all(a, !has(a.dependsOn) || !(a.name in a.dependsOn))";
pub(crate) const NO_SELF_DEPENDENCY_MESSAGE: &str = "an agent cannot depend on itself";

#[derive(
    CustomResource,
    Clone,
    Debug,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    JsonSchema,
    garde::Validate,
)]
#[kube(
    group = "iafactory.dz",
    version = "v1alpha1",
    kind = "Workflow",
    derive = "PartialEq",
    doc = "A multi-agent workflow: a DAG of LLM agents run by the tenant API.",
    plural = "workflows",
    shortname = "wf",
    namespaced,
    status = "WorkflowStatus",
    cel,
    printcolumn = r#"{"name":"Agents","type":"integer","jsonPath":".status.agents"}"#,
    printcolumn = r#"{"name":"Valid","type":"boolean","jsonPath":".status.validDag"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.trigger.schedule"}"#,
    printcolumn = r#"{"name":"Last run","type":"string","jsonPath":".status.lastExecution.status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(DEPENDS_ON_EXIST_RULE).message(DEPENDS_ON_EXIST_MESSAGE).field_path(".spec.agents"),
    validation = Rule::new(NO_SELF_DEPENDENCY_RULE).message(NO_SELF_DEPENDENCY_MESSAGE).field_path(".spec.agents"),
)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, max = 1000))]
    pub description: Option<String>,

    /// The agents; `dependsOn` makes the graph. Agents whose dependencies are done
    /// run concurrently.
    #[garde(length(min = 1, max = 16), dive, custom(crate::dag::check_membership))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub agents: Vec<AgentSpec>,

    /// Omit for manual runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub trigger: Option<TriggerSpec>,

    /// The whole execution's time limit.
    #[serde(default = "default_workflow_timeout")]
    #[garde(range(min = 10, max = 86400))]
    pub timeout_seconds: i32,
}

fn default_workflow_timeout() -> i32 {
    900
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// What the agent does, for people and prompts: researcher, analyzer, writer...
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z][-a-z0-9_]*$"))]
    pub role: String,
    /// `ollama` (the tenant's own model server) or one of the tenant's llmProviders.
    #[serde(default = "default_provider")]
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub provider: String,
    #[garde(
        length(min = 1, max = 128),
        pattern(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")
    )]
    pub model: String,
    /// May use `{{input}}` and `{{agents.<ancestor>.output}}`.
    #[garde(length(min = 1, max = 20000))]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[garde(
        length(max = 8),
        inner(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
        custom(crate::validation::unique_items)
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub depends_on: Vec<String>,
    /// A KnowledgeBase in the same namespace, searched before the call and cited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub knowledge_base: Option<String>,
    /// This agent's own time limit, per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
}

fn default_provider() -> String {
    "ollama".to_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Five-field cron schedule, in the platform's timezone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(
        length(min = 9, max = 100),
        pattern(r"^[^ \t]+([ \t]+[^ \t]+){4}$"),
        custom(crate::validation::optional_cron_schedule)
    )]
    pub schedule: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_dag: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<LastExecution>,
    /// The id the tenant's API gave this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastExecution {
    pub id: String,
    /// `pending`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_agent: Option<String>,
}

//! Validation of whole resources, as the API server would do it plus what it cannot.
//!
//! Three layers, each defined once, in the types:
//! - bounds, patterns, lengths and list uniqueness (garde attributes, which schemars
//!   also writes into the CRD schema);
//! - cross-field rules: CEL in `x-kubernetes-validations` for the API server, mirrored
//!   by garde `custom` checks for those who validate a bare spec (the platform API),
//!   and evaluated here client-side too, with kube's CEL interpreter, so the appliance
//!   enforces exactly what a cluster does;
//! - what neither can say: the agent graph (`crate::dag`), cron syntax, and that a
//!   KnowledgeBase or Workflow lives in a tenant's namespace.
//!
//! `tests/schema_drift.rs` and `tests/rule_mirrors.rs` keep the layers in agreement.

use std::fmt;
use std::sync::OnceLock;

use garde::Validate;
use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde::Serialize;

use crate::knowledgebase::KnowledgeBase;
use crate::tenant::Tenant;
use crate::workflow::Workflow;

/// One problem, at a field path such as `spec.components.api.replicas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one resource (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.path.as_str())
    }
}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn garde(&mut self, prefix: &str, result: Result<(), garde::Report>) {
        if let Err(report) = result {
            for (path, error) in report.iter() {
                // garde names fields as Rust does (`llm_providers`); a person wrote
                // the manifest's spelling (`llmProviders`), as the CEL rules report it.
                let path = manifest_spelling(&path.to_string());
                let path = if path.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{path}")
                };
                self.push(path, error.to_string());
            }
        }
    }

    fn cel<K: CustomResourceExt + Serialize>(&mut self, rules: &CelRules, object: &K) {
        let errors = match rules.check(object) {
            Ok(()) => return,
            Err(errors) => errors,
        };
        for error in errors {
            // A field the Rust checks already explained needs no second message.
            if !self.0.iter().any(|e| e.path == error.path) {
                self.0.push(error);
            }
        }
    }

    fn finish(mut self) -> Result<(), ValidationErrors> {
        self.0.dedup();
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// A garde path (`components.vector_store.resources`, `llm_providers[0].base_url`)
/// in the manifest's camelCase (`components.vectorStore.resources`).
pub fn manifest_spelling(path: &str) -> String {
    let mut spelled = String::with_capacity(path.len());
    let mut upper = false;
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            '_' if !in_index => {
                upper = true;
                continue;
            }
            _ => {}
        }
        if upper {
            spelled.extend(c.to_uppercase());
            upper = false;
        } else {
            spelled.push(c);
        }
    }
    spelled
}

/// The CEL rules of one resource, compiled once: compiling them costs more than a
/// whole reconcile, and the operator validates on every one.
pub(crate) struct CelRules(OnceLock<CompiledSchema>);

static TENANT_RULES: CelRules = CelRules(OnceLock::new());
static KNOWLEDGE_BASE_RULES: CelRules = CelRules(OnceLock::new());
static WORKFLOW_RULES: CelRules = CelRules(OnceLock::new());

thread_local! {
    // Holds the CEL function library; cheap to share within a thread.
    static CEL: Validator = Validator::new();
}

impl CelRules {
    fn check<K: CustomResourceExt + Serialize>(&self, object: &K) -> Result<(), Vec<FieldError>> {
        let compiled = self
            .0
            .get_or_init(|| compile_schema(&openapi_schema::<K>()));
        let value = serde_json::to_value(object).map_err(|e| {
            vec![FieldError {
                path: String::new(),
                message: format!("cannot be checked: {e}"),
            }]
        })?;
        CEL.with(|cel| cel.validate_compiled(compiled, &value, None))
            .map_err(|errors| {
                errors
                    .iter()
                    .map(|error| FieldError {
                        // A rule on metadata cannot carry a fieldPath (the CRD schema
                        // has no metadata properties), but it is about the name.
                        path: if error.rule == crate::tenant::TENANT_NAME_RULE {
                            "metadata.name".to_owned()
                        } else {
                            error.field_path.trim_start_matches('.').to_owned()
                        },
                        message: error.message.clone(),
                    })
                    .collect()
            })
    }
}

/// The `openAPIV3Schema` of a resource's CRD, as JSON.
pub fn openapi_schema<K: CustomResourceExt>() -> serde_json::Value {
    let crd = K::crd();
    crd.spec
        .versions
        .first()
        .and_then(|version| version.schema.as_ref())
        .and_then(|schema| schema.open_api_v3_schema.as_ref())
        .and_then(|schema| serde_json::to_value(schema).ok())
        .unwrap_or_default()
}

/// For `x-kubernetes-list-type: set` lists: the API server refuses a repeated item.
pub(crate) fn unique_items<T: PartialEq + fmt::Debug>(items: &[T], _: &()) -> garde::Result {
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return Err(garde::Error::new(format!(
                "{item:?} is listed twice; each item may appear once"
            )));
        }
    }
    Ok(())
}

impl Tenant {
    /// Everything the API server would check (schema bounds and CEL rules) and the
    /// name rule of its namespace, every problem with its field path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        validate_tenant(self)
    }
}

impl KnowledgeBase {
    /// The schema, the CEL rules, and that it lives in a tenant's namespace.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        validate_knowledge_base(self)
    }
}

impl Workflow {
    /// The schema, the CEL rules, a tenant's namespace, and the agent graph.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        validate_workflow(self)
    }

    /// The agent graph in topological waves, or every error of it.
    pub fn dag(&self) -> Result<crate::dag::Dag, Vec<crate::dag::DagError>> {
        crate::dag::validate(&self.spec.agents)
    }
}

const MAX_TENANT_NAME: usize = 59;

/// A DNS-1123 label: lower-case letters, digits and '-', alphanumeric at both ends.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

pub fn validate_tenant(tenant: &Tenant) -> Result<(), ValidationErrors> {
    let mut errors = Collector::default();
    match tenant.metadata.name.as_deref() {
        None | Some("") => errors.push("metadata.name", "a Tenant needs a name"),
        Some(name) if !is_dns_label(name) || name.len() > MAX_TENANT_NAME => errors.push(
            "metadata.name",
            format!(
                "{name:?} is not a valid Tenant name: use a DNS-1123 label (lower-case letters, digits and '-') of at most {MAX_TENANT_NAME} characters, because its namespace is iaf-<name>"
            ),
        ),
        Some(_) => {}
    }
    errors.garde("spec", tenant.spec.validate());
    errors.cel(&TENANT_RULES, tenant);
    errors.finish()
}

pub fn validate_knowledge_base(kb: &KnowledgeBase) -> Result<(), ValidationErrors> {
    let mut errors = Collector::default();
    check_namespaced_name(&mut errors, "KnowledgeBase", &kb.metadata);
    errors.garde("spec", kb.spec.validate());
    errors.cel(&KNOWLEDGE_BASE_RULES, kb);
    errors.finish()
}

pub fn validate_workflow(workflow: &Workflow) -> Result<(), ValidationErrors> {
    let mut errors = Collector::default();
    check_namespaced_name(&mut errors, "Workflow", &workflow.metadata);
    errors.garde("spec", workflow.spec.validate());
    errors.cel(&WORKFLOW_RULES, workflow);
    // Unknown and duplicate agents are already reported, at `spec.agents`.
    let membership_reported = errors.0.iter().any(|e| e.path == "spec.agents");
    if !membership_reported && let Err(dag_errors) = crate::dag::validate(&workflow.spec.agents) {
        for error in dag_errors {
            let path = workflow
                .spec
                .agents
                .iter()
                .position(|a| a.name == error.agent())
                .map(|i| format!("spec.agents[{i}]"))
                .unwrap_or_else(|| "spec.agents".to_owned());
            errors.push(path, error.to_string());
        }
    }
    errors.finish()
}

fn check_namespaced_name(errors: &mut Collector, kind: &str, metadata: &kube::core::ObjectMeta) {
    match metadata.name.as_deref() {
        Some(name) if is_subdomain(name) => {}
        Some(name) => errors.push(
            "metadata.name",
            format!(
                "{name:?} is not a valid {kind} name: use lower-case letters, digits, '-' and '.'"
            ),
        ),
        None => errors.push("metadata.name", format!("a {kind} needs a name")),
    }
    if let Some(namespace) = metadata.namespace.as_deref()
        && (!namespace.starts_with("iaf-") || !is_dns_label(namespace))
    {
        errors.push(
            "metadata.namespace",
            format!(
                "a {kind} lives in its tenant's namespace, iaf-<tenant>; {namespace:?} is not one"
            ),
        );
    }
}

fn is_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Five-field cron syntax (minute hour day-of-month month day-of-week).
pub fn cron_schedule(schedule: &str, _: &()) -> garde::Result {
    if schedule.split_whitespace().count() != 5 {
        return Err(garde::Error::new(format!(
            "{schedule:?} is not a five-field cron schedule (minute hour day month weekday), for example \"30 1 * * *\""
        )));
    }
    schedule
        .parse::<croner::Cron>()
        .map(|_| ())
        .map_err(|e| garde::Error::new(format!("{schedule:?} is not a valid cron schedule: {e}")))
}

pub fn optional_cron_schedule(schedule: &Option<String>, context: &()) -> garde::Result {
    schedule
        .as_deref()
        .map_or(Ok(()), |s| cron_schedule(s, context))
}

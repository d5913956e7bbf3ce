//! `Tenant`: one organisation, its isolated namespace (or Docker network) and its stack.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Language, ResourceRequirements, SecretKeyRef, all_languages};
use crate::quantity::Quantity;

// The cross-field rules. Each is said twice: in CEL, which the API server enforces
// (x-kubernetes-validations), and in Rust (the garde `custom` checks below), which the
// appliance and the platform API run without an API server. The two share their
// message, and `tests/rule_mirrors.rs` runs one table of cases through both.
pub(crate) const TENANT_NAME_RULE: &str = "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 59";
const TENANT_NAME_MESSAGE: &str = "a Tenant name must be a DNS-1123 label of at most 59 characters, because its namespace is iaf-<name>";
const PROVIDERS_NEED_OPEN_RULE: &str = "!has(self.spec.llmProviders) || size(self.spec.llmProviders) == 0 || (has(self.spec.sovereignty) && self.spec.sovereignty == 'open')";
const PROVIDERS_NEED_OPEN_MESSAGE: &str = "llmProviders are only allowed with sovereignty: open; strict sovereignty keeps every model call inside the tenant";
const PROVIDER_NAME_RESERVED_RULE: &str =
    "!has(self.spec.llmProviders) || self.spec.llmProviders.all(p, p.name != 'ollama')";
const PROVIDER_NAME_RESERVED_MESSAGE: &str = "the provider name ollama is reserved for the tenant's own model server, which every tenant has; give the external provider another name";
const MODELS_NEED_OLLAMA_RULE: &str = "!has(self.spec.components) || !has(self.spec.components.ollama) || !has(self.spec.components.ollama.models) || size(self.spec.components.ollama.models) == 0 || !has(self.spec.components.ollama.enabled) || self.spec.components.ollama.enabled";
const MODELS_NEED_OLLAMA_MESSAGE: &str =
    "components.ollama.models lists models to preload, but components.ollama.enabled is false";
const TLS_OR_SECRET_RULE: &str =
    "!has(self.spec.ingress) || !(has(self.spec.ingress.tls) && has(self.spec.ingress.secretName))";
const TLS_OR_SECRET_MESSAGE: &str =
    "set either ingress.tls (acme or none) or ingress.secretName, not both";

/// An organisation on the platform. A platform admin manages Tenants; everything a
/// tenant runs lives in the namespace (or Docker network) `iaf-<name>`.
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
    kind = "Tenant",
    derive = "PartialEq",
    doc = "An organisation on the platform: its isolated namespace (or Docker network) iaf-<name> and its stack.",
    plural = "tenants",
    shortname = "iaft",
    status = "TenantStatus",
    cel,
    printcolumn = r#"{"name":"Plan","type":"string","jsonPath":".spec.plan"}"#,
    printcolumn = r#"{"name":"Sovereignty","type":"string","jsonPath":".spec.sovereignty","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(TENANT_NAME_RULE).message(TENANT_NAME_MESSAGE),
    validation = Rule::new(PROVIDERS_NEED_OPEN_RULE).message(PROVIDERS_NEED_OPEN_MESSAGE).reason(Reason::FieldValueForbidden).field_path(".spec.llmProviders"),
    validation = Rule::new(PROVIDER_NAME_RESERVED_RULE).message(PROVIDER_NAME_RESERVED_MESSAGE).reason(Reason::FieldValueInvalid).field_path(".spec.llmProviders"),
    validation = Rule::new(MODELS_NEED_OLLAMA_RULE).message(MODELS_NEED_OLLAMA_MESSAGE).field_path(".spec.components.ollama.models"),
    validation = Rule::new(TLS_OR_SECRET_RULE).message(TLS_OR_SECRET_MESSAGE).field_path(".spec.ingress"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name, in any script, shown in the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(chars, min = 1, max = 200))]
    pub display_name: Option<String>,

    /// The commercial plan: it sets the quotas and every default size.
    #[serde(default)]
    #[garde(skip)]
    pub plan: PlanTier,

    /// Scales every workload to zero and keeps the data.
    #[serde(default)]
    #[garde(skip)]
    pub suspended: bool,

    /// `strict` (the default) keeps every model call on the tenant's own Ollama and
    /// denies egress to the internet; `open` lets the listed llmProviders through.
    #[serde(default)]
    #[garde(skip)]
    pub sovereignty: Sovereignty,

    /// Languages of the tenant's documents and interface.
    #[serde(default = "all_languages")]
    #[garde(length(min = 1, max = 3), custom(crate::validation::unique_items))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub languages: Vec<Language>,

    /// What happens to the data when the Tenant is deleted.
    #[serde(default)]
    #[garde(skip)]
    pub retention: Retention,

    /// External model providers, reachable only under `sovereignty: open`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[garde(
        length(max = 16),
        dive,
        custom(unique_provider_names),
        custom(provider_names_not_reserved),
        custom(providers_need_open(self.sovereignty))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub llm_providers: Vec<LlmProvider>,

    /// The components of the tenant's stack. Every block and field is optional: the
    /// plan fills them from the plan tier's defaults.
    #[serde(default)]
    #[garde(dive)]
    pub components: Components,

    /// Public access to the tenant's API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive, custom(tls_or_secret))]
    pub ingress: Option<IngressSpec>,

    /// Scheduled backups of the database and the vector store: a CronJob `backup` on
    /// Kubernetes (to the PVC `backups`), `iafactory serve` on the appliance (to
    /// `<data_dir>/backups/<tenant>/<timestamp>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub backup: Option<BackupSpec>,
}

#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PlanTier {
    #[default]
    Free,
    Pro,
    Enterprise,
}

impl PlanTier {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Free => "free",
            PlanTier::Pro => "pro",
            PlanTier::Enterprise => "enterprise",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Sovereignty {
    #[default]
    Strict,
    Open,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Retention {
    /// Keep the namespace, its volumes and Secrets when the Tenant is deleted.
    #[default]
    Retain,
    /// Delete everything, data included, with the Tenant.
    Delete,
}

/// An external LLM provider the tenant may call under `sovereignty: open`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct LlmProvider {
    /// Referenced by agents and knowledge bases as their `provider`.
    #[garde(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    #[garde(skip)]
    pub kind: LlmProviderKind,
    /// The API's base URL, for example `https://api.deepseek.com/v1`.
    #[garde(length(min = 1, max = 2048), url)]
    pub base_url: String,
    /// Where the API key is, in the tenant's namespace.
    #[garde(dive)]
    pub secret_ref: SecretKeyRef,
    /// The provider's address ranges, when known. Kubernetes NetworkPolicies match
    /// addresses, not host names: without them, egress is opened on the provider's
    /// port to public addresses only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[garde(
        length(max = 32),
        inner(length(max = 64), pattern(r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"))
    )]
    pub cidrs: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LlmProviderKind {
    OpenaiCompatible,
    Anthropic,
}

fn providers_need_open(
    sovereignty: Sovereignty,
) -> impl FnOnce(&Vec<LlmProvider>, &()) -> garde::Result {
    move |providers, _| {
        if providers.is_empty() || sovereignty == Sovereignty::Open {
            Ok(())
        } else {
            Err(garde::Error::new(PROVIDERS_NEED_OPEN_MESSAGE))
        }
    }
}

/// The API answers with the tenant's own model server under the name `ollama`, and
/// refuses to start with a provider that takes it.
fn provider_names_not_reserved(providers: &[LlmProvider], _: &()) -> garde::Result {
    if providers.iter().any(|p| p.name == "ollama") {
        Err(garde::Error::new(PROVIDER_NAME_RESERVED_MESSAGE))
    } else {
        Ok(())
    }
}

fn unique_provider_names(providers: &[LlmProvider], _: &()) -> garde::Result {
    let mut seen = std::collections::BTreeSet::new();
    for provider in providers {
        if !seen.insert(provider.name.as_str()) {
            return Err(garde::Error::new(format!(
                "provider name {:?} is used twice",
                provider.name
            )));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    #[serde(default)]
    #[garde(dive)]
    pub api: ApiComponent,
    #[serde(default)]
    #[garde(dive)]
    pub database: DatabaseComponent,
    #[serde(default)]
    #[garde(dive)]
    pub vector_store: VectorStoreComponent,
    #[serde(default)]
    #[garde(dive)]
    pub ollama: OllamaComponent,
    #[serde(default)]
    #[garde(skip)]
    pub monitoring: MonitoringComponent,
}

/// The platform API (`iafactory-api`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct ApiComponent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(max = 512), pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(range(min = 1, max = 20))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub resources: Option<ResourceRequirements>,
}

/// PostgreSQL with pgvector: the tenant's documents, users, keys and, by default, vectors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseComponent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(max = 512), pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub storage: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct VectorStoreComponent {
    /// `pgvector` keeps vectors in the database; `qdrant` runs a Qdrant server, for
    /// tenants beyond about ten million vectors.
    #[serde(default)]
    #[garde(skip)]
    pub kind: VectorStoreKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(max = 512), pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"))]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub storage: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VectorStoreKind {
    #[default]
    Pgvector,
    Qdrant,
}

/// The tenant's own model server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct OllamaComponent {
    #[serde(default = "enabled")]
    #[garde(skip)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(length(max = 512), pattern(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$"))]
    pub image: Option<String>,
    /// Models pulled ahead of use by a Job; changing the list re-runs it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[garde(
        length(max = 16),
        inner(
            length(min = 1, max = 128),
            pattern(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")
        ),
        custom(crate::validation::unique_items),
        custom(models_need_ollama(self.enabled))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub models: Vec<String>,
    /// GPUs (`nvidia.com/gpu`) for the model server; not on the free plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(range(min = 0, max = 8))]
    pub gpu: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub storage: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(dive)]
    pub resources: Option<ResourceRequirements>,
}

fn models_need_ollama(enabled: bool) -> impl FnOnce(&Vec<String>, &()) -> garde::Result {
    move |models, _| {
        if models.is_empty() || enabled {
            Ok(())
        } else {
            Err(garde::Error::new(MODELS_NEED_OLLAMA_MESSAGE))
        }
    }
}

impl Default for OllamaComponent {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
            models: Vec::new(),
            gpu: None,
            storage: None,
            resources: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringComponent {
    /// Metrics scraped by Prometheus (a ServiceMonitor, or scrape annotations).
    #[serde(default = "enabled")]
    pub enabled: bool,
}

impl Default for MonitoringComponent {
    fn default() -> Self {
        Self { enabled: true }
    }
}

fn enabled() -> bool {
    true
}

/// Public access to the tenant's API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[garde(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// `acme` (the default) asks cert-manager or the appliance's ACME client for a
    /// certificate; `none` serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub tls: Option<TlsMode>,
    /// An existing TLS Secret to serve instead of an ACME certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
}

fn tls_or_secret(ingress: &Option<IngressSpec>, _: &()) -> garde::Result {
    match ingress {
        Some(IngressSpec {
            tls: Some(_),
            secret_name: Some(_),
            ..
        }) => Err(garde::Error::new(TLS_OR_SECRET_MESSAGE)),
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Acme,
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Five-field cron schedule, in the platform's timezone (Africa/Algiers by default).
    #[garde(
        length(min = 9, max = 100),
        pattern(r"^[^ \t]+([ \t]+[^ \t]+){4}$"),
        custom(crate::validation::cron_schedule)
    )]
    pub schedule: String,
    /// How many backups to keep: after each successful backup, older ones are removed.
    #[serde(default = "default_backup_retention")]
    #[garde(range(min = 1, max = 365))]
    pub retention: i32,
}

fn default_backup_retention() -> i32 {
    7
}

/// Observed state, written by the operator or the appliance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// `Ready`, `Progressing`, `Degraded`, and one per component (`ApiReady`,
    /// `DatabaseReady`, `VectorStoreReady`, `OllamaReady`, `ModelsReady`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The namespace (or Docker network) holding the tenant's stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<TenantEndpoints>,
    /// Scheduled backups, when `spec.backup` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<TenantBackupStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantBackupStatus {
    /// When the last backup that succeeded finished (the CronJob's
    /// `status.lastSuccessfulTime` on Kubernetes); absent until one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the last backup was started, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantEndpoints {
    /// The API inside the cluster or appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The API's public URL, when an ingress is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
}

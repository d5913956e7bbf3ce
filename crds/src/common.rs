//! Types shared by the three resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "iafactory.dz";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "iafactory.dz/v1alpha1";

/// RFC 1123 label, as Kubernetes checks names of namespaces, services and labels.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 subdomain: dot-separated labels, as Kubernetes checks most object names and hosts.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A container image reference (`registry/repo:tag` or `@sha256:...`); loose on purpose,
/// the engine pulling it is the judge of the details.
pub const IMAGE_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$";
/// A model name as Ollama and OpenAI-compatible servers spell them (`llama3.2:3b`, `bge-m3`).
pub const MODEL_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$";

/// Languages the platform processes: Arabic (right-to-left, normalised for search),
/// French and English.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Ar,
    Fr,
    En,
}

impl Language {
    pub fn code(self) -> &'static str {
        match self {
            Language::Ar => "ar",
            Language::Fr => "fr",
            Language::En => "en",
        }
    }
}

pub fn all_languages() -> Vec<Language> {
    vec![Language::Ar, Language::Fr, Language::En]
}

/// Requests and limits for one container, in Kubernetes quantities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub requests: Option<ResourceList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[garde(skip)]
    pub limits: Option<ResourceList>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<crate::Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<crate::Quantity>,
}

/// A key in a Secret of the tenant's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, garde::Validate)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[garde(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    #[garde(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Finds a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

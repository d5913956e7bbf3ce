//! The platform configuration every plan is made from: images, plan tiers, network.
//!
//! `config/iafactory.toml` is embedded as the built-in default; drivers layer their
//! own sources on top through [`PlatformConfig::figment`]. The file is shared by both
//! drivers: each keeps its own settings in its own table (`[appliance]`,
//! `[operator]`), which the plan carries without reading, so that a typo anywhere
//! else is still an error rather than a silent default.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use serde::{Deserialize, Serialize};

use crate::common::ResourceRequirements;
use crate::quantity::Quantity;
use crate::tenant::PlanTier;

/// The embedded default, the same file users read and copy.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/iafactory.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the platform configuration is invalid: {0}")]
    Invalid(#[from] Box<figment::Error>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    pub domain: String,
    pub timezone: String,
    /// Replaces the registry of every image, for mirrors on air-gapped sites.
    #[serde(default)]
    pub registry: String,
    pub images: Images,
    pub api: ApiSettings,
    pub ollama: OllamaSettings,
    pub network: NetworkSettings,
    pub plans: Plans,
    /// The appliance's own settings (`figment.focus("appliance")`), opaque here.
    #[serde(default, skip_serializing_if = "Dict::is_empty")]
    pub appliance: Dict,
    /// The operator's own settings (`figment.focus("operator")`), opaque here.
    #[serde(default, skip_serializing_if = "Dict::is_empty")]
    pub operator: Dict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    pub api: ImageSettings,
    pub postgres: ImageSettings,
    pub qdrant: ImageSettings,
    pub ollama: ImageSettings,
    /// The shared rate-limit store of tenants with more than one API replica.
    pub redis: ImageSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSettings {
    pub image: String,
    /// The user the image's process runs as (and owns its volumes, as fsGroup).
    pub uid: i64,
    /// The command Docker runs to check health; empty means "running is healthy".
    #[serde(default)]
    pub healthcheck: Vec<String>,
    /// Arguments for the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment added to the plan's own (a name the plan sets is overridden).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OllamaSettings {
    /// Whether the model server pulls models (Ollama's `/api/pull`). A stand-in
    /// without it (the llama.cpp server of the tests and the demo) serves the model
    /// baked into its image, and no preload job runs.
    pub pull_models: bool,
    /// How long a loaded model stays in memory after its last request.
    pub keep_alive: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub port: u16,
    #[serde(default)]
    pub embedding_model_dir: Option<String>,
    pub default_llm_model: String,
    pub default_embedding: crate::knowledgebase::EmbeddingSpec,
    /// Whether anyone reaching a tenant's API may sign up (`/api/auth/register`).
    /// Closed by default: each tenant has a stack of its own, so a sign-up there
    /// would only add strangers to it. The first administrator is set through the
    /// internal API (`iafactory admin` on an appliance).
    #[serde(default)]
    pub self_registration: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Namespaces whose pods may reach a tenant's API: the ingress controller's.
    pub ingress_namespaces: Vec<String>,
    /// Where Prometheus runs; it may reach the metrics of tenants with monitoring.
    pub monitoring_namespace: String,
    /// Where the Kubernetes operator runs: it calls each tenant API's internal
    /// endpoints. Unset on an appliance, which has no namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_namespace: Option<String>,
    pub cert_manager_issuer: String,
    #[serde(default)]
    pub ingress_class: Option<String>,
    /// The addresses, as CIDRs, that a tenant's API believes about `X-Forwarded-For`:
    /// the ingress controller's pods on Kubernetes, the gateway's bridge address on
    /// the appliance. Every tenant's API gets them as `IAF_TRUSTED_PROXIES`.
    #[serde(deserialize_with = "cidr_list")]
    pub trusted_proxies: Vec<String>,
}

/// A list of addresses or CIDRs, refused at load with the entry that is neither.
fn cidr_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let entries = Vec::<String>::deserialize(deserializer)?;
    for entry in &entries {
        if !is_cidr(entry) {
            return Err(serde::de::Error::custom(format!(
                "{entry:?} in network.trusted_proxies is neither an address nor a CIDR (like 10.0.0.0/8)"
            )));
        }
    }
    Ok(entries)
}

fn is_cidr(entry: &str) -> bool {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (entry, None),
    };
    let Ok(address) = address.parse::<std::net::IpAddr>() else {
        return false;
    };
    let longest = if address.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= longest))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plans {
    pub free: TierPolicy,
    pub pro: TierPolicy,
    pub enterprise: TierPolicy,
}

impl Plans {
    pub fn tier(&self, tier: PlanTier) -> &TierPolicy {
        match tier {
            PlanTier::Free => &self.free,
            PlanTier::Pro => &self.pro,
            PlanTier::Enterprise => &self.enterprise,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPolicy {
    pub max_api_replicas: i32,
    pub max_gpu: i32,
    pub quota: QuotaSettings,
    pub container: ContainerLimits,
    pub defaults: ComponentDefaults,
}

/// A namespace's ResourceQuota: requests, storage and object counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    pub cpu: Quantity,
    pub memory: Quantity,
    pub storage: Quantity,
    pub pods: i32,
    pub pvcs: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuMemory {
    pub cpu: Quantity,
    pub memory: Quantity,
}

/// A namespace's LimitRange for containers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLimits {
    pub default_request: CpuMemory,
    pub default_limit: CpuMemory,
    pub max: CpuMemory,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDefaults {
    pub api: ApiDefaults,
    pub database: StatefulDefaults,
    pub vector_store: StatefulDefaults,
    pub ollama: StatefulDefaults,
    /// Redis keeps only rate-limit counters: no storage, a small memory limit.
    pub redis: ResourceDefaults,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceDefaults {
    pub resources: ResourceRequirements,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiDefaults {
    pub replicas: i32,
    pub resources: ResourceRequirements,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatefulDefaults {
    pub storage: Quantity,
    pub resources: ResourceRequirements,
}

impl PlatformConfig {
    /// The embedded default alone.
    pub fn figment() -> Figment {
        Figment::from(Toml::string(DEFAULT_CONFIG_TOML))
    }

    /// The embedded default, then `file` if given, then `IAF_PLATFORM__*` variables
    /// (`IAF_PLATFORM__DOMAIN=example.dz`, `IAF_PLATFORM__IMAGES__API__IMAGE=...`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Self::figment();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("IAF_PLATFORM__").split("__"));
        Self::extract(figment)
    }

    pub fn extract(figment: Figment) -> Result<Self, ConfigError> {
        figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))
    }

    /// `image` with the configured registry mirror in front of it.
    pub fn resolve_image(&self, image: &str) -> String {
        let registry = self.registry.trim_end_matches('/');
        if registry.is_empty() {
            return image.to_owned();
        }
        // Strip an explicit registry host (it has a '.' or ':' or is localhost).
        let path = match image.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                rest
            }
            _ => image,
        };
        format!("{registry}/{path}")
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self::extract(Self::figment()).expect("the embedded config/iafactory.toml is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses() {
        let config = PlatformConfig::default();
        assert_eq!(config.timezone, "Africa/Algiers");
        assert_eq!(config.api.port, 8180);
        assert_eq!(config.plans.tier(PlanTier::Free).max_gpu, 0);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn trusted_proxies_must_be_cidrs() {
        assert!(
            PlatformConfig::default()
                .network
                .trusted_proxies
                .contains(&"172.16.0.0/12".to_owned())
        );
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "site.toml",
                "[network]\ntrusted_proxies = [\"10.244.0.0/16\", \"fd00::1\"]",
            )?;
            let config = PlatformConfig::load(Some(Path::new("site.toml"))).unwrap();
            assert_eq!(config.network.trusted_proxies, ["10.244.0.0/16", "fd00::1"]);
            jail.create_file("bad.toml", "[network]\ntrusted_proxies = [\"10.0.0.0/33\"]")?;
            let error = PlatformConfig::load(Some(Path::new("bad.toml"))).unwrap_err();
            assert!(error.to_string().contains("\"10.0.0.0/33\""), "{error}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn a_file_and_the_environment_override_the_default() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "site.toml",
                "domain = \"univ-tlemcen.dz\"\nregistry = \"mirror.local:5000\"",
            )?;
            jail.set_env("IAF_PLATFORM__API__DEFAULT_LLM_MODEL", "qwen2.5:7b");
            let config = PlatformConfig::load(Some(Path::new("site.toml"))).unwrap();
            assert_eq!(config.domain, "univ-tlemcen.dz");
            assert_eq!(config.api.default_llm_model, "qwen2.5:7b");
            assert_eq!(
                config.resolve_image("ollama/ollama:0.12.6"),
                "mirror.local:5000/ollama/ollama:0.12.6"
            );
            assert_eq!(
                config.resolve_image("ghcr.io/org/x:1"),
                "mirror.local:5000/org/x:1"
            );
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_an_error_not_a_silent_default() {
        for typo in ["domian = \"typo.dz\"", "[images.api]\nimgae = \"x\""] {
            let figment = PlatformConfig::figment().merge(Toml::string(typo));
            let error = PlatformConfig::extract(figment).unwrap_err().to_string();
            assert!(
                error.contains("domian") || error.contains("imgae"),
                "{error}"
            );
        }
    }

    #[test]
    fn each_driver_keeps_its_own_table() {
        let figment = PlatformConfig::figment().merge(Toml::string(
            "[appliance]\ndata_dir = \"/var/lib/iafactory\"\n[operator]\nleader_election = true",
        ));
        let config = PlatformConfig::extract(figment.clone()).unwrap();
        assert_eq!(config.domain, "iafactory.local");
        #[derive(Deserialize)]
        struct ApplianceSettings {
            data_dir: String,
        }
        let appliance: ApplianceSettings = figment.focus("appliance").extract().unwrap();
        assert_eq!(appliance.data_dir, "/var/lib/iafactory");
        assert!(config.operator.contains_key("leader_election"));
    }
}

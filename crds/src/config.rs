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
    #[error("the platform configuration is invalid: {0}")]
    Timezone(#[from] crate::schedule::ScheduleError),
    #[error(
        "backup.target kind \"s3\" is not built yet: scheduled backups write to a PersistentVolumeClaim (backup.target = {{ kind = \"pvc\", size = \"20Gi\" }})"
    )]
    S3NotBuilt,
    #[error("the platform configuration is invalid: ollama.model_source: {0}")]
    ModelSource(String),
    #[error(
        "the platform configuration is invalid: api.internal_port is api.port ({0}); the internal endpoints need a port of their own, which no gateway or Ingress routes to"
    )]
    SameApiPorts(u16),
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
    /// Where the Kubernetes backup CronJob writes (the appliance writes under its data
    /// directory).
    #[serde(default)]
    pub backup: BackupSettings,
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
    /// Where preloaded models come from. The public registry, the default, is used
    /// only for `sovereignty: open` tenants.
    #[serde(default)]
    pub model_source: ModelSource,
}

/// Where the model preload gets `components.ollama.models` (on Kubernetes; the
/// appliance never pulls, `iafactory models import` loads them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelSource {
    /// Ollama's public registry, over the internet. Only `sovereignty: open` tenants
    /// use it: a strict tenant sends no packet out, so its models are not preloaded
    /// and its `ModelsReady` condition says why.
    #[default]
    Public,
    /// A registry inside the site's network (an Ollama registry, or an OCI registry
    /// holding Ollama models). The model server may reach its `cidrs` only, on the
    /// port of `registry`.
    Mirror {
        /// `host[:port]`, as it prefixes a model name (`models.univ-tlemcen.dz:5000`).
        registry: String,
        /// The registry's addresses (NetworkPolicies match addresses, not names).
        cidrs: Vec<String>,
        /// Plain HTTP (`ollama pull --insecure`); the default port is then 80.
        #[serde(default)]
        insecure: bool,
    },
    /// An Ollama models directory (`manifests/` and `blobs/`, as `ollama pull` leaves
    /// it) on a PersistentVolumeClaim in each tenant's namespace, copied into the
    /// model server's volume by a Job with no network.
    Bundle {
        /// The claim's name, in the tenant's namespace.
        claim: String,
        /// The models directory inside the claim; empty for its root.
        #[serde(default)]
        path: String,
    },
}

impl ModelSource {
    /// A mirror's registry host and port.
    pub fn mirror_port(registry: &str, insecure: bool) -> Option<u16> {
        match registry.rsplit_once(':') {
            Some((_, port)) => port.parse().ok(),
            None => Some(if insecure { 80 } else { 443 }),
        }
    }

    /// What serde cannot say: a mirror has a host, a port and addresses, none of which
    /// is the whole internet; a bundle names a claim.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::ModelSource(reason));
        match self {
            ModelSource::Public => Ok(()),
            ModelSource::Mirror {
                registry,
                cidrs,
                insecure,
            } => {
                let host = registry
                    .rsplit_once(':')
                    .map_or(registry.as_str(), |(h, _)| h);
                if host.is_empty() || registry.contains('/') || registry.contains("://") {
                    return invalid(format!(
                        "registry {registry:?} is not host[:port], like \"models.univ-tlemcen.dz:5000\""
                    ));
                }
                if Self::mirror_port(registry, *insecure).is_none_or(|p| p == 0) {
                    return invalid(format!("registry {registry:?} has no valid port"));
                }
                if cidrs.is_empty() {
                    return invalid(
                        "a mirror needs its addresses in cidrs (like [\"10.20.0.5/32\"]): egress is allowed to them only".into(),
                    );
                }
                for cidr in cidrs {
                    if !is_cidr(cidr) {
                        return invalid(format!(
                            "{cidr:?} in cidrs is neither an address nor a CIDR"
                        ));
                    }
                    // A site mirror is a host or a small subnet; anything wider than
                    // a /8 (a /32 of IPv6) is most of the internet.
                    let widest = if cidr.contains(':') { 32 } else { 8 };
                    if cidr
                        .split_once('/')
                        .is_some_and(|(_, p)| p.parse::<u8>().is_ok_and(|p| p < widest))
                    {
                        return invalid(format!(
                            "{cidr:?} in cidrs is the whole internet or most of it, not a site mirror's address (at most a /{widest})"
                        ));
                    }
                }
                Ok(())
            }
            ModelSource::Bundle { claim, path } => {
                if !crate::validation::is_dns_label(claim) {
                    return invalid(format!(
                        "claim {claim:?} is not a PersistentVolumeClaim name (a DNS-1123 label)"
                    ));
                }
                if path.split('/').any(|part| part == "..") {
                    return invalid(format!("path {path:?} leaves the claim"));
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// The public listener (`IAF_LISTEN`): what the gateway and the Ingress route to.
    pub port: u16,
    /// The internal listener (`IAF_INTERNAL_LISTEN`): `/internal/*` and `/metrics`, for
    /// the operator or the appliance and for monitoring only; no gateway or Ingress
    /// routes to it.
    #[serde(default = "default_internal_port")]
    pub internal_port: u16,
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

fn default_internal_port() -> u16 {
    9180
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

/// Scheduled backups (`spec.backup` of a Tenant) on Kubernetes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    pub target: BackupTarget,
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            target: BackupTarget::Pvc {
                size: Quantity::parse("5Gi").expect("a valid quantity"),
                storage_class: None,
            },
        }
    }
}

/// Where backups are written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackupTarget {
    /// A PersistentVolumeClaim `backups` in each tenant's namespace, holding
    /// `retention` copies.
    Pvc {
        size: Quantity,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage_class: Option<String>,
    },
    /// An S3-compatible bucket. Not built: refused when the configuration is loaded.
    S3 {
        endpoint: String,
        bucket: String,
        /// The Secret (in each tenant's namespace) with the access key and secret key.
        secret: String,
    },
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
        let config: Self = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.check_backup()?;
        config.ollama.model_source.check()?;
        if config.api.internal_port == config.api.port {
            return Err(ConfigError::SameApiPorts(config.api.port));
        }
        Ok(config)
    }

    /// What serde cannot say about backups: the timezone exists, and the target is
    /// one that is built.
    fn check_backup(&self) -> Result<(), ConfigError> {
        crate::schedule::parse_timezone(&self.timezone)?;
        match self.backup.target {
            BackupTarget::Pvc { .. } => Ok(()),
            BackupTarget::S3 { .. } => Err(ConfigError::S3NotBuilt),
        }
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
        assert_eq!(config.api.internal_port, 9180);
        assert_eq!(config.plans.tier(PlanTier::Free).max_gpu, 0);
    }

    #[test]
    fn the_internal_port_is_not_the_public_one() {
        let figment =
            PlatformConfig::figment().merge(Toml::string("[api]\ninternal_port = 8180\n"));
        let refused = PlatformConfig::extract(figment).unwrap_err();
        assert!(
            matches!(refused, ConfigError::SameApiPorts(8180)),
            "{refused}"
        );
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
    fn the_backup_target_is_a_pvc_and_s3_is_refused_by_name() {
        let config = PlatformConfig::default();
        assert!(matches!(config.backup.target, BackupTarget::Pvc { .. }));
        let figment = PlatformConfig::figment().merge(Toml::string(
            "[backup.target]\nkind = \"s3\"\nendpoint = \"https://minio.local\"\nbucket = \"b\"\nsecret = \"s3\"",
        ));
        let error = PlatformConfig::extract(figment).unwrap_err().to_string();
        assert!(error.contains("\"s3\" is not built"), "{error}");
        let figment = PlatformConfig::figment().merge(Toml::string("timezone = \"Africa/Algier\""));
        let error = PlatformConfig::extract(figment).unwrap_err().to_string();
        assert!(error.contains("\"Africa/Algier\""), "{error}");
    }

    #[test]
    fn a_model_source_is_public_by_default_and_a_mirror_never_the_whole_internet() {
        assert_eq!(
            PlatformConfig::default().ollama.model_source,
            ModelSource::Public
        );
        let load = |toml: &str| {
            PlatformConfig::extract(PlatformConfig::figment().merge(Toml::string(toml)))
        };
        let config = load(
            "[ollama.model_source]\nkind = \"mirror\"\nregistry = \"models.univ.dz:5000\"\ncidrs = [\"10.20.0.5/32\"]",
        )
        .unwrap();
        assert!(matches!(
            config.ollama.model_source,
            ModelSource::Mirror { ref registry, .. } if registry == "models.univ.dz:5000"
        ));
        let config =
            load("[ollama.model_source]\nkind = \"bundle\"\nclaim = \"model-bundle\"").unwrap();
        assert!(matches!(
            config.ollama.model_source,
            ModelSource::Bundle { .. }
        ));
        for (toml, named) in [
            (
                "kind = \"mirror\"\nregistry = \"m.dz\"\ncidrs = [\"0.0.0.0/0\"]",
                "\"0.0.0.0/0\" in cidrs is the whole internet",
            ),
            (
                "kind = \"mirror\"\nregistry = \"m.dz\"\ncidrs = [\"10.0.0.1/32\", \"128.0.0.0/01\"]",
                "\"128.0.0.0/01\" in cidrs is the whole internet",
            ),
            (
                "kind = \"mirror\"\nregistry = \"m.dz\"\ncidrs = [\"::/0\"]",
                "\"::/0\" in cidrs is the whole internet",
            ),
            (
                "kind = \"mirror\"\nregistry = \"m.dz\"\ncidrs = []",
                "needs its addresses",
            ),
            (
                "kind = \"mirror\"\nregistry = \"https://m.dz\"\ncidrs = [\"10.0.0.1\"]",
                "is not host[:port]",
            ),
            (
                "kind = \"mirror\"\nregistry = \"m.dz:x\"\ncidrs = [\"10.0.0.1\"]",
                "has no valid port",
            ),
            (
                "kind = \"bundle\"\nclaim = \"Not_A_Claim\"",
                "is not a PersistentVolumeClaim name",
            ),
            (
                "kind = \"bundle\"\nclaim = \"b\"\npath = \"../x\"",
                "leaves the claim",
            ),
        ] {
            let error = load(&format!("[ollama.model_source]\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("ollama.model_source"), "{error}");
            assert!(error.contains(named), "{toml}: {error}");
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

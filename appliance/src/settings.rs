//! The appliance's configuration: the platform configuration every plan is made from,
//! plus the appliance's own `[appliance]` table, layered by figment: built-in
//! defaults, then `/etc/iafactory/iafactory.toml` (or `--config`), then `IAF_*`
//! environment variables (`IAF_DOMAIN=...`, `IAF_APPLIANCE__DATA_DIR=...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;
use iafactory_crds::PlatformConfig;
use serde::{Deserialize, Serialize};

/// Where the site's configuration lives when `--config` is not given.
pub const SYSTEM_CONFIG: &str = "/etc/iafactory/iafactory.toml";

/// The top-level keys an `IAF_*` variable may set; other `IAF_*` variables (the API's
/// own, the tests') are not configuration of the appliance and are ignored.
const ENV_KEYS: &[&str] = &[
    "domain",
    "timezone",
    "registry",
    "images",
    "api",
    "ollama",
    "network",
    "plans",
    "appliance",
];

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "the configuration is invalid: {0}; fix it (see `iafactory init` for a commented example)"
    )]
    Invalid(Box<figment::Error>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceSettings {
    /// Desired manifests, generated secrets and backups' metadata live here: a reboot
    /// or a crash loses nothing.
    pub data_dir: PathBuf,
    /// Names this appliance's Docker objects (label `iafactory.dz/appliance`): two
    /// appliances on one engine (or parallel tests) never collect each other's objects.
    pub instance: String,
    /// Contact address given to the ACME directory.
    pub acme_email: Option<String>,
    pub acme_directory: String,
    /// Where `images import` looks for bundles when given a bare file name.
    pub bundle_dir: PathBuf,
    /// How long a component may take to become healthy before `up` reports it.
    pub health_timeout_seconds: u64,
    /// How often Docker runs each container's healthcheck.
    pub healthcheck_interval_ms: u64,
    /// How often `serve` reconciles when no manifest changes.
    pub reconcile_interval_seconds: u64,
    /// `serve`'s metrics and status API; localhost only.
    pub listen: SocketAddr,
    /// The gateway's settings (the TLS reverse proxy), read by the gateway module.
    pub gateway: Dict,
}

impl Default for ApplianceSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/iafactory"),
            instance: "default".into(),
            acme_email: None,
            acme_directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            bundle_dir: PathBuf::from("/var/lib/iafactory/bundles"),
            health_timeout_seconds: 180,
            healthcheck_interval_ms: 2000,
            reconcile_interval_seconds: 30,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            gateway: Dict::new(),
        }
    }
}

impl ApplianceSettings {
    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs(self.health_timeout_seconds)
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.data_dir.join("manifests")
    }
}

/// Everything a command needs to know about the site.
#[derive(Clone, Debug)]
pub struct Config {
    pub platform: PlatformConfig,
    pub appliance: ApplianceSettings,
}

impl Config {
    /// `file` replaces the system file; without it, the system file is read if present.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut figment = PlatformConfig::figment();
        match file {
            Some(file) => figment = figment.merge(Toml::file_exact(file)),
            None if Path::new(SYSTEM_CONFIG).exists() => {
                figment = figment.merge(Toml::file_exact(SYSTEM_CONFIG))
            }
            None => {}
        }
        Self::from_figment(figment.merge(env()))
    }

    pub fn from_figment(figment: Figment) -> Result<Self, SettingsError> {
        let invalid = |e| SettingsError::Invalid(Box::new(e));
        let appliance = figment
            .focus("appliance")
            .extract::<ApplianceSettings>()
            .map_err(invalid)?;
        let platform = figment.extract::<PlatformConfig>().map_err(invalid)?;
        Ok(Self {
            platform,
            appliance,
        })
    }
}

fn env() -> Env {
    Env::prefixed("IAF_").split("__").filter(|key| {
        // Depending on figment's order of maps, the key is split already or not.
        let first = key
            .as_str()
            .split("__")
            .next()
            .and_then(|k| k.split('.').next())
            .unwrap_or_default();
        ENV_KEYS.iter().any(|k| first.eq_ignore_ascii_case(k))
    })
}

/// The commented file `iafactory init` writes.
pub fn example_config(data_dir: &Path) -> String {
    format!(
        r#"# IAFactory appliance configuration ({SYSTEM_CONFIG}).
# Every key has a built-in default; uncomment what this site changes. IAF_* environment
# variables override this file (IAF_DOMAIN, IAF_APPLIANCE__DATA_DIR, ...).

# The public domain: tenant <name> answers at https://<name>.<domain>.
# domain = "univ-example.dz"
# Backups and schedules run in this timezone.
# timezone = "Africa/Algiers"
# A registry mirror replacing every image's registry (empty: images as written; on a
# site with no internet, images come from an offline bundle: `iafactory images import`).
# registry = ""

# Images and resource limits per plan tier: see the [images.*] and [plans.*] tables of
# the built-in default (`iafactory init --print-defaults`), and override any key here.

[appliance]
# Desired manifests and generated secrets: back this directory up.
data_dir = "{}"
# Names this appliance's Docker objects.
# instance = "default"
# ACME (Let's Encrypt or a site's own directory).
# acme_email = "admin@univ-example.dz"
# acme_directory = "https://acme-v02.api.letsencrypt.org/directory"
# Where offline bundles are looked for.
# bundle_dir = "/var/lib/iafactory/bundles"
# How long a component may take to become healthy.
# health_timeout_seconds = 180
# How often `serve` reconciles when nothing changes.
# reconcile_interval_seconds = 30
# Metrics (/metrics) and the status API, on localhost.
# listen = "127.0.0.1:9464"
"#,
        data_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn defaults_then_file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "site.toml",
                "domain = \"univ.dz\"\n[appliance]\ndata_dir = \"/srv/iaf\"\ninstance = \"a\"\n",
            )?;
            jail.set_env("IAF_APPLIANCE__INSTANCE", "b");
            jail.set_env("IAF_TEST_SOMETHING", "ignored");
            let config = Config::load(Some(Path::new("site.toml"))).unwrap();
            assert_eq!(config.platform.domain, "univ.dz");
            assert_eq!(config.platform.timezone, "Africa/Algiers");
            assert_eq!(config.appliance.data_dir, PathBuf::from("/srv/iaf"));
            assert_eq!(config.appliance.instance, "b");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_typo_in_the_appliance_table_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("site.toml", "[appliance]\ndata_dri = \"/srv\"\n")?;
            let error = Config::load(Some(Path::new("site.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("data_dri"), "{error}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_example_parses() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("site.toml", &example_config(Path::new("/srv/iaf")))?;
            let config = Config::load(Some(Path::new("site.toml"))).unwrap();
            assert_eq!(config.appliance.data_dir, PathBuf::from("/srv/iaf"));
            Ok(())
        });
    }
}

//! The appliance's configuration: the platform configuration every plan is made from,
//! plus the appliance's own `[appliance]` table, layered by figment: built-in
//! defaults, then `/etc/iafactory/iafactory.toml` (or `--config`), then `IAF_*`
//! environment variables (`IAF_DOMAIN=...`, `IAF_APPLIANCE__DATA_DIR=...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
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
    #[error(
        "appliance.gateway.certificates = \"provided\" needs both certificate_chain and certificate_key (PEM files); set them, or choose \"acme\" or \"local-ca\""
    )]
    ProvidedWithoutFiles,
    #[error(
        "appliance.gateway.certificate_chain/certificate_key are only read with certificates = \"provided\", but it is {0:?}; remove them or set certificates = \"provided\""
    )]
    FilesWithoutProvided(CertificateSourceKind),
    #[error(
        "appliance.gateway.certificate_chain and certificate_key go together: set both (the PEM chain, leaf first, and its private key)"
    )]
    HalfProvided,
}

/// Where the gateway's certificates come from, as written in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateSourceKind {
    Acme,
    LocalCa,
    Provided,
}

/// The TLS gateway `serve` runs: listeners and where certificates come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// HTTPS, routing `<tenant>.<domain>` to that tenant's API.
    pub https_listen: SocketAddr,
    /// Plain HTTP: ACME HTTP-01 challenges, and redirects to HTTPS.
    pub http_listen: SocketAddr,
    /// The HTTPS port clients use when it differs from `https_listen`'s (port
    /// forwarding), for redirects.
    pub public_https_port: Option<u16>,
    /// Unset: `provided` when certificate files are given, else `acme` when
    /// `acme_email` is set, else `local-ca`.
    pub certificates: Option<CertificateSourceKind>,
    pub certificate_chain: Option<PathBuf>,
    pub certificate_key: Option<PathBuf>,
    /// An extra root for the ACME server's own HTTPS (a site's private ACME server).
    pub acme_server_root: Option<PathBuf>,
    /// Where certificates, the ACME account and the local CA live; default
    /// `<data_dir>/certs`.
    pub cert_dir: Option<PathBuf>,
    /// How often certificates are checked for renewal.
    pub renewal_check_seconds: u64,
    /// HTTP/1: how long a request head may take to arrive.
    pub header_read_timeout_seconds: u64,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Open client connections on both listeners together.
    pub max_connections: usize,
    /// Open client connections from one client address.
    pub max_connections_per_client: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            https_listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 80)),
            public_https_port: None,
            certificates: None,
            certificate_chain: None,
            certificate_key: None,
            acme_server_root: None,
            cert_dir: None,
            renewal_check_seconds: 3600,
            header_read_timeout_seconds: 30,
            idle_timeout_seconds: 60,
            max_connections: 4096,
            max_connections_per_client: 256,
        }
    }
}

/// The shared monitoring stack `up` converges beside the tenants: one Prometheus
/// scraping the appliance and every tenant's API, and one Grafana showing them. Both
/// run in the host's network namespace, listening on localhost by default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitoringConfig {
    /// Off: the stack's containers are removed at the next `up`; its volumes stay.
    pub enabled: bool,
    /// How often Prometheus scrapes, and evaluates the alert rules.
    pub scrape_interval_seconds: u64,
    /// How long Prometheus keeps samples (Prometheus duration: `15d`, `12h`).
    pub retention: String,
    pub prometheus: PrometheusConfig,
    pub grafana: GrafanaConfig,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            scrape_interval_seconds: 15,
            retention: "15d".into(),
            prometheus: PrometheusConfig::default(),
            grafana: GrafanaConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Built here by `images/prometheus/build.sh` (Debian's Prometheus, FROM scratch).
    pub image: String,
    /// Its web UI and API, in the host's network namespace.
    pub listen: SocketAddr,
    pub cpus: f64,
    pub memory_mb: u64,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            image: "iafactory/prometheus:2.42.0".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            cpus: 1.0,
            memory_mb: 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrafanaConfig {
    pub enabled: bool,
    /// An official Grafana image (Alpine-based: the healthcheck uses its wget); a site
    /// with no internet imports it with a bundle.
    pub image: String,
    /// Its web UI, in the host's network namespace.
    pub listen: SocketAddr,
    pub cpus: f64,
    pub memory_mb: u64,
    /// Replaces the image's command (empty: the image's own).
    pub args: Vec<String>,
    /// Replaces the healthcheck (empty: wget of /api/health on `listen`).
    pub healthcheck: Vec<String>,
}

impl Default for GrafanaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            image: "grafana/grafana-oss:11.3.0".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            cpus: 1.0,
            memory_mb: 512,
            args: Vec::new(),
            healthcheck: Vec::new(),
        }
    }
}

/// The certificate source once defaults are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateChoice {
    Acme {
        directory: String,
        email: Option<String>,
        server_root: Option<PathBuf>,
    },
    LocalCa,
    Provided {
        chain: PathBuf,
        key: PathBuf,
    },
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
    /// The TLS gateway `serve` runs.
    pub gateway: GatewayConfig,
    /// The shared Prometheus and Grafana.
    pub monitoring: MonitoringConfig,
    /// Which signed offline bundles `images import` accepts.
    pub bundles: BundlesConfig,
}

/// `[appliance.bundles]`: whose signatures an offline bundle may carry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundlesConfig {
    /// Ed25519 public keys, each the base64 of its 32 bytes (`iafactory images keygen`
    /// prints it). A bundle signed by none of them is refused unless `--allow-unsigned`.
    pub trusted_keys: Vec<String>,
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
            gateway: GatewayConfig::default(),
            monitoring: MonitoringConfig::default(),
            bundles: BundlesConfig::default(),
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

    pub fn cert_dir(&self) -> PathBuf {
        self.gateway
            .cert_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("certs"))
    }

    /// Resolves `gateway.certificates` and its defaults, refusing contradictions.
    pub fn certificate_choice(&self) -> Result<CertificateChoice, SettingsError> {
        let gateway = &self.gateway;
        let files = match (&gateway.certificate_chain, &gateway.certificate_key) {
            (Some(chain), Some(key)) => Some((chain.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(SettingsError::HalfProvided),
        };
        let kind = gateway
            .certificates
            .unwrap_or(match (&files, &self.acme_email) {
                (Some(_), _) => CertificateSourceKind::Provided,
                (None, Some(_)) => CertificateSourceKind::Acme,
                (None, None) => CertificateSourceKind::LocalCa,
            });
        match (kind, files) {
            (CertificateSourceKind::Provided, Some((chain, key))) => {
                Ok(CertificateChoice::Provided { chain, key })
            }
            (CertificateSourceKind::Provided, None) => Err(SettingsError::ProvidedWithoutFiles),
            (other, Some(_)) => Err(SettingsError::FilesWithoutProvided(other)),
            (CertificateSourceKind::Acme, None) => Ok(CertificateChoice::Acme {
                directory: self.acme_directory.clone(),
                email: self.acme_email.clone(),
                server_root: gateway.acme_server_root.clone(),
            }),
            (CertificateSourceKind::LocalCa, None) => Ok(CertificateChoice::LocalCa),
        }
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

[appliance.gateway]
# The TLS gateway: https://<tenant>.<domain> goes to that tenant's API.
# https_listen = "0.0.0.0:443"
# Plain HTTP: ACME challenges, and redirects to HTTPS.
# http_listen = "0.0.0.0:80"
# Behind port forwarding: the HTTPS port clients use, for redirects.
# public_https_port = 443
# Where certificates come from: "acme", "local-ca" or "provided". Unset: "provided"
# when the two files below are set, "acme" when acme_email is set, else "local-ca"
# (clients trust <cert_dir>/local-ca/ca.pem).
# certificates = "local-ca"
# certificate_chain = "/etc/iafactory/tls/wildcard.pem"
# certificate_key = "/etc/iafactory/tls/wildcard.key"
# An extra root for a private ACME server's own HTTPS.
# acme_server_root = "/etc/iafactory/tls/acme-root.pem"
# Certificates, the ACME account and the local CA (default: <data_dir>/certs).
# cert_dir = "/var/lib/iafactory/certs"
# How often certificates are checked for renewal (renewed with 30 days or less left).
# renewal_check_seconds = 3600
# Slow and greedy clients: an HTTP/1 request head must arrive within
# header_read_timeout_seconds; a connection with no request in flight is closed after
# idle_timeout_seconds; connections beyond a cap are closed on accept.
# header_read_timeout_seconds = 30
# idle_timeout_seconds = 60
# max_connections = 4096
# max_connections_per_client = 256

[appliance.bundles]
# Offline bundles (`iafactory images import`) must be signed by one of these Ed25519
# public keys (base64 of the 32 bytes, as `iafactory images keygen` prints them);
# others are refused unless `--allow-unsigned`.
# trusted_keys = ["5bVq0cMu3Xr0n1nVZ0ZpJ4l3H0a8o2b7Wm0q3n6T8yE="]

[appliance.monitoring]
# The shared Prometheus (scraping this appliance and every tenant's API) and Grafana
# (the IAFactory dashboards provisioned), converged by `up` beside the tenants. Both
# listen on localhost: reach them through an SSH tunnel, or change `listen`.
# Grafana's admin password is generated once in <data_dir>/monitoring/grafana-admin-password.
# enabled = true
# scrape_interval_seconds = 15
# How long samples are kept.
# retention = "15d"

[appliance.monitoring.prometheus]
# Built on this box by `iafactory images build` (images/prometheus/build.sh), or
# imported with a bundle.
# image = "iafactory/prometheus:2.42.0"
# listen = "127.0.0.1:9090"
# cpus = 1.0
# memory_mb = 1024

[appliance.monitoring.grafana]
# enabled = true
# The official image; a site with no internet imports it with a bundle
# (`iafactory images export --to B.tar grafana/grafana-oss:11.3.0` on a connected box).
# image = "grafana/grafana-oss:11.3.0"
# listen = "127.0.0.1:3000"
# cpus = 1.0
# memory_mb = 512
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
            jail.set_env("IAF_APPLIANCE__GATEWAY__HTTPS_LISTEN", "127.0.0.1:8443");
            jail.set_env(
                "IAF_APPLIANCE__MONITORING__GRAFANA__IMAGE",
                "registry.univ.dz/grafana-oss:11",
            );
            let config = Config::load(Some(Path::new("site.toml"))).unwrap();
            assert_eq!(config.platform.domain, "univ.dz");
            assert_eq!(config.platform.timezone, "Africa/Algiers");
            assert_eq!(config.appliance.data_dir, PathBuf::from("/srv/iaf"));
            assert_eq!(config.appliance.instance, "b");
            assert_eq!(
                config.appliance.gateway.https_listen,
                SocketAddr::from(([127, 0, 0, 1], 8443))
            );
            assert_eq!(config.appliance.gateway.http_listen.port(), 80);
            assert_eq!(config.appliance.cert_dir(), PathBuf::from("/srv/iaf/certs"));
            // Monitoring is on by default, on localhost, and every key can be set.
            let monitoring = &config.appliance.monitoring;
            assert!(monitoring.enabled);
            assert_eq!(monitoring.prometheus.listen.to_string(), "127.0.0.1:9090");
            assert_eq!(monitoring.grafana.listen.to_string(), "127.0.0.1:3000");
            assert_eq!(monitoring.grafana.image, "registry.univ.dz/grafana-oss:11");
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
            jail.create_file(
                "site.toml",
                "[appliance.monitoring.grafana]\nimgae = \"grafana/grafana-oss:11.3.0\"\n",
            )?;
            let error = Config::load(Some(Path::new("site.toml")))
                .unwrap_err()
                .to_string();
            assert!(error.contains("imgae"), "{error}");
            Ok(())
        });
    }

    fn with_gateway(toml: &str, acme_email: Option<&str>) -> Result<CertificateChoice, String> {
        let figment = Figment::new().merge(Toml::string(toml));
        let mut appliance = figment
            .focus("appliance")
            .extract::<ApplianceSettings>()
            .map_err(|e| e.to_string())?;
        appliance.acme_email = acme_email.map(str::to_owned);
        appliance.certificate_choice().map_err(|e| e.to_string())
    }

    #[test]
    fn the_certificate_source_follows_what_is_configured() {
        assert_eq!(with_gateway("", None), Ok(CertificateChoice::LocalCa));
        assert!(matches!(
            with_gateway("", Some("ops@univ.dz")),
            Ok(CertificateChoice::Acme { email: Some(_), .. })
        ));
        let files =
            "[appliance.gateway]\ncertificate_chain = \"/c.pem\"\ncertificate_key = \"/k.pem\"\n";
        assert_eq!(
            with_gateway(files, Some("ops@univ.dz")),
            Ok(CertificateChoice::Provided {
                chain: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert_eq!(
            with_gateway(
                "[appliance.gateway]\ncertificates = \"local-ca\"\n",
                Some("ops@univ.dz")
            ),
            Ok(CertificateChoice::LocalCa)
        );
    }

    #[test]
    fn contradictory_certificate_settings_are_refused() {
        let provided = with_gateway("[appliance.gateway]\ncertificates = \"provided\"\n", None);
        assert!(provided.unwrap_err().contains("needs both"));
        let half = with_gateway("[appliance.gateway]\ncertificate_key = \"/k.pem\"\n", None);
        assert!(half.unwrap_err().contains("go together"));
        let contradicted = with_gateway(
            "[appliance.gateway]\ncertificates = \"acme\"\ncertificate_chain = \"/c\"\ncertificate_key = \"/k\"\n",
            None,
        );
        assert!(contradicted.unwrap_err().contains("only read with"));
        let unknown = with_gateway(
            "[appliance.gateway]\ncertificates = \"self-signed\"\n",
            None,
        );
        assert!(unknown.unwrap_err().contains("self-signed"));
        let typo = with_gateway("[appliance.gateway]\nhttps_lisen = \"127.0.0.1:1\"\n", None);
        assert!(typo.unwrap_err().contains("https_lisen"));
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

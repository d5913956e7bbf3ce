//! The shared monitoring stack: one Prometheus and one Grafana for the whole box,
//! converged by the same engine as the tenants, labelled `iafactory.dz/stack=monitoring`
//! instead of a tenant (so no tenant ever collects them as orphans).
//!
//! Both run in the host's network namespace, listening on localhost: Prometheus reaches
//! the appliance's own /metrics (serve's localhost listener) and every tenant's API by
//! its address on the tenant's internal network, as the gateway does, without joining
//! any tenant network. Its configuration is generated here (pure) and bind-mounted
//! read-only; its targets are `file_sd` files that `serve` rewrites (atomically) when
//! tenants or addresses change, which Prometheus re-reads by itself, with no restart.
//! Grafana gets a provisioned Prometheus datasource (fixed uid) and the IAFactory
//! dashboards from config/grafana/dashboards.
//!
//! Generated files live in `<data_dir>/monitoring/`:
//! `prometheus/{prometheus.yml,rules/,targets/}`, `grafana/{provisioning/,dashboards/}`
//! and `grafana-admin-password` (0600, generated once, never rewritten).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use iafactory_crds::plan::{ComponentKind, LABEL_COMPONENT, LABEL_SPEC_HASH};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::{App, AppError, ComponentStatus, TenantStatus};
use crate::engine::converge::{health_word, is_current};
use crate::engine::desired::{
    ContainerSpec, HOST_NETWORK, HealthcheckSpec, LABEL_STACK, LABEL_VOLUME, NetworkSpec,
    RenderSettings, TenantState, VolumeSpec, instance_labels, spec_hash,
};
use crate::engine::docker::Target;
use crate::settings::MonitoringConfig;
use crate::store::{StoreError, write_atomically};

/// The stack's label value, and how its objects are named (`iaf-monitoring-...`).
pub const STACK: &str = "monitoring";
pub const PROMETHEUS: &str = "prometheus";
pub const GRAFANA: &str = "grafana";
/// The uid of the provisioned Prometheus datasource: dashboards may name it.
pub const DATASOURCE_UID: &str = "iafactory-prometheus";
/// The type of the provisioned datasource, as dashboards' datasource variables filter.
pub const DATASOURCE_TYPE: &str = "prometheus";
/// Labels every generated file's hash, so a changed configuration replaces the
/// container that reads it.
pub const LABEL_CONFIG_HASH: &str = "iafactory.dz/config-hash";

/// Where the containers read what the appliance generates.
pub const PROMETHEUS_CONFIG_DIR: &str = "/etc/prometheus";
pub const PROMETHEUS_DATA_DIR: &str = "/prometheus";
pub const GRAFANA_PROVISIONING_DIR: &str = "/etc/grafana/provisioning";
pub const GRAFANA_DASHBOARDS_DIR: &str = "/etc/grafana/dashboards";
pub const GRAFANA_DATA_DIR: &str = "/var/lib/grafana";

/// The alert rules that apply to an appliance (the operator's do not: no Kubernetes).
pub const RULES: &[(&str, &str)] = &[
    (
        "appliance-rules.yml",
        include_str!("../../config/prometheus/appliance-rules.yml"),
    ),
    (
        "platform-rules.yml",
        include_str!("../../config/prometheus/platform-rules.yml"),
    ),
];

/// The dashboards provisioned in Grafana (the operator's shows nothing on an
/// appliance: no Kubernetes operator runs here).
pub const DASHBOARDS: &[(&str, &str)] = &[
    (
        "iafactory-appliance.json",
        include_str!("../../config/grafana/dashboards/iafactory-appliance.json"),
    ),
    (
        "iafactory-tenant-overview.json",
        include_str!("../../config/grafana/dashboards/iafactory-tenant-overview.json"),
    ),
];

/// The file_sd files, relative to the Prometheus configuration directory.
pub const APPLIANCE_TARGETS: &str = "targets/appliance.json";
pub const API_TARGETS: &str = "targets/api.json";

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error(
        "appliance.monitoring.retention = {0:?} is not a Prometheus duration; write a number and a unit (ms, s, m, h, d, w, y), as in \"15d\" or \"12h\""
    )]
    Retention(String),
    #[error(
        "appliance.monitoring.scrape_interval_seconds must be at least 1; set it to 15 (the default) or more"
    )]
    ScrapeInterval,
    #[error(
        "appliance.monitoring.prometheus.listen and grafana.listen are both {0}; give each its own port"
    )]
    SamePort(SocketAddr),
    #[error("cannot write the monitoring configuration: {0}")]
    Write(#[from] StoreError),
    #[error(
        "cannot use {path}: {source}; check the data directory is writable by this user (appliance.data_dir)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} (Grafana's admin password) is unreadable: {reason}; restore it from a backup, or remove it and Grafana's data volume (iaf-monitoring-grafana-data) to start over"
    )]
    Password { path: PathBuf, reason: String },
}

/// One generated file, relative to `<data_dir>/monitoring`.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
}

impl GeneratedFile {
    fn new(path: impl Into<PathBuf>, contents: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
        }
    }
}

/// The stack, as decided from the configuration alone.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitoringPlan {
    pub files: Vec<GeneratedFile>,
    pub state: TenantState,
}

/// Where a process on this host reaches a listener: its own address, or loopback when
/// it listens on every address.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Accepts what Prometheus's `--storage.tsdb.retention.time` accepts: one or more
/// number-and-unit pairs (`15d`, `1w2d`, `90m`).
fn valid_duration(text: &str) -> bool {
    let mut rest = text;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// prometheus.yml: the appliance and the tenants' APIs from file_sd files (relative to
/// the configuration, so `promtool check config` checks the same files on the host),
/// Prometheus itself, and the alert rules.
pub fn prometheus_config(config: &MonitoringConfig, instance: &str) -> String {
    let interval = format!("{}s", config.scrape_interval_seconds);
    let file_sd = |file: &str| json!([{ "files": [file], "refresh_interval": "30s" }]);
    let document = json!({
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": { "appliance": instance },
        },
        "rule_files": ["rules/*.yml"],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{
                    "targets": [reachable(config.prometheus.listen).to_string()],
                    "labels": { "component": PROMETHEUS },
                }],
            },
            { "job_name": "iafactory-appliance", "file_sd_configs": file_sd(APPLIANCE_TARGETS) },
            { "job_name": "iafactory-api", "file_sd_configs": file_sd(API_TARGETS) },
        ],
    });
    format!(
        "# Generated by iafactory from [appliance.monitoring]; rewritten by `up`, do not edit.\n{}",
        serde_yaml::to_string(&document).expect("JSON values serialize as YAML")
    )
}

/// The file_sd target groups: the appliance's own /metrics.
pub fn appliance_targets(serve_listen: SocketAddr) -> String {
    let groups = json!([{
        "targets": [reachable(serve_listen).to_string()],
        "labels": { "component": "appliance" },
    }]);
    serde_json::to_string_pretty(&groups).expect("JSON serializes") + "\n"
}

/// The file_sd target groups of the tenants' APIs: tenant → `ip:port` of each replica.
/// `namespace` is the tenant's network, as the Kubernetes namespace is on a cluster,
/// so the same dashboards select tenants on both.
pub fn api_targets(apis: &BTreeMap<String, Vec<String>>) -> String {
    let groups: Vec<serde_json::Value> = apis
        .iter()
        .filter(|(_, addresses)| !addresses.is_empty())
        .map(|(tenant, addresses)| {
            json!({
                "targets": addresses,
                "labels": {
                    "tenant": tenant,
                    "namespace": crate::engine::desired::network_name(tenant),
                    "component": ComponentKind::Api.name(),
                },
            })
        })
        .collect();
    serde_json::to_string_pretty(&groups).expect("JSON serializes") + "\n"
}

/// Grafana's datasource provisioning: Prometheus, the default, with a fixed uid.
pub fn grafana_datasources(config: &MonitoringConfig) -> String {
    let document = json!({
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus",
            "uid": DATASOURCE_UID,
            "type": DATASOURCE_TYPE,
            "access": "proxy",
            "orgId": 1,
            "url": format!("http://{}", reachable(config.prometheus.listen)),
            "isDefault": true,
            "editable": false,
            "jsonData": { "timeInterval": format!("{}s", config.scrape_interval_seconds) },
        }],
    });
    serde_yaml::to_string(&document).expect("JSON values serialize as YAML")
}

/// Grafana's dashboard provider: the files mounted at [`GRAFANA_DASHBOARDS_DIR`].
pub fn grafana_dashboard_providers() -> String {
    let document = json!({
        "apiVersion": 1,
        "providers": [{
            "name": "iafactory",
            "orgId": 1,
            "folder": "IAFactory",
            "type": "file",
            "disableDeletion": true,
            "allowUiUpdates": false,
            "updateIntervalSeconds": 60,
            "options": { "path": GRAFANA_DASHBOARDS_DIR, "foldersFromFilesStructure": false },
        }],
    });
    serde_yaml::to_string(&document).expect("JSON values serialize as YAML")
}

/// Every file the stack reads, except the targets `serve` keeps.
pub fn generated_files(config: &MonitoringConfig, instance: &str) -> Vec<GeneratedFile> {
    let mut files = vec![GeneratedFile::new(
        "prometheus/prometheus.yml",
        prometheus_config(config, instance),
    )];
    files.extend(
        RULES
            .iter()
            .map(|(name, text)| GeneratedFile::new(format!("prometheus/rules/{name}"), *text)),
    );
    if config.grafana.enabled {
        files.push(GeneratedFile::new(
            "grafana/provisioning/datasources/iafactory.yaml",
            grafana_datasources(config),
        ));
        files.push(GeneratedFile::new(
            "grafana/provisioning/dashboards/iafactory.yaml",
            grafana_dashboard_providers(),
        ));
        files.extend(
            DASHBOARDS.iter().map(|(name, text)| {
                GeneratedFile::new(format!("grafana/dashboards/{name}"), *text)
            }),
        );
    }
    files
}

/// The hash of the generated files under `prefix`.
fn files_hash(files: &[GeneratedFile], prefix: &str) -> String {
    let mut hash = Sha256::new();
    for file in files.iter().filter(|f| f.path.starts_with(prefix)) {
        hash.update(file.path.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(file.contents.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..10])
}

/// `iaf-monitoring-<component>`; another appliance on the same engine (settings
/// `instance`) gets its own: `iaf-monitoring-<instance>-<component>`.
pub fn object_name(instance: &str, component: &str) -> String {
    if instance == "default" {
        format!("iaf-{STACK}-{component}")
    } else {
        format!("iaf-{STACK}-{instance}-{component}")
    }
}

fn stack_labels(settings: &RenderSettings, component: &str) -> BTreeMap<String, String> {
    let mut labels = instance_labels(settings);
    labels.insert(LABEL_STACK.into(), STACK.into());
    labels.insert(LABEL_COMPONENT.into(), component.into());
    labels
}

fn data_volume(settings: &RenderSettings, component: &str) -> VolumeSpec {
    let mut labels = stack_labels(settings, component);
    labels.insert(LABEL_VOLUME.into(), "data".into());
    VolumeSpec {
        name: format!("{}-data", object_name(&settings.instance, component)),
        component: component.into(),
        labels,
    }
}

fn http_probe(listen: SocketAddr, path: &str) -> Vec<String> {
    ["wget", "-q", "-O", "/dev/null"]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("http://{}{path}", reachable(listen))])
        .collect()
}

fn healthcheck(
    settings: &RenderSettings,
    test: Vec<String>,
    start_period_seconds: i64,
) -> HealthcheckSpec {
    HealthcheckSpec {
        test: std::iter::once("CMD".to_owned()).chain(test).collect(),
        interval_ns: settings.healthcheck_interval_ms as i64 * 1_000_000,
        timeout_ns: 5_000_000_000,
        retries: 3,
        start_period_ns: start_period_seconds * 1_000_000_000,
    }
}

fn finish(mut spec: ContainerSpec, config_hash: String) -> ContainerSpec {
    spec.labels.insert(LABEL_CONFIG_HASH.into(), config_hash);
    let hash = spec_hash(&spec);
    spec.labels.insert(LABEL_SPEC_HASH.into(), hash.clone());
    spec.spec_hash = hash;
    spec
}

/// The whole stack from the configuration (pure). `dir` is `<data_dir>/monitoring`
/// on the host; `grafana_password` is the generated admin password.
pub fn plan(
    config: &MonitoringConfig,
    settings: &RenderSettings,
    dir: &Path,
    grafana_password: &str,
) -> Result<MonitoringPlan, MonitoringError> {
    if !valid_duration(&config.retention) {
        return Err(MonitoringError::Retention(config.retention.clone()));
    }
    if config.scrape_interval_seconds == 0 {
        return Err(MonitoringError::ScrapeInterval);
    }
    if config.grafana.enabled && config.prometheus.listen.port() == config.grafana.listen.port() {
        return Err(MonitoringError::SamePort(config.prometheus.listen));
    }
    let files = generated_files(config, &settings.instance);
    let prometheus = &config.prometheus;
    let mut containers = vec![finish(
        ContainerSpec {
            name: object_name(&settings.instance, PROMETHEUS),
            component: PROMETHEUS.into(),
            image: prometheus.image.clone(),
            // On the host's network, two cannot listen on one port: stop, then replace.
            stateful: true,
            cmd: vec![
                format!("--config.file={PROMETHEUS_CONFIG_DIR}/prometheus.yml"),
                format!("--storage.tsdb.path={PROMETHEUS_DATA_DIR}"),
                format!("--storage.tsdb.retention.time={}", config.retention),
                format!("--web.listen-address={}", prometheus.listen),
            ],
            env: Vec::new(),
            labels: stack_labels(settings, PROMETHEUS),
            network: HOST_NETWORK.into(),
            aliases: Vec::new(),
            user: "65534:65534".into(),
            read_only: true,
            tmpfs: BTreeMap::new(),
            mounts: vec![(
                data_volume(settings, PROMETHEUS).name,
                PROMETHEUS_DATA_DIR.into(),
            )],
            binds: vec![format!(
                "{}:{PROMETHEUS_CONFIG_DIR}:ro",
                dir.join(PROMETHEUS).display()
            )],
            gateway_hosts: Vec::new(),
            // The image's static busybox: it has no other HTTP client.
            healthcheck: Some(healthcheck(
                settings,
                std::iter::once("/bin/busybox".to_owned())
                    .chain(http_probe(prometheus.listen, "/-/ready"))
                    .collect(),
                60,
            )),
            nano_cpus: (prometheus.cpus * 1e9) as i64,
            memory_bytes: (prometheus.memory_mb * 1024 * 1024) as i64,
            depends_on: Vec::new(),
            init: None,
            one_shot: false,
            spec_hash: String::new(),
        },
        files_hash(&files, PROMETHEUS),
    )];
    let mut volumes = vec![data_volume(settings, PROMETHEUS)];
    if config.grafana.enabled {
        let grafana = &config.grafana;
        let test = if grafana.healthcheck.is_empty() {
            http_probe(grafana.listen, "/api/health")
        } else {
            grafana.healthcheck.clone()
        };
        let env = [
            ("GF_SERVER_HTTP_ADDR", grafana.listen.ip().to_string()),
            ("GF_SERVER_HTTP_PORT", grafana.listen.port().to_string()),
            ("GF_PATHS_PROVISIONING", GRAFANA_PROVISIONING_DIR.into()),
            ("GF_PATHS_DATA", GRAFANA_DATA_DIR.into()),
            ("GF_SECURITY_ADMIN_USER", "admin".into()),
            ("GF_SECURITY_ADMIN_PASSWORD", grafana_password.into()),
            ("GF_USERS_ALLOW_SIGN_UP", "false".into()),
            // Offline sites: no calls home.
            ("GF_ANALYTICS_REPORTING_ENABLED", "false".into()),
            ("GF_ANALYTICS_CHECK_FOR_UPDATES", "false".into()),
            ("GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES", "false".into()),
            ("GF_NEWS_NEWS_FEED_ENABLED", "false".into()),
            ("GF_LOG_MODE", "console".into()),
            (
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
                format!("{GRAFANA_DASHBOARDS_DIR}/iafactory-tenant-overview.json"),
            ),
        ]
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
        containers.push(finish(
            ContainerSpec {
                name: object_name(&settings.instance, GRAFANA),
                component: GRAFANA.into(),
                image: grafana.image.clone(),
                stateful: true,
                cmd: grafana.args.clone(),
                env,
                labels: stack_labels(settings, GRAFANA),
                network: HOST_NETWORK.into(),
                aliases: Vec::new(),
                // The official image's user; group 0 as its documentation asks.
                user: "472:0".into(),
                read_only: false,
                tmpfs: BTreeMap::new(),
                mounts: vec![(data_volume(settings, GRAFANA).name, GRAFANA_DATA_DIR.into())],
                binds: vec![
                    format!(
                        "{}:{GRAFANA_PROVISIONING_DIR}:ro",
                        dir.join("grafana/provisioning").display()
                    ),
                    format!(
                        "{}:{GRAFANA_DASHBOARDS_DIR}:ro",
                        dir.join("grafana/dashboards").display()
                    ),
                ],
                gateway_hosts: Vec::new(),
                // A first start migrates Grafana's database: give it time.
                healthcheck: Some(healthcheck(settings, test, 120)),
                nano_cpus: (grafana.cpus * 1e9) as i64,
                memory_bytes: (grafana.memory_mb * 1024 * 1024) as i64,
                depends_on: Vec::new(),
                init: None,
                one_shot: false,
                spec_hash: String::new(),
            },
            files_hash(&files, GRAFANA),
        ));
        volumes.push(data_volume(settings, GRAFANA));
    }
    Ok(MonitoringPlan {
        files,
        state: TenantState {
            tenant: STACK.into(),
            network: NetworkSpec {
                name: HOST_NETWORK.into(),
                internal: false,
                labels: BTreeMap::new(),
            },
            volumes,
            containers,
        },
    })
}

/// Writes `contents` unless the file holds it already; returns whether it wrote.
fn write_if_changed(path: &Path, contents: &str) -> Result<bool, MonitoringError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MonitoringError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    write_atomically(path, contents.as_bytes(), 0o644)?;
    Ok(true)
}

/// Grafana's admin password: generated once (CSPRNG, hex), stored 0600, never
/// rewritten, since Grafana's database keeps the first one it was given.
pub fn grafana_password(path: &Path) -> Result<String, MonitoringError> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(MonitoringError::Password {
                path: path.to_owned(),
                reason: "the file is empty".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(MonitoringError::Password {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let password = hex::encode(bytes);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MonitoringError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    write_atomically(path, format!("{password}\n").as_bytes(), 0o600)?;
    Ok(password)
}

impl App {
    /// `<data_dir>/monitoring`: what the stack's containers read.
    pub fn monitoring_dir(&self) -> PathBuf {
        self.config.appliance.data_dir.join(STACK)
    }

    /// The stack's settings, its images through the registry mirror (`registry`) as
    /// the tenants' are.
    fn monitoring_config(&self) -> MonitoringConfig {
        let mut config = self.config.appliance.monitoring.clone();
        let platform = &self.config.platform;
        config.prometheus.image = platform.resolve_image(&config.prometheus.image);
        config.grafana.image = platform.resolve_image(&config.grafana.image);
        config
    }

    /// The images the stack runs (none when it is switched off).
    pub fn monitoring_images(&self) -> Vec<String> {
        let config = self.monitoring_config();
        let mut images = Vec::new();
        if config.enabled {
            images.push(config.prometheus.image);
            if config.grafana.enabled {
                images.push(config.grafana.image);
            }
        }
        images
    }

    /// The stack's desired state (None: switched off), its generated files written
    /// first (only those that changed) so that a container is never created before
    /// what it mounts.
    pub fn prepare_monitoring(&self) -> Result<Option<TenantState>, MonitoringError> {
        let config = &self.monitoring_config();
        if !config.enabled {
            return Ok(None);
        }
        let dir = self.monitoring_dir();
        let password = if config.grafana.enabled {
            grafana_password(&dir.join("grafana-admin-password"))?
        } else {
            String::new()
        };
        let plan = plan(config, &self.render_settings(), &dir, &password)?;
        for file in &plan.files {
            write_if_changed(&dir.join(&file.path), &file.contents)?;
        }
        let mut empty = vec!["prometheus/targets"];
        if config.grafana.enabled {
            empty.push("grafana/provisioning/plugins");
        }
        for path in empty.into_iter().map(|e| dir.join(e)) {
            std::fs::create_dir_all(&path)
                .map_err(|source| MonitoringError::Io { path, source })?;
        }
        if config.grafana.enabled {
            // Dashboards no longer shipped leave Grafana with the files.
            let shipped: Vec<&str> = DASHBOARDS.iter().map(|(name, _)| *name).collect();
            let dashboards = dir.join("grafana/dashboards");
            for entry in std::fs::read_dir(&dashboards)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name();
                if !shipped.iter().any(|s| name.to_str() == Some(s)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Some(plan.state))
    }

    /// What `up` converges the stack to: [`App::prepare_monitoring`], less the
    /// components whose image is not on this box. Monitoring is an aid, not the
    /// platform: an offline site that has not imported Grafana yet still gets its
    /// tenants and Prometheus, and `progress` is told what is left out and why.
    pub async fn monitoring_to_converge(
        &self,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Option<TenantState>, MonitoringError> {
        let Some(mut state) = self.prepare_monitoring()? else {
            return Ok(None);
        };
        let mut kept = Vec::new();
        for spec in std::mem::take(&mut state.containers) {
            let target = Target::component(STACK, &spec.component);
            match self.engine.require_image(&target, &spec.image).await {
                Ok(()) => kept.push(spec),
                Err(error) => {
                    tracing::warn!("{error}");
                    progress(&format!(
                        "monitoring: {} is left out until its image is here: {error}",
                        spec.component
                    ));
                }
            }
        }
        let components: Vec<&str> = kept.iter().map(|c| c.component.as_str()).collect();
        state
            .volumes
            .retain(|v| components.contains(&v.component.as_str()));
        state.containers = kept;
        Ok(Some(state))
    }

    /// The stack, component by component, as the engine runs it now (None: switched
    /// off). Reads only: nothing is generated or written.
    pub async fn monitoring_status(&self) -> Result<Option<TenantStatus>, AppError> {
        let config = &self.monitoring_config();
        if !config.enabled {
            return Ok(None);
        }
        let dir = self.monitoring_dir();
        // Never brought up: no password yet, and no container to compare with either.
        let password = std::fs::read_to_string(dir.join("grafana-admin-password"))
            .map(|p| p.trim().to_owned())
            .unwrap_or_default();
        let settings = self.render_settings();
        let state = plan(config, &settings, &dir, &password)?.state;
        let mut labels = instance_labels(&settings);
        labels.insert(LABEL_STACK.into(), STACK.into());
        let observed = self.engine.containers(&labels).await?;
        let local = self.local_images(std::slice::from_ref(&state)).await?;
        let components: Vec<ComponentStatus> = state
            .containers
            .iter()
            .map(|spec| {
                let current = observed.iter().find(|o| o.name == spec.name);
                let local_image = local.get(&spec.image).and_then(|id| id.as_deref());
                ComponentStatus {
                    component: spec.component.clone(),
                    image: spec.image.clone(),
                    containers: vec![spec.name.clone()],
                    health: health_word(current.map(|o| o.health)),
                    up_to_date: current.is_some_and(|o| is_current(o, spec, local_image)),
                }
            })
            .collect();
        Ok(Some(TenantStatus {
            tenant: STACK.into(),
            healthy: components
                .iter()
                .all(|c| matches!(c.health, "healthy" | "running") && c.up_to_date),
            components,
            registrations: Vec::new(),
            last_backup: None,
        }))
    }

    /// Rewrites the file_sd targets: the appliance at `serve_listen`, and each
    /// tenant's running API replicas by their address on the tenant's network. Returns
    /// whether a file changed.
    pub fn write_monitoring_targets(
        &self,
        serve_listen: SocketAddr,
        apis: &BTreeMap<String, Vec<String>>,
    ) -> Result<bool, MonitoringError> {
        let dir = self.monitoring_dir().join(PROMETHEUS);
        let appliance = write_if_changed(
            &dir.join(APPLIANCE_TARGETS),
            &appliance_targets(serve_listen),
        )?;
        let tenants = write_if_changed(&dir.join(API_TARGETS), &api_targets(apis))?;
        Ok(appliance || tenants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn settings() -> RenderSettings {
        RenderSettings {
            instance: "default".into(),
            healthcheck_interval_ms: 2000,
        }
    }

    fn plan_default() -> MonitoringPlan {
        plan_with(&MonitoringConfig::default())
    }

    fn plan_with(config: &MonitoringConfig) -> MonitoringPlan {
        plan(
            config,
            &settings(),
            Path::new("/var/lib/iafactory/monitoring"),
            "secret",
        )
        .unwrap()
    }

    fn promtool() -> String {
        std::env::var("IAF_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into())
    }

    /// Writes the generated files and the targets into a fresh directory, as `up`
    /// and `serve` do, and returns it.
    fn written(apis: &BTreeMap<String, Vec<String>>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in plan_default().files {
            write_if_changed(&dir.path().join(&file.path), &file.contents).unwrap();
        }
        let prometheus = dir.path().join(PROMETHEUS);
        write_if_changed(
            &prometheus.join(APPLIANCE_TARGETS),
            &appliance_targets("0.0.0.0:9464".parse().unwrap()),
        )
        .unwrap();
        write_if_changed(&prometheus.join(API_TARGETS), &api_targets(apis)).unwrap();
        dir
    }

    #[test]
    fn promtool_accepts_the_generated_configuration_rules_and_targets() {
        let apis = BTreeMap::from([
            ("acme".to_owned(), vec!["172.18.0.3:8180".to_owned()]),
            (
                "univ-tlemcen".to_owned(),
                vec!["172.19.0.4:8180".to_owned(), "172.19.0.5:8180".to_owned()],
            ),
            ("stopped".to_owned(), Vec::new()),
        ]);
        let dir = written(&apis);
        let config = dir.path().join("prometheus/prometheus.yml");
        let output = Command::new(promtool())
            .args(["check", "config", config.to_str().unwrap()])
            .output()
            .expect("promtool runs (scripts/engines.sh up prometheus)");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{report}");
        // The rules were found through the relative glob, and checked.
        for (name, _) in RULES {
            assert!(report.contains(name), "{name} not checked:\n{report}");
        }
        assert!(!report.contains(" 0 rules found"), "{report}");
    }

    #[test]
    fn promtool_rejects_a_broken_targets_file() {
        // The check above can fail: a target group that is not a list is refused.
        let dir = written(&BTreeMap::new());
        std::fs::write(
            dir.path().join("prometheus").join(API_TARGETS),
            "{\"targets\": \"not a list\"}",
        )
        .unwrap();
        let config = dir.path().join("prometheus/prometheus.yml");
        let output = Command::new(promtool())
            .args(["check", "config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!output.status.success());
    }

    #[test]
    fn targets_carry_tenant_namespace_and_component() {
        let apis = BTreeMap::from([
            ("acme".to_owned(), vec!["172.18.0.3:8180".to_owned()]),
            ("gone".to_owned(), Vec::new()),
        ]);
        let groups: serde_json::Value = serde_json::from_str(&api_targets(&apis)).unwrap();
        assert_eq!(
            groups,
            json!([{
                "targets": ["172.18.0.3:8180"],
                "labels": {"tenant": "acme", "namespace": "iaf-acme", "component": "api"},
            }])
        );
        let appliance: serde_json::Value =
            serde_json::from_str(&appliance_targets("0.0.0.0:9464".parse().unwrap())).unwrap();
        assert_eq!(appliance[0]["targets"], json!(["127.0.0.1:9464"]));
    }

    #[test]
    fn the_stack_is_labelled_as_shared_and_runs_on_the_host_network() {
        let state = plan_default().state;
        assert_eq!(state.containers.len(), 2);
        assert_eq!(state.containers[0].name, "iaf-monitoring-prometheus");
        assert_eq!(state.volumes[1].name, "iaf-monitoring-grafana-data");
        assert_eq!(object_name("b", GRAFANA), "iaf-monitoring-b-grafana");
        for container in &state.containers {
            assert_eq!(container.labels[LABEL_STACK], STACK);
            assert!(
                !container
                    .labels
                    .contains_key(iafactory_crds::plan::LABEL_TENANT)
            );
            assert_eq!(container.labels[LABEL_SPEC_HASH], container.spec_hash);
            assert_eq!(container.network, HOST_NETWORK);
            assert!(container.aliases.is_empty());
            assert!(container.stateful);
            assert!(container.binds.iter().all(|b| b.ends_with(":ro")));
        }
        let prometheus = &state.containers[0];
        assert!(
            prometheus
                .cmd
                .contains(&"--web.listen-address=127.0.0.1:9090".to_owned())
        );
        assert!(
            prometheus
                .cmd
                .contains(&"--storage.tsdb.retention.time=15d".to_owned())
        );
        assert_eq!(
            prometheus.binds,
            ["/var/lib/iafactory/monitoring/prometheus:/etc/prometheus:ro"]
        );
        let grafana = &state.containers[1];
        assert!(
            grafana
                .env
                .contains(&"GF_SERVER_HTTP_ADDR=127.0.0.1".to_owned())
        );
        assert!(
            grafana
                .env
                .contains(&"GF_SECURITY_ADMIN_PASSWORD=secret".to_owned())
        );
        assert_eq!(
            grafana.healthcheck.as_ref().unwrap().test.last().unwrap(),
            "http://127.0.0.1:3000/api/health"
        );
    }

    #[test]
    fn a_changed_configuration_changes_the_hash_of_its_reader_only() {
        let before = plan_default().state;
        let config = MonitoringConfig {
            scrape_interval_seconds: 30,
            ..MonitoringConfig::default()
        };
        let after = plan_with(&config).state;
        // prometheus.yml and the datasource (its timeInterval) both changed.
        assert_ne!(
            before.containers[0].spec_hash,
            after.containers[0].spec_hash
        );
        assert_ne!(
            before.containers[1].spec_hash,
            after.containers[1].spec_hash
        );
        let mut config = MonitoringConfig::default();
        config.grafana.image = "grafana/grafana-oss:11.4.0".into();
        let after = plan_with(&config).state;
        assert_eq!(
            before.containers[0].spec_hash,
            after.containers[0].spec_hash
        );
        assert_ne!(
            before.containers[1].spec_hash,
            after.containers[1].spec_hash
        );
        assert_eq!(plan_default().state, before, "the plan is deterministic");
    }

    #[test]
    fn bad_settings_are_refused_with_the_key_to_fix() {
        let dir = Path::new("/m");
        let config = MonitoringConfig {
            retention: "15 days".into(),
            ..MonitoringConfig::default()
        };
        let error = plan(&config, &settings(), dir, "").unwrap_err().to_string();
        assert!(error.contains("appliance.monitoring.retention"), "{error}");
        let mut config = MonitoringConfig::default();
        config.grafana.listen = config.prometheus.listen;
        let error = plan(&config, &settings(), dir, "").unwrap_err().to_string();
        assert!(error.contains("give each its own port"), "{error}");
        for good in ["15d", "12h", "1w2d", "90m", "500ms"] {
            assert!(valid_duration(good), "{good}");
        }
        for bad in ["", "d", "15", "15days", "-1d", "1.5d"] {
            assert!(!valid_duration(bad), "{bad}");
        }
    }

    #[test]
    fn the_grafana_password_is_generated_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitoring/grafana-admin-password");
        let first = grafana_password(&path).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(grafana_password(&path).unwrap(), first);
        std::fs::write(&path, "").unwrap();
        let error = grafana_password(&path).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
    }

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn grafana_provisioning_has_the_fields_grafana_requires() {
        let config = MonitoringConfig::default();
        let datasources = yaml(&grafana_datasources(&config));
        assert_eq!(datasources["apiVersion"], yaml("1"));
        let list = datasources["datasources"].as_sequence().unwrap();
        assert_eq!(list.len(), 1);
        let prometheus = &list[0];
        for key in ["name", "type", "access", "url", "uid"] {
            assert!(prometheus[key].is_string(), "datasource {key}");
        }
        assert_eq!(prometheus["uid"], yaml(DATASOURCE_UID));
        assert_eq!(prometheus["type"], yaml(DATASOURCE_TYPE));
        assert_eq!(prometheus["url"], yaml("http://127.0.0.1:9090"));
        assert_eq!(prometheus["isDefault"], yaml("true"));

        let providers = yaml(&grafana_dashboard_providers());
        assert_eq!(providers["apiVersion"], yaml("1"));
        let provider = &providers["providers"][0];
        assert_eq!(provider["type"], yaml("file"));
        assert!(provider["name"].is_string());
        assert_eq!(provider["options"]["path"], yaml(GRAFANA_DASHBOARDS_DIR));

        // The provider's path is where the container mounts the dashboards, and
        // provisioning is where Grafana reads it (GF_PATHS_PROVISIONING).
        let state = plan_default().state;
        let grafana = &state.containers[1];
        assert!(
            grafana
                .binds
                .iter()
                .any(|b| b.ends_with(&format!(":{GRAFANA_DASHBOARDS_DIR}:ro")))
        );
        assert!(
            grafana
                .env
                .contains(&format!("GF_PATHS_PROVISIONING={GRAFANA_PROVISIONING_DIR}"))
        );
        let files: Vec<String> = plan_default()
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert!(files.contains(&"grafana/provisioning/datasources/iafactory.yaml".to_owned()));
        assert!(files.contains(&"grafana/provisioning/dashboards/iafactory.yaml".to_owned()));
    }

    /// Every datasource a dashboard names resolves to the provisioned one: its uid, a
    /// `${var}` whose variable is a datasource picker of the provisioned type (which
    /// defaults to the default datasource, ours), or Grafana's built-in annotations.
    /// `${DS_...}` import placeholders are refused: file provisioning never fills them.
    fn unresolved_datasources(board: &serde_json::Value) -> Vec<String> {
        let variables: BTreeMap<String, &serde_json::Value> = board["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?.to_owned(), v)))
            .collect();
        let mut problems = Vec::new();
        fn walk(value: &serde_json::Value, found: &mut Vec<serde_json::Value>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(ds) = map.get("datasource") {
                        found.push(ds.clone());
                    }
                    map.values().for_each(|v| walk(v, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(board, &mut found);
        for ds in found {
            let (kind, uid) = match &ds {
                serde_json::Value::String(uid) => (None, uid.as_str()),
                serde_json::Value::Object(map) => (
                    map.get("type").and_then(|t| t.as_str()),
                    map.get("uid").and_then(|u| u.as_str()).unwrap_or_default(),
                ),
                serde_json::Value::Null => continue,
                other => {
                    problems.push(format!("datasource {other}"));
                    continue;
                }
            };
            if kind == Some("grafana") || kind == Some("datasource") {
                continue;
            }
            if uid == DATASOURCE_UID {
                continue;
            }
            let variable = uid
                .strip_prefix("${")
                .and_then(|v| v.strip_suffix('}'))
                .or_else(|| uid.strip_prefix('$'));
            let resolves = variable
                .and_then(|name| variables.get(name))
                .is_some_and(|v| {
                    v["type"] == "datasource"
                        && v["query"] == DATASOURCE_TYPE
                        && v["current"]
                            .get("value")
                            .and_then(|c| c.as_str())
                            .is_none_or(|c| c.is_empty() || c == DATASOURCE_UID)
                });
            if !resolves {
                problems.push(format!("datasource {ds}"));
            }
        }
        problems
    }

    #[test]
    fn every_dashboard_reads_the_provisioned_datasource() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/dashboards");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let board: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(board["uid"].is_string(), "{}: no uid", path.display());
            assert!(board["title"].is_string(), "{}: no title", path.display());
            let problems = unresolved_datasources(&board);
            assert!(problems.is_empty(), "{}: {problems:?}", path.display());
            checked += 1;
        }
        assert!(checked >= DASHBOARDS.len());
        // The embedded dashboards are those files, unchanged.
        for (name, text) in DASHBOARDS {
            assert_eq!(
                std::fs::read_to_string(dir.join(name)).unwrap(),
                *text,
                "{name}"
            );
        }
    }

    #[test]
    fn a_dashboard_naming_another_datasource_is_caught() {
        let board = json!({
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
                {"name": "loki", "type": "datasource", "query": "loki"},
            ]},
            "panels": [
                {"datasource": {"type": "prometheus", "uid": "${datasource}"}},
                {"datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}},
                {"datasource": {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}},
                {"datasource": {"type": "loki", "uid": "$loki"}},
                {"datasource": {"type": "prometheus", "uid": DATASOURCE_UID}},
            ],
        });
        let problems = unresolved_datasources(&board);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("DS_PROMETHEUS"));
        assert!(problems[1].contains("P1809F7CD0C75ACF3"));
        assert!(problems[2].contains("$loki"));
    }
}

//! The one wrapper around bollard: every Docker call the appliance makes goes through
//! here, each with its own error variant naming the tenant and component, and every
//! call that changes something is counted (a converged box makes none).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ExecConfig, HealthConfig,
    HostConfig, NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ListContainersOptions,
    ListNetworksOptions, ListVolumesOptions, LogsOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures::{Stream, StreamExt};

use super::desired::{ContainerSpec, NetworkSpec, VolumeSpec};

/// Which tenant and component a Docker call was for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub tenant: String,
    pub component: Option<String>,
}

impl Target {
    pub fn tenant(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            component: None,
        }
    }

    pub fn component(tenant: &str, component: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            component: Some(component.to_owned()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.component {
            Some(component) => write!(f, "tenant {:?}, component {component}", self.tenant),
            None => write!(f, "tenant {:?}", self.tenant),
        }
    }
}

const DOCKER_HINT: &str =
    "is dockerd running and is this user allowed on its socket? (`docker info`)";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine: {0}; {DOCKER_HINT}")]
    Connect(#[source] Box<BollardError>),
    #[error("cannot list containers: {0}; {DOCKER_HINT}")]
    ListContainers(#[source] Box<BollardError>),
    #[error("cannot list networks: {0}; {DOCKER_HINT}")]
    ListNetworks(#[source] Box<BollardError>),
    #[error("cannot list volumes: {0}; {DOCKER_HINT}")]
    ListVolumes(#[source] Box<BollardError>),
    #[error("cannot inspect container {name} ({target}): {source}")]
    InspectContainer {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error(
        "image {image} for {target} is not on this box, and the appliance never pulls: import a bundle (`iafactory images import BUNDLE.tar`) or build it (`iafactory images build`)"
    )]
    ImageMissing { target: Target, image: String },
    #[error("cannot inspect image {image} for {target}: {source}")]
    InspectImage {
        target: Target,
        image: String,
        source: Box<BollardError>,
    },
    #[error("cannot create network {name} ({target}): {source}")]
    CreateNetwork {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error(
        "cannot remove network {name} ({target}): {source}; a container outside the appliance may still use it (`docker network inspect {name}`)"
    )]
    RemoveNetwork {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot inspect network {name} ({target}): {source}")]
    InspectNetwork {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error(
        "network {name} ({target}) has no IPv4 subnet and gateway; the egress proxy needs them (`docker network inspect {name}`)"
    )]
    NoNetworkGateway { target: Target, name: String },
    #[error("cannot rename container {name} to {to} ({target}): {source}")]
    RenameContainer {
        target: Target,
        name: String,
        to: String,
        source: Box<BollardError>,
    },
    #[error("cannot inspect volume {name} ({target}): {source}")]
    InspectVolume {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot create volume {name} ({target}): {source}")]
    CreateVolume {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot remove volume {name} ({target}): {source}")]
    RemoveVolume {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot create container {name} ({target}): {source}")]
    CreateContainer {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot start container {name} ({target}): {source}; see `iafactory logs {} {}`", .target.tenant, .target.component.as_deref().unwrap_or_default())]
    StartContainer {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot stop container {name} ({target}): {source}")]
    StopContainer {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot remove container {name} ({target}): {source}")]
    RemoveContainer {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot copy {path} out of {name} ({target}): {source}")]
    DownloadArchive {
        target: Target,
        name: String,
        path: String,
        source: Box<BollardError>,
    },
    #[error("cannot copy an archive into {path} of {name} ({target}): {source}")]
    UploadArchive {
        target: Target,
        name: String,
        path: String,
        source: Box<BollardError>,
    },
    #[error("cannot read the logs of {name} ({target}): {source}")]
    Logs {
        target: Target,
        name: String,
        source: Box<BollardError>,
    },
    #[error("cannot run {command:?} in {name} ({target}): {source}")]
    Exec {
        target: Target,
        name: String,
        command: Vec<String>,
        source: Box<BollardError>,
    },
    #[error("cannot store what {command:?} printed in {name} ({target}): {source}")]
    ExecOutputWrite {
        target: Target,
        name: String,
        command: Vec<String>,
        source: std::io::Error,
    },
}

/// A bridge network's IPv4 gateway and subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkAddresses {
    pub gateway: std::net::IpAddr,
    pub subnet: ipnet::IpNet,
}

/// A container's state and its address on one network.
#[derive(Clone, Debug, PartialEq)]
pub struct Attachment {
    pub running: bool,
    pub healthy: bool,
    pub ip: Option<String>,
}

/// A container as listed, with what the appliance reads from its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub component: String,
    pub spec_hash: String,
    /// The ID of the image it was created from (whatever its tag points to now).
    pub image_id: String,
    pub running: bool,
    pub health: Health,
    pub labels: BTreeMap<String, String>,
    /// Its IPv4 address on each network it is attached to, by network name.
    pub addresses: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Running with no healthcheck: running is healthy.
    Running,
    Starting,
    Healthy,
    Unhealthy,
    Stopped,
}

impl Health {
    pub fn is_healthy(self) -> bool {
        matches!(self, Health::Healthy | Health::Running)
    }
}

/// The Docker Engine, through bollard, with a count of the calls that changed it.
pub struct Engine {
    docker: Docker,
    mutations: AtomicU64,
}

fn not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn filters(labels: &BTreeMap<String, String>) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
    )])
}

impl Engine {
    /// Connects to the local engine, agreeing on an API version it speaks (20.10 is
    /// API 1.41, older than bollard's default).
    pub async fn connect() -> Result<Self, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Connect(Box::new(e)))?
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Connect(Box::new(e)))?;
        Ok(Self {
            docker,
            mutations: AtomicU64::new(0),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// How many calls that change the engine this wrapper has made.
    pub fn mutations(&self) -> u64 {
        self.mutations.load(Ordering::SeqCst)
    }

    fn mutated(&self) {
        self.mutations.fetch_add(1, Ordering::SeqCst);
    }

    /// Every container (running or not) carrying all of `labels`.
    pub async fn containers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Observed>, DockerError> {
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters(labels)),
                ..Default::default()
            }))
            .await
            .map_err(|e| DockerError::ListContainers(Box::new(e)))?;
        Ok(listed
            .into_iter()
            .map(|c| {
                let labels: BTreeMap<String, String> =
                    c.labels.unwrap_or_default().into_iter().collect();
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let running = c.state.map(|s| s.to_string()) == Some("running".into());
                let status = c.status.unwrap_or_default();
                let health = if !running {
                    Health::Stopped
                } else if status.contains("(healthy)") {
                    Health::Healthy
                } else if status.contains("(unhealthy)") {
                    Health::Unhealthy
                } else if status.contains("(health: starting)") {
                    Health::Starting
                } else {
                    Health::Running
                };
                Observed {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    tenant: label(iafactory_crds::plan::LABEL_TENANT),
                    component: label(iafactory_crds::plan::LABEL_COMPONENT),
                    spec_hash: label(iafactory_crds::plan::LABEL_SPEC_HASH),
                    image_id: c.image_id.unwrap_or_default(),
                    running,
                    health,
                    labels,
                    addresses: c
                        .network_settings
                        .and_then(|n| n.networks)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(network, endpoint)| {
                            endpoint
                                .ip_address
                                .filter(|ip| !ip.is_empty())
                                .map(|ip| (network, ip))
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Names of the networks carrying all of `labels`.
    pub async fn networks(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, BTreeMap<String, String>)>, DockerError> {
        let listed = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters(labels)),
            }))
            .await
            .map_err(|e| DockerError::ListNetworks(Box::new(e)))?;
        Ok(listed
            .into_iter()
            .map(|n| {
                (
                    n.name.unwrap_or_default(),
                    n.labels.unwrap_or_default().into_iter().collect(),
                )
            })
            .collect())
    }

    /// Names of the volumes carrying all of `labels`.
    pub async fn volumes(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, BTreeMap<String, String>)>, DockerError> {
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters(labels)),
            }))
            .await
            .map_err(|e| DockerError::ListVolumes(Box::new(e)))?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.labels.into_iter().collect()))
            .collect())
    }

    /// Where a local volume's data lives on the host.
    pub async fn volume_mountpoint(
        &self,
        target: &Target,
        name: &str,
    ) -> Result<String, DockerError> {
        self.docker
            .inspect_volume(name)
            .await
            .map(|v| v.mountpoint)
            .map_err(|source| DockerError::InspectVolume {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    pub async fn inspect(
        &self,
        target: &Target,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.docker.inspect_container(name, None).await {
            Ok(inspected) => Ok(Some(inspected)),
            Err(e) if not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectContainer {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Fails with "import a bundle" when the image is not on the box.
    /// Whether the container runs, whether it is healthy, and its address on `network`
    /// (the host reaches bridge networks directly, internal or not): how the gateway,
    /// Prometheus' targets and the registrations find a tenant's API. None: no such
    /// container.
    pub async fn attachment(
        &self,
        target: &Target,
        name: &str,
        network: &str,
    ) -> Result<Option<Attachment>, DockerError> {
        let Some(inspected) = self.inspect(target, name).await? else {
            return Ok(None);
        };
        let state = inspected.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let health = state
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|s| s.to_string());
        let ip = inspected
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|networks| networks.get(network).cloned())
            .and_then(|endpoint| endpoint.ip_address)
            .filter(|ip| !ip.is_empty());
        Ok(Some(Attachment {
            running,
            // No healthcheck counts as healthy once running, as `wait_healthy` has it.
            healthy: running && matches!(health.as_deref(), None | Some("healthy" | "" | "none")),
            ip,
        }))
    }

    /// The ID of the local image `image` names, or None when it is not on the box.
    pub async fn image_id(
        &self,
        target: &Target,
        image: &str,
    ) -> Result<Option<String>, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(inspected) => Ok(inspected.id),
            Err(e) if not_found(&e) => Ok(None),
            Err(source) => Err(DockerError::InspectImage {
                target: target.clone(),
                image: image.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    pub async fn require_image(&self, target: &Target, image: &str) -> Result<(), DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Err(DockerError::ImageMissing {
                target: target.clone(),
                image: image.to_owned(),
            }),
            Err(source) => Err(DockerError::InspectImage {
                target: target.clone(),
                image: image.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// The IPv4 gateway (the host's side of the bridge) and subnet of network `name`;
    /// None when there is no such network. The egress proxy listens on the gateway,
    /// and admits only the subnet.
    pub async fn network_addresses(
        &self,
        target: &Target,
        name: &str,
    ) -> Result<Option<NetworkAddresses>, DockerError> {
        let inspected = match self.docker.inspect_network(name, None).await {
            Ok(inspected) => inspected,
            Err(e) if not_found(&e) => return Ok(None),
            Err(source) => {
                return Err(DockerError::InspectNetwork {
                    target: target.clone(),
                    name: name.to_owned(),
                    source: Box::new(source),
                });
            }
        };
        inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|config| {
                let subnet: ipnet::Ipv4Net = config.subnet?.parse().ok()?;
                let gateway: std::net::Ipv4Addr =
                    config.gateway?.split('/').next()?.parse().ok()?;
                Some(NetworkAddresses {
                    gateway: gateway.into(),
                    subnet: subnet.into(),
                })
            })
            .map(Some)
            .ok_or_else(|| DockerError::NoNetworkGateway {
                target: target.clone(),
                name: name.to_owned(),
            })
    }

    pub async fn create_network(
        &self,
        target: &Target,
        spec: &NetworkSpec,
    ) -> Result<(), DockerError> {
        self.mutated();
        self.docker
            .create_network(NetworkCreateRequest {
                name: spec.name.clone(),
                driver: Some("bridge".into()),
                internal: Some(spec.internal),
                labels: Some(spec.labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| DockerError::CreateNetwork {
                target: target.clone(),
                name: spec.name.clone(),
                source: Box::new(source),
            })
    }

    pub async fn remove_network(&self, target: &Target, name: &str) -> Result<(), DockerError> {
        self.mutated();
        match self.docker.remove_network(name).await {
            Err(e) if !not_found(&e) => Err(DockerError::RemoveNetwork {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }

    pub async fn create_volume(
        &self,
        target: &Target,
        spec: &VolumeSpec,
    ) -> Result<(), DockerError> {
        self.mutated();
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(spec.name.clone()),
                labels: Some(spec.labels.clone().into_iter().collect()),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| DockerError::CreateVolume {
                target: target.clone(),
                name: spec.name.clone(),
                source: Box::new(source),
            })
    }

    pub async fn remove_volume(&self, target: &Target, name: &str) -> Result<(), DockerError> {
        self.mutated();
        match self
            .docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Err(e) if !not_found(&e) => Err(DockerError::RemoveVolume {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }

    pub async fn create_container(
        &self,
        target: &Target,
        spec: &ContainerSpec,
    ) -> Result<(), DockerError> {
        let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(h.interval_ns),
            timeout: Some(h.timeout_ns),
            retries: Some(h.retries),
            start_period: Some(h.start_period_ns),
            start_interval: None,
        });
        // Names that resolve to the network's gateway (the egress proxy): known only
        // now that the network exists, so not part of the spec's hash.
        let extra_hosts = if spec.gateway_hosts.is_empty() {
            None
        } else {
            let gateway = self
                .network_addresses(target, &spec.network)
                .await?
                .ok_or_else(|| DockerError::NoNetworkGateway {
                    target: target.clone(),
                    name: spec.network.clone(),
                })?
                .gateway;
            Some(
                spec.gateway_hosts
                    .iter()
                    .map(|host| format!("{host}:{gateway}"))
                    .collect(),
            )
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            user: Some(spec.user.clone()),
            healthcheck,
            host_config: Some(HostConfig {
                binds: Some(
                    spec.mounts
                        .iter()
                        .map(|(volume, path)| format!("{volume}:{path}"))
                        .chain(spec.binds.iter().cloned())
                        .collect(),
                ),
                tmpfs: Some(spec.tmpfs.clone().into_iter().collect()),
                // A one-shot step (an init container) runs once: restarting it would
                // repeat a failure forever.
                restart_policy: Some(RestartPolicy {
                    name: Some(if spec.one_shot {
                        RestartPolicyNameEnum::NO
                    } else {
                        RestartPolicyNameEnum::UNLESS_STOPPED
                    }),
                    maximum_retry_count: None,
                }),
                nano_cpus: Some(spec.nano_cpus),
                memory: Some(spec.memory_bytes),
                readonly_rootfs: Some(spec.read_only),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                network_mode: Some(spec.network.clone()),
                extra_hosts,
                // A small init as PID 1 forwards SIGTERM and reaps zombies, so every
                // component stops promptly, whatever its own process does with signals.
                init: Some(true),
                ..Default::default()
            }),
            // Aliases exist only on user-defined networks (not on the host's).
            networking_config: (!spec.aliases.is_empty()).then(|| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    spec.network.clone(),
                    EndpointSettings {
                        aliases: Some(spec.aliases.clone()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        self.mutated();
        self.docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(spec.name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map(drop)
            .map_err(|source| DockerError::CreateContainer {
                target: target.clone(),
                name: spec.name.clone(),
                source: Box::new(source),
            })
    }

    pub async fn start_container(&self, target: &Target, name: &str) -> Result<(), DockerError> {
        self.mutated();
        self.docker
            .start_container(name, None)
            .await
            .map_err(|source| DockerError::StartContainer {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(source),
            })
    }

    /// Stops gracefully (databases flush), giving up after `grace_seconds`.
    pub async fn stop_container(
        &self,
        target: &Target,
        name: &str,
        grace_seconds: i32,
    ) -> Result<(), DockerError> {
        self.mutated();
        match self
            .docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    t: Some(grace_seconds),
                    signal: None,
                }),
            )
            .await
        {
            Err(e) if !not_found(&e) => Err(DockerError::StopContainer {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }

    /// Renames a container; it keeps running, with its address and connections.
    pub async fn rename_container(
        &self,
        target: &Target,
        name: &str,
        to: &str,
    ) -> Result<(), DockerError> {
        self.mutated();
        self.docker
            .rename_container(
                name,
                bollard::query_parameters::RenameContainerOptions {
                    name: to.to_owned(),
                },
            )
            .await
            .map_err(|e| DockerError::RenameContainer {
                target: target.clone(),
                name: name.to_owned(),
                to: to.to_owned(),
                source: Box::new(e),
            })
    }

    pub async fn remove_container(&self, target: &Target, name: &str) -> Result<(), DockerError> {
        self.mutated();
        match self
            .docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Err(e) if !not_found(&e) => Err(DockerError::RemoveContainer {
                target: target.clone(),
                name: name.to_owned(),
                source: Box::new(e),
            }),
            _ => Ok(()),
        }
    }

    /// A tar stream of `path` in the container (running or not, volumes included).
    /// `DIR/.` gives the directory's contents, entries relative to it.
    pub fn download_archive(
        &self,
        target: &Target,
        name: &str,
        path: &str,
    ) -> impl Stream<Item = Result<bytes::Bytes, DockerError>> + '_ {
        let (target, owned, owned_path) = (target.clone(), name.to_owned(), path.to_owned());
        self.docker
            .download_from_container(
                name,
                Some(DownloadFromContainerOptions {
                    path: path.to_owned(),
                }),
            )
            .map(move |chunk| {
                chunk.map_err(|source| DockerError::DownloadArchive {
                    target: target.clone(),
                    name: owned.clone(),
                    path: owned_path.clone(),
                    source: Box::new(source),
                })
            })
    }

    /// Extracts the tar stream `archive` into `path` of the container, which need not
    /// be running (a path inside a volume is allowed with a read-only root); owners
    /// and modes come from the archive.
    pub async fn upload_archive(
        &self,
        target: &Target,
        name: &str,
        path: &str,
        archive: impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<(), DockerError> {
        self.mutated();
        self.docker
            .upload_to_container(
                name,
                Some(UploadToContainerOptions {
                    path: path.to_owned(),
                    ..Default::default()
                }),
                bollard::body_try_stream(archive),
            )
            .await
            .map_err(|source| DockerError::UploadArchive {
                target: target.clone(),
                name: name.to_owned(),
                path: path.to_owned(),
                source: Box::new(source),
            })
    }

    /// The container's output, as lines; `follow` keeps the stream open.
    pub fn logs(
        &self,
        target: &Target,
        name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<String, DockerError>> + '_ {
        let target = target.clone();
        let owned = name.to_owned();
        self.docker
            .logs(
                name,
                Some(LogsOptions {
                    follow,
                    stdout: true,
                    stderr: true,
                    tail: tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
                    ..Default::default()
                }),
            )
            .map(move |chunk| {
                chunk
                    .map(|c| c.to_string())
                    .map_err(|source| DockerError::Logs {
                        target: target.clone(),
                        name: owned.clone(),
                        source: Box::new(source),
                    })
            })
    }

    /// Runs `command` in a running container, feeding it `input` on stdin; its output
    /// is held in memory, so for commands that print little.
    pub async fn exec(
        &self,
        target: &Target,
        name: &str,
        command: &[String],
        input: Option<&[u8]>,
    ) -> Result<ExecOutput, DockerError> {
        let mut stdout = Vec::new();
        let finished = self
            .exec_streaming(target, name, command, input, &mut stdout)
            .await?;
        Ok(ExecOutput {
            code: finished.code,
            stdout,
            stderr: finished.stderr,
        })
    }

    /// Runs `command` in a running container, streaming `input` to its stdin and its
    /// stdout into `output` as it comes: a database dump of any size passes through in
    /// chunks, never whole in memory. Stderr is kept, its last [`STDERR_KEPT`] bytes.
    pub async fn exec_streaming<R, W>(
        &self,
        target: &Target,
        name: &str,
        command: &[String],
        input: Option<R>,
        output: &mut W,
    ) -> Result<ExecFinished, DockerError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let error = |source| DockerError::Exec {
            target: target.clone(),
            name: name.to_owned(),
            command: command.to_vec(),
            source: Box::new(source),
        };
        let created = self
            .docker
            .create_exec(
                name,
                ExecConfig {
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(command.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(error)?;
        let mut stderr = Vec::new();
        let mut fed = Some(Ok(()));
        if let bollard::exec::StartExecResults::Attached {
            output: mut stream,
            input: mut stdin,
        } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(error)?
        {
            let feed = async {
                if let Some(mut input) = input {
                    let copied = async {
                        tokio::io::copy(&mut input, &mut stdin).await?;
                        stdin.shutdown().await
                    };
                    copied
                        .await
                        .map_err(|err| error(BollardError::IOError { err }))?;
                }
                Ok::<(), DockerError>(())
            };
            let write_error = |source| DockerError::ExecOutputWrite {
                target: target.clone(),
                name: name.to_owned(),
                command: command.to_vec(),
                source,
            };
            let drain = async {
                while let Some(chunk) = stream.next().await {
                    match chunk.map_err(error)? {
                        bollard::container::LogOutput::StdErr { message } => {
                            stderr.extend_from_slice(&message);
                            let excess = stderr.len().saturating_sub(STDERR_KEPT);
                            stderr.drain(..excess);
                        }
                        other => output
                            .write_all(&other.into_bytes())
                            .await
                            .map_err(write_error)?,
                    }
                }
                output.flush().await.map_err(write_error)
            };
            // The output decides: once it ends (the command exited) or fails (a full
            // disk), feeding stops. A command that fails mid-input breaks the pipe;
            // its exit code and stderr, not the broken pipe, say why.
            let mut feed = std::pin::pin!(feed);
            let mut drain = std::pin::pin!(drain);
            fed = None;
            let drained = loop {
                tokio::select! {
                    result = &mut feed, if fed.is_none() => fed = Some(result),
                    result = &mut drain => break result,
                }
            };
            drained?;
            if fed.is_none() {
                fed = futures::FutureExt::now_or_never(&mut feed);
            }
        }
        let inspected = self.docker.inspect_exec(&created.id).await.map_err(error)?;
        let code = inspected.exit_code.unwrap_or(-1);
        if code == 0 {
            match fed {
                Some(result) => result?,
                None => {
                    return Err(error(BollardError::IOError {
                        err: std::io::Error::other("it exited before reading all of its input"),
                    }));
                }
            }
        }
        Ok(ExecFinished { code, stderr })
    }
}

/// How much of a command's stderr is kept for its error message: the end, where the
/// error is.
pub const STDERR_KEPT: usize = 64 * 1024;

/// How a command run with [`Engine::exec_streaming`] ended.
#[derive(Clone, Debug, Default)]
pub struct ExecFinished {
    pub code: i64,
    pub stderr: Vec<u8>,
}

/// What a command run in a container returned.
#[derive(Clone, Debug, Default)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

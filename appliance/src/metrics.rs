//! What `serve` exports on /metrics: every container's running and health state, and
//! the space left where each data volume lives. Read from the engine at scrape time,
//! so a scrape always shows the box as it is.

use iafactory_crds::plan::{LABEL_COMPONENT, LABEL_TENANT};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::engine::desired::instance_labels;
use crate::engine::docker::{DockerError, Target};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub tenant: String,
    pub component: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub tenant: String,
    pub volume: String,
}

/// One scrape's worth of gauges, in their own registry.
pub struct Snapshot {
    registry: Registry,
    running: Family<ContainerLabels, Gauge>,
    healthy: Family<ContainerLabels, Gauge>,
    available: Family<VolumeLabels, Gauge>,
    capacity: Family<VolumeLabels, Gauge>,
}

impl Default for Snapshot {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("iafactory_appliance");
        let running = Family::<ContainerLabels, Gauge>::default();
        let healthy = Family::<ContainerLabels, Gauge>::default();
        let available = Family::<VolumeLabels, Gauge>::default();
        let capacity = Family::<VolumeLabels, Gauge>::default();
        registry.register(
            "container_running",
            "1 when the container runs",
            running.clone(),
        );
        registry.register(
            "container_healthy",
            "1 when the container passes its healthcheck (or runs, without one)",
            healthy.clone(),
        );
        registry.register(
            "volume_available_bytes",
            "Bytes available to unprivileged users on the filesystem of a data volume",
            available.clone(),
        );
        registry.register(
            "volume_capacity_bytes",
            "Size of the filesystem of a data volume",
            capacity.clone(),
        );
        Self {
            registry,
            running,
            healthy,
            available,
            capacity,
        }
    }
}

impl Snapshot {
    /// Reads every container and volume of this appliance.
    pub async fn take(app: &App) -> Result<Self, DockerError> {
        let snapshot = Self::default();
        let labels = instance_labels(&app.render_settings());
        for container in app.engine.containers(&labels).await? {
            let key = ContainerLabels {
                tenant: container.tenant.clone(),
                component: container.component.clone(),
                container: container.name.clone(),
            };
            snapshot
                .running
                .get_or_create(&key)
                .set(i64::from(container.running));
            snapshot.healthy.get_or_create(&key).set(i64::from(
                container.running && container.health.is_healthy(),
            ));
        }
        for (volume, volume_labels) in app.engine.volumes(&labels).await? {
            let tenant = volume_labels.get(LABEL_TENANT).cloned().unwrap_or_default();
            let component = volume_labels
                .get(LABEL_COMPONENT)
                .cloned()
                .unwrap_or_default();
            let mountpoint = app
                .engine
                .volume_mountpoint(&Target::component(&tenant, &component), &volume)
                .await?;
            // Unreadable (not root, or another host's engine): leave the gauges out
            // rather than export a false zero.
            if let Ok(stats) = rustix::fs::statvfs(mountpoint.as_str()) {
                let key = VolumeLabels {
                    tenant,
                    volume: volume.clone(),
                };
                let block = stats.f_frsize.max(1);
                snapshot
                    .available
                    .get_or_create(&key)
                    .set((stats.f_bavail * block) as i64);
                snapshot
                    .capacity
                    .get_or_create(&key)
                    .set((stats.f_blocks * block) as i64);
            }
        }
        Ok(snapshot)
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

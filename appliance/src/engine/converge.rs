//! Converges the Docker Engine to the desired state, tenant by tenant: create what is
//! missing, replace what drifted (stateless: the new container healthy before the old
//! stops; stateful: stop, then replace on the same volume), remove what carries our
//! labels but is no longer wanted. Data volumes are only removed by `remove_tenant`
//! with `delete_volumes`, which `delete` passes under `retention: Delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use iafactory_crds::plan::LABEL_TENANT;

use super::desired::{
    ContainerSpec, HOST_NETWORK, InitSpec, LABEL_STACK, RenderSettings, TenantState,
    instance_labels,
};
use super::docker::{DockerError, Engine, Health, Observed, Target};
use crate::gateway::ROUTE_REFRESH;
use iafactory_crds::plan::ComponentKind;

/// Grace given to a stopping container (PostgreSQL flushes on SIGTERM).
const STOP_GRACE_SECONDS: i32 = 30;
/// How long a draining API replica stays up before it is stopped: two refreshes of the
/// gateway's routes, so no new request is sent to it once it stops.
const DRAIN_WAIT: Duration = Duration::from_millis(2 * ROUTE_REFRESH.as_millis() as u64);
/// Marks an API container out of the gateway's routes, on its way out.
const DRAINING: &str = "-draining";
/// Marks a replaced container that still serves until its successor is healthy.
const SUPERSEDED: &str = "-superseded";

/// Whether the gateway must send no new request to this container.
pub fn is_draining(name: &str) -> bool {
    name.ends_with(DRAINING)
}

fn draining_name(name: &str) -> String {
    format!("{name}{DRAINING}")
}

/// Unique per container, so that a run cut short cannot leave a name in the way.
fn superseded_name(name: &str, id: &str) -> String {
    format!("{name}{SUPERSEDED}-{}", &id[..id.len().min(12)])
}
const HEALTH_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("component {component} of tenant {tenant:?} ({container}) is not healthy: {reason}{}; see `iafactory logs {tenant} {component}`, fix the cause, then run `iafactory up` again", render_logs(.logs))]
    Unhealthy {
        tenant: String,
        component: String,
        container: String,
        reason: String,
        logs: Vec<String>,
    },
    /// Boxed: the error stays small on every path that returns it.
    #[error(transparent)]
    InitFailed(Box<InitFailure>),
    #[error(
        "component {component} of tenant {tenant:?} waits for {dependency}, which is not in the plan; this is a bug in the plan, report it"
    )]
    MissingDependency {
        tenant: String,
        component: String,
        dependency: String,
    },
    #[error("{} tenant(s) did not converge:\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Tenants(Vec<ConvergeError>),
}

/// A component's init step (the API's `migrate`) that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("the {step} step of component {component} of tenant {tenant:?} ({container}) {reason}{}; the tenant's {component} was left as it was: fix the cause, then run `iafactory up` again", render_logs(.logs))]
pub struct InitFailure {
    pub tenant: String,
    pub component: String,
    pub step: String,
    pub container: String,
    pub reason: String,
    pub logs: Vec<String>,
}

fn render_logs(logs: &[String]) -> String {
    if logs.is_empty() {
        String::new()
    } else {
        format!("; its last output:\n    {}", logs.join("\n    "))
    }
}

/// What a converge changed, line by line.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    pub actions: Vec<String>,
}

pub struct Converger<'a> {
    pub engine: &'a Engine,
    pub settings: RenderSettings,
    pub health_timeout: Duration,
    /// Told every action as it happens (a progress bar, a log line).
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// What each image reference names on the box now, asked once per run.
    pub image_ids: tokio::sync::Mutex<BTreeMap<String, Option<String>>>,
}

impl Converger<'_> {
    fn did(&self, report: &mut Report, line: String) {
        (self.progress)(&line);
        report.actions.push(line);
    }

    /// Every object this appliance owns.
    async fn observe(&self) -> Result<Vec<Observed>, DockerError> {
        self.engine
            .containers(&instance_labels(&self.settings))
            .await
    }

    /// Converges every tenant in `desired` and removes the containers and networks of
    /// any other tenant this appliance owns (their volumes stay). A failing tenant
    /// does not stop the others; all failures are returned together, after `report`
    /// has recorded everything that was changed.
    /// Converges every tenant of `desired`, and removes what belongs to no tenant of it
    /// except `held`: stored tenants whose desired state could not be worked out (a
    /// secret not set yet), whose containers are left as they are.
    pub async fn converge_all(
        &self,
        desired: &[TenantState],
        held: &BTreeSet<String>,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        // The shared stack's containers are no tenant's: `converge_stack` keeps them.
        let observed: Vec<Observed> = self
            .observe()
            .await?
            .into_iter()
            .filter(|o| !o.labels.contains_key(LABEL_STACK))
            .collect();
        let labels = instance_labels(&self.settings);
        let networks = self.engine.networks(&labels).await?;
        let volumes = self.volume_names(&labels).await?;
        let network_names: BTreeSet<String> = networks.iter().map(|(n, _)| n.clone()).collect();
        let mut failures = Vec::new();
        for state in desired {
            let mine: Vec<Observed> = observed
                .iter()
                .filter(|o| o.tenant == state.tenant)
                .cloned()
                .collect();
            if let Err(e) = self
                .converge_tenant(state, &mine, &network_names, &volumes, report)
                .await
            {
                failures.push(e);
            }
        }
        let wanted: BTreeSet<&str> = desired
            .iter()
            .map(|s| s.tenant.as_str())
            .chain(held.iter().map(String::as_str))
            .collect();
        let mut orphan_tenants = BTreeSet::new();
        for orphan in observed
            .iter()
            .filter(|o| !wanted.contains(o.tenant.as_str()))
        {
            let target = Target::component(&orphan.tenant, &orphan.component);
            self.engine.remove_container(&target, &orphan.name).await?;
            self.did(
                report,
                format!("{target}: removed {} (no longer wanted)", orphan.name),
            );
            orphan_tenants.insert(orphan.tenant.clone());
        }
        for (network, network_labels) in &networks {
            let tenant = network_labels
                .get(LABEL_TENANT)
                .cloned()
                .unwrap_or_default();
            if !wanted.contains(tenant.as_str()) {
                let target = Target::tenant(&tenant);
                self.engine.remove_network(&target, network).await?;
                self.did(report, format!("{target}: removed network {network}"));
            }
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(ConvergeError::Tenants(failures)),
        }
    }

    /// Converges one tenant, `observed` being its containers.
    pub async fn converge_tenant(
        &self,
        state: &TenantState,
        observed: &[Observed],
        networks: &BTreeSet<String>,
        volumes: &BTreeSet<String>,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let tenant = &state.tenant;
        let by_name: BTreeMap<&str, &Observed> =
            observed.iter().map(|o| (o.name.as_str(), o)).collect();

        // Every image a new container needs must be here before anything changes: a
        // missing one leaves the running tenant as it was.
        let mut checked = BTreeSet::new();
        for spec in &state.containers {
            let current = by_name.get(spec.name.as_str());
            if current.is_none_or(|o| o.spec_hash != spec.spec_hash)
                && checked.insert(spec.image.clone())
            {
                self.engine
                    .require_image(&Target::component(tenant, &spec.component), &spec.image)
                    .await?;
            }
        }

        let target = Target::tenant(tenant);
        if !networks.contains(&state.network.name) {
            self.engine.create_network(&target, &state.network).await?;
            self.did(
                report,
                format!("{target}: created network {}", state.network.name),
            );
        }
        for volume in &state.volumes {
            if !volumes.contains(&volume.name) {
                let target = Target::component(tenant, &volume.component);
                self.engine.create_volume(&target, volume).await?;
                self.did(report, format!("{target}: created volume {}", volume.name));
            }
        }

        // Containers this run created, replaced or started, or saw unhealthy: the
        // listing's health says nothing about them any more.
        let mut touched_in_run: BTreeSet<String> = BTreeSet::new();
        let mut components: Vec<&str> = Vec::new();
        for spec in &state.containers {
            if !components.contains(&spec.component.as_str()) {
                components.push(&spec.component);
            }
        }
        for component in &components {
            let specs: Vec<&ContainerSpec> = state
                .containers
                .iter()
                .filter(|c| &c.component == component)
                .collect();
            let target = Target::component(tenant, component);
            for dependency in &specs[0].depends_on {
                let dependencies: Vec<&ContainerSpec> = state
                    .containers
                    .iter()
                    .filter(|c| &c.component == dependency)
                    .collect();
                if dependencies.is_empty() {
                    return Err(ConvergeError::MissingDependency {
                        tenant: tenant.clone(),
                        component: component.to_string(),
                        dependency: dependency.clone(),
                    });
                }
                for spec in dependencies {
                    // A no-op reconcile must not pay one inspect per dependency: the
                    // listing already said this one is healthy and nothing changed it.
                    let listed_healthy = by_name.get(spec.name.as_str()).is_some_and(|o| {
                        o.spec_hash == spec.spec_hash && o.running && o.health.is_healthy()
                    });
                    if listed_healthy && !touched_in_run.contains(&spec.name) {
                        continue;
                    }
                    self.wait_healthy(&Target::component(tenant, dependency), &spec.name)
                        .await?;
                }
            }
            let mut touched = Vec::new();
            let mut superseded = Vec::new();
            // The component's init step runs once, before the first container this
            // run creates or replaces, and never on a run that changes nothing.
            let mut init_ran = false;
            for spec in &specs {
                let moved = match by_name.get(spec.name.as_str()) {
                    Some(current) if current.spec_hash == spec.spec_hash => {
                        self.image_moved(&target, current, &spec.image).await?
                    }
                    _ => false,
                };
                match by_name.get(spec.name.as_str()) {
                    None => {
                        self.create_and_start(&target, spec, report, "created", &mut init_ran)
                            .await?;
                        touched.push(spec.name.as_str());
                    }
                    Some(current) if moved && !spec.stateful => {
                        // A stateless container keeps its name when only its image's
                        // content moved under the same tag (a bundle or a build
                        // replaced it). The old one steps aside under another name and
                        // keeps serving until its successor is healthy.
                        let aside = superseded_name(&current.name, &current.id);
                        self.engine
                            .rename_container(&target, &current.name, &aside)
                            .await?;
                        superseded.push(aside);
                        self.create_and_start(&target, spec, report, "replaced", &mut init_ran)
                            .await?;
                        touched.push(spec.name.as_str());
                    }
                    Some(current) if current.spec_hash != spec.spec_hash || moved => {
                        // Only a stateful container keeps its name across specs: it
                        // stops before its successor starts on the same volume.
                        self.engine
                            .stop_container(&target, &current.name, STOP_GRACE_SECONDS)
                            .await?;
                        self.engine.remove_container(&target, &current.name).await?;
                        self.create_and_start(&target, spec, report, "replaced", &mut init_ran)
                            .await?;
                        touched.push(spec.name.as_str());
                    }
                    Some(current) if !current.running => {
                        self.engine.start_container(&target, &current.name).await?;
                        self.did(report, format!("{target}: started {}", current.name));
                        touched.push(spec.name.as_str());
                    }
                    // Running but not healthy yet (or any more): wait, and report it.
                    Some(current) if !current.health.is_healthy() => {
                        touched.push(spec.name.as_str());
                    }
                    Some(_) => {}
                }
            }
            for name in &touched {
                self.wait_healthy(&target, name).await?;
                touched_in_run.insert((*name).to_owned());
            }
            // The component's new containers are healthy: its old ones may go.
            let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            let replaced: Vec<String> = observed
                .iter()
                .filter(|o| &o.component == component && !wanted.contains(o.name.as_str()))
                .map(|o| o.name.clone())
                .chain(superseded)
                .collect();
            self.retire(&target, &replaced, " (replaced)", report)
                .await?;
        }
        // Components the plan no longer has (Ollama switched off, a suspended tenant).
        let mut orphans: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for orphan in observed
            .iter()
            .filter(|o| !components.contains(&o.component.as_str()))
        {
            orphans
                .entry(&orphan.component)
                .or_default()
                .push(orphan.name.clone());
        }
        for (component, names) in orphans {
            let target = Target::component(tenant, component);
            self.retire(&target, &names, " (not in the plan)", report)
                .await?;
        }
        Ok(())
    }

    /// The names of the volumes carrying all of `labels`.
    async fn volume_names(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<BTreeSet<String>, ConvergeError> {
        Ok(self
            .engine
            .volumes(labels)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Stops containers (with the grace period), removes them, and reports it. API
    /// replicas are drained first: renamed out of the gateway's routes, given time for
    /// the gateway to see that, then stopped, which lets the requests they hold finish.
    async fn retire(
        &self,
        target: &Target,
        names: &[String],
        why: &str,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let mut names = names.to_vec();
        if target.component.as_deref() == Some(ComponentKind::Api.name()) {
            let mut renamed = false;
            for name in names.iter_mut().filter(|n| !is_draining(n)) {
                let draining = draining_name(name);
                self.engine
                    .rename_container(target, name, &draining)
                    .await?;
                self.did(report, format!("{target}: draining {name}"));
                *name = draining;
                renamed = true;
            }
            if renamed {
                tokio::time::sleep(DRAIN_WAIT).await;
            }
        }
        for name in &names {
            self.stop_and_remove(target, name, why, report).await?;
        }
        Ok(())
    }

    /// Stops a container (with the grace period), removes it, and reports it.
    async fn stop_and_remove(
        &self,
        target: &Target,
        name: &str,
        why: &str,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        self.engine
            .stop_container(target, name, STOP_GRACE_SECONDS)
            .await?;
        self.engine.remove_container(target, name).await?;
        self.did(report, format!("{target}: removed {name}{why}"));
        Ok(())
    }

    /// Whether `image` names other content now than `current` was created from.
    async fn image_moved(
        &self,
        target: &Target,
        current: &Observed,
        image: &str,
    ) -> Result<bool, ConvergeError> {
        let mut known = self.image_ids.lock().await;
        let id = match known.get(image) {
            Some(id) => id.clone(),
            None => {
                let id = self.engine.image_id(target, image).await?;
                known.insert(image.to_owned(), id.clone());
                id
            }
        };
        Ok(image_moved(current, id.as_deref()))
    }

    async fn create_and_start(
        &self,
        target: &Target,
        spec: &ContainerSpec,
        report: &mut Report,
        verb: &str,
        init_ran: &mut bool,
    ) -> Result<(), ConvergeError> {
        if let Some(init) = &spec.init
            && !*init_ran
        {
            self.run_init(target, spec, init, report).await?;
            *init_ran = true;
        }
        self.engine.create_container(target, spec).await?;
        self.engine.start_container(target, &spec.name).await?;
        self.did(
            report,
            format!("{target}: {verb} {} ({})", spec.name, spec.image),
        );
        Ok(())
    }

    /// Runs a component's init step (the API's `migrate`) in a container of its own,
    /// on the tenant's network, to its end, and removes it. A failure (a non-zero exit,
    /// or still running after the health timeout) stops this tenant's converge with the
    /// step's last output; nothing of the component was changed yet.
    async fn run_init(
        &self,
        target: &Target,
        spec: &ContainerSpec,
        init: &InitSpec,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let container = spec.init_container(init);
        let step_target = Target::component(&target.tenant, &container.component);
        // A run cut short may have left one behind.
        self.engine
            .remove_container(&step_target, &container.name)
            .await?;
        self.engine
            .create_container(&step_target, &container)
            .await?;
        self.engine
            .start_container(&step_target, &container.name)
            .await?;
        let deadline = Instant::now() + self.health_timeout;
        let outcome = loop {
            let state = self
                .engine
                .inspect(&step_target, &container.name)
                .await?
                .and_then(|i| i.state);
            match state {
                None => break Err("disappeared before it finished".to_owned()),
                Some(state) if !state.running.unwrap_or(false) => {
                    break match state.exit_code.unwrap_or(-1) {
                        0 => Ok(()),
                        code => Err(format!("exited with code {code}")),
                    };
                }
                Some(_) if Instant::now() >= deadline => {
                    break Err(format!(
                        "was still running after {}s",
                        self.health_timeout.as_secs()
                    ));
                }
                Some(_) => tokio::time::sleep(HEALTH_POLL).await,
            }
        };
        let logs = match &outcome {
            Ok(()) => Vec::new(),
            Err(_) => self.last_output(&step_target, &container.name).await,
        };
        self.engine
            .remove_container(&step_target, &container.name)
            .await?;
        match outcome {
            Ok(()) => {
                self.did(
                    report,
                    format!("{target}: ran {} ({})", init.step, container.name),
                );
                Ok(())
            }
            Err(reason) => Err(ConvergeError::InitFailed(Box::new(InitFailure {
                tenant: target.tenant.clone(),
                component: spec.component.clone(),
                step: init.step.clone(),
                container: container.name.clone(),
                reason,
                logs,
            }))),
        }
    }

    async fn last_output(&self, target: &Target, name: &str) -> Vec<String> {
        self.engine
            .logs(target, name, false, Some(10))
            .filter_map(|line| async { line.ok() })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|l| l.trim_end().to_owned())
            .collect()
    }

    /// Waits until the container is healthy (or running, without a healthcheck).
    pub async fn wait_healthy(&self, target: &Target, name: &str) -> Result<(), ConvergeError> {
        let deadline = Instant::now() + self.health_timeout;
        loop {
            let reason = match self.engine.inspect(target, name).await? {
                None => "the container is gone".to_owned(),
                Some(inspected) => {
                    let state = inspected.state.unwrap_or_default();
                    let running = state.running.unwrap_or(false);
                    let health = state.health.and_then(|h| h.status).map(|s| s.to_string());
                    match (running, health.as_deref()) {
                        (true, Some("healthy")) | (true, None | Some("") | Some("none")) => {
                            return Ok(());
                        }
                        (true, Some("unhealthy")) => {
                            return Err(self
                                .unhealthy(target, name, "its healthcheck fails")
                                .await);
                        }
                        _ if inspected.restart_count.unwrap_or(0) > 0 || !running => {
                            let code = state.exit_code.unwrap_or_default();
                            if !running || code != 0 {
                                return Err(self
                                    .unhealthy(target, name, &format!("it exited with code {code}"))
                                    .await);
                            }
                            "it is restarting".to_owned()
                        }
                        _ => "its healthcheck has not passed yet".to_owned(),
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(self
                    .unhealthy(
                        target,
                        name,
                        &format!("{reason} after {}s", self.health_timeout.as_secs()),
                    )
                    .await);
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    async fn unhealthy(&self, target: &Target, name: &str, reason: &str) -> ConvergeError {
        let logs: Vec<String> = self
            .engine
            .logs(target, name, false, Some(5))
            .filter_map(|line| async { line.ok() })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|l| l.trim_end().to_owned())
            .collect();
        ConvergeError::Unhealthy {
            tenant: target.tenant.clone(),
            component: target.component.clone().unwrap_or_default(),
            container: name.to_owned(),
            reason: reason.to_owned(),
            logs,
        }
    }

    /// Removes a tenant's containers and network; its volumes too when
    /// `delete_volumes` (retention: Delete).
    pub async fn remove_tenant(
        &self,
        tenant: &str,
        delete_volumes: bool,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let mut labels = instance_labels(&self.settings);
        labels.insert(LABEL_TENANT.into(), tenant.to_owned());
        for container in self.engine.containers(&labels).await? {
            let target = Target::component(tenant, &container.component);
            // The tenant goes as a whole: nothing to drain its API for.
            self.stop_and_remove(&target, &container.name, "", report)
                .await?;
        }
        let target = Target::tenant(tenant);
        for (network, _) in self.engine.networks(&labels).await? {
            self.engine.remove_network(&target, &network).await?;
            self.did(report, format!("{target}: removed network {network}"));
        }
        if delete_volumes {
            for (volume, _) in self.engine.volumes(&labels).await? {
                self.engine.remove_volume(&target, &volume).await?;
                self.did(
                    report,
                    format!("{target}: deleted volume {volume} and its data"),
                );
            }
        }
        Ok(())
    }

    /// Converges one tenant alone, with what the engine holds now: no other tenant is
    /// looked at or removed (a restore brings its database up this way first).
    pub async fn converge_alone(
        &self,
        state: &TenantState,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let labels = instance_labels(&self.settings);
        let networks = self.engine.networks(&labels).await?;
        let networks: BTreeSet<String> = networks.into_iter().map(|(name, _)| name).collect();
        let volumes = self.volume_names(&labels).await?;
        let mut tenant_labels = labels;
        tenant_labels.insert(LABEL_TENANT.into(), state.tenant.clone());
        let observed = self.engine.containers(&tenant_labels).await?;
        self.converge_tenant(state, &observed, &networks, &volumes, report)
            .await
    }

    /// Converges a shared stack (`stack` is its label value): to `desired`, or, when
    /// it is `None` (switched off), removes its containers. Its volumes stay.
    pub async fn converge_stack(
        &self,
        stack: &str,
        desired: Option<&TenantState>,
        report: &mut Report,
    ) -> Result<(), ConvergeError> {
        let mut labels = instance_labels(&self.settings);
        labels.insert(LABEL_STACK.into(), stack.to_owned());
        let observed = self.engine.containers(&labels).await?;
        let Some(state) = desired else {
            for container in observed {
                let target = Target::component(stack, &container.component);
                self.stop_and_remove(&target, &container.name, "", report)
                    .await?;
            }
            return Ok(());
        };
        let volumes = self.volume_names(&labels).await?;
        // The stack runs in the host's network namespace, which always exists.
        let networks = BTreeSet::from([HOST_NETWORK.to_owned()]);
        self.converge_tenant(state, &observed, &networks, &volumes, report)
            .await
    }

    /// Stops and removes every container and network of this appliance; volumes stay.
    pub async fn down(&self, report: &mut Report) -> Result<(), ConvergeError> {
        let observed = self.observe().await?;
        let stacks: BTreeSet<String> = observed
            .iter()
            .filter_map(|o| o.labels.get(LABEL_STACK).cloned())
            .collect();
        for stack in stacks {
            self.converge_stack(&stack, None, report).await?;
        }
        let tenants: BTreeSet<String> = observed
            .into_iter()
            .filter(|o| !o.labels.contains_key(LABEL_STACK))
            .map(|o| o.tenant)
            .collect();
        let networks = self
            .engine
            .networks(&instance_labels(&self.settings))
            .await?;
        let mut all: BTreeSet<String> = tenants;
        all.extend(
            networks
                .iter()
                .filter_map(|(_, l)| l.get(LABEL_TENANT).cloned()),
        );
        for tenant in all {
            self.remove_tenant(&tenant, false, report).await?;
        }
        Ok(())
    }
}

/// Health as a word for status output.
/// Whether the tag `current` was created from names other content on the box now
/// (`local_image`: its image ID here). An image no longer on the box is not a reason
/// to replace what runs.
pub fn image_moved(current: &Observed, local_image: Option<&str>) -> bool {
    local_image.is_some_and(|id| !current.image_id.is_empty() && id != current.image_id)
}

/// Whether `current` runs `spec` as it is now: the same spec, from the content its tag
/// names on the box.
pub fn is_current(current: &Observed, spec: &ContainerSpec, local_image: Option<&str>) -> bool {
    current.spec_hash == spec.spec_hash && !image_moved(current, local_image)
}

pub fn health_word(health: Option<Health>) -> &'static str {
    match health {
        None => "missing",
        Some(Health::Healthy) => "healthy",
        Some(Health::Running) => "running",
        Some(Health::Starting) => "starting",
        Some(Health::Unhealthy) => "unhealthy",
        Some(Health::Stopped) => "stopped",
    }
}

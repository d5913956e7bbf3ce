//! Egress of open tenants: what reaches the declared LLM providers, and nothing else.
//!
//! Every tenant network stays `internal` (no route out). For each tenant whose plan
//! lists providers (`sovereignty: open`), `serve` runs a forward proxy on that
//! network's gateway address (the host's side of the bridge), port [`PROXY_PORT`];
//! the tenant's API containers get `HTTPS_PROXY`/`HTTP_PROXY` pointing at it, by the
//! name [`PROXY_HOST`] (`engine::desired`). The proxy admits only peers of the
//! tenant's subnet, and only `host:port` of a declared provider, at an address that
//! provider may have ([`policy`]). Strict tenants get no proxy, no proxy variables
//! and no route out.

pub mod metrics;
pub mod policy;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::engine::desired::network_name;
use crate::engine::docker::{DockerError, Target};
pub use metrics::{EgressMetrics, Outcome};
pub use policy::{AllowedProvider, PolicyError, TenantPolicy};
use proxy::SharedPolicy;

/// The port the egress proxy listens on, on each open tenant's gateway address.
pub const PROXY_PORT: u16 = 3128;
/// The name an open tenant's API reaches its egress proxy by (mapped to the network's
/// gateway address in the container's `/etc/hosts`).
pub const PROXY_HOST: &str = "iaf-egress";

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("tenant {tenant:?}: {error}")]
    Policy { tenant: String, error: PolicyError },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "tenant {tenant:?}: the egress proxy cannot listen on {addr}: {source}; its providers are unreachable until it can (another process holds the port? `ss -ltnp`)"
    )]
    Bind {
        tenant: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Where one tenant's proxy listens, and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    pub listen: SocketAddr,
    pub policy: TenantPolicy,
}

struct Running {
    listen: SocketAddr,
    policy: SharedPolicy,
    cancel: CancellationToken,
}

/// The proxies of every open tenant, kept in line with the stored tenants by
/// [`Egress::refresh`] after each reconcile.
pub struct Egress {
    port: u16,
    metrics: EgressMetrics,
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
    cancel: CancellationToken,
}

impl Egress {
    pub fn new(registry: &mut Registry) -> Self {
        Self::with_port(PROXY_PORT, registry)
    }

    /// On another port than [`PROXY_PORT`] (tests that run the proxy on its own).
    pub fn with_port(port: u16, registry: &mut Registry) -> Self {
        Self {
            port,
            metrics: EgressMetrics::register(registry),
            running: Default::default(),
            cancel: CancellationToken::new(),
        }
    }

    /// What should run: one proxy per stored tenant whose plan lists providers and
    /// whose network exists. A tenant that cannot be planned or looked up is logged and
    /// left without a proxy (fail closed).
    pub async fn wanted(&self, app: &App) -> BTreeMap<String, ProxyTarget> {
        let mut wanted = BTreeMap::new();
        let tenants = match app.store.tenants() {
            Ok(tenants) => tenants,
            Err(error) => {
                tracing::error!("egress: cannot read the stored tenants: {error}");
                return wanted;
            }
        };
        for tenant in &tenants {
            let plan = match app.plan_stored(tenant) {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::error!("egress: {error}");
                    continue;
                }
            };
            if plan.egress.providers.is_empty() {
                continue;
            }
            match self.target_of(app, &plan).await {
                Ok(Some(target)) => {
                    wanted.insert(plan.tenant.clone(), target);
                }
                Ok(None) => {
                    tracing::debug!(tenant = plan.tenant, "egress: no network yet")
                }
                Err(error) => tracing::error!("egress: {error}"),
            }
        }
        wanted
    }

    async fn target_of(
        &self,
        app: &App,
        plan: &iafactory_crds::TenantPlan,
    ) -> Result<Option<ProxyTarget>, EgressError> {
        let providers = plan
            .egress
            .providers
            .iter()
            .map(AllowedProvider::from_plan)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| EgressError::Policy {
                tenant: plan.tenant.clone(),
                error,
            })?;
        let network = network_name(&plan.tenant);
        let Some(addresses) = app
            .engine
            .network_addresses(&Target::tenant(&plan.tenant), &network)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(ProxyTarget {
            listen: SocketAddr::new(addresses.gateway, self.port),
            policy: TenantPolicy {
                tenant: plan.tenant.clone(),
                subnet: addresses.subnet,
                providers,
            },
        }))
    }

    /// Looks at the stored tenants and their networks, then starts, updates and stops
    /// proxies to match.
    pub async fn refresh(&self, app: &App) {
        let wanted = self.wanted(app).await;
        for error in self.apply(wanted).await {
            tracing::error!("{error}");
        }
    }

    /// Makes the running proxies exactly `wanted`: a changed policy is swapped in
    /// place (open tunnels carry on), a changed address rebinds, a tenant no longer
    /// wanted loses its proxy. Returns what could not be started.
    pub async fn apply(&self, wanted: BTreeMap<String, ProxyTarget>) -> Vec<EgressError> {
        let mut running = self.running.lock().await;
        running.retain(|tenant, proxy| {
            let keep = wanted.get(tenant).is_some_and(|w| w.listen == proxy.listen);
            if !keep {
                proxy.cancel.cancel();
                tracing::info!(tenant, listen = %proxy.listen, "egress proxy stopped");
            }
            keep
        });
        let mut errors = Vec::new();
        for (tenant, target) in wanted {
            if let Some(proxy) = running.get(&tenant) {
                let mut policy = proxy.policy.write().unwrap_or_else(PoisonError::into_inner);
                if *policy != target.policy {
                    tracing::info!(tenant, "egress policy updated");
                    *policy = target.policy;
                }
                continue;
            }
            let listener = match TcpListener::bind(target.listen).await {
                Ok(listener) => listener,
                Err(source) => {
                    errors.push(EgressError::Bind {
                        tenant: tenant.clone(),
                        addr: target.listen,
                        source,
                    });
                    continue;
                }
            };
            let providers: Vec<String> = target
                .policy
                .providers
                .iter()
                .map(|p| format!("{}:{}", p.host, p.port))
                .collect();
            tracing::info!(
                tenant,
                listen = %target.listen,
                subnet = %target.policy.subnet,
                ?providers,
                "egress proxy started"
            );
            let policy = Arc::new(RwLock::new(target.policy));
            let cancel = self.cancel.child_token();
            tokio::spawn(proxy::run(
                listener,
                policy.clone(),
                self.metrics.clone(),
                cancel.clone(),
            ));
            running.insert(
                tenant,
                Running {
                    listen: target.listen,
                    policy,
                    cancel,
                },
            );
        }
        errors
    }

    /// Where each tenant's proxy listens now.
    pub async fn listening(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .lock()
            .await
            .iter()
            .map(|(tenant, proxy)| (tenant.clone(), proxy.listen))
            .collect()
    }

    /// Stops accepting on every proxy.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

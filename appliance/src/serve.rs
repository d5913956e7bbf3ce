//! `iafactory serve`: the daemon. It reconciles on a timer and whenever a stored
//! manifest changes, rewrites the monitoring stack's Prometheus targets, runs the TLS gateway
//! (`<tenant>.<domain>` → that tenant's API container, certificates kept fresh), takes
//! each tenant's scheduled backups (`crate::backup_schedule`), and serves /metrics,
//! /status and /healthz on localhost. SIGTERM or ctrl-c stops it
//! gracefully: open gateway requests get the gateway's grace period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::app::{ApiReplica, App};
use crate::certs::{
    AcmeSettings, CertError, CertManager, CertResolver, CertSettings, CertSource, ChallengeStore,
};
use crate::egress::Egress;
use crate::gateway::{
    Gateway, GatewayError, GatewaySettings, ROUTE_REFRESH, RouteTable, SharedRoutes, Upstream,
    ingress_aliases,
};
use crate::metrics::Snapshot;
use crate::settings::{CertificateChoice, SettingsError};

/// How often the manifests directory is looked at for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr}: {source}; another process holds that port (`ss -ltnp`): stop it, or set appliance.listen (IAF_APPLIANCE__LISTEN) to a free port"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the status server stopped: {0}")]
    Server(std::io::Error),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot set up the gateway's certificates: {0}")]
    Certificates(#[from] CertError),
    #[error(
        "{0}; set appliance.gateway.https_listen / http_listen (IAF_APPLIANCE__GATEWAY__HTTPS_LISTEN, ...)"
    )]
    Gateway(#[from] GatewayError),
}

/// What the HTTP handlers share: the appliance, and the registry holding the gateway's
/// and the certificates' metrics (live, unlike the per-scrape container snapshot).
struct Served {
    app: App,
    registry: Registry,
}

/// The host names certificates are kept for: every stored tenant's, read by the
/// renewal task and rewritten after each reconcile.
type Hosts = Arc<Mutex<Vec<String>>>;

/// What the manifests directory holds now: names, sizes and modification times.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    entries.sort();
    entries
}

/// Binds the status listener first (a taken port fails at once), then the gateway,
/// then serves and reconciles until SIGTERM or ctrl-c.
pub async fn serve(app: App) -> Result<(), ServeError> {
    let addr = app.config.appliance.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(ServeError::Server)?;
    tracing::info!(%local, "serving /metrics and /status");

    let mut registry = Registry::default();
    let resolver = Arc::new(CertResolver::default());
    let challenges = ChallengeStore::default();
    let manager = Arc::new(CertManager::new(
        cert_settings(&app)?,
        resolver.clone(),
        challenges.clone(),
        &mut registry,
    )?);
    if let Some(ca) = manager.local_ca() {
        tracing::info!(
            ca = %ca.cert_path().display(),
            "certificates come from the appliance's local CA: clients must trust this file"
        );
    }
    let hosts: Hosts = Arc::new(Mutex::new(tenant_hosts(&app)));
    // What is on disk is served at once; what is missing is issued once the gateway's
    // HTTP listener can answer ACME challenges.
    for (host, error) in manager.install_stored(&current(&hosts)) {
        tracing::warn!(host, "{error}; a new certificate will be issued");
    }
    // A tenant held back (a secret not set yet) has no state; the others are routed.
    let desired = app
        .desired_each()
        .map(|desired| desired.states)
        .unwrap_or_default();
    let networks = App::api_networks(&desired);
    let aliases = Arc::new(Mutex::new(tenant_aliases(&app)));
    let routes = SharedRoutes::new(route_table(
        &domain(&app),
        &current(&aliases),
        &app.api_replicas(&networks).await,
    ));
    let api_networks = Arc::new(Mutex::new(networks));
    let gateway_config = &app.config.appliance.gateway;
    let mut settings =
        GatewaySettings::new(gateway_config.https_listen, gateway_config.http_listen);
    settings.public_https_port = gateway_config.public_https_port;
    settings.header_read_timeout =
        Duration::from_secs(gateway_config.header_read_timeout_seconds.max(1));
    settings.idle_timeout = Duration::from_secs(gateway_config.idle_timeout_seconds.max(1));
    settings.max_connections = gateway_config.max_connections.max(1);
    settings.max_connections_per_client = gateway_config.max_connections_per_client.max(1);
    let gateway = Gateway::start(
        settings,
        routes.clone(),
        resolver,
        challenges,
        &mut registry,
    )
    .await?;
    // Egress of open tenants: a proxy on each one's network gateway (crate::egress),
    // for the networks there already; each reconcile refreshes them.
    let egress = Arc::new(Egress::new(&mut registry));
    egress.refresh(&app).await;
    let cancel = CancellationToken::new();
    let renewal_hosts = hosts.clone();
    let renewals = tokio::spawn(manager.clone().run_renewals(
        move || current(&renewal_hosts),
        Duration::from_secs(gateway_config.renewal_check_seconds.max(1)),
        cancel.clone(),
    ));

    let backup_metrics = crate::backup_schedule::BackupMetrics::register(&mut registry);
    let served = Arc::new(Served { app, registry });
    let backups = tokio::spawn(scheduled_backups(
        served.clone(),
        backup_metrics,
        cancel.clone(),
    ));
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(served.clone());
    let route_refresher = tokio::spawn(refresh_routes_forever(
        served.clone(),
        routes.clone(),
        api_networks.clone(),
        aliases.clone(),
    ));
    let reconciler = tokio::spawn(reconcile_forever(
        served,
        local,
        Refresh {
            api_networks,
            aliases,
            routes,
            manager,
            hosts,
            egress: egress.clone(),
        },
    ));
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(stop_signal(cancel.clone()))
        .await;
    cancel.cancel();
    reconciler.abort();
    route_refresher.abort();
    // A backup in progress is abandoned: its `.partial-` directory is removed at the
    // next one.
    backups.abort();
    let _ = renewals.await;
    egress.shutdown();
    gateway.shutdown().await;
    tracing::info!("stopped");
    result.map_err(ServeError::Server)
}

/// Resolves on SIGTERM (systemd's stop) or ctrl-c, or when `cancel` fires.
async fn stop_signal(cancel: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        () = cancel.cancelled() => {}
    }
}

fn cert_settings(app: &App) -> Result<CertSettings, SettingsError> {
    let appliance = &app.config.appliance;
    let source = match appliance.certificate_choice()? {
        CertificateChoice::Acme {
            directory,
            email,
            server_root,
        } => CertSource::Acme(AcmeSettings {
            directory_url: directory,
            server_root_pem: server_root,
            ..AcmeSettings::lets_encrypt(email)
        }),
        CertificateChoice::LocalCa => CertSource::LocalCa,
        CertificateChoice::Provided { chain, key } => CertSource::Provided { chain, key },
    };
    Ok(CertSettings {
        dir: appliance.cert_dir(),
        source,
        renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
    })
}

fn current<T: Clone>(shared: &Mutex<T>) -> T {
    shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn domain(app: &App) -> String {
    app.config
        .platform
        .domain
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `<tenant>.<domain>` for every stored tenant, running or not, and each one's own
/// `spec.ingress.host`: a tenant's certificates are ready before its API is.
fn tenant_hosts(app: &App) -> Vec<String> {
    let domain = domain(app);
    let tenants = match app.store.tenants() {
        Ok(tenants) => tenants,
        Err(error) => {
            tracing::error!("cannot read the stored tenants for their certificates: {error}");
            return Vec::new();
        }
    };
    let mut hosts: Vec<String> = tenants
        .iter()
        .filter_map(|t| t.metadata.name.as_deref())
        .map(|name| format!("{}.{domain}", name.to_ascii_lowercase()))
        .chain(tenant_aliases(app).into_keys())
        .collect();
    hosts.sort();
    hosts
}

/// Each stored tenant's own host (`spec.ingress.host`) → the tenant. `apply` refuses a
/// conflicting one; a store edited by hand can still hold one, which is logged and not
/// served.
fn tenant_aliases(app: &App) -> BTreeMap<String, String> {
    let tenants = match app.store.tenants() {
        Ok(tenants) => tenants,
        Err(error) => {
            tracing::error!("cannot read the stored tenants for their hosts: {error}");
            return BTreeMap::new();
        }
    };
    let (aliases, conflicts) = ingress_aliases(
        &domain(app),
        tenants.iter().filter_map(|t| {
            Some((
                t.metadata.name.as_deref()?,
                t.spec.ingress.as_ref()?.host.as_str(),
            ))
        }),
    );
    for conflict in conflicts {
        tracing::error!("{conflict}");
    }
    aliases
}

/// Every healthy API replica of each tenant, by its address on the tenant's internal
/// network (the host reaches bridge networks directly, internal or not;
/// [`App::api_replicas`]); the gateway balances across them. A replica that is running
/// but whose healthcheck fails (or has not passed yet) is left out; a tenant with no
/// healthy replica gets 404 from the gateway until one is. A draining replica (being
/// replaced) gets no new request; the ones it holds finish before it is stopped.
fn route_table(
    domain: &str,
    aliases: &BTreeMap<String, String>,
    apis: &BTreeMap<String, Vec<ApiReplica>>,
) -> RouteTable {
    let mut table = RouteTable::new(domain).with_aliases(aliases.clone());
    for (tenant, replicas) in apis {
        for replica in replicas.iter().filter(|r| r.healthy && !r.draining) {
            match Upstream::http(&replica.address) {
                Ok(upstream) => table.insert(tenant, upstream),
                Err(error) => tracing::error!(tenant, "{error}"),
            }
        }
    }
    table
}

/// Every running API replica, healthy or not: what Prometheus scrapes.
fn scrape_addresses(apis: &BTreeMap<String, Vec<ApiReplica>>) -> BTreeMap<String, Vec<String>> {
    apis.iter()
        .map(|(tenant, replicas)| {
            // `/metrics` is on the internal listener; the gateway uses `address`.
            let addresses = replicas.iter().map(|r| r.metrics_address.clone()).collect();
            (tenant.clone(), addresses)
        })
        .collect()
}

/// Keeps the gateway's routes current between reconciles, and during one: a replica
/// that turns healthy starts taking requests, and one that starts draining stops, within
/// [`ROUTE_REFRESH`], whoever (this daemon or `iafactory up`) replaces it.
async fn refresh_routes_forever(
    served: Arc<Served>,
    routes: SharedRoutes,
    api_networks: Arc<Mutex<BTreeMap<String, String>>>,
    aliases: Arc<Mutex<BTreeMap<String, String>>>,
) {
    let app = &served.app;
    loop {
        tokio::time::sleep(ROUTE_REFRESH).await;
        let networks = current(&api_networks);
        let table = route_table(
            &domain(app),
            &current(&aliases),
            &app.api_replicas(&networks).await,
        );
        if *routes.current() != table {
            tracing::debug!(hosts = ?table.hostnames(), "the gateway's routes changed");
            routes.replace(table);
        }
    }
}

/// What a reconcile refreshes besides the containers.
struct Refresh {
    /// Each tenant's network, for [`refresh_routes_forever`].
    api_networks: Arc<Mutex<BTreeMap<String, String>>>,
    /// Each tenant's own host, for [`refresh_routes_forever`].
    aliases: Arc<Mutex<BTreeMap<String, String>>>,
    routes: SharedRoutes,
    manager: Arc<CertManager>,
    hosts: Hosts,
    egress: Arc<Egress>,
}

impl Refresh {
    async fn after_reconcile(&self, app: &App, apis: &BTreeMap<String, Vec<ApiReplica>>) {
        let aliases = tenant_aliases(app);
        self.routes
            .replace(route_table(&domain(app), &aliases, apis));
        *self.aliases.lock().unwrap_or_else(PoisonError::into_inner) = aliases;
        self.egress.refresh(app).await;
        let hosts = tenant_hosts(app);
        let changed = {
            let mut known = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = *known != hosts;
            known.clone_from(&hosts);
            changed
        };
        if changed {
            // A new tenant gets its certificate now, not at the next renewal check; in
            // the background, so a slow ACME order never delays reconciling.
            let manager = self.manager.clone();
            tokio::spawn(async move {
                for (host, outcome) in manager.ensure_all(&hosts).await {
                    if let Err(error) = outcome {
                        tracing::error!(host, "{error}; retrying at the next renewal check");
                    }
                }
            });
        }
    }
}

async fn reconcile_forever(served: Arc<Served>, listen: SocketAddr, refresh: Refresh) {
    let app = &served.app;
    let interval = Duration::from_secs(app.config.appliance.reconcile_interval_seconds.max(1));
    let dir = app.store.tenants_dir();
    let mut seen = None;
    let mut last = tokio::time::Instant::now() - interval;
    loop {
        let now = fingerprint(&dir);
        let changed = seen.as_ref() != Some(&now);
        if changed || last.elapsed() >= interval {
            if changed {
                tracing::info!("the stored manifests changed: reconciling");
            }
            seen = Some(now);
            last = tokio::time::Instant::now();
            let log = |line: &str| tracing::info!("{line}");
            let (report, result) = app.up(&log).await;
            match result {
                Ok(()) if report.actions.is_empty() => {
                    tracing::debug!("converged, nothing to change")
                }
                Ok(()) => tracing::info!(changes = report.actions.len(), "converged"),
                Err(error) => tracing::error!("{error}"),
            }
            crate::registrations::log_outcomes(app.register_all().await);
            match app.desired_each() {
                Ok(crate::app::DesiredTenants {
                    states: desired, ..
                }) => {
                    // Looked up once: the gateway's routes and Prometheus's targets
                    // are the same addresses.
                    let networks = App::api_networks(&desired);
                    let apis = app.api_replicas(&networks).await;
                    *refresh
                        .api_networks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = networks;
                    write_monitoring_targets(app, listen, &scrape_addresses(&apis));
                    refresh.after_reconcile(app, &apis).await;
                }
                Err(error) => tracing::error!("{error}"),
            }
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// Scheduled backups ([`crate::backup_schedule`]), beside the reconcile loop.
async fn scheduled_backups(
    served: Arc<Served>,
    metrics: crate::backup_schedule::BackupMetrics,
    cancel: CancellationToken,
) {
    let scheduler = crate::backup_schedule::BackupScheduler::new(metrics);
    crate::backup_schedule::run_forever(&served.app, scheduler, cancel).await;
}

/// Keeps Prometheus's file_sd targets current: this daemon, and every tenant's API.
fn write_monitoring_targets(app: &App, listen: SocketAddr, apis: &BTreeMap<String, Vec<String>>) {
    if !app.config.appliance.monitoring.enabled {
        return;
    }
    match app.write_monitoring_targets(listen, apis) {
        Ok(true) => tracing::info!("the monitoring targets changed"),
        Ok(false) => {}
        Err(error) => tracing::error!("{error}"),
    }
}

async fn metrics(State(served): State<Arc<Served>>) -> Response {
    match Snapshot::take(&served.app).await {
        Ok(snapshot) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            exposition(&snapshot, &served.registry),
        )
            .into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// Both registries in one OpenMetrics exposition: a single `# EOF`, at the end.
fn exposition(snapshot: &Snapshot, registry: &Registry) -> String {
    let mut text = snapshot.encode();
    if let Some(body) = text.strip_suffix("# EOF\n") {
        text.truncate(body.len());
    }
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

async fn status(State(served): State<Arc<Served>>) -> Response {
    match served.app.status().await {
        Ok(statuses) => axum::Json(statuses).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(address: &str, healthy: bool) -> ApiReplica {
        ApiReplica {
            address: address.to_owned(),
            metrics_address: address.replace(":8180", ":9180"),
            healthy,
            draining: false,
        }
    }

    #[test]
    fn every_healthy_replica_not_draining_is_routed_and_every_running_one_scraped() {
        let apis = BTreeMap::from([
            (
                "alpha".to_owned(),
                vec![
                    replica("172.18.0.3:8180", true),
                    replica("172.18.0.4:8180", false),
                    replica("172.18.0.5:8180", true),
                    ApiReplica {
                        draining: true,
                        ..replica("172.18.0.6:8180", true)
                    },
                ],
            ),
            ("beta".to_owned(), vec![replica("172.19.0.3:8180", false)]),
            ("gamma".to_owned(), vec![]),
        ]);
        let table = route_table("Example.DZ", &BTreeMap::new(), &apis);
        let (_, replicas) = table.route("alpha.example.dz").unwrap();
        let routed: Vec<String> = replicas.iter().map(ToString::to_string).collect();
        assert_eq!(routed, ["172.18.0.3:8180", "172.18.0.5:8180"]);
        // Neither the unhealthy one nor the draining one takes new requests.
        // No healthy replica: not routed at all, so the gateway says 404, not 502.
        assert!(table.route("beta.example.dz").is_err());
        assert!(table.route("gamma.example.dz").is_err());
        assert_eq!(table.hostnames(), ["alpha.example.dz"]);

        let scraped = scrape_addresses(&apis);
        assert_eq!(scraped["alpha"].len(), 4);
        // Scraped on the internal listener, never on the routed one.
        assert_eq!(scraped["beta"], ["172.19.0.3:9180"]);
    }
}

//! The appliance's TLS gateway: a rustls reverse proxy that routes `<tenant>.<domain>`
//! to that tenant's API, plus a plain-HTTP listener that answers ACME HTTP-01
//! challenges and redirects everything else to HTTPS.
//!
//! # What the caller wires together (`iafactory serve`)
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use iafactory_appliance::certs::{CertResolver, ChallengeStore};
//! use iafactory_appliance::gateway::{Gateway, GatewaySettings, RouteTable, SharedRoutes, Upstream};
//! let mut registry = prometheus_client::registry::Registry::default();
//! let resolver = Arc::new(CertResolver::default()); // filled by certs::CertManager
//! let challenges = ChallengeStore::default();       // filled by certs::CertManager (ACME)
//! let routes = SharedRoutes::new(
//!     RouteTable::new("example.dz").with_tenant("alpha", Upstream::http("172.18.0.3:8080")?),
//! );
//! let gateway = Gateway::start(
//!     GatewaySettings::new("0.0.0.0:443".parse()?, "0.0.0.0:80".parse()?),
//!     routes.clone(),
//!     resolver,
//!     challenges,
//!     &mut registry,
//! )
//! .await?;
//! // Tenants changed? Swap the table; the next request sees it.
//! routes.replace(RouteTable::new("example.dz"));
//! gateway.shutdown().await; // stops accepting, lets open requests finish (bounded)
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//! - TLS: the certificate is picked by SNI through [`CertResolver`]; a name with no
//!   certificate (or no SNI) fails the handshake. HTTP/1.1 and HTTP/2 (ALPN).
//! - Routing: the request's host (HTTP/2 `:authority` or `Host`) must equal the SNI it
//!   came in on, else **421 Misdirected Request**: a connection opened for tenant A can
//!   never carry a request to tenant B. A host that is not `<tenant>.<domain>` gets 421,
//!   an unknown tenant **404**, an unreachable upstream **502**, each with a plain-text
//!   message saying which.
//! - Replicas: a tenant's route holds every replica `serve` saw running and healthy;
//!   each request goes to the one with the fewest requests in flight through the
//!   gateway, ties in turn (`balance`). A refused connection marks the replica out for
//!   [`GatewaySettings::replica_eject_for`] and the request, whose body is still unread,
//!   is retried once on another replica.
//! - Proxying: bodies stream both ways frame by frame (server-sent events pass through
//!   as they are produced); hop-by-hop headers are dropped; `X-Forwarded-For` is set to
//!   the client's address (replacing any the client sent), `X-Forwarded-Proto: https`
//!   and `X-Forwarded-Host`. Upstream connections are kept alive and reused.
//! - Plain HTTP: `GET /.well-known/acme-challenge/TOKEN` answers from the
//!   [`ChallengeStore`], everything else gets **308** to the same URL over HTTPS.
//! - Metrics, in the caller's registry: `iafactory_appliance_gateway_requests_total{tenant,code}`
//!   `iafactory_appliance_gateway_tls_handshake_failures_total`,
//!   `iafactory_appliance_gateway_upstream_connect_failures_total{tenant}`,
//!   `iafactory_appliance_gateway_retries_total{tenant}`, and the connection ones below.
//! - Slow and greedy clients (`conn`), on both listeners: a TLS handshake must finish
//!   within [`GatewaySettings::tls_handshake_timeout`], an HTTP/1 request head within
//!   [`GatewaySettings::header_read_timeout`]; a connection with no request in flight
//!   is closed after [`GatewaySettings::idle_timeout`]; HTTP/2 clients are pinged.
//!   Connections are capped per client address and in all; one beyond a cap is closed
//!   on accept and counted in `iafactory_appliance_gateway_connections_refused_total{listener,reason}`.
//!   Also `iafactory_appliance_gateway_open_connections{listener}` and
//!   `iafactory_appliance_gateway_connection_timeouts_total{listener,kind}`.

mod balance;
mod conn;
mod http;
mod proxy;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertResolver, ChallengeStore};
pub use conn::ConnMetrics;
pub use proxy::GatewayMetrics;
pub(crate) use proxy::plain;
pub use routes::{HostConflict, RouteMiss, RouteTable, SharedRoutes, Upstream, ingress_aliases};

/// How often `iafactory serve` re-reads the API replicas into the gateway's routes: a
/// replica that became healthy, or started draining, is seen within this time.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(1);

/// The gateway's failures: all happen at start-up; requests fail with HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "cannot listen for {listener} on {address}: {source}. Is another web server using the port? Change the port in the configuration or stop the other server"
    )]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid upstream address {address:?}: {reason}")]
    InvalidUpstream { address: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// HTTPS listener, `:443` in production.
    pub https_listen: SocketAddr,
    /// Plain-HTTP listener (ACME HTTP-01 and redirects), `:80` in production.
    pub http_listen: SocketAddr,
    /// The HTTPS port clients use, for redirects, when it differs from the listener's
    /// (port forwarding). `None`: the listener's port.
    pub public_https_port: Option<u16>,
    pub upstream_connect_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// How long [`Gateway::shutdown`] lets open requests finish.
    pub shutdown_grace: Duration,
    /// How long a replica whose connection failed gets no new requests (while its
    /// tenant has another): long enough for `serve`'s next look at the containers to
    /// take a dead one out of the routes.
    pub replica_eject_for: Duration,
    /// HTTP/1: how long a request's head may take to arrive, counted from the moment
    /// the connection waits for it (after TLS, or after the previous response).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1
    /// keep-alive and HTTP/2 alike).
    pub idle_timeout: Duration,
    /// HTTP/2: how often the gateway pings a client.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: how long a ping may go unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
    /// Open client connections, on both listeners together; one more is closed on accept.
    pub max_connections: usize,
    /// Open client connections from one client address, on both listeners together.
    pub max_connections_per_client: usize,
}

impl GatewaySettings {
    pub fn new(https_listen: SocketAddr, http_listen: SocketAddr) -> Self {
        Self {
            https_listen,
            http_listen,
            public_https_port: None,
            upstream_connect_timeout: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            replica_eject_for: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
            max_connections: 4096,
            max_connections_per_client: 256,
        }
    }
}

/// A running gateway; dropping it without [`Gateway::shutdown`] leaves its tasks running
/// until the runtime ends.
#[derive(Debug)]
pub struct Gateway {
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Binds both listeners (failing, with the address, if either is taken) and serves
    /// until [`Gateway::shutdown`].
    pub async fn start(
        settings: GatewaySettings,
        routes: SharedRoutes,
        resolver: Arc<CertResolver>,
        challenges: ChallengeStore,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        let bind = |listener, address| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| GatewayError::Bind {
                    listener,
                    address,
                    source,
                })
        };
        let https = bind("HTTPS", settings.https_listen).await?;
        let http = bind("HTTP (ACME challenges and redirects)", settings.http_listen).await?;
        let local = |listener: &TcpListener, address| {
            listener.local_addr().map_err(|source| GatewayError::Bind {
                listener: "HTTPS",
                address,
                source,
            })
        };
        let https_addr = local(&https, settings.https_listen)?;
        let http_addr = local(&http, settings.http_listen)?;
        let tls = proxy::tls_config(resolver)?;
        let metrics = GatewayMetrics::register(registry);
        let limits = conn::ConnLimits::new(&settings, ConnMetrics::register(registry));
        let cancel = CancellationToken::new();
        let redirect_port = settings.public_https_port.unwrap_or(https_addr.port());
        let listener = |name| {
            Arc::new(conn::Listener::new(
                name,
                limits.clone(),
                &settings,
                cancel.clone(),
            ))
        };
        let tasks = vec![
            tokio::spawn(proxy::serve(
                https,
                tls,
                proxy::ProxyState::new(routes, metrics, &settings),
                settings.tls_handshake_timeout,
                listener("https"),
            )),
            tokio::spawn(http::serve(
                http,
                challenges,
                redirect_port,
                listener("http"),
            )),
        ];
        tracing::info!(%https_addr, %http_addr, "gateway listening");
        Ok(Self {
            https_addr,
            http_addr,
            cancel,
            tasks,
        })
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stops accepting connections and waits (up to the settings' grace period) for open
    /// requests to finish.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "gateway task ended abnormally");
            }
        }
    }
}

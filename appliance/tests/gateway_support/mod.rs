//! Shared by the gateway and ACME tests: test upstreams (real HTTP servers), a gateway
//! with local-CA certificates, and TLS clients that trust exactly one root.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use iafactory_appliance::certs::{
    CertManager, CertResolver, CertSettings, CertSource, ChallengeStore,
};
use iafactory_appliance::gateway::{Gateway, GatewaySettings, RouteTable, SharedRoutes, Upstream};
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::Notify;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};

pub const DOMAIN: &str = "example.test";

/// A real HTTP server standing in for a tenant's API: `/sse` streams two events with a
/// pause the test controls; every other path echoes what arrived, as JSON.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Notified by the test once it has read the first event of `/sse`.
    pub release_second_event: Arc<Notify>,
    _stop: DropGuard,
}

#[derive(Clone)]
struct UpstreamState {
    name: &'static str,
    hits: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

impl TestUpstream {
    pub async fn start(name: &'static str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let state = UpstreamState {
            name,
            hits: hits.clone(),
            release: release.clone(),
        };
        let app = axum::Router::new()
            .route("/sse", get(sse))
            .fallback(echo)
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(cancel.clone().cancelled_owned())
                .into_future(),
        );
        Self {
            addr,
            hits,
            release_second_event: release,
            _stop: cancel.drop_guard(),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn upstream(&self) -> Upstream {
        Upstream::http(&self.addr.to_string()).unwrap()
    }
}

async fn echo(
    State(state): State<UpstreamState>,
    headers: HeaderMap,
    uri: Uri,
) -> Json<serde_json::Value> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Json(serde_json::json!({
        "upstream": state.name,
        "path": uri.to_string(),
        "host": header("host"),
        "x_forwarded_for": header("x-forwarded-for"),
        "x_forwarded_proto": header("x-forwarded-proto"),
        "x_forwarded_host": header("x-forwarded-host"),
    }))
}

async fn sse(State(state): State<UpstreamState>) -> axum::response::Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let release = state.release.clone();
    let events = async_stream(release);
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap()
}

/// `data: first`, then (only once the test says so) `data: second`.
fn async_stream(
    release: Arc<Notify>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(0u8, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok(Bytes::from_static(b"data: first\n\n")), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(Bytes::from_static(b"data: second\n\n")), 2))
                }
                _ => None,
            }
        }
    })
}

/// A gateway on free 127.0.0.1 ports, its certificates from a local CA in `dir`.
pub struct TestGateway {
    pub gateway: Gateway,
    pub routes: SharedRoutes,
    pub resolver: Arc<CertResolver>,
    pub challenges: ChallengeStore,
    pub manager: Arc<CertManager>,
    pub registry: Registry,
    pub ca_pem: String,
}

impl TestGateway {
    pub async fn start(dir: &std::path::Path, tenants: &[(&str, Upstream)]) -> Self {
        Self::start_with(dir, tenants, local_settings()).await
    }

    /// As [`Self::start`], with these settings (their listen addresses included).
    pub async fn start_with(
        dir: &std::path::Path,
        tenants: &[(&str, Upstream)],
        settings: GatewaySettings,
    ) -> Self {
        let mut routes = RouteTable::new(DOMAIN);
        for (tenant, upstream) in tenants {
            routes.insert(tenant, upstream.clone());
        }
        let hosts = routes.hostnames();
        let routes = SharedRoutes::new(routes);
        let resolver = Arc::new(CertResolver::default());
        let challenges = ChallengeStore::default();
        let mut registry = Registry::default();
        let manager = Arc::new(
            CertManager::new(
                CertSettings {
                    dir: dir.to_path_buf(),
                    source: CertSource::LocalCa,
                    renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
                },
                resolver.clone(),
                challenges.clone(),
                &mut registry,
            )
            .unwrap(),
        );
        for (host, outcome) in manager.ensure_all(&hosts).await {
            outcome.unwrap_or_else(|err| panic!("{host}: {err}"));
        }
        let ca_pem = manager.local_ca().unwrap().cert_pem().to_owned();
        let gateway = Gateway::start(
            settings,
            routes.clone(),
            resolver.clone(),
            challenges.clone(),
            &mut registry,
        )
        .await
        .unwrap();
        Self {
            gateway,
            routes,
            resolver,
            challenges,
            manager,
            registry,
            ca_pem,
        }
    }

    pub fn url(&self, tenant: &str, path: &str) -> String {
        format!(
            "https://{tenant}.{DOMAIN}:{}{path}",
            self.gateway.https_addr().port()
        )
    }

    /// A client that trusts only the local CA and resolves every tenant to the gateway.
    pub fn client(&self, tenants: &[&str]) -> reqwest::Client {
        https_client(&self.ca_pem, tenants, self.gateway.https_addr())
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

pub fn local_settings() -> GatewaySettings {
    GatewaySettings::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
}

pub fn https_client(root_pem: &str, tenants: &[&str], gateway: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for tenant in tenants {
        builder = builder.resolve(&format!("{tenant}.{DOMAIN}"), gateway);
    }
    builder.build().unwrap()
}

pub fn tls_connector(root_pem: &str) -> TlsConnector {
    tls_connector_with_alpn(root_pem, Vec::new())
}

pub fn tls_connector_with_alpn(root_pem: &str, alpn: Vec<Vec<u8>>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn;
    TlsConnector::from(Arc::new(config))
}

/// One TLS connection with SNI `server_name`, verified against `root_pem`.
pub async fn tls_connect(
    root_pem: &str,
    server_name: &str,
    gateway: SocketAddr,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(gateway).await?;
    tls_connector(root_pem)
        .connect(ServerName::try_from(server_name.to_owned()).unwrap(), tcp)
        .await
}

/// The leaf certificate the server presented on this connection.
pub fn peer_leaf(tls: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// An HTTP/1.1 connection over `tls`, kept open for several requests.
pub async fn http1(
    tls: TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// GET `path` with this `Host`, returning the status and the body text.
pub async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (u16, String) {
    sender.ready().await.unwrap();
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits for `condition`, polling, for up to `deadline`.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !condition().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

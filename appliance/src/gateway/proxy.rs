//! The HTTPS side: TLS by SNI, then each request checked against the connection's SNI,
//! routed, and streamed to one of the tenant's replicas ([`super::balance`]). A refused
//! connection is retried once on another replica: the request has not left the gateway
//! (its body is still unread), so it cannot have been handled twice.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::balance::{Balancer, InFlight};
use super::conn::Listener;
use super::routes::{RouteMiss, SharedRoutes, Upstream, normalise_host};
use super::{GatewayError, GatewaySettings};
use crate::certs::CertResolver;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// Empty when the request matched no tenant.
    tenant: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

/// The gateway's request and handshake counters.
#[derive(Debug, Clone, Default)]
pub struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    handshake_failures: Counter,
    connect_failures: Family<TenantLabel, Counter>,
    retries: Family<TenantLabel, Counter>,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "iafactory_appliance_gateway_requests",
            "Requests answered by the gateway, by tenant and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "iafactory_appliance_gateway_tls_handshake_failures",
            "TLS handshakes that failed (unknown server name, no SNI, protocol errors, timeouts)",
            metrics.handshake_failures.clone(),
        );
        registry.register(
            "iafactory_appliance_gateway_upstream_connect_failures",
            "Connections to a tenant's API replica that failed (the replica is then skipped for a while)",
            metrics.connect_failures.clone(),
        );
        registry.register(
            "iafactory_appliance_gateway_retries",
            "Requests sent to another replica after a refused connection",
            metrics.retries.clone(),
        );
        metrics
    }

    fn tenant(family: &Family<TenantLabel, Counter>, tenant: &str) {
        family
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    fn count(&self, tenant: &str, code: StatusCode) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.to_owned(),
                code: code.as_u16(),
            })
            .inc();
    }
}

pub(super) fn tls_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, GatewayError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

pub(super) struct ProxyState {
    routes: SharedRoutes,
    client: Client<HttpConnector, Unsent>,
    metrics: GatewayMetrics,
    balancer: Arc<Balancer>,
}

impl ProxyState {
    pub(super) fn new(
        routes: SharedRoutes,
        metrics: GatewayMetrics,
        settings: &GatewaySettings,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.upstream_connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Arc::new(Self {
            routes,
            client,
            metrics,
            balancer: Balancer::new(settings.replica_eject_for),
        })
    }
}

pub(super) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<ProxyState>,
    handshake_timeout: Duration,
    conns: Arc<Listener>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            () = conns.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accepting an HTTPS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the cap: closed now, before any TLS work is spent on it.
        let Some(admitted) = conns.admit(peer) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    state.metrics.handshake_failures.inc();
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    state.metrics.handshake_failures.inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let sni = tls.get_ref().1.server_name().map(normalise_host);
            let service = service_fn(move |request| {
                let state = state.clone();
                let sni = sni.clone();
                async move { Ok::<_, Infallible>(forward(&state, peer, sni.as_deref(), request).await) }
            });
            conns.serve(admitted, peer, tls, service).await;
        });
    }
    drop(listener);
    conns.drain().await;
}

/// Routes one request and streams it to its upstream; every failure is an HTTP answer.
async fn forward(
    state: &ProxyState,
    peer: SocketAddr,
    sni: Option<&str>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
    let Some(host) = host else {
        state.metrics.count("", StatusCode::BAD_REQUEST);
        return plain(
            StatusCode::BAD_REQUEST,
            "the request names no host".to_owned(),
        );
    };
    let host_name = normalise_host(&host);
    if sni != Some(host_name.as_str()) {
        state.metrics.count("", StatusCode::MISDIRECTED_REQUEST);
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this connection was opened for {}, not for {host_name}; open a new connection for {host_name}",
                sni.unwrap_or("no server name")
            ),
        );
    }
    let routes = state.routes.current();
    let (tenant, replicas) = match routes.route(&host_name) {
        Ok(found) => found,
        Err(miss) => {
            let status = match miss {
                RouteMiss::UnknownTenant { .. } => StatusCode::NOT_FOUND,
                RouteMiss::ForeignHost { .. } => StatusCode::MISDIRECTED_REQUEST,
            };
            state.metrics.count("", status);
            return plain(status, miss.to_string());
        }
    };

    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    remove_hop_by_hop(&mut parts.headers);
    let mut headers = parts.headers;
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(header::HOST, value.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Ok(value) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    let outgoing = Outgoing {
        method: parts.method,
        path,
        headers,
        body: Unsent::slot(body),
    };

    let mut tried = Vec::new();
    loop {
        let Some((index, in_flight)) = state.balancer.pick(replicas, &tried) else {
            // Unreachable: the first pick always finds a replica, and a retry is only
            // made when another one is left.
            state.metrics.count(tenant, StatusCode::BAD_GATEWAY);
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("tenant {tenant:?}: no API replica left to try"),
            );
        };
        tried.push(index);
        let upstream = &replicas[index];
        let request = match outgoing.request(upstream) {
            Ok(request) => request,
            Err(err) => {
                state.metrics.count(tenant, StatusCode::BAD_REQUEST);
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("unusable request path: {err}"),
                );
            }
        };
        match state.client.request(request).await {
            Ok(response) => {
                state.balancer.mark_up(upstream);
                let (mut parts, body) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                state.metrics.count(tenant, parts.status);
                let body = Counted {
                    body,
                    _in_flight: in_flight,
                };
                return Response::from_parts(parts, body.boxed());
            }
            Err(err) => {
                drop(in_flight);
                let reason = error_chain(&err);
                if err.is_connect() {
                    state.balancer.mark_down(upstream);
                    GatewayMetrics::tenant(&state.metrics.connect_failures, tenant);
                    let retry = tried.len() < replicas.len().min(2) && outgoing.body.unsent();
                    tracing::warn!(tenant, %upstream, error = %reason, retry, "cannot connect to an API replica");
                    if retry {
                        GatewayMetrics::tenant(&state.metrics.retries, tenant);
                        continue;
                    }
                } else {
                    tracing::warn!(tenant, %upstream, error = %reason, "upstream request failed");
                }
                state.metrics.count(tenant, StatusCode::BAD_GATEWAY);
                let message = if err.is_connect() {
                    format!(
                        "tenant {tenant:?}: its API at {upstream} is unreachable ({reason}); check that the tenant is running (iafactory status {tenant})"
                    )
                } else {
                    format!("tenant {tenant:?}: its API at {upstream} failed to answer ({reason})")
                };
                return plain(StatusCode::BAD_GATEWAY, message);
            }
        }
    }
}

/// What is sent upstream, kept so that a refused connection can be retried elsewhere.
struct Outgoing {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Unsent,
}

impl Outgoing {
    fn request(&self, upstream: &Upstream) -> Result<Request<Unsent>, http::Error> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(upstream.authority().clone())
            .path_and_query(self.path.as_str())
            .build()?;
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(uri)
            .version(Version::HTTP_11)
            .body(self.body.clone())?;
        *request.headers_mut() = self.headers.clone();
        Ok(request)
    }
}

/// The client's request body, shared between attempts: the first attempt that reads it
/// takes it. While nobody has, [`Unsent::unsent`] holds and a retry may send it.
struct Unsent {
    slot: Arc<Mutex<Option<Incoming>>>,
    taken: Option<Incoming>,
    /// The body's own answers, before anyone reads it (hyper frames the request by them).
    end_stream: bool,
    size_hint: SizeHint,
}

impl Unsent {
    fn slot(body: Incoming) -> Self {
        Self {
            end_stream: body.is_end_stream(),
            size_hint: body.size_hint(),
            slot: Arc::new(Mutex::new(Some(body))),
            taken: None,
        }
    }

    fn unsent(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl Clone for Unsent {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            taken: None,
            end_stream: self.end_stream,
            size_hint: self.size_hint,
        }
    }
}

impl Body for Unsent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            this.taken = this
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Another attempt read it; never the case, as retries only follow unsent ones.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.taken
            .as_ref()
            .map_or(self.end_stream, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.taken.as_ref().map_or(self.size_hint, Body::size_hint)
    }
}

/// A response body that keeps its request counted in flight on its replica until the
/// last frame is sent (or the client goes away): a long stream is a busy replica.
struct Counted {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A short text answer of the appliance itself (an error, a refusal).
pub(crate) fn plain(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), including any the
/// `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private-hop"),
            ("keep-alive", "timeout=5"),
            ("x-private-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Bearer tenant-token"),
            ("content-type", "application/json"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type"]);
    }
}

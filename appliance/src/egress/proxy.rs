//! One tenant's forward proxy: HTTP/1.1 `CONNECT host:port` (HTTPS providers, the
//! TLS stays end to end between the API and the provider) and absolute-form requests
//! (`GET http://host:port/...`, plain-HTTP providers). Every request is checked against
//! the tenant's [`TenantPolicy`]: a peer outside the tenant's subnet, an undeclared
//! host:port, or a declared name that resolves only to addresses the provider may not
//! have, gets 403, is logged and counted.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::metrics::{EgressMetrics, Outcome};
use super::policy::TenantPolicy;

type Body = BoxBody<Bytes, hyper::Error>;

/// How long resolving and connecting to a provider may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that concern one hop only, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// The policy a listener enforces, replaced in place when the plan changes.
pub type SharedPolicy = Arc<RwLock<TenantPolicy>>;

/// Accepts until `cancel` fires; each connection is served on its own task.
pub async fn run(
    listener: TcpListener,
    policy: SharedPolicy,
    metrics: EgressMetrics,
    cancel: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("egress proxy: cannot accept: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let policy = policy.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                handle(request, peer, policy.clone(), metrics.clone())
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(%peer, "egress proxy connection: {error}");
            }
        });
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = crate::gateway::plain(status, message);
    // A refused client gets no second try on the same connection (nor do the bytes it
    // sent after a refused CONNECT count as a request of their own).
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The host and port a request asks for: CONNECT's authority, or an absolute
/// `http://` URI's. None: not a proxy request this proxy serves.
fn destination(request: &Request<Incoming>) -> Option<(String, u16)> {
    let uri = request.uri();
    let authority = uri.authority()?;
    if request.method() == Method::CONNECT {
        return Some((authority.host().to_owned(), authority.port_u16()?));
    }
    (uri.scheme_str() == Some("http")).then(|| {
        (
            authority.host().to_owned(),
            authority.port_u16().unwrap_or(80),
        )
    })
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    policy: SharedPolicy,
    metrics: EgressMetrics,
) -> Result<Response<Body>, Infallible> {
    let current = policy
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let tenant = current.tenant.as_str();
    let refuse = |outcome: Outcome, target: &str, why: String| {
        metrics.count(tenant, outcome);
        tracing::warn!(tenant, %peer, destination = target, "egress refused: {why}");
        Ok(text(
            StatusCode::FORBIDDEN,
            format!("egress of tenant {tenant:?} refused: {why}"),
        ))
    };
    if !current.admits(peer.ip()) {
        return refuse(
            Outcome::RefusedSource,
            &request.uri().to_string(),
            format!("{} is not a container of this tenant's network", peer.ip()),
        );
    }
    let Some((host, port)) = destination(&request) else {
        metrics.count(tenant, Outcome::BadRequest);
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "this is the tenant's egress proxy: use CONNECT host:port, or an absolute http:// URI"
                .into(),
        ));
    };
    let target = format!("{host}:{port}");
    let Some(provider) = current.provider(&host, port) else {
        return refuse(
            Outcome::RefusedDestination,
            &target,
            format!("{target} is not one of the tenant's llmProviders"),
        );
    };
    // Resolved here, and connected to the very address checked: no second lookup a
    // rebinding DNS server could answer differently.
    let lookup_host = host.trim_matches(['[', ']']).to_owned();
    let resolved = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::lookup_host((lookup_host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
        Ok(Err(error)) => {
            metrics.count(tenant, Outcome::Failed);
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                format!("cannot resolve {host}: {error}"),
            ));
        }
        Err(_) => {
            metrics.count(tenant, Outcome::Failed);
            return Ok(text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("resolving {host} timed out"),
            ));
        }
    };
    let permitted: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|a| provider.permits(a.ip()))
        .collect();
    if permitted.is_empty() {
        let seen: Vec<IpAddr> = resolved.iter().map(SocketAddr::ip).collect();
        return refuse(
            Outcome::RefusedAddress,
            &target,
            format!(
                "{host} resolves to {seen:?}, none of which provider {:?} may have (declare its cidrs to reach a private address)",
                provider.name
            ),
        );
    }
    let upstream = match connect(&permitted).await {
        Ok(stream) => stream,
        Err(error) => {
            metrics.count(tenant, Outcome::Failed);
            tracing::warn!(tenant, %peer, destination = %target, "egress: cannot connect: {error}");
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                format!("cannot connect to {target}: {error}"),
            ));
        }
    };
    metrics.count(tenant, Outcome::Allowed);
    tracing::debug!(tenant, %peer, destination = %target, provider = %provider.name, "egress allowed");
    if request.method() == Method::CONNECT {
        tokio::spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    let mut upstream = upstream;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(error) => tracing::debug!("egress: the CONNECT upgrade failed: {error}"),
            }
        });
        return Ok(Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    Ok(forward(request, upstream, &target).await)
}

async fn connect(addresses: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last = Some(error),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {address} timed out"),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

/// Sends a plain-HTTP request on to the provider, in origin form, and streams the
/// answer back.
async fn forward(
    mut request: Request<Incoming>,
    upstream: TcpStream,
    target: &str,
) -> Response<Body> {
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(pair) => pair,
            Err(error) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot speak HTTP to {target}: {error}"),
                );
            }
        };
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("egress upstream connection: {error}");
        }
    });
    let origin = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(authority) = request.uri().authority().cloned()
        && !request.headers().contains_key(header::HOST)
        && let Ok(value) = header::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    *request.uri_mut() = origin
        .parse::<Uri>()
        .unwrap_or_else(|_| Uri::from_static("/"));
    for name in HOP_BY_HOP {
        request.headers_mut().remove(name);
    }
    match sender.send_request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(error) => text(
            StatusCode::BAD_GATEWAY,
            format!("{target} did not answer: {error}"),
        ),
    }
}

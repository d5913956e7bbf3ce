//! What every client connection of the gateway goes through, on both listeners: a
//! connection cap (overall and per client address), hyper with a timer (so the
//! header-read timeout and HTTP/2 keep-alive pings are live), and an idle timeout that
//! closes a connection carrying no request.
//!
//! - **Caps:** a connection beyond [`GatewaySettings::max_connections_per_client`] from
//!   one address, or beyond [`GatewaySettings::max_connections`] in all, is closed as
//!   soon as it is accepted (before TLS), and counted in
//!   `iafactory_appliance_gateway_connections_refused_total{listener,reason}`.
//! - **Header-read timeout (HTTP/1):** hyper's; the whole request head must arrive
//!   within [`GatewaySettings::header_read_timeout`] of the moment the connection
//!   waits for it (a new connection, or a kept-alive one between requests).
//! - **Idle timeout (HTTP/1 and HTTP/2):** a connection with no request in flight for
//!   [`GatewaySettings::idle_timeout`] is shut down gracefully, then dropped if it does
//!   not close by itself. A request is in flight from its head's arrival until the last
//!   byte of its response is sent (a long server-sent event stream keeps its
//!   connection). HTTP/2 frames that never complete a request (a dripped HEADERS frame)
//!   do not count as activity.
//! - **HTTP/2 keep-alive:** a ping every [`GatewaySettings::http2_keep_alive_interval`];
//!   a peer that does not answer within [`GatewaySettings::keep_alive_timeout`] is
//!   dropped.
//!
//! Timeouts are counted in `iafactory_appliance_gateway_connection_timeouts_total{listener,kind}`
//! and open connections in `iafactory_appliance_gateway_open_connections{listener}`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::GatewaySettings;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: &'static str,
    /// `per_client` or `total`.
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    listener: &'static str,
    /// `header_read` (hyper's HTTP/1 head timeout) or `idle` (no request in flight).
    kind: &'static str,
}

/// The connection counters, shared by both listeners.
#[derive(Debug, Clone, Default)]
pub struct ConnMetrics {
    refused: Family<RefusedLabels, Counter>,
    open: Family<ListenerLabel, Gauge>,
    timeouts: Family<TimeoutLabels, Counter>,
}

impl ConnMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "iafactory_appliance_gateway_connections_refused",
            "Connections closed on accept because the client address, or the gateway as a whole, was at its connection cap",
            metrics.refused.clone(),
        );
        registry.register(
            "iafactory_appliance_gateway_open_connections",
            "Client connections open on each listener",
            metrics.open.clone(),
        );
        registry.register(
            "iafactory_appliance_gateway_connection_timeouts",
            "Client connections closed by the header-read or idle timeout",
            metrics.timeouts.clone(),
        );
        metrics
    }

    fn timeout(&self, listener: &'static str, kind: &'static str) {
        self.timeouts
            .get_or_create(&TimeoutLabels { listener, kind })
            .inc();
    }
}

/// Why a connection was refused on accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    PerClient,
    Total,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::PerClient => "per_client",
            Self::Total => "total",
        }
    }
}

/// The connection caps, across both listeners: a client cannot get around the cap by
/// opening its connections on port 80.
#[derive(Debug)]
pub(super) struct ConnLimits {
    per_client: usize,
    total: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: ConnMetrics,
}

impl ConnLimits {
    pub(super) fn new(settings: &GatewaySettings, metrics: ConnMetrics) -> Arc<Self> {
        Arc::new(Self {
            per_client: settings.max_connections_per_client,
            total: settings.max_connections,
            open: Mutex::new((0, HashMap::new())),
            metrics,
        })
    }

    /// Decides, without side effects, whether one more connection from a client that
    /// has `from_client` open may come in while the gateway has `total` open.
    pub(super) fn decide(
        from_client: usize,
        total: usize,
        per_client_cap: usize,
        total_cap: usize,
    ) -> Result<(), Refusal> {
        if total >= total_cap {
            Err(Refusal::Total)
        } else if from_client >= per_client_cap {
            Err(Refusal::PerClient)
        } else {
            Ok(())
        }
    }

    /// A slot for one connection from `ip`, or the refusal (counted).
    fn admit(self: &Arc<Self>, ip: IpAddr, listener: &'static str) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_client = open.1.get(&ip).copied().unwrap_or(0);
        if let Err(refusal) = Self::decide(from_client, open.0, self.per_client, self.total) {
            drop(open);
            self.metrics
                .refused
                .get_or_create(&RefusedLabels {
                    listener,
                    reason: refusal.label(),
                })
                .inc();
            return Err(refusal);
        }
        open.0 += 1;
        *open.1.entry(ip).or_insert(0) += 1;
        drop(open);
        self.metrics
            .open
            .get_or_create(&ListenerLabel { listener })
            .inc();
        Ok(Slot {
            limits: self.clone(),
            ip,
            listener,
        })
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
struct Slot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    listener: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(count) = open.1.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&self.ip);
            }
        }
        drop(open);
        self.limits
            .metrics
            .open
            .get_or_create(&ListenerLabel {
                listener: self.listener,
            })
            .dec();
    }
}

/// The connections of one listener, so that its shutdown can wait for them.
#[derive(Debug, Default)]
struct OpenSet {
    count: AtomicUsize,
    closed: Notify,
}

#[derive(Debug)]
struct OpenGuard(Arc<OpenSet>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

/// One listener's accept loop and its connections' rules.
pub(super) struct Listener {
    name: &'static str,
    limits: Arc<ConnLimits>,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    shutdown_grace: Duration,
    open: Arc<OpenSet>,
    cancel: CancellationToken,
}

/// A connection the listener admitted: the caller sets it up (TLS), then [`Self::serve`]s it.
pub(super) struct Admitted {
    slot: Slot,
    open: OpenGuard,
}

impl Listener {
    pub(super) fn new(
        name: &'static str,
        limits: Arc<ConnLimits>,
        settings: &GatewaySettings,
        cancel: CancellationToken,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(settings.http2_keep_alive_interval)
            .keep_alive_timeout(settings.keep_alive_timeout);
        Self {
            name,
            limits,
            builder,
            idle_timeout: settings.idle_timeout,
            shutdown_grace: settings.shutdown_grace,
            open: Arc::default(),
            cancel,
        }
    }

    /// Resolves once the gateway is shutting down.
    pub(super) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether a connection from `peer` may come in; `None` (counted): close it now.
    pub(super) fn admit(&self, peer: SocketAddr) -> Option<Admitted> {
        match self.limits.admit(peer.ip(), self.name) {
            Ok(slot) => {
                self.open.count.fetch_add(1, Ordering::SeqCst);
                Some(Admitted {
                    slot,
                    open: OpenGuard(self.open.clone()),
                })
            }
            Err(refusal) => {
                tracing::debug!(%peer, listener = self.name, ?refusal, "connection refused: at the connection cap");
                None
            }
        }
    }

    /// Serves HTTP on `io` until the client leaves, a timeout closes it, or shutdown.
    pub(super) async fn serve<IO, S, B>(
        &self,
        admitted: Admitted,
        peer: SocketAddr,
        io: IO,
        service: S,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let Admitted { slot, open } = admitted;
        let activity = Arc::new(Activity::new());
        let tracked = Tracked {
            inner: service,
            activity: activity.clone(),
        };
        let connection = self.builder.serve_connection(TokioIo::new(io), tracked);
        tokio::pin!(connection);
        // Set once the connection is asked to close: the moment after which it is dropped.
        let mut closing: Option<Instant> = None;
        let outcome = loop {
            let idle_check = activity.idle_deadline(self.idle_timeout);
            tokio::select! {
                outcome = connection.as_mut() => break Some(outcome),
                () = self.cancel.cancelled(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + self.shutdown_grace);
                }
                () = tokio::time::sleep_until(idle_check), if closing.is_none() => {
                    if activity.idle_for(self.idle_timeout) {
                        self.limits.metrics.timeout(self.name, "idle");
                        tracing::debug!(%peer, listener = self.name, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        // A client half-way through a request head does not get to
                        // finish it: a short grace, then the connection goes.
                        closing = Some(Instant::now() + IDLE_CLOSE_GRACE);
                    }
                }
                () = tokio::time::sleep_until(closing.unwrap_or_else(Instant::now)), if closing.is_some() => {
                    break None;
                }
            }
        };
        match outcome {
            Some(Err(err)) => {
                if is_header_timeout(&*err) {
                    self.limits.metrics.timeout(self.name, "header_read");
                    tracing::debug!(%peer, listener = self.name, "request head not received in time");
                } else {
                    tracing::debug!(%peer, listener = self.name, error = %err, "connection ended with an error");
                }
            }
            Some(Ok(())) => {}
            None => {
                tracing::debug!(%peer, listener = self.name, "connection dropped after its close grace")
            }
        }
        drop(slot);
        drop(open);
    }

    /// After [`CancellationToken::cancel`]: waits (up to the shutdown grace) for this
    /// listener's connections to close.
    pub(super) async fn drain(&self) {
        let wait = async {
            loop {
                let closed = self.open.closed.notified();
                if self.open.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                closed.await;
            }
        };
        if tokio::time::timeout(self.shutdown_grace + Duration::from_secs(1), wait)
            .await
            .is_err()
        {
            tracing::warn!(
                listener = self.name,
                "gateway shutdown: some connections were still open after the grace period"
            );
        }
    }
}

/// How long a connection closed for idleness may take to go by itself.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

fn is_header_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Requests in flight on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new((0, Instant::now())),
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        InFlight(self.clone())
    }

    /// When to look again: the moment the connection would have been idle long enough.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight > 0 {
            Instant::now() + idle
        } else {
            since + idle
        }
    }

    fn idle_for(&self, idle: Duration) -> bool {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight == 0 && since.elapsed() >= idle
    }
}

/// One request in flight, from its head until its response's last frame.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= 1;
        state.1 = Instant::now();
    }
}

/// The service, with each request counted in flight.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ActiveBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| ActiveBody {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub(super) struct ActiveBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for ActiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_refuse_beyond_their_limits() {
        assert_eq!(ConnLimits::decide(0, 0, 2, 10), Ok(()));
        assert_eq!(ConnLimits::decide(1, 9, 2, 10), Ok(()));
        assert_eq!(ConnLimits::decide(2, 5, 2, 10), Err(Refusal::PerClient));
        assert_eq!(ConnLimits::decide(0, 10, 2, 10), Err(Refusal::Total));
    }

    #[test]
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let mut settings = GatewaySettings::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        );
        settings.max_connections_per_client = 2;
        settings.max_connections = 3;
        let limits = ConnLimits::new(&settings, ConnMetrics::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a, "https").unwrap();
        let _second = limits.admit(a, "http").unwrap();
        assert_eq!(limits.admit(a, "https").unwrap_err(), Refusal::PerClient);
        let _third = limits.admit(b, "https").unwrap();
        assert_eq!(limits.admit(b, "https").unwrap_err(), Refusal::Total);
        drop(first);
        assert!(limits.admit(a, "https").is_ok());
    }
}

//! `iafactory_appliance_egress_requests_total{tenant,outcome}`: every request an open
//! tenant's egress proxy decided, so refusals can be alerted on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// What became of one proxy request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Tunnelled or forwarded to a declared provider.
    Allowed,
    /// The host:port is not one of the tenant's providers.
    RefusedDestination,
    /// The provider's name resolved only to addresses it may not have.
    RefusedAddress,
    /// The peer is not a container of the tenant's network.
    RefusedSource,
    /// Not a proxy request (neither CONNECT nor an absolute http:// URI).
    BadRequest,
    /// Allowed, but resolving or connecting failed.
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::RefusedDestination => "refused_destination",
            Self::RefusedAddress => "refused_address",
            Self::RefusedSource => "refused_source",
            Self::BadRequest => "bad_request",
            Self::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    tenant: String,
    outcome: String,
}

#[derive(Clone, Debug, Default)]
pub struct EgressMetrics {
    requests: Family<Labels, Counter>,
}

impl EgressMetrics {
    pub const REQUESTS_METRIC: &'static str = "iafactory_appliance_egress_requests";

    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            Self::REQUESTS_METRIC,
            "Requests to the egress proxy of open tenants, by tenant and outcome (allowed, refused_destination, refused_address, refused_source, bad_request, failed)",
            metrics.requests.clone(),
        );
        metrics
    }

    pub fn count(&self, tenant: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&Labels {
                tenant: tenant.to_owned(),
                outcome: outcome.label().to_owned(),
            })
            .inc();
    }
}

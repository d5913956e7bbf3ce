//! The certificate expiry gauge, so alerts fire before a certificate lapses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabel {
    domain: String,
}

/// `iafactory_appliance_certificate_expiry_timestamp_seconds{domain}`.
#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    expiry: Family<DomainLabel, Gauge>,
}

impl CertMetrics {
    pub const EXPIRY_METRIC: &'static str =
        "iafactory_appliance_certificate_expiry_timestamp_seconds";

    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            Self::EXPIRY_METRIC,
            "notAfter of the certificate the gateway serves for this domain, in seconds since the epoch",
            metrics.expiry.clone(),
        );
        metrics
    }

    pub fn set_expiry(&self, domain: &str, not_after_unix: i64) {
        self.expiry
            .get_or_create(&DomainLabel {
                domain: domain.to_owned(),
            })
            .set(not_after_unix);
    }
}

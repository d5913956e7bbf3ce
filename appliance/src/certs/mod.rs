//! TLS certificates for the gateway: issued by ACME (HTTP-01), by a local CA the
//! appliance generates, or provided by the site; stored on disk, renewed ahead of
//! expiry and hot-swapped into the gateway without dropping a connection.
//!
//! # What the caller wires together (`iafactory serve`)
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use iafactory_appliance::certs::{
//!     AcmeSettings, CertManager, CertResolver, CertSettings, CertSource, ChallengeStore,
//! };
//! let mut registry = prometheus_client::registry::Registry::default();
//! let resolver = Arc::new(CertResolver::default());
//! let challenges = ChallengeStore::default();
//! let manager = Arc::new(CertManager::new(
//!     CertSettings {
//!         dir: "/var/lib/iafactory/certs".into(),
//!         source: CertSource::Acme(AcmeSettings::lets_encrypt(Some("ops@example.dz".into()))),
//!         renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
//!     },
//!     resolver.clone(),
//!     challenges.clone(),
//!     &mut registry,
//! )?);
//! let hosts = vec!["alpha.example.dz".to_string()];
//! // Serve what is already on disk at once, then start the gateway (its HTTP listener
//! // answers the HTTP-01 challenges from `challenges`), then issue what is missing:
//! for (host, err) in manager.install_stored(&hosts) { eprintln!("{host}: {err}"); }
//! // ... iafactory_appliance::gateway::Gateway::start(.., resolver, challenges, ..) ...
//! for (host, outcome) in manager.ensure_all(&hosts).await { println!("{host}: {outcome:?}"); }
//! // And keep them renewed (it returns when `cancel` is cancelled):
//! let cancel = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(manager.clone().run_renewals(move || hosts.clone(), Duration::from_secs(3600), cancel.clone()));
//! # Ok(()) }
//! ```
//!
//! - [`CertResolver`] is the gateway's rustls certificate resolver: one certificate per
//!   host name (exact match, then a `*.` wildcard one level up). Replacing a host's
//!   certificate only affects later handshakes; open connections keep theirs.
//! - [`CertManager::ensure`] decides with the pure [`renewal_decision`] (renew when
//!   `renew_before`, 30 days by default, or less remain) and obtains a new certificate
//!   from its [`CertSource`] when needed.
//! - On disk ([`CertStore`]): `DIR/hosts/HOST.pem` holds the private key and the chain in
//!   one file, mode 0600, written to a temporary file and renamed, so a crash never
//!   leaves a key paired with the wrong certificate. Directories are 0700. The ACME
//!   account lives in `DIR/acme/`, the local CA in `DIR/local-ca/` (its `ca.pem` is what
//!   the site's clients must trust).
//! - The gauge `iafactory_appliance_certificate_expiry_timestamp_seconds{domain}` gives
//!   each served certificate's `notAfter`; it is registered in the caller's registry
//!   under that exact name (use a registry without a prefix).

mod acme;
mod challenges;
mod local_ca;
mod manager;
mod material;
mod metrics;
mod renewal;
mod resolver;
mod store;

use std::path::PathBuf;

pub use acme::AcmeSettings;
pub use challenges::ChallengeStore;
pub use local_ca::LocalCa;
pub use manager::{CertManager, CertOutcome, CertSettings, CertSource};
pub use material::{ParsedCertificate, parse_certificate};
pub use metrics::CertMetrics;
pub use renewal::{RenewalDecision, renewal_decision};
pub use resolver::CertResolver;
pub use store::CertStore;

/// Everything that can go wrong with a certificate, naming the host or file involved.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{host:?} is not a host name a certificate can be issued for: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "malformed certificate file {path}: {reason}. Replace it with a PEM file holding the private key and the certificate chain, or remove it so the appliance issues a new one"
    )]
    Malformed { path: PathBuf, reason: String },
    #[error("the certificate in {path} is for {names:?}, not for {host}")]
    NotCovered {
        path: PathBuf,
        host: String,
        names: Vec<String>,
    },
    #[error("ACME {step} for {host} failed: {source}")]
    Acme {
        host: String,
        step: &'static str,
        #[source]
        source: instant_acme::Error,
    },
    #[error("the ACME server refused the certificate for {host}: {detail}")]
    AcmeRefused { host: String, detail: String },
    #[error(
        "ACME account file {path} is unreadable: {reason}; remove it to register a new account"
    )]
    AcmeAccount { path: PathBuf, reason: String },
    #[error("the local CA could not {action}: {source}")]
    LocalCa {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// Checks that `host` is a DNS name (so it is also a safe file name) and returns it in
/// lower case.
pub(crate) fn checked_host(host: &str) -> Result<String, CertError> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let invalid = |reason: &str| CertError::InvalidHost {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    if lower.contains('*') {
        return Err(invalid(
            "wildcards cannot be validated over HTTP-01; provide a wildcard certificate instead",
        ));
    }
    if !lower.contains('.') {
        return Err(invalid("it has no domain part"));
    }
    rustls::pki_types::DnsName::try_from(lower.as_str())
        .map_err(|err| invalid(&err.to_string()))?;
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_and_lowered() {
        assert_eq!(
            checked_host("Alpha.Example.DZ.").unwrap(),
            "alpha.example.dz"
        );
        for bad in [
            "../etc/passwd",
            "a/b.example.dz",
            "*.example.dz",
            "localhost",
            "",
            "a..b",
        ] {
            assert!(
                matches!(checked_host(bad), Err(CertError::InvalidHost { .. })),
                "{bad:?} accepted"
            );
        }
    }
}

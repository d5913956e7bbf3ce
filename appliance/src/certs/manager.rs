//! Keeps every host's certificate present and fresh: loads what is stored, asks the
//! configured source for a new one when [`renewal_decision`] says so, stores it, swaps
//! it into the resolver and updates the expiry gauge.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::acme::AcmeIssuer;
use super::local_ca::LEAF_VALIDITY;
use super::material::{ParsedCertificate, parse_certificate};
use super::renewal::{RenewalDecision, renewal_decision};
use super::{
    AcmeSettings, CertError, CertMetrics, CertResolver, CertStore, ChallengeStore, LocalCa,
    checked_host,
};

/// Where certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Ordered from an ACME server over HTTP-01.
    Acme(AcmeSettings),
    /// Issued by a CA the appliance generates in `DIR/local-ca` (air-gapped sites).
    LocalCa,
    /// One certificate provided by the site (typically `*.DOMAIN`), read from these PEM
    /// files at every check, so replacing the files is picked up without a restart.
    Provided { chain: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSettings {
    /// The certificate directory (created 0700).
    pub dir: PathBuf,
    pub source: CertSource,
    /// Renew when this much validity or less remains.
    pub renew_before: Duration,
}

impl CertSettings {
    pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
}

/// What [`CertManager::ensure`] did for a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOutcome {
    /// The stored certificate is still good; it is being served.
    Kept { not_after: SystemTime },
    /// A new certificate was obtained, stored and is now served.
    Issued {
        not_after: SystemTime,
        /// Where an unusable stored file was moved aside, if there was one.
        replaced_malformed: Option<PathBuf>,
    },
    /// The provided certificate is served as is; it is inside the renewal window and
    /// only the site can replace it.
    ProvidedExpiring { not_after: SystemTime },
}

enum Issuer {
    Acme(AcmeIssuer),
    LocalCa(LocalCa),
    Provided { chain: PathBuf, key: PathBuf },
}

pub struct CertManager {
    store: CertStore,
    issuer: Issuer,
    renew_before: Duration,
    resolver: Arc<CertResolver>,
    metrics: CertMetrics,
    /// One issuance at a time: ACME orders share an account and the CA rate limits.
    issuing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("dir", &self.store.dir())
            .field("renew_before", &self.renew_before)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Opens the certificate directory and the source (creating the local CA or loading
    /// it), and registers the expiry gauge in `registry`.
    pub fn new(
        settings: CertSettings,
        resolver: Arc<CertResolver>,
        challenges: ChallengeStore,
        registry: &mut Registry,
    ) -> Result<Self, CertError> {
        let store = CertStore::open(&settings.dir)?;
        let issuer = match settings.source {
            CertSource::Acme(acme) => Issuer::Acme(AcmeIssuer::new(
                acme,
                &settings.dir.join("acme"),
                challenges,
            )?),
            CertSource::LocalCa => {
                Issuer::LocalCa(LocalCa::load_or_create(&settings.dir.join("local-ca"))?)
            }
            CertSource::Provided { chain, key } => Issuer::Provided { chain, key },
        };
        Ok(Self {
            store,
            issuer,
            renew_before: settings.renew_before,
            resolver,
            metrics: CertMetrics::register(registry),
            issuing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// The local CA, when that is the source: its certificate is what clients trust.
    pub fn local_ca(&self) -> Option<&LocalCa> {
        match &self.issuer {
            Issuer::LocalCa(ca) => Some(ca),
            _ => None,
        }
    }

    /// Serves whatever usable certificate is already stored (or provided) for `hosts`,
    /// without contacting anyone: call it before starting the gateway. Returns the hosts
    /// whose certificate could not be used, with why.
    pub fn install_stored(&self, hosts: &[String]) -> Vec<(String, CertError)> {
        let mut failures = Vec::new();
        for host in hosts {
            let loaded = match &self.issuer {
                Issuer::Provided { chain, key } => load_provided(chain, key, host).map(Some),
                _ => self.store.load(host),
            };
            match loaded {
                Ok(Some(parsed)) => self.serve(host, &parsed),
                Ok(None) => {}
                Err(err) => failures.push((host.clone(), err)),
            }
        }
        failures
    }

    /// Makes sure `host` has a served certificate with more than `renew_before` left,
    /// obtaining one if needed.
    #[tracing::instrument(skip(self))]
    pub async fn ensure(&self, host: &str) -> Result<CertOutcome, CertError> {
        let host = checked_host(host)?;
        if let Issuer::Provided { chain, key } = &self.issuer {
            let parsed = load_provided(chain, key, &host)?;
            self.serve(&host, &parsed);
            return Ok(
                match renewal_decision(Some(parsed.not_after), SystemTime::now(), self.renew_before)
                {
                    RenewalDecision::Renew { remaining } => {
                        tracing::warn!(
                            host,
                            days_left = remaining.as_secs() / 86_400,
                            "the provided certificate expires soon; replace its files"
                        );
                        CertOutcome::ProvidedExpiring {
                            not_after: parsed.not_after,
                        }
                    }
                    _ => CertOutcome::Kept {
                        not_after: parsed.not_after,
                    },
                },
            );
        }
        let _one_at_a_time = self.issuing.lock().await;
        let (stored, replaced_malformed) = match self.store.load(&host) {
            Ok(stored) => (stored, None),
            Err(err @ (CertError::Malformed { .. } | CertError::NotCovered { .. })) => {
                let aside = self.store.quarantine(&host)?;
                tracing::warn!(host, error = %err, moved_to = %aside.display(), "stored certificate unusable; issuing a new one");
                (None, Some(aside))
            }
            Err(err) => return Err(err),
        };
        let decision = renewal_decision(
            stored.as_ref().map(|parsed| parsed.not_after),
            SystemTime::now(),
            self.renew_before,
        );
        if let (RenewalDecision::Keep { .. }, Some(parsed)) = (decision, &stored) {
            // Serving it here too covers a certificate renewed by another process.
            self.serve(&host, parsed);
            return Ok(CertOutcome::Kept {
                not_after: parsed.not_after,
            });
        }
        tracing::info!(host, ?decision, "obtaining a certificate");
        let (chain_pem, key_pem) = match &self.issuer {
            Issuer::Acme(acme) => acme.issue(&host).await?,
            Issuer::LocalCa(ca) => ca.issue(&host, LEAF_VALIDITY)?,
            Issuer::Provided { .. } => unreachable!("handled above"),
        };
        let parsed = self.store.save(&host, &chain_pem, &key_pem)?;
        self.serve(&host, &parsed);
        tracing::info!(
            host,
            not_after = parsed.not_after_unix(),
            "certificate installed"
        );
        Ok(CertOutcome::Issued {
            not_after: parsed.not_after,
            replaced_malformed,
        })
    }

    /// [`Self::ensure`] for each host in turn; one host's failure does not stop the others.
    pub async fn ensure_all(
        &self,
        hosts: &[String],
    ) -> Vec<(String, Result<CertOutcome, CertError>)> {
        let mut outcomes = Vec::with_capacity(hosts.len());
        for host in hosts {
            outcomes.push((host.clone(), self.ensure(host).await));
        }
        outcomes
    }

    /// Runs [`Self::ensure_all`] over `hosts()` every `interval` until `cancel` fires,
    /// logging failures (they are retried at the next tick).
    pub async fn run_renewals(
        self: Arc<Self>,
        hosts: impl Fn() -> Vec<String> + Send + 'static,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for (host, outcome) in self.ensure_all(&hosts()).await {
                if let Err(err) = outcome {
                    tracing::error!(host, error = %err, "certificate check failed; retrying at the next interval");
                }
            }
        }
    }

    fn serve(&self, host: &str, parsed: &ParsedCertificate) {
        self.resolver.set(host, parsed.certified_key.clone());
        self.metrics.set_expiry(host, parsed.not_after_unix());
    }
}

fn load_provided(
    chain: &PathBuf,
    key: &PathBuf,
    host: &str,
) -> Result<ParsedCertificate, CertError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| CertError::Io {
            action: "read the provided certificate",
            path: path.clone(),
            source,
        })
    };
    let parsed = parse_certificate(&read(chain)?, &read(key)?, chain)?;
    if !parsed.covers(host) {
        return Err(CertError::NotCovered {
            path: chain.clone(),
            host: host.to_owned(),
            names: parsed.names,
        });
    }
    Ok(parsed)
}

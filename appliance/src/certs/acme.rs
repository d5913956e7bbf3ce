//! Certificates from an ACME server (Let's Encrypt, or Pebble in tests) over HTTP-01:
//! the challenge response goes into the [`ChallengeStore`], which the gateway's
//! plain-HTTP listener serves on port 80.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, LetsEncrypt,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::Mutex;

use super::store::{private_dir, write_private};
use super::{CertError, ChallengeStore};

/// Where to order certificates, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The ACME directory URL.
    pub directory_url: String,
    /// Contact address given to the CA for expiry and incident notices.
    pub contact_email: Option<String>,
    /// An extra root to trust for the ACME server's own HTTPS (a private ACME server,
    /// or Pebble); `None` trusts the system's roots.
    pub server_root_pem: Option<PathBuf>,
    /// How long to wait for the CA to validate the challenges and issue.
    pub order_timeout: Duration,
}

impl AcmeSettings {
    pub fn lets_encrypt(contact_email: Option<String>) -> Self {
        Self {
            directory_url: LetsEncrypt::Production.url().to_owned(),
            contact_email,
            server_root_pem: None,
            order_timeout: Duration::from_secs(120),
        }
    }
}

/// One ACME account (registered on first use, then kept on disk), ordering certificates.
pub(crate) struct AcmeIssuer {
    settings: AcmeSettings,
    account_path: PathBuf,
    challenges: ChallengeStore,
    account: Mutex<Option<Account>>,
}

/// Removes the challenge responses once the order is over, whatever its outcome.
struct PublishedChallenges<'a> {
    store: &'a ChallengeStore,
    tokens: Vec<String>,
}

impl Drop for PublishedChallenges<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.store.remove(token);
        }
    }
}

impl AcmeIssuer {
    pub(crate) fn new(
        settings: AcmeSettings,
        dir: &Path,
        challenges: ChallengeStore,
    ) -> Result<Self, CertError> {
        private_dir(dir)?;
        // One account per ACME server: the file name comes from the directory URL.
        let server: String = settings
            .directory_url
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Ok(Self {
            account_path: dir.join(format!("account-{server}.json")),
            settings,
            challenges,
            account: Mutex::new(None),
        })
    }

    async fn account(&self, host: &str) -> Result<Account, CertError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let acme = |step| {
            move |source| CertError::Acme {
                host: host.to_owned(),
                step,
                source,
            }
        };
        // instant-acme's HTTP client takes the process-wide rustls provider. With ring
        // alone in the build it is implied, but a dependency that also enables aws-lc-rs
        // would leave none; installing ring is a no-op when one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = match &self.settings.server_root_pem {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        }
        .map_err(acme("client setup"))?;
        let account = match fs::read(&self.account_path) {
            Ok(json) => {
                let credentials: AccountCredentials =
                    serde_json::from_slice(&json).map_err(|err| CertError::AcmeAccount {
                        path: self.account_path.clone(),
                        reason: err.to_string(),
                    })?;
                builder
                    .from_credentials(credentials)
                    .await
                    .map_err(acme("account load"))?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let contact = self
                    .settings
                    .contact_email
                    .as_ref()
                    .map(|email| format!("mailto:{email}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory_url.clone(),
                        None,
                    )
                    .await
                    .map_err(acme("account registration"))?;
                let json = serde_json::to_vec_pretty(&credentials).map_err(|err| {
                    CertError::AcmeAccount {
                        path: self.account_path.clone(),
                        reason: err.to_string(),
                    }
                })?;
                write_private(&self.account_path, &json)?;
                tracing::info!(directory = %self.settings.directory_url, "registered an ACME account");
                account
            }
            Err(source) => {
                return Err(CertError::Io {
                    action: "read",
                    path: self.account_path.clone(),
                    source,
                });
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `host`, answering HTTP-01; returns (chain PEM, key PEM).
    #[tracing::instrument(skip(self))]
    pub(crate) async fn issue(&self, host: &str) -> Result<(String, String), CertError> {
        let acme = |step| {
            move |source| CertError::Acme {
                host: host.to_owned(),
                step,
                source,
            }
        };
        let account = self.account(host).await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(acme("new order"))?;
        let mut published = PublishedChallenges {
            store: &self.challenges,
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(acme("authorization"))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(CertError::AcmeRefused {
                        host: host.to_owned(),
                        detail: format!("authorization is {other:?}"),
                    });
                }
            }
            let mut challenge =
                authorization
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| CertError::AcmeRefused {
                        host: host.to_owned(),
                        detail: "the server offers no http-01 challenge".to_owned(),
                    })?;
            let token = challenge.token.clone();
            self.challenges
                .insert(token.clone(), challenge.key_authorization().as_str());
            published.tokens.push(token);
            challenge.set_ready().await.map_err(acme("challenge"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.settings.order_timeout);
        let reachability =
            format!("check that {host} resolves to this box and that port 80 reaches the gateway");
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|err| CertError::AcmeRefused {
                host: host.to_owned(),
                detail: format!("validation failed: {err}; {reachability}"),
            })?;
        if status != OrderStatus::Ready {
            let problem = order
                .state()
                .error
                .as_ref()
                .map(|problem| problem.to_string())
                .unwrap_or_else(|| "no detail given".to_owned());
            return Err(CertError::AcmeRefused {
                host: host.to_owned(),
                detail: format!("order is {status:?} ({problem}); {reachability}"),
            });
        }
        drop(published);
        let key_pem = order.finalize().await.map_err(acme("finalize"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(acme("certificate download"))?;
        Ok((chain_pem, key_pem))
    }
}

//! The gateway's rustls certificate resolver: picks the certificate by SNI and lets the
//! manager replace one at any time. A TLS connection takes its certificate once, during
//! the handshake, so a replacement reaches new handshakes and leaves open connections
//! alone: renewal drops nothing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Host name (lower case, or `*.parent` for a wildcard) → certificate.
#[derive(Debug, Default)]
pub struct CertResolver {
    by_name: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// Serves `certified_key` for `name` from the next handshake on.
    pub fn set(&self, name: &str, certified_key: Arc<CertifiedKey>) {
        self.by_name
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_ascii_lowercase(), certified_key);
    }

    pub fn remove(&self, name: &str) {
        self.by_name
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// The certificate for `server_name`: an exact entry first, then `*.parent`.
    pub fn lookup(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = server_name.trim_end_matches('.').to_ascii_lowercase();
        let by_name = self
            .by_name
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_name.get(&name).cloned().or_else(|| {
            let (_, parent) = name.split_once('.')?;
            by_name.get(&format!("*.{parent}")).cloned()
        })
    }

    /// Names that currently have a certificate, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(server_name) = client_hello.server_name() else {
            tracing::debug!(
                "TLS handshake without SNI refused: the gateway serves host names only"
            );
            return None;
        };
        let found = self.lookup(server_name);
        if found.is_none() {
            tracing::debug!(
                server_name,
                "TLS handshake refused: no certificate for this name"
            );
        }
        found
    }
}

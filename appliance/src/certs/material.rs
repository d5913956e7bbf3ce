//! Parsing PEM certificate material into what rustls serves, and reading what the
//! certificate says about itself (its names and its expiry).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;

/// A certificate chain with its private key, checked to belong together.
#[derive(Debug, Clone)]
pub struct ParsedCertificate {
    pub certified_key: Arc<CertifiedKey>,
    /// DNS names of the leaf (subjectAltName, or the common name when there is none).
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

impl ParsedCertificate {
    /// Whether the leaf certificate is valid for `host`, wildcards included.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|name| name_matches(name, host))
    }

    /// Seconds since the epoch of `notAfter`, for the expiry gauge.
    pub fn not_after_unix(&self) -> i64 {
        match self.not_after.duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
}

/// `*.example.dz` matches exactly one label in front of `example.dz`.
pub(crate) fn name_matches(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// Parses a PEM chain (leaf first) and a PEM private key; `origin` names the file(s) in
/// errors. The key must match the leaf certificate.
pub fn parse_certificate(
    chain_pem: &[u8],
    key_pem: &[u8],
    origin: &Path,
) -> Result<ParsedCertificate, CertError> {
    let malformed = |reason: String| CertError::Malformed {
        path: origin.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| malformed(format!("unreadable PEM certificate: {err}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| malformed("no CERTIFICATE block".to_owned()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|err| malformed(format!("no usable PRIVATE KEY block: {err}")))?;
    let (_, x509) = X509Certificate::from_der(leaf)
        .map_err(|err| malformed(format!("the leaf certificate is not valid X.509: {err}")))?;
    let not_after = x509.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    let names = leaf_names(&x509);
    let signing_key = any_supported_type(&key)
        .map_err(|err| malformed(format!("unsupported private key: {err}")))?;
    let certified_key = CertifiedKey::new(chain, signing_key);
    certified_key.keys_match().map_err(|err| {
        malformed(format!(
            "the private key does not match the certificate: {err}"
        ))
    })?;
    Ok(ParsedCertificate {
        certified_key: Arc::new(certified_key),
        names,
        not_after,
    })
}

fn leaf_names(x509: &X509Certificate<'_>) -> Vec<String> {
    let from_san: Vec<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !from_san.is_empty() {
        return from_san;
    }
    x509.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn reads_names_and_expiry_and_checks_the_key() {
        let (chain, key) = self_signed(&["alpha.example.dz"]);
        let parsed = parse_certificate(chain.as_bytes(), key.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(parsed.names, ["alpha.example.dz"]);
        assert!(parsed.covers("ALPHA.example.dz"));
        assert!(!parsed.covers("beta.example.dz"));
        assert!(parsed.not_after > SystemTime::now());

        let (_, other_key) = self_signed(&["alpha.example.dz"]);
        let err = parse_certificate(chain.as_bytes(), other_key.as_bytes(), Path::new("x/a.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(err.to_string().contains("x/a.pem"), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        for (chain, key, expected) in [
            ("", "", "no CERTIFICATE"),
            ("not pem at all", "", "no CERTIFICATE"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not valid X.509",
            ),
        ] {
            let err =
                parse_certificate(chain.as_bytes(), key.as_bytes(), Path::new("f")).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        let (chain, _) = self_signed(&["alpha.example.dz"]);
        let err = parse_certificate(chain.as_bytes(), b"", Path::new("f")).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(name_matches("*.example.dz", "alpha.example.dz"));
        assert!(!name_matches("*.example.dz", "example.dz"));
        assert!(!name_matches("*.example.dz", "a.b.example.dz"));
        assert!(!name_matches("*.example.dz", ".example.dz"));
    }
}

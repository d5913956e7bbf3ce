//! Certificates on disk: permissions, the local CA, provided certificates, malformed
//! files, and the expiry gauge.

mod gateway_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_support::*;
use iafactory_appliance::certs::{
    CertError, CertManager, CertOutcome, CertResolver, CertSettings, CertSource, CertStore,
    ChallengeStore,
};
use prometheus_client::registry::Registry;

fn manager(
    dir: &std::path::Path,
    source: CertSource,
) -> (CertManager, Arc<CertResolver>, Registry) {
    let resolver = Arc::new(CertResolver::default());
    let mut registry = Registry::default();
    let manager = CertManager::new(
        CertSettings {
            dir: dir.to_path_buf(),
            source,
            renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
        },
        resolver.clone(),
        ChallengeStore::default(),
        &mut registry,
    )
    .unwrap();
    (manager, resolver, registry)
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn metrics(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn local_ca_certificates_are_stored_privately_kept_and_measured() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let (manager, resolver, registry) = manager(&certs, CertSource::LocalCa);
    let host = "alpha.example.test";

    let Ok(CertOutcome::Issued {
        not_after,
        replaced_malformed: None,
    }) = manager.ensure(host).await
    else {
        panic!("no certificate issued");
    };
    let days = not_after
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert!((88..=90).contains(&days), "{days} days");
    assert!(resolver.lookup(host).is_some());

    let key_file = manager.store().host_path(host).unwrap();
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(&certs), 0o700);
    assert_eq!(mode(&certs.join("hosts")), 0o700);
    assert_eq!(mode(&certs.join("local-ca")), 0o700);
    assert_eq!(mode(&certs.join("local-ca/ca-key.pem")), 0o600);

    // Nothing to do the second time, and the same CA after a restart.
    assert_eq!(
        manager.ensure(host).await.unwrap(),
        CertOutcome::Kept { not_after }
    );
    let ca_before = manager.local_ca().unwrap().cert_pem().to_owned();
    let (restarted, _, _) = self::manager(&certs, CertSource::LocalCa);
    assert_eq!(restarted.local_ca().unwrap().cert_pem(), ca_before);

    let expected = format!(
        r#"iafactory_appliance_certificate_expiry_timestamp_seconds{{domain="{host}"}} {}"#,
        not_after.duration_since(UNIX_EPOCH).unwrap().as_secs()
    );
    let text = metrics(&registry);
    assert!(text.contains(&expected), "{expected}\n{text}");
}

#[tokio::test]
async fn the_gateway_serves_local_ca_certificates_that_clients_verify() {
    let dir = tempfile::tempdir().unwrap();
    let alpha = TestUpstream::start("alpha").await;
    let gw = TestGateway::start(dir.path(), &[("alpha", alpha.upstream())]).await;
    let response = gw
        .client(&["alpha"])
        .get(gw.url("alpha", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A client trusting another CA refuses the gateway.
    let other = tempfile::tempdir().unwrap();
    let (other_manager, _, _) = manager(other.path(), CertSource::LocalCa);
    let stranger = https_client(
        other_manager.local_ca().unwrap().cert_pem(),
        &["alpha"],
        gw.gateway.https_addr(),
    );
    let err = stranger.get(gw.url("alpha", "/")).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_malformed_stored_certificate_is_reported_then_set_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, resolver, _) = manager(dir.path(), CertSource::LocalCa);
    let host = "alpha.example.test";
    let path = manager.store().host_path(host).unwrap();
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();

    let err = manager.store().load(host).unwrap_err();
    assert!(matches!(err, CertError::Malformed { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let failures = manager.install_stored(&[host.to_owned()]);
    assert_eq!(failures.len(), 1);
    assert!(resolver.lookup(host).is_none());

    let Ok(CertOutcome::Issued {
        replaced_malformed: Some(aside),
        ..
    }) = manager.ensure(host).await
    else {
        panic!("the malformed file was not replaced");
    };
    // The bad file is kept, byte for byte, next to the new one.
    assert!(
        std::fs::read_to_string(&aside)
            .unwrap()
            .contains("not base64!")
    );
    assert!(manager.store().load(host).unwrap().is_some());
    assert!(resolver.lookup(host).is_some());
}

#[tokio::test]
async fn a_stored_certificate_for_another_name_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (manager, resolver, _) = manager(dir.path(), CertSource::LocalCa);
    let (chain, key) = manager
        .local_ca()
        .unwrap()
        .issue("beta.example.test", Duration::from_secs(86_400 * 60))
        .unwrap();
    let path = manager.store().host_path("alpha.example.test").unwrap();
    std::fs::write(&path, format!("{key}{chain}")).unwrap();
    let err = manager.store().load("alpha.example.test").unwrap_err();
    assert!(matches!(err, CertError::NotCovered { .. }), "{err:?}");
    assert!(err.to_string().contains("beta.example.test"), "{err}");
    manager.ensure("alpha.example.test").await.unwrap();
    let served = resolver.lookup("alpha.example.test").unwrap();
    let parsed = manager.store().load("alpha.example.test").unwrap().unwrap();
    assert_eq!(served.cert[0], parsed.certified_key.cert[0]);
}

#[tokio::test]
async fn a_provided_wildcard_certificate_covers_every_tenant_and_bad_files_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["*.example.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (chain_path, key_path) = (dir.path().join("site.crt"), dir.path().join("site.key"));
    std::fs::write(&chain_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let source = CertSource::Provided {
        chain: chain_path.clone(),
        key: key_path.clone(),
    };
    let (manager, resolver, _) = manager(&dir.path().join("certs"), source);

    for host in ["alpha.example.test", "beta.example.test"] {
        assert!(matches!(
            manager.ensure(host).await.unwrap(),
            CertOutcome::Kept { .. }
        ));
        assert_eq!(resolver.lookup(host).unwrap().cert[0], *cert.der());
    }
    let err = manager.ensure("alpha.other.test").await.unwrap_err();
    assert!(matches!(err, CertError::NotCovered { .. }), "{err:?}");

    // The site replaces its files with garbage: a clear error, and the certificate
    // already served stays served.
    std::fs::write(&key_path, "this is not a key").unwrap();
    let err = manager.ensure("alpha.example.test").await.unwrap_err();
    assert!(matches!(err, CertError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    assert!(resolver.lookup("alpha.example.test").is_some());
    std::fs::remove_file(&chain_path).unwrap();
    let err = manager.ensure("alpha.example.test").await.unwrap_err();
    assert!(
        err.to_string().contains(&chain_path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_local_ca_with_a_missing_half_is_not_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("certs");
    {
        let _ = manager(&store_dir, CertSource::LocalCa);
    }
    std::fs::remove_file(store_dir.join("local-ca/ca-key.pem")).unwrap();
    let err = CertManager::new(
        CertSettings {
            dir: store_dir.clone(),
            source: CertSource::LocalCa,
            renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
        },
        Default::default(),
        ChallengeStore::default(),
        &mut Registry::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
    assert!(
        store_dir.join("local-ca/ca.pem").exists(),
        "the CA certificate was removed"
    );
}

#[test]
fn host_names_cannot_escape_the_certificate_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::open(dir.path()).unwrap();
    for host in ["../../etc/passwd", "a/b.test", "*.example.test"] {
        assert!(
            matches!(store.host_path(host), Err(CertError::InvalidHost { .. })),
            "{host}"
        );
    }
}

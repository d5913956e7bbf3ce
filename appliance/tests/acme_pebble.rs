//! ACME against the real Pebble (Let's Encrypt's test CA): real orders, real HTTP-01
//! validation of the gateway's challenge responder (Pebble resolves the names through
//! pebble-challtestsrv's DNS), certificates verified against Pebble's root, and renewal.
//! Each test runs its own Pebble and challtestsrv on free ports.

mod gateway_support;
mod pebble_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gateway_support::*;
use iafactory_appliance::certs::{
    CertError, CertManager, CertOutcome, CertResolver, CertSettings, CertSource, ChallengeStore,
    LocalCa,
};
use iafactory_appliance::gateway::{Gateway, RouteTable, SharedRoutes};
use pebble_support::Pebble;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A gateway whose certificates come from Pebble, and the Pebble validating against it.
struct AcmeSite {
    pebble: Pebble,
    gateway: Gateway,
    manager: Arc<CertManager>,
    resolver: Arc<CertResolver>,
    challenges: ChallengeStore,
    registry: Registry,
    certs: PathBuf,
    _upstream: TestUpstream,
    _dir: tempfile::TempDir,
}

impl AcmeSite {
    async fn start(hosts_to_resolve: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream = TestUpstream::start("alpha").await;
        let routes =
            SharedRoutes::new(RouteTable::new(DOMAIN).with_tenant("alpha", upstream.upstream()));
        let resolver = Arc::new(CertResolver::default());
        let challenges = ChallengeStore::default();
        let mut registry = Registry::default();
        // The gateway first: its HTTP port is the one Pebble must validate against.
        let gateway = Gateway::start(
            local_settings(),
            routes,
            resolver.clone(),
            challenges.clone(),
            &mut registry,
        )
        .await
        .unwrap();
        let pebble = Pebble::start(gateway.http_addr().port()).await;
        for host in hosts_to_resolve {
            pebble.add_a(host).await;
        }
        let certs = dir.path().join("certs");
        let manager = Arc::new(
            CertManager::new(
                CertSettings {
                    dir: certs.clone(),
                    source: CertSource::Acme(pebble.settings()),
                    renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
                },
                resolver.clone(),
                challenges.clone(),
                &mut registry,
            )
            .unwrap(),
        );
        Self {
            pebble,
            gateway,
            manager,
            resolver,
            challenges,
            registry,
            certs,
            _upstream: upstream,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://alpha.{DOMAIN}:{}{path}",
            self.gateway.https_addr().port()
        )
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }
}

const HOST: &str = "alpha.example.test";

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn a_real_order_is_validated_over_http01_and_the_gateway_serves_the_certificate() {
    let site = AcmeSite::start(&[HOST]).await;
    let outcome = site
        .manager
        .ensure(HOST)
        .await
        .unwrap_or_else(|err| panic!("{err}\n--- pebble logs ---\n{}", site.pebble.logs()));
    let CertOutcome::Issued { not_after, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(not_after > SystemTime::now() + Duration::from_secs(60 * 86_400));
    // Pebble really fetched the challenge from the gateway's HTTP listener, by name.
    let pebble_log = site.pebble.logs();
    let fetched = format!(
        "Attempting to validate w/ HTTP: http://{HOST}:{}/.well-known/acme-challenge/",
        site.gateway.http_addr().port()
    );
    assert!(pebble_log.contains(&fetched), "{pebble_log}");
    assert!(
        pebble_log.contains("set VALID by completed challenge"),
        "{pebble_log}"
    );

    // Served by the gateway, verified by a client that trusts only Pebble's root.
    let root = site.pebble.root_pem().await;
    let client = https_client(&root, &["alpha"], site.gateway.https_addr());
    let response = client.get(site.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["upstream"], "alpha");

    // Stored privately; the challenge response is gone once the order is over.
    assert_eq!(mode(&site.manager.store().host_path(HOST).unwrap()), 0o600);
    assert_eq!(mode(&site.certs), 0o700);
    let account = std::fs::read_dir(site.certs.join("acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(mode(&account.path()), 0o600);
    assert!(site.challenges.is_empty());
    let gauge = format!(
        r#"iafactory_appliance_certificate_expiry_timestamp_seconds{{domain="{HOST}"}} {}"#,
        not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    assert!(
        site.metrics_text().contains(&gauge),
        "{}",
        site.metrics_text()
    );

    // After a restart the stored account is used again, not registered anew.
    let restarted = CertManager::new(
        CertSettings {
            dir: site.certs.clone(),
            source: CertSource::Acme(site.pebble.settings()),
            renew_before: CertSettings::DEFAULT_RENEW_BEFORE,
        },
        site.resolver.clone(),
        site.challenges.clone(),
        &mut Registry::default(),
    )
    .unwrap();
    std::fs::remove_file(restarted.store().host_path(HOST).unwrap()).unwrap();
    assert!(matches!(
        restarted.ensure(HOST).await.unwrap(),
        CertOutcome::Issued { .. }
    ));
    let pebble_log = site.pebble.logs();
    assert!(
        pebble_log.contains("There are now 1 accounts"),
        "{pebble_log}"
    );
    assert!(
        !pebble_log.contains("There are now 2 accounts"),
        "{pebble_log}"
    );
    site.gateway.shutdown().await;
}

#[tokio::test]
async fn a_certificate_near_expiry_is_renewed_from_pebble_without_dropping_connections() {
    let site = AcmeSite::start(&[HOST]).await;
    // What the box holds: a certificate with 10 days left (from some other CA).
    let old_ca_dir = tempfile::tempdir().unwrap();
    let old_ca = LocalCa::load_or_create(old_ca_dir.path()).unwrap();
    let (chain, key) = old_ca
        .issue(HOST, Duration::from_secs(10 * 86_400))
        .unwrap();
    site.manager.store().save(HOST, &chain, &key).unwrap();
    assert!(site.manager.install_stored(&[HOST.to_owned()]).is_empty());

    let addr = site.gateway.https_addr();
    let tls = tls_connect(old_ca.cert_pem(), HOST, addr).await.unwrap();
    let old_leaf = peer_leaf(&tls);
    let mut long_lived = http1(tls).await;
    assert_eq!(get_on(&mut long_lived, HOST, "/before").await.0, 200);

    // The renewal loop sees 10 days ≤ 30 and orders from Pebble.
    let cancel = CancellationToken::new();
    let renewals = tokio::spawn(site.manager.clone().run_renewals(
        || vec![HOST.to_owned()],
        Duration::from_millis(200),
        cancel.clone(),
    ));
    let resolver = site.resolver.clone();
    wait_for(
        Duration::from_secs(120),
        "the renewed certificate to be served",
        || {
            let served = resolver.lookup(HOST).map(|key| key.cert[0].clone());
            let old_leaf = old_leaf.clone();
            async move { served.is_some_and(|leaf| leaf != old_leaf) }
        },
    )
    .await;
    cancel.cancel();
    renewals.await.unwrap();

    // The connection opened before the renewal still works.
    assert_eq!(get_on(&mut long_lived, HOST, "/after").await.0, 200);
    // New handshakes get Pebble's certificate, verified against Pebble's root.
    let root = site.pebble.root_pem().await;
    let fresh = tls_connect(&root, HOST, addr)
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", site.pebble.logs()));
    let stored = site.manager.store().load(HOST).unwrap().unwrap();
    assert_eq!(peer_leaf(&fresh), stored.certified_key.cert[0]);
    assert!(stored.not_after > SystemTime::now() + Duration::from_secs(30 * 86_400));
    // And a client that only trusts the old CA no longer gets in.
    assert!(tls_connect(old_ca.cert_pem(), HOST, addr).await.is_err());
    // Kept from now on.
    assert!(matches!(
        site.manager.ensure(HOST).await.unwrap(),
        CertOutcome::Kept { .. }
    ));
    site.gateway.shutdown().await;
}

#[tokio::test]
async fn a_name_that_does_not_resolve_here_fails_clearly_and_stores_nothing() {
    // No DNS record for the host: Pebble cannot reach the gateway to validate.
    let site = AcmeSite::start(&[]).await;
    let err = site.manager.ensure(HOST).await.unwrap_err();
    assert!(matches!(err, CertError::AcmeRefused { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("could not resolve"), "{message}");
    assert!(
        message.contains(&format!("check that {HOST} resolves to this box")),
        "{message}"
    );
    assert!(site.manager.store().load(HOST).unwrap().is_none());
    assert!(site.resolver.lookup(HOST).is_none());
    assert!(site.challenges.is_empty());
    site.gateway.shutdown().await;
}

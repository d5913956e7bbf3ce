//! `iafactory serve` configured for ACME, end to end against the real Pebble: the daemon
//! orders `<tenant>.<domain>` over real HTTP-01 (Pebble resolves the name through
//! pebble-challtestsrv's DNS and fetches the challenge from serve's gateway), stores it
//! 0600, serves it over HTTPS (verified against the root Pebble signs with, fetched from
//! its management API), exposes its expiry on /metrics, and renews it without dropping
//! a connection opened before. Pebble issues certificates valid for 30 days and
//! `VALIDITY_MARGIN`: serve keeps such a certificate only until 30 days remain, so
//! renewal is driven through the daemon's own renewal loop, untouched.

mod gateway_support;
mod pebble_support;
mod support;

use std::time::{Duration, SystemTime};

use gateway_support::{DOMAIN, get_on, http1, https_client, peer_leaf, tls_connect};
use iafactory_appliance::certs::CertStore;
use pebble_support::Pebble;
use support::{TestAppliance, free_port, get, random_suffix, stderr, wait_for};

/// How long past serve's 30-day renewal window Pebble's certificates last: each one is
/// kept this long, then renewed.
const VALIDITY_MARGIN: Duration = Duration::from_secs(20);

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn serve_obtains_its_tenants_certificate_from_pebble_serves_it_and_renews_it() {
    let box_ = TestAppliance::new();
    let (status_port, https_port, http_port) = (free_port(), free_port(), free_port());
    // Pebble validates HTTP-01 on the port serve's gateway will answer challenges on.
    let pebble = Pebble::start_with_validity(
        http_port,
        Some(Duration::from_secs(30 * 86_400) + VALIDITY_MARGIN),
    )
    .await;
    let tenant = format!("ac{}", random_suffix());
    let host = format!("{tenant}.{DOMAIN}");
    pebble.add_a(&host).await;

    let config = std::fs::read_to_string(&box_.config_file)
        .unwrap()
        .replace(
            "[appliance]\n",
            &format!(
                "domain = \"{DOMAIN}\"\n[appliance]\nlisten = \"127.0.0.1:{status_port}\"\nreconcile_interval_seconds = 1\nacme_email = \"ops@example.test\"\nacme_directory = \"{directory}\"\n",
                directory = pebble.directory_url,
            ),
        )
        .replace(
            "https_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"",
            &format!(
                "https_listen = \"127.0.0.1:{https_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\ncertificates = \"acme\"\nacme_server_root = \"{root}\"\nrenewal_check_seconds = 1",
                root = pebble.api_root_path().display(),
            ),
        );
    assert!(config.contains("certificates = \"acme\""), "{config}");
    std::fs::write(&box_.config_file, config).unwrap();

    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (mut daemon, log) = box_.spawn_serve_logged();
    let logs = || {
        format!(
            "--- serve ---\n{}\n--- pebble ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            pebble.logs()
        )
    };

    let cert_dir = box_.data_dir().join("certs");
    let cert_file = cert_dir.join("hosts").join(format!("{host}.pem"));
    wait_for("serve to store the certificate from Pebble", 180, || {
        let exited = daemon.0.try_wait().ok().flatten();
        assert!(exited.is_none(), "serve exited: {exited:?}\n{}", logs());
        std::future::ready(cert_file.exists())
    })
    .await;
    // Pebble fetched the challenge from serve's gateway, by the tenant's name.
    let pebble_log = pebble.logs();
    let fetched = format!(
        "Attempting to validate w/ HTTP: http://{host}:{http_port}/.well-known/acme-challenge/"
    );
    assert!(pebble_log.contains(&fetched), "{}", logs());
    assert!(
        pebble_log.contains("set VALID by completed challenge"),
        "{}",
        logs()
    );
    assert_eq!(mode(&cert_file), 0o600);
    assert_eq!(mode(&cert_dir), 0o700);

    // Served over HTTPS to a client trusting only Pebble's issuing root, and proxied to
    // the tenant's API once serve has converged it.
    let root = pebble.root_pem().await;
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], https_port));
    let client = https_client(&root, &[&tenant], gateway);
    wait_for(
        "the tenant's API answers through the gateway",
        180,
        || async {
            client
                .get(format!("https://{host}:{https_port}/"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;

    // The served leaf is the stored one, and /metrics gives its notAfter. Polled as a
    // pair: a renewal may land between two reads.
    let store = CertStore::open(&cert_dir).unwrap();
    wait_for(
        "the served certificate, the stored one and the gauge to agree",
        60,
        || async {
            let Ok(tls) = tls_connect(&root, &host, gateway).await else {
                return false;
            };
            let stored = store.load(&host).unwrap().unwrap();
            let gauge = format!(
                "iafactory_appliance_certificate_expiry_timestamp_seconds{{domain=\"{host}\"}} {}",
                stored.not_after_unix()
            );
            peer_leaf(&tls) == stored.certified_key.cert[0]
                && get(status_port, "/metrics")
                    .await
                    .is_some_and(|metrics| metrics.contains(&gauge))
        },
    )
    .await;
    let stored = store.load(&host).unwrap().unwrap();
    assert!(stored.names.contains(&host), "{:?}", stored.names);
    assert!(stored.not_after > SystemTime::now() + Duration::from_secs(29 * 86_400));

    // Renewal: a connection opened now, and used throughout, outlives the certificate it
    // was opened with being replaced.
    let tls = tls_connect(&root, &host, gateway).await.unwrap();
    let first_leaf = peer_leaf(&tls);
    let mut long_lived = http1(tls).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut requests = 0;
    loop {
        requests += 1;
        // The API stand-in (busybox httpd) serves only its index.
        assert_eq!(get_on(&mut long_lived, &host, "/").await.0, 200);
        let fresh = tls_connect(&root, &host, gateway).await;
        if fresh.is_ok_and(|fresh| peer_leaf(&fresh) != first_leaf) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for serve to renew the certificate\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(get_on(&mut long_lived, &host, "/").await.0, 200);
    assert!(
        requests > 1,
        "the connection carried requests across the renewal"
    );
    let renewed = store.load(&host).unwrap().unwrap();
    assert_ne!(renewed.certified_key.cert[0], first_leaf);
    assert_eq!(mode(&cert_file), 0o600);
    let serve_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        serve_log.matches("certificate installed").count() >= 2,
        "{}",
        logs()
    );
    // One ACME account, registered once and reused for the renewal.
    assert_eq!(std::fs::read_dir(cert_dir.join("acme")).unwrap().count(), 1);
    assert!(
        pebble.logs().contains("There are now 1 accounts")
            && !pebble.logs().contains("There are now 2 accounts"),
        "{}",
        logs()
    );
}

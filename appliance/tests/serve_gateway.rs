//! `iafactory serve` runs the gateway: with the local CA on free ports, HTTPS for
//! `<tenant>.<domain>`, and for a tenant's own `ingress.host`, reaches that tenant's API
//! container (on its internal network) and no other, the certificate expiry gauge is on serve's /metrics, and SIGTERM
//! stops the daemon cleanly.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    TestAppliance, free_port, get, random_suffix, stderr, wait_for, wait_tenants_healthy,
};

const DOMAIN: &str = "gw.test";

/// Trusts only the appliance's local CA, and connects every tenant host to the
/// gateway's port on 127.0.0.1 (SNI and Host stay the tenant's name).
fn https_client(ca_pem: &[u8], tenants: &[&str], https_port: u16) -> reqwest::Client {
    let hosts: Vec<String> = tenants.iter().map(|t| format!("{t}.{DOMAIN}")).collect();
    https_client_for(ca_pem, &hosts, https_port)
}

/// As [`https_client`], for host names given whole.
fn https_client_for(ca_pem: &[u8], hosts: &[String], https_port: u16) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for host in hosts {
        builder = builder.resolve(host, ([127, 0, 0, 1], https_port).into());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn serve_routes_each_tenant_host_to_its_own_api_over_tls() {
    let box_ = TestAppliance::new();
    let (status_port, https_port, http_port) = (free_port(), free_port(), free_port());
    // Each API stand-in answers with its own tenant's name, so a response says which
    // container served it.
    box_.set_serve(status_port, 1);
    box_.set_gateway(DOMAIN, https_port, http_port);
    let config = std::fs::read_to_string(&box_.config_file)
        .unwrap()
        .replace(
            r#"args = ["sh", "-c", "/bin/busybox httpd -p 9180 -h /www && exec /bin/busybox httpd -f -p 8180 -h /www"]"#,
            r#"args = ["sh", "-c", "mkdir -p /tmp/www && echo tenant=$IAF_TENANT > /tmp/www/index.html && /bin/busybox httpd -p 9180 -h /www && exec /bin/busybox httpd -f -p 8180 -h /tmp/www"]"#,
        );
    assert!(config.contains("IAF_TENANT"), "{config}");
    std::fs::write(&box_.config_file, config).unwrap();

    let suffix = random_suffix();
    let (alpha, beta) = (format!("ga{suffix}"), format!("gb{suffix}"));
    // Beta has a host of its own, outside the appliance's domain.
    let beta_host = format!("rag-{suffix}.univ.example");
    for (tenant, extra) in [
        (&alpha, String::new()),
        (&beta, format!("  ingress: {{host: {beta_host}}}\n")),
    ] {
        let file = box_.tenant_file(tenant, &extra);
        let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(
            !stderr(&output).contains("ingress.host"),
            "{}",
            stderr(&output)
        );
    }
    // Another tenant cannot take that host, nor a name under the domain.
    for (host, named) in [
        (beta_host.clone(), beta.clone()),
        (format!("{alpha}.{DOMAIN}"), DOMAIN.to_owned()),
    ] {
        let file = box_.tenant_file(
            &format!("gc{suffix}"),
            &format!("  ingress: {{host: {host}}}\n"),
        );
        let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
        let message = stderr(&output);
        assert!(!output.status.success(), "{host} was accepted");
        assert!(
            message.contains(&host)
                && message.contains(&named)
                && message.contains("nothing was applied"),
            "{message}"
        );
    }
    let (mut daemon, log) = box_.spawn_serve_logged();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_tenants_healthy(status_port, 2, 180).await;

    let ca_path = box_.data_dir().join("certs/local-ca/ca.pem");
    let ca_pem = std::fs::read(&ca_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the local CA is the default source\n{}",
            ca_path.display(),
            log_text()
        )
    });
    let client = https_client(&ca_pem, &[&alpha, &beta], https_port);
    let url = |tenant: &str| format!("https://{tenant}.{DOMAIN}:{https_port}/");

    // The routes are refreshed after the reconcile that started the APIs.
    for tenant in [&alpha, &beta] {
        wait_for(
            &format!("{tenant} is served through the gateway"),
            60,
            || async {
                let response = client.get(url(tenant)).send().await;
                response.is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        let body = client
            .get(url(tenant))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body.trim(), format!("tenant={tenant}"), "{}", log_text());
    }

    // Beta's own host reaches beta's API, with a certificate for that host.
    let own_host = https_client_for(&ca_pem, std::slice::from_ref(&beta_host), https_port);
    let body = own_host
        .get(format!("https://{beta_host}:{https_port}/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{beta_host}: {e}\n{}", log_text()))
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), format!("tenant={beta}"), "{}", log_text());

    // A connection opened for alpha cannot carry a request for beta's host.
    let misdirected = client
        .get(url(&alpha))
        .header("host", format!("{beta}.{DOMAIN}:{https_port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(misdirected.status(), 421);
    let body = misdirected.text().await.unwrap();
    assert!(!body.contains(&format!("tenant={beta}")), "{body}");

    // A name the appliance has no tenant (so no certificate) for fails the handshake.
    let stranger = https_client(&ca_pem, &["nobody"], https_port);
    assert!(stranger.get(url("nobody")).send().await.is_err());

    // Plain HTTP redirects to HTTPS (and would answer ACME challenges).
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{http_port}/x"))
        .header("host", format!("{alpha}.{DOMAIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 308);

    let metrics = get(status_port, "/metrics").await.unwrap();
    for needle in [
        format!(
            "iafactory_appliance_certificate_expiry_timestamp_seconds{{domain=\"{alpha}.{DOMAIN}\"}}"
        ),
        format!(
            "iafactory_appliance_certificate_expiry_timestamp_seconds{{domain=\"{beta}.{DOMAIN}\"}}"
        ),
        format!(
            "iafactory_appliance_certificate_expiry_timestamp_seconds{{domain=\"{beta_host}\"}}"
        ),
        format!("iafactory_appliance_gateway_requests_total{{tenant=\"{alpha}\",code=\"200\"}}"),
        format!("iafactory_appliance_container_running{{tenant=\"{alpha}\",component=\"api\""),
    ] {
        assert!(metrics.contains(&needle), "{needle} in:\n{metrics}");
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // SIGTERM: the daemon stops on its own, successfully, and frees the gateway's port.
    let pid = daemon.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success(), "{exit}\n{}", log_text());
    assert!(std::net::TcpListener::bind(("127.0.0.1", https_port)).is_ok());
}

//! The whole deployed path, as a new user meets it: the real platform API in Docker,
//! behind `iafactory serve`'s TLS gateway. Clients come from distinct loopback
//! addresses (127.0.0.2, 127.0.0.3). One client's failed logins, each with a forged
//! `X-Forwarded-For`, reach 429 at the per-client limit; the other client, and a user
//! already signed in from the locked-out address itself, keep working. The API's internal
//! surface (`/metrics`, `/internal/*`) is not reachable through the gateway.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use support::{TestAppliance, free_port, random_suffix, stderr, wait_for, wait_tenants_healthy};

const DOMAIN: &str = "lockout.test";
/// Unauthenticated requests allowed per client address and minute, in this test.
const LIMIT: usize = 5;
const ADMIN_EMAIL: &str = "dsi@lockout.test";
const ADMIN_PASSWORD: &str = "correct horse battery staple 7";

/// An HTTPS client whose connections leave from `source` (a loopback address) and
/// reach the gateway on 127.0.0.1, trusting only the appliance's local CA.
fn client_from(source: Ipv4Addr, ca_pem: &[u8], host: &str, https_port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .local_address(IpAddr::V4(source))
        .resolve(host, ([127, 0, 0, 1], https_port).into())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn login(
    client: &reqwest::Client,
    base: &str,
    password: &str,
    forged: &str,
) -> reqwest::Response {
    client
        .post(format!("{base}/api/auth/login"))
        .header("x-forwarded-for", forged)
        .json(&serde_json::json!({"email": ADMIN_EMAIL, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn me(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    client
        .get(format!("{base}/api/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn one_clients_failed_logins_lock_out_only_that_client() {
    let box_ = TestAppliance::with_real_api_and(&format!(
        "api.IAF_RATE_LIMIT__PER_IP_PER_MINUTE = \"{LIMIT}\""
    ));
    let (status_port, https_port, http_port) = (free_port(), free_port(), free_port());
    box_.set_serve(status_port, 2);
    box_.set_gateway(DOMAIN, https_port, http_port);
    let tenant = format!("lo{}", random_suffix());
    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));

    let (_daemon, log) = box_.spawn_serve_logged();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_tenants_healthy(status_port, 1, 240).await;

    let mut admin = std::process::Command::new(env!("CARGO_BIN_EXE_iafactory"))
        .args(["--config", box_.config_file.to_str().unwrap()])
        .args(["admin", &tenant, "--email", ADMIN_EMAIL, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(admin.stdin.take().unwrap(), "{ADMIN_PASSWORD}").unwrap();
    let output = admin.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));

    let host = format!("{tenant}.{DOMAIN}");
    let base = format!("https://{host}:{https_port}");
    let ca_pem = box_.local_ca();
    let intruder = client_from(Ipv4Addr::new(127, 0, 0, 2), &ca_pem, &host, https_port);
    let colleague = client_from(Ipv4Addr::new(127, 0, 0, 3), &ca_pem, &host, https_port);
    wait_for("the tenant is served through the gateway", 60, || async {
        colleague
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // The API's internal surface is on its internal listener, which the gateway never
    // routes to: through the gateway, /metrics and /internal/* do not exist, whatever the
    // token. (`iafactory admin` above reached /internal on the internal listener.)
    let outsider = client_from(Ipv4Addr::new(127, 0, 0, 4), &ca_pem, &host, https_port);
    let metrics = outsider
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404, "/metrics through the gateway");
    let internal = outsider
        .put(format!("{base}/internal/tenants/{tenant}"))
        .bearer_auth("a guess")
        .json(&serde_json::json!({"name": "Taken over", "plan": "enterprise"}))
        .send()
        .await
        .unwrap();
    assert_eq!(internal.status(), 404, "/internal through the gateway");
    let body: serde_json::Value = internal.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // Signed in from the intruder's own address before the attack: a user behind the
    // same NAT as the attacker.
    let neighbour = login(&intruder, &base, ADMIN_PASSWORD, "198.51.100.1").await;
    let status = neighbour.status();
    let neighbour: serde_json::Value = neighbour.json().await.unwrap();
    let neighbour_token = neighbour["data"]["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("sign-in: {status} {neighbour}\n{}", log_text()))
        .to_owned();

    // A fresh forged X-Forwarded-For on every attempt: were the header believed, every
    // attempt would count for a different client and none would be refused.
    let mut statuses = Vec::new();
    for attempt in 0..LIMIT + 3 {
        let forged = format!("203.0.113.{}", attempt + 1);
        let response = login(&intruder, &base, "wrong password", &forged).await;
        statuses.push(response.status().as_u16());
    }
    let unauthorized = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    println!("lockout: intruder (127.0.0.2) {unauthorized}×401 then {refused}×429: {statuses:?}");
    // The neighbour's sign-in above was one of this address's anonymous requests.
    assert_eq!(unauthorized, LIMIT - 1, "{statuses:?}\n{}", log_text());
    assert_eq!(refused, 4, "{statuses:?}");
    assert!(
        statuses.iter().skip(LIMIT - 1).all(|&s| s == 429),
        "{statuses:?}"
    );

    // The colleague, from another address, signs in and works.
    let signed_in = login(&colleague, &base, ADMIN_PASSWORD, "203.0.113.1").await;
    assert_eq!(signed_in.status(), 200, "{}", log_text());
    let token: serde_json::Value = signed_in.json().await.unwrap();
    let token = token["data"]["access_token"].as_str().unwrap();
    let mut colleague_statuses = Vec::new();
    for _ in 0..2 * LIMIT {
        colleague_statuses.push(me(&colleague, &base, token).await);
    }
    // The signed-in neighbour on the locked-out address counts as a user, not as the
    // address's anonymous traffic.
    let mut neighbour_statuses = Vec::new();
    for _ in 0..2 * LIMIT {
        neighbour_statuses.push(me(&intruder, &base, &neighbour_token).await);
    }
    println!(
        "lockout: colleague (127.0.0.3) /api/auth/me {colleague_statuses:?}; \
         signed-in neighbour on 127.0.0.2 {neighbour_statuses:?}"
    );
    assert!(
        colleague_statuses.iter().all(|&s| s == 200),
        "{colleague_statuses:?}"
    );
    assert!(
        neighbour_statuses.iter().all(|&s| s == 200),
        "{neighbour_statuses:?}"
    );

    // And the intruder is still refused, however it spells its address.
    let again = login(&intruder, &base, ADMIN_PASSWORD, "127.0.0.3").await;
    assert_eq!(again.status(), 429);
}

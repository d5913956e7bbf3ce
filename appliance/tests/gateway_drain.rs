//! A pro tenant's two real API replicas behind `iafactory serve`'s gateway on the real
//! Docker Engine: both take requests, and replacing them under steady load (their image
//! rebuilt under the same tag, as `iafactory images import` of a new bundle does) loses
//! none. The old replicas keep serving until their successors are healthy, then drain:
//! out of the routes first, stopped (the API finishes what it holds) after.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{
    TestAppliance, api_image, docker, docker_ok, free_port, ip_of, random_suffix, run_image_build,
    stderr, wait_for, wait_tenants_healthy,
};

const DOMAIN: &str = "drain.test";
const WORKERS: usize = 4;

/// The API's own count of `/healthz` requests (the gateway's load: Docker's healthcheck
/// asks /readyz), read from the replica directly on its network, on its internal
/// listener.
async fn healthz_served(address: &str) -> u64 {
    let body = reqwest::get(format!("http://{address}:9180/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| {
            l.starts_with("iafactory_api_http_requests_total{") && l.contains("route=\"/healthz\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The tenant's API containers, and their addresses.
fn api_replicas(box_: &TestAppliance, tenant: &str) -> BTreeMap<String, String> {
    box_.containers()
        .into_iter()
        .filter(|n| n.starts_with(&format!("iaf-{tenant}-api-")))
        .map(|n| {
            let ip = ip_of(&n);
            (n, ip)
        })
        .collect()
}

/// Removes the test's own image tag however the test ends.
struct TagGuard(String);
impl Drop for TagGuard {
    fn drop(&mut self) {
        docker(&["rmi", "-f", &self.0]);
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    failed: Vec<String>,
}

#[tokio::test]
async fn replicas_share_the_load_and_are_replaced_under_load_without_a_lost_request() {
    run_image_build("redis");
    let suffix = random_suffix();
    // The tenant runs a tag of its own, which the test can move without touching the
    // image every other test uses.
    let tag = format!("iafactory-test/api-drain:{suffix}");
    docker_ok(&["tag", api_image(), &tag]);
    let _tag = TagGuard(tag.clone());

    let box_ = TestAppliance::with_real_api();
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    let real = format!("image = \"{}\"", api_image());
    assert!(config.contains(&real), "{config}");
    std::fs::write(
        &box_.config_file,
        config.replace(&real, &format!("image = \"{tag}\"")),
    )
    .unwrap();
    let (status_port, https_port, http_port) = (free_port(), free_port(), free_port());
    // No periodic reconcile: the replacement below is `iafactory up`'s alone.
    box_.set_serve(status_port, 3600);
    box_.set_gateway(DOMAIN, https_port, http_port);
    let tenant = format!("dr{suffix}");
    let file = box_.tenant_file(&tenant, "    api: {replicas: 2}\n  plan: pro\n");
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));

    let (_daemon, log) = box_.spawn_serve_logged();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_tenants_healthy(status_port, 1, 300).await;

    let host = format!("{tenant}.{DOMAIN}");
    let url = format!("https://{host}:{https_port}/healthz");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&box_.local_ca()).unwrap())
        .resolve(&host, ([127, 0, 0, 1], https_port).into())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let before = api_replicas(&box_, &tenant);
    assert_eq!(before.len(), 2, "{before:?}");
    wait_for("both replicas are routed", 60, || async {
        // Sequential requests through the gateway alternate once both are routed.
        for _ in 0..4 {
            if !client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return false;
            }
        }
        let mut counts = Vec::new();
        for address in before.values() {
            counts.push(healthz_served(address).await);
        }
        counts.iter().all(|&c| c > 0)
    })
    .await;

    // Both take their share of a burst of sequential requests.
    let mut served_before = BTreeMap::new();
    for (name, address) in &before {
        served_before.insert(name.clone(), healthz_served(address).await);
    }
    const BURST: u64 = 40;
    for _ in 0..BURST {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut per_replica = BTreeMap::new();
    for (name, address) in &before {
        per_replica.insert(
            name.clone(),
            healthz_served(address).await - served_before[name],
        );
    }
    println!("requests per replica, of {BURST} sequential: {per_replica:?}");
    assert_eq!(per_replica.values().sum::<u64>(), BURST, "{per_replica:?}");
    assert!(
        per_replica.values().all(|&n| n >= BURST / 4),
        "{per_replica:?}"
    );

    // Steady load from several clients while the image moves under the tenant's tag.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut outcomes = Outcomes::default();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => outcomes.ok += 1,
                    Ok(response) => outcomes.failed.push(format!("HTTP {}", response.status())),
                    Err(error) => outcomes.failed.push(format!("{error:?}")),
                }
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dockerfile = format!("FROM {tag}\nLABEL dz.iafactory.test.generation=\"2\"\n");
    let mut build = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    build
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    let built = build.wait_with_output().unwrap();
    assert!(built.status.success(), "{}", stderr(&built));
    let up = tokio::task::spawn_blocking({
        let config = box_.config_file.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_iafactory"))
                .args(["--config", config.to_str().unwrap(), "up"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let up_report = support::stdout(&up) + &stderr(&up);
    assert!(up.status.success(), "{up_report}");
    // Let the load run on the new replicas for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Outcomes::default();
    for worker in workers {
        let outcomes = worker.await.unwrap();
        total.ok += outcomes.ok;
        total.failed.extend(outcomes.failed);
    }
    println!(
        "replacement under load ({WORKERS} clients): {} answered, {} lost: {:?}",
        total.ok,
        total.failed.len(),
        total.failed
    );
    assert!(up_report.contains("draining"), "{up_report}");
    let after = api_replicas(&box_, &tenant);
    assert_eq!(after.len(), 2, "{after:?}\n{up_report}");
    for (name, address) in &after {
        assert!(
            !before.values().any(|a| a == address),
            "{name} is an old replica: {before:?} {after:?}"
        );
        assert!(
            healthz_served(address).await > 0,
            "{name} took no request\n{}",
            log_text()
        );
    }
    assert!(
        total.ok > 100,
        "too little load to show anything: {}",
        total.ok
    );
    assert!(
        total.failed.is_empty(),
        "{:?}\n{up_report}\n{}",
        total.failed,
        log_text()
    );
}

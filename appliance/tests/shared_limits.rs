//! A tenant with two API replicas (the pro plan) on the real Docker Engine: the plan's
//! `redis` container comes up beside them, read-only and non-root, and the per-client
//! limit holds across both replicas, because they count in the same Redis.

mod support;

use std::collections::BTreeMap;

use support::{TestAppliance, docker_ok, ip_of, random_suffix, run_image_build};

/// Unauthenticated requests allowed per client address and minute, in this test.
const LIMIT: usize = 5;

#[tokio::test]
async fn two_api_replicas_share_one_limit_through_the_tenants_redis() {
    // images/redis/build.sh: the platform config's default `images.redis`.
    run_image_build("redis");
    let box_ = TestAppliance::with_real_api();
    let healthcheck = "healthcheck = [\"/usr/local/bin/iafactory-api\", \"healthcheck\"]\n";
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    assert!(config.contains(healthcheck), "{config}");
    std::fs::write(
        &box_.config_file,
        config.replacen(
            healthcheck,
            &format!("{healthcheck}env = {{ IAF_RATE_LIMIT__PER_IP_PER_MINUTE = \"{LIMIT}\" }}\n"),
            1,
        ),
    )
    .unwrap();
    let tenant = format!("rl{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "    api: {replicas: 2}\n  plan: pro\n")])
        .unwrap();
    let (report, result) = app.up(&|_| {}).await;
    result.unwrap_or_else(|e| panic!("up failed: {e}\nchanged: {:?}", report.actions));

    let containers = box_.containers();
    let of = |component: &str| -> Vec<String> {
        containers
            .iter()
            .filter(|n| n.starts_with(&format!("iaf-{tenant}-{component}-")))
            .cloned()
            .collect()
    };
    let (apis, redis) = (of("api"), of("redis"));
    assert_eq!(apis.len(), 2, "{containers:?}");
    assert_eq!(redis.len(), 1, "{containers:?}");
    let inspected = docker_ok(&[
        "inspect",
        &redis[0],
        "--format",
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.State.Health.Status}}",
    ]);
    assert_eq!(inspected, "999:999 true healthy");
    assert_eq!(
        docker_ok(&[
            "exec",
            &redis[0],
            "redis-cli",
            "config",
            "get",
            "appendonly"
        ]),
        "appendonly\nno"
    );

    // N+1 anonymous requests from one client, spread across both replicas: alone,
    // each replica would allow N, so the N+1th is refused only if they share counts.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let addresses: Vec<String> = apis.iter().map(|a| ip_of(a)).collect();
    let mut codes = Vec::new();
    let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..=LIMIT {
        let address = &addresses[i % 2];
        let response = client
            .get(format!("http://{address}:8180/api/providers"))
            .send()
            .await
            .unwrap();
        *per_replica.entry(address.as_str()).or_default() += 1;
        codes.push(response.status().as_u16());
    }
    println!("codes {codes:?}, requests per replica {per_replica:?}");
    assert_eq!(per_replica.len(), 2, "both replicas were asked");
    assert!(
        codes[..LIMIT].iter().all(|c| *c != 429),
        "the first {LIMIT} pass the limit: {codes:?}"
    );
    assert_eq!(
        codes[LIMIT], 429,
        "the limit holds across replicas: {codes:?}"
    );
    // The counts are in Redis: one window key per limit for this client.
    let keys = docker_ok(&["exec", &redis[0], "redis-cli", "--scan"]);
    assert!(!keys.is_empty(), "no counter in Redis");
}

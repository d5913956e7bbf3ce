//! Tenants share one engine but no network: from inside tenant A's network, tenant B's
//! database and API cannot be reached, while A's own are.

mod support;

use support::{TestAppliance, docker, ip_of, random_suffix, resolve};

fn quiet(_: &str) {}

fn reach(from: &str, url: &str) -> bool {
    // (This static busybox's `wget -T` crashes: `timeout` bounds it instead.)
    docker(&[
        "exec",
        from,
        "/bin/busybox",
        "timeout",
        "5",
        "/bin/busybox",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        url,
    ])
    .status
    .success()
}

#[tokio::test]
async fn a_tenant_cannot_open_a_connection_to_another_tenants_services() {
    let box_ = TestAppliance::new();
    let a = format!("a{}", random_suffix());
    let b = format!("b{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&a, ""), box_.tenant_file(&b, "")])
        .unwrap();
    let (report, result) = app.up(&quiet).await;
    result.unwrap_or_else(|e| panic!("{e}: {:?}", report.actions));

    let names = box_.containers();
    let api_of = |t: &str| {
        names
            .iter()
            .find(|n| n.starts_with(&format!("iaf-{t}-api-")))
            .unwrap()
            .clone()
    };
    let a_api = api_of(&a);
    let b_api = api_of(&b);
    let b_database = format!("iaf-{b}-postgres");

    // The control: A reaches its own database and API, whose names resolve to them.
    let a_database_ip = ip_of(&format!("iaf-{a}-postgres"));
    assert_eq!(
        resolve(&a_api, "postgres").as_deref(),
        Some(a_database_ip.as_str())
    );
    assert_eq!(
        resolve(&a_api, "api").as_deref(),
        Some(ip_of(&a_api).as_str())
    );
    assert!(reach(&a_api, &format!("http://{a_database_ip}:5432/")));
    // B's services answer inside B...
    assert!(reach(
        &b_api,
        &format!("http://{}:5432/", ip_of(&b_database))
    ));
    // ...but not from A: neither their addresses nor their names.
    assert!(!reach(
        &a_api,
        &format!("http://{}:5432/", ip_of(&b_database))
    ));
    assert!(!reach(&a_api, &format!("http://{}:8180/", ip_of(&b_api))));
    assert_eq!(resolve(&a_api, &b_database), None);
    assert_eq!(
        resolve(&b_api, "postgres").as_deref(),
        Some(ip_of(&b_database).as_str())
    );
}

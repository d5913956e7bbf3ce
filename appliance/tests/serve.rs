//! `iafactory serve`, the real binary: it converges a manifest stored while it runs,
//! restores a removed container on its timer, exports the appliance metrics, and
//! refuses a port already taken. (The Prometheus that scrapes it: tests/monitoring.rs.)

mod support;

use support::{TestAppliance, docker_ok, free_port, get, random_suffix, stderr, wait_for};

#[tokio::test]
async fn serve_converges_repairs_and_exports_metrics() {
    let box_ = TestAppliance::new();
    let port = free_port();
    box_.set_serve(port, 1);
    let daemon = box_.serve(port).await;

    // A manifest stored while serve runs is converged without `up`.
    let tenant = format!("sv{}", random_suffix());
    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let healthy = || async {
        get(port, "/status").await.is_some_and(|body| {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            json[0]["tenant"] == tenant.as_str() && json[0]["healthy"] == true
        })
    };
    wait_for("serve converges the new tenant", 90, healthy).await;

    let metrics = get(port, "/metrics").await.unwrap();
    for needle in [
        format!("iafactory_appliance_container_running{{tenant=\"{tenant}\",component=\"api\""),
        format!(
            "iafactory_appliance_container_healthy{{tenant=\"{tenant}\",component=\"postgres\",container=\"iaf-{tenant}-postgres\"}} 1"
        ),
        format!(
            "iafactory_appliance_volume_capacity_bytes{{tenant=\"{tenant}\",volume=\"iaf-{tenant}-postgres-data\"}}"
        ),
        format!(
            "iafactory_appliance_volume_available_bytes{{tenant=\"{tenant}\",volume=\"iaf-{tenant}-postgres-data\"}}"
        ),
    ] {
        assert!(metrics.contains(&needle), "{needle} in:\n{metrics}");
    }

    // A removed container comes back on the timer.
    let api = box_
        .containers()
        .into_iter()
        .find(|n| n.contains("-api-"))
        .unwrap();
    docker_ok(&["rm", "-f", &api]);
    wait_for("serve recreates the removed API container", 90, || async {
        box_.containers().contains(&api) && healthy().await
    })
    .await;

    // A second daemon on the same port: a clear error, and the first keeps serving.
    let clash = box_.iafactory(&["serve"]);
    assert_eq!(clash.status.code(), Some(1));
    let message = stderr(&clash);
    assert!(
        message.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{message}"
    );
    assert!(message.contains("appliance.listen"), "{message}");
    assert!(get(port, "/healthz").await.is_some());
    drop(daemon);
}

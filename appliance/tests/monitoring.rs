//! The shared monitoring stack, end to end with the real Docker Engine: `iafactory
//! serve` with two tenants runs the real Prometheus (images/prometheus/build.sh), whose
//! own API reports the appliance and each tenant's API `up` with the right labels; a
//! deleted tenant's target disappears. Grafana cannot run here: a busybox stand-in
//! takes its place, and the provisioning it would read is checked from inside it. A
//! second `up` changes nothing, and `down` removes the stack but keeps its volumes.

mod support;

use std::sync::OnceLock;

use serde_json::Value;
use support::{
    TestAppliance, docker, docker_ok, free_port, get, random_suffix, standin_image, stderr,
    wait_for,
};

/// `iafactory/prometheus:2.42.0`, built by images/prometheus/build.sh (which skips the
/// build when the image of the same content exists).
fn prometheus_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        support::run_image_build("prometheus");
        "iafactory/prometheus:2.42.0".to_owned()
    })
}

/// The stack's object names for this test's appliance (`instance`).
fn stack(box_: &TestAppliance, component: &str) -> String {
    iafactory_appliance::monitoring::object_name(&box_.instance, component)
}

struct Ports {
    serve: u16,
    prometheus: u16,
    grafana: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            serve: free_port(),
            prometheus: free_port(),
            grafana: free_port(),
        }
    }
}

/// Turns monitoring on, with the real Prometheus and a stand-in Grafana on free ports.
fn enable_monitoring(box_: &TestAppliance, ports: &Ports) {
    let standin = standin_image();
    box_.set_serve(ports.serve, 1);
    let config = std::fs::read_to_string(&box_.config_file).unwrap().replace(
        "[appliance.monitoring]\nenabled = false\n",
        &format!(
            r#"[appliance.monitoring]
enabled = true
scrape_interval_seconds = 1
retention = "1d"

[appliance.monitoring.prometheus]
image = "{prometheus}"
listen = "127.0.0.1:{prometheus_port}"

[appliance.monitoring.grafana]
image = "{standin}"
listen = "127.0.0.1:{grafana_port}"
args = ["httpd", "-f", "-p", "127.0.0.1:{grafana_port}", "-h", "/www"]
healthcheck = ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:{grafana_port}/"]
"#,
            prometheus = prometheus_image(),
            prometheus_port = ports.prometheus,
            grafana_port = ports.grafana,
        ),
    );
    std::fs::write(&box_.config_file, config).unwrap();
}

/// Prometheus's active targets, from its own HTTP API.
async fn active_targets(port: u16) -> Vec<Value> {
    let Some(body) = get(port, "/api/v1/targets?state=active").await else {
        return Vec::new();
    };
    let json: Value = serde_json::from_str(&body).unwrap();
    json["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn target_of<'a>(targets: &'a [Value], job: &str, tenant: Option<&str>) -> Option<&'a Value> {
    targets.iter().find(|t| {
        t["labels"]["job"] == job && tenant.is_none_or(|tenant| t["labels"]["tenant"] == tenant)
    })
}

fn health(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Health.Status}}", container])
        .stdout
        .iter()
        .map(|b| *b as char)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn prometheus_scrapes_the_appliance_and_every_tenant_api() {
    let box_ = TestAppliance::new();
    let ports = Ports::free();
    enable_monitoring(&box_, &ports);
    let daemon = box_.serve(ports.serve).await;

    let suffix = random_suffix();
    let tenants = [format!("ma{suffix}"), format!("mb{suffix}")];
    for tenant in &tenants {
        let file = box_.tenant_file(tenant, "");
        let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
    }

    // The real Prometheus comes up healthy, and its API reports every target up.
    let prometheus = stack(&box_, "prometheus");
    let grafana = stack(&box_, "grafana");
    wait_for("the Prometheus container is healthy", 180, || async {
        health(&prometheus) == "healthy"
    })
    .await;
    wait_for(
        "Prometheus reports the appliance and both tenants' APIs up",
        240,
        || async {
            let targets = active_targets(ports.prometheus).await;
            target_of(&targets, "iafactory-appliance", None).is_some_and(|t| t["health"] == "up")
                && tenants.iter().all(|tenant| {
                    target_of(&targets, "iafactory-api", Some(tenant))
                        .is_some_and(|t| t["health"] == "up")
                })
        },
    )
    .await;
    let targets = active_targets(ports.prometheus).await;
    let appliance = target_of(&targets, "iafactory-appliance", None).unwrap();
    assert_eq!(
        appliance["labels"]["instance"],
        format!("127.0.0.1:{}", ports.serve)
    );
    assert_eq!(appliance["labels"]["component"], "appliance");
    for tenant in &tenants {
        let api = target_of(&targets, "iafactory-api", Some(tenant)).unwrap();
        assert_eq!(api["labels"]["namespace"], format!("iaf-{tenant}"));
        assert_eq!(api["labels"]["component"], "api");
        assert!(
            api["scrapeUrl"]
                .as_str()
                .unwrap()
                // The internal listener: the public one answers 404 to /metrics.
                .ends_with(":9180/metrics"),
            "{api}"
        );
    }
    // Its web UI is in the image.
    let page = get(ports.prometheus, "/classic/targets").await.unwrap();
    assert!(page.contains("iafactory-api"), "{page}");
    // The alert rules are loaded.
    let rules = get(ports.prometheus, "/api/v1/rules").await.unwrap();
    assert!(
        rules.contains("IAFactoryCertificateExpiringSoon"),
        "{rules}"
    );
    // The appliance's own metrics arrived, labelled by the scrape.
    let query = get(
        ports.prometheus,
        "/api/v1/query?query=iafactory_appliance_container_running%7Bjob%3D%22iafactory-appliance%22%7D",
    )
    .await
    .unwrap();
    assert!(query.contains(&tenants[0]), "{query}");

    // The stack is shared, not a tenant's: labelled by stack, with no tenant label.
    let labels: Value = serde_json::from_str(&docker_ok(&[
        "inspect",
        "-f",
        "{{json .Config.Labels}}",
        &prometheus,
    ]))
    .unwrap();
    assert_eq!(labels["iafactory.dz/stack"], "monitoring");
    assert_eq!(labels["iafactory.dz/component"], "prometheus");
    assert_eq!(labels["iafactory.dz/appliance"], box_.instance.as_str());
    assert!(labels.get("iafactory.dz/tenant").is_none(), "{labels}");
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &prometheus]),
        "host"
    );

    // Grafana (a stand-in here) reads the provisioning and the dashboards where the
    // real one looks for them.
    wait_for("the Grafana stand-in is healthy", 120, || async {
        health(&grafana) == "healthy"
    })
    .await;
    let exec = |args: &[&str]| {
        let mut full = vec!["exec", grafana.as_str(), "/bin/busybox"];
        full.extend_from_slice(args);
        docker_ok(&full)
    };
    let datasources = exec(&[
        "cat",
        "/etc/grafana/provisioning/datasources/iafactory.yaml",
    ]);
    assert!(
        datasources.contains("uid: iafactory-prometheus"),
        "{datasources}"
    );
    assert!(
        datasources.contains(&format!("url: http://127.0.0.1:{}", ports.prometheus)),
        "{datasources}"
    );
    let providers = exec(&["cat", "/etc/grafana/provisioning/dashboards/iafactory.yaml"]);
    assert!(
        providers.contains("path: /etc/grafana/dashboards"),
        "{providers}"
    );
    let dashboards = exec(&["ls", "/etc/grafana/dashboards"]);
    for name in ["iafactory-appliance.json", "iafactory-tenant-overview.json"] {
        assert!(dashboards.contains(name), "{dashboards}");
    }
    let env = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &grafana]);
    let password =
        std::fs::read_to_string(box_.data_dir().join("monitoring/grafana-admin-password")).unwrap();
    assert!(
        env.contains(&format!("GF_SECURITY_ADMIN_PASSWORD={}", password.trim())),
        "{env}"
    );
    // Read-only: nothing in the container rewrites what the appliance generates.
    let write = docker(&[
        "exec",
        &grafana,
        "/bin/busybox",
        "touch",
        "/etc/grafana/dashboards/x.json",
    ]);
    assert!(!write.status.success());

    // Converged: another `up` (its own engine connection, counted) changes nothing.
    let app = box_.app().await;
    let (report, result) = app.up(&|_: &str| {}).await;
    result.unwrap();
    assert_eq!(report.actions, Vec::<String>::new());
    assert_eq!(app.engine.mutations(), 0);

    // `status` shows the stack apart from the tenants; its JSON stays one per tenant.
    let status = box_.iafactory(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let table = support::stdout(&status);
    let row = |component: &str| {
        table
            .lines()
            .find(|l| l.starts_with("(monitoring)") && l.contains(component))
            .unwrap_or_else(|| panic!("no {component} row in:\n{table}"))
            .to_owned()
    };
    assert!(row("prometheus").contains("healthy"), "{table}");
    assert!(row("grafana").contains("healthy"), "{table}");
    let json = box_.iafactory(&["status", "-o", "json"]);
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), tenants.len(), "{json}");

    // The stack's logs, as a tenant's are read.
    let logs = box_.iafactory(&["logs", "monitoring", "prometheus"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let logs = support::stdout(&logs);
    assert!(
        logs.contains("prometheus: ") && logs.contains("Server is ready to receive web requests"),
        "{logs}"
    );

    // A deleted tenant's target goes away, without restarting Prometheus.
    let started = docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", &prometheus]);
    let output = box_.iafactory(&["delete", &tenants[1]]);
    assert!(output.status.success(), "{}", stderr(&output));
    wait_for("the deleted tenant's target disappears", 120, || async {
        let targets = active_targets(ports.prometheus).await;
        target_of(&targets, "iafactory-api", Some(&tenants[1])).is_none()
            && target_of(&targets, "iafactory-api", Some(&tenants[0])).is_some()
    })
    .await;
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.StartedAt}}", &prometheus]),
        started
    );

    // `down` removes the stack too, and keeps its data.
    drop(daemon);
    let output = box_.iafactory(&["down"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(box_.containers(), Vec::<String>::new());
    let volumes = box_.volumes();
    for component in ["prometheus", "grafana"] {
        let volume = format!("{}-data", stack(&box_, component));
        assert!(volumes.contains(&volume), "{volumes:?}");
    }
}

#[tokio::test]
async fn without_grafana_s_image_the_tenants_and_prometheus_still_come_up() {
    let box_ = TestAppliance::new();
    let ports = Ports::free();
    enable_monitoring(&box_, &ports);
    let config = std::fs::read_to_string(&box_.config_file).unwrap().replace(
        &format!(
            "image = \"{}\"\nlisten = \"127.0.0.1:{}\"",
            standin_image(),
            ports.grafana
        ),
        &format!(
            "image = \"grafana/grafana-oss:0.0.0-absent\"\nlisten = \"127.0.0.1:{}\"",
            ports.grafana
        ),
    );
    assert!(config.contains("0.0.0-absent"));
    std::fs::write(&box_.config_file, config).unwrap();
    let tenant = format!("mc{}", random_suffix());
    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "-f", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // Said, with what to do: an offline site imports Grafana's image with a bundle.
    let said = format!("{}{}", support::stdout(&output), stderr(&output));
    assert!(
        said.contains("monitoring: grafana is left out until its image is here"),
        "{said}"
    );
    assert!(said.contains("grafana/grafana-oss:0.0.0-absent"), "{said}");
    assert!(said.contains("import a bundle"), "{said}");
    let names = box_.containers();
    assert!(
        names.contains(&format!("iaf-{tenant}-postgres")),
        "{names:?}"
    );
    assert!(names.contains(&stack(&box_, "prometheus")), "{names:?}");
    assert!(!names.contains(&stack(&box_, "grafana")), "{names:?}");
    assert_eq!(health(&stack(&box_, "prometheus")), "healthy");
    // Nothing is created for the missing component, not even its volume.
    let grafana_volume = format!("{}-data", stack(&box_, "grafana"));
    assert!(!box_.volumes().contains(&grafana_volume));
    // And a second `up` changes nothing (the warning is not a change).
    let app = box_.app().await;
    let (report, result) = app.up(&|_: &str| {}).await;
    result.unwrap();
    assert_eq!(report.actions, Vec::<String>::new());
    assert_eq!(app.engine.mutations(), 0);
}

#[tokio::test]
async fn switching_monitoring_off_removes_the_stack_and_keeps_its_data() {
    let box_ = TestAppliance::new();
    let ports = Ports::free();
    enable_monitoring(&box_, &ports);
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    let prometheus_only = config.replace(
        "[appliance.monitoring.grafana]\n",
        "[appliance.monitoring.grafana]\nenabled = false\n",
    );
    std::fs::write(&box_.config_file, &prometheus_only).unwrap();
    let output = box_.iafactory(&["up"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let prometheus = stack(&box_, "prometheus");
    assert_eq!(box_.containers(), vec![prometheus.clone()]);
    assert_eq!(health(&prometheus), "healthy");
    // No Grafana: nothing of it is generated either.
    assert!(!box_.data_dir().join("monitoring/grafana").exists());

    let off = prometheus_only.replace(
        "[appliance.monitoring]\nenabled = true\n",
        "[appliance.monitoring]\nenabled = false\n",
    );
    assert_ne!(off, prometheus_only);
    std::fs::write(&box_.config_file, off).unwrap();
    let output = box_.iafactory(&["up"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        support::stdout(&output).contains(&format!("removed {prometheus}"))
            || stderr(&output).contains(&format!("removed {prometheus}")),
        "{}{}",
        support::stdout(&output),
        stderr(&output)
    );
    assert_eq!(box_.containers(), Vec::<String>::new());
    assert!(box_.volumes().contains(&format!("{prometheus}-data")));
}

//! Migrations as a one-shot step (#19 item 7) on the real Docker Engine, with the real
//! PostgreSQL and the real platform API: before the tenant's API container is created
//! or replaced, `iafactory-api migrate` runs in a container of its own with the owner's
//! credentials and is removed; the API container holds only the serving role's. A no-op
//! `up` runs no step; a failing step stops the tenant's converge with its last output
//! and leaves the running API as it was.

mod support;

use support::{TestAppliance, docker_ok, ip_of, psql, random_suffix};

/// The environment of a container, one `NAME=value` a line.
fn env_of(container: &str) -> Vec<String> {
    docker_ok(&[
        "inspect",
        container,
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

async fn ready(address: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("http://{address}:8180/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_api_container_never_holds_the_owner_and_migrate_runs_only_when_it_is_replaced() {
    let box_ = TestAppliance::with_real_api();
    let tenant = format!("mg{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    let (report, result) = app.up(&|_| {}).await;
    result.unwrap_or_else(|e| panic!("up failed: {e}\nchanged: {:?}", report.actions));
    let step = format!("iaf-{tenant}-api-migrate");
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.contains(&format!("ran migrate ({step})"))),
        "{:?}",
        report.actions
    );
    let containers = box_.containers();
    assert!(
        !containers.contains(&step),
        "the step is removed: {containers:?}"
    );
    let api: Vec<&String> = containers
        .iter()
        .filter(|n| n.starts_with(&format!("iaf-{tenant}-api-")))
        .collect();
    assert_eq!(api.len(), 1, "{containers:?}");
    let api = api[0].clone();

    // The owner's password is nowhere in the serving container's environment.
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.store.secrets_file(&tenant)).unwrap()).unwrap();
    let owner_password = secrets["postgres-credentials"]["password"]
        .as_str()
        .unwrap();
    let app_password = secrets["postgres-app-credentials"]["password"]
        .as_str()
        .unwrap();
    assert!(owner_password.len() >= 16 && app_password != owner_password);
    let env = env_of(&api);
    assert!(
        !env.iter().any(|e| e.contains(owner_password)),
        "the owner's password is in the API's environment"
    );
    assert!(
        !env.iter()
            .any(|e| e.starts_with("IAF_DATABASE_URL=") || e.starts_with("IAF_DB_PASSWORD=")),
        "{env:?}"
    );
    assert!(
        env.contains(&format!(
            "IAF_DATABASE_APP_URL=postgres://iafactory_app:{app_password}@postgres:5432/iafactory"
        )),
        "{env:?}"
    );

    // The tenant answers, served as the app role.
    let address = ip_of(&api);
    assert_eq!(ready(&address).await, 200);
    let database = format!("iaf-{tenant}-postgres");
    let sessions = psql(
        &database,
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name = 'iafactory-api'",
    );
    assert_eq!(sessions, "iafactory_app", "the API's connections");

    // A no-op `up` runs no step.
    let (report, result) = app.up(&|_| {}).await;
    result.unwrap();
    assert!(
        !report.actions.iter().any(|a| a.contains("migrate")),
        "{:?}",
        report.actions
    );

    // A migration that cannot apply: the step fails, `up` says so with its output,
    // and the running API is left serving.
    psql(
        &database,
        "UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
    );
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    let healthcheck = "healthcheck = [\"/usr/local/bin/iafactory-api\", \"healthcheck\"]\n";
    assert!(config.contains(healthcheck), "{config}");
    std::fs::write(
        &box_.config_file,
        config.replacen(
            healthcheck,
            &format!("{healthcheck}env = {{ IAF_API_KEY_CACHE_SECONDS = \"4\" }}\n"),
            1,
        ),
    )
    .unwrap();
    let changed = box_.app().await;
    let (report, result) = changed.up(&|_| {}).await;
    let error = result.expect_err("a failing migrate step fails the converge");
    let error = error.to_string();
    println!("{error}");
    assert!(
        error.contains("the migrate step of component api") && error.contains("exited with code"),
        "{error}"
    );
    assert!(error.contains("its last output"), "{error}");
    assert!(
        !report.actions.iter().any(|a| a.contains("replaced")),
        "{:?}",
        report.actions
    );
    let containers = box_.containers();
    assert!(containers.contains(&api), "{containers:?}");
    assert!(!containers.contains(&step), "{containers:?}");
    assert_eq!(ready(&address).await, 200, "the old API still serves");
}

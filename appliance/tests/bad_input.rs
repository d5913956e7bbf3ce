//! Bad input gets a clear error naming what to do, and nothing running changes.

mod support;

use support::{TestAppliance, random_suffix, stderr, stdout};

fn quiet(_: &str) {}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_running_changes() {
    let box_ = TestAppliance::new();
    let tenant = format!("b{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[box_.tenant_file(&tenant, "")]).unwrap();
    let (report, result) = app.up(&quiet).await;
    result.unwrap_or_else(|e| panic!("{e}: {:?}", report.actions));
    let ids = box_.container_ids();
    let stored = std::fs::read_to_string(app.store.tenant_path(&tenant)).unwrap();

    // A malformed manifest: named, nothing stored.
    let malformed = box_.dir.path().join("malformed.yaml");
    std::fs::write(
        &malformed,
        format!("apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {{name: {tenant}}}\nspec: {{plan: [\n"),
    )
    .unwrap();
    let output = box_.iafactory(&["apply", "-f", malformed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(malformed.to_str().unwrap()), "{message}");
    assert!(message.contains("nothing was applied"), "{message}");

    // An unknown tenant.
    for args in [vec!["delete", "ghost"], vec!["logs", "ghost"]] {
        let output = box_.iafactory(&args);
        assert_eq!(output.status.code(), Some(1));
        let message = stderr(&output);
        assert!(message.contains("no tenant \"ghost\""), "{message}");
        assert!(
            message.contains(&tenant),
            "lists the known tenants: {message}"
        );
    }

    // A missing image while offline: the running tenant keeps running.
    let upgrade = box_.tenant_file(
        &tenant,
        "    api: {image: \"iafactory-test/not-imported:1\"}\n",
    );
    let output = box_.iafactory(&["apply", "-f", upgrade.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("import a bundle"), "{message}");
    assert!(
        message.contains(&format!("tenant \"{tenant}\", component api")),
        "{message}"
    );
    assert_eq!(box_.container_ids(), ids, "nothing running changed");
    // Put the good manifest back: the box converges with no change.
    std::fs::write(app.store.tenant_path(&tenant), &stored).unwrap();
    let output = box_.iafactory(&["up"]);
    assert!(
        stdout(&output).contains("up: 0 change(s)"),
        "{}",
        stdout(&output)
    );
    assert_eq!(box_.container_ids(), ids);
}

#[tokio::test]
async fn a_component_that_never_gets_healthy_is_reported_by_name() {
    let box_ = TestAppliance::new();
    let tenant = format!("u{}", random_suffix());
    let config = std::fs::read_to_string(&box_.config_file)
        .unwrap()
        .replace("health_timeout_seconds = 90", "health_timeout_seconds = 20")
        .replace("\"http://127.0.0.1:8180/\"", "\"http://127.0.0.1:9/\"");
    std::fs::write(&box_.config_file, config).unwrap();
    let file = box_.tenant_file(&tenant, "");
    let output = box_.iafactory(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("component api of tenant \"{tenant}\"")),
        "{message}"
    );
    assert!(
        message.contains(&format!("iafactory logs {tenant} api")),
        "{message}"
    );
    assert!(
        message.contains("changed before the failure"),
        "says what changed: {message}"
    );
}

/// What the appliance does not do is said, by field, and the tenant is still stored;
/// a refusal names each violated field once, in the manifest's spelling.
#[tokio::test]
async fn apply_names_each_field_it_does_not_honour_and_each_refused_field_once() {
    let box_ = TestAppliance::new();
    let tenant = format!("w{}", random_suffix());
    let file = box_.tenant_file(
        &tenant,
        "    monitoring: {enabled: false}\n    database: {storage: 5Gi}\n  ingress: {host: rag.example.dz, tls: none}\n",
    );
    let output = box_.iafactory(&["apply", "--no-up", "-f", file.to_str().unwrap()]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{message}");
    assert!(
        stdout(&output).contains(&format!("tenant/{tenant} stored")),
        "{}",
        stdout(&output)
    );
    for field in [
        "spec.components.monitoring.enabled",
        "spec.components.database.storage",
        "spec.ingress.tls",
    ] {
        let line = format!("warning: tenant {tenant}: {field} is not honoured here: ");
        assert_eq!(message.matches(&line).count(), 1, "{field}: {message}");
    }
    // Only what the manifest sets: it asks for no GPU, no secretName, no models.
    // The gateway serves ingress.host (appliance/tests/serve_gateway.rs).
    for quiet in [
        "ollama.gpu",
        "secretName",
        "ollama.models",
        "requests",
        "ingress.host",
    ] {
        assert!(!message.contains(quiet), "{quiet}: {message}");
    }

    // Providers under strict sovereignty: one refusal, at `spec.llmProviders`.
    let strict = box_.tenant_file(
        &tenant,
        "  llmProviders:\n    - {name: openai, kind: openai-compatible, baseUrl: 'https://api.openai.com/v1', secretRef: {name: k, key: apiKey}}\n",
    );
    let output = box_.iafactory(&["apply", "--no-up", "-f", strict.to_str().unwrap()]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert_eq!(message.matches("spec.llmProviders").count(), 1, "{message}");
    assert!(!message.contains("llm_providers"), "{message}");
    assert!(message.contains("nothing was applied"), "{message}");
}

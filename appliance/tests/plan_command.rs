//! `iafactory plan -f`, run as users run it: the real binary, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn iafactory(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_iafactory"))
        .args(args)
        .env_remove("IAF_PLATFORM_CONFIG")
        .output()
        .expect("the iafactory binary runs")
}

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

#[test]
fn plans_every_sample_as_yaml_and_json() {
    let samples = samples();
    let yaml = iafactory(&["plan", "-f", samples.to_str().unwrap()]);
    assert!(
        yaml.status.success(),
        "{}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let stdout = String::from_utf8(yaml.stdout).unwrap();
    assert_eq!(stdout.matches("kind: TenantPlan").count(), 3, "{stdout}");
    assert!(stdout.contains("namespace: iaf-univ-tlemcen"));
    assert!(stdout.contains("kind: WorkflowPlan"));

    let json = iafactory(&[
        "plan",
        "-o",
        "json",
        "-f",
        samples.join("tenant-univ-tlemcen.yaml").to_str().unwrap(),
    ]);
    assert!(json.status.success());
    let plans: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(plans[0]["kind"], "TenantPlan");
    assert_eq!(plans[0]["namespace"], "iaf-univ-tlemcen");
}

/// Each bad manifest: a non-zero exit (not a panic's 101), and one precise line.
#[test]
fn bad_manifests_fail_with_a_precise_message() {
    let good =
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: ok}\nspec: {}\n---\n";
    let workflow = "apiVersion: iafactory.dz/v1alpha1\nkind: Workflow\nmetadata: {name: wf, namespace: iaf-ok}\nspec:\n  agents:\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("malformed YAML", format!("{good}kind: Tenant\nmetadata: {{name: [\n"), vec!["document 2", "malformed YAML"]),
        ("unknown kind", format!("{good}apiVersion: iafactory.dz/v1alpha1\nkind: Tenent\nmetadata: {{name: x}}\n"), vec!["document 2", "unknown kind \"Tenent\""]),
        ("wrong type", "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {suspended: maybe}\n".into(), vec!["document 1", "Tenant \"x\"", "spec.suspended"]),
        ("out of range", "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {components: {api: {replicas: 50}}}\n".into(), vec!["spec.components.api.replicas", "20"]),
        ("providers under strict", "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec:\n  sovereignty: strict\n  llmProviders: [{name: groq, kind: openai-compatible, baseUrl: 'https://api.groq.com/openai/v1', secretRef: {name: k, key: apiKey}}]\n".into(), vec!["spec.llmProviders", "sovereignty: open"]),
        ("invalid DNS name", "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: Université}\nspec: {}\n".into(), vec!["metadata.name", "DNS-1123"]),
        ("missing dependency", format!("{workflow}    - {{name: writer, role: writer, model: m, prompt: p, dependsOn: [ghost]}}\n"), vec!["Workflow \"wf\"", "\"writer\" depends on \"ghost\""]),
        ("cycle", format!("{workflow}    - {{name: a, role: writer, model: m, prompt: p, dependsOn: [b]}}\n    - {{name: b, role: writer, model: m, prompt: p, dependsOn: [a]}}\n"), vec!["Workflow \"wf\"", "cycle"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (case, text, expected) in cases {
        let file = dir.path().join(format!("{}.yaml", case.replace(' ', "-")));
        std::fs::write(&file, text).unwrap();
        let output = iafactory(&["plan", "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{case}: {stderr}");
        assert!(output.stdout.is_empty(), "{case}: nothing is planned");
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "{case}: names the file: {stderr}"
        );
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{case}: expected {needle:?} in: {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let output = iafactory(&["plan", "-f", "/nonexistent/tenant.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("/nonexistent/tenant.yaml: cannot read it")
    );
}

#[test]
fn a_gpu_on_the_free_plan_is_a_plan_error_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gpu.yaml");
    std::fs::write(&file, "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {plan: free, components: {ollama: {gpu: 2}}}\n").unwrap();
    let output = iafactory(&["plan", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("document 1 (Tenant \"x\"): cannot plan it"),
        "{stderr}"
    );
    assert!(stderr.contains("free plan allows 0"), "{stderr}");
}

/// `iafactory plan -f … | head`: when the reader goes away, the command stops quietly
/// and successfully, as Unix filters do, without a panic or an error message.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_iafactory"))
        .args(["plan", "-f", samples().to_str().unwrap()])
        .env_remove("IAF_PLATFORM_CONFIG")
        .stdout(writer)
        .output()
        .expect("the iafactory binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

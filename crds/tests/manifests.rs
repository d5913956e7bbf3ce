//! Bad manifests get one precise sentence naming the file, the document and the field.

use iafactory_crds::manifest::{ManifestError, parse};

fn errors(text: &str) -> Vec<ManifestError> {
    parse("tenant.yaml", text).expect_err("the manifest is bad")
}

fn message(text: &str) -> String {
    errors(text)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

const GOOD_TENANT: &str =
    "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: good}\nspec: {plan: pro}\n";

#[test]
fn a_good_multi_document_file_loads_every_document() {
    let text = format!(
        "{GOOD_TENANT}---\napiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: kb, namespace: iaf-good}}\nspec: {{}}\n---\n"
    );
    let loaded = parse("all.yaml", &text).unwrap();
    assert_eq!(
        loaded.iter().map(|l| l.manifest.kind()).collect::<Vec<_>>(),
        ["Tenant", "KnowledgeBase"]
    );
    assert_eq!(loaded[1].manifest.tenant(), "good");
    assert_eq!(loaded[1].at.document, 2);
}

#[test]
fn malformed_yaml_names_the_document_and_line() {
    let text = format!("{GOOD_TENANT}---\nkind: Tenant\nmetadata: {{name: x\nspec: [\n");
    let message = message(&text);
    assert!(message.contains("tenant.yaml, document 2"), "{message}");
    assert!(message.contains("malformed YAML"), "{message}");
    assert!(message.contains("line"), "{message}");
}

#[test]
fn an_unknown_kind_is_named() {
    let message =
        message("apiVersion: iafactory.dz/v1alpha1\nkind: Tennant\nmetadata: {name: x}\n");
    assert!(message.contains("unknown kind \"Tennant\""), "{message}");
}

#[test]
fn a_foreign_api_version_is_named() {
    let message = message("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(
        message.contains("apiVersion must be \"iafactory.dz/v1alpha1\""),
        "{message}"
    );
}

#[test]
fn a_wrong_type_names_the_field() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {components: {api: {replicas: two}}}\n",
    );
    assert!(message.contains("Tenant \"x\""), "{message}");
    assert!(
        message.contains("field spec.components.api.replicas"),
        "{message}"
    );
}

#[test]
fn an_unknown_enum_value_names_the_field() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {plan: gold}\n",
    );
    assert!(message.contains("field spec.plan"), "{message}");
    assert!(
        message.contains("free") && message.contains("enterprise"),
        "{message}"
    );
}

#[test]
fn an_out_of_range_value_names_the_field_and_the_bound() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {components: {ollama: {gpu: 99}}}\n",
    );
    assert!(message.contains("spec.components.ollama.gpu"), "{message}");
    assert!(message.contains('8'), "{message}");
}

#[test]
fn providers_under_strict_sovereignty_are_refused_by_the_cel_rule() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec:\n  llmProviders:\n    - {name: openai, kind: openai-compatible, baseUrl: 'https://api.openai.com/v1', secretRef: {name: k, key: apiKey}}\n",
    );
    assert!(message.contains("spec.llmProviders"), "{message}");
    assert!(message.contains("sovereignty: open"), "{message}");
    // Once, spelled as in the manifest: not again as the Rust mirror's `llm_providers`.
    assert_eq!(message.matches("spec.llmProviders").count(), 1, "{message}");
    assert!(!message.contains("llm_providers"), "{message}");
}

#[test]
fn a_provider_named_like_the_tenants_own_model_server_is_refused() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec:\n  sovereignty: open\n  llmProviders:\n    - {name: ollama, kind: openai-compatible, baseUrl: 'https://llm.example.dz/v1', secretRef: {name: k, key: apiKey}}\n",
    );
    assert!(message.contains("ollama is reserved"), "{message}");
    assert_eq!(message.matches("spec.llmProviders").count(), 1, "{message}");
}

#[test]
fn every_violation_is_named_once_in_the_manifests_spelling() {
    // Each breaks a rule held both in the Rust mirror (garde) and in CEL or the schema.
    let cases = [
        "spec:\n  llmProviders:\n    - {name: openai, kind: openai-compatible, baseUrl: 'https://api.openai.com/v1', secretRef: {name: k, key: apiKey}}\n",
        "spec: {components: {ollama: {enabled: false, models: [llama3.2]}}}\n",
        "spec: {ingress: {host: a.dz, tls: acme, secretName: s}}\n",
        "spec: {displayName: ''}\n",
        "spec: {components: {vectorStore: {image: '-bad'}}}\n",
        "spec:\n  sovereignty: open\n  llmProviders:\n    - {name: a, kind: openai-compatible, baseUrl: 'not a url', secretRef: {name: k, key: apiKey}}\n",
        "spec:\n  sovereignty: open\n  llmProviders:\n    - {name: ollama, kind: openai-compatible, baseUrl: 'https://a.dz/v1', secretRef: {name: k, key: apiKey}}\n",
    ];
    for spec in cases {
        let text = format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {{name: x}}\n{spec}"
        );
        let errors = errors(&text);
        let [ManifestError::Invalid { errors, .. }] = errors.as_slice() else {
            panic!("{spec}: {errors:?}");
        };
        let paths: Vec<&str> = errors.paths().collect();
        for path in &paths {
            assert!(
                !path.contains('_'),
                "{spec}: {path} is Rust's spelling: {paths:?}"
            );
            assert_eq!(
                paths.iter().filter(|p| *p == path).count(),
                1,
                "{spec}: {path} is reported twice: {errors}"
            );
        }
    }
}

#[test]
fn an_invalid_dns_name_is_refused() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: Univ_Tlemcen}\nspec: {}\n",
    );
    assert!(message.contains("metadata.name"), "{message}");
    assert!(message.contains("DNS-1123"), "{message}");
}

#[test]
fn a_typo_is_an_unknown_field_not_a_silent_default() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: x}\nspec: {components: {api: {replica: 2}}}\n",
    );
    assert!(
        message.contains("unknown field spec.components.api.replica"),
        "{message}"
    );
}

const WORKFLOW_HEAD: &str = "apiVersion: iafactory.dz/v1alpha1\nkind: Workflow\nmetadata: {name: wf, namespace: iaf-x}\nspec:\n  agents:\n";

#[test]
fn a_workflow_depending_on_a_missing_agent_names_both() {
    let message = message(&format!(
        "{WORKFLOW_HEAD}    - {{name: writer, role: writer, model: m, prompt: p, dependsOn: [researcher]}}\n"
    ));
    assert!(
        message.contains("\"writer\" depends on \"researcher\""),
        "{message}"
    );
}

#[test]
fn a_workflow_cycle_names_the_agents() {
    let message = message(&format!(
        "{WORKFLOW_HEAD}    - {{name: a, role: writer, model: m, prompt: p, dependsOn: [b]}}\n    - {{name: b, role: writer, model: m, prompt: p, dependsOn: [a]}}\n"
    ));
    assert!(message.contains("cycle"), "{message}");
    assert!(
        message.contains("\"a\"") || message.contains("a depends on b"),
        "{message}"
    );
}

#[test]
fn a_knowledge_base_outside_a_tenant_namespace_is_refused() {
    let wrong = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: kb, namespace: default}\nspec: {}\n",
    );
    assert!(wrong.contains("metadata.namespace"), "{wrong}");
    let missing = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: kb}\nspec: {}\n",
    );
    assert!(
        missing.contains("metadata.namespace: required"),
        "{missing}"
    );
}

#[test]
fn chunk_overlap_must_be_smaller_than_size() {
    let message = message(
        "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: kb, namespace: iaf-x}\nspec: {chunking: {size: 200, overlap: 300}}\n",
    );
    assert!(message.contains("overlap"), "{message}");
}

#[test]
fn every_error_of_a_file_is_reported_not_only_the_first() {
    let text = "apiVersion: iafactory.dz/v1alpha1\nkind: Nope\nmetadata: {name: a}\n---\napiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: B}\nspec: {}\n";
    assert_eq!(errors(text).len(), 2);
}

/// Arbitrary bytes, truncations and mutations of a real manifest: never a panic.
#[test]
fn garbage_never_panics() {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/tenant-univ-tlemcen.yaml"
    ))
    .unwrap();
    let mut inputs: Vec<String> = (0..sample.len())
        .step_by(7)
        .filter(|i| sample.is_char_boundary(*i))
        .map(|i| sample[..i].to_owned())
        .collect();
    let mut state = 0x2545_f491_u64;
    for _ in 0..300 {
        let mut bytes = sample.clone().into_bytes();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state as usize) % bytes.len();
            let alphabet = b"{}[]:-'\" \n\t#&*!|>%@`0a";
            bytes[at] = alphabet[(state >> 32) as usize % alphabet.len()];
        }
        inputs.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    inputs.extend(
        [
            "",
            "---",
            "- 1\n- 2",
            "null",
            "42",
            "&a [*a]",
            "{{{{",
            "kind: Tenant\nspec: 3",
        ]
        .map(String::from),
    );
    for input in inputs {
        let result = std::panic::catch_unwind(|| {
            if let Ok(loaded) = parse("fuzz.yaml", &input) {
                for l in loaded {
                    let _ = iafactory_crds::plan::plan_manifest(
                        &l.manifest,
                        &iafactory_crds::PlatformConfig::default(),
                    );
                }
            }
        });
        assert!(result.is_ok(), "panicked on {input:?}");
    }
}

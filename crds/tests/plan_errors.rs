//! Each PlanError variant, from a manifest a user could write.

use iafactory_crds::manifest::Manifest;
use iafactory_crds::{PlanError, PlatformConfig, Tenant, plan};

fn tenant(yaml: &str) -> Tenant {
    serde_yaml::from_str(yaml).unwrap()
}

fn plan_error(yaml: &str) -> PlanError {
    plan(&tenant(yaml), &PlatformConfig::default()).unwrap_err()
}

#[test]
fn providers_under_strict_sovereignty_are_a_sovereignty_conflict() {
    let error = plan_error(
        r#"
apiVersion: iafactory.dz/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  llmProviders:
    - {name: deepseek, kind: openai-compatible, baseUrl: "https://api.deepseek.com/v1", secretRef: {name: k, key: apiKey}}
"#,
    );
    assert!(
        matches!(&error, PlanError::SovereigntyConflict { providers, .. } if providers == &["deepseek"])
    );
    assert!(error.to_string().contains("sovereignty: open"), "{error}");
}

#[test]
fn a_name_too_long_for_its_namespace_is_a_bad_name() {
    let name = "a".repeat(60);
    let error = plan_error(&format!(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec: {{}}\n"
    ));
    assert!(matches!(error, PlanError::BadName { .. }), "{error}");
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: Univ_Tlemcen}\nspec: {}\n",
    );
    assert!(matches!(error, PlanError::BadName { .. }), "{error}");
}

#[test]
fn a_gpu_on_the_free_plan_is_refused() {
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {plan: free, components: {ollama: {gpu: 1}}}\n",
    );
    assert!(
        matches!(
            error,
            PlanError::GpuNotAllowed {
                requested: 1,
                allowed: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn more_replicas_than_the_plan_allows_are_refused() {
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {plan: free, components: {api: {replicas: 3}}}\n",
    );
    assert!(
        matches!(
            error,
            PlanError::TooManyReplicas {
                requested: 3,
                allowed: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn storage_beyond_the_quota_is_refused() {
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {plan: free, components: {database: {storage: 500Gi}}}\n",
    );
    assert!(
        matches!(
            error,
            PlanError::OverQuota {
                resource: "storage",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_provider_url_without_scheme_is_refused() {
    let mut t = tenant(
        r#"
apiVersion: iafactory.dz/v1alpha1
kind: Tenant
metadata: {name: t}
spec:
  sovereignty: open
  llmProviders:
    - {name: p, kind: anthropic, baseUrl: "https://api.anthropic.com", secretRef: {name: k, key: apiKey}}
"#,
    );
    assert!(plan(&t, &PlatformConfig::default()).is_ok());
    t.spec.llm_providers[0].base_url = "ftp://files.example.com".into();
    // The URL format check of the schema passes ftp; the plan refuses it.
    let error = plan(&t, &PlatformConfig::default()).unwrap_err();
    assert!(matches!(error, PlanError::BadProviderUrl { .. }), "{error}");
}

#[test]
fn a_request_above_its_limit_is_refused() {
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {components: {api: {resources: {requests: {cpu: '3'}, limits: {cpu: '1'}}}}}\n",
    );
    assert!(
        matches!(
            error,
            PlanError::RequestOverLimit {
                resource: "cpu",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn schema_violations_surface_as_invalid() {
    let error = plan_error(
        "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec: {components: {api: {replicas: 0}}}\n",
    );
    let PlanError::Invalid(errors) = &error else {
        panic!("{error}")
    };
    assert!(
        errors.paths().any(|p| p == "spec.components.api.replicas"),
        "{errors}"
    );
}

#[test]
fn a_knowledge_base_without_embedding_gets_the_platform_default() {
    let kb: iafactory_crds::KnowledgeBase = serde_yaml::from_str(
        "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: docs, namespace: iaf-t}\nspec: {}\n",
    )
    .unwrap();
    let planned = iafactory_crds::plan::plan_manifest(
        &Manifest::KnowledgeBase(Box::new(kb)),
        &PlatformConfig::default(),
    )
    .unwrap();
    let iafactory_crds::plan::ResourcePlan::KnowledgeBase(kb) = planned else {
        panic!()
    };
    assert_eq!(
        (
            kb.tenant.as_str(),
            kb.embedding.provider.as_str(),
            kb.embedding.dimensions
        ),
        ("t", "local", 384)
    );
    assert_eq!((kb.chunking.size, kb.chunking.overlap), (800, 120));
}

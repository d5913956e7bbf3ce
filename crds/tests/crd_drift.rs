//! The committed CRD YAML is exactly what the Rust types generate.

mod common;

#[test]
fn the_field_reference_matches_the_types() {
    common::assert_golden(
        &common::repo_root().join("docs/resources.md"),
        &iafactory_crds::crdgen::resources_markdown(),
        "cargo run -p iafactory-crds --bin crdgen",
    );
}

#[test]
fn committed_crds_match_the_types() {
    for (name, yaml) in iafactory_crds::crdgen::crd_files() {
        common::assert_golden(
            &common::repo_root().join("crds").join(name),
            &yaml,
            "cargo run -p iafactory-crds --bin crdgen",
        );
    }
}

/// Every rule parses and type-checks against the schema, as the API server does when
/// the CRD is applied. (The API server also bounds each rule's estimated cost: the
/// lists the rules walk are bounded for that reason, agents to 16 and dependsOn to 8,
/// so the worst case is 16 x 8 x 16 comparisons of names of at most 63 characters.)
#[test]
fn every_cel_rule_compiles() {
    use kube::core::cel::compile_schema;
    for crd in [
        <iafactory_crds::Tenant as kube::CustomResourceExt>::crd(),
        <iafactory_crds::KnowledgeBase as kube::CustomResourceExt>::crd(),
        <iafactory_crds::Workflow as kube::CustomResourceExt>::crd(),
    ] {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let compiled = compile_schema(&schema);
        assert!(
            !compiled.has_errors(),
            "{}: {:?}",
            crd.spec.names.kind,
            compiled.compilation_errors()
        );
        let rules = schema["x-kubernetes-validations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!rules.is_empty(), "{} has CEL rules", crd.spec.names.kind);
    }
}

//! Where a tenant's preloaded models come from, decided in the plan: never the public
//! registry under strict sovereignty.

use iafactory_crds::config::ModelSource;
use iafactory_crds::plan::{ModelSourcePlan, mirror_reference, ollama_manifest_path};
use iafactory_crds::tenant::Sovereignty;

#[test]
fn the_public_registry_is_for_open_tenants_only() {
    assert_eq!(
        ModelSourcePlan::decide(&ModelSource::Public, Sovereignty::Open),
        ModelSourcePlan::Public
    );
    let ModelSourcePlan::Forbidden { reason } =
        ModelSourcePlan::decide(&ModelSource::Public, Sovereignty::Strict)
    else {
        panic!("a strict tenant never pulls from the public registry");
    };
    assert!(reason.contains("components.ollama.models"), "{reason}");
    assert!(reason.contains("ollama.model_source"), "{reason}");
}

#[test]
fn a_mirror_and_a_bundle_serve_both_sovereignties() {
    let mirror = ModelSource::Mirror {
        registry: "models.univ.dz:5000".into(),
        cidrs: vec!["10.20.0.5/32".into()],
        insecure: false,
    };
    let bundle = ModelSource::Bundle {
        claim: "model-bundle".into(),
        path: String::new(),
    };
    for sovereignty in [Sovereignty::Strict, Sovereignty::Open] {
        assert_eq!(
            ModelSourcePlan::decide(&mirror, sovereignty),
            ModelSourcePlan::Mirror {
                registry: "models.univ.dz:5000".into(),
                port: 5000,
                cidrs: vec!["10.20.0.5/32".into()],
                insecure: false,
            }
        );
        assert!(matches!(
            ModelSourcePlan::decide(&bundle, sovereignty),
            ModelSourcePlan::Bundle { .. }
        ));
    }
    let plain_http = ModelSource::Mirror {
        registry: "mirror.local".into(),
        cidrs: vec!["10.0.0.9".into()],
        insecure: true,
    };
    assert!(matches!(
        ModelSourcePlan::decide(&plain_http, Sovereignty::Strict),
        ModelSourcePlan::Mirror { port: 80, .. }
    ));
}

#[test]
fn model_names_on_a_mirror_and_on_disk() {
    for (model, on_mirror, manifest) in [
        (
            "llama3.2:3b",
            "m:5000/library/llama3.2:3b",
            "manifests/registry.ollama.ai/library/llama3.2/3b",
        ),
        (
            "bge-m3",
            "m:5000/library/bge-m3",
            "manifests/registry.ollama.ai/library/bge-m3/latest",
        ),
        (
            "someone/model:q4",
            "m:5000/someone/model:q4",
            "manifests/registry.ollama.ai/someone/model/q4",
        ),
        (
            "hf.co/org/model:tag",
            "m:5000/org/model:tag",
            "manifests/hf.co/org/model/tag",
        ),
        (
            "qwen2.5:1.5b",
            "m:5000/library/qwen2.5:1.5b",
            "manifests/registry.ollama.ai/library/qwen2.5/1.5b",
        ),
    ] {
        assert_eq!(mirror_reference("m:5000", model), on_mirror, "{model}");
        assert_eq!(ollama_manifest_path(model), manifest, "{model}");
    }
}

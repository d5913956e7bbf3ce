//! Every sample parses, validates and plans; the plans are pinned by golden files.

mod common;

use iafactory_crds::PlatformConfig;
use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::plan::{ComponentKind, EnvValue, ResourcePlan, plan_manifest};

#[test]
fn every_sample_parses_validates_and_plans() {
    let files = common::sample_files();
    assert!(files.len() >= 5, "the five samples of config/samples/");
    let config = PlatformConfig::default();
    for file in files {
        let loaded = manifest::load_paths(std::slice::from_ref(&file))
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        assert!(!loaded.is_empty(), "{} holds a resource", file.display());
        let plans: Vec<ResourcePlan> = loaded
            .iter()
            .map(|l| {
                plan_manifest(&l.manifest, &config).unwrap_or_else(|e| panic!("{}: {e}", l.at))
            })
            .collect();
        let yaml = plans
            .iter()
            .map(|p| serde_yaml::to_string(p).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        let stem = file.file_stem().unwrap().to_string_lossy();
        common::assert_golden(
            &common::repo_root().join(format!("crds/tests/golden/{stem}.plan.yaml")),
            &yaml,
            "UPDATE_GOLDEN=1 cargo test -p iafactory-crds --test samples",
        );
    }
}

fn plan_of(file: &str) -> iafactory_crds::TenantPlan {
    let loaded = manifest::load_paths(&[common::samples_dir().join(file)]).unwrap();
    let Manifest::Tenant(tenant) = &loaded[0].manifest else {
        panic!("{file} is a Tenant")
    };
    iafactory_crds::plan(tenant, &PlatformConfig::default()).unwrap()
}

#[test]
fn the_university_plan_follows_its_manifest_and_tier() {
    let plan = plan_of("tenant-univ-tlemcen.yaml");
    assert_eq!(plan.namespace, "iaf-univ-tlemcen");
    let names: Vec<_> = plan.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["postgres", "ollama", "redis", "api"],
        "start order, no Qdrant under pgvector, Redis for two API replicas"
    );
    let api = plan.component(ComponentKind::Api).unwrap();
    assert_eq!(api.replicas, 2);
    assert_eq!(
        api.resources.requests.cpu.as_str(),
        "500m",
        "the manifest wins"
    );
    assert_eq!(
        api.resources.limits.memory.as_str(),
        "2Gi",
        "the pro default fills the rest"
    );
    assert_eq!(
        api.depends_on,
        [ComponentKind::Database, ComponentKind::Redis]
    );
    assert!(!plan.egress.internet);
    assert!(
        plan.egress.providers.is_empty(),
        "strict: no provider egress"
    );
    let preload = plan.model_preload.as_ref().unwrap();
    assert_eq!(preload.models, ["llama3.2:3b", "bge-m3"]);
    assert_eq!(plan.quota.requests_cpu.as_str(), "16");
    let env: Vec<_> = api.env.iter().map(|e| e.name.as_str()).collect();
    for required in [
        "IAF_DATABASE_APP_URL",
        "IAF_JWT_SECRET",
        "IAF_OPERATOR_TOKEN",
        "IAF_LISTEN",
        "IAF_LLM_BASE_URL",
        "IAF_LLM_MODEL",
    ] {
        assert!(env.contains(&required), "{required} in {env:?}");
    }
    let db_url = env
        .iter()
        .position(|n| *n == "IAF_DATABASE_APP_URL")
        .unwrap();
    let password = env
        .iter()
        .position(|n| *n == "IAF_DATABASE_APP_PASSWORD")
        .unwrap();
    assert!(
        password < db_url,
        "a $(VAR) template refers to an earlier variable"
    );
    // The serving container never holds the database owner's credentials: only the
    // `migrate` step, which runs before it, does.
    for owner in ["IAF_DATABASE_URL", "IAF_DB_PASSWORD"] {
        assert!(!env.contains(&owner), "{owner} in the API's env {env:?}");
    }
    assert!(!api.env.iter().any(|e| matches!(
        &e.value,
        EnvValue::Secret { secret, .. }
            if secret == iafactory_crds::plan::SECRET_DATABASE
    )));
    let migrate = api
        .init
        .as_ref()
        .expect("the API migrates before it serves");
    assert_eq!(migrate.args, ["migrate"]);
    let init_env: Vec<_> = migrate.env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        init_env,
        [
            "IAF_DB_PASSWORD",
            "IAF_DATABASE_URL",
            "IAF_DATABASE_APP_PASSWORD"
        ]
    );
}

#[test]
fn the_enterprise_plan_runs_qdrant_with_a_gpu_and_opens_only_its_provider() {
    let plan = plan_of("tenant-enterprise-qdrant-gpu.yaml");
    let names: Vec<_> = plan.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["postgres", "qdrant", "ollama", "redis", "api"]);
    assert_eq!(plan.component(ComponentKind::Ollama).unwrap().gpu, 1);
    let api = plan.component(ComponentKind::Api).unwrap();
    assert_eq!(
        api.depends_on,
        [
            ComponentKind::Database,
            ComponentKind::VectorStore,
            ComponentKind::Redis
        ]
    );
    assert_eq!(plan.egress.providers.len(), 1);
    let deepseek = &plan.egress.providers[0];
    assert_eq!(
        (deepseek.host.as_str(), deepseek.port),
        ("api.deepseek.com", 443)
    );
    assert!(plan.secrets.iter().any(|s| s.name == "qdrant-api-key"));
}

#[test]
fn a_suspended_tenant_keeps_its_volumes_and_runs_nothing() {
    let loaded =
        manifest::load_paths(&[common::samples_dir().join("tenant-univ-tlemcen.yaml")]).unwrap();
    let Manifest::Tenant(mut tenant) = loaded[0].manifest.clone() else {
        unreachable!()
    };
    let running = iafactory_crds::plan(&tenant, &PlatformConfig::default()).unwrap();
    tenant.spec.suspended = true;
    let suspended = iafactory_crds::plan(&tenant, &PlatformConfig::default()).unwrap();
    assert!(suspended.components.iter().all(|c| c.replicas == 0));
    assert!(suspended.model_preload.is_none());
    for (a, b) in running.components.iter().zip(&suspended.components) {
        assert_eq!(a.volumes, b.volumes, "{} keeps its data", a.name);
        assert_eq!(
            a.spec_hash, b.spec_hash,
            "{}: resuming starts what ran before, it replaces nothing",
            a.name
        );
    }
}

#[test]
fn the_llama_cpp_stand_in_is_configuration_not_code() {
    use figment::providers::{Format, Toml};
    let config = PlatformConfig::extract(PlatformConfig::figment().merge(Toml::string(
        r#"
[images.ollama]
image = "iafactory/llama-server:smollm2"
args = ["--port", "11434", "--model", "/models/model.gguf"]
env = { LLAMA_ARG_CTX_SIZE = "2048", OLLAMA_KEEP_ALIVE = "5m" }
healthcheck = []
[ollama]
pull_models = false
"#,
    )))
    .unwrap();
    let loaded =
        manifest::load_paths(&[common::samples_dir().join("tenant-univ-tlemcen.yaml")]).unwrap();
    let Manifest::Tenant(tenant) = &loaded[0].manifest else {
        unreachable!()
    };
    let plan = iafactory_crds::plan(tenant, &config).unwrap();
    let ollama = plan.component(ComponentKind::Ollama).unwrap();
    assert_eq!(ollama.image, "iafactory/llama-server:smollm2");
    assert_eq!(ollama.args[0], "--port");
    assert!(ollama.healthcheck.is_empty());
    let env = |name: &str| {
        ollama
            .env
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.value.clone())
    };
    assert_eq!(
        env("OLLAMA_KEEP_ALIVE"),
        Some(EnvValue::Literal { value: "5m".into() }),
        "the configuration overrides the plan's value in place"
    );
    assert_eq!(
        env("LLAMA_ARG_CTX_SIZE"),
        Some(EnvValue::Literal {
            value: "2048".into()
        })
    );
    assert!(
        plan.model_preload.is_none(),
        "a server that cannot pull gets no preload job"
    );
    let default = plan_of("tenant-univ-tlemcen.yaml");
    assert_ne!(
        default.component(ComponentKind::Ollama).unwrap().spec_hash,
        ollama.spec_hash
    );
    assert_eq!(
        default.component(ComponentKind::Api).unwrap().spec_hash,
        plan.component(ComponentKind::Api).unwrap().spec_hash,
        "the API is untouched"
    );
}

#[test]
fn spec_hashes_are_stable_and_track_changes() {
    let first = plan_of("tenant-univ-tlemcen.yaml");
    let second = plan_of("tenant-univ-tlemcen.yaml");
    assert_eq!(first, second, "planning is deterministic");
    let loaded =
        manifest::load_paths(&[common::samples_dir().join("tenant-univ-tlemcen.yaml")]).unwrap();
    let Manifest::Tenant(mut tenant) = loaded[0].manifest.clone() else {
        unreachable!()
    };
    tenant.spec.components.api.image = Some("iafactory/api:0.2.0".into());
    let upgraded = iafactory_crds::plan(&tenant, &PlatformConfig::default()).unwrap();
    for kind in [ComponentKind::Database, ComponentKind::Ollama] {
        assert_eq!(
            first.component(kind).unwrap().spec_hash,
            upgraded.component(kind).unwrap().spec_hash
        );
    }
    assert_ne!(
        first.component(ComponentKind::Api).unwrap().spec_hash,
        upgraded.component(ComponentKind::Api).unwrap().spec_hash
    );
    assert_eq!(
        first.model_preload, upgraded.model_preload,
        "an upgrade does not re-pull models"
    );
    tenant
        .spec
        .components
        .ollama
        .models
        .push("mistral:7b".into());
    let more_models = iafactory_crds::plan(&tenant, &PlatformConfig::default()).unwrap();
    assert_ne!(
        first.model_preload.unwrap().name,
        more_models.model_preload.unwrap().name
    );
}

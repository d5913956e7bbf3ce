//! What the operator's object tests share: the samples, and building a Tenant's objects
//! as the controller does, owned by a fixed Tenant UID (the goldens hold it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::{PlatformConfig, Tenant, TenantPlan};
use iafactory_operator::build::{BuildContext, TenantObjects, build};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The UID every test Tenant owns its objects with.
pub const TENANT_UID: &str = "00000000-0000-4000-8000-000000000001";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The first Tenant in `config/samples/<file>`.
pub fn sample_tenant(file: &str) -> Tenant {
    let path = repo_root().join("config/samples").join(file);
    for loaded in manifest::load_paths(std::slice::from_ref(&path)).unwrap() {
        if let Manifest::Tenant(tenant) = loaded.manifest {
            return *tenant;
        }
    }
    panic!("{file} holds no Tenant");
}

pub fn owner(name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "iafactory.dz/v1alpha1".into(),
        kind: "Tenant".into(),
        name: name.into(),
        uid: TENANT_UID.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The Tenant's plan under `config`, and the objects the operator builds from it.
pub fn build_objects(
    tenant: &Tenant,
    config: &PlatformConfig,
    service_monitors: bool,
) -> (TenantPlan, TenantObjects) {
    let plan = iafactory_crds::plan(tenant, config).unwrap();
    let objects = build(
        &plan,
        &BuildContext {
            owner: owner(&plan.tenant),
            service_monitors,
            operator: Default::default(),
        },
    );
    (plan, objects)
}

/// A database of its own, `name`, on the test PostgreSQL at `admin_url` (dropped first
/// if a killed run left it); its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> String {
    let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0)
}

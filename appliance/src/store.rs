//! The desired state on disk: the manifests `apply` accepted (Tenants, and each
//! tenant's KnowledgeBases and Workflows), the registrations `delete` removed and the
//! tenant's API has not yet forgotten, and the secrets generated once per tenant.
//! Writes are atomic (a temporary file renamed), so a crash leaves either the old or
//! the new file, never half of one.
//!
//! ```text
//! manifests/tenants/<tenant>.yaml                      the Tenant
//! manifests/tenants/<tenant>/knowledgebase-<name>.yaml its KnowledgeBases
//! manifests/tenants/<tenant>/workflow-<name>.yaml      its Workflows
//! manifests/tenants/<tenant>/<kind>-<name>.deleted     deleted, not yet unregistered
//! ```
//!
//! Beside the Tenant's file, in a directory that changes whenever they do, so the
//! daemon's watch of `manifests/tenants` sees them.
//!
//! ```text
//! secrets/<tenant>.json   generated secrets and those `iafactory secret set` stored
//! ```
//!
//! (mode 0600 in a 0700 directory; see [`user_secrets`]).

pub mod user_secrets;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use iafactory_crds::manifest::{self, Manifest, ManifestError};
use iafactory_crds::plan::TenantPlan;
use iafactory_crds::{KnowledgeBase, Tenant, Workflow};
use rand::RngCore;

/// Secret name → key → value, as the plan's `EnvValue::Secret` refers to them.
pub type Secrets = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot use the data directory {path}: {source}; check it exists and is writable by this user (appliance.data_dir)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a stored manifest is unreadable: {}; restore it from a backup or delete the file", render(.0))]
    Manifest(Vec<ManifestError>),
    #[error("{path} holds a {kind}, not a Tenant; remove it from the data directory")]
    NotATenant { path: PathBuf, kind: &'static str },
    #[error(
        "the secrets of tenant {tenant:?} in {path} are unreadable: {reason}; restore them from a backup"
    )]
    Secrets {
        tenant: String,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot serialize tenant {tenant:?}: {reason}")]
    Serialize { tenant: String, reason: String },
    #[error("{path} holds a {found}, not a {expected}; remove it from the data directory")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
}

/// What the appliance registers with a tenant's API rather than running itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum RegisteredKind {
    KnowledgeBase,
    Workflow,
}

impl RegisteredKind {
    pub const ALL: [RegisteredKind; 2] = [RegisteredKind::KnowledgeBase, RegisteredKind::Workflow];

    /// As in manifests: `KnowledgeBase`, `Workflow`.
    pub fn kind(self) -> &'static str {
        match self {
            RegisteredKind::KnowledgeBase => "KnowledgeBase",
            RegisteredKind::Workflow => "Workflow",
        }
    }

    /// As on the command line and in file names: `knowledgebase`, `workflow`.
    pub fn word(self) -> &'static str {
        match self {
            RegisteredKind::KnowledgeBase => "knowledgebase",
            RegisteredKind::Workflow => "workflow",
        }
    }

    /// The tenant API's collection: `/internal/tenants/{slug}/<collection>/{name}`.
    pub fn collection(self) -> &'static str {
        match self {
            RegisteredKind::KnowledgeBase => "knowledge-bases",
            RegisteredKind::Workflow => "workflows",
        }
    }

    fn of_file(stem: &str) -> Option<(RegisteredKind, &str)> {
        Self::ALL.into_iter().find_map(|kind| {
            stem.strip_prefix(kind.word())
                .and_then(|rest| rest.strip_prefix('-'))
                .filter(|name| !name.is_empty())
                .map(|name| (kind, name))
        })
    }
}

/// A tenant's KnowledgeBases and Workflows, as stored.
#[derive(Clone, Debug, Default)]
pub struct Registrations {
    pub knowledge_bases: Vec<KnowledgeBase>,
    pub workflows: Vec<Workflow>,
    /// Deleted from the store, still to be deleted from the tenant's API.
    pub deleted: Vec<(RegisteredKind, String)>,
}

impl Registrations {
    pub fn is_empty(&self) -> bool {
        self.knowledge_bases.is_empty() && self.workflows.is_empty() && self.deleted.is_empty()
    }
}

fn render(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the data directory.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Self {
            root: root.to_owned(),
        };
        for dir in [store.tenants_dir(), store.secrets_dir()] {
            fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        fs::set_permissions(store.secrets_dir(), fs::Permissions::from_mode(0o700)).map_err(
            |source| StoreError::Io {
                path: store.secrets_dir(),
                source,
            },
        )?;
        Ok(store)
    }

    /// Holds the appliance's lock until the returned file is dropped: one converge at
    /// a time, whether from the CLI or the daemon (the other waits its turn).
    pub fn lock(&self) -> Result<fs::File, StoreError> {
        let path = self.root.join(".lock");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(file)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tenants_dir(&self) -> PathBuf {
        self.root.join("manifests").join("tenants")
    }

    /// Where a tenant's KnowledgeBases and Workflows are kept.
    pub fn registrations_dir(&self, tenant: &str) -> PathBuf {
        self.tenants_dir().join(tenant)
    }

    fn registration_path(&self, tenant: &str, kind: RegisteredKind, name: &str) -> PathBuf {
        self.registrations_dir(tenant)
            .join(format!("{}-{name}.yaml", kind.word()))
    }

    fn deletion_path(&self, tenant: &str, kind: RegisteredKind, name: &str) -> PathBuf {
        self.registrations_dir(tenant)
            .join(format!("{}-{name}.deleted", kind.word()))
    }

    fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    pub fn tenant_path(&self, name: &str) -> PathBuf {
        self.tenants_dir().join(format!("{name}.yaml"))
    }

    fn secrets_path(&self, name: &str) -> PathBuf {
        self.secrets_dir().join(format!("{name}.json"))
    }

    /// Every stored Tenant, by name.
    pub fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let dir = self.tenants_dir();
        let loaded = manifest::load_paths(&[dir]).map_err(StoreError::Manifest)?;
        loaded
            .into_iter()
            .map(|l| match l.manifest {
                Manifest::Tenant(tenant) => Ok(*tenant),
                other => Err(StoreError::NotATenant {
                    path: PathBuf::from(l.at.source),
                    kind: other.kind(),
                }),
            })
            .collect()
    }

    pub fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let path = self.tenant_path(name);
        if !path.exists() {
            return Ok(None);
        }
        let loaded =
            manifest::load_paths(std::slice::from_ref(&path)).map_err(StoreError::Manifest)?;
        match loaded.into_iter().next().map(|l| l.manifest) {
            Some(Manifest::Tenant(tenant)) => Ok(Some(*tenant)),
            Some(other) => Err(StoreError::NotATenant {
                path,
                kind: other.kind(),
            }),
            None => Ok(None),
        }
    }

    /// Stores `tenant`; returns whether the stored text changed.
    pub fn put_tenant(&self, tenant: &Tenant) -> Result<bool, StoreError> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        let text = serde_yaml::to_string(tenant).map_err(|e| StoreError::Serialize {
            tenant: name.clone(),
            reason: e.to_string(),
        })?;
        let path = self.tenant_path(&name);
        if fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        write_atomically(&path, text.as_bytes(), 0o644)?;
        Ok(true)
    }

    /// The tenant's stored KnowledgeBases and Workflows, and the deletions still owed to
    /// its API.
    pub fn registrations(&self, tenant: &str) -> Result<Registrations, StoreError> {
        let dir = self.registrations_dir(tenant);
        let mut registrations = Registrations::default();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(registrations),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut deleted = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| StoreError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "deleted")
                && let Some((kind, name)) = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(RegisteredKind::of_file)
            {
                deleted.push((kind, name.to_owned()));
            }
        }
        deleted.sort();
        registrations.deleted = deleted;
        for loaded in manifest::load_paths(&[dir]).map_err(StoreError::Manifest)? {
            match loaded.manifest {
                Manifest::KnowledgeBase(kb) => registrations.knowledge_bases.push(*kb),
                Manifest::Workflow(workflow) => registrations.workflows.push(*workflow),
                other => {
                    return Err(StoreError::WrongKind {
                        path: PathBuf::from(loaded.at.source),
                        expected: "KnowledgeBase or Workflow",
                        found: other.kind(),
                    });
                }
            }
        }
        Ok(registrations)
    }

    pub fn put_knowledge_base(&self, tenant: &str, kb: &KnowledgeBase) -> Result<bool, StoreError> {
        let name = kb.metadata.name.as_deref().unwrap_or_default();
        self.put_registration(tenant, RegisteredKind::KnowledgeBase, name, kb)
    }

    pub fn put_workflow(&self, tenant: &str, workflow: &Workflow) -> Result<bool, StoreError> {
        let name = workflow.metadata.name.as_deref().unwrap_or_default();
        self.put_registration(tenant, RegisteredKind::Workflow, name, workflow)
    }

    /// Stores a KnowledgeBase or Workflow (a pending deletion of the same name is
    /// forgotten: it is wanted again); returns whether the stored text changed.
    fn put_registration<T: serde::Serialize>(
        &self,
        tenant: &str,
        kind: RegisteredKind,
        name: &str,
        resource: &T,
    ) -> Result<bool, StoreError> {
        let text = serde_yaml::to_string(resource).map_err(|e| StoreError::Serialize {
            tenant: tenant.to_owned(),
            reason: format!("{} {name}: {e}", kind.kind()),
        })?;
        let dir = self.registrations_dir(tenant);
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = self.registration_path(tenant, kind, name);
        let deletion = self.deletion_path(tenant, kind, name);
        let pending_deletion = deletion.exists();
        if fs::read_to_string(&path).is_ok_and(|old| old == text) && !pending_deletion {
            return Ok(false);
        }
        write_atomically(&path, text.as_bytes(), 0o644)?;
        remove_if_present(&deletion)?;
        Ok(true)
    }

    /// Removes a stored KnowledgeBase or Workflow and remembers that the tenant's API
    /// must forget it too. Returns false when none was stored under that name.
    pub fn remove_registration(
        &self,
        tenant: &str,
        kind: RegisteredKind,
        name: &str,
    ) -> Result<bool, StoreError> {
        let path = self.registration_path(tenant, kind, name);
        if !path.exists() {
            return Ok(false);
        }
        write_atomically(&self.deletion_path(tenant, kind, name), b"", 0o644)?;
        remove_if_present(&path)?;
        Ok(true)
    }

    /// The tenant's API has forgotten it: nothing more is owed.
    pub fn forget_deletion(
        &self,
        tenant: &str,
        kind: RegisteredKind,
        name: &str,
    ) -> Result<(), StoreError> {
        remove_if_present(&self.deletion_path(tenant, kind, name))
    }

    /// Every KnowledgeBase and Workflow of a tenant whose data is deleted with it.
    pub fn remove_registrations(&self, tenant: &str) -> Result<(), StoreError> {
        let dir = self.registrations_dir(tenant);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path: dir, source }),
        }
    }

    pub fn remove_tenant(&self, name: &str) -> Result<(), StoreError> {
        remove_if_present(&self.tenant_path(name))
    }

    pub fn remove_secrets(&self, name: &str) -> Result<(), StoreError> {
        remove_if_present(&self.secrets_path(name))
    }

    /// The tenant's secrets: generated once (CSPRNG, hex) and never overwritten, since
    /// the database was initialised with them; and those a person set
    /// ([`user_secrets`]), as they were stored.
    pub fn secrets(&self, plan: &TenantPlan) -> Result<Secrets, StoreError> {
        let _lock = self.secrets_lock()?;
        let mut secrets = self.read_secrets(&plan.tenant)?;
        let mut generated = false;
        for secret in &plan.secrets {
            let values = secrets.entry(secret.name.clone()).or_default();
            for key in &secret.keys {
                values.entry(key.key.clone()).or_insert_with(|| {
                    generated = true;
                    let mut bytes = vec![0u8; key.random_bytes];
                    rand::rng().fill_bytes(&mut bytes);
                    hex::encode(bytes)
                });
            }
        }
        if generated {
            let text = serde_json::to_vec_pretty(&secrets).expect("strings serialize");
            write_atomically(&self.secrets_path(&plan.tenant), &text, 0o600)?;
        }
        Ok(secrets)
    }

    /// The tenant's secrets file as it is (empty when there is none).
    fn read_secrets(&self, tenant: &str) -> Result<Secrets, StoreError> {
        let path = self.secrets_path(tenant);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Secrets {
                tenant: tenant.to_owned(),
                path: path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Secrets::new()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Held while a secrets file is read, changed and written: generation (any command
    /// that plans) and `iafactory secret` may run at once, and neither may lose the
    /// other's write. Separate from [`Store::lock`], which a converge holds for minutes.
    fn secrets_lock(&self) -> Result<fs::File, StoreError> {
        let path = self.secrets_dir().join(".lock");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(file)
    }

    /// The raw secrets file, for backups.
    pub fn secrets_file(&self, name: &str) -> PathBuf {
        self.secrets_path(name)
    }
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a temporary sibling with `mode`, syncs it and renames it over
/// `path`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knowledge_base(tenant: &str, name: &str, description: &str) -> KnowledgeBase {
        let text = format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata: {{name: {name}, namespace: iaf-{tenant}}}\nspec: {{description: {description:?}}}\n"
        );
        match manifest::parse("test", &text).unwrap().remove(0).manifest {
            Manifest::KnowledgeBase(kb) => *kb,
            other => panic!("{other:?}"),
        }
    }

    fn names(registrations: &Registrations) -> Vec<String> {
        registrations
            .knowledge_bases
            .iter()
            .filter_map(|kb| kb.metadata.name.clone())
            .collect()
    }

    #[test]
    fn registrations_are_idempotent_and_deletions_are_remembered_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.registrations("acme").unwrap().is_empty());

        let v1 = knowledge_base("acme", "docs", "v1");
        assert!(store.put_knowledge_base("acme", &v1).unwrap());
        assert!(!store.put_knowledge_base("acme", &v1).unwrap(), "same text");
        assert!(
            store
                .put_knowledge_base("acme", &knowledge_base("acme", "docs", "v2"))
                .unwrap()
        );
        let stored = store.registrations("acme").unwrap();
        assert_eq!(names(&stored), ["docs"]);
        assert_eq!(
            stored.knowledge_bases[0].spec.description.as_deref(),
            Some("v2")
        );
        // Beside the Tenant's file, not mistaken for a Tenant.
        assert!(store.tenants().unwrap().is_empty());

        assert!(
            store
                .remove_registration("acme", RegisteredKind::KnowledgeBase, "docs")
                .unwrap()
        );
        assert!(
            !store
                .remove_registration("acme", RegisteredKind::KnowledgeBase, "docs")
                .unwrap()
        );
        let stored = store.registrations("acme").unwrap();
        assert!(stored.knowledge_bases.is_empty());
        assert_eq!(
            stored.deleted,
            [(RegisteredKind::KnowledgeBase, "docs".to_owned())]
        );

        // Applied again before the API forgot it: wanted again, nothing owed.
        assert!(store.put_knowledge_base("acme", &v1).unwrap());
        assert!(store.registrations("acme").unwrap().deleted.is_empty());

        store
            .remove_registration("acme", RegisteredKind::KnowledgeBase, "docs")
            .unwrap();
        store
            .forget_deletion("acme", RegisteredKind::KnowledgeBase, "docs")
            .unwrap();
        assert!(store.registrations("acme").unwrap().is_empty());

        store.put_knowledge_base("acme", &v1).unwrap();
        store.remove_registrations("acme").unwrap();
        assert!(store.registrations("acme").unwrap().is_empty());
    }
}

//! The desired state on disk: the Tenant manifests `apply` accepted, and the secrets
//! generated once per tenant. Writes are atomic (a temporary file renamed), so a crash
//! leaves either the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use iafactory_crds::Tenant;
use iafactory_crds::manifest::{self, Manifest, ManifestError};
use iafactory_crds::plan::TenantPlan;
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

    pub fn remove_tenant(&self, name: &str) -> Result<(), StoreError> {
        remove_if_present(&self.tenant_path(name))
    }

    pub fn remove_secrets(&self, name: &str) -> Result<(), StoreError> {
        remove_if_present(&self.secrets_path(name))
    }

    /// The tenant's secrets: generated once (CSPRNG, hex) and never overwritten, since
    /// the database was initialised with them.
    pub fn secrets(&self, plan: &TenantPlan) -> Result<Secrets, StoreError> {
        let path = self.secrets_path(&plan.tenant);
        let mut secrets: Secrets = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Secrets {
                tenant: plan.tenant.clone(),
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Secrets::new(),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
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
            write_atomically(&path, &text, 0o600)?;
        }
        Ok(secrets)
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

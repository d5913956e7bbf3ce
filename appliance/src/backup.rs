//! `backup TENANT --to DIR` and `restore TENANT --from DIR`: a consistent PostgreSQL
//! dump (pg_dump runs in one snapshot, inside the database container), for a Qdrant
//! tenant the vector store's storage directory, the tenant's manifests (its own, its
//! knowledge bases' and workflows') and its secrets,
//! with a checksum of each file. A restore onto a fresh box stores the manifest and
//! secrets, starts the database alone, loads the dump, puts the vector store's data
//! into its fresh volume before Qdrant first starts, then starts the rest (so the API
//! never migrates an empty schema first).
//!
//! Qdrant's data is copied with Qdrant stopped (a clean shutdown flushes it; nothing is
//! mid-write while the copy runs), through Docker's archive API, so it needs nothing in
//! the image and works with any Qdrant version the box runs. Qdrant is down for the
//! copy: its duration is reported. The dump is taken first, so every document the dump
//! knows has its vectors in the copy (a document ingested in between may leave points
//! the restored database does not list, never the reverse). The appliance's lock is
//! held from the stop to the restart, so `serve` does not restart Qdrant mid-copy.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use async_compression::tokio::bufread::GzipDecoder;
use async_compression::tokio::write::GzipEncoder;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::plan::{
    ComponentKind, DATABASE_NAME, DATABASE_USER, LABEL_TENANT, NAMESPACE_PREFIX, plan,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{App, AppError};
use crate::engine::converge::Report;
use crate::engine::desired::{ContainerSpec, TenantState, instance_labels};
use crate::engine::docker::Target;
use crate::store::{Registrations, Secrets, write_atomically};

const INDEX: &str = "backup.json";
/// pg_dump's plain SQL, gzip-compressed here (`zcat postgres.sql.gz | psql` restores it
/// by hand).
const DUMP: &str = "postgres.sql.gz";
/// gzip's level for the dump (measured on 26 MB of chunks and 384-dimension vectors:
/// the backup figures in docs/appliance.md).
const DUMP_COMPRESSION: async_compression::Level = async_compression::Level::Precise(1);
/// The uncompressed dump of backups made before dumps were compressed; restore reads it.
const PLAIN_DUMP: &str = "postgres.sql";
const MANIFEST: &str = "tenant.yaml";
/// The tenant's KnowledgeBases and Workflows, one multi-document YAML (absent from
/// backups made before they could be applied).
const REGISTRATIONS: &str = "registrations.yaml";
/// The cluster's roles and memberships (pg_dumpall --roles-only, no passwords): the
/// dump's grants name the API's request role, which a fresh database lacks.
const ROLES: &str = "roles.sql";
const SECRETS: &str = "secrets.json";
const SOCKET: &str = "/var/run/postgresql";
/// pg_dump of the tenant's database, one snapshot, as plain SQL on stdout.
const PG_DUMP: [&str; 8] = [
    "pg_dump",
    "-h",
    SOCKET,
    "-U",
    DATABASE_USER,
    "-d",
    DATABASE_NAME,
    "--no-owner",
];
/// psql on the tenant's database, stopping at the first error, reading stdin.
const PSQL: [&str; 10] = [
    "psql",
    "-v",
    "ON_ERROR_STOP=1",
    "-q",
    "-h",
    SOCKET,
    "-U",
    DATABASE_USER,
    "-d",
    DATABASE_NAME,
];
/// The contents of Qdrant's storage directory, entries relative to it.
const VECTORS: &str = "qdrant-storage.tar";
/// How long Qdrant gets to flush and exit before Docker kills it.
const VECTOR_STORE_STOP_GRACE_SECONDS: i32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the vector store of tenant {tenant:?} has no data volume in its plan; nothing to copy"
    )]
    NoVectorVolume { tenant: String },
    #[error(
        "copying the vector store's data of tenant {tenant:?} failed: {source}; the backup in {dir} is incomplete: back up again"
    )]
    VectorCopy {
        tenant: String,
        dir: PathBuf,
        source: Box<BackupError>,
    },
    #[error(
        "volume {volume} of tenant {tenant:?} already exists on this box (kept by an earlier delete?); restore onto a fresh box, or remove it (`docker volume rm {volume}`) first; nothing was restored"
    )]
    VolumeExists { tenant: String, volume: String },
    #[error(
        "the database of tenant {tenant:?} is not running; `iafactory up` starts it, then back up again"
    )]
    DatabaseDown { tenant: String },
    #[error("{step} failed in the database of tenant {tenant:?} (exit {code}): {stderr}")]
    Database {
        tenant: String,
        step: &'static str,
        code: i64,
        stderr: String,
    },
    #[error("{dir} is not a backup of tenant {tenant:?}: {reason}; nothing was restored")]
    NotABackup {
        dir: PathBuf,
        tenant: String,
        reason: String,
    },
    #[error("{dir}/{file} is corrupt (its SHA-256 differs from {INDEX}); nothing was restored")]
    Corrupt { dir: PathBuf, file: String },
    #[error(
        "tenant {tenant:?} already exists on this appliance; restore onto a fresh box, or `iafactory delete {tenant}` first (with retention: Delete to drop its data)"
    )]
    Exists { tenant: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupIndex {
    pub tenant: String,
    pub created_by: String,
    /// File name → SHA-256.
    pub files: BTreeMap<String, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

fn database_container(state: &TenantState) -> Option<String> {
    state
        .containers
        .iter()
        .find(|c| c.component == ComponentKind::Database.name())
        .map(|c| c.name.clone())
}

fn vector_store_container(state: &TenantState) -> Option<&ContainerSpec> {
    state
        .containers
        .iter()
        .find(|c| c.component == ComponentKind::VectorStore.name())
}

/// The vector store's data directory: the mount of its (single) persistent volume.
fn vector_store_data(tenant: &str, spec: &ContainerSpec) -> Result<String, BackupError> {
    spec.mounts
        .first()
        .map(|(_, path)| path.clone())
        .ok_or_else(|| BackupError::NoVectorVolume {
            tenant: tenant.to_owned(),
        })
}

/// Writes the tenant's backup into `dir/<tenant>/`; returns that directory.
pub async fn backup(
    app: &App,
    tenant: &str,
    dir: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf, BackupError> {
    let out = dir.join(tenant);
    backup_into(app, tenant, &out, progress).await?;
    Ok(out)
}

/// Writes the tenant's backup into `out` itself (`restore --from out` reads it).
async fn backup_into(
    app: &App,
    tenant: &str,
    out: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), BackupError> {
    let out = out.to_owned();
    let state = app.desired_state_of(tenant)?;
    let database = database_container(&state).ok_or_else(|| BackupError::DatabaseDown {
        tenant: tenant.to_owned(),
    })?;
    let mut labels = instance_labels(&app.render_settings());
    labels.insert(LABEL_TENANT.into(), tenant.to_owned());
    let running = app
        .engine
        .containers(&labels)
        .await
        .map_err(AppError::from)?
        .into_iter()
        .any(|c| c.name == database && c.running);
    if !running {
        return Err(BackupError::DatabaseDown {
            tenant: tenant.to_owned(),
        });
    }
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let dumped = dump_to_file(app, tenant, &database, &out.join(DUMP)).await?;
    let roles = exec_in_database(
        app,
        tenant,
        &database,
        "pg_dumpall --roles-only",
        &[
            "pg_dumpall",
            "--roles-only",
            "--no-role-passwords",
            "-h",
            SOCKET,
            "-U",
            DATABASE_USER,
        ],
        None,
    )
    .await?;
    progress(&format!(
        "dumped the database ({} KB, {} KB compressed) and its roles",
        dumped.sql_bytes / 1000,
        dumped.file_bytes / 1000
    ));
    let manifest_text =
        std::fs::read(app.store.tenant_path(tenant)).map_err(io(&app.store.tenant_path(tenant)))?;
    let secrets_text = std::fs::read(app.store.secrets_file(tenant))
        .map_err(io(&app.store.secrets_file(tenant)))?;
    let registrations_text =
        registrations_yaml(&app.store.registrations(tenant).map_err(AppError::from)?);
    let mut index = BackupIndex {
        tenant: tenant.to_owned(),
        created_by: env!("CARGO_PKG_VERSION").to_owned(),
        files: BTreeMap::from([(DUMP.to_owned(), dumped.sha256)]),
    };
    for (file, bytes, mode) in [
        (ROLES, roles.as_slice(), 0o600),
        (MANIFEST, manifest_text.as_slice(), 0o644),
        (SECRETS, secrets_text.as_slice(), 0o600),
        (REGISTRATIONS, registrations_text.as_bytes(), 0o644),
    ] {
        let path = out.join(file);
        write_atomically(&path, bytes, mode).map_err(AppError::from)?;
        index
            .files
            .insert(file.to_owned(), hex::encode(Sha256::digest(bytes)));
    }
    if let Some(spec) = vector_store_container(&state) {
        let sha256 = copy_vector_store(app, tenant, spec, &out, progress)
            .await
            .map_err(|source| BackupError::VectorCopy {
                tenant: tenant.to_owned(),
                dir: out.clone(),
                source: Box::new(source),
            })?;
        index.files.insert(VECTORS.to_owned(), sha256);
    }
    let text = serde_json::to_vec_pretty(&index).expect("an index serializes");
    write_atomically(&out.join(INDEX), &text, 0o644).map_err(AppError::from)?;
    progress(&format!("wrote {}", out.display()));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Scheduled backups (`iafactory serve`, a Tenant's `backup: {schedule, retention}`):
// `<data_dir>/backups/<tenant>/<UTC timestamp>/`, each one a complete backup that
// `restore --from` reads, written aside (`.partial-<timestamp>`) and renamed when
// complete, so an interrupted run is never taken for a backup.

/// The name of a scheduled backup's directory: its UTC time.
const STAMP: &str = "%Y%m%dT%H%M%SZ";
const PARTIAL_PREFIX: &str = ".partial-";

/// Where the scheduled backups of `tenant` are: `<data_dir>/backups/<tenant>`.
pub fn scheduled_root(app: &App, tenant: &str) -> PathBuf {
    app.config.appliance.data_dir.join("backups").join(tenant)
}

/// The complete scheduled backups under `root`, oldest first.
pub fn scheduled_backups(root: &Path) -> Vec<(DateTime<Utc>, PathBuf)> {
    let mut found: Vec<(DateTime<Utc>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let time = NaiveDateTime::parse_from_str(&name, STAMP).ok()?.and_utc();
            entry
                .path()
                .join(INDEX)
                .is_file()
                .then(|| (time, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// When the newest complete scheduled backup of `tenant` was taken.
pub fn last_scheduled_backup(app: &App, tenant: &str) -> Option<DateTime<Utc>> {
    scheduled_backups(&scheduled_root(app, tenant))
        .last()
        .map(|(time, _)| *time)
}

/// Removes all but the `retention` newest complete backups under `root` (and any
/// partial one left by an interrupted run); returns the backups removed.
pub fn prune_scheduled(root: &Path, retention: usize) -> Result<Vec<PathBuf>, BackupError> {
    for entry in std::fs::read_dir(root).map_err(io(root))?.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    let backups = scheduled_backups(root);
    let extra = backups.len().saturating_sub(retention);
    let mut removed = Vec::new();
    for (_, path) in backups.into_iter().take(extra) {
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
        removed.push(path);
    }
    Ok(removed)
}

/// What one scheduled backup did.
#[derive(Debug)]
pub struct ScheduledBackup {
    pub dir: PathBuf,
    pub pruned: Vec<PathBuf>,
}

/// Backs `tenant` up into `<data_dir>/backups/<tenant>/<now>`, then keeps the
/// `retention` newest backups there.
pub async fn scheduled_backup(
    app: &App,
    tenant: &str,
    now: DateTime<Utc>,
    retention: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<ScheduledBackup, BackupError> {
    let root = scheduled_root(app, tenant);
    let stamp = now.format(STAMP).to_string();
    let partial = root.join(format!("{PARTIAL_PREFIX}{stamp}"));
    let dir = root.join(&stamp);
    if let Err(error) = backup_into(app, tenant, &partial, progress).await {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(error);
    }
    std::fs::rename(&partial, &dir).map_err(io(&dir))?;
    let pruned = prune_scheduled(&root, retention.max(1))?;
    Ok(ScheduledBackup { dir, pruned })
}

/// Restores the tenant from `dir` (the directory `backup` wrote, or its parent).
pub async fn restore(
    app: &App,
    tenant: &str,
    dir: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, BackupError> {
    let dir = if dir.join(INDEX).exists() {
        dir.to_owned()
    } else {
        dir.join(tenant)
    };
    let not_a_backup = |reason: String| BackupError::NotABackup {
        dir: dir.clone(),
        tenant: tenant.to_owned(),
        reason,
    };
    let index: BackupIndex = serde_json::from_slice(
        &std::fs::read(dir.join(INDEX)).map_err(|e| not_a_backup(format!("{INDEX}: {e}")))?,
    )
    .map_err(|e| not_a_backup(format!("{INDEX}: {e}")))?;
    if index.tenant != tenant {
        return Err(not_a_backup(format!("it is tenant {:?}'s", index.tenant)));
    }
    let (dump_file, compressed) = if index.files.contains_key(DUMP) {
        (DUMP, true)
    } else if index.files.contains_key(PLAIN_DUMP) {
        (PLAIN_DUMP, false)
    } else {
        return Err(not_a_backup(format!("{INDEX} lists no {DUMP}")));
    };
    let checked = Checked {
        dir: &dir,
        index: &index,
        tenant,
    };
    let dump = checked
        .path(dump_file)
        .await?
        .expect("the index lists the dump");
    let required = |file: &str| {
        checked
            .bytes(file)?
            .ok_or_else(|| not_a_backup(format!("{INDEX} lists no {file}")))
    };
    let manifest_bytes = required(MANIFEST)?;
    let secrets_bytes = required(SECRETS)?;
    // ROLES and REGISTRATIONS: files that backups made by earlier versions do not have.
    let roles = checked.bytes(ROLES)?;
    let registrations = match checked.bytes(REGISTRATIONS)? {
        Some(bytes) => restored_registrations(tenant, &String::from_utf8_lossy(&bytes))
            .map_err(not_a_backup)?,
        None => Vec::new(),
    };
    let vectors = checked.path(VECTORS).await?;
    if app.store.tenant(tenant).map_err(AppError::from)?.is_some() {
        return Err(BackupError::Exists {
            tenant: tenant.to_owned(),
        });
    }
    let mut tenant_labels = instance_labels(&app.render_settings());
    tenant_labels.insert(LABEL_TENANT.into(), tenant.to_owned());
    if let Some((volume, _)) = app
        .engine
        .volumes(&tenant_labels)
        .await
        .map_err(AppError::from)?
        .into_iter()
        .next()
    {
        return Err(BackupError::VolumeExists {
            tenant: tenant.to_owned(),
            volume,
        });
    }
    let text = String::from_utf8_lossy(&manifest_bytes).into_owned();
    let stored = match manifest::parse(MANIFEST, &text)
        .map_err(|e| not_a_backup(format!("{e:?}")))?
        .into_iter()
        .next()
        .map(|l| l.manifest)
    {
        Some(Manifest::Tenant(t)) if t.metadata.name.as_deref() == Some(tenant) => *t,
        _ => return Err(not_a_backup(format!("{MANIFEST} is not Tenant {tenant:?}"))),
    };
    let uses_qdrant = plan(&stored, &app.config.platform)
        .map_err(|e| not_a_backup(format!("{MANIFEST} cannot be planned here: {e}")))?
        .component(ComponentKind::VectorStore)
        .is_some();
    if uses_qdrant && vectors.is_none() {
        return Err(not_a_backup(format!(
            "the tenant uses Qdrant but the backup holds no {VECTORS}"
        )));
    }
    serde_json::from_slice::<Secrets>(&secrets_bytes)
        .map_err(|e| not_a_backup(format!("{SECRETS}: {e}")))?;
    // Held until the dump is loaded: `serve` must not start the API (which would
    // migrate an empty schema) as soon as the manifest appears.
    let lock = app.store.lock().map_err(AppError::from)?;
    write_atomically(&app.store.secrets_file(tenant), &secrets_bytes, 0o600)
        .map_err(AppError::from)?;
    app.store.put_tenant(&stored).map_err(AppError::from)?;
    for registration in &registrations {
        match registration {
            Manifest::KnowledgeBase(kb) => app.store.put_knowledge_base(tenant, kb),
            Manifest::Workflow(workflow) => app.store.put_workflow(tenant, workflow),
            Manifest::Tenant(_) => unreachable!("restored_registrations keeps no Tenant"),
        }
        .map_err(AppError::from)?;
    }
    progress(&format!(
        "stored the manifest, the secrets and {} knowledge base(s) and workflow(s)",
        registrations.len()
    ));

    // The database alone first, then the dump, then everything else.
    let state = app.desired_state_of(tenant)?;
    let database = database_container(&state).ok_or_else(|| BackupError::DatabaseDown {
        tenant: tenant.to_owned(),
    })?;
    let mut database_only = state.clone();
    database_only
        .containers
        .retain(|c| c.component == ComponentKind::Database.name());
    let mut report = Report::default();
    app.converger(progress)
        .converge_alone(&database_only, &mut report)
        .await
        .map_err(AppError::from)?;
    if let Some(roles) = &roles {
        exec_in_database(
            app,
            tenant,
            &database,
            "creating the roles with psql",
            &PSQL,
            Some(idempotent_roles(&String::from_utf8_lossy(roles)).as_bytes()),
        )
        .await?;
    }
    load_dump(app, tenant, &database, &dump, compressed).await?;
    progress("loaded the database dump");
    if let (Some(spec), Some(archive)) = (vector_store_container(&state), &vectors) {
        // Into the fresh volume before Qdrant first starts: `up` below starts the
        // container as created here.
        let data = vector_store_data(tenant, spec)?;
        let target = Target::component(tenant, ComponentKind::VectorStore.name());
        app.engine
            .create_container(&target, spec)
            .await
            .map_err(AppError::from)?;
        let file = tokio::fs::File::open(archive).await.map_err(io(archive))?;
        app.engine
            .upload_archive(
                &target,
                &spec.name,
                &data,
                tokio_util::io::ReaderStream::new(file),
            )
            .await
            .map_err(AppError::from)?;
        progress("restored the vector store's data");
    }
    drop(lock);
    let (more, result) = app.up(progress).await;
    report.actions.extend(more.actions);
    result?;
    // The dump already holds them; registering settles the API's record with the
    // manifests, as every reconcile does.
    for outcome in app.register_tenant(&stored).await? {
        progress(&outcome.to_string());
    }
    Ok(report)
}

/// The files of one backup, each checked against its index before it is used.
struct Checked<'a> {
    dir: &'a Path,
    index: &'a BackupIndex,
    tenant: &'a str,
}

impl Checked<'_> {
    fn not_a_backup(&self, reason: String) -> BackupError {
        BackupError::NotABackup {
            dir: self.dir.to_owned(),
            tenant: self.tenant.to_owned(),
            reason,
        }
    }

    fn verify(&self, file: &str, sha256: &str) -> Result<(), BackupError> {
        if self.index.files.get(file).map(String::as_str) == Some(sha256) {
            Ok(())
        } else {
            Err(BackupError::Corrupt {
                dir: self.dir.to_owned(),
                file: file.to_owned(),
            })
        }
    }

    /// A small file's contents; None when the index does not list it.
    fn bytes(&self, file: &str) -> Result<Option<Vec<u8>>, BackupError> {
        if !self.index.files.contains_key(file) {
            return Ok(None);
        }
        let bytes = std::fs::read(self.dir.join(file))
            .map_err(|e| self.not_a_backup(format!("{file}: {e}")))?;
        self.verify(file, &hex::encode(Sha256::digest(&bytes)))?;
        Ok(Some(bytes))
    }

    /// A large file's path, hashed as a stream off the runtime's threads; None when the
    /// index does not list it.
    async fn path(&self, file: &str) -> Result<Option<PathBuf>, BackupError> {
        if !self.index.files.contains_key(file) {
            return Ok(None);
        }
        let path = self.dir.join(file);
        let hashing = path.clone();
        let sha256 = tokio::task::spawn_blocking(move || sha256_file(&hashing))
            .await
            .expect("hashing a file does not panic")
            .map_err(|e| self.not_a_backup(format!("{file}: {e}")))?;
        self.verify(file, &sha256)?;
        Ok(Some(path))
    }
}

/// pg_dumpall's role script, made runnable on a database that already has some of its
/// roles (the bootstrap superuser, always): each CREATE ROLE tolerates an existing one.
/// The ALTER ROLE and GRANT lines that follow are idempotent already.
fn idempotent_roles(script: &str) -> String {
    script
        .lines()
        .map(|line| {
            match line
                .strip_prefix("CREATE ROLE ")
                .and_then(|role| role.strip_suffix(';'))
            {
                Some(role) => format!(
                    "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
                ),
                None => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The stored KnowledgeBases and Workflows as one multi-document YAML (deleted ones,
/// still to be unregistered, are not part of the tenant any more).
fn registrations_yaml(stored: &Registrations) -> String {
    let knowledge_bases = stored.knowledge_bases.iter().map(serde_yaml::to_string);
    let workflows = stored.workflows.iter().map(serde_yaml::to_string);
    knowledge_bases
        .chain(workflows)
        .map(|document| document.expect("a stored resource serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The backup's KnowledgeBases and Workflows, each checked to belong to `tenant`.
fn restored_registrations(tenant: &str, text: &str) -> Result<Vec<Manifest>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let namespace = format!("{NAMESPACE_PREFIX}{tenant}");
    manifest::parse(REGISTRATIONS, text)
        .map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?
        .into_iter()
        .map(|located| match located.manifest {
            Manifest::Tenant(_) => Err(format!("{REGISTRATIONS} holds a Tenant")),
            registration => {
                let found = match &registration {
                    Manifest::KnowledgeBase(kb) => kb.metadata.namespace.clone(),
                    Manifest::Workflow(workflow) => workflow.metadata.namespace.clone(),
                    Manifest::Tenant(_) => None,
                };
                if found.as_deref() == Some(namespace.as_str()) {
                    Ok(registration)
                } else {
                    Err(format!(
                        "{REGISTRATIONS}: a {} in namespace {found:?}, not {namespace:?}",
                        registration.kind()
                    ))
                }
            }
        })
        .collect()
}

/// Stops the vector store (when running), copies its data directory into
/// `out/qdrant-storage.tar`, starts it again and waits until it is healthy; returns the
/// archive's SHA-256. A failed restart is the error reported first.
async fn copy_vector_store(
    app: &App,
    tenant: &str,
    spec: &ContainerSpec,
    out: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String, BackupError> {
    let data = vector_store_data(tenant, spec)?;
    let target = Target::component(tenant, ComponentKind::VectorStore.name());
    let _lock = app.store.lock().map_err(AppError::from)?;
    let running = app
        .engine
        .inspect(&target, &spec.name)
        .await
        .map_err(AppError::from)?
        .and_then(|inspected| inspected.state)
        .and_then(|state| state.running)
        .unwrap_or(false);
    let stopping = Instant::now();
    if running {
        progress("stopping the vector store for a consistent copy of its data");
        app.engine
            .stop_container(&target, &spec.name, VECTOR_STORE_STOP_GRACE_SECONDS)
            .await
            .map_err(AppError::from)?;
    }
    let copying = Instant::now();
    let copied = download_to_file(app, &target, &spec.name, &data, &out.join(VECTORS)).await;
    if running {
        let starting = Instant::now();
        app.engine
            .start_container(&target, &spec.name)
            .await
            .map_err(AppError::from)?;
        app.converger(progress)
            .wait_healthy(&target, &spec.name)
            .await
            .map_err(AppError::from)?;
        let seconds = |from: Instant, to: Instant| (to - from).as_secs_f64();
        let healthy = Instant::now();
        progress(&format!(
            "the vector store was down for {:.1} s (stop {:.1} s, copy {:.1} s, start until healthy {:.1} s)",
            seconds(stopping, healthy),
            seconds(stopping, copying),
            seconds(copying, starting),
            seconds(starting, healthy),
        ));
    }
    // Hashed once Qdrant is back: the checksum costs no downtime.
    let bytes = copied?;
    let archive = out.join(VECTORS);
    let sha256 = sha256_file(&archive).map_err(io(&archive))?;
    progress(&format!(
        "copied the vector store's data ({} KB)",
        bytes / 1000
    ));
    Ok(sha256)
}

/// Creates (or truncates) `path`, readable by its owner only: what a backup holds is
/// the tenant's data.
async fn create_private(path: &Path) -> Result<tokio::fs::File, BackupError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io(path))
}

/// Streams the contents of `data` in the container into `file` (0600, written aside
/// and renamed); returns its size.
async fn download_to_file(
    app: &App,
    target: &Target,
    container: &str,
    data: &str,
    file: &Path,
) -> Result<u64, BackupError> {
    let partial = file.with_extension("tar.partial");
    let mut output = create_private(&partial).await?;
    let mut bytes = 0u64;
    // `DIR/.`: the directory's contents, so the archive extracts into any data directory.
    let contents = format!("{}/.", data.trim_end_matches('/'));
    let mut archive = std::pin::pin!(app.engine.download_archive(target, container, &contents));
    while let Some(chunk) = archive.next().await {
        let chunk = chunk.map_err(AppError::from)?;
        bytes += chunk.len() as u64;
        output.write_all(&chunk).await.map_err(io(&partial))?;
    }
    output.sync_all().await.map_err(io(&partial))?;
    tokio::fs::rename(&partial, file).await.map_err(io(file))?;
    Ok(bytes)
}

/// What [`dump_to_file`] wrote.
struct Dumped {
    /// What pg_dump printed.
    sql_bytes: u64,
    /// The compressed file.
    file_bytes: u64,
    sha256: String,
}

/// pg_dump of the tenant's database, streamed through gzip into `file` (0600, written
/// aside and renamed) and hashed on the way: a dump is as large as the tenant's
/// documents and their vectors, so it never sits in memory.
async fn dump_to_file(
    app: &App,
    tenant: &str,
    database: &str,
    file: &Path,
) -> Result<Dumped, BackupError> {
    let partial = file.with_extension("partial");
    let opened = create_private(&partial).await?;
    let mut output = Tally::counting(GzipEncoder::with_quality(
        Tally::hashing(tokio::io::BufWriter::new(opened)),
        DUMP_COMPRESSION,
    ));
    let dumped = run_in_database(
        app,
        tenant,
        database,
        "pg_dump",
        &PG_DUMP,
        None::<&[u8]>,
        &mut output,
    )
    .await;
    if let Err(error) = dumped {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    // The gzip trailer, then everything buffered below it.
    output.shutdown().await.map_err(io(&partial))?;
    let (compressor, sql_bytes, _) = output.finish();
    let (buffered, file_bytes, sha256) = compressor.into_inner().finish();
    let sha256 = sha256.expect("the file is hashed");
    buffered
        .into_inner()
        .sync_all()
        .await
        .map_err(io(&partial))?;
    tokio::fs::rename(&partial, file).await.map_err(io(file))?;
    Ok(Dumped {
        sql_bytes,
        file_bytes,
        sha256,
    })
}

/// Streams the dump in `file` (gzip-compressed or not) into psql in the tenant's
/// database.
async fn load_dump(
    app: &App,
    tenant: &str,
    database: &str,
    file: &Path,
    compressed: bool,
) -> Result<(), BackupError> {
    let opened = tokio::io::BufReader::new(tokio::fs::File::open(file).await.map_err(io(file))?);
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if compressed {
        Box::new(GzipDecoder::new(opened))
    } else {
        Box::new(opened)
    };
    run_in_database(
        app,
        tenant,
        database,
        "loading the dump with psql",
        &PSQL,
        Some(input),
        &mut tokio::io::sink(),
    )
    .await
}

/// Counts, and if asked hashes, what passes through to the writer it wraps.
struct Tally<W> {
    inner: W,
    bytes: u64,
    hash: Option<Sha256>,
}

impl<W> Tally<W> {
    fn counting(inner: W) -> Self {
        Self {
            inner,
            bytes: 0,
            hash: None,
        }
    }

    fn hashing(inner: W) -> Self {
        Self {
            hash: Some(Sha256::new()),
            ..Self::counting(inner)
        }
    }

    /// The inner writer, the byte count and the SHA-256 (when hashing).
    fn finish(self) -> (W, u64, Option<String>) {
        let sha256 = self.hash.map(|hash| hex::encode(hash.finalize()));
        (self.inner, self.bytes, sha256)
    }
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tally<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = written {
            self.bytes += n as u64;
            if let Some(hash) = &mut self.hash {
                hash.update(&buf[..n]);
            }
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buffer[..read]);
    }
}

/// Runs `command` in the tenant's database container, streaming `input` to it and
/// its stdout into `output`; a non-zero exit is an error naming the step, with the end
/// of what the command wrote on stderr.
async fn run_in_database<R, W>(
    app: &App,
    tenant: &str,
    database: &str,
    step: &'static str,
    command: &[&str],
    input: Option<R>,
    output: &mut W,
) -> Result<(), BackupError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let target = Target::component(tenant, ComponentKind::Database.name());
    let command: Vec<String> = command.iter().map(|part| (*part).to_owned()).collect();
    let finished = app
        .engine
        .exec_streaming(&target, database, &command, input, output)
        .await
        .map_err(AppError::from)?;
    if finished.code != 0 {
        return Err(BackupError::Database {
            tenant: tenant.to_owned(),
            step,
            code: finished.code,
            stderr: String::from_utf8_lossy(&finished.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// [`run_in_database`] for a command that prints little: its stdout.
async fn exec_in_database(
    app: &App,
    tenant: &str,
    database: &str,
    step: &'static str,
    command: &[&str],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, BackupError> {
    let mut stdout = Vec::new();
    run_in_database(app, tenant, database, step, command, input, &mut stdout).await?;
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_backups_are_complete_timestamped_directories_and_pruning_keeps_the_newest() {
        let root = tempfile::tempdir().unwrap();
        for (name, complete) in [
            ("20260310T100100Z", true),
            ("20260310T100300Z", true),
            ("20260310T100200Z", true),
            // Interrupted: no index. Not a backup, and never the "last" one.
            ("20260310T100400Z", false),
            (".partial-20260310T100500Z", false),
            ("notes", true),
        ] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            if complete {
                std::fs::write(dir.join(INDEX), "{}").unwrap();
            }
        }
        let names = |found: Vec<(DateTime<Utc>, PathBuf)>| -> Vec<String> {
            found
                .iter()
                .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(scheduled_backups(root.path())),
            ["20260310T100100Z", "20260310T100200Z", "20260310T100300Z"]
        );
        let removed = prune_scheduled(root.path(), 2).unwrap();
        assert_eq!(removed, [root.path().join("20260310T100100Z")]);
        assert_eq!(
            names(scheduled_backups(root.path())),
            ["20260310T100200Z", "20260310T100300Z"]
        );
        assert!(!root.path().join(".partial-20260310T100500Z").exists());
        assert!(root.path().join("notes").exists(), "not ours: left alone");
    }

    #[test]
    fn every_create_role_tolerates_an_existing_role_and_nothing_else_changes() {
        let script = "SET client_encoding = 'UTF8';\nCREATE ROLE iafactory;\nALTER ROLE iafactory WITH SUPERUSER LOGIN;\nCREATE ROLE \"Odd Name\";\nGRANT iafactory_app TO iafactory WITH INHERIT TRUE GRANTED BY iafactory;";
        let fixed = idempotent_roles(script);
        let lines: Vec<&str> = fixed.lines().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], "SET client_encoding = 'UTF8';");
        assert_eq!(
            lines[1],
            "DO $$ BEGIN CREATE ROLE iafactory; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        );
        assert_eq!(lines[2], "ALTER ROLE iafactory WITH SUPERUSER LOGIN;");
        assert!(lines[3].contains("CREATE ROLE \"Odd Name\"; EXCEPTION"));
        assert_eq!(lines[4], script.lines().last().unwrap());
    }

    #[test]
    fn restored_registrations_belong_to_the_tenant_and_are_never_a_tenant() {
        let kb = |namespace: &str| {
            format!(
                "apiVersion: iafactory.dz/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: docs\n  namespace: {namespace}\nspec:\n  languages: [fr]\n"
            )
        };
        assert_eq!(restored_registrations("univ", "").unwrap().len(), 0);
        assert_eq!(
            restored_registrations("univ", &kb("iaf-univ"))
                .unwrap()
                .len(),
            1
        );
        let foreign = restored_registrations("univ", &kb("iaf-other")).unwrap_err();
        assert!(foreign.contains("iaf-other"), "{foreign}");
        let tenant =
            "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: univ\nspec: {}\n";
        assert!(
            restored_registrations("univ", tenant)
                .unwrap_err()
                .contains("holds a Tenant")
        );
        assert!(restored_registrations("univ", "kind: [").is_err());
    }
}

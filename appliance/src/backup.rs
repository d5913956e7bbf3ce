//! `backup TENANT --to DIR` and `restore TENANT --from DIR`: a consistent PostgreSQL
//! dump (pg_dump runs in one snapshot, inside the database container), the tenant's
//! manifest and its secrets, with a checksum of each file. A restore onto a fresh box
//! stores the manifest and secrets, starts the database alone, loads the dump, then
//! starts the rest (so the API never migrates an empty schema first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use iafactory_crds::manifest::{self, Manifest};
use iafactory_crds::plan::{ComponentKind, DATABASE_NAME, DATABASE_USER, plan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{App, AppError};
use crate::engine::converge::Report;
use crate::engine::desired::{TenantState, instance_labels, tenant_state};
use crate::engine::docker::{ExecOutput, Target};
use crate::store::{Secrets, write_atomically};

const INDEX: &str = "backup.json";
const DUMP: &str = "postgres.sql";
const MANIFEST: &str = "tenant.yaml";
const SECRETS: &str = "secrets.json";
const SOCKET: &str = "/var/run/postgresql";

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
        "tenant {tenant:?} uses the Qdrant vector store; backing it up (a Qdrant snapshot) is not implemented yet: back up its volume with the box stopped"
    )]
    QdrantNotImplemented { tenant: String },
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

fn desired_state(app: &App, tenant: &str) -> Result<TenantState, BackupError> {
    let stored = app.require_tenant(tenant)?;
    let planned = plan(&stored, &app.config.platform).map_err(|error| AppError::StoredPlan {
        tenant: tenant.to_owned(),
        error: Box::new(error),
    })?;
    if planned.component(ComponentKind::VectorStore).is_some() {
        return Err(BackupError::QdrantNotImplemented {
            tenant: tenant.to_owned(),
        });
    }
    let secrets = app.store.secrets(&planned).map_err(AppError::from)?;
    Ok(tenant_state(&planned, &secrets, &app.render_settings()).map_err(AppError::from)?)
}

/// Writes the tenant's backup into `dir/<tenant>/`; returns that directory.
pub async fn backup(
    app: &App,
    tenant: &str,
    dir: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf, BackupError> {
    let state = desired_state(app, tenant)?;
    let database = database_container(&state).ok_or_else(|| BackupError::DatabaseDown {
        tenant: tenant.to_owned(),
    })?;
    let mut labels = instance_labels(&app.render_settings());
    labels.insert(iafactory_crds::plan::LABEL_TENANT.into(), tenant.to_owned());
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
    let out = dir.join(tenant);
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let dump = exec_in_database(
        app,
        tenant,
        &database,
        "pg_dump",
        &[
            "pg_dump",
            "-h",
            SOCKET,
            "-U",
            DATABASE_USER,
            "-d",
            DATABASE_NAME,
            "--no-owner",
        ],
        None,
    )
    .await?;
    progress(&format!(
        "dumped the database ({} KB)",
        dump.stdout.len() / 1000
    ));
    let manifest_text =
        std::fs::read(app.store.tenant_path(tenant)).map_err(io(&app.store.tenant_path(tenant)))?;
    let secrets_text = std::fs::read(app.store.secrets_file(tenant))
        .map_err(io(&app.store.secrets_file(tenant)))?;
    let mut index = BackupIndex {
        tenant: tenant.to_owned(),
        created_by: env!("CARGO_PKG_VERSION").to_owned(),
        files: BTreeMap::new(),
    };
    for (file, bytes, mode) in [
        (DUMP, dump.stdout.as_slice(), 0o600),
        (MANIFEST, manifest_text.as_slice(), 0o644),
        (SECRETS, secrets_text.as_slice(), 0o600),
    ] {
        let path = out.join(file);
        write_atomically(&path, bytes, mode).map_err(AppError::from)?;
        index
            .files
            .insert(file.to_owned(), hex::encode(Sha256::digest(bytes)));
    }
    let text = serde_json::to_vec_pretty(&index).expect("an index serializes");
    write_atomically(&out.join(INDEX), &text, 0o644).map_err(AppError::from)?;
    progress(&format!("wrote {}", out.display()));
    Ok(out)
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
    let mut files = BTreeMap::new();
    for file in [DUMP, MANIFEST, SECRETS] {
        let bytes =
            std::fs::read(dir.join(file)).map_err(|e| not_a_backup(format!("{file}: {e}")))?;
        if index.files.get(file) != Some(&hex::encode(Sha256::digest(&bytes))) {
            return Err(BackupError::Corrupt {
                dir: dir.clone(),
                file: file.to_owned(),
            });
        }
        files.insert(file, bytes);
    }
    if app.store.tenant(tenant).map_err(AppError::from)?.is_some() {
        return Err(BackupError::Exists {
            tenant: tenant.to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&files[MANIFEST]).into_owned();
    let stored = match manifest::parse(MANIFEST, &text)
        .map_err(|e| not_a_backup(format!("{e:?}")))?
        .into_iter()
        .next()
        .map(|l| l.manifest)
    {
        Some(Manifest::Tenant(t)) if t.metadata.name.as_deref() == Some(tenant) => *t,
        _ => return Err(not_a_backup(format!("{MANIFEST} is not Tenant {tenant:?}"))),
    };
    serde_json::from_slice::<Secrets>(&files[SECRETS])
        .map_err(|e| not_a_backup(format!("{SECRETS}: {e}")))?;
    // Held until the dump is loaded: `serve` must not start the API (which would
    // migrate an empty schema) as soon as the manifest appears.
    let lock = app.store.lock().map_err(AppError::from)?;
    write_atomically(&app.store.secrets_file(tenant), &files[SECRETS], 0o600)
        .map_err(AppError::from)?;
    app.store.put_tenant(&stored).map_err(AppError::from)?;
    progress("stored the manifest and secrets");

    // The database alone first, then the dump, then everything else.
    let state = desired_state(app, tenant)?;
    let database = database_container(&state).ok_or_else(|| BackupError::DatabaseDown {
        tenant: tenant.to_owned(),
    })?;
    let mut database_only = state.clone();
    database_only
        .containers
        .retain(|c| c.component == ComponentKind::Database.name());
    let mut report = Report::default();
    let converger = app.converger(progress);
    let labels = instance_labels(&app.render_settings());
    let networks = app
        .engine
        .networks(&labels)
        .await
        .map_err(AppError::from)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let volumes = app
        .engine
        .volumes(&labels)
        .await
        .map_err(AppError::from)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    converger
        .converge_tenant(&database_only, &[], &networks, &volumes, &mut report)
        .await
        .map_err(AppError::from)?;
    exec_in_database(
        app,
        tenant,
        &database,
        "loading the dump with psql",
        &[
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
        ],
        Some(&files[DUMP]),
    )
    .await?;
    progress("loaded the database dump");
    drop(lock);
    let (more, result) = app.up(progress).await;
    report.actions.extend(more.actions);
    result?;
    Ok(report)
}

/// Runs `command` in the tenant's database container; a non-zero exit is an error
/// naming the step, with what the command wrote on stderr.
async fn exec_in_database(
    app: &App,
    tenant: &str,
    database: &str,
    step: &'static str,
    command: &[&str],
    input: Option<&[u8]>,
) -> Result<ExecOutput, BackupError> {
    let target = Target::component(tenant, ComponentKind::Database.name());
    let command: Vec<String> = command.iter().map(|part| (*part).to_owned()).collect();
    let output = app
        .engine
        .exec(&target, database, &command, input)
        .await
        .map_err(AppError::from)?;
    if output.code != 0 {
        return Err(BackupError::Database {
            tenant: tenant.to_owned(),
            step,
            code: output.code,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

//! `iafactory secret set | list | delete`: the secrets a Tenant's `secretRef`s name (an
//! external LLM provider's API key), kept in the data directory as Kubernetes Secrets
//! are kept on a cluster. Values come in on stdin, unechoed on a terminal, and are never
//! printed: a listing shows names and keys.
//!
//! Works on the data directory alone (no Docker Engine needed): `up`, or the daemon's
//! next reconcile, gives a new value to the tenant.

use std::io::{BufRead, IsTerminal, Read, Write};

use clap::Subcommand;
use iafactory_crds::PlatformConfig;
use iafactory_crds::plan::{PlanError, TenantPlan, plan};

use crate::engine::desired::{NeededSecret, set_command, user_secrets};
use crate::store::user_secrets::{GENERATED, UserSecretError};
use crate::store::{Store, StoreError};

/// A value longer than this is a mistake (a file piped in by accident), not an API key
/// or a certificate.
const MAX_VALUE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store key KEY of secret NAME of TENANT (as a `secretRef: {name, key}` names it),
    /// read from stdin: typed without echo on a terminal, or piped
    /// (`iafactory secret set acme deepseek-key apiKey < key.txt`). One trailing newline
    /// is dropped.
    Set {
        tenant: String,
        name: String,
        key: String,
    },
    /// The secrets' names and keys (never their values), with their state: `generated`
    /// (by the appliance), `set` (with `secret set`), or `missing` (a secretRef of the
    /// tenant that nobody set: `up` cannot start the tenant).
    List { tenant: Option<String> },
    /// Delete a secret that was set, or only one of its keys.
    Delete {
        tenant: String,
        name: String,
        key: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SecretCommandError {
    #[error("cannot read the value from stdin: {0}")]
    Stdin(std::io::Error),
    #[error(
        "the value on stdin is longer than {} KiB; pipe only the secret's value", MAX_VALUE_BYTES / 1024
    )]
    TooLong,
    #[error(transparent)]
    Secret(#[from] UserSecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the stored tenant {tenant:?} cannot be planned with this configuration: {error}; fix the configuration or re-apply the tenant"
    )]
    StoredPlan {
        tenant: String,
        error: Box<PlanError>,
    },
    #[error("no tenant {0:?} on this appliance and no secret stored for it")]
    UnknownTenant(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// One row of `secret list`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRow {
    pub tenant: String,
    pub name: String,
    pub key: String,
    /// `generated`, `set` or `missing`.
    pub state: &'static str,
}

/// Runs one `iafactory secret` command; `stdin` gives `set` its value.
pub fn run(
    store: &Store,
    config: &PlatformConfig,
    command: SecretCommand,
    stdin: impl BufRead,
    out: &mut impl Write,
) -> Result<(), SecretCommandError> {
    match command {
        SecretCommand::Set { tenant, name, key } => {
            let value = read_value(&tenant, &name, &key, stdin)?;
            for line in set(store, config, &tenant, &name, &key, &value)? {
                writeln!(out, "{line}")?;
            }
        }
        SecretCommand::List { tenant } => {
            let rows = list(store, config, tenant.as_deref())?;
            writeln!(out, "{:<24} {:<32} {:<24} STATE", "TENANT", "SECRET", "KEY")?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<24} {:<32} {:<24} {}",
                    r.tenant, r.name, r.key, r.state
                )?;
            }
        }
        SecretCommand::Delete { tenant, name, key } => {
            for line in delete(store, config, &tenant, &name, key.as_deref())? {
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

/// The value: typed unechoed when stdin is a terminal, else everything piped in, one
/// trailing line ending dropped (`echo KEY |` adds one).
fn read_value(
    tenant: &str,
    name: &str,
    key: &str,
    stdin: impl BufRead,
) -> Result<String, SecretCommandError> {
    let bytes = if std::io::stdin().is_terminal() {
        eprint!("value of {name}/{key} for tenant {tenant} (not echoed): ");
        let _ = std::io::stderr().flush();
        let echo_off = EchoOff::new().map_err(SecretCommandError::Stdin)?;
        let line = read_line(stdin);
        drop(echo_off);
        // The Enter the person typed was not echoed either.
        eprintln!();
        line?
    } else {
        let mut bytes = Vec::new();
        stdin
            .take(MAX_VALUE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(SecretCommandError::Stdin)?;
        bytes
    };
    if bytes.len() as u64 > MAX_VALUE_BYTES {
        return Err(SecretCommandError::TooLong);
    }
    let mut value = String::from_utf8(bytes).map_err(|_| {
        SecretCommandError::Stdin(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the value is not UTF-8 text",
        ))
    })?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

/// One typed line, from the reader given (`main` holds stdin's lock: asking
/// `std::io::stdin()` again would wait for it forever).
fn read_line(stdin: impl BufRead) -> Result<Vec<u8>, SecretCommandError> {
    let mut line = Vec::new();
    stdin
        .take(MAX_VALUE_BYTES + 1)
        .read_until(b'\n', &mut line)
        .map_err(SecretCommandError::Stdin)?;
    Ok(line)
}

/// Turns the terminal's echo off until dropped, so a typed value never shows.
struct EchoOff {
    saved: rustix::termios::Termios,
}

impl EchoOff {
    fn new() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
        Ok(Self { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn stored_plan(
    store: &Store,
    config: &PlatformConfig,
    tenant: &str,
) -> Result<Option<TenantPlan>, SecretCommandError> {
    let Some(stored) = store.tenant(tenant)? else {
        return Ok(None);
    };
    plan(&stored, config)
        .map(Some)
        .map_err(|error| SecretCommandError::StoredPlan {
            tenant: tenant.to_owned(),
            error: Box::new(error),
        })
}

/// The plan generates this secret: by name, whatever the configuration adds to the
/// well-known ones.
fn refuse_generated(
    plan: Option<&TenantPlan>,
    tenant: &str,
    name: &str,
) -> Result<(), UserSecretError> {
    if plan.is_some_and(|p| p.secrets.iter().any(|s| s.name == name)) {
        return Err(UserSecretError::Generated {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn render(needed: &[NeededSecret]) -> String {
    if needed.is_empty() {
        return "none".to_owned();
    }
    needed
        .iter()
        .map(|n| format!("{}/{}", n.secret, n.key))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stores the value; returns the lines to print (never the value).
pub fn set(
    store: &Store,
    config: &PlatformConfig,
    tenant: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<Vec<String>, SecretCommandError> {
    let planned = stored_plan(store, config, tenant)?;
    refuse_generated(planned.as_ref(), tenant, name)?;
    let replaced = store.set_user_secret(tenant, name, key, value)?;
    let mut lines = vec![format!(
        "secret {name}/{key} of tenant {tenant} {}",
        if replaced { "replaced" } else { "stored" }
    )];
    match &planned {
        None => lines.push(format!(
            "tenant {tenant} is not on this appliance yet: the key waits for `iafactory apply`"
        )),
        Some(plan) => {
            let needed = user_secrets(plan);
            if needed.iter().any(|n| n.secret == name && n.key == key) {
                lines.push(
                    "`iafactory up` (or the daemon's next reconcile) gives it to the tenant"
                        .to_owned(),
                );
            } else {
                lines.push(format!(
                    "note: tenant {tenant}'s manifest refers to no secret {name}/{key} (its secretRefs: {})",
                    render(&needed)
                ));
            }
        }
    }
    Ok(lines)
}

/// Every secret of `tenant` (or of every tenant stored or with secrets), by name and
/// key, with its state.
pub fn list(
    store: &Store,
    config: &PlatformConfig,
    tenant: Option<&str>,
) -> Result<Vec<SecretRow>, SecretCommandError> {
    let stored = store.secret_keys(tenant)?;
    let mut tenants: Vec<String> = match tenant {
        Some(t) => vec![t.to_owned()],
        None => store
            .tenants()?
            .into_iter()
            .filter_map(|t| t.metadata.name)
            .chain(stored.iter().map(|k| k.tenant.clone()))
            .collect(),
    };
    tenants.sort();
    tenants.dedup();
    let mut rows = Vec::new();
    for tenant in &tenants {
        let planned = stored_plan(store, config, tenant)?;
        let keys: Vec<_> = stored.iter().filter(|k| &k.tenant == tenant).collect();
        if planned.is_none() && keys.is_empty() {
            return Err(SecretCommandError::UnknownTenant(tenant.clone()));
        }
        let generated = |name: &str| {
            GENERATED.contains(&name)
                || planned
                    .as_ref()
                    .is_some_and(|p| p.secrets.iter().any(|s| s.name == name))
        };
        for k in &keys {
            rows.push(SecretRow {
                tenant: tenant.clone(),
                name: k.name.clone(),
                key: k.key.clone(),
                state: if generated(&k.name) {
                    "generated"
                } else {
                    "set"
                },
            });
        }
        for needed in planned.iter().flat_map(user_secrets) {
            if !keys
                .iter()
                .any(|k| k.name == needed.secret && k.key == needed.key)
            {
                rows.push(SecretRow {
                    tenant: tenant.clone(),
                    name: needed.secret,
                    key: needed.key,
                    state: "missing",
                });
            }
        }
    }
    rows.sort();
    Ok(rows)
}

/// Deletes a set secret (or one key); returns the lines to print.
pub fn delete(
    store: &Store,
    config: &PlatformConfig,
    tenant: &str,
    name: &str,
    key: Option<&str>,
) -> Result<Vec<String>, SecretCommandError> {
    let planned = stored_plan(store, config, tenant)?;
    refuse_generated(planned.as_ref(), tenant, name)?;
    let deleted = store.delete_user_secret(tenant, name, key)?;
    let mut lines = vec![format!(
        "deleted key(s) {} of secret {name} of tenant {tenant}",
        deleted.join(", ")
    )];
    for needed in planned.iter().flat_map(user_secrets) {
        if needed.secret == name && deleted.contains(&needed.key) {
            lines.push(format!(
                "warning: tenant {tenant} refers to {name}/{}: `iafactory up` cannot start it until `{}`",
                needed.key,
                set_command(tenant, name, &needed.key)
            ));
        }
    }
    Ok(lines)
}

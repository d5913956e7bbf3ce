//! Certificates on disk: `DIR/hosts/HOST.pem`, key and chain in one 0600 file, in 0700
//! directories, replaced atomically.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::material::{ParsedCertificate, parse_certificate};
use super::{CertError, checked_host};

const PRIVATE_DIR_MODE: u32 = 0o700;
const PRIVATE_FILE_MODE: u32 = 0o600;

/// The certificate directory. Every path it hands out is under `dir`.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// Opens (creating it 0700 if needed) the certificate directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CertError> {
        let store = Self { dir: dir.into() };
        private_dir(&store.dir)?;
        private_dir(&store.dir.join("hosts"))?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `host`'s key and chain are kept.
    pub fn host_path(&self, host: &str) -> Result<PathBuf, CertError> {
        Ok(self
            .dir
            .join("hosts")
            .join(format!("{}.pem", checked_host(host)?)))
    }

    /// The stored certificate for `host`: `Ok(None)` when there is none, an error naming
    /// the file when it cannot be used.
    pub fn load(&self, host: &str) -> Result<Option<ParsedCertificate>, CertError> {
        let path = self.host_path(host)?;
        let pem = match fs::read(&path) {
            Ok(pem) => pem,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CertError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let parsed = parse_certificate(&pem, &pem, &path)?;
        if !parsed.covers(host) {
            return Err(CertError::NotCovered {
                path,
                host: host.to_owned(),
                names: parsed.names,
            });
        }
        Ok(Some(parsed))
    }

    /// Stores `host`'s new key and chain, after checking they parse and belong together.
    pub fn save(
        &self,
        host: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<ParsedCertificate, CertError> {
        let path = self.host_path(host)?;
        let parsed = parse_certificate(chain_pem.as_bytes(), key_pem.as_bytes(), &path)?;
        let mut contents = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
        contents.push_str(key_pem.trim_end());
        contents.push('\n');
        contents.push_str(chain_pem.trim_end());
        contents.push('\n');
        write_private(&path, contents.as_bytes())?;
        Ok(parsed)
    }

    /// Moves an unusable file aside (`HOST.pem.malformed-UNIXTIME`) rather than deleting
    /// it, so a replacement can be issued without losing what was there.
    pub fn quarantine(&self, host: &str) -> Result<PathBuf, CertError> {
        let path = self.host_path(host)?;
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = path.with_extension(format!("pem.malformed-{stamp}"));
        fs::rename(&path, &aside).map_err(|source| CertError::Io {
            action: "move aside",
            path: path.clone(),
            source,
        })?;
        Ok(aside)
    }
}

/// Creates `dir` with mode 0700, or tightens an existing one to 0700.
pub(crate) fn private_dir(dir: &Path) -> Result<(), CertError> {
    let io = |action, source| CertError::Io {
        action,
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|err| io("create directory", err))?;
    let mode = fs::metadata(dir)
        .map_err(|err| io("inspect", err))?
        .permissions()
        .mode();
    if mode & 0o777 != PRIVATE_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(|err| io("restrict permissions of", err))?;
    }
    Ok(())
}

/// Writes a 0600 file through a temporary file and a rename, so readers see the old
/// contents or the new ones, never a mix.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp");
    let io = |action, path: &Path, source| CertError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(|err| io("create", &tmp, err))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|err| io("write", &tmp, err))?;
    fs::rename(&tmp, path).map_err(|err| io("replace", path, err))
}

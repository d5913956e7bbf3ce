//! `iafactory models import TENANT DIR`: an Ollama models directory (what `ollama pull`
//! leaves in `~/.ollama/models`: `manifests/` and content-addressed `blobs/`), carried
//! in on a disk, copied into the tenant's model volume. A site with no internet has no
//! registry to pull from, and a tenant's network could not reach one anyway.
//!
//! Everything is verified before anything is copied: every blob's SHA-256 must match
//! its name, and every layer a manifest names must be there. The copy streams a tar
//! through Docker's archive API into the tenant's `ollama` container (created, running
//! or not), so nothing is staged on disk, and the files belong to the component's user.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use iafactory_crds::plan::ComponentKind;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::app::{App, AppError};
use crate::engine::docker::Target;

#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{dir} is not an Ollama models directory ({reason}); give the directory that holds manifests/ and blobs/ (by default ~/.ollama/models where the models were pulled); nothing was copied"
    )]
    NotAModelsDirectory { dir: PathBuf, reason: String },
    #[error(
        "{path} is corrupt: its content's SHA-256 is {actual}, its name says {expected}; copy it again from the source; nothing was copied"
    )]
    CorruptBlob {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "model {model} needs blob {digest}, which is not in {dir}; copy the whole models directory; nothing was copied"
    )]
    MissingBlob {
        model: String,
        digest: String,
        dir: PathBuf,
    },
    #[error(
        "tenant {tenant:?} runs no model server: set `components.ollama.enabled: true` in its manifest and apply it first"
    )]
    NoModelServer { tenant: String },
    #[error(
        "the model server of tenant {tenant:?} ({container}) does not exist yet: run `iafactory up`, then import again"
    )]
    NoContainer { tenant: String, container: String },
    #[error("building the archive of {dir}: {message}; nothing was copied")]
    Archive { dir: PathBuf, message: String },
}

/// What a verified models directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// `name:tag` (with their registry and namespace when not the library's).
    pub models: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    config: Option<Layer>,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct Layer {
    digest: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelsError + '_ {
    move |source| ModelsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, ModelsError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).map_err(io(&current))? {
            let path = entry.map_err(io(&current))?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn sha256_of(path: &Path) -> Result<String, ModelsError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(io(path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks `dir` as an Ollama models directory: each blob against its name, each
/// manifest's layers against the blobs. Reads every byte once.
pub fn verify(dir: &Path) -> Result<Inventory, ModelsError> {
    let not_models = |reason: &str| ModelsError::NotAModelsDirectory {
        dir: dir.to_owned(),
        reason: reason.to_owned(),
    };
    let (blobs_dir, manifests_dir) = (dir.join("blobs"), dir.join("manifests"));
    if !blobs_dir.is_dir() || !manifests_dir.is_dir() {
        return Err(not_models("no blobs/ or no manifests/"));
    }
    let mut present = BTreeSet::new();
    let mut bytes = 0;
    for blob in files_under(&blobs_dir)? {
        let name = blob
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some(expected) = name.strip_prefix("sha256-") else {
            return Err(not_models(&format!(
                "blobs/{name} is not named sha256-<digest>"
            )));
        };
        let actual = sha256_of(&blob)?;
        if actual != expected {
            return Err(ModelsError::CorruptBlob {
                path: blob,
                expected: expected.to_owned(),
                actual,
            });
        }
        bytes += blob.metadata().map_err(io(&blob))?.len();
        present.insert(format!("sha256:{expected}"));
    }
    let mut models = Vec::new();
    for manifest_path in files_under(&manifests_dir)? {
        let relative = manifest_path
            .strip_prefix(&manifests_dir)
            .expect("found under it");
        let model = model_name(relative);
        let manifest: Manifest =
            serde_json::from_slice(&std::fs::read(&manifest_path).map_err(io(&manifest_path))?)
                .map_err(|e| not_models(&format!("manifests/{}: {e}", relative.display())))?;
        for layer in manifest.config.iter().chain(&manifest.layers) {
            if !present.contains(&layer.digest) {
                return Err(ModelsError::MissingBlob {
                    model,
                    digest: layer.digest.clone(),
                    dir: dir.to_owned(),
                });
            }
        }
        models.push(model);
    }
    if models.is_empty() {
        return Err(not_models("no model manifest"));
    }
    Ok(Inventory {
        models,
        blobs: present.len(),
        bytes,
    })
}

/// `registry.ollama.ai/library/llama3.2/3b` is `llama3.2:3b`; any other registry or
/// namespace stays in the name.
fn model_name(relative: &Path) -> String {
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [registry, namespace, model, tag]
            if registry == "registry.ollama.ai" && namespace == "library" =>
        {
            format!("{model}:{tag}")
        }
        [path @ .., model, tag] => {
            let mut name = path.join("/");
            if !name.is_empty() {
                name.push('/');
            }
            format!("{name}{model}:{tag}")
        }
        [tag] => tag.clone(),
        [] => String::new(),
    }
}

impl App {
    /// Verifies `dir`, then copies it into the tenant's model volume, owned by the model
    /// server's user. The model server sees new models without a restart.
    pub async fn import_models(&self, tenant: &str, dir: &Path) -> Result<Inventory, ModelsError> {
        let state = self.desired_state_of(tenant)?;
        let ollama = ComponentKind::Ollama.name();
        let spec = state
            .containers
            .iter()
            .find(|c| c.component == ollama)
            .ok_or_else(|| ModelsError::NoModelServer {
                tenant: tenant.to_owned(),
            })?;
        let models_path = spec
            .mounts
            .first()
            .map(|(_, path)| path.clone())
            .ok_or_else(|| ModelsError::NoModelServer {
                tenant: tenant.to_owned(),
            })?;
        let inventory = verify(dir)?;
        let target = Target::component(tenant, ollama);
        if self
            .engine
            .inspect(&target, &spec.name)
            .await
            .map_err(AppError::from)?
            .is_none()
        {
            return Err(ModelsError::NoContainer {
                tenant: tenant.to_owned(),
                container: spec.name.clone(),
            });
        }
        let (uid, gid) = spec
            .user
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u64>().ok()?, g.parse::<u64>().ok()?)))
            .unwrap_or((0, 0));
        let (writer, reader) = tokio::io::duplex(1 << 20);
        let source = dir.to_owned();
        let archive = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut builder = tar::Builder::new(tokio_util::io::SyncIoBridge::new(writer));
            for top in ["manifests", "blobs"] {
                for path in files_under(&source.join(top)).map_err(std::io::Error::other)? {
                    let relative = path.strip_prefix(&source).expect("found under it");
                    let mut file = std::fs::File::open(&path)?;
                    let mut header = tar::Header::new_gnu();
                    header.set_size(file.metadata()?.len());
                    header.set_mode(0o644);
                    header.set_uid(uid);
                    header.set_gid(gid);
                    header.set_mtime(0);
                    builder.append_data(&mut header, relative, &mut file)?;
                }
            }
            builder.into_inner()?.shutdown()
        });
        let upload = self.engine.upload_archive(
            &target,
            &spec.name,
            &models_path,
            tokio_util::io::ReaderStream::new(reader),
        );
        let (uploaded, archived) = tokio::join!(upload, archive);
        let archive_error = |message: String| ModelsError::Archive {
            dir: dir.to_owned(),
            message,
        };
        archived
            .map_err(|e| archive_error(e.to_string()))?
            .map_err(|e| archive_error(e.to_string()))?;
        uploaded.map_err(AppError::from)?;
        Ok(inventory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A models directory with one model of two layers, as `ollama pull` leaves it.
    fn models_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let mut digests = Vec::new();
        for content in [b"weights".as_slice(), b"{\"template\":\"\"}".as_slice()] {
            let digest = hex::encode(Sha256::digest(content));
            std::fs::write(dir.path().join(format!("blobs/sha256-{digest}")), content).unwrap();
            digests.push(digest);
        }
        let manifest = dir
            .path()
            .join("manifests/registry.ollama.ai/library/llama3.2");
        std::fs::create_dir_all(&manifest).unwrap();
        std::fs::write(
            manifest.join("3b"),
            format!(
                "{{\"schemaVersion\":2,\"config\":{{\"digest\":\"sha256:{}\"}},\"layers\":[{{\"digest\":\"sha256:{}\"}}]}}",
                digests[1], digests[0]
            ),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_whole_directory_verifies_and_names_its_models() {
        let dir = models_dir();
        let inventory = verify(dir.path()).unwrap();
        assert_eq!(inventory.models, ["llama3.2:3b"]);
        assert_eq!(inventory.blobs, 2);
        assert_eq!(inventory.bytes, 7 + 15);
    }

    #[test]
    fn a_corrupt_blob_a_missing_layer_or_another_directory_is_refused() {
        let dir = models_dir();
        let blob = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| std::fs::read(p).unwrap() == b"weights")
            .unwrap();
        std::fs::write(&blob, b"weightz").unwrap();
        assert!(matches!(
            verify(dir.path()),
            Err(ModelsError::CorruptBlob { .. })
        ));
        std::fs::remove_file(&blob).unwrap();
        let missing = verify(dir.path()).unwrap_err();
        assert!(
            matches!(missing, ModelsError::MissingBlob { ref model, .. } if model == "llama3.2:3b")
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            verify(empty.path()),
            Err(ModelsError::NotAModelsDirectory { .. })
        ));
    }

    #[test]
    fn model_names_follow_ollama() {
        assert_eq!(
            model_name(Path::new("registry.ollama.ai/library/llama3.2/3b")),
            "llama3.2:3b"
        );
        assert_eq!(
            model_name(Path::new("hf.co/bartowski/Qwen2.5-7B-GGUF/Q4_K_M")),
            "hf.co/bartowski/Qwen2.5-7B-GGUF:Q4_K_M"
        );
    }
}

//! Offline bundles: the images a site needs, in one tar file carried in on a disk.
//!
//! A bundle holds `iafactory-bundle.json` (each image's reference, file, size and
//! SHA-256) and `images/<n>.tar` (each the engine's own `docker save` of one image).
//! `import` verifies every file against the manifest before it loads anything, so a
//! corrupt or truncated bundle changes nothing on the box.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use bollard::query_parameters::ImportImageOptions;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::docker::{DockerError, Engine, Target};

pub const MANIFEST_FILE: &str = "iafactory-bundle.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "image {image} is not on this box, so it cannot be exported: build it (`iafactory images build`) or import it first"
    )]
    ImageMissing { image: String },
    #[error("cannot export image {image} from the Docker Engine: {reason}")]
    Export { image: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an IAFactory bundle: {reason}; nothing was loaded")]
    NotABundle { path: PathBuf, reason: String },
    #[error(
        "{bundle}: {file} is corrupt (SHA-256 {found}, the manifest says {expected}); nothing was loaded: copy the bundle again and check it with sha256sum"
    )]
    Checksum {
        bundle: PathBuf,
        file: String,
        expected: String,
        found: String,
    },
    #[error(
        "the Docker Engine refused image {image} from {bundle}: {reason}; images before it in the bundle were loaded"
    )]
    Load {
        bundle: PathBuf,
        image: String,
        reason: String,
    },
    #[error("nothing to export: name images, or store tenants first (`iafactory apply`)")]
    NothingToExport,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    /// The `iafactory` version that wrote it.
    pub created_by: String,
    pub images: Vec<BundleImage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleImage {
    pub reference: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `images` (references, each present on the box) into the bundle `to`.
pub async fn export(
    engine: &Engine,
    images: &[String],
    to: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BundleManifest, BundleError> {
    if images.is_empty() {
        return Err(BundleError::NothingToExport);
    }
    for image in images {
        if engine.docker().inspect_image(image).await.is_err() {
            return Err(BundleError::ImageMissing {
                image: image.clone(),
            });
        }
    }
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".iafactory-bundle-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let mut manifest = BundleManifest {
        format: FORMAT,
        created_by: env!("CARGO_PKG_VERSION").to_owned(),
        images: Vec::new(),
    };
    for (n, image) in images.iter().enumerate() {
        let file = format!("images/{n}.tar");
        let path = work.path().join(format!("{n}.tar"));
        let mut out = File::create(&path).map_err(io(&path))?;
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        let mut stream = engine.docker().export_image(image);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BundleError::Export {
                image: image.clone(),
                reason: e.to_string(),
            })?;
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk).map_err(io(&path))?;
        }
        out.sync_all().map_err(io(&path))?;
        progress(&format!("exported {image} ({} MB)", bytes / 1_000_000));
        manifest.images.push(BundleImage {
            reference: image.clone(),
            file,
            bytes,
            sha256: hex::encode(hash.finalize()),
        });
    }
    let partial = work.path().join("bundle.tar");
    {
        let out = File::create(&partial).map_err(io(&partial))?;
        let mut tar = tar::Builder::new(out);
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST_FILE, text.as_slice())
            .map_err(io(&partial))?;
        for (n, image) in manifest.images.iter().enumerate() {
            let path = work.path().join(format!("{n}.tar"));
            tar.append_path_with_name(&path, &image.file)
                .map_err(io(&path))?;
        }
        tar.into_inner()
            .and_then(|f| f.sync_all())
            .map_err(io(&partial))?;
    }
    std::fs::rename(&partial, to).map_err(io(to))?;
    Ok(manifest)
}

/// Verifies the bundle `from` entirely, then loads its images.
pub async fn import(
    engine: &Engine,
    from: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BundleManifest, BundleError> {
    let not_a_bundle = |reason: String| BundleError::NotABundle {
        path: from.to_owned(),
        reason,
    };
    let parent = from
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".iafactory-import-")
        .tempdir_in(parent)
        .or_else(|_| tempfile::tempdir())
        .map_err(io(parent))?;
    let file = File::open(from).map_err(io(from))?;
    let mut archive = tar::Archive::new(file);
    let mut manifest_text = None;
    let mut files = Vec::new();
    for entry in archive.entries().map_err(|e| not_a_bundle(e.to_string()))? {
        let mut entry = entry.map_err(|e| not_a_bundle(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| not_a_bundle(e.to_string()))?
            .into_owned();
        let name_text = name.to_string_lossy().into_owned();
        if name_text == MANIFEST_FILE {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| not_a_bundle(format!("{MANIFEST_FILE}: {e}")))?;
            manifest_text = Some(text);
            continue;
        }
        let safe = name.starts_with("images")
            && name.components().count() == 2
            && name.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(not_a_bundle(format!("unexpected entry {name_text:?}")));
        }
        let path = work.path().join(files.len().to_string());
        let mut out = File::create(&path).map_err(io(&path))?;
        let mut hash = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            let n = entry
                .read(&mut buffer)
                .map_err(|e| not_a_bundle(format!("{name_text}: {e}")))?;
            if n == 0 {
                break;
            }
            hash.update(&buffer[..n]);
            bytes += n as u64;
            out.write_all(&buffer[..n]).map_err(io(&path))?;
        }
        files.push((name_text, path, bytes, hex::encode(hash.finalize())));
    }
    let manifest: BundleManifest = serde_json::from_str(
        &manifest_text.ok_or_else(|| not_a_bundle(format!("it has no {MANIFEST_FILE}")))?,
    )
    .map_err(|e| not_a_bundle(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(not_a_bundle(format!(
            "format {} (this iafactory reads format {FORMAT}); use the iafactory version that wrote it",
            manifest.format
        )));
    }
    let mut verified = Vec::new();
    for image in &manifest.images {
        let (_, path, bytes, sha256) = files
            .iter()
            .find(|(name, ..)| name == &image.file)
            .ok_or_else(|| not_a_bundle(format!("{} is listed but missing", image.file)))?;
        if sha256 != &image.sha256 || *bytes != image.bytes {
            return Err(BundleError::Checksum {
                bundle: from.to_owned(),
                file: image.file.clone(),
                expected: image.sha256.clone(),
                found: sha256.clone(),
            });
        }
        verified.push((image, path.clone()));
    }
    if let Some((name, ..)) = files
        .iter()
        .find(|(name, ..)| !manifest.images.iter().any(|i| &i.file == name))
    {
        return Err(not_a_bundle(format!("{name} is not in its manifest")));
    }
    progress(&format!(
        "verified {} image(s) against {MANIFEST_FILE}",
        verified.len()
    ));
    for (image, path) in verified {
        let file = tokio::fs::File::open(&path).await.map_err(io(&path))?;
        let mut results = engine.docker().import_image_stream(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            tokio_util::io::ReaderStream::new(file),
            None,
        );
        while let Some(result) = results.next().await {
            let info = result.map_err(|e| BundleError::Load {
                bundle: from.to_owned(),
                image: image.reference.clone(),
                reason: e.to_string(),
            })?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(BundleError::Load {
                    bundle: from.to_owned(),
                    image: image.reference.clone(),
                    reason: error,
                });
            }
        }
        engine
            .require_image(&Target::tenant("-"), &image.reference)
            .await?;
        progress(&format!("loaded {}", image.reference));
    }
    Ok(manifest)
}

//! Offline bundles: the images a site needs, in one tar file carried in on a disk.
//!
//! A bundle holds `iafactory-bundle.json` (the index: each image's reference, file,
//! size and SHA-256), `iafactory-bundle.sig` (an Ed25519 signature over the index's
//! exact bytes, when exported with `--sign KEYFILE`) and `images/<n>.tar` (each the
//! engine's own `docker save` of one image).
//!
//! `import` verifies everything before it loads anything, so a corrupt, truncated,
//! tampered or foreign bundle changes nothing on the box:
//! - the signature, against the site's `[appliance.bundles] trusted_keys`: an unsigned
//!   bundle, or one signed by a key the site does not trust, is refused unless the
//!   caller allows unsigned bundles ([`Trust::allow_unsigned`]); a signature that does
//!   not match the index (an index changed after signing) is refused always;
//! - every file against the index's SHA-256 (the index is signed, so the images are);
//! - every image file's own `manifest.json` (and `repositories`): it must name exactly
//!   the one reference the index gives it, so `docker load` brings in nothing else (a
//!   bundle cannot slip in, say, a `postgres:18` of its own under another entry).
//!
//! Keys are Ed25519 in PKCS#8 PEM, as `iafactory images keygen` or
//! `openssl genpkey -algorithm ed25519` writes them; a trusted key is written as the
//! base64 of its 32 public bytes (what `keygen` prints). The crypto is ed25519-dalek's.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bollard::query_parameters::ImportImageOptions;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::docker::{DockerError, Engine, Target};

pub const MANIFEST_FILE: &str = "iafactory-bundle.json";
/// The signature over [`MANIFEST_FILE`]'s bytes ([`BundleSignature`], JSON).
pub const SIGNATURE_FILE: &str = "iafactory-bundle.sig";
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
    #[error(
        "{bundle} is not signed; nothing was loaded: ask for a bundle exported with `iafactory images export --sign KEYFILE` whose public key is in [appliance.bundles] trusted_keys, or pass --allow-unsigned if you know where this file came from"
    )]
    Unsigned { bundle: PathBuf },
    #[error(
        "{bundle} is signed by key {key}, which is not in [appliance.bundles] trusted_keys; nothing was loaded: add the key if you trust whoever holds it, or pass --allow-unsigned"
    )]
    UntrustedKey { bundle: PathBuf, key: String },
    #[error(
        "{bundle}: its signature does not match its index ({reason}); the bundle was altered after it was signed, nothing was loaded"
    )]
    BadSignature { bundle: PathBuf, reason: String },
    #[error(
        "{bundle}: {file} would load {found:?}, but the index names only {expected:?}; nothing was loaded"
    )]
    ForeignReference {
        bundle: PathBuf,
        file: String,
        expected: String,
        found: Vec<String>,
    },
    #[error("signing key {path}: {reason}")]
    SigningKey { path: PathBuf, reason: String },
    #[error(
        "trusted bundle key {key:?} is not an Ed25519 public key ({reason}); write the base64 of its 32 bytes, as `iafactory images keygen` prints it"
    )]
    TrustedKey { key: String, reason: String },
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

/// `iafactory-bundle.sig`: who signed the index, and the signature over its bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// `ed25519`.
    pub algorithm: String,
    /// The base64 of the signer's 32-byte public key.
    pub key: String,
    /// The base64 of the 64-byte signature over `iafactory-bundle.json` as stored.
    pub signature: String,
}

const ALGORITHM: &str = "ed25519";

impl BundleSignature {
    /// Signs `index` (the manifest file's bytes) with `key`.
    pub fn sign(key: &SigningKey, index: &[u8]) -> Self {
        Self {
            algorithm: ALGORITHM.to_owned(),
            key: public_key_text(&key.verifying_key()),
            signature: BASE64.encode(key.sign(index).to_bytes()),
        }
    }
}

/// The base64 of a public key's 32 bytes: how `trusted_keys` lists it.
pub fn public_key_text(key: &VerifyingKey) -> String {
    BASE64.encode(key.as_bytes())
}

/// Parses one entry of `trusted_keys`.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, BundleError> {
    let invalid = |reason: String| BundleError::TrustedKey {
        key: text.to_owned(),
        reason,
    };
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| invalid(format!("not base64: {e}")))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| invalid(format!("{} bytes, not 32", b.len())))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| invalid(e.to_string()))
}

/// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| BundleError::SigningKey {
        path: path.to_owned(),
        reason: format!("not an Ed25519 private key in PKCS#8 PEM ({e})"),
    })
}

/// Makes a new signing key and writes it to `path` (PKCS#8 PEM, mode 0600, never over
/// an existing file); returns its public key.
pub fn generate_signing_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let pem = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| BundleError::SigningKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))?;
    Ok(key.verifying_key())
}

/// What `import` accepts.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Public keys whose signatures are accepted (`[appliance.bundles] trusted_keys`).
    pub keys: Vec<VerifyingKey>,
    /// Load an unsigned bundle, or one signed by a key not in `keys` (`--allow-unsigned`).
    /// A signature that does not match its index is refused all the same.
    pub allow_unsigned: bool,
}

impl Trust {
    /// The site's trusted keys, parsed.
    pub fn from_texts(keys: &[String], allow_unsigned: bool) -> Result<Self, BundleError> {
        Ok(Self {
            keys: keys
                .iter()
                .map(|k| parse_public_key(k))
                .collect::<Result<_, _>>()?,
            allow_unsigned,
        })
    }
}

/// Whether a bundle was accepted as signed by a trusted key, or only allowed unsigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Signed by this trusted key (base64).
    Signed { key: String },
    /// Loaded under `--allow-unsigned`: why it would have been refused.
    AllowedUnsigned { reason: String },
}

/// Checks `signature` (the bundle's `iafactory-bundle.sig`, if any) over `index`.
pub fn check_signature(
    bundle: &Path,
    index: &[u8],
    signature: Option<&[u8]>,
    trust: &Trust,
) -> Result<Provenance, BundleError> {
    let bad = |reason: String| BundleError::BadSignature {
        bundle: bundle.to_owned(),
        reason,
    };
    let Some(signature) = signature else {
        return if trust.allow_unsigned {
            Ok(Provenance::AllowedUnsigned {
                reason: "it is not signed".to_owned(),
            })
        } else {
            Err(BundleError::Unsigned {
                bundle: bundle.to_owned(),
            })
        };
    };
    let signature: BundleSignature = serde_json::from_slice(signature)
        .map_err(|e| bad(format!("{SIGNATURE_FILE} is unreadable: {e}")))?;
    if signature.algorithm != ALGORITHM {
        return Err(bad(format!(
            "algorithm {:?}, only {ALGORITHM} is accepted",
            signature.algorithm
        )));
    }
    let key = parse_public_key(&signature.key).map_err(|e| bad(e.to_string()))?;
    let bytes: [u8; 64] = BASE64
        .decode(signature.signature.trim())
        .map_err(|e| bad(format!("signature is not base64: {e}")))?
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("signature of {} bytes, not 64", b.len())))?;
    key.verify_strict(index, &Signature::from_bytes(&bytes))
        .map_err(|_| bad(format!("key {} did not sign this index", signature.key)))?;
    if trust.keys.contains(&key) {
        Ok(Provenance::Signed { key: signature.key })
    } else if trust.allow_unsigned {
        Ok(Provenance::AllowedUnsigned {
            reason: format!("its key {} is not trusted", signature.key),
        })
    } else {
        Err(BundleError::UntrustedKey {
            bundle: bundle.to_owned(),
            key: signature.key,
        })
    }
}

/// `docker save`'s `manifest.json`: one entry per image in the archive.
#[derive(Debug, Deserialize)]
struct SavedImage {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// `name:tag` as `docker save` writes it: no `docker.io/` or `library/`, `:latest`
/// when no tag or digest is given.
fn normalise_reference(reference: &str) -> String {
    let short = reference.strip_prefix("docker.io/").unwrap_or(reference);
    let short = short.strip_prefix("library/").unwrap_or(short);
    let last = short.rsplit('/').next().unwrap_or(short);
    if last.contains(':') || last.contains('@') {
        short.to_owned()
    } else {
        format!("{short}:latest")
    }
}

/// The references `docker load` would tag from this `docker save` archive: those of
/// its `manifest.json`, and of a legacy `repositories` file. An archive with no
/// `manifest.json` is refused (the engine would fall back to `repositories` alone).
fn saved_references(path: &Path) -> Result<Vec<String>, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(file);
    let mut manifest = None;
    let mut references = Vec::new();
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.into_owned();
        let name = name.to_string_lossy();
        let name = name.trim_start_matches("./");
        if name == "manifest.json" {
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_end(&mut text)
                .map_err(|e| e.to_string())?;
            let images: Vec<SavedImage> =
                serde_json::from_slice(&text).map_err(|e| format!("manifest.json: {e}"))?;
            manifest = Some(images);
        } else if name == "repositories" {
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(1 << 20)
                .read_to_end(&mut text)
                .map_err(|e| e.to_string())?;
            let repositories: std::collections::BTreeMap<
                String,
                std::collections::BTreeMap<String, String>,
            > = serde_json::from_slice(&text).map_err(|e| format!("repositories: {e}"))?;
            for (repository, tags) in repositories {
                for tag in tags.keys() {
                    references.push(format!("{repository}:{tag}"));
                }
            }
        }
    }
    let manifest = manifest.ok_or("it has no manifest.json (not a `docker save` archive)")?;
    for image in &manifest {
        match &image.repo_tags {
            Some(tags) if !tags.is_empty() => references.extend(tags.iter().cloned()),
            _ => references.push("(an untagged image)".to_owned()),
        }
    }
    if manifest.len() != 1 {
        references.push(format!("({} images in one file)", manifest.len()));
    }
    references.sort();
    references.dedup();
    Ok(references)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `images` (references, each present on the box) into the bundle `to`, its
/// index signed with `sign` when given.
pub async fn export(
    engine: &Engine,
    images: &[String],
    to: &Path,
    sign: Option<&SigningKey>,
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
        if let Some(key) = sign {
            let signature = serde_json::to_vec_pretty(&BundleSignature::sign(key, &text))
                .expect("a signature serializes");
            let mut header = tar::Header::new_gnu();
            header.set_size(signature.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, SIGNATURE_FILE, signature.as_slice())
                .map_err(io(&partial))?;
        }
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

/// Verifies the bundle `from` entirely (signature, checksums, the references each
/// image file carries), then loads its images.
pub async fn import(
    engine: &Engine,
    from: &Path,
    trust: &Trust,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(BundleManifest, Provenance), BundleError> {
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
    let mut manifest_text: Option<Vec<u8>> = None;
    let mut signature_text: Option<Vec<u8>> = None;
    let mut files = Vec::new();
    for entry in archive.entries().map_err(|e| not_a_bundle(e.to_string()))? {
        let mut entry = entry.map_err(|e| not_a_bundle(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| not_a_bundle(e.to_string()))?
            .into_owned();
        let name_text = name.to_string_lossy().into_owned();
        if name_text == MANIFEST_FILE || name_text == SIGNATURE_FILE {
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(16 << 20)
                .read_to_end(&mut text)
                .map_err(|e| not_a_bundle(format!("{name_text}: {e}")))?;
            let slot = if name_text == MANIFEST_FILE {
                &mut manifest_text
            } else {
                &mut signature_text
            };
            if slot.replace(text).is_some() {
                return Err(not_a_bundle(format!("it has two {name_text}")));
            }
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
    let manifest_text =
        manifest_text.ok_or_else(|| not_a_bundle(format!("it has no {MANIFEST_FILE}")))?;
    let provenance = check_signature(from, &manifest_text, signature_text.as_deref(), trust)?;
    let manifest: BundleManifest = serde_json::from_slice(&manifest_text)
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
        let found = saved_references(path)
            .map_err(|reason| not_a_bundle(format!("{}: {reason}", image.file)))?;
        let expected = normalise_reference(&image.reference);
        if found
            .iter()
            .map(|r| normalise_reference(r))
            .ne([expected.clone()])
        {
            return Err(BundleError::ForeignReference {
                bundle: from.to_owned(),
                file: image.file.clone(),
                expected,
                found,
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
    progress(&match &provenance {
        Provenance::Signed { key } => format!(
            "verified {} image(s) against {MANIFEST_FILE}, signed by trusted key {key}",
            verified.len()
        ),
        Provenance::AllowedUnsigned { reason } => format!(
            "verified {} image(s) against {MANIFEST_FILE}; WARNING: loading it although {reason} (--allow-unsigned)",
            verified.len()
        ),
    });
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
    Ok((manifest, provenance))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signature_by_a_trusted_key_is_accepted_and_anything_else_refused() {
        let bundle = Path::new("b.tar");
        let index = br#"{"format":1}"#;
        let signed = serde_json::to_vec(&BundleSignature::sign(&key(1), index)).unwrap();
        let trusted = Trust {
            keys: vec![key(1).verifying_key()],
            allow_unsigned: false,
        };
        assert!(matches!(
            check_signature(bundle, index, Some(&signed), &trusted),
            Ok(Provenance::Signed { .. })
        ));
        assert!(matches!(
            check_signature(bundle, index, None, &trusted),
            Err(BundleError::Unsigned { .. })
        ));
        let other = Trust {
            keys: vec![key(2).verifying_key()],
            allow_unsigned: false,
        };
        assert!(matches!(
            check_signature(bundle, index, Some(&signed), &other),
            Err(BundleError::UntrustedKey { .. })
        ));
        assert!(matches!(
            check_signature(bundle, br#"{"format":2}"#, Some(&signed), &trusted),
            Err(BundleError::BadSignature { .. })
        ));
        let lenient = Trust {
            keys: Vec::new(),
            allow_unsigned: true,
        };
        assert!(matches!(
            check_signature(bundle, index, None, &lenient),
            Ok(Provenance::AllowedUnsigned { .. })
        ));
        // --allow-unsigned does not cover an index altered after signing.
        assert!(matches!(
            check_signature(bundle, br#"{"format":2}"#, Some(&signed), &lenient),
            Err(BundleError::BadSignature { .. })
        ));
    }

    #[test]
    fn references_compare_as_docker_save_writes_them() {
        assert_eq!(normalise_reference("postgres"), "postgres:latest");
        assert_eq!(
            normalise_reference("docker.io/library/postgres:18"),
            "postgres:18"
        );
        assert_eq!(
            normalise_reference("registry.local:5000/iaf/api"),
            "registry.local:5000/iaf/api:latest"
        );
        assert_eq!(normalise_reference("iaf/api:1.2"), "iaf/api:1.2");
    }

    #[test]
    fn trusted_keys_round_trip_and_bad_ones_are_named() {
        let public = key(3).verifying_key();
        assert_eq!(parse_public_key(&public_key_text(&public)).unwrap(), public);
        let err = parse_public_key("c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("5 bytes, not 32"), "{err}");
    }

    #[test]
    fn a_generated_key_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.pem");
        let public = generate_signing_key(&path).unwrap();
        assert_eq!(read_signing_key(&path).unwrap().verifying_key(), public);
        assert!(
            generate_signing_key(&path).is_err(),
            "never overwrites a key"
        );
    }
}

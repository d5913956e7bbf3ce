//! Manifests as users write them: multi-document YAML, like `kubectl apply -f`.
//!
//! Errors name the file, the document and the field, and nothing here panics on any
//! input: a manifest comes from a person, and a person deserves a sentence.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::common::API_VERSION;
use crate::validation::{self, ValidationErrors};
use crate::{KnowledgeBase, Tenant, Workflow};

/// One resource from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Manifest {
    Tenant(Box<Tenant>),
    KnowledgeBase(Box<KnowledgeBase>),
    Workflow(Box<Workflow>),
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Tenant(_) => "Tenant",
            Manifest::KnowledgeBase(_) => "KnowledgeBase",
            Manifest::Workflow(_) => "Workflow",
        }
    }

    pub fn name(&self) -> &str {
        let metadata = match self {
            Manifest::Tenant(t) => &t.metadata,
            Manifest::KnowledgeBase(kb) => &kb.metadata,
            Manifest::Workflow(wf) => &wf.metadata,
        };
        metadata.name.as_deref().unwrap_or_default()
    }

    /// The tenant a resource belongs to: its own name for a Tenant, the namespace
    /// `iaf-<tenant>` for the others.
    pub fn tenant(&self) -> &str {
        match self {
            Manifest::Tenant(t) => t.metadata.name.as_deref().unwrap_or_default(),
            Manifest::KnowledgeBase(kb) => tenant_of_namespace(kb.metadata.namespace.as_deref()),
            Manifest::Workflow(wf) => tenant_of_namespace(wf.metadata.namespace.as_deref()),
        }
    }
}

fn tenant_of_namespace(namespace: Option<&str>) -> &str {
    namespace
        .and_then(|ns| ns.strip_prefix(crate::plan::NAMESPACE_PREFIX))
        .unwrap_or_default()
}

/// Where a problem is: the file (or `-`), the 1-based document, and what it declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub source: String,
    pub document: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.source, self.document)?;
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => write!(f, " ({kind} {name:?})"),
            (Some(kind), None) => write!(f, " ({kind})"),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_name}: cannot read it: {reason}")]
    Unreadable { source_name: String, reason: String },
    #[error("{at}: malformed YAML: {reason}")]
    Syntax { at: Box<Location>, reason: String },
    #[error("{at}: a manifest document must be a mapping with apiVersion, kind and metadata")]
    NotAnObject { at: Box<Location> },
    #[error("{at}: apiVersion must be {expected:?}, not {found:?}")]
    WrongApiVersion {
        at: Box<Location>,
        expected: &'static str,
        found: String,
    },
    #[error("{at}: unknown kind {found:?}: expected Tenant, KnowledgeBase or Workflow")]
    UnknownKind { at: Box<Location>, found: String },
    #[error("{at}: field {path}: {reason}")]
    Field {
        at: Box<Location>,
        path: String,
        reason: String,
    },
    #[error("{at}: unknown field {path} (check its spelling in docs/resources.md)")]
    UnknownField { at: Box<Location>, path: String },
    #[error("{at}: invalid: {errors}")]
    Invalid {
        at: Box<Location>,
        errors: ValidationErrors,
    },
}

/// A manifest with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub at: Location,
    pub manifest: Manifest,
}

/// Reads files and directories (their `*.yaml`/`*.yml`, sorted), or `-` for stdin.
/// Returns every resource, or every error found.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Loaded>, Vec<ManifestError>> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for path in expand(paths, &mut errors) {
        let source_name = path.display().to_string();
        let text = if path == Path::new("-") {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
        } else {
            std::fs::read_to_string(&path)
        };
        match text {
            Ok(text) => match parse(&source_name, &text) {
                Ok(mut manifests) => loaded.append(&mut manifests),
                Err(mut more) => errors.append(&mut more),
            },
            Err(e) => errors.push(ManifestError::Unreadable {
                source_name,
                reason: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

fn expand(paths: &[PathBuf], errors: &mut Vec<ManifestError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file()
                                && matches!(
                                    p.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                        })
                        .collect();
                    found.sort();
                    files.append(&mut found);
                }
                Err(e) => errors.push(ManifestError::Unreadable {
                    source_name: path.display().to_string(),
                    reason: e.to_string(),
                }),
            }
        } else {
            files.push(path.clone());
        }
    }
    files
}

/// Parses and validates every document of one source.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<Loaded>, Vec<ManifestError>> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let mut at = Location {
            source: source_name.to_owned(),
            document: index + 1,
            kind: None,
            name: None,
        };
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // After a syntax error the YAML stream cannot be trusted any further.
                errors.push(ManifestError::Syntax {
                    at: Box::new(at),
                    reason: e.to_string(),
                });
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, as after a trailing `---`
        }
        match parse_document(&mut at, value) {
            Ok(manifest) => loaded.push(Loaded { at, manifest }),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

fn parse_document(at: &mut Location, value: serde_yaml::Value) -> Result<Manifest, ManifestError> {
    let Some(mapping) = value.as_mapping() else {
        return Err(ManifestError::NotAnObject {
            at: Box::new(at.clone()),
        });
    };
    let text_of = |key: &str| mapping.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    at.kind = text_of("kind");
    at.name = mapping
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let api_version = text_of("apiVersion").unwrap_or_default();
    if api_version != API_VERSION {
        return Err(ManifestError::WrongApiVersion {
            at: Box::new(at.clone()),
            expected: API_VERSION,
            found: api_version,
        });
    }
    let manifest = match at.kind.as_deref() {
        Some("Tenant") => {
            let tenant: Tenant = typed(at, value)?;
            validation::validate_tenant(&tenant).map_err(|errors| invalid(at, errors))?;
            Manifest::Tenant(Box::new(tenant))
        }
        Some("KnowledgeBase") => {
            let kb: KnowledgeBase = typed(at, value)?;
            require_namespace(at, kb.metadata.namespace.as_deref())?;
            validation::validate_knowledge_base(&kb).map_err(|errors| invalid(at, errors))?;
            Manifest::KnowledgeBase(Box::new(kb))
        }
        Some("Workflow") => {
            let workflow: Workflow = typed(at, value)?;
            require_namespace(at, workflow.metadata.namespace.as_deref())?;
            validation::validate_workflow(&workflow).map_err(|errors| invalid(at, errors))?;
            Manifest::Workflow(Box::new(workflow))
        }
        other => {
            return Err(ManifestError::UnknownKind {
                at: Box::new(at.clone()),
                found: other.unwrap_or_default().to_owned(),
            });
        }
    };
    Ok(manifest)
}

fn invalid(at: &Location, errors: ValidationErrors) -> ManifestError {
    ManifestError::Invalid {
        at: Box::new(at.clone()),
        errors,
    }
}

fn require_namespace(at: &Location, namespace: Option<&str>) -> Result<(), ManifestError> {
    if namespace.is_some() {
        return Ok(());
    }
    Err(ManifestError::Field {
        at: Box::new(at.clone()),
        path: "metadata.namespace".into(),
        reason: "required: the tenant's namespace, iaf-<tenant>".into(),
    })
}

/// Deserialises with the path of the first bad field, then rejects unknown fields,
/// which serde would otherwise drop without a word (a typo like `replica: 2`).
fn typed<T: DeserializeOwned>(at: &Location, value: serde_yaml::Value) -> Result<T, ManifestError> {
    let mut unknown = Vec::new();
    match serde_ignored::deserialize(value.clone(), |path| unknown.push(path.to_string())) {
        Ok(typed) => match unknown.into_iter().find(|p| !is_ignorable(p)) {
            Some(path) => Err(ManifestError::UnknownField {
                at: Box::new(at.clone()),
                path,
            }),
            None => Ok(typed),
        },
        // Only a failure pays for the second pass that finds the field's path.
        Err(_) => match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(typed) => Ok(typed),
            Err(error) => Err(ManifestError::Field {
                at: Box::new(at.clone()),
                path: error.path().to_string(),
                reason: error.inner().to_string(),
            }),
        },
    }
}

/// The type identifiers (already checked) and `status`, which controllers write: an
/// object copied from `kubectl get -o yaml` carries it and that is fine.
fn is_ignorable(path: &str) -> bool {
    matches!(path, "apiVersion" | "kind" | "status") || path.starts_with("status.")
}

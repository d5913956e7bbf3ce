//! The collections: one qdrant-edge shard each, in a directory of its own, with the
//! optimizer run in the background after updates as Qdrant's update handler does (it
//! is what builds the HNSW index once a segment is large enough).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use qdrant_edge::{Distance, EdgeConfig, EdgeShard, EdgeVectorParamsBuilder, OperationError};
use tokio::sync::Notify;

/// The one vector of a collection created with plain `VectorParams`: Qdrant names it "".
pub const DEFAULT_VECTOR: &str = "";

#[derive(Debug, thiserror::Error)]
pub enum CollectionError {
    #[error("Collection `{0}` doesn't exist!")]
    NotFound(String),
    #[error("Collection `{0}` already exists!")]
    AlreadyExists(String),
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Engine(#[from] OperationError),
    #[error("the engine's worker thread failed: {0}")]
    Worker(String),
    #[error("the storage failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The settings a collection was created with.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct VectorSettings {
    pub size: usize,
    pub distance: Distance,
}

pub struct Collection {
    pub name: String,
    pub vectors: VectorSettings,
    pub shard: Arc<EdgeShard>,
    optimize: Arc<Notify>,
    /// Updates asked for an optimizer pass, and the last of them a finished pass saw:
    /// behind, the collection is `Yellow`, as Qdrant reports it while optimizing.
    updates: Arc<AtomicU64>,
    optimized: Arc<AtomicU64>,
}

impl Collection {
    /// Runs `work` on the shard off the async workers: the engine blocks.
    pub async fn with_shard<T: Send + 'static>(
        &self,
        work: impl FnOnce(&EdgeShard) -> Result<T, OperationError> + Send + 'static,
    ) -> Result<T, CollectionError> {
        let shard = self.shard.clone();
        tokio::task::spawn_blocking(move || work(&shard))
            .await
            .map_err(|e| CollectionError::Worker(e.to_string()))?
            .map_err(CollectionError::from)
    }

    /// Asks the background optimizer for a pass (after an update).
    pub fn updated(&self) {
        self.updates.fetch_add(1, Ordering::SeqCst);
        self.optimize.notify_one();
    }

    /// Whether an optimizer pass is due or running.
    pub fn optimizing(&self) -> bool {
        self.optimized.load(Ordering::SeqCst) < self.updates.load(Ordering::SeqCst)
    }
}

pub struct Registry {
    root: PathBuf,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Creations and deletions one at a time, as Qdrant's consensus orders them: two
    /// racing creations must not build two shards in one directory.
    changing: tokio::sync::Mutex<()>,
}

const SETTINGS_FILE: &str = "testserver_vectors.json";

impl Registry {
    /// Opens `root`, loading the collections a previous run left there.
    pub fn open(root: &Path) -> Result<Self, CollectionError> {
        std::fs::create_dir_all(root)?;
        let registry = Self {
            root: root.to_owned(),
            collections: RwLock::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
        };
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let settings: VectorSettings = match std::fs::read(entry.path().join(SETTINGS_FILE)) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| CollectionError::BadInput(e.to_string()))?,
                // Interrupted while being created: not a collection.
                Err(_) => continue,
            };
            let shard = EdgeShard::load(&entry.path(), None)?;
            tracing::info!(collection = %name, "loaded");
            registry.insert(name, settings, shard);
        }
        Ok(registry)
    }

    fn insert(&self, name: String, vectors: VectorSettings, shard: EdgeShard) {
        let collection = new_collection(name.clone(), vectors, shard);
        self.collections.write().insert(name, collection);
    }

    pub fn get(&self, name: &str) -> Result<Arc<Collection>, CollectionError> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CollectionError::NotFound(name.to_owned()))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.collections.read().contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.collections.read().keys().cloned().collect()
    }

    pub async fn create(&self, name: &str, vectors: VectorSettings) -> Result<(), CollectionError> {
        validate_name(name)?;
        if vectors.size == 0 {
            return Err(CollectionError::BadInput(
                "Validation error in JSON body: [vectors_config.size: value 0 invalid, must be 1 or larger]"
                    .into(),
            ));
        }
        let _changing = self.changing.lock().await;
        if self.exists(name) {
            return Err(CollectionError::AlreadyExists(name.to_owned()));
        }
        let path = self.root.join(name);
        let shard = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> Result<EdgeShard, CollectionError> {
                if path.exists() {
                    std::fs::remove_dir_all(&path)?;
                }
                let config = EdgeConfig::builder()
                    .vector(
                        DEFAULT_VECTOR,
                        EdgeVectorParamsBuilder::new(vectors.size, vectors.distance).build(),
                    )
                    .build();
                let shard = EdgeShard::new(&path, config)?;
                std::fs::write(
                    path.join(SETTINGS_FILE),
                    serde_json::to_vec(&vectors).expect("plain data serialises"),
                )?;
                Ok(shard)
            }
        })
        .await
        .map_err(|e| CollectionError::Worker(e.to_string()))??;
        let collection = new_collection(name.to_owned(), vectors, shard);
        self.collections.write().insert(name.to_owned(), collection);
        Ok(())
    }

    /// Whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, CollectionError> {
        let _changing = self.changing.lock().await;
        let Some(collection) = self.collections.write().remove(name) else {
            return Ok(false);
        };
        let path = self.root.join(&collection.name);
        drop(collection);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(path))
            .await
            .map_err(|e| CollectionError::Worker(e.to_string()))??;
        Ok(true)
    }

    pub fn flush_all(&self) {
        for collection in self.collections.read().values() {
            if let Err(error) = collection.shard.flush() {
                tracing::warn!(collection = %collection.name, %error, "flush failed");
            }
        }
    }
}

/// Qdrant's rule: a name that is a valid path segment, at most 255 bytes.
fn validate_name(name: &str) -> Result<(), CollectionError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.chars().any(|c| {
            matches!(
                c,
                '/' | '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*' | '\0'
            )
        });
    if bad {
        return Err(CollectionError::BadInput(format!(
            "Validation error in JSON body: [collection_name: collection name {name:?} is not a valid path segment]"
        )));
    }
    Ok(())
}

fn new_collection(name: String, vectors: VectorSettings, shard: EdgeShard) -> Arc<Collection> {
    let collection = Arc::new(Collection {
        name,
        vectors,
        shard: Arc::new(shard),
        optimize: Arc::new(Notify::new()),
        updates: Arc::new(AtomicU64::new(0)),
        optimized: Arc::new(AtomicU64::new(0)),
    });
    spawn_optimizer(&collection);
    collection
}

/// Optimizes after updates, one pass at a time, until the collection is dropped.
fn spawn_optimizer(collection: &Arc<Collection>) {
    let shard = Arc::downgrade(&collection.shard);
    let wake = collection.optimize.clone();
    let (updates, optimized) = (collection.updates.clone(), collection.optimized.clone());
    let name = collection.name.clone();
    tokio::spawn(async move {
        loop {
            wake.notified().await;
            let Some(shard) = shard.upgrade() else { return };
            let seen = updates.load(Ordering::SeqCst);
            let result = tokio::task::spawn_blocking(move || shard.optimize()).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(collection = %name, %error, "optimizer failed"),
                Err(error) => tracing::warn!(collection = %name, %error, "optimizer panicked"),
            }
            optimized.store(seen, Ordering::SeqCst);
        }
    });
}

//! Helpers shared by the end-to-end tests in `tests/tests/`.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_path_buf()
}

/// A binary of the workspace, built by `cargo build` (or `cargo nextest run
/// --workspace`, which builds every package's binaries), refused when older than its
/// sources.
pub fn workspace_binary(name: &str, sources: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let binary = dir.join(name);
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it first (cargo build --bin {name})",
                binary.display()
            )
        });
    for source in sources {
        if let Some(newer) = newer_than(&root().join(source), built) {
            panic!(
                "{} is older than {}: rebuild it (cargo build --bin {name})",
                binary.display(),
                newer.display()
            );
        }
    }
    binary
}

fn newer_than(dir: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = newer_than(&path, time) {
                return Some(found);
            }
        } else if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? > time {
            return Some(path);
        }
    }
    None
}

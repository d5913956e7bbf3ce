//! Shared by the crds integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn samples_dir() -> PathBuf {
    repo_root().join("config/samples")
}

pub fn sample_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(samples_dir())
        .expect("config/samples exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Compares `actual` to the committed file, or rewrites it with `UPDATE_GOLDEN=1`.
pub fn assert_golden(path: &std::path::Path, actual: &str, regenerate: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
        panic!(
            "{} is out of date with the code.\nRegenerate it with: {regenerate}\n\n{}",
            path.display(),
            diff.unified_diff().header("committed", "generated")
        );
    }
}

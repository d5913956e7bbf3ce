//! Writes the CRD manifests into `crds/` (or the directory given as the only argument)
//! and the field reference `docs/resources.md`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for (name, yaml) in iafactory_crds::crdgen::crd_files() {
        let path = dir.join(name);
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/resources.md");
    std::fs::write(&docs, iafactory_crds::crdgen::resources_markdown())?;
    println!("wrote {}", docs.display());
    Ok(())
}

//! Offline bundles through the real binary and the real engine: a round trip restores
//! the images; a corrupt bundle is rejected before anything is loaded.

mod support;

use std::io::Read;

use support::{TestAppliance, docker, docker_ok, random_suffix, standin_image, stderr, stdout};

/// Two tags of the stand-in, unique to this test, that no other test uses.
fn private_tags() -> Vec<String> {
    let suffix = random_suffix();
    (0..2)
        .map(|n| {
            let tag = format!("iafactory-test/bundle-{suffix}:{n}");
            docker_ok(&["tag", standin_image(), &tag]);
            tag
        })
        .collect()
}

fn present(tag: &str) -> bool {
    docker(&["image", "inspect", tag]).status.success()
}

struct Untag(Vec<String>);
impl Drop for Untag {
    fn drop(&mut self) {
        for tag in &self.0 {
            docker(&["rmi", tag]);
        }
    }
}

#[test]
fn export_then_import_restores_the_images() {
    let box_ = TestAppliance::new();
    let tags = private_tags();
    let _cleanup = Untag(tags.clone());
    let bundle = box_.dir.path().join("site.tar");
    let mut args = vec!["images", "export", "--to", bundle.to_str().unwrap()];
    args.extend(tags.iter().map(String::as_str));
    let output = box_.iafactory(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("with 2 image(s)"),
        "{}",
        stdout(&output)
    );

    for tag in &tags {
        docker_ok(&["rmi", tag]);
        assert!(!present(tag));
    }
    let output = box_.iafactory(&["images", "import", bundle.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("verified 2 image(s)"),
        "{}",
        stdout(&output)
    );
    for tag in &tags {
        assert!(present(tag), "{tag} is back");
    }
}

/// Rewrites the bundle with one byte of its second image flipped.
fn corrupt(bundle: &std::path::Path, into: &std::path::Path) {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(into).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path.to_str() == Some("images/1.tar") {
            let middle = data.len() / 2;
            data[middle] ^= 0xff;
        }
        let mut header = entry.header().clone();
        builder
            .append_data(&mut header, &path, data.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn a_corrupt_bundle_is_rejected_before_anything_is_loaded() {
    let box_ = TestAppliance::new();
    let tags = private_tags();
    let _cleanup = Untag(tags.clone());
    let bundle = box_.dir.path().join("site.tar");
    let mut args = vec!["images", "export", "--to", bundle.to_str().unwrap()];
    args.extend(tags.iter().map(String::as_str));
    assert!(box_.iafactory(&args).status.success());
    for tag in &tags {
        docker_ok(&["rmi", tag]);
    }

    let damaged = box_.dir.path().join("damaged.tar");
    corrupt(&bundle, &damaged);
    let output = box_.iafactory(&["images", "import", damaged.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("images/1.tar is corrupt"), "{message}");
    assert!(message.contains("nothing was loaded"), "{message}");
    assert!(
        tags.iter().all(|t| !present(t)),
        "not even the intact first image was loaded"
    );

    // Not a bundle at all, and a truncated one.
    let garbage = box_.dir.path().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar file at all").unwrap();
    let output = box_.iafactory(&["images", "import", garbage.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("nothing was loaded"),
        "{}",
        stderr(&output)
    );
    let bytes = std::fs::read(&bundle).unwrap();
    let truncated = box_.dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let output = box_.iafactory(&["images", "import", truncated.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(tags.iter().all(|t| !present(t)));
}

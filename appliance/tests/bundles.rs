//! Offline bundles through the real binary and the real engine: a round trip restores
//! the images; a corrupt bundle is rejected before anything is loaded. These bundles
//! are unsigned (`--allow-unsigned`); signatures are tests/bundle_signatures.rs's.

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
    let output = box_.iafactory(&[
        "images",
        "import",
        "--allow-unsigned",
        bundle.to_str().unwrap(),
    ]);
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

/// Rewrites the bundle with one byte of its `damaged_entry` (`images/N.tar`) flipped.
fn corrupt(bundle: &std::path::Path, into: &std::path::Path, damaged_entry: &str) {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut builder = tar::Builder::new(std::fs::File::create(into).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path.to_str() == Some(damaged_entry) {
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
    corrupt(&bundle, &damaged, "images/1.tar");
    let output = box_.iafactory(&[
        "images",
        "import",
        "--allow-unsigned",
        damaged.to_str().unwrap(),
    ]);
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
    let output = box_.iafactory(&[
        "images",
        "import",
        "--allow-unsigned",
        garbage.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("nothing was loaded"),
        "{}",
        stderr(&output)
    );
    let bytes = std::fs::read(&bundle).unwrap();
    let truncated = box_.dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let output = box_.iafactory(&[
        "images",
        "import",
        "--allow-unsigned",
        truncated.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(tags.iter().all(|t| !present(t)));
}

/// A new release of the stand-in: the same filesystem with one more layer, so its image
/// ID differs, as a real upgrade's would; `build_number` tells two builds of one tag apart.
fn next_release(tag: &str, build_number: u32) {
    let mut build = std::process::Command::new("docker")
        .args(["build", "--quiet", "-t", tag, "-"])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    write!(
        build.stdin.take().unwrap(),
        "FROM {}\nLABEL dz.iafactory.test.release=\"{tag}\" dz.iafactory.test.build=\"{build_number}\"\n",
        standin_image()
    )
    .unwrap();
    assert!(build.wait().unwrap().success(), "docker build {tag}");
}

/// The marker file the upgrade test writes into the database volume.
fn marker(database: &str) -> String {
    let read = docker(&[
        "exec",
        database,
        "/bin/busybox",
        "sh",
        "-c",
        "cat $PGDATA/marker",
    ]);
    assert!(read.status.success(), "{}", stderr(&read));
    stdout(&read).trim().to_owned()
}

fn image_of(container: &str) -> String {
    docker_ok(&["inspect", container, "--format", "{{.Config.Image}}"])
        .trim()
        .to_owned()
}

/// `upgrade --bundle`, as a site with no internet runs it: the bundle is verified and
/// loaded, every component moves to the new image, and the database volume's data is
/// still there. A corrupt bundle changes nothing that runs.
#[test]
fn upgrade_from_a_bundle_moves_to_the_new_images_and_keeps_the_data() {
    let release = format!("iafactory-test/upgrade-{}:2", random_suffix());
    // Declared first so that it drops last, once the containers using it are gone.
    let _cleanup = Untag(vec![release.clone()]);
    let box_ = TestAppliance::new();
    let tenant = format!("u{}", random_suffix());
    let output = box_.iafactory(&[
        "apply",
        "-f",
        box_.tenant_file(&tenant, "").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let database = format!("iaf-{tenant}-postgres");
    let written = docker(&[
        "exec",
        &database,
        "/bin/busybox",
        "sh",
        "-c",
        "echo before-the-upgrade > $PGDATA/marker",
    ]);
    assert!(written.status.success(), "{}", stderr(&written));

    next_release(&release, 1);
    let bundle = box_.dir.path().join("release-2.tar");
    let output = box_.iafactory(&[
        "images",
        "export",
        "--to",
        bundle.to_str().unwrap(),
        &release,
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    docker_ok(&["rmi", &release]);

    // The new release's configuration names the new images for both components.
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    let upgraded = config.replace(
        &format!("image = \"{}\"", standin_image()),
        &format!("image = \"{release}\""),
    );
    assert_eq!(upgraded.matches(release.as_str()).count(), 2, "{upgraded}");
    std::fs::write(&box_.config_file, upgraded).unwrap();

    let before = box_.container_ids();
    let damaged = box_.dir.path().join("damaged.tar");
    corrupt(&bundle, &damaged, "images/0.tar");
    let output = box_.iafactory(&[
        "upgrade",
        "--allow-unsigned",
        "--bundle",
        damaged.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("nothing was loaded"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        box_.container_ids(),
        before,
        "a rejected bundle replaced nothing"
    );
    assert!(!present(&release));

    let output = box_.iafactory(&[
        "upgrade",
        "--allow-unsigned",
        "--bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(present(&release), "the bundle's image was loaded");
    for component in ["postgres", "api"] {
        let names: Vec<String> = box_
            .containers()
            .into_iter()
            .filter(|n| n.starts_with(&format!("iaf-{tenant}-{component}")))
            .collect();
        assert_eq!(names.len(), 1, "one {component} container: {names:?}");
        assert_eq!(
            image_of(&names[0]),
            release,
            "{component} runs the new release"
        );
    }
    let status = box_.iafactory(&["status", "-o", "json"]);
    assert!(
        stdout(&status).contains("\"healthy\": true"),
        "{}",
        stdout(&status)
    );
    assert_eq!(marker(&database), "before-the-upgrade");

    // A rebuild under the same tag (a site re-importing a fixed `:18`, say): the tag's
    // new content is rolled out too, and the data stays.
    next_release(&release, 2);
    let rebuilt = docker_ok(&["image", "inspect", &release, "--format", "{{.Id}}"])
        .trim()
        .to_owned();
    let status = stdout(&box_.iafactory(&["status", "-o", "json"]));
    assert!(
        status.contains("\"up_to_date\": false"),
        "status says what the next up replaces: {status}"
    );
    let output = box_.iafactory(&["upgrade"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(stdout(&output).contains("replaced"), "{}", stdout(&output));
    for name in box_.containers() {
        let image = docker_ok(&["inspect", &name, "--format", "{{.Image}}"]);
        assert_eq!(image.trim(), rebuilt, "{name} runs the rebuilt image");
    }
    assert_eq!(marker(&database), "before-the-upgrade");
    let again = box_.iafactory(&["up"]);
    assert!(
        stdout(&again).contains("up: 0 change(s)"),
        "{}",
        stdout(&again)
    );
}

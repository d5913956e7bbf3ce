//! Signed offline bundles through the real binary and the real Docker Engine: a bundle
//! signed by a trusted key loads; an unsigned one, one signed by another key, and one
//! whose index was changed after signing are refused with nothing loaded; and a bundle
//! whose image file carries a reference its index does not name loads nothing, so that
//! reference never reaches the engine.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};

use iafactory_appliance::bundle::{
    BundleImage, BundleManifest, BundleSignature, MANIFEST_FILE, SIGNATURE_FILE, read_signing_key,
};
use sha2::{Digest, Sha256};
use support::{TestAppliance, docker, docker_ok, random_suffix, standin_image, stderr, stdout};

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

fn private_tag(name: &str) -> String {
    let tag = format!("iafactory-test/signed-{}:{name}", random_suffix());
    docker_ok(&["tag", standin_image(), &tag]);
    tag
}

/// `images keygen --out PATH`; returns the public key it printed.
fn keygen(box_: &TestAppliance, path: &Path) -> String {
    let output = box_.iafactory(&["images", "keygen", "--out", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|l| l.starts_with("trusted_keys = [\""))
        .unwrap_or_else(|| panic!("no trusted_keys line in {text}"));
    line.trim_start_matches("trusted_keys = [\"")
        .trim_end_matches("\"]")
        .to_owned()
}

fn trust(box_: &TestAppliance, key: &str) {
    let mut config = std::fs::read_to_string(&box_.config_file).unwrap();
    config.push_str(&format!(
        "\n[appliance.bundles]\ntrusted_keys = [\"{key}\"]\n"
    ));
    std::fs::write(&box_.config_file, config).unwrap();
}

fn export(box_: &TestAppliance, to: &Path, tag: &str, key: Option<&Path>) {
    let mut args = vec!["images", "export", "--to", to.to_str().unwrap()];
    if let Some(key) = key {
        args.extend(["--sign", key.to_str().unwrap()]);
    }
    args.push(tag);
    let output = box_.iafactory(&args);
    assert!(output.status.success(), "{}", stderr(&output));
}

fn import(box_: &TestAppliance, bundle: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["images", "import", bundle.to_str().unwrap()];
    args.extend(extra);
    box_.iafactory(&args)
}

/// The bundle's entries, in order.
fn entries(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn write_bundle(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
}

fn refused(output: &std::process::Output, says: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", stdout(output));
    let message = stderr(output);
    assert!(message.contains(says), "{message}");
    assert!(message.contains("nothing was loaded"), "{message}");
}

#[test]
fn only_bundles_signed_by_a_trusted_key_load() {
    let box_ = TestAppliance::new();
    let tag = private_tag("0");
    let _cleanup = Untag(vec![tag.clone()]);
    let site_key = box_.dir.path().join("site.pem");
    let other_key = box_.dir.path().join("other.pem");
    let site_public = keygen(&box_, &site_key);
    keygen(&box_, &other_key);
    trust(&box_, &site_public);

    // Signed by the trusted key: loads, and says by whom.
    let signed = box_.dir.path().join("signed.tar");
    export(&box_, &signed, &tag, Some(&site_key));
    let names: Vec<String> = entries(&signed).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, [MANIFEST_FILE, SIGNATURE_FILE, "images/0.tar"]);
    docker_ok(&["rmi", &tag]);
    let output = import(&box_, &signed, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(&format!("signed by trusted key {site_public}")),
        "{}",
        stdout(&output)
    );
    assert!(present(&tag));

    // Unsigned: refused, unless --allow-unsigned.
    let unsigned = box_.dir.path().join("unsigned.tar");
    export(&box_, &unsigned, &tag, None);
    docker_ok(&["rmi", &tag]);
    refused(&import(&box_, &unsigned, &[]), "is not signed");
    assert!(!present(&tag));
    let output = import(&box_, &unsigned, &["--allow-unsigned"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("WARNING"), "{}", stdout(&output));
    assert!(present(&tag));

    // Signed by a key the site does not trust: refused.
    let foreign = box_.dir.path().join("foreign.tar");
    export(&box_, &foreign, &tag, Some(&other_key));
    docker_ok(&["rmi", &tag]);
    refused(
        &import(&box_, &foreign, &[]),
        "which is not in [appliance.bundles] trusted_keys",
    );
    assert!(!present(&tag));

    // The index changed after signing (here, the image renamed): refused, even with
    // --allow-unsigned.
    let renamed = private_tag("renamed");
    let _renamed = Untag(vec![renamed.clone()]);
    docker_ok(&["rmi", &renamed]);
    let mut tampered_entries = entries(&signed);
    let index = String::from_utf8(tampered_entries[0].1.clone()).unwrap();
    assert!(index.contains(&tag));
    tampered_entries[0].1 = index.replace(&tag, &renamed).into_bytes();
    let tampered = box_.dir.path().join("tampered.tar");
    write_bundle(&tampered, &tampered_entries);
    for extra in [&[][..], &["--allow-unsigned"][..]] {
        refused(
            &import(&box_, &tampered, extra),
            "the bundle was altered after it was signed",
        );
        assert!(!present(&tag) && !present(&renamed));
    }
}

/// A bundle, signed by the site's own key, whose image file is a `docker save` of two
/// tags while its index names one: nothing is loaded, the second tag least of all.
#[test]
fn an_image_file_carrying_a_reference_the_index_does_not_name_loads_nothing() {
    let box_ = TestAppliance::new();
    let named = private_tag("named");
    let extra = private_tag("smuggled");
    let _cleanup = Untag(vec![named.clone(), extra.clone()]);
    let key_path: PathBuf = box_.dir.path().join("site.pem");
    let public = keygen(&box_, &key_path);
    trust(&box_, &public);

    let image_file = box_.dir.path().join("two-tags.tar");
    docker_ok(&["save", "-o", image_file.to_str().unwrap(), &named, &extra]);
    let image = std::fs::read(&image_file).unwrap();
    let manifest = BundleManifest {
        format: 1,
        created_by: "test".to_owned(),
        images: vec![BundleImage {
            reference: named.clone(),
            file: "images/0.tar".to_owned(),
            bytes: image.len() as u64,
            sha256: hex::encode(Sha256::digest(&image)),
        }],
    };
    let index = serde_json::to_vec_pretty(&manifest).unwrap();
    let signature = BundleSignature::sign(&read_signing_key(&key_path).unwrap(), &index);
    let bundle = box_.dir.path().join("smuggling.tar");
    write_bundle(
        &bundle,
        &[
            (MANIFEST_FILE.to_owned(), index),
            (
                SIGNATURE_FILE.to_owned(),
                serde_json::to_vec(&signature).unwrap(),
            ),
            ("images/0.tar".to_owned(), image),
        ],
    );
    docker_ok(&["rmi", &named, &extra]);

    let output = import(&box_, &bundle, &[]);
    refused(&output, "but the index names only");
    assert!(stderr(&output).contains(&extra), "{}", stderr(&output));
    assert!(!present(&extra), "the smuggled reference was loaded");
    assert!(!present(&named));
}

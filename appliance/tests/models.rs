//! `iafactory models import`, the real binary against the real engine: an Ollama models
//! directory lands in the tenant's model volume, owned by the model server's user; a
//! corrupt or incomplete one is refused before anything is copied.

mod support;

use std::path::Path;

use sha2::{Digest, Sha256};
use support::{TestAppliance, docker, random_suffix, standin_image, stderr, stdout};

/// Writes `model` (`name/tag` under the library) with `layers` as blobs into `dir`, as
/// `ollama pull` lays them out.
fn pulled(dir: &Path, name: &str, tag: &str, layers: &[&[u8]]) {
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    let digests: Vec<String> = layers
        .iter()
        .map(|content| {
            let digest = hex::encode(Sha256::digest(content));
            std::fs::write(dir.join(format!("blobs/sha256-{digest}")), content).unwrap();
            format!("{{\"digest\":\"sha256:{digest}\"}}")
        })
        .collect();
    let manifests = dir.join(format!("manifests/registry.ollama.ai/library/{name}"));
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join(tag),
        format!("{{\"schemaVersion\":2,\"layers\":[{}]}}", digests.join(",")),
    )
    .unwrap();
}

fn in_container(container: &str, command: &str) -> String {
    let output = docker(&["exec", container, "/bin/busybox", "sh", "-c", command]);
    stdout(&output)
}

#[test]
fn models_are_verified_then_copied_into_the_tenants_model_volume() {
    let box_ = TestAppliance::new();
    let config = std::fs::read_to_string(&box_.config_file).unwrap();
    std::fs::write(
        &box_.config_file,
        format!(
            "{config}\n[images.ollama]\nimage = \"{}\"\nuid = 1000\nargs = [\"httpd\", \"-f\", \"-p\", \"11434\", \"-h\", \"/www\"]\nhealthcheck = [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:11434/metrics\"]\n\n[ollama]\npull_models = false\n",
            standin_image()
        ),
    )
    .unwrap();
    let tenant = format!("m{}", random_suffix());
    let manifest = box_.dir.path().join("tenant.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: {tenant}\nspec:\n  components:\n    ollama: {{enabled: true}}\n"
        ),
    )
    .unwrap();
    let output = box_.iafactory(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let server = format!("iaf-{tenant}-ollama");

    // Bad input first: nothing reaches the volume.
    let corrupt = tempfile::tempdir().unwrap();
    pulled(
        corrupt.path(),
        "mistral",
        "7b",
        &[b"good weights", b"params"],
    );
    let blob = corrupt.path().join(format!(
        "blobs/sha256-{}",
        hex::encode(Sha256::digest(b"params"))
    ));
    std::fs::write(&blob, b"tampered").unwrap();
    let output = box_.iafactory(&[
        "models",
        "import",
        &tenant,
        corrupt.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is corrupt"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("nothing was copied"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_file(&blob).unwrap();
    let output = box_.iafactory(&[
        "models",
        "import",
        &tenant,
        corrupt.path().to_str().unwrap(),
    ]);
    assert!(
        stderr(&output).contains("needs blob sha256:"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        in_container(&server, "find /models -type f | wc -l").trim(),
        "0"
    );
    let output = box_.iafactory(&[
        "models",
        "import",
        "nobody",
        corrupt.path().to_str().unwrap(),
    ]);
    assert!(
        stderr(&output).contains("no tenant \"nobody\""),
        "{}",
        stderr(&output)
    );

    let models = tempfile::tempdir().unwrap();
    pulled(
        models.path(),
        "llama3.2",
        "3b",
        &[b"the weights", b"{\"template\":\"\"}"],
    );
    let output = box_.iafactory(&["models", "import", &tenant, models.path().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("imported llama3.2:3b (2 blobs"),
        "{}",
        stdout(&output)
    );
    let weights = format!(
        "/models/blobs/sha256-{}",
        hex::encode(Sha256::digest(b"the weights"))
    );
    assert_eq!(
        in_container(&server, &format!("cat {weights}")),
        "the weights"
    );
    assert_eq!(
        in_container(&server, &format!("stat -c %u {weights}")).trim(),
        "1000",
        "owned by the model server's user"
    );
    assert!(
        in_container(
            &server,
            "cat /models/manifests/registry.ollama.ai/library/llama3.2/3b"
        )
        .contains("schemaVersion")
    );

    // A tenant without a model server says how to get one.
    let other = format!("n{}", random_suffix());
    let output = box_.iafactory(&[
        "apply",
        "--no-up",
        "-f",
        box_.tenant_file(&other, "").to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = box_.iafactory(&["models", "import", &other, models.path().to_str().unwrap()]);
    assert!(
        stderr(&output).contains("runs no model server"),
        "{}",
        stderr(&output)
    );
}

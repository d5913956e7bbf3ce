//! A tenant's own model server: its `ollama` component, run from the llama.cpp stand-in
//! image (images/llama/build.sh), becomes healthy inside the tenant's internal network,
//! answers an OpenAI-compatible chat completion there under the model name the API is
//! given, and cannot be reached from another tenant's network.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};

use support::{TestAppliance, docker, docker_ok, ip_of, random_suffix, resolve};

fn quiet(_: &str) {}

/// Builds the stand-in image, or finds it up to date; returns its tag.
fn llama_image() -> String {
    support::run_image_build("llama")
}

/// `wget` from inside `from`, bounded by `seconds`: the body, or None.
fn fetch(from: &str, seconds: u32, url: &str, post_json: Option<&str>) -> Option<String> {
    let seconds = seconds.to_string();
    let mut args = vec![
        "exec",
        from,
        "/bin/busybox",
        "timeout",
        &seconds,
        "/bin/busybox",
        "wget",
        "-q",
        "-O",
        "-",
    ];
    if let Some(body) = post_json {
        args.extend([
            "--header",
            "content-type: application/json",
            "--post-data",
            body,
        ]);
    }
    args.push(url);
    let output = docker(&args);
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn tenant_with_model_server(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: iafactory.dz/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  components:\n    ollama: {{enabled: true, models: [smollm2]}}\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_tenants_model_server_answers_inside_its_network_and_nowhere_else() {
    let image = llama_image();
    let box_ = TestAppliance::new();
    // The stand-in cannot pull models: it serves the one baked into it.
    writeln!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&box_.config_file)
            .unwrap(),
        "\n[images.ollama]\nimage = \"{image}\"\nuid = 1000\nhealthcheck = [\"/bin/busybox\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:11434/health\"]\n\n[ollama]\npull_models = false\n"
    )
    .unwrap();
    let a = format!("a{}", random_suffix());
    let b = format!("b{}", random_suffix());
    let app = box_.app().await;
    app.apply(&[
        tenant_with_model_server(box_.dir.path(), &a),
        box_.tenant_file(&b, ""),
    ])
    .unwrap();
    let (report, result) = app.up(&quiet).await;
    result.unwrap_or_else(|e| panic!("{e}: {:?}", report.actions));

    let model_server = format!("iaf-{a}-ollama");
    assert_eq!(
        docker_ok(&[
            "inspect",
            &model_server,
            "--format",
            "{{.Config.Image}} {{.State.Health.Status}}"
        ]),
        format!("{image} healthy")
    );
    assert_eq!(
        docker_ok(&[
            "network",
            "inspect",
            &format!("iaf-{a}"),
            "--format",
            "{{.Internal}}"
        ]),
        "true"
    );
    let names = box_.containers();
    let api_of = |t: &str| {
        names
            .iter()
            .find(|n| n.starts_with(&format!("iaf-{t}-api-")))
            .unwrap_or_else(|| panic!("no API container for {t} in {names:?}"))
            .clone()
    };
    let (a_api, b_api) = (api_of(&a), api_of(&b));
    // The API is told where its model server is, and which model to ask for.
    let a_api_env = docker_ok(&["inspect", &a_api, "--format", "{{json .Config.Env}}"]);
    assert!(
        a_api_env.contains("\"IAF_LLM_BASE_URL=http://ollama:11434/v1\"")
            && a_api_env.contains("\"IAF_LLM_MODEL=smollm2\""),
        "{a_api_env}"
    );

    // Inside A's network: `ollama` is A's model server, and it answers a chat completion.
    let model_server_ip = ip_of(&model_server);
    assert_eq!(
        resolve(&a_api, "ollama").as_deref(),
        Some(model_server_ip.as_str())
    );
    let base = format!("http://{model_server_ip}:11434/v1");
    let models = fetch(&a_api, 30, &format!("{base}/models"), None).expect("GET /v1/models");
    assert!(models.contains("\"id\":\"smollm2\""), "{models}");
    let request = serde_json::json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
        "temperature": 0,
    })
    .to_string();
    let answer = fetch(
        &a_api,
        180,
        &format!("{base}/chat/completions"),
        Some(&request),
    )
    .expect("POST /v1/chat/completions from the tenant's API container");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], "smollm2", "{answer}");
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!content.trim().is_empty(), "an empty completion: {answer}");
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // From B's network: B's own services answer (the control)...
    assert!(
        fetch(
            &b_api,
            5,
            &format!("http://{}:5432/", ip_of(&format!("iaf-{b}-postgres"))),
            None
        )
        .is_some()
    );
    // ...but A's model server does not, by name or by address.
    assert_eq!(resolve(&b_api, "ollama"), None);
    assert_eq!(resolve(&b_api, &model_server), None);
    assert_eq!(fetch(&b_api, 5, &format!("{base}/models"), None), None);
}

//! The web console in a real browser: the API is served on 127.0.0.1 with the real
//! PostgreSQL, the real embedding model and its ingestion workers; Debian's chromium,
//! driven by playwright-core (tests/browser/journeys.mjs), walks the journeys a
//! tenant's people take, and the bad paths. Screenshots land in artifacts/console/.
//!
//! The only stand-in is the workflow agents' language model: a scripted
//! OpenAI-compatible server that answers after a short delay, so that the statuses
//! are seen changing. The RAG answers have no model (none is configured for them) and
//! are extractive, as they are on an appliance without one.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestDb;
use serde_json::{Value, json};

const PASSWORD: &str = "a long enough password";
const ARABIC_LINES: &str = "جامعة تلمسان تفتح التسجيل في الماستر يوم 15 سبتمبر\nالمكتبة المركزية مفتوحة من الأحد إلى الخميس";
const FRENCH_TEXT: &str = "La session de rattrapage des examens a lieu en juin. Les inscriptions au master ferment le 30 septembre.";
/// Small, so that the oversize upload stays small too.
const MAX_UPLOAD_BYTES: usize = 256 * 1024;

/// An OpenAI-compatible `/chat/completions` that answers each agent after a pause.
async fn slow_agent_model() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
            axum::Json(json!({
                "choices": [{"message": {"role": "assistant", "content": format!("Résumé : {prompt}")}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 8}
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/v1")
}

fn arabic_pdf(dir: &Path) -> PathBuf {
    let python = common::engine_url("IAF_TEST_PDFGEN_PYTHON", "pdfgen");
    let font = common::engine_url("IAF_TEST_ARABIC_FONT", "pdfgen");
    let output = dir.join("تسجيل-الماستر.pdf");
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/make_pdf.py"
        ))
        .arg(&output)
        .arg(font)
        .arg("shaped")
        .stdin(Stdio::piped())
        .spawn()
        .expect("the PDF generator runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ARABIC_LINES.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "the PDF generator failed");
    output
}

/// A minimal but complete WordprocessingML package.
fn french_docx(dir: &Path) -> PathBuf {
    let output = dir.join("calendrier-examens.docx");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&output).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    let parts = [
        (
            "[Content_Types].xml",
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#.to_owned(),
        ),
        (
            "_rels/.rels",
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>"#.to_owned(),
        ),
        (
            "word/document.xml",
            format!(
                r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Calendrier des examens</w:t></w:r></w:p><w:p><w:r><w:t>{FRENCH_TEXT}</w:t></w:r></w:p></w:body></w:document>"#
            ),
        ),
    ];
    for (name, content) in parts {
        zip.start_file(name, options).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
    output
}

struct Seeded {
    email: String,
    other_knowledge_base: String,
}

async fn post(client: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Two tenants: the one the browser signs in to, with a workflow, and another one
/// whose knowledge base the browser must not see.
async fn seed(base: &str) -> Seeded {
    let client = reqwest::Client::new();
    let register = |slug: &str| {
        json!({"tenant_name": format!("Université {slug}"), "tenant_slug": slug,
               "email": format!("admin@{slug}.dz"), "password": PASSWORD})
    };
    let ours = post(
        &client,
        format!("{base}/api/auth/register"),
        None,
        register("tlemcen"),
    )
    .await;
    let token = ours["data"]["access_token"].as_str().unwrap().to_owned();
    let agent = |name: &str, depends_on: &[&str], prompt: &str| {
        json!({"name": name, "role": "analyst", "provider": "ollama", "model": "scripted",
               "prompt": prompt, "dependsOn": depends_on})
    };
    post(
        &client,
        format!("{base}/api/workflows"),
        Some(&token),
        json!({"name": "synthese", "description": "Collecter, analyser, puis résumer",
               "agents": [agent("collecte", &[], "Collecte : {{input}}"),
                          agent("analyse", &["collecte"], "Analyse : {{agents.collecte.output}}"),
                          agent("redaction", &["analyse"], "Rédige : {{agents.analyse.output}}")]}),
    )
    .await;

    let theirs = post(
        &client,
        format!("{base}/api/auth/register"),
        None,
        register("oran"),
    )
    .await;
    let their_token = theirs["data"]["access_token"].as_str().unwrap();
    let their_base = post(
        &client,
        format!("{base}/api/knowledge-bases"),
        Some(their_token),
        json!({"name": "confidentiel"}),
    )
    .await;
    Seeded {
        email: "admin@tlemcen.dz".into(),
        other_knowledge_base: their_base["data"]["id"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_journeys_pass_in_a_real_browser() {
    let chromium = common::engine_url("IAF_TEST_CHROMIUM", "browser");
    let node = common::engine_url("IAF_TEST_NODE", "browser");
    let browser_tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/engines.sh up browser"
    );

    let db = TestDb::new().await;
    let config = iafactory_api::config::Config {
        embedding_model_dir: Some(common::engine_url("IAF_TEST_EMBEDDING_MODEL_DIR", "minilm")),
        // For the workflow agents only: without llm_model, answers are extractive.
        llm_base_url: Some(slow_agent_model().await),
        workflow_scheduler_tick_seconds: 0,
        max_upload_bytes: MAX_UPLOAD_BYTES,
        // Two workers: the two uploads are ingested at once, into a new knowledge base.
        ingestion_workers: 2,
        rate_limit: iafactory_api::config::RateLimitConfig {
            per_ip_per_minute: 100_000,
            per_ip_per_hour: 1_000_000,
            default_key_per_minute: 100_000,
            per_user_per_minute: 100_000,
            per_ip_ceiling_per_minute: 1_000_000,
        },
        ..common::config(&db)
    };
    let state = iafactory_api::server::prepare(config)
        .await
        .expect("the API starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = tokio::spawn(iafactory_api::server::serve(
        state,
        listener,
        internal,
        async {
            let _ = stopped.await;
        },
    ));
    let seeded = seed(&base).await;

    let fixtures = tempfile::tempdir().unwrap();
    let pdf = arabic_pdf(fixtures.path());
    let docx = french_docx(fixtures.path());
    let oversize = fixtures.path().join("rapport-annuel.txt");
    std::fs::write(&oversize, "x".repeat(MAX_UPLOAD_BYTES + 64 * 1024)).unwrap();
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts/console");
    std::fs::create_dir_all(&screenshots).unwrap();

    let run = tokio::process::Command::new(node)
        .arg("journeys.mjs")
        .current_dir(&browser_tests)
        .env("CONSOLE_URL", &base)
        .env("CHROMIUM", chromium)
        .env("CONSOLE_EMAIL", &seeded.email)
        .env("CONSOLE_PASSWORD", PASSWORD)
        .env("OTHER_TENANT_KB", &seeded.other_knowledge_base)
        .env("ARABIC_PDF", &pdf)
        .env("FRENCH_DOCX", &docx)
        .env("OVERSIZE_FILE", &oversize)
        .env("SCREENSHOTS", &screenshots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the journeys finish within 4 minutes")
        .expect("node runs");
    let _ = stop.send(());
    let _ = server.await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser journeys failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for journey in [
        "wrong password",
        "log in",
        "create a knowledge base",
        "upload and watch them reach ready",
        "oversize upload",
        "ask in Arabic",
        "open a citation",
        "network error during an answer",
        "a replaced answer",
        "switch to French",
        "another tenant's URL",
        "create an API key",
        "revoke the API key and add a user",
        "run a workflow",
        "delete a knowledge base",
        "an expired session",
        "sign out",
        "phone width",
    ] {
        assert!(
            stdout.contains(&format!("ok - {journey}")),
            "the journey {journey:?} did not report success:\n{stdout}"
        );
    }
}

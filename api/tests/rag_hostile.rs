//! A hostile document cannot take ingestion down (issue #19, item 1), against the
//! real PostgreSQL, the real embedding model and the real `iafactory-api` binary as
//! the document parser:
//! - a zlib-bomb PDF and a DOCX zip bomb each end `failed`, with their reason;
//! - a PDF whose streams stay under the per-stream cap but add up to more than the
//!   parser's memory fails with the memory limit's reason;
//! - the API (which runs in this test process) stays under 1 GiB of resident memory
//!   throughout (`VmHWM`, the process's peak);
//! - a normal document uploaded right after is `ready`;
//! - a job left `running` with an expired lease and its attempts used up is failed,
//!   not reclaimed.

mod common;

use std::io::Write;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Auth, TestApp, TestDb};
use iafactory_api::rag::ingest::MAX_ATTEMPTS;
use serde_json::{Value, json};

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// `bytes` spaces, zlib-compressed as they are produced (never held inflated).
fn zlib_of_spaces(bytes: u64) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let block = vec![b' '; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB);
        encoder.write_all(&block[..n as usize]).unwrap();
        left -= n;
    }
    encoder.finish().unwrap()
}

/// A one-page PDF whose page draws the given content streams (Flate-compressed),
/// with a correct cross-reference table.
fn pdf(contents: &[Vec<u8>]) -> Vec<u8> {
    let first_stream = 5;
    let references: Vec<String> = (0..contents.len())
        .map(|i| format!("{} 0 R", first_stream + i))
        .collect();
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents [{}] >>",
            references.join(" ")
        )
        .into_bytes(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ];
    for compressed in contents {
        let mut object = format!(
            "<< /Length {} /Filter /FlateDecode >>\nstream\n",
            compressed.len()
        )
        .into_bytes();
        object.extend_from_slice(compressed);
        object.extend_from_slice(b"\nendstream");
        objects.push(object);
    }
    let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(object);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn normal_pdf() -> Vec<u8> {
    let content =
        b"BT /F1 12 Tf 72 720 Td (Le reglement des examens prevoit deux sessions par an.) Tj ET";
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(content).unwrap();
    pdf(&[encoder.finish().unwrap()])
}

/// A DOCX whose `word/document.xml` inflates to `bytes` (mostly spaces in a run).
fn docx_bomb(bytes: u64) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("[Content_Types].xml", options).unwrap();
    zip.write_all(br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#).unwrap();
    zip.start_file("word/document.xml", options).unwrap();
    let head = b"<w:document><w:body><w:p><w:r><w:t>";
    let tail = b"</w:t></w:r></w:p></w:body></w:document>";
    zip.write_all(head).unwrap();
    let block = vec![b' '; MIB as usize];
    let mut left = bytes - (head.len() + tail.len()) as u64;
    while left > 0 {
        let n = left.min(MIB);
        zip.write_all(&block[..n as usize]).unwrap();
        left -= n;
    }
    zip.write_all(tail).unwrap();
    zip.finish().unwrap().into_inner()
}

/// Fails if this process (the API runs in it) ever held 1 GiB or more in memory.
fn assert_api_stayed_small() {
    let peak = peak_rss();
    eprintln!(
        "peak resident memory of the API's process: {} MiB",
        peak / MIB
    );
    assert!(peak < GIB, "the API's process peaked at {} MiB", peak / MIB);
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

async fn knowledge_base(app: &TestApp, token: &str) -> String {
    let reply = app
        .request(
            Method::POST,
            "/api/knowledge-bases",
            Auth::Bearer(token),
            Some(json!({"name": "hostile"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["data"]["id"].as_str().unwrap().to_owned()
}

async fn upload(app: &TestApp, token: &str, kb: &str, filename: &str, bytes: &[u8]) -> String {
    let boundary = "----iafactory-hostile-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let reply = app
        .send(
            Request::builder()
                .method(Method::POST)
                .uri(format!("/api/knowledge-bases/{kb}/documents"))
                .header("authorization", format!("Bearer {token}"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["data"]["id"].as_str().unwrap().to_owned()
}

async fn wait_for(app: &TestApp, token: &str, kb: &str, id: &str) -> Value {
    app.wait_for_documents(token, kb, &[id.to_owned()])
        .await
        .remove(0)
}

#[tokio::test]
async fn decompression_bombs_fail_alone_and_the_api_stays_small() {
    let pdf_bomb = pdf(&[zlib_of_spaces(3 * GIB / 2)]);
    let docx_bomb = docx_bomb(3 * GIB / 2);
    assert!(
        pdf_bomb.len() < 4 * MIB as usize && docx_bomb.len() < 4 * MIB as usize,
        "the bombs are small uploads: {} and {} bytes",
        pdf_bomb.len(),
        docx_bomb.len()
    );

    let db = TestDb::new().await;
    let app = TestApp::with_workers(common::rag_config(&db)).await;
    let admin = app.register("hostile").await;
    let kb = knowledge_base(&app, &admin.token).await;

    let id = upload(&app, &admin.token, &kb, "bomb.pdf", &pdf_bomb).await;
    let document = wait_for(&app, &admin.token, &kb, &id).await;
    assert_api_stayed_small();
    assert_eq!(document["status"], "failed", "{document}");
    assert_eq!(
        document["error"], "\"bomb.pdf\": a stream of the PDF inflates to more than 64 MiB",
        "{document}"
    );

    let id = upload(&app, &admin.token, &kb, "bomb.docx", &docx_bomb).await;
    let document = wait_for(&app, &admin.token, &kb, &id).await;
    assert_api_stayed_small();
    assert_eq!(document["status"], "failed", "{document}");
    assert_eq!(
        document["error"], "\"bomb.docx\": word/document.xml inflates to more than 64 MiB",
        "{document}"
    );

    // A normal document right after: the parser (and the workers) are still there.
    let id = upload(&app, &admin.token, &kb, "reglement.pdf", &normal_pdf()).await;
    let document = wait_for(&app, &admin.token, &kb, &id).await;
    assert_eq!(document["status"], "ready", "{document}");
    assert_eq!(document["pages"], 1, "{document}");

    assert_api_stayed_small();
}

/// Streams each under the per-stream cap, but more than the parser's memory in all:
/// the child process hits its address-space limit, and only it dies.
#[tokio::test]
async fn a_document_past_the_parsers_memory_fails_with_the_limit() {
    let stream = zlib_of_spaces(60 * MIB);
    // 16 × 60 MiB: parsed inside the API, this would take it past 1 GiB.
    let pdf_bomb = pdf(&vec![stream; 16]);

    let db = TestDb::new().await;
    let config = iafactory_api::config::Config {
        parser_memory_mib: 256,
        ..common::rag_config(&db)
    };
    let app = TestApp::with_workers(config).await;
    let admin = app.register("hostile-memory").await;
    let kb = knowledge_base(&app, &admin.token).await;

    let id = upload(&app, &admin.token, &kb, "heavy.pdf", &pdf_bomb).await;
    let document = wait_for(&app, &admin.token, &kb, &id).await;
    assert_api_stayed_small();
    assert_eq!(document["status"], "failed", "{document}");
    assert_eq!(
        document["error"], "\"heavy.pdf\": the document needs more than 256 MiB to parse",
        "{document}"
    );

    let id = upload(&app, &admin.token, &kb, "reglement.pdf", &normal_pdf()).await;
    let document = wait_for(&app, &admin.token, &kb, &id).await;
    assert_eq!(document["status"], "ready", "{document}");

    assert_api_stayed_small();
}

/// A worker that died (its lease expired, the job still `running`) after the last
/// allowed attempt: the job is failed, not claimed a ninth time. A job with attempts
/// left, in the same state, is reclaimed and finishes.
#[tokio::test]
async fn an_expired_job_out_of_attempts_is_failed_not_reclaimed() {
    let db = TestDb::new().await;
    // No workers yet: the jobs are put in their state first.
    let app = TestApp::with_config(common::rag_config(&db)).await;
    let admin = app.register("hostile-lease").await;
    let kb = knowledge_base(&app, &admin.token).await;
    let mut ids = Vec::new();
    for title in ["poison", "survivor"] {
        let reply = app
            .request(
                Method::POST,
                &format!("/api/knowledge-bases/{kb}/documents"),
                Auth::Bearer(&admin.token),
                Some(json!({"title": title, "text": format!("Le document {title} parle des examens.")})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        ids.push(reply.body["data"]["id"].as_str().unwrap().to_owned());
    }
    let (poison, survivor) = (ids[0].clone(), ids[1].clone());

    // As the database's owner (the tests connect as it): a dead worker's jobs.
    let owner = sqlx::PgPool::connect(&db.url).await.unwrap();
    for (id, attempts) in [(&poison, MAX_ATTEMPTS), (&survivor, MAX_ATTEMPTS - 1)] {
        let updated = sqlx::query(
            "UPDATE ingestion_jobs SET state = 'running', attempts = $2,
                 leased_until = now() - interval '1 minute'
             WHERE document_id = $1::uuid",
        )
        .bind(id)
        .bind(attempts)
        .execute(&owner)
        .await
        .unwrap();
        assert_eq!(updated.rows_affected(), 1);
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let _workers = stop.clone().drop_guard();
    iafactory_api::rag::ingest::spawn_workers(app.state.clone(), 2, stop);
    let documents = app.wait_for_documents(&admin.token, &kb, &ids).await;

    assert_eq!(documents[0]["status"], "failed", "{}", documents[0]);
    assert_eq!(
        documents[0]["error"],
        format!(
            "ingestion was attempted {MAX_ATTEMPTS} times and never finished (its worker stopped each time); the document is not retried"
        ),
        "{}",
        documents[0]
    );
    assert_eq!(documents[1]["status"], "ready", "{}", documents[1]);

    let jobs: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT document_id::text, state, attempts FROM ingestion_jobs ORDER BY document_id = $1::uuid DESC",
    )
    .bind(&poison)
    .fetch_all(&owner)
    .await
    .unwrap();
    assert_eq!(
        jobs,
        vec![
            (poison.clone(), "failed".to_owned(), MAX_ATTEMPTS),
            (survivor.clone(), "done".to_owned(), MAX_ATTEMPTS),
        ],
        "the poison job was not claimed again; the other was, once"
    );
}

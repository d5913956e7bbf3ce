//! Arabic text from a real PDF comes out in reading order, in base letters. The PDFs
//! are made by the test, the ways producers write them: shaped by HarfBuzz and drawn
//! in visual order (fpdf2), or reshaped into presentation forms and reversed
//! (arabic-reshaper + python-bidi), or plainly in logical order.

use std::process::{Command, Stdio};

use iafactory_api::rag::arabic::normalize_for_search;
use iafactory_api::rag::parse::{Format, extract};

const LINES: &str = "جامعة تلمسان تفتح التسجيل في الماستر يوم 15 سبتمبر\nالمكتبة المركزية مفتوحة من الأحد إلى الخميس\nLa session de rattrapage a lieu en juin";

pub fn make_pdf(lines: &str, mode: &str) -> Vec<u8> {
    let python = std::env::var("IAF_TEST_PDFGEN_PYTHON")
        .expect("IAF_TEST_PDFGEN_PYTHON is not set: run scripts/test, or scripts/engines.sh up pdfgen && source /tmp/iafactory-engines/env");
    let font = std::env::var("IAF_TEST_ARABIC_FONT")
        .expect("IAF_TEST_ARABIC_FONT is set with IAF_TEST_PDFGEN_PYTHON");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("document.pdf");
    let mut child = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/make_pdf.py"
        ))
        .arg(&output)
        .arg(font)
        .arg(mode)
        .stdin(Stdio::piped())
        .spawn()
        .expect("the PDF generator runs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(
        child.wait().unwrap().success(),
        "the PDF generator succeeded"
    );
    std::fs::read(output).unwrap()
}

fn words(text: &str) -> Vec<String> {
    normalize_for_search(text)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn assert_reads_forwards(extracted: &str) {
    let found = words(extracted);
    for expected_line in LINES.lines() {
        let expected = words(expected_line);
        let position = found
            .windows(expected.len())
            .position(|w| w == expected.as_slice());
        assert!(
            position.is_some(),
            "{expected_line:?} in reading order in:\n{extracted}"
        );
    }
}

#[test]
fn a_shaped_visual_order_pdf_reads_forwards() {
    let pdf = make_pdf(LINES, "shaped");
    let extracted = extract(Format::Pdf, &pdf).expect("the PDF parses").text();
    assert_reads_forwards(&extracted);
}

#[test]
fn a_reshaped_presentation_form_pdf_reads_forwards_in_base_letters() {
    let pdf = make_pdf(LINES, "reshaped");
    let extracted = extract(Format::Pdf, &pdf).expect("the PDF parses").text();
    assert!(
        !extracted
            .chars()
            .any(|c| ('\u{FB50}'..='\u{FEFF}').contains(&c)),
        "presentation forms are mapped back to base letters (NFKC):\n{extracted}"
    );
    assert!(
        extracted.contains("جامعة تلمسان تفتح التسجيل"),
        "base letters, in reading order, unnormalised:\n{extracted}"
    );
    assert_reads_forwards(&extracted);
}

#[test]
fn a_logical_order_pdf_is_left_as_it_is() {
    let pdf = make_pdf(LINES, "unshaped");
    let extracted = extract(Format::Pdf, &pdf).expect("the PDF parses").text();
    assert_reads_forwards(&extracted);
}

#[test]
fn pages_are_kept() {
    let lines: Vec<String> = (1..=60)
        .map(|n| format!("Ligne {n} du règlement intérieur"))
        .collect();
    let pdf = make_pdf(&lines.join("\n"), "unshaped");
    let parsed = extract(Format::Pdf, &pdf).expect("the PDF parses");
    let pages = parsed.pages().expect("a PDF has pages");
    assert!(pages >= 2, "60 lines take more than a page: {parsed:?}");
    let numbers: Vec<u32> = parsed.sections.iter().filter_map(|s| s.page).collect();
    assert_eq!(numbers, (1..=pages).collect::<Vec<_>>());
    assert!(parsed.sections[0].text.contains("Ligne 1 du règlement"));
    assert!(
        parsed.sections[pages as usize - 1]
            .text
            .contains("Ligne 60 du règlement")
    );
}

/// A PDF cut short anywhere (an interrupted upload) fails by itself with a PDF error,
/// or yields what it can; it never takes the process down.
#[test]
fn truncated_pdfs_fail_alone() {
    let pdf = make_pdf(LINES, "shaped");
    let mut failures = 0;
    for tenth in 1..10 {
        let cut = &pdf[..pdf.len() * tenth / 10];
        match extract(Format::Pdf, cut) {
            Ok(parsed) => assert!(!parsed.sections.is_empty()),
            Err(error) => {
                failures += 1;
                assert!(error.to_string().contains("PDF"), "{error}");
            }
        }
    }
    assert!(failures > 0, "a truncated PDF is noticed");
}

//! Documents to text: txt, md, html, pdf, docx, csv. Each parser returns plain text
//! with paragraph breaks, or an error that names the document and says what is wrong
//! with it; none panics on a corrupt file (a panic in a dependency is caught too).

use std::io::{Cursor, Read};

use super::arabic;

/// The formats we ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
    Csv,
}

impl Format {
    /// From a file name's extension, or a declared content type.
    pub fn detect(filename: &str, content_type: Option<&str>) -> Option<Format> {
        let extension = filename
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase());
        match extension.as_deref() {
            Some("txt" | "text") => return Some(Format::Text),
            Some("md" | "markdown") => return Some(Format::Markdown),
            Some("html" | "htm") => return Some(Format::Html),
            Some("pdf") => return Some(Format::Pdf),
            Some("docx") => return Some(Format::Docx),
            Some("csv") => return Some(Format::Csv),
            _ => {}
        }
        match content_type.map(|c| c.split(';').next().unwrap_or_default().trim()) {
            Some("text/plain") => Some(Format::Text),
            Some("text/markdown") => Some(Format::Markdown),
            Some("text/html") => Some(Format::Html),
            Some("application/pdf") => Some(Format::Pdf),
            Some("application/vnd.openxmlformats-officedocument.wordprocessingml.document") => {
                Some(Format::Docx)
            }
            Some("text/csv") => Some(Format::Csv),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain",
            Format::Markdown => "text/markdown",
            Format::Html => "text/html",
            Format::Pdf => "application/pdf",
            Format::Docx => {
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
            }
            Format::Csv => "text/csv",
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Format> {
        Self::detect("", Some(content_type))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the file is not valid UTF-8 text (save it as UTF-8)")]
    NotUtf8,
    #[error("the PDF cannot be read: {0}")]
    Pdf(String),
    #[error("the DOCX file cannot be read: {0}")]
    Docx(String),
    #[error("the CSV file cannot be read: {0}")]
    Csv(String),
    #[error("the document contains no text (a scanned PDF needs OCR first)")]
    Empty,
}

/// Extracts the text of a document.
pub fn extract(format: Format, bytes: &[u8]) -> Result<String, ParseError> {
    let text = match format {
        Format::Text => utf8(bytes)?,
        Format::Markdown => markdown(&utf8(bytes)?),
        Format::Html => html(bytes),
        Format::Pdf => pdf(bytes)?,
        Format::Docx => docx(bytes)?,
        Format::Csv => csv(bytes)?,
    };
    let text = tidy(&text);
    if text.trim().is_empty() {
        Err(ParseError::Empty)
    } else {
        Ok(text)
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ParseError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    String::from_utf8(bytes.to_vec()).map_err(|_| ParseError::NotUtf8)
}

/// Markdown keeps its words; the markup that is not prose goes.
fn markdown(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = line.trim_start();
            let line = line
                .trim_start_matches('#')
                .trim_start_matches(['>', '*', '-', '+'])
                .trim_start();
            line.replace("**", "").replace("__", "").replace('`', "")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn html(bytes: &[u8]) -> String {
    // Wide lines: we re-flow into chunks ourselves, wrapping would only cut sentences.
    html2text::from_read(bytes, 10_000)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

fn pdf(bytes: &[u8]) -> Result<String, ParseError> {
    // pdf-extract panics on some malformed files; a bad upload must fail alone.
    let bytes = bytes.to_vec();
    let lines = std::panic::catch_unwind(move || -> Result<Vec<Vec<String>>, ParseError> {
        let document =
            pdf_extract::Document::load_mem(&bytes).map_err(|e| ParseError::Pdf(e.to_string()))?;
        if document.is_encrypted() {
            return Err(ParseError::Pdf(
                "it is encrypted: upload it without a password".into(),
            ));
        }
        let mut collector = GlyphLines::default();
        pdf_extract::output_doc(&document, &mut collector)
            .map_err(|e| ParseError::Pdf(e.to_string()))?;
        collector.finish_line();
        Ok(collector.lines)
    })
    .map_err(|_| ParseError::Pdf("the file is corrupt".into()))??;
    Ok(lines
        .iter()
        .map(|clusters| arabic::logical_order_clusters(clusters))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The glyphs of a PDF, line by line, each glyph with the text its font maps it to.
/// Keeping glyphs apart (rather than one string, as plain extraction does) matters
/// for right-to-left text drawn in visual order: a ligature such as lam-alef is one
/// glyph standing for two letters in reading order, and must be moved as one.
#[derive(Default)]
struct GlyphLines {
    flip: Option<pdf_extract::Transform>,
    last_end: f64,
    last_y: f64,
    first_in_word: bool,
    current: Vec<String>,
    lines: Vec<Vec<String>>,
}

impl GlyphLines {
    fn finish_line(&mut self) {
        if !self.current.is_empty() {
            self.lines.push(std::mem::take(&mut self.current));
        }
    }
}

impl pdf_extract::OutputDev for GlyphLines {
    fn begin_page(
        &mut self,
        _page: u32,
        media_box: &pdf_extract::MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), pdf_extract::OutputError> {
        self.flip = Some(pdf_extract::Transform::row_major(
            1.,
            0.,
            0.,
            -1.,
            0.,
            media_box.ury - media_box.lly,
        ));
        self.last_end = f64::MAX;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.finish_line();
        self.lines.push(Vec::new());
        Ok(())
    }

    // The same line and word breaks as pdf-extract's plain text output.
    fn output_character(
        &mut self,
        trm: &pdf_extract::Transform,
        width: f64,
        _spacing: f64,
        font_size: f64,
        text: &str,
    ) -> Result<(), pdf_extract::OutputError> {
        let position = match &self.flip {
            Some(flip) => trm.post_transform(flip),
            None => *trm,
        };
        let scaled_x = font_size * trm.m11 + font_size * trm.m21;
        let scaled_y = font_size * trm.m12 + font_size * trm.m22;
        let size = (scaled_x * scaled_y).abs().sqrt();
        let (x, y) = (position.m31, position.m32);
        if self.first_in_word {
            if (y - self.last_y).abs() > size * 1.5 {
                self.finish_line();
                self.lines.push(Vec::new());
            } else if x < self.last_end && (y - self.last_y).abs() > size * 0.5 {
                self.finish_line();
            } else if x > self.last_end + size * 0.1 && !self.current.is_empty() {
                self.current.push(" ".into());
            }
        }
        self.current.push(text.to_owned());
        self.first_in_word = false;
        self.last_y = y;
        self.last_end = x + width * size;
        Ok(())
    }

    fn begin_word(&mut self) -> Result<(), pdf_extract::OutputError> {
        self.first_in_word = true;
        Ok(())
    }

    fn end_word(&mut self) -> Result<(), pdf_extract::OutputError> {
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), pdf_extract::OutputError> {
        Ok(())
    }
}

fn docx(bytes: &[u8]) -> Result<String, ParseError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ParseError::Docx(format!("not a DOCX (zip) file: {e}")))?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|_| ParseError::Docx("word/document.xml is missing".into()))?
        .take(64 * 1024 * 1024)
        .read_to_string(&mut xml)
        .map_err(|e| ParseError::Docx(e.to_string()))?;
    docx_text(&xml)
}

/// Text of `w:t` runs, a paragraph per `w:p`, tabs and breaks kept.
fn docx_text(xml: &str) -> Result<String, ParseError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut text = String::new();
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == "w:t" => in_text = true,
            Ok(Event::End(e)) if e.name().as_ref() == "w:t" => in_text = false,
            Ok(Event::End(e)) if e.name().as_ref() == "w:p" => text.push('\n'),
            Ok(Event::Empty(e)) if e.name().as_ref() == "w:tab" => text.push('\t'),
            Ok(Event::Empty(e)) if matches!(e.name().as_ref(), "w:br" | "w:cr") => text.push('\n'),
            Ok(Event::Text(t)) if in_text => text.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) if in_text => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    text.push(c);
                } else if let Some(entity) =
                    quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                {
                    text.push_str(entity);
                }
            }
            Ok(Event::Eof) => break,
            Err(e) => return Err(ParseError::Docx(format!("malformed XML: {e}"))),
            _ => {}
        }
    }
    Ok(text)
}

/// Each row becomes a line `column: value; column: value`, so a passage keeps the
/// meaning of its cells.
fn csv(bytes: &[u8]) -> Result<String, ParseError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| ParseError::Csv(e.to_string()))?
        .clone();
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| ParseError::Csv(e.to_string()))?;
        let cells: Vec<String> = record
            .iter()
            .enumerate()
            .filter(|(_, value)| !value.trim().is_empty())
            .map(|(i, value)| match headers.get(i) {
                Some(header) if !header.is_empty() => format!("{header}: {value}"),
                _ => value.to_owned(),
            })
            .collect();
        lines.push(cells.join("; "));
        lines.push(String::new());
    }
    Ok(lines.join("\n"))
}

/// NFKC (presentation forms back to letters, ligatures apart), unified line endings,
/// no control characters, at most one blank line in a row.
fn tidy(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let normalized: String = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .nfkc()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let mut out = String::with_capacity(normalized.len());
    let mut blank_lines = 0;
    for line in normalized.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_lines += 1;
            if blank_lines > 1 {
                continue;
            }
        } else {
            blank_lines = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_by_extension_then_content_type() {
        assert_eq!(Format::detect("Règlement.PDF", None), Some(Format::Pdf));
        assert_eq!(
            Format::detect("notes", Some("text/markdown; charset=utf-8")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::detect("image.png", Some("image/png")), None);
    }

    #[test]
    fn docx_paragraphs_and_entities_survive() {
        let xml = r#"<w:document><w:body><w:p><w:r><w:t>Salut &amp; bienvenue</w:t></w:r></w:p><w:p><w:r><w:t xml:space="preserve">مرحبا</w:t></w:r><w:r><w:tab/><w:t>x</w:t></w:r></w:p></w:body></w:document>"#;
        assert_eq!(docx_text(xml).unwrap(), "Salut & bienvenue\nمرحبا\tx\n");
    }

    #[test]
    fn csv_rows_keep_their_column_names() {
        let text = extract(Format::Csv, b"service,horaire\nScolarite,8h-16h\n").unwrap();
        assert_eq!(text, "service: Scolarite; horaire: 8h-16h");
    }

    #[test]
    fn corrupt_files_fail_with_a_readable_error() {
        assert!(matches!(
            extract(Format::Pdf, b"%PDF-1.7 garbage"),
            Err(ParseError::Pdf(_))
        ));
        assert!(matches!(
            extract(Format::Docx, b"PK\x03\x04 not really"),
            Err(ParseError::Docx(_))
        ));
        assert!(matches!(
            extract(Format::Text, b"\xff\xfe\x00"),
            Err(ParseError::NotUtf8)
        ));
        assert_eq!(extract(Format::Text, b"   \n "), Err(ParseError::Empty));
        let truncated = &b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"[..];
        assert!(extract(Format::Pdf, truncated).is_err());
    }

    #[test]
    fn presentation_forms_become_letters() {
        // "سلام" written with Arabic presentation forms, as many PDFs store it.
        let text = extract(Format::Text, "\u{FEB3}\u{FEE0}\u{FE8E}\u{FEE1}".as_bytes()).unwrap();
        assert_eq!(text, "سلام");
    }
}

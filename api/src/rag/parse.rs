//! Documents to text: txt, md, html, pdf, docx, csv. Each parser returns plain text
//! with paragraph breaks, or an error that names the document and says what is wrong
//! with it; none panics on a corrupt file (a panic in a dependency is caught too).
//!
//! Nothing here inflates without a bound: a PDF stream or a DOCX entry that
//! decompresses to more than [`MAX_INFLATED_BYTES`] fails the document, and so does a
//! text longer than [`MAX_TEXT_BYTES`]. These caps give a clear reason; the hard
//! bound on memory and time is the child process the ingestion runs the parsers in
//! (see `rag::sandbox`).

use std::io::{Cursor, Read};

use serde::{Deserialize, Serialize};

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

/// The most one compressed part of a document (a PDF stream, a DOCX entry) may
/// inflate to.
pub const MAX_INFLATED_BYTES: u64 = 64 * 1024 * 1024;

/// The most text a document may hold once extracted.
pub const MAX_TEXT_BYTES: usize = 32 * 1024 * 1024;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
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
    /// A compressed part inflates past [`MAX_INFLATED_BYTES`] (a decompression bomb,
    /// or a document too large to ingest).
    #[error("{part} inflates to more than {limit_mib} MiB")]
    TooLarge { part: String, limit_mib: u64 },
    #[error("the document's text is longer than {limit_mib} MiB")]
    TooMuchText { limit_mib: u64 },
}

/// A part of a document: a page of a PDF, or the text under a heading (Markdown,
/// HTML, DOCX). Citations point into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The page, from 1, in paged formats.
    pub page: Option<u32>,
    /// The heading the text sits under; the text repeats it as its first line.
    pub heading: Option<String>,
    pub text: String,
}

/// A document's text, in reading order, with its structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedDocument {
    /// Never empty, and no section is empty.
    pub sections: Vec<Section>,
}

impl ParsedDocument {
    /// The whole text, sections apart by a blank line.
    pub fn text(&self) -> String {
        self.sections
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    /// The number of pages, for paged formats.
    pub fn pages(&self) -> Option<u32> {
        self.sections.iter().filter_map(|s| s.page).max()
    }
}

/// Extracts the text of a document and its pages or sections.
pub fn extract(format: Format, bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
    let raw = match format {
        Format::Text => vec![unstructured(utf8(bytes)?)],
        Format::Markdown => by_headings(&utf8(bytes)?),
        Format::Html => by_headings(&html(bytes)?),
        Format::Pdf => pdf(bytes)?,
        Format::Docx => docx(bytes)?,
        Format::Csv => vec![unstructured(csv(bytes)?)],
    };
    let sections: Vec<Section> = raw
        .into_iter()
        .map(|section| Section {
            heading: section.heading.map(|h| tidy(&h)).filter(|h| !h.is_empty()),
            text: tidy(&section.text),
            page: section.page,
        })
        .filter(|section| !section.text.trim().is_empty())
        .collect();
    let length: usize = sections.iter().map(|s| s.text.len()).sum();
    if length > MAX_TEXT_BYTES {
        return Err(ParseError::TooMuchText {
            limit_mib: MAX_TEXT_BYTES as u64 / MIB,
        });
    }
    if sections.is_empty() {
        Err(ParseError::Empty)
    } else {
        Ok(ParsedDocument { sections })
    }
}

fn unstructured(text: String) -> Section {
    Section {
        page: None,
        heading: None,
        text,
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ParseError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    String::from_utf8(bytes.to_vec()).map_err(|_| ParseError::NotUtf8)
}

/// Markdown (and HTML rendered as Markdown) cut at its headings; the markup that is
/// not prose goes, the words stay.
fn by_headings(text: &str) -> Vec<Section> {
    let mut sections = vec![unstructured(String::new())];
    let mut in_code_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_code_fence = !in_code_fence;
            continue;
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if !in_code_fence && (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            let heading = inline_markup(trimmed[hashes..].trim().trim_end_matches('#').trim());
            sections.push(Section {
                page: None,
                heading: Some(heading.clone()),
                text: format!("{heading}\n"),
            });
            continue;
        }
        // Table rules and borders drawn with box characters carry no words.
        if trimmed.chars().all(|c| {
            c.is_whitespace() || ('\u{2500}'..='\u{257F}').contains(&c) || "-|:=+".contains(c)
        }) && !trimmed.is_empty()
        {
            continue;
        }
        let line = trimmed
            .trim_start_matches('>')
            .trim_start()
            .strip_prefix(['*', '-', '+'])
            .map_or(
                trimmed.trim_start_matches('>').trim_start(),
                str::trim_start,
            );
        let current = sections.last_mut().expect("there is always a section");
        current.text.push_str(&inline_markup(line));
        current.text.push('\n');
    }
    sections
}

fn inline_markup(line: &str) -> String {
    line.replace("**", "")
        .replace("__", "")
        .replace('`', "")
        .replace('\u{2502}', " ")
}

/// HTML holds nothing compressed, but rendering can still grow it (tables are padded
/// to their columns): the rendered text is capped like every other document's.
fn html(bytes: &[u8]) -> Result<String, ParseError> {
    // Wide lines: we re-flow into chunks ourselves, wrapping would only cut sentences.
    let text = html2text::from_read(bytes, 10_000)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned());
    if text.len() > MAX_TEXT_BYTES {
        return Err(ParseError::TooMuchText {
            limit_mib: MAX_TEXT_BYTES as u64 / MIB,
        });
    }
    Ok(text)
}

/// Marks a PDF stream that inflates past the cap (see [`cap_pdf_stream`]).
const OVERSIZE_MARK: &[u8] = b"IAFactoryOversize";

/// A lopdf load filter: every stream compressed with Flate is inflated into a sink,
/// at most [`MAX_INFLATED_BYTES`] of it, before lopdf inflates it for real (with
/// `read_to_end`, unbounded). A stream past the cap is emptied and marked, so that
/// nothing ever inflates it; [`pdf`] then fails the document unless the stream is an
/// image, whose pixels text extraction never reads.
fn cap_pdf_stream(
    id: (u32, u16),
    object: &mut pdf_extract::Object,
) -> Option<((u32, u16), pdf_extract::Object)> {
    if let pdf_extract::Object::Stream(stream) = object {
        let flate_first = stream
            .filters()
            .ok()
            .and_then(|filters| filters.first().map(|f| *f == b"FlateDecode"))
            .unwrap_or(false);
        if flate_first && inflates_past_cap(&stream.content) {
            // Not an object stream any more (lopdf would try to unpack it), and not
            // empty (lopdf would read an empty stream's content again from the file).
            stream.dict.remove(b"Type");
            stream.set_plain_content(b" ".to_vec());
            stream.dict.set(OVERSIZE_MARK, true);
        }
    }
    // lopdf keeps `object` (the one changed in place) for objects at the top level,
    // and the returned copy for those inside object streams.
    Some((id, object.clone()))
}

/// Whether zlib data (or raw deflate, as lopdf falls back to) inflates to more than
/// the cap. Reads into a sink: nothing is kept.
fn inflates_past_cap(compressed: &[u8]) -> bool {
    let limit = MAX_INFLATED_BYTES + 1;
    let zlib = std::io::copy(
        &mut flate2::read::ZlibDecoder::new(compressed).take(limit),
        &mut std::io::sink(),
    );
    let inflated = match zlib {
        Ok(n) => n,
        // lopdf retries a stream with a corrupt zlib wrapper as raw deflate.
        Err(_) if compressed.len() > 2 => std::io::copy(
            &mut flate2::read::DeflateDecoder::new(&compressed[2..]).take(limit),
            &mut std::io::sink(),
        )
        .unwrap_or(0),
        Err(_) => 0,
    };
    inflated > MAX_INFLATED_BYTES
}

fn pdf(bytes: &[u8]) -> Result<Vec<Section>, ParseError> {
    // pdf-extract panics on some malformed files; a bad upload must fail alone.
    let bytes = bytes.to_vec();
    let pages = std::panic::catch_unwind(move || -> Result<Vec<PageGlyphs>, ParseError> {
        let document = pdf_extract::Document::load_mem_with_options(
            &bytes,
            pdf_extract::LoadOptions::with_filter(cap_pdf_stream),
        )
        .map_err(|e| ParseError::Pdf(e.to_string()))?;
        let oversize = document.objects.values().find_map(|object| match object {
            pdf_extract::Object::Stream(stream)
                if stream.dict.has(OVERSIZE_MARK)
                    && !matches!(
                        stream.dict.get(b"Subtype").and_then(|s| s.as_name()),
                        Ok(b"Image")
                    ) =>
            {
                Some(stream)
            }
            _ => None,
        });
        if oversize.is_some() {
            return Err(ParseError::TooLarge {
                part: "a stream of the PDF".into(),
                limit_mib: MAX_INFLATED_BYTES / MIB,
            });
        }
        if document.is_encrypted() {
            return Err(ParseError::Pdf(
                "it is encrypted: upload it without a password".into(),
            ));
        }
        let mut collector = GlyphLines::default();
        pdf_extract::output_doc(&document, &mut collector)
            .map_err(|e| ParseError::Pdf(e.to_string()))?;
        collector.finish_line();
        Ok(collector.pages)
    })
    .map_err(|_| ParseError::Pdf("the file is corrupt".into()))??;
    Ok(pages
        .into_iter()
        .map(|page| Section {
            page: Some(page.number),
            heading: None,
            text: page
                .lines
                .iter()
                .map(|clusters| arabic::logical_order_clusters(clusters))
                .collect::<Vec<_>>()
                .join("\n"),
        })
        .collect())
}

/// One page's glyphs, line by line, each glyph with the text its font maps it to.
#[derive(Default)]
struct PageGlyphs {
    number: u32,
    lines: Vec<Vec<String>>,
}

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
    pages: Vec<PageGlyphs>,
}

impl GlyphLines {
    fn finish_line(&mut self) {
        if !self.current.is_empty() {
            let line = std::mem::take(&mut self.current);
            if self.pages.is_empty() {
                self.pages.push(PageGlyphs {
                    number: 1,
                    lines: Vec::new(),
                });
            }
            if let Some(page) = self.pages.last_mut() {
                page.lines.push(line);
            }
        }
    }

    /// A blank line: a paragraph break.
    fn break_paragraph(&mut self) {
        self.finish_line();
        if let Some(page) = self.pages.last_mut() {
            page.lines.push(Vec::new());
        }
    }
}

impl pdf_extract::OutputDev for GlyphLines {
    fn begin_page(
        &mut self,
        page: u32,
        media_box: &pdf_extract::MediaBox,
        _art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), pdf_extract::OutputError> {
        self.finish_line();
        self.pages.push(PageGlyphs {
            number: page,
            lines: Vec::new(),
        });
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
                self.break_paragraph();
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

fn docx(bytes: &[u8]) -> Result<Vec<Section>, ParseError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| ParseError::Docx(format!("not a DOCX (zip) file: {e}")))?;
    let entry = archive
        .by_name("word/document.xml")
        .map_err(|_| ParseError::Docx("word/document.xml is missing".into()))?;
    let declared = entry.size();
    let xml = read_capped(entry, Some(declared), "word/document.xml")?;
    let xml = String::from_utf8(xml)
        .map_err(|_| ParseError::Docx("word/document.xml is not UTF-8".into()))?;
    docx_sections(&xml)
}

/// A zip entry's bytes, at most [`MAX_INFLATED_BYTES`]: its declared size is
/// checked first, and the actual one while reading (a zip can lie about the first).
fn read_capped(entry: impl Read, declared: Option<u64>, name: &str) -> Result<Vec<u8>, ParseError> {
    let too_large = || ParseError::TooLarge {
        part: name.to_owned(),
        limit_mib: MAX_INFLATED_BYTES / MIB,
    };
    if declared.is_some_and(|size| size > MAX_INFLATED_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ParseError::Docx(format!("{name}: {e}")))?;
    if bytes.len() as u64 > MAX_INFLATED_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Whether a paragraph style makes a heading: Word's and LibreOffice's `Heading1`...,
/// French Word's `Titre1`..., and `Title`.
fn is_heading_style(style: &str) -> bool {
    let style = style.to_ascii_lowercase();
    ["heading", "titre", "title"]
        .iter()
        .any(|prefix| style.starts_with(prefix))
}

/// Text of `w:t` runs, a paragraph per `w:p`, tabs and breaks kept; a paragraph in a
/// heading style (or with an outline level) starts a section.
fn docx_sections(xml: &str) -> Result<Vec<Section>, ParseError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut sections = vec![unstructured(String::new())];
    let mut paragraph = String::new();
    let mut heading = false;
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.name().as_ref() == "w:t" => in_text = true,
            Ok(Event::End(e)) if e.name().as_ref() == "w:t" => in_text = false,
            Ok(Event::Empty(e)) if e.name().as_ref() == "w:pStyle" => {
                heading |= e
                    .attributes()
                    .flatten()
                    .filter(|a| a.key.as_ref() == "w:val")
                    .any(|a| is_heading_style(&a.value));
            }
            Ok(Event::Empty(e)) if e.name().as_ref() == "w:outlineLvl" => heading = true,
            Ok(Event::End(e)) if e.name().as_ref() == "w:p" => {
                let text = std::mem::take(&mut paragraph);
                if heading && !text.trim().is_empty() {
                    sections.push(Section {
                        page: None,
                        heading: Some(text.trim().to_owned()),
                        text: format!("{}\n", text.trim()),
                    });
                } else if let Some(current) = sections.last_mut() {
                    current.text.push_str(&text);
                    current.text.push('\n');
                }
                heading = false;
            }
            Ok(Event::Empty(e)) if e.name().as_ref() == "w:tab" => paragraph.push('\t'),
            Ok(Event::Empty(e)) if matches!(e.name().as_ref(), "w:br" | "w:cr") => {
                paragraph.push('\n')
            }
            Ok(Event::Text(t)) if in_text => paragraph.push_str(&t.xml10_content()),
            Ok(Event::GeneralRef(r)) if in_text => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    paragraph.push(c);
                } else if let Some(entity) =
                    quick_xml::escape::resolve_predefined_entity(&r.xml10_content())
                {
                    paragraph.push_str(entity);
                }
            }
            Ok(Event::Eof) => break,
            Err(e) => return Err(ParseError::Docx(format!("malformed XML: {e}"))),
            _ => {}
        }
    }
    if let Some(current) = sections.last_mut() {
        current.text.push_str(&paragraph);
    }
    Ok(sections)
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
    fn docx_paragraphs_entities_and_headings_survive() {
        let xml = r#"<w:document><w:body><w:p><w:r><w:t>Salut &amp; bienvenue</w:t></w:r></w:p><w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Article 2</w:t></w:r></w:p><w:p><w:r><w:t xml:space="preserve">مرحبا</w:t></w:r><w:r><w:tab/><w:t>x</w:t></w:r></w:p></w:body></w:document>"#;
        let sections = docx_sections(xml).unwrap();
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].text, "Salut & bienvenue\n");
        assert_eq!(sections[1].heading.as_deref(), Some("Article 2"));
        assert_eq!(sections[1].text, "Article 2\nمرحبا\tx\n");
    }

    #[test]
    fn markdown_and_html_are_cut_at_their_headings() {
        let markdown = extract(
            Format::Markdown,
            "Intro **importante**.\n\n# Congés\n\n- trente jours\n\n## Absences ##\n\n> Justifier sous `48h`.\n".as_bytes(),
        )
        .unwrap();
        let headings: Vec<Option<&str>> = markdown
            .sections
            .iter()
            .map(|s| s.heading.as_deref())
            .collect();
        assert_eq!(headings, vec![None, Some("Congés"), Some("Absences")]);
        assert_eq!(markdown.sections[0].text, "Intro importante.");
        assert_eq!(markdown.sections[1].text, "Congés\n\ntrente jours");
        assert_eq!(markdown.sections[2].text, "Absences\n\nJustifier sous 48h.");

        let html = extract(
            Format::Html,
            b"<html><head><style>p{color:red}</style><script>var x = 1;</script></head><body><h1>Bourses</h1><p>Avant le <b>15 octobre</b>.</p><table><tr><td>a</td><td>b</td></tr></table></body></html>",
        )
        .unwrap();
        assert_eq!(html.sections.len(), 1, "{html:?}");
        assert_eq!(html.sections[0].heading.as_deref(), Some("Bourses"));
        let text = html.text();
        assert!(text.contains("Avant le 15 octobre."), "{text}");
        assert!(!text.contains("var x") && !text.contains("color"), "{text}");
        assert!(!text.contains('\u{2500}'), "no table rules: {text}");
    }

    #[test]
    fn csv_rows_keep_their_column_names() {
        let text = extract(Format::Csv, b"service,horaire\nScolarite,8h-16h\n").unwrap();
        assert_eq!(text.text(), "service: Scolarite; horaire: 8h-16h");
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

    /// A one-page PDF: `content` draws the page; `extra` are more stream objects
    /// (dictionary entries, data), all Flate-compressed.
    fn pdf_with(content: &[u8], extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
        use std::io::Write;
        let zlib = |data: &[u8]| {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        };
        let stream = |entries: &str, data: &[u8]| {
            let compressed = zlib(data);
            let mut object = format!(
                "<< {entries} /Length {} /Filter /FlateDecode >>\nstream\n",
                compressed.len()
            )
            .into_bytes();
            object.extend_from_slice(&compressed);
            object.extend_from_slice(b"\nendstream");
            object
        };
        let mut objects = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
            stream("", content),
        ];
        for (entries, data) in extra {
            objects.push(stream(entries, data));
        }
        let mut out = b"%PDF-1.4\n".to_vec();
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

    const TEXT: &[u8] = b"BT /F1 12 Tf 72 720 Td (Deux sessions par an.) Tj ET";

    #[test]
    fn a_pdf_stream_inflating_past_the_cap_fails_the_document() {
        let mut bomb = TEXT.to_vec();
        bomb.resize(MAX_INFLATED_BYTES as usize + 1, b' ');
        assert_eq!(
            extract(Format::Pdf, &pdf_with(&bomb, &[])),
            Err(ParseError::TooLarge {
                part: "a stream of the PDF".into(),
                limit_mib: 64
            })
        );
        // Exactly at the cap is fine, and so is an image past it (its pixels are
        // never read: it is emptied, not inflated).
        let mut full = TEXT.to_vec();
        full.resize(MAX_INFLATED_BYTES as usize, b' ');
        let image = vec![0u8; MAX_INFLATED_BYTES as usize + 1];
        let parsed = extract(
            Format::Pdf,
            &pdf_with(
                &full,
                &[("/Type /XObject /Subtype /Image /Width 1 /Height 1", image)],
            ),
        )
        .unwrap();
        assert_eq!(parsed.text(), "Deux sessions par an.");
    }

    #[test]
    fn a_docx_entry_inflating_past_the_cap_fails_the_document() {
        use std::io::Write;
        let docx = |size: usize| {
            let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("word/document.xml", options).unwrap();
            let head =
                b"<w:document><w:body><w:p><w:r><w:t>Salut</w:t></w:r></w:p></w:body></w:document>";
            zip.write_all(head).unwrap();
            zip.write_all(&vec![b' '; size - head.len()]).unwrap();
            zip.finish().unwrap().into_inner()
        };
        assert_eq!(
            extract(Format::Docx, &docx(MAX_INFLATED_BYTES as usize + 1)),
            Err(ParseError::TooLarge {
                part: "word/document.xml".into(),
                limit_mib: 64
            })
        );
        assert_eq!(
            extract(Format::Docx, &docx(MAX_INFLATED_BYTES as usize))
                .unwrap()
                .text(),
            "Salut"
        );
    }

    #[test]
    fn presentation_forms_become_letters() {
        // "سلام" written with Arabic presentation forms, as many PDFs store it.
        let text = extract(Format::Text, "\u{FEB3}\u{FEE0}\u{FE8E}\u{FEE1}".as_bytes()).unwrap();
        assert_eq!(text.text(), "سلام");
    }
}

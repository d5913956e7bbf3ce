//! Language detection and chunking.
//!
//! Chunks follow the text's own structure: paragraphs first, then sentences (ending
//! with `. ! ? …` or the Arabic `؟ ؛`), then, for an overlong sentence, clauses
//! (`, ; :` and the Arabic comma `،`), and words only as a last resort. Consecutive
//! chunks share whole sentences up to the overlap.

use iafactory_crds::Language;

use super::parse::Section;

/// The document's language among those we process, or `None` when unsure.
pub fn detect_language(text: &str) -> Option<Language> {
    let sample: String = text.chars().take(4000).collect();
    let info = whatlang::detect(&sample)?;
    match info.lang() {
        whatlang::Lang::Ara | whatlang::Lang::Pes | whatlang::Lang::Urd => Some(Language::Ar),
        whatlang::Lang::Fra => Some(Language::Fr),
        whatlang::Lang::Eng => Some(Language::En),
        _ if info.script() == whatlang::Script::Arabic => Some(Language::Ar),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub ordinal: usize,
    pub text: String,
    pub language: Option<Language>,
    /// The pages the chunk spans (first, last), for paged formats.
    pub pages: Option<(u32, u32)>,
    /// The heading of the section the chunk starts in.
    pub heading: Option<String>,
}

/// Splits plain text into chunks of about `size` characters sharing up to `overlap`.
pub fn chunk(
    text: &str,
    size: usize,
    overlap: usize,
    document_language: Option<Language>,
) -> Vec<Chunk> {
    chunk_sections(
        &[Section {
            page: None,
            heading: None,
            text: text.to_owned(),
        }],
        size,
        overlap,
        document_language,
    )
}

/// A piece of text that is never cut: a sentence, or a clause of a long one.
struct Unit {
    text: String,
    section: usize,
}

/// Splits a document's sections into chunks of about `size` characters sharing up to
/// `overlap`; each chunk knows the pages it spans and the heading it starts under.
pub fn chunk_sections(
    sections: &[Section],
    size: usize,
    overlap: usize,
    document_language: Option<Language>,
) -> Vec<Chunk> {
    let size = size.max(50);
    let overlap = overlap.min(size / 2);
    let mut units: Vec<Unit> = Vec::new();
    for (section, part) in sections.iter().enumerate() {
        for paragraph in part
            .text
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let paragraph = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut sentences = split_keeping(&paragraph, &['.', '!', '?', '…', '؟', '؛']);
            if let Some(last) = sentences.last_mut() {
                last.push('\n');
            }
            for sentence in sentences {
                let pieces = if sentence.chars().count() <= size {
                    vec![sentence]
                } else {
                    split_long(&sentence, size)
                };
                units.extend(pieces.into_iter().map(|text| Unit { text, section }));
            }
        }
    }

    let make_chunk = |ordinal: usize, current: &[Unit]| -> Option<Chunk> {
        let text = current
            .iter()
            .map(|u| u.text.as_str())
            .collect::<String>()
            .trim()
            .to_owned();
        if text.is_empty() {
            return None;
        }
        let first = &sections[current.first()?.section];
        let last = &sections[current.last()?.section];
        Some(Chunk {
            ordinal,
            language: detect_language(&text).or(document_language),
            text,
            pages: first.page.zip(last.page.or(first.page)),
            heading: first.heading.clone(),
        })
    };

    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Vec<Unit> = Vec::new();
    let mut length = 0;
    // How many units at the front of `current` repeat the previous chunk's end.
    let mut carried_units = 0;
    for unit in units {
        let unit_length = unit.text.chars().count();
        if length + unit_length > size && current.len() > carried_units {
            chunks.extend(make_chunk(chunks.len(), &current));
            // Carry whole trailing units into the next chunk, within the overlap.
            let mut carried: Vec<Unit> = Vec::new();
            let mut carried_length = 0;
            for previous in current.iter().rev() {
                let n = previous.text.chars().count();
                if carried_length + n > overlap {
                    break;
                }
                carried_length += n;
                carried.insert(
                    0,
                    Unit {
                        text: previous.text.clone(),
                        section: previous.section,
                    },
                );
            }
            carried_units = carried.len();
            current = carried;
            length = carried_length;
        }
        // The overlap gives way to new text rather than push a chunk past its size.
        while length + unit_length > size && carried_units > 0 {
            length -= current.remove(0).text.chars().count();
            carried_units -= 1;
        }
        length += unit_length;
        current.push(unit);
    }
    if current.len() > carried_units || chunks.is_empty() {
        chunks.extend(make_chunk(chunks.len(), &current));
    }
    chunks
}

/// Splits after each terminator (kept), with the following space.
fn split_keeping(text: &str, terminators: &[char]) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        if terminators.contains(&c) && chars.peek().is_none_or(|next| next.is_whitespace()) {
            if let Some(space) = chars.next() {
                current.push(space);
            }
            parts.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

fn split_long(sentence: &str, size: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    for clause in split_keeping(sentence, &[',', ';', ':', '،']) {
        if clause.chars().count() <= size {
            pieces.push(clause);
            continue;
        }
        let mut current = String::new();
        for word in clause.split_inclusive(' ') {
            if current.chars().count() + word.chars().count() > size && !current.is_empty() {
                pieces.push(std::mem::take(&mut current));
            }
            current.push_str(word);
        }
        if !current.is_empty() {
            pieces.push(current);
        }
    }
    // Merge small clauses back up to the size, so commas do not make tiny chunks.
    let mut merged: Vec<String> = Vec::new();
    for piece in pieces {
        match merged.last_mut() {
            Some(last) if last.chars().count() + piece.chars().count() <= size => {
                last.push_str(&piece)
            }
            _ => merged.push(piece),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_are_detected() {
        assert_eq!(
            detect_language("يتم التسجيل في الماستر عبر المنصة الرقمية خلال شهر سبتمبر"),
            Some(Language::Ar)
        );
        assert_eq!(
            detect_language("La session de rattrapage des examens a lieu au mois de juin."),
            Some(Language::Fr)
        );
        assert_eq!(
            detect_language("Employees are entitled to thirty days of paid annual leave."),
            Some(Language::En)
        );
    }

    #[test]
    fn chunks_respect_sentences_and_arabic_punctuation() {
        let text = "هل يمكنني التسجيل؟ نعم، يمكنك ذلك عبر المنصة؛ التسجيل مفتوح في سبتمبر. الوثائق المطلوبة هي شهادة الليسانس وكشف النقاط.";
        let chunks = chunk(text, 60, 0, None);
        assert!(chunks.len() >= 2, "{chunks:?}");
        for c in &chunks {
            assert!(c.text.chars().count() <= 60, "{c:?}");
            let last = c.text.chars().last().unwrap();
            assert!(
                ['؟', '؛', '.', '،'].contains(&last),
                "ends on punctuation: {:?}",
                c.text
            );
            assert_eq!(c.language, Some(Language::Ar));
        }
        let joined: String = chunks
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            joined.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>(),
            "nothing lost, nothing repeated"
        );
    }

    #[test]
    fn overlap_repeats_whole_sentences() {
        let text =
            "First sentence here. Second sentence here. Third sentence here. Fourth sentence here.";
        let chunks = chunk(text, 50, 25, None);
        assert!(chunks.len() >= 2);
        let second = &chunks[1].text;
        assert!(
            second.starts_with("Second sentence here.")
                || second.starts_with("Third sentence here."),
            "{chunks:?}"
        );
        assert!(
            chunks[0].text.contains(second.split('.').next().unwrap()),
            "the overlap is a sentence of the previous chunk"
        );
    }

    #[test]
    fn paragraphs_never_share_a_sentence_and_giant_words_still_split() {
        let long = "mot ".repeat(100);
        let chunks = chunk(&format!("Titre.\n\n{long}"), 80, 10, Some(Language::Fr));
        assert!(chunks.iter().all(|c| c.text.chars().count() <= 80));
        assert_eq!(chunks[0].ordinal, 0);
        assert_eq!(chunks.last().unwrap().ordinal, chunks.len() - 1);
    }

    #[test]
    fn chunks_know_their_pages_and_headings() {
        let page = |n: u32, text: &str| Section {
            page: Some(n),
            heading: None,
            text: text.to_owned(),
        };
        let sections = [
            page(1, "Article premier. Le campus ouvre à huit heures."),
            page(2, "Article deux. La cantine sert à midi."),
            page(3, "Article trois. Le parking ferme à minuit."),
        ];
        let chunks = chunk_sections(&sections, 90, 0, None);
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(chunks[0].pages, Some((1, 2)));
        assert_eq!(chunks[1].pages, Some((3, 3)));

        let headed = [
            Section {
                page: None,
                heading: None,
                text: "Préambule du règlement intérieur de la société.".into(),
            },
            Section {
                page: None,
                heading: Some("Congés".into()),
                text: "Congés\n\nTrente jours par an.".into(),
            },
        ];
        let chunks = chunk_sections(&headed, 50, 0, None);
        assert_eq!(chunks.last().unwrap().heading.as_deref(), Some("Congés"));
        assert_eq!(chunks[0].pages, None);
    }
}

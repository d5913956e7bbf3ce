//! Language detection and chunking.
//!
//! Chunks follow the text's own structure: paragraphs first, then sentences (ending
//! with `. ! ? …` or the Arabic `؟ ؛`), then, for an overlong sentence, clauses
//! (`, ; :` and the Arabic comma `،`), and words only as a last resort. Consecutive
//! chunks share whole sentences up to the overlap.

use iafactory_crds::Language;

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
}

/// Splits `text` into chunks of about `size` characters sharing up to `overlap`.
pub fn chunk(
    text: &str,
    size: usize,
    overlap: usize,
    document_language: Option<Language>,
) -> Vec<Chunk> {
    let size = size.max(50);
    let overlap = overlap.min(size / 2);
    let mut units: Vec<String> = Vec::new();
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let paragraph = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut sentences = split_keeping(&paragraph, &['.', '!', '?', '…', '؟', '؛']);
        if let Some(last) = sentences.last_mut() {
            last.push('\n');
        }
        for sentence in sentences {
            if sentence.chars().count() <= size {
                units.push(sentence);
            } else {
                units.extend(split_long(&sentence, size));
            }
        }
    }

    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut length = 0;
    // How many units at the front of `current` repeat the previous chunk's end.
    let mut carried_units = 0;
    for unit in units {
        let unit_length = unit.chars().count();
        if length + unit_length > size && current.len() > carried_units {
            let text = current.concat().trim().to_owned();
            chunks.push(Chunk {
                ordinal: chunks.len(),
                language: detect_language(&text).or(document_language),
                text,
            });
            // Carry whole trailing units into the next chunk, within the overlap.
            let mut carried: Vec<String> = Vec::new();
            let mut carried_length = 0;
            for previous in current.iter().rev() {
                let n = previous.chars().count();
                if carried_length + n > overlap {
                    break;
                }
                carried_length += n;
                carried.insert(0, previous.clone());
            }
            carried_units = carried.len();
            current = carried;
            length = carried_length;
        }
        // The overlap gives way to new text rather than push a chunk past its size.
        while length + unit_length > size && carried_units > 0 {
            length -= current.remove(0).chars().count();
            carried_units -= 1;
        }
        length += unit_length;
        current.push(unit);
    }
    if !current.is_empty() {
        let text = current.concat().trim().to_owned();
        if !text.is_empty() {
            chunks.push(Chunk {
                ordinal: chunks.len(),
                language: detect_language(&text).or(document_language),
                text,
            });
        }
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
}

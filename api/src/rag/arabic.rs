//! Arabic text: normalisation for search, and the logical order of text extracted from
//! PDFs.
//!
//! Many PDF writers (and every one that shapes Arabic itself: fpdf2, ReportLab, some
//! office suites) draw right-to-left text in *visual* order, glyph by glyph from the
//! left. A text extractor that follows the drawing order then returns every Arabic
//! word backwards. We detect such lines from the letters themselves and put them back
//! in reading order, keeping numbers and Latin runs left-to-right.

/// True for Arabic letters, marks and presentation forms.
pub fn is_arabic(c: char) -> bool {
    matches!(c, '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{08A0}'..='\u{08FF}' | '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}')
}

fn is_arabic_letter(c: char) -> bool {
    is_arabic(c)
        && !is_diacritic(c)
        && !matches!(
            c,
            '\u{060C}' | '\u{061B}' | '\u{061F}' | '\u{0660}'..='\u{0669}' | '\u{0640}'
        )
}

fn is_diacritic(c: char) -> bool {
    matches!(c, '\u{0610}'..='\u{061A}' | '\u{064B}'..='\u{065F}' | '\u{0670}' | '\u{06D6}'..='\u{06ED}')
}

/// For search only (the stored text keeps its original letters): no diacritics or
/// tatweel, one alef, yaa for alef maqsura, haa for taa marbuta; lower case and no
/// accents for Latin scripts, so "Évaluation" finds "evaluation".
pub fn normalize_for_search(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfkd()
        .filter(|c| !is_diacritic(*c) && *c != '\u{0640}' && !('\u{0300}'..='\u{036F}').contains(c))
        .map(|c| match c {
            'أ' | 'إ' | 'آ' | 'ٱ' => 'ا',
            'ى' => 'ي',
            'ة' => 'ه',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Isolated,
    Final,
    Initial,
    Medial,
}

/// The Arabic Presentation Forms-B block (U+FE80–U+FEFC), letter by letter: each group
/// lists its forms in the order isolated, final, initial, medial.
const FORM_GROUPS: &[(u32, u32)] = &[
    (0xFE80, 1),
    (0xFE81, 2),
    (0xFE83, 2),
    (0xFE85, 2),
    (0xFE87, 2),
    (0xFE89, 4),
    (0xFE8D, 2),
    (0xFE8F, 4),
    (0xFE93, 2),
    (0xFE95, 4),
    (0xFE99, 4),
    (0xFE9D, 4),
    (0xFEA1, 4),
    (0xFEA5, 4),
    (0xFEA9, 2),
    (0xFEAB, 2),
    (0xFEAD, 2),
    (0xFEAF, 2),
    (0xFEB1, 4),
    (0xFEB5, 4),
    (0xFEB9, 4),
    (0xFEBD, 4),
    (0xFEC1, 4),
    (0xFEC5, 4),
    (0xFEC9, 4),
    (0xFECD, 4),
    (0xFED1, 4),
    (0xFED5, 4),
    (0xFED9, 4),
    (0xFEDD, 4),
    (0xFEE1, 4),
    (0xFEE5, 4),
    (0xFEE9, 4),
    (0xFEED, 2),
    (0xFEEF, 2),
    (0xFEF1, 4),
    (0xFEF5, 2),
    (0xFEF7, 2),
    (0xFEF9, 2),
    (0xFEFB, 2),
];

fn form(c: char) -> Option<Form> {
    let code = c as u32;
    FORM_GROUPS
        .iter()
        .find(|(start, count)| (*start..start + count).contains(&code))
        .map(|(start, _)| match code - start {
            0 => Form::Isolated,
            1 => Form::Final,
            2 => Form::Initial,
            _ => Form::Medial,
        })
}

/// How strongly a line's Arabic words look written backwards (positive) or forwards
/// (negative), from the shapes and letters that can only begin or end a word.
fn reversal_evidence(line: &str) -> i32 {
    let mut score = 0;
    for word in line
        .split(|c: char| !is_arabic_letter(c))
        .filter(|w| w.chars().count() >= 2)
    {
        let chars: Vec<char> = word.chars().collect();
        let (first, last) = (chars[0], chars[chars.len() - 1]);
        // Presentation forms: a word starts with an initial form and ends with a final one.
        match form(first) {
            Some(Form::Final) => score += 2,
            Some(Form::Initial) => score -= 2,
            _ => {}
        }
        match form(last) {
            Some(Form::Initial) => score += 2,
            Some(Form::Final) => score -= 2,
            _ => {}
        }
        // Base letters: taa marbuta and alef maqsura only end words; the article al-
        // begins a great many.
        let end_only = |c: char| {
            matches!(
                c,
                'ة' | 'ى' | '\u{FE93}' | '\u{FE94}' | '\u{FEEF}' | '\u{FEF0}'
            )
        };
        if end_only(first) {
            score += 2;
        }
        if end_only(last) {
            score -= 2;
        }
        if chars.len() >= 4 {
            if chars[0] == 'ا' && chars[1] == 'ل' {
                score -= 1;
            }
            if chars[chars.len() - 1] == 'ا' && chars[chars.len() - 2] == 'ل' {
                score += 1;
            }
        }
    }
    score
}

/// A line in reading order. Lines without Arabic, or whose Arabic already reads
/// forwards, are returned unchanged.
pub fn logical_order(line: &str) -> String {
    let clusters: Vec<String> = line.chars().map(String::from).collect();
    logical_order_clusters(&clusters)
}

/// The same, for a line given as drawn glyphs: a glyph standing for several letters
/// (a ligature) keeps its letters' order when the line is turned round.
pub fn logical_order_clusters(clusters: &[String]) -> String {
    let line: String = clusters.concat();
    if !line.chars().any(is_arabic_letter) || reversal_evidence(&line) <= 0 {
        return line;
    }
    visual_to_logical(clusters)
}

/// Reverses a visually ordered right-to-left line, glyph by glyph, then turns each
/// left-to-right run (Latin words, numbers) back the right way round.
fn visual_to_logical(clusters: &[String]) -> String {
    let reversed: Vec<&str> = clusters.iter().rev().map(String::as_str).collect();
    let is_ltr = |s: &str| {
        s.chars()
            .any(|c| c.is_ascii_alphanumeric() || (c.is_alphanumeric() && !is_arabic(c)))
    };
    let is_ltr_joiner = |s: &str| {
        s.chars()
            .all(|c| matches!(c, '.' | ',' | '-' | ':' | '/' | '%' | '\''))
    };
    let mut out = String::new();
    let mut i = 0;
    while i < reversed.len() {
        if is_ltr(reversed[i]) {
            // A run of LTR glyphs, with the punctuation inside it ("3.5", "L1-S2").
            let mut end = i;
            let mut j = i;
            while j < reversed.len() && (is_ltr(reversed[j]) || is_ltr_joiner(reversed[j])) {
                if is_ltr(reversed[j]) {
                    end = j;
                }
                j += 1;
            }
            for cluster in reversed[i..=end].iter().rev() {
                out.push_str(cluster);
            }
            i = end + 1;
        } else {
            out.extend(reversed[i].chars().map(mirror));
            i += 1;
        }
    }
    out
}

/// Brackets are drawn mirrored in right-to-left text.
fn mirror(c: char) -> char {
    match c {
        '(' => ')',
        ')' => '(',
        '[' => ']',
        ']' => '[',
        '«' => '»',
        '»' => '«',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_normalisation_unifies_what_users_type_differently() {
        assert_eq!(normalize_for_search("أَلْجَامِعَةُ"), "الجامعه");
        assert_eq!(normalize_for_search("إختبار آخر ٱسم"), "اختبار اخر اسم");
        assert_eq!(normalize_for_search("مستشفى"), "مستشفي");
        assert_eq!(normalize_for_search("كـــتـــاب"), "كتاب");
        assert_eq!(normalize_for_search("Évaluation Été"), "evaluation ete");
    }

    #[test]
    fn backwards_arabic_is_put_in_reading_order() {
        let logical = "التسجيل في الجامعة يبدأ في سبتمبر 2025";
        // What a visual-order PDF gives: the Arabic drawn backwards, the number not.
        let visual = format!(
            "2025 {}",
            "التسجيل في الجامعة يبدأ في سبتمبر"
                .chars()
                .rev()
                .collect::<String>()
        );
        assert_eq!(logical_order(&visual), logical);
        assert_eq!(
            logical_order(logical),
            logical,
            "a forward line is left alone"
        );
    }

    #[test]
    fn presentation_forms_tell_the_direction() {
        // "سلام" as shaped glyphs: initial seen, medial lam, final alef... written forwards,
        let forwards = "\u{FEB3}\u{FEE0}\u{FE8E}\u{FEE1}";
        assert_eq!(logical_order(forwards), forwards);
        // and drawn backwards.
        let backwards: String = forwards.chars().rev().collect();
        assert_eq!(logical_order(&backwards), forwards);
    }

    #[test]
    fn latin_lines_are_untouched() {
        for line in ["Règlement des examens (2025)", "", "42"] {
            assert_eq!(logical_order(line), line);
        }
    }
}

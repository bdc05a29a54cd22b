//! Words to index terms. Text is split into runs of letters and digits and
//! lowercased; words in Latin, Greek or Cyrillic script are reduced to their
//! stem (Snowball, in the configured language) so "running" finds "runs".
//! Scripts written without spaces (Chinese, Japanese, Korean, Thai) are
//! indexed a character at a time, so any character sequence is findable.

use rust_stemmers::{Algorithm, Stemmer};

/// Longer "words" (hashes, base64) are not worth indexing.
const MAX_WORD_CHARS: usize = 64;

pub struct Tokenizer {
    stemmer: Option<Stemmer>,
}

/// Characters of scripts written without spaces between words.
fn is_unspaced_script(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF        // Thai, Lao
        | 0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF      // CJK extension A
        | 0x4E00..=0x9FFF      // CJK unified ideographs
        | 0xAC00..=0xD7AF      // Hangul syllables
        | 0xF900..=0xFAFF      // CJK compatibility ideographs
        | 0x20000..=0x2FFFF) // CJK extensions B and later
}

/// Latin (with its accented letters), Greek or Cyrillic: scripts the
/// Snowball stemmers handle.
fn is_stemmable(word: &str) -> bool {
    word.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c as u32, 0x00C0..=0x024F | 0x0370..=0x03FF | 0x0400..=0x04FF)
    })
}

impl Tokenizer {
    /// `language`: a Snowball language name (`english`, `french`, …) or `none`.
    pub fn new(language: &str) -> Self {
        let algorithm = match language.to_ascii_lowercase().as_str() {
            "arabic" => Some(Algorithm::Arabic),
            "danish" => Some(Algorithm::Danish),
            "dutch" => Some(Algorithm::Dutch),
            "english" => Some(Algorithm::English),
            "finnish" => Some(Algorithm::Finnish),
            "french" => Some(Algorithm::French),
            "german" => Some(Algorithm::German),
            "greek" => Some(Algorithm::Greek),
            "hungarian" => Some(Algorithm::Hungarian),
            "italian" => Some(Algorithm::Italian),
            "norwegian" => Some(Algorithm::Norwegian),
            "portuguese" => Some(Algorithm::Portuguese),
            "romanian" => Some(Algorithm::Romanian),
            "russian" => Some(Algorithm::Russian),
            "spanish" => Some(Algorithm::Spanish),
            "swedish" => Some(Algorithm::Swedish),
            "turkish" => Some(Algorithm::Turkish),
            _ => None,
        };
        Self { stemmer: algorithm.map(Stemmer::create) }
    }

    /// The lowercase words of a text, in order (what highlights show).
    pub fn words(text: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut current = String::new();
        let flush = |current: &mut String, words: &mut Vec<String>| {
            if !current.is_empty() && current.chars().count() <= MAX_WORD_CHARS {
                words.push(std::mem::take(current));
            }
            current.clear();
        };
        for c in text.chars() {
            if is_unspaced_script(c) {
                flush(&mut current, &mut words);
                words.push(c.to_string());
            } else if c.is_alphanumeric() {
                current.extend(c.to_lowercase());
            } else {
                flush(&mut current, &mut words);
            }
        }
        flush(&mut current, &mut words);
        words
    }

    /// The index term of a lowercase word.
    pub fn term(&self, word: &str) -> String {
        match &self.stemmer {
            Some(stemmer) if is_stemmable(word) => stemmer.stem(word).into_owned(),
            _ => word.to_owned(),
        }
    }

    /// Distinct terms of a text with how often each occurs.
    pub fn terms(&self, text: &str) -> Vec<(String, u64)> {
        let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for word in Self::words(text) {
            *counts.entry(self.term(&word)).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_words_are_lowercased_and_stemmed() {
        let english = Tokenizer::new("english");
        let terms: Vec<String> =
            english.terms("Running RUNS, the runner's run!").into_iter().map(|(t, _)| t).collect();
        assert!(terms.contains(&"run".to_owned()), "{terms:?}");
        assert_eq!(english.term("running"), english.term("runs"));
        assert_eq!(english.terms("café Café")[0], ("café".to_owned(), 2));
        let none = Tokenizer::new("none");
        assert_eq!(none.term("running"), "running");
    }

    #[test]
    fn unspaced_scripts_index_each_character_and_split_from_latin() {
        assert_eq!(Tokenizer::words("東京タワーでmeet"), ["東", "京", "タ", "ワ", "ー", "で", "meet"]);
        assert_eq!(Tokenizer::words("Привет, мир 42"), ["привет", "мир", "42"]);
        assert_eq!(Tokenizer::words(&"x".repeat(65)), Vec::<String>::new(), "over-long words are skipped");
    }
}
